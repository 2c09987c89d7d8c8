#!/usr/bin/env bash
# Builds OpenSIPS 3.6 from source (as root) so that every CI run tests the OpenSIPS flavour of the
# module. OpenSIPS is not packaged by Debian and the test machines reach only the package registries,
# so its source is kept beside the project, at ../shared/vendor/opensips-3.6.8.tar.xz (see its
# README.md: upstream tag 3.6.8, sha256 below):
#
#   - the tarball's sha256 is checked, then it is unpacked at $OPENSIPS_SRC (outside the repository,
#     default /usr/local/src/opensips-3.6.8);
#   - only the core (proto_udp is part of it) and the modules the tests load (sl signaling mi_fifo
#     pike) are built, with make -j2, the build dependencies from Debian (bison, flex; OpenSSL's
#     headers and pkgconf, which the core's ssl_tweaks.h and Makefile.defs use; ncurses for the
#     osipsconfig that `make install-bin` builds);
#   - installed under $OPENSIPS_ROOT (default /usr/local/opensips-3.6): sbin/opensips,
#     lib64/opensips/modules/, etc/opensips/. The prefix is written into the tree's Makefile.conf,
#     so the tree, the installed binary and a module built against the tree agree on every define.
#
# The tests and build.rs use the tree itself: $OPENSIPS_SRC/opensips and its modules/*/*.so.
#
# Another source: `bash scripts/build-opensips.sh [--env] /path/to/opensips-X.Y.Z.tar.xz` (or
# OPENSIPS_TARBALL=...) unpacks and builds that tarball instead (its sha256 is printed, checked only
# when OPENSIPS_SHA256 is given); `... /path/to/tree` (or OPENSIPS_SRC=... pointing at an existing
# tree) builds the core and those modules in that tree where they are missing, and installs nothing.
#
# Idempotent: when $OPENSIPS_ROOT holds a build of the same source and module list, a second run
# only checks it (opensips -V of the tree and of the installed binary, every module present).
# `eval "$(bash scripts/build-opensips.sh --env)"` sets OPENSIPS_SRC (the build's own output goes to
# stderr). With neither a tree nor a tarball it says so and exits with status 2: nothing to test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

VENDOR_TARBALL=$ROOT/../shared/vendor/opensips-3.6.8.tar.xz
VENDOR_SHA256=848c1f413ce805a42dcb0e00123463a2402bc1ab9d639aa01e3e91b3e68851ed
VENDOR_COMMIT=f9f85260e5def73e3f854f5e22d148d2d977e85f   # upstream tag 3.6.8
OPENSIPS_ROOT=${OPENSIPS_ROOT:-/usr/local/opensips-3.6}
# Every module the tests and opensips-cfg/opensips.cfg load (proto_udp is built into the core; pike
# only with -DWITH_ANTIFLOOD).
MODULES=(sl signaling mi_fifo pike)
BUILD_DEPS=(bison flex make gcc m4 libncurses-dev libssl-dev pkgconf)

print_env=
source_arg=
for a in "$@"; do
    case $a in
        --env) print_env=yes ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) source_arg=$a ;;
    esac
done
say() { echo "build-opensips: $*" >&2; }
die() { say "$*"; exit 1; }

# What to build: a tree, a tarball, or the project's vendored tarball.
tree= tarball= sha=
if [[ -n $source_arg ]]; then
    if [[ -d $source_arg ]]; then tree=$source_arg
    elif [[ -f $source_arg ]]; then tarball=$source_arg
    else die "no tree or tarball at $source_arg"; fi
elif [[ -n ${OPENSIPS_TARBALL:-} ]]; then
    [[ -f $OPENSIPS_TARBALL ]] || die "OPENSIPS_TARBALL=$OPENSIPS_TARBALL: no such file"
    tarball=$OPENSIPS_TARBALL
