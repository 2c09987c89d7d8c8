"""The feed over HTTPS with a private CA, and through an HTTP proxy, with the real Kamailio.

Each class makes its own CA with openssl (in its temp dir): a certificate for 127.0.0.1, one for
another name, one already expired. The fake feed (tests/fake_apiban.py) serves HTTPS with them.
Without `ca_file` the module must refuse the private CA and say "unknown issuer"; with it, pull.
Debian's tinyproxy, started here on a loopback port with its own config (Basic credentials) in
the foreground and stopped by PID, is the proxy: a plain feed is pulled through it (the feed sees
its Via header), an HTTPS feed through CONNECT (its log shows the CONNECT); its password never
shows in Kamailio's log nor in apiban.stats, and neither it nor the Proxy-Authorization header that
carries it ever reaches the feed (the fake feed records the headers of every request).

APIBAN_MODULE=/path/to/libapiban.so runs these against another build of the module.
"""

import base64
import json
import os
import shutil
import ssl
import subprocess
import unittest
import urllib.request
from urllib.parse import urlsplit

from harness import KAMAILIO_MODULE, FakeApiban, Kamailio, Proc, TempDir, free_port, wait_until, write_text

MODULE = os.environ.get("APIBAN_MODULE", KAMAILIO_MODULE)
KEY = "k-tls-S3CRET-0123456789"
IPS = ["127.0.0.66", "127.0.0.67", "10.0.0.1", "2001:db8::66"]
TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
PROXY_USER = "carrier"
PROXY_PASSWORD = "pr0xy-PW-5ecret"


