//! The ban keeper's list: every local ban, exemption and lifted ban by address, with the rules
//! that every source of change follows (this node's requests, Redis, the file), and the bans
//! file beside the snapshot.

use super::ring::{Op, Request};
use super::{Ban, Kind};
use crate::addr::{self, Key};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a request of this node did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Banned,
    /// A ban of an address already banned: its expiry kept or extended, nothing new to log.
    Renewed,
    /// A ban lifted.
    Lifted,
    /// A feed address let through until its listing ends.
    Exempted,
    /// An unban of an address neither banned nor listed.
    Nothing,
}

pub struct Store {
    map: HashMap<Key, Ban>,
    /// `max_bans`: bans and exemptions in force, and separately lifted bans.
    max: usize,
    node: String,
    /// Whether bans go to Redis (they start pending).
    shared: bool,
}

impl Store {
    pub fn new(max: usize, node: &str, shared: bool) -> Store {
        Store { map: HashMap::new(), max, node: node.to_string(), shared }
    }

    pub fn get(&self, k: Key) -> Option<&Ban> {
        self.map.get(&k)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A request of this node, made at `now_ms` by the keeper's clock. `listed_until`: the
    /// feed's listing of the address, when it has one in force.
    pub fn apply(&mut self, r: &Request, now_ms: u64, listed_until: Option<u64>) -> Applied {
        let old = self.map.get(&r.key);
        // Later than anything held for this address, even if the clock stepped back.
        let made_at = now_ms.max(old.map_or(0, |b| b.made_at + 1));
        let now = now_ms / 1000;
        let mut ban = Ban { kind: Kind::Ban, made_at, expires: 0, node: self.node.clone(), reason: String::new(), pending: self.shared };
        let applied = match r.op {
            Op::Ban => {
                ban.expires = r.made_at.max(now.saturating_sub(5)) + r.ttl as u64;
                ban.reason = r.reason().to_string();
                match old.filter(|b| b.kind == Kind::Ban && b.live(now)) {
                    // A script that bans on each request until the ban is in force: one ban.
                    Some(b) => {
                        ban.expires = ban.expires.max(b.expires);
                        Applied::Renewed
                    }
                    None => Applied::Banned,
                }
            }
            Op::Unban => {
                let was = old.filter(|b| b.kind == Kind::Ban && b.live(now)).map(|b| b.expires);
                match (listed_until.filter(|&t| t > now), was) {
                    (Some(until), was) => {
                        ban.kind = Kind::Exempt;
                        ban.expires = until.max(was.unwrap_or(0));
                        ban.reason = "unbanned".into();
                        Applied::Exempted
                    }
                    (None, Some(until)) => {
                        ban.kind = Kind::Lifted;
                        ban.expires = until;
                        Applied::Lifted
                    }
                    (None, None) => return Applied::Nothing,
                }
            }
        };
        self.map.insert(r.key, ban);
        applied
    }

    /// A record from Redis or a peer: the later made wins. True when it changed what is held.
    pub fn adopt(&mut self, k: Key, b: Ban) -> bool {
        match self.map.get(&k) {
            Some(old) if old.made_at >= b.made_at => false,
            _ => {
                self.map.insert(k, b);
                true
            }
        }
    }

    /// Marks a record as in Redis (it may have been replaced meanwhile: only the same one).
    pub fn sent(&mut self, k: Key, made_at: u64) {
        if let Some(b) = self.map.get_mut(&k).filter(|b| b.made_at == made_at) {
            b.pending = false;
        }
    }

    /// Marks every record Redis lacks as to be sent again (a flush, a new Redis).
    pub fn resend_missing(&mut self, present: &HashMap<Key, u64>, now: u64) -> usize {
        let mut n = 0;
        for (k, b) in self.map.iter_mut() {
            if b.expires > now && !b.pending && present.get(k).is_none_or(|&m| m < b.made_at) {
                b.pending = true;
                n += 1;
            }
        }
        n
    }

    pub fn pending(&self) -> Vec<(Key, Ban)> {
        self.map.iter().filter(|(_, b)| b.pending).map(|(k, b)| (*k, b.clone())).collect()
    }

    /// Drops what expired; returns how many bans or exemptions that were in force.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.map.values().filter(|b| b.kind != Kind::Lifted).count();
        self.map.retain(|_, b| b.expires > now);
        before - self.map.values().filter(|b| b.kind != Kind::Lifted).count()
    }

