#!/usr/bin/env bash
# Every benchmark of the apiban module beside the script approach it replaces, in one run:
#   1. lookup micro-benchmark of the shared table, beside a pointer chase (benches/lookup.rs, criterion)
#   2. parse + publish of 1 k … 1 M addresses (benches/load.rs)
#   3. the real Kamailio, module against benches/servers/script-approach.cfg, same fake feed: load CPU and
#      wall time, instructions per request (callgrind), sipp throughput, shared memory per entry
#   4. SIP round-trip times while the table is replaced every second (benches/servers/kamailio_bench.py)
#   5. fleet mode: publish to last follower, follower CPU, Redis memory and traffic (benches/servers/fleet_bench.py)
#   6. local bans: apiban_ban's cost on the worker and the ring (benches/bans.rs), SIP throughput under a flood of
#      bans, ban to refusal on the last node of a fleet (benches/servers/bans_bench.py)
# then writes BENCHMARKS.md and benches/servers/load-cpu.png (benches/servers/report.py), and benches/servers/results.json.
#
#   bash scripts/bench.sh          full run, ~20 minutes (the fleet part ~5)
#   bash scripts/bench.sh --tiny   tiny sizes, a couple of minutes; keeps it working in CI and writes
#                                  nothing in the repository (results in a temp dir, removed)
#
# Needs: what scripts/setup-debian.sh installs (valgrind included). Builds into cargo's target dir
# (CARGO_TARGET_DIR is honoured): the benches with `--features bench`, then the module itself, last,
# so that target/release/libapiban.so is the real module when this ends.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

tiny=
case "${1:-}" in
    --tiny) tiny=1 ;;
    "") ;;
    *) echo "usage: bash scripts/bench.sh [--tiny]" >&2; exit 2 ;;
esac

for tool in kamailio kamcmd sipp valgrind; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench: $tool not found: run scripts/setup-debian.sh" >&2; exit 1; }
done

start=$(date +%s)
results=$(mktemp -d /tmp/apiban-bench.XXXXXX)
# APIBAN_BENCH_KEEP=1 keeps the raw results (criterion's estimates, JSON lines, callgrind outputs).
if [[ -n ${APIBAN_BENCH_KEEP:-} ]]; then
    echo "bench: raw results in $results"
else
    trap 'rm -rf "$results"' EXIT
fi
"$PYTHON" - "$results/run.json" "${tiny:-0}" <<'EOF'
import json, sys, time
json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "loadavg_start": float(open("/proc/loadavg").read().split()[0]),
           "tiny": sys.argv[2] == "1"}, open(sys.argv[1], "w"))
EOF

target=$(cargo metadata --format-version 1 --no-deps --locked | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

echo "== build: benches (feature bench), then the module"
cargo bench --locked --features bench --no-run
cargo build --release --locked
module="$target/release/libapiban.so"

export CRITERION_HOME="$results/criterion"
export APIBAN_BENCH_OUT="$results/micro.jsonl"
if [[ -n $tiny ]]; then export APIBAN_BENCH_TINY=1; fi

echo "== 1. lookup micro-benchmark (criterion)"
cargo bench --locked --features bench --bench lookup -- --noplot
echo "== 2. parse + publish"
cargo bench --locked --features bench --bench load

echo "== 3, 4. the real Kamailio: module against the script approach"
kargs=(--module "$module" --out "$results")
[[ -n ${APIBAN_BENCH_KEEP:-} ]] && kargs+=(--keep)
[[ -n $tiny ]] && kargs+=(--tiny)
"$PYTHON" benches/servers/kamailio_bench.py "${kargs[@]}"

echo "== 5. fleet mode: one leader and three followers on one Redis"
fargs=(--module "$module" --out "$results")
[[ -n $tiny ]] && fargs+=(--tiny)
"$PYTHON" benches/servers/fleet_bench.py "${fargs[@]}"

echo "== 6. local bans: the worker's cost, a flood of bans, ban to refusal across a fleet"
bargs=(--module "$module" --out "$results")
[[ -n $tiny ]] && bargs+=(--tiny)
"$PYTHON" benches/servers/bans_bench.py "${bargs[@]}"
# Its micro-benchmark's `cargo bench` rebuilt target/release/libapiban.so with the bench feature:
# the module again, so that it is the real one when this ends.
cargo build --release --locked

"$PYTHON" - "$results/run.json" "$start" <<'EOF'
import json, sys, time
d = json.load(open(sys.argv[1]))
d["loadavg_end"] = float(open("/proc/loadavg").read().split()[0])
d["seconds"] = time.time() - int(sys.argv[2])
json.dump(d, open(sys.argv[1], "w"))
EOF

if [[ -n $tiny ]]; then
    "$PYTHON" benches/servers/report.py --results "$results" --markdown "$results/BENCHMARKS.md" --chart "$results/load-cpu.png"
    # Every part must have produced its figures.
    grep -q '^| Kamailio CPU to load' "$results/BENCHMARKS.md"
    if grep -q '^Not run\.' "$results/BENCHMARKS.md"; then
        echo "bench --tiny: a part produced no figures:" >&2; grep -B3 '^Not run\.' "$results/BENCHMARKS.md" >&2; exit 1
    fi
    echo "bench --tiny: every part ran ($(($(date +%s) - start)) s); BENCHMARKS.md left as it is"
    exit 0
fi

# The chart: matplotlib from PyPI when it is missing (gnuplot is the fallback in report.py).
"$PYTHON" -c 'import matplotlib' 2>/dev/null || "$PYTHON" -m pip install -q matplotlib >/dev/null 2>&1 ||
    echo "bench: matplotlib could not be installed; the chart falls back to gnuplot" >&2
"$PYTHON" benches/servers/report.py --results "$results" --markdown BENCHMARKS.md --chart benches/servers/load-cpu.png \
    --raw benches/servers/results.json
echo "bench: BENCHMARKS.md, benches/servers/load-cpu.png and benches/servers/results.json written in $(($(date +%s) - start)) s"
