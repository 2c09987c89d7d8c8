//! The local bans as the admin commands read them (`apiban.lookup`, `apiban.bans`): who made
//! each, when, why, until when. The SIP workers never read this; they probe the ban tables.
//!
//! One shared mapping, written only by the ban keeper in the refresher (at most once a second,
//! or at once when an admin command waits for a change: a flood of bans must not rewrite it at
//! every pass), read by whichever process serves RPC/MI: two generations of fixed-size records, newest first, published like
//! the table (build the unpublished one, flip `current`) with a sequence number per generation
//! that a reader checks after copying, and retries on a change.

use super::{Ban, Kind};
use crate::addr::Key;
use crate::os::Mapping;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering::*};

const WORDS: usize = 24;
const TEXT_WORDS: usize = 8;
/// How often a reader retries a copy that a publish raced. Publishes are rare (a ban, an
/// expiry): this is only a bound against a writer that died mid-publish.
const TRIES: usize = 100;

#[repr(C, align(64))]
struct Gen {
    seq: AtomicU64,
    len: AtomicU64,
}

#[repr(C, align(64))]
struct Header {
    current: AtomicU64,
    /// Set by an admin command that waits for a change: the keeper then publishes at its next
    /// pass rather than at its own pace.
    wanted: AtomicU64,
    /// Publishes so far: an admin command that asked for one waits for this to move.
    published: AtomicU64,
    gens: [Gen; 2],
}

#[repr(C)]
struct Slot([AtomicU64; WORDS]);

pub struct Board {
    map: Mapping,
    max: usize,
}

