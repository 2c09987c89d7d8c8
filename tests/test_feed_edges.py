"""The edges of the module's promises about the feed, against the real Kamailio:

- the rate limit as the feed counts it (arrivals), with first requests of a connection that
  arrive late, at `rate_limit "4/10"` and at the default 11/120;
- `max_entries` keeps the most recently listed addresses;
- pulls go on when the wall clock is stepped back (scheduling is monotonic; libfaketime steps
  the server's wall clock, and only it).
"""
import os
import time
import unittest

from harness import KAMAILIO_MODULE, FakeApiban, Kamailio, TempDir, parse_kamcmd_struct, wait_until

KEY = "k-edges-0123456789"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def set_clock_offset(path, offset):
    """Writes libfaketime's offset file (FAKETIME_TIMESTAMP_FILE, "+300", "-1800") in one step, a
    rename: the preloaded library re-reads it at every call (FAKETIME_NO_CACHE), and Debian 13's
    exits the server when it reads the file between the truncation and the write."""
    with open(path + ".new", "w") as f:
        f.write(f"{offset}\n")
    os.replace(path + ".new", path)


def start(tmp, feed, interval=1, rate_limit=None, modparams=(), env=None):
    defines = {"APIBAN_INTERVAL": str(interval)}
    if rate_limit:
        defines["APIBAN_RATE_LIMIT"] = f'"{rate_limit}"'
    kam = Kamailio(tmp, feed.url, key=KEY, defines=defines, modparams=modparams, module=KAMAILIO_MODULE)
    return kam.start(env=env)


class RateLimitAsTheFeedCounts(unittest.TestCase):
    """A feed that counts arrivals and answers 429 past the limit, whose first request on each
    connection arrives 1.5 s late, and which closes each connection after 3 requests: a request
    sent at the very end of a window, on a kept-alive connection, would otherwise arrive inside
    the window of a slow first one."""

    def run_pulls(self, rate, window, addresses, pulls):
        tmp = TempDir("ratelimit")
        feed = FakeApiban(key=KEY, count=addresses, batch=1, first_request_delay=1.5, requests_per_connection=3,
                          rate_limit=(rate, window)).start()
        kam = None
        try:
            kam = start(tmp.path, feed, interval=3600, rate_limit=f"{rate}/{window}")
            for i in range(pulls):
                if i:
                    kam.kamcmd("apiban.reload")
                wait_until(lambda: (lambda s: s["syncs"] > i and s["state"] == "ok")(kam.stats()),
                           timeout=60 + (addresses + 1) * window / rate * 1.2, step=0.5, what=f"full pull {i + 1}")
            s = kam.stats()
            times = feed.stats()["times"]
            self.assertEqual(len(times), pulls * (addresses + 1))  # batches of one, then the end marker
            self.assertEqual((s["rate_limited"], s["sync_failures"], s["entries"]), (0, 0, addresses))
            worst = feed.worst_window(window)
            self.assertLessEqual(worst, rate, f"{worst} requests arrived within {window} s: {times}")
            # And the budget is used, not wasted: the window is full at some point.
            self.assertEqual(worst, rate)
        finally:
            if kam:
                kam.stop()
            feed.stop()
            tmp.cleanup()

    def test_4_per_10_s_over_several_full_pulls(self):
        self.run_pulls(4, 10, addresses=5, pulls=3)

    def test_the_default_11_per_120_s(self):
        # 13 requests: the 12th is the first that the window holds back.
        self.run_pulls(11, 120, addresses=12, pulls=1)


class MaxEntriesKeepsTheNewest(unittest.TestCase):
    def test_a_list_three_times_max_entries(self):
        tmp = TempDir("maxentries")
        # 3000 addresses, oldest first: 127.0.0.70, then 2998 generated, then 127.0.0.71.
        feed = FakeApiban(key=KEY, ips=["127.0.0.70"], count=2998).start()
        feed.add(["127.0.0.71"])
        kam = None
        try:
            kam = start(tmp.path, feed, interval=3600, rate_limit="1000/1", modparams=[("max_entries", "1000")])
            s = kam.wait_synced(entries=1000, timeout=30)
            self.assertEqual(s["overflow"], 2000)
            self.assertEqual(kam.options("127.0.0.71"), 403)  # listed last: kept
            self.assertEqual(kam.options("127.0.0.70"), 200)  # listed first: left out
            check = lambda ip: parse_kamcmd_struct(kam.kamcmd("apiban.check", ip)[1])["result"]
            self.assertEqual(check("10.0.0.1"), "not listed")  # the oldest generated
            self.assertEqual(check("10.0.11.182"), "listed")  # the newest generated (the 2998th)
            self.assertRegex(kam.log(), r"WARNING:.*max_entries \(1000\): kept the 1000 most recently listed "
                                        r"\(listed at \d+ or later\), left out 2000 listed earlier")
        finally:
            if kam:
                kam.stop()
            feed.stop()
            tmp.cleanup()


@unittest.skipUnless(os.path.exists(FAKETIME_LIB), "libfaketime is not installed (scripts/setup-debian.sh)")
class WallClockSteppedBack(unittest.TestCase):
    """libfaketime (LD_PRELOAD, its offset re-read from a file at every call) steps the server's
    wall clock back while it runs; the pulls must go on. last_sync shows the step took."""
    STEP = 1800  # NTP steps the clock back half an hour
    MARGIN = 30  # last_sync is whole seconds, from a pull up to ~1 s old, on a busy machine

    def assert_server_clock_behind(self, kam, step, what):
        """The server's wall clock is `step` s behind ours: the last pull's last_sync (unix time on
        the server's clock) is that much below the real time. Without it, a libfaketime that did
        not load, or an offset it did not read, would leave the test stepping nothing."""
        s = kam.stats()
        behind = time.time() - s["last_sync"]
        self.assertLessEqual(abs(behind - step), self.MARGIN,
                             f"{what}: the server's clock is {behind:.0f} s behind, not {step} s: {s}")
        return s

    def test_incremental_pulls_go_on(self):
        tmp = TempDir("clock")
        offset = os.path.join(tmp.path, "faketime")
        set_clock_offset(offset, "+0")
        env = dict(os.environ, LD_PRELOAD=FAKETIME_LIB, FAKETIME_TIMESTAMP_FILE=offset, FAKETIME_NO_CACHE="1",
                   FAKETIME_DONT_FAKE_MONOTONIC="1")
        feed = FakeApiban(key=KEY, ips=["127.0.0.66"]).start()
        kam = None
        try:
            kam = start(tmp.path, feed, interval=1, rate_limit="1000/1", env=env)
            s0 = kam.wait_synced(entries=1)
            self.assert_server_clock_behind(kam, 0, "before the step")
            # The step: the server's wall time, not its monotonic one.
            set_clock_offset(offset, f"-{self.STEP}")
            wait_until(lambda: kam.stats()["syncs"] >= s0["syncs"] + 2, timeout=10, step=0.2,
                       what="pulls after the clock stepped back")
            self.assert_server_clock_behind(kam, self.STEP, "after the step")
            feed.add(["127.0.0.72"])
            wait_until(lambda: kam.options("127.0.0.72") == 403, timeout=10, step=0.2,
                       what="an address added after the step to be refused")
            self.assertEqual(kam.options("127.0.0.66"), 403)
        finally:
            if kam:
                kam.stop()
            feed.stop()
            tmp.cleanup()


if __name__ == "__main__":
    unittest.main()
