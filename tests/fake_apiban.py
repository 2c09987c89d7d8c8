#!/usr/bin/env python3
"""Fake APIBAN.org server for tests and demos (Python 3.11 standard library only).

Imitates the list API described in /work/shared/apiban-api.md:
  v2: POST /api/get, "Authorization: Bearer KEY", body {"set":"sip","id":"100"}
  v1: GET /api/KEY/banned  and  GET /api/KEY/banned/ID
Replies {"ipaddress":[...],"ID":"<10-digit ts of newest entry in batch>"}, at most --batch
entries, oldest first; HTTP 400 {"ipaddress":["no new bans"],"ID":"none"} when nothing is newer.

Command line:
  python3 tests/fake_apiban.py [--port N] [--key KEY] [--count N] [--ips a,b,c] [--batch 250] [--verbose]
                               [--tls-cert CERT.pem --tls-key KEY.pem]
  Prints "READY <port>" once listening on 127.0.0.1; SIGTERM/SIGINT stop it. With --tls-cert and
  --tls-key it speaks HTTPS only, with that certificate.

Control (same port, no key, JSON in/out):
  POST /_control/add {"ips":[...]}       POST /_control/set {"ips":[...]} or {"count":N}  (both: "listed_at":T)
  POST /_control/fault {"mode":M,"times":K,"after":N,...params}   POST /_control/clear
  GET /_control/stats   POST /_control/reset_stats   GET /_control/entries

From Python:
  srv = FakeApiban(key="k", count=600).start(); srv.port; srv.url
  srv.add([...]); srv.set_list(ips=[...] or count=N); srv.set_fault("429", times=1, retry_after=5)
  srv.clear_fault(); srv.stats(); srv.reset_stats(); srv.entries(); srv.stop()  (start() again reuses the port)
  srv.add([...], listed_at=T): the new entries are listed from T on (a Unix time; never below the
  newest entry: IDs only grow). srv.set_fault(mode, times=K, after=N): the first N API requests are
  served normally, the K after them get the fault; only_id=ID limits a fault to requests for that ID.
  srv.stats()["ids"] and ["times"]: the IDs asked for and when (Unix time), in order (last 1000).
  FakeApiban(tls=(cert_file, key_file)): HTTPS; srv.url says https://. A handshake the client
  refuses is counted in stats()["tls_failures"], its alert in ["last_tls_error"] (e.g.
  "... alert unknown ca"). stats()["last_via"]: the Via header of the last API request (a proxy's).
  stats()["targets"]: the request-targets of the last 100 API requests as sent (`/api/get`, or
  `https://host/api/get` in absolute form). FakeApiban(origin_form_only=True) answers the absolute
  form 404, as a server that knows only the origin form does.
  stats()["headers_seen"]: the names (lowercase, sorted) of every header any API request carried;
  stats()["headers"]: the headers of the last 100 API requests, each a list of [name, value] as
  received (e.g. to show that a proxy's Proxy-Authorization never reaches the feed).
  FakeApiban(identify=fn): fn((client_ip, client_port)) is called for each API request while its
  connection is open, and what it returns is recorded in stats()["who"], index for index with
  ["times"] (None without identify). stats()["limited"]: the 429s the rate_limit answered.
"""
import argparse
import bisect
import ipaddress
import json
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAULT_MODES = {
    "status", "429", "403", "reset_mid_body", "no_headers", "trickle", "truncated_json",
    "invalid_json", "html", "empty_body", "huge_body", "ipaddress_string", "ipaddress_missing",
    "ipaddress_wrong_type", "id_missing", "id_non_numeric", "id_backwards", "none_200",
    "invalid_addresses", "duplicates", "big_batch",
}
V1_RE = re.compile(r"^/api/([^/]+)/banned(?:/([^/]*))?/?$")
# Real API bodies (see apiban-api.md, "Errors and limits" / "Batches, IDs, end of list").
UNAUTHORIZED = {"ipaddress": "none", "ID": "unauthorized"}
RATE_LIMITED = {"ipaddress": "rate limit exceeded", "ID": "unauthorized"}
NO_NEW_BANS = {"ipaddress": ["no new bans"], "ID": "none"}


def gen_ips(n):
    """n distinct deterministic IPv4 addresses counting up from 10.0.0.1."""
    return [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(1, n + 1)]


