#!/usr/bin/env python3
"""Side-by-side benchmarks in the real Kamailio: the apiban module against the script approach it
replaces (benches/servers/script-approach.cfg), both fed by the same fake APIBAN server (tests/fake_apiban.py).

    python3 benches/servers/kamailio_bench.py --module PATH --out DIR [--tiny] [PART ...]

PART is any of: load callgrind throughput reload (default: all). Each part writes DIR/<part>.json.

- load: wall time and Kamailio CPU (every process of the server, /proc/<pid>/task/*/schedstat in
  ns, and utime+stime of /proc/<pid>/stat in ticks beside it) until the whole list is loaded, for
  N = 1k, 5k, 20k; shared memory per entry (htable: core.shmmem real_used before and after; module:
  the resident size of its table mapping, /proc/<refresher>/smaps).
- callgrind: instructions per SIP request under callgrind with -x tlsf, for each check of
  benches/servers/callgrind.cfg, and the module's inclusive cost per call of its script functions.
- throughput: sipp at its maximum rate against the sample config with and without the check, in
  alternated rounds, under TLSF; then the same pair and a control under Kamailio's default qm.
- reload: SIP round-trip times at a fixed rate while the table is replaced every second, and
  without replacements, in alternating rounds.

Standard library only. Every process started here is stopped by PID.
"""

import argparse
import json
import math
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "benches", "servers")
sys.path.insert(0, os.path.join(REPO, "tests"))

from harness import (KAMAILIO_CFG, FakeApiban, Kamailio, Proc, TempDir, free_port,  # noqa: E402
                     parse_kamcmd_struct, read_text, wait_until)

KEY = "bench-key-0123456789"
SCRIPT_CFG = os.path.join(BENCH, "script-approach.cfg")
CALLGRIND_CFG = os.path.join(BENCH, "callgrind.cfg")
OPTIONS_XML = os.path.join(BENCH, "options.xml")
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[kamailio-bench]", *a, file=sys.stderr, flush=True)


# ---- processes and their CPU ------------------------------------------------------------------

def group_pids(pgid):
    """Every process whose process group is pgid (the server and its children)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            out.append(int(p))
    return out


def cpu_of(pgid):
    """(seconds from schedstat, seconds from utime+stime ticks) over every process and thread."""
    ns = ticks = 0
    for pid in group_pids(pgid):
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return ns / 1e9, ticks / TICK


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def ps(kam):
    """{description: pid} from core.psx."""
    rc, out = kam.kamcmd("core.psx")
    res = {}
    for m in re.finditer(r"PID:\s*(\d+)\s*\n\s*DSC:\s*(.*)", out):
        res[m.group(2).strip()] = int(m.group(1))
    return res


def shmmem(kam):
    rc, out = kam.kamcmd("core.shmmem")
    return parse_kamcmd_struct(out)


def wait_log(kam, pattern, offset, timeout=120, step=0.01):
    """The first match of pattern in the server's log after byte offset; polls the file (no RPC)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(kam.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        m = rx.search(text)
        if m:
            return m
        if kam.proc and not kam.proc.alive():
            raise AssertionError("kamailio exited:\n" + kam.log()[-3000:])
        time.sleep(step)
    raise AssertionError(f"timed out waiting for /{pattern}/ in {kam.log_path}:\n" + kam.log()[-2000:])


def log_size(kam):
    return os.path.getsize(kam.log_path) if os.path.exists(kam.log_path) else 0


def mapping_rss(pid, sizes):
    """Resident bytes of the mappings of exactly these sizes in /proc/pid/smaps (each must exist)."""
    rss = 0
    found = set()
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                cur = int(m.group(2), 16) - int(m.group(1), 16)
                continue
            if cur in sizes and line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
                found.add(cur)
    if found != set(sizes):
        size = sorted(set(sizes) - found)
        with open(f"/proc/{pid}/maps") as f:
            sizes = sorted({int(b, 16) - int(a, 16) for a, b in re.findall(r"^([0-9a-f]+)-([0-9a-f]+) ", f.read(), re.M)})
        raise AssertionError(f"no mapping of {size} bytes in process {pid} (src/table.rs layout changed?); "
                             f"the largest are {sizes[-5:]}")
    return rss


