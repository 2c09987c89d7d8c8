"""What only OpenSIPS has, with a real OpenSIPS 3.6 built from source (servers.py: the tree at
OPENSIPS_SRC, which scripts/build-opensips.sh makes): the `exports` its loader looks up, its config
check, and MI's own forms (positional parameters, errors, `get_statistics`, opensips-cli). Every
behaviour both servers share is in test_end_to_end.py, run against each.

Without a tree this file runs nothing (setUpModule skips it, and unittest's report says so); with
APIBAN_REQUIRE_OPENSIPS=1 (scripts/test.sh sets it when it has a tree) it fails instead.
"""

import json
import os
import re
import subprocess
import unittest

from harness import STAT_NUMBERS, FakeApiban, TempDir
from servers import (HAVE_TREE, MODULE, OPENSIPS, REQUIRED, MIError, OpenSIPS, build_opensips_module,
                     opensips_cli_command)

LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
CLEAN = "127.0.0.5"
KEY = "k-osips-0123456789"


def setUpModule():
    """Builds the OpenSIPS flavour of the module once for the whole file."""
    build_opensips_module()


class OpenSIPSCase(unittest.TestCase):
    __test__ = HAVE_TREE  # pytest: nothing to collect without a tree


class ModuleFile(OpenSIPSCase):
    def test_exports_and_version_strings_match_the_server(self):
        syms = subprocess.run(["nm", "-D", "--defined-only", MODULE], capture_output=True, text=True,
                              check=True).stdout
        self.assertRegex(syms, r"\sD exports\n", "exports is not exported")
        v = subprocess.run([OPENSIPS, "-V"], capture_output=True, text=True).stdout
        version = re.search(r"^version: (.*?)\s*$", v, re.M).group(1)
        flags = re.search(r"^flags: (.*?)\s*$", v, re.M).group(1)
        rev = re.search(r"^\w+ revision: (\S+)", v, re.M).group(1)
        with open(MODULE, "rb") as f:
            data = f.read()
        for s in (version, flags, rev):
            self.assertIn(s.encode() + b"\0", data)

    def test_the_sample_config_passes_opensips_check(self):
        tmp = TempDir("osips-check")
        try:
            rc, out = OpenSIPS(tmp.path, "http://127.0.0.1:9").check_config()
            self.assertEqual(rc, 0, out)
            self.assertIn("config file ok", out)
        finally:
            tmp.cleanup()


class MIForms(OpenSIPSCase):
    """MI's own forms of the admin commands: named or positional parameters, an error for a
    missing one, the statistics framework, and opensips-cli. One OpenSIPS and one feed of several
    thousand addresses for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("osips-e2e")
        cls.feed = FakeApiban(key=KEY, ips=LISTED, count=5000).start()
        cls.osips = OpenSIPS(cls.tmp.path, cls.feed.url)
        cls.total = 5000 + len(LISTED)
        try:
            cls.osips.start()
            cls.osips.wait_synced(entries=cls.total)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.left = cls.osips.stop()
        cls.feed.stop()
        cls.tmp.cleanup()
        if cls.left:
            raise AssertionError(f"opensips left processes behind: {cls.left}")

    def test_mi_check_over_the_fifo(self):
        r = self.osips.mi("apiban_check", {"ip": "127.0.0.66"})
        self.assertEqual(r, {"ip": "127.0.0.66", "listed": 1, "result": "listed", "detail": "listed"})
        r = self.osips.mi("apiban_check", ["192.0.2.200"])  # positional works too
        self.assertEqual((r["listed"], r["result"]), (0, "not listed"))
        self.assertEqual(self.osips.mi("apiban_check", {"ip": "[2001:db8::66]"})["result"], "listed")
        self.assertEqual(self.osips.mi("apiban_check", {"ip": "10.0.19.136"})["result"], "listed")
        self.assertEqual(self.osips.mi("apiban_check", {"ip": "bogus"})["result"], "bad address")
        with self.assertRaises(MIError):
            self.osips.mi("apiban_check")

    def test_statistics_are_the_shared_counters(self):
        # Lookups happen in the SIP workers, the query runs in the MI process: equal values mean
        # the statistics read the shared counters, not a per-process copy.
        before = self.osips.mi("get_statistics", {"statistics": ["apiban:"]})
        # The same counters as Kamailio registers: every number of APIBAN_STATS.
        self.assertEqual(sorted(before), sorted(f"apiban:{n}" for n in STAT_NUMBERS))
        self.assertEqual(self.osips.options("127.0.0.66"), 403)
        self.assertEqual(self.osips.options(CLEAN), 200)
        after = self.osips.mi("get_statistics", {"statistics": ["apiban:"]})
        self.assertEqual(after["apiban:checks"] - before["apiban:checks"], 2)
        self.assertEqual(after["apiban:hits"] - before["apiban:hits"], 1)
        s = self.osips.stats()
        for n in ("checks", "hits", "entries", "syncs", "sync_failures", "rate_limited"):
            self.assertEqual(after[f"apiban:{n}"], s[n], n)
        one = self.osips.mi("get_statistics", {"statistics": ["entries"]})  # by name
        self.assertEqual(one, {"apiban:entries": self.total})

    def test_opensips_cli(self):
        cli = opensips_cli_command()
        if cli is None:
            if REQUIRED:
                self.fail("opensips-cli is not installed (scripts/test.sh puts it in target/pylib)")
            self.skipTest("opensips-cli is not installed")
        base = [*cli, "-o", "communication_type=fifo", "-o", f"fifo_file={self.osips.fifo}",
                "-o", f"fifo_reply_dir={self.osips.tmp}", "-o", "output_type=pretty-print", "-x", "mi"]
        env = dict(os.environ, HOME=self.osips.tmp)  # no user's ~/.opensips-cli.cfg
        r = subprocess.run([*base, "apiban_stats"], capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        s = json.loads(r.stdout)
        self.assertEqual((s["entries"], s["state"]), (self.osips.stats()["entries"], "ok"))
        r = subprocess.run([*base, "apiban_check", "127.0.0.66"], capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(json.loads(r.stdout)["result"], "listed", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
