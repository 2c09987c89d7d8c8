//! The list a node holds, as listing times by address: the rules that every role of the
//! refresher applies to it (merge a pull, keep the newest under `max_entries`) and the step from
//! it to what the shared table stores (the entries still listed, with their expiry).
//!
//! A list is two sorted vectors, IPv4 and IPv6 apart (`Held`): a pull appends what each reply
//! brings and sorts once at its end, merges and comparisons are sequential walks, and nothing is
//! hashed. A `HashMap<Key, u32>` cost a SipHash and a 48-byte bucket per address, on random
//! cache lines that grow with the list (BENCHMARKS.md, "Targets missed").

use crate::addr::Key;
use std::cmp::Ordering;

/// Addresses with the time their batch listed them. After `normalize` (and in every list a
/// refresher holds) each vector is sorted by address with one entry per address; a pull
/// appends unsorted until its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub v4: Vec<(u32, u32)>,
    pub v6: Vec<(u128, u32)>,
    /// How many entries at the front of each vector are already sorted and unique.
    sorted: (usize, usize),
}

impl Held {
    /// From entries in any order; an address given twice keeps its last time, as a map's
    /// `collect` did.
    pub fn from_entries(entries: impl IntoIterator<Item = (Key, u32)>) -> Held {
        let mut h = Held::default();
        for (k, t) in entries {
            h.push(k, t);
        }
        h.v4.sort_by_key(|e| e.0);
        h.v6.sort_by_key(|e| e.0);
        dedup_last(&mut h.v4);
        dedup_last(&mut h.v6);
        h.sorted = (h.v4.len(), h.v6.len());
        h
    }

    pub fn push(&mut self, k: Key, t: u32) {
        match k {
            Key::V4(a) => self.v4.push((a, t)),
            Key::V6(a) => self.v6.push((a, t)),
        }
    }

    /// Entries, duplicates included until `normalize`.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Sorts by address and keeps one entry per address, with its newest time (a pull's rule:
    /// an address listed twice counts from its later listing).
    pub fn normalize(&mut self) {
        normalize_v4(&mut self.v4, self.sorted.0);
        normalize_max(&mut self.v6, self.sorted.1);
        self.sorted = (self.v4.len(), self.v6.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, u32)> + '_ {
        let v4 = self.v4.iter().map(|&(a, t)| (Key::V4(a), t));
        v4.chain(self.v6.iter().map(|&(a, t)| (Key::V6(a), t)))
    }

    pub fn entries(&self) -> Vec<(Key, u32)> {
        self.iter().collect()
    }

    /// The time of an address (normalized lists).
    #[cfg(test)]
    pub fn get(&self, k: Key) -> Option<u32> {
        match k {
            Key::V4(a) => find(&self.v4, a),
            Key::V6(a) => find(&self.v6, a),
        }
    }

    /// How many addresses of `other` this list does not hold (both normalized).
    pub fn count_missing(&self, other: &Held) -> usize {
        missing(&self.v4, &other.v4) + missing(&self.v6, &other.v6)
    }

