//! Local bans (issue 17): addresses this node, or another node of the fleet, banned for a time,
//! beside the feed's list.
//!
//! - A SIP worker's `apiban_ban` validates its arguments and queues the ban in `ring` (no wait,
//!   no system call). RPC/MI goes the same way and then waits to see it in force.
//! - The refresher's ban keeper (`keeper`, a thread of the refresher process) takes the queue,
//!   keeps every ban with who made it, when, why and until when, publishes them into two shared
//!   tables the workers probe (`bans`, and `exempt` for feed addresses an operator unbanned) and
//!   into `board` for the admin commands, writes them to a file beside the snapshot, and shares
//!   them through Redis in a fleet (`share`).
//!
//! A lifted ban stays as a record of kind `Lifted` until the ban would have expired, so that a
//! node that missed the unban (cut off from Redis at the time) does not bring it back: between
//! two records of one address the later made wins, on every node and in Redis alike.

pub mod admin;
pub mod board;
pub mod keeper;
pub mod ring;
mod share;
pub mod store;

use crate::addr::{self, Key};
use crate::boundary::{APIBAN_BAD_ADDRESS, APIBAN_BAD_REASON, APIBAN_BAD_TTL};
use ring::{Op, Request, REASON_MAX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Refused by every node until `expires`.
    Ban,
    /// A feed address an operator unbanned: let through until `expires` (its listing's end).
    Exempt,
    /// A ban that was lifted; kept until the ban would have expired, never published.
    Lifted,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Ban => 'b',
            Kind::Exempt => 'e',
            Kind::Lifted => 'u',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub kind: Kind,
    /// Unix milliseconds: orders two records of one address across nodes.
    pub made_at: u64,
    /// Unix seconds.
    pub expires: u64,
    /// The node that made it.
    pub node: String,
    pub reason: String,
    /// Made here and not yet in Redis (fleet mode): sent when Redis answers.
    pub pending: bool,
}

impl Ban {
    /// The record as Redis and the bans file keep it: `kind|made_at_ms|expires|node|reason`
    /// (the reason last: it may hold `|`).
    pub fn encode(&self) -> String {
        format!("{}|{}|{}|{}|{}", self.kind.letter(), self.made_at, self.expires, self.node, self.reason)
    }

    pub fn decode(text: &str) -> Option<Ban> {
        let mut p = text.splitn(5, '|');
        let kind = match p.next()? {
            "b" => Kind::Ban,
            "e" => Kind::Exempt,
            "u" => Kind::Lifted,
            _ => return None,
        };
        let made_at = p.next()?.parse().ok()?;
        let expires = p.next()?.parse().ok()?;
        let node = p.next()?.to_string();
        let reason = p.next()?.to_string();
        if node.len() > 64 || reason.len() > REASON_MAX {
            return None;
        }
        Some(Ban { kind, made_at, expires, node, reason, pending: false })
    }

    /// In force at `now` (unix seconds), as a ban or an exemption.
    pub fn live(&self, now: u64) -> bool {
        self.expires > now && self.kind != Kind::Lifted
    }
}

/// Publishes what is in force into the shared tables the workers probe; returns the number of
/// bans (exemptions not counted). The single writer: mod_init before the fork, the keeper after it.
pub fn publish_tables(bans: &crate::table::Table, exempt: &crate::table::Table, live: &[(Key, &Ban)]) -> usize {
    let (mut b4, mut b6, mut e4, mut e6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, b) in live {
        let exp = b.expires.min(u32::MAX as u64) as u32;
        match (b.kind, *k) {
            (Kind::Ban, Key::V4(a)) => b4.push((a, exp)),
            (Kind::Ban, Key::V6(a)) => b6.push((a, exp)),
            (_, Key::V4(a)) => e4.push((a, exp)),
            (_, Key::V6(a)) => e6.push((a, exp)),
        }
    }
    let seed = crate::os::random_u64();
    bans.publish(&crate::table::Entries { v4: &b4, v6: &b6 }, seed);
    exempt.publish(&crate::table::Entries { v4: &e4, v6: &e6 }, seed.rotate_left(7));
    b4.len() + b6.len()
}

/// Publishes the records the admin commands read, newest first.
pub fn publish_board(board: &board::Board, mut live: Vec<(Key, &Ban)>) {
    live.sort_unstable_by_key(|(_, b)| std::cmp::Reverse(b.made_at));
    board.publish(&live);
}

