"""End to end with the real Kamailio (Debian's, or the one KAMAILIO_BIN names, see harness.py): the
sample config, the fake APIBAN feed, SIP OPTIONS from loopback sources, and the RPC commands."""

import os
import re
import subprocess
import unittest

from harness import (KAMAILIO, KAMAILIO_CFG, KAMAILIO_MODULE, FakeApiban, Kamailio, TempDir,
                     parse_kamcmd_struct, read_text, sip_exchange, wait_until)

LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
CLEAN = "127.0.0.5"
KEY = "k-e2e-0123456789"


class ModuleFile(unittest.TestCase):
    def test_exports_and_version_strings_match_the_server(self):
        syms = subprocess.run(["nm", "-D", "--defined-only", KAMAILIO_MODULE], capture_output=True, text=True,
                              check=True).stdout
        for s in ("exports", "module_version", "module_flags", "mod_register"):
            self.assertRegex(syms, rf"\s{s}\n", f"{s} is not exported")
        v = subprocess.run([KAMAILIO, "-V"], capture_output=True, text=True).stdout
        # "version: kamailio 6.0.1 (x86_64/linux) fce50d": the core compares what precedes the
        # repository hash (empty in Debian 12's 5.6.3) with the module's module_version.
        version = re.search(r"^version: (\S+ \S+ \([^)]*\))(?: [0-9a-f]+)?\s*$", v, re.M).group(1)
        flags = re.search(r"^flags: (.*?)\s*$", v, re.M).group(1)
        with open(KAMAILIO_MODULE, "rb") as f:
            data = f.read()
        self.assertIn(version.encode() + b"\0", data)
        self.assertIn(flags.encode() + b"\0", data)


# One check per spelling of the parameter, chosen by the request's X-Form header: "$si" and
# "$src_ip" take the shim's raw-address path, the others are formatted by the core and parsed.
SPELLINGS_ROUTE = r"""
request_route {
	if ($hdr(X-Form) == "si" && apiban_check("$si")) { sl_send_reply("403", "Forbidden"); exit; }
	if ($hdr(X-Form) == "src_ip" && apiban_check("$src_ip")) { sl_send_reply("403", "Forbidden"); exit; }
	if ($hdr(X-Form) == "spaced" && apiban_check(" $si ")) { sl_send_reply("403", "Forbidden"); exit; }
	if ($hdr(X-Form) == "var") {
		$var(src) = $si;
		if (apiban_check("$var(src)")) { sl_send_reply("403", "Forbidden"); exit; }
	}
	if ($hdr(X-Form) == "prefixed") {
		$var(rc) = apiban_check("from $si");
		sl_send_reply("200", "rc=$var(rc)");
		exit;
	}
	sl_send_reply("200", "OK");
	exit;
}
"""


