#!/usr/bin/env bash
# The README's promise, "both commands work on a fresh Debian 13", checked from a Debian 12 machine (as
# root): a Debian 13 (trixie) chroot made by debootstrap, a clean clone of this checkout's HEAD in it
# (uncommitted changes are not part of the check), the vendored OpenSIPS tarball beside it as on the
# host, the host's rustup toolchain (the README leaves Rust to the user, and rustup's servers may be
# out of reach), then in order, each timed:
#
#   bash scripts/demo.sh;  bash scripts/demo.sh --fleet;  bash scripts/test.sh
#
# The last line sums up: Debian and kamailio versions inside, each command's result and duration.
# The exit status is non-zero when any command failed. Too long for CI (test.sh alone takes ~30 min):
# run it by hand before resolving an issue that touches set-up or tests, and quote that last line.
#
#   bash scripts/debian13-check.sh [DIR]                 the check, on a fresh copy of the chroot
#   bash scripts/debian13-check.sh [DIR] --run 'CMD'     CMD (bash) in the last check's chroot, in its
#       clone brought to HEAD with target/ kept: to iterate on a failure, for example
#       --run 'source scripts/env.sh; cd tests && $PYTHON -m unittest -v test_tls_proxy'
#
# DIR (or APIBAN_TRIXIE_DIR; default /var/tmp/apiban-trixie, outside the repository) holds
#   base/          debootstrap's trixie with apt sources (deb and deb-src: setup-debian.sh fetches
#                  kamailio's source package), upgraded; made once, complete when base/.apiban-complete
#                  exists (remove DIR/base to make it again);
#   root/          the machine a check runs on: a fresh copy of base/ for every check, kept for --run;
#   apt-archives/  the .deb files, kept between checks (the same packages, not downloaded again);
#   logs/          a log of each run (everything printed) and of each command.
# Everything mounted under DIR is unmounted, and every process left in the chroot killed (by PID),
# when this script exits, however it exits.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

dir=${APIBAN_TRIXIE_DIR:-/var/tmp/apiban-trixie}
run_cmd=
while (($#)); do
    case $1 in
        --run) shift; run_cmd="$*"; [[ -n $run_cmd ]] || { echo "--run needs a command" >&2; exit 2; }; break ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) dir=$1 ;;
    esac
    shift
done