    /// Keeps `max` bans and exemptions and `max` lifted bans, the most recently made; returns
    /// how many bans or exemptions were evicted.
    pub fn evict(&mut self) -> usize {
        if self.map.len() <= self.max {
            return 0;
        }
        let mut evicted = 0;
        for lifted in [false, true] {
            let n = self.map.values().filter(|b| (b.kind == Kind::Lifted) == lifted).count();
            if n <= self.max {
                continue;
            }
            let mut times: Vec<u64> = self.map.values().filter(|b| (b.kind == Kind::Lifted) == lifted).map(|b| b.made_at).collect();
            let cut = n - self.max;
            times.select_nth_unstable(cut - 1);
            let before = times[cut - 1];
            let mut left = cut;
            // Oldest first; of equal times, as many as needed.
            self.map.retain(|_, b| {
                if (b.kind == Kind::Lifted) != lifted || b.made_at > before || left == 0 {
                    return true;
                }
                left -= 1;
                false
            });
            if !lifted {
                evicted = cut - left;
            }
        }
        evicted
    }

    /// What the tables and the board hold: bans and exemptions in force, in no order.
    pub fn in_force(&self, now: u64) -> Vec<(Key, &Ban)> {
        self.map.iter().filter(|(_, b)| b.live(now)).map(|(k, b)| (*k, b)).collect()
    }

    pub fn records(&self) -> impl Iterator<Item = (&Key, &Ban)> {
        self.map.iter()
    }
}

/// The bans file: `<snapshot_file>.bans`, written like the snapshot (whole, synced, renamed).
pub fn file_for(snapshot: &Path) -> PathBuf {
    let mut p = snapshot.as_os_str().to_owned();
    p.push(".bans");
    PathBuf::from(p)
}

const MAGIC: &str = "apiban-bans 1";

/// One line per record: address, pending (0/1), record (`Ban::encode`), tab-separated (no
/// field may hold a tab: reasons hold no control characters, nodes no blanks).
pub fn encode(s: &Store) -> String {
    let mut out = String::from(MAGIC);
    out.push('\n');
    for (k, b) in s.records() {
        out.push_str(&format!("{}\t{}\t{}\n", k.to_ip(), b.pending as u8, b.encode()));
    }
    out
}

