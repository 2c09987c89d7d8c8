"""Fleet mode (issue 12) end to end: several real Kamailio nodes, one fake APIBAN feed, one real
Redis (or a Sentinel-managed pair), all on loopback, each with its own ports, directories and
config, every process stopped by PID.

The nodes run with leader_ttl 3 s, interval 1 s and timeout 1 s (a request then lasts at most
2 s, so the lease a request stretches is still 3 s), and rate_limit 4/10, which the fake feed
enforces with 429 as APIBAN does. Without redis-server this file prints SKIPPED.
"""

import os
import signal
import time
import unittest

import servers as osips
from harness import FakeApiban, Kamailio, TempDir, wait_until
from redis_server import RedisSentinel, RedisServer, have_redis, make_test_ca, wait_port_free

KEY = "fleet-key-0123456789"
LISTED = [f"127.0.0.{i}" for i in range(60, 66)]
CLEAN = "127.0.0.5"
GENERATED = 24  # plus LISTED: two batches of 250 would be slow to pace, one is plenty
TOTAL = len(LISTED) + GENERATED
RATE = (4, 10)
TTL = 3
INTERVAL = 1


def setUpModule():
    if not have_redis():
        print("SKIPPED: no redis-server/redis-sentinel/redis-cli (scripts/setup-debian.sh installs them)")
        raise unittest.SkipTest("no redis")