def private_rss(pid):
    """Private (anonymous, not shared) resident bytes of a process: the refresher's own heap."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Dirty:", "Private_Clean:")):
                total += int(line.split()[1]) * 1024
    return total


def table_mapping_size(max_entries):
    """The sizes of the two mappings Table::new(max_entries) makes (src/table.rs): a page-aligned
    header and two generations of IPv4 buckets (64 bytes, 3 entries each), then two generations
    of IPv6 buckets (64 bytes, 4 per 3 entries), each generation page aligned."""
    def align(x):
        return (x + 4095) & ~4095
    b4 = max(-(-max_entries // 3), 4)
    b6 = max(-(-max_entries * 4 // 3), 4)
    return [align(3 * 64) + 2 * align(b4 * 64), 2 * align(b6 * 64)]


# ---- servers ------------------------------------------------------------------------------------

class BenchKamailio(Kamailio):
    """Kamailio with its memory manager chosen (-x: shm, and pkg with it), or its default (qm).

    Why it matters: with qm, Kamailio's default, a malloc walks the free lists' hash buckets from the
    size asked for up to the first bucket holding a fragment large enough, and after start-up a
    worker's pkg memory is a few fragments, one of them huge; how far each of a request's mallocs
    walks depends on the sizes of the fragments the config's own parsing and fixups left behind.
    Two configs that differ by one block then spend several microseconds apart per request for
    reasons unrelated to what the block does at run time. TLSF finds a fragment in constant time."""

    def __init__(self, *a, alloc=None, **kw):
        super().__init__(*a, **kw)
        self.alloc = alloc

    def args(self):
        return super().args() + (["-x", self.alloc] if self.alloc else [])


def module_server(tmp, feed, module, extra_defines=None, modparams=(), cfg_text=None, alloc=None):
    d = {"APIBAN_RATE_LIMIT": '"100000/1"', "APIBAN_INTERVAL": "300"}
    d.update(extra_defines or {})
    mp = [("api_version", "1")] + list(modparams)
    return BenchKamailio(tmp, feed.url, key=KEY, defines=d, modparams=mp, module=module, cfg_text=cfg_text,
                         alloc=alloc)


def script_server(tmp, feed, module, alloc=None):
    # The module file is copied but not loaded by this config: the same mpath either way.
    return BenchKamailio(tmp, feed.url, key=KEY, cfg_text=read_text(SCRIPT_CFG), module=module, alloc=alloc)


def worker_pids(kam):
    """The SIP workers (UDP receivers) of a server, from core.psx."""
    return [pid for d, pid in ps(kam).items() if d.startswith("udp receiver")]


def cpu_of_pids(pids):
    """CPU seconds (schedstat, every thread) of the given processes."""
    ns = 0
    for pid in pids:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                ns += int(f.read().split()[0])
    return ns / 1e9


# ---- 3a. load: wall time, CPU, memory ------------------------------------------------------------

def measure_script_load(tmp, n, module, loads):
    with FakeApiban(key=KEY, count=n) as feed:
        kam = script_server(tmp, feed, module).start()
        try:
            shm0 = shmmem(kam)
            runs = []
            for i in range(loads):
                off = log_size(kam)
                c0 = cpu_of(kam.proc.pid)
                rc, out = kam.kamcmd("htable.seti", "apibanctl", "go", "1")
                if rc != 0:
                    raise AssertionError(f"htable.seti: {out}")
                m = wait_log(kam, r"APIBAN: load done: loaded=(\d+) requests=(\d+) status=(-?\d+) "
                                  r"start=([\d.]+) end=([\d.]+)", off, timeout=600)
                c1 = cpu_of(kam.proc.pid)
                loaded, requests, status = int(m.group(1)), int(m.group(2)), int(m.group(3))
                if loaded != n or status != 400:
                    raise AssertionError(f"script load incomplete: {m.group(0)}")
                runs.append({"wall_s": float(m.group(5)) - float(m.group(4)), "cpu_s": c1[0] - c0[0],
                             "cpu_ticks_s": c1[1] - c0[1], "requests": requests})
                if i == 0:
                    shm1 = shmmem(kam)
            rc, out = kam.kamcmd("htable.stats")
            items = [int(x) for x in re.findall(r"all:\s*(\d+)", out)]
            if n not in items:
                raise AssertionError(f"htable does not hold {n} entries: {out}")
        finally:
            kam.stop()
    return {
        "runs": runs,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "cpu_ticks_s": statistics.median(r["cpu_ticks_s"] for r in runs),
        "requests": runs[0]["requests"],
        "shm_used_bytes": shm1["used"] - shm0["used"],
        "shm_real_used_bytes": shm1["real_used"] - shm0["real_used"],
        "shm_bytes_per_entry": (shm1["real_used"] - shm0["real_used"]) / n,
    }


def measure_module_load(tmp, n, module, loads):
    max_entries = 1_000_000
    with FakeApiban(key=KEY, count=0) as feed:
        kam = module_server(tmp, feed, module).start()
        try:
            kam.wait_synced(syncs=1)
            refresher = ps(kam).get("APIBAN REFRESHER")
            size = table_mapping_size(max_entries)
            rss0 = mapping_rss(refresher, size)
            priv0 = private_rss(refresher)
            feed.set_list(count=n)
            runs = []
            rss = []
            for i in range(loads):
                off = log_size(kam)
                syncs = kam.stats()["syncs"]
                c0 = cpu_of(kam.proc.pid)
                rc, out = kam.kamcmd("apiban.reload")
                if rc != 0:
                    raise AssertionError(f"apiban.reload: {out}")
                m = wait_log(kam, r"sync done \(reload\): .*total (\d+) .* (\d+) request\(s\), (\d+) ms", off,
                             timeout=300)
                c1 = cpu_of(kam.proc.pid)
                s = kam.stats()
                if int(m.group(1)) != n or s["entries"] != n or s["syncs"] != syncs + 1:
                    raise AssertionError(f"module load incomplete: {m.group(0)} / {s}")
                runs.append({"wall_s": s["sync_ms"] / 1000, "cpu_s": c1[0] - c0[0], "cpu_ticks_s": c1[1] - c0[1],
                             "requests": int(m.group(2))})
                rss.append(mapping_rss(refresher, size))
            priv1 = private_rss(refresher)
        finally:
            kam.stop()
    return {
        "runs": runs,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "cpu_ticks_s": statistics.median(r["cpu_ticks_s"] for r in runs),
        "requests": runs[0]["requests"],
        "mapping_bytes": size,
        "rss_empty_bytes": rss0,
        "rss_after_first_bytes": rss[0],
        "rss_steady_bytes": rss[-1],
        "shm_bytes_per_entry_first": (rss[0] - rss0) / n,
        "shm_bytes_per_entry": (rss[-1] - rss0) / n,
        "refresher_private_bytes_per_entry": (priv1 - priv0) / n,
    }


def part_load(args, out):
    sizes = [1000] if args.tiny else [1000, 5000, 20000]
    loads = 1 if args.tiny else 3
    res = {"sizes": sizes, "loads_per_size": loads, "script": {}, "module": {}}
    for n in sizes:
        with TempDir(f"bench-script-{n}") as t:
            log(f"load: script approach, N={n}")
            res["script"][str(n)] = measure_script_load(t, n, args.module, loads)
        with TempDir(f"bench-module-{n}") as t:
            log(f"load: module, N={n}")
            # The module's steady state needs two publishes (both generations in use).
            res["module"][str(n)] = measure_module_load(t, n, args.module, max(loads, 2))
        s, m = res["script"][str(n)], res["module"][str(n)]
        log(f"  N={n}: script {s['cpu_s'] * 1e3:.1f} ms CPU, {s['wall_s'] * 1e3:.0f} ms wall, "
            f"{s['shm_bytes_per_entry']:.0f} B/entry; module {m['cpu_s'] * 1e3:.1f} ms CPU, "
            f"{m['wall_s'] * 1e3:.0f} ms wall, {m['shm_bytes_per_entry']:.1f} B/entry")
    out["load"] = res


# ---- 3b. callgrind -----------------------------------------------------------------------------

class CallgrindKamailio(BenchKamailio):
    def __init__(self, *a, outdir, **kw):
        super().__init__(*a, alloc="tlsf", **kw)
        self.outdir = outdir

    def args(self):
        # Collected only inside receive_msg (one SIP message), and dumped after each one: one
        # profile per request. (callgrind_control cannot reach the forked children here.)
        vg = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=receive_msg",
              "--dump-after=receive_msg", f"--callgrind-out-file={self.outdir}/callgrind.out.%p"]
        return vg + super().args()

    def start(self, wait=True):
        self.proc = Proc(self.args(), self.log_path)
        wait_until(lambda: self.rpc_ok("core.version") or not self.proc.alive(), timeout=300, step=0.5,
                   what="kamailio under callgrind")
        if not self.proc.alive():
            raise AssertionError("kamailio exited at start:\n" + self.proc.output()[-3000:])
        return self


class SipClient:
    """Sends OPTIONS from UDP sockets on 127.0.0.x and waits for each reply. With several sources
    (all unlisted, all of the same text length), requests go round-robin over them, so that a
    figure averages over where each address falls in the table (the table's hash seed changes at
    every publish, and with it how many slots a miss probes). real_ip: each request also names its
    source in an X-Real-IP header (the callgrind runs, for apiban_check("$hdr(X-Real-IP)"))."""

    real_ip = False

    def __init__(self, port, sources=("127.0.0.1",)):
        self.port = port
        self.socks = []
        for src in sources:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            self.socks.append(s)
        self.s = self.socks[0]
        self.src, self.lport = self.s.getsockname()
        self.n = 0

    def message(self, i, run="r"):
        cid = f"{run}-{i:010d}"
        return (f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.src}:{self.lport};branch=z9hG4bK{cid}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:bench@{self.src}>;tag={cid}\r\n"
                f"To: <sip:127.0.0.1:{self.port}>\r\n"
                f"Call-ID: {cid}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                + (f"X-Real-IP: {self.src}\r\n" if self.real_ip else "")
                + "Content-Length: 0\r\n\r\n").encode()

    def send_wait(self, count, timeout=30):
        for _ in range(count):
            self.n += 1
            self.s = self.socks[self.n % len(self.socks)]
            self.s.settimeout(timeout)
            self.src, self.lport = self.s.getsockname()
            self.s.sendto(self.message(self.n), ("127.0.0.1", self.port))
            data = self.s.recv(65535)
            if not data.startswith(b"SIP/2.0 200"):
                raise AssertionError(f"unexpected reply: {data[:80]!r}")

    def close(self):
        for s in self.socks:
            s.close()


def parse_callgrind(path, functions):
    """Total Ir of a callgrind output file, and for each function name the calls made to it and
    their inclusive Ir (summed over every caller)."""
    names = {}
    total = None
    cur_cfn = None
    calls = {f: 0 for f in functions}
    incl = {f: 0 for f in functions}
    pending = None  # the function whose inclusive cost the next cost line gives
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if pending is not None:
                if line and (line[0].isdigit() or line[0] in "+-*"):
                    parts = line.split()
                    if len(parts) >= 2:
                        incl[pending[0]] += int(parts[1])
                        calls[pending[0]] += pending[1]
                    pending = None
                    continue
            if line.startswith(("fn=", "cfn=")):
                val = line.split("=", 1)[1]
                m = re.match(r"\((\d+)\)(?: (.*))?$", val)
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), "")
                else:
                    name = val
                if line.startswith("cfn="):
                    cur_cfn = name
                continue
            if line.startswith("calls="):
                n = int(line.split("=", 1)[1].split()[0])
                if cur_cfn in calls:
                    pending = (cur_cfn, n)
                continue
            m = re.match(r"^(totals|summary):\s*(\d+)", line)
            if m:
                total = int(m.group(2))
    return total, calls, incl


# Functions whose inclusive cost per call is reported: the shim's script functions, the Rust entry
# points, the table lookup, the text parser, and the interpreter's own helpers for comparison.
CALLGRIND_FUNCTIONS = ["w_apiban_check0", "w_apiban_check1", "apiban_check_addr", "apiban_check_text",
                       "apiban::table::Table::contains", "apiban::addr::parse_text", "fixup_get_svalue",
                       "is_request", "pv_get_spec_value", "pv_printf", "ht_cell_pkg_copy"]


def callgrind_sources(n):
    """n unlisted loopback sources whose text is always 13 characters (127.2.1xx.1yy)."""
    return [f"127.2.{100 + i // 100}.{100 + i % 100}" for i in range(n)]


def trimmed_mean(v, cut=0.05):
    v = sorted(v)
    k = int(len(v) * cut)
    v = v[k:len(v) - k] if len(v) > 2 * k else v
    return sum(v) / len(v)


def callgrind_run(args, name, check, n_module, n_htable, requests, warmup, feed_batch=250):
    """One server under callgrind: returns Ir per request and the module functions' costs."""
    with TempDir(f"bench-cg-{name}") as tmp:
        outdir = os.path.join(tmp, "cg")
        os.makedirs(outdir)
        with FakeApiban(key=KEY, count=n_module, batch=feed_batch) as feed:
            defines = {"APIBAN_RATE_LIMIT": '"100000/1"', "APIBAN_INTERVAL": "3600", f"CHECK_{check}": None,
                       "HT_ENTRIES": str(n_htable)}
            kam = CallgrindKamailio(tmp, feed.url, key=KEY, defines=defines, cfg_text=read_text(CALLGRIND_CFG),
                                    module=args.module, outdir=outdir)
            kam.start()
            try:
                kam.wait_synced(entries=n_module, timeout=600)
                worker = next(pid for d, pid in ps(kam).items() if d.startswith("udp receiver child=0"))
                client = SipClient(kam.port, sources=callgrind_sources(warmup + requests + 1))
                client.real_ip = True
                # One more at the end: once it is answered, the last measured request's dump is written.
                client.send_wait(warmup + requests + 1)
                client.close()
            finally:
                kam.stop()
            # One dump per request: callgrind.out.<worker>.<n>, n from 1 in arrival order.
            dumps = sorted((f for f in os.listdir(outdir) if re.fullmatch(rf"callgrind\.out\.{worker}\.\d+", f)),
                           key=lambda f: int(f.rsplit(".", 1)[1]))
            if len(dumps) < warmup + requests:
                raise AssertionError(f"{len(dumps)} dumps of the worker {worker} for {warmup + requests} requests")
            fns = CALLGRIND_FUNCTIONS
            per_request = []
            calls = {f: 0 for f in fns}
            incl = {f: 0 for f in fns}
            for d in dumps[warmup:warmup + requests]:
                total, c, i = parse_callgrind(os.path.join(outdir, d), fns)
                per_request.append(total)
                for f in fns:
                    calls[f] += c[f]
                    incl[f] += i[f]
            if args.keep:
                shutil.copy(os.path.join(outdir, dumps[warmup]), os.path.join(args.out, f"callgrind.out.{name}"))
    res = {"check": check, "n_module": n_module, "n_htable": n_htable, "requests": requests,
           "ir_per_request": trimmed_mean(per_request), "ir_median": statistics.median(per_request),
           "ir_min": min(per_request), "ir_max": max(per_request)}
    for f in fns:
        if calls[f]:
            res[f] = {"calls": calls[f], "incl_ir": incl[f], "ir_per_call": incl[f] / calls[f]}
    log(f"callgrind {name}: {res['ir_per_request']:.0f} Ir/request " +
        " ".join(f"{f}={res[f]['ir_per_call']:.1f}/call" for f in fns if f in res))
    return res


