"""What an operator runs in production, against the real Kamailio (Debian's, or the one KAMAILIO_BIN
names): the statistics in Kamailio's counters framework (kex's stats.get_statistics, exact under a
flood from every worker), Prometheus through xhttp_prom, KEMI routing scripts (Lua, JavaScript,
Python), `make install` and the Debian package installed with dpkg and loaded by a bare
loadmodule "apiban.so" (these two only against Debian's packaged server)."""

import os
import pwd
import re
import subprocess
import threading
import unittest
import urllib.request

from harness import (KAMAILIO_CFG, KAMAILIO_MODULE, KAMAILIO_MODULES, REPO, STAT_NUMBERS, STAT_TEXTS, TARGET_DIR,
                     FakeApiban, Kamailio, TempDir, free_port, packaged_kamailio, read_text, sip_exchange,
                     wait_until)

MODULE = KAMAILIO_MODULE  # APIBAN_MODULE, see harness.py
LUA_SCRIPT = os.path.join(REPO, "tests", "lua", "apiban.lua")
PKG = "kamailio-apiban-module"
# Where the package and `make install` keep the snapshot, for the user Debian's service runs as.
STATE_DIR = "/var/lib/kamailio"
SERVICE_USER = "kamailio"

LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
KEY = "k-operator-0123456789"
# Every number of APIBAN_STATS is a counter, on Kamailio as on OpenSIPS; these only grow.
STATS = STAT_NUMBERS
GROWING = ["checks", "hits", "allowed", "requests", "syncs", "sync_failures", "rate_limited", "skipped",
           "overflow", "expired", "last_sync"]


def replace_once(text, old, new, count=1):
    """str.replace that fails when the sample config no longer has what a test relies on."""
    n = text.count(old)
    if n < count:
        raise AssertionError(f"the sample config has {n} x {old!r}, expected {count}")
    return text.replace(old, new)


def get_statistics(kam, what="apiban:"):
    """`kamcmd stats.get_statistics apiban:` as {name: value}."""
    rc, out = kam.kamcmd("stats.get_statistics", what)
    if rc != 0:
        raise AssertionError(f"stats.get_statistics failed: {out}")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^apiban:(\w+) = (\d+)$", out, re.M)}


# ---------------------------------------------------------------------------------------------