class Node(Kamailio):
    """A Kamailio node of the fleet: the sample config with APIBAN_REDIS_URL and APIBAN_NODE_ID."""

    def __init__(self, tmp, feed_url, redis_url, name, modparams=(), env=None):
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        super().__init__(d, feed_url, key=KEY, defines={
            "APIBAN_REDIS_URL": f'"{redis_url}"',
            "APIBAN_NODE_ID": f'"{name}"',
            "APIBAN_INTERVAL": str(INTERVAL),
            "APIBAN_RATE_LIMIT": f'"{RATE[0]}/{RATE[1]}"',
        }, modparams=[("leader_ttl", f'"{TTL}"'), ("timeout", "1"), *modparams])
        self.name = name
        self.env = dict(os.environ, **env) if env else None

    def start(self, wait=True, env=None):
        return super().start(wait=wait, env=env or self.env)

    def kill_server(self):
        """kill -9 of the whole server, as a crash would: Kamailio runs in its own process group
        (Proc starts it with setsid), and killing only the main process would leave its children."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.p.wait(timeout=5)
        self.proc.stop()


class FleetCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir("fleet")
        self.addCleanup(self.tmp.cleanup)

    def redis(self, **kw):
        r = RedisServer(self.tmp.path, **kw).start()
        self.addCleanup(r.stop)
        return r

    def feed(self, **kw):
        f = FakeApiban(key=KEY, ips=LISTED, count=GENERATED, rate_limit=RATE, **kw).start()
        self.addCleanup(f.stop)
        return f

    def nodes(self, feed, redis_url, names, **kw):
        nodes = [Node(self.tmp.path, feed.url, redis_url, n, **kw) for n in names]
        for n in nodes:
            self.addCleanup(n.stop)
            n.start(wait=False)
        for n in nodes:
            wait_until(lambda: n.rpc_ok("core.version") or not n.proc.alive(), timeout=15, what=f"{n.name}'s ctl")
            self.assertTrue(n.proc.alive(), n.proc.output()[-3000:])
        return nodes

    def wait_fleet(self, nodes, entries=TOTAL, timeout=30):
        """Every node holds `entries`, exactly one leads; returns the leader."""
        def ok():
            st = [n.stats() for n in nodes]
            if any(s["entries"] != entries for s in st):
                return None
            leaders = [n for n, s in zip(nodes, st) if s["role"] == "leader"]
            return leaders[0] if len(leaders) == 1 and all(s["leader"] == leaders[0].name for s in st) else None
        return wait_until(ok, timeout=timeout, step=0.2, what=f"{len(nodes)} nodes with {entries} entries, one leader")

    def assert_blocking(self, nodes, listed=LISTED):
        for n in nodes:
            for ip in listed:
                self.assertEqual(n.options(ip), 403, f"{n.name}: {ip}")
            self.assertEqual(n.options(CLEAN), 200, f"{n.name}: clean source")

    def assert_never_over_rate(self, feed, nodes):
        worst = feed.worst_window(RATE[1])
        self.assertLessEqual(worst, RATE[0], f"{worst} requests in one window of {RATE[1]} s")
        for n in nodes:
            if n.proc and n.proc.alive():
                self.assertEqual(n.stats()["rate_limited"], 0, n.name)

    def wait_refused(self, nodes, ip, timeout=15):
        for n in nodes:
            wait_until(lambda: n.options(ip) == 403, timeout=timeout, step=0.1, what=f"{n.name} to refuse {ip}")


class TestFleet(FleetCase):
    def test_one_pull_serves_three_nodes_then_a_hand_over_and_a_late_joiner(self):
        r = self.redis()
        feed = self.feed()
        nodes = self.nodes(feed, r.url(), ["node-a", "node-b", "node-c"])
        leader = self.wait_fleet(nodes)
        followers = [n for n in nodes if n is not leader]
        self.assert_blocking(nodes)

        # Over 60 s the feed hears one node, not three; the lead never moves.
        end = time.monotonic() + 60
        while time.monotonic() < end:
            st = {n.name: n.stats() for n in nodes}
            self.assertEqual([k for k, s in st.items() if s["role"] == "leader"], [leader.name])
            time.sleep(3)
        st = {n.name: n.stats() for n in nodes}
        for f in followers:
            self.assertEqual(st[f.name]["requests"], 0, f.name)
            self.assertEqual(st[f.name]["role"], "follower")
            self.assertGreaterEqual(st[f.name]["fleet_syncs"], 1)
            self.assertEqual(st[f.name]["fleet_version"], st[leader.name]["fleet_version"])
        self.assertEqual(feed.stats()["requests"], st[leader.name]["requests"])
        self.assertGreater(st[leader.name]["requests"], 10, "the leader keeps pulling every interval")
        self.assertEqual(st[leader.name]["leading"], 1)
        self.assertEqual(sum(s["leading"] for s in st.values()), 1)
        self.assert_blocking(nodes)
        self.assertEqual(r.cli("HGET", "apiban:meta", "entries"), str(TOTAL))

        # kill -9 of the leader's whole server: another node leads within leader_ttl + interval.
        last_id = r.cli("HGET", "apiban:meta", "last_id")
        killed_at = time.time()
        leader.kill_server()
        t0 = time.monotonic()
        new = wait_until(lambda: next((n for n in followers if n.stats()["role"] == "leader"), None),
                         timeout=TTL + INTERVAL + 5, step=0.1, what="a new leader")
        took = time.monotonic() - t0
        self.assertLessEqual(took, TTL + INTERVAL + 1.0, f"hand-over took {took:.1f} s")
        # Its first request goes on from the last ID in Redis: an incremental pull.
        wait_until(lambda: any(t > killed_at for t in feed.stats()["times"]), timeout=10, what="a request after the kill")
        s = feed.stats()
        first = next(i for i, t in zip(s["ids"], s["times"]) if t > killed_at)
        self.assertEqual(first, last_id)
        self.assertNotEqual(first, "100")
        # An address listed afterwards reaches the remaining nodes.
        feed.add(["127.0.0.77"])
        self.wait_refused(followers, "127.0.0.77")

        # A fourth node, started late and fresh, blocks from Redis within a second of answering
        # SIP at all, and asks APIBAN nothing.
        late = Node(self.tmp.path, feed.url, r.url(), "node-d")
        self.addCleanup(late.stop)
        late.start(wait=False)
        first_reply = blocked = None
        deadline = time.monotonic() + 20
        while blocked is None and time.monotonic() < deadline:
            code = late.options(LISTED[0]) if late.proc.alive() else None
            now = time.monotonic()
            if code is not None and first_reply is None:
                first_reply = now
            if code == 403:
                blocked = now
            time.sleep(0.02)
        self.assertIsNotNone(blocked, late.log()[-3000:])
        self.assertLessEqual(blocked - first_reply, 1.0)
        wait_until(lambda: late.rpc_ok("core.version"), timeout=10, what="node-d's ctl")
        s = late.stats()
        self.assertEqual((s["requests"], s["role"], s["leader"]), (0, "follower", new.name))
        self.assertEqual(s["entries"], TOTAL + 1)
        self.assert_blocking([late] + followers, LISTED + ["127.0.0.77"])
        # The fleet's requests, hand-over included, never exceeded rate_limit as the feed counts.
        self.assert_never_over_rate(feed, followers + [late])
        # The API key is never written to Redis.
        for k in r.cli("KEYS", "apiban:*").split():
            if r.cli("TYPE", k) == "string":
                self.assertNotIn(KEY, r.cli("GET", k))
        self.assertNotIn(KEY, r.cli("HGETALL", "apiban:meta"))

    def test_redis_slow_then_stopped_for_20_s(self):
        r = self.redis()
        feed = self.feed()
        nodes = self.nodes(feed, r.url(), ["node-a", "node-b"])
        self.wait_fleet(nodes)
        # Slow first: a Redis that answers nothing (SIGSTOP) times out; tables and SIP unmoved.
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            for n in nodes:
                wait_until(lambda: "timed out" in n.stats()["last_error"], timeout=10, what=f"{n.name} to time out")
            self.assert_blocking(nodes)
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        self.wait_fleet(nodes)
        for n in nodes:
            wait_until(lambda: n.stats()["last_error"] == "", timeout=10, what=f"{n.name} to recover")
        port = r.port
        r.stop()
        stopped = time.time()
        # Tables intact, SIP answered, stats and logs say what is wrong.
        for n in nodes:
            wait_until(lambda: "redis" in n.stats()["last_error"], timeout=10, what=f"{n.name} to tell of redis")
        end = time.monotonic() + 20
        added = False
        while time.monotonic() < end:
            self.assert_blocking(nodes)
            if not added and time.monotonic() > end - 10:
                feed.add(["127.0.0.78"])
                added = True
            time.sleep(2)
        for n in nodes:
            s = n.stats()
            self.assertEqual(s["entries"], TOTAL)
            self.assertGreater(s["redis_errors"], 0)
            self.assertIn("redis unavailable", s["last_error"])
            self.assertIn("kept", s["state"])
        # No node talked to APIBAN without a lease (a request in flight at the stop may finish).
        late = [t for t in feed.stats()["times"] if t > stopped + 2]
        self.assertEqual(late, [], "requests while redis was down")
        # Started again, empty as a cache restarts: the leader writes the list back and every node
        # catches up without a restart, the address listed meanwhile included.
        wait_port_free(port)
        r2 = self.redis(port=port)
        self.wait_refused(nodes, "127.0.0.78", timeout=20)
        self.wait_fleet(nodes, entries=TOTAL + 1)
        self.assertEqual(r2.cli("HGET", "apiban:meta", "entries"), str(TOTAL + 1))
        for n in nodes:
            self.assertIn("redis answers again", n.log())
        self.assert_never_over_rate(feed, nodes)

    def test_fleet_fallback_pulls_alone_while_redis_is_away(self):
        r = self.redis()
        feed = FakeApiban(key=KEY, ips=LISTED, count=GENERATED).start()  # no 429: each node pulls alone
        self.addCleanup(feed.stop)
        nodes = self.nodes(feed, r.url(), ["node-a", "node-b"], modparams=[("fleet_fallback", f'"{TTL}"')])
        self.wait_fleet(nodes)
        port = r.port
        r.stop()
        for n in nodes:
            wait_until(lambda: n.stats()["role"] == "fallback", timeout=TTL + 10, what=f"{n.name} to fall back")
        self.assertIn("pulls APIBAN alone", nodes[0].log())
        # Each node now asks APIBAN on its own, and takes what is listed meanwhile.
        before = {n.name: n.stats()["requests"] for n in nodes}
        feed.add(["127.0.0.83"])
        self.wait_refused(nodes, "127.0.0.83")
        for n in nodes:
            self.assertGreater(n.stats()["requests"], before[n.name], n.name)
        # Redis back (empty): one leader again, the others follow it.
        wait_port_free(port)
        self.redis(port=port)
        leader = self.wait_fleet(nodes, entries=TOTAL + 1)
        follower = next(n for n in nodes if n is not leader)
        quiet = follower.stats()["requests"]
        feed.add(["127.0.0.84"])
        self.wait_refused(nodes, "127.0.0.84")
        self.assertEqual(follower.stats()["requests"], quiet)

    def test_a_wrong_password_and_garbage_under_the_prefix(self):
        r = self.redis(password="right-pass-1")
        feed = self.feed()
        a, c = self.nodes(feed, r.url(), ["node-a", "node-c"])
        bad = self.nodes(feed, r.url(password="wrong-pass-9"), ["node-b"])[0]
        self.wait_fleet([a, c])
        # The node with the wrong password: no table from Redis, no request to APIBAN, a clear
        # error, and neither password anywhere in its stats or log.
        wait_until(lambda: "credentials" in bad.stats()["last_error"], timeout=10, what="an auth error")
        s = bad.stats()
        self.assertEqual((s["requests"], s["entries"], s["role"]), (0, 0, "follower"))
        self.assertGreater(s["redis_errors"], 0)
        text = str(s) + bad.log()
        for secret in ("wrong-pass-9", "right-pass-1"):
            self.assertNotIn(secret, text)
        self.assertIn("redis refused the credentials", bad.log())

        # Garbage under the prefix: another format's meta. Refused, never overwritten; every
        # table in use is kept.
        follower = c if a.stats()["role"] == "leader" else a
        leader = a if follower is c else c
        r.cli("DEL", "apiban:meta")
        r.cli("HSET", "apiban:meta", "format", "apiban-fleet-9", "epoch", "x", "version", "999")
        for n in (a, c):
            wait_until(lambda: "not ours" in n.stats()["last_error"], timeout=10, what=f"{n.name} to refuse the data")
        self.assertIn("apiban-fleet-9", follower.stats()["last_error"])
        time.sleep(2)
        self.assert_blocking([a, c])
        self.assertEqual(r.cli("HGET", "apiban:meta", "format"), "apiban-fleet-9")
        # A list of the wrong type.
        r.cli("DEL", "apiban:meta")
        r.cli("SET", "apiban:list", "garbage")
        wait_until(lambda: "not ours" in leader.stats()["last_error"], timeout=10, what="the list refused")
        self.assertEqual(r.cli("GET", "apiban:list"), "garbage")
        self.assert_blocking([a, c])
        # Cleared by the operator: the fleet writes and follows again, without a restart.
        r.cli("DEL", "apiban:list")
        feed.add(["127.0.0.79"])
        self.wait_refused([a, c], "127.0.0.79")
        self.assertEqual(r.cli("HGET", "apiban:meta", "format"), "apiban-fleet-2")

    def test_redis_over_tls_with_a_certificate_made_by_the_test(self):
        ca, cert, key = make_test_ca(os.path.join(self.tmp.path, "tls"))
        r = self.redis(tls=(ca, cert, key))
        feed = self.feed()
        self.assertTrue(r.url().startswith("rediss://"))
        # rediss:// trusts what the feed trusts: the system's store plus ca_file...
        by_ca_file = self.nodes(feed, r.url(), ["node-a"], modparams=[("ca_file", f'"{ca}"')])
        self.wait_fleet(by_ca_file)
        # ... or the system's store (SSL_CERT_FILE names it, as for OpenSSL and the feed's client).
        by_system = self.nodes(feed, r.url(), ["node-b"], env={"SSL_CERT_FILE": ca})
        self.wait_fleet(by_ca_file + by_system)
        self.assert_blocking(by_ca_file + by_system)
        # Not trusted: refused, and the reason says which.
        untrusted = self.nodes(feed, r.url(), ["node-c"])[0]
        wait_until(lambda: "UnknownIssuer" in untrusted.stats()["last_error"], timeout=10, what="a TLS error")
        self.assertEqual(untrusted.stats()["entries"], 0)

    def test_sentinel_over_tls(self):
        """rediss+sentinel://: TLS to the sentinel and to the master it names, trusting ca_file."""
        ca, cert, key = make_test_ca(os.path.join(self.tmp.path, "tls"))
        master = self.redis(name="master", tls=(ca, cert, key), password="tls-sentinel-pw")
        sentinel = RedisSentinel(self.tmp.path, master.port, tls=(ca, cert, key), password="tls-sentinel-pw").start()
        self.addCleanup(sentinel.stop)
        feed = self.feed()
        url = sentinel.url(password="tls-sentinel-pw")
        self.assertTrue(url.startswith("rediss+sentinel://"))
        nodes = self.nodes(feed, url, ["node-a", "node-b"], modparams=[("ca_file", f'"{ca}"')])
        self.wait_fleet(nodes)
        self.assert_blocking(nodes)
        self.assertEqual(master.cli("HGET", "apiban:meta", "entries"), str(TOTAL))
        self.assertNotIn("tls-sentinel-pw", nodes[0].log())

    def test_redis_on_a_unix_socket(self):
        r = self.redis(unix=True, password="sock-pass-3")
        feed = self.feed()
        self.assertTrue(r.url().startswith("redis+unix:///"))
        nodes = self.nodes(feed, r.url(db=2), ["node-a", "node-b"])
        self.wait_fleet(nodes)
        self.assert_blocking(nodes)
        self.assertEqual(r.cli("-n", "2", "HGET", "apiban:meta", "entries"), str(TOTAL))
        self.assertNotIn("sock-pass-3", nodes[0].log())

    def test_sentinel_fail_over_of_the_master(self):
        master = self.redis(name="master")
        replica = self.redis(name="replica", replica_of=master.port)
        sentinel = RedisSentinel(self.tmp.path, master.port).start()
        self.addCleanup(sentinel.stop)
        feed = self.feed()
        nodes = self.nodes(feed, sentinel.url(), ["node-a", "node-b"])
        self.wait_fleet(nodes)
        wait_until(lambda: replica.cli("HGET", "apiban:meta", "entries") == str(TOTAL), timeout=10,
                   what="the replica to hold the list")
        master.kill()
        wait_until(lambda: sentinel.master_port() == replica.port, timeout=30, step=0.2, what="the fail-over")
        feed.add(["127.0.0.80"])
        self.wait_refused(nodes, "127.0.0.80", timeout=25)
        self.wait_fleet(nodes, entries=TOTAL + 1)
        self.assertEqual(replica.cli("HGET", "apiban:meta", "entries"), str(TOTAL + 1))
        self.assertGreater(sum(n.stats()["redis_errors"] for n in nodes), 0)
        self.assert_never_over_rate(feed, nodes)

    def test_a_stopped_sentinel_does_not_stall_the_fail_over(self):
        """Issue 15: every Sentinel call has a timeout. Three sentinels (two of three must be up to
        elect the one that fails over), the first one listed stopped with SIGSTOP: its kernel
        still accepts, so only a read timeout gets past it."""
        master = self.redis(name="master")
        replica = self.redis(name="replica", replica_of=master.port)
        sentinels = [RedisSentinel(self.tmp.path, master.port) for _ in range(3)]
        for s in sentinels:
            s.start()
            self.addCleanup(s.stop)
        # Run before stop (cleanups run last first): a stopped sentinel ignores SIGTERM.
        self.addCleanup(sentinels[0].resume)
        feed = self.feed()
        nodes = self.nodes(feed, sentinels[0].url(others=sentinels[1:]), ["node-a", "node-b", "node-c"])
        self.wait_fleet(nodes)
        wait_until(lambda: all(s.known() == (2, 1) for s in sentinels), timeout=20, step=0.2,
                   what="each sentinel to know the two others and the replica")
        wait_until(lambda: replica.cli("HGET", "apiban:meta", "entries") == str(TOTAL), timeout=10,
                   what="the replica to hold the list")
        sentinels[0].pause()
        killed = time.monotonic()
        master.kill()
        wait_until(lambda: sentinels[1].master_port() == replica.port, timeout=30, step=0.2, what="the fail-over")
        failed_over = time.monotonic()
        feed.add(["127.0.0.88"])
        added = time.monotonic()
        wait_until(lambda: all(n.options("127.0.0.88") == 403 for n in nodes), timeout=15, step=0.1,
                   what="every node to refuse 127.0.0.88")
        done = time.monotonic()
        print(f"\n  fail-over {failed_over - killed:.1f} s after the kill; 127.0.0.88 refused by every node "
              f"{done - added:.1f} s after it was listed", flush=True)
        self.wait_fleet(nodes, entries=TOTAL + 1)
        self.assertEqual(replica.cli("HGET", "apiban:meta", "entries"), str(TOTAL + 1))
        self.assert_never_over_rate(feed, nodes)


