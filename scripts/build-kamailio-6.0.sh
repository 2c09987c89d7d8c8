#!/usr/bin/env bash
# Builds Kamailio 6.0 from Debian 13's (trixie's) source package on this Debian 12 machine (as root),
# so that every CI run tests the module against the Kamailio most operators run, beside Debian 12's 5.6:
#
#   - a deb-src line for trixie in a sources file of its own (source only: no trixie binary package
#     can be installed or preferred through it, so the machine stays a Debian 12 machine);
#   - `apt-get source kamailio/trixie`, unpacked at $KAMAILIO60_SRC (outside the repository);
#   - configured by Debian 13's own debian/rules (scripts/debian-source.sh), so src/config.mak holds
#     the defines Debian 13's binary package is compiled with and build.rs can build the module
#     against the tree;
#   - only the core, kamcmd and the modules the tests load (sl pv xlog ctl kex tm xhttp xhttp_prom pike,
#     and app_lua as the KEMI engine), build dependencies from Debian 12;
#   - installed under $KAMAILIO60_ROOT as Debian's package lays it out: usr/sbin/kamailio,
#     usr/sbin/kamcmd, usr/lib/<multiarch>/kamailio/modules/.
#
# Idempotent: when $KAMAILIO60_ROOT holds a build of the same Debian version and module list, a
# second run only checks it (kamailio -V, every module present) and prints the variables to use:
#
#   KAMAILIO_SRC=$KAMAILIO60_SRC KAMAILIO_BIN=$KAMAILIO60_ROOT/usr/sbin/kamailio \
#   KAMCMD_BIN=$KAMAILIO60_ROOT/usr/sbin/kamcmd \
#   KAMAILIO_MODULES_DIR=$KAMAILIO60_ROOT/usr/lib/<multiarch>/kamailio/modules
#
# `eval "$(bash scripts/build-kamailio-6.0.sh --env)"` sets them (the build's own output goes to stderr).
set -euo pipefail
source "$(dirname "$0")/debian-source.sh"

KAMAILIO60_SRC=${KAMAILIO60_SRC:-/usr/local/src/kamailio-6.0}
KAMAILIO60_ROOT=${KAMAILIO60_ROOT:-/usr/local/kamailio-6.0}
SUITE=trixie
MODULES=(sl pv xlog ctl kex tm xhttp xhttp_prom app_lua pike)
# Build dependencies of those modules and of the core, from Debian 12 (debian/control of 6.0.1 asks
# for the same: bison, flex, liblua5.1-0-dev, pkgconf, libreadline-dev for kamcmd).
BUILD_DEPS=(bison flex liblua5.1-0-dev pkg-config libreadline-dev dpkg-dev make gcc)
SOURCES_FILE=/etc/apt/sources.list.d/apiban-trixie-src.sources

print_env=
[[ ${1:-} == --env ]] && print_env=yes
say() { echo "build-kamailio-6.0: $*" >&2; }
die() { say "$*"; exit 1; }

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
BIN=$KAMAILIO60_ROOT/usr/sbin/kamailio
KAMCMD=$KAMAILIO60_ROOT/usr/sbin/kamcmd
MODDIR=$KAMAILIO60_ROOT/usr/lib/$multiarch/kamailio/modules
STAMP=$KAMAILIO60_ROOT/.apiban-build   # "<debian version> <modules...>" of the build installed here

emit_env() {
    [[ -n $print_env ]] || return 0
    printf 'export KAMAILIO_SRC=%q KAMAILIO_BIN=%q KAMCMD_BIN=%q KAMAILIO_MODULES_DIR=%q\n' \
        "$KAMAILIO60_SRC" "$BIN" "$KAMCMD" "$MODDIR"
}