def part_callgrind(args, out):
    req, warm = (90, 10) if args.tiny else (270, 30)
    n = 1000 if args.tiny else 20000
    runs = {}
    plan = [("none", "NONE", n, n), ("floor", "FLOOR", n, n), ("htable", "HTABLE", n, n),
            ("apiban0", "APIBAN0", n, n), ("apiban1", "APIBAN1", n, n), ("apiban1_text", "APIBAN1_TEXT", n, n),
            ("apiban1_var", "APIBAN1_VAR", n, n), ("apiban1_hdr", "APIBAN1_HDR", n, n)]
    if not args.tiny:
        plan += [("apiban0_1k", "APIBAN0", 1000, n), ("apiban0_1M", "APIBAN0", 1_000_000, n)]
    if args.tiny:
        plan = [p for p in plan if p[0] in ("none", "floor", "apiban0")]
    for name, check, nm, nh in plan:
        runs[name] = callgrind_run(args, name, check, nm, nh, req, warm,
                                   feed_batch=100_000 if nm >= 1_000_000 else 250)
    base = runs["none"]["ir_per_request"]
    per_check = {k: (v["ir_per_request"] - base) / 10 for k, v in runs.items() if k != "none"}
    out["callgrind"] = {"repeat": 10, "requests": req, "warmup": warm, "n": n, "runs": runs,
                        "per_check": per_check}


