"""What only Kamailio has, with the real Kamailio (Debian's, or the one KAMAILIO_BIN names, see
harness.py): the symbols its loader looks up, and the spellings of apiban_check's parameter the
shim reads from the packet itself (a Kamailio fixup). Every behaviour both servers share is in
test_end_to_end.py, run against each."""

import re
import subprocess
import unittest

from harness import KAMAILIO, KAMAILIO_CFG, KAMAILIO_MODULE, FakeApiban, Kamailio, TempDir, read_text, sip_exchange

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
# "$src_ip" take the shim's raw-address path, "$var(src)" (one variable) is read with
# pv_get_spec_value, the others (text around a variable) are formatted by the core; then parsed.
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
