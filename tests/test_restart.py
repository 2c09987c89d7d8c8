"""The table across restarts and over time, with the real Kamailio: a restart while APIBAN is down
blocks from the first request (snapshot_file); a damaged snapshot is ignored with one log line;
entries expire `ttl` after their listing time; a full resync drops what the feed stopped listing.

APIBAN_MODULE=/path/to/libapiban.so runs these against another build of the module.
"""

import os
import pwd
import re
import struct
import time
import unittest

from harness import KAMAILIO_MODULE, FakeApiban, Kamailio, TempDir, parse_kamcmd_struct, wait_until

MODULE = KAMAILIO_MODULE  # APIBAN_MODULE, see harness.py
KEY = "k-restart-S3CRET-0123456789"
LISTED = "127.0.0.66"
LISTED6 = "2001:db8::66"
CLEAN = "127.0.0.5"

# The snapshot format of src/snapshot.rs: header, entries, FNV-1a 64 of everything before it.
HEADER = struct.Struct("<8sIIQQQQ")


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_snapshot(path):
    """The header fields of a snapshot file, after checking its length and checksum."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, _, last_id, saved_at, n4, n6 = HEADER.unpack_from(data)
    assert magic == b"APIBANSN" and version == 1, (magic, version)
    assert len(data) == HEADER.size + 8 * n4 + 20 * n6 + 8, len(data)
    assert fnv1a(data[:-8]) == struct.unpack_from("<Q", data, len(data) - 8)[0], "checksum"
    return {"last_id": last_id, "saved_at": saved_at, "ipv4": n4, "ipv6": n6}


def stats_when(kam, cond, what, timeout=20):
    return wait_until(lambda: (lambda s: s if cond(s) else None)(kam.stats()), timeout=timeout, step=0.1,
                      what=what)


def start_kamailio(tmp, feed, snapshot, **kw):
    defines = {"APIBAN_INTERVAL": "1", "APIBAN_SNAPSHOT": f'"{snapshot}"', **kw.pop("defines", {})}
    return Kamailio(tmp, feed.url, key=KEY, defines=defines, module=MODULE, **kw).start()


class Restart(unittest.TestCase):
    def setUp(self):
        self.tmps = [TempDir("restart-a"), TempDir("restart-b")]
        self.snapshot = os.path.join(self.tmps[0].path, "apiban.snapshot")
        self.feed = FakeApiban(key=KEY, ips=[LISTED, LISTED6], count=500).start()  # 3 batches
        self.kams = []

    def tearDown(self):
        for k in self.kams:
            k.stop()
            self.assertNotIn(KEY, k.log())
        self.feed.stop()
        for t in self.tmps:
            t.cleanup()

    def test_with_the_feed_down_a_restart_refuses_a_listed_source_on_the_first_request(self):
        a = start_kamailio(self.tmps[0].path, self.feed, self.snapshot)
        self.kams.append(a)
        sa = a.wait_synced(entries=502)
        self.assertIn("none yet, starting empty", a.log())
        snap = wait_until(lambda: os.path.exists(self.snapshot) and read_snapshot(self.snapshot), timeout=10,
                          what="the snapshot file")
        self.assertEqual((snap["ipv4"], snap["ipv6"], snap["last_id"]), (501, 1, self.feed.max_id))
        a.stop()
        self.feed.stop()

        b = start_kamailio(self.tmps[1].path, self.feed, self.snapshot)
        self.kams.append(b)
        # The first SIP request this server ever gets, from a listed source: refused.
        self.assertEqual(b.options(LISTED), 403)
        self.assertEqual(b.options(CLEAN, [f"X-Real-IP: {LISTED6}"]), 403)
        self.assertEqual(b.options(CLEAN), 200)
        s = b.stats()
        self.assertEqual((s["entries"], s["ipv4"], s["ipv6"]), (502, 501, 1))
        self.assertEqual((s["last_id"], s["last_sync"]), (sa["last_id"], snap["saved_at"]))
        self.assertEqual(s["syncs"], 0)
        self.assertRegex(b.log(), rf"snapshot {re.escape(self.snapshot)} loaded: 502 entries \(502 still listed\), "
                                  rf"last ID {sa['last_id']}")
        # Soon after, the refresher finds the feed down; the table stays.
        s = stats_when(b, lambda s: "connection refused" in s["last_error"], "the connection error")
        self.assertTrue(s["state"].startswith("backoff until"), s["state"])
        self.assertEqual(s["entries"], 502)
        self.assertEqual(b.options(LISTED), 403)

        # The feed returns: the pull resumes from the snapshot's last ID, not from the start.
        new = "127.0.1.9"
        self.feed.add([new])
        self.feed.reset_stats()
        self.feed.start()
        s = stats_when(b, lambda s: s["entries"] == 503 and s["state"] == "ok", "the pull after the feed returned",
                       timeout=60)
        self.assertEqual(self.feed.stats()["ids"][0], str(sa["last_id"]))
        self.assertNotIn("100", self.feed.stats()["ids"])
        self.assertEqual((s["last_error"], s["last_id"]), ("", self.feed.max_id))
        self.assertEqual(b.options(new), 403)

    def test_a_sync_that_changed_nothing_leaves_the_snapshot_file_alone(self):
        """A full pull that brings the list already held does not rewrite the snapshot (same
        inode, same mtime): only the file write is skipped, the sync is logged and counted as
        before. A pull that changes the list writes it, as a new file renamed over the old one.
        A restart then loads the file as it stands."""
        a = start_kamailio(self.tmps[0].path, self.feed, self.snapshot)
        self.kams.append(a)
        a.wait_synced(entries=502)
        wait_until(lambda: os.path.exists(self.snapshot) and read_snapshot(self.snapshot), timeout=10,
                   what="the snapshot file")
        stamp = lambda: (lambda st: (st.st_ino, st.st_mtime_ns, st.st_size))(os.stat(self.snapshot))
        before, snap = stamp(), read_snapshot(self.snapshot)

        a.admin_reload()
        wait_until(lambda: "sync done (reload)" in a.log(), timeout=20, what="the reload's sync")
        s = a.wait_synced(entries=502, syncs=2)
        self.assertEqual(stamp(), before, "the unchanged list was written again")
        self.assertEqual(read_snapshot(self.snapshot), snap)
        self.assertEqual((s["last_error"], s["state"]), ("", "ok"))
        self.assertNotIn("cannot write snapshot", a.log())

        new = "127.0.1.9"
        self.feed.add([new])
        a.admin_reload()
        wait_until(lambda: a.log().count("sync done (reload)") >= 2, timeout=20, what="the second reload's sync")
        a.wait_synced(entries=503)
        after = wait_until(lambda: (lambda t: t if t != before else None)(stamp()), timeout=10,
                           what="the snapshot rewritten")
        self.assertNotEqual(after[0], before[0], "written to a new file and renamed")
        snap2 = read_snapshot(self.snapshot)
        self.assertEqual((snap2["ipv4"], snap2["ipv6"], snap2["last_id"]), (502, 1, self.feed.max_id))
        a.stop()
        self.feed.stop()

        b = start_kamailio(self.tmps[1].path, self.feed, self.snapshot)
        self.kams.append(b)
        self.assertEqual(b.options(new), 403)
        self.assertEqual(b.options(LISTED), 403)
        self.assertEqual(b.stats()["entries"], 503)

    def test_an_unwritable_snapshot_path_warns_and_blocking_goes_on(self):
        path = os.path.join(self.tmps[0].path, "no-such-dir", "apiban.snapshot")
        a = start_kamailio(self.tmps[0].path, self.feed, path)
        self.kams.append(a)
        s = a.wait_synced(entries=502)
        # Said once at start, naming the parameter and what to do, then at each failed write.
        self.assertRegex(a.log(), rf"WARNING: apiban: parameter 'snapshot_file': directory "
                                  rf"{re.escape(os.path.dirname(path))} does not exist, so no snapshot can be "
                                  rf"written: create it writable by user \S+ \(uid \d+\): install -d -o ")
        wait_until(lambda: f"cannot write snapshot {path}" in a.log(), timeout=10, what="the warning")
        self.assertEqual((s["last_error"], s["state"]), ("", "ok"))
        self.assertEqual(a.options(LISTED), 403)
        self.assertEqual(a.options(CLEAN), 200)
        self.assertTrue(a.proc.alive())

    def test_a_snapshot_past_its_ttl_blocks_nothing(self):
        # The fake's entries are a day old: with ttl 60 s none of the saved ones is listed.
        a = start_kamailio(self.tmps[0].path, self.feed, self.snapshot)
        self.kams.append(a)
        a.wait_synced(entries=502)
        wait_until(lambda: os.path.exists(self.snapshot), timeout=10, what="the snapshot file")
        a.stop()
        self.feed.stop()
        b = start_kamailio(self.tmps[1].path, self.feed, self.snapshot, modparams=[("ttl", '"60"')])
        self.kams.append(b)
        self.assertEqual(b.options(LISTED), 200)
        self.assertEqual(b.stats()["entries"], 0)
        self.assertIn("loaded: 502 entries (0 still listed)", b.log())


SERVICE_USER = "kamailio"


def service_user_missing():
    if os.geteuid() != 0:
        return "needs root, to start the server as another user"
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return f"no user {SERVICE_USER} (Debian's kamailio package creates it)"
    return None


@unittest.skipIf(service_user_missing(), service_user_missing())
class AsTheServiceUser(unittest.TestCase):
    """As Debian's kamailio.service runs the server: as user kamailio from its first instruction.
    At start the module says whether that user can write the snapshot's directory and read
    apikey_file, naming the parameter; a directory it can write gives a warm restart."""

    def setUp(self):
        self.tmp = TempDir("restart-user")
        self.feed = FakeApiban(key=KEY, ips=[LISTED, LISTED6], count=500).start()
        self.kams = []
        self.user = pwd.getpwnam(SERVICE_USER)

    def tearDown(self):
        for k in self.kams:
            k.stop()
        self.feed.stop()
        self.tmp.cleanup()

    def kamailio(self, sub, snapshot, **kw):
        tmp = os.path.join(self.tmp.path, sub)
        os.makedirs(tmp)
        defines = {"APIBAN_INTERVAL": "1", "APIBAN_SNAPSHOT": f'"{snapshot}"'}
        k = Kamailio(tmp, self.feed.url, key=KEY, defines=defines, module=MODULE, run_as=SERVICE_USER, **kw)
        self.kams.append(k)
        return k

    def state_dir(self, owner_uid, mode):
        d = os.path.join(self.tmp.path, f"state-{owner_uid}")
        os.makedirs(d)
        os.chown(d, owner_uid, self.user.pw_gid if owner_uid else 0)
        os.chmod(d, mode)
        # The temp dir itself must let the user through to it.
        os.chmod(self.tmp.path, 0o711)
        return d

    def test_a_directory_the_user_cannot_write_is_named_at_start(self):
        d = self.state_dir(0, 0o755)
        snapshot = os.path.join(d, "apiban.snapshot")
        k = self.kamailio("a", snapshot).start()
        k.wait_synced(entries=502)
        self.assertRegex(k.log(), rf"WARNING: apiban: parameter 'snapshot_file': user {SERVICE_USER} "
                                  rf"\(uid {self.user.pw_uid}\) cannot write in directory {re.escape(d)}: "
                                  rf"Permission denied .*install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 0750")
        # Blocking goes on from memory.
        self.assertEqual(k.options(LISTED), 403)
        self.assertEqual(k.options(CLEAN), 200)
        self.assertFalse(os.path.exists(snapshot))

    def test_a_directory_the_user_owns_gives_a_warm_restart(self):
        d = self.state_dir(self.user.pw_uid, 0o750)
        snapshot = os.path.join(d, "apiban.snapshot")
        a = self.kamailio("a", snapshot).start()
        a.wait_synced(entries=502)
        wait_until(lambda: os.path.exists(snapshot), timeout=10, what="the snapshot file")
        self.assertEqual(os.stat(snapshot).st_uid, self.user.pw_uid)
        self.assertNotIn("snapshot_file", a.log())
        self.assertNotIn("cannot write snapshot", a.log())
        # The server really ran as the user, not as root.
        rc, out = a.kamcmd("core.psx")
        pids = [int(p) for p in re.findall(r"PID:\s*(\d+)", out)]
        self.assertTrue(pids, out)
        for pid in pids:
            self.assertEqual(os.stat(f"/proc/{pid}").st_uid, self.user.pw_uid, pid)
        a.stop()
        self.feed.stop()
        b = self.kamailio("b", snapshot).start()
        self.assertEqual(b.options(LISTED), 403)
        self.assertEqual(b.options(CLEAN), 200)
        self.assertIn(f"snapshot {snapshot} loaded: 502 entries", b.log())

    def test_an_apikey_file_the_user_cannot_read_stops_the_start(self):
        key_file = os.path.join(self.tmp.path, "apiban.key")
        with open(key_file, "w") as f:
            f.write(KEY + "\n")
        os.chmod(key_file, 0o600)  # root's
        os.chmod(self.tmp.path, 0o711)
        k = self.kamailio("a", os.path.join(self.tmp.path, "a", "apiban.snapshot"),
                          modparams=[("apikey_file", f'"{key_file}"')])
        k.without_modparam("apikey")
        rc, log = k.start_expecting_failure()
        self.assertNotEqual(rc, 0)
        self.assertIn(f"parameter 'apikey_file': cannot read {key_file}: Permission denied", log)
        self.assertNotIn(KEY, log)


class DamagedSnapshots(unittest.TestCase):
    """Each damaged snapshot: one log line, the server starts empty, pulls, and writes a good one."""

    N = 22

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir("restart-damaged")
        cls.feed = FakeApiban(key=KEY, ips=[LISTED], count=cls.N - 1).start()
        # A real snapshot, written by the module, to damage.
        snap = os.path.join(cls.tmp.path, "good.snapshot")
        kam = start_kamailio(cls.tmp.path, cls.feed, snap)
        try:
            kam.wait_synced(entries=cls.N)
            wait_until(lambda: os.path.exists(snap), timeout=10, what="the snapshot file")
        finally:
            kam.stop()
        with open(snap, "rb") as f:
            cls.good = f.read()
        read_snapshot(snap)
        cls.feed.stop()  # connections refused until a test starts it again

    @classmethod
    def tearDownClass(cls):
        cls.feed.stop()
        cls.tmp.cleanup()

    def starts_empty_and_pulls(self, data, reason):
        tmp = TempDir("restart-damaged-one")
        kam = None
        try:
            path = os.path.join(tmp.path, "apiban.snapshot")
            with open(path, "wb") as f:
                f.write(data)
            kam = start_kamailio(tmp.path, self.feed, path)
            # Started, empty: SIP is answered and nothing is refused yet.
            self.assertEqual(kam.options(LISTED), 200)
            self.assertEqual(kam.options(CLEAN), 200)
            s = stats_when(kam, lambda s: "connection refused" in s["last_error"], "the connection error")
            self.assertEqual((s["entries"], s["last_id"], s["last_sync"]), (0, 0, 0))
            lines = [ln for ln in kam.log().splitlines() if "snapshot" in ln]
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], rf"WARNING: apiban: snapshot {re.escape(path)} ignored: .*{reason}.*; "
                                       r"starting empty")
            # The feed returns: a full pull, and a good snapshot replaces the damaged one.
            self.feed.start()
            try:
                kam.kamcmd("apiban.reload")
                s = stats_when(kam, lambda s: s["entries"] == self.N and s["state"] == "ok", "the pull")
                self.assertEqual(kam.options(LISTED), 403)
                snap = wait_until(lambda: (lambda d: d if d["last_id"] == s["last_id"] else None)(read_snapshot(path)),
                                  timeout=10, what="a good snapshot")
                self.assertEqual(snap["ipv4"], self.N)
            finally:
                self.feed.stop()
            self.assertNotIn(KEY, kam.log())
        finally:
            if kam:
                kam.stop()
            tmp.cleanup()

    def test_truncated(self):
        self.starts_empty_and_pulls(self.good[:-13], "truncated or padded")

    def test_corrupt(self):
        bad = bytearray(self.good)
        bad[HEADER.size + 3] ^= 0x40  # an address bit: only the checksum tells
        self.starts_empty_and_pulls(bytes(bad), "checksum mismatch")

    def test_other_format_version(self):
        bad = bytearray(self.good[:-8])
        struct.pack_into("<I", bad, 8, 2)  # version 2, with a checksum that matches
        bad += struct.pack("<Q", fnv1a(bytes(bad)))
        self.starts_empty_and_pulls(bytes(bad), "format version 2, this module reads 1")

    def test_not_a_snapshot(self):
        self.starts_empty_and_pulls(b"#!/bin/sh\necho this is not a snapshot at all, but long enough\n",
                                    "not an apiban snapshot")

    def test_empty_file(self):
        self.starts_empty_and_pulls(b"", r"too short \(0 bytes\)")


class ExpiryAndResync(unittest.TestCase):
    """`ttl` 60 s (the smallest allowed) on one server, `full_resync` 60 s on another, both
    started together so that their waits overlap; each batch of the feed is one address, so each
    address has its own listing time."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = [TempDir("expiry"), TempDir("resync")]
        # Listed a day ago (the fake's default): past a ttl of 60 s at once.
        cls.feed = FakeApiban(key=KEY, ips=[LISTED, "127.0.0.67"], batch=1).start()
        cls.kam = start_kamailio(cls.tmp[0].path, cls.feed, os.path.join(cls.tmp[0].path, "s"),
                                 modparams=[("ttl", '"60"')])
        cls.resync_feed = FakeApiban(key=KEY, ips=[LISTED, "127.0.0.67", "127.0.0.68"]).start()
        cls.resync = start_kamailio(cls.tmp[1].path, cls.resync_feed, os.path.join(cls.tmp[1].path, "s"),
                                    modparams=[("full_resync", '"60"')])
        cls.resync_started = time.time()

    @classmethod
    def tearDownClass(cls):
        for k in (cls.kam, cls.resync):
            k.stop()
        cls.feed.stop()
        cls.resync_feed.stop()
        for t in cls.tmp:
            t.cleanup()

    def check(self, kam, ip):
        return parse_kamcmd_struct(kam.kamcmd("apiban.check", ip)[1])["result"]

    def add_and_pull(self, ip, listed_at):
        syncs = self.kam.stats()["syncs"]
        self.feed.add([ip], listed_at=listed_at)
        return stats_when(self.kam, lambda s: s["syncs"] > syncs and s["last_id"] == self.feed.max_id,
                          f"the pull of {ip}")

    def test_a_entries_listed_longer_ago_than_ttl_are_dropped_at_once(self):
        s = stats_when(self.kam, lambda s: s["syncs"] >= 1, "the first sync")
        self.assertEqual(s["entries"], 0)
        # Never silently: counted, warned about once per pull with the newest batch ID, shown in
        # the state (two batches of one address each, both a day old).
        self.assertEqual(s["expired"], 2)
        newest = self.feed.max_id
        self.assertEqual(s["state"], f"ok; 2 address(es) arrived already expired (batch ID {newest})")
        self.assertRegex(self.kam.log(), rf"WARNING:.*2 address\(es\) arrived already expired \(their batch, up to ID {newest},")
        self.assertEqual(self.kam.options(LISTED), 200)
        self.assertEqual(self.check(self.kam, LISTED), "not listed")

    def test_b_an_entry_expires_ttl_after_its_listing_time(self):
        ip = "127.0.0.91"
        listed = int(time.time()) - 40  # expires 20 s from now
        s0 = self.add_and_pull(ip, listed)
        # The pull takes a second or two: well before the expiry, the address must be refused.
        self.assertLess(time.time(), listed + 55, "the pull took too long")
        self.assertEqual(self.kam.options(ip), 403)
        # The lookup stops listing it when its time is up, without waiting for a pull ...
        wait_until(lambda: self.kam.options(ip) == 200, timeout=30, step=0.5, what="the entry to expire")
        self.assertGreaterEqual(time.time(), listed + 59)
        # ... and the next pull drops it from the table and counts it.
        s = stats_when(self.kam, lambda s: s["expired"] > s0["expired"], "the expiry counted")
        self.assertEqual(s["entries"], s0["entries"] - 1)
        self.assertEqual(self.check(self.kam, ip), "not listed")

    def test_c_a_relisted_address_takes_the_newer_time(self):
        ip = "127.0.0.92"
        first = int(time.time()) - 50  # would expire 10 s from now
        self.add_and_pull(ip, first)
        self.add_and_pull(ip, int(time.time()))  # listed again: 60 s from now
        while time.time() < first + 65:
            time.sleep(0.5)
        self.assertEqual(self.kam.options(ip), 403, "the re-listed address expired at its first listing time")
        self.assertEqual(self.check(self.kam, ip), "listed")

    def test_z_a_full_resync_drops_what_the_feed_no_longer_lists(self):
        k, feed = self.resync, self.resync_feed
        k.wait_synced(entries=3)
        dropped = "127.0.0.68"
        feed.set_list(ips=[LISTED, "127.0.0.67"])  # relisted, newer IDs; .68 is gone from the feed
        feed.reset_stats()
        # Incremental pulls only add: .68 stays listed until the next full pull.
        stats_when(k, lambda s: s["last_id"] == feed.max_id, "an incremental pull")
        self.assertEqual(k.options(dropped), 403)
        self.assertNotIn("100", feed.stats()["ids"])
        s = stats_when(k, lambda s: s["entries"] == 2, "the scheduled full pull",
                       timeout=max(10, self.resync_started + 90 - time.time()))
        self.assertIn("100", feed.stats()["ids"])
        self.assertGreaterEqual(time.time() - self.resync_started, 55)
        self.assertEqual(k.options(dropped), 200)
        self.assertEqual(k.options(LISTED), 403)
        self.assertIn("sync done (scheduled full)", k.log())
        self.assertEqual(s["last_error"], "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
