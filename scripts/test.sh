#!/usr/bin/env bash
# Sets up a Debian 12 or 13 machine (as root) and runs every test: unit tests of the Rust core,
# clippy, the end-to-end tests against the real Kamailio of the Debian release (and OpenSIPS, when a
# built tree is at $OPENSIPS_SRC; otherwise that file prints SKIPPED), then the Kamailio suites
# again against Debian 13's Kamailio 6.0 built from source (scripts/build-kamailio-6.0.sh; on Debian
# 13 the first pass already is 6.0), and the benchmarks once at tiny sizes.
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

# Debian 12's own Kamailio is 5.6; most operators run 6.0 (Debian 13's). Build Debian 13's from
# source, the module against it in a target dir of its own, and run the Kamailio suites against it.
# The package and make-install tests skip there (they need Debian's packaged server), saying so.
if [[ $(. /etc/os-release && echo "${VERSION_CODENAME:-}") == bookworm ]]; then
    echo "== Kamailio 6.0 from Debian 13's source: build it, the module against it, the Kamailio suites"
    t0=$(date +%s)
    (
        eval "$(bash scripts/build-kamailio-6.0.sh --env)"
        export CARGO_TARGET_DIR=$PWD/target/kamailio-6.0
        export APIBAN_MODULE=$CARGO_TARGET_DIR/release/libapiban.so
        cargo build --release --locked
        t1=$(date +%s)
        cd tests
        "$PYTHON" -m unittest -v test_kamailio test_faults test_restart test_operator_errors test_kamailio_operator
        echo "== Kamailio 6.0: server and module built in $((t1 - t0)) s, suites ran in $(($(date +%s) - t1)) s"
    )
fi
echo "== benchmarks once at tiny sizes, to keep them working (bash scripts/bench.sh for the figures)"
bash scripts/bench.sh --tiny
