//! The local bans' queue (src/bans/ring.rs), as a SIP worker and the ban keeper use it:
//!
//! 1. `worker`: what `apiban_ban` costs a worker: the argument checks (`ban_request`: parse the
//!    address, the ttl, the reason) and one push, with the keeper draining on another thread
//!    every 10 ms, as in the server. Per call, the median of repeated runs of 100 k calls, thread CPU time.
//! 2. `throughput`: bans per second through the ring, 1 and 2 producer threads (the workers are
//!    processes in the server; the ring is shared memory either way) against one consumer that
//!    drains as the keeper does, and how many were refused as full.
//!
//! Output: one JSON object per line on stdout, or appended to `$APIBAN_BENCH_OUT`.
//! `APIBAN_BENCH_TINY=1`: fewer calls.

use apiban::bench_api::{ban_request, Ring};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tiny() -> bool {
    std::env::var_os("APIBAN_BENCH_TINY").is_some_and(|v| v != "0")
}

fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn emit(line: String) {
    match std::env::var_os("APIBAN_BENCH_OUT") {
        Some(p) => {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).expect("APIBAN_BENCH_OUT");
            writeln!(f, "{line}").expect("write");
        }
        None => println!("{line}"),
    }
    eprintln!("{line}");
}

/// A consumer that drains the ring until told to stop, every `pace` (the keeper's 10 ms) or
/// without pause (None); returns how many it took.
fn keeper(ring: Arc<Ring>, stop: Arc<AtomicBool>, pace: Option<Duration>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Relaxed) {
            while ring.pop().is_some() {
                n += 1;
            }
            match pace {
                Some(d) => std::thread::sleep(d),
                None => std::hint::spin_loop(),
            }
        }
        while ring.pop().is_some() {
            n += 1;
        }
        n
    })
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)).collect()
}

/// Bursts of this many bans, each into a ring the keeper has drained: every push succeeds, as
/// in a server whose keeper keeps up.
const BURST: usize = 1000;

fn worker() {
    let ring = Arc::new(Ring::new().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let k = keeper(ring.clone(), stop.clone(), Some(Duration::from_millis(10)));
    let calls = if tiny() { 20_000 } else { 200_000 };
    let ips = texts(calls);
    let (mut per_call, mut pushed_only) = (Vec::new(), Vec::new());
    let mut full = 0u64;
    let r1 = ban_request(b"192.0.2.1", 3600, b"pike", 3600, 86400, 1).unwrap();
    for _ in 0..if tiny() { 3 } else { 11 } {
        let (mut all, mut push) = (Duration::ZERO, Duration::ZERO);
        for chunk in ips.chunks(BURST) {
            while !ring.is_empty() {
                std::hint::spin_loop();
            }
            let t = cpu_now();
            for ip in chunk {
                let r = ban_request(ip.as_bytes(), 3600, b"pike", 3600, 86400, 1_700_000_000).unwrap();
                full += !ring.push(&r) as u64;
            }
            all += cpu_now() - t;
            while !ring.is_empty() {
                std::hint::spin_loop();
            }
            // The push alone, of a request made once.
            let t = cpu_now();
            for _ in 0..chunk.len() {
                full += !ring.push(std::hint::black_box(&r1)) as u64;
            }
            push += cpu_now() - t;
        }
        per_call.push(all.as_nanos() as f64 / calls as f64);
        pushed_only.push(push.as_nanos() as f64 / calls as f64);
    }
    stop.store(true, Relaxed);
    k.join().unwrap();
    per_call.sort_by(f64::total_cmp);
    pushed_only.sort_by(f64::total_cmp);
    emit(format!(
        r#"{{"bench":"bans_worker","calls":{calls},"ns_per_ban":{:.1},"ns_per_push":{:.1},"refused":{full}}}"#,
        per_call[per_call.len() / 2],
        pushed_only[pushed_only.len() / 2]
    ));
}

/// Producers push `per` bans each, retrying while the ring is full, against a consumer that
/// never pauses: the ring's own ceiling (the keeper, which drains every 10 ms, takes at most
/// 4096 per pass).
fn throughput(producers: usize) {
    let ring = Arc::new(Ring::new().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let k = keeper(ring.clone(), stop.clone(), None);
    let per = if tiny() { 200_000 } else { 2_000_000 };
    let retries = Arc::new(AtomicU64::new(0));
    let r = ban_request(b"192.0.2.1", 3600, b"pike", 3600, 86400, 1).unwrap();
    let t = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let (ring, retries) = (ring.clone(), retries.clone());
            std::thread::spawn(move || {
                for _ in 0..per {
                    while !ring.push(&r) {
                        retries.fetch_add(1, Relaxed);
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    stop.store(true, Relaxed);
    let taken = k.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let offered = (producers * per) as u64;
    assert_eq!(taken, offered, "every ban pushed is taken once");
    emit(format!(
        r#"{{"bench":"bans_ring","producers":{producers},"bans":{offered},"seconds":{secs:.3},"per_s":{:.0},"full_retries":{}}}"#,
        taken as f64 / secs,
        retries.load(Relaxed)
    ));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    worker();
    throughput(1);
    throughput(2);
}
