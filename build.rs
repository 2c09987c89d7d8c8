//! Builds the C shim for the chosen host and the Rust view of the boundary header.
//!
//! The shim must be compiled with exactly the defines the host binary was built with: they change
//! struct layouts and what the host's macros expand to. We take them from the host tree's own
//! configure output, never from a hand-kept list:
//! - Kamailio: `C_DEFS`, `CC_PMUTEX_OPTS` and `CC_EXTRA_OPTS` from `$KAMAILIO_SRC/src/config.mak`,
//!   the file `make cfg` writes (scripts/setup-debian.sh runs it the way debian/rules does).
//! - OpenSIPS: `$(MOD_CFLAGS) $(DEFS)` as the tree's own makefiles compute them for its modules.
//!
//! Both hosts refuse, at load time only, a module whose version or compile flags differ from their
//! own. So the build compares them first, with the binary that will load the module: for Kamailio
//! `KAMAILIO_BIN` (default the `kamailio` on PATH, skipped with a warning when there is none), for
//! OpenSIPS the binary in the tree. A difference stops the build with a message naming it.
//!
//! The shim objects are handed to the linker only for the cdylib (`rustc-cdylib-link-arg`): the unit
//! test harness never links them, since they need symbols that live only in the server binary.

#[path = "build/kamailio.rs"]
mod kamailio;
#[path = "build/opensips.rs"]
mod opensips;

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=c-shim/apiban.h");
    println!("cargo:rerun-if-env-changed=KAMAILIO_SRC");
    println!("cargo:rerun-if-env-changed=OPENSIPS_SRC");

    let kamailio = env::var_os("CARGO_FEATURE_KAMAILIO").is_some();
    let opensips = env::var_os("CARGO_FEATURE_OPENSIPS").is_some();
    match (kamailio, opensips) {
        (true, false) => kamailio::build_kamailio_shim(),
        (false, true) => opensips::build_opensips_shim(),
        (true, true) => stop(
            "features `kamailio` and `opensips` are exclusive: for OpenSIPS build with \
             `--no-default-features --features opensips`",
        ),
        (false, false) => stop("choose a host: `--features kamailio` (default) or `--features opensips`"),
    }
    generate_bindings();
}

/// Ends the build with a message that says what to do. Cargo shows build-script panics in full.
fn stop(msg: &str) -> ! {
    eprintln!("\napiban build: {msg}\n");
    panic!("apiban build: {msg}");
}

fn generate_bindings() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("boundary.rs");
    // bindgen panics with a terse message when libclang is missing; say what to install instead.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header("c-shim/apiban.h")
            .allowlist_function("apiban_.*")
            .allowlist_type("apiban_.*")
            .allowlist_var("APIBAN_.*")
            .use_core()
            // Results are negative: keep every #define a signed int, as C sees them.
            .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
            .layout_tests(true)
            .generate()
    });
    std::panic::set_hook(quiet);
    match result {
        Ok(Ok(b)) => b.write_to_file(&out).expect("write boundary.rs"),
        Ok(Err(e)) => stop(&format!("bindgen could not read c-shim/apiban.h: {e}")),
        Err(_) => stop(
            "bindgen needs libclang: run `apt-get install libclang-dev` \
             (scripts/setup-debian.sh installs it), or set LIBCLANG_PATH",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Both hosts

/// What `<binary> -V` prints (stdout and stderr).
fn version_report(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("-V")
        .output()
        .unwrap_or_else(|e| stop(&format!("cannot run {} -V: {e}", binary.display())));
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The rest of the report's line that starts with `prefix`, trimmed.
fn report_line(text: &str, prefix: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(prefix)).map(|l| l.trim().to_string())
}

/// The strings a probe file gives after each marker, preprocessed with the shim's own flags: what
/// the host's version macros expand to in the module, e.g. `marker MACRO` -> the macro's string.
fn probe_strings<const N: usize>(mut b: cc::Build, src: &Path, probe_text: &str, markers: [&str; N]) -> [String; N] {
    let probe = PathBuf::from(env::var("OUT_DIR").unwrap()).join("apiban-version-probe.c");
    std::fs::write(&probe, probe_text).unwrap();
    let expanded = match b.file(&probe).cargo_warnings(false).try_expand() {
        Ok(out) => String::from_utf8_lossy(&out).to_string(),
        Err(e) => {
            stop(&format!("cannot preprocess the version headers of {} with the tree's flags: {e}", src.display()))
        }
    };
    markers.map(|marker| {
        expanded.lines().find_map(|l| l.trim().strip_prefix(marker)).map(c_string_literals).unwrap_or_default()
    })
}

/// Concatenates the C string literals of a preprocessed line: `"a" "" ", b"` is `a, b`.
fn c_string_literals(line: &str) -> String {
    let mut out = String::new();
    let mut in_lit = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (in_lit, c) {
            (false, '"') => in_lit = true,
            (true, '"') => in_lit = false,
            (true, '\\') => out.extend(chars.next()),
            (true, c) => out.push(c),
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// Compiles the shim to objects and links them into the cdylib only.
fn link_shim_objects(b: cc::Build, name: &str) {
    let objects = b.compile_intermediates();
    if objects.is_empty() {
        stop(&format!("{name}: the C compiler produced no object"));
    }
    for o in objects {
        println!("cargo:rustc-cdylib-link-arg={}", o.display());
    }
}
