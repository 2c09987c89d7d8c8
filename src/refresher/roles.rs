//! Fleet mode in the refresher (issue 12): which node talks to APIBAN, and how the others
//! follow. Standalone nodes (no `redis_url`) never reach this code beyond a `None` check.
//!
//! Every tick a follower asks Redis for a newer version of the list (one round trip when there
//! is none) and applies it to its table and snapshot, then tries the lease; the holder of the
//! lease is the leader and runs the refresher's usual pulls, each request fenced by the lease
//! and recorded in the fleet's request history, each sync written to Redis. A node that takes
//! the lease first catches up with Redis, adopts the fleet's schedule and last ID (so a
//! hand-over goes on with an incremental pull) and the fleet's request history (so the rate
//! limit is the fleet's). Redis trouble changes nothing in the table; after `fleet_fallback`
//! of it a node pulls APIBAN on its own until Redis answers again.

use super::limiter::RATE_MARGIN;
use super::Refresher;
use crate::held::{merge, Held};
use crate::addr::Key;
use crate::config::Settings;
use crate::feed::START_ID;
use crate::fleet::layout::Meta;
use crate::fleet::{Change, Changed, Fleet, FleetError, FleetSettings, LeaseState, Poll, Reserved, SyncInfo};
use crate::log::{log_info, log_warn};
use crate::clock::unix_now;
use crate::stats::{num, text};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Follower,
    Leader,
    /// Redis has been in trouble for `fleet_fallback`: pulling alone, as standalone.
    Fallback,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Leader => "leader",
            Role::Fallback => "fallback",
        }
    }
}

/// What a leader's incremental sync changed, for its write to Redis.
pub(super) struct SyncDelta {
    add: Vec<(Key, u32)>,
    del: Vec<Key>,
}

pub(super) struct FleetNode {
    client: Fleet,
    role: Role,
    fallback: Option<Duration>,
    /// Since when Redis has failed every call (None: it answers).
    trouble_since: Option<Instant>,
    /// The error last logged, so that a lasting one is logged once.
    logged: Option<String>,
    /// The leader could not write its last sync: it writes the whole list as soon as it can,
    /// but not before this (a refused write is not retried on every tick).
    dirty: bool,
    retry_publish: Option<Instant>,
    /// The last full pull of the fleet (unix time): the full_resync schedule survives hand-overs.
    full_at: u64,
    /// What this node holds is not what Redis holds (it kept a newer list it had, or merged
    /// one): when it leads, it writes its whole list.
    diverged: bool,
    /// Consecutive failed Redis calls, and the time before which a follower asks nothing
    /// more: errors back off exponentially, up to `interval`.
    failures: u32,
    quiet_until: Option<Instant>,
    /// Consecutive refused writes of the whole list (e.g. Redis at maxmemory).
    publish_failures: u32,
    /// The fleet's settings differ from ours: what differs (None: they agree, or no list yet).
    differs: Option<String>,
    /// When another node was last seen holding the lease: if Redis then loses the fleet's
    /// request history, that node's requests may still count in the feed's window.
    other_leader_seen: Option<Instant>,
    /// Since when nobody has held the lease while our settings differ from the fleet's.
    unheld_since: Option<Instant>,
    fingerprint: String,
    /// The cap of every backoff here: `interval`.
    backoff_cap: Duration,
    shown: (Role, String),
}

pub(super) fn fleet_settings(s: &Settings) -> Option<FleetSettings> {
    let cfg = &s.cfg;
    Some(FleetSettings {
        target: cfg.redis_url.clone()?,
        prefix: cfg.redis_prefix.clone(),
        node_id: cfg.node_id.clone().unwrap_or_default(),
        leader_ttl: Duration::from_secs(cfg.leader_ttl),
        timeout: Duration::from_secs(cfg.timeout),
        // The feed client gives up a request 2 × timeout after it started.
        request_max: Duration::from_secs(2 * cfg.timeout),
        window: Duration::from_secs(cfg.rate_limit.window_secs) + RATE_MARGIN,
        // rediss:// trusts what the feed trusts: the system's store plus ca_file.
        ca_file: cfg.ca_file.clone(),
        max_entries: cfg.max_entries,
        fingerprint: fingerprint(cfg),
    })
}

