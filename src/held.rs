//! The list a node holds, as listing times by address: the rules that every role of the
//! refresher applies to it (merge a pull, keep the newest under `max_entries`) and the step from
//! it to what the shared table stores (the entries still listed, with their expiry).

use crate::addr::Key;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// Merges an incremental pull into what is held: new addresses are added, a re-listed one takes
/// the newer listing time. Returns (added, re-listed with a newer time).
pub fn merge(master: &mut HashMap<Key, u32>, got: HashMap<Key, u32>) -> (usize, usize) {
    let (mut added, mut relisted) = (0, 0);
    for (k, at) in got {
        match master.entry(k) {
            Entry::Vacant(e) => {
                e.insert(at);
                added += 1;
            }
            Entry::Occupied(mut e) if at > *e.get() => {
                e.insert(at);
                relisted += 1;
            }
            Entry::Occupied(_) => {}
        }
    }
    (added, relisted)
}

/// Keeps the `keep` most recently listed addresses; returns how many were left out.
pub fn keep_newest(map: &mut HashMap<Key, u32>, keep: usize) -> u64 {
    if map.len() <= keep {
        return 0;
    }
    let mut all: Vec<(Key, u32)> = map.drain().collect();
    let dropped = all.len() - keep;
    if keep > 0 {
        all.select_nth_unstable_by_key(keep - 1, |e| std::cmp::Reverse(e.1));
    }
    all.truncate(keep);
    map.extend(all);
    dropped as u64
}

/// Entries still listed at `now`, as the table stores them (address, expiry), newest first
/// when more than `max` must be cut.
pub type LiveSets = (Vec<(u32, u32)>, Vec<(u128, u32)>);

pub fn split_live(entries: &[(Key, u32)], ttl: u64, now: u64, max: usize) -> LiveSets {
    let mut live: Vec<(Key, u32)> = entries
        .iter()
        .filter_map(|&(k, at)| {
            let exp = (at as u64 + ttl).min(u32::MAX as u64);
            (exp > now).then_some((k, exp as u32))
        })
        .collect();
    if live.len() > max {
        live.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        live.truncate(max);
    }
    let mut v4 = Vec::with_capacity(live.len());
    let mut v6 = Vec::new();
    for (k, exp) in live {
        match k {
            Key::V4(a) => v4.push((a, exp)),
            Key::V6(a) => v6.push((a, exp)),
        }
    }
    (v4, v6)
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

    #[test]
    fn the_oldest_listed_are_left_out_first() {
        let mut m: HashMap<Key, u32> = (0..3000u32).map(|i| (Key::V4(i), 1_700_000_000 + i)).collect();
        assert_eq!(keep_newest(&mut m, 1000), 2000);
        assert_eq!(m.len(), 1000);
        assert!(m.keys().all(|k| matches!(k, Key::V4(i) if *i >= 2000)));
        assert_eq!(keep_newest(&mut m, 1000), 0);
    }

    #[test]
    fn an_incremental_merge_adds_and_takes_the_newer_time() {
        let mut master: HashMap<Key, u32> = [(Key::V4(1), 100), (Key::V4(2), 200)].into_iter().collect();
        let got = [(Key::V4(1), 150), (Key::V4(2), 150), (Key::V4(3), 300)].into_iter().collect();
        assert_eq!(merge(&mut master, got), (1, 1));
        assert_eq!((master[&Key::V4(1)], master[&Key::V4(2)], master[&Key::V4(3)]), (150, 200, 300));
        // The same pull again changes nothing.
        let got = [(Key::V4(1), 150), (Key::V4(3), 300)].into_iter().collect();
        assert_eq!(merge(&mut master, got), (0, 0));
    }
}
