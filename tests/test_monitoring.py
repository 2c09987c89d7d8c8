"""contrib/ for operators (issue 16): the Grafana dashboard (contrib/grafana/apiban.json) and the
Prometheus alerting rules (contrib/prometheus/apiban-rules.yml), held against what a real fleet
exports: two Kamailio nodes sharing one real Redis and one fake APIBAN feed, each serving
xhttp_prom's /metrics as README.md's "Prometheus" section shows.

- Every kamailio_apiban_* name the rules and the dashboard query is in the scrape.
- `promtool check rules` accepts the rules, and the dashboard's queries too (as recording rules).
- `promtool test rules` runs unit tests written here from the scrape: the series are the names
  the nodes export with the values they exported (the leader's and the follower's), moved along
  in time as a healthy fleet moves them; each alert stays silent there and fires in its bad case.

promtool is Debian's `prometheus` package, PyYAML `python3-yaml`; scripts/setup-debian.sh installs
both (and Redis). Without them this file fails, it does not skip.
"""

import json
import os
import re
import shutil
import subprocess
import unittest
import urllib.request

from harness import (KAMAILIO_CFG, REPO, STAT_NUMBERS, FakeApiban, Kamailio, TempDir, free_port, read_text,
                     sip_exchange, wait_until, write_text)
from redis_server import RedisServer, have_redis

try:
    import yaml
except ImportError:  # reported by the tests that need it
    yaml = None

RULES = os.path.join(REPO, "contrib", "prometheus", "apiban-rules.yml")
DASHBOARD = os.path.join(REPO, "contrib", "grafana", "apiban.json")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SETUP = "scripts/setup-debian.sh"

KEY = "k-monitoring-0123456789"
LISTED = ["127.0.0.66", "127.0.0.67", "2001:db8::66"]
GENERATED = 40
TOTAL = len(LISTED) + GENERATED
METRIC = re.compile(r"\bkamailio_apiban_\w+")
# A scrape line: name, value, xhttp_prom's timestamp (ms).
SAMPLE = re.compile(r"^(kamailio_apiban_\w+) (\d+)(?: \d+)?$", re.M)

# The unit tests' world: promtool evaluates from unix time 0, one sample a minute.
JOB = "kamailio-apiban"
MINUTES = 40
INTERVAL = 300  # the module's default interval, which ApibanListStale is written for


def need_promtool(test):
    if not os.access(PROMTOOL, os.X_OK):
        test.fail(f"promtool not found (Debian's prometheus package): run {SETUP}, which CI runs")


def need_yaml(test):
    if yaml is None:
        test.fail(f"python3-yaml is missing: run {SETUP}, which CI runs")


def fleet_cfg(http_port):
    """The sample config with TCP, xhttp and xhttp_prom serving /metrics on http_port."""
    text = read_text(KAMAILIO_CFG)
    for old, new in [
        ("disable_tcp=yes", f"disable_tcp=no\ntcp_children=1\ntcp_accept_no_cl=yes\nlisten=tcp:127.0.0.1:{http_port}"),
        ('loadmodule "apiban.so"\n', 'loadmodule "apiban.so"\nloadmodule "xhttp.so"\nloadmodule "xhttp_prom.so"\n'
                                     'modparam("xhttp_prom", "xhttp_prom_stats", "apiban:")\n'),
    ]:
        if text.count(old) != 1:
            raise AssertionError(f"the sample config has {text.count(old)} x {old!r}, expected 1")
        text = text.replace(old, new)
    return text + ('\nevent_route[xhttp:request] {\n'
                   '\tif ($hu =~ "^/metrics") {\n\t\tprom_dispatch();\n\t\texit;\n\t}\n'
                   '\txhttp_reply("404", "Not Found", "text/plain", "no such page\\n");\n}\n')


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        if r.status != 200:
            raise AssertionError(f"/metrics answered {r.status}")
        return r.read().decode()


