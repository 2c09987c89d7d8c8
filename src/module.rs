//! The module's state in one process and what the boundary asks of it.
//!
//! `MODULE` is set once in the main process by mod_init, before the fork; each child gets a copy
//! of this Rust value whose `table` and `stats` point into the same shared mappings. Nothing in
//! it changes after the fork except through those mappings.
//!
//! It is a plain pointer rather than a `OnceLock`: a lookup reads it with one load (no test of
//! the lock's state word beside it), and it is stored once, before any other process or thread
//! exists that could read it.

use crate::addr::{self, Key};
use crate::allow::AllowList;
use crate::bans::{self, board::Board, ring::Ring, Ban};
use crate::boundary::{apiban_stats, apiban_verdict, APIBAN_BAD_ADDRESS, APIBAN_BANNED, APIBAN_DROPPED, APIBAN_LISTED, APIBAN_NOT_LISTED, APIBAN_QUEUED};
use crate::clock::unix_now;
use crate::config::{Config, Settings};
use crate::held::split_live;
use crate::log::{log_info, log_warn};
use crate::snapshot::{self, Snapshot};
use crate::stats::{num, text, Stats};
use crate::table::Table;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Mutex;

pub struct Module {
    pub settings: Settings,
    pub table: Table,
    pub stats: Stats,
    pub allow: AllowList,
    /// The snapshot read at start, handed to the refresher (its copy, after the fork).
    pub initial: Mutex<Option<Snapshot>>,
    /// Local bans in force, probed after the feed's table misses, only when the feed's table's
    /// companion count says there are some.
    pub bans: Table,
    /// Feed addresses an operator unbanned, probed after a feed hit (only when not empty).
    pub exempt: Table,
    /// The local bans with who, when, why: for the admin commands.
    pub board: Board,
    /// Ban requests from the workers and the admin commands to the ban keeper.
    pub ring: Ring,
    /// The bans file read at start, handed to the ban keeper.
    pub initial_bans: Mutex<Option<Vec<(Key, Ban)>>>,
    /// This node's name in ban records: node_id, else the host name.
    pub node: String,
}

/// Null until mod_init succeeds, then the leaked `Module`, never freed nor changed again.
static MODULE: AtomicPtr<Module> = AtomicPtr::new(std::ptr::null_mut());
/// Parameters as modparam lines set them, before mod_init; main process only.
static PARAMS: Mutex<Option<Config>> = Mutex::new(None);

#[inline(always)]
pub fn get() -> Option<&'static Module> {
    // SAFETY: the pointer is null or comes from Box::leak in init(), which publishes it with
    // Release after the Module is complete; it is never freed, so the reference is 'static.
    unsafe { MODULE.load(Acquire).as_ref() }
}

pub fn set_param(name: &str, value: &str) -> Result<(), String> {
    let mut p = PARAMS.lock().unwrap_or_else(|e| e.into_inner());
    p.get_or_insert_with(Config::default).set(name, value)
}


