//! The shared ban table: read lock-free by every SIP worker, republished whole by one writer.
//!
//! # Layout
//! Two anonymous shared mappings: a header and two generations of IPv4 buckets, then two
//! generations of IPv6 buckets. Each generation is a hash table of *buckets*, one 64-byte cache
//! line each (aligned to 64): a key hashes to a bucket and a lookup reads whole lines. It is
//! sized at each publish for the entries it holds within the capacity reserved for
//! `max_entries`. Pages of reserved but unused capacity are never touched, and a generation's
//! pages are given back to the kernel as soon as the next one is published, so between
//! publishes one generation is resident.
//!
//! - IPv4 bucket: 8 slots of one `u64` = expiry (unix seconds) << 32 | address. 0 is empty:
//!   every stored entry has a non-zero expiry. One 8-byte load per slot, never read torn.
//!   3 entries per bucket on average (load factor 3/8): 21.3 bytes per entry.
//! - IPv6 bucket: 3 slots of address (high, low: six words), then their three 32-bit expiries
//!   and the overflow flag in the last two words (expiries are unix seconds in 32 bits, as the
//!   feed gives them). 0.75 entries per bucket on average (load factor 1/4): 85 bytes per
//!   entry (48 with the unbucketed slots of 24 bytes at load 1/2). A bucket of three overflows
//!   far more easily than one of eight, so it takes a lower load to keep misses on one line;
//!   the feed lists few IPv6 addresses.
//!
//! # Overflow: why a miss reads one line
//! A bucket fills from its first slot on, and an entry goes to the next bucket (wrapping at the
//! end) only when its own is full; nothing is ever removed from a generation (it is rebuilt
//! whole). So a bucket with an empty slot never overflowed, and a lookup stops at the first
//! empty slot. Only a full bucket needs a flag saying whether an entry went past it: IPv6 has a
//! spare word for it; an IPv4 bucket has no spare bit (32 bits of address, 32 of expiry), so a
//! full one says it in the order of its first two slots, which the writer is free to swap:
//! address of slot 0 greater than that of slot 1 means "overflowed" (addresses in a bucket are
//! distinct, and a duplicate's later expiry replaces only the expiry). With uniform hashing at
//! these loads, under 0.5 % (IPv4) and 0.9 % (IPv6) of buckets overflow (measured by the test
//! `misses_stop_at_their_first_line`): a miss reads its one line in over 99 % of cases.
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
//! check fails; and every index stays inside the mapping even then (see `find4`).
//!
//! Entries expire at their own time: a lookup compares the slot's expiry with a coarse clock the
//! refresher keeps in the header, so the lookup path makes no system call.

use crate::addr::Key;
use crate::os::Mapping;
use std::io;
use std::mem::size_of;
use std::sync::atomic::{fence, AtomicU64, Ordering::*};

/// Average entries per bucket at the most: IPv4 3 of 8 slots, IPv6 3 per 4 buckets (a load
/// of 1/4 of its 3 slots).
const V4_PER_BUCKET: usize = 3;
const V6_BUCKETS_PER_3: usize = 4;
const V6_SLOTS: usize = 3;
const MIN_BUCKETS: usize = 4;
const V4_SLOTS: usize = 8;

#[repr(C, align(64))]
struct Generation {
    seq: AtomicU64,
    /// Buckets of this generation. Only ever stored within [1, the reserved count] by the
    /// writer (0 before the first publish), so whatever a racing reader loads is in bounds.
    nb4: AtomicU64,
    nb6: AtomicU64,
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

/// Eight IPv4 slots: expiry << 32 | address, 0 empty.
#[repr(C, align(64))]
struct Bucket4([AtomicU64; V4_SLOTS]);

/// Three IPv6 slots: the addresses as [hi, lo] three times, then `exp01` = expiry 0 | expiry 1
/// << 32 and `exp2` = expiry 2 | overflowed << 32 (non-zero once an entry went past this
/// bucket). An expiry of 0 is an empty slot. A slot spans several words, so a reader may see
/// it half written only in a generation being rebuilt, whose answer the seqlock throws away.
#[repr(C, align(64))]
struct Bucket6 {
    addr: [[AtomicU64; 2]; V6_SLOTS],
    exp01: AtomicU64,
    exp2: AtomicU64,
}

impl Bucket6 {
    /// The expiries of the three slots (0: empty) and whether the bucket overflowed.
    #[inline(always)]
    fn expiries(&self) -> ([u32; V6_SLOTS], bool) {
        let (a, b) = (self.exp01.load(Relaxed), self.exp2.load(Relaxed));
        ([a as u32, (a >> 32) as u32, b as u32], b >> 32 != 0)
    }