impl Board {
    pub fn new(max: usize) -> io::Result<Board> {
        let len = std::mem::size_of::<Header>() + 2 * max * std::mem::size_of::<Slot>();
        Ok(Board { map: Mapping::new(len)?, max })
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (zeroed atomics are valid) and outlives self.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn slots(&self, g: usize) -> &[Slot] {
        // SAFETY: two generations of `max` slots follow the header inside the mapping.
        unsafe {
            let base = self.map.as_ptr().add(std::mem::size_of::<Header>()) as *const Slot;
            std::slice::from_raw_parts(base.add(g * self.max), self.max)
        }
    }

    /// Asks the keeper for a publish at its next pass (an admin command waiting to see a change).
    pub fn want(&self) {
        self.hdr().wanted.store(1, Relaxed);
    }

    pub fn published(&self) -> u64 {
        self.hdr().published.load(Acquire)
    }

    /// Whether a publish was asked for since the last call (the keeper only).
    pub fn take_wanted(&self) -> bool {
        self.hdr().wanted.swap(0, Relaxed) != 0
    }

    /// Publishes `bans` (newest first, at most `max`). The keeper only.
    pub fn publish(&self, bans: &[(Key, &Ban)]) {
        let h = self.hdr();
        let g = (h.current.load(Relaxed) & 1) as usize ^ 1;
        let gen = &h.gens[g];
        let odd = gen.seq.load(Relaxed) | 1;
        gen.seq.store(odd, Relaxed);
        fence(Release);
        let n = bans.len().min(self.max);
        for (slot, (key, ban)) in self.slots(g).iter().zip(bans) {
            write(slot, *key, ban);
        }
        gen.len.store(n as u64, Relaxed);
        gen.seq.store(odd.wrapping_add(1), Release);
        h.current.store(g as u64, Release);
        h.published.fetch_add(1, Release);
    }

    /// Runs `f` on a consistent copy of the published records (None: a writer died mid-publish).
    fn read<T>(&self, f: impl Fn(&[Slot]) -> T) -> Option<T> {
        let h = self.hdr();
        for _ in 0..TRIES {
            let g = (h.current.load(Acquire) & 1) as usize;
            let gen = &h.gens[g];
            let s1 = gen.seq.load(Acquire);
            if s1 & 1 == 0 {
                let n = (gen.len.load(Relaxed) as usize).min(self.max);
                let out = f(&self.slots(g)[..n]);
                fence(Acquire);
                if gen.seq.load(Relaxed) == s1 {
                    return Some(out);
                }
            }
            std::thread::yield_now();
        }
        None
    }

    /// The record of `key`, if it has one.
    pub fn find(&self, key: Key) -> Option<(Key, Ban)> {
        self.read(|slots| slots.iter().map(decode).find(|(k, _)| *k == Some(key)).and_then(|(k, b)| Some((k?, b?)))).flatten()
    }

    /// The first `max` records (newest first) and how many there are.
    pub fn list(&self, max: usize) -> (Vec<(Key, Ban)>, usize) {
        self.read(|slots| (slots.iter().take(max).filter_map(|s| match decode(s) { (Some(k), Some(b)) => Some((k, b)), _ => None }).collect(), slots.len()))
            .unwrap_or_default()
    }
}

fn put_text(words: &[AtomicU64], text: &str) -> usize {
    let b = text.as_bytes();
    let n = b.len().min(words.len() * 8);
    let mut buf = [0u8; TEXT_WORDS * 8];
    buf[..n].copy_from_slice(&b[..n]);
    for (w, c) in words.iter().zip(buf.chunks(8)) {
        w.store(u64::from_le_bytes(c.try_into().expect("8 bytes")), Relaxed);
    }
    n
}

fn get_text(words: &[AtomicU64], len: usize) -> String {
    let mut buf = [0u8; TEXT_WORDS * 8];
    for (w, c) in words.iter().zip(buf.chunks_mut(8)) {
        c.copy_from_slice(&w.load(Relaxed).to_le_bytes());
    }
    String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned()
}

fn write(slot: &Slot, key: Key, ban: &Ban) {
    let w = &slot.0;
    let (hi, lo, fam) = match key {
        Key::V4(a) => (0, a as u64, 4u64),
        Key::V6(a) => ((a >> 64) as u64, a as u64, 6),
    };
    w[0].store(hi, Relaxed);
    w[1].store(lo, Relaxed);
    let node_len = put_text(&w[5..5 + TEXT_WORDS], &ban.node);
    let reason_len = put_text(&w[5 + TEXT_WORDS..5 + 2 * TEXT_WORDS], &ban.reason);
    let kind = match ban.kind {
        Kind::Ban => 1u64,
        Kind::Exempt => 2,
        Kind::Lifted => 3,
    };
    w[2].store(kind | fam << 8 | (node_len as u64) << 16 | (reason_len as u64) << 24, Relaxed);
    w[3].store(ban.made_at, Relaxed);
    w[4].store(ban.expires, Relaxed);
}

fn decode(slot: &Slot) -> (Option<Key>, Option<Ban>) {
    let w = &slot.0;
    let meta = w[2].load(Relaxed);
    let (hi, lo) = (w[0].load(Relaxed), w[1].load(Relaxed));
    let key = match (meta >> 8) & 0xff {
        4 => Some(Key::V4(lo as u32)),
        6 => Some(Key::V6((hi as u128) << 64 | lo as u128)),
        _ => None,
    };
    let kind = match meta & 0xff {
        1 => Kind::Ban,
        2 => Kind::Exempt,
        3 => Kind::Lifted,
        _ => return (key, None),
    };
    let node = get_text(&w[5..5 + TEXT_WORDS], ((meta >> 16) & 0xff) as usize);
    let reason = get_text(&w[5 + TEXT_WORDS..5 + 2 * TEXT_WORDS], ((meta >> 24) & 0xff) as usize);
    (key, Some(Ban { kind, made_at: w[3].load(Relaxed), expires: w[4].load(Relaxed), node, reason, pending: false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(node: &str, at: u64) -> Ban {
        Ban { kind: Kind::Ban, made_at: at, expires: at + 60, node: node.into(), reason: "pike flood".into(), pending: false }
    }

    #[test]
    fn records_round_trip_and_a_republish_replaces_them() {
        let b = Board::new(4).unwrap();
        assert_eq!(b.list(10), (vec![], 0));
        let a = ban("node-1", 100);
        let six = Ban { kind: Kind::Exempt, node: "n".repeat(64), ..ban("x", 90) };
        b.publish(&[(Key::V4(1), &a), (Key::V6(2 << 100), &six)]);
        assert_eq!(b.find(Key::V4(1)), Some((Key::V4(1), a.clone())));
        assert_eq!(b.find(Key::V6(2 << 100)).unwrap().1.node.len(), 64);
        assert_eq!(b.find(Key::V4(2)), None);
        let (l, n) = b.list(1);
        assert_eq!((l.len(), n), (1, 2));
        b.publish(&[(Key::V4(3), &a)]);
        assert_eq!(b.find(Key::V4(1)), None);
        assert_eq!(b.list(10).1, 1);
        // More than max: the first max are kept.
        let many: Vec<(Key, &Ban)> = (0..9).map(|i| (Key::V4(i), &a)).collect();
        b.publish(&many);
        assert_eq!(b.list(100).1, 4);
    }
}
