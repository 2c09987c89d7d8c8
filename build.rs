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

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=c-shim/apiban.h");
    println!("cargo:rerun-if-env-changed=KAMAILIO_SRC");
    println!("cargo:rerun-if-env-changed=OPENSIPS_SRC");

    let kamailio = env::var_os("CARGO_FEATURE_KAMAILIO").is_some();
    let opensips = env::var_os("CARGO_FEATURE_OPENSIPS").is_some();
    match (kamailio, opensips) {
        (true, false) => build_kamailio_shim(),
        (false, true) => build_opensips_shim(),
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
// Kamailio

fn build_kamailio_shim() {
    let src = PathBuf::from(env::var("KAMAILIO_SRC").unwrap_or_else(|_| "/usr/local/src/kamailio".into()));
    let header = src.join("src/core/sr_module.h");
    let config_mak = src.join("src/config.mak");
    if !header.is_file() {
        stop(&format!(
            "no Kamailio source tree at {} (KAMAILIO_SRC). Run `scripts/setup-debian.sh` as root: it \
             unpacks Debian's kamailio source there and configures it as debian/rules does",
            src.display()
        ));
    }
    if !config_mak.is_file() {
        stop(&format!(
            "the Kamailio tree at {} is not configured ({} is missing). Run `scripts/setup-debian.sh`, \
             which runs `make cfg` with Debian's options",
            src.display(),
            config_mak.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", config_mak.display());
    println!("cargo:rerun-if-changed=c-shim/kamailio/apiban_mod.c");

    let mak = std::fs::read_to_string(&config_mak).expect("read config.mak");
    let defs = make_var(&mak, "C_DEFS");
    let removed = shell_words(&make_var(&mak, "DEFS_RM"));
    let mut flags: Vec<String> = shell_words(&defs).into_iter().filter(|d| !removed.contains(d)).collect();
    if !flags.iter().any(|f| f.starts_with("-DVERSIONVAL=")) {
        stop(&format!("{} has no C_DEFS with VERSIONVAL: re-run scripts/setup-debian.sh", config_mak.display()));
    }
    // The shared-mutex define is not in C_DEFS, yet it changes what a lock is.
    flags.extend(shell_words(&make_var(&mak, "CC_PMUTEX_OPTS")));
    // Debian's CPPFLAGS/CFLAGS (fortify level and friends), as the package passed them.
    flags.extend(shell_words(&make_var(&mak, "CC_EXTRA_OPTS")).into_iter().filter(|f| f.starts_with("-D")));

    let mut b = cc::Build::new();
    b.include("c-shim")
        .include(src.join("src"))
        .define("MOD_NAME", "\"apiban\"")
        .pic(true)
        .warnings(true)
        .extra_warnings(false)
        .flag_if_supported("-Wno-unused-parameter");
    for f in &flags {
        b.flag(f);
    }
    check_kamailio_binary(&src, b.clone());
    b.file("c-shim/kamailio/apiban_mod.c");
    link_shim_objects(b, "apiban_kamailio_shim");
}

/// The binary that will load the module: `KAMAILIO_BIN`, else `kamailio` on PATH, else none.
fn kamailio_binary() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=KAMAILIO_BIN");
    if let Some(bin) = env::var_os("KAMAILIO_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            stop(&format!(
                "KAMAILIO_BIN={} is not a file: point it at the kamailio binary that will load the module",
                bin.display()
            ));
        }
        return Some(bin);
    }
    println!("cargo:rerun-if-env-changed=PATH");
    env::split_paths(&env::var_os("PATH").unwrap_or_default()).map(|d| d.join("kamailio")).find(|p| p.is_file())
}