# ---- 3c. throughput with sipp ---------------------------------------------------------------------

def strip_checks(text, keep_source_check):
    """The sample config without its X-Real-IP check, and without the source check unless kept.
    Its log_prefix (formatted for every message) goes too, as benches/servers/script-approach.cfg has none:
    the routes are compared, not the logging."""
    text = re.sub(r'^log_prefix=.*\n', '', text, flags=re.M)
    text = re.sub(r"\n\t# Behind a trusted load balancer.*?\n\t}\n", "\n", text, flags=re.S)
    if not keep_source_check:
        text = re.sub(r"\n\t# Sources listed by APIBAN.*?\n\t}\n", "\n", text, flags=re.S)
    if "X-Real-IP" in text or (not keep_source_check and "apiban_check" in text):
        raise AssertionError("could not take the checks out of the sample config")
    return text


def sipp_max(port, calls, cwd):
    """sipp at its maximum rate (64 requests in flight): requests per second."""
    t0 = time.monotonic()
    r = subprocess.run(["sipp", "-sf", OPTIONS_XML, f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
                        "-r", "1000000", "-rp", "1000", "-l", "64", "-m", str(calls), "-nd", "-nostdin",
                        "-timeout", "120", "-timeout_error"], capture_output=True, text=True, cwd=cwd, timeout=180)
    wall = time.monotonic() - t0
    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    done = int(ok.group(1)) if ok else 0
    if r.returncode not in (0, 1) or done == 0:
        raise AssertionError(f"sipp failed ({r.returncode}): {r.stdout[-800:]} {r.stderr[-800:]}")
    return done / wall, int(failed.group(1)) if failed else 0