class Statistics(unittest.TestCase):
    """One Kamailio with 4 SIP workers, kex, xhttp and xhttp_prom; the sample config's routing,
    with the worker's PID in every reply reason so the test sees which processes answered."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("kam-stats")
        cls.feed = FakeApiban(key=KEY, ips=LISTED, count=1000).start()
        cls.total = 1000 + len(LISTED)
        cls.http_port = free_port()
        text = read_text(KAMAILIO_CFG)
        text = replace_once(text, "children=2", "children=4")
        text = replace_once(text, "disable_tcp=yes",
                            f"disable_tcp=no\ntcp_children=1\ntcp_accept_no_cl=yes\nlisten=tcp:127.0.0.1:{cls.http_port}")
        text = replace_once(text, 'loadmodule "apiban.so"\n',
                            'loadmodule "apiban.so"\nloadmodule "xhttp.so"\n'
                            'loadmodule "xhttp_prom.so"\n'
                            'modparam("xhttp_prom", "xhttp_prom_stats", "apiban:")\n')
        text = replace_once(text, 'sl_send_reply("200", "OK")', 'sl_send_reply("200", "OK $pp")')
        text = replace_once(text, 'sl_send_reply("403", "Forbidden")', 'sl_send_reply("403", "Forbidden $pp")',
                            count=2)
        text += ('\nevent_route[xhttp:request] {\n'
                 '\tif ($hu =~ "^/metrics") {\n\t\tprom_dispatch();\n\t\texit;\n\t}\n'
                 '\txhttp_reply("404", "Not Found", "text/plain", "no such page\\n");\n}\n')
        cls.kam = Kamailio(cls.tmp.path, cls.feed.url, key=KEY, cfg_text=text, module=MODULE,
                           defines={"APIBAN_INTERVAL": "1"}).start()
        cls.kam.wait_synced(entries=cls.total)

    @classmethod
    def tearDownClass(cls):
        cls.kam.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    def metrics(self):
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            self.assertEqual(r.status, 200)
            return r.read().decode()

    def test_rpc_stats_has_every_field_of_the_list_in_order(self):
        # apiban.stats expands APIBAN_STATS of c-shim/apiban.h, as OpenSIPS's apiban_stats does.
        self.assertEqual(list(self.kam.stats()), STAT_NUMBERS + STAT_TEXTS)

    def test_all_counters_are_registered_and_match_apiban_stats(self):
        # The refresher pulls every second here: read the counters around apiban.stats, and
        # each value of apiban.stats lies between the two reads (they only grow).
        got = get_statistics(self.kam)
        st = self.kam.stats()
        again = get_statistics(self.kam)
        self.assertEqual(sorted(got), sorted(STATS))
        for name in GROWING:
            self.assertLessEqual(got[name], st[name], name)
            self.assertLessEqual(st[name], again[name], name)
        self.assertEqual(got["entries"], self.total)
        self.assertGreaterEqual(got["syncs"], 1)
        self.assertGreater(got["last_sync"], 1_700_000_000)
        # A name alone finds the counter too (kex looks it up in every group).
        rc, out = self.kam.kamcmd("stats.get_statistics", "entries")
        self.assertEqual((rc, out.strip()), (0, f"apiban:entries = {self.total}"))
        # The counters are the module's own: stats.reset_statistics leaves them alone.
        self.assertEqual(sip_exchange("127.0.0.66", self.kam.port)[0], 403)
        before = get_statistics(self.kam)
        self.assertGreaterEqual(before["checks"], 1)
        rc, out = self.kam.kamcmd("stats.reset_statistics", "apiban:")
        self.assertEqual(rc, 0, out)
        after = get_statistics(self.kam)
        for name in ("checks", "hits", "entries", "rate_limited", "sync_failures"):
            self.assertEqual(after[name], before[name], name)

    def test_flood_from_every_worker_counts_exactly(self):
        """2,000 OPTIONS from 8 loopback sources at once, answered by 4 workers: the counters
        move by exactly the checks and hits the routing script made."""
        per_source = 250
        # (source, header, replies expected, checks per request, hits per request)
        plan = [
            ("127.0.0.66", None, 403, 1, 1),                       # listed source
            ("127.0.0.67", None, 403, 1, 1),                       # listed source
            ("127.0.0.5", None, 200, 1, 0),                        # clean source
            ("127.0.0.6", None, 200, 1, 0),                        # clean source
            ("127.0.0.7", "X-Real-IP: 10.0.0.1", 403, 2, 1),       # clean source, listed header
            ("127.0.0.8", "X-Real-IP: [2001:db8::66]", 403, 2, 1),  # clean source, listed IPv6 header
            ("127.0.0.9", "X-Real-IP: 192.0.2.1", 200, 2, 0),      # clean source, clean header
            ("127.0.0.10", "X-Real-IP: not-an-ip", 200, 1, 0),     # -2 is neither a check nor a hit
        ]
        results = {i: [] for i in range(len(plan))}

        def run(i, src, header):
            hdrs = (header,) if header else ()
            for _ in range(per_source):
                results[i].append(sip_exchange(src, self.kam.port, hdrs, timeout=10))

        before_api = self.kam.stats()
        before = get_statistics(self.kam)
        threads = [threading.Thread(target=run, args=(i, p[0], p[1])) for i, p in enumerate(plan)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        self.assertFalse(any(t.is_alive() for t in threads), "senders did not finish")
        after = get_statistics(self.kam)
        after_api = self.kam.stats()

        pids = set()
        for i, (src, header, code, _, _) in enumerate(plan):
            codes = [c for c, _ in results[i]]
            self.assertEqual(len(codes), per_source)
            self.assertEqual(codes, [code] * per_source, f"{src} {header}: {sorted(set(map(str, codes)))}")
            pids.update(reason.split()[-1] for _, reason in results[i])
        sent = per_source * len(plan)
        checks = per_source * sum(p[3] for p in plan)
        hits = per_source * sum(p[4] for p in plan)
        self.assertEqual(sent, 2000)
        self.assertEqual(after["checks"] - before["checks"], checks)
        self.assertEqual(after["hits"] - before["hits"], hits)
        # The same shared values as apiban.stats: not one process's share of them.
        self.assertEqual(after_api["checks"] - before_api["checks"], checks)
        self.assertEqual(after_api["hits"] - before_api["hits"], hits)
        # More than one worker answered (4 are listening on the one UDP socket).
        self.assertGreaterEqual(len(pids), 2, f"worker PIDs seen: {pids}")
        print(f"\n  flood: {sent} requests, {checks} checks, {hits} hits counted "
              f"(apiban:checks {before['checks']} -> {after['checks']}, apiban:hits {before['hits']} -> "
              f"{after['hits']}), answered by {len(pids)} workers", flush=True)

    def test_prometheus_endpoint_serves_the_apiban_metrics(self):
        self.assertEqual(sip_exchange("127.0.0.66", self.kam.port)[0], 403)
        self.assertEqual(sip_exchange("127.0.0.5", self.kam.port)[0], 200)
        body = self.metrics()
        values = {m.group(1): int(m.group(2))
                  for m in re.finditer(r"^kamailio_apiban_(\w+) (\d+)(?: \d+)?$", body, re.M)}
        self.assertEqual(sorted(values), sorted(STATS), body)
        stats = get_statistics(self.kam)
        for name in ("checks", "hits", "entries"):
            self.assertEqual(values[name], stats[name], name)
        self.assertEqual(values["entries"], self.total)
        self.assertGreaterEqual(values["hits"], 1)

    def test_sync_failures_and_rate_limited_count_the_feed_s_refusals(self):
        before = get_statistics(self.kam)
        self.feed.set_fault("429", times=1, retry_after=1)
        try:
            wait_until(lambda: get_statistics(self.kam)["rate_limited"] > before["rate_limited"], timeout=30,
                       what="apiban:rate_limited to count the 429")
        finally:
            self.feed.clear_fault()
        self.feed.set_fault("status", times=1, code=503)
        try:
            wait_until(lambda: get_statistics(self.kam)["sync_failures"] >= before["sync_failures"] + 2,
                       timeout=30, what="apiban:sync_failures to count the 429 and the 503")
        finally:
            self.feed.clear_fault()
        # The refresher recovers and counts the next good pull.
        wait_until(lambda: get_statistics(self.kam)["syncs"] > before["syncs"] and self.kam.stats()["state"] == "ok",
                   timeout=60, what="a good pull after the faults")
        after = get_statistics(self.kam)
        st = self.kam.stats()
        self.assertEqual(after["rate_limited"], st["rate_limited"])
        self.assertEqual(after["sync_failures"], st["sync_failures"])
        self.assertEqual(after["rate_limited"] - before["rate_limited"], 1)
        self.assertEqual(after["sync_failures"] - before["sync_failures"], 2)
        self.assertEqual(after["entries"], self.total)
        # The back-off is one module-prefixed warning per failure, not an error; no key anywhere.
        log = self.kam.log()
        self.assertRegex(log, r"WARNING: apiban: .*429")
        self.assertRegex(log, r"WARNING: apiban: .*503")
        self.assertNotIn(KEY, log)
        # No line per request: the flood and the other tests' requests left no apiban line
        # beyond the ones of the start and of the syncs.
        for line in log.splitlines():
            if "apiban:" in line and ("INFO" in line or "WARNING" in line or "ERROR" in line):
                self.assertNotRegex(line, r"127\.0\.0\.(66|67|5|6|7|8|9|10)\b", line)


# ---------------------------------------------------------------------------------------------

def kemi_cfg(engine_module, engine, script):
    """The sample config's global part and modules, with a KEMI routing script instead of the
    native routing blocks."""
    text = read_text(KAMAILIO_CFG)
    head = text.split("####### Routing logic #########", 1)[0]
    return (head + f'loadmodule "{engine_module}.so"\n'
            f'modparam("{engine_module}", "load", "{script}")\n'
            f'cfgengine "{engine}"\n')


JS_SCRIPT = """
function ksr_request_route() {
	var src = KSR.apiban.apiban_check();
	if (src > 0) {
		KSR.sl.sl_send_reply(403, "Forbidden (apiban " + src + ")");
		KSR.x.exit();
	}
	var real = KSR.hdr.get("X-Real-IP");
	if (real !== null && real !== undefined) {
		var r = KSR.apiban.apiban_check_ip(real);
		if (r > 0) {
			KSR.sl.sl_send_reply(403, "Forbidden (X-Real-IP apiban " + r + ")");
			KSR.x.exit();
		} else if (r == -2) {
			KSR.sl.sl_send_reply(400, "Bad X-Real-IP (apiban " + r + ")");
			KSR.x.exit();
		}
	}
	KSR.sl.sl_send_reply(200, "OK (apiban " + src + ")");
}
"""


PY_SCRIPT = """
import KSR


