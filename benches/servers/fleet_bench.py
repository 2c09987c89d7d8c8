#!/usr/bin/env python3
"""Fleet mode's figures (issue 12): one leader and three follower Kamailio nodes sharing one
redis-server, fed by the fake APIBAN feed, for a list of N entries (20 k and 1 M; --tiny: 2 k).

    python3 benches/servers/fleet_bench.py --module PATH --out DIR [--tiny]

Writes DIR/fleet.json with, for each N:
- latency: from the leader's publish (the time Redis received its delta script, read from
  `redis-cli MONITOR`, Redis's own clock) to the last of the three followers refusing the new
  address (SIP OPTIONS from it, probed in a loop), for several single-address syncs;
- follower CPU: each follower's refresher process (schedstat, ns) over a sync of D new addresses,
  less the CPU of its polling over the same time when nothing changes, per address;
- Redis memory per entry: MEMORY USAGE of the list (sorted set) and of the whole fleet's keys, / N;
- Redis traffic per incremental sync of 10 new addresses: total_net_input_bytes +
  total_net_output_bytes of INFO stats over windows holding one such sync, less windows without
  one (the followers' polls), alternated, medians; beside the size of the whole list;
- joiners: with the leader and the followers holding the whole list, a new node (fresh: no
  snapshot) is started, several times, one at a time: from its process start to its table holding
  all N entries, and from its first answered SIP request to it refusing the newest and the oldest
  listed address (SIP OPTIONS with X-Real-IP, both in each round of a tight loop); its refresher's CPU.

Standard library (and redis-cli). Every process started here is stopped by PID.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

from harness import FakeApiban, Kamailio, Proc, TempDir, sip_options, wait_until  # noqa: E402
from redis_server import REDIS_CLI, RedisServer  # noqa: E402

KEY = "bench-key-0123456789"


def log(*a):
    print("[fleet-bench]", *a, file=sys.stderr, flush=True)


def refresher_pid(node):
    rc, out = node.kamcmd("core.psx")
    m = re.search(r"PID:\s*(\d+)\s+DSC:\s*APIBAN REFRESHER", out)
    if not m:
        raise AssertionError(f"no refresher in core.psx:\n{out}")
    return int(m.group(1))


def cpu_s(pid):
    """CPU time of a (single-threaded) process in seconds, from schedstat's nanoseconds."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def probe_round(port, addrs, timeout):
    """One OPTIONS per address in `addrs`, each carrying it in X-Real-IP, sent together from one
    socket: {address: (status code, time.monotonic() of the reply)}, without the unanswered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
        ids = {}
        for a in addrs:
            cid = uuid.uuid4().hex
            ids[cid] = a
            s.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{cid[:12]}\r\n"
                      "Max-Forwards: 70\r\n"
                      f"From: <sip:bench@127.0.0.1>;tag={cid[:8]}\r\n"
                      f"To: <sip:127.0.0.1:{port}>\r\n"
                      f"Call-ID: {cid}\r\n"
                      "CSeq: 1 OPTIONS\r\n"
                      f"X-Real-IP: {a}\r\n"
                      "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(addrs):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(65535).decode(errors="replace")
            except socket.timeout:
                break
            now = time.monotonic()
            m = re.match(r"SIP/2\.0 (\d{3})", data)
            c = re.search(r"^Call-ID:\s*(\S+)", data, re.M | re.I)
            if m and c and c.group(1) in ids:
                got[ids[c.group(1)]] = (int(m.group(1)), now)
        return got


def redis_traffic(r):
    info = r.cli("INFO", "stats")
    get = lambda k: int(re.search(rf"^{k}:(\d+)", info, re.M).group(1))  # noqa: E731
    return get("total_net_input_bytes") + get("total_net_output_bytes")


class Fleet:
    def __init__(self, tmp, n, module):
        self.tmp = tmp
        self.n = n
        self.redis = RedisServer(tmp.path).start()
        # Big batches: the bench measures the fleet, not the pacing of a first pull.
        self.feed = FakeApiban(key=KEY, count=n, batch=max(250, n // 5)).start()
        self.nodes = []
        self.module = module

    def node(self, name, start=True):
        d = os.path.join(self.tmp.path, name)
        os.makedirs(d, exist_ok=True)
        k = Kamailio(d, self.feed.url, key=KEY, module=self.module, defines={
            "APIBAN_REDIS_URL": f'"{self.redis.url()}"',
            "APIBAN_NODE_ID": f'"{name}"',
            "APIBAN_INTERVAL": "1",
            "APIBAN_RATE_LIMIT": '"1000/1"',
        }, modparams=[("max_entries", self.n + 100_000), ("timeout", 30), ("leader_ttl", '"90"')])
        k.name = name
        self.nodes.append(k)
        return k.start() if start else k

    def start(self):
        t = time.monotonic()
        leader = self.node("leader")
        wait_until(lambda: leader.stats()["entries"] == self.n and leader.stats()["fleet_version"] > 0,
                   timeout=600, step=0.5, what="the leader's first pull")
        log(f"N={self.n}: leader synced in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        self.followers = [self.node(f"follower-{i}") for i in range(1, 4)]
        for f in self.followers:
            wait_until(lambda: f.stats()["entries"] == self.n, timeout=600, step=0.5, what=f"{f.name} to join")
        log(f"N={self.n}: 3 followers joined in {time.monotonic() - t:.1f} s")
        self.leader = leader

    def stop(self):
        for k in self.nodes:
            k.stop()
        self.feed.stop()
        self.redis.stop()

    def latency(self, rounds):
        """Publish to last follower, per single-address sync, in seconds."""
        mon_path = os.path.join(self.tmp.path, "monitor.log")
        mon = Proc([REDIS_CLI, "-p", str(self.redis.port), "MONITOR"], mon_path)
        time.sleep(0.3)
        out = []
        try:
            for k in range(1, rounds + 1):
                ip = f"127.0.1.{k}"
                self.feed.add([ip])
                seen = {}
                deadline = time.monotonic() + 30
                while len(seen) < len(self.followers) and time.monotonic() < deadline:
                    for f in self.followers:
                        if f.name not in seen and sip_options(ip, f.port, timeout=1) == 403:
                            seen[f.name] = time.time()
                if len(seen) < len(self.followers):
                    raise AssertionError(f"{ip} did not reach every follower")
                time.sleep(0.3)
                with open(mon_path, errors="replace") as fh:
                    pub = next((float(line.split()[0]) for line in fh
                                if '"EVALSHA"' in line or '"EVAL"' in line if f'"{ip}"' in line), None)
                if pub is None:
                    raise AssertionError(f"no publish of {ip} in MONITOR")
                out.append(max(seen.values()) - pub)
                time.sleep(1.2)
        finally:
            mon.stop()
        return out

    def follower_cpu(self, d, quiet_s=5.0):
        """CPU seconds of the followers' refreshers: idle per second, and over a sync of d addresses."""
        pids = [refresher_pid(f) for f in self.followers]
        c0 = [cpu_s(p) for p in pids]
        time.sleep(quiet_s)
        idle = [(cpu_s(p) - c) / quiet_s for p, c in zip(pids, c0)]
        ips = [f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, d + 1)]
        c0 = [cpu_s(p) for p in pids]
        t0 = time.monotonic()
        self.feed.add(ips)
        for f in self.followers:
            wait_until(lambda: f.stats()["entries"] >= self.n + d, timeout=120, step=0.05, what=f"{f.name} to take {d}")
        spent = time.monotonic() - t0
        used = [cpu_s(p) - c - i * spent for p, c, i in zip(pids, c0, idle)]
        return {"addresses": d, "idle_cpu_s_per_s": statistics.mean(idle), "sync_cpu_s": statistics.mean(used),
                "cpu_us_per_address": statistics.mean(used) / d * 1e6, "wall_s": spent}

    def traffic(self, window=3.0, pairs=4):
        """What one sync of 10 new addresses costs on the wire between Redis and the fleet.

        Counted exactly: the leader's delta script as sent (its arguments, from MONITOR, encoded
        as RESP) and its reply, plus, for each follower, what the sync adds to its poll's reply
        (the log entry, read back, encoded as RESP). Cross-checked against Redis's own byte
        counters over windows with and without a sync, alternated (medians): that difference
        also moves with the polls a follower skips while it applies a big table, so it is only
        a cross-check."""
        mon_path = os.path.join(self.tmp.path, "monitor-traffic.log")
        mon = Proc([REDIS_CLI, "-p", str(self.redis.port), "MONITOR"], mon_path)
        time.sleep(0.3)
        quiet, busy, exact = [], [], []
        try:
            for p in range(pairs):
                b0 = redis_traffic(self.redis)
                time.sleep(window)
                quiet.append(redis_traffic(self.redis) - b0)
                ips = [f"127.0.{2 + p}.{i}" for i in range(1, 11)]
                b0 = redis_traffic(self.redis)
                t0 = time.monotonic()
                self.feed.add(ips)
                for f in self.followers:
                    wait_until(lambda: sip_options(ips[-1], f.port, timeout=1) == 403, timeout=30,
                               what=f"{f.name} to take 10")
                time.sleep(max(0.0, window - (time.monotonic() - t0)))
                busy.append(redis_traffic(self.redis) - b0)
                exact.append(self.sync_bytes(mon_path, ips[0]))
        finally:
            mon.stop()
        q, b = statistics.median(quiet), statistics.median(busy)
        return {"sync_bytes": statistics.median(exact), "exact": exact, "quiet_bytes": quiet,
                "with_sync_bytes": busy, "window_difference_bytes": round(b - q), "window_s": window}

    def sync_bytes(self, mon_path, ip):
        resp = lambda args: len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n") + len(a) + 2 for a in args)  # noqa: E731
        with open(mon_path, errors="replace") as fh:
            line = next(line for line in fh if '"EVALSHA"' in line and f'"{ip}=' not in line and f'"{ip}"' in line)
        args = [a.encode().decode("unicode_escape").encode("latin-1") for a in re.findall(r'"((?:[^"\\]|\\.)*)"', line)]
        leader = resp(args) + len("*1\r\n:12345\r\n")
        raw = subprocess.run([REDIS_CLI, "-p", str(self.redis.port), "--raw", "XREVRANGE", "apiban:log", "+", "-",
                              "COUNT", "10"], capture_output=True, text=True).stdout.split("\n")
        # Each entry: its id, then field, value lines (writer, add, del; or writer, full).
        for i, line in enumerate(raw):
            if not re.fullmatch(r"\d+-\d+", line):
                continue
            fields, j = [], i + 1
            while j + 1 < len(raw) and raw[j] in ("writer", "add", "del", "full"):
                fields += raw[j:j + 2]
                j += 2
            if any(f"{ip}=" in v for v in fields[1::2]):
                break
        else:
            raise AssertionError(f"no log entry with {ip}")
        per_follower = len("*2\r\n") + resp([line]) - len("*1\r\n") + resp(fields)
        return leader + len(self.followers) * per_follower

    def joiners(self, count):
        """New nodes joining a fleet that holds the whole list: each started fresh (its own
        directory, no snapshot), measured, stopped, before the next. Times in seconds."""
        held = int(self.redis.cli("ZCARD", "apiban:list"))
        # By score (the listing time), ties by address: the same order the module reads in.
        oldest = self.redis.cli("ZRANGE", "apiban:list", "0", "0").split()[0]
        newest = self.redis.cli("ZRANGE", "apiban:list", "-1", "-1").split()[0]
        out = []
        for j in range(1, count + 1):
            k = self.node(f"joiner-{j}", start=False)
            t0 = time.monotonic()
            k.start(wait=False)
            answered = refused_new = refused_old = None
            deadline = t0 + 600
            try:
                while (refused_new is None or refused_old is None) and time.monotonic() < deadline:
                    if not k.proc.alive():
                        raise AssertionError(f"{k.name} exited:\n" + k.proc.output()[-3000:])
                    got = probe_round(k.port, (newest, oldest), timeout=0.05)
                    if got and answered is None:
                        answered = min(t for _, t in got.values())
                    code, t = got.get(newest, (None, None))
                    if code == 403 and refused_new is None:
                        refused_new = t
                    code, t = got.get(oldest, (None, None))
                    if code == 403 and refused_old is None:
                        refused_old = t
                    time.sleep(0.002)
                if refused_new is None or refused_old is None:
                    raise AssertionError(f"{k.name} did not refuse {newest} and {oldest} in 600 s")
                whole = max(refused_new, refused_old)
                # The list is read whole, in one MULTI, and published at once: both ends refused is
                # the whole list held. Checked:
                st = k.stats()
                if st["entries"] != held:
                    raise AssertionError(f"{k.name} holds {st['entries']} entries, Redis {held}")
                pid = refresher_pid(k)
                cpu = cpu_s(pid)
                time.sleep(1.0)
                cpu_later = cpu_s(pid)
            finally:
                k.stop()
                self.nodes.remove(k)
            out.append({"start_to_whole_s": whole - t0, "start_to_first_answer_s": answered - t0,
                        "answer_to_newest_s": refused_new - answered, "answer_to_oldest_s": refused_old - answered,
                        "refresher_cpu_s": cpu, "refresher_cpu_1s_later_s": cpu_later})
            log(f"N={self.n}: {k.name}: whole list {whole - t0:.2f} s after start, newest refused "
                f"{(refused_new - answered) * 1000:.0f} ms and oldest {(refused_old - answered) * 1000:.0f} ms "
                f"after its first answer; refresher CPU {cpu * 1000:.0f} ms")
            time.sleep(0.5)

        def agg(key):
            v = [d[key] for d in out]
            return {"median": statistics.median(v), "max": max(v)}
        return {"joiners": count, "entries": held, "newest": newest, "oldest": oldest, "samples": out,
                **{k: agg(k) for k in out[0]}}

    def memory(self):
        list_b = int(self.redis.cli("MEMORY", "USAGE", "apiban:list", "SAMPLES", "0"))
        total = sum(int(self.redis.cli("MEMORY", "USAGE", k, "SAMPLES", "0"))
                    for k in self.redis.cli("KEYS", "apiban:*").split())
        entries = int(self.redis.cli("ZCARD", "apiban:list"))
        # What the list would cost on the wire: a full read (member and score as RESP bulk strings).
        return {"entries": entries, "list_bytes": list_b, "all_keys_bytes": total,
                "bytes_per_entry": list_b / entries, "all_bytes_per_entry": total / entries,
                "full_read_bytes_est": entries * 2 * (len("$12\r\n") + 14 + 2)}


