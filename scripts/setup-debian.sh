#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to build and test the apiban module:
#   - Debian's Kamailio 5.6 and the modules the tests and the script comparison load;
#   - sipp, clang/libclang for bindgen;
#   - openssl (the TLS tests make their own CA), tinyproxy (the proxy tests start their own),
#     ca-certificates (the system trust store the module reads);
#   - redis-server and redis-sentinel for the fleet tests (started by the tests on their own ports);
#   - Kamailio's source package, unpacked at $KAMAILIO_SRC and configured exactly as
#     debian/rules configures it, so build.rs can read the binary's own defines.
# Idempotent: a second run only checks.
set -euo pipefail

KAMAILIO_SRC=${KAMAILIO_SRC:-/usr/local/src/kamailio}
export DEBIAN_FRONTEND=noninteractive

need_pkgs=(kamailio kamailio-utils-modules kamailio-extra-modules kamailio-lua-modules kamailio-python3-modules
           sip-tester libclang-dev clang dpkg-dev make gcc curl python3 python3-pip procps m4 valgrind
           ca-certificates openssl tinyproxy)
# libfaketime: a test steps the server's wall clock back under it (tests/test_feed_edges.py).
need_pkgs+=(faketime)
# Fleet mode (tests/test_fleet.py): the tests start their own Redis and Sentinel instances.
need_pkgs+=(redis-server redis-sentinel redis-tools)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# apt-get source needs a deb-src line for bookworm main.
if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "setup: adding a deb-src line for bookworm main"
    echo 'deb-src http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list.d/apiban-deb-src.list
    updated=
else
    updated=yes
fi

if ((${#missing[@]})) || [[ -z $updated ]] || [[ ! -f $KAMAILIO_SRC/src/config.mak ]]; then
    apt-get update -qq
fi
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
<<<<<<< HEAD
# Debian starts the packaged kamailio and tinyproxy services on install; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then
    for unit in kamailio tinyproxy; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
=======
# Debian starts the packaged kamailio and redis services on install; the tests run their own
# instances (own port, own directory, own config), never the system's.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now kamailio redis-server redis-sentinel >/dev/null 2>&1 || true
>>>>>>> 6047b1c (setup: redis-server, redis-sentinel and redis-tools for the fleet tests)
fi

# The source of exactly the installed binary.
kver=$(dpkg-query -W -f='${Version}' kamailio)
if [[ ! -f $KAMAILIO_SRC/.apiban-debian-version ]] || [[ $(cat "$KAMAILIO_SRC/.apiban-debian-version") != "$kver" ]]; then
    echo "setup: fetching Debian's kamailio $kver source into $KAMAILIO_SRC"
    parent=$(dirname "$KAMAILIO_SRC")
    work=$(mktemp -d "$parent/.kamailio-src.XXXXXX")
    (cd "$work" && apt-get source -qq "kamailio=$kver" >/dev/null)
    dir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kamailio-*' | head -n1)
    [[ -n $dir ]] || { echo "setup: apt-get source kamailio produced no tree" >&2; exit 1; }
    rm -rf "$KAMAILIO_SRC"
    mv "$dir" "$KAMAILIO_SRC"
    rm -rf "$work"
    echo "$kver" > "$KAMAILIO_SRC/.apiban-debian-version"
fi

# Configure as debian/rules does (its override_dh_auto_build runs `make cfg` with these options),
# so src/config.mak holds the C_DEFS the packaged binary was compiled with.
if [[ ! -f $KAMAILIO_SRC/src/config.mak ]]; then
    echo "setup: configuring $KAMAILIO_SRC as debian/rules does"
    cppflags=$(dpkg-buildflags --get CPPFLAGS)
    cflags=$(dpkg-buildflags --get CFLAGS)
    (cd "$KAMAILIO_SRC" && env -i PATH="$PATH" HOME="$HOME" make -s cfg prefix=/usr cfg_target=/etc/kamailio/ \
        FLAVOUR=kamailio LIBDIR=lib/x86_64-linux-gnu group_include=kstandard \
        CC_EXTRA_OPTS="$cppflags $cflags -DVERSION_NODATE" >/dev/null)
fi
[[ -f $KAMAILIO_SRC/src/config.mak ]] || { echo "setup: configure did not produce src/config.mak" >&2; exit 1; }

# Rust toolchain: the machine has rustup's cargo; clippy is used by the tests.
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >/dev/null 2>&1 || true
fi
echo "setup: ok (kamailio $kver, source at $KAMAILIO_SRC)"