/// Kamailio's loader compares `module_version` and `module_flags` with its own `SER_FULL_VERSION`
/// and `SER_COMPILE_FLAGS` and refuses the module on any difference, but only when it loads it.
/// Expand both with the tree's flags, as the shim will, and compare them with `kamailio -V` now.
fn check_kamailio_binary(src: &Path, b: cc::Build) {
    let Some(binary) = kamailio_binary() else {
        println!(
            "cargo:warning=apiban: no kamailio on PATH and KAMAILIO_BIN unset: the module's version and \
             compile flags were not compared with a server binary (Kamailio refuses, when it loads a module, one \
             whose version or flags differ from its own)"
        );
        return;
    };
    println!("cargo:rerun-if-changed={}", binary.display());
    let text = version_report(&binary);
    let (Some(bin_version), Some(bin_flags)) = (report_line(&text, "version: "), report_line(&text, "flags: ")) else {
        stop(&format!("{} -V printed no version and flags lines: is KAMAILIO_BIN a kamailio binary?", binary.display()))
    };
    let [tree_version, tree_flags] = probe_strings(
        b,
        src,
        "#include \"core/ver_defs.h\"\napiban_probe_version SER_FULL_VERSION\napiban_probe_flags SER_COMPILE_FLAGS\n",
        ["apiban_probe_version", "apiban_probe_flags"],
    );
    let mut differences = Vec::new();
    // -V prints SER_FULL_VERSION, then the repository hash when the tree had one ("... fce50d").
    if !bin_version.strip_prefix(&tree_version).is_some_and(|rest| rest.is_empty() || rest.starts_with(' ')) {
        differences.push(format!(
            "version: the binary is '{bin_version}', the tree '{tree_version}' (\"module version mismatch\")"
        ));
    }
    if bin_flags != tree_flags {
        differences.push(format!(
            "compile flags: {} (\"module compile flags mismatch\")",
            flag_differences(&bin_flags, &tree_flags)
        ));
    }
    if !differences.is_empty() {
        stop(&format!(
            "{} would refuse this module (KAMAILIO_BIN, default the kamailio on PATH): the tree at {} \
             (KAMAILIO_SRC) differs from it in\n  - {}\nConfigure the tree as that binary was configured \
             (Debian 12's or 13's package: scripts/setup-debian.sh; Debian 13's 6.0 on Debian 12: \
             scripts/build-kamailio-6.0.sh), or point KAMAILIO_SRC at the tree the binary was built from, or \
             KAMAILIO_BIN at the binary that will load the module.",
            binary.display(),
            src.display(),
            differences.join("\n  - ")
        ));
    }
}

/// Names each flag that one list of `SER_COMPILE_FLAGS` has and the other lacks.
fn flag_differences(binary: &str, tree: &str) -> String {
    let split = |s: &str| s.split(',').map(str::trim).filter(|f| !f.is_empty()).map(String::from).collect::<Vec<_>>();
    let (b, t) = (split(binary), split(tree));
    let only = |a: &[String], z: &[String]| a.iter().filter(|f| !z.contains(f)).cloned().collect::<Vec<_>>().join(", ");
    let (in_binary, in_tree) = (only(&b, &t), only(&t, &b));
    let mut parts = Vec::new();
    if !in_binary.is_empty() {
        parts.push(format!("the binary has {in_binary}, the tree does not"));
    }
    if !in_tree.is_empty() {
        parts.push(format!("the tree has {in_tree}, the binary does not"));
    }
    if parts.is_empty() {
        parts.push(format!("the same flags in another order (binary: {binary}; tree: {tree})"));
    }
    parts.join("; ")
}

/// The value of `NAME=...` (or `NAME= ...`) in a make fragment; empty when absent.
fn make_var(mak: &str, name: &str) -> String {
    mak.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix('=')) // `NAME=`, not `NAME:=` or `NAME_X=`
        .next_back()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Splits a make value the way the shell would for the compiler's argv: whitespace separates words,
/// single and double quotes group and are removed (`-DNAME='"kamailio"'` becomes `-DNAME="kamailio"`).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

// ---------------------------------------------------------------------------------------------
// OpenSIPS