/// mod_init: check the parameters, make the shared table, load the snapshot.
pub fn init() -> Result<(), String> {
    if get().is_some() {
        return Ok(());
    }
    let cfg = PARAMS.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let settings = cfg.finish(crate::os::phys_mem())?;
    use crate::log::{set_secret, Secret};
    set_secret(Secret::ApiKey, &settings.key);
    set_secret(Secret::ProxyPassword, settings.cfg.proxy.as_ref().and_then(|p| p.password()).unwrap_or(""));
    set_secret(Secret::RedisPassword, settings.cfg.redis_url.as_ref().and_then(|t| t.password.as_deref()).unwrap_or(""));
    let max = settings.cfg.max_entries;
    let table = Table::with_pages(max, settings.cfg.huge_pages).map_err(|e| {
        format!("parameter 'max_entries': cannot reserve shared memory for {max} entries: {e}")
    })?;
    let (h4, h6) = table.huge();
    if h4 || h6 {
        let yes = |b: bool| if b { "in huge pages" } else { "in normal pages" };
        log_info!("huge_pages: the feed table's IPv4 part is {}, its IPv6 part {}", yes(h4), yes(h6));
    }
    for why in table.huge_refused() {
        log_warn!(
            "parameter 'huge_pages': no huge pages for {why}; using normal pages. Reserve them before the start \
             with sysctl vm.nr_hugepages (HugePages_Free in /proc/meminfo says how many are free)"
        );
    }
    let stats = Stats::new().map_err(|e| format!("cannot create the shared statistics: {e}"))?;
    let now = unix_now();
    table.set_now(now);
    num!(stats.get(), max_entries).store(max as u64, Relaxed);

    let mut initial = None;
    if let Some(path) = &settings.cfg.snapshot_file {
        let removed = snapshot::remove_stale_temps(path);
        if removed > 0 {
            log_info!("snapshot {}: removed {removed} temporary file(s) left by an interrupted write", path.display());
        }
        // A warning, not a refusal to start: blocking works without a snapshot; only a restart
        // while APIBAN is unreachable would then start empty.
        if let Err(e) = snapshot::check_dir(path) {
            log_warn!("parameter 'snapshot_file': {e}");
        }
        match snapshot::load(path, max) {
            Ok(Some(s)) => {
                let (v4, v6) = split_live(&s.entries, settings.cfg.ttl, now, max);
                let (n4, n6) = table.publish(&crate::table::Entries { v4: &v4, v6: &v6 }, now ^ 0x5eed);
                let c = stats.get();
                num!(c, entries).store((n4 + n6) as u64, Relaxed);
                num!(c, ipv4).store(n4 as u64, Relaxed);
                num!(c, ipv6).store(n6 as u64, Relaxed);
                num!(c, last_id).store(s.last_id, Relaxed);
                num!(c, last_sync).store(s.saved_at, Relaxed);
                log_info!(
                    "snapshot {} loaded: {} entries ({} still listed), last ID {}",
                    path.display(),
                    s.entries.len(),
                    v4.len() + v6.len(),
                    s.last_id
                );
                initial = Some(s);
            }
            Ok(None) => {
                log_info!("snapshot {}: none yet, starting empty", path.display())
            }
            Err(e) => log_warn!("snapshot {} ignored: {e}; starting empty", path.display()),
        }
    }
    let max_bans = settings.cfg.max_bans;
    let reserve = |what: &str, r: std::io::Result<Table>| {
        r.map_err(|e| format!("parameter 'max_bans': cannot reserve shared memory for {max_bans} {what}: {e}"))
    };
    // The bans tables stay in normal pages whatever `huge_pages`: lookups probe them only while
    // local bans exist, and each would hold at least two huge pages for a few hundred KB.
    let bans = reserve("bans", Table::new(max_bans))?;
    let exempt = reserve("exemptions", Table::new(max_bans))?;
    let board = Board::new(max_bans).map_err(|e| format!("parameter 'max_bans': cannot reserve shared memory for {max_bans} ban records: {e}"))?;
    let ring = Ring::new().map_err(|e| format!("cannot create the shared queue of bans: {e}"))?;
    bans.set_now(now);
    exempt.set_now(now);
    let node = settings.cfg.node_id.clone().or_else(crate::os::host_name).unwrap_or_else(|| "this node".into());
    let initial_bans = load_bans(&settings, &table, &bans, &exempt, &board, &stats, &node, now);
    let allow = AllowList::new(settings.cfg.allow.clone());
    log_info!(
        "initialised: feed {} (API v{}, set {}), every {} s, up to {} entries ({} MB of shared memory reserved, used as filled), {} allow rule(s)",
        settings.cfg.url,
        settings.cfg.api_version,
        settings.cfg.set,
        settings.cfg.interval,
        max,
        table.reserved_bytes() >> 20,
        allow.len()
    );
    // The role until the refresher knows better: a fleet node starts by following.
    text!(stats.get(), role).put(if settings.cfg.redis_url.is_some() { "follower" } else { "standalone" });
    let m = Box::new(Module {
        settings,
        table,
        stats,
        allow,
        initial: Mutex::new(initial),
        bans,
        exempt,
        board,
        ring,
        initial_bans: Mutex::new(initial_bans),
        node,
    });
    // mod_init runs once, in the main process, before any fork: nothing reads MODULE yet. A
    // second init (a host calling it twice) keeps the first Module.
    let _ = MODULE.compare_exchange(std::ptr::null_mut(), Box::leak(m), Release, Relaxed);
    Ok(())
}

/// The bans file beside the snapshot: published before the fork, so that a restart refuses a
/// banned source at once, then handed to the ban keeper.
#[allow(clippy::too_many_arguments)]
fn load_bans(settings: &Settings, table: &Table, bans: &Table, exempt: &Table, board: &Board, stats: &Stats, node: &str, now: u64) -> Option<Vec<(Key, Ban)>> {
    let path = bans::store::file_for(settings.cfg.snapshot_file.as_deref()?);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log_warn!("bans file {} ignored: {e}; starting without local bans", path.display());
            return None;
        }
    };
    let (records, bad) = match bans::store::decode(&text, now) {
        Ok(r) => r,
        Err(e) => {
            log_warn!("bans file {} ignored: {e}; starting without local bans", path.display());
            return None;
        }
    };
    let mut store = bans::store::Store::new(settings.cfg.max_bans, node, settings.cfg.redis_url.is_some());
    for (k, b) in &records {
        store.adopt(*k, b.clone());
    }
    store.evict();
    let live = store.in_force(now);
    let n = bans::publish_tables(bans, exempt, &live);
    table.set_companion(n as u64);
    bans::publish_board(board, live);
    num!(stats.get(), bans).store(n as u64, Relaxed);
    let note = if bad > 0 { format!(" ({bad} damaged line(s) skipped)") } else { String::new() };
    log_info!("bans file {} loaded: {n} ban(s) in force{note}", path.display());
    Some(records)
}

