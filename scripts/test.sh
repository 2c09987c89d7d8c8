#!/usr/bin/env bash
# Sets up a Debian 12 or 13 machine (as root) and runs every test: unit tests of the Rust core,
# clippy, the end-to-end tests against the real Kamailio of the Debian release and against OpenSIPS
# 3.6 built from source (scripts/build-opensips.sh, from ../shared/vendor/opensips-3.6.8.tar.xz or a
# tree at $OPENSIPS_SRC; skipped only when there is neither, as the last line says), then the
# Kamailio suites again against Debian 13's Kamailio 6.0 built from source
# (scripts/build-kamailio-6.0.sh; on Debian 13 the first pass already is 6.0), and the benchmarks
# once at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

bash scripts/setup-debian.sh
find_python

# OpenSIPS is not packaged by Debian: build it (a second run only checks it). Every OpenSIPS suite
# (tests/test_end_to_end.py for OpenSIPS, tests/test_opensips.py, the OpenSIPS node of
# tests/test_fleet.py) then runs, and fails rather
# than skips (APIBAN_REQUIRE_OPENSIPS). The last line of the run says whether OpenSIPS ran.
opensips_note=
trap 'st=$?; [[ -z $opensips_note ]] || echo "== OpenSIPS: $opensips_note$( ((st)) && echo "; this run FAILED")"' EXIT
echo "== OpenSIPS from source (scripts/build-opensips.sh)"
t0=$(date +%s)
rc=0
opensips_env=$(bash scripts/build-opensips.sh --env) || rc=$?
case $rc in
    0)
        eval "$opensips_env"
        export APIBAN_REQUIRE_OPENSIPS=1
        opensips_note="$("$OPENSIPS_SRC/opensips" -V | sed -n 's/^version: //p'), tree at $OPENSIPS_SRC (built or checked in $(($(date +%s) - t0)) s), every OpenSIPS suite in this run"
        ;;
    2) opensips_note="SKIPPED: no OpenSIPS tree (OPENSIPS_SRC) and no tarball at ../shared/vendor/opensips-3.6.8.tar.xz" ;;
    *) echo "scripts/build-opensips.sh failed ($rc)" >&2; exit "$rc" ;;
esac

echo "== build (release, Kamailio)"
cargo build --release --locked
if [[ -n ${APIBAN_REQUIRE_OPENSIPS:-} ]]; then
    # What tests/test_opensips.py's setUpModule builds (it then finds it done); here, to time it.
    echo "== build (release, OpenSIPS, into target/opensips)"
    t0=$(date +%s)
    CARGO_TARGET_DIR=$PWD/target/opensips cargo build --release --locked --no-default-features --features opensips
    echo "== OpenSIPS flavour of the module built in $(($(date +%s) - t0)) s"
fi
echo "== unit tests of the Rust core (no server)"
cargo test --release --locked
echo "== clippy"
cargo clippy --locked --all-targets -- -D warnings
if [[ -n ${APIBAN_REQUIRE_OPENSIPS:-} ]]; then
    echo "== clippy (OpenSIPS flavour: the code behind feature \"opensips\")"
    CARGO_TARGET_DIR=$PWD/target/opensips cargo clippy --locked --no-default-features --features opensips --all-targets -- -D warnings
fi
echo "== fuzzing, a short bounded run (scripts/fuzz.sh SECONDS for a longer one)"
bash scripts/fuzz.sh 15
# opensips-cli is how an OpenSIPS operator reaches MI; it comes from PyPI (it is not in Debian),
# installed into target/ beside the build so that nothing outside the checkout changes.
if [[ -n ${APIBAN_REQUIRE_OPENSIPS:-} ]]; then
    pylib=target/pylib
    if ! PYTHONPATH=$pylib "$PYTHON" -c 'import opensipscli' 2>/dev/null; then
        echo "== opensips-cli (PyPI) into $pylib"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$pylib" opensipscli
    fi
    export PYTHONPATH="$PWD/$pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== end-to-end tests (real servers, fake APIBAN feed, SIP over loopback)"
# The fleet's life-cycle test draws its faults from a seed: CI replays one known schedule (set
# APIBAN_LIFE_SEED to explore others; the test prints the seed and, on failure, the schedule).
export APIBAN_LIFE_SEED=${APIBAN_LIFE_SEED:-20251207}
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
        # The behaviours of both servers, against this Kamailio only: OpenSIPS ran in the first pass.
        export APIBAN_SERVERS=kamailio
        cargo build --release --locked
        t1=$(date +%s)
        cd tests
        "$PYTHON" -m unittest -v test_end_to_end test_bans test_kamailio test_faults test_restart test_operator_errors test_kamailio_operator
        echo "== Kamailio 6.0: server and module built in $((t1 - t0)) s, suites ran in $(($(date +%s) - t1)) s"
    )
fi
echo "== benchmarks once at tiny sizes, to keep them working (bash scripts/bench.sh for the figures)"
bash scripts/bench.sh --tiny
