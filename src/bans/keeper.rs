//! The ban keeper: a thread of the refresher process (started after the fork, like everything
//! of the refresher), so that a ban takes effect within milliseconds even while the refresher
//! waits on APIBAN or on Redis for the list.
//!
//! Every `TICK` (or as soon as Redis's log brings news, in a fleet) it takes the requests the
//! workers queued, drops what expired, keeps `max_bans`, republishes the ban tables when
//! anything changed, writes the bans file at most once a second, and in a fleet exchanges
//! records with Redis. It is the only writer of `bans`, `exempt` and `board`.

use super::share::{Share, BLOCK_MS, RETRY};
use super::store::{self, Applied, Store};
use super::ring::Op;
use crate::clock::unix_now_ms;
use crate::log::{log_err, log_info, log_warn};
use crate::module::Module;
use crate::stats::num;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The keeper's pace when it has no Redis to wait on.
const TICK: Duration = Duration::from_millis(BLOCK_MS);
/// The bans file is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Starts the keeper thread. Called once, in the refresher process.
pub fn start(m: &'static Module) {
    // From now on two threads of this process log: the host's logger is not ours to trust with that.
    crate::log::serialize();
    let spawned = std::thread::Builder::new().name("apiban bans".into()).spawn(move || run(m));
    if let Err(e) = spawned {
        log_err!("cannot start the ban keeper: {e}; apiban_ban and apiban.ban have no effect");
    }
}

fn run(m: &'static Module) {
    let cfg = &m.settings.cfg;
    let shared = cfg.redis_url.is_some();
    let mut store = Store::new(cfg.max_bans, &m.node, shared);
    for (k, b) in m.initial_bans.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default() {
        store.adopt(k, b);
    }
    let mut share = crate::refresher::fleet_settings(&m.settings).map(|fs| Share::new(fs, cfg.max_bans));
    loop {
        let r = catch_unwind(AssertUnwindSafe(|| Keeper::new(m, &mut store, share.as_mut()).run()));
        if r.is_err() {
            log_err!("ban keeper: internal error, restarting in 1 s (the bans in force are kept)");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

struct Keeper<'a> {
    m: &'static Module,
    store: &'a mut Store,
    share: Option<&'a mut Share>,
    file: Option<std::path::PathBuf>,
    changed: bool,
    unsaved: bool,
    saved_at: Option<Instant>,
    redis_retry: Option<Instant>,
    redis_down: Option<String>,
}

impl<'a> Keeper<'a> {
    fn new(m: &'static Module, store: &'a mut Store, share: Option<&'a mut Share>) -> Keeper<'a> {
        let file = m.settings.cfg.snapshot_file.as_deref().map(store::file_for);
        // Publish what is held at once: after a restart of this loop, and at the first start
        // (mod_init published the file already; the store may know more now).
        Keeper { m, store, share, file, changed: true, unsaved: false, saved_at: None, redis_retry: None, redis_down: None }
    }

    fn run(&mut self) -> ! {
        loop {
            let now_ms = unix_now_ms();
            let now = now_ms / 1000;
            self.m.bans.set_now(now);
            self.m.exempt.set_now(now);
            self.take_requests(now_ms);
            let c = self.m.stats.get();
            if self.store.expire(now) > 0 {
                self.changed = true;
            }
            let evicted = self.store.evict();
            if evicted > 0 {
                num!(c, ban_evictions).fetch_add(evicted as u64, Relaxed);
                log_warn!("bans: {evicted} evicted, the oldest first, to stay within max_bans ({})", self.m.settings.cfg.max_bans);
                self.changed = true;
            }
            if self.changed {
                self.publish(now);
            }
            self.exchange(now_ms);
            if self.changed {
                self.publish(now);
            }
            self.save();
        }
    }

    /// What the workers and the admin commands queued.
    fn take_requests(&mut self, now_ms: u64) {
        let c = self.m.stats.get();
        while let Some(r) = self.m.ring.pop() {
            let listed = match r.op {
                Op::Unban => self.m.table.expiry(r.key),
                Op::Ban => None,
            };
            let applied = self.store.apply(&r, now_ms, listed);
            let ip = r.key.to_ip();
            match applied {
                Applied::Banned => {
                    num!(c, bans_made).fetch_add(1, Relaxed);
                    let why = if r.reason_len > 0 { format!(": {}", r.reason()) } else { String::new() };
                    log_info!("bans: {ip} banned for {} s by node {}{why}", r.ttl, self.m.node);
                }
                Applied::Lifted => log_info!("bans: {ip} unbanned by node {}", self.m.node),
                Applied::Exempted => {
                    let until = self.store.get(r.key).map_or(0, |b| b.expires);
                    log_info!("bans: {ip} unbanned by node {}: listed by APIBAN, let through until its listing ends (unix {until})", self.m.node)
                }
                Applied::Renewed | Applied::Nothing => {}
            }
            self.changed |= applied != Applied::Nothing;
        }
    }

    /// Redis: our pending records out, the fleet's in. Without Redis (or while it is away),
    /// a plain wait of TICK.
    fn exchange(&mut self, now_ms: u64) {
        let Some(share) = self.share.as_deref_mut() else { return std::thread::sleep(TICK) };
        if self.redis_retry.is_some_and(|t| Instant::now() < t) {
            return std::thread::sleep(TICK);
        }
        let r = share.send(self.store, now_ms).and_then(|sent| Ok((sent, share.receive(self.store, now_ms)?)));
        match r {
            Ok((sent, got)) => {
                if let Some(was) = self.redis_down.take() {
                    log_info!("bans: redis answers again ({was} before); bans shared again");
                }
                self.unsaved |= sent > 0;
                self.changed |= got.changed > 0;
                self.redis_retry = None;
            }
            Err(e) => {
                let text = e.to_string();
                if self.redis_down.as_deref() != Some(text.as_str()) {
                    log_warn!("bans: {text}; bans made here are kept and sent when it answers");
                }
                self.redis_down = Some(text);
                self.redis_retry = Some(Instant::now() + RETRY);
                // The log may have moved on without us: read everything when it answers.
                share.reset();
            }
        }
    }

    fn publish(&mut self, now: u64) {
        let m = self.m;
        let n = super::publish(&m.bans, &m.exempt, &m.board, &self.store.in_force(now));
        num!(m.stats.get(), bans).store(n as u64, Relaxed);
        self.changed = false;
        self.unsaved = true;
    }

    fn save(&mut self) {
        let Some(path) = &self.file else { return };
        if !self.unsaved || self.saved_at.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return;
        }
        self.saved_at = Some(Instant::now());
        match crate::snapshot::write_durably(path, store::encode(self.store).as_bytes()) {
            Ok(()) => self.unsaved = false,
            Err(e) => log_warn!("bans: cannot write {}: {e}; the bans in force are kept, a restart would start from the previous file", path.display()),
        }
    }
}
