"""Reproduction (not part of the suite): a FLUSHALL (or Redis restarted empty) loses the fleet's
request history, and a node other than the last leader that takes the lease spends the key's
budget again: more than rate_limit requests in one window, and a 429.

Found by tests/test_fleet_lifecycle.py (seed 424242: redis_restart_empty at 49.6 s, node-a led,
node-b took over and got a 429). Two nodes, rate_limit 4/10 with interval 1 (the leader keeps the
budget spent); the leader is SIGSTOPped only so that the other node is the one to take the lease
after the flush (its own requests are all in the past); FLUSHALL; the other node leads and asks at
once. Run: cd tests && python3 repro_flush_budget.py  (exit 1: reproduced).
"""

import os
import signal
import sys
import time

from harness import FakeApiban, TempDir, wait_until
from redis_server import RedisServer
from test_fleet import GENERATED, KEY, LISTED, RATE, Node


def main():
    tmp = TempDir("repro-flush-budget")
    r = RedisServer(tmp.path).start()
    feed = FakeApiban(key=KEY, ips=LISTED, count=GENERATED, rate_limit=RATE).start()
    nodes = [Node(tmp.path, feed.url, r.url(), n) for n in ("node-a", "node-b")]
    leader = None
    try:
        for n in nodes:
            n.start()
        leader = wait_until(lambda: next((n for n in nodes if n.stats()["role"] == "leader"), None), timeout=20)
        other = next(n for n in nodes if n is not leader)
        # The leader spends the budget: 4 requests within the last 10 s.
        wait_until(lambda: sum(1 for t in feed.stats()["times"] if t > time.time() - RATE[1]) >= RATE[0],
                   timeout=30, what="the budget spent")
        os.killpg(leader.proc.pid, signal.SIGSTOP)
        r.cli("FLUSHALL")
        wait_until(lambda: other.stats()["role"] == "leader", timeout=10, what="the other node to lead")
        time.sleep(RATE[1])
        os.killpg(leader.proc.pid, signal.SIGCONT)
        worst, limited = feed.worst_window(RATE[1]), other.stats()["rate_limited"]
        print(f"worst window {worst} (limit {RATE[0]}/{RATE[1]}), 429s at {other.name}: {limited}")
        return 1 if worst > RATE[0] or limited else 0
    finally:
        if leader is not None and leader.proc.alive():
            os.killpg(leader.proc.pid, signal.SIGCONT)
        for n in nodes:
            n.stop()
        feed.stop()
        r.stop()
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