/// `ttl` as the script gives it (< 0: `ban_ttl`), checked against `ban_max_ttl`.
pub fn check_ttl(ttl: i64, default: u64, max: u64) -> Result<u32, i32> {
    let t = if ttl < 0 { default as i64 } else { ttl };
    if t == 0 || t as u64 > max {
        return Err(APIBAN_BAD_TTL);
    }
    Ok(t as u32)
}

/// A reason is at most 64 bytes of printable text (UTF-8, no control characters).
pub fn check_reason(reason: &[u8]) -> Result<([u8; REASON_MAX], u8), i32> {
    if reason.len() > REASON_MAX {
        return Err(APIBAN_BAD_REASON);
    }
    let Ok(text) = std::str::from_utf8(reason) else { return Err(APIBAN_BAD_REASON) };
    if text.chars().any(char::is_control) {
        return Err(APIBAN_BAD_REASON);
    }
    let mut buf = [0u8; REASON_MAX];
    buf[..reason.len()].copy_from_slice(reason);
    Ok((buf, reason.len() as u8))
}

/// A script's or an operator's ban, checked and ready to queue. No allocation.
pub fn ban_request(ip: &[u8], ttl: i64, reason: &[u8], default_ttl: u64, max_ttl: u64, now: u64) -> Result<Request, i32> {
    let key = addr::parse_text(ip).ok_or(APIBAN_BAD_ADDRESS)?;
    let ttl = check_ttl(ttl, default_ttl, max_ttl)?;
    let (reason, reason_len) = check_reason(reason)?;
    Ok(Request { op: Op::Ban, key, ttl, made_at: now, reason, reason_len })
}

pub fn unban_request(ip: &[u8], now: u64) -> Result<Request, i32> {
    let key = addr::parse_text(ip).ok_or(APIBAN_BAD_ADDRESS)?;
    Ok(Request { op: Op::Unban, key, ttl: 0, made_at: now, reason: [0; REASON_MAX], reason_len: 0 })
}

/// The words for a refusal code, for logs and RPC/MI errors.
pub fn refusal_text(code: i32, max_ttl: u64) -> String {
    match code {
        APIBAN_BAD_ADDRESS => "not an IP address".into(),
        APIBAN_BAD_TTL => format!("the ttl must be 1 to {max_ttl} seconds (ban_max_ttl)"),
        APIBAN_BAD_REASON => format!("the reason must be at most {REASON_MAX} bytes of printable text"),
        _ => "the queue to the refresher is full (counted in ban_drops)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_a_bar_in_the_reason() {
        let b = Ban { kind: Kind::Exempt, made_at: 1_700_000_000_123, expires: 1_700_003_600, node: "edge-1".into(), reason: "pike|flood".into(), pending: false };
        assert_eq!(Ban::decode(&b.encode()), Some(b));
        for bad in ["", "x|1|2|n|r", "b|1|2|n", "b|one|2|n|r", &format!("b|1|2|n|{}", "r".repeat(65))] {
            assert_eq!(Ban::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn requests_are_checked_before_they_are_queued() {
        let r = ban_request(b" 192.0.2.7 ", -1, b"pike", 3600, 86400, 5).unwrap();
        assert_eq!((r.key, r.ttl, r.reason(), r.made_at), (Key::V4(0xc000_0207), 3600, "pike", 5));
        assert_eq!(ban_request(b"192.0.2.7", 60, b"", 3600, 86400, 5).unwrap().ttl, 60);
        assert_eq!(ban_request(b"192.0.2.300", 60, b"", 3600, 86400, 5), Err(APIBAN_BAD_ADDRESS));
        assert_eq!(ban_request(b"192.0.2.7", 0, b"", 3600, 86400, 5), Err(APIBAN_BAD_TTL));
        assert_eq!(ban_request(b"192.0.2.7", 86401, b"", 3600, 86400, 5), Err(APIBAN_BAD_TTL));
        assert_eq!(ban_request(b"192.0.2.7", 60, &[b'x'; 65], 3600, 86400, 5), Err(APIBAN_BAD_REASON));
        assert_eq!(ban_request(b"192.0.2.7", 60, b"a\nb", 3600, 86400, 5), Err(APIBAN_BAD_REASON));
        assert_eq!(ban_request(b"192.0.2.7", 60, &[0xff], 3600, 86400, 5), Err(APIBAN_BAD_REASON));
        assert!(ban_request(b"2001:db8::1", 60, "é".repeat(32).as_bytes(), 3600, 86400, 5).is_ok());
        assert_eq!(unban_request(b"nope", 1), Err(APIBAN_BAD_ADDRESS));
    }
}
