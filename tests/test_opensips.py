"""End to end with a real OpenSIPS 3.6 built from source: the sample config, the fake APIBAN feed,
SIP OPTIONS from loopback sources, MI over the FIFO and through opensips-cli, and statistics.

The OpenSIPS tree is taken from OPENSIPS_SRC (default /usr/local/src/opensips): a configured,
built source tree with its `opensips` binary and modules/{sl,signaling,mi_fifo}/*.so, as
scripts/build-opensips.sh makes it (`eval "$(bash scripts/build-opensips.sh --env)"`). Without one
this file runs nothing: setUpModule skips it, and unittest's report says so in one line (nothing is
printed when another file imports this one). With APIBAN_REQUIRE_OPENSIPS=1 (scripts/test.sh sets it
when it has a tree) setUpModule fails instead.

The test builds the OpenSIPS flavour of the module itself, into target/opensips (never over the
Kamailio build in target/release). Every server gets its own temp dir and ports, and every
process it starts is stopped by PID.
"""

import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import unittest
import uuid

from harness import REPO, STAT_NUMBERS, STAT_TEXTS, FakeApiban, Proc, SipServer, TempDir, free_port, read_text, wait_until, write_text

OPENSIPS_SRC = os.environ.get("OPENSIPS_SRC", "/usr/local/src/opensips")
OPENSIPS = os.path.join(OPENSIPS_SRC, "opensips")
HAVE_TREE = os.access(OPENSIPS, os.X_OK) and os.path.isfile(os.path.join(OPENSIPS_SRC, "sr_module.h"))

OPENSIPS_CFG = os.path.join(REPO, "opensips-cfg", "opensips.cfg")
TARGET_DIR = os.path.join(REPO, "target", "opensips")
MODULE = os.path.join(TARGET_DIR, "release", "libapiban.so")
TREE_MODULES = ("sl", "signaling", "mi_fifo")

LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
CLEAN = "127.0.0.5"
KEY = "k-osips-0123456789"
REQUIRED = os.environ.get("APIBAN_REQUIRE_OPENSIPS") == "1"
NO_TREE = f"no OpenSIPS tree at {OPENSIPS_SRC} (OPENSIPS_SRC; scripts/build-opensips.sh builds one)"


def find_cargo():
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        raise AssertionError("cargo not found: install Rust (rustup) or put cargo on the PATH")
    return cargo


def setUpModule():
    """Builds the OpenSIPS flavour of the module once for the whole file."""
    if not HAVE_TREE:
        if REQUIRED:
            raise AssertionError(f"{NO_TREE}, and APIBAN_REQUIRE_OPENSIPS=1")
        raise unittest.SkipTest(NO_TREE)
    env = dict(os.environ, OPENSIPS_SRC=OPENSIPS_SRC, CARGO_TARGET_DIR=TARGET_DIR)
    env.pop("CARGO_BUILD_TARGET_DIR", None)
    args = [find_cargo(), "build", "--release", "--locked", "--no-default-features", "--features", "opensips"]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{r.stderr[-6000:]}")


# ---- MI -----------------------------------------------------------------------------------------

class MIError(Exception):
    pass


def mi_fifo(fifo, reply_dir, method, params=None, timeout=10.0):
    """One JSON-RPC command over OpenSIPS's mi_fifo (`:reply_fifo:{json}`); returns the result.
    Raises MIError for an error reply, OSError when nobody reads the FIFO."""
    name = f"apiban_reply_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    path = os.path.join(reply_dir, name)
    os.mkfifo(path, 0o600)
    fds = []
    try:
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fds.append(rfd)
        # Our own writer end: reads never see EOF before the server has written its reply.
        fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        req = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            req["params"] = params
        wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO/ENOENT: no MI process (yet)
        try:
            os.write(wfd, f":{name}:{json.dumps(req)}".encode())
        finally:
            os.close(wfd)
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no MI reply to {method} within {timeout}s (got {buf!r})")
            r, _, _ = select.select([rfd], [], [], left)
            if not r:
                continue
            try:
                buf += os.read(rfd, 65536)
            except BlockingIOError:
                continue
            try:
                reply = json.loads(buf)
            except ValueError:
                continue
            if "error" in reply:
                raise MIError(reply["error"])
            return reply["result"]
    finally:
        for fd in fds:
            os.close(fd)
        os.unlink(path)


def opensips_cli_command():
    """How to run opensips-cli, or None: the interpreter itself when it has the package (a PID we
    own, not a shim's), else an opensips-cli on the PATH."""
    if importlib.util.find_spec("opensipscli") is not None:
        return [sys.executable, "-m", "opensipscli.main"]
    path = shutil.which("opensips-cli")
    return [path] if path else None


# ---- the server -------------------------------------------------------------------------------