impl Module {
    /// The lookup path of the script functions. Inlined, so that each entry point compiles to
    /// the probe of its own address family; what follows a hit is out of line, which keeps the
    /// common case (a clean source) a short function with few registers to save. The local
    /// bans cost one load while there are none.
    #[inline(always)]
    pub fn check(&self, key: Key) -> i32 {
        if let Key::V4(k) = key {
            return self.check4(k);
        }
        self.stats.get().mine().checks.fetch_add(1, Relaxed);
        self.verdict(self.table.contains(key), || self.listed(key), || self.banned(key))
    }

    /// `check` of an IPv4 address. Every call is in tail position, so the common path (a miss,
    /// no local bans) is a leaf: no frame, no register saved; the key is built only on the
    /// paths that call out.
    #[inline(always)]
    pub fn check4(&self, k: u32) -> i32 {
        self.stats.get().mine().checks.fetch_add(1, Relaxed);
        match self.table.lookup4(k) {
            Some(found) => self.verdict4(found, k),
            None => self.check4_slow(k),
        }
    }

    /// A raced lookup or a chain past the home bucket.
    #[cold]
    #[inline(never)]
    fn check4_slow(&self, k: u32) -> i32 {
        self.verdict4(self.table.contains4(k), k)
    }

    #[inline(always)]
    fn verdict4(&self, found: bool, k: u32) -> i32 {
        self.verdict(found, || self.listed4(k), || self.banned4(k))
    }

    /// Found by the feed's table: `listed`; else local bans, only when there are some.
    #[inline(always)]
    fn verdict(&self, found: bool, listed: impl FnOnce() -> i32, banned: impl FnOnce() -> i32) -> i32 {
        if found {
            listed()
        } else if self.table.companion() != 0 {
            banned()
        } else {
            APIBAN_NOT_LISTED
        }
    }

    #[inline(never)]
    fn listed4(&self, k: u32) -> i32 {
        self.listed(Key::V4(k))
    }

    #[inline(never)]
    fn banned4(&self, k: u32) -> i32 {
        self.banned(Key::V4(k))
    }

    /// A listed address: refused unless the allow list names it or an operator unbanned it.
    /// Catches its own panics: the IPv4 entry point has no guard (ffi.rs).
    #[inline(never)]
    fn listed(&self, key: Key) -> i32 {
        crate::log::guard("apiban_check", APIBAN_NOT_LISTED, || self.listed_unguarded(key))
    }

    fn listed_unguarded(&self, key: Key) -> i32 {
        let c = self.stats.get();
        if (!self.allow.is_empty() && self.allow.find(key).is_some()) || (!self.exempt.is_empty() && self.exempt.contains(key)) {
            c.mine().allowed.fetch_add(1, Relaxed);
            return APIBAN_NOT_LISTED;
        }
        c.mine().hits.fetch_add(1, Relaxed);
        APIBAN_LISTED
    }

    /// Not listed by the feed: banned locally? The allow list wins here too. Catches its own
    /// panics, as `listed`.
    #[inline(never)]
    fn banned(&self, key: Key) -> i32 {
        crate::log::guard("apiban_check", APIBAN_NOT_LISTED, || self.banned_unguarded(key))
    }

    fn banned_unguarded(&self, key: Key) -> i32 {
        if !self.bans.contains(key) {
            return APIBAN_NOT_LISTED;
        }
        let c = self.stats.get();
        if !self.allow.is_empty() && self.allow.find(key).is_some() {
            c.mine().allowed.fetch_add(1, Relaxed);
            return APIBAN_NOT_LISTED;
        }
        c.mine().local_hits.fetch_add(1, Relaxed);
        APIBAN_BANNED
    }

    /// `apiban_ban` of the script: checked, then queued to the ban keeper. No wait, no system
    /// call, no allocation (but for the rate-limited warning of a refusal).
    pub fn ban(&self, ip: &[u8], ttl: i64, reason: &[u8]) -> i32 {
        let cfg = &self.settings.cfg;
        match bans::ban_request(ip, ttl, reason, cfg.ban_ttl, cfg.ban_max_ttl, self.table.now()) {
            Ok(r) => self.queue(&r),
            Err(code) => {
                self.log_limited("apiban_ban", ip, code);
                code
            }
        }
    }