    /// Keeps the entries whose time passes `keep`.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.v4.retain(|e| keep(e.1));
        self.v6.retain(|e| keep(e.1));
        self.sorted = (self.sorted.0.min(self.v4.len()), self.sorted.1.min(self.v6.len()));
    }

    pub fn min_time(&self) -> Option<u32> {
        self.v4.iter().map(|e| e.1).chain(self.v6.iter().map(|e| e.1)).min()
    }

    /// The entries of `got` (normalized) that are new here or listed later than here: what a
    /// merge changes.
    pub fn newer_in(&self, got: &Held) -> Vec<(Key, u32)> {
        let mut out = Vec::new();
        newer(&self.v4, &got.v4, |a, t| out.push((Key::V4(a), t)));
        newer(&self.v6, &got.v6, |a, t| out.push((Key::V6(a), t)));
        out
    }

    /// Lays `top` (normalized) over this list: its addresses take its times, as a map's
    /// extend() did. Returns how many were added.
    pub fn overlay(&mut self, top: Held) -> usize {
        let (v4, a4, _) = union(std::mem::take(&mut self.v4), top.v4, |_, new| new);
        let (v6, a6, _) = union(std::mem::take(&mut self.v6), top.v6, |_, new| new);
        (self.v4, self.v6) = (v4, v6);
        self.sorted = (self.v4.len(), self.v6.len());
        a4 + a6
    }

    /// Sets these times (an address given twice: its last one) and drops these addresses, in
    /// that order, as a map's insert and remove would. Returns (added, removed).
    pub fn apply(&mut self, add: Vec<(Key, u32)>, del: Vec<Key>) -> (usize, usize) {
        let added = self.overlay(Held::from_entries(add));
        let (mut d4, mut d6): (Vec<u32>, Vec<u128>) = (Vec::new(), Vec::new());
        for k in del {
            match k {
                Key::V4(a) => d4.push(a),
                Key::V6(a) => d6.push(a),
            }
        }
        let before = self.len();
        remove_sorted(&mut self.v4, d4);
        remove_sorted(&mut self.v6, d6);
        self.sorted = (self.v4.len(), self.v6.len());
        (added, before - self.len())
    }

    /// A digest of the list (normalized) and `salt`: equal lists give equal digests, lists that
    /// differ the same one with a chance of about 2^-64. Each step (xor a word, multiply by an
    /// odd constant, fold the high half down) is a bijection of the state, so no word is lost;
    /// not made against an adversary, who could at most spare a snapshot write.
    pub fn digest(&self, salt: u64) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let step = |h: u64, w: u64| {
            let h = (h ^ w).wrapping_mul(K);
            h ^ h >> 32
        };
        let mut h = step(step(step(0x243f_6a88_85a3_08d3, salt), self.v4.len() as u64), self.v6.len() as u64);
        for &(a, t) in &self.v4 {
            h = step(h, (a as u64) << 32 | t as u64);
        }
        for &(a, t) in &self.v6 {
            h = step(step(step(h, a as u64), (a >> 64) as u64), t as u64);
        }
        h
    }
}

#[cfg(test)]
fn find<A: Ord + Copy>(v: &[(A, u32)], a: A) -> Option<u32> {
    v.binary_search_by(|e| e.0.cmp(&a)).ok().map(|i| v[i].1)
}

/// Sorts `v` (whose first `sorted` entries are sorted and unique already) by address, then by
/// time, and keeps the last entry of each address: its newest time.
fn normalize_max<A: Ord + Copy>(v: &mut Vec<(A, u32)>, sorted: usize) {
    if sorted == v.len() {
        return;
    }
    if sorted == 0 {
        v.sort_unstable();
    } else {
        // A sorted run and a tail: the stable sort finds the run and merges in one pass.
        v[sorted..].sort_unstable();
        v.sort();
    }
    dedup_last(v);
}

/// From this many IPv4 entries on, `normalize_v4` sorts by radix (below, comparisons win).
const RADIX_FROM: usize = 1 << 16;

/// `normalize_max` for IPv4, the list APIBAN sends, made cheaper: each entry packed into one
/// u64 (address above time) so that a comparison is one instruction, and a long list sorted by
/// an LSD radix sort on the address bytes (four sequential passes, where a comparison sort's
/// n log n grows with the list: 35 ns an entry at 1 M against 14 at 1 k).
fn normalize_v4(v: &mut Vec<(u32, u32)>, sorted: usize) {
    if sorted == v.len() {
        return;
    }
    let mut w: Vec<u64> = v.iter().map(|&(a, t)| (a as u64) << 32 | t as u64).collect();
    if w.len() >= RADIX_FROM {
        radix_by_address(&mut w);
    } else {
        w.sort_unstable();
    }
    v.clear();
    for x in w {
        let (a, t) = ((x >> 32) as u32, x as u32);
        match v.last_mut() {
            Some(last) if last.0 == a => last.1 = last.1.max(t),
            _ => v.push((a, t)),
        }
    }
}

/// Sorts packed entries by their address (the high 32 bits), stably, one byte a pass; a pass
/// where every entry has the same byte is skipped.
fn radix_by_address(w: &mut Vec<u64>) {
    let mut counts = [[0usize; 256]; 4];
    for &x in w.iter() {
        for (p, c) in counts.iter_mut().enumerate() {
            c[(x >> (32 + 8 * p)) as usize & 255] += 1;
        }
    }
    let mut buf = vec![0u64; w.len()];
    for (p, c) in counts.iter().enumerate() {
        if c.contains(&w.len()) {
            continue;
        }
        let mut at = [0usize; 256];
        let mut sum = 0;
        for (slot, &n) in at.iter_mut().zip(c) {
            *slot = sum;
            sum += n;
        }
        for &x in w.iter() {
            let b = (x >> (32 + 8 * p)) as usize & 255;
            buf[at[b]] = x;
            at[b] += 1;
        }
        std::mem::swap(w, &mut buf);
    }
}