def parse_id(v):
    """Requested ID as int. Missing/non-numeric -> 0; the sentinel 100 is below every timestamp."""
    if isinstance(v, bool) or v is None:
        return 0
    try:
        return int(v) if isinstance(v, (int, float)) else int(str(v).strip())
    except ValueError:
        return 0


def jbytes(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR: stop() then start() on the same port works
    tls = None  # an ssl.SSLContext: HTTPS

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is None:
            return sock, addr
        # The handshake happens in the connection's own thread (_Handler.setup): a client that
        # refuses the certificate, or says nothing, holds up no other connection.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        # A client that refuses our certificate ends the handshake with an alert: counted, not a
        # traceback on the test's stderr.
        e = sys.exc_info()[1]
        if isinstance(e, (ssl.SSLError, ConnectionError, TimeoutError)):
            self.fake._tls_failed(e)
        else:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY on accepted sockets
    server_version = "fake-apiban/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are dropped after this

    @property
    def fake(self):
        return self.server.fake

    def setup(self):
        super().setup()
        self.api_requests = 0  # on this connection
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        self.fake._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, fmt, *args):
        if self.fake.verbose:
            super().log_message(fmt, *args)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _head(self, code, length, ctype="application/json", extra=()):
        lines = [f"HTTP/1.1 {code} {self.responses.get(code, ('Unknown',))[0]}",
                 f"Date: {self.date_time_string()}", f"Server: {self.server_version}",
                 f"Content-Type: {ctype}", f"Content-Length: {length}"]
        lines += [f"{k}: {v}" for k, v in extra]
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        self.log_request(code, length)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, code, body=b"", ctype="application/json", extra=()):
        if not isinstance(body, bytes):
            body = jbytes(body)
        self.wfile.write(self._head(code, len(body), ctype, extra) + body)  # one write

    def _dispatch(self, method):
        try:
            raw = self._read_body()
            path = urlsplit(self.path).path
            if path.startswith("/_control/"):
                self._control(method, path, raw)
            else:
                f = self.fake
                if self.api_requests == 0 and f.first_request_delay:
                    # The first request of a connection arrives late (DNS, TCP, TLS): it is
                    # recorded, and counted against the rate limit, only now.
                    time.sleep(f.first_request_delay)
                self.api_requests += 1
                if f.requests_per_connection and self.api_requests >= f.requests_per_connection:
                    self.close_connection = True  # the next request pays for a new connection
                with f._lock:
                    f._stats["targets"] = (f._stats["targets"] + [self.path])[-100:]
                if f.origin_form_only and not self.path.startswith("/"):
                    return self._send(404, b'{"error":"not found"}')
                self._api(method, path, raw)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True

    # ---- control endpoints -------------------------------------------------------------
    def _control(self, method, path, raw):
        f, name = self.fake, path[len("/_control/"):].strip("/")
        gets = {"stats": f.stats, "entries": lambda: [[ip, str(ts)] for ip, ts in f.entries()]}
        posts = {"add": lambda o: f.add(o["ips"], listed_at=o.get("listed_at")),
                 "set": lambda o: f.set_list(ips=o.get("ips"), count=o.get("count"), listed_at=o.get("listed_at")),
                 "fault": lambda o: f.set_fault(o.pop("mode"), o.pop("times", None), **o),
                 "clear": lambda o: f.clear_fault(), "reset_stats": lambda o: f.reset_stats()}
        if name not in (gets if method == "GET" else posts):
            return self._send(404, {"ok": False, "error": f"no {method} /_control/{name}"})
        if method == "GET":
            return self._send(200, gets[name]())
        try:
            posts[name](json.loads(raw) if raw.strip() else {})
            self._send(200, {"ok": True, "entries": len(f.entries()), "max_id": str(f.max_id)})
        except KeyError as e:
            self._send(400, {"ok": False, "error": f"missing field {e}"})
        except (ValueError, TypeError, AttributeError) as e:
            self._send(400, {"ok": False, "error": str(e)})

    # ---- the imitated API --------------------------------------------------------------
    def _api(self, method, path, raw):
        f = self.fake
        key = idv = setname = None
        auth = self.headers.get("Authorization")
        body = None
        m = V1_RE.match(path)
        if method == "POST" and path.rstrip("/") == "/api/get":  # v2
            if auth and auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            if isinstance(body, dict):
                idv, setname = body.get("id"), body.get("set")
        elif method == "GET" and m:  # v1: key in the path, ID optional
            key, idv = unquote(m.group(1)), (m.group(2) or None)
        t = time.time()
        who = f.identify(self.client_address) if f.identify else None
        f._record(path, auth, body, setname, key, idv, via=self.headers.get("Via"), headers=self.headers.items(), t=t,
                  who=who)
        if not (m or path.rstrip("/") == "/api/get") or (m and method != "GET"):
            return self._send(404, {"ipaddress": "not found", "ID": "none"})
        if not key or (f.key is not None and key != f.key):
            return self._send(403, UNAUTHORIZED)  # bad key: always 403, consumes no fault
        if f.over_rate_limit():
            with f._lock:
                f._stats["limited"] += 1
            return self._send(429, RATE_LIMITED)

        fault = f._take_fault(idv) or {"mode": None}
        mode = fault["mode"]
        req = parse_id(idv)
        limit = int(fault.get("size", 10000)) if mode == "big_batch" else f.batch
        batch = f._batch(req, limit)
        ips = [ip for ip, _ in batch]
        last = str(batch[-1][1]) if batch else str(req)
        code, obj = (200, {"ipaddress": ips, "ID": last}) if batch else (400, NO_NEW_BANS)
        ctype, extra = "application/json", []

        if mode == "status":
            code, b = int(fault.get("code", 500)), fault.get("body", '{"error":"fake server error"}')
            b = b if isinstance(b, str) else json.dumps(b)
            return self._send(code, b.encode(), "application/json" if b[:1] in "{[" else "text/plain")
        if mode == "429":
            if fault.get("retry_after") is not None:
                extra.append(("Retry-After", str(fault["retry_after"])))
            return self._send(429, RATE_LIMITED, extra=extra)
        if mode == "403":
            return self._send(403, UNAUTHORIZED)
        if mode == "html":
            c = int(fault.get("code", 502))
            t = f"{c} {self.responses.get(c, ('Error',))[0]}"
            page = f"<html><head><title>{t}</title></head><body><h1>{t}</h1><hr>nginx</body></html>"
            return self._send(c, page.encode(), "text/html")
        if mode == "empty_body":
            return self._send(200, b"")
        if mode == "invalid_json":
            return self._send(200, b'{"ipaddress": [1.2.3.4,}')
        if mode == "huge_body":
            return self._huge(int(fault.get("size", 50_000_000)), last)
        if mode == "no_headers":  # read the request, then say nothing and hang up
            f._stop_evt.wait(float(fault.get("seconds", 30)))
            self.close_connection = True
            return
        # Malformed-but-parseable shapes, all HTTP 200 and built from the real batch.
        if mode == "ipaddress_string":  # string form; end of list in string form too
            code, obj = (200, {"ipaddress": ips[0], "ID": str(batch[0][1])}) if batch else \
                (400, {"ipaddress": "no new bans", "ID": "none"})
        elif mode == "ipaddress_missing":
            code, obj = 200, {"ID": last}
        elif mode == "ipaddress_wrong_type":
            code, obj = 200, {"ipaddress": 42, "ID": last}
        elif mode == "id_missing":
            code, obj = 200, {"ipaddress": ips}
        elif mode == "id_non_numeric":
            code, obj = 200, {"ipaddress": ips, "ID": "abc"}
        elif mode == "id_backwards":
            code, obj = 200, {"ipaddress": ips, "ID": str(req - 1000)}
        elif mode == "none_200":
            code, obj = 200, {"ipaddress": ips, "ID": "none"}
        elif mode == "invalid_addresses":
            code, obj = 200, {"ipaddress": ips + ["not-an-ip", "999.1.1.1", "", "1.2.3.4/24"], "ID": last}
        elif mode == "duplicates":
            code, obj = 200, {"ipaddress": [ip for ip in ips for _ in (0, 1)], "ID": last}
        body = jbytes(obj)

        if mode == "truncated_json":  # Content-Length matches the cut body
            return self._send(code, body[: len(body) // 2])
        if mode == "reset_mid_body":  # announce the full length, send half, then RST
            self.wfile.write(self._head(code, len(body)) + body[: len(body) // 2])
            # Detach the fd from the server's socket object and close it ourselves with
            # SO_LINGER 0 (RST, no FIN); the server's later shutdown/close become no-ops.
            s = socket.socket(fileno=self.connection.detach())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            self.close_connection = True
            return
        if mode == "trickle":  # the real reply, one byte at a time
            delay = float(fault.get("delay", 0.2))
            for b in self._head(code, len(body)) + body:
                self.wfile.write(bytes((b,)))
                if f._stop_evt.wait(delay):
                    self.close_connection = True
                    return
            return
        self._send(code, body, ctype, extra)

    def _huge(self, size, last):
        """Stream exactly `size` bytes of valid JSON (repeated addresses) without building it."""
        prefix, item = b'{"ipaddress":[', b'"10.9.9.9",'
        suffix = b'"10.9.9.9"],"ID":"' + last.encode() + b'"}'
        if size < len(prefix) + len(suffix):
            return self._send(200, (prefix + suffix)[:size])
        self.wfile.write(self._head(200, size) + prefix)
        left, chunk = size - len(prefix) - len(suffix), item * 6000
        while left >= len(item):
            n = min(left // len(item), 6000) * len(item)
            self.wfile.write(chunk[:n])
            left -= n
        self.wfile.write(b" " * left + suffix)  # JSON whitespace pads to the exact size


class FakeApiban:
    """The fake server. Thread-safe; all list/fault/stats methods work while running."""

    def __init__(self, port=0, key=None, count=0, ips=(), batch=250, verbose=False, tls=None, first_request_delay=0.0,
                 requests_per_connection=0, rate_limit=None, origin_form_only=False, identify=None):
        self.port, self.key, self.batch, self.verbose = port, key or None, int(batch), verbose
        # As a server that knows only the origin form (`POST /api/get`): a request in absolute
        # form (`POST https://host/api/get`, what a proxy gets) is answered 404.
        self.origin_form_only = origin_form_only
        self.tls = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        # Arrival timing, as a real server sees it: the first request of each connection arrives
        # first_request_delay seconds late; a connection closes after requests_per_connection
        # requests (0: never); rate_limit (MAX, WINDOW_S) answers 429 to an arrival that makes
        # more than MAX in the WINDOW_S seconds before it, as APIBAN counts.
        self.first_request_delay = float(first_request_delay)
        self.requests_per_connection = int(requests_per_connection)
        self.rate_limit = rate_limit
        self.identify = identify  # fn((ip, port)) -> who sent an API request (see the docstring)
        self._lock = threading.Lock()
        self._conns = set()
        self._server = self._thread = None
        self._stop_evt = threading.Event()
        self._fault = None
        # Timestamps: 10-digit Unix seconds, +1 per entry, never reused (the real ID only grows).
        self._last_ts = int(time.time()) - 86400 - 1
        self._entries, self._ts = [], []
        self._append(list(ips or ()) + gen_ips(int(count)))
        self.reset_stats()

    # -- lifecycle
    def start(self):
        if self._server:
            return self
        self._stop_evt = threading.Event()
        srv = _Server(("127.0.0.1", self.port), _Handler)
        srv.fake, srv.tls = self, self.tls
        self._server, self.port = srv, srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiban", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close the listener and every open connection (later connects are refused)."""
        srv, self._server = self._server, None
        if not srv:
            return
        self._stop_evt.set()
        srv.shutdown()
        srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _track(self, conn, add):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # -- the list
    def _append(self, ips):
        for ip in ips:
            self._last_ts += 1
            self._entries.append((str(ip), self._last_ts))
            self._ts.append(self._last_ts)

    def _listed_from(self, listed_at):
        """The next entry gets timestamp listed_at, if that keeps IDs growing."""
        if listed_at is not None:
            self._last_ts = max(self._last_ts, int(listed_at) - 1)

    def add(self, ips, listed_at=None):
        """Append entries with timestamps above the current maximum (from listed_at if later)."""
        if isinstance(ips, str):
            raise TypeError("ips must be a list")
        with self._lock:
            self._listed_from(listed_at)
            self._append(ips)

    def set_list(self, ips=None, count=None, listed_at=None):
        """Replace the whole list; new timestamps still continue above every earlier one."""
        new = list(ips or ()) + gen_ips(int(count or 0))
        with self._lock:
            self._entries, self._ts = [], []
            self._listed_from(listed_at)
            self._append(new)

    def entries(self):
        with self._lock:
            return list(self._entries)

    @property
    def max_id(self):
        with self._lock:
            return self._ts[-1] if self._ts else None

    def _batch(self, after, limit):
        """Entries with timestamp > after, oldest first, at most limit."""
        with self._lock:
            i = bisect.bisect_right(self._ts, after)
            return self._entries[i:i + max(limit, 0)]

    # -- faults
    def set_fault(self, mode, times=None, after=0, **params):
        """Apply fault `mode` to the next `times` API requests (None: until clear_fault()), after
        serving the next `after` ones normally. With only_id=ID, only requests for that ID count."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        with self._lock:
            self._fault = dict(params, mode=mode, times=None if times is None else int(times),
                               after=max(int(after or 0), 0))
            if self._fault["times"] is not None and self._fault["times"] <= 0:
                self._fault = None

    def clear_fault(self):
        with self._lock:
            self._fault = None

    def _take_fault(self, idv=None):
        with self._lock:
            f = self._fault
            if f is None:
                return None
            if f.get("only_id") is not None and str(idv) != str(f["only_id"]):
                return None
            if f.get("after", 0) > 0:
                f["after"] -= 1
                return None
            if f["times"] is not None:
                f["times"] -= 1
                if f["times"] <= 0:
                    self._fault = None
            self._stats["faults_served"] += 1
            return dict(f)

    # -- stats
    def reset_stats(self):
        with self._lock:
            self._stats = {"requests": 0, "by_path": {}, "last_auth": None, "last_body": None,
                           "last_set": None, "last_key": None, "last_id": None, "faults_served": 0,
                           "ids": [], "times": [], "tls_failures": 0, "last_tls_error": None,
                           "last_via": None, "headers_seen": [], "headers": [], "targets": [], "who": [],
                           "limited": 0}

    def _tls_failed(self, e):
        with self._lock:
            self._stats["tls_failures"] += 1
            self._stats["last_tls_error"] = str(e)

    def _record(self, path, auth, body, setname, key, idv, via=None, headers=(), t=None, who=None):
        with self._lock:
            s = self._stats
            s["last_via"] = via
            headers = [[str(k), str(v)] for k, v in headers]
            s["headers_seen"] = sorted(set(s["headers_seen"]) | {k.lower() for k, _ in headers})
            s["headers"] = (s["headers"] + [headers])[-100:]
            s["requests"] += 1
            s["by_path"][path] = s["by_path"].get(path, 0) + 1
            s.update(last_auth=auth, last_body=body, last_set=setname, last_key=key, last_id=idv)
            s["ids"] = (s["ids"] + [None if idv is None else str(idv)])[-1000:]
            s["times"] = (s["times"] + [time.time() if t is None else t])[-1000:]
            s["who"] = (s["who"] + [who])[-1000:]

    def over_rate_limit(self):
        """Whether the arrival just recorded is over rate_limit (it is counted either way)."""
        if not self.rate_limit:
            return False
        n, window = self.rate_limit
        with self._lock:
            times = self._stats["times"]
            now = times[-1]
            return sum(1 for t in times if now - t <= window) > n

    def worst_window(self, window):
        """The most API request arrivals in any closed window of `window` seconds."""
        times = sorted(self.stats()["times"])
        return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)), default=0)

    def stats(self):
        with self._lock:
            s = json.loads(json.dumps(self._stats))
            s["entries"] = len(self._entries)
            s["fault"] = dict(self._fault) if self._fault else None
            return s


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake APIBAN server for tests")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--key", default=None, help="required key (default: any non-empty key)")
    ap.add_argument("--count", type=int, default=0, help="generate N addresses from 10.0.0.1 up")
    ap.add_argument("--ips", default="", help="comma-separated addresses, listed first")
    ap.add_argument("--batch", type=int, default=250, help="max addresses per reply")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    ap.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve HTTPS")
    ap.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    a = ap.parse_args(argv)
    if bool(a.tls_cert) != bool(a.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    ips = [x.strip() for x in a.ips.split(",") if x.strip()]
    tls = (a.tls_cert, a.tls_key) if a.tls_cert else None
    srv = FakeApiban(a.port, a.key, a.count, ips, a.batch, a.verbose, tls=tls).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY {srv.port}", flush=True)
    try:
        threading.Event().wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
