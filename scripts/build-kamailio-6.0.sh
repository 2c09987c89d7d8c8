#!/usr/bin/env bash
# Builds Kamailio 6.0 from Debian 13's (trixie's) source package on this Debian 12 machine (as root),
# so that every CI run tests the module against the Kamailio most operators run, beside Debian 12's 5.6:
#
#   - a deb-src line for trixie in a sources file of its own (source only: no trixie binary package
#     can be installed or preferred through it, so the machine stays a Debian 12 machine);
#   - `apt-get source kamailio/trixie`, unpacked at $KAMAILIO60_SRC (outside the repository);
#   - configured by Debian 13's own debian/rules (its configure-stamp target, which runs `make cfg`
#     with Debian's prefix, flavour, groups and dpkg-buildflags), so src/config.mak holds the defines
#     Debian 13's binary package is compiled with and build.rs can build the module against the tree;
#   - only the core, kamcmd and the modules the tests load (sl pv xlog ctl kex tm xhttp xhttp_prom,
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

KAMAILIO60_SRC=${KAMAILIO60_SRC:-/usr/local/src/kamailio-6.0}
KAMAILIO60_ROOT=${KAMAILIO60_ROOT:-/usr/local/kamailio-6.0}
SUITE=trixie
MODULES=(sl pv xlog ctl kex tm xhttp xhttp_prom app_lua)
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
    say "ok: $v ($(cut -d' ' -f1 "$STAMP") from Debian $SUITE), tree at $KAMAILIO60_SRC, installed under $KAMAILIO60_ROOT"
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

# 3. The source package. The registry this machine reaches does not serve the upstream signature
# (kamailio_6.0.1.orig.tar.gz.asc: 404), which makes `apt-get source` give up before unpacking.
# apt has checked every file it did fetch against the signed Sources index; dpkg-source then checks
# them against the .dsc. So: fetch, drop the unavailable signature from the .dsc, unpack.
parent=$(dirname "$KAMAILIO60_SRC")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.kamailio-6.0.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -qq --download-only "kamailio/$SUITE" >/dev/null 2>&1) || true
[[ -f $work/$dsc ]] || die "apt-get source kamailio/$SUITE fetched no $dsc"
for f in $(awk '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s&&NF==3{print $3}' "$work/$dsc"); do
    if [[ ! -f $work/$f ]]; then
        [[ $f == *.asc ]] || die "apt-get source kamailio/$SUITE did not fetch $f"
        say "$f is not served here; unpacking without it (the tarball was checked against the signed index)"
        sed -i "/ ${f//./\\.}\$/d" "$work/$dsc"
    fi
done
(cd "$work" && dpkg-source --no-check -x "$dsc" src >/dev/null)
rm -rf "$KAMAILIO60_SRC"
mv "$work/src" "$KAMAILIO60_SRC"
echo "$version" > "$KAMAILIO60_SRC/.apiban-debian-version"

# 4. Configure as Debian 13 does: its own debian/rules, target configure-stamp (`make cfg ...` with
# DEB_BUILD_MAINT_OPTIONS=hardening=+all, Debian's CPPFLAGS/CFLAGS/LDFLAGS and -DVERSION_NODATE).
# A clean environment: CFLAGS or CC from the caller (cargo sets some) would change the flags.
clean_env=(env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8)
(cd "$KAMAILIO60_SRC" && "${clean_env[@]}" make -s -f debian/rules configure-stamp >/dev/null)
[[ -f $KAMAILIO60_SRC/src/config.mak ]] || die "debian/rules configure-stamp wrote no src/config.mak"

# 5. Build the core, kamcmd and the modules, then install them under the root. compile_for_install
# makes the binary's built-in module path the installed one, as Debian's `make install` does.
mods=$(printf 'modules/%s ' "${MODULES[@]}")
jobs=$(nproc)
(
    cd "$KAMAILIO60_SRC/src"
    "${clean_env[@]}" make -s -j"$jobs" kamailio compile_for_install=yes quiet=silent >/dev/null
    "${clean_env[@]}" make -s -j"$jobs" every-module modules="$mods" compile_for_install=yes quiet=silent >/dev/null
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
