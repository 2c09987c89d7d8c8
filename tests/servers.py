"""The servers under test, each behind one interface, so that a behaviour is tested once and runs
against every server present:

    s = make(kind, tmp, feed_url, key=..., defines={...}, modparams=[...])
    s.start(); s.stats(); s.options(src, headers); s.admin_check(ip); s.admin_reload()
    s.process_names(); s.log(); s.stop()

`kinds()` lists the servers present: "kamailio" always (Debian's, or the one KAMAILIO_BIN names:
scripts/test.sh runs the suites again against Kamailio 6.0), "opensips" when an OpenSIPS tree is
at OPENSIPS_SRC (scripts/build-opensips.sh builds one; with APIBAN_REQUIRE_OPENSIPS=1, which
scripts/test.sh sets once it has a tree, its absence fails instead of skipping).

Kamailio's harness is in harness.py; OpenSIPS's is here: the tree's opensips with the sample config
through `m4 -P`, MI over mi_fifo, every process stopped by PID.
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

from harness import REPO, AdminError, Kamailio, Proc, SipServer, insert_route_hook, free_port, read_text, wait_until, write_text

OPENSIPS_SRC = os.environ.get("OPENSIPS_SRC", "/usr/local/src/opensips")
OPENSIPS = os.path.join(OPENSIPS_SRC, "opensips")
HAVE_TREE = os.access(OPENSIPS, os.X_OK) and os.path.isfile(os.path.join(OPENSIPS_SRC, "sr_module.h"))

OPENSIPS_CFG = os.path.join(REPO, "opensips-cfg", "opensips.cfg")
TARGET_DIR = os.path.join(REPO, "target", "opensips")
MODULE = os.path.join(TARGET_DIR, "release", "libapiban.so")
TREE_MODULES = ("sl", "signaling", "mi_fifo", "pike")  # pike: the sample config's WITH_ANTIFLOOD

KEY = "k-osips-0123456789"
REQUIRED = os.environ.get("APIBAN_REQUIRE_OPENSIPS") == "1"
NO_TREE = f"no OpenSIPS tree at {OPENSIPS_SRC} (OPENSIPS_SRC; scripts/build-opensips.sh builds one)"


def find_cargo():
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        raise AssertionError("cargo not found: install Rust (rustup) or put cargo on the PATH")
    return cargo


_built = False


def build_opensips_module():
    """Builds the OpenSIPS flavour of the module into target/opensips, once per process; fails
    (or, without APIBAN_REQUIRE_OPENSIPS, skips) without a tree."""
    global _built
    if not HAVE_TREE:
        if REQUIRED:
            raise AssertionError(f"{NO_TREE}, and APIBAN_REQUIRE_OPENSIPS=1")
        raise unittest.SkipTest(NO_TREE)
    if _built:
        return
    env = dict(os.environ, OPENSIPS_SRC=OPENSIPS_SRC, CARGO_TARGET_DIR=TARGET_DIR)
    env.pop("CARGO_BUILD_TARGET_DIR", None)
    args = [find_cargo(), "build", "--release", "--locked", "--no-default-features", "--features", "opensips"]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{r.stderr[-6000:]}")
    _built = True


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

    def __init__(self, tmp, feed_url, key=KEY, defines=None, modparams=(), module=MODULE, route_hook="", globals_text=""):
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
        extra = globals_text + "".join(f'modparam("apiban", "{n}", {v})\n' for n, v in modparams)
        if extra:
            text = text.replace("####### Routing logic #########", extra + "\n####### Routing logic #########", 1)
        if route_hook:
            text = insert_route_hook(text, "route {\n", route_hook)
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

    kind = "opensips"

    def stats(self):
        return self.mi("apiban_stats")

    def admin_check(self, ip):
        """`apiban_check` over MI: ip, listed, result, detail."""
        return self.mi("apiban_check", {"ip": ip})

    def admin_reload(self):
        if self.mi("apiban_reload") != "Ok. Full pull requested.":
            raise AssertionError("apiban_reload did not say Ok")

    def process_names(self):
        return "\n".join(p["Type"] for p in self.mi("ps")["Processes"])

    def refresher_pid(self):
        """The PID of the module's refresher process (MI ps)."""
        for p in self.mi("ps")["Processes"]:
            if "apiban" in p["Type"].lower():
                return p["PID"]
        raise AssertionError(f"no refresher in ps: {self.process_names()}")

    def mi_admin(self, method, params):
        try:
            return self.mi(method, params)
        except MIError as e:
            raise AdminError(str(e.args[0].get("message") if isinstance(e.args[0], dict) else e))

    def ban(self, ip, ttl=None, reason=None):
        p = {"ip": ip}
        if ttl is not None:
            p["ttl"] = str(ttl)
        if reason is not None:
            p["reason"] = reason
        return self.mi_admin("apiban_ban", p)

    def unban(self, ip):
        return self.mi_admin("apiban_unban", {"ip": ip})

    def lookup(self, ip):
        return self.mi_admin("apiban_lookup", {"ip": ip})

    def bans(self, max_=None):
        r = self.mi_admin("apiban_bans", {} if max_ is None else {"max": max_})
        return r["total"], [b["address"] for b in r["bans"]]

def kinds():
    """The servers present, by name; APIBAN_SERVERS (e.g. "kamailio") narrows them, as
    scripts/test.sh does for its second pass against Kamailio 6.0."""
    present = ["kamailio", "opensips"] if HAVE_TREE or REQUIRED else ["kamailio"]
    wanted = os.environ.get("APIBAN_SERVERS")
    return [k for k in present if k in wanted.split(",")] if wanted else present


def make(kind, tmp, feed_url, key, defines=None, modparams=(), route_hook="", globals_text=""):
    """A server of `kind` with the sample config, in `tmp`, not started. `defines` and `modparams`
    are written as for either config (numbers, or quoted strings for modparams); `route_hook` is
    script put first in the main route and `globals_text` global settings, each in that server's
    own language."""
    if kind == "kamailio":
        return Kamailio(tmp, feed_url, key=key, defines=defines, modparams=modparams, extra_cfg=globals_text, route_hook=route_hook)
    if kind == "opensips":
        build_opensips_module()
        return OpenSIPS(tmp, feed_url, key=key, defines=defines, modparams=modparams, route_hook=route_hook, globals_text=globals_text)
    raise ValueError(kind)
