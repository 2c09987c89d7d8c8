//! The refresher: the one process that talks to APIBAN and writes the table.
//!
//! A loop that wakes every 200 ms: it keeps the table's clock, acts on `apiban.reload`, and makes
//! at most one feed request per wake, when the schedule, the backoff and the rate limit all allow.
//! A pull (full from ID 100, or incremental from the last ID) spans several requests; its
//! addresses are gathered aside and published in one step when the feed says there is nothing
//! newer. On any error the pull stays where it was and resumes from its last good ID after a
//! backoff; the published table is never touched by a failure.

use crate::addr::Key;
use crate::feed::{ApiVersion, Batch, Feed, FeedError, Net, START_ID};
use crate::log::{log_err, log_info, log_warn};
use crate::module::{split_live, unix_now, Module};
use crate::snapshot::{self, Snapshot};
use crate::table::Entries;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(200);

/// Runs forever. A panic restarts the loop after a pause: nothing here may end the process,
/// since the server would then shut down.
pub fn run(m: &'static Module) -> ! {
    loop {
        let _ = catch_unwind(AssertUnwindSafe(|| Refresher::new(m).run()));
        m.stats.get().state.put("restarting after an internal error");
        log_err!("refresher: internal error, restarting in 5 s (the table in use is kept)");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// At most `max` requests in any `window`, spaced at least window / (2 × max) apart so that a
/// long pull is paced rather than sent in one burst.
pub struct RateLimiter {
    max: usize,
    window: Duration,
    gap: Duration,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(max: u32, window_secs: u64) -> RateLimiter {
        let window = Duration::from_secs(window_secs);
        RateLimiter { max: max.max(1) as usize, window, gap: window / (2 * max.max(1)), sent: VecDeque::new() }
    }

    /// How long until the next request may go, zero when it may go now.
    pub fn wait(&mut self, now: Instant) -> Duration {
        while self.sent.front().is_some_and(|&t| now.duration_since(t) >= self.window) {
            self.sent.pop_front();
        }
        let by_gap = self.sent.back().map_or(Duration::ZERO, |&t| (t + self.gap).saturating_duration_since(now));
        let by_window = if self.sent.len() >= self.max {
            (self.sent[0] + self.window).saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        by_gap.max(by_window)
    }

    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
    }
}

/// Exponential backoff with jitter: the delay after `failures` consecutive failures.
pub fn backoff(err: &FeedError, failures: u32, interval: u64, jitter: f64) -> Duration {
    let (base, cap) = match err {
        FeedError::RateLimited { .. } => (30, 900),
        FeedError::Unauthorized(_) => (60, 3600),
        _ => (interval.clamp(1, 10), 600),
    };
    let exp = base.saturating_mul(1u64 << failures.saturating_sub(1).min(16)).min(cap);
    let secs = exp as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let mut d = Duration::from_secs_f64(secs.max(1.0));
    if let FeedError::RateLimited { retry_after: Some(s) } = err {
        d = Duration::from_secs((*s).clamp(1, 3600));
    }
    d
}

/// Merges an incremental pull into what is held: new addresses are added, a re-listed one takes
/// the newer listing time. Returns (added, re-listed with a newer time).
fn merge(master: &mut HashMap<Key, u32>, got: HashMap<Key, u32>) -> (usize, usize) {
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

struct Pull {
    full: bool,
    reason: &'static str,
    cursor: u64,
    got: HashMap<Key, u32>,
    skipped: u64,
    dropped: u64,
    requests: u32,
    started: Instant,
    /// When the gathered addresses were last published ahead of the pull's end.
    shown: Instant,
}

/// A long pull (paced by the rate limit: minutes for a big list) publishes what it has so far at
/// this interval, so a first start blocks early instead of after the last batch.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

struct Refresher {
    m: &'static Module,
    feed: Feed,
    /// Every address we hold, with the time its batch listed it.
    master: HashMap<Key, u32>,
    last_id: Option<u64>,
    pull: Option<Pull>,
    next_pull: u64,
    next_full: u64,
    limiter: RateLimiter,
    failures: u32,
    retry_at: Option<Instant>,
    rng: u64,
    overflow_logged: bool,
}

impl Refresher {
    fn new(m: &'static Module) -> Refresher {
        let cfg = &m.settings.cfg;
        let version = if cfg.api_version == 1 { ApiVersion::V1 } else { ApiVersion::V2 };
        let feed = Feed::new(&cfg.url, &m.settings.key, version, &cfg.set, Duration::from_secs(cfg.timeout), &Net::for_config(cfg));
        let mut r = Refresher {
            m,
            feed,
            master: HashMap::new(),
            last_id: None,
            pull: None,
            next_pull: 0,
            next_full: 0,
            limiter: RateLimiter::new(cfg.rate_limit.0, cfg.rate_limit.1),
            failures: 0,
            retry_at: None,
            rng: (std::process::id() as u64) << 32 ^ unix_now() | 1,
            overflow_logged: false,
        };
        // Resume from the snapshot read before the fork: an incremental pull brings it up to date.
        if let Some(s) = m.initial.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.master = s.entries.into_iter().collect();
            if s.last_id > START_ID {
                r.last_id = Some(s.last_id);
                r.next_full = s.saved_at + cfg.full_resync;
            }
        }
        r
    }

    fn random(&mut self) -> f64 {
        // xorshift64: jitter only, no need for more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn run(&mut self) -> ! {
        log_info!("refresher started");
        loop {
            let now = unix_now();
            self.m.table.set_now(now);
            crate::log::host_tick();
            let c = self.m.stats.get();
            if c.reload.swap(0, Relaxed) != 0 {
                log_info!("reload requested: full pull now");
                self.failures = 0;
                self.retry_at = None;
                c.backoff_until.store(0, Relaxed);
                self.start(true, "reload");
            }
            if self.pull.is_none() && now >= self.next_pull {
                let full = self.last_id.is_none() || now >= self.next_full;
                self.start(full, if full { "scheduled full" } else { "incremental" });
            }
            let mut sleep = TICK;
            if self.pull.is_some() {
                let t = Instant::now();
                let backoff = self.retry_at.map_or(Duration::ZERO, |r| r.saturating_duration_since(t));
                let wait = backoff.max(self.limiter.wait(t));
                if wait.is_zero() {
                    self.step();
                    sleep = Duration::ZERO;
                } else {
                    sleep = sleep.min(wait);
                }
            }
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
        }
    }

    fn start(&mut self, full: bool, reason: &'static str) {
        let cursor = if full { START_ID } else { self.last_id.unwrap_or(START_ID) };
        self.pull = Some(Pull {
            full: full || self.last_id.is_none(),
            reason,
            cursor,
            got: HashMap::new(),
            skipped: 0,
            dropped: 0,
            requests: 0,
            started: Instant::now(),
            shown: Instant::now(),
        });
        self.m.stats.get().state.put("syncing");
    }

    fn step(&mut self) {
        let Some(cursor) = self.pull.as_ref().map(|p| p.cursor) else { return };
        let t = Instant::now();
        self.limiter.record(t);
        let c = self.m.stats.get();
        c.requests.fetch_add(1, Relaxed);
        let result = self.feed.fetch(cursor);
        if let Some(p) = self.pull.as_mut() {
            p.requests += 1;
        }
        match result {
            Ok(batch) => {
                self.failures = 0;
                self.retry_at = None;
                c.backoff_until.store(0, Relaxed);
                let end = batch.end;
                self.take(batch);
                if end {
                    self.finish();
                } else {
                    self.publish_progress();
                }
            }
            Err(e) => self.failed(e, cursor),
        }
    }

    /// Gathers a batch into the pull, bounded: a pull never holds more than twice max_entries.
    fn take(&mut self, batch: Batch) {
        let now = unix_now();
        // The batch ID is the listing time of its newest entry; a reply without one (the end
        // marker with addresses) or with a time from the future counts as listed now.
        let at = batch.id.filter(|&id| id > 1_000_000_000 && id <= now + 3600).unwrap_or(now).min(u32::MAX as u64) as u32;
        let limit = self.m.settings.cfg.max_entries.saturating_mul(2);
        let p = self.pull.as_mut().expect("a pull in progress");
        p.skipped += batch.skipped;
        for k in batch.addrs {
            if let Some(t) = p.got.get_mut(&k) {
                *t = (*t).max(at);
            } else if p.got.len() < limit {
                p.got.insert(k, at);
            } else {
                p.dropped += 1;
            }
        }
        if let Some(id) = batch.id {
            p.cursor = p.cursor.max(id);
        }
    }

    fn failed(&mut self, e: FeedError, cursor: u64) {
        let c = self.m.stats.get();
        c.sync_failures.fetch_add(1, Relaxed);
        if matches!(e, FeedError::RateLimited { .. }) {
            c.rate_limited.fetch_add(1, Relaxed);
        }
        self.failures += 1;
        let jitter = self.random();
        let d = backoff(&e, self.failures, self.m.settings.cfg.interval, jitter);
        self.retry_at = Some(Instant::now() + d);
        let until = unix_now() + d.as_secs();
        c.backoff_until.store(until, Relaxed);
        let text = crate::log::redact(&e.to_string());
        c.last_error.put(&text);
        c.state.put(&format!("backoff until {until} ({} s): {text}", d.as_secs()));
        if matches!(e, FeedError::Unauthorized(_)) {
            // Not the feed's fault: the operator has to act.
            log_err!(
                "feed request from ID {cursor} failed: {text} (check apikey/apikey_file); retrying in {} s, the table in use is kept",
                d.as_secs()
            );
        } else {
            log_warn!("feed request from ID {cursor} failed: {text}; retrying in {} s, the table in use is kept", d.as_secs());
        }
    }

    /// The feed has nothing newer: merge or replace, expire, bound, publish, persist.
    fn finish(&mut self) {
        let Some(p) = self.pull.take() else { return };
        let c = self.m.stats.get();
        let cfg = &self.m.settings.cfg;
        let now = unix_now();
        let before = self.master.len();
        let (added, relisted) = if p.full {
            let added = p.got.keys().filter(|k| !self.master.contains_key(k)).count();
            self.master = p.got;
            (added, 0)
        } else {
            merge(&mut self.master, p.got)
        };
        let ttl = cfg.ttl;
        let n = self.master.len();
        self.master.retain(|_, at| *at as u64 + ttl > now);
        let expired = n - self.master.len();
        let mut dropped = p.dropped;
        if self.master.len() > cfg.max_entries {
            let mut all: Vec<(Key, u32)> = self.master.drain().collect();
            all.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
            dropped += (all.len() - cfg.max_entries) as u64;
            all.truncate(cfg.max_entries);
            self.master = all.into_iter().collect();
        }
        if dropped > 0 {
            c.overflow.fetch_add(dropped, Relaxed);
            if !self.overflow_logged {
                log_warn!(
                    "the feed lists more addresses than max_entries ({}): {dropped} of the oldest left out; raise max_entries",
                    cfg.max_entries
                );
                self.overflow_logged = true;
            }
        } else {
            self.overflow_logged = false;
        }
        if p.cursor > START_ID {
            self.last_id = Some(p.cursor);
        }
        // A re-listing changes only an entry's time, but that time is its expiry in the table.
        let changed = p.full || added > 0 || relisted > 0 || expired > 0 || before != self.master.len();
        if changed {
            self.publish(now);
        }
        let ms = p.started.elapsed().as_millis() as u64;
        c.skipped.fetch_add(p.skipped, Relaxed);
        c.expired.fetch_add(expired as u64, Relaxed);
        c.syncs.fetch_add(1, Relaxed);
        c.last_sync.store(now, Relaxed);
        c.sync_ms.store(ms, Relaxed);
        c.last_id.store(self.last_id.unwrap_or(0), Relaxed);
        c.last_error.put("");
        c.state.put("ok");
        if changed {
            self.save_snapshot(now);
        }
        let level = if changed || p.skipped > 0 { crate::log::Level::Info } else { crate::log::Level::Dbg };
        crate::log::write(
            level,
            format_args!(
            "sync done ({}): {added} added, {expired} expired, {} skipped, total {} ({} IPv4, {} IPv6), {} request(s), {ms} ms",
            p.reason,
            p.skipped,
            self.master.len(),
            c.ipv4.load(Relaxed),
            c.ipv6.load(Relaxed),
            p.requests
        ),
        );
        self.next_pull = now + cfg.interval;
        if p.full {
            self.next_full = now + cfg.full_resync;
        }
    }

    /// Mid-pull: publishes what is held plus what this pull gathered so far. Only ever adds
    /// addresses; the pull's end decides what is dropped.
    fn publish_progress(&mut self) {
        let Some(p) = self.pull.as_mut() else { return };
        if p.shown.elapsed() < PROGRESS_EVERY || p.got.is_empty() {
            return;
        }
        p.shown = Instant::now();
        let mut entries: Vec<(Key, u32)> = self.master.iter().map(|(&k, &t)| (k, t)).collect();
        entries.extend(p.got.iter().map(|(&k, &t)| (k, t)));
        self.publish_entries(&entries, unix_now());
    }

    fn publish(&mut self, now: u64) {
        let entries: Vec<(Key, u32)> = self.master.iter().map(|(&k, &t)| (k, t)).collect();
        self.publish_entries(&entries, now);
    }

    fn publish_entries(&mut self, entries: &[(Key, u32)], now: u64) {
        let cfg = &self.m.settings.cfg;
        let (v4, v6) = split_live(entries, cfg.ttl, now, cfg.max_entries);
        let seed = self.rng ^ now.rotate_left(17);
        let (n4, n6) = self.m.table.publish(&Entries { v4: &v4, v6: &v6 }, seed);
        let c = self.m.stats.get();
        c.ipv4.store(n4 as u64, Relaxed);
        c.ipv6.store(n6 as u64, Relaxed);
        c.entries.store((n4 + n6) as u64, Relaxed);
    }

    fn save_snapshot(&self, now: u64) {
        let Some(path) = &self.m.settings.cfg.snapshot_file else { return };
        let s = Snapshot {
            last_id: self.last_id.unwrap_or(0),
            saved_at: now,
            entries: self.master.iter().map(|(&k, &t)| (k, t)).collect(),
        };
        if let Err(e) = snapshot::save(path, &s) {
            log_warn!("cannot write snapshot {}: {e}; blocking goes on, a restart would start from the previous one", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_never_exceeds_its_window_and_paces() {
        let mut l = RateLimiter::new(11, 120);
        let t0 = Instant::now();
        let mut t = t0;
        let mut sent = Vec::new();
        while sent.len() < 30 {
            let w = l.wait(t);
            t += w;
            l.record(t);
            sent.push(t);
        }
        for (i, &s) in sent.iter().enumerate() {
            let in_window = sent[..=i].iter().filter(|&&x| s.duration_since(x) < Duration::from_secs(120)).count();
            assert!(in_window <= 11, "request {i}: {in_window} in the window");
        }
        // Paced: consecutive requests at least window / 22 apart.
        assert!(sent.windows(2).all(|w| w[1].duration_since(w[0]) >= Duration::from_millis(5454)));
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

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let e = FeedError::Server(503);
        let d1 = backoff(&e, 1, 300, 1.0);
        let d3 = backoff(&e, 3, 300, 1.0);
        assert_eq!((d1.as_secs(), d3.as_secs()), (10, 40));
        assert_eq!(backoff(&e, 30, 300, 1.0).as_secs(), 600);
        assert!(backoff(&e, 3, 300, 0.0).as_secs() == 20);
        let rl = FeedError::RateLimited { retry_after: Some(42) };
        assert_eq!(backoff(&rl, 5, 300, 0.3).as_secs(), 42);
        let rl = FeedError::RateLimited { retry_after: None };
        assert!(backoff(&rl, 1, 1, 1.0).as_secs() >= 30);
        // A test interval of 1 s retries quickly.
        assert_eq!(backoff(&FeedError::Transport("x".into()), 1, 1, 1.0).as_secs(), 1);
    }
}
