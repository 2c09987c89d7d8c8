//! Load benchmark: CPU to parse N addresses from feed replies and publish them, as the
//! refresher does (src/refresher.rs `take`, `finish`, `publish_entries`), for N = 1 k … 1 M, from
//! replies of 250 addresses (what APIBAN sends) and from one big reply.
//!
//! What one load does, timed with the thread's CPU clock (steadier than wall time on a shared
//! machine):
//! 1. parse: `feed::parse_reply` on every reply, each address appended to the pull's list
//!    (`held::Held`, IPv4 and IPv6 apart, bounded at twice max_entries), the cursor moved to the
//!    reply's ID; at the pull's end the list sorted once, one entry per address with its newest
//!    listing time (`Held::normalize`);
//! 2. publish: the list becomes the one held (a full pull), entries past their ttl dropped,
//!    `held::live`, then `Table::publish` into the shared table.
//!
//! The table is made once per N (mod_init's work); the first load pays the page faults of a fresh
//! generation, later ones reuse pages. Reported: the median of the repetitions and the first one.
//! The snapshot write that follows a sync in the module is not part of this path.
//!
//! Output: one JSON object per line on stdout, or appended to `$APIBAN_BENCH_OUT`.
//! `APIBAN_BENCH_TINY=1`: N = 1 k and 10 k only, fewer repetitions.

use apiban::bench_api::{keep_newest, live, parse_reply, Entries, Held, Table, START_ID};
use std::io::Write;
use std::time::Duration;

const TTL: u64 = 7 * 86400;

fn tiny() -> bool {
    std::env::var_os("APIBAN_BENCH_TINY").is_some_and(|v| v != "0")
}

fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct public-looking IPv4 addresses as text, in feed order.
fn addresses(n: usize) -> Vec<String> {
    let mut r = Rng(n as u64);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = r.next() as u32;
        if a >> 24 == 0 || a >> 24 >= 224 || !seen.insert(a) {
            continue;
        }
        out.push(std::net::Ipv4Addr::from(a).to_string());
    }
    out
}

/// Feed replies as APIBAN writes them: `{"ipaddress":[...],"ID":"<listing time>"}`.
fn replies(addrs: &[String], per_reply: usize, first_id: u64) -> Vec<Vec<u8>> {
    addrs
        .chunks(per_reply)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = String::with_capacity(chunk.len() * 18 + 40);
            s.push_str("{\"ipaddress\":[");
            for (j, a) in chunk.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                s.push('"');
                s.push_str(a);
                s.push('"');
            }
            s.push_str(&format!("],\"ID\":\"{}\"}}", first_id + i as u64));
            s.into_bytes()
        })
        .collect()
}

struct Timing {
    parse: Duration,
    publish: Duration,
    published: usize,
}

fn load(table: &Table, bodies: &[Vec<u8>], max_entries: usize, now: u64, seed: u64) -> Timing {
    let t0 = cpu_now();
    // refresher.rs take(): the pull appends each batch, bounded at twice max_entries.
    let limit = max_entries.saturating_mul(2);
    let mut got = Held::default();
    let mut cursor = START_ID;
    for body in bodies {
        let batch = parse_reply(200, body, None, cursor).expect("a good reply");
        let at = batch.id.filter(|&id| id > 1_000_000_000 && id <= now + 3600).unwrap_or(now).min(u32::MAX as u64) as u32;
        got.v4.extend(batch.v4.iter().map(|&a| (a, at)));
        got.v6.extend(batch.v6.iter().map(|&a| (a, at)));
        if got.len() >= limit {
            got.normalize();
            if got.len() >= limit {
                keep_newest(&mut got, max_entries);
            }
        }
        if let Some(id) = batch.id {
            cursor = cursor.max(id);
        }
    }
    // finish(): sorted once, one entry per address.
    got.normalize();
    let t1 = cpu_now();
    // refresher.rs finish() for a full pull, then publish_entries().
    let mut master = got;
    master.retain(|at| at as u64 + TTL > now);
    let (v4, v6) = live(&master, TTL, now, max_entries);
    let (n4, n6) = table.publish(&Entries { v4: &v4, v6: &v6 }, seed);
    let t2 = cpu_now();
    drop(master);
    Timing { parse: t1 - t0, publish: t2 - t1, published: n4 + n6 }
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

fn main() {
    // cargo bench passes --bench (and criterion-style filters); nothing to parse here.
    let sizes: &[usize] = if tiny() { &[1_000, 10_000] } else { &[1_000, 10_000, 100_000, 1_000_000] };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_id = now - 86_400;
    let to_file = std::env::var_os("APIBAN_BENCH_OUT").is_some();
    let mut out: Box<dyn Write> = match std::env::var_os("APIBAN_BENCH_OUT") {
        Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p).expect("open APIBAN_BENCH_OUT")),
        None => Box::new(std::io::stdout()),
    };
    for &n in sizes {
        let addrs = addresses(n);
        for (shape, per) in [("batches_250", 250usize), ("one_reply", n)] {
            let bodies = replies(&addrs, per, first_id);
            let bytes: usize = bodies.iter().map(Vec::len).sum();
            let table = Table::new(n).expect("reserve the table");
            table.set_now(now);
            let reps = if tiny() { 3 } else if n >= 1_000_000 { 5 } else { 7 };
            let mut runs = Vec::new();
            for rep in 0..reps {
                let t = load(&table, &bodies, n, now, rep as u64 + 1);
                assert_eq!(t.published, n, "every address published");
                runs.push(t);
            }
            let per_addr = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
            let total: Vec<f64> = runs.iter().map(|t| per_addr(t.parse + t.publish)).collect();
            let (first, med) = (total[0], median(total));
            let line = format!(
                "{{\"bench\":\"load\",\"shape\":\"{shape}\",\"n\":{n},\"replies\":{},\"bytes\":{bytes},\"reps\":{reps},\
                 \"ns_per_addr\":{:.1},\"parse_ns_per_addr\":{:.1},\"publish_ns_per_addr\":{:.1},\
                 \"first_ns_per_addr\":{:.1},\"total_s\":{:.4}}}",
                bodies.len(),
                med,
                median(runs.iter().map(|t| per_addr(t.parse)).collect()),
                median(runs.iter().map(|t| per_addr(t.publish)).collect()),
                first,
                med * n as f64 / 1e9,
            );
            writeln!(out, "{line}").unwrap();
            if to_file {
                eprintln!("{line}");
            }
        }
    }
}
