"""What the operator writes, with the real Kamailio: every bad parameter value stops the start with
a message naming the parameter, and the allow-list beats the feed end to end.

APIBAN_MODULE=/path/to/libapiban.so runs these against another build of the module.
"""

import os
import re
import subprocess
import unittest

from harness import (KAMAILIO_MODULE, FakeApiban, Kamailio, Proc, TempDir, parse_kamcmd_struct, wait_until,
                     write_text)

MODULE = KAMAILIO_MODULE  # APIBAN_MODULE, see harness.py
KEY = "k-operator-S3CRET-0123456789"
LISTED = "127.0.0.66"
CLEAN = "127.0.0.5"


class BadParameters(unittest.TestCase):
    """Each bad value: Kamailio exits non-zero, and the log names the parameter and the problem."""

    @classmethod
    def setUpClass(cls):
        cls.feed = FakeApiban(key=KEY).start()
        cls.files = TempDir("operator-files")
        d = cls.files.path
        write_text(os.path.join(d, "empty.key"), "\n  \n")
        write_text(os.path.join(d, "good.key"), KEY + "\n")
        write_text(os.path.join(d, "bad.allow"), "# office\n192.0.2.0/24\nbogus # not a range\n")
        os.makedirs(os.path.join(d, "a-directory"))

    @classmethod
    def tearDownClass(cls):
        cls.feed.stop()
        cls.files.cleanup()

    def refused(self, modparams, message, url=None, drop_key=False):
        tmp = TempDir("operator-bad")
        try:
            kam = Kamailio(tmp.path, url or self.feed.url, key=KEY, modparams=modparams, module=MODULE)
            if drop_key:
                kam.without_modparam("apikey")
            rc, log = kam.start_expecting_failure()
            self.assertNotEqual(rc, 0, log[-2000:])
            self.assertRegex(log, r"ERROR: apiban: " + message, log[-2000:])
            self.assertNotIn(KEY, log)
            return log
        finally:
            tmp.cleanup()

    def path(self, name):
        return os.path.join(self.files.path, name)

    CASES = [
        # (parameter, value as written in the cfg, what the message says)
        ("interval", '"abc"', r"parameter 'interval': 'abc' is not a number of seconds \(e\.g\. 300, 5m, 7d\)"),
        ("interval", "0", r"parameter 'interval': 0 is too small: at least 1 second"),
        ("interval", '"-5"', r"parameter 'interval': '-5' is not a number of seconds"),
        ("interval", '"8d"', r"parameter 'interval': 691200 is too large"),
        ("url", '"ftp://example.com"', r"parameter 'url': 'ftp://example\.com' must start with https:// or http://"),
        ("url", '"https:///api"', r"parameter 'url': 'https:///api' is not a base URL like https://apiban\.org"),
        ("url", '"http://127.0.0.1:99999"', r"parameter 'url': .* has a bad port '99999'"),
        ("url", '"https://user@apiban.org"', r"parameter 'url': .* is not a base URL"),
        ("allow", '"10.0.0.0/33"', r"parameter 'allow': '10\.0\.0\.0/33' is not an address or CIDR range"),
        ("allow", '"example.com"', r"parameter 'allow': 'example\.com' is not an address or CIDR range"),
        ("allow", '"2001:db8::/129"', r"parameter 'allow': '2001:db8::/129' is not an address or CIDR range"),
        ("max_entries", "0", r"parameter 'max_entries': must be at least 1"),
        ("max_entries", '"lots"', r"parameter 'max_entries': 'lots' is not a number of entries"),
        ("max_entries", '"1000000000000"', r"parameter 'max_entries': 1000000000000 is beyond the limit of 100000000"),
        ("api_version", "3", r"parameter 'api_version': '3' is not a supported API version \(1 or 2\)"),
        ("api_version", '"v2"', r"parameter 'api_version': 'v2' is not a supported API version"),
        ("set", '"voip"', r"parameter 'set': 'voip' is not an APIBAN set \(sip, http or all\)"),
        ("rate_limit", '"eleven"', r"parameter 'rate_limit': 'eleven' is not REQUESTS/SECONDS like 11/120"),
        ("rate_limit", '"0/120"', r"parameter 'rate_limit': '0/120' is not REQUESTS/SECONDS"),
        ("rate_limit", '"11/0"', r"parameter 'rate_limit': '11/0' is not REQUESTS/SECONDS"),
        ("ttl", '"forever"', r"parameter 'ttl': 'forever' is not a number of seconds"),
        ("ttl", '"30"', r"parameter 'ttl': 30 is too small: at least 60 second"),
        ("full_resync", '"soon"', r"parameter 'full_resync': 'soon' is not a number of seconds"),
        ("full_resync", '"10s"', r"parameter 'full_resync': 10 is too small: at least 60 second"),
        ("timeout", "0", r"parameter 'timeout': 0 is too small: at least 1 second"),
        ("timeout", '"-1"', r"parameter 'timeout': '-1' is not a number of seconds"),
        ("timeout", '"10m"', r"parameter 'timeout': 600 is too large: at most 300 seconds"),
        ("snapshot_file", '""', r"parameter 'snapshot_file': empty path"),
        ("apikey", '"two words"', r"parameter 'apikey': empty or contains blanks or control characters"),
        ("apikey", f'"{KEY}x"', r"parameter 'apikey': set twice"),
    ]

    def test_each_bad_value_stops_the_start(self):
        for name, value, message in self.CASES:
            with self.subTest(parameter=name, value=value):
                self.refused([(name, value)], message)

    def test_unreadable_key_files(self):
        for name, why in (("missing.key", "No such file or directory"), ("a-directory", "Is a directory")):
            with self.subTest(file=name):
                self.refused([("apikey_file", f'"{self.path(name)}"')],
                             rf"parameter 'apikey_file': cannot read {re.escape(self.path(name))}: {why}",
                             drop_key=True)
        self.refused([("apikey_file", f'"{self.path("empty.key")}"')],
                     rf"parameter 'apikey_file': {re.escape(self.path('empty.key'))} holds no single key",
                     drop_key=True)

    def test_both_apikey_and_apikey_file(self):
        self.refused([("apikey_file", f'"{self.path("good.key")}"')],
                     r"parameter 'apikey_file': set together with apikey: use one of them")

    def test_no_key_at_all_with_the_real_apiban_url(self):
        # The default url is https://apiban.org; nothing is sent there: the start stops first.
        log = self.refused([], r"parameter 'apikey': no API key: set apikey or apikey_file",
                           url="https://apiban.org", drop_key=True)
        self.assertNotIn("refresher started", log)

    def test_unreadable_allow_file(self):
        self.refused([("allow_file", f'"{self.path("missing.allow")}"')],
                     rf"parameter 'allow_file': cannot read {re.escape(self.path('missing.allow'))}: No such file")

    def test_a_bad_line_in_the_allow_file(self):
        self.refused([("allow_file", f'"{self.path("bad.allow")}"')],
                     rf"parameter 'allow_file': {re.escape(self.path('bad.allow'))} line 3: 'bogus' is not an "
                     r"address or CIDR range")

    def test_max_entries_beyond_memory(self):
        """Under an address-space limit of 3 GB, the reservation for 100 million entries fails and
        says so; the same server with the default max_entries starts under that limit."""
        limit = ["prlimit", f"--as={3 << 30}", "--"]
        tmp = TempDir("operator-mem")
        try:
            kam = Kamailio(tmp.path, self.feed.url, key=KEY, modparams=[("max_entries", '"100000000"')],
                           module=MODULE)
            r = subprocess.run(limit + kam.args(), capture_output=True, text=True, timeout=30)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stdout + r.stderr, r"ERROR: apiban: parameter 'max_entries': cannot reserve shared "
                                                  r"memory for 100000000 entries")
        finally:
            tmp.cleanup()
        tmp = TempDir("operator-mem-ok")
        try:
            kam = Kamailio(tmp.path, self.feed.url, key=KEY, module=MODULE)
            kam.proc = Proc(limit + kam.args(), kam.log_path)
            try:
                wait_until(lambda: kam.rpc_ok("core.version") or not kam.proc.alive(), timeout=15,
                           what="kamailio under the limit")
                self.assertTrue(kam.proc.alive(), kam.log()[-2000:])
                self.assertEqual(kam.stats()["max_entries"], 1_000_000)
            finally:
                kam.stop()
        finally:
            tmp.cleanup()