class ParameterSpellings(unittest.TestCase):
    """apiban_check("$si") reads the source address raw; every other spelling still works."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("kam-spell")
        cls.feed = FakeApiban(key=KEY, ips=LISTED).start()
        text = read_text(KAMAILIO_CFG)
        text = text[:text.index("request_route {")] + SPELLINGS_ROUTE
        cls.kam = Kamailio(cls.tmp.path, cls.feed.url, key=KEY, cfg_text=text).start()
        cls.kam.wait_synced(entries=len(LISTED))

    @classmethod
    def tearDownClass(cls):
        cls.kam.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    def test_each_spelling_refuses_a_listed_source_and_serves_a_clean_one(self):
        for form in ("si", "src_ip", "spaced", "var"):
            before = self.kam.stats()
            self.assertEqual(self.kam.options("127.0.0.66", [f"X-Form: {form}"]), 403, form)
            self.assertEqual(self.kam.options(CLEAN, [f"X-Form: {form}"]), 200, form)
            after = self.kam.stats()
            self.assertEqual((after["checks"] - before["checks"], after["hits"] - before["hits"]), (2, 1), form)

    def test_text_around_the_variable_is_an_unparsable_address(self):
        self.assertEqual(sip_exchange("127.0.0.66", self.kam.port, ["X-Form: prefixed"]), (200, "rc=-2"))


class EndToEnd(unittest.TestCase):
    """One Kamailio and one feed of several thousand addresses for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("kam-e2e")
        cls.feed = FakeApiban(key=KEY, ips=LISTED, count=5000).start()
        cls.kam = Kamailio(cls.tmp.path, cls.feed.url, key=KEY).start()
        cls.total = 5000 + len(LISTED)
        cls.kam.wait_synced(entries=cls.total)

    @classmethod
    def tearDownClass(cls):
        cls.kam.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    def test_a_list_of_thousands_arrives_complete(self):
        s = self.kam.stats()
        self.assertEqual(s["entries"], self.total)
        self.assertEqual((s["ipv4"], s["ipv6"]), (self.total - 1, 1))
        self.assertEqual(s["last_id"], self.feed.max_id)
        self.assertEqual(s["last_error"], "")
        self.assertEqual(s["state"], "ok")
        self.assertGreater(s["last_sync"], 1_700_000_000)
        # 21 batches of at most 250 and the end marker, via API v2 with the key in a header.
        st = self.feed.stats()
        self.assertEqual(st["last_auth"], f"Bearer {KEY}")
        self.assertEqual(st["last_set"], "sip")
        self.assertGreaterEqual(s["requests"], 22)

    def test_listed_sources_get_403_and_clean_ones_200(self):
        before = self.kam.stats()
        self.assertEqual(self.kam.options("127.0.0.66"), 403)
        self.assertEqual(self.kam.options("127.0.0.67"), 403)
        self.assertEqual(self.kam.options(CLEAN), 200)
        self.assertEqual(self.kam.options("127.0.0.68"), 200)
        after = self.kam.stats()
        self.assertGreaterEqual(after["checks"] - before["checks"], 4)
        self.assertGreaterEqual(after["hits"] - before["hits"], 2)

    def test_addresses_from_the_generated_list_are_listed(self):
        for ip in ("10.0.0.1", "10.0.19.136"):
            rc, out = self.kam.kamcmd("apiban.check", ip)
            self.assertEqual(rc, 0, out)
            self.assertEqual(parse_kamcmd_struct(out)["result"], "listed", out)

    def test_ipv6_text_through_a_pseudo_variable(self):
        for v in ("2001:db8::66", "[2001:db8::66]", " 2001:DB8:0:0::66 "):
            self.assertEqual(self.kam.options(CLEAN, [f"X-Real-IP: {v}"]), 403, v)
        self.assertEqual(self.kam.options(CLEAN, ["X-Real-IP: 2001:db8::99"]), 200)
        self.assertEqual(self.kam.options(CLEAN, ["X-Real-IP: 127.0.0.67"]), 403)

    def test_an_unparsable_address_is_false_and_logged(self):
        self.assertEqual(self.kam.options(CLEAN, ["X-Real-IP: not-an-address"]), 200)
        wait_until(lambda: "'not-an-address' is not an IP address" in self.kam.log(), timeout=5,
                   what="the bad-address log line")

    def test_rpc_check(self):
        rc, out = self.kam.kamcmd("apiban.check", "127.0.0.66")
        s = parse_kamcmd_struct(out)
        self.assertEqual((rc, s["listed"], s["result"]), (0, 1, "listed"), out)
        s = parse_kamcmd_struct(self.kam.kamcmd("apiban.check", "192.0.2.200")[1])
        self.assertEqual((s["listed"], s["result"]), (0, "not listed"))
        s = parse_kamcmd_struct(self.kam.kamcmd("apiban.check", "[2001:db8::66]")[1])
        self.assertEqual(s["result"], "listed")
        s = parse_kamcmd_struct(self.kam.kamcmd("apiban.check", "bogus")[1])
        self.assertEqual(s["result"], "bad address")

    def test_z_added_address_is_refused_after_reload(self):
        ip = "127.0.0.77"
        self.assertEqual(self.kam.options(ip), 200)
        syncs = self.kam.stats()["syncs"]
        self.feed.add([ip])
        rc, out = self.kam.kamcmd("apiban.reload")
        self.assertEqual(rc, 0, out)
        # The refresher polls the reload flag every 200 ms; the pull itself is local and quick.
        s = self.kam.wait_synced(entries=self.total + 1, syncs=syncs + 1, timeout=10)
        self.assertEqual(s["last_id"], self.feed.max_id)
        self.assertEqual(self.kam.options(ip), 403)

    def test_the_refresher_is_its_own_process(self):
        rc, out = self.kam.kamcmd("core.psx")
        self.assertEqual(rc, 0, out)
        self.assertIn("APIBAN REFRESHER", out)

    def test_the_key_is_in_no_log_line(self):
        self.assertNotIn(KEY, self.kam.log())
        self.assertNotIn(KEY, self.kam.kamcmd("apiban.stats")[1])


