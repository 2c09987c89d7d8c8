//! The Kamailio shim's build (build.rs includes this file): the defines of the packaged binary,
//! from the configured tree at `KAMAILIO_SRC`, and a check against the binary that will load
//! the module.

use super::*;

pub fn build_kamailio_shim() {
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
