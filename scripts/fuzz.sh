#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the three parsers of untrusted bytes:
# feed replies, script addresses, snapshot files. Usage: scripts/fuzz.sh [seconds per target]
# The stable toolchain runs cargo-fuzz with RUSTC_BOOTSTRAP=1 and no sanitizer (-s none): the
# targets assert the parsers' promises themselves, and safe Rust has no memory errors to find.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
secs=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none
for t in parse_reply parse_addr snapshot; do
    corpus=$(mktemp -d)
    echo "== fuzz $t for ${secs}s"
    cargo fuzz run -s none "$t" "$corpus" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::number_of_executed_units)|ERROR|panicked' || true
    rm -rf "$corpus"
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
        echo "fuzz: $t found a crash: fuzz/artifacts/$t" >&2
        exit 1
    fi
done
