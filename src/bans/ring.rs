//! The queue from the SIP workers to the refresher: a bounded ring in shared memory.
//!
//! `apiban_ban` runs in a SIP worker, which must never wait and makes no system call: it claims
//! a slot with one compare-and-swap, writes the request, and marks the slot ready. Only the
//! refresher's ban keeper takes from it. Many producers in many processes, one consumer: the
//! bounded queue of D. Vyukov, each slot carrying a sequence number that says whose turn it is.
//! A full ring refuses the request at once (the caller counts it in `ban_drops`).
//!
//! A producer that dies between its claim and its ready mark (a worker killed mid-call) would
//! hold the consumer at that slot for ever; so the consumer skips a slot claimed for longer than
//! `STUCK` while later ones are ready, and the late producer, should it still come back, finds
//! its slot gone and counts a drop. All access is through atomics on `MAP_SHARED` memory.

use crate::addr::Key;
use crate::os::Mapping;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// Slots in the ring: a burst this large between two passes of the keeper (every 10 ms) is
/// queued; beyond it, dropped and counted.
pub const SLOTS: usize = 4096;
/// Words of one slot: two cache lines.
const WORDS: usize = 16;
/// The longest reason, in bytes (`APIBAN_REASON_LEN`).
pub const REASON_MAX: usize = crate::boundary::APIBAN_REASON_LEN as usize;
const _: () = assert!(REASON_MAX == 64, "a slot keeps the reason in 8 words");

/// How long a claimed slot may stay unwritten before the consumer gives up on its producer.
const STUCK: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ban,
    Unban,
}

/// One request as a worker hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub key: Key,
    /// Seconds (bans only).
    pub ttl: u32,
    /// Unix seconds by the table's coarse clock.
    pub made_at: u64,
    pub reason: [u8; REASON_MAX],
    pub reason_len: u8,
}

impl Request {
    pub fn reason(&self) -> &str {
        std::str::from_utf8(&self.reason[..self.reason_len as usize]).unwrap_or("")
    }
}

#[repr(C, align(64))]
struct Cursor(AtomicU64);

#[repr(C)]
struct Header {
    /// Next position producers claim.
    enq: Cursor,
    /// Next position the consumer takes.
    deq: Cursor,
}

#[repr(C, align(64))]
struct Slot([AtomicU64; WORDS]);

pub struct Ring {
    map: Mapping,
    /// Consumer only (process-local): since when the head slot has been claimed but not ready.
    stuck_since: std::cell::Cell<Option<Instant>>,
}

// SAFETY: the Cell is touched only by the single consumer thread (the keeper); everything else
// is atomics in shared memory.
unsafe impl Sync for Ring {}

impl Ring {
    pub fn new() -> io::Result<Ring> {
        let map = Mapping::new(std::mem::size_of::<Header>() + SLOTS * std::mem::size_of::<Slot>())?;
        let r = Ring { map, stuck_since: std::cell::Cell::new(None) };
        // Slot i is free for position i.
        for (i, s) in r.slots().iter().enumerate() {
            s.0[0].store(i as u64, Relaxed);
        }
        Ok(r)
    }

    fn hdr(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (zeroed atomics are valid) and outlives self.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: SLOTS slots follow the header inside the mapping (sized in new()); the
        // header's size is a multiple of 64, so they are aligned.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(std::mem::size_of::<Header>()) as *const Slot, SLOTS) }
    }

    /// Queues a request: no wait, no allocation, no system call. False when the ring is full
    /// (or the slot was given up as stuck: the same for the caller, a drop).
    pub fn push(&self, r: &Request) -> bool {
        let enq = &self.hdr().enq.0;
        let mut pos = enq.load(Relaxed);
        let slot = loop {
            let slot = &self.slots()[pos as usize % SLOTS];
            let seq = slot.0[0].load(Acquire);
            let dif = seq.wrapping_sub(pos) as i64;
            if dif == 0 {
                match enq.compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                return false;
            } else {
                pos = enq.load(Relaxed);
            }
        };
        let w = &slot.0;
        let (hi, lo, fam) = match r.key {
            Key::V4(a) => (0, a as u64, 4u64),
            Key::V6(a) => ((a >> 64) as u64, a as u64, 6),
        };
        let op = match r.op {
            Op::Ban => 1u64,
            Op::Unban => 2,
        };
        w[1].store(hi, Relaxed);
        w[2].store(lo, Relaxed);
        w[3].store(op | fam << 8 | (r.reason_len as u64) << 16 | (r.ttl as u64) << 32, Relaxed);
        w[4].store(r.made_at, Relaxed);
        for (i, chunk) in r.reason.chunks(8).enumerate() {
            w[5 + i].store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Relaxed);
        }
        // Ready, unless the consumer gave up on this slot meanwhile.
        slot.0[0].compare_exchange(pos, pos + 1, Release, Relaxed).is_ok()
    }

    /// Takes the next ready request (the keeper only). None when the ring is empty or the
    /// head is still being written.
    pub fn pop(&self) -> Option<Request> {
        loop {
            let deq = &self.hdr().deq.0;
            let pos = deq.load(Relaxed);
            let slot = &self.slots()[pos as usize % SLOTS];
            let seq = slot.0[0].load(Acquire);
            if seq == pos + 1 {
                let r = read(&slot.0);
                slot.0[0].store(pos + SLOTS as u64, Release);
                deq.store(pos + 1, Relaxed);
                self.stuck_since.set(None);
                if let Some(r) = r {
                    return Some(r);
                }
                continue;
            }
            // Claimed (enq is past it) but not ready: a producer mid-write, or one that died.
            if seq == pos && self.hdr().enq.0.load(Relaxed) > pos {
                let since = *self.stuck_since.get().get_or_insert_with(Instant::now);
                self.stuck_since.set(Some(since));
                if since.elapsed() >= STUCK && slot.0[0].compare_exchange(pos, pos + SLOTS as u64, Release, Relaxed).is_ok() {
                    deq.store(pos + 1, Relaxed);
                    self.stuck_since.set(None);
                    continue;
                }
            }
            return None;
        }
    }

    /// Requests waiting (approximate while producers are active).
    #[cfg(any(test, feature = "bench"))]
    pub fn len(&self) -> u64 {
        self.hdr().enq.0.load(Relaxed) - self.hdr().deq.0.load(Relaxed)
    }

    #[cfg(any(test, feature = "bench"))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A slot's request, or None for one that does not decode (a slot two producers raced for
