"""Local bans (issue 17), each behaviour written once and run against every server present:
apiban_ban / apiban_unban from the script (the sample config's pike feeds it) and from RPC/MI,
apiban.lookup and apiban.bans, expiry, the allow-list, exemptions of feed addresses, the bans file
across a restart with the feed down, a flood of bans that fills the queue, bad arguments; then a
fleet of three nodes on one Redis (Kamailio and, when present, OpenSIPS) through a ban, an unban,
a restart with Redis down, a joiner and expiry in Redis.

SIP is real (OPTIONS over UDP from 127.0.0.x sources); the feed is the fake APIBAN.
"""

import os
import signal
import socket
import time
import unittest
import uuid

from harness import AdminError, FakeApiban, TempDir, wait_until
from redis_server import RedisServer, have_redis
from servers import kinds, make

KEY = "k-bans-0123456789"
LISTED = "127.0.0.66"
CLEAN = "127.0.0.5"
ALLOWED = "127.0.0.30"


def for_each_server(behaviour):
    """One TestCase per server present from a behaviour class, named <Behaviour>_<server>."""
    for kind in kinds():
        name = f"{behaviour.__name__}_{kind}"
        globals()[name] = type(name, (behaviour, unittest.TestCase), {"kind": kind, "__doc__": behaviour.__doc__})
    return behaviour


def flood(src, port, n, dst="127.0.0.1"):
    """n OPTIONS from `src` as fast as a socket sends them, replies not awaited: what pike sees
    as a flood."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        lport = s.getsockname()[1]
        for i in range(n):
            cid = uuid.uuid4().hex
            msg = (
                f"OPTIONS sip:{dst}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {src}:{lport};branch=z9hG4bK{cid[:12]}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:flood@{src}>;tag={cid[:8]}\r\n"
                f"To: <sip:{dst}:{port}>\r\n"
                f"Call-ID: {cid}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), (dst, port))


# A route that bans N distinct addresses in one request (X-Ban-Flood: N): a burst far beyond
# the queue's 4096 slots, from the script itself. Inserted at the start of the main route.
FLOOD_HOOK = {
    "kamailio": """
	if ($hdr(X-Ban-Flood) != $null) {
		$var(i) = 0;
		$var(n) = $(hdr(X-Ban-Flood){s.int});
		while ($var(i) < $var(n)) {
			$var(a) = $var(i) / 256;
			$var(b) = $var(i) mod 256;
			apiban_ban("10.9.$var(a).$var(b)", 600, "flood");
			$var(i) = $var(i) + 1;
		}
		sl_send_reply("200", "Flooded");
		exit;
	}
""",
    "opensips": """
	if ($hdr(X-Ban-Flood) != NULL) {
		$var(i) = 0;
		$var(n) = $(hdr(X-Ban-Flood){s.int});
		while ($var(i) < $var(n)) {
			$var(a) = $var(i) / 256;
			$var(b) = $var(i) % 256;
			apiban_ban("10.9.$var(a).$var(b)", 600, "flood");
			$var(i) = $var(i) + 1;
		}
		sl_send_reply(200, "Flooded");
		exit;
	}