def run(n, module, rounds, cpu_d, joiners):
    tmp = TempDir(f"fleet-bench-{n}")
    fleet = Fleet(tmp, n, module)
    try:
        fleet.start()
        res = {"n": n, "followers": 3}
        res["memory"] = fleet.memory()
        res["joiner"] = fleet.joiners(joiners)
        j = res["joiner"]
        log(f"N={n}: a joiner holds the whole list {j['start_to_whole_s']['median']:.2f} s after its start (median of "
            f"{joiners}, max {j['start_to_whole_s']['max']:.2f} s)")
        lat = fleet.latency(rounds)
        res["latency_s"] = {"samples": lat, "median": statistics.median(lat), "max": max(lat)}
        log(f"N={n}: publish to last follower: median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
        res["traffic"] = fleet.traffic()
        log(f"N={n}: redis traffic of a 10-address sync: {res['traffic']['sync_bytes']} bytes")
        res["follower_cpu"] = fleet.follower_cpu(cpu_d)
        log(f"N={n}: follower CPU {res['follower_cpu']['cpu_us_per_address']:.1f} us per address ({cpu_d} added)")
        return res
    finally:
        fleet.stop()
        tmp.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    sizes = [2000] if a.tiny else [20_000, 1_000_000]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(), "cpu": cpu,
               "loadavg_start": float(open("/proc/loadavg").read().split()[0]),
               "sizes": [run(n, a.module, 2 if a.tiny else 7, 200 if a.tiny else 10_000, 2 if a.tiny else 3)
                         for n in sizes]}
    results["loadavg_end"] = float(open("/proc/loadavg").read().split()[0])
    with open(os.path.join(a.out, "fleet.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