/// after a stuck one was skipped: dropped rather than guessed at).
fn read(w: &[AtomicU64; WORDS]) -> Option<Request> {
    let (hi, lo) = (w[1].load(Relaxed), w[2].load(Relaxed));
    let meta = w[3].load(Relaxed);
    let op = match meta & 0xff {
        1 => Op::Ban,
        2 => Op::Unban,
        _ => return None,
    };
    let key = match (meta >> 8) & 0xff {
        4 if hi == 0 && lo <= u32::MAX as u64 => Key::V4(lo as u32),
        6 => Key::V6((hi as u128) << 64 | lo as u128),
        _ => return None,
    };
    let reason_len = ((meta >> 16) & 0xff) as u8;
    if reason_len as usize > REASON_MAX {
        return None;
    }
    let mut reason = [0u8; REASON_MAX];
    for (i, chunk) in reason.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&w[5 + i].load(Relaxed).to_le_bytes());
    }
    std::str::from_utf8(&reason[..reason_len as usize]).ok()?;
    Some(Request { op, key, ttl: (meta >> 32) as u32, made_at: w[4].load(Relaxed), reason, reason_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u32) -> Request {
        let mut reason = [0u8; REASON_MAX];
        reason[..4].copy_from_slice(b"pike");
        Request { op: Op::Ban, key: Key::V4(n), ttl: 60, made_at: 1_700_000_000, reason, reason_len: 4 }
    }

    #[test]
    fn requests_come_out_in_order_and_a_full_ring_refuses() {
        let r = Ring::new().unwrap();
        for n in 0..SLOTS as u32 {
            assert!(r.push(&req(n)));
        }
        assert!(!r.push(&req(99)), "full");
        for n in 0..SLOTS as u32 {
            assert_eq!(r.pop(), Some(req(n)));
        }
        assert_eq!(r.pop(), None);
        // Round and round: positions wrap over the slots.
        for lap in 0..3u32 {
            for n in 0..1000 {
                assert!(r.push(&req(lap * 1000 + n)));
            }
            for n in 0..1000 {
                assert_eq!(r.pop().unwrap().key, Key::V4(lap * 1000 + n));
            }
        }
        let mut six = req(0);
        six.key = Key::V6(0x2001_0db8 << 96 | 7);
        six.op = Op::Unban;
        assert!(r.push(&six));
        assert_eq!(r.pop(), Some(six));
    }

    #[test]
    fn producers_in_threads_lose_nothing_they_were_told_was_queued() {
        let r = std::sync::Arc::new(Ring::new().unwrap());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || (0..20_000u32).filter(|n| r.push(&req(t << 24 | n))).count())
            })
            .collect();
        let mut got = 0usize;
        let mut seen = std::collections::HashSet::new();
        let mut done = 0;
        while done < 4 || !r.is_empty() {
            match r.pop() {
                Some(q) => {
                    assert!(seen.insert(q.key), "each request once");
                    assert_eq!(q.reason(), "pike");
                    got += 1;
                }
                None => done = threads.iter().filter(|t| t.is_finished()).count(),
            }
        }
        let queued: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(got, queued);
        assert!(queued > 0);
    }

    #[test]
    fn a_producer_that_died_mid_write_holds_the_ring_no_longer_than_stuck() {
        let r = Ring::new().unwrap();
        // A claim without its ready mark, as a worker killed inside push() leaves it.
        r.hdr().enq.0.store(1, Relaxed);
        assert!(r.push(&req(2)));
        assert_eq!(r.pop(), None, "held at the claimed slot");
        r.stuck_since.set(Some(Instant::now() - STUCK));
        assert_eq!(r.pop().map(|q| q.key), Some(Key::V4(2)));
        // The late producer's ready mark fails: it is told it was dropped.
        assert!(r.slots()[0].0[0].compare_exchange(0, 1, Release, Relaxed).is_err());
    }
}
