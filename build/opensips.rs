//! The OpenSIPS shim's build (build.rs includes this file): the flags the tree at
//! `OPENSIPS_SRC` gives its own modules, and a check against the binary in that tree.

use super::*;

pub fn build_opensips_shim() {
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
