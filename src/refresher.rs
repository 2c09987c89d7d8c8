//! The refresher: the one process that talks to APIBAN and writes the table.
//!
//! A loop that wakes every 200 ms, and at once on `apiban.reload`: it keeps the table's clock,
//! acts on the reload, and makes at most one feed request per wake, when the schedule, the
//! backoff and the rate limit all allow.
//! A pull (full from ID 100, or incremental from the last ID) spans several requests; its
//! addresses are gathered aside and published in one step when the feed says there is nothing
//! newer. On any error the pull stays where it was and resumes from its last good ID after a
//! backoff; the published table is never touched by a failure.
//!
//! In fleet mode (`redis_url`, see fleet.rs beside this file) only the node that holds the
//! fleet's lease pulls; the others take the list from Redis.

mod limiter;
mod roles;
use limiter::RateLimiter;

use crate::feed::{ApiVersion, Batch, Feed, FeedError, Net, START_ID};
use crate::log::{log_err, log_info, log_warn};
use crate::clock::unix_now;
use crate::held::{keep_newest, live, merge, Held};
use crate::module::Module;
use crate::snapshot::{self, Saved, Snapshot};
use crate::stats::{num, text};
use crate::table::Entries;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub(crate) const TICK: Duration = Duration::from_millis(200);

