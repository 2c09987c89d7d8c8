//! Shared counters and status, in a mapping of their own made before the fork.
//!
//! Workers only ever increment `checks`, `hits` and `allowed` (each on its own cache line, so
//! the counters that every lookup touches do not share a line with anything else). The refresher
//! is the only writer of everything else; RPC/MI processes read. The two texts are seqlocked
//! byte buffers: the single writer never waits, a reader retries if it raced a write.

use crate::boundary::{apiban_stats, APIBAN_TEXT_LEN};
use crate::shm::Mapping;
use std::io;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

const TEXT: usize = APIBAN_TEXT_LEN as usize;

#[repr(C, align(64))]
pub struct Padded(pub AtomicU64);

#[repr(C)]
pub struct Text {
    seq: AtomicU64,
    bytes: [AtomicU8; TEXT],
}

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
        self.seq.store(s + 1, Relaxed);
        fence(Release);
        self.write_bytes(text);
        self.seq.store(s + 2, Release);
    }

    /// A consistent copy, NUL-terminated.
    pub fn get(&self) -> [u8; TEXT] {
        loop {
            let s1 = self.seq.load(Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut out = [0u8; TEXT];
            for (o, b) in out.iter_mut().zip(self.bytes.iter()) {
                *o = b.load(Relaxed);
            }
            fence(Acquire);
            if self.seq.load(Relaxed) == s1 {
                out[TEXT - 1] = 0;
                return out;
            }
        }
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
    pub checks: Padded,
    pub hits: Padded,
    pub allowed: Padded,
    // Written by the refresher only.
    pub entries: AtomicU64,
    pub ipv4: AtomicU64,
    pub ipv6: AtomicU64,
    pub last_sync: AtomicU64,
    pub last_id: AtomicU64,
    pub requests: AtomicU64,
    pub sync_ms: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub skipped: AtomicU64,
    pub overflow: AtomicU64,
    pub expired: AtomicU64,
    pub backoff_until: AtomicU64,
    pub max_entries: AtomicU64,
    /// Set by apiban.reload (any process), cleared by the refresher when it starts the pull.
    pub reload: AtomicU32,
    pub state: Text,
    pub last_error: Text,
}

pub struct Stats {
    map: Mapping,
}

impl Stats {
    pub fn new() -> io::Result<Stats> {
        let map = Mapping::new(std::mem::size_of::<Counters>().next_multiple_of(4096))?;
        let s = Stats { map };
        s.get().state.put("starting");
        Ok(s)
    }

    pub fn get(&self) -> &Counters {
        // SAFETY: the mapping is at least size_of::<Counters>() bytes, zero-filled (a valid
        // Counters: all atomics), page-aligned, and lives as long as self.
        unsafe { &*(self.map.as_ptr() as *const Counters) }
    }

    pub fn snapshot(&self, out: &mut apiban_stats) {
        let c = self.get();
        out.entries = c.entries.load(Relaxed);
        out.ipv4 = c.ipv4.load(Relaxed);
        out.ipv6 = c.ipv6.load(Relaxed);
        out.checks = c.checks.0.load(Relaxed);
        out.hits = c.hits.0.load(Relaxed);
        out.allowed = c.allowed.0.load(Relaxed);
        out.last_sync = c.last_sync.load(Relaxed);
        out.last_id = c.last_id.load(Relaxed);
        out.requests = c.requests.load(Relaxed);
        out.sync_ms = c.sync_ms.load(Relaxed);
        out.syncs = c.syncs.load(Relaxed);
        out.sync_failures = c.sync_failures.load(Relaxed);
        out.rate_limited = c.rate_limited.load(Relaxed);
        out.skipped = c.skipped.load(Relaxed);
        out.overflow = c.overflow.load(Relaxed);
        out.expired = c.expired.load(Relaxed);
        out.backoff_until = c.backoff_until.load(Relaxed);
        out.max_entries = c.max_entries.load(Relaxed);
        for (o, b) in out.state.iter_mut().zip(c.state.get()) {
            *o = b as _;
        }
        for (o, b) in out.last_error.iter_mut().zip(c.last_error.get()) {
            *o = b as _;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_truncates_on_a_char_boundary() {
        let s = Stats::new().unwrap();
        assert_eq!(s.get().state.get_string(), "starting");
        s.get().last_error.put("HTTP 503");
        assert_eq!(s.get().last_error.get_string(), "HTTP 503");
        let long = "é".repeat(300);
        s.get().last_error.put(&long);
        let got = s.get().last_error.get_string();
        assert!(got.len() < TEXT && got.chars().all(|c| c == 'é'));
        s.get().last_error.put("");
        assert_eq!(s.get().last_error.get_string(), "");
    }

    #[test]
    fn snapshot_copies_counters() {
        let s = Stats::new().unwrap();
        s.get().checks.0.fetch_add(3, Relaxed);
        s.get().last_id.store(1_700_000_000, Relaxed);
        let mut out: apiban_stats = unsafe { std::mem::zeroed() };
        s.snapshot(&mut out);
        assert_eq!(out.checks, 3);
        assert_eq!(out.last_id, 1_700_000_000);
        assert_eq!(out.state[0] as u8, b's');
    }
}