/// The records of a bans file still in force at `now`, and how many lines were refused.
pub fn decode(text: &str, now: u64) -> Result<(Vec<(Key, Ban)>, usize), String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("not a bans file (its first line is not '{MAGIC}')"));
    }
    let (mut out, mut bad) = (Vec::new(), 0);
    for l in lines {
        let mut f = l.splitn(3, '\t');
        let rec = (|| {
            let k = addr::parse_text(f.next()?.as_bytes())?;
            let pending = f.next()? == "1";
            let b = Ban { pending, ..Ban::decode(f.next()?)? };
            Some((k, b))
        })();
        match rec {
            Some((k, b)) if b.expires > now => out.push((k, b)),
            Some(_) => {}
            None => bad += 1,
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bans::ring::REASON_MAX;

    fn req(op: Op, k: u32, ttl: u32, at: u64) -> Request {
        let mut reason = [0u8; REASON_MAX];
        reason[..4].copy_from_slice(b"pike");
        Request { op, key: Key::V4(k), ttl, made_at: at, reason, reason_len: 4 }
    }

    #[test]
    fn a_ban_an_unban_and_an_exemption() {
        let mut s = Store::new(10, "me", true);
        assert_eq!(s.apply(&req(Op::Ban, 1, 60, 1000), 1_000_000, None), Applied::Banned);
        assert_eq!(s.apply(&req(Op::Ban, 1, 30, 1000), 1_000_010, None), Applied::Renewed);
        let b = s.get(Key::V4(1)).unwrap().clone();
        assert_eq!((b.kind, b.expires, b.reason.as_str(), b.node.as_str(), b.pending), (Kind::Ban, 1060, "pike", "me", true));
        // Unbanned: kept as lifted until it would have expired.
        assert_eq!(s.apply(&req(Op::Unban, 1, 0, 1001), 1_001_000, None), Applied::Lifted);
        assert_eq!((s.get(Key::V4(1)).unwrap().kind, s.get(Key::V4(1)).unwrap().expires), (Kind::Lifted, 1060));
        assert!(s.in_force(1001).is_empty());
        assert_eq!(s.apply(&req(Op::Unban, 2, 0, 1001), 1_001_000, None), Applied::Nothing);
        // A feed address: exempt until its listing ends.
        assert_eq!(s.apply(&req(Op::Unban, 3, 0, 1001), 1_001_000, Some(5000)), Applied::Exempted);
        assert_eq!((s.get(Key::V4(3)).unwrap().kind, s.get(Key::V4(3)).unwrap().expires), (Kind::Exempt, 5000));
        // Banning it again ends the exemption.
        s.apply(&req(Op::Ban, 3, 60, 1002), 1_002_000, Some(5000));
        assert_eq!(s.get(Key::V4(3)).unwrap().kind, Kind::Ban);
        assert_eq!(s.expire(1061), 0, "the ban on 3 lasts to 1062");
        assert_eq!(s.expire(1062), 1);
        assert_eq!(s.len(), 0, "the lifted one went at 1060");
    }

    #[test]
    fn the_later_made_record_wins_whatever_the_order_it_arrives_in() {
        let rec = |kind, at| Ban { kind, made_at: at, expires: 9999, node: "n2".into(), reason: String::new(), pending: false };
        let mut a = Store::new(10, "a", true);
        let mut b = Store::new(10, "b", true);
        let (ban, lift) = (rec(Kind::Ban, 10), rec(Kind::Lifted, 20));
        assert!(a.adopt(Key::V4(1), ban.clone()));
        assert!(a.adopt(Key::V4(1), lift.clone()));
        assert!(b.adopt(Key::V4(1), lift.clone()));
        assert!(!b.adopt(Key::V4(1), ban));
        assert_eq!(a.get(Key::V4(1)), b.get(Key::V4(1)));
        // Our own change after a clock step back still wins over what we hold.
        a.apply(&req(Op::Ban, 1, 60, 1), 5, None);
        assert_eq!(a.get(Key::V4(1)).unwrap().made_at, 21);
    }

    #[test]
    fn eviction_takes_the_oldest_and_counts_them() {
        let mut s = Store::new(3, "me", false);
        for i in 0..5u32 {
            s.apply(&req(Op::Ban, i, 60, 1000), 1_000_000 + i as u64, None);
        }
        assert_eq!(s.evict(), 2);
        let mut left: Vec<Key> = s.in_force(1000).iter().map(|e| e.0).collect();
        left.sort();
        left.sort();
        assert_eq!(left, vec![Key::V4(2), Key::V4(3), Key::V4(4)]);
        assert_eq!(s.evict(), 0);
    }

    #[test]
    fn missing_from_redis_is_sent_again() {
        let mut s = Store::new(10, "me", true);
        s.apply(&req(Op::Ban, 1, 60, 1000), 1_000_000, None);
        s.apply(&req(Op::Ban, 2, 60, 1000), 1_000_001, None);
        s.sent(Key::V4(1), 1_000_000);
        s.sent(Key::V4(2), 1_000_001);
        assert!(s.pending().is_empty());
        let present = HashMap::from([(Key::V4(1), 1_000_000)]);
        assert_eq!(s.resend_missing(&present, 1000), 1);
        assert_eq!(s.pending()[0].0, Key::V4(2));
    }

    #[test]
    fn the_file_round_trips_and_skips_what_expired_or_is_damaged() {
        let mut s = Store::new(10, "me", true);
        s.apply(&req(Op::Ban, 1, 60, 1000), 1_000_000, None);
        s.apply(&req(Op::Ban, 2, 5, 1000), 1_000_001, None);
        let text = encode(&s) + "garbage line\n";
        let (recs, bad) = decode(&text, 1010).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(recs.len(), 1);
        assert_eq!(&recs[0].1, s.get(Key::V4(1)).unwrap());
        assert!(decode("something else\n", 0).is_err());
        assert_eq!(file_for(Path::new("/var/lib/apiban/list")), PathBuf::from("/var/lib/apiban/list.bans"));
    }
}