    fn set_expiry(&self, slot: usize, exp: u32) {
        let (word, shift) = if slot == 2 { (&self.exp2, 0) } else { (&self.exp01, 32 * slot) };
        let v = word.load(Relaxed) & !(0xffff_ffffu64 << shift);
        word.store(v | (exp as u64) << shift, Relaxed);
    }

    fn set_overflowed(&self) {
        self.exp2.store(self.exp2.load(Relaxed) | 1 << 32, Relaxed);
    }

    fn clear(&self) {
        self.exp01.store(0, Relaxed);
        self.exp2.store(0, Relaxed);
    }
}

const _: () = assert!(size_of::<Bucket4>() == 64 && size_of::<Bucket6>() == 64);

/// Whether an entry went past this full IPv4 bucket: its first two addresses in descending
/// order (see the module's comment). Meaningful only when every slot is taken.
#[inline(always)]
fn overflowed4(b: &Bucket4) -> bool {
    (b.0[0].load(Relaxed) as u32) > (b.0[1].load(Relaxed) as u32)
}

pub struct Table {
    /// The header, then two generations of IPv4 buckets.
    map4: Mapping,
    /// Two generations of IPv6 buckets.
    map6: Mapping,
    max_entries: usize,
    /// Buckets reserved per generation.
    max4: usize,
    max6: usize,
    off4: [usize; 2],
    off6: [usize; 2],
    /// The address of each generation's first IPv4 bucket (map4 + off4), for the lookup.
    first4: [usize; 2],
    /// Why huge pages were asked for and not used, per mapping.
    huge_refused: Vec<String>,
}

/// What a publish holds: address and expiry (unix seconds, non-zero).
pub struct Entries<'a> {
    pub v4: &'a [(u32, u32)],
    pub v6: &'a [(u128, u32)],
}

fn buckets4(n: usize) -> usize {
    n.div_ceil(V4_PER_BUCKET).max(MIN_BUCKETS)
}

fn buckets6(n: usize) -> usize {
    n.saturating_mul(V6_BUCKETS_PER_3).div_ceil(3).max(MIN_BUCKETS)
}

/// Maps a hash onto [0, n) without a division (Lemire's multiply-shift), for any n (0 gives
/// 0). It takes the hash's high bits, which is where a multiplicative hash puts its best ones.
#[inline(always)]
fn slot_index(h: u64, n: usize) -> usize {
    ((h as u128 * n as u128) >> 64) as usize
}

