#!/usr/bin/env bash
# Sets up a Debian 12 machine (as root) and runs every test: unit tests of the Rust core, clippy,
# the end-to-end tests against the real Kamailio (and OpenSIPS, when a built tree is at
# $OPENSIPS_SRC; otherwise that file prints SKIPPED), and the benchmarks once at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup-debian.sh

echo "== build (release, Kamailio)"
cargo build --release --locked
echo "== unit tests of the Rust core (no server)"
cargo test --release --locked
echo "== clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== fuzzing, a short bounded run (scripts/fuzz.sh SECONDS for a longer one)"
bash scripts/fuzz.sh 15
# opensips-cli is how an OpenSIPS operator reaches MI; it comes from PyPI (it is not in Debian),
# installed into target/ beside the build so that nothing outside the checkout changes.
if [[ -x "${OPENSIPS_SRC:-/usr/local/src/opensips}/opensips" ]]; then
    pylib=target/pylib
    if ! PYTHONPATH=$pylib "$PYTHON" -c 'import opensipscli' 2>/dev/null; then
        echo "== opensips-cli (PyPI) into $pylib"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$pylib" opensipscli
    fi
    export PYTHONPATH="$PWD/$pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== end-to-end tests (real servers, fake APIBAN feed, SIP over loopback)"
"$PYTHON" -m unittest discover -s tests -p 'test_*.py' -v
echo "== benchmarks once at tiny sizes, to keep them working (bash scripts/bench.sh for the figures)"
bash scripts/bench.sh --tiny
