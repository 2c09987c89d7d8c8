"""The build stops with a message that says what to run when the host tree or libclang is missing."""

import os
import subprocess
import tempfile
import unittest

from harness import REPO

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

    def test_missing_libclang(self):
        with tempfile.TemporaryDirectory() as d:
            rc, out = cargo_build(LIBCLANG_PATH=d)
        self.assertNotEqual(rc, 0)
        self.assertIn("bindgen needs libclang: run `apt-get install libclang-dev`", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
