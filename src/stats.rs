//! Shared counters and status, in a mapping of their own made before the fork.
//!
//! The fields are those of `APIBAN_STATS` in c-shim/apiban.h, the one list that the shims, the
//! replies and the counters also expand: here a number is `nums[i]` and a text `texts[j]`, in
//! the order of `struct apiban_stats`, reached by field name with `num!` and `text!`.
//!
//! The counters every lookup touches (`checks`, `hits`, `allowed`) are per process, as
//! Kamailio's own counters are: each process adds to its own cache line, chosen by the host's
//! process index at child init, and a read sums the lines. A worker so never writes a line that
//! another worker writes. Everything else has one writer, the refresher; RPC/MI processes
//! read. The texts are seqlocked byte buffers: the single writer never waits, and a reader
//! retries a bounded number of times, then answers with what it read.

use crate::boundary::{
    apiban_stat_count_APIBAN_STAT_NUMBERS as APIBAN_STAT_NUMBERS, apiban_stat_count_APIBAN_STAT_TEXTS as APIBAN_STAT_TEXTS, apiban_stats,
    APIBAN_TEXT_LEN,
};
use crate::os::Mapping;
use std::io;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

const TEXT: usize = APIBAN_TEXT_LEN as usize;
const NUMBERS: usize = APIBAN_STAT_NUMBERS as usize;
const TEXTS: usize = APIBAN_STAT_TEXTS as usize;
const _: () = assert!(size_of::<apiban_stats>() == NUMBERS * 8 + TEXTS * TEXT, "apiban_stats: every number, then every text");

/// Slots of the per-process counters. A host process index beyond them shares a slot with
/// another process: the sums stay exact (the adds are atomic), only that line is shared.
pub const PROC_SLOTS: usize = 1024;
const _: () = assert!(PROC_SLOTS.is_power_of_two());

/// This process's slot: set by apiban_child_init after the fork, 0 before (the main process).
static SLOT: AtomicUsize = AtomicUsize::new(0);

pub fn set_process(process_no: i32) {
    SLOT.store(process_no.max(0) as usize % PROC_SLOTS, Relaxed);
}

/// The shared number of a statistic, by its field name in `struct apiban_stats`.
macro_rules! num {
    ($c:expr, $f:ident) => {
        $c.num(std::mem::offset_of!($crate::boundary::apiban_stats, $f))
    };
}
/// The shared text of a statistic, by its field name in `struct apiban_stats`.
macro_rules! text {
    ($c:expr, $f:ident) => {
        $c.text(std::mem::offset_of!($crate::boundary::apiban_stats, $f))
    };
}
pub(crate) use {num, text};

/// One process's lookup counters, alone on their cache line.
#[repr(C, align(64))]
pub struct ProcCounters {
    pub checks: AtomicU64,
    pub hits: AtomicU64,
    pub allowed: AtomicU64,
    pub local_hits: AtomicU64,
    pub ban_drops: AtomicU64,
}

#[repr(C)]
pub struct Text {
    seq: AtomicU64,
    bytes: [AtomicU8; TEXT],
}

/// How often a reader retries a text it raced a write of. A write takes well under a
/// microsecond; a sequence still odd after this many tries belongs to a writer that died in
/// the middle (a refresher killed in a put), and waiting for it would hang every reader.
const TEXT_TRIES: u32 = 10_000;

impl Text {
    fn write_bytes(&self, text: &str) {
        let mut n = text.len().min(TEXT - 1);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        for (i, b) in text.as_bytes()[..n].iter().enumerate() {
            self.bytes[i].store(*b, Relaxed);
        }
        self.bytes[n].store(0, Relaxed);
    }

    /// Single writer only.
    pub fn put(&self, text: &str) {
        let s = self.seq.load(Relaxed);
        self.seq.store(s | 1, Relaxed);
        fence(Release);
        self.write_bytes(text);
        self.seq.store((s | 1) + 1, Release);
    }

    /// A consistent copy, NUL-terminated; after a bounded number of races, the last copy read
    /// (possibly torn, still NUL-terminated): a stats reply never waits on the writer.
    pub fn get(&self) -> [u8; TEXT] {
        let mut out = [0u8; TEXT];
        for _ in 0..TEXT_TRIES {
            let s1 = self.seq.load(Acquire);
            for (o, b) in out.iter_mut().zip(self.bytes.iter()) {
                *o = b.load(Relaxed);
            }
            fence(Acquire);
            if s1 & 1 == 0 && self.seq.load(Relaxed) == s1 {
                break;
            }
            std::hint::spin_loop();
        }
        out[TEXT - 1] = 0;
        out
    }

    #[cfg(test)]
    pub fn get_string(&self) -> String {
        let b = self.get();
        let n = b.iter().position(|&c| c == 0).unwrap_or(TEXT);
        String::from_utf8_lossy(&b[..n]).into_owned()
    }
}

#[repr(C)]
pub struct Counters {
    /// The numbers of `struct apiban_stats`, in its order. The entries of the per-process
    /// counters stay 0 here: their values are in `procs`.
    nums: [AtomicU64; NUMBERS],
    texts: [Text; TEXTS],
    /// Set by apiban.reload (any process), cleared by the refresher when it starts the pull.
    pub reload: AtomicU32,
    procs: [ProcCounters; PROC_SLOTS],
}

impl Counters {
    /// The number at `offset` in `struct apiban_stats` (use `num!`).
    pub fn num(&self, offset: usize) -> &AtomicU64 {
        &self.nums[offset / 8]
    }

    /// The text at `offset` in `struct apiban_stats` (use `text!`).
    pub fn text(&self, offset: usize) -> &Text {
        &self.texts[(offset - NUMBERS * 8) / TEXT]
    }

