"""What the operator writes, where only Kamailio is tested and why: the reservation of shared
memory for max_entries under an address-space limit (prlimit on Kamailio's command line; the
message is the core's, the same for both servers, but OpenSIPS's own shared-memory pool would be
what the limit hits first). The table of bad values and the allow-list are behaviours of both
servers: test_end_to_end.py.

APIBAN_MODULE=/path/to/libapiban.so runs these against another build of the module.
"""

import subprocess
import unittest

from harness import KAMAILIO_MODULE, FakeApiban, Kamailio, Proc, TempDir, wait_until

MODULE = KAMAILIO_MODULE  # APIBAN_MODULE, see harness.py
KEY = "k-operator-S3CRET-0123456789"


class MemoryLimit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.feed = FakeApiban(key=KEY).start()
        cls.addClassCleanup(cls.feed.stop)

    def test_max_entries_beyond_memory(self):
        """Under an address-space limit of 3 GB, the reservation for 20 million entries (4 GB:
        within the machine's memory, so that mod_init's own check lets it through) fails and says
        so; the same server with the default max_entries starts under that limit."""
        limit = ["prlimit", f"--as={3 << 30}", "--"]
        tmp = TempDir("operator-mem")
        try:
            kam = Kamailio(tmp.path, self.feed.url, key=KEY, modparams=[("max_entries", '"20000000"')],
                           module=MODULE)
            r = subprocess.run(limit + kam.args(), capture_output=True, text=True, timeout=30)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stdout + r.stderr, r"ERROR: apiban: parameter 'max_entries': cannot reserve shared "
                                                  r"memory for 20000000 entries")
        finally:
            tmp.cleanup()
        tmp = TempDir("operator-mem-ok")
        try:
            kam = Kamailio(tmp.path, self.feed.url, key=KEY, module=MODULE)
            kam.proc = Proc(limit + kam.args(), kam.log_path)
            try:
                wait_until(lambda: kam.rpc_ok("core.version") or not kam.proc.alive(), timeout=15,
                           what="kamailio under the limit")
                self.assertTrue(kam.proc.alive(), kam.log()[-2000:])
                self.assertEqual(kam.stats()["max_entries"], 1_000_000)
            finally:
                kam.stop()
        finally:
            tmp.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