class AllowList(unittest.TestCase):
    """The feed lists addresses that `allow` and `allow_file` cover: they get through, apiban.check
    names the rule, and `allowed` counts them."""

    BY_ALLOW = "127.0.0.81"  # in allow 127.0.0.80/29
    BY_FILE = "127.0.0.90"  # line 3 of the allow file
    BY_ALLOW6 = "2001:db8:66::1"  # in allow 2001:db8:66::/48
    LISTED6 = "2001:db8::66"

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("operator-allow")
        cls.allow_file = os.path.join(cls.tmp.path, "apiban.allow")
        write_text(cls.allow_file, "# never refused\n\n127.0.0.90   # the lab\n")
        listed = [LISTED, cls.BY_ALLOW, cls.BY_FILE, cls.BY_ALLOW6, cls.LISTED6]
        cls.feed = FakeApiban(key=KEY, ips=listed).start()
        cls.kam = Kamailio(cls.tmp.path, cls.feed.url, key=KEY, module=MODULE, modparams=[
            ("allow", '"127.0.0.80/29"'), ("allow", '"2001:db8:66::/48"'), ("allow_file", f'"{cls.allow_file}"')])
        cls.kam.start()
        cls.kam.wait_synced(entries=len(listed))

    @classmethod
    def tearDownClass(cls):
        cls.kam.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    def check(self, ip):
        rc, out = self.kam.kamcmd("apiban.check", ip)
        self.assertEqual(rc, 0, out)
        return parse_kamcmd_struct(out)

    def test_allowed_sources_get_through_and_are_counted(self):
        s0 = self.kam.stats()
        self.assertEqual(self.kam.options(self.BY_ALLOW), 200)
        self.assertEqual(self.kam.options(self.BY_FILE), 200)
        self.assertEqual(self.kam.options(CLEAN, [f"X-Real-IP: {self.BY_ALLOW6}"]), 200)
        self.assertEqual(self.kam.options(LISTED), 403)
        self.assertEqual(self.kam.options(CLEAN, [f"X-Real-IP: {self.LISTED6}"]), 403)
        s = self.kam.stats()
        self.assertEqual(s["allowed"] - s0["allowed"], 3)
        self.assertEqual(s["hits"] - s0["hits"], 2)
        self.assertEqual(s["entries"], 5)  # the allow-list filters lookups, not the table

    def test_apiban_check_names_the_rule(self):
        s0 = self.kam.stats()
        cases = [
            (self.BY_ALLOW, "listed by the feed, allowed by allow 127.0.0.80/29"),
            (self.BY_ALLOW6, "listed by the feed, allowed by allow 2001:db8:66::/48"),
            (self.BY_FILE, f"listed by the feed, allowed by allow_file {self.allow_file}:3 127.0.0.90"),
        ]
        for ip, detail in cases:
            v = self.check(ip)
            self.assertEqual((v["listed"], v["result"], v["detail"]), (0, "not listed", detail), ip)
        v = self.check(LISTED)
        self.assertEqual((v["listed"], v["result"], v["detail"]), (1, "listed", "listed"))
        v = self.check("127.0.0.82")  # allowed but not listed: nothing to allow
        self.assertEqual((v["result"], v["detail"]), ("not listed", "not listed"))
        s = self.kam.stats()
        self.assertEqual((s["allowed"], s["checks"]), (s0["allowed"], s0["checks"]), "the RPC counted")

    def test_the_rules_are_announced(self):
        self.assertRegex(self.kam.log(), r"initialised: .* 3 allow rule\(s\)")
        self.assertNotIn(KEY, self.kam.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