class ApiV1AndErrors(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir("kam-v1")
        self.feed = FakeApiban(key=KEY, ips=["127.0.0.66"], count=600).start()

    def tearDown(self):
        self.feed.stop()
        self.tmp.cleanup()

    def test_api_v1_pulls_and_a_dead_feed_keeps_the_table_and_hides_the_key(self):
        kam = Kamailio(self.tmp.path, self.feed.url, key=KEY, defines={"APIBAN_INTERVAL": "1"},
                       modparams=[("api_version", "1")]).start()
        try:
            s = kam.wait_synced(entries=601)
            self.assertTrue(self.feed.stats()["by_path"], "the feed saw no request")
            self.assertTrue(any(p.startswith("/api/") and "/banned/" in p for p in self.feed.stats()["by_path"]))
            # The feed goes away: the table stays, the error shows, the key (in v1 URLs) never.
            self.feed.stop()
            s = wait_until(lambda: (lambda st: st if st["last_error"] else None)(kam.stats()), timeout=10,
                           what="an error in apiban.stats")
            self.assertIn("connection refused", s["last_error"])
            self.assertEqual(s["entries"], 601)
            self.assertEqual(kam.options("127.0.0.66"), 403)
            self.assertEqual(kam.options(CLEAN), 200)
            self.assertNotIn(KEY, kam.log())
            self.assertNotIn(KEY, kam.kamcmd("apiban.stats")[1])
        finally:
            kam.stop()

    def test_a_wrong_key_is_an_error_not_an_empty_list(self):
        kam = Kamailio(self.tmp.path, self.feed.url, key="wrong-key-999").start()
        try:
            s = wait_until(lambda: (lambda st: st if st["sync_failures"] else None)(kam.stats()), timeout=10,
                           what="a failed sync")
            self.assertIn("403", s["last_error"])
            self.assertEqual(s["syncs"], 0)
            self.assertTrue(s["state"].startswith("backoff"), s["state"])
        finally:
            kam.stop()


class BadParameters(unittest.TestCase):
    """A bad modparam stops Kamailio's start with a message naming the parameter."""

    CASES = [
        ("interval", '"abc"'),
        ("interval", "0"),
        ("url", '"ftp://example.com"'),
        ("api_version", "3"),
        ("set", '"voip"'),
        ("max_entries", "0"),
        ("max_entries", '"1000000000000"'),
        ("timeout", '"-1"'),
        ("rate_limit", '"eleven"'),
        ("allow", '"10.0.0.0/33"'),
        ("ttl", '"forever"'),
    ]

    def test_each_bad_value_stops_the_start(self):
        feed = FakeApiban(key=KEY).start()
        try:
            for name, value in self.CASES:
                with self.subTest(name=name, value=value):
                    tmp = TempDir("kam-badparam")
                    try:
                        kam = Kamailio(tmp.path, feed.url, key=KEY, modparams=[(name, value)])
                        rc, log = kam.start_expecting_failure()
                        self.assertNotEqual(rc, 0)
                        self.assertIn(f"parameter '{name}'", log)
                    finally:
                        tmp.cleanup()
        finally:
            feed.stop()

    def test_missing_key_with_the_real_url_and_unreadable_key_file(self):
        tmp = TempDir("kam-nokey")
        try:
            kam = Kamailio(tmp.path, "https://apiban.org", key=KEY)
            kam.defines.pop("APIBAN_KEY")
            # The sample config's default key is a placeholder; drop the apikey line entirely.
            kam.without_modparam("apikey")
            rc, log = kam.start_expecting_failure()
            self.assertNotEqual(rc, 0)
            self.assertIn("parameter 'apikey': no API key", log)

            kam = Kamailio(tmp.path, "http://127.0.0.1:9", key=KEY,
                           modparams=[("apikey_file", f'"{os.path.join(tmp.path, "missing.key")}"')])
            rc, log = kam.start_expecting_failure()
            self.assertIn("parameter 'apikey_file'", log)
        finally:
            tmp.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
