"""Behaviours, each written once and run against every server present (servers.kinds():
Kamailio, and OpenSIPS when its tree is there; scripts/test.sh runs this file again against
Kamailio 6.0). The sample config, the fake APIBAN feed, SIP OPTIONS from loopback sources, and the
server's own admin interface (RPC or MI) behind servers.py's one interface.

What only one server has is tested in its own file, which says why: test_kamailio.py (KEMI, the
RPC's and the config's own spellings), test_opensips.py (MI's forms, opensips-cli, statistics).
"""

import os
import re
import unittest

import bad_parameters
from harness import STAT_NUMBERS, STAT_TEXTS, FakeApiban, TempDir, sip_exchange, wait_until, write_text
from servers import kinds, make

LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
CLEAN = "127.0.0.5"
KEY = "k-e2e-0123456789"
ALLOW_LISTED = "127.0.0.66"


def for_each_server(behaviour):
    """One TestCase per server present from a behaviour class, named <Behaviour>_<server>."""
    for kind in kinds():
        name = f"{behaviour.__name__}_{kind}"
        globals()[name] = type(name, (behaviour, unittest.TestCase), {"kind": kind, "__doc__": behaviour.__doc__})
    return behaviour


# First in the main route: with an X-Form header, the address in X-Real-IP goes through a
# variable ("var": apiban_check("$var(ip)"), and apiban_ban/apiban_unban the same way) or the
# header itself ("hdr"), and the reply tells the result; -2 (not an address) is a branch of its
# own. Without the header, $var(ip) is null (OpenSIPS) or 0 (Kamailio: a $var is never null),
# and $hdr(X-Real-IP) null.
ADDRESS_FORMS = """
	if ($hdr(X-Form) != NULL_) {
		$var(ip) = $hdr(X-Real-IP);
		if ($hdr(X-Form) == "var") {
			apiban_check("$var(ip)");
		} else if ($hdr(X-Form) == "hdr") {
			apiban_check("$hdr(X-Real-IP)");
		} else if ($hdr(X-Form) == "ban") {
			apiban_ban("$var(ip)", 600, "e2e");
		} else {
			apiban_unban("$var(ip)");
		}
		$var(rc) = $rc;
		if ($var(rc) == -2) {
			sl_send_reply(400, "Bad address");
			exit;
		}
		sl_send_reply(200, "rc=$var(rc)");
		exit;
	}
"""
ADDRESS_FORMS_HOOK = {"kamailio": ADDRESS_FORMS.replace("NULL_", "$null"), "opensips": ADDRESS_FORMS.replace("NULL_", "NULL")}