fn build_opensips_shim() {
    let src = PathBuf::from(env::var("OPENSIPS_SRC").unwrap_or_else(|_| "/usr/local/src/opensips".into()));
    println!("cargo:rerun-if-changed=c-shim/opensips/apiban_mod.c");
    let binary = src.join("opensips");
    if !src.join("sr_module.h").is_file() || !src.join("Makefile.defs").is_file() {
        stop(&format!(
            "no OpenSIPS source tree at {} (OPENSIPS_SRC): build OpenSIPS 3.6 from source (`make` in its \
             tree) and point OPENSIPS_SRC at that tree",
            src.display()
        ));
    }
    if !binary.is_file() {
        stop(&format!(
            "the OpenSIPS tree at {} is not built (no {}): run `make` there first",
            src.display(),
            binary.display()
        ));
    }
    // A rebuilt tree changes the binary, its flags or its revision: build the shim again.
    println!("cargo:rerun-if-changed={}", binary.display());
    println!("cargo:rerun-if-changed={}", src.join("Makefile.conf").display());
    let flags = opensips_flags(&src);

    let mut b = cc::Build::new();
    b.no_default_flags(true)
        .include("c-shim")
        .include(&src)
        .pic(true)
        .warnings(true)
        .extra_warnings(false);
    for f in &flags {
        b.flag(f);
    }
    // As Makefile.modules defines it: a bare word, which dprint.h turns into the log prefix.
    b.define("MOD_NAME", "apiban");
    check_opensips_version(&src, &binary, b.clone());
    b.file("c-shim/opensips/apiban_mod.c");
    link_shim_objects(b, "apiban_opensips_shim");
}

/// Asks the tree's own makefiles for the flags they give a module (`$(MOD_CFLAGS) $(DEFS)`, one
/// argument per line), with a cleared environment: cargo exports PROFILE, which OpenSIPS's
/// makefiles would paste into CFLAGS, and CC or CFLAGS from the environment would change them.
fn opensips_flags(src: &Path) -> Vec<String> {
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mk = out_dir.join("apiban-flags.mk");
    std::fs::write(&mk, "apiban-print-flags:\n\t@printf '%s\\n' $(MOD_CFLAGS) $(DEFS)\n").unwrap();
    let out = Command::new("make")
        .env_clear()
        .env("PATH", env::var("PATH").unwrap_or_default())
        .env("HOME", env::var("HOME").unwrap_or_default())
        .arg("-s")
        .arg("-C")
        .arg(src)
        .arg("-f")
        .arg("Makefile")
        .arg("-f")
        .arg(&mk)
        .arg("apiban-print-flags")
        .output()
        .unwrap_or_else(|e| stop(&format!("cannot run make in {}: {e}", src.display())));
    if !out.status.success() {
        stop(&format!(
            "make in {} could not print the module flags: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let flags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    for needed in ["-DVERSION=", "-DTHISREVISION=", "-DVERSIONTYPE="] {
        if !flags.iter().any(|f| f.starts_with(needed)) {
            stop(&format!(
                "the OpenSIPS tree at {} gave no {needed} flag: is it a complete, built source tree?",
                src.display()
            ));
        }
    }
    flags
}

/// The strings of the version gate, as the shim will embed them (the tree's headers expanded with
/// the tree's flags), must be what the binary next to them reports: OpenSIPS refuses a module
/// whose version, compile flags or revision differ, and exits.
fn check_opensips_version(src: &Path, binary: &Path, b: cc::Build) {
    let text = version_report(binary);
    let bin_version = report_line(&text, "version: ").unwrap_or_default();
    let bin_flags = report_line(&text, "flags: ").unwrap_or_default();
    // "git revision: f9f85260e5"
    let bin_scm = text.lines().find(|l| l.contains(" revision: ")).map(|l| l.trim().to_string()).unwrap_or_default();

    let [tree_version, tree_flags, tree_scm] = probe_strings(
        b,
        src,
        "#include \"version.h\"\n\
         apiban_probe_version OPENSIPS_FULL_VERSION\n\
         apiban_probe_flags OPENSIPS_COMPILE_FLAGS\n\
         apiban_probe_scm VERSIONTYPE \" revision: \" THISREVISION\n",
        ["apiban_probe_version", "apiban_probe_flags", "apiban_probe_scm"],
    );
    let checks = [
        ("version", bin_version, tree_version),
        ("compile flags", bin_flags, tree_flags),
        ("revision", bin_scm, tree_scm),
    ];
    for (what, bin, tree) in checks {
        if bin.is_empty() || bin != tree {
            stop(&format!(
                "{} reports {what} '{bin}' but its source tree at {} gives '{tree}': the binary was not \
                 built from this tree as it is now; run `make` in the tree (and install that binary)",
                binary.display(),
                src.display()
            ));
        }
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