def make_certs(d):
    """A CA and three server certificates it signed: for 127.0.0.1, for another name, expired."""
    def openssl(*args, faketime=None):
        cmd = ["faketime", faketime, "openssl", *args] if faketime else ["openssl", *args]
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)}: {r.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    # Valid from four days back, so that it was valid when the expired certificate was signed. The
    # extensions RFC 5280 asks for (key usage on the CA; key identifiers, key usage on the others):
    # Python 3.13 (Debian 13) verifies strictly (VERIFY_X509_STRICT) and refuses a CA without them.
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "6", "-subj", "/CN=apiban test CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", faketime="4 days ago")
    for name, san, back in [("good", "IP:127.0.0.1", None), ("other", "DNS:feed.example.net", None),
                            ("expired", "IP:127.0.0.1", "3 days ago")]:
        write_text(os.path.join(d, f"{name}.ext"),
                   f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        # The expired one is signed three days back for one day (under libfaketime): OpenSSL 3.0
        # has no -not_after, and OpenSSL 3.5 refuses -days -1 ("end date before start date").
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1" if back else "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", faketime=back)
    return {n: (os.path.join(d, f"{n}.pem"), os.path.join(d, f"{n}.key")) for n in ("good", "other", "expired")}


def environment(**extra):
    """This process's environment without SSL_CERT_FILE (it would replace the system store)."""
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    env.update(extra)
    return env


class FeedCase(unittest.TestCase):
    """Certificates and a helper to run one Kamailio per test."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir(cls.__name__.lower())
        # A class cleanup runs even when the set-up fails: no CA key is left behind.
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.certs = make_certs(cls.tmp.path)
        cls.ca = os.path.join(cls.tmp.path, "ca.pem")
        cls.runs = 0

    def kamailio(self, url, modparams=(), env=None):
        type(self).runs += 1
        d = os.path.join(self.tmp.path, f"kam{self.runs}")
        os.makedirs(d)
        kam = Kamailio(d, url, key=KEY, modparams=modparams, module=MODULE)
        # The secrets this server was given: the key, and the proxy's password (a wrong one too).
        kam.secrets = [KEY, PROXY_PASSWORD] + [urlsplit(v.strip('"')).password for n, v in modparams if n == "proxy"]
        self.addCleanup(kam.stop)
        kam.start(env=env or environment())
        # Cleanups run last first: the stats are read while the server still runs.
        self.addCleanup(self.assert_secrets_hidden, kam)
        return kam

    def stop(self, kam):
        """Stops a server before the end of the test, its secrets checked first (while it runs)."""
        try:
            self.assert_secrets_hidden(kam)
        finally:
            kam.stop()

    def assert_secrets_hidden(self, kam):
        """Neither secret in the log nor in apiban.stats, read from the running server: a stopped
        one answers with kamcmd's own error, which holds no secret, and the check would pass."""
        if getattr(kam, "secrets_checked", False):
            return
        kam.secrets_checked = True
        self.assertTrue(kam.proc.alive(), "the server stopped before its stats were checked for secrets")
        rc, stats = kam.kamcmd("apiban.stats")
        self.assertEqual(rc, 0, f"apiban.stats unreadable: {stats}")
        self.assertIn("last_error:", stats)
        for secret in kam.secrets:
            self.assertNotIn(secret, kam.log())
            self.assertNotIn(secret, stats)

    def error_of(self, kam, text):
        """Waits for last_error to say `text`; returns the stats."""
        seen = []

        def said():
            seen[:] = [kam.stats()]
            return seen[0] if text in str(seen[0].get("last_error")) else None
        try:
            return wait_until(said, timeout=15, what=f"last_error with {text!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last stats: {seen}") from None


class TrustStore(FeedCase):
    """A private CA: refused unless trusted through ca_file or the system store."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.feeds = {n: FakeApiban(key=KEY, ips=IPS, tls=c).start() for n, c in cls.certs.items()}

    @classmethod
    def tearDownClass(cls):
        for f in cls.feeds.values():
            f.stop()
        super().tearDownClass()

    def setUp(self):
        for f in self.feeds.values():
            f.reset_stats()

    def test_a_private_ca_is_refused_without_ca_file(self):
        feed = self.feeds["good"]
        kam = self.kamailio(feed.url)
        s = self.error_of(kam, "TLS: unknown issuer")
        self.assertEqual((s["entries"], s["syncs"]), (0, 0))
        self.assertIn("backoff", s["state"])
        # The module ended the handshake with the matching alert, before any request.
        fs = feed.stats()
        self.assertEqual(fs["requests"], 0)
        self.assertIn("unknown ca", fs["last_tls_error"])
        log = kam.log()
        self.assertRegex(log, r"WARNING: apiban: feed request from ID 100 failed: no reply: TLS: unknown issuer")
        # Trusted by default: the system's bundle, not a built-in list.
        self.assertRegex(log, r"INFO: apiban: TLS trusts \d+ certificate\(s\) of the system store /etc/ssl/certs/ca-certificates\.crt")

    def test_pulled_with_ca_file(self):
        kam = self.kamailio(self.feeds["good"].url, modparams=[("ca_file", f'"{self.ca}"')])
        s = kam.wait_synced(entries=len(IPS))
        self.assertEqual(s["last_error"], "")
        self.assertEqual(kam.options("127.0.0.66"), 403)
        self.assertRegex(kam.log(), rf"TLS trusts \d+ certificate\(s\) of the system store \S+ and 1 of ca_file {self.ca}")

    def test_the_system_store_is_trusted(self):
        # SSL_CERT_FILE names the system's bundle, as for OpenSSL and curl: here, the test CA alone.
        kam = self.kamailio(self.feeds["good"].url, env=environment(SSL_CERT_FILE=self.ca))
        kam.wait_synced(entries=len(IPS))
        self.assertIn(f"TLS trusts 1 certificate(s) of the system store {self.ca}", kam.log())

    def refused_with_ca_file(self, cert, error):
        """The feed with certificate `cert` is refused although its CA is trusted: `error` says why."""
        feed = self.feeds[cert]
        kam = self.kamailio(feed.url, modparams=[("ca_file", f'"{self.ca}"')])
        s = self.error_of(kam, error)
        self.assertEqual((s["entries"], feed.stats()["requests"]), (0, 0))

    def test_a_certificate_for_another_name_is_refused(self):
        self.refused_with_ca_file("other", "TLS: name mismatch")

    def test_an_expired_certificate_is_refused(self):
        self.refused_with_ca_file("expired", "TLS: certificate expired")

    def test_a_bad_ca_file_stops_the_start(self):
        missing = os.path.join(self.tmp.path, "missing.pem")
        key_only = self.certs["good"][1]
        for path, message in [(missing, rf"cannot read {missing}: No such file"),
                              (key_only, rf"{key_only} holds no certificate")]:
            d = os.path.join(self.tmp.path, f"bad{len(message)}")
            os.makedirs(d)
            kam = Kamailio(d, self.feeds["good"].url, key=KEY, modparams=[("ca_file", f'"{path}"')], module=MODULE)
            rc, log = kam.start_expecting_failure()
            self.assertNotEqual(rc, 0, log[-2000:])
            self.assertRegex(log, r"ERROR: apiban: parameter 'ca_file': " + message, log[-2000:])
            self.assertNotIn(KEY, log)


class ThroughProxy(FeedCase):
    """tinyproxy with Basic credentials between the module and a plain and an HTTPS feed."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.plain = FakeApiban(key=KEY, ips=IPS).start()
        # A server that knows only the origin form, as many do: inside a CONNECT tunnel the
        # request must be `POST /api/get`, never the absolute form a proxy gets.
        cls.tls = FakeApiban(key=KEY, ips=IPS, tls=cls.certs["good"], origin_form_only=True).start()
        cls.proxy_port = free_port()
        conf = os.path.join(cls.tmp.path, "tinyproxy.conf")
        write_text(conf, "\n".join([
            f"Port {cls.proxy_port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 20", "LogLevel Info",
            f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}", ""]))
        # -d: in the foreground, logging to its output, so that it is ours to stop by PID.
        cls.proxy = Proc([TINYPROXY, "-d", "-c", conf], os.path.join(cls.tmp.path, "tinyproxy.log"))
        try:
            wait_until(lambda: "Accepting connections" in cls.proxy.output() or not cls.proxy.alive(),
                       what="tinyproxy listening")
            if not cls.proxy.alive():
                raise AssertionError("tinyproxy exited:\n" + cls.proxy.output())
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.plain.stop()
        cls.tls.stop()
        super().tearDownClass()

    def setUp(self):
        # Each test sees only its own requests, and the proxy's log from its own start.
        for f in (self.plain, self.tls):
            f.reset_stats()
        self.proxy_log_start = len(self.proxy.output())

    def proxy_log(self):
        return self.proxy.output()[self.proxy_log_start:]

    def proxy_param(self, password=PROXY_PASSWORD):
        return ("proxy", f'"http://{PROXY_USER}:{password}@127.0.0.1:{self.proxy_port}"')

    def assert_no_proxy_credentials_reached(self, feed):
        """No API request the feed received carried Proxy-Authorization, nor the proxy's password
        (as such or Basic-encoded) in any header or body: they are for the proxy alone."""
        s = feed.stats()
        self.assertGreater(s["requests"], 0, "the feed received no request: nothing to check")
        self.assertEqual(len(s["headers"]), min(s["requests"], 100), "a request without its headers recorded")
        self.assertNotIn("proxy-authorization", s["headers_seen"])
        received = json.dumps([s["headers"], s["last_body"]])
        basic = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        for secret in (PROXY_PASSWORD, basic):
            self.assertNotIn(secret, received)

    def test_the_feed_would_record_proxy_authorization(self):
        """The check above can fail: a request that carries the header straight to the feed, as a
        module that sent its proxy credentials to the server would, is recorded and caught."""
        basic = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        # No proxy from the environment: straight to the feed.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=self.ca)))
        for feed in (self.plain, self.tls):
            req = urllib.request.Request(f"{feed.url}/api/get", data=b'{"set":"sip","id":"100"}', headers={
                "Authorization": f"Bearer {KEY}", "Proxy-Authorization": f"Basic {basic}"})
            with opener.open(req, timeout=10) as r:
                self.assertEqual(r.status, 200)
            self.assertIn("proxy-authorization", feed.stats()["headers_seen"])
            with self.assertRaises(AssertionError):
                self.assert_no_proxy_credentials_reached(feed)
        # And the module's own request to a proxy, the feed named as its proxy: what tinyproxy
        # takes out in the test below, the feed would see.
        self.plain.reset_stats()
        kam = self.kamailio(self.plain.url, modparams=[
            ("proxy", f'"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.plain.port}"')])
        kam.wait_synced(entries=len(IPS))
        self.assertIn("proxy-authorization", self.plain.stats()["headers_seen"])
        with self.assertRaises(AssertionError):
            self.assert_no_proxy_credentials_reached(self.plain)

    def test_a_plain_feed_is_pulled_through_the_proxy(self):
        kam = self.kamailio(self.plain.url, modparams=[self.proxy_param()])
        kam.wait_synced(entries=len(IPS))
        self.assertIn("tinyproxy", self.plain.stats()["last_via"] or "")
        self.assertIn("Request (file descriptor", self.proxy_log())
        self.assertIn(f"POST http://127.0.0.1:{self.plain.port}/api/get", self.proxy_log())
        # The module gives the proxy its credentials (tinyproxy answers 407 otherwise) and the
        # proxy takes them out: the feed never sees them.
        self.assert_no_proxy_credentials_reached(self.plain)
        self.assertIn(f"the feed is reached through the proxy http://***@127.0.0.1:{self.proxy_port}", kam.log())

    def test_an_https_feed_is_pulled_through_connect(self):
        kam = self.kamailio(self.tls.url, modparams=[self.proxy_param(), ("ca_file", f'"{self.ca}"')])
        kam.wait_synced(entries=len(IPS))
        self.assertIn(f"CONNECT 127.0.0.1:{self.tls.port} HTTP/1.1", self.proxy_log())
        # Inside the tunnel the proxy adds nothing: the feed sees the module's own request, which
        # must not repeat the credentials it gave the proxy in its CONNECT.
        self.assertIsNone(self.tls.stats()["last_via"])
        self.assert_no_proxy_credentials_reached(self.tls)
        targets = self.tls.stats()["targets"]
        self.assertTrue(targets and all(t == "/api/get" for t in targets), targets)

    def test_wrong_credentials_are_the_proxys_error(self):
        for feed, extra in [(self.plain, []), (self.tls, [("ca_file", f'"{self.ca}"')])]:
            requests = feed.stats()["requests"]
            kam = self.kamailio(feed.url, modparams=[self.proxy_param("WR0NG-pw"), *extra])
            s = self.error_of(kam, "the proxy refused the request: credentials missing or wrong")
            self.assertIn(f"(via proxy 127.0.0.1:{self.proxy_port})", s["last_error"])
            self.assertNotIn("API key", s["last_error"])
            self.assertEqual((s["entries"], feed.stats()["requests"]), (0, requests))
            self.assertNotIn("WR0NG-pw", kam.log())
            self.stop(kam)

    def test_a_bad_proxy_stops_the_start_without_showing_the_password(self):
        d = os.path.join(self.tmp.path, "badproxy")
        os.makedirs(d)
        kam = Kamailio(d, self.plain.url, key=KEY, module=MODULE,
                       modparams=[("proxy", f'"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1"')])
        rc, log = kam.start_expecting_failure()
        self.assertNotEqual(rc, 0, log[-2000:])
        self.assertIn("ERROR: apiban: parameter 'proxy': 'http://***@127.0.0.1' has no port", log)
        self.assertNotIn(PROXY_PASSWORD, log)


if __name__ == "__main__":
    unittest.main()
