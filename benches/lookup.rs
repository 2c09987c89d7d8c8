//! Lookup micro-benchmark of the shared table (src/table.rs), beside the machine's own cost of
//! one random memory access over a buffer of the table's size (a pointer chase), in the same run.
//!
//! For each size (1 k, 100 k, 1 M entries) and family (IPv4, IPv6) one table is published as the
//! refresher publishes it, then looked up:
//! - `hot_hit` / `hot_miss`: the same 1,000 listed / unlisted addresses again and again (an edge
//!   sees the same sources over and over);
//! - `cold_hit` / `cold_miss`: every listed address in random order / random unlisted addresses,
//!   so each lookup lands on a random slot of the whole table;
//! - `chase`: a dependent walk over random lines of a buffer as large as the table's slots, each
//!   step's line computed from the word the previous step loaded (one random memory access and a
//!   hash per step); `chase_hot`: the same over 1,000 random lines of it (the hot set's floor).
//!
//! Every lookup's address depends on the previous lookup's answer and an LFENCE follows each one,
//! so lookups cannot overlap in the CPU: each figure is the latency of one lookup, comparable with
//! the chase, whose every step depends on the previous one (and is fenced the same way). The
//! `*_tput` figures are independent lookups back to back, which the CPU overlaps: a throughput,
//! for reference. One criterion iteration is one lookup (or one step).
//!
//! - `hot_hit_huge` / `hot_miss_huge`: the hot lookups again on the same table in huge pages
//!   (`Table::with_pages(n, true)`, what the `huge_pages` parameter asks for). Run as root, the
//!   bench reserves the huge pages it needs (`vm.nr_hugepages`) and restores the old count at the
//!   end; otherwise, or when the kernel refuses, it says so and leaves these out.
//!
//! `APIBAN_BENCH_TINY=1`: 1 k entries only, short measurements (CI keeps this working).
//! Results: criterion's `estimates.json` under `$CRITERION_HOME`, and one JSON line per table
//! (`lookup_paired`: the cold/chase and hot/hot-chase ratios measured in alternation) on stdout or
//! appended to `$APIBAN_BENCH_OUT`. scripts/bench.sh reads both.

use apiban::bench_api::{Entries, Key, Table};
use criterion::Criterion;
use std::hint::black_box;
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

const HOT_SET: usize = 1000;
const NOW: u64 = 1_000;

fn tiny() -> bool {
    std::env::var_os("APIBAN_BENCH_TINY").is_some_and(|v| v != "0")
}

fn sizes() -> Vec<usize> {
    if tiny() {
        vec![1_000]
    } else {
        vec![1_000, 100_000, 1_000_000]
    }
}

/// splitmix64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn key(self, r: &mut Rng) -> Key {
        match self {
            Family::V4 => Key::V4(r.next() as u32),
            // Global unicast 2000::/3, as the feed lists them.
            Family::V6 => {
                let a = (r.next() as u128) << 64 | r.next() as u128;
                Key::V6((a & !(0x7u128 << 125)) | (1u128 << 125))
            }
        }
    }
    /// Bytes of buckets the table's published generation spans for `n` entries (src/table.rs:
    /// 64-byte buckets, IPv4 3 entries per bucket, IPv6 2 buckets per 5 entries).
    fn table_bytes(self, n: usize) -> usize {
        let buckets = match self {
            Family::V4 => n.div_ceil(3),
            Family::V6 => (n * 5).div_ceil(2),
        };
        buckets.max(4) * 64
    }
}

struct Fixture {
    table: Table,
    listed: Vec<Key>,
    unlisted: Vec<Key>,
}