elif [[ -n ${OPENSIPS_SRC:-} && -f ${OPENSIPS_SRC}/.apiban-source && -f $VENDOR_TARBALL ]]; then
    tarball=$VENDOR_TARBALL   # the tree this script unpacked (an earlier --env): check or rebuild it
elif [[ -n ${OPENSIPS_SRC:-} && -d ${OPENSIPS_SRC} ]]; then
    tree=$OPENSIPS_SRC
elif [[ -f $VENDOR_TARBALL ]]; then
    tarball=$VENDOR_TARBALL
elif [[ -x /usr/local/src/opensips/opensips ]]; then
    tree=/usr/local/src/opensips
else
    say "SKIPPED: no OpenSIPS tree (OPENSIPS_SRC) and no tarball at $VENDOR_TARBALL"
    exit 2
fi
if [[ -n $tarball ]]; then
    tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
    if [[ $tarball == "$(cd "$(dirname "$VENDOR_TARBALL")" 2>/dev/null && pwd)/$(basename "$VENDOR_TARBALL")" ]]; then
        OPENSIPS_SHA256=${OPENSIPS_SHA256:-$VENDOR_SHA256}
    fi
    top=$(tar -tf "$tarball" 2>/dev/null | head -1) || true
    top=${top%%/*}
    [[ $top == opensips-* ]] || die "$tarball does not hold an opensips-*/ tree"
    OPENSIPS_SRC=${OPENSIPS_SRC:-/usr/local/src/$top}
else
    OPENSIPS_SRC=$(cd "$tree" && pwd)
fi

emit_env() {
    [[ -n $print_env ]] || return 0
    printf 'export OPENSIPS_SRC=%q\n' "$OPENSIPS_SRC"
}

# The tree works: its binary reports 3.x, each module is built; with an install, that too.
check_tree() {
    local v
    v=$("$OPENSIPS_SRC/opensips" -V 2>/dev/null | sed -n 's/^version: //p') || return 1
    [[ $v == "opensips 3."* || $v == "opensips 4."* ]] || { say "$OPENSIPS_SRC/opensips reports '$v'"; return 1; }
    [[ -f $OPENSIPS_SRC/sr_module.h ]] || { say "$OPENSIPS_SRC is not a source tree"; return 1; }
    for m in "${MODULES[@]}"; do
        [[ -f $OPENSIPS_SRC/modules/$m/$m.so ]] || { say "$OPENSIPS_SRC/modules/$m/$m.so missing"; return 1; }
    done
    tree_version=$v
}
check_installed() {
    check_tree || return 1
    local v moddir
    v=$("$OPENSIPS_ROOT/sbin/opensips" -V 2>/dev/null | sed -n 's/^version: //p') || { say "no $OPENSIPS_ROOT/sbin/opensips"; return 1; }
    [[ $v == "$tree_version" ]] || { say "$OPENSIPS_ROOT/sbin/opensips reports '$v', the tree '$tree_version'"; return 1; }
    moddir=$(dirname "$(find "$OPENSIPS_ROOT" -path '*/opensips/modules/sl.so' | head -1)")
    for m in "${MODULES[@]}"; do
        [[ -f $moddir/$m.so ]] || { say "$m.so is not installed under $OPENSIPS_ROOT"; return 1; }
    done
    say "ok: $v, tree at $OPENSIPS_SRC, installed under $OPENSIPS_ROOT"
}

clean_env=(env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8)
mods=$(printf 'modules/%s ' "${MODULES[@]}")

need_deps() {
    local missing=() p
    for p in "${BUILD_DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "run as root to install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A user's tree: build what is missing in it, install nothing.
if [[ -n $tree ]]; then
    if check_tree 2>/dev/null; then
        say "ok: $tree_version, tree at $OPENSIPS_SRC (not installed by this script)"
    else
        need_deps
        start=$(date +%s)
        say "building the core and ${MODULES[*]} in $OPENSIPS_SRC"
        "${clean_env[@]}" make -s -C "$OPENSIPS_SRC" -j2 app modules modules="$mods" >/dev/null || die "make failed in $OPENSIPS_SRC"
        check_tree || die "the tree at $OPENSIPS_SRC does not work after make"
        say "built in $(( $(date +%s) - start )) s: $tree_version"
    fi
    emit_env
    exit 0
fi

# A tarball: check it, unpack it, build, install.
[[ $(id -u) == 0 ]] || die "run as root: it installs build dependencies and writes under /usr/local"
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
if [[ -n ${OPENSIPS_SHA256:-} && $actual != "$OPENSIPS_SHA256" ]]; then
    die "$tarball: sha256 $actual, expected $OPENSIPS_SHA256"
fi
STAMP=$OPENSIPS_ROOT/.apiban-build   # "<tarball sha256> <modules...>" of the build installed here
want="$actual ${MODULES[*]}"
if [[ -f $STAMP && $(cat "$STAMP") == "$want" && $(cat "$OPENSIPS_SRC/.apiban-source" 2>/dev/null) == "$actual" ]] \
        && check_installed; then
    emit_env
    exit 0
fi

start=$(date +%s)
say "building $(basename "$tarball") (sha256 $actual) at $OPENSIPS_SRC: the core and ${MODULES[*]}"
need_deps

# Unpack next to the destination, then move into place: a half-unpacked tree never looks real.
# An existing directory is replaced only when this script unpacked it.
if [[ $(cat "$OPENSIPS_SRC/.apiban-source" 2>/dev/null) != "$actual" ]]; then
    if [[ -e $OPENSIPS_SRC && ! -f $OPENSIPS_SRC/.apiban-source ]]; then
        die "$OPENSIPS_SRC exists and was not unpacked by this script: move it away or point OPENSIPS_SRC elsewhere"
    fi
    parent=$(dirname "$OPENSIPS_SRC")
    mkdir -p "$parent"
    tmp=$(mktemp -d "$parent/.opensips-unpack.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    tar -xJf "$tarball" -C "$tmp" || die "cannot unpack $tarball"
    [[ -f $tmp/$top/sr_module.h ]] || die "$tarball does not hold an OpenSIPS tree"
    # The release's revision, as an upstream tarball carries it (git archive leaves it out).
    [[ $actual == "$VENDOR_SHA256" && ! -f $tmp/$top/.gitrevision ]] && echo "$VENDOR_COMMIT" > "$tmp/$top/.gitrevision"
    # The install prefix in the tree's own configuration, so that any later make in the tree (the
    # module's build.rs runs one to read the flags) computes the same defines as this build.
    sed "s#^PREFIX ?= .*#PREFIX ?= $OPENSIPS_ROOT/#" "$tmp/$top/Makefile.conf.template" > "$tmp/$top/Makefile.conf"
    grep -qx "PREFIX ?= $OPENSIPS_ROOT/" "$tmp/$top/Makefile.conf" || die "cannot set PREFIX in Makefile.conf"
    rm -rf "$OPENSIPS_SRC"
    mv "$tmp/$top" "$OPENSIPS_SRC"
    echo "$actual" > "$OPENSIPS_SRC/.apiban-source"
    rm -rf "$tmp"
    trap - EXIT
fi

# Build the core and the modules (one make, both cores busy), then install only them. A failure
# exits 1 (die): make's own status, 2, would tell scripts/test.sh there is nothing to build.
"${clean_env[@]}" make -s -C "$OPENSIPS_SRC" -j2 app modules modules="$mods" >/dev/null || die "make failed in $OPENSIPS_SRC"
t_built=$(date +%s)
rm -rf "$OPENSIPS_ROOT"
"${clean_env[@]}" make -s -C "$OPENSIPS_SRC" install-bin install-modules install-cfg modules="$mods" >/dev/null \
    || die "make install failed in $OPENSIPS_SRC"
echo "$want" > "$STAMP"
check_installed || die "the build installed under $OPENSIPS_ROOT does not work"
say "built in $((t_built - start)) s, installed in $(( $(date +%s) - t_built )) s"
emit_env