def alternate(servers, rounds, calls):
    """sipp rounds against each server in turn, forward then backward (A B C, C B A, ...), so that a
    drift of the neighbours' load weighs alike on each and the first two are always measured one
    right after the other. Per server and round: requests per second, and the CPU its SIP workers
    spent per request (sipp, not Kamailio, is what saturates first on two cores)."""
    for label, kam, t in servers:
        sipp_max(kam.port, min(calls, 2000), t)  # warm-up
    pids = {label: worker_pids(kam) for label, kam, _ in servers}
    res = {"rates": {label: [] for label, _, _ in servers}, "cpu_us": {label: [] for label, _, _ in servers},
           "failed": 0, "loadavg": []}
    for i in range(rounds):
        for label, kam, t in (servers if i % 2 == 0 else servers[::-1]):
            c0 = cpu_of_pids(pids[label])
            rate, failed = sipp_max(kam.port, calls, t)
            c1 = cpu_of_pids(pids[label])
            res["rates"][label].append(rate)
            res["cpu_us"][label].append((c1 - c0) / calls * 1e6)
            res["failed"] += failed
            log(f"throughput {label}: {rate:.0f} requests/s, workers {(c1 - c0) / calls * 1e6:.2f} µs/request")
        res["loadavg"].append(loadavg())
    return res


