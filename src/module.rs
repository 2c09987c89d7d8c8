//! The module's state in one process and what the boundary asks of it.
//!
//! `MODULE` is set once in the main process by mod_init, before the fork; each child gets a copy
//! of this Rust value whose `table` and `stats` point into the same shared mappings. Nothing in
//! it changes after the fork except through those mappings.

use crate::addr::{self, Key};
use crate::allow::AllowList;
use crate::boundary::{apiban_stats, apiban_verdict, APIBAN_BAD_ADDRESS, APIBAN_LISTED, APIBAN_NOT_LISTED};
use crate::clock::unix_now;
use crate::config::{Config, Settings};
use crate::held::split_live;
use crate::log::{log_info, log_warn};
use crate::snapshot::{self, Snapshot};
use crate::stats::{num, text, Stats};
use crate::table::Table;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

pub struct Module {
    pub settings: Settings,
    pub table: Table,
    pub stats: Stats,
    pub allow: AllowList,
    /// The snapshot read at start, handed to the refresher (its copy, after the fork).
    pub initial: Mutex<Option<Snapshot>>,
}

static MODULE: OnceLock<Module> = OnceLock::new();
/// Parameters as modparam lines set them, before mod_init; main process only.
static PARAMS: Mutex<Option<Config>> = Mutex::new(None);

pub fn get() -> Option<&'static Module> {
    MODULE.get()
}

pub fn set_param(name: &str, value: &str) -> Result<(), String> {
    let mut p = PARAMS.lock().unwrap_or_else(|e| e.into_inner());
    p.get_or_insert_with(Config::default).set(name, value)
}


/// mod_init: check the parameters, make the shared table, load the snapshot.
pub fn init() -> Result<(), String> {
    if MODULE.get().is_some() {
        return Ok(());
    }
    let cfg = PARAMS.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let settings = cfg.finish(crate::os::phys_mem())?;
    use crate::log::{set_secret, Secret};
    set_secret(Secret::ApiKey, &settings.key);
    set_secret(Secret::ProxyPassword, settings.cfg.proxy.as_ref().and_then(|p| p.password()).unwrap_or(""));
    set_secret(Secret::RedisPassword, settings.cfg.redis_url.as_ref().and_then(|t| t.password.as_deref()).unwrap_or(""));
    let max = settings.cfg.max_entries;
    let table = Table::new(max).map_err(|e| {
        format!("parameter 'max_entries': cannot reserve shared memory for {max} entries: {e}")
    })?;
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
    let _ = MODULE.set(Module { settings, table, stats, allow, initial: Mutex::new(initial) });
    Ok(())
}

impl Module {
    /// The lookup path of the script functions. Inlined, so that each entry point compiles to
    /// the probe of its own address family; what follows a hit is out of line, which keeps the
    /// common case (a clean source) a short function with few registers to save.
    #[inline(always)]
    pub fn check(&self, key: Key) -> i32 {
        self.stats.get().mine().checks.fetch_add(1, Relaxed);
        if self.table.contains(key) {
            self.listed(key)
        } else {
            APIBAN_NOT_LISTED
        }
    }

    /// A listed address: refused unless the allow list names it.
    #[inline(never)]
    fn listed(&self, key: Key) -> i32 {
        let c = self.stats.get();
        if !self.allow.is_empty() && self.allow.find(key).is_some() {
            c.mine().allowed.fetch_add(1, Relaxed);
            return APIBAN_NOT_LISTED;
        }
        c.mine().hits.fetch_add(1, Relaxed);
        APIBAN_LISTED
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

    /// At most one line per 10 s per process, formatted on the stack.
    fn log_bad_address(&self, text: &[u8]) {
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
        let mut line = crate::log::StackLine::<200>::new();
        let shown = text.iter().take(64).map(|&c| if (0x20..0x7f).contains(&c) && c != b'\'' { c as char } else { '?' });
        let _ = write!(line, "apiban_check: '");
        shown.for_each(|c| {
            let _ = line.write_char(c);
        });
        let _ = write!(line, "' is not an IP address");
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

    pub fn request_reload(&self) {
        self.stats.get().reload.store(1, Relaxed);
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