# What is installed works: the binary reports 6.0, each module is there, the tree is configured.
check_installed() {
    local v
    v=$("$BIN" -V 2>/dev/null | sed -n 's/^version: //p') || return 1
    [[ $v == "kamailio 6.0."* ]] || { say "$BIN reports '$v', not 6.0"; return 1; }
    [[ -x $KAMCMD ]] || { say "$KAMCMD missing"; return 1; }
    for m in "${MODULES[@]}"; do
        [[ -f $MODDIR/$m.so ]] || { say "$MODDIR/$m.so missing"; return 1; }
    done
    [[ -f $KAMAILIO60_SRC/src/config.mak ]] || { say "$KAMAILIO60_SRC is not configured"; return 1; }
    say "ok: $v ($(cut -d' ' -f1 "$STAMP") from Debian $SUITE), tree at $KAMAILIO60_SRC," \
        "installed under $KAMAILIO60_ROOT"
}

[[ $(id -u) == 0 ]] || die "run as root: it adds an apt source, installs build dependencies and writes under /usr/local"
export DEBIAN_FRONTEND=noninteractive

# 1. trixie's sources, and no trixie binaries.
if [[ ! -f $SOURCES_FILE ]]; then
    say "adding $SOURCES_FILE (deb-src only)"
    cat > "$SOURCES_FILE" <<EOF
# apiban: Debian 13's source packages, for scripts/build-kamailio-6.0.sh. Source only (no "deb"
# line), so nothing from $SUITE can be installed as a binary package through it.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
fi

# The Debian version apt would fetch; the index may be missing after a cleaned apt cache.
dsc_uri() { apt-get source --print-uris -qq "kamailio/$SUITE" 2>/dev/null | grep -o "'[^']*\.dsc'" | tr -d "'"; }
uri=$(dsc_uri) || true
if [[ -z $uri ]]; then
    apt-get update -qq
    uri=$(dsc_uri) || die "apt-get source finds no kamailio in $SUITE (is $SOURCES_FILE read?)"
fi
dsc=$(basename "$uri")
dsc=${dsc//%2b/+}   # the URI escapes the '+' of "+deb13u1"; the file name does not
version=${dsc#kamailio_}
version=${version%.dsc}
want="$version ${MODULES[*]}"

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] && check_installed; then
    emit_env
    exit 0
fi

start=$(date +%s)
say "building kamailio $version from Debian $SUITE (${MODULES[*]})"

# 2. Build dependencies, from Debian 12.
missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. The source package, unpacked, and 4. configured by Debian 13's own debian/rules.
mkdir -p "$(dirname "$KAMAILIO60_SRC")"
debian_source_fetch "kamailio/$SUITE" "$KAMAILIO60_SRC" || die "cannot fetch kamailio/$SUITE"
[[ $(cat "$KAMAILIO60_SRC/.apiban-debian-version") == "$version" ]] || die "apt-get source gave another version"
debian_source_configure "$KAMAILIO60_SRC" || die "cannot configure $KAMAILIO60_SRC"

# 5. Build the core, the modules and kamcmd, then install them under the root. The core and the
# modules in one make, as Debian's `make all` builds them, so that both cores stay busy.
# compile_for_install makes the binary's built-in module path the installed one, as Debian's
# `make install` does.
clean_env=(env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8)
mods=$(printf 'modules/%s ' "${MODULES[@]}")
(
    cd "$KAMAILIO60_SRC/src"
    "${clean_env[@]}" make -s -j"$(nproc)" kamailio every-module modules="$mods" compile_for_install=yes \
        quiet=silent >/dev/null
    "${clean_env[@]}" make -s -C ../utils/kamcmd quiet=silent >/dev/null
)
rm -rf "$KAMAILIO60_ROOT"
(
    cd "$KAMAILIO60_SRC/src"
    "${clean_env[@]}" make -s install-bin install-every-module modules="$mods" compile_for_install=yes \
        BASEDIR="$KAMAILIO60_ROOT" LIBDIR="lib/$multiarch" quiet=silent >/dev/null
)
install -m 0755 "$KAMAILIO60_SRC/utils/kamcmd/kamcmd" "$KAMCMD"
echo "$want" > "$STAMP"
check_installed || die "the build installed under $KAMAILIO60_ROOT does not work"
say "built in $(( $(date +%s) - start )) s"
emit_env