@for_each_server
class EndToEnd:
    """One server and one feed of several thousand addresses for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir(f"e2e-{cls.kind}")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.feed = FakeApiban(key=KEY, ips=LISTED, count=5000).start()
        cls.addClassCleanup(cls.feed.stop)
        cls.server = make(cls.kind, cls.tmp.path, cls.feed.url, key=KEY, route_hook=ADDRESS_FORMS_HOOK[cls.kind])
        cls.addClassCleanup(cls.stop_server)
        cls.total = 5000 + len(LISTED)
        cls.server.start()
        cls.server.wait_synced(entries=cls.total)

    @classmethod
    def stop_server(cls):
        left = cls.server.stop()
        if left:
            raise AssertionError(f"{cls.kind} left processes behind: {left}")

    def test_a_list_of_thousands_arrives_complete(self):
        s = self.server.stats()
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

    def test_the_stats_reply_has_every_field_in_order(self):
        # Both servers' replies expand APIBAN_STATS of c-shim/apiban.h, in its order.
        self.assertEqual(list(self.server.stats()), STAT_NUMBERS + STAT_TEXTS)

    def test_listed_sources_get_403_and_clean_ones_200(self):
        before = self.server.stats()
        self.assertEqual(self.server.options("127.0.0.66"), 403)
        self.assertEqual(self.server.options("127.0.0.67"), 403)
        self.assertEqual(self.server.options(CLEAN), 200)
        self.assertEqual(self.server.options("127.0.0.68"), 200)
        after = self.server.stats()
        self.assertGreaterEqual(after["checks"] - before["checks"], 4)
        self.assertGreaterEqual(after["hits"] - before["hits"], 2)

    def test_ipv6_text_through_a_pseudo_variable(self):
        for v in ("2001:db8::66", "[2001:db8::66]", " 2001:DB8:0:0::66 "):
            self.assertEqual(self.server.options(CLEAN, [f"X-Real-IP: {v}"]), 403, v)
        self.assertEqual(self.server.options(CLEAN, ["X-Real-IP: 2001:db8::99"]), 200)
        self.assertEqual(self.server.options(CLEAN, ["X-Real-IP: 127.0.0.67"]), 403)

    def test_an_unparsable_address_is_false_and_logged(self):
        self.assertEqual(self.server.options(CLEAN, ["X-Real-IP: not-an-address"]), 200)
        wait_until(lambda: "'not-an-address' is not an IP address" in self.server.log(), timeout=5,
                   what="the bad-address log line")

    # Named to run after test_an_unparsable_address_is_false_and_logged: a process logs one bad
    # address per 10 s, and these send some.
    def test_variables_and_headers_carry_an_address(self):
        # One variable alone is read as it is (Kamailio's shim: pv_get_spec_value, no formatting).
        for form in ("var", "hdr"):
            def ask(*headers):
                return sip_exchange(CLEAN, self.server.port, [f"X-Form: {form}", *headers])
            self.assertEqual(ask("X-Real-IP: 127.0.0.67"), (200, "rc=1"), form)
            self.assertEqual(ask("X-Real-IP: 2001:db8::66"), (200, "rc=1"), form)
            self.assertEqual(ask("X-Real-IP: 127.0.0.68"), (200, "rc=-1"), form)
            self.assertEqual(ask("X-Real-IP: not-an-address"), (400, "Bad address"), form)
            self.assertEqual(ask(), (400, "Bad address"), f"{form}, unset")

    def test_variables_carry_a_ban_and_an_unban(self):
        ip = "127.0.0.30"

        def ask(form, value):
            return sip_exchange(CLEAN, self.server.port, [f"X-Form: {form}", f"X-Real-IP: {value}"])
        self.assertEqual(ask("ban", ip), (200, "rc=1"))
        wait_until(lambda: self.server.options(ip) == 403, timeout=5, what="the ban in force")
        self.assertEqual(ask("unban", ip), (200, "rc=1"))
        wait_until(lambda: self.server.options(ip) == 200, timeout=5, what="the ban lifted")
        self.assertEqual(ask("ban", "bogus"), (400, "Bad address"))

    def test_the_admin_check(self):
        self.assertEqual(self.server.admin_check("127.0.0.66"),
                         {"ip": "127.0.0.66", "listed": 1, "result": "listed", "detail": "listed"})
        r = self.server.admin_check("192.0.2.200")
        self.assertEqual((r["listed"], r["result"]), (0, "not listed"))
        for ip in ("[2001:db8::66]", "10.0.0.1", "10.0.19.136"):
            self.assertEqual(self.server.admin_check(ip)["result"], "listed", ip)
        self.assertEqual(self.server.admin_check("bogus")["result"], "bad address")

    def test_the_refresher_is_its_own_process(self):
        self.assertIn("APIBAN REFRESHER", self.server.process_names())

    def test_the_key_is_in_no_log_line(self):
        self.assertNotIn(KEY, self.server.log())
        self.assertNotIn(KEY, repr(self.server.stats()))

    def test_z_added_address_is_refused_after_reload(self):
        ip = "127.0.0.77"
        self.assertEqual(self.server.options(ip), 200)
        syncs = self.server.stats()["syncs"]
        self.feed.add([ip])
        self.server.admin_reload()
        # The refresher polls the reload flag every 200 ms; the pull itself is local and quick.
        s = self.server.wait_synced(entries=self.total + 1, syncs=syncs + 1, timeout=10)
        self.assertEqual(s["last_id"], self.feed.max_id)
        self.assertEqual(self.server.options(ip), 403)


@for_each_server
class FeedTrouble:
    """The feed fails: the table stays, the error shows, the key never."""

    def setUp(self):
        self.tmp = TempDir(f"feed-{self.kind}")
        self.addCleanup(self.tmp.cleanup)
        self.feed = FakeApiban(key=KEY, ips=["127.0.0.66"], count=600).start()
        self.addCleanup(self.feed.stop)

    def server(self, key=KEY, **kw):
        s = make(self.kind, self.tmp.path, self.feed.url, key=key, **kw)
        self.addCleanup(lambda: self.assertEqual(s.stop(), [], "processes left behind"))
        return s.start()

    def test_api_v1_pulls_and_a_dead_feed_keeps_the_table_and_hides_the_key(self):
        s = self.server(defines={"APIBAN_INTERVAL": "1"}, modparams=[("api_version", "1")])
        s.wait_synced(entries=601)
        self.assertTrue(any(p.startswith("/api/") and "/banned/" in p for p in self.feed.stats()["by_path"]))
        # The feed goes away: the table stays, the error shows, the key (in v1 URLs) never.
        self.feed.stop()
        st = wait_until(lambda: (lambda x: x if x["last_error"] else None)(s.stats()), timeout=10,
                        what="an error in the stats")
        self.assertIn("connection refused", st["last_error"])
        self.assertEqual(st["entries"], 601)
        self.assertEqual(s.options("127.0.0.66"), 403)
        self.assertEqual(s.options(CLEAN), 200)
        self.assertTrue(s.proc.alive())
        self.assertNotIn(KEY, s.log())
        self.assertNotIn(KEY, repr(s.stats()))

    def test_a_wrong_key_is_an_error_not_an_empty_list(self):
        s = self.server(key="wrong-key-999")
        st = wait_until(lambda: (lambda x: x if x["sync_failures"] else None)(s.stats()), timeout=10,
                        what="a failed sync")
        self.assertIn("403", st["last_error"])
        self.assertEqual(st["syncs"], 0)
        self.assertTrue(st["state"].startswith("backoff"), st["state"])


@for_each_server
class BadParameters:
    """Each bad value of bad_parameters.ROWS, the one table: the server exits non-zero, the log
    names the parameter and the problem, and no secret shows."""

    @classmethod
    def setUpClass(cls):
        cls.feed = FakeApiban(key=bad_parameters.KEY).start()
        cls.addClassCleanup(cls.feed.stop)
        cls.files = TempDir("operator-files")
        cls.addClassCleanup(cls.files.cleanup)
        d = cls.files.path
        write_text(os.path.join(d, "empty.key"), "\n  \n")
        write_text(os.path.join(d, "good.key"), bad_parameters.KEY + "\n")
        write_text(os.path.join(d, "bad.allow"), "# office\n192.0.2.0/24\nbogus # not a range\n")
        os.makedirs(os.path.join(d, "a-directory"))

    def refused(self, modparams, message, url=None, drop_key=False):
        tmp = TempDir(f"bad-{self.kind}")
        self.addCleanup(tmp.cleanup)
        s = make(self.kind, tmp.path, url or self.feed.url, key=bad_parameters.KEY, modparams=modparams)
        if drop_key:
            s.without_modparam("apikey")
        rc, log = s.start_expecting_failure()
        self.assertNotEqual(rc, 0, log[-2000:])
        self.assertRegex(log, message, log[-2000:])
        # The module's own lines. OpenSIPS's core also echoes the config line it failed on, as the
        # operator wrote it (its parse traceback): that is the config's text, not the module's.
        own = "\n".join(line for line in log.splitlines() if "apiban:" in line and "modparam(" not in line)
        self.assertIn("parameter '", own)
        for secret in bad_parameters.SECRETS:
            self.assertNotIn(secret, own)
        return log

    def path(self, name):
        return os.path.join(self.files.path, name)

    def test_each_bad_value_stops_the_start(self):
        for name, value, message, extra in bad_parameters.ROWS:
            with self.subTest(parameter=name, value=value):
                self.refused([*extra, (name, value)], message)

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


@for_each_server
class AllowList:
    """The feed lists addresses that `allow` and `allow_file` cover: they get through, the admin
    check names the rule, and `allowed` counts them."""

    BY_ALLOW = "127.0.0.81"  # in allow 127.0.0.80/29
    BY_FILE = "127.0.0.90"  # line 3 of the allow file
    BY_ALLOW6 = "2001:db8:66::1"  # in allow 2001:db8:66::/48
    LISTED6 = "2001:db8::66"

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir(f"allow-{cls.kind}")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.allow_file = os.path.join(cls.tmp.path, "apiban.allow")
        write_text(cls.allow_file, "# never refused\n\n127.0.0.90   # the lab\n")
        listed = [ALLOW_LISTED, cls.BY_ALLOW, cls.BY_FILE, cls.BY_ALLOW6, cls.LISTED6]
        cls.feed = FakeApiban(key=KEY, ips=listed).start()
        cls.addClassCleanup(cls.feed.stop)
        cls.kam = make(cls.kind, cls.tmp.path, cls.feed.url, key=KEY, modparams=[
            ("allow", '"127.0.0.80/29"'), ("allow", '"2001:db8:66::/48"'), ("allow_file", f'"{cls.allow_file}"')])
        cls.addClassCleanup(cls.kam.stop)
        cls.kam.start()
        cls.kam.wait_synced(entries=len(listed))

    def check(self, ip):
        return self.kam.admin_check(ip)

    def test_allowed_sources_get_through_and_are_counted(self):
        s0 = self.kam.stats()
        self.assertEqual(self.kam.options(self.BY_ALLOW), 200)
        self.assertEqual(self.kam.options(self.BY_FILE), 200)
        self.assertEqual(self.kam.options(CLEAN, [f"X-Real-IP: {self.BY_ALLOW6}"]), 200)
        self.assertEqual(self.kam.options(ALLOW_LISTED), 403)
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
        v = self.check(ALLOW_LISTED)
        self.assertEqual((v["listed"], v["result"], v["detail"]), (1, "listed", "listed"))
        v = self.check("127.0.0.82")  # allowed but not listed: nothing to allow
        self.assertEqual((v["result"], v["detail"]), ("not listed", "not listed"))
        s = self.kam.stats()
        self.assertEqual((s["allowed"], s["checks"]), (s0["allowed"], s0["checks"]), "the admin check counted")

    def test_the_rules_are_announced(self):
        self.assertRegex(self.kam.log(), r"initialised: .* 3 allow rule\(s\)")
        self.assertNotIn(KEY, self.kam.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)


def huge_pages_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


class NrHugepages:
    """vm.nr_hugepages set for a test (as root) and restored after it, whatever happens."""

    PATH = "/proc/sys/vm/nr_hugepages"

    def __init__(self, test):
        with open(self.PATH) as f:
            self.old = int(f.read())
        test.addCleanup(self.set, self.old)

    def set(self, n):
        with open(self.PATH, "w") as f:
            f.write(str(n))
        with open(self.PATH) as f:
            return int(f.read())


@for_each_server
class HugePages:
    """`huge_pages` 1: the feed's table in huge pages when the operator reserved them; without
    them a WARNING naming the parameter and vm.nr_hugepages, normal pages, and a start all the
    same."""

    def setUp(self):
        self.tmp = TempDir(f"huge-{self.kind}")
        self.addCleanup(self.tmp.cleanup)
        self.feed = FakeApiban(key=KEY, ips=LISTED, count=300).start()
        self.addCleanup(self.feed.stop)

    def server(self, **kw):
        s = make(self.kind, self.tmp.path, self.feed.url, key=KEY, **kw)
        self.addCleanup(lambda: self.assertEqual(s.stop(), [], "processes left behind"))
        return s.start()

    def blocks(self, s):
        s.wait_synced(entries=300 + len(LISTED))
        self.assertEqual(s.options("127.0.0.66"), 403)
        self.assertEqual(s.options(CLEAN), 200)

    def test_without_huge_pages_reserved_it_warns_and_starts(self):
        if huge_pages_free() > 0:
            if os.geteuid() != 0:
                self.skipTest("huge pages are reserved on this machine and only root can take them away")
            NrHugepages(self).set(0)
        s = self.server(modparams=[("huge_pages", "1")])
        self.blocks(s)
        warned = [l for l in s.log().splitlines() if "parameter 'huge_pages': no huge pages for the IPv4 part" in l]
        self.assertTrue(warned, s.log()[-3000:])
        self.assertIn("WARN", warned[0])
        self.assertIn("vm.nr_hugepages", warned[0])
        self.assertIn("using normal pages", warned[0])

    def test_with_huge_pages_reserved_the_table_is_in_them(self):
        if os.geteuid() != 0:
            self.skipTest("reserving huge pages (vm.nr_hugepages) takes root")
        # max_entries 10000: 1 huge page for the IPv4 part, 2 for the IPv6 part.
        nr = NrHugepages(self)
        got = nr.set(nr.old + 8)
        if got < nr.old + 3 or huge_pages_free() < 3:
            self.skipTest(f"the kernel reserved {got - nr.old} of 8 huge pages asked for (memory too fragmented)")
        free = huge_pages_free()
        s = self.server(modparams=[("huge_pages", "1"), ("max_entries", '"10000"')])
        self.blocks(s)
        self.assertNotIn("parameter 'huge_pages'", s.log())
        with open(f"/proc/{s.proc.pid}/smaps") as f:
            smaps = f.read()
        self.assertIn("anon_hugepage", smaps)
        # The IPv4 part was written by the sync (the IPv6 part too: one address), so its pages
        # left the pool.
        self.assertLess(huge_pages_free(), free)