/// Runs forever. A panic restarts the loop after a pause: nothing here may end the process,
/// since the server would then shut down.
pub fn run(m: &'static Module) -> ! {
    // The request history outlives a restart of the loop: the feed still counts what was sent
    // before the internal error.
    let cfg = &m.settings.cfg;
    let mut limiter = RateLimiter::new(cfg.rate_limit);
    // The ban keeper shares the fleet's Redis, on connections of its own.
    crate::bans::keeper::start(m, roles::fleet_settings(&m.settings));
    loop {
        let _ = catch_unwind(AssertUnwindSafe(|| Refresher::new(m, &mut limiter).run()));
        text!(m.stats.get(), state).put("restarting after an internal error");
        log_err!("refresher: internal error, restarting in 5 s (the table in use is kept)");
        std::thread::sleep(Duration::from_secs(5));
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

struct Pull {
    full: bool,
    reason: &'static str,
    cursor: u64,
    /// What the replies brought, appended as they come (an address may be there several
    /// times) and normalized (sorted, one entry each, its newest time) when used.
    got: Held,
    skipped: u64,
    /// Left out for max_entries: the oldest listed.
    dropped: u64,
    /// Addresses whose batch was already older than ttl when it arrived, and the newest such
    /// batch's ID: nothing to block, but a sign of a feed with odd IDs or a ttl too short.
    stale: u64,
    stale_id: u64,
    requests: u32,
    started: Instant,
    /// When the gathered addresses were last published ahead of the pull's end (None: not yet,
    /// so the first batch shows at once).
    shown: Option<Instant>,
}

/// A long pull (paced by the rate limit: minutes for a big list) publishes what it has so far at
/// this interval, so a first start blocks early instead of after the last batch.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a commit did.
struct Committed {
    expired: usize,
    dropped: u64,
    changed: bool,
}

struct Refresher<'l> {
    m: &'static Module,
    feed: Feed,
    /// Every address we hold, with the time its batch listed it (normalized).
    master: Held,
    last_id: Option<u64>,
    pull: Option<Pull>,
    /// Scheduled on the monotonic clock: a wall clock stepped back must not stop the pulls.
    /// Wall time is for expiry only.
    next_pull: Instant,
    next_full: Instant,
    limiter: &'l mut RateLimiter,
    failures: u32,
    retry_at: Option<Instant>,
    rng: u64,
    overflow_logged: bool,
    /// What the state says after "ok" while the list holds addresses that arrived already
    /// expired: kept by incremental pulls, cleared by a full pull without any.
    stale_note: Option<String>,
    /// Fleet mode: this node's part in the fleet. None: standalone.
    fleet: Option<roles::FleetNode>,
    /// What the snapshot file holds, so that an unchanged list is not written again.
    snapshot: snapshot::Writer,
}

impl<'l> Refresher<'l> {
    fn new(m: &'static Module, limiter: &'l mut RateLimiter) -> Refresher<'l> {
        let cfg = &m.settings.cfg;
        let version = if cfg.api_version == 1 { ApiVersion::V1 } else { ApiVersion::V2 };
        let feed = Feed::new(&cfg.url, &m.settings.key, version, &cfg.set, Duration::from_secs(cfg.timeout), &Net::for_config(cfg));
        let mut r = Refresher {
            m,
            feed,
            master: Held::default(),
            last_id: None,
            pull: None,
            next_pull: Instant::now(),
            next_full: Instant::now(),
            limiter,
            failures: 0,
            retry_at: None,
            rng: (std::process::id() as u64) << 32 ^ unix_now() | 1,
            overflow_logged: false,
            stale_note: None,
            fleet: roles::FleetNode::new(&m.settings),
            snapshot: snapshot::Writer::default(),
        };
        // Resume from the snapshot read before the fork: an incremental pull brings it up to date.
        if let Some(s) = m.initial.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.master = Held::from_entries(s.entries);
            if let Some(path) = &cfg.snapshot_file {
                r.snapshot.known(path, r.master.digest(s.last_id));
            }
            if s.last_id > START_ID {
                r.last_id = Some(s.last_id);
                // The snapshot's age is the one place wall time enters the schedule, once.
                let left = (s.saved_at + cfg.full_resync).saturating_sub(unix_now());
                r.next_full = Instant::now() + Duration::from_secs(left);
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
            if c.reload.swap(0, Relaxed) != 0 && !self.fleet_reload() {
                log_info!("reload requested: full pull now");
                self.failures = 0;
                self.retry_at = None;
                num!(c, backoff_until).store(0, Relaxed);
                self.start(true, "reload");
            }
            if !self.fleet_tick() {
                // A follower: Redis brings the list; a pull of an earlier role is dropped.
                self.abandon_pull();
                crate::os::wait_on(&c.reload, 0, TICK);
                continue;
            }
            let mono = Instant::now();
            if self.pull.is_none() && mono >= self.next_pull {
                let full = self.last_id.is_none() || mono >= self.next_full;
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
                // A tick's sleep that `apiban.reload` ends at once (Module::request_reload).
                crate::os::wait_on(&c.reload, 0, sleep);
            }
        }
    }

    /// A pull this node may no longer finish (it lost the lease, or follows): what it gathered
    /// is in the table already (progress publishes) and stays in the list held, so that no list
    /// from Redis with the same last ID takes it back. True when something was kept.
    fn abandon_pull(&mut self) -> bool {
        let Some(p) = self.pull.take() else { return false };
        let kept = merge(&mut self.master, p.got);
        let kept = kept.0 + kept.1 > 0;
        if kept {
            self.fleet_diverged();
        }
        kept
    }

    fn start(&mut self, full: bool, reason: &'static str) {
        let cursor = if full { START_ID } else { self.last_id.unwrap_or(START_ID) };
        // A pull cut short by a reload: what it gathered is in the table already (progress
        // publishes) and stays there; the new pull starts with it, so the table never shrinks.
        let got = self.pull.take().map(|p| p.got).unwrap_or_default();
        self.pull = Some(Pull {
            full: full || self.last_id.is_none(),
            reason,
            cursor,
            got,
            skipped: 0,
            dropped: 0,
            stale: 0,
            stale_id: 0,
            requests: 0,
            started: Instant::now(),
            shown: None,
        });
        text!(self.m.stats.get(), state).put("syncing");
    }

    fn step(&mut self) {
        let Some(cursor) = self.pull.as_ref().map(|p| p.cursor) else { return };
        // The lookup has no deadline: made before the lease is checked, not on its time.
        if let Err(e) = self.feed.resolve() {
            return self.failed(e, cursor);
        }
        let Some(reserved) = self.fleet_before_request() else { return };
        let c = self.m.stats.get();
        num!(c, requests).fetch_add(1, Relaxed);
        let result = self.feed.fetch_within(cursor, reserved.as_ref().map(|r| r.deadline));
        // Recorded once complete, failed or not: the feed may have counted it either way.
        self.limiter.record(Instant::now(), reserved.as_ref().map(|r| r.name.as_str()));
        self.fleet_after_request();
        if let Some(p) = self.pull.as_mut() {
            p.requests += 1;
        }
        match result {
            Ok(batch) => {
                self.failures = 0;
                self.retry_at = None;
                num!(c, backoff_until).store(0, Relaxed);
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

    /// Gathers a batch into the pull, bounded: a pull never holds more than twice max_entries,
    /// and when it would, the oldest listed go first.
    fn take(&mut self, batch: Batch) {
        let now = unix_now();
        // The batch ID is the listing time of its newest entry; a reply without one (the end
        // marker with addresses) or with a time from the future counts as listed now.
        let at = batch.id.filter(|&id| id > 1_000_000_000 && id <= now + 3600).unwrap_or(now).min(u32::MAX as u64) as u32;
        let cfg = &self.m.settings.cfg;
        let (max, ttl) = (cfg.max_entries, cfg.ttl);
        let p = self.pull.as_mut().expect("a pull in progress");
        p.skipped += batch.skipped;
        if let Some(id) = batch.id {
            p.cursor = p.cursor.max(id);
        }
        if at as u64 + ttl <= now {
            // Expired on arrival: counted and told at the pull's end, never silently lost.
            let n = batch.listed() as u64;
            p.stale += n;
            p.stale_id = p.stale_id.max(batch.id.unwrap_or(0));
            num!(self.m.stats.get(), expired).fetch_add(n, Relaxed);
            return;
        }
        p.got.v4.extend(batch.v4.iter().map(|&a| (a, at)));
        p.got.v6.extend(batch.v6.iter().map(|&a| (a, at)));
        // Counted with duplicates first: only when that reaches the bound are they collapsed
        // and the addresses counted, as a map would have counted them after each batch.
        if p.got.len() >= max.saturating_mul(2) {
            p.got.normalize();
            if p.got.len() >= max.saturating_mul(2) {
                p.dropped += keep_newest(&mut p.got, max);
            }
        }
    }

    fn failed(&mut self, e: FeedError, cursor: u64) {
        let c = self.m.stats.get();
        num!(c, sync_failures).fetch_add(1, Relaxed);
        if matches!(e, FeedError::RateLimited { .. }) {
            num!(c, rate_limited).fetch_add(1, Relaxed);
        }
        self.failures += 1;
        let jitter = self.random();
        let d = backoff(&e, self.failures, self.m.settings.cfg.interval, jitter);
        self.retry_at = Some(Instant::now() + d);
        let until = unix_now() + d.as_secs();
        num!(c, backoff_until).store(until, Relaxed);
        let text = crate::log::redact(&e.to_string());
        text!(c, last_error).put(&text);
        text!(c, state).put(&format!("backoff until {until} ({} s): {text}", d.as_secs()));
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
        let Some(mut p) = self.pull.take() else { return };
        p.got.normalize();
        let c = self.m.stats.get();
        let cfg = &self.m.settings.cfg;
        let now = unix_now();
        let before = self.master.len();
        let fleet_delta = self.fleet_delta(&p.got, p.full, now);
        let (added, relisted) = if p.full {
            let added = self.master.count_missing(&p.got);
            self.master = p.got;
            (added, 0)
        } else {
            merge(&mut self.master, p.got)
        };
        if p.cursor > START_ID {
            self.last_id = Some(p.cursor);
        }
        // A re-listing changes only an entry's time, but that time is its expiry in the table.
        let changed = p.full || added > 0 || relisted > 0 || before != self.master.len();
        let Committed { expired, dropped, changed } = self.commit(now, changed, p.dropped);
        if dropped > 0 {
            if !self.overflow_logged {
                let since = self.master.min_time().unwrap_or(0);
                log_warn!(
                    "the feed lists more addresses than max_entries ({}): kept the {} most recently listed (listed at {since} or later), left out {dropped} listed earlier; raise max_entries",
                    cfg.max_entries,
                    self.master.len()
                );
                self.overflow_logged = true;
            }
        } else {
            self.overflow_logged = false;
        }
        let ms = p.started.elapsed().as_millis() as u64;
        num!(c, skipped).fetch_add(p.skipped, Relaxed);
        num!(c, syncs).fetch_add(1, Relaxed);
        num!(c, last_sync).store(now, Relaxed);
        num!(c, sync_ms).store(ms, Relaxed);
        num!(c, last_id).store(self.last_id.unwrap_or(0), Relaxed);
        text!(c, last_error).put("");
        if p.stale > 0 {
            log_warn!(
                "{} address(es) arrived already expired (their batch, up to ID {}, was listed more than ttl = {} s ago): not blocked; check the feed's IDs or raise ttl",
                p.stale,
                p.stale_id,
                cfg.ttl
            );
            self.stale_note = Some(format!("{} address(es) arrived already expired (batch ID {})", p.stale, p.stale_id));
        } else if p.full {
            self.stale_note = None;
        }
        match &self.stale_note {
            Some(note) => text!(c, state).put(&format!("ok; {note}")),
            None => text!(c, state).put("ok"),
        }
        if self.fleet_mode() {
            // Keeping the newest dropped addresses the delta does not name: write it all.
            self.fleet_synced(fleet_delta.filter(|_| dropped == 0), p.full, now);
        }
        let level = if changed || p.skipped > 0 { crate::log::Level::Info } else { crate::log::Level::Dbg };
        crate::log::write(
            level,
            format_args!(
            "sync done ({}): {added} added, {expired} expired, {} skipped, total {} ({} IPv4, {} IPv6), {} request(s), {ms} ms",
            p.reason,
            p.skipped,
            self.master.len(),
            num!(c, ipv4).load(Relaxed),
            num!(c, ipv6).load(Relaxed),
            p.requests
        ),
        );
        let mono = Instant::now();
        self.next_pull = mono + Duration::from_secs(cfg.interval);
        if p.full {
            self.next_full = mono + Duration::from_secs(cfg.full_resync);
        }
    }

    /// The one step from a new list held to the table in use, for every role (a pull's end, a
    /// list from Redis): expire by `ttl`, keep the newest under `max_entries` (besides
    /// `dropped` left out earlier), then, when anything changed, publish the table and write
    /// the snapshot; the counters say what was expired and left out.
    fn commit(&mut self, now: u64, changed: bool, dropped: u64) -> Committed {
        let cfg = &self.m.settings.cfg;
        let n = self.master.len();
        self.master.retain(|at| at as u64 + cfg.ttl > now);
        let expired = n - self.master.len();
        let dropped = dropped + keep_newest(&mut self.master, cfg.max_entries);
        let changed = changed || expired > 0 || dropped > 0;
        if changed {
            self.publish(now);
            self.save_snapshot(now);
        }
        let c = self.m.stats.get();
        num!(c, expired).fetch_add(expired as u64, Relaxed);
        num!(c, overflow).fetch_add(dropped, Relaxed);
        Committed { expired, dropped, changed }
    }

    /// Mid-pull: publishes what is held plus what this pull gathered so far, at the first batch
    /// and then every PROGRESS_EVERY, and writes it to the snapshot, so that a restart blocks
    /// what the node blocked before it. Only ever adds addresses; the pull's end decides what
    /// is dropped. A leader's first full pull goes to Redis the same way: a new fleet protects
    /// after the first batch, not after the last.
    fn publish_progress(&mut self) {
        let Some(p) = self.pull.as_mut() else { return };
        if p.shown.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) || p.got.is_empty() {
            return;
        }
        p.shown = Some(Instant::now());
        p.got.normalize();
        // What is held with the pull's addresses over it, as a map's extend() did.
        let mut held = self.master.clone();
        held.overlay(p.got.clone());
        let now = unix_now();
        self.publish_entries(&held, now);
        self.save_snapshot_of(&held, now);
        if self.master.is_empty() {
            self.fleet_progress(&held);
        }
    }

    fn publish(&mut self, now: u64) {
        let master = std::mem::take(&mut self.master);
        self.publish_entries(&master, now);
        self.master = master;
    }

    fn publish_entries(&mut self, held: &Held, now: u64) {
        let cfg = &self.m.settings.cfg;
        let (v4, v6) = live(held, cfg.ttl, now, cfg.max_entries);
        let seed = self.rng ^ now.rotate_left(17);
        let (n4, n6) = self.m.table.publish(&Entries { v4: &v4, v6: &v6 }, seed);
        let c = self.m.stats.get();
        num!(c, ipv4).store(n4 as u64, Relaxed);
        num!(c, ipv6).store(n6 as u64, Relaxed);
        num!(c, entries).store((n4 + n6) as u64, Relaxed);
    }

    fn save_snapshot(&mut self, now: u64) {
        let master = std::mem::take(&mut self.master);
        self.save_snapshot_of(&master, now);
        self.master = master;
    }

    /// The snapshot of what the table holds: after a pull, the list; mid-pull, the list and
    /// what the pull gathered, under the last ID of the last complete pull (a restart resumes
    /// from there). Not rewritten when the file already holds that list and that ID (see
    /// `snapshot::Writer`): a full pull that brought the list already held, a follower's
    /// unchanged version.
    fn save_snapshot_of(&mut self, held: &Held, now: u64) {
        let Some(path) = &self.m.settings.cfg.snapshot_file else { return };
        let last_id = self.last_id.unwrap_or(0);
        let entries = || Snapshot { last_id, saved_at: now, entries: held.entries() };
        match self.snapshot.save(path, held.digest(last_id), entries) {
            Ok(Saved::Written) => {}
            Ok(Saved::Unchanged) => crate::log::write(
                crate::log::Level::Dbg,
                format_args!("snapshot {} unchanged ({} entries, last ID {last_id}): not rewritten", path.display(), held.len()),
            ),
            Err(e) => log_warn!("cannot write snapshot {}: {e}; blocking goes on, a restart would start from the previous one", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
