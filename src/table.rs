//! The shared ban table: read lock-free by every SIP worker, republished whole by one writer.
//!
//! # Layout
//! One anonymous shared mapping: a header, then two generations of IPv4 slots and two of IPv6
//! slots. Each generation is an open-addressing hash table with linear probing, sized at each
//! publish for the entries it holds (load factor at most 1/2, so a miss probes ~2.5 slots, nearly
//! always in one cache line) within the capacity reserved for `max_entries`. Pages of reserved
//! but unused capacity are never touched, and a generation's pages are given back to the kernel
//! as soon as the next one is published, so between publishes one generation is resident:
//! 16 bytes per IPv4 entry, 48 per IPv6 entry (twice that only while a publish is being built).
//!
//! - IPv4 slot: one `u64` = expiry (unix seconds) << 32 | address. 0 is empty: every stored
//!   entry has a non-zero expiry. One 8-byte load per probe, so a slot is never read torn.
//! - IPv6 slot: three `u64` (address high, low, expiry).
//!
//! # Publishing, and why readers are safe across processes
//! There is exactly one writer (the refresher process). It builds the *unpublished* generation
//! completely, then stores its index in `current` (Release). Readers load `current` (Acquire)
//! and read that generation. Before the writer reuses a generation (the publish after next), a
//! reader may still be inside it, so each generation carries a sequence number (a seqlock):
//! the writer makes it odd before touching the generation and even again after; a reader
//! notes it before probing and checks it after (behind an Acquire fence). If it changed, the
//! reader simply starts again on the newly published generation, which is complete.
//!
//! We chose the seqlock over per-generation reader counts because readers then write nothing
//! to shared memory (no cache line bouncing between workers), and because a reader process that
//! dies mid-lookup (a crash, a kill) leaves nothing behind that could stall the writer. Readers
//! never wait for the writer; the writer never waits for readers. All accesses are atomics on
//! memory shared by `MAP_SHARED`, which the kernel keeps coherent between processes exactly as
//! between threads, so the Rust memory-model argument for threads carries over. A torn or
//! half-written generation is never *used*: its probe result is thrown away when the sequence
//! check fails; and every index is bounded by the capacity reserved at creation, so even a read
//! racing the writer stays inside the mapping.
//!
//! Entries expire at their own time: a lookup compares the slot's expiry with a coarse clock the
//! refresher keeps in the header, so the lookup path makes no system call.

use crate::addr::Key;
use crate::os::Mapping;
use std::io;
use std::mem::size_of;
use std::sync::atomic::{fence, AtomicU64, Ordering::*};

/// Slots per entry at the most: a load factor of at most 1/2.
const SLOTS_PER_ENTRY: usize = 2;
const MIN_CAPACITY: usize = 16;

#[repr(C, align(64))]
struct Generation {
    seq: AtomicU64,
    cap4: AtomicU64,
    cap6: AtomicU64,
    len4: AtomicU64,
    len6: AtomicU64,
    seed: AtomicU64,
}

#[repr(C, align(64))]
struct Header {
    /// Index (0 or 1) of the published generation.
    current: AtomicU64,
    /// Coarse unix time in seconds, kept by the refresher; entries with expiry <= now are gone.
    now: AtomicU64,
    /// Entries of another table that lookups probe after this one misses (the local bans),
    /// kept here by that table's writer: a lookup reads this line anyway, so a caller learns
    /// for one load that the other table is empty and skips it.
    companion: AtomicU64,
    gens: [Generation; 2],
}

#[repr(C)]
struct Slot6 {
    hi: AtomicU64,
    lo: AtomicU64,
    exp: AtomicU64,
}

pub struct Table {
    map: Mapping,
    max_entries: usize,
    max4: usize,
    max6: usize,
    off4: [usize; 2],
    off6: [usize; 2],
}

/// What a publish holds: address and expiry (unix seconds, non-zero).
pub struct Entries<'a> {
    pub v4: &'a [(u32, u32)],
    pub v6: &'a [(u128, u32)],
}

