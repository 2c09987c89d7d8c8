"""The demo behind `scripts/demo.sh --fleet`: a Redis, one fake APIBAN feed and three Kamailio nodes
in one fleet. Shows one pull serving all three, then a kill -9 of the leader's server and the
hand-over: another node leads within leader_ttl and goes on from the last ID in Redis."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from harness import FakeApiban, TempDir, wait_until  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from test_fleet import KEY, RATE, TTL, Node  # noqa: E402

LISTED = "127.0.0.66"
CLEAN = "127.0.0.5"
ADDED = "127.0.0.77"


def show(nodes):
    for n in nodes:
        s = n.stats()
        print(f"   {n.name}: role {s['role']:<8} leader {s['leader']:<7} entries {s['entries']}  "
              f"requests to APIBAN {s['requests']:<3} list version {s['fleet_version']}  "
              f"SIP from {LISTED}: {n.options(LISTED)}, from {CLEAN}: {n.options(CLEAN)}")


def main():
    tmp = TempDir("demo-fleet")
    redis = feed = None
    nodes = []
    try:
        redis = RedisServer(tmp.path).start()
        print(f"== redis-server {redis.proc.pid} on 127.0.0.1:{redis.port} (its own dir and config)")
        feed = FakeApiban(key=KEY, ips=[LISTED], count=500, rate_limit=RATE).start()
        print(f"== fake APIBAN feed on {feed.url}: {LISTED} and 500 others, "
              f"429 past {RATE[0]} requests in {RATE[1]} s (the nodes' rate_limit)")
        for name in ("node-a", "node-b", "node-c"):
            nodes.append(Node(tmp.path, feed.url, redis.url(), name).start())
            print(f"== kamailio {nodes[-1].proc.pid} as {name} on udp:127.0.0.1:{nodes[-1].port}, redis_url {redis.url()}")
        print(f"   (leader_ttl {TTL} s, interval 1 s, rate_limit {RATE[0]}/{RATE[1]}: demo settings)")
        wait_until(lambda: all(n.stats()["entries"] == 501 for n in nodes), timeout=60, what="every node's table")
        leader = next(n for n in nodes if n.stats()["role"] == "leader")
        print("== one pull serves all three:")
        show(nodes)
        print(f"   the feed received {feed.stats()['requests']} request(s), all from {leader.name}")
        print(f"   redis: leader {redis.cli('GET', 'apiban:leader')}, "
              f"{redis.cli('ZCARD', 'apiban:list')} addresses in apiban:list")

        last_id = redis.cli("HGET", "apiban:meta", "last_id")
        killed = time.time()
        t0 = time.monotonic()
        leader.kill_server()
        rest = [n for n in nodes if n is not leader]
        print(f"== kill -9 of {leader.name}'s whole server (its process group)")
        new = wait_until(lambda: next((n for n in rest if n.stats()["role"] == "leader"), None), timeout=30,
                         step=0.1, what="a new leader")
        print(f"   {new.name} leads after {time.monotonic() - t0:.1f} s")
        wait_until(lambda: any(t > killed for t in feed.stats()["times"]), timeout=15, what="its first request")
        s = feed.stats()
        first = next(i for i, t in zip(s["ids"], s["times"]) if t > killed)
        print(f"   its first request asked from ID {first}; the last ID in Redis was {last_id}: "
              f"{'an incremental pull' if first == last_id else 'NOT the last ID'}")
        feed.add([ADDED])
        print(f"== {ADDED} listed by the feed afterwards")
        for n in rest:
            wait_until(lambda: n.options(ADDED) == 403, timeout=30, what=f"{n.name} to refuse {ADDED}")
        show(rest)
        print(f"   SIP from {ADDED}: " + ", ".join(f"{n.name} {n.options(ADDED)}" for n in rest))
        ok = first == last_id and all(n.options(LISTED) == 403 and n.options(CLEAN) == 200 for n in rest)
        print("demo: OK" if ok else "demo: FAILED")
        return 0 if ok else 1
    finally:
        for n in nodes:
            n.stop()
        if feed:
            feed.stop()
        if redis:
            redis.stop()
        tmp.cleanup()
        print("== stopped the nodes, the feed and redis")


if __name__ == "__main__":
    sys.exit(main())