    /// This process's lookup counters. Inlined into the lookup: one load of a process-local
    /// static, then adds on a line no other process writes.
    #[inline(always)]
    pub fn mine(&self) -> &ProcCounters {
        // SLOT is always below PROC_SLOTS (set_process), but the compiler cannot know it: the
        // remainder (a mask: PROC_SLOTS is a power of two) proves it, so no bounds check, no panic.
        &self.procs[SLOT.load(Relaxed) % PROC_SLOTS]
    }
}

pub struct Stats {
    map: Mapping,
}

impl Stats {
    pub fn new() -> io::Result<Stats> {
        let map = Mapping::new(size_of::<Counters>().next_multiple_of(4096))?;
        let s = Stats { map };
        text!(s.get(), state).put("starting");
        Ok(s)
    }

    pub fn get(&self) -> &Counters {
        // SAFETY: the mapping is at least size_of::<Counters>() bytes, zero-filled (a valid
        // Counters: all atomics), page-aligned, and lives as long as self.
        unsafe { &*(self.map.as_ptr() as *const Counters) }
    }

    pub fn snapshot(&self, out: &mut apiban_stats) {
        let c = self.get();
        // SAFETY: apiban_stats is NUMBERS u64 then TEXTS byte arrays (asserted above), plain
        // data with no padding, and `out` is a valid exclusive reference to one.
        let (nums, texts) = unsafe {
            let p = (out as *mut apiban_stats).cast::<u8>();
            (
                std::slice::from_raw_parts_mut(p.cast::<u64>(), NUMBERS),
                std::slice::from_raw_parts_mut(p.add(NUMBERS * 8), TEXTS * TEXT),
            )
        };
        for (o, n) in nums.iter_mut().zip(c.nums.iter()) {
            *o = n.load(Relaxed);
        }
        let sum = |f: fn(&ProcCounters) -> &AtomicU64| c.procs.iter().map(|p| f(p).load(Relaxed)).sum::<u64>();
        nums[offset_of!(apiban_stats, checks) / 8] = sum(|p| &p.checks);
        nums[offset_of!(apiban_stats, hits) / 8] = sum(|p| &p.hits);
        nums[offset_of!(apiban_stats, allowed) / 8] = sum(|p| &p.allowed);
        nums[offset_of!(apiban_stats, local_hits) / 8] = sum(|p| &p.local_hits);
        nums[offset_of!(apiban_stats, ban_drops) / 8] = sum(|p| &p.ban_drops);
        for (o, t) in texts.chunks_mut(TEXT).zip(c.texts.iter()) {
            o.copy_from_slice(&t.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_truncates_on_a_char_boundary() {
        let s = Stats::new().unwrap();
        let c = s.get();
        assert_eq!(text!(c, state).get_string(), "starting");
        text!(c, last_error).put("HTTP 503");
        assert_eq!(text!(c, last_error).get_string(), "HTTP 503");
        let long = "é".repeat(300);
        text!(c, last_error).put(&long);
        let got = text!(c, last_error).get_string();
        assert!(got.len() < TEXT && got.chars().all(|c| c == 'é'));
        text!(c, last_error).put("");
        assert_eq!(text!(c, last_error).get_string(), "");
    }

    #[test]
    fn snapshot_copies_counters() {
        let s = Stats::new().unwrap();
        let c = s.get();
        c.mine().checks.fetch_add(3, Relaxed);
        num!(c, last_id).store(1_700_000_000, Relaxed);
        num!(c, max_entries).store(77, Relaxed);
        text!(c, last_error).put("boom");
        let mut out: apiban_stats = unsafe { std::mem::zeroed() };
        s.snapshot(&mut out);
        assert_eq!(out.checks, 3);
        assert_eq!((out.last_id, out.max_entries, out.entries), (1_700_000_000, 77, 0));
        assert_eq!(out.state[0] as u8, b's');
        assert_eq!(out.last_error[..5].iter().map(|&b| b as u8).collect::<Vec<_>>(), b"boom\0");
    }

    #[test]
    fn lookup_counters_are_per_process_and_summed_on_read() {
        let s = Stats::new().unwrap();
        let c = s.get();
        // Three "processes", each on its own line; the read sums them exactly.
        for (p, n) in [(1, 5u64), (2, 7), (PROC_SLOTS as i32 + 1, 11)] {
            set_process(p);
            for _ in 0..n {
                c.mine().checks.fetch_add(1, Relaxed);
                c.mine().hits.fetch_add(1, Relaxed);
            }
        }
        set_process(0);
        let lines: std::collections::HashSet<usize> = [1, 2].iter().map(|&i| &c.procs[i] as *const _ as usize / 64).collect();
        assert_eq!(lines.len(), 2, "two processes, two cache lines");
        let mut out: apiban_stats = unsafe { std::mem::zeroed() };
        s.snapshot(&mut out);
        assert_eq!((out.checks, out.hits, out.allowed), (23, 23, 0));
    }

    #[test]
    fn a_reader_never_waits_on_a_writer_that_died_mid_write() {
        let s = Stats::new().unwrap();
        let t = text!(s.get(), state);
        t.put("ok");
        // A refresher killed inside put() leaves the sequence odd for good.
        t.seq.fetch_add(1, Relaxed);
        let start = std::time::Instant::now();
        let got = t.get_string();
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "took {:?}", start.elapsed());
        assert_eq!(got, "ok");
        // The next put by a restarted writer makes it consistent again.
        t.put("syncing");
        assert_eq!(t.get_string(), "syncing");
        assert_eq!(t.seq.load(Relaxed) & 1, 0);
    }
}
