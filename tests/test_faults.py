"""The fault suite: whatever the feed does, the real Kamailio keeps answering SIP, the table stays
exactly what it must be (the last good one, or the new one when the reply was good after all),
`apiban.stats` says what went wrong, and the API key shows in no log line and no RPC reply.

One Kamailio per class, `interval` 1 and `timeout` 2 s. Each test arms a fault in the fake feed
(tests/fake_apiban.py), adds a fresh address to the feed and asks for a pull with `apiban.reload`;
then it clears the fault and reloads again (a reload also ends any backoff), so the feed heals.
A fault stays armed until cleared: every request meets it, so what the test reads cannot be a
good pull that came in between.

APIBAN_MODULE=/path/to/libapiban.so runs the suite against another build of the module.
"""

import re
import time
import unittest

from harness import KAMAILIO_MODULE, FakeApiban, Kamailio, TempDir, parse_kamcmd_struct, wait_until

MODULE = KAMAILIO_MODULE  # APIBAN_MODULE, see harness.py
KEY = "k-faults-S3CRET-0123456789"
LISTED = "127.0.0.66"
CLEAN = "127.0.0.5"
# 22 addresses: one batch of the feed, so a full pull is two requests.
BASE = [LISTED, "127.0.0.67"] + [f"10.0.0.{i}" for i in range(1, 21)]
TIMEOUT = 2


def split_families(ips):
    v6 = [ip for ip in ips if ":" in ip]
    return len(ips) - len(v6), len(v6)