    /// `apiban_unban` of the script.
    pub fn unban(&self, ip: &[u8]) -> i32 {
        match bans::unban_request(ip, self.table.now()) {
            Ok(r) => self.queue(&r),
            Err(code) => {
                self.log_limited("apiban_unban", ip, code);
                code
            }
        }
    }

    fn queue(&self, r: &bans::ring::Request) -> i32 {
        if self.ring.push(r) {
            return APIBAN_QUEUED;
        }
        self.stats.get().mine().ban_drops.fetch_add(1, Relaxed);
        self.log_limited(if r.op == bans::ring::Op::Ban { "apiban_ban" } else { "apiban_unban" }, b"", APIBAN_DROPPED);
        APIBAN_DROPPED
    }

    pub fn check_text(&self, text: &[u8]) -> i32 {
        match addr::parse_text(text) {
            Some(k) => self.check(k),
            None => {
                self.log_bad_address(text);
                APIBAN_BAD_ADDRESS
            }
        }
    }

    fn log_bad_address(&self, text: &[u8]) {
        self.log_limited("apiban_check", text, APIBAN_BAD_ADDRESS);
    }

    /// A script's bad argument or a dropped ban: at most one line per 10 s per process (a
    /// flood must not become one line per request), formatted on the stack.
    fn log_limited(&self, func: &str, text: &[u8], code: i32) {
        static LAST: AtomicU64 = AtomicU64::new(0);
        static MUTED: AtomicU64 = AtomicU64::new(0);
        let now = self.table.now();
        let last = LAST.load(Relaxed);
        if now < last + 10 {
            MUTED.fetch_add(1, Relaxed);
            return;
        }
        LAST.store(now, Relaxed);
        use std::fmt::Write;
        let mut line = crate::log::StackLine::<240>::new();
        let _ = write!(line, "{func}: ");
        // (a dropped request names no argument: "apiban_ban: the queue ...")
        if !text.is_empty() {
            let shown = text.iter().take(64).map(|&c| if (0x20..0x7f).contains(&c) && c != b'\'' { c as char } else { '?' });
            let _ = line.write_char('\'');
            shown.for_each(|c| {
                let _ = line.write_char(c);
            });
            let _ = line.write_char('\'');
        }
        let _ = match code {
            APIBAN_BAD_ADDRESS if func == "apiban_check" => write!(line, " is not an IP address"),
            APIBAN_BAD_ADDRESS => write!(line, ": not an IP address; nothing banned"),
            APIBAN_DROPPED => write!(line, "the queue to the refresher is full: dropped (counted in ban_drops)"),
            crate::boundary::APIBAN_BAD_TTL => write!(line, ": bad ttl: 1 to {} seconds (ban_max_ttl); nothing banned", self.settings.cfg.ban_max_ttl),
            _ => write!(line, ": bad reason: at most {} bytes of printable text; nothing banned", bans::ring::REASON_MAX),
        };
        let muted = MUTED.swap(0, Relaxed);
        if muted > 0 {
            let _ = write!(line, " ({muted} more since the last message)");
        }
        crate::log::write_raw(crate::log::Level::Warn, line.as_bytes());
    }

    pub fn admin_check(&self, text: &[u8], out: &mut apiban_verdict) {
        let (result, detail) = match addr::parse_text(text) {
            None => (APIBAN_BAD_ADDRESS, "not an IP address".to_string()),
            Some(k) if !self.table.contains(k) => (APIBAN_NOT_LISTED, "not listed".to_string()),
            Some(k) => match self.allow.find(k) {
                Some(rule) => (APIBAN_NOT_LISTED, format!("listed by the feed, allowed by {rule}")),
                None => (APIBAN_LISTED, "listed".to_string()),
            },
        };
        out.result = result;
        copy_text(&mut out.result_text, verdict_text(result));
        copy_text(&mut out.detail, &detail);
    }

    pub fn stats_into(&self, out: &mut apiban_stats) {
        self.stats.snapshot(out);
    }

    /// Asks the refresher for a full pull now: it sleeps on the flag between ticks, so the
    /// wake starts the pull at once rather than at its next tick (up to 200 ms later).
    pub fn request_reload(&self) {
        let flag = &self.stats.get().reload;
        flag.store(1, Relaxed);
        crate::os::wake(flag);
    }
}

/// The word for a check's result, the same in every host's replies.
pub fn verdict_text(result: i32) -> &'static str {
    match result {
        APIBAN_LISTED => "listed",
        APIBAN_NOT_LISTED => "not listed",
        _ => "bad address",
    }
}

fn copy_text(dst: &mut [std::os::raw::c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as _;
    }
    dst[n] = 0;
}