def paired(a, b, op):
    """op(a[i], b[i]) for the rounds measured one after the other; their median, quartiles and range."""
    v = [op(x, y) for x, y in zip(a, b)]
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return {"rounds": v, "median": statistics.median(v), "q1": q1, "q3": q3, "min": min(v), "max": max(v)}


def part_throughput(args, out):
    """The sample config with and without its apiban_check() block, same module loaded in both,
    under TLSF (as the callgrind part), in alternated rounds; the script approach beside them. Then
    the same pair and a control under Kamailio's default allocator (qm), which is what made the
    benchmark's "with" server slower before: see BenchKamailio."""
    n = 1000 if args.tiny else 20000
    calls = 3000 if args.tiny else 20000
    # Under the neighbours' load one round's ratio scatters by several percent either way; 30
    # pairs keep the median's own uncertainty near a percent (16 moved it from 98 % to 102 %).
    rounds = 2 if args.tiny else 30
    qm_calls = 1000 if args.tiny else 20000
    qm_rounds = 1 if args.tiny else 4
    sample = read_text(KAMAILIO_CFG)
    on_cfg, off_cfg = strip_checks(sample, True), strip_checks(sample, False)
    # The control: the "without" config plus a route that is never called, holding the check
    # block's xdbg(): nothing more runs per request, only the start-up allocations differ.
    xdbg = re.search(r"^[ \t]*xdbg\(.*\);\n", on_cfg, re.M)
    if not xdbg or xdbg.group(0) in off_cfg:
        raise AssertionError("the sample config's check block has no xdbg() of its own")
    ctl_cfg = off_cfg + "\nroute[BENCH_NEVER_CALLED] {\n" + xdbg.group(0) + "}\n"
    res = {"n": n, "calls_per_run": calls, "rounds": rounds, "alloc": "tlsf"}
    with FakeApiban(key=KEY, count=n) as feed:
        with TempDir("bench-tput-on") as t_on, TempDir("bench-tput-off") as t_off, \
                TempDir("bench-tput-script") as t_script:
            on = module_server(t_on, feed, args.module, cfg_text=on_cfg, alloc="tlsf")
            off = module_server(t_off, feed, args.module, cfg_text=off_cfg, alloc="tlsf")
            script = script_server(t_script, feed, args.module, alloc="tlsf")
            try:
                for kam in (on, off, script):
                    kam.start()
                on.wait_synced(entries=n)
                off.wait_synced(entries=n)
                off_log = log_size(script)
                script.kamcmd("htable.seti", "apibanctl", "go", "1")
                wait_log(script, rf"APIBAN: load done: loaded={n} ", off_log, timeout=600)
                m = alternate([("on", on, t_on), ("off", off, t_off), ("script", script, t_script)], rounds, calls)
                checks = on.stats()["checks"]
            finally:
                for kam in (on, off, script):
                    kam.stop()
        if checks < calls * rounds:
            raise AssertionError(f"the check ran {checks} times for {calls * rounds} requests")
        with TempDir("bench-tput-qm-on") as q_on, TempDir("bench-tput-qm-off") as q_off, \
                TempDir("bench-tput-qm-ctl") as q_ctl:
            servers = [("on", module_server(q_on, feed, args.module, cfg_text=on_cfg), q_on),
                       ("off", module_server(q_off, feed, args.module, cfg_text=off_cfg), q_off),
                       ("off_never_called_xdbg", module_server(q_ctl, feed, args.module, cfg_text=ctl_cfg), q_ctl)]
            try:
                for _, kam, _ in servers:
                    kam.start()
                for _, kam, _ in servers:
                    kam.wait_synced(entries=n)
                q = alternate(servers, qm_rounds, qm_calls)
            finally:
                for _, kam, _ in servers:
                    kam.stop()
    for label in ("on", "off", "script"):
        res[label] = m["rates"][label]
        res[f"{label}_median"] = statistics.median(m["rates"][label])
        res[f"{label}_cpu_us"] = m["cpu_us"][label]
        res[f"{label}_cpu_us_median"] = statistics.median(m["cpu_us"][label])
    res["failed"] = m["failed"]
    res["loadavg"] = m["loadavg"]
    # The figure: the ratio of each round's pair (measured back to back), its median and range.
    res["ratios"] = paired(m["rates"]["on"], m["rates"]["off"], lambda a, b: a / b)
    res["ratio"] = res["ratios"]["median"]
    res["script_ratios"] = paired(m["rates"]["script"], m["rates"]["off"], lambda a, b: a / b)
    res["script_ratio"] = res["script_ratios"]["median"]
    res["cpu_added_us"] = paired(m["cpu_us"]["on"], m["cpu_us"]["off"], lambda a, b: a - b)
    res["qm"] = {"calls_per_run": qm_calls, "rounds": qm_rounds, "failed": q["failed"], "loadavg": q["loadavg"]}
    for label in q["rates"]:
        res["qm"][label] = {"rates": q["rates"][label], "rate_median": statistics.median(q["rates"][label]),
                            "cpu_us": q["cpu_us"][label], "cpu_us_median": statistics.median(q["cpu_us"][label])}
    out["throughput"] = res