/// The settings that shape the shared list and the fleet's budget, one `name=value` a line:
/// nodes that differ in one of them must not share a list. The key is never part of it, nor
/// is any user-info of the URL.
pub(super) fn fingerprint(cfg: &crate::config::Config) -> String {
    let url = match cfg.url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!("{scheme}://{}{path}", auth.rsplit_once('@').map_or(auth, |(_, h)| h))
        }
        None => cfg.url.clone(),
    };
    format!(
        "url={url}\nset={}\napi_version={}\nrate_limit={}/{}\nttl={}\ninterval={}\nfull_resync={}",
        cfg.set, cfg.api_version, cfg.rate_limit.max, cfg.rate_limit.window_secs, cfg.ttl, cfg.interval, cfg.full_resync
    )
}

/// Which settings differ, as `name: ours here, theirs in the fleet`.
fn differences(ours: &str, theirs: &str) -> String {
    let theirs: Vec<(&str, &str)> = theirs.lines().filter_map(|l| l.split_once('=')).collect();
    let mut out = Vec::new();
    for (name, v) in ours.lines().filter_map(|l| l.split_once('=')) {
        let t = theirs.iter().find(|(n, _)| *n == name).map_or("(unset)", |(_, t)| *t);
        if t != v {
            let t: String = t.chars().take(80).filter(|c| !c.is_control()).collect();
            out.push(format!("{name} is {v} here, {t} in the fleet"));
        }
    }
    if out.is_empty() {
        out.push("the fleet's settings are in a form this node does not know".into());
    }
    out.join("; ")
}

/// The wait after `n` consecutive failures: `base` doubling, at most `cap`.
fn exp_backoff(base: Duration, n: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(cap)
}

/// How long from `now` until `period` after `at`, a unix time another node wrote into Redis:
/// never more than `period` (a time from the future, a skewed clock or a hostile value must not
/// stop the pulls), and no overflow whatever the value.
fn schedule_from(at: u64, period: u64, now: u64) -> Duration {
    Duration::from_secs(at.min(now).saturating_add(period).saturating_sub(now).min(period))
}

/// How long a leader waits before it writes the whole list again after a refused write.
const PUBLISH_RETRY: Duration = Duration::from_secs(5);


impl FleetNode {
    pub(super) fn new(s: &Settings) -> Option<FleetNode> {
        let fs = fleet_settings(s)?;
        let fingerprint = fs.fingerprint.clone();
        crate::os::install_stop_handler();
        log_info!("fleet mode: node '{}' in fleet '{}' at {}, lease {} s", fs.node_id, fs.prefix, fs.target, fs.leader_ttl.as_secs());
        let fallback = Some(Duration::from_secs(s.cfg.fleet_fallback)).filter(|d| !d.is_zero());
        Some(FleetNode {
            client: Fleet::new(fs),
            role: Role::Follower,
            fallback,
            trouble_since: None,
            logged: None,
            dirty: false,
            retry_publish: None,
            full_at: 0,
            diverged: false,
            failures: 0,
            quiet_until: None,
            publish_failures: 0,
            differs: None,
            unheld_since: None,
            other_leader_seen: None,
            fingerprint,
            backoff_cap: Duration::from_secs(s.cfg.interval),
            shown: (Role::Follower, String::new()),
        })
    }
}

