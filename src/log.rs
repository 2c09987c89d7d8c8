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
static SECRET: OnceLock<String> = OnceLock::new();
/// The proxy's password, redacted like the key.
static PROXY_PASSWORD: OnceLock<String> = OnceLock::new();
/// Fleet mode's Redis password, redacted as the key is.
static REDIS_SECRET: OnceLock<String> = OnceLock::new();

/// Installs the host callbacks. The pointer must stay valid for the life of the process (the
/// shims pass a static table).
pub fn set_host(host: *const apiban_host) {
    HOST.store(host as *mut apiban_host, Ordering::Release);
}

fn host() -> Option<&'static apiban_host> {
    // SAFETY: set_host's contract: null or a pointer to a table that lives as long as the process.
    unsafe { HOST.load(Ordering::Acquire).as_ref() }
}

/// Registers the API key: from now on it is replaced by `***` in every message, whatever its
/// length.
pub fn set_secret(key: &str) {
    if !key.is_empty() {
        let _ = SECRET.set(key.to_string());
    }
}

/// Registers the proxy's password: from now on it is replaced by `***` in every message, however
/// short (a password is never text a message would otherwise hold).
pub fn set_proxy_password(password: &str) {
    if !password.is_empty() {
        let _ = PROXY_PASSWORD.set(password.to_string());
    }
}

/// Registers the Redis password of `redis_url`: from now on it is replaced by `***` too.
pub fn set_redis_secret(password: &str) {
    if !password.is_empty() {
        let _ = REDIS_SECRET.set(password.to_string());
    }
}

pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for s in [SECRET.get(), PROXY_PASSWORD.get(), REDIS_SECRET.get()].into_iter().flatten() {
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

/// Writes bytes as they are: no allocation, no redaction. For the rate-limited messages of the
/// lookup path, whose text is only what the script passed.
pub fn write_raw(level: Level, bytes: &[u8]) {
    match host().and_then(|h| h.log) {
        // SAFETY: the callback reads `len` bytes from a live slice and copies them to the log.
        Some(f) => unsafe { f(level as i32, bytes.as_ptr().cast(), bytes.len()) },
        None => eprintln!("apiban {:?}: {}", level, String::from_utf8_lossy(bytes)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that registers a secret (it is set once per process).
    #[test]
    fn any_key_is_redacted_however_short() {
        set_secret("k9");
        assert_eq!(redact("GET /api/k9/banned: refused"), "GET /api/***/banned: refused");
        set_redis_secret("pw7");
        assert_eq!(redact("k9 and pw7"), "*** and ***");
    }
}