def mod_init():
    return Kamailio()


class Kamailio:
    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        src = KSR.apiban.apiban_check()
        if src > 0:
            KSR.sl.sl_send_reply(403, "Forbidden (apiban %d)" % src)
            return 1
        real = KSR.hdr.get("X-Real-IP")
        if real is not None:
            r = KSR.apiban.apiban_check_ip(real)
            if r > 0:
                KSR.sl.sl_send_reply(403, "Forbidden (X-Real-IP apiban %d)" % r)
                return 1
            if r == -2:
                KSR.sl.sl_send_reply(400, "Bad X-Real-IP (apiban %d)" % r)
                return 1
        KSR.sl.sl_send_reply(200, "OK (apiban %d)" % src)
        return 1
"""


class Kemi(unittest.TestCase):
    """KSR.apiban.apiban_check() and KSR.apiban.apiban_check_ip(ip) from real KEMI scripts; the
    reply reasons carry the return values."""

    cases = [
        # (source, headers, status, reason)
        ("127.0.0.66", (), 403, "Forbidden (apiban 1)"),
        ("127.0.0.5", (), 200, "OK (apiban -1)"),
        ("127.0.0.5", ("X-Real-IP: 127.0.0.67",), 403, "Forbidden (X-Real-IP apiban 1)"),
        ("127.0.0.5", ("X-Real-IP: [2001:db8::66]",), 403, "Forbidden (X-Real-IP apiban 1)"),
        ("127.0.0.5", ("X-Real-IP: 192.0.2.1",), 200, "OK (apiban -1)"),
        ("127.0.0.5", ("X-Real-IP: not-an-ip",), 400, "Bad X-Real-IP (apiban -2)"),
    ]

    def run_engine(self, name, engine_module, engine, script):
        tmp = TempDir(f"kam-kemi-{name}")
        feed = FakeApiban(key=KEY, ips=LISTED, count=100).start()
        try:
            kam = Kamailio(tmp.path, feed.url, key=KEY, cfg_text=kemi_cfg(engine_module, engine, script),
                           module=MODULE)
            try:
                kam.start()
                kam.wait_synced(entries=100 + len(LISTED))
                before = kam.stats()
                for src, hdrs, code, reason in self.cases:
                    self.assertEqual(sip_exchange(src, kam.port, hdrs), (code, reason), (src, hdrs))
                after = kam.stats()
                # Every case checked the source; four also checked a valid header address.
                self.assertEqual(after["checks"] - before["checks"], len(self.cases) + 3)
                self.assertEqual(after["hits"] - before["hits"], 3)
            finally:
                kam.stop()
        finally:
            feed.stop()
            tmp.cleanup()

    def test_lua_routing_script(self):
        self.run_engine("lua", "app_lua", "lua", LUA_SCRIPT)

    def run_inline(self, name, engine_module, engine, filename, text):
        tmp = TempDir(f"kam-kemi-{name}-script")
        try:
            path = os.path.join(tmp.path, filename)
            with open(path, "w") as f:
                f.write(text)
            self.run_engine(name, engine_module, engine, path)
        finally:
            tmp.cleanup()

    def need_engine(self, engine_module, package):
        # Debian's packages have every engine (scripts/setup-debian.sh installs them); the 6.0 of
        # scripts/build-kamailio-6.0.sh builds app_lua only.
        if not os.path.exists(os.path.join(KAMAILIO_MODULES, f"{engine_module}.so")):
            self.skipTest(f"{engine_module}.so is not in {KAMAILIO_MODULES} (Debian package {package})")

    def test_javascript_routing_script(self):
        self.need_engine("app_jsdt", "kamailio-extra-modules")
        self.run_inline("js", "app_jsdt", "jsdt", "apiban.js", JS_SCRIPT)

    def test_python_routing_script(self):
        self.need_engine("app_python3", "kamailio-python3-modules")
        self.run_inline("python", "app_python3", "python", "apiban.py", PY_SCRIPT)


# ---------------------------------------------------------------------------------------------

def dpkg_status(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def kamailio_version():
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "kamailio"], capture_output=True, text=True,
                          check=True).stdout.strip()


def package(out_dir, **env):
    """scripts/package-deb.sh into out_dir; returns (the .deb, the script's output)."""
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR, DEB_OUT_DIR=out_dir, **env)
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "package-deb.sh")], capture_output=True,
                       text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise AssertionError(r.stdout + r.stderr)
    debs = [f for f in os.listdir(out_dir) if f.endswith(".deb")]
    if len(debs) != 1:
        raise AssertionError(f"expected one .deb in {out_dir}: {debs}")
    return os.path.join(out_dir, debs[0]), r.stdout + r.stderr


