#!/usr/bin/env bash
# Prepares a fresh Debian 12 (bookworm) or Debian 13 (trixie) machine (as root) to build and test the
# apiban module, following the running release (/etc/os-release):
#   - Debian's Kamailio (5.6.3 on Debian 12, 6.0.1 on Debian 13) and the modules the tests and the
#     script comparison load;
#   - sipp, clang/libclang for bindgen;
#   - the source package of exactly the installed kamailio, from the running release's deb-src,
#     unpacked at $KAMAILIO_SRC and configured by its own debian/rules (scripts/debian-source.sh),
#     so build.rs can read the binary's own defines.
#   - openssl (the TLS tests make their own CA), tinyproxy (the proxy tests start their own),
#     ca-certificates (the system trust store the module reads);
#   - redis-server and redis-sentinel for the fleet tests (started by the tests on their own ports);
#   - prometheus, for its promtool (the alerting rules' tests; the server is disabled);
# Idempotent: a second run only checks.
set -euo pipefail
source "$(dirname "$0")/debian-source.sh"

KAMAILIO_SRC=${KAMAILIO_SRC:-/usr/local/src/kamailio}
export DEBIAN_FRONTEND=noninteractive

# shellcheck disable=SC1091
. /etc/os-release
case "${ID:-}:${VERSION_CODENAME:-}" in
    debian:bookworm | debian:trixie) codename=$VERSION_CODENAME ;;
    *) echo "setup: Debian 12 (bookworm) or 13 (trixie) is needed; this is ${PRETTY_NAME:-unknown}" >&2; exit 1 ;;
esac

need_pkgs=(kamailio kamailio-utils-modules kamailio-extra-modules kamailio-lua-modules kamailio-python3-modules
           sip-tester libclang-dev clang dpkg-dev make gcc curl python3 python3-pip procps m4 valgrind
           ca-certificates openssl tinyproxy)
# libfaketime: a test steps the server's wall clock back under it (tests/test_feed_edges.py).
need_pkgs+=(faketime)
# Fleet mode (tests/test_fleet.py): the tests start their own Redis and Sentinel instances.
need_pkgs+=(redis-server redis-sentinel redis-tools)
# promtool (in Debian's prometheus package) checks and unit-tests contrib/prometheus/apiban-rules.yml
# (tests/test_monitoring.py, which reads the rules with python3-yaml); the Prometheus server itself
# is never run.
need_pkgs+=(prometheus python3-yaml)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})) || [[ ! -f $KAMAILIO_SRC/src/config.mak ]]; then
    apt-get update -qq
fi
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged kamailio, tinyproxy, redis and prometheus services on install; the tests
# run their own instances (own port, own directory, own config), never the system's, and prometheus
# is there only for promtool.
if command -v systemctl >/dev/null 2>&1; then
    for unit in kamailio tinyproxy redis-server redis-sentinel prometheus; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
fi

# The source of exactly the installed binary, from the running release: apt-get source needs a
# deb-src line that offers that version (a point release may come from -updates or -security).
kver=$(dpkg-query -W -f='${Version}' kamailio)
if [[ ! -f $KAMAILIO_SRC/.apiban-debian-version ]] || [[ $(cat "$KAMAILIO_SRC/.apiban-debian-version") != "$kver" ]]; then
    if ! apt-cache showsrc kamailio 2>/dev/null | grep -xF "Version: $kver" >/dev/null; then
        echo "setup: adding deb-src lines for $codename"
        cat > /etc/apt/sources.list.d/apiban-deb-src.list <<EOF
deb-src http://deb.debian.org/debian $codename main
deb-src http://deb.debian.org/debian $codename-updates main
deb-src http://deb.debian.org/debian-security $codename-security main
EOF
        apt-get update -qq
    fi
    echo "setup: fetching Debian's kamailio $kver source into $KAMAILIO_SRC"
    mkdir -p "$(dirname "$KAMAILIO_SRC")"
    debian_source_fetch "kamailio=$kver" "$KAMAILIO_SRC"
    rm -f "$KAMAILIO_SRC/src/config.mak"
fi

# Configure as debian/rules does, so src/config.mak holds the C_DEFS the packaged binary was
# compiled with.
if [[ ! -f $KAMAILIO_SRC/src/config.mak ]]; then
    echo "setup: configuring $KAMAILIO_SRC with its debian/rules"
    debian_source_configure "$KAMAILIO_SRC"
fi

# Rust toolchain: the machine has rustup's cargo; clippy is used by the tests.
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >/dev/null 2>&1 || true
fi
echo "setup: ok (Debian $codename, kamailio $kver, source at $KAMAILIO_SRC)"