/// Keeps the last of consecutive entries of one address (the newest, after sorting by time too;
/// the last given, after a stable sort by address).
fn dedup_last<A: PartialEq + Copy>(v: &mut Vec<(A, u32)>) {
    v.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 = next.1;
        }
        same
    });
}

fn missing<A: Ord>(have: &[(A, u32)], other: &[(A, u32)]) -> usize {
    let (mut i, mut n) = (0, 0);
    for e in other {
        while i < have.len() && have[i].0 < e.0 {
            i += 1;
        }
        if i == have.len() || have[i].0 != e.0 {
            n += 1;
        }
    }
    n
}

fn newer<A: Ord + Copy>(have: &[(A, u32)], got: &[(A, u32)], mut out: impl FnMut(A, u32)) {
    let mut i = 0;
    for &(a, t) in got {
        while i < have.len() && have[i].0 < a {
            i += 1;
        }
        if i == have.len() || have[i].0 != a || t > have[i].1 {
            out(a, t);
        }
    }
}

/// The union of two sorted, unique lists; an address in both takes `both(old, new)`. Returns
/// it with (added, changed): addresses only in `new`, and those whose time `both` changed.
fn union<A: Ord + Copy>(old: Vec<(A, u32)>, new: Vec<(A, u32)>, both: impl Fn(u32, u32) -> u32) -> (Vec<(A, u32)>, usize, usize) {
    if new.is_empty() {
        return (old, 0, 0);
    }
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut added, mut changed) = (0, 0);
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        match old[i].0.cmp(&new[j].0) {
            Ordering::Less => {
                out.push(old[i]);
                i += 1;
            }
            Ordering::Greater => {
                out.push(new[j]);
                added += 1;
                j += 1;
            }
            Ordering::Equal => {
                let t = both(old[i].1, new[j].1);
                changed += (t != old[i].1) as usize;
                out.push((old[i].0, t));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&old[i..]);
    added += new.len() - j;
    out.extend_from_slice(&new[j..]);
    (out, added, changed)
}

fn remove_sorted<A: Ord + Copy>(v: &mut Vec<(A, u32)>, mut del: Vec<A>) {
    if del.is_empty() {
        return;
    }
    del.sort_unstable();
    let mut j = 0;
    v.retain(|e| {
        while j < del.len() && del[j] < e.0 {
            j += 1;
        }
        !(j < del.len() && del[j] == e.0)
    });
}

/// Merges an incremental pull (normalized) into what is held: new addresses are added, a
/// re-listed one takes the newer listing time. Returns (added, re-listed with a newer time).
pub fn merge(master: &mut Held, mut got: Held) -> (usize, usize) {
    got.normalize();
    let (v4, a4, r4) = union(std::mem::take(&mut master.v4), got.v4, u32::max);
    let (v6, a6, r6) = union(std::mem::take(&mut master.v6), got.v6, u32::max);
    (master.v4, master.v6) = (v4, v6);
    master.sorted = (master.v4.len(), master.v6.len());
    (a4 + a6, r4 + r6)
}

/// Keeps the `keep` most recently listed addresses; returns how many were left out. Among
/// addresses listed at the same time as the last one kept, the lowest addresses stay.
pub fn keep_newest(h: &mut Held, keep: usize) -> u64 {
    let n = h.len();
    if n <= keep {
        return 0;
    }
    if keep == 0 {
        *h = Held::default();
        return n as u64;
    }
    let (v4, v6) = newest(&mut h.v4, &mut h.v6, keep);
    (h.v4, h.v6) = (v4, v6);
    h.sorted = (h.sorted.0.min(h.v4.len()), h.sorted.1.min(h.v6.len()));
    (n - keep) as u64
}

/// Two lists of entries, one per family.
type Pair<A, B> = (Vec<(A, u32)>, Vec<(B, u32)>);

/// The `keep` entries (0 < keep < total) with the highest times, in their order.
fn newest<A: Copy, B: Copy>(a: &mut Vec<(A, u32)>, b: &mut Vec<(B, u32)>, keep: usize) -> Pair<A, B> {
    let mut times: Vec<u32> = a.iter().map(|e| e.1).chain(b.iter().map(|e| e.1)).collect();
    let (_, &mut cut, _) = times.select_nth_unstable_by(keep - 1, |x, y| y.cmp(x));
    let above = times.iter().filter(|&&t| t > cut).count();
    let mut ties = keep - above;
    let mut take = |t: u32| {
        t > cut
            || (t == cut && ties > 0 && {
                ties -= 1;
                true
            })
    };
    let a: Vec<_> = std::mem::take(a).into_iter().filter(|e| take(e.1)).collect();
    let b: Vec<_> = std::mem::take(b).into_iter().filter(|e| take(e.1)).collect();
    (a, b)
}