fn fixture(fam: Family, n: usize, huge: bool) -> Fixture {
    let mut r = Rng(0x0a91_ba11 ^ n as u64 ^ (fam as u64) << 40);
    let mut set = HashSet::with_capacity(n);
    while set.len() < n {
        set.insert(fam.key(&mut r));
    }
    let mut listed: Vec<Key> = set.iter().copied().collect();
    r.shuffle(&mut listed);
    let mut unlisted = Vec::with_capacity(n.max(HOT_SET));
    while unlisted.len() < n.max(HOT_SET) {
        let k = fam.key(&mut r);
        if !set.contains(&k) {
            unlisted.push(k);
        }
    }
    let table = Table::with_pages(n, huge).expect("reserve the table");
    table.set_now(NOW);
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for &k in &listed {
        match k {
            Key::V4(a) => v4.push((a, u32::MAX)),
            Key::V6(a) => v6.push((a, u32::MAX)),
        }
    }
    let (n4, n6) = table.publish(&Entries { v4: &v4, v6: &v6 }, r.next());
    assert_eq!(n4 + n6, n, "every address published");
    Fixture { table, listed, unlisted }
}

/// Waits until every earlier instruction has completed before the next one starts (LFENCE is
/// dispatch-serializing on x86-64 as Linux sets it up). Without it, a lookup whose answer comes
/// from a well-predicted branch (every miss) would overlap the next one, and a "latency" would
/// really be a throughput.
#[inline(always)]
fn serialize() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: LFENCE has no operands and no effect on memory.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
}

/// `iters` lookups, one after the other: each address chosen by the previous answer, and each
/// lookup finished before the next starts. The latency of one lookup.
fn latency(t: &Table, keys: &[Key], iters: u64, expect: bool) -> Duration {
    let len = keys.len();
    let mut i = 0usize;
    let mut wrong = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        let found = t.contains(black_box(keys[i]));
        serialize();
        wrong += (found != expect) as u64;
        i += 1 + found as usize;
        if i >= len {
            i -= len;
        }
    }
    let d = start.elapsed();
    assert_eq!(black_box(wrong), 0, "a lookup gave a wrong answer");
    d
}

/// `iters` independent lookups back to back: the CPU overlaps them. A throughput, for reference.
fn throughput(t: &Table, keys: &[Key], iters: u64, expect: bool) -> Duration {
    let len = keys.len();
    let mut i = 0usize;
    let mut wrong = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        wrong += (t.contains(black_box(keys[i])) != expect) as u64;
        i += 1;
        if i == len {
            i = 0;
        }
    }
    let d = start.elapsed();
    assert_eq!(black_box(wrong), 0, "a lookup gave a wrong answer");
    d
}

/// A buffer of random words as large as the table's slots, and the lines a walk may visit: all of
/// them, or a hot set of `hot` random lines.
struct Walk {
    buf: Vec<u64>,
    lines: usize,
    hot: Vec<u32>,
}

fn walk(bytes: usize, hot: usize, r: &mut Rng) -> Walk {
    let lines = (bytes / 64).max(2);
    let buf: Vec<u64> = (0..lines * 8).map(|_| r.next()).collect();
    let mut picked = HashSet::new();
    while picked.len() < hot.min(lines) {
        picked.insert(r.below(lines) as u32);
    }
    Walk { buf, lines, hot: picked.into_iter().collect() }
}

#[inline(always)]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 32;
    x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^ (x >> 32)
}

/// The pointer chase: each step loads one word of a random line, and the next line is computed
/// from the word just loaded (and the step number), so steps cannot overlap and lines are drawn
/// with replacement, as lookups draw their slots. Each step costs one random memory access plus a
/// hash, like a lookup that touches one line. Fenced like the lookups.
fn chase(w: &Walk, iters: u64) -> Duration {
    let n = w.lines as u128;
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    for i in 0..iters {
        let line = ((h as u128 * n) >> 64) as usize;
        h = mix(w.buf[line * 8] ^ i);
        serialize();
    }
    let d = start.elapsed();
    black_box(h);
    d
}

