"""Shared helpers for the end-to-end tests: real servers, real SIP, loopback only.

Every test gets its own temp dir and ports, and stops every process it started, by PID.
Standard library only. Start Python programs with sys.executable: on some machines `python3`
is a shell shim whose PID is not the interpreter's.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
sys.path.insert(0, TESTS)

from fake_apiban import FakeApiban  # noqa: E402  (re-exported for the tests)


def _multiarch():
    try:
        return subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "x86_64-linux-gnu"


# The server under test comes from the environment, defaulting to Debian's package; scripts/test.sh
# runs the Kamailio suites a second time with these pointing at the 6.0 of
# scripts/build-kamailio-6.0.sh:
#   KAMAILIO_BIN          the kamailio binary (default: kamailio on PATH, else /usr/sbin/kamailio)
#   KAMCMD_BIN            its kamcmd (default: kamcmd on PATH, else /usr/sbin/kamcmd)
#   KAMAILIO_MODULES_DIR  its module directory (default: Debian's /usr/lib/<multiarch>/kamailio/modules)
#   APIBAN_MODULE         the apiban module built for it (default: $CARGO_TARGET_DIR/release/libapiban.so,
#                         CARGO_TARGET_DIR defaulting to target/ in the repository)
PACKAGED_KAMAILIO = "/usr/sbin/kamailio"
KAMAILIO = os.environ.get("KAMAILIO_BIN") or shutil.which("kamailio") or PACKAGED_KAMAILIO
KAMCMD = os.environ.get("KAMCMD_BIN") or shutil.which("kamcmd") or "/usr/sbin/kamcmd"
DEBIAN_MODULES = f"/usr/lib/{_multiarch()}/kamailio/modules"
KAMAILIO_MODULES = os.environ.get("KAMAILIO_MODULES_DIR") or DEBIAN_MODULES
TARGET_DIR = os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR") or "target")  # join keeps an absolute one
KAMAILIO_MODULE = os.environ.get("APIBAN_MODULE") or os.path.join(TARGET_DIR, "release", "libapiban.so")
KAMAILIO_CFG = os.path.join(REPO, "kamailio-cfg", "kamailio.cfg")


def _stats_list():
    """The names of APIBAN_STATS in c-shim/apiban.h, the one list both shims expand:
    (numbers, texts), in reply order."""
    with open(os.path.join(REPO, "c-shim", "apiban.h")) as f:
        text = f.read()
    block = text.split("#define APIBAN_STATS(N, T)")[1].split("\n\n")[0]
    items = re.findall(r"\b([NT])\((\w+),", block)
    return [n for k, n in items if k == "N"], [n for k, n in items if k == "T"]


STAT_NUMBERS, STAT_TEXTS = _stats_list()


def packaged_kamailio():
    """None when the server under test is Debian's packaged kamailio, else why it is not: the
    package and `make install` tests need that one (they install into its module directory)."""
    if os.path.realpath(KAMAILIO) != PACKAGED_KAMAILIO:
        return f"the server under test is {KAMAILIO} (KAMAILIO_BIN), not Debian's packaged {PACKAGED_KAMAILIO}"
    if KAMAILIO_MODULES != DEBIAN_MODULES:
        return f"the module directory is {KAMAILIO_MODULES} (KAMAILIO_MODULES_DIR), not Debian's {DEBIAN_MODULES}"
    return None


def read_text(path):
    with open(path) as f:
        return f.read()


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait_until(fn, timeout=10.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sip_exchange(src, port, headers=(), timeout=2.0, dst="127.0.0.1"):
    """Sends one OPTIONS from `src` (a 127.0.0.x address); returns (status code, reason phrase),
    or (None, None) when nothing came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        cid = uuid.uuid4().hex
        extra = "".join(f"{h}\r\n" for h in headers)
        msg = (
            f"OPTIONS sip:{dst}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:{lport};branch=z9hG4bK{cid[:12]}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:test@{src}>;tag={cid[:8]}\r\n"
            f"To: <sip:{dst}:{port}>\r\n"
            f"Call-ID: {cid}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            f"{extra}"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (dst, port))
        try:
            data = s.recv(65535).decode(errors="replace")
        except socket.timeout:
            return None, None
        m = re.match(r"SIP/2\.0 (\d{3}) ([^\r\n]*)", data)
        return (int(m.group(1)), m.group(2)) if m else (None, None)


def sip_options(src, port, headers=(), timeout=2.0, dst="127.0.0.1"):
    """The status code of one OPTIONS from `src`, or None when nothing came back."""
    return sip_exchange(src, port, headers, timeout, dst)[0]


class Proc:
    """A child process we own: started with its output in a file, stopped by PID."""

    def __init__(self, args, log_path, env=None, cwd=None):
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.p.returncode

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def parse_kamcmd_struct(text):
    """kamcmd prints a struct as `{ name: value ... }`, one field per line."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z_][\w.]*):\s?(.*)$", line)
        if m:
            v = m.group(2).strip()
            out[m.group(1)] = int(v) if re.fullmatch(r"-?\d+", v) else v
    return out


def give_to(path, user):
    """chown -R path to user and the user's primary group."""
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def insert_route_hook(text, opening, hook):
    """The config with `hook` first in the route that `opening` starts (a test's own script)."""
    if opening not in text:
        raise AssertionError(f"no {opening!r} in the config")
    return text.replace(opening, opening + hook, 1)


class AdminError(Exception):
    """An admin command (RPC or MI) refused: its message."""


class SipServer:
    """What the Kamailio and OpenSIPS test servers share; subclasses set port, log_path, cfg
    and stats(), and the local-ban commands: ban(ip, ttl, reason), unban(ip), lookup(ip) (dicts
    of the reply's fields; AdminError when refused) and bans(max) (total, addresses in order)."""

    def wait_synced(self, entries=None, syncs=1, timeout=20):
        def ok():
            s = self.stats()
            if s.get("syncs", 0) < syncs:
                return None
            if entries is not None and s.get("entries") != entries:
                return None
            return s
        return wait_until(ok, timeout=timeout, step=0.1, what=f"a sync with {entries} entries")

    def options(self, src, headers=()):
        return sip_options(src, self.port, headers)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def without_modparam(self, name):
        """Removes a modparam line of the sample config from this server's copy."""
        text = read_text(self.cfg)
        write_text(self.cfg, re.sub(rf'^modparam\("apiban", "{name}".*\n', "", text, flags=re.M))


class Kamailio(SipServer):
    """The kamailio under test (KAMAILIO_BIN) with the sample config (or a variant of it) and our module."""

    def __init__(self, tmp, feed_url, key="test-key-4242", defines=None, modparams=(), extra_cfg="",
                 cfg_text=None, module=KAMAILIO_MODULE, run_as=None, route_hook=""):
        """run_as: a user name; the server then starts as Debian's kamailio.service starts it, as that
        user from its first instruction (`runuser -u USER -- kamailio ...`), and `tmp` is given to it."""
        self.tmp = tmp
        self.run_as = run_as
        self.port = free_port()
        self.run_dir = os.path.join(tmp, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.mod_dir = os.path.join(tmp, "modules")
        os.makedirs(self.mod_dir, exist_ok=True)
        # loadmodule "apiban.so" looks for that file name in mpath.
        shutil.copy(module, os.path.join(self.mod_dir, "apiban.so"))
        self.ctl = f"unix:{self.run_dir}/kamailio_ctl"
        self.log_path = os.path.join(tmp, "kamailio.log")
        self.key = key
        d = {
            # Ours first: mpath is searched in order, and an installed apiban.so must not win.
            "MODULE_PATH": f'"{self.mod_dir}:{KAMAILIO_MODULES}"',
            "SIP_LISTEN": f"udp:127.0.0.1:{self.port}",
            "APIBAN_URL": f'"{feed_url}"',
            "APIBAN_KEY": f'"{key}"',
            "APIBAN_INTERVAL": "300",
            "APIBAN_RATE_LIMIT": '"1000/1"',
            "APIBAN_SNAPSHOT": f'"{os.path.join(tmp, "apiban.snapshot")}"',
        }
        d.update(defines or {})
        self.defines = d
        text = cfg_text if cfg_text is not None else read_text(KAMAILIO_CFG)
        extra = "".join(f'modparam("apiban", "{n}", {v})\n' for n, v in modparams) + extra_cfg
        if extra:
            text = text.replace("####### Routing logic #########", extra + "\n####### Routing logic #########", 1)
        if route_hook:
            text = insert_route_hook(text, "request_route {\n", route_hook)
        self.cfg = os.path.join(tmp, "kamailio.cfg")
        write_text(self.cfg, text)
        self.proc = None
        if run_as:
            give_to(tmp, run_as)

    def args(self):
        # runuser forwards SIGTERM to kamailio and waits for it, so stopping its PID stops the server.
        a = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        a += [KAMAILIO, "-f", self.cfg, "-DD", "-E", "-Y", self.run_dir, "-w", self.run_dir, "-m", "64", "-M", "8"]
        for k, v in self.defines.items():
            a += ["-A", f"{k}={v}" if v is not None else k]
        return a

    def start(self, wait=True, env=None):
        """env: the server's environment, when not this process's (e.g. SSL_CERT_FILE)."""
        self.proc = Proc(self.args(), self.log_path, env=env)
        if wait:
            wait_until(lambda: self.rpc_ok("core.version") or not self.proc.alive(), timeout=15,
                       what="kamailio's ctl socket")
            if not self.proc.alive():
                raise AssertionError("kamailio exited at start:\n" + self.proc.output()[-3000:])
        return self

    def start_expecting_failure(self, timeout=15):
        """Starts and waits for the server to give up; returns (exit code, log)."""
        self.proc = Proc(self.args(), self.log_path)
        try:
            self.proc.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.stop()
            raise AssertionError("kamailio kept running:\n" + self.proc.output()[-3000:])
        rc = self.proc.p.returncode
        self.proc.log.close()
        return rc, self.proc.output()

    kind = "kamailio"

    def stop(self):
        """Stops the server by PID; returns the processes left behind (none: Proc stops the group)."""
        if self.proc:
            self.proc.stop()
        return []

    def admin_check(self, ip):
        """`apiban.check` over RPC: ip, listed, result, detail."""
        rc, out = self.kamcmd("apiban.check", ip)
        if rc != 0:
            raise AssertionError(f"apiban.check failed: {out}")
        return parse_kamcmd_struct(out)

    def admin_reload(self):
        rc, out = self.kamcmd("apiban.reload")
        if rc != 0:
            raise AssertionError(f"apiban.reload failed: {out}")

    def process_names(self):
        rc, out = self.kamcmd("core.psx")
        if rc != 0:
            raise AssertionError(f"core.psx failed: {out}")
        return out

    def rpc(self, *args):
        """An RPC that returns a struct: its fields; AdminError with the fault's text."""
        rc, out = self.kamcmd(*args)
        if rc != 0 or out.lstrip().startswith("error"):
            raise AdminError(out.strip())
        return parse_kamcmd_struct(out)

    def ban(self, ip, ttl=None, reason=None):
        return self.rpc("apiban.ban", ip, *([] if ttl is None else [f"s:{ttl}"]), *([] if reason is None else [reason]))

    def unban(self, ip):
        return self.rpc("apiban.unban", ip)

    def lookup(self, ip):
        return self.rpc("apiban.lookup", ip)

    def bans(self, max_=None):
        rc, out = self.kamcmd("apiban.bans", *([] if max_ is None else [str(max_)]))
        if rc != 0:
            raise AdminError(out.strip())
        total = int(re.search(r"total:\s*(\d+)", out).group(1))
        return total, re.findall(r"address:\s*(\S+)", out)

    def refresher_pid(self):
        """The PID of the module's refresher process (core.psx: "APIBAN REFRESHER")."""
        _, out = self.kamcmd("core.psx")
        for m in re.finditer(r"PID:\s*(\d+)\s*\n\s*DSC:\s*(.*)", out):
            if "APIBAN" in m.group(2).upper():
                return int(m.group(1))
        raise AssertionError(f"no refresher in core.psx: {out}")

    def kamcmd(self, *args, timeout=10):
        r = subprocess.run([KAMCMD, "-s", self.ctl, *args], capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def rpc_ok(self, *args):
        try:
            rc, _ = self.kamcmd(*args, timeout=3)
            return rc == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def stats(self):
        rc, out = self.kamcmd("apiban.stats")
        if rc != 0:
            raise AssertionError(f"apiban.stats failed: {out}")
        return parse_kamcmd_struct(out)


class TempDir:
    def __init__(self, name):
        self.path = tempfile.mkdtemp(prefix=f"apiban-{name}-")

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)
