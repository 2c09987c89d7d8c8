//! Logging through the host's logger (LM_* behind the shim), with the API key redacted.
//!
//! The shim's logger takes a fixed format and our bytes, so no text of ours is ever a format
//! string. Levels are checked before formatting. Until a host is installed (unit tests) messages
//! go to stderr.

use crate::boundary::apiban_host;
use std::fmt;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Err = 0,
    Warn = 1,
    Info = 2,
    Dbg = 3,
}

static HOST: AtomicPtr<apiban_host> = AtomicPtr::new(std::ptr::null_mut());

/// The secrets no message may show.
#[derive(Clone, Copy, Debug)]
pub enum Secret {
    ApiKey = 0,
    /// `proxy`'s password.
    ProxyPassword = 1,
    /// `redis_url`'s password.
    RedisPassword = 2,
}

static SECRETS: [OnceLock<String>; 3] = [const { OnceLock::new() }; 3];

/// Installs the host callbacks. The pointer must stay valid for the life of the process (the
/// shims pass a static table).
pub fn set_host(host: *const apiban_host) {
    HOST.store(host as *mut apiban_host, Ordering::Release);
}

fn host() -> Option<&'static apiban_host> {
    // SAFETY: set_host's contract: null or a pointer to a table that lives as long as the process.
    unsafe { HOST.load(Ordering::Acquire).as_ref() }
}

/// Registers a secret: from now on it is replaced by `***` in every message, however short (a
/// key or a password is never text a message would otherwise hold). Once per kind.
pub fn set_secret(which: Secret, value: &str) {
    if !value.is_empty() {
        let _ = SECRETS[which as usize].set(value.to_string());
    }
}

pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for s in SECRETS.iter().filter_map(OnceLock::get) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

pub fn enabled(level: Level) -> bool {
    match host() {
        Some(h) => match h.log_enabled {
            // SAFETY: a host callback taking a plain int.
            Some(f) => unsafe { f(level as i32) != 0 },
            None => true,
        },
        None => level != Level::Dbg,
    }
}

pub fn write(level: Level, args: fmt::Arguments) {
    if !enabled(level) {
        return;
    }
    let text = redact(&fmt::format(args));
    write_raw(level, text.as_bytes());
}

/// A line formatted on the stack (`write!` into it), cut at N bytes: for the lookup path, which
/// must not allocate.
pub struct StackLine<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackLine<N> {
    pub fn new() -> Self {
        StackLine { buf: [0; N], len: 0 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> fmt::Write for StackLine<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes bytes as they are: no allocation, no redaction. For the rate-limited messages of the
/// lookup path, whose text is only what the script passed.
pub fn write_raw(level: Level, bytes: &[u8]) {
    // Only the refresher process has two threads (serialize()); a SIP worker takes no lock here.
    let _one_at_a_time = THREADED.load(Ordering::Relaxed).then(|| LOG_LOCK.lock().unwrap_or_else(|e| e.into_inner()));
    match host().and_then(|h| h.log) {
        // SAFETY: the callback reads `len` bytes from a live slice and copies them to the log.
        Some(f) => unsafe { f(level as i32, bytes.as_ptr().cast(), bytes.len()) },
        None => eprintln!("apiban {:?}: {}", level, String::from_utf8_lossy(bytes)),
    }
}

static THREADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LOG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// From now on this process logs from more than one thread (the refresher and its ban keeper):
/// calls into the host's logger, which was written for one thread per process, go one at a time.
pub fn serialize() {
    THREADED.store(true, Ordering::Relaxed);
}

/// Called by the refresher about once a second: lets the host refresh its per-process config.
pub fn host_tick() {
    if let Some(f) = host().and_then(|h| h.tick) {
        // SAFETY: a host callback without arguments, called from the process's main thread.
        unsafe { f() }
    }
}

/// Panics become log lines (a daemon's stderr goes nowhere) with their location.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        write(Level::Err, format_args!("internal error (panic{loc}): {msg}"));
    }));
}

macro_rules! log_err { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Err, format_args!($($t)*)) } }
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
pub(crate) use {log_err, log_info, log_warn};

/// Runs `f`, and answers `fallback` if it panics: what every function the shims call does (an
/// unwinding panic must never cross into the host), and the lookup's cold paths, which catch
/// their own. The panic itself is logged by the hook installed in mod_init.
pub(crate) fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            log_err!("{what}: internal error, answered safely (see the previous message)");
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_line_formats_and_cuts() {
        use std::fmt::Write;
        let mut l = StackLine::<16>::new();
        write!(l, "x {} more", 12345u64).unwrap();
        assert_eq!(l.as_bytes(), b"x 12345 more");
        write!(l, " and then some").unwrap();
        assert_eq!(l.as_bytes(), b"x 12345 more and");
    }

    /// The only test that registers a secret (it is set once per process).
    #[test]
    fn any_key_is_redacted_however_short() {
        set_secret(Secret::ApiKey, "k9");
        assert_eq!(redact("GET /api/k9/banned: refused"), "GET /api/***/banned: refused");
        set_secret(Secret::RedisPassword, "pw7");
        set_secret(Secret::ProxyPassword, "");
        assert_eq!(redact("k9 and pw7"), "*** and ***");
    }
}