impl Refresher<'_> {
    pub(super) fn fleet_mode(&self) -> bool {
        self.fleet.is_some()
    }

    /// Runs `op` with this node's part in the fleet taken out of the refresher (it works on
    /// the rest: the list held, the table, the stats); `standalone` without one. The one place
    /// that takes it out and puts it back.
    fn with_node<R>(&mut self, standalone: R, op: impl FnOnce(&mut Self, &mut FleetNode) -> R) -> R {
        let Some(mut f) = self.fleet.take() else { return standalone };
        let r = op(self, &mut f);
        self.fleet = Some(f);
        r
    }

    /// Once a tick: follow Redis, hold or seek the lease. True when this node may pull APIBAN
    /// now: standalone, leader, or alone after `fleet_fallback` of Redis trouble.
    pub(super) fn fleet_tick(&mut self) -> bool {
        self.with_node(true, Self::tick)
    }

    fn tick(&mut self, f: &mut FleetNode) -> bool {
        if crate::os::stop_requested() {
            if f.role == Role::Leader {
                f.client.release();
                log_info!("stopping: the fleet's lease is released");
            }
            crate::os::exit_now();
        }
        if f.role == Role::Leader {
            self.fleet_lead(f);
        } else if f.quiet_until.is_none_or(|t| Instant::now() >= t) {
            self.fleet_follow(f);
        }
        self.fleet_stats(f);
        matches!(f.role, Role::Leader | Role::Fallback)
    }

    fn fleet_lead(&mut self, f: &mut FleetNode) {
        match f.client.lease() {
            Ok(LeaseState::Leader { taken: false, .. }) => {
                self.fleet_ok(f);
                if f.dirty && f.retry_publish.is_none_or(|t| Instant::now() >= t) {
                    self.fleet_publish(f, None, unix_now());
                }
            }
            // The lease lapsed while Redis was away and we took it again: catch up first.
            Ok(LeaseState::Leader { token, taken: true }) => self.fleet_became_leader(f, token),
            Ok(LeaseState::Follower { .. }) | Err(FleetError::LeaseLost) => self.fleet_lost(f),
            Err(e) => self.fleet_error(f, e),
        }
    }

    fn fleet_follow(&mut self, f: &mut FleetNode) {
        match f.client.poll() {
            Ok(p) => {
                self.fleet_ok(f);
                let meta = match &p {
                    Poll::Update { meta, .. } | Poll::Same(meta) => Some(meta),
                    Poll::Empty => None,
                };
                if !self.fleet_settings_agree(f, meta) {
                    return self.fleet_settings_differ(f);
                }
                match p {
                    Poll::Update { meta, change } => self.fleet_apply(f, &meta, change),
                    // Nothing new: the leader's syncs still show (an alert on last_sync holds).
                    Poll::Same(meta) => {
                        let c = self.m.stats.get();
                        num!(c, last_sync).store(meta.synced_at, Relaxed);
                        num!(c, last_id).store(meta.last_id, Relaxed);
                    }
                    Poll::Empty => {}
                }
            }
            Err(e) => return self.fleet_error(f, e),
        }
        match f.client.lease() {
            Ok(LeaseState::Leader { token, .. }) => self.fleet_became_leader(f, token),
            Ok(LeaseState::Follower { leader }) => {
                if !leader.is_empty() && leader != f.client.settings().node_id {
                    f.other_leader_seen = Some(Instant::now());
                }
                if f.role == Role::Fallback {
                    log_info!("redis answers again: following the fleet's leader ({}) again", f.client.leader());
                    f.role = Role::Follower;
                }
            }
            Err(e) => self.fleet_error(f, e),
        }
    }

    /// Whether the list in Redis was written with our settings (or there is none yet). Says
    /// so, once, when that changes.
    fn fleet_settings_agree(&mut self, f: &mut FleetNode, meta: Option<&Meta>) -> bool {
        let differs = meta.filter(|m| m.settings != f.fingerprint).map(|m| (differences(&f.fingerprint, &m.settings), m.leader.clone()));
        let c = self.m.stats.get();
        match differs {
            None => {
                if f.differs.take().is_some() {
                    // What was polled meanwhile was not applied: read the whole list next.
                    f.client.forget_version();
                    log_info!("fleet: this node's settings are the fleet's again: it follows");
                    text!(c, state).put("ok");
                }
                f.unheld_since = None;
                num!(c, settings_differ).store(0, Relaxed);
                true
            }
            Some((what, by)) => {
                if f.differs.as_deref() != Some(what.as_str()) {
                    log_warn!(
                        "fleet: the shared list (written by '{by}') was made with other settings: {what}; this node neither leads nor follows, and keeps its own table, until they agree"
                    );
                    text!(c, state).put(&format!("settings differ from the fleet's: {what}; neither leading nor following"));
                    f.differs = Some(what);
                }
                num!(c, settings_differ).store(1, Relaxed);
                false
            }
        }
    }

    /// Our settings differ from the fleet's: no list taken, no lease sought, unless nobody has
    /// held the lease for 2 × leader_ttl (the fleet that wrote the list is gone, or every node
    /// now runs other settings): then this node may lead and write its own.
    fn fleet_settings_differ(&mut self, f: &mut FleetNode) {
        if f.role == Role::Fallback {
            return;
        }
        let held = match f.client.lease_holder() {
            Ok(h) => h.is_some(),
            Err(e) => return self.fleet_error(f, e),
        };
        if held {
            f.unheld_since = None;
            return;
        }
        let since = *f.unheld_since.get_or_insert_with(Instant::now);
        if since.elapsed() < f.client.settings().leader_ttl * 2 {
            return;
        }
        if let Ok(LeaseState::Leader { token, .. }) = f.client.lease() {
            log_warn!("fleet: nobody has led the fleet for {} s: this node leads with its own settings and writes its list", since.elapsed().as_secs());
            f.dirty = true;
            f.unheld_since = None;
            self.fleet_became_leader(f, token);
        }
    }

    fn fleet_became_leader(&mut self, f: &mut FleetNode, token: u64) {
        // Nothing is written to the list while we hold the lease: read what is there last.
        let mut lost_history = false;
        match f.client.poll() {
            Ok(Poll::Empty) => {
                lost_history = true;
                // A new fleet, or Redis restarted empty: write what we hold, if anything.
                f.dirty = !self.master.is_empty() || self.last_id.is_some();
            }
            // Another fleet's list (see fleet_settings_differ): ours replaces it.
            Ok(Poll::Same(meta) | Poll::Update { meta, .. }) if meta.settings != f.fingerprint => f.dirty = true,
            Ok(Poll::Same(meta)) => self.fleet_adopt_schedule(f, &meta),
            Ok(Poll::Update { meta, change }) => {
                self.fleet_apply(f, &meta, change);
                self.fleet_adopt_schedule(f, &meta);
            }
            Err(e) => return self.fleet_error(f, e),
        }
        // We hold more than Redis does (a newer list kept, or merged): Redis gets all of it.
        f.dirty |= f.diverged;
        // One budget for the fleet: the limiter counts what every leader sent.
        match f.client.history() {
            Ok(h) => {
                lost_history |= h.is_empty();
                self.limiter.adopt(Instant::now(), &h, f.client.settings().request_max)
            }
            Err(e) => {
                // Without the history we could exceed the fleet's rate limit: let another try.
                f.client.release();
                return self.fleet_error(f, e);
            }
        }
        let s = f.client.settings();
        if lost_history && f.other_leader_seen.is_some_and(|t| t.elapsed() <= s.window + s.request_max) {
            // Redis lost the fleet's history, and another node led within the window. What it
            // sent is in the copy our last poll took; since then it may have sent one more. With
            // no copy, the whole budget counts as spent: a window's wait rather than a 429.
            let now = Instant::now();
            match f.client.history_copy() {
                Some((at, copy)) => {
                    let since = at.elapsed().as_millis() as i64;
                    let aged: Vec<(String, i64)> = copy.iter().map(|(n, ms)| (n.clone(), ms.saturating_add(since))).collect();
                    self.limiter.adopt(now, &aged, s.request_max);
                    self.limiter.record_maybe(now + s.request_max);
                    log_info!("fleet: redis lost the fleet's request history; the budget is counted from this node's last copy of it");
                }
                None => {
                    self.limiter.assume_spent(now);
                    log_info!("fleet: redis lost the fleet's request history; the first request waits one rate-limit window");
                }
            }
        }
        f.other_leader_seen = None;
        let was = f.role;
        f.role = Role::Leader;
        self.fleet_ok(f);
        log_info!(
            "fleet: this node leads now (lease token {token}{}); next pull from ID {}",
            if was == Role::Fallback { ", after a fallback" } else { "" },
            self.last_id.unwrap_or(START_ID)
        );
        if f.dirty {
            self.fleet_publish(f, None, unix_now());
        }
    }

    /// A node that takes over goes on where the fleet is: from its last ID, on its schedule.
    fn fleet_adopt_schedule(&mut self, f: &mut FleetNode, meta: &Meta) {
        let cfg = &self.m.settings.cfg;
        if meta.last_id > START_ID && meta.last_id >= self.last_id.unwrap_or(0) {
            self.last_id = Some(meta.last_id);
        }
        let (mono, now) = (Instant::now(), unix_now());
        self.next_pull = mono + schedule_from(meta.synced_at, cfg.interval, now);
        f.full_at = meta.full_at.min(now);
        // Unknown (a list written back after Redis lost it): a full pull in full_resync.
        let full_at = if meta.full_at > 0 { meta.full_at } else { now };
        self.next_full = mono + schedule_from(full_at, cfg.full_resync, now);
    }

    fn fleet_lost(&mut self, f: &mut FleetNode) {
        if f.role == Role::Leader {
            log_warn!("fleet: the lease is gone (now held by '{}'): this node stops asking APIBAN and follows", f.client.leader());
        }
        f.role = Role::Follower;
        f.diverged |= self.abandon_pull();
    }

    /// This node holds more than Redis does (it kept what an abandoned pull gathered).
    pub(super) fn fleet_diverged(&mut self) {
        if let Some(f) = self.fleet.as_mut() {
            f.diverged = true;
        }
    }

    /// A follower's update from Redis: into the list held, the table and the snapshot.
    fn fleet_apply(&mut self, f: &mut FleetNode, meta: &Meta, change: Change) {
        let now = unix_now();
        let added: usize;
        let mut removed = 0;
        match change {
            Change::Full(list) => {
                let list = Held::from_entries(list);
                let held = self.last_id.unwrap_or(0);
                // Same age and we hold more (an abandoned pull's addresses, a fallback's): keep.
                if held > meta.last_id || (f.diverged && held >= meta.last_id) {
                    // Older than what we hold (a node with an old snapshot wrote it after a
                    // flush, or we pulled alone meanwhile): never go backwards, keep both.
                    added = merge(&mut self.master, list).0;
                    f.diverged = true;
                } else {
                    f.diverged = false;
                    added = self.master.count_missing(&list);
                    removed = list.count_missing(&self.master);
                    self.master = list;
                    if meta.last_id > START_ID {
                        self.last_id = Some(meta.last_id);
                    }
                }
            }
            Change::Delta { add, del } => {
                (added, removed) = self.master.apply(add, del);
                if meta.last_id > START_ID {
                    self.last_id = Some(meta.last_id.max(self.last_id.unwrap_or(0)));
                }
            }
        }
        let expired = self.commit(now, true, 0).expired;
        let c = self.m.stats.get();
        num!(c, fleet_syncs).fetch_add(1, Relaxed);
        num!(c, last_id).store(self.last_id.unwrap_or(0), Relaxed);
        num!(c, last_sync).store(meta.synced_at, Relaxed);
        text!(c, last_error).put("");
        text!(c, state).put("ok");
        log_info!(
            "fleet: version {} from '{}' applied: {added} added, {removed} removed, {expired} expired, total {}",
            meta.version,
            meta.leader,
            self.master.len()
        );
    }

    /// Before an APIBAN request. `None`: do not send (the lease is gone, or Redis cannot
    /// confirm it for a whole request); else, for a leader, the request's name in the fleet's
    /// history and the time its lease covers.
    pub(super) fn fleet_before_request(&mut self) -> Option<Option<Reserved>> {
        self.with_node(Some(None), |r, f| match f.role {
            Role::Fallback => Some(None),
            Role::Follower => None,
            Role::Leader => match f.client.before_request() {
                Ok(reserved) => Some(Some(reserved)),
                Err(e) => {
                    r.fleet_error(f, e);
                    None
                }
            },
        })
    }

    /// After an APIBAN request's reply (or failure) is complete.
    pub(super) fn fleet_after_request(&mut self) {
        self.with_node((), |r, f| {
            if f.role == Role::Leader {
                match f.client.after_request() {
                    Ok(()) => {}
                    // The reply is in; what it brought is still good. No more requests, though.
                    Err(FleetError::LeaseLost) => f.role = Role::Follower,
                    Err(e) => r.fleet_error(f, e),
                }
            }
        })
    }

    /// Before a leader's pull is merged: what it changes, for an incremental write to Redis
    /// (None: write it all). The rule is merge()'s: an address is new, or listed again later.
    pub(super) fn fleet_delta(&self, got: &Held, full: bool, now: u64) -> Option<SyncDelta> {
        let f = self.fleet.as_ref()?;
        if f.role != Role::Leader || full || f.dirty {
            return None;
        }
        let add = self.master.newer_in(got);
        let ttl = self.m.settings.cfg.ttl;
        let del = self.master.iter().filter(|&(_, at)| at as u64 + ttl <= now).map(|(k, _)| k).collect();
        Some(SyncDelta { add, del })
    }

    /// After a leader's sync: shares it. `delta` None, or an overflow, writes the whole list.
    pub(super) fn fleet_synced(&mut self, delta: Option<SyncDelta>, full_pull: bool, now: u64) {
        self.with_node((), |r, f| {
            if f.role == Role::Leader {
                if full_pull {
                    f.full_at = now;
                }
                r.fleet_publish(f, delta, now);
            }
        })
    }

    fn fleet_publish(&mut self, f: &mut FleetNode, delta: Option<SyncDelta>, now: u64) {
        let info = SyncInfo { last_id: self.last_id.unwrap_or(0), synced_at: now, full_at: f.full_at };
        let changed = delta.as_ref().map(|d| Changed { add: &d.add, del: &d.del });
        match f.client.publish(&self.master.entries(), changed, info) {
            Ok(v) => {
                f.dirty = false;
                f.diverged = false;
                f.retry_publish = None;
                f.publish_failures = 0;
                num!(self.m.stats.get(), fleet_version).store(v, Relaxed);
            }
            Err(FleetError::LeaseLost) => self.fleet_lost(f),
            Err(e) => {
                f.dirty = true;
                f.publish_failures += 1;
                f.retry_publish = Some(Instant::now() + exp_backoff(PUBLISH_RETRY.min(f.backoff_cap), f.publish_failures, f.backoff_cap));
                self.fleet_error(f, e);
            }
        }
    }

    /// A leader's first full pull, mid-way: the whole of what it gathered so far goes to Redis
    /// (with no last ID and no sync time: a node that takes over pulls in full at once), so the
    /// followers block it too.
    pub(super) fn fleet_progress(&mut self, held: &Held) {
        self.with_node((), |r, f| {
            if f.role == Role::Leader {
                let info = SyncInfo { last_id: r.last_id.unwrap_or(0), synced_at: 0, full_at: 0 };
                match f.client.publish(&held.entries(), None, info) {
                    Ok(v) => num!(r.m.stats.get(), fleet_version).store(v, Relaxed),
                    Err(e) => r.fleet_error(f, e),
                }
            }
        })
    }

    /// A reload asked of a follower: it re-reads the whole list from Redis (the leader pulls
    /// APIBAN). True when handled here.
    pub(super) fn fleet_reload(&mut self) -> bool {
        let Some(f) = self.fleet.as_mut() else { return false };
        if f.role != Role::Follower {
            return false;
        }
        f.client.forget_version();
        log_info!("reload requested: this node follows '{}', so it reads the whole list from Redis again", f.client.leader());
        true
    }

    fn fleet_ok(&mut self, f: &mut FleetNode) {
        f.failures = 0;
        f.quiet_until = None;
        if let Some(since) = f.trouble_since.take() {
            log_info!("redis answers again after {} s", since.elapsed().as_secs());
            let c = self.m.stats.get();
            text!(c, last_error).put("");
            text!(c, state).put("ok");
        }
        f.logged = None;
    }

    /// Redis trouble (or data that is not ours): the table stays as it is; stats and the log
    /// say what is wrong; after `fleet_fallback` of it the node pulls alone.
    fn fleet_error(&mut self, f: &mut FleetNode, e: FleetError) {
        if e == FleetError::LeaseLost {
            return self.fleet_lost(f);
        }
        let since = *f.trouble_since.get_or_insert_with(Instant::now);
        // Data that is not ours, a refused write, refused credentials: not on every tick, a
        // follower's next call waits, doubling, up to `interval`. A Redis that does not answer is
        // tried again once a second (the client's reconnect pace), so that its return is seen at once.
        if !matches!(e, FleetError::Unavailable(_)) {
            f.failures += 1;
            f.quiet_until = Some(Instant::now() + exp_backoff(super::TICK, f.failures, f.backoff_cap));
        }
        let text = crate::log::redact(&e.to_string());
        let c = self.m.stats.get();
        text!(c, last_error).put(&text);
        if f.role != Role::Fallback {
            text!(c, state).put(&format!("{text}; the table in use is kept"));
        }
        if f.logged.as_deref() != Some(text.as_str()) {
            log_warn!("fleet: {text}; the table in use is kept, no request to APIBAN without the lease");
            f.logged = Some(text);
        }
        if let Some(limit) = f.fallback {
            if f.role != Role::Fallback && since.elapsed() >= limit {
                log_warn!(
                    "fleet: redis has failed for {} s (fleet_fallback): this node pulls APIBAN alone until redis answers; the fleet may exceed rate_limit meanwhile",
                    since.elapsed().as_secs()
                );
                f.role = Role::Fallback;
                f.diverged = true;
                self.abandon_pull();
            }
        }
        if f.role == Role::Leader && since.elapsed() >= f.client.settings().leader_ttl {
            // Our lease has expired in Redis by now, whether or not Redis can say so.
            self.fleet_lost(f);
        }
    }

    fn fleet_stats(&mut self, f: &mut FleetNode) {
        let c = self.m.stats.get();
        num!(c, redis_errors).store(f.client.errors(), Relaxed);
        num!(c, leading).store((f.role == Role::Leader) as u64, Relaxed);
        if f.role != Role::Leader || f.client.version() > 0 {
            num!(c, fleet_version).store(f.client.version(), Relaxed);
        }
        let leader = if f.role == Role::Leader { f.client.settings().node_id.as_str() } else { f.client.leader() };
        if f.shown.0 != f.role || f.shown.1 != leader {
            text!(c, role).put(f.role.name());
            text!(c, leader).put(leader);
            f.shown = (f.role, leader.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_differ_are_named_and_the_key_is_not_among_them() {
        let a = crate::config::Config {
            url: "https://user:pw@apiban.example/base".into(),
            apikey: Some("secret-key".into()),
            ..Default::default()
        };
        let fa = fingerprint(&a);
        assert!(!fa.contains("pw") && !fa.contains("secret-key") && fa.contains("url=https://apiban.example/base"), "{fa}");
        let mut b = a.clone();
        b.rate_limit.max = 5;
        b.ttl = 60;
        let d = differences(&fingerprint(&b), &fa);
        assert_eq!(d, "rate_limit is 5/120 here, 11/120 in the fleet; ttl is 60 here, 604800 in the fleet");
        assert_eq!(fingerprint(&a), fa, "stable");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let cap = Duration::from_secs(5);
        let b = |n| exp_backoff(Duration::from_millis(200), n, cap);
        assert_eq!((b(1), b(2), b(3)), (Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)));
        assert_eq!((b(6), b(1000)), (cap, cap));
    }

    #[test]
    fn times_from_redis_are_clamped() {
        let now = 1_800_000_000;
        assert_eq!(schedule_from(now - 10, 60, now), Duration::from_secs(50));
        assert_eq!(schedule_from(now - 100, 60, now), Duration::ZERO);
        // From the future (a skewed clock, a hostile value): at most one period.
        assert_eq!(schedule_from(now + 3600, 60, now), Duration::from_secs(60));
        assert_eq!(schedule_from(u64::MAX, 86400, now), Duration::from_secs(86400));
        // Instant + the result must not overflow for any period the config accepts.
        let _ = Instant::now() + schedule_from(u64::MAX, 10 * 365 * 86400, now);
    }
}
