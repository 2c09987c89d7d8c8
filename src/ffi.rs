//! Every function the shims call, and the only `unsafe` that touches C data.
//!
//! Each one catches panics: an unwinding panic must never cross into the host, and an abort
//! would take the whole server down. A caught panic is logged (by the hook installed in
//! mod_init) and the function returns a safe answer: "not listed" for checks, -1 elsewhere.
//! One exception, the lookup of an IPv4 source (`apiban_check_addr`), whose common path cannot
//! panic (the proof is beside it) and whose other paths catch panics themselves.

use crate::bans::admin;
use crate::boundary::{self, apiban_host, apiban_reply, apiban_stats, apiban_verdict, APIBAN_BAD_ADDRESS, APIBAN_DROPPED, APIBAN_NOT_LISTED};
use crate::log::{guard, log_err};
use crate::module;
use std::os::raw::{c_char, c_int};

/// # Safety
/// `ptr` is null or points to `len` readable bytes that stay valid for the call.
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

/// # Safety
/// `host` is null or points to a table that lives as long as the process.
#[no_mangle]
pub unsafe extern "C" fn apiban_set_host(host: *const apiban_host) {
    crate::log::set_host(host);
}

/// # Safety
/// `name` is a NUL-terminated string; unless `is_int`, `value` is null or a NUL-terminated
/// string (with `is_int`, the pointer's value is the integer, as the hosts' modparam passes it).
#[no_mangle]
pub unsafe extern "C" fn apiban_param(name: *const c_char, is_int: c_int, value: *const std::ffi::c_void) -> c_int {
    guard("apiban_param", -1, || {
        if name.is_null() {
            return -1;
        }
        // SAFETY: the caller's contract.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy();
        let value = if is_int != 0 {
            // The hosts store an int parameter in the pointer; only its low 32 bits are set.
            Some((value as isize as i32).to_string())
        } else if value.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe { std::ffi::CStr::from_ptr(value.cast()) }.to_string_lossy().into_owned())
        };
        let r = match value {
            Some(v) => module::set_param(&name, &v),
            None => Err(format!("parameter '{name}': no value")),
        };
        match r {
            Ok(()) => 0,
            Err(e) => {
                log_err!("{e}");
                -1
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn apiban_child_init(process_no: c_int) {
    crate::stats::set_process(process_no);
}

#[no_mangle]
pub extern "C" fn apiban_mod_init() -> c_int {
    crate::log::install_panic_hook();
    guard("apiban_mod_init", -1, || match module::init() {
        Ok(()) => 0,
        Err(e) => {
            log_err!("{e}");
            -1
        }
    })
}

#[no_mangle]
pub extern "C" fn apiban_refresher_main() {
    match module::get() {
        Some(m) => crate::refresher::run(m),
        None => {
            log_err!("refresher started without mod_init: it will stay idle");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

/// # Safety
/// `addr` points to `len` readable bytes.
///
/// No panic guard (its frame and unwind context cost more than the rest of a miss): nothing
/// on the IPv4 path can panic. `module::get` is one load of a pointer; the read of 4 bytes is
/// unaligned-safe; `Module::check` adds to this process's counter (`Counters::mine`: an index
/// masked into its array), then `Table::contains`, whose probe indexes no slice (its raw
/// pointer arithmetic stays in bounds: `Table::find4`), unwraps nothing and does no
/// arithmetic that can overflow (wrapping multiplies, `i + 1` below the bucket count); what
/// follows a hit or a local ban (`Module::listed`, `Module::banned`, out of line: allow-list,
/// exemptions) and every other address length (`check_other_addr`) catch panics themselves.
/// `objdump -d` of this function shows no call but those two and `check_other_addr`.
#[no_mangle]
pub unsafe extern "C" fn apiban_check_addr(addr: *const u8, len: usize) -> c_int {
    let Some(m) = module::get() else { return APIBAN_NOT_LISTED };
    if len == 4 {
        // An IPv4 source, the common case, straight to its probe. (No null test: the contract
        // says `len` readable bytes, and both shims pass the address array of their message.)
        // SAFETY: the caller's contract: 4 readable bytes, of any alignment.
        let a = unsafe { addr.cast::<[u8; 4]>().read_unaligned() };
        return m.check4(u32::from_be_bytes(a));
    }
    // SAFETY: the caller's contract.
    check_other_addr(m, unsafe { bytes(addr.cast(), len) })
}

/// IPv6 (or v4-mapped) sources, and lengths no address has.
#[inline(never)]
fn check_other_addr(m: &module::Module, b: &[u8]) -> c_int {
    guard("apiban_check", APIBAN_NOT_LISTED, || match crate::addr::Key::from_bytes(b) {
        Some(k) => m.check(k),
        None => APIBAN_BAD_ADDRESS,
    })
}

/// # Safety
/// `text` points to `len` readable bytes (no NUL needed).
#[no_mangle]
pub unsafe extern "C" fn apiban_check_text(text: *const c_char, len: usize) -> c_int {
    guard("apiban_check", APIBAN_NOT_LISTED, || {
        let Some(m) = module::get() else { return APIBAN_NOT_LISTED };
        // SAFETY: the caller's contract.
        m.check_text(unsafe { bytes(text, len) })
    })
}

/// # Safety
/// `out` points to a writable `struct apiban_stats`.
#[no_mangle]
pub unsafe extern "C" fn apiban_stats_get(out: *mut apiban_stats) -> c_int {
    guard("apiban.stats", -1, || {
        // SAFETY: the caller's contract.
        let (Some(m), Some(out)) = (module::get(), unsafe { out.as_mut() }) else { return -1 };
        m.stats_into(out);
        0
    })
}

#[no_mangle]
pub extern "C" fn apiban_reload() -> c_int {
    guard("apiban.reload", -1, || match module::get() {
        Some(m) => {
            m.request_reload();
            0
        }
        None => -1,
    })
}

/// # Safety
/// `text` points to `len` readable bytes; `out` to a writable `struct apiban_verdict`.
#[no_mangle]
pub unsafe extern "C" fn apiban_admin_check(text: *const c_char, len: usize, out: *mut apiban_verdict) -> c_int {
    guard("apiban.check", -1, || {
        // SAFETY: the caller's contract.
        let (Some(m), Some(out)) = (module::get(), unsafe { out.as_mut() }) else { return -1 };
        // SAFETY: the caller's contract.
        m.admin_check(unsafe { bytes(text, len) }, out);
        0
    })
}

/// # Safety
/// `ip` points to `ip_len` readable bytes, `reason` is null or points to `reason_len`.
#[no_mangle]
pub unsafe extern "C" fn apiban_ban(ip: *const c_char, ip_len: usize, ttl: std::os::raw::c_longlong, reason: *const c_char, reason_len: usize) -> c_int {
    guard("apiban_ban", APIBAN_DROPPED, || {
        let Some(m) = module::get() else { return APIBAN_DROPPED };
        // SAFETY: the caller's contract.
        m.ban(unsafe { bytes(ip, ip_len) }, ttl, unsafe { bytes(reason, reason_len) })
    })
}

/// # Safety
/// `ip` points to `ip_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn apiban_unban(ip: *const c_char, ip_len: usize) -> c_int {
    guard("apiban_unban", APIBAN_DROPPED, || {
        let Some(m) = module::get() else { return APIBAN_DROPPED };
        // SAFETY: the caller's contract.
        m.unban(unsafe { bytes(ip, ip_len) })
    })
}

/// # Safety
/// `p` is null (absent) or points to `len` readable bytes.
unsafe fn optional<'a>(p: *const c_char, len: usize) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract.
    (!p.is_null()).then(|| unsafe { bytes(p, len) })
}

/// # Safety
/// As apiban.h: byte ranges readable, `out` a writable `struct apiban_reply`.
#[no_mangle]
pub unsafe extern "C" fn apiban_admin_ban(
    ip: *const c_char,
    ip_len: usize,
    ttl: *const c_char,
    ttl_len: usize,
    reason: *const c_char,
    reason_len: usize,
    out: *mut apiban_reply,
) -> c_int {
    guard("apiban.ban", -1, || {
        // SAFETY: the caller's contract.
        let (Some(m), Some(out)) = (module::get(), unsafe { out.as_mut() }) else { return -1 };
        // SAFETY: the caller's contract.
        unsafe { admin::ban(m, bytes(ip, ip_len), optional(ttl, ttl_len), optional(reason, reason_len), out) }
    })
}

/// # Safety
/// `ip` points to `ip_len` readable bytes; `out` to a writable `struct apiban_reply`.
#[no_mangle]
pub unsafe extern "C" fn apiban_admin_unban(ip: *const c_char, ip_len: usize, out: *mut apiban_reply) -> c_int {
    guard("apiban.unban", -1, || {
        // SAFETY: the caller's contract.
        let (Some(m), Some(out)) = (module::get(), unsafe { out.as_mut() }) else { return -1 };
        // SAFETY: the caller's contract.
        admin::unban(m, unsafe { bytes(ip, ip_len) }, out)
    })
}

/// # Safety
/// `ip` points to `ip_len` readable bytes; `out` to a writable `struct apiban_reply`.
#[no_mangle]
pub unsafe extern "C" fn apiban_admin_lookup(ip: *const c_char, ip_len: usize, out: *mut apiban_reply) -> c_int {
    guard("apiban.lookup", -1, || {
        // SAFETY: the caller's contract.
        let (Some(m), Some(out)) = (module::get(), unsafe { out.as_mut() }) else { return -1 };
        // SAFETY: the caller's contract.
        admin::lookup(m, unsafe { bytes(ip, ip_len) }, out)
    })
}

type EachBan = Option<unsafe extern "C" fn(*mut std::ffi::c_void, *const apiban_reply)>;

/// # Safety
/// `each` is null or a function that reads the reply it is given (valid for the call only);
/// `ctx` is passed to it as is.
#[no_mangle]
pub unsafe extern "C" fn apiban_admin_bans(max: usize, each: EachBan, ctx: *mut std::ffi::c_void) -> c_int {
    guard("apiban.bans", -1, || {
        let Some(m) = module::get() else { return -1 };
        let n = admin::list(m, max, |r| {
            if let Some(f) = each {
                // SAFETY: the caller's contract; `r` lives through the call.
                unsafe { f(ctx, r) }
            }
        });
        n.min(c_int::MAX as usize) as c_int
    })
}

// The definitions above must have exactly the types bindgen read from c-shim/apiban.h.
type HostFn = unsafe extern "C" fn(*const apiban_host);
type ParamFn = unsafe extern "C" fn(*const c_char, c_int, *const std::ffi::c_void) -> c_int;
type CheckAddrFn = unsafe extern "C" fn(*const u8, usize) -> c_int;
type CheckTextFn = unsafe extern "C" fn(*const c_char, usize) -> c_int;
type StatsFn = unsafe extern "C" fn(*mut apiban_stats) -> c_int;
type VerdictFn = unsafe extern "C" fn(*const c_char, usize, *mut apiban_verdict) -> c_int;
const _: [HostFn; 2] = [apiban_set_host, boundary::apiban_set_host];
const _: [ParamFn; 2] = [apiban_param, boundary::apiban_param];
const _: [unsafe extern "C" fn() -> c_int; 4] =
    [apiban_mod_init, boundary::apiban_mod_init, apiban_reload, boundary::apiban_reload];
const _: [unsafe extern "C" fn(); 2] = [apiban_refresher_main, boundary::apiban_refresher_main];
const _: [unsafe extern "C" fn(c_int); 2] = [apiban_child_init, boundary::apiban_child_init];
const _: [CheckAddrFn; 2] = [apiban_check_addr, boundary::apiban_check_addr];
const _: [CheckTextFn; 2] = [apiban_check_text, boundary::apiban_check_text];
const _: [StatsFn; 2] = [apiban_stats_get, boundary::apiban_stats_get];
const _: [VerdictFn; 2] = [apiban_admin_check, boundary::apiban_admin_check];
type BanFn = unsafe extern "C" fn(*const c_char, usize, std::os::raw::c_longlong, *const c_char, usize) -> c_int;
type UnbanFn = unsafe extern "C" fn(*const c_char, usize) -> c_int;
type AdminBanFn = unsafe extern "C" fn(*const c_char, usize, *const c_char, usize, *const c_char, usize, *mut apiban_reply) -> c_int;
type AdminOneFn = unsafe extern "C" fn(*const c_char, usize, *mut apiban_reply) -> c_int;
type AdminBansFn = unsafe extern "C" fn(usize, EachBan, *mut std::ffi::c_void) -> c_int;
const _: [BanFn; 2] = [apiban_ban, boundary::apiban_ban];
const _: [UnbanFn; 2] = [apiban_unban, boundary::apiban_unban];
const _: [AdminBanFn; 2] = [apiban_admin_ban, boundary::apiban_admin_ban];
const _: [AdminOneFn; 4] = [apiban_admin_unban, boundary::apiban_admin_unban, apiban_admin_lookup, boundary::apiban_admin_lookup];
const _: [AdminBansFn; 2] = [apiban_admin_bans, boundary::apiban_admin_bans];
