"""The demo behind scripts/demo.sh: Kamailio + apiban, a listed source refused, a clean one served."""

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from harness import FakeApiban, Kamailio, TempDir  # noqa: E402

LISTED = "127.0.0.66"
CLEAN = "127.0.0.5"


def first_snapshot_ipv4(path):
    """An address the real feed lists, read from the module's snapshot (format in src/snapshot.rs)."""
    with open(path, "rb") as f:
        data = f.read()
    n4 = struct.unpack_from("<Q", data, 32)[0]
    if n4 == 0:
        return None
    a = struct.unpack_from("<I", data, 48)[0]
    return ".".join(str(b) for b in a.to_bytes(4, "big"))


def main():
    key = os.environ.get("APIBAN_KEY", "").strip()
    tmp = TempDir("demo")
    feed = None
    kam = None
    try:
        if key:
            print("== APIBAN_KEY is set: using the real feed at https://apiban.org")
            url = "https://apiban.org"
            defines = {"APIBAN_RATE_LIMIT": '"11/120"'}
        else:
            key = "demo-key"
            feed = FakeApiban(key=key, ips=[LISTED], count=2000).start()
            url = feed.url
            defines = {}
            print(f"== no APIBAN_KEY: fake APIBAN feed on {url} listing {LISTED} and 2000 others")
        kam = Kamailio(tmp.path, url, key=key, defines=defines).start()
        print(f"== kamailio {kam.proc.pid} listening on udp:127.0.0.1:{kam.port} with {kam.cfg}")
        print("   waiting for the first pull (kamcmd apiban.stats) ...")
        s = kam.wait_synced(timeout=600 if feed is None else 30)
        print(f"   table: {s['entries']} entries ({s['ipv4']} IPv4, {s['ipv6']} IPv6), last ID {s['last_id']}, "
              f"{s['requests']} request(s), {s['sync_ms']} ms")
        ok = True
        if feed is not None:
            code = kam.options(LISTED)
            print(f"== OPTIONS from {LISTED} (listed): SIP {code}")
            ok &= code == 403
        else:
            listed = first_snapshot_ipv4(os.path.join(tmp.path, "apiban.snapshot"))
            code = kam.options(CLEAN, [f"X-Real-IP: {listed}"])
            print(f"== OPTIONS carrying X-Real-IP: {listed} (listed by APIBAN): SIP {code}")
            ok &= code == 403
        code = kam.options(CLEAN)
        print(f"== OPTIONS from {CLEAN} (clean): SIP {code}")
        ok &= code == 200
        rc, out = kam.kamcmd("apiban.stats")
        print("== kamcmd apiban.stats\n" + out)
        print("demo: OK" if ok else "demo: FAILED")
        return 0 if ok else 1
    finally:
        if kam:
            kam.stop()
        if feed:
            feed.stop()
        tmp.cleanup()
        print("== stopped kamailio and the feed")


if __name__ == "__main__":
    sys.exit(main())
