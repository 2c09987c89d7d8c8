//! What OpenSIPS's loader looks up with dlsym: the one data symbol `exports`. It must be a Rust
//! item: rustc's cdylib link drops data symbols defined in the C shim. Its pointer fields point at
//! the shim's tables and strings (c-shim/opensips/apiban_mod.c), so the C preprocessor stays the
//! one source of the version strings and the tables keep the C types of the target tree.

use std::os::raw::{c_char, c_int, c_uint, c_void};

/// `ver_info` of `struct module_exports`: what the `MODULE_VERSION` macro fills in.
#[repr(C)]
pub struct VerInfo {
    version: *const c_char,
    compile_flags: *const c_char,
    scm_type: *const c_char,
    scm_rev: *const c_char,
}

/// Mirror of OpenSIPS 3.6 `struct module_exports` (sr_module.h), 184 bytes on LP64. The shim
/// asserts the C size and offsets at compile time; `load` compares the sizes when loaded.
#[repr(C)]
pub struct ModuleExports {
    name: *const c_char,
    /// `enum module_type`
    mod_type: c_int,
    ver_info: VerInfo,
    dlflags: c_uint,
    load_f: Option<unsafe extern "C" fn() -> c_int>,
    deps: *const c_void,
    cmds: *const c_void,
    acmds: *const c_void,
    params: *const c_void,
    stats: *const c_void,
    mi_cmds: *const c_void,
    items: *const c_void,
    trans: *const c_void,
    procs: *const c_void,
    preinit_f: Option<unsafe extern "C" fn() -> c_int>,
    init_f: Option<unsafe extern "C" fn() -> c_int>,
    response_f: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    destroy_f: Option<unsafe extern "C" fn()>,
    init_child_f: Option<unsafe extern "C" fn(c_int) -> c_int>,
    reload_ack_f: Option<unsafe extern "C" fn() -> c_int>,
}

// SAFETY: immutable after link; the pointers are to C data that is never written.
unsafe impl Sync for ModuleExports {}

/// An opaque C table or string whose address is all Rust needs.
#[repr(C)]
pub struct Opaque {
    _p: [u8; 0],
}

extern "C" {
    static apiban_osips_name: Opaque;
    static apiban_osips_version: Opaque;
    static apiban_osips_flags: Opaque;
    static apiban_osips_scm_type: Opaque;
    static apiban_osips_scm_rev: Opaque;
    static apiban_osips_cmds: Opaque;
    static apiban_osips_params: Opaque;
    static apiban_osips_stats: Opaque;
    static apiban_osips_mi: Opaque;
    static apiban_osips_procs: Opaque;
    static apiban_osips_exports_size: usize;
    fn apiban_osips_load() -> c_int;
    fn apiban_osips_mod_init() -> c_int;
    fn apiban_osips_child_init(rank: c_int) -> c_int;
}

/// `MOD_TYPE_DEFAULT` and `DEFAULT_DLFLAGS` (asserted in the shim).
const MOD_TYPE_DEFAULT: c_int = 1;
const DEFAULT_DLFLAGS: c_uint = 0;

#[no_mangle]
#[used]
pub static exports: ModuleExports = ModuleExports {
    name: (&raw const apiban_osips_name).cast(),
    mod_type: MOD_TYPE_DEFAULT,
    ver_info: VerInfo {
        version: (&raw const apiban_osips_version).cast(),
        compile_flags: (&raw const apiban_osips_flags).cast(),
        scm_type: (&raw const apiban_osips_scm_type).cast(),
        scm_rev: (&raw const apiban_osips_scm_rev).cast(),
    },
    dlflags: DEFAULT_DLFLAGS,
    load_f: Some(load),
    deps: std::ptr::null(),
    cmds: (&raw const apiban_osips_cmds).cast(),
    acmds: std::ptr::null(),
    params: (&raw const apiban_osips_params).cast(),
    stats: (&raw const apiban_osips_stats).cast(),
    mi_cmds: (&raw const apiban_osips_mi).cast(),
    items: std::ptr::null(),
    trans: std::ptr::null(),
    procs: (&raw const apiban_osips_procs).cast(),
    preinit_f: None,
    init_f: Some(apiban_osips_mod_init),
    response_f: None,
    destroy_f: None,
    init_child_f: Some(apiban_osips_child_init),
    reload_ack_f: None,
};

/// `load_f`: runs right after dlopen, before any modparam: installs the logger, then checks
/// that this mirror has the size of the server's struct.
unsafe extern "C" fn load() -> c_int {
    // SAFETY: a constant defined by the shim, never written.
    let c_size = unsafe { &apiban_osips_exports_size };
    super::load_checked("OpenSIPS", apiban_osips_load, c_size, std::mem::size_of::<ModuleExports>())
}
