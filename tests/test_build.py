"""The build stops with a message that says what to run when the host tree or libclang is missing,
or when the tree would give a module that the Kamailio binary meant to load it refuses."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import KAMAILIO, REPO

# The tree the module is normally built against, and the binary it matches (scripts/setup-debian.sh).
KAMAILIO_SRC = os.environ.get("KAMAILIO_SRC") or "/usr/local/src/kamailio"

# A target dir of its own: these builds fail on purpose and must not disturb target/release.
TARGET = os.path.join(REPO, "target", "buildcheck")


def cargo_build(**env):
    e = dict(os.environ, CARGO_TARGET_DIR=TARGET, **env)
    r = subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO, env=e, capture_output=True,
                       text=True, timeout=900)
    return r.returncode, r.stdout + r.stderr


class BuildStops(unittest.TestCase):
    def test_missing_kamailio_tree(self):
        rc, out = cargo_build(KAMAILIO_SRC="/nonexistent/kamailio")
        self.assertNotEqual(rc, 0)
        self.assertIn("no Kamailio source tree at /nonexistent/kamailio", out)
        self.assertIn("scripts/setup-debian.sh", out)

    def test_unconfigured_kamailio_tree(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "src", "core"))
            open(os.path.join(d, "src", "core", "sr_module.h"), "w").close()
            rc, out = cargo_build(KAMAILIO_SRC=d)
        self.assertNotEqual(rc, 0)
        self.assertIn("is not configured", out)
        self.assertIn("make cfg", out)

    def test_kamailio_bin_that_is_no_file(self):
        rc, out = cargo_build(KAMAILIO_BIN="/nonexistent/kamailio")
        self.assertNotEqual(rc, 0)
        self.assertIn("KAMAILIO_BIN=/nonexistent/kamailio is not a file", out)

    def test_missing_libclang(self):
        with tempfile.TemporaryDirectory() as d:
            rc, out = cargo_build(LIBCLANG_PATH=d)
        self.assertNotEqual(rc, 0)
        self.assertIn("bindgen needs libclang: run `apt-get install libclang-dev`", out)


def tree_like(d, src, edit):
    """A tree at `d` with the headers of `src` and its src/config.mak changed by `edit`: as if the
    same source had been configured with other options."""
    os.makedirs(os.path.join(d, "src"))
    os.symlink(os.path.join(src, "src", "core"), os.path.join(d, "src", "core"))
    with open(os.path.join(src, "src", "config.mak")) as f:
        mak = f.read()
    changed = edit(mak)
    if changed == mak:
        raise AssertionError("the edit changed nothing in config.mak")
    with open(os.path.join(d, "src", "config.mak"), "w") as f:
        f.write(changed)


@unittest.skipUnless(os.path.isfile(os.path.join(KAMAILIO_SRC, "src", "config.mak")) and os.path.isfile(KAMAILIO),
                     f"needs a configured tree at {KAMAILIO_SRC} and its binary {KAMAILIO}")
class BuildChecksTheBinary(unittest.TestCase):
    """build.rs compares the version and flags the module is compiled with against `kamailio -V` of
    KAMAILIO_BIN, and names what differs: Kamailio itself says so only when it loads the module."""

    def build_against(self, edit, **env):
        with tempfile.TemporaryDirectory() as d:
            tree_like(d, KAMAILIO_SRC, edit)
            return cargo_build(KAMAILIO_SRC=d, **{"KAMAILIO_BIN": KAMAILIO, **env}), d

    def test_a_flag_the_binary_was_built_with_and_the_tree_lacks_is_named(self):
        # Configured without NAPTR support: -DUSE_NAPTR leaves C_DEFS.
        (rc, out), d = self.build_against(lambda m: m.replace(" -DUSE_NAPTR", " ", 1))
        self.assertNotEqual(rc, 0)
        self.assertIn(f"{KAMAILIO} would refuse this module", out)
        self.assertIn(f"the tree at {d} (KAMAILIO_SRC) differs from it", out)
        self.assertIn("compile flags: the binary has USE_NAPTR, the tree does not", out)
        self.assertNotIn("version: the binary is", out)
        self.assertIn("point KAMAILIO_SRC at the tree the binary was built from", out)

    def test_a_flag_only_the_tree_has_and_another_version_are_named(self):
        def edit(m):
            m = re.sub(r"-DVERSION='\"([0-9.]+)\"'", "-DVERSION='\"9.9.9\"'", m, count=1)
            return m.replace(" -DUSE_NAPTR", " -DUSE_NAPTR -DNO_SIG_DEBUG", 1)
        (rc, out), _ = self.build_against(edit)
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"version: the binary is 'kamailio [0-9.]+ \([^)]*\)[^']*', the tree "
                              r"'kamailio 9\.9\.9 \([^)]*\)' \(\"module version mismatch\"\)")
        self.assertIn("compile flags: the tree has NO_SIG_DEBUG, the binary does not", out)

    def test_without_a_binary_the_check_is_skipped_with_a_note(self):
        # No KAMAILIO_BIN and no kamailio on PATH: a warning, and the build goes on (here up to
        # bindgen, which stops it for lack of libclang: the check itself passed).
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                               if p and not os.path.isfile(os.path.join(p, "kamailio")))
        cargo = shutil.which("cargo")
        with tempfile.TemporaryDirectory() as d:
            (rc, out), _ = self.build_against(lambda m: m.replace(" -DUSE_NAPTR", " ", 1), KAMAILIO_BIN="",
                                              PATH=os.pathsep.join([os.path.dirname(cargo), path]), LIBCLANG_PATH=d)
        self.assertNotEqual(rc, 0)
        self.assertIn("no kamailio on PATH and KAMAILIO_BIN unset", out)
        self.assertNotIn("would refuse this module", out)
        self.assertIn("bindgen needs libclang", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
