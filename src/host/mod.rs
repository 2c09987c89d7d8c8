//! The symbols a host's module loader looks up by name. One file per host, chosen by feature.

use std::os::raw::c_int;

#[cfg(feature = "kamailio")]
mod kamailio;
#[cfg(feature = "opensips")]
mod opensips;

/// A host's load hook, the first call into the module: runs the shim's registration (which
/// installs the logger), then checks that the Rust mirror of the host's `struct module_exports`
/// has the size the shim was compiled with, so a module built against another tree is refused
/// with a reason instead of crashing.
fn load_checked(server: &str, register: unsafe extern "C" fn() -> c_int, c_size: &'static usize, rust_size: usize) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: the shim's registration takes no arguments and runs in the main process.
        let rc = unsafe { register() };
        if *c_size != rust_size {
            crate::log::log_err!(
                "struct module_exports is {c_size} bytes in this {server}, {rust_size} in the module: rebuild apiban against this server's source tree"
            );
            return -1;
        }
        rc
    })
    .unwrap_or(-1)
}
