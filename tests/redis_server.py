"""Redis for the fleet tests: Debian's redis-server and redis-sentinel, each instance on its own
loopback port with its own directory and config file, never the system service; stopped by PID.
Also a test CA and a certificate for 127.0.0.1 (openssl), for Redis over TLS.

Standard library plus the redis-cli and openssl commands (Debian's redis-tools and openssl,
which scripts/setup-debian.sh installs).
"""

import os
import shutil
import signal
import subprocess
import time

from harness import Proc, free_port, wait_until, write_text

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def have_redis():
    return all(os.access(p, os.X_OK) for p in (REDIS_SERVER, REDIS_SENTINEL, REDIS_CLI))


def make_test_ca(d, cn="127.0.0.1"):
    """A CA and a server certificate for 127.0.0.1 signed by it, in d. Returns (ca, cert, key)."""
    os.makedirs(d, exist_ok=True)
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    key, csr, cert = os.path.join(d, "server.key"), os.path.join(d, "server.csr"), os.path.join(d, "server.pem")
    ext = os.path.join(d, "san.ext")
    write_text(ext, f"subjectAltName=IP:{cn}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=apiban test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
        "-extfile", ext)
    return ca, cert, key


class RedisServer:
    """One redis-server: `--save ""`, no AOF, so a restart starts empty as a cache would."""

    def __init__(self, tmp, name="redis", password=None, tls=None, replica_of=None, port=None, unix=False):
        self.port = port or free_port()
        self.dir = os.path.join(tmp, f"{name}-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.password = password
        self.tls = tls  # (ca, cert, key) or None
        self.conf = os.path.join(self.dir, "redis.conf")
        self.log_path = os.path.join(self.dir, "redis.log")
        lines = [
            "bind 127.0.0.1",
            f"dir {self.dir}",
            'save ""',
            "appendonly no",
            "daemonize no",
            "protected-mode no",
            f"logfile {self.log_path}",
        ]
        if tls:
            ca, cert, key = tls
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                      f"tls-ca-cert-file {ca}", "tls-auth-clients no"]
        else:
            lines.append(f"port {self.port}")
        # Also on a unix socket when asked (redis+unix://); redis-cli still uses the TCP port.
        self.socket = os.path.join(self.dir, "redis.sock") if unix else None
        if unix:
            lines += [f"unixsocket {self.socket}", "unixsocketperm 700"]
        if password:
            lines += [f"requirepass {password}", f"masterauth {password}"]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        write_text(self.conf, "\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10):
        self.proc = Proc([REDIS_SERVER, self.conf], os.path.join(self.dir, "stdout.log"))
        wait_until(lambda: self.ping() or not self.proc.alive(), timeout=timeout, what=f"redis on {self.port}")
        if not self.proc.alive():
            raise AssertionError("redis-server exited:\n" + open(self.log_path).read()[-2000:])
        return self

    def url(self, password=None, db=0):
        pw = password if password is not None else self.password
        if self.socket:
            return f"redis+unix://{self.socket}?db={db}" + (f"&pass={pw}" if pw else "")
        scheme = "rediss" if self.tls else "redis"
        creds = f":{pw}@" if pw else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}/{db}"

    def cli(self, *args, timeout=10):
        """redis-cli against this server; returns stdout (raises on a connection failure)."""
        cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        if self.tls:
            cmd += ["--tls", "--cacert", self.tls[0]]
        r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise OSError(f"redis-cli {args}: {r.stderr.strip()}")
        return r.stdout.strip()

    def ping(self):
        try:
            return self.cli("PING", timeout=3) == "PONG"
        except (OSError, subprocess.TimeoutExpired):
            return False

    def stop(self):
        if self.proc:
            self.proc.stop()

    def kill(self):
        """Dies as a crash would: SIGKILL, by PID."""
        if self.proc and self.proc.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.p.wait(timeout=5)
        if self.proc:
            self.proc.stop()


class RedisSentinel:
    """One redis-sentinel watching `master_port` under `name`, quick to decide (tests only)."""

    def __init__(self, tmp, master_port, name="apiban-master", password=None, port=None, down_after_ms=1000, tls=None):
        self.port = port or free_port()
        self.name = name
        self.tls = tls  # (ca, cert, key): TLS to its clients and to the master, or None
        self.dir = os.path.join(tmp, f"sentinel-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        # Sentinel rewrites its config file as the topology changes: it must be its own.
        self.conf = os.path.join(self.dir, "sentinel.conf")
        lines = [
            "bind 127.0.0.1",
            f"dir {self.dir}",
            "daemonize no",
            "protected-mode no",
            f"logfile {os.path.join(self.dir, 'sentinel.log')}",
            f"sentinel monitor {name} 127.0.0.1 {master_port} 1",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} 5000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if password:
            lines.append(f"sentinel auth-pass {name} {password}")
        if tls:
            ca, cert, key = tls
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                      f"tls-ca-cert-file {ca}", "tls-auth-clients no", "tls-replication yes"]
        else:
            lines.append(f"port {self.port}")
        write_text(self.conf, "\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10):
        self.proc = Proc([REDIS_SENTINEL, self.conf], os.path.join(self.dir, "stdout.log"))
        wait_until(lambda: self.master_port() or not self.proc.alive(), timeout=timeout,
                   what=f"sentinel on {self.port}")
        if not self.proc.alive():
            raise AssertionError("redis-sentinel exited:\n" + self.proc.output()[-2000:])
        return self

    def cli(self, *args):
        cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", self.tls[0]]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=3)

    def master_port(self):
        try:
            r = self.cli("SENTINEL", "get-master-addr-by-name", self.name)
        except subprocess.TimeoutExpired:
            return None
        lines = r.stdout.split()
        return int(lines[1]) if r.returncode == 0 and len(lines) == 2 else None

    def known(self):
        """(other sentinels, replicas) this sentinel knows of for its master; (0, 0) when it does
        not answer."""
        try:
            r = self.cli("SENTINEL", "master", self.name)
        except subprocess.TimeoutExpired:
            return 0, 0
        kv = r.stdout.split()
        fields = dict(zip(kv[::2], kv[1::2])) if r.returncode == 0 else {}
        return int(fields.get("num-other-sentinels", 0)), int(fields.get("num-slaves", 0))

    def url(self, password=None, db=0, others=()):
        """The URL naming this sentinel, then `others` (more RedisSentinels of the same master)."""
        creds = f":{password}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in (self, *others))
        return f"redis{'s' if self.tls else ''}+sentinel://{creds}{hosts}/{self.name}/{db}"

    def pause(self):
        """SIGSTOP: the sentinel answers nothing, but its kernel still accepts connections."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        if self.proc and self.proc.alive():
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc:
            self.proc.stop()


def wait_port_free(port, timeout=10):
    """After a stop: the port can be bound again (the same server restarts on it)."""
    import socket

    def free():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False
    wait_until(free, timeout=timeout, what=f"port {port} free")
    time.sleep(0.05)


class TcpForwarder:
    """A TCP relay on a loopback port of its own to `target_port`: what a network path is to the
    fleet tests. cut() drops every relayed connection and refuses new ones (a partition between
    whoever uses this path and the target); restore() heals it. Threads of this process only."""

    def __init__(self, target_port):
        import socket
        import threading
        self.target = target_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.open = True
        self.conns = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading
        while not self.stopped:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                t = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            t.settimeout(None)
            with self.lock:
                self.conns += [c, t]
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        import socket
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        import socket
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self):
        self.open = True

    def stop(self):
        self.stopped = True
        self.cut()
        self.srv.close()