fn capacity_for(n: usize) -> usize {
    (n.saturating_mul(SLOTS_PER_ENTRY)).max(MIN_CAPACITY)
}

/// Maps a hash onto [0, cap) without a division (Lemire's multiply-shift). It takes the
/// hash's high bits, which is where a multiplicative hash puts its best ones.
#[inline(always)]
fn slot_index(h: u64, cap: usize) -> usize {
    ((h as u128 * cap as u128) >> 64) as usize
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One multiply: the address, salted by the generation's random seed, times an odd constant.
/// Every key bit reaches the high bits that slot_index keeps; an attacker who does not know the
/// seed cannot aim addresses at one chain (and the feed, not the attacker, fills the table).
#[inline(always)]
fn hash4(k: u32, seed: u64) -> u64 {
    ((k as u64) ^ seed).wrapping_mul(GOLDEN)
}

#[inline(always)]
fn hash6(k: u128, seed: u64) -> u64 {
    let a = ((k >> 64) as u64 ^ seed).wrapping_mul(GOLDEN);
    (a.rotate_left(29) ^ k as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)
}

impl Table {
    /// Reserves room for `max_entries` addresses of each family in two generations.
    pub fn new(max_entries: usize) -> io::Result<Table> {
        let max4 = capacity_for(max_entries);
        let max6 = max4;
        let align = |x: usize| (x + 4095) & !4095;
        let mut off = align(size_of::<Header>());
        let mut off4 = [0; 2];
        let mut off6 = [0; 2];
        for o in off4.iter_mut() {
            *o = off;
            off = align(off + max4 * size_of::<AtomicU64>());
        }
        for o in off6.iter_mut() {
            *o = off;
            off = align(off + max6 * size_of::<Slot6>());
        }
        let map = Mapping::new(off)?;
        // The mapping is zero-filled: both generations are empty, seq 0, current 0.
        Ok(Table { map, max_entries, max4, max6, off4, off6 })
    }

    /// Bytes reserved (virtual) for the table.
    pub fn reserved_bytes(&self) -> usize {
        self.map.len()
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (zero is a valid Header) and outlives self.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn slots4(&self, g: usize) -> &[AtomicU64] {
        // SAFETY: off4[g] .. + max4 slots lies inside the mapping (computed in new()); zeroed
        // memory is a valid AtomicU64; the slice lives as long as self.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.off4[g]) as *const AtomicU64, self.max4) }
    }

    fn slots6(&self, g: usize) -> &[Slot6] {
        // SAFETY: as slots4.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.off6[g]) as *const Slot6, self.max6) }
    }

    pub fn set_now(&self, unix_secs: u64) {
        self.hdr().now.store(unix_secs, Relaxed);
    }

    pub fn now(&self) -> u64 {
        self.hdr().now.load(Relaxed)
    }

    /// The lookup path: no allocation, no lock, no system call. Inlined into its callers so
    /// that a caller holding an IPv4 address compiles to the IPv4 probe alone.
    #[inline(always)]
    pub fn contains(&self, key: Key) -> bool {
        match key {
            Key::V4(k) => self.read(|g, gen, now| self.probe4(g, gen, k, |e| e > now, false)),
            Key::V6(k) => self.read(|g, gen, now| self.probe6(g, gen, k, |e| e > now, false)),
        }
    }

    /// The expiry (unix seconds) of `key` while it is in force: for the admin commands and the
    /// ban keeper, not the lookup path.
    pub fn expiry(&self, key: Key) -> Option<u64> {
        let exp = match key {
            Key::V4(k) => self.read(|g, gen, _| self.probe4(g, gen, k, Some, None)),
            Key::V6(k) => self.read(|g, gen, _| self.probe6(g, gen, k, Some, None)),
        };
        exp.filter(|&e| e > self.now())
    }

    /// True when the published generation holds nothing.
    pub fn is_empty(&self) -> bool {
        let h = self.hdr();
        let gen = &h.gens[(h.current.load(Relaxed) & 1) as usize];
        gen.len4.load(Relaxed) == 0 && gen.len6.load(Relaxed) == 0
    }

    /// The companion count (see the header): how many entries another table holds.
    #[inline(always)]
    pub fn companion(&self) -> u64 {
        self.hdr().companion.load(Relaxed)
    }

    pub fn set_companion(&self, n: u64) {
        self.hdr().companion.store(n, Relaxed);
    }

    /// Runs `probe` on the published generation, again until no publish raced it.
    #[inline(always)]
    fn read<T>(&self, probe: impl Fn(usize, &Generation, u64) -> T) -> T {
        let h = self.hdr();
        let now = h.now.load(Relaxed);
        loop {
            let g = (h.current.load(Acquire) & 1) as usize;
            let gen = &h.gens[g];
            let s1 = gen.seq.load(Acquire);
            // Odd: the writer has moved on and retired or is rebuilding this one; read
            // `current` again.
            if s1 & 1 == 0 {
                let found = probe(g, gen, now);
                fence(Acquire);
                if gen.seq.load(Relaxed) == s1 {
                    return found;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// `hit(expiry)` when generation `g` holds `k`, else `miss`. Generic so that `contains`
    /// compiles to the plain probe it always was.
    #[inline(always)]
    fn probe4<R: Copy>(&self, g: usize, gen: &Generation, k: u32, hit: impl Fn(u64) -> R, miss: R) -> R {
        let cap = (gen.cap4.load(Relaxed) as usize).min(self.max4);
        let slots = &self.slots4(g)[..cap];
        let i = slot_index(hash4(k, gen.seed.load(Relaxed)), cap);
        // Linear probing from i to the end, then from the start: two plain scans, so no probe
        // pays for a bounds check or a wrap test. An empty slot ends the chain.
        let scan = |part: &[AtomicU64]| {
            for s in part {
                let v = s.load(Relaxed);
                if v == 0 {
                    return Some(miss);
                }
                if v as u32 == k {
                    return Some(hit(v >> 32));
                }
            }
            None
        };
        let (head, tail) = slots.split_at(i);
        scan(tail).or_else(|| scan(head)).unwrap_or(miss)
    }

    #[inline(always)]
    fn probe6<R: Copy>(&self, g: usize, gen: &Generation, k: u128, hit: impl Fn(u64) -> R, miss: R) -> R {
        let cap = (gen.cap6.load(Relaxed) as usize).min(self.max6);
        let slots = &self.slots6(g)[..cap];
        let (hi, lo) = ((k >> 64) as u64, k as u64);
        let i = slot_index(hash6(k, gen.seed.load(Relaxed)), cap);
        let scan = |part: &[Slot6]| {
            for s in part {
                let exp = s.exp.load(Relaxed);
                if exp == 0 {
                    return Some(miss);
                }
                if s.lo.load(Relaxed) == lo && s.hi.load(Relaxed) == hi {
                    return Some(hit(exp));
                }
            }
            None
        };
        let (head, tail) = slots.split_at(i);
        scan(tail).or_else(|| scan(head)).unwrap_or(miss)
    }

    /// Number of entries (v4, v6) in the published generation.
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        let h = self.hdr();
        let gen = &h.gens[(h.current.load(Acquire) & 1) as usize];
        (gen.len4.load(Relaxed) as usize, gen.len6.load(Relaxed) as usize)
    }

    /// Builds the unpublished generation from `e` and publishes it in one store.
    /// Only one process may ever call this (the refresher): it is the single writer.
    /// Entries beyond `max_entries` per family are not stored; the caller bounds them first.
    /// Expiries of 0 are stored as 1 (0 marks an empty slot). Duplicates keep the later expiry.
    /// Returns how many distinct (IPv4, IPv6) addresses the new generation holds.
    pub fn publish(&self, e: &Entries, seed: u64) -> (usize, usize) {
        let h = self.hdr();
        let cur = (h.current.load(Relaxed) & 1) as usize;
        let g = cur ^ 1;
        let gen = &h.gens[g];
        // Odd while it is written (it already is when it was retired).
        let odd = gen.seq.load(Relaxed) | 1;
        gen.seq.store(odd, Relaxed);
        fence(Release);

        let v4 = &e.v4[..e.v4.len().min(self.max_entries)];
        let v6 = &e.v6[..e.v6.len().min(self.max_entries)];
        let cap4 = capacity_for(v4.len()).min(self.max4);
        let cap6 = if v6.is_empty() { 0 } else { capacity_for(v6.len()).min(self.max6) };
        gen.seed.store(seed, Relaxed);

        let slots4 = &self.slots4(g)[..cap4];
        for s in slots4 {
            s.store(0, Relaxed);
        }
        let mut n4 = 0u64;
        for &(k, exp) in v4 {
            let packed = ((exp.max(1) as u64) << 32) | k as u64;
            let mut i = slot_index(hash4(k, seed), cap4);
            loop {
                let v = slots4[i].load(Relaxed);
                if v == 0 {
                    slots4[i].store(packed, Relaxed);
                    n4 += 1;
                    break;
                }
                if v as u32 == k {
                    if packed > v {
                        slots4[i].store(packed, Relaxed);
                    }
                    break;
                }
                i = if i + 1 == cap4 { 0 } else { i + 1 };
            }
        }

        let slots6 = &self.slots6(g)[..cap6];
        for s in slots6 {
            s.exp.store(0, Relaxed);
        }
        let mut n6 = 0u64;
        for &(k, exp) in v6 {
            let (hi, lo) = ((k >> 64) as u64, k as u64);
            let exp = exp.max(1) as u64;
            let mut i = slot_index(hash6(k, seed), cap6);
            loop {
                let s = &slots6[i];
                if s.exp.load(Relaxed) == 0 {
                    s.hi.store(hi, Relaxed);
                    s.lo.store(lo, Relaxed);
                    s.exp.store(exp, Relaxed);
                    n6 += 1;
                    break;
                }
                if s.hi.load(Relaxed) == hi && s.lo.load(Relaxed) == lo {
                    if exp > s.exp.load(Relaxed) {
                        s.exp.store(exp, Relaxed);
                    }
                    break;
                }
                i = if i + 1 == cap6 { 0 } else { i + 1 };
            }
        }

        gen.cap4.store(cap4 as u64, Relaxed);
        gen.cap6.store(cap6 as u64, Relaxed);
        gen.len4.store(n4, Relaxed);
        gen.len6.store(n6, Relaxed);
        gen.seq.store(odd.wrapping_add(1), Release);
        h.current.store(g as u64, Release);
        self.retire(cur);
        (n4 as usize, n6 as usize)
    }

    /// Frees the memory of the generation just replaced, so that only one is resident between
    /// publishes. Its sequence goes odd first: a reader still inside it then finds the number
    /// changed and reads again from the new one, and a reader arriving late sees it odd and
    /// reloads `current`; the zeros it may read meanwhile are never used. Releasing is only an
    /// economy: if the kernel refuses, the pages simply stay.
    fn retire(&self, g: usize) {
        let gen = &self.hdr().gens[g];
        gen.seq.store(gen.seq.load(Relaxed) | 1, Relaxed);
        // The odd sequence is visible before any page reads as zeros.
        fence(SeqCst);
        let cap4 = (gen.cap4.load(Relaxed) as usize).min(self.max4);
        let cap6 = (gen.cap6.load(Relaxed) as usize).min(self.max6);
        let _ = self.map.release(self.off4[g], cap4 * size_of::<AtomicU64>());
        let _ = self.map.release(self.off6[g], cap6 * size_of::<Slot6>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::parse_text;

    fn key(s: &str) -> Key {
        parse_text(s.as_bytes()).unwrap()
    }

    #[test]
    fn empty_table_lists_nothing() {
        let t = Table::new(100).unwrap();
        assert!(!t.contains(key("192.0.2.1")));
        assert!(!t.contains(key("2001:db8::1")));
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn publish_then_lookup_v4_and_v6() {
        let t = Table::new(1000).unwrap();
        t.set_now(1000);
        let v4: Vec<(u32, u32)> = (0..500u32).map(|i| (0x0a00_0000 + i * 7, 5000)).collect();
        let v6 = vec![(0x2001_0db8u128 << 96 | 1, 5000), (0x2001_0db8u128 << 96 | 2, 5000)];
        t.publish(&Entries { v4: &v4, v6: &v6 }, 42);
        assert_eq!(t.len(), (500, 2));
        for &(k, _) in &v4 {
            assert!(t.contains(Key::V4(k)));
            assert!(!t.contains(Key::V4(k + 1)));
        }
        assert!(t.contains(key("2001:db8::1")));
        assert!(t.contains(key("2001:db8::2")));
        assert!(!t.contains(key("2001:db8::3")));
    }

    #[test]
    fn a_new_publish_replaces_the_old_set_whole() {
        let t = Table::new(100).unwrap();
        t.publish(&Entries { v4: &[(1, u32::MAX), (2, u32::MAX)], v6: &[] }, 1);
        t.publish(&Entries { v4: &[(2, u32::MAX), (3, u32::MAX)], v6: &[] }, 2);
        assert!(!t.contains(Key::V4(1)));
        assert!(t.contains(Key::V4(2)) && t.contains(Key::V4(3)));
        t.publish(&Entries { v4: &[], v6: &[] }, 3);
        assert!(!t.contains(Key::V4(2)));
    }

    #[test]
    fn the_replaced_generation_is_given_back() {
        let t = Table::new(1000).unwrap();
        let v4: Vec<(u32, u32)> = (0..1000u32).map(|i| (i * 11, u32::MAX)).collect();
        let v6 = vec![(5u128 << 100, u32::MAX)];
        t.publish(&Entries { v4: &v4, v6: &v6 }, 1);
        t.publish(&Entries { v4: &v4[..10], v6: &v6 }, 2);
        let old = (t.hdr().current.load(Relaxed) as usize & 1) ^ 1;
        assert_eq!(t.hdr().gens[old].seq.load(Relaxed) & 1, 1, "the old generation is not marked retired");
        assert!(t.slots4(old).iter().all(|s| s.load(Relaxed) == 0), "its IPv4 pages were not released");
        assert!(t.slots6(old).iter().all(|s| s.exp.load(Relaxed) == 0), "its IPv6 pages were not released");
        assert!(t.contains(Key::V4(99)) && !t.contains(Key::V4(110)) && t.contains(Key::V6(5 << 100)));
        // It is reused, whole, by the next publish.
        t.publish(&Entries { v4: &v4[10..20], v6: &[] }, 3);
        assert!(t.contains(Key::V4(110)) && !t.contains(Key::V4(99)) && !t.contains(Key::V6(5 << 100)));
    }

    #[test]
    fn expired_entries_are_not_listed() {
        let t = Table::new(10).unwrap();
        t.set_now(100);
        t.publish(&Entries { v4: &[(1, 100), (2, 101)], v6: &[(7, 99)] }, 9);
        assert!(!t.contains(Key::V4(1)));
        assert!(t.contains(Key::V4(2)));
        assert!(!t.contains(Key::V6(7)));
        t.set_now(101);
        assert!(!t.contains(Key::V4(2)));
    }

    #[test]
    fn duplicates_collapse_to_the_later_expiry_and_zero_address_works() {
        let t = Table::new(10).unwrap();
        t.set_now(10);
        t.publish(&Entries { v4: &[(0, 20), (0, 5), (5, 5), (5, 30)], v6: &[] }, 0);
        assert_eq!(t.len(), (2, 0));
        assert!(t.contains(Key::V4(0)));
        assert!(t.contains(Key::V4(5)));
    }

    #[test]
    fn more_than_max_entries_is_cut_not_a_crash() {
        let t = Table::new(10).unwrap();
        let v4: Vec<(u32, u32)> = (0..50).map(|i| (i, u32::MAX)).collect();
        t.publish(&Entries { v4: &v4, v6: &[] }, 0);
        assert_eq!(t.len().0, 10);
    }

    #[test]
    fn full_capacity_one_million() {
        let t = Table::new(1_000_000).unwrap();
        let v4: Vec<(u32, u32)> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761), u32::MAX)).collect();
        t.publish(&Entries { v4: &v4, v6: &[] }, 77);
        assert_eq!(t.len().0, 1_000_000);
        assert!(v4.iter().step_by(997).all(|&(k, _)| t.contains(Key::V4(k))));
    }

    /// Readers in several processes look up while this process publishes new tables as fast as
    /// it can. An address present in both tables must always be found, one in neither never.
    /// APIBAN_CONCURRENCY_LOOKUPS raises the count (default 10^7 in all, as CI runs it).
    #[test]
    fn readers_in_other_processes_never_see_a_wrong_answer() {
        const READERS: usize = 3;
        let total: u64 = std::env::var("APIBAN_CONCURRENCY_LOOKUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
        let per_reader = total / READERS as u64;
        let t = Table::new(20_000).unwrap();
        t.set_now(1000);
        let common: Vec<(u32, u32)> = (0..2000u32).map(|i| (0x0a00_0000 | (i * 3), 9999)).collect();
        let only_a: Vec<(u32, u32)> = (0..3000u32).map(|i| (0x0b00_0000 | i, 9999)).collect();
        let only_b: Vec<(u32, u32)> = (0..5000u32).map(|i| (0x0c00_0000 | i, 9999)).collect();
        let v6_common = vec![(0x2001_0db8u128 << 96 | 1, 9999u32)];
        let a: Vec<(u32, u32)> = common.iter().chain(&only_a).copied().collect();
        let b: Vec<(u32, u32)> = common.iter().chain(&only_b).copied().collect();
        t.publish(&Entries { v4: &a, v6: &v6_common }, 1);
        // Per reader: [lookups done, wrong answers, finished flag].
        let results = Mapping::new(4096).unwrap();
        let res = |i: usize| -> &AtomicU64 {
            // SAFETY: 3 × READERS u64 fit in the 4096-byte zeroed mapping.
            unsafe { &*(results.as_ptr() as *const AtomicU64).add(i) }
        };
        let keys: Vec<Key> = common
            .iter()
            .map(|&(k, _)| Key::V4(k))
            .chain((0..500u32).map(|i| Key::V4(0x0d00_0000 | i)))
            .chain([Key::V6(0x2001_0db8u128 << 96 | 1), Key::V6(0x2001_0db8u128 << 96 | 2)])
            .collect();
        let expect: Vec<bool> = keys.iter().map(|k| match k {
            Key::V4(x) => x >> 24 == 0x0a,
            Key::V6(x) => x & 0xff == 1,
        }).collect();
        let mut pids = Vec::new();
        for r in 0..READERS {
            // SAFETY: the child only reads memory prepared before the fork, uses atomics, and
            // leaves with _exit: no allocation, no lock, nothing of the test harness's threads.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let mut wrong = 0u64;
                let mut i = 0usize;
                for _ in 0..per_reader {
                    if t.contains(keys[i]) != expect[i] {
                        wrong += 1;
                    }
                    i += 1;
                    if i == keys.len() {
                        i = 0;
                    }
                }
                res(3 * r).store(per_reader, Relaxed);
                res(3 * r + 1).store(wrong, Relaxed);
                res(3 * r + 2).store(1, Release);
                unsafe { libc::_exit(0) };
            }
            pids.push(pid);
        }
        let mut publishes = 0u64;
        while (0..READERS).any(|r| res(3 * r + 2).load(Acquire) == 0) {
            let next = if publishes.is_multiple_of(2) { &b } else { &a };
            t.publish(&Entries { v4: next, v6: &v6_common }, publishes);
            publishes += 1;
        }
        for pid in pids {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        let done: u64 = (0..READERS).map(|r| res(3 * r).load(Relaxed)).sum();
        let wrong: u64 = (0..READERS).map(|r| res(3 * r + 1).load(Relaxed)).sum();
        eprintln!("concurrency: {done} lookups in {READERS} processes during {publishes} publishes, {wrong} wrong");
        assert_eq!(done, per_reader * READERS as u64);
        assert!(publishes > 10, "the writer did not race the readers ({publishes} publishes)");
        assert_eq!(wrong, 0);
    }
}