say() { echo "== debian13-check: $*"; }
die() { echo "debian13-check: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot and mount need it)"
[[ -x /usr/sbin/debootstrap ]] || die "debootstrap is needed: apt-get install debootstrap"

mkdir -p "$dir"
DIR=$(cd "$dir" && pwd -P)
case $DIR/ in "$(cd "$REPO" && pwd -P)"/*) die "$DIR is inside the repository: choose a directory outside it" ;; esac
[[ $DIR != / ]] || die "not /"
BASE=$DIR/base ROOT=$DIR/root
MIRROR=http://deb.debian.org/debian
CLONE=/work/apiban   # inside the chroot; ../shared/vendor beside it, as scripts/build-opensips.sh expects
VENDOR=$(cd "$REPO/../shared/vendor" 2>/dev/null && pwd -P) || VENDOR=
ENV_IN=(env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM=dumb
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
# (~/.cargo/bin is left off PATH: scripts/env.sh finds cargo there, as the README says.)

# One run at a time: a second one would copy over the chroot the first is using.
exec 9>"$DIR/.lock"
flock -n 9 || die "another run holds $DIR/.lock"

mkdir -p "$DIR/logs" "$DIR/apt-archives"
LOG=$DIR/logs/$(date +%Y%m%d-%H%M%S)${run_cmd:+-run}.log
exec > >(tee -a "$LOG") 2>&1
say "log: $LOG"

# Processes whose root is under DIR: what the commands left running, and debootstrap's own.
chroot_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [[ $r == "$DIR" || $r == "$DIR"/* ]] && echo "${p#/proc/}"
    done
    return 0
}
kill_chroot_procs() {
    local pids i
    pids=$(chroot_pids)
    [[ -n $pids ]] || return 0
    say "processes left in the chroot, killed:"
    # shellcheck disable=SC2086
    ps -o pid=,user=,args= -p "$(echo $pids | tr ' ' ,)" 2>/dev/null | sed 's/^/    /' || true
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 50); do
        pids=$(chroot_pids)
        [[ -n $pids ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
}
# Mount points under DIR, deepest first (a path sorts after its parent, so reversed, before it).
mounts_under() {
    awk -v d="$DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r
}
unmount_all() {
    local m
    for m in $(mounts_under); do
        umount "$m" 2>/dev/null || { sleep 1; umount "$m"; } || { say "umount $m failed: detaching it (umount -l)"; umount -l "$m"; }
    done
    [[ -z $(mounts_under) ]] || { echo "debian13-check: still mounted under $DIR:" $(mounts_under) >&2; return 1; }
}
cleanup() {
    local st=$?
    trap - EXIT INT TERM
    kill_chroot_procs
    unmount_all || st=1
    exit "$st"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A mount that stays out of the host's mount tree: private, so nothing mounted under it (the tmpfs on
# dev/shm) propagates back to the host's /dev.
bind() {  # bind SRC DEST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mount --make-private "$2"
    [[ ${3:-} != ro ]] || mount -o remount,bind,ro "$2"
}
# What a running machine has and the module and tests need: /proc, /sys, /dev with its ptys, its own
# /dev/shm (the module's shared memory), and name resolution for apt, cargo and pip.
enter() {
    local r=$1
    mount -t proc proc "$r/proc"
    mount -t sysfs sysfs "$r/sys"
    bind /dev "$r/dev"
    bind /dev/pts "$r/dev/pts"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"
    bind "$DIR/apt-archives" "$r/var/cache/apt/archives"
    rm -f "$r/etc/resolv.conf" "$r/etc/hosts"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"
    cp -L /etc/hosts "$r/etc/hosts"   # the chroot shares the host's name (and network)
}
in_chroot() {  # in_chroot ROOT CMD: CMD by bash, as root, in a clean login-like environment
    chroot "$1" "${ENV_IN[@]}" /bin/bash -c "$2" </dev/null 9>&-
}
# run_in_chroot CMD LOG: CMD in the clone, its output shown and kept in LOG; its exit status in rc.
# In the background, polled: a signal to this script then stops it at once (bash runs a trap only
# once a command in the foreground has ended), and the trap kills what runs in the chroot.
run_in_chroot() {
    local pipe
    rm -f "$DIR/.rc"
    { in_chroot "$ROOT" "cd $CLONE && $1" && rc=0 || rc=$?; echo "$rc" > "$DIR/.rc.new"; mv "$DIR/.rc.new" "$DIR/.rc"; } 2>&1 | tee "$2" &
    pipe=$!
    while [[ ! -f $DIR/.rc ]] && kill -0 "$pipe" 2>/dev/null; do sleep 1; done
    # What the command left running is a fault of its own (shown), would disturb the next command,
    # and may hold the pipe to tee open.
    kill_chroot_procs
    wait "$pipe" || true
    rc=$(cat "$DIR/.rc" 2>/dev/null) || rc=255
}

# --- the base: debootstrap once --------------------------------------------------------------------
if [[ ! -f $BASE/.apiban-complete ]]; then
    unmount_all
    rm -rf --one-file-system "$BASE" "$DIR/base.tmp"
    say "debootstrap trixie into $BASE (once; minutes)"
    t0=$(date +%s)
    # The default variant (required and important priorities) is what a minimal installed machine
    # has; git because the project is cloned, ca-certificates for HTTPS.
    debootstrap --include=git,ca-certificates trixie "$DIR/base.tmp" "$MIRROR"
    cat > "$DIR/base.tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb deb-src
URIs: $MIRROR
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$DIR/base.tmp/etc/apt/sources.list"
    # No init runs in a chroot: a package's postinst would start its service (kamailio, redis,
    # tinyproxy, prometheus) from its init script, on the host's network, for good. On a real
    # machine systemd starts them and scripts/setup-debian.sh stops them; here none starts.
    printf '#!/bin/sh\nexit 101\n' > "$DIR/base.tmp/usr/sbin/policy-rc.d"
    chmod 755 "$DIR/base.tmp/usr/sbin/policy-rc.d"
    # A fresh machine is installed with the point release's updates and security fixes.
    enter "$DIR/base.tmp"
    in_chroot "$DIR/base.tmp" 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get -y -qq dist-upgrade >/dev/null'
    kill_chroot_procs
    unmount_all
    rm -f "$DIR/base.tmp/etc/resolv.conf" "$DIR/base.tmp/etc/hosts"
    touch "$DIR/base.tmp/.apiban-complete"
    mv "$DIR/base.tmp" "$BASE"
    say "base made in $(($(date +%s) - t0)) s: Debian $(cat "$BASE/etc/debian_version")"
fi

# --- the machine: a fresh copy of the base, the project and the toolchain ---------------------------
[[ -z $(git -C "$REPO" status --porcelain) ]] || say "note: uncommitted changes in $REPO are not part of the check"
unmount_all
if [[ -z $run_cmd ]]; then
    say "a fresh machine: $ROOT from $BASE"
    rm -rf --one-file-system "$ROOT"
    cp -a --reflink=auto "$BASE" "$ROOT"
    mkdir -p "$ROOT$CLONE"
    git -C "$ROOT$CLONE" init -q
elif [[ ! -d $ROOT$CLONE/.git ]]; then
    die "no chroot at $ROOT yet: run the check once without --run"
fi
# HEAD of this checkout (a worktree's own HEAD too), then nothing but what it tracks and ignores:
# --run keeps target/ (ignored) for a quick rebuild.
git -C "$ROOT$CLONE" fetch -q "$REPO" HEAD
git -C "$ROOT$CLONE" checkout -q -f -B check FETCH_HEAD
git -C "$ROOT$CLONE" clean -q -ffd
head=$(git -C "$ROOT$CLONE" log -1 --format=%h)

enter "$ROOT"
# The host may reach crates.io and PyPI through a TLS-inspecting proxy whose CA it trusts locally:
# so does the chroot, or cargo and pip could not download there.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    in_chroot "$ROOT" 'update-ca-certificates >/dev/null 2>&1'
fi
# Rust as the user installed it with rustup: the toolchains read-only, ~/.cargo (the rustup proxies,
# any cargo install) copied, since cargo writes its registry cache there.
[[ -x /root/.cargo/bin/cargo && -d /root/.rustup/toolchains ]] || die "no rustup install at /root/.cargo and /root/.rustup"
rm -rf "$ROOT/root/.cargo"
mkdir -p "$ROOT/root/.cargo"
cp -a /root/.cargo/bin "$ROOT/root/.cargo/"
[[ ! -f /root/.cargo/env ]] || cp -a /root/.cargo/env "$ROOT/root/.cargo/"
bind /root/.rustup "$ROOT/root/.rustup" ro
if [[ -n $VENDOR && -f $VENDOR/opensips-3.6.8.tar.xz ]]; then
    bind "$VENDOR" "$ROOT$(dirname "$CLONE")/shared/vendor" ro
else
    say "note: no ../shared/vendor/opensips-3.6.8.tar.xz beside $REPO: test.sh will skip OpenSIPS"
fi
say "Debian $(cat "$ROOT/etc/debian_version") in $ROOT, $CLONE at $head, $(in_chroot "$ROOT" '~/.cargo/bin/cargo --version')"

if [[ -n $run_cmd ]]; then
    say "--run: $run_cmd"
    t0=$(date +%s)
    run_in_chroot "$run_cmd" /dev/null
    say "--run: exit $rc after $(($(date +%s) - t0)) s"
    exit "$rc"
fi

# --- the README's commands ---------------------------------------------------------------------------
fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
summary=() failed=0
for cmd in "bash scripts/demo.sh" "bash scripts/demo.sh --fleet" "bash scripts/test.sh"; do
    cmdlog=$DIR/logs/$(basename "$LOG" .log)-$(echo "${cmd#bash scripts/}" | tr -c 'a-z0-9\n' -).log
    say "$cmd (output also in $cmdlog)"
    t0=$(date +%s)
    run_in_chroot "$cmd" "$cmdlog"
    dt=$(($(date +%s) - t0))
    say "$cmd: exit $rc after $(fmt "$dt")"
    result="ok, $(fmt "$dt")"
    if ((rc)); then result="FAILED (exit $rc), $(fmt "$dt")" failed=1; fi
    # test.sh's own counts (unittest's "Ran N tests", "OK (skipped=K)"; the last unittest run) and
    # whether OpenSIPS ran.
    if [[ $cmd == *test.sh ]]; then
        ran=$(grep -E '^Ran [0-9]+ tests? in' "$cmdlog" | tail -1 | cut -d' ' -f2) || true
        verdict=$(grep -E '^(OK|FAILED)( \(.*\))?$' "$cmdlog" | tail -1) || true
        [[ -z $ran ]] || result+=", Ran $ran tests: $verdict"
        if grep -q '^== OpenSIPS: SKIPPED' "$cmdlog"; then result+=", OpenSIPS SKIPPED"; fi
    fi
    summary+=("${cmd#bash scripts/}: $result")
done

ver() { in_chroot "$ROOT" "set -o pipefail; $1" 2>/dev/null || echo none; }
say "inside: $(ver 'openssl version | cut -d" " -f1-2'), $(ver 'python3 --version'), $(ver 'redis-server --version | cut -d" " -f1-3')"
debian=$(cat "$ROOT/etc/debian_version")
kam=$(ver "dpkg-query -W -f='\${Version}' kamailio")
last="debian13-check: Debian $debian, kamailio $kam, $head |"
for s in "${summary[@]}"; do last+=" $s |"; done
echo "${last% |}"
exit "$failed"
