//! The ban keeper: a thread of the refresher process (started after the fork, like everything
//! of the refresher), so that a ban takes effect within milliseconds even while the refresher
//! waits on APIBAN or on Redis for the list.
//!
//! Every `TICK` it takes the requests the workers queued, drops what expired, keeps `max_bans`,
//! republishes the ban tables when anything changed, writes the bans file at most once a
//! second, and in a fleet writes its records to Redis and applies what a second thread, the
//! reader, got from Redis's log. The reader blocks on the log on a connection of its own, so a
//! ban from another node is applied as soon as it is written, and the keeper's pace does not
//! hang on Redis's (whose blocking reads time out only at its `hz`, every 100 ms). The keeper is
//! the only writer of `bans`, `exempt` and `board`.

use super::share::{News, Share, RETRY};
use super::store::{self, Applied, Store};
use super::ring::Op;
use crate::clock::unix_now_ms;
use crate::fleet::FleetSettings;
use crate::log::{log_err, log_info, log_warn};
use crate::module::Module;
use crate::stats::num;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// The keeper's pace: a queued ban is in force within this (and a little work).
const TICK: Duration = Duration::from_millis(10);
/// Tables of this many bans or more are republished at most every LARGE_EVERY.
const LARGE: usize = 1000;
const LARGE_EVERY: Duration = Duration::from_millis(50);
/// The longest blocking read of Redis's log: well within the connection's read timeout.
const BLOCK_MAX_MS: u64 = 1000;
/// The board (the admin commands' records) is republished at most this often, but at once for
/// an admin command that waits.
const BOARD_EVERY: Duration = Duration::from_secs(1);
/// The bans file is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Starts the keeper thread. Called once, in the refresher process; `fleet`: the fleet's Redis,
/// in fleet mode.
pub fn start(m: &'static Module, fleet: Option<FleetSettings>) {
    // From now on two threads of this process log: the host's logger is not ours to trust with that.
    crate::log::serialize();
    let spawned = std::thread::Builder::new().name("apiban bans".into()).spawn(move || run(m, fleet));
    if let Err(e) = spawned {
        log_err!("cannot start the ban keeper: {e}; apiban_ban and apiban.ban have no effect");
    }
}