def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class OpenSIPS(SipServer):
    """The tree's opensips with the sample config (through `m4 -P`, as its header says) and our
    module, in its own temp dir."""

    def __init__(self, tmp, feed_url, key=KEY, defines=None, modparams=(), module=MODULE):
        self.tmp = tmp
        self.port = free_port()
        self.mod_dir = os.path.join(tmp, "modules")
        os.makedirs(self.mod_dir, exist_ok=True)
        for m in TREE_MODULES:
            link = os.path.join(self.mod_dir, f"{m}.so")
            if not os.path.lexists(link):
                os.symlink(os.path.join(OPENSIPS_SRC, "modules", m, f"{m}.so"), link)
        shutil.copy(module, os.path.join(self.mod_dir, "apiban.so"))
        self.fifo = os.path.join(tmp, "opensips_fifo")
        self.log_path = os.path.join(tmp, "opensips.log")
        d = {
            "APIBAN_URL": feed_url,
            "APIBAN_KEY": key,
            "APIBAN_INTERVAL": "300",
            "APIBAN_RATE_LIMIT": "1000/1",
            "APIBAN_SNAPSHOT": os.path.join(tmp, "apiban.snapshot"),
            "SIP_LISTEN": f"udp:127.0.0.1:{self.port}",
            "MODULE_PATH": self.mod_dir + "/",
            "MI_FIFO": self.fifo,
            "MI_REPLY_DIR": tmp + "/",
            "LOG_STDERR": "yes",
        }
        d.update(defines or {})
        self.defines = d
        text = read_text(OPENSIPS_CFG)
        extra = "".join(f'modparam("apiban", "{n}", {v})\n' for n, v in modparams)
        if extra:
            text = text.replace("####### Routing logic #########", extra + "\n####### Routing logic #########", 1)
        self.cfg = os.path.join(tmp, "opensips.cfg")
        write_text(self.cfg, text)
        self.proc = None
        self.pids = []

    def preprocessor(self):
        words = ["m4", "-P"]
        for k, v in self.defines.items():
            if v is None:
                continue
            if re.search(r"\s", f"{k}{v}"):
                raise ValueError(f"-D{k}={v}: OpenSIPS splits -p at blanks")
            words.append(f"-D{k}={v}")
        return " ".join(words)

    def args(self, *extra):
        return [OPENSIPS, *extra, "-f", self.cfg, "-p", self.preprocessor(), "-w", self.tmp, "-m", "64", "-M", "16"]

    def start(self):
        self.proc = Proc(self.args("-F"), self.log_path)
        wait_until(lambda: self.mi_ok("version") or not self.proc.alive(), timeout=20, what="opensips's MI FIFO")
        if not self.proc.alive():
            raise AssertionError("opensips exited at start:\n" + self.proc.output()[-3000:])
        # Every process of the server, so that stop() can make sure each one is gone.
        self.pids = [p["PID"] for p in self.mi("ps")["Processes"]]
        return self

    def start_expecting_failure(self, timeout=20):
        """Starts and waits for the server to give up; returns (exit code, log)."""
        self.proc = Proc(self.args("-F"), self.log_path)
        try:
            self.proc.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("opensips kept running:\n" + self.proc.output()[-3000:])
        self.proc.log.close()
        return self.proc.p.returncode, self.proc.output()

    def check_config(self):
        r = subprocess.run(self.args("-C"), capture_output=True, text=True, timeout=30, cwd=self.tmp)
        return r.returncode, r.stdout + r.stderr

    def stop(self):
        """Stops the attendant by PID (it stops its children), then makes sure that every process
        it had is gone; a straggler is killed by its PID and reported."""
        if not self.proc:
            return []
        self.proc.stop(timeout=20)
        left = []
        for pid in self.pids:
            if pid == self.proc.pid:
                continue
            try:
                wait_until(lambda: pid_gone(pid), timeout=10, what=f"process {pid} to end")
            except AssertionError:
                left.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return left

    def mi(self, method, params=None, timeout=10.0):
        return mi_fifo(self.fifo, self.tmp, method, params, timeout)

    def mi_ok(self, method):
        try:
            self.mi(method, timeout=3)
            return True
        except (OSError, TimeoutError, MIError):
            return False

    def stats(self):
        return self.mi("apiban_stats")


class OpenSIPSCase(unittest.TestCase):
    __test__ = HAVE_TREE  # pytest: nothing to collect without a tree


# ---- the tests --------------------------------------------------------------------------------

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