def dashboard_queries(dash):
    """Every PromQL text of the dashboard: panel targets (rows' panels too) and templating queries."""
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def humanize_duration(v):
    """Prometheus's humanizeDuration template function, for v >= 1 s."""
    s = int(v)
    d, h, m, sec = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if d:
        return f"{d}d {h}h {m}m {sec}s"
    if h:
        return f"{h}h {m}m {sec}s"
    if m:
        return f"{m}m {sec}s"
    return f"{v:.4g}s"


class Monitoring(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not have_redis():
            raise AssertionError(f"redis-server, redis-sentinel and redis-cli are needed: run {SETUP}")
        cls.tmp = TempDir("monitoring")
        cls.feed = FakeApiban(key=KEY, ips=LISTED, count=GENERATED).start()
        cls.redis = RedisServer(cls.tmp.path).start()
        cls.nodes, cls.http = {}, {}
        try:
            for name in ("node-a", "node-b"):
                d = os.path.join(cls.tmp.path, name)
                os.makedirs(d)
                cls.http[name] = free_port()
                cls.nodes[name] = Kamailio(d, cls.feed.url, key=KEY, cfg_text=fleet_cfg(cls.http[name]), defines={
                    "APIBAN_REDIS_URL": f'"{cls.redis.url()}"',
                    "APIBAN_NODE_ID": f'"{name}"',
                    "APIBAN_INTERVAL": "1",
                }, modparams=[("leader_ttl", '"3"'), ("timeout", "1")]).start()

            def settled():
                st = {n: k.stats() for n, k in cls.nodes.items()}
                leaders = [n for n, s in st.items() if s["role"] == "leader"]
                versions = {s["fleet_version"] for s in st.values()}
                ok = (len(leaders) == 1 and all(s["entries"] == TOTAL for s in st.values())
                      and len(versions) == 1 and versions != {0})
                return leaders[0] if ok else None
            cls.leader = wait_until(settled, timeout=30, step=0.2, what="two nodes with the list, one leader")
            cls.follower = next(n for n in cls.nodes if n != cls.leader)
            # A listed source and a clean one on each node, so hits and checks are not 0.
            for k in cls.nodes.values():
                if sip_exchange("127.0.0.66", k.port)[0] != 403 or sip_exchange("127.0.0.5", k.port)[0] != 200:
                    raise AssertionError("the fleet does not block as it should")
            cls.bodies = {n: scrape(cls.http[n]) for n in cls.nodes}
        except BaseException:
            cls.tearDownClass()
            raise
        cls.values = {n: {m.group(1): int(m.group(2)) for m in SAMPLE.finditer(b)} for n, b in cls.bodies.items()}
        cls.exported = set(cls.values[cls.leader]) & set(cls.values[cls.follower])

    @classmethod
    def tearDownClass(cls):
        for k in cls.nodes.values():
            k.stop()
        cls.redis.stop()
        cls.feed.stop()
        cls.tmp.cleanup()

    # -- what the nodes export ---------------------------------------------------------------

    def test_the_nodes_export_every_number_of_apiban_stats_as_a_fleet(self):
        for n, v in self.values.items():
            self.assertEqual(sorted(v), sorted(f"kamailio_apiban_{s}" for s in STAT_NUMBERS), self.bodies[n])
        lead, fol = self.values[self.leader], self.values[self.follower]
        self.assertEqual((lead["kamailio_apiban_leading"], fol["kamailio_apiban_leading"]), (1, 0))
        self.assertEqual(lead["kamailio_apiban_fleet_version"], fol["kamailio_apiban_fleet_version"])
        self.assertGreater(lead["kamailio_apiban_fleet_version"], 0)
        self.assertGreaterEqual(fol["kamailio_apiban_fleet_syncs"], 1)
        self.assertEqual(fol["kamailio_apiban_requests"], 0)
        for v in (lead, fol):
            self.assertEqual(v["kamailio_apiban_entries"], TOTAL)
            self.assertGreaterEqual(v["kamailio_apiban_hits"], 1)
            self.assertGreater(v["kamailio_apiban_last_sync"], 1_700_000_000)

    def test_every_metric_the_rules_query_is_exported(self):
        need_yaml(self)
        with open(RULES) as f:
            rules = yaml.safe_load(f)
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        self.assertEqual(len(exprs), 5)
        names = {n for e in exprs for n in METRIC.findall(e)}
        self.assertTrue(names)
        self.assertEqual(names - self.exported, set(), "queried by apiban-rules.yml but not exported")
        # The comments and annotations name only exported metrics too.
        self.assertEqual(set(METRIC.findall(read_text(RULES))) - self.exported, set())

    def test_every_metric_the_dashboard_queries_is_exported(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        queries = dashboard_queries(dash)
        self.assertGreaterEqual(len(queries), 10)
        names = {n for q in queries for n in METRIC.findall(q)}
        self.assertEqual(names - self.exported, set(), "queried by apiban.json but not exported")
        # What issue 16 asks to see, each queried by some panel.
        for needed in ("entries", "last_sync", "hits", "requests", "leading", "fleet_version", "redis_errors"):
            self.assertIn(f"kamailio_apiban_{needed}", names)
        # One Prometheus data source, chosen in the dashboard; every panel uses it, per node by `instance`.
        ds = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
        self.assertEqual([(v["name"], v["query"]) for v in ds], [("datasource", "prometheus")])
        for p in dash["panels"]:
            if p["type"] != "row":
                self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"}, p["title"])
                self.assertTrue(p["targets"], p["title"])
                for t in p["targets"]:
                    self.assertEqual(t["datasource"]["uid"], "${datasource}", p["title"])
                    if METRIC.search(t["expr"]):
                        self.assertIn('instance=~"$instance"', t["expr"], p["title"])

    # -- promtool ----------------------------------------------------------------------------

    def promtool(self, *args):
        need_promtool(self)
        r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout + r.stderr

    def test_promtool_checks_the_rules_and_the_dashboard_s_queries(self):
        rc, out = self.promtool("check", "rules", RULES)
        self.assertEqual(rc, 0, out)
        self.assertIn("SUCCESS: 5 rules found", out)
        # The dashboard's PromQL, with Grafana's variables filled in, as recording rules.
        with open(DASHBOARD) as f:
            queries = dashboard_queries(json.load(f))
        rules = []
        for i, q in enumerate(queries):
            if q.startswith("label_values("):  # Grafana's, not PromQL: the selector inside it is
                q = q[len("label_values("):].rsplit(",", 1)[0]
            q = q.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
            rules.append({"record": f"apiban:dashboard_query_{i}", "expr": q})
        path = os.path.join(self.tmp.path, "dashboard-queries.yml")
        write_text(path, json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
        rc, out = self.promtool("check", "rules", path)
        self.assertEqual(rc, 0, out)

    def test_promtool_unit_tests_of_the_alerts_on_the_exported_series(self):
        need_yaml(self)
        need_promtool(self)
        tests = AlertTests(self.values[self.leader], self.values[self.follower]).tests()
        path = os.path.join(self.tmp.path, "apiban-rules.test.yml")
        # JSON is YAML: promtool reads it as its test file.
        write_text(path, json.dumps({"rule_files": [RULES], "evaluation_interval": "1m", "tests": tests}, indent=1))
        rc, out = self.promtool("test", "rules", path)
        self.assertEqual(rc, 0, f"{out}\n(the test file: {path}; kept while this test runs)")
        self.assertIn("SUCCESS", out)
        print(f"\n  promtool test rules: {len(tests)} groups on {len(self.exported)} exported series per node, "
              f"leader {self.leader}, follower {self.follower}", flush=True)


class AlertTests:
    """promtool unit tests of apiban-rules.yml, on the series two real nodes exported.

    A healthy fleet over MINUTES minutes, from unix time 0 (where promtool's clock starts): the
    leader pulls every INTERVAL s (syncs, requests and last_sync move on), the follower takes each
    pull from Redis (fleet_syncs, and the leader's last_sync), both hold the same fleet_version,
    the lookups grow; every other metric keeps the value the node exported. Each bad case changes
    only what makes it bad."""

    def __init__(self, leader, follower):
        self.base = {"node-leader": leader, "node-follower": follower}
        with open(RULES) as f:
            self.rules = {r["alert"]: r for g in yaml.safe_load(f)["groups"] for r in g["rules"]}

    # -- series --------------------------------------------------------------------------------

    def healthy(self, inst, m):
        """{metric: value} of node `inst` at minute m."""
        v = dict(self.base[inst])
        leader = inst == "node-leader"
        pulls = m * 60 // INTERVAL
        v["kamailio_apiban_last_sync"] = pulls * INTERVAL
        v["kamailio_apiban_backoff_until"] = 0
        if leader:
            v["kamailio_apiban_syncs"] += pulls
            v["kamailio_apiban_requests"] += pulls
        else:
            v["kamailio_apiban_fleet_syncs"] += pulls
        v["kamailio_apiban_checks"] += 120 * m
        v["kamailio_apiban_hits"] += 12 * m
        return v

    def series(self, change=None, job=JOB, insts=("node-leader", "node-follower")):
        """input_series of a fleet; change(inst, m, values) edits a node's values at minute m
        (a value None is a missing sample, "stale" a target that stopped answering)."""
        rows = {}
        for inst in insts:
            for m in range(MINUTES + 1):
                v = self.healthy(inst, m)
                if change:
                    change(inst, m, v)
                for name, x in v.items():
                    rows.setdefault((name, inst), []).append("_" if x is None else str(x))
        return [{"series": f'{name}{{job="{job}",instance="{inst}"}}', "values": " ".join(vals)}
                for (name, inst), vals in sorted(rows.items())]

    # -- expected alerts -----------------------------------------------------------------------

    def alert(self, name, value=None, **labels):
        """One firing alert as promtool expects it: the rule's labels and its annotations expanded."""
        r = self.rules[name]

        def expand(text):
            text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
            text = re.sub(r"\{\{ \$value \| humanizeDuration \}\}", lambda m: humanize_duration(value), text)
            if "{{" in text:
                raise AssertionError(f"{name}: a template this test does not expand: {text}")
            return text
        return {"exp_labels": {**r.get("labels", {}), **labels},
                "exp_annotations": {k: expand(t) for k, t in r.get("annotations", {}).items()}}

    @staticmethod
    def at(name, minute, *alerts):
        return {"alertname": name, "eval_time": f"{minute}m", "exp_alerts": list(alerts)}

    # -- the cases -----------------------------------------------------------------------------

    def tests(self):
        a, b = "node-leader", "node-follower"
        node = lambda inst: {"job": JOB, "instance": inst}  # noqa: E731
        names = ["ApibanListStale", "ApibanTableEmpty", "ApibanNoLeader", "ApibanFleetVersionsApart",
                 "ApibanRedisErrors"]
        if sorted(names) != sorted(self.rules):
            raise AssertionError(f"the rules are {sorted(self.rules)}; this test knows {names}")
        out = []

        def case(series, *checks):
            out.append({"interval": "1m", "input_series": series, "alert_rule_test": list(checks)})

        # A healthy fleet, and a standalone node in a job of its own (leading 0, fleet_version 0):
        # no alert at any minute.
        def standalone(inst, m, v):
            if inst == a:
                v["kamailio_apiban_leading"] = v["kamailio_apiban_fleet_version"] = 0
        case(self.series() + self.series(standalone, job="standalone", insts=(a,)),
             *[self.at(n, t) for n in names for t in (1, 6, 20, MINUTES)])

        # Stale: the last pull at minute 5 (t = 300 s), then none. Older than 3 x 300 s from
        # minute 20 (t > 1200 s), firing 5 minutes later, on both nodes (the follower shows the
        # leader's last_sync).
        def stale(inst, m, v):
            if m > 5:
                v.update(self.healthy(inst, 5), **{k: v[k] for k in ("kamailio_apiban_checks", "kamailio_apiban_hits")})
        age = lambda minute: minute * 60 - 300  # noqa: E731
        case(self.series(stale),
             self.at("ApibanListStale", 19),
             self.at("ApibanListStale", 24),
             self.at("ApibanListStale", 30, self.alert("ApibanListStale", age(30), **node(b)),
                     self.alert("ApibanListStale", age(30), **node(a))))

        # The same, but the feed asked for a pause until t = 3600 s (a 429's Retry-After): no
        # alert while the backoff runs (age 1500 s < 900 + 1800 s at minute 30), firing again
        # once the age passes 900 s + what is left of it (t > 2250 s, minute 38, + 5 minutes:
        # beyond MINUTES, so not at 40).
        def stale_backoff(inst, m, v):
            stale(inst, m, v)
            if m > 5:
                v["kamailio_apiban_backoff_until"] = 3600
        case(self.series(stale_backoff),
             self.at("ApibanListStale", 30),
             self.at("ApibanListStale", MINUTES))

        # Table empty from minute 10 while the leader's pulls go on (syncs) and the follower takes
        # them from Redis (fleet_syncs): firing 5 minutes later on both, and on. A fleet whose
        # pulls stopped at minute 5 (that is ApibanListStale's) is silent once its last pull is
        # 15 minutes old (at minute 30).
        def empty(inst, m, v):
            if m >= 10:
                v.update({"kamailio_apiban_entries": 0, "kamailio_apiban_ipv4": 0, "kamailio_apiban_ipv6": 0})
        def empty_no_sync(inst, m, v):
            stale(inst, m, v)
            empty(inst, m, v)
        case(self.series(empty) + self.series(empty_no_sync, job="down"),
             self.at("ApibanTableEmpty", 9),
             self.at("ApibanTableEmpty", 14),
             self.at("ApibanTableEmpty", 30, self.alert("ApibanTableEmpty", **node(b)),
                     self.alert("ApibanTableEmpty", **node(a))))

        # No leader: the leader steps down at minute 10 and nobody takes over: pending at 10,
        # firing from 11 (for: 1m), one alert for the fleet. In a second fleet the leader's target
        # stops answering at minute 10 (a stale series, as Prometheus marks a failed scrape).
        def step_down(inst, m, v):
            if inst == a and m >= 10:
                v["kamailio_apiban_leading"] = 0
        def leader_gone(inst, m, v):
            if inst == a and m >= 10:
                for k in v:
                    v[k] = "stale" if m == 10 else None
        case(self.series(step_down) + self.series(leader_gone, job="fleet-2"),
             self.at("ApibanNoLeader", 9),
             self.at("ApibanNoLeader", 10),
             self.at("ApibanNoLeader", 12, self.alert("ApibanNoLeader", job=JOB),
                     self.alert("ApibanNoLeader", job="fleet-2")))
        # A hand-over within a lease (the follower leads at the next scrape) is no alert.
        def hand_over(inst, m, v):
            if m >= 10:
                v["kamailio_apiban_leading"] = int(inst == b)
        case(self.series(hand_over), *[self.at("ApibanNoLeader", t) for t in (10, 11, 20)])

        # Versions apart: at minute 5 the follower is one scrape behind (no alert); from minute 10
        # it stays behind: firing from 11.
        def apart(inst, m, v):
            if inst == a and m >= 5:
                v["kamailio_apiban_fleet_version"] += 1 if m < 10 else 2
            if inst == b and m >= 6:
                v["kamailio_apiban_fleet_version"] += 1
        case(self.series(apart),
             *[self.at("ApibanFleetVersionsApart", t) for t in (5, 6, 10)],
             self.at("ApibanFleetVersionsApart", 12, self.alert("ApibanFleetVersionsApart", job=JOB)))

        # Redis errors: the follower's count goes up 3 at minute 10: firing at once, on that node
        # only, until 5 minutes have passed without another.
        def redis_errors(inst, m, v):
            if inst == b and m >= 10:
                v["kamailio_apiban_redis_errors"] += 3
        case(self.series(redis_errors),
             self.at("ApibanRedisErrors", 9),
             self.at("ApibanRedisErrors", 10, self.alert("ApibanRedisErrors", **node(b))),
             self.at("ApibanRedisErrors", 14, self.alert("ApibanRedisErrors", **node(b))),
             self.at("ApibanRedisErrors", 16))
        return out


if __name__ == "__main__":
    unittest.main()