class FeedFaultCase(unittest.TestCase):
    """A Kamailio and a feed for the class; each test starts from a healthy, synced table of BASE."""

    modparams = ()
    fresh = 0

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("faults")
        cls.feed = FakeApiban(key=KEY, ips=BASE).start()
        cls.kam = Kamailio(cls.tmp.path, cls.feed.url, key=KEY, defines={"APIBAN_INTERVAL": "1"},
                           modparams=[("timeout", str(TIMEOUT)), *cls.modparams], module=MODULE)
        cls.kam.start()
        cls.kam.wait_synced(entries=len(BASE))

    @classmethod
    def tearDownClass(cls):
        cls.kam.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    def setUp(self):
        self.feed.clear_fault()
        self.feed.start()  # a no-op unless a test stopped it
        if [ip for ip, _ in self.feed.entries()] != BASE:
            self.feed.set_list(ips=BASE)
            self.reload()
            self.wait_reload_done()
        elif self.kam.stats()["state"].startswith("backoff"):
            self.reload()
            self.wait_reload_done()
        self.s0 = self.wait_healthy(BASE)

    def tearDown(self):
        self.assert_key_hidden()

    # ---- helpers ------------------------------------------------------------------------------
    def fresh_ip(self):
        """A loopback address the feed does not list yet: SIP can come from it."""
        FeedFaultCase.fresh += 1
        return f"127.0.1.{FeedFaultCase.fresh}"

    def reload(self):
        """Asks for a full pull; wait_reload_done() waits for it to end well."""
        self.reloads = self.kam.log().count("sync done (reload)")
        rc, out = self.kam.kamcmd("apiban.reload")
        self.assertEqual(rc, 0, out)

    def wait_reload_done(self, timeout=30):
        """The pull asked for by reload() is complete (its log line), whatever pulls ran besides."""
        wait_until(lambda: self.kam.log().count("sync done (reload)") > self.reloads, timeout=timeout,
                   step=0.1, what="the end of the reload's pull")

    def wait_healthy(self, ips, timeout=30):
        """A good pull of exactly `ips` is done and nothing failed since."""
        v4, v6 = split_families(ips)

        def ok():
            s = self.kam.stats()
            good = (s["state"] == "ok" and s["last_error"] == "" and s["backoff_until"] == 0
                    and (s["entries"], s["ipv4"], s["ipv6"]) == (len(ips), v4, v6)
                    and s["last_id"] == self.feed.max_id)
            return s if good else None
        return wait_until(ok, timeout=timeout, step=0.1, what=f"a healthy table of {len(ips)} entries")

    @staticmethod
    def error_line(expect, from_id):
        """The log line of a request from `from_id` failing with `expect`. A refused key is logged
        as an error (the operator has to act), every other failure as a warning."""
        level = "ERROR" if "API key was refused" in expect else "WARNING"
        return re.compile(rf"{level}: apiban: feed request from ID {from_id} failed: .*{re.escape(expect)}")

    def wait_error(self, expect, from_id, n0, timeout=20):
        """A request from `from_id` fails with an error containing `expect`: one more of its log
        lines than the `n0` counted before the pull was asked for (so the failure seen is that of
        the pull the test asked for, not of one before it; counted before, since a reload starts
        at once and may have failed by the time this is called)."""
        line = self.error_line(expect, from_id)
        wait_until(lambda: len(line.findall(self.kam.log())) > n0, timeout=timeout, step=0.1,
                   what=line.pattern)
        s = self.kam.stats()
        self.assertGreater(s["sync_failures"], self.s0["sync_failures"])
        self.assertIn(expect, s["last_error"])
        return s

    def check(self, ip):
        rc, out = self.kam.kamcmd("apiban.check", ip)
        self.assertEqual(rc, 0, out)
        self.assertNotIn(KEY, out)
        return parse_kamcmd_struct(out)["result"]

    def assert_table(self, s, ips, absent=()):
        """The table holds exactly `ips` (counts per family, and the addresses we look at)."""
        v4, v6 = split_families(ips)
        self.assertEqual((s["entries"], s["ipv4"], s["ipv6"]), (len(ips), v4, v6), s)
        for ip in {ips[0], ips[-1], LISTED, BASE[-1]} & set(ips):
            self.assertEqual(self.check(ip), "listed", ip)
        for ip in absent:
            self.assertEqual(self.check(ip), "not listed", ip)

    def assert_sip(self, refused=(), served=()):
        """The server answers SIP: listed sources get 403, clean ones 200."""
        for ip in refused:
            self.assertEqual(self.kam.options(ip), 403, f"OPTIONS from {ip}")
        for ip in served:
            self.assertEqual(self.kam.options(ip), 200, f"OPTIONS from {ip}")

    def assert_key_hidden(self):
        self.assertNotIn(KEY, self.kam.log(), "the API key is in Kamailio's log")
        rc, out = self.kam.kamcmd("apiban.stats")
        self.assertNotIn(KEY, out, "the API key is in apiban.stats")

    def fault_keeps_the_table(self, mode, expect, reload=True, stop_feed=False, **params):
        """Arms `mode`, adds an address to the feed, asks for a pull: the pull fails with `expect`
        (logged) and the table, SIP and the last ID stay as they were. Without reload, waits for
        the next incremental pull. Returns the stats seen."""
        new = self.fresh_ip()
        from_id = 100 if reload else self.s0["last_id"]
        n0 = len(self.error_line(expect, from_id).findall(self.kam.log()))
        if stop_feed:
            self.feed.stop()
        else:
            self.feed.set_fault(mode, **params)
        self.feed.add([new])
        if reload:
            self.reload()
        s = self.wait_error(expect, from_id, n0, timeout=6 * TIMEOUT + 10)
        self.assertTrue(s["state"].startswith("backoff until "), s["state"])
        self.assertIn(expect, s["state"])
        self.assertGreater(s["backoff_until"], 0)
        self.assertEqual(s["last_id"], self.s0["last_id"], "the resume ID moved on a failed pull")
        self.assert_table(s, BASE, absent=[new])
        self.assert_sip(refused=[LISTED], served=[CLEAN, new])
        self.assertEqual(self.kam.stats()["entries"], len(BASE))
        self.new = new
        return s

    def pull_brings(self, mode, new, **params):
        """Arms `mode`, adds `new` to the feed and reloads: the reply is good after all, the
        reload's pull brings it. Returns the stats after."""
        if mode:
            self.feed.set_fault(mode, **params)
        self.feed.add(new)
        self.reload()
        self.wait_reload_done()
        s = self.wait_healthy(BASE + new)
        if mode:
            self.assertGreater(self.feed.stats()["faults_served"], 0)
        self.assertEqual(s["sync_failures"], self.s0["sync_failures"])
        self.assert_table(s, BASE + new)
        self.assert_sip(refused=[LISTED], served=[CLEAN])
        return s

    def heal(self):
        """The feed recovers: the next pull brings what was added while it failed."""
        self.feed.clear_fault()
        self.feed.start()
        self.reload()
        self.wait_reload_done()
        ips = BASE + [self.new]
        s = self.wait_healthy(ips)
        self.assert_table(s, ips)
        self.assert_sip(refused=[LISTED, self.new], served=[CLEAN])
        return s