fn run(m: &'static Module, fleet: Option<FleetSettings>) {
    let cfg = &m.settings.cfg;
    let shared = cfg.redis_url.is_some();
    let mut store = Store::new(cfg.max_bans, &m.node, shared);
    for (k, b) in m.initial_bans.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default() {
        store.adopt(k, b);
    }
    let block_ms = (cfg.timeout * 1000 / 2).min(BLOCK_MAX_MS);
    let news = fleet.clone().map(|fs| reader(Share::new(fs, cfg.max_bans), block_ms));
    let mut writer = fleet.map(|fs| Share::new(fs, cfg.max_bans));
    loop {
        let r = catch_unwind(AssertUnwindSafe(|| Keeper::new(m, &mut store, writer.as_mut(), news.as_ref()).run()));
        if r.is_err() {
            log_err!("ban keeper: internal error, restarting in 1 s (the bans in force are kept)");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// What the reader hands the keeper.
enum FromRedis {
    News(News),
    Down(String),
}

/// The reader thread: Redis's log (and every FULL_EVERY all records) into a bounded channel.
fn reader(mut share: Share, block_ms: u64) -> Receiver<FromRedis> {
    // Bounded: a keeper that stalls holds the reader, never the memory.
    let (tx, rx) = sync_channel(64);
    let spawned = std::thread::Builder::new().name("apiban bans rx".into()).spawn(move || loop {
        match catch_unwind(AssertUnwindSafe(|| share.receive(unix_now_ms(), block_ms))) {
            Ok(Ok(Some(news))) => {
                if tx.send(FromRedis::News(news)).is_err() {
                    return;
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                if tx.send(FromRedis::Down(e.to_string())).is_err() {
                    return;
                }
                // The log may move on without us: everything again when Redis answers.
                share.reset();
                std::thread::sleep(RETRY);
            }
            // A panic, logged by the hook: start again.
            Err(_) => std::thread::sleep(RETRY),
        }
    });
    if let Err(e) = spawned {
        log_err!("cannot start the ban reader: {e}; bans from other nodes are not applied here");
    }
    rx
}

struct Keeper<'a> {
    m: &'static Module,
    store: &'a mut Store,
    writer: Option<&'a mut Share>,
    news: Option<&'a Receiver<FromRedis>>,
    /// Records may be waiting to go to Redis.
    outgoing: bool,
    file: Option<std::path::PathBuf>,
    changed: bool,
    unsaved: bool,
    saved_at: Option<Instant>,
    redis_retry: Option<Instant>,
    redis_down: Option<String>,
    /// The second of the last look for expired records.
    expired_at: u64,
    /// When the tables were last published, and how many bans they then held.
    tables_at: Option<Instant>,
    tables_len: usize,
    /// The board lags the tables (it is republished at its own pace).
    board_stale: bool,
    board_at: Option<Instant>,
}

impl<'a> Keeper<'a> {
    fn new(m: &'static Module, store: &'a mut Store, writer: Option<&'a mut Share>, news: Option<&'a Receiver<FromRedis>>) -> Keeper<'a> {
        let file = m.settings.cfg.snapshot_file.as_deref().map(store::file_for);
        // Publish what is held at once: after a restart of this loop, and at the first start
        // (mod_init published the file already; the store may know more now).
        Keeper { m, store, writer, news, outgoing: true, file, changed: true, unsaved: false, saved_at: None, redis_retry: None, redis_down: None, board_stale: true, board_at: None, expired_at: 0, tables_at: None, tables_len: 0 }
    }

    fn run(&mut self) -> ! {
        loop {
            let now_ms = unix_now_ms();
            let now = now_ms / 1000;
            self.m.bans.set_now(now);
            self.m.exempt.set_now(now);
            self.take_requests(now_ms);
            self.exchange(now_ms);
            let c = self.m.stats.get();
            // Expiry is in whole seconds: one look per second.
            if now != self.expired_at && self.store.expire(now) > 0 {
                self.changed = true;
            }
            self.expired_at = now;
            let evicted = self.store.evict();
            if evicted > 0 {
                num!(c, ban_evictions).fetch_add(evicted as u64, Relaxed);
                log_warn!("bans: {evicted} evicted, the oldest first, to stay within max_bans ({})", self.m.settings.cfg.max_bans);
                self.changed = true;
            }
            self.publish(now);
            self.save();
            std::thread::sleep(TICK);
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
            self.outgoing |= applied != Applied::Nothing;
        }
    }

    /// Redis: what the reader brought in, our pending records out (retried once a second while
    /// Redis is away; they are kept meanwhile, and in the bans file).
    fn exchange(&mut self, now_ms: u64) {
        if let Some(rx) = self.news {
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    FromRedis::News(news) => {
                        let full = matches!(news, News::Full(_));
                        self.changed |= news.apply(self.store, now_ms / 1000) > 0;
                        // A full read marks what Redis lacks to be written back.
                        self.outgoing |= full;
                        self.up();
                    }
                    FromRedis::Down(text) => self.down(text),
                }
            }
        }
        let Some(writer) = self.writer.as_deref_mut() else { return };
        if !self.outgoing || self.redis_retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match writer.send(self.store, now_ms) {
            Ok(sent) => {
                self.unsaved |= sent > 0;
                self.outgoing = false;
                self.redis_retry = None;
                self.up();
            }
            Err(e) => {
                self.redis_retry = Some(Instant::now() + RETRY);
                self.down(e.to_string());
            }
        }
    }

    fn up(&mut self) {
        if let Some(was) = self.redis_down.take() {
            log_info!("bans: redis answers again ({was} before); bans shared again");
        }
    }

    fn down(&mut self, text: String) {
        if self.redis_down.as_deref() != Some(text.as_str()) {
            log_warn!("bans: {text}; bans made here are kept and sent when it answers");
        }
        self.redis_down = Some(text);
    }

    /// The tables at once; the board at most once a second, or at once when an admin command
    /// waits for it.
    fn publish(&mut self, now: u64) {
        let m = self.m;
        // A publish rebuilds the tables whole: under a flood of bans, large tables are rebuilt
        // at most every LARGE_EVERY, which bounds the keeper's work whatever the flood's rate.
        // An admin command waiting for a change gets the tables first, then the board.
        let wanted = m.board.take_wanted();
        let pace = if self.tables_len >= LARGE { LARGE_EVERY } else { Duration::ZERO };
        if self.changed && (wanted || self.tables_at.is_none_or(|t| t.elapsed() >= pace)) {
            let live = self.store.in_force(now);
            self.tables_len = live.len();
            self.tables_at = Some(Instant::now());
            let n = super::publish_tables(&m.bans, &m.exempt, &live);
            // After the tables: a lookup that sees the count then finds them published.
            m.table.set_companion(n as u64);
            num!(m.stats.get(), bans).store(n as u64, Relaxed);
            self.changed = false;
            self.unsaved = true;
            self.board_stale = true;
        }
        if wanted || (self.board_stale && self.board_at.is_none_or(|t| t.elapsed() >= BOARD_EVERY)) {
            super::publish_board(&m.board, self.store.in_force(now));
            self.board_stale = false;
            self.board_at = Some(Instant::now());
        }
    }

    fn save(&mut self) {
        let Some(path) = &self.file else { return };
        if !self.unsaved || self.saved_at.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return;
        }
        // A server that never banned anything leaves no bans file beside its snapshot.
        if self.store.is_empty() && !path.exists() {
            self.unsaved = false;
            return;
        }
        self.saved_at = Some(Instant::now());
        match crate::snapshot::write_durably(path, store::encode(self.store).as_bytes()) {
            Ok(()) => self.unsaved = false,
            Err(e) => log_warn!("bans: cannot write {}: {e}; the bans in force are kept, a restart would start from the previous file", path.display()),
        }
    }
}