/// Entries still listed at `now`, as the table stores them (address, expiry), newest first
/// when more than `max` must be cut.
pub type LiveSets = (Vec<(u32, u32)>, Vec<(u128, u32)>);

/// What the table stores of a list: the entries still listed at `now` with their expiry, the
/// newest `max` when more are.
pub fn live(h: &Held, ttl: u64, now: u64, max: usize) -> LiveSets {
    let exp = |at: u32| (at as u64 + ttl).min(u32::MAX as u64);
    let mut v4: Vec<(u32, u32)> = Vec::with_capacity(h.v4.len());
    v4.extend(h.v4.iter().filter(|e| exp(e.1) > now).map(|&(a, at)| (a, exp(at) as u32)));
    let mut v6: Vec<(u128, u32)> = h.v6.iter().filter(|e| exp(e.1) > now).map(|&(a, at)| (a, exp(at) as u32)).collect();
    if v4.len() + v6.len() > max {
        if max == 0 {
            return (Vec::new(), Vec::new());
        }
        (v4, v6) = newest(&mut v4, &mut v6, max);
    }
    (v4, v6)
}

/// `live` of entries in any order (the snapshot read at start).
pub fn split_live(entries: &[(Key, u32)], ttl: u64, now: u64, max: usize) -> LiveSets {
    live(&Held::from_entries(entries.iter().copied()), ttl, now, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_live_drops_expired_and_keeps_the_newest() {
        let e = vec![(Key::V4(1), 100), (Key::V4(2), 200), (Key::V6(3), 300), (Key::V4(4), 10)];
        let (v4, v6) = split_live(&e, 50, 120, 10);
        assert_eq!(v4, vec![(1, 150), (2, 250)]);
        assert_eq!(v6, vec![(3, 350)]);
        let (v4, v6) = split_live(&e, 50, 120, 2);
        assert_eq!((v4, v6), (vec![(2, 250)], vec![(3, 350)]));
    }

    fn held(e: &[(Key, u32)]) -> Held {
        Held::from_entries(e.iter().copied())
    }

    #[test]
    fn the_oldest_listed_are_left_out_first() {
        let mut m = Held::from_entries((0..3000u32).rev().map(|i| (Key::V4(i), 1_700_000_000 + i)));
        assert_eq!(keep_newest(&mut m, 1000), 2000);
        assert_eq!(m.len(), 1000);
        assert!(m.iter().all(|(k, _)| matches!(k, Key::V4(i) if i >= 2000)));
        assert_eq!(keep_newest(&mut m, 1000), 0);
        // Across both families, ties kept up to the count.
        let mut m = held(&[(Key::V4(1), 5), (Key::V6(2), 9), (Key::V4(3), 7), (Key::V6(4), 7), (Key::V4(5), 1)]);
        assert_eq!(keep_newest(&mut m, 2), 3);
        assert_eq!(m.len(), 2);
        assert_eq!((m.get(Key::V6(2)), m.v4.len() + m.v6.len()), (Some(9), 2));
        assert!(m.get(Key::V4(3)).is_some() ^ m.get(Key::V6(4)).is_some());
        assert_eq!(keep_newest(&mut m, 0), 2);
        assert!(m.is_empty());
    }

    #[test]
    fn an_incremental_merge_adds_and_takes_the_newer_time() {
        let mut master = held(&[(Key::V4(1), 100), (Key::V4(2), 200)]);
        let got = held(&[(Key::V4(1), 150), (Key::V4(2), 150), (Key::V4(3), 300)]);
        assert_eq!(merge(&mut master, got), (1, 1));
        assert_eq!((master.get(Key::V4(1)), master.get(Key::V4(2)), master.get(Key::V4(3))), (Some(150), Some(200), Some(300)));
        // The same pull again changes nothing.
        let got = held(&[(Key::V4(1), 150), (Key::V4(3), 300)]);
        assert_eq!(merge(&mut master, got), (0, 0));
    }

    #[test]
    fn a_pull_appends_and_keeps_the_newest_time_of_each_address() {
        let mut p = Held::default();
        for (k, t) in [(Key::V4(9), 5), (Key::V6(7), 3), (Key::V4(1), 8), (Key::V4(9), 7), (Key::V4(9), 6), (Key::V6(7), 2)] {
            p.push(k, t);
        }
        assert_eq!(p.len(), 6);
        p.normalize();
        assert_eq!((p.v4.clone(), p.v6.clone()), (vec![(1, 8), (9, 7)], vec![(7, 3)]));
        // More appended after a normalize: the sorted front and the new tail merge.
        p.push(Key::V4(5), 1);
        p.push(Key::V4(1), 2);
        p.normalize();
        assert_eq!(p.v4, vec![(1, 8), (5, 1), (9, 7)]);
        // Against a map, on random appends.
        let mut x = 0x1234_5678u64;
        let mut map = std::collections::HashMap::new();
        let mut h = Held::default();
        for i in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = if x.is_multiple_of(5) { Key::V6((x % 300) as u128) } else { Key::V4((x % 900) as u32) };
            let t = (x >> 40) as u32 % 1000;
            let e = map.entry(k).or_insert(t);
            *e = (*e).max(t);
            h.push(k, t);
            if i % 700 == 0 {
                h.normalize();
            }
        }
        h.normalize();
        let mut want: Vec<(Key, u32)> = map.into_iter().collect();
        want.sort();
        assert_eq!(h.entries(), want);
    }

    #[test]
    fn a_long_pull_is_sorted_by_radix_with_the_same_result() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut h = Held::default();
        let mut want = std::collections::BTreeMap::new();
        for i in 0..(RADIX_FROM as u32 * 2) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct addresses in the low bytes and all of them above: duplicates, and a
            // byte shared by every entry (a pass skipped).
            let a = 0x0a00_0000 | (x as u32 & 0x00ff_0fff);
            let t = (x >> 40) as u32 ^ i;
            let e = want.entry(a).or_insert(t);
            *e = (*e).max(t);
            h.push(Key::V4(a), t);
        }
        h.normalize();
        assert_eq!(h.v4, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn deltas_and_comparisons_walk_the_sorted_lists() {
        let mut master = held(&[(Key::V4(1), 100), (Key::V4(2), 200), (Key::V6(3), 300)]);
        let got = held(&[(Key::V4(1), 100), (Key::V4(2), 250), (Key::V6(4), 10)]);
        assert_eq!(master.newer_in(&got), vec![(Key::V4(2), 250), (Key::V6(4), 10)]);
        assert_eq!((master.count_missing(&got), got.count_missing(&master)), (1, 1));
        // Insert (overwrite, last given wins) then remove, as a map's insert and remove.
        let r = master.apply(vec![(Key::V4(2), 50), (Key::V4(5), 1), (Key::V4(5), 2)], vec![Key::V6(3), Key::V4(9)]);
        assert_eq!(r, (1, 1));
        assert_eq!(master.entries(), vec![(Key::V4(1), 100), (Key::V4(2), 50), (Key::V4(5), 2)]);
        assert_eq!(master.min_time(), Some(2));
        // A snapshot's duplicates: the last one counts, as collect() into a map did.
        assert_eq!(held(&[(Key::V4(1), 9), (Key::V4(1), 3)]).entries(), vec![(Key::V4(1), 3)]);
    }

    #[test]
    fn the_digest_tells_lists_apart() {
        let a = held(&[(Key::V4(1), 100), (Key::V6(3), 300)]);
        let d = a.digest(7);
        assert_eq!(d, held(&[(Key::V6(3), 300), (Key::V4(1), 100)]).digest(7));
        assert_ne!(d, a.digest(8), "the last ID counts");
        assert_ne!(d, held(&[(Key::V4(1), 101), (Key::V6(3), 300)]).digest(7), "a time counts");
        assert_ne!(d, held(&[(Key::V4(1), 100), (Key::V4(3), 300)]).digest(7), "the family counts");
        assert_ne!(d, held(&[(Key::V4(1), 100)]).digest(7));
        assert_ne!(Held::default().digest(0), held(&[(Key::V4(0), 0)]).digest(0));
    }

    #[test]
    fn the_table_gets_the_live_entries_of_a_list() {
        let h = held(&[(Key::V4(1), 100), (Key::V4(2), 200), (Key::V6(3), 300), (Key::V4(4), 10)]);
        assert_eq!(live(&h, 50, 120, 10), (vec![(1, 150), (2, 250)], vec![(3, 350)]));
        assert_eq!(live(&h, 50, 120, 2), (vec![(2, 250)], vec![(3, 350)]));
        assert_eq!(live(&h, 50, 120, 0), (vec![], vec![]));
    }
}