# ---- 4. reload under load ------------------------------------------------------------------------

def fixed_rate(port, rate, seconds, run):
    """Sends OPTIONS at a fixed rate from one socket; returns round-trip times (µs) and losses."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    client = SipClient.__new__(SipClient)
    client.port, client.src, client.lport = port, "127.0.0.1", s.getsockname()[1]
    total = int(rate * seconds)
    msgs = [client.message(i, run) for i in range(total)]
    sent = [0] * total
    rtt = []
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    t0 = time.perf_counter_ns()
    period = int(1e9 / rate)
    i = 0
    got = 0
    deadline = None
    while True:
        now = time.perf_counter_ns()
        if i < total and now >= t0 + i * period:
            sent[i] = time.perf_counter_ns()
            s.sendto(msgs[i], ("127.0.0.1", port))
            i += 1
            continue
        if i >= total:
            if deadline is None:
                deadline = now + 2_000_000_000
            if got >= total or now > deadline:
                break
            wait = (deadline - now) / 1e9
        else:
            wait = max(0, (t0 + i * period - now) / 1e9)
        for _ in sel.select(timeout=wait):
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                t = time.perf_counter_ns()
                m = re.search(rb"Call-ID: [^-]+-(\d+)", data)
                if m:
                    k = int(m.group(1))
                    if 0 <= k < total and sent[k]:
                        rtt.append((t - sent[k]) / 1000)
                        sent[k] = 0
                        got += 1
    sel.close()
    s.close()
    return rtt, total - got


def pct(v, p):
    """The nearest-rank percentile."""
    v = sorted(v)
    if not v:
        return None
    return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]


def part_reload(args, out):
    n = 1000 if args.tiny else 20000
    rate = 1000 if args.tiny else 2000
    seconds = 2 if args.tiny else 6
    rounds = 1 if args.tiny else 3
    res = {"n": n, "rate": rate, "seconds_per_round": seconds, "rounds": rounds}
    samples = {"static": [], "reloading": []}
    lost = {"static": 0, "reloading": 0}
    replaced = 0
    with FakeApiban(key=KEY, count=n) as feed, TempDir("bench-reload") as tmp:
        kam = module_server(tmp, feed, args.module, extra_defines={"APIBAN_INTERVAL": "1"})
        kam.start()
        try:
            kam.wait_synced(entries=n)
            fixed_rate(kam.port, rate, 1, "w")  # warm-up
            extra = 0
            for r in range(rounds):
                for phase in ("static", "reloading"):
                    if phase == "reloading":
                        # The feed's list changes every 0.5 s: each pull (every second) finds new
                        # addresses, and the refresher builds and publishes a whole new table.
                        stop = threading.Event()

                        def changer():
                            nonlocal extra
                            while not stop.wait(0.5):
                                extra += 1
                                feed.add([f"198.18.{extra // 250}.{extra % 250 + 1}"])
                        th = threading.Thread(target=changer, daemon=True)
                        off = log_size(kam)
                        th.start()
                    rtt, miss = fixed_rate(kam.port, rate, seconds, f"{phase[0]}{r}")
                    if phase == "reloading":
                        stop.set()
                        th.join()
                        with open(kam.log_path, "rb") as f:
                            f.seek(off)
                            replaced += len(re.findall(rb"sync done \(incremental\): [1-9]\d* added", f.read()))
                    samples[phase] += rtt
                    lost[phase] += miss
                    log(f"reload {phase}: p50 {pct(rtt, 50):.0f} µs, p99 {pct(rtt, 99):.0f} µs, {miss} lost")
        finally:
            kam.stop()
    for phase in samples:
        v = samples[phase]
        res[phase] = {"samples": len(v), "lost": lost[phase], "p50_us": pct(v, 50), "p90_us": pct(v, 90),
                      "p99_us": pct(v, 99), "p999_us": pct(v, 99.9), "max_us": max(v) if v else None}
    res["tables_replaced"] = replaced
    res["replacements_per_s"] = replaced / (rounds * seconds)
    res["p99_ratio"] = res["reloading"]["p99_us"] / res["static"]["p99_us"]
    out["reload"] = res


# ---- main ---------------------------------------------------------------------------------------

class _TempDir(TempDir):
    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self.cleanup()


TempDir = _TempDir  # noqa: F811  (a context manager over the harness's)

PARTS = {"load": part_load, "callgrind": part_callgrind, "throughput": part_throughput, "reload": part_reload}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", required=True, help="the apiban.so to load")
    ap.add_argument("--out", required=True, help="directory for the JSON results")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, short runs (CI)")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind outputs in --out")
    ap.add_argument("parts", nargs="*", metavar="PART", help=" ".join(PARTS) + " (default: all)")
    args = ap.parse_args()
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}: choose from {' '.join(PARTS)}")
    args.module = os.path.abspath(args.module)
    os.makedirs(args.out, exist_ok=True)
    for part in args.parts or list(PARTS):
        out = {"loadavg_before": loadavg()}
        t0 = time.monotonic()
        PARTS[part](args, out)
        out["seconds"] = time.monotonic() - t0
        out["loadavg_after"] = loadavg()
        with open(os.path.join(args.out, f"{part}.json"), "w") as f:
            json.dump(out, f, indent=1)
        log(f"{part}: done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