class FeedFaults(FeedFaultCase):
    """Each fault of the feed, API v2 (key in the Authorization header)."""

    # ---- server errors ----------------------------------------------------------------------
    def test_http_500(self):
        self.fault_keeps_the_table("status", "HTTP 500: server error", code=500)
        self.heal()

    def test_http_502(self):
        self.fault_keeps_the_table("status", "HTTP 502: server error", code=502)
        self.heal()

    def test_http_503(self):
        self.fault_keeps_the_table("status", "HTTP 503: server error", code=503)
        self.heal()

    def test_http_404_that_is_not_the_end_marker(self):
        self.fault_keeps_the_table("status", "HTTP 404: unexpected status", code=404)
        self.heal()

    def test_503_twice_heals_by_itself_after_backoff(self):
        """No reload to heal: the retries after the backoff (1 s, then 2 s) bring the new address."""
        new = self.fresh_ip()
        self.feed.set_fault("status", times=2, code=503)
        self.feed.add([new])
        self.reload()
        s = self.wait_healthy(BASE + [new], timeout=30)
        self.assertGreaterEqual(s["sync_failures"] - self.s0["sync_failures"], 2)
        self.assertEqual(self.feed.stats()["fault"], None, "the fault was not used up")
        self.assert_sip(refused=[LISTED, new], served=[CLEAN])

    # ---- rate limited, refused key ----------------------------------------------------------
    def test_429_with_retry_after(self):
        s = self.fault_keeps_the_table("429", "HTTP 429: rate limited (Retry-After 1 s)", retry_after=1)
        self.assertGreater(s["rate_limited"], self.s0["rate_limited"])
        self.assertRegex(s["state"], r"^backoff until \d+ \(1 s\): HTTP 429")
        self.heal()

    def test_429_with_a_long_retry_after_waits_that_long(self):
        s = self.fault_keeps_the_table("429", "HTTP 429: rate limited (Retry-After 120 s)", retry_after=120)
        self.assertRegex(s["state"], r"^backoff until \d+ \(120 s\): ")
        self.assertGreater(s["backoff_until"] - time.time(), 110)
        self.heal()

    def test_429_without_retry_after_backs_off_from_30_s(self):
        s = self.fault_keeps_the_table("429", "HTTP 429: rate limited")
        self.assertEqual(s["last_error"], "HTTP 429: rate limited")
        self.assertGreater(s["rate_limited"], self.s0["rate_limited"])
        m = re.match(r"^backoff until (\d+) \((\d+) s\): HTTP 429: rate limited$", s["state"])
        self.assertTrue(m, s["state"])
        # 30 s with jitter (half to all of it), counted from the failed request.
        self.assertTrue(15 <= int(m.group(2)) <= 30, s["state"])
        self.assertEqual(int(m.group(1)), s["backoff_until"])
        ahead = s["backoff_until"] - time.time()
        self.assertTrue(10 <= ahead <= 31, f"backoff_until is {ahead:.1f} s ahead")
        # Nothing is asked of the feed while backing off.
        n = self.feed.stats()["requests"]
        time.sleep(2)
        self.assertEqual(self.feed.stats()["requests"], n, "a request went out during the backoff")
        self.assertEqual(self.kam.stats()["rate_limited"], s["rate_limited"])
        self.heal()

    def test_403_wrong_key(self):
        s = self.fault_keeps_the_table("403", "HTTP 403: the API key was refused")
        self.assertEqual(s["syncs"], self.s0["syncs"])
        # A refused key backs off from 60 s (with jitter: 30 to 60 s).
        ahead = s["backoff_until"] - time.time()
        self.assertTrue(25 <= ahead <= 61, f"backoff_until is {ahead:.1f} s ahead")
        self.heal()

    def test_401(self):
        self.fault_keeps_the_table("status", "HTTP 401: the API key was refused", code=401, body="")
        self.heal()

    # ---- transport ---------------------------------------------------------------------------
    def test_connection_refused(self):
        self.fault_keeps_the_table(None, "connection refused", stop_feed=True)
        self.heal()

    def test_reset_mid_body(self):
        self.fault_keeps_the_table("reset_mid_body", "connection reset")
        self.heal()

    def test_no_headers_before_the_timeout(self):
        self.fault_keeps_the_table("no_headers", "timed out", seconds=4 * TIMEOUT)
        self.heal()

    def test_a_body_trickled_too_slowly(self):
        # About 600 bytes at one per 50 ms: longer than the 2 x timeout a request may take.
        self.fault_keeps_the_table("trickle", "timed out", delay=0.05)
        self.heal()

    def test_a_body_trickled_byte_by_byte_in_time_arrives_whole(self):
        new = self.fresh_ip()
        self.pull_brings("trickle", [new], delay=0.001)
        self.assert_sip(refused=[new])

    # ---- broken bodies -------------------------------------------------------------------------
    def test_truncated_json(self):
        self.fault_keeps_the_table("truncated_json", "bad reply: not JSON")
        self.heal()

    def test_invalid_json(self):
        self.fault_keeps_the_table("invalid_json", "bad reply: not JSON")
        self.heal()

    def test_html_error_page(self):
        self.fault_keeps_the_table("html", "HTTP 502: server error", code=502)
        self.heal()

    def test_html_page_with_200(self):
        self.fault_keeps_the_table("html", "bad reply: not JSON", code=200)
        self.heal()

    def test_empty_body(self):
        self.fault_keeps_the_table("empty_body", "bad reply: empty body")
        self.heal()

    def test_50_mb_body_is_refused(self):
        self.fault_keeps_the_table("huge_body", "reply larger than 16777216 bytes: refused", size=50_000_000)
        self.heal()

    # ---- reply shapes ----------------------------------------------------------------------------
    def test_ipaddress_as_array_by_incremental_pull(self):
        """The usual shape, no reload: the next incremental pull (interval 1 s) brings it."""
        new = self.fresh_ip()
        self.feed.reset_stats()
        self.feed.add([new])
        s = self.wait_healthy(BASE + [new])
        self.assertGreater(s["syncs"], self.s0["syncs"])
        self.assertNotIn("100", self.feed.stats()["ids"], "a full pull, not an incremental one")
        self.assert_sip(refused=[LISTED, new], served=[CLEAN])

    def test_ipaddress_as_string(self):
        """One address per reply, as a string: a full pull takes one request per address."""
        new = self.fresh_ip()
        s = self.pull_brings("ipaddress_string", [new])
        self.assertGreaterEqual(s["requests"] - self.s0["requests"], len(BASE) + 2)
        self.assert_sip(refused=[new])

    def test_ipaddress_missing(self):
        self.fault_keeps_the_table("ipaddress_missing", "bad reply: no ipaddress field")
        self.heal()

    def test_ipaddress_wrong_type(self):
        self.fault_keeps_the_table("ipaddress_wrong_type", "bad reply: ipaddress is neither a list nor a string")
        self.heal()

    def test_id_missing(self):
        self.fault_keeps_the_table("id_missing", "bad reply: no ID field")
        self.heal()

    def test_id_non_numeric(self):
        self.fault_keeps_the_table("id_non_numeric", "bad reply: ID is not a number")
        self.heal()

    def test_id_going_backwards(self):
        """An incremental pull (no reload: it asks from the last ID) gets an older ID back."""
        s = self.fault_keeps_the_table("id_backwards", "bad reply: ID went backwards", reload=False)
        self.assertIn(f"after {self.s0['last_id']})", s["last_error"])
        self.heal()

    def test_id_none_with_200_is_the_end(self):
        """200 with the addresses and ID "none": kept, and the end of the pull; "none" is never
        taken as the resume ID."""
        new = self.fresh_ip()
        self.feed.set_fault("none_200")
        self.feed.add([new])
        self.reload()
        self.wait_reload_done()
        s = self.kam.stats()
        self.assertEqual((s["last_error"], s["sync_failures"]), ("", self.s0["sync_failures"]))
        self.assertEqual(s["last_id"], self.s0["last_id"])
        self.assert_table(s, BASE + [new])
        self.assert_sip(refused=[LISTED, new], served=[CLEAN])
        # Healed, the next pull brings the real ID.
        self.feed.clear_fault()
        self.reload()
        self.wait_reload_done()
        self.wait_healthy(BASE + [new])

    def test_invalid_addresses_are_skipped_and_counted(self):
        new = self.fresh_ip()
        # Baselines of this test: the class's earlier tests count faults and skipped tokens too.
        skipped0, served0 = self.kam.stats()["skipped"], self.feed.stats()["faults_served"]
        self.pull_brings("invalid_addresses", [new])  # 4 junk tokens in every reply
        self.feed.clear_fault()
        # Exactly 4 per faulted reply: once the fault is cleared no more junk comes, and a pull
        # that had junk adds it to `skipped` when it ends.
        served = self.feed.stats()["faults_served"] - served0
        self.assertGreater(served, 0)
        s = wait_until(lambda: (lambda s: s if s["skipped"] - skipped0 == 4 * served else None)(self.kam.stats()),
                       timeout=15, what=f"skipped to grow by exactly {4 * served}")
        self.assertEqual(s["skipped"] - skipped0, 4 * served)
        self.assertEqual(self.check("1.2.3.4"), "not listed")  # from the junk "1.2.3.4/24"
        self.assertRegex(self.kam.log(), r"sync done \(reload\): [01] added, 0 expired, [1-9]\d* skipped")
        self.assert_sip(refused=[new])

    def test_duplicate_addresses_collapse(self):
        new = self.fresh_ip()
        s = self.pull_brings("duplicates", [new])  # every address twice
        self.assertEqual(s["skipped"], self.s0["skipped"])
        self.assert_sip(refused=[new])

    def test_ipv6_entries(self):
        v6 = ["2001:db8::77", "2001:db8:aa::78", "fe80::1"]
        s = self.pull_brings(None, v6)
        self.assertEqual(s["ipv6"], 3)
        self.assertEqual(self.check("[2001:DB8:AA:0::78]"), "listed")
        self.assertEqual(self.check("2001:db8::79"), "not listed")
        self.assertEqual(self.kam.options(CLEAN, ["X-Real-IP: 2001:db8::77"]), 403)
        self.assertEqual(self.kam.options(CLEAN, ["X-Real-IP: 2001:db8::79"]), 200)

    def test_a_batch_of_10000(self):
        big = [f"10.200.{i // 250}.{i % 250 + 1}" for i in range(10_000)]
        s = self.pull_brings("big_batch", big, size=10_000)
        # BASE + 10,000 in two replies and the end marker, not 41 batches of 250.
        self.assertLess(s["requests"] - self.s0["requests"], 15)
        self.assertEqual(s["overflow"], 0)
        for ip in (big[0], big[4999], big[-1]):
            self.assertEqual(self.check(ip), "listed", ip)
        self.assertEqual(self.check("10.200.40.1"), "not listed")