class TestMixedFleet(FleetCase):
    """Kamailio and OpenSIPS nodes in one fleet (needs an OpenSIPS tree, as test_opensips.py)."""

    @classmethod
    def setUpClass(cls):
        # Builds the OpenSIPS flavour of the module into target/opensips; without a tree it skips
        # the class (or fails, under APIBAN_REQUIRE_OPENSIPS=1), saying so in unittest's report.
        osips.build_opensips_module()

    def opensips_node(self, feed, redis_url, name):
        d = os.path.join(self.tmp.path, name)
        os.makedirs(d, exist_ok=True)
        o = osips.OpenSIPS(d, feed.url, key=KEY, defines={
            "APIBAN_REDIS_URL": redis_url,
            "APIBAN_NODE_ID": name,
            "APIBAN_INTERVAL": str(INTERVAL),
            "APIBAN_RATE_LIMIT": f"{RATE[0]}/{RATE[1]}",
        }, modparams=[("leader_ttl", f'"{TTL}"'), ("timeout", "1")])
        o.name = name
        self.addCleanup(o.stop)
        return o.start()

    def test_an_opensips_node_follows_then_leads(self):
        r = self.redis()
        feed = self.feed()
        kam = self.nodes(feed, r.url(), ["kamailio-a"])[0]
        self.wait_fleet([kam])
        o = self.opensips_node(feed, r.url(), "opensips-b")
        self.wait_fleet([kam, o])
        s = o.stats()
        self.assertEqual((s["role"], s["leader"], s["requests"]), ("follower", "kamailio-a", 0))
        self.assert_blocking([kam, o])
        feed.add(["127.0.0.81"])
        self.wait_refused([kam, o], "127.0.0.81")
        # The Kamailio leader dies: the OpenSIPS node leads and pulls on from the last ID.
        last_id = r.cli("HGET", "apiban:meta", "last_id")
        killed_at = time.time()
        kam.kill_server()
        wait_until(lambda: o.stats()["role"] == "leader", timeout=TTL + INTERVAL + 5, step=0.1, what="opensips to lead")
        feed.add(["127.0.0.82"])
        self.wait_refused([o], "127.0.0.82")
        self.assertGreater(o.stats()["requests"], 0)
        s = feed.stats()
        self.assertEqual(next(i for i, t in zip(s["ids"], s["times"]) if t > killed_at), last_id)
        self.assert_never_over_rate(feed, [o])


if __name__ == "__main__":
    unittest.main()