/// The bucket after `i` in a generation of `n`, wrapping to 0 (also when a racing reader
/// holds an `n` that `i` is not below: the result is then 0, in bounds all the same).
#[inline(always)]
fn next_bucket(i: usize, n: usize) -> usize {
    if i + 1 < n {
        i + 1
    } else {
        0
    }
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

/// Maps `len` bytes, in huge pages when asked and the pool has them, else in normal pages with
/// the reason why not.
fn map(len: usize, huge: bool, what: &str, refused: &mut Vec<String>) -> io::Result<Mapping> {
    if huge {
        match Mapping::new_huge(len) {
            Ok(m) => return Ok(m),
            Err(e) => {
                let pages = len.div_ceil(crate::os::HUGE_PAGE);
                refused.push(format!("{what} ({pages} huge pages of 2 MB): {e}"));
            }
        }
    }
    Mapping::new(len)
}

impl Table {
    /// Reserves room for `max_entries` addresses of each family in two generations.
    pub fn new(max_entries: usize) -> io::Result<Table> {
        Table::with_pages(max_entries, false)
    }

    /// The same, in huge pages when `huge` and the operator reserved enough of them: else in
    /// normal pages, and `huge_refused` says why (never an error for want of huge pages).
    pub fn with_pages(max_entries: usize, huge: bool) -> io::Result<Table> {
        let max4 = buckets4(max_entries);
        let max6 = buckets6(max_entries);
        let align = |x: usize| (x + 4095) & !4095;
        let mut off = align(size_of::<Header>());
        let mut off4 = [0; 2];
        for o in off4.iter_mut() {
            *o = off;
            off = align(off + max4 * size_of::<Bucket4>());
        }
        let len4 = off;
        let mut off = 0;
        let mut off6 = [0; 2];
        for o in off6.iter_mut() {
            *o = off;
            off = align(off + max6 * size_of::<Bucket6>());
        }
        let mut huge_refused = Vec::new();
        let map4 = map(len4, huge, "the IPv4 part", &mut huge_refused)?;
        let map6 = map(off, huge, "the IPv6 part", &mut huge_refused)?;
        // The mappings are zero-filled: both generations are empty, seq 0, current 0.
        let first4 = off4.map(|o| map4.as_ptr() as usize + o);
        Ok(Table { map4, map6, max_entries, max4, max6, off4, off6, first4, huge_refused })
    }

    /// Bytes reserved (virtual) for the table.
    pub fn reserved_bytes(&self) -> usize {
        self.map4.len() + self.map6.len()
    }

    /// Why huge pages were asked for and not used (empty when they were, or not asked for).
    pub fn huge_refused(&self) -> &[String] {
        &self.huge_refused
    }

    /// Whether the (IPv4, IPv6) parts are in huge pages.
    pub fn huge(&self) -> (bool, bool) {
        (self.map4.is_huge(), self.map6.is_huge())
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (zero is a valid Header) and outlives self.
        unsafe { &*(self.map4.as_ptr() as *const Header) }
    }

    /// The first IPv4 bucket of generation `g` (0 or 1; `& 1` proves it to the compiler).
    #[inline(always)]
    fn base4(&self, g: usize) -> *const Bucket4 {
        // first4[g] is map4 + off4[g], inside the mapping (new()), 64-aligned (page-aligned).
        self.first4[g & 1] as *const Bucket4
    }

    #[inline(always)]
    fn base6(&self, g: usize) -> *const Bucket6 {
        // SAFETY: as base4.
        unsafe { self.map6.as_ptr().add(self.off6[g & 1]) as *const Bucket6 }
    }

    /// All reserved buckets of a generation, for the writer.
    fn buckets4(&self, g: usize) -> &[Bucket4] {
        // SAFETY: max4 buckets from base4(g) lie inside the mapping (new()); zeroed memory is a
        // valid bucket of atomics; the slice lives as long as self.
        unsafe { std::slice::from_raw_parts(self.base4(g), self.max4) }
    }

    fn buckets6(&self, g: usize) -> &[Bucket6] {
        // SAFETY: as buckets4.
        unsafe { std::slice::from_raw_parts(self.base6(g), self.max6) }
    }

    pub fn set_now(&self, unix_secs: u64) {
        self.hdr().now.store(unix_secs, Relaxed);
    }

    pub fn now(&self) -> u64 {
        self.hdr().now.load(Relaxed)
    }

    /// The lookup path: no allocation, no lock, no system call, and nothing that can panic (no
    /// slice indexing, no unwrap, no arithmetic that can overflow: see `find4`). Inlined into
    /// its callers so that a caller holding an IPv4 address compiles to the IPv4 probe alone.
    #[inline(always)]
    pub fn contains(&self, key: Key) -> bool {
        match key {
            Key::V4(k) => self.contains4(k),
            Key::V6(k) => self.read(|g, gen| self.find6(g, gen, k)) > self.now(),
        }
    }

    /// `contains` of an IPv4 address.
    #[inline(always)]
    pub fn contains4(&self, k: u32) -> bool {
        match self.lookup4(k) {
            Some(found) => found,
            None => self.contains4_slow(k),
        }
    }

    /// One pass of the seqlock over the home bucket, straight-line and without a call, so that
    /// a caller can keep its common path a leaf (no frame): `None` when a publish raced it or
    /// the chain goes on past the home bucket (under 1 % of lookups); then ask `contains`.
    /// A miss's 0 is below any clock.
    #[inline(always)]
    pub fn lookup4(&self, k: u32) -> Option<bool> {
        let h = self.hdr();
        let g = (h.current.load(Acquire) & 1) as usize;
        let gen = &h.gens[g];
        let s1 = gen.seq.load(Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let nb = gen.nb4.load(Relaxed) as usize;
        let i = slot_index(hash4(k, gen.seed.load(Relaxed)), nb);
        // SAFETY: i < max(nb, 1) <= max4 (find4), so the bucket is inside the reservation.
        let exp = scan4(unsafe { &*self.base4(g).add(i) }, k);
        fence(Acquire);
        if gen.seq.load(Relaxed) != s1 {
            return None;
        }
        // The clock only for a hit.
        match exp? {
            0 => Some(false),
            e => Some(e > h.now.load(Relaxed)),
        }
    }

    #[cold]
    #[inline(never)]
    fn contains4_slow(&self, k: u32) -> bool {
        self.read(|g, gen| self.find4(g, gen, k)) > self.now()
    }

    /// The expiry (unix seconds) of `key` while it is in force: for the admin commands and the
    /// ban keeper, not the lookup path.
    pub fn expiry(&self, key: Key) -> Option<u64> {
        let exp = match key {
            Key::V4(k) => self.read(|g, gen| self.find4(g, gen, k)),
            Key::V6(k) => self.read(|g, gen| self.find6(g, gen, k)),
        };
        Some(exp).filter(|&e| e > self.now())
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
    fn read<T>(&self, probe: impl Fn(usize, &Generation) -> T) -> T {
        let h = self.hdr();
        loop {
            let g = (h.current.load(Acquire) & 1) as usize;
            let gen = &h.gens[g];
            let s1 = gen.seq.load(Acquire);
            // Odd: the writer has moved on and retired or is rebuilding this one; read
            // `current` again.
            if s1 & 1 == 0 {
                let found = probe(g, gen);
                fence(Acquire);
                if gen.seq.load(Relaxed) == s1 {
                    return found;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// The expiry of `k` in generation `g`, 0 when it holds none (a stored expiry is never 0).
    /// Its home bucket inline; the rest of a chain (under 1 % of lookups) out of line.
    ///
    /// Why it stays in bounds without a clamp, even on a generation the writer is rebuilding:
    /// the bucket count `nb` is one atomic load, so it is some value the writer stored, and the
    /// writer stores only counts it clamped to the reservation at publish (or it is the 0 of a
    /// fresh mapping). `slot_index` is below `nb` (0 when `nb` is 0), `next_bucket` below `nb`
    /// or 0, and at least MIN_BUCKETS are reserved: every bucket read is reserved. The walk
    /// visits at most `nb` buckets, so it ends whatever a racing writer left in them. Nothing
    /// can overflow: `i + 1` with `i < nb <= max4`, `left - 1` only while `left > 1`.
    #[inline(always)]
    fn find4(&self, g: usize, gen: &Generation, k: u32) -> u64 {
        let nb = gen.nb4.load(Relaxed) as usize;
        let i = slot_index(hash4(k, gen.seed.load(Relaxed)), nb);
        // SAFETY: i < max(nb, 1) <= max4 (above), so the bucket is inside the reservation.
        let b = unsafe { &*self.base4(g).add(i) };
        match scan4(b, k) {
            Some(exp) => exp,
            None => self.walk4(g, nb, k, i),
        }
    }

    /// The chain after a full, flagged home bucket `i`.
    #[cold]
    #[inline(never)]
    fn walk4(&self, g: usize, nb: usize, k: u32, mut i: usize) -> u64 {
        let mut left = nb;
        loop {
            // SAFETY: as find4.
            let b = unsafe { &*self.base4(g).add(i) };
            if left <= 1 || !overflowed4(b) {
                return 0;
            }
            left -= 1;
            i = next_bucket(i, nb);
            // SAFETY: as find4.
            if let Some(exp) = scan4(unsafe { &*self.base4(g).add(i) }, k) {
                return exp;
            }
        }
    }

    /// As find4, for IPv6 buckets (the same bounds argument, with `nb6` and `max6`).
    #[inline(always)]
    fn find6(&self, g: usize, gen: &Generation, k: u128) -> u64 {
        let nb = gen.nb6.load(Relaxed) as usize;
        let mut i = slot_index(hash6(k, gen.seed.load(Relaxed)), nb);
        let mut left = nb;
        loop {
            // SAFETY: as find4.
            let b = unsafe { &*self.base6(g).add(i) };
            if let Some(exp) = scan6(b, k) {
                return exp;
            }
            if left <= 1 {
                return 0;
            }
            left -= 1;
            i = next_bucket(i, nb);
        }
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
        // The capacity is clamped here, once: readers trust the stored counts (find4).
        let nb4 = buckets4(v4.len()).min(self.max4);
        let nb6 = buckets6(v6.len()).min(self.max6);
        gen.seed.store(seed, Relaxed);

        let b4 = &self.buckets4(g)[..nb4];
        for b in b4 {
            b.0.iter().for_each(|s| s.store(0, Relaxed));
        }
        let mut n4 = 0u64;
        for &(k, exp) in v4 {
            n4 += insert4(b4, k, ((exp.max(1) as u64) << 32) | k as u64, slot_index(hash4(k, seed), nb4)) as u64;
        }

        let b6 = &self.buckets6(g)[..nb6];
        for b in b6 {
            b.clear();
        }
        let mut n6 = 0u64;
        for &(k, exp) in v6 {
            n6 += insert6(b6, k, exp.max(1), slot_index(hash6(k, seed), nb6)) as u64;
        }

        gen.nb4.store(nb4 as u64, Relaxed);
        gen.nb6.store(nb6 as u64, Relaxed);
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
    /// economy: if the kernel refuses (or the mapping is in huge pages, see Mapping::release),
    /// the pages simply stay, and the next publish clears the buckets it uses.
    fn retire(&self, g: usize) {
        let gen = &self.hdr().gens[g];
        gen.seq.store(gen.seq.load(Relaxed) | 1, Relaxed);
        // The odd sequence is visible before any page reads as zeros.
        fence(SeqCst);
        let nb4 = gen.nb4.load(Relaxed) as usize;
        let nb6 = gen.nb6.load(Relaxed) as usize;
        let _ = self.map4.release(self.off4[g], nb4 * size_of::<Bucket4>());
        let _ = self.map6.release(self.off6[g], nb6 * size_of::<Bucket6>());
    }
}

/// One IPv4 bucket: `Some(expiry)` of `k`, `Some(0)` when the chain ends here without it
/// (slots fill from the first, so an empty one means this bucket never overflowed; a full one
/// not flagged neither), `None` when it is full and flagged: the chain goes on.
#[inline(always)]
fn scan4(b: &Bucket4, k: u32) -> Option<u64> {
    for s in &b.0 {
        let v = s.load(Relaxed);
        if v == 0 {
            return Some(0);
        }
        if v as u32 == k {
            return Some(v >> 32);
        }
    }
    if overflowed4(b) {
        None
    } else {
        Some(0)
    }
}

/// The same for an IPv6 bucket: `None` when it is full and flagged: the chain goes on.
#[inline(always)]
fn scan6(b: &Bucket6, k: u128) -> Option<u64> {
    let (hi, lo) = ((k >> 64) as u64, k as u64);
    let (exps, overflowed) = b.expiries();
    for (a, exp) in b.addr.iter().zip(exps) {
        if exp == 0 {
            return Some(0);
        }
        if a[1].load(Relaxed) == lo && a[0].load(Relaxed) == hi {
            return Some(exp as u64);
        }
    }
    if overflowed {
        None
    } else {
        Some(0)
    }
}

/// Puts `k` (slot value `packed`) in the first free slot of its chain from bucket `i`, or keeps
/// the later expiry when the chain already holds it. True when it was new. The table never
/// fills: at most 3 entries per 8 slots. A bucket passed over full is flagged as overflowed.
fn insert4(b4: &[Bucket4], k: u32, packed: u64, mut i: usize) -> bool {
    loop {
        let b = &b4[i];
        for (n, s) in b.0.iter().enumerate() {
            let v = s.load(Relaxed);
            if v == 0 {
                s.store(packed, Relaxed);
                if n == V4_SLOTS - 1 {
                    // Just filled: nothing went past it yet.
                    order4(b, false);
                }
                return true;
            }
            if v as u32 == k {
                if packed > v {
                    s.store(packed, Relaxed);
                }
                return false;
            }
        }
        order4(b, true);
        i = next_bucket(i, b4.len());
    }
}

/// Sets the overflow flag of a full IPv4 bucket: slot 0's address above slot 1's, or below.
fn order4(b: &Bucket4, overflowed: bool) {
    if overflowed4(b) != overflowed {
        let (a, c) = (b.0[0].load(Relaxed), b.0[1].load(Relaxed));
        b.0[0].store(c, Relaxed);
        b.0[1].store(a, Relaxed);
    }
}

fn insert6(b6: &[Bucket6], k: u128, exp: u32, mut i: usize) -> bool {
    let (hi, lo) = ((k >> 64) as u64, k as u64);
    loop {
        let b = &b6[i];
        let (exps, _) = b.expiries();
        for (slot, (a, e)) in b.addr.iter().zip(exps).enumerate() {
            if e == 0 {
                a[0].store(hi, Relaxed);
                a[1].store(lo, Relaxed);
                b.set_expiry(slot, exp);
                return true;
            }
            if a[0].load(Relaxed) == hi && a[1].load(Relaxed) == lo {
                if exp > e {
                    b.set_expiry(slot, exp);
                }
                return false;
            }
        }
        b.set_overflowed();
        i = next_bucket(i, b6.len());
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
        assert!(t.buckets4(old).iter().all(|b| b.0.iter().all(|s| s.load(Relaxed) == 0)), "its IPv4 pages were not released");
        assert!(t.buckets6(old).iter().all(|b| b.exp01.load(Relaxed) == 0 && b.addr[0][0].load(Relaxed) == 0), "its IPv6 pages were not released");
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

    /// Keys of generation-to-be `seed` with `nb` buckets that hash to bucket `want`.
    fn aimed4(seed: u64, nb: usize, want: usize, n: usize, from: u32) -> Vec<u32> {
        (from..).filter(|&k| slot_index(hash4(k, seed), nb) == want).take(n).collect()
    }

    #[test]
    fn overflow_chains_wrap_around_and_keep_the_later_expiry() {
        // 30 entries (28 distinct): 10 buckets. 20 of them aim at the last bucket: it fills,
        // and the rest overflow into buckets 0 and 1 (wrapping), which hold their own as well.
        let seed = 0x5eed;
        let nb = buckets4(30);
        assert_eq!(nb, 10);
        let last = aimed4(seed, nb, nb - 1, 20, 1);
        let first = aimed4(seed, nb, 0, 4, 1);
        let other = aimed4(seed, nb, 4, 4, 1);
        let mut v4: Vec<(u32, u32)> = last.iter().chain(&first).chain(&other).map(|&k| (k, 500)).collect();
        // Duplicates of chained keys: the later expiry wins, whichever comes first.
        v4.push((last[19], 900));
        v4.push((last[18], 100));
        let t = Table::new(30).unwrap();
        t.set_now(10);
        assert_eq!(t.publish(&Entries { v4: &v4, v6: &[] }, seed), (28, 0));
        let h = t.hdr();
        let g = h.current.load(Relaxed) as usize;
        let b = t.buckets4(g);
        assert!(b[nb - 1].0.iter().all(|s| s.load(Relaxed) != 0) && overflowed4(&b[nb - 1]), "the last bucket is full and flagged");
        assert!(b[0].0.iter().all(|s| s.load(Relaxed) != 0), "bucket 0 took the wrapped overflow");
        assert!(!overflowed4(&b[0]) || b[1].0[0].load(Relaxed) != 0);
        assert!(b[4].0[7].load(Relaxed) == 0, "a bucket with room is never flagged");
        for &(k, _) in &v4 {
            assert!(t.contains(Key::V4(k)), "{k} not found");
        }
        assert_eq!(t.expiry(Key::V4(last[19])), Some(900));
        assert_eq!(t.expiry(Key::V4(last[18])), Some(500));
        // Misses aimed at the chain walk it and stop; misses elsewhere stop at once.
        for k in aimed4(seed, nb, nb - 1, 40, 1).into_iter().skip(20).chain(aimed4(seed, nb, 0, 20, 1).into_iter().skip(4)) {
            assert!(!t.contains(Key::V4(k)));
        }
    }

    #[test]
    fn a_full_bucket_that_never_overflowed_ends_a_miss() {
        // Exactly 8 entries in one bucket: full, not flagged; a miss there stops at it.
        let seed = 3;
        let nb = buckets4(24);
        let full = aimed4(seed, nb, 2, 16, 1);
        let v4: Vec<(u32, u32)> = full[..8].iter().map(|&k| (k, 50)).collect();
        let t = Table::new(24).unwrap();
        t.publish(&Entries { v4: &v4, v6: &[] }, seed);
        // 8 entries only: the generation has MIN_BUCKETS buckets, not nb. Aim again.
        let nb = buckets4(8);
        let full = aimed4(seed, nb, 2, 16, 1);
        let v4: Vec<(u32, u32)> = full[..8].iter().map(|&k| (k, 50)).collect();
        t.publish(&Entries { v4: &v4, v6: &[] }, seed);
        let g = t.hdr().current.load(Relaxed) as usize;
        let b = &t.buckets4(g)[2];
        assert!(b.0.iter().all(|s| s.load(Relaxed) != 0) && !overflowed4(b));
        assert!(full[..8].iter().all(|&k| t.contains(Key::V4(k))));
        assert!(full[8..].iter().all(|&k| !t.contains(Key::V4(k))));
    }

    #[test]
    fn ipv6_overflow_chains() {
        let seed = 11;
        let n = 8;
        // 9 entries with the duplicate: 12 buckets.
        let nb = buckets6(n + 1);
        assert_eq!(nb, 12);
        let aimed: Vec<u128> = (1u128..).map(|i| 0x2001_0db8u128 << 96 | i).filter(|&k| slot_index(hash6(k, seed), nb) == nb - 1).take(12).collect();
        let v6: Vec<(u128, u32)> = aimed[..n].iter().map(|&k| (k, 70)).chain([(aimed[0], 80)]).collect();
        let t = Table::new(n + 1).unwrap();
        t.set_now(1);
        assert_eq!(t.publish(&Entries { v4: &[], v6: &v6 }, seed), (0, n));
        let g = t.hdr().current.load(Relaxed) as usize;
        let b = t.buckets6(g);
        // 3 + 3 + 2 from the last bucket on, wrapping: the first two flagged, the third not.
        assert!(b[nb - 1].expiries().1 && b[0].expiries().1);
        assert!(!b[1].expiries().1 && b[1].expiries().0[1] != 0 && b[1].expiries().0[2] == 0);
        assert!(aimed[..n].iter().all(|&k| t.contains(Key::V6(k))));
        assert!(aimed[n..].iter().all(|&k| !t.contains(Key::V6(k))));
        assert_eq!(t.expiry(Key::V6(aimed[0])), Some(80));
    }

    /// The layout's promise: at the chosen loads, a miss stops at its first line in over 99 %
    /// of cases (its home bucket is uniform: the share of buckets not flagged).
    #[test]
    fn misses_stop_at_their_first_line() {
        let n = 200_000;
        let t = Table::new(n).unwrap();
        let v4: Vec<(u32, u32)> = (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761), 9)).collect();
        let v6: Vec<(u128, u32)> = (0..n as u128).map(|i| ((0x2a01u128 << 112) | i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c), 9)).collect();
        t.publish(&Entries { v4: &v4, v6: &v6 }, 0xabcdef);
        let g = t.hdr().current.load(Relaxed) as usize;
        let nb4 = t.hdr().gens[g].nb4.load(Relaxed) as usize;
        let nb6 = t.hdr().gens[g].nb6.load(Relaxed) as usize;
        let over4 = t.buckets4(g)[..nb4].iter().filter(|b| b.0[7].load(Relaxed) != 0 && overflowed4(b)).count();
        let over6 = t.buckets6(g)[..nb6].iter().filter(|b| b.expiries().1).count();
        let (p4, p6) = (over4 as f64 / nb4 as f64, over6 as f64 / nb6 as f64);
        eprintln!("overflowed buckets: IPv4 {:.3} %, IPv6 {:.3} %", 100.0 * p4, 100.0 * p6);
        assert!(p4 < 0.01 && p6 < 0.01, "IPv4 {p4}, IPv6 {p6}");
        // Bytes per entry, one generation: IPv4 <= 24, IPv6 85.
        assert!((nb4 * 64) as f64 / n as f64 <= 24.0);
        assert_eq!(nb6 * 64 / n, 85);
    }

    /// A reader that loads a bucket count other than its generation's (a publish raced it)
    /// stays inside the mapping and ends: any count the writer stores is clamped to the
    /// reservation, and the walk is bounded. Here: a generation whose every bucket reads full
    /// and flagged, the worst a racing writer could leave.
    #[test]
    fn a_walk_over_full_flagged_buckets_ends() {
        let t = Table::new(100).unwrap();
        t.publish(&Entries { v4: &[(1, 9)], v6: &[(1, 9)] }, 1);
        let g = t.hdr().current.load(Relaxed) as usize;
        for b in t.buckets4(g) {
            for (i, s) in b.0.iter().enumerate() {
                s.store(((9u64) << 32) | (100 - i as u64), Relaxed);
            }
        }
        for b in t.buckets6(g) {
            for w in [&b.exp01, &b.addr[0][0], &b.addr[1][0], &b.addr[2][0]] {
                w.store(7, Relaxed);
            }
            b.exp2.store(7 | 1 << 32, Relaxed);
        }
        assert!(!t.contains(Key::V4(5)));
        assert!(!t.contains(Key::V6(5)));
    }

    #[test]
    fn huge_pages_fall_back_to_normal_pages() {
        // More than the pool has free (none on a machine that reserved none): the table is
        // made all the same, in normal pages, with the reason.
        let free = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines().find(|l| l.starts_with("HugePages_Free:"))?.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
        let max = (free.unwrap_or(0) + 1) * crate::os::HUGE_PAGE / 32 + 1000;
        let t = Table::with_pages(max, true).unwrap();
        assert_eq!(t.huge(), (false, false));
        assert_eq!(t.huge_refused().len(), 2, "{:?}", t.huge_refused());
        assert!(t.huge_refused()[0].starts_with("the IPv4 part ("), "{:?}", t.huge_refused());
        t.publish(&Entries { v4: &[(7, 9)], v6: &[] }, 1);
        assert!(t.contains(Key::V4(7)));
        let t = Table::with_pages(10, false).unwrap();
        assert!(t.huge_refused().is_empty());
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
