#!/usr/bin/env bash
# The main job, from a fresh Debian 12 or 13 machine (as root): set up, build the module, start Kamailio
# with the sample config and apiban loaded -- against the fake APIBAN feed, or the real one when
# APIBAN_KEY is set -- show a listed source refused and a clean one served, then stop cleanly.
# --fleet: a Redis and three Kamailio nodes in one fleet against the fake feed instead: one pull
# serves all three, then a kill -9 of the leader and the hand-over (scripts/demo_fleet.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup-debian.sh
find_python
echo "== building the module: cargo build --release"
cargo build --release --locked
if [[ ${1:-} == --fleet ]]; then
    exec "$PYTHON" scripts/demo_fleet.py
fi
exec "$PYTHON" scripts/demo.py