class EndToEnd(OpenSIPSCase):
    """One OpenSIPS and one feed of several thousand addresses for the whole class."""

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

    def test_a_list_of_thousands_arrives_complete(self):
        s = self.osips.stats()
        self.assertEqual(s["entries"], self.total)
        self.assertEqual((s["ipv4"], s["ipv6"]), (self.total - 1, 1))
        self.assertEqual(s["last_id"], self.feed.max_id)
        self.assertEqual(s["last_error"], "")
        self.assertEqual(s["state"], "ok")
        self.assertGreater(s["last_sync"], 1_700_000_000)
        st = self.feed.stats()
        self.assertEqual(st["last_auth"], f"Bearer {KEY}")
        self.assertEqual(st["last_set"], "sip")
        self.assertGreaterEqual(s["requests"], 22)

    def test_mi_stats_has_the_fields_of_the_kamailio_rpc(self):
        # Both replies expand APIBAN_STATS of c-shim/apiban.h, in its order.
        self.assertEqual(list(self.osips.stats()), STAT_NUMBERS + STAT_TEXTS)

    def test_listed_sources_get_403_and_clean_ones_200(self):
        before = self.osips.stats()
        self.assertEqual(self.osips.options("127.0.0.66"), 403)
        self.assertEqual(self.osips.options("127.0.0.67"), 403)
        self.assertEqual(self.osips.options(CLEAN), 200)
        self.assertEqual(self.osips.options("127.0.0.68"), 200)
        after = self.osips.stats()
        self.assertGreaterEqual(after["checks"] - before["checks"], 4)
        self.assertGreaterEqual(after["hits"] - before["hits"], 2)

    def test_ipv6_text_through_a_pseudo_variable(self):
        for v in ("2001:db8::66", "[2001:db8::66]", " 2001:DB8:0:0::66 "):
            self.assertEqual(self.osips.options(CLEAN, [f"X-Real-IP: {v}"]), 403, v)
        self.assertEqual(self.osips.options(CLEAN, ["X-Real-IP: 2001:db8::99"]), 200)
        self.assertEqual(self.osips.options(CLEAN, ["X-Real-IP: 127.0.0.67"]), 403)

    def test_an_unparsable_address_is_false_and_logged(self):
        self.assertEqual(self.osips.options(CLEAN, ["X-Real-IP: not-an-address"]), 200)
        wait_until(lambda: "'not-an-address' is not an IP address" in self.osips.log(), timeout=5,
                   what="the bad-address log line")

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

    def test_the_refresher_is_its_own_process(self):
        types = [p["Type"] for p in self.osips.mi("ps")["Processes"]]
        self.assertIn("APIBAN REFRESHER", types)

    def test_the_key_is_in_no_log_line(self):
        self.assertNotIn(KEY, self.osips.log())
        self.assertNotIn(KEY, json.dumps(self.osips.stats()))

    def test_z_added_address_is_refused_after_reload(self):
        ip = "127.0.0.77"
        self.assertEqual(self.osips.options(ip), 200)
        syncs = self.osips.stats()["syncs"]
        self.feed.add([ip])
        self.assertEqual(self.osips.mi("apiban_reload"), "Ok. Full pull requested.")
        s = self.osips.wait_synced(entries=self.total + 1, syncs=syncs + 1, timeout=10)
        self.assertEqual(s["last_id"], self.feed.max_id)
        self.assertEqual(self.osips.options(ip), 403)


class DeadFeed(OpenSIPSCase):
    def test_a_dead_feed_keeps_the_table_and_the_server(self):
        tmp = TempDir("osips-dead")
        feed = FakeApiban(key=KEY, ips=["127.0.0.66"], count=600).start()
        osips = OpenSIPS(tmp.path, feed.url, defines={"APIBAN_INTERVAL": "1"})
        try:
            osips.start()
            osips.wait_synced(entries=601)
            feed.stop()
            s = wait_until(lambda: (lambda st: st if st["last_error"] else None)(osips.stats()), timeout=10,
                           what="an error in apiban_stats")
            self.assertIn("connection refused", s["last_error"])
            self.assertEqual(s["entries"], 601)
            self.assertEqual(osips.options("127.0.0.66"), 403)
            self.assertEqual(osips.options(CLEAN), 200)
            self.assertTrue(osips.proc.alive())
            self.assertNotIn(KEY, osips.log())
        finally:
            left = osips.stop()
            feed.stop()
            tmp.cleanup()
        self.assertEqual(left, [], "opensips left processes behind")


class BadParameters(OpenSIPSCase):
    """A bad modparam stops OpenSIPS's start with a message naming the parameter."""

    CASES = [
        ("interval", '"abc"'),
        ("interval", "0"),
        ("url", '"ftp://example.com"'),
        ("max_entries", "0"),
        ("allow", '"10.0.0.0/33"'),
    ]

    def test_each_bad_value_stops_the_start(self):
        for name, value in self.CASES:
            with self.subTest(name=name, value=value):
                tmp = TempDir("osips-badparam")
                try:
                    osips = OpenSIPS(tmp.path, "http://127.0.0.1:9", modparams=[(name, value)])
                    rc, log = osips.start_expecting_failure()
                    self.assertNotEqual(rc, 0)
                    self.assertIn(f"parameter '{name}'", log)
                finally:
                    tmp.cleanup()

    def test_missing_key_with_the_real_url(self):
        tmp = TempDir("osips-nokey")
        try:
            osips = OpenSIPS(tmp.path, "https://apiban.org")
            osips.without_modparam("apikey")
            rc, log = osips.start_expecting_failure()
            self.assertNotEqual(rc, 0)
            self.assertIn("parameter 'apikey': no API key", log)
        finally:
            tmp.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