""",
}
LOOPS = {"kamailio": "max_while_loops=20000\n", "opensips": "max_while_loops=20000\n"}
# The sample configs' flood protection (pike feeding apiban_ban) is on with this define.
ANTIFLOOD = {"kamailio": {"WITH_ANTIFLOOD": None}, "opensips": {"WITH_ANTIFLOOD": "yes"}}


@for_each_server
class Bans:
    """One server with a feed listing LISTED, an allow rule for ALLOWED, and the bans file beside
    its snapshot."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir(f"bans-{cls.kind}")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.feed = FakeApiban(key=KEY, ips=[LISTED], count=20).start()
        cls.addClassCleanup(cls.feed.stop)
        cls.server = cls.new_server()
        cls.addClassCleanup(cls.server.stop)
        cls.server.start()
        cls.server.wait_synced(entries=21)

    @classmethod
    def new_server(cls, feed_url=None):
        s = make(cls.kind, cls.tmp.path, feed_url or cls.feed.url, key=KEY, defines=ANTIFLOOD[cls.kind],
                 modparams=[("allow", f'"{ALLOWED}"'), ("ban_max_ttl", '"1d"')],
                 route_hook=FLOOD_HOOK[cls.kind], globals_text=LOOPS[cls.kind])
        return s

    def test_a_ban_from_the_admin_interface_refuses_the_source_until_it_is_lifted(self):
        ip = "127.0.0.20"
        self.assertEqual(self.server.options(ip), 200)
        before = self.server.stats()
        r = self.server.ban(ip, 600, "seen scanning")
        self.assertEqual((r["address"], r["verdict"], r["refused"], r["banned"]), (ip, "banned", 1, 1))
        self.assertEqual(r["ban_reason"], "seen scanning")
        self.assertGreater(r["ban_expires"], time.time() + 590)
        self.assertEqual(self.server.options(ip), 403)
        self.assertEqual(self.server.options(CLEAN), 200)
        after = self.server.stats()
        self.assertEqual(after["bans_made"] - before["bans_made"], 1)
        self.assertGreaterEqual(after["local_hits"] - before["local_hits"], 1)
        self.assertEqual(after["hits"], before["hits"], "a local ban is not an APIBAN hit")
        lk = self.server.lookup(ip)
        self.assertEqual(lk["verdict"], "banned")
        self.assertIn("seen scanning", lk["detail"])
        self.assertTrue(lk["ban_node"])
        r = self.server.unban(ip)
        self.assertEqual((r["verdict"], r["refused"]), ("not listed", 0))
        self.assertEqual(self.server.options(ip), 200)
        # Logged once with its reason and node, never once per request.
        log = self.server.log()
        self.assertEqual(log.count(f"{ip} banned for 600 s by node"), 1, log[-2000:])

    def test_the_script_branches_on_a_local_ban_apart_from_an_apiban_listing(self):
        ip = "127.0.0.21"
        self.server.ban(ip, 600)
        code, reason = self.sip(ip)
        self.assertEqual(code, 403)
        _, listed_reason = self.sip(LISTED)
        self.assertNotEqual(reason, listed_reason, "the sample config tells the two apart")
        self.server.unban(ip)

    def sip(self, ip):
        from harness import sip_exchange
        return sip_exchange(ip, self.server.port)

    def test_a_ban_expires_by_itself(self):
        ip = "127.0.0.22"
        self.server.ban(ip, 2, "short")
        self.assertEqual(self.server.options(ip), 403)
        wait_until(lambda: self.server.options(ip) == 200, timeout=5, step=0.2, what="the ban to expire")
        wait_until(lambda: ip not in self.server.bans()[1], timeout=3, what="the ban to leave apiban.bans")

    def test_unbanning_a_feed_address_lets_it_through_until_it_is_banned_again(self):
        self.assertEqual(self.server.options(LISTED), 403)
        r = self.server.unban(LISTED)
        self.assertEqual((r["verdict"], r["listed"], r["refused"]), ("exempted", 1, 0))
        self.assertGreater(r["exempt_until"], time.time())
        self.assertEqual(self.server.options(LISTED), 200)
        self.server.ban(LISTED, 600, "again")
        self.assertEqual(self.server.options(LISTED), 403)
        self.assertEqual(self.server.lookup(LISTED)["verdict"], "listed")
        self.server.unban(LISTED)
        self.server.ban(LISTED, 1)
        wait_until(lambda: self.server.options(LISTED) == 403, timeout=5, what="the feed's listing back after the ban ended")

    def test_the_allow_list_wins_over_a_local_ban(self):
        r = self.server.ban(ALLOWED, 600, "pike")
        self.assertEqual((r["verdict"], r["banned"], r["refused"]), ("allowed", 1, 0))
        self.assertIn("allow", r["allowed_by"])
        self.assertEqual(self.server.options(ALLOWED), 200)
        self.server.unban(ALLOWED)

    def test_bad_arguments_get_a_clear_error_and_change_nothing(self):
        before = self.server.bans()[0]
        for args, words in [
            (("not-an-ip", 60, "x"), "not an IP address"),
            (("127.0.0.23", 0, "x"), "ttl"),
            (("127.0.0.23", 86401, "x"), "ban_max_ttl"),
            (("127.0.0.23", "soon", "x"), "not a ttl"),
            (("127.0.0.23", 60, "r" * 65), "reason"),
        ]:
            with self.assertRaises(AdminError, msg=args) as e:
                self.server.ban(*args)
            self.assertIn(words, str(e.exception))
        with self.assertRaises(AdminError) as e:
            self.server.unban("127.0.0.24")
        self.assertIn("nothing to unban", str(e.exception))
        with self.assertRaises(AdminError):
            self.server.lookup("300.1.1.1")
        self.assertEqual(self.server.bans()[0], before)
        self.assertEqual(self.server.options("127.0.0.23"), 200)

    def test_apiban_bans_lists_the_newest_first_within_its_bound(self):
        for i in range(3):
            self.server.ban(f"127.0.1.{i}", 600, f"n{i}")
        total, shown = self.server.bans(2)
        self.assertGreaterEqual(total, 3)
        self.assertEqual(shown, ["127.0.1.2", "127.0.1.1"])
        for i in range(3):
            self.server.unban(f"127.0.1.{i}")

    def test_a_flood_of_bans_fills_the_queue_counts_what_it_drops_and_sip_keeps_answering(self):
        before = self.server.stats()
        n = 12000
        from harness import sip_exchange
        # The refresher stopped (a stalled keeper): the queue fills at its 4096 slots, the rest is
        # dropped and counted, and the workers neither wait nor stop answering.
        refresher = self.server.refresher_pid()
        os.kill(refresher, signal.SIGSTOP)
        try:
            code, _ = sip_exchange("127.0.0.25", self.server.port, headers=[f"X-Ban-Flood: {n}"], timeout=30)
            self.assertEqual(code, 200)
            self.assertEqual(self.server.options(CLEAN), 200)
        finally:
            os.kill(refresher, signal.SIGCONT)
        self.assertEqual(self.server.options(CLEAN), 200)

        def settled():
            s = self.server.stats()
            made, drops = s["bans_made"] - before["bans_made"], s["ban_drops"] - before["ban_drops"]
            evicted = s["ban_evictions"] - before["ban_evictions"]
            # Every call made a ban or was counted as dropped, and every ban made is in force or
            # was counted as evicted (max_bans, 10000 by default, keeps the newest).
            if made + drops == n and s["bans"] + evicted == before["bans"] + made:
                return made, drops
            return None
        made, drops = wait_until(settled, timeout=10, what="every ban made or counted as dropped, and published")
        self.assertEqual((made, drops), (4096, n - 4096), "the queue's 4096 slots, the rest dropped")
        self.assertEqual(self.server.options("127.0.0.26"), 200)
        # One line about the drops, not one per drop.
        self.assertLessEqual(self.server.log().count("the queue to the refresher is full"), 2)

    def test_a_pike_flood_bans_the_source_with_its_reason(self):
        src = "127.0.0.40"
        flood(src, self.server.port, 400)
        r = wait_until(lambda: (lambda l: l if l["verdict"] == "banned" else None)(self.server.lookup(src)),
                       timeout=5, what="pike to ban the flooding source")
        self.assertEqual(r["ban_reason"], "pike")
        self.assertEqual(self.server.options(src), 403)
        self.assertEqual(self.server.options(CLEAN), 200)
        log = self.server.log()
        self.assertEqual(log.count(f"{src} banned for 3600 s"), 1, "logged once, not once per request")
        self.server.unban(src)

    def test_zz_bans_survive_a_restart_with_the_feed_down(self):
        ip = "127.0.0.27"
        self.server.ban(ip, 600, "kept")
        time.sleep(1.5)  # the bans file is written at most once a second
        self.server.stop()
        dead = "http://127.0.0.1:9"  # nothing listens: the feed is down
        s = self.new_server(dead)
        type(self).server = s
        self.addClassCleanup(s.stop)
        s.start()
        self.assertEqual(s.options(ip), 403, "refused at once from the bans file")
        self.assertEqual(s.options(LISTED), 403, "and the feed's list from the snapshot")
        self.assertEqual(s.lookup(ip)["ban_reason"], "kept")
        self.assertEqual(s.options(CLEAN), 200)


