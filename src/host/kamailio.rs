//! What Kamailio's loader looks up with dlsym: `exports`, `module_version`, `module_flags` and
//! `mod_register`. They must be Rust items: rustc's cdylib link drops data symbols defined in
//! the C shim. Each points at the shim's tables and strings, so the C preprocessor stays the one
//! source of the version strings and the tables keep their C types.

use std::os::raw::{c_char, c_int, c_uint, c_void};

/// Mirror of Kamailio's `struct module_exports` (core/sr_module.h; unchanged from 5.6 to 6.0). The
/// shim asserts the C size and offsets at compile time; mod_register compares the sizes at load.
#[repr(C)]
pub struct ModuleExports {
    name: *const c_char,
    dlflags: c_uint,
    cmds: *const c_void,
    params: *const c_void,
    rpc_methods: *const c_void,
    pv_items: *const c_void,
    response_f: *const c_void,
    init_mod_f: Option<unsafe extern "C" fn() -> c_int>,
    init_child_f: Option<unsafe extern "C" fn(c_int) -> c_int>,
    destroy_mod_f: Option<unsafe extern "C" fn()>,
}

// SAFETY: immutable after link; the pointers are to C data that is never written.
unsafe impl Sync for ModuleExports {}

#[repr(transparent)]
pub struct CStrPtr(*const c_char);
// SAFETY: points at an immutable C string.
unsafe impl Sync for CStrPtr {}

/// An opaque C table whose address is all Rust needs.
#[repr(C)]
pub struct Opaque {
    _p: [u8; 0],
}

extern "C" {
    static apiban_kam_name: Opaque;
    static apiban_kam_version: Opaque;
    static apiban_kam_flags: Opaque;
    static apiban_kam_cmds: Opaque;
    static apiban_kam_params: Opaque;
    static apiban_kam_rpc: Opaque;
    static apiban_kam_exports_size: usize;
    fn apiban_kam_register() -> c_int;
    fn apiban_kam_mod_init() -> c_int;
    fn apiban_kam_child_init(rank: c_int) -> c_int;
    fn apiban_kam_destroy();
}

const RTLD_NOW: c_uint = 2;

#[no_mangle]
#[used]
pub static exports: ModuleExports = ModuleExports {
    name: (&raw const apiban_kam_name).cast(),
    dlflags: RTLD_NOW,
    cmds: (&raw const apiban_kam_cmds).cast(),
    params: (&raw const apiban_kam_params).cast(),
    rpc_methods: (&raw const apiban_kam_rpc).cast(),
    pv_items: std::ptr::null(),
    response_f: std::ptr::null(),
    init_mod_f: Some(apiban_kam_mod_init),
    init_child_f: Some(apiban_kam_child_init),
    destroy_mod_f: Some(apiban_kam_destroy),
};

#[no_mangle]
#[used]
pub static module_version: CStrPtr = CStrPtr((&raw const apiban_kam_version).cast());

#[no_mangle]
#[used]
pub static module_flags: CStrPtr = CStrPtr((&raw const apiban_kam_flags).cast());

/// Runs at load, before the parameters: installs the logger and the KEMI exports.
#[no_mangle]
pub extern "C" fn mod_register(_path: *mut c_char, _dlflags: *mut c_int, _p1: *mut c_void, _p2: *mut c_void) -> c_int {
    // SAFETY: a constant defined by the shim, never written.
    let c_size = unsafe { &apiban_kam_exports_size };
    super::load_checked("Kamailio", apiban_kam_register, c_size, std::mem::size_of::<ModuleExports>())
}