/// The same over the hot set of lines only (one extra L1 load per step, as a lookup loads its key).
fn chase_hot(w: &Walk, iters: u64) -> Duration {
    let n = w.hot.len() as u128;
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    for i in 0..iters {
        let line = w.hot[((h as u128 * n) >> 64) as usize] as usize;
        h = mix(w.buf[line * 8] ^ i);
        serialize();
    }
    let d = start.elapsed();
    black_box(h);
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Ratios measured in alternation, round by round, so that a neighbour's load on this shared
/// machine weighs on both sides of each ratio alike: the median of the rounds' ratios.
fn paired(f: &Fixture, hot_hit: &[Key], w: &Walk, fam: Family, n: usize, out: &mut dyn Write) {
    let rounds = if tiny() { 3 } else { 11 };
    let m: u64 = if tiny() { 20_000 } else { 100_000 };
    let per = |d: Duration| d.as_secs_f64() * 1e9 / m as f64;
    let (mut hit, mut miss, mut hot) = (Vec::new(), Vec::new(), Vec::new());
    let (mut chase_ns, mut hot_chase_ns, mut hit_ns, mut miss_ns, mut hot_ns) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let c = per(chase(w, m));
        let h = per(latency(&f.table, &f.listed, m, true));
        let s = per(latency(&f.table, &f.unlisted, m, false));
        let hc = per(chase_hot(w, m));
        let hh = per(latency(&f.table, hot_hit, m, true));
        hit.push(h / c);
        miss.push(s / c);
        hot.push(hh / hc);
        chase_ns.push(c);
        hit_ns.push(h);
        miss_ns.push(s);
        hot_chase_ns.push(hc);
        hot_ns.push(hh);
    }
    writeln!(
        out,
        "{{\"bench\":\"lookup_paired\",\"family\":\"{}\",\"n\":{n},\"rounds\":{rounds},\"lookups_per_round\":{m},\
         \"table_bytes\":{},\"chase_ns\":{:.2},\"cold_hit_ns\":{:.2},\"cold_miss_ns\":{:.2},\"cold_hit_ratio\":{:.3},\
         \"cold_miss_ratio\":{:.3},\"hot_chase_ns\":{:.2},\"hot_hit_ns\":{:.2},\"hot_hit_ratio\":{:.3}}}",
        fam.name(),
        fam.table_bytes(n),
        median(chase_ns),
        median(hit_ns),
        median(miss_ns),
        median(hit),
        median(miss),
        median(hot_chase_ns),
        median(hot_ns),
        median(hot),
    )
    .unwrap();
}