@unittest.skipUnless(have_redis(), "no redis-server (scripts/setup-debian.sh installs it)")
class FleetBans(unittest.TestCase):
    """Three nodes on one Redis: Kamailio, Kamailio and OpenSIPS when present (else a third
    Kamailio), so that bans cross between the two servers."""

    def setUp(self):
        self.tmp = TempDir("fleet-bans")
        self.addCleanup(self.tmp.cleanup)
        self.feed = FakeApiban(key=KEY, ips=[LISTED], count=10, rate_limit=(4, 10)).start()
        self.addCleanup(self.feed.stop)
        self.redis = RedisServer(self.tmp.path).start()
        self.addCleanup(self.redis.stop)

    def node(self, kind, name):
        d = os.path.join(self.tmp.path, name)
        os.makedirs(d, exist_ok=True)
        url = self.redis.url()
        q = (lambda v: f'"{v}"') if kind == "kamailio" else (lambda v: v)
        n = make(kind, d, self.feed.url, key=KEY, defines={
            "APIBAN_REDIS_URL": q(url), "APIBAN_NODE_ID": q(name), "APIBAN_INTERVAL": "1", "APIBAN_RATE_LIMIT": q("4/10"),
            **ANTIFLOOD[kind]}, modparams=[("leader_ttl", '"3"'), ("timeout", "1")])
        n.name = name
        self.addCleanup(n.stop)
        return n

    def refused_within(self, nodes, ip, expect, limit, t0=None):
        """Seconds from t0 (default: now) until every node answers `expect` for `ip` (fails
        after `limit`)."""
        t0 = time.monotonic() if t0 is None else t0
        for n in nodes:
            wait_until(lambda: n.options(ip) == expect, timeout=limit, step=0.01, what=f"{n.name}: {expect} for {ip}")
        took = time.monotonic() - t0
        self.assertLess(took, limit)
        return took

    def test_a_ban_on_one_node_refuses_on_every_node_over_its_life(self):
        third = "opensips" if "opensips" in kinds() else "kamailio"
        nodes = [self.node("kamailio", "node-1"), self.node("kamailio", "node-2"), self.node(third, "node-3")]
        for n in nodes:
            n.start()
        # Followers never pull from APIBAN themselves: every node holds the list.
        for n in nodes:
            wait_until(lambda: n.stats()["entries"] == 11, timeout=30, step=0.2, what=f"{n.name} to hold the list")
        n1, n2, n3 = nodes
        src = "127.0.0.40"
        # pike on node 1 bans a flooding source; nodes 2 and 3 refuse it within 1 s.
        t0 = time.monotonic()
        flood(src, n1.port, 400)
        took = self.refused_within([n2, n3], src, 403, 1.0, t0)
        print(f"\n  from the flood's start on node-1, refused on node-2 and node-3 ({third}) after {took * 1000:.0f} ms", flush=True)
        self.assertEqual(n1.lookup(src)["verdict"], "banned")
        r = n3.lookup(src)
        self.assertEqual((r["ban_node"], r["ban_reason"]), ("node-1", "pike"))
        # The ban is in Redis with its expiry.
        ttl = int(self.redis.cli("PTTL", f"apiban:ban:{src}"))
        self.assertTrue(3_500_000 < ttl <= 3_600_000, ttl)
        # Unban on node 3 frees it everywhere: nodes 2 and 3 answer it again within 1 s; node 1's
        # pike still takes the source for a flood for a few seconds (its own remove_latency),
        # so there the verdict is read instead.
        n3.unban(src)
        self.refused_within([n2, n3], src, 200, 1.0)
        wait_until(lambda: n1.lookup(src)["verdict"] == "not listed", timeout=1, step=0.01, what="node 1 to lift the ban")
        # A ban the other way round: made on node 3 (OpenSIPS when present), refused on Kamailio.
        t0 = time.monotonic()
        n3.ban("127.0.0.41", 600, "manual")
        self.refused_within([n1, n2], "127.0.0.41", 403, 1.0, t0)

        # Redis down: node 2 restarts and still refuses from its bans file; a ban made on node
        # 2 meanwhile is queued and reaches the others when Redis is back.
        time.sleep(1.5)
        self.redis.stop()
        n2.stop()
        n2b = self.node("kamailio", "node-2")
        n2b.start()
        self.assertEqual(n2b.options("127.0.0.41"), 403, "kept across a restart with Redis down")
        n2b.ban("127.0.0.42", 600, "while redis was away")
        self.assertEqual(n2b.options("127.0.0.42"), 403)
        self.redis.start()
        self.refused_within([n1, n3], "127.0.0.42", 403, 5.0)
        # Redis restarted empty (no persistence in the test): every node wrote back what it holds.
        wait_until(lambda: self.redis.cli("EXISTS", "apiban:ban:127.0.0.41") == "1", timeout=5, what="the bans written back")
        # A joiner starts with the fleet's bans.
        n4 = self.node("kamailio", "node-4")
        n4.start()
        wait_until(lambda: n4.stats()["entries"] == 11, timeout=30, step=0.2, what="the joiner to hold the list")
        wait_until(lambda: n4.options("127.0.0.42") == 403, timeout=3, step=0.05, what="the joiner to refuse")
        # Short bans leave Redis when they expire: Redis holds no expired ban.
        n1.ban("127.0.0.43", 2, "short")
        self.refused_within([n2b, n3, n4], "127.0.0.43", 403, 1.0)
        time.sleep(2.5)
        self.assertEqual(self.redis.cli("EXISTS", "apiban:ban:127.0.0.43"), "0")
        for n in [n1, n2b, n3, n4]:
            self.assertEqual(n.options("127.0.0.43"), 200, n.name)
            self.assertEqual(n.options(LISTED), 403, n.name)

    def test_a_node_stopped_past_every_timer_and_a_node_killed_catch_up(self):
        """SIGSTOP past the log's minute and the 30 s full read, kill -9 mid-life: what a node
        missed reaches it, what it made survives, and every node agrees all along."""
        nodes = [self.node("kamailio", f"life-{i}") for i in (1, 2, 3)]
        for n in nodes:
            n.start()
        for n in nodes:
            wait_until(lambda: n.stats()["entries"] == 11, timeout=30, step=0.2, what=f"{n.name} to hold the list")
        n1, n2, n3 = nodes
        os.killpg(n2.proc.pid, signal.SIGSTOP)
        self.addCleanup(lambda: os.killpg(n2.proc.pid, signal.SIGCONT) if n2.proc.alive() else None)
        # While node 2 sleeps: a long ban, a ban lifted, a ban that expires.
        n1.ban("127.0.0.50", 600, "long")
        n1.ban("127.0.0.51", 600, "lifted")
        n3.unban("127.0.0.51")
        n3.ban("127.0.0.52", 3, "short")
        self.refused_within([n1, n3], "127.0.0.50", 403, 1.0)
        # Past the log's minute (its entries trimmed) and two full-read periods.
        time.sleep(65)
        self.assertEqual(self.redis.cli("EXISTS", "apiban:ban:127.0.0.52"), "0", "an expired ban left Redis")
        os.killpg(n2.proc.pid, signal.SIGCONT)
        wait_until(lambda: n2.lookup("127.0.0.50")["verdict"] == "banned", timeout=5, step=0.1,
                   what="node 2 to catch up with the ban it slept through")
        for n in nodes:
            self.assertEqual(n.options("127.0.0.50"), 403, n.name)
            self.assertEqual(n.options("127.0.0.51"), 200, n.name)
            self.assertEqual(n.options("127.0.0.52"), 200, n.name)
        # kill -9 of node 1 right after it banned: the ban is in Redis and in its bans file.
        n1.ban("127.0.0.53", 600, "then killed")
        self.refused_within([n2, n3], "127.0.0.53", 403, 1.0)
        os.killpg(n1.proc.pid, signal.SIGKILL)
        n1.proc.p.wait(timeout=5)
        n1.proc.stop()
        n1b = self.node("kamailio", "life-1")
        n1b.start()
        for ip in ("127.0.0.50", "127.0.0.53"):
            self.assertEqual(n1b.options(ip), 403, f"restarted node 1: {ip}")
        self.assertEqual(n1b.options("127.0.0.51"), 200)
        # Every node tells the same story of each address.
        for ip in ("127.0.0.50", "127.0.0.51", "127.0.0.53"):
            verdicts = {n.name: n.lookup(ip)["verdict"] for n in (n1b, n2, n3)}
            self.assertEqual(len(set(verdicts.values())), 1, f"{ip}: {verdicts}")


if __name__ == "__main__":
    unittest.main()