class FeedFaultsApiV1(FeedFaultCase):
    """API v1 puts the key in the URL: transport errors and refusals must not show it."""

    modparams = (("api_version", "1"),)

    def test_v1_connection_refused(self):
        self.fault_keeps_the_table(None, "connection refused", stop_feed=True)
        self.heal()

    def test_v1_reset_mid_body(self):
        self.fault_keeps_the_table("reset_mid_body", "connection reset")
        self.heal()

    def test_v1_no_headers(self):
        self.fault_keeps_the_table("no_headers", "timed out", seconds=4 * TIMEOUT)
        self.heal()

    def test_v1_403(self):
        self.fault_keeps_the_table("403", "HTTP 403: the API key was refused")
        self.heal()

    def test_v1_500(self):
        self.fault_keeps_the_table("status", "HTTP 500: server error", code=500)
        self.heal()

    def test_v1_requests_carry_the_key_in_the_path(self):
        paths = self.feed.stats()["by_path"]
        self.assertTrue(any(p.startswith(f"/api/{KEY}/banned/") for p in paths), paths)


class ResumeAndRateLimit(unittest.TestCase):
    """A full pull of several batches: a failure in the middle resumes from the last good ID,
    and the requests never exceed `rate_limit`."""

    def setUp(self):
        self.tmp = TempDir("faults-resume")
        self.feed = FakeApiban(key=KEY, ips=[LISTED], count=1199).start()  # 1,200: 5 batches
        self.kam = None

    def tearDown(self):
        if self.kam:
            self.kam.stop()
            self.assertNotIn(KEY, self.kam.log())
        self.feed.stop()
        self.tmp.cleanup()

    def start(self, rate_limit):
        self.kam = Kamailio(self.tmp.path, self.feed.url, key=KEY,
                            defines={"APIBAN_INTERVAL": "1", "APIBAN_RATE_LIMIT": f'"{rate_limit}"'},
                            modparams=[("timeout", str(TIMEOUT))], module=MODULE).start()

    def test_a_pull_failing_midway_resumes_from_its_last_good_id(self):
        self.start("1000/1")
        s0 = self.kam.wait_synced(entries=1200)
        ids = [str(ts) for _, ts in self.feed.entries()]
        new = "127.0.1.200"
        # The third request of the full pull (after 500 addresses) fails twice, then heals.
        self.feed.set_fault("status", times=2, code=503, only_id=ids[499])
        self.feed.add([new])
        self.feed.reset_stats()
        self.kam.kamcmd("apiban.reload")
        s = wait_until(lambda: (lambda st: st if st["sync_failures"] - s0["sync_failures"] == 2 and st["state"] == "ok"
                                and st["entries"] == 1201 else None)(self.kam.stats()),
                       timeout=30, what="the reload's pull, after two failures")
        asked = self.feed.stats()["ids"]
        start = asked.index("100")
        self.assertEqual(asked[start:start + 7],
                         ["100", ids[249], ids[499], ids[499], ids[499], ids[749], ids[999]], asked)
        self.assertEqual(self.kam.options(new), 403)
        self.assertEqual(self.kam.options(LISTED), 403)
        self.assertEqual(self.kam.options(CLEAN), 200)
        self.assertEqual((s["last_error"], s["last_id"]), ("", self.feed.max_id))

    def test_requests_never_exceed_the_rate_limit(self):
        # 4 requests in any 2 s, at least 0.25 s apart; a full pull of 1,200 is 6 requests.
        self.start("4/2")
        s = self.kam.wait_synced(entries=1200, timeout=30)
        self.feed.add(["127.0.1.201"])
        self.kam.kamcmd("apiban.reload")
        self.kam.wait_synced(entries=1201, syncs=s["syncs"] + 1, timeout=30)
        times = self.feed.stats()["times"]
        self.assertGreaterEqual(len(times), 12)
        # Arrival times at the feed, with slack for the loopback and the threads of both sides.
        for i, t in enumerate(times):
            in_window = [u for u in times[i:] if u - t < 2 - 0.3]
            self.assertLessEqual(len(in_window), 4, f"{len(in_window)} requests within 2 s from request {i}")
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertGreater(min(gaps), 0.1, gaps)


if __name__ == "__main__":
    unittest.main(verbosity=2)