/// `vm.nr_hugepages` raised for the bench (as root) and put back when dropped.
struct HugeReserve {
    old: Option<u64>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugeReserve {
    /// Enough free huge pages for the largest table, both parts (its reservation, 2 MB pages).
    fn new(max_n: usize) -> HugeReserve {
        let need = (Table::with_pages(max_n, false).map(|t| t.reserved_bytes()).unwrap_or(0) >> 21) as u64 + 4;
        let read = || std::fs::read_to_string(NR_HUGEPAGES).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let free = || {
            std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                m.lines().find(|l| l.starts_with("HugePages_Free:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
        };
        let Some(old) = read() else {
            eprintln!("huge pages: cannot read {NR_HUGEPAGES}; the huge-page lookups are left out");
            return HugeReserve { old: None };
        };
        if free().unwrap_or(0) >= need {
            return HugeReserve { old: None };
        }
        if std::fs::write(NR_HUGEPAGES, (old + need).to_string()).is_err() {
            eprintln!("huge pages: {need} needed, cannot raise {NR_HUGEPAGES} (not root?); the huge-page lookups are left out");
            return HugeReserve { old: None };
        }
        let got = free().unwrap_or(0);
        if got < need {
            eprintln!("huge pages: the kernel reserved {got} of {need} (memory too fragmented); tables that do not fit are left out");
        }
        HugeReserve { old: Some(old) }
    }
}

impl Drop for HugeReserve {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = std::fs::write(NR_HUGEPAGES, old.to_string());
        }
    }
}

fn bench(c: &mut Criterion, out: &mut dyn Write) {
    let (warm, meas, samples) =
        if tiny() { (Duration::from_millis(50), Duration::from_millis(150), 10) } else { (Duration::from_millis(300), Duration::from_millis(1000), 25) };
    let mut r = Rng(7);

    // The machine's hot-set floor: random lines of a 64 KB buffer (1,000 lines).
    {
        let w = walk(HOT_SET * 64, HOT_SET, &mut r);
        let mut g = c.benchmark_group("chase_hot");
        g.warm_up_time(warm).measurement_time(meas).sample_size(samples);
        g.bench_function("lines_1000", |b| b.iter_custom(|n| chase(&w, n)));
        g.finish();
    }

    let _reserve = HugeReserve::new(sizes().into_iter().max().unwrap_or(0));
    for n in sizes() {
        for fam in [Family::V4, Family::V6] {
            let f = fixture(fam, n, false);
            let hot_hit: Vec<Key> = f.listed.iter().take(HOT_SET).copied().collect();
            let hot_miss: Vec<Key> = f.unlisted.iter().take(HOT_SET).copied().collect();
            let w = walk(fam.table_bytes(n), HOT_SET, &mut r);
            let mut g = c.benchmark_group(format!("lookup_{}_{}", fam.name(), n));
            g.warm_up_time(warm).measurement_time(meas).sample_size(samples);
            g.bench_function("hot_hit", |b| b.iter_custom(|it| latency(&f.table, &hot_hit, it, true)));
            g.bench_function("hot_miss", |b| b.iter_custom(|it| latency(&f.table, &hot_miss, it, false)));
            g.bench_function("cold_hit", |b| b.iter_custom(|it| latency(&f.table, &f.listed, it, true)));
            g.bench_function("cold_miss", |b| b.iter_custom(|it| latency(&f.table, &f.unlisted, it, false)));
            g.bench_function("hot_hit_tput", |b| b.iter_custom(|it| throughput(&f.table, &hot_hit, it, true)));
            g.bench_function("hot_miss_tput", |b| b.iter_custom(|it| throughput(&f.table, &hot_miss, it, false)));
            g.bench_function("cold_hit_tput", |b| b.iter_custom(|it| throughput(&f.table, &f.listed, it, true)));
            g.bench_function("chase", |b| b.iter_custom(|it| chase(&w, it)));
            g.bench_function("chase_hot", |b| b.iter_custom(|it| chase_hot(&w, it)));
            // The same keys in the same table layout, in huge pages (the fixture's Rng is seeded
            // by size and family alone).
            let fh = fixture(fam, n, true);
            let (h4, h6) = fh.table.huge();
            let huge = match fam {
                Family::V4 => h4,
                Family::V6 => h6,
            };
            if huge {
                g.bench_function("hot_hit_huge", |b| b.iter_custom(|it| latency(&fh.table, &hot_hit, it, true)));
                g.bench_function("hot_miss_huge", |b| b.iter_custom(|it| latency(&fh.table, &hot_miss, it, false)));
            } else {
                eprintln!("lookup_{}_{n}: no huge pages ({}): hot_*_huge left out", fam.name(), fh.table.huge_refused().join("; "));
            }
            writeln!(out, "{{\"bench\":\"lookup_huge\",\"family\":\"{}\",\"n\":{n},\"huge\":{huge}}}", fam.name()).unwrap();
            drop(fh);
            g.finish();
            paired(&f, &hot_hit, &w, fam, n, out);
        }
    }
}

fn main() {
    let mut out: Box<dyn Write> = match std::env::var_os("APIBAN_BENCH_OUT") {
        Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p).expect("open APIBAN_BENCH_OUT")),
        None => Box::new(std::io::stdout()),
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &mut *out);
    c.final_summary();
}