def deb_fields(deb, *names):
    return subprocess.run(["dpkg-deb", "-f", deb, *names], capture_output=True, text=True, check=True).stdout


class Install(unittest.TestCase):
    """`make install` / `make uninstall`, and the Debian package installed into the real system."""

    def setUp(self):
        why = packaged_kamailio()
        if why:
            self.skipTest(f"package and make-install tests run against Debian's packaged server: {why}")
        self.tmp = TempDir("kam-install")

    def tearDown(self):
        self.tmp.cleanup()

    def make(self, *args):
        env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR)
        r = subprocess.run(["make", "-C", REPO, *args], capture_output=True, text=True, env=env, timeout=1800)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_make_install_and_uninstall(self):
        dest = os.path.join(self.tmp.path, "root")
        out = self.make("install", f"DESTDIR={dest}")
        installed = os.path.join(dest, KAMAILIO_MODULES.lstrip("/"), "apiban.so")
        self.assertIn("loadmodule", out)
        self.assertEqual(os.stat(installed).st_mode & 0o777, 0o644)
        with open(installed, "rb") as a, open(MODULE, "rb") as b:
            self.assertEqual(a.read(), b.read())
        # The state directory for snapshot_file, the service user's (the tests run as root).
        state = os.stat(os.path.join(dest, STATE_DIR.lstrip("/")))
        self.assertEqual(state.st_mode & 0o777, 0o750)
        self.assertEqual(state.st_uid, pwd.getpwnam(SERVICE_USER).pw_uid)
        # MODULES_DIR moves it elsewhere.
        self.make("install", f"DESTDIR={dest}", "MODULES_DIR=/opt/kamailio/modules")
        self.assertTrue(os.path.isfile(os.path.join(dest, "opt/kamailio/modules/apiban.so")))
        self.make("uninstall", f"DESTDIR={dest}")
        self.assertFalse(os.path.exists(installed))
        self.assertTrue(os.path.isdir(os.path.join(dest, STATE_DIR.lstrip("/"))))

    def test_the_package_pins_the_kamailio_the_module_was_built_against(self):
        # A tree whose Debian version file says 6.0.1-1+deb13u1, as scripts/build-kamailio-6.0.sh
        # (or setup-debian.sh on Debian 13) leaves it: that is the version pinned, not the one
        # installed here. NO_BUILD: the module already built is packaged as it is.
        # The version must differ from the installed one (on Debian 13 that may be 6.0.1-1+deb13u1
        # itself), or the mismatch note rightly does not appear.
        other = "6.0.1-1+deb13u1" if kamailio_version() != "6.0.1-1+deb13u1" else "6.0.1-1+deb13u9"
        tree = os.path.join(self.tmp.path, "tree")
        os.makedirs(tree)
        with open(os.path.join(tree, ".apiban-debian-version"), "w") as f:
            f.write(other + "\n")
        deb, out = package(os.path.join(self.tmp.path, "deb"), KAMAILIO_SRC=tree, NO_BUILD="1")
        self.assertRegex(deb_fields(deb, "Depends"), r"^kamailio \(= " + re.escape(other) + r"\), libc6")
        self.assertIn("+kam" + other.replace("-", ".", 1) + "_", os.path.basename(deb))
        self.assertIn(f"built against kamailio {other}; this machine has {kamailio_version()}", out)
        # A tree that is not Debian's source says what to do.
        os.remove(os.path.join(tree, ".apiban-debian-version"))
        with self.assertRaises(AssertionError) as e:
            package(os.path.join(self.tmp.path, "deb2"), KAMAILIO_SRC=tree, NO_BUILD="1")
        self.assertIn("has no .apiban-debian-version", str(e.exception))
        self.assertIn("DEB_KAMAILIO_VERSION", str(e.exception))

    def test_debian_package_installs_and_loads_with_a_bare_loadmodule(self):
        system_module = os.path.join(KAMAILIO_MODULES, "apiban.so")
        if dpkg_status(PKG):
            self.skipTest(f"{PKG} is already installed here: not touching it")
        if os.path.exists(system_module):
            self.skipTest(f"{system_module} exists (installed by hand?): not touching it")
        if os.path.exists(STATE_DIR):
            self.skipTest(f"{STATE_DIR} exists: not touching it (the package makes it, purge removes it)")
        deb, _ = package(os.path.join(self.tmp.path, "deb"))

        kver = kamailio_version()
        fields = deb_fields(deb, "Package", "Depends")
        self.assertIn(f"Package: {PKG}", fields)
        self.assertRegex(fields, rf"Depends: kamailio \(= {re.escape(kver)}\)")
        contents = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
        for path in (f"{KAMAILIO_MODULES}/apiban.so", f"/usr/share/doc/{PKG}/README.md.gz",
                     f"/usr/share/doc/{PKG}/examples/kamailio.cfg", f"/usr/share/doc/{PKG}/copyright"):
            self.assertIn("." + path, contents)

        feed = FakeApiban(key=KEY, ips=LISTED, count=50).start()
        kam = None
        try:
            r = subprocess.run(["dpkg", "-i", deb], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("install ok installed", dpkg_status(PKG))
            self.assertTrue(os.path.isfile(system_module))
            # The state directory, the service user's alone.
            user = pwd.getpwnam(SERVICE_USER)
            st = os.stat(STATE_DIR)
            self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (user.pw_uid, user.pw_gid, 0o750))
            # The shipped example config, as installed, with the system's module path: its bare
            # loadmodule "apiban.so" finds the packaged module.
            example = read_text(f"/usr/share/doc/{PKG}/examples/kamailio.cfg")
            self.assertIn('loadmodule "apiban.so"', example)
            kam = Kamailio(self.tmp.path, feed.url, key=KEY, cfg_text=example, module=MODULE,
                           defines={"MODULE_PATH": f'"{KAMAILIO_MODULES}"'})
            kam.start()
            kam.wait_synced(entries=50 + len(LISTED))
            self.assertEqual(sip_exchange("127.0.0.66", kam.port)[0], 403)
            self.assertEqual(sip_exchange("127.0.0.5", kam.port)[0], 200)
            with open(f"/proc/{kam.proc.pid}/maps") as f:
                maps = f.read()
            self.assertIn(system_module, maps)
            self.assertNotIn(os.path.join(kam.mod_dir, "apiban.so"), maps)
            kam.stop()
            kam = None
            self.as_the_service_runs_it(feed, example)
        finally:
            if kam:
                kam.stop()
            feed.stop()
            subprocess.run(["dpkg", "-r", PKG], capture_output=True, timeout=300)
        self.assertNotIn("ok installed", dpkg_status(PKG))
        self.assertFalse(os.path.exists(system_module))
        # Removal keeps the state; purge removes it.
        snapshot = os.path.join(STATE_DIR, "apiban.snapshot")
        self.assertTrue(os.path.isfile(snapshot))
        r = subprocess.run(["dpkg", "--purge", PKG], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(STATE_DIR))

    def as_the_service_runs_it(self, feed, example):
        """The packaged sample config as Debian's kamailio.service runs the server: as user
        kamailio from the first instruction (systemd does not run here: runuser does what its
        User= does), with the config's own snapshot_file in the package's state directory. A sync
        writes the snapshot; with the feed down, a restart blocks from it."""
        snapshot = os.path.join(STATE_DIR, "apiban.snapshot")
        self.assertIn(snapshot, example)

        def start(sub):
            tmp = os.path.join(self.tmp.path, sub)
            os.makedirs(tmp)
            os.chmod(self.tmp.path, 0o711)
            kam = Kamailio(tmp, feed.url, key=KEY, cfg_text=example, run_as=SERVICE_USER,
                           defines={"MODULE_PATH": f'"{KAMAILIO_MODULES}"', "APIBAN_INTERVAL": "1"})
            kam.defines.pop("APIBAN_SNAPSHOT")  # the config's own
            return kam.start()

        a = start("service-a")
        try:
            a.wait_synced(entries=50 + len(LISTED))
            wait_until(lambda: os.path.exists(snapshot), timeout=10, what=f"{snapshot}")
            self.assertEqual(os.stat(snapshot).st_uid, pwd.getpwnam(SERVICE_USER).pw_uid)
            self.assertNotIn("snapshot_file", a.log())
            self.assertNotIn("cannot write snapshot", a.log())
        finally:
            a.stop()
        feed.stop()
        b = start("service-b")
        try:
            self.assertEqual(sip_exchange("127.0.0.66", b.port)[0], 403)
            self.assertEqual(sip_exchange("127.0.0.5", b.port)[0], 200)
            self.assertIn(f"snapshot {snapshot} loaded: {50 + len(LISTED)} entries", b.log())
        finally:
            b.stop()

if __name__ == "__main__":
    unittest.main()
