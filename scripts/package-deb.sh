#!/usr/bin/env bash
# Builds a Debian package of the apiban Kamailio module from the release build:
#
#   bash scripts/package-deb.sh            # -> $CARGO_TARGET_DIR/debian/kamailio-apiban-module_<ver>_<arch>.deb
#   dpkg -i target/debian/kamailio-apiban-module_*.deb
#
# The package holds
#   /usr/lib/<multiarch>/kamailio/modules/apiban.so          the module (debug info stripped)
#   /usr/share/doc/kamailio-apiban-module/README.md.gz       the documentation
#   /usr/share/doc/kamailio-apiban-module/examples/kamailio.cfg   the sample config
#   /usr/share/doc/kamailio-apiban-module/copyright, changelog.Debian.gz
# and its maintainer scripts make the state directory /var/lib/kamailio (the sample config's
# snapshot_file is there), owned by the service user kamailio, mode 0750, kept on removal and
# removed on purge with the snapshot.
#
# It depends on exactly the Debian version of kamailio whose source the module was built against
# (the .apiban-debian-version that scripts/setup-debian.sh or scripts/build-kamailio-6.0.sh wrote in
# $KAMAILIO_SRC): 5.6.3-2 on Debian 12, 6.0.1-1+deb13u1 on Debian 13. Kamailio refuses a module built
# for another version or other flags.
#
# Environment: KAMAILIO_SRC (the tree the module is built against; default /usr/local/src/kamailio),
# CARGO_TARGET_DIR (where cargo builds; default target), DEB_OUT_DIR (where the .deb goes; default
# $CARGO_TARGET_DIR/debian), DEB_VERSION (default <crate version>-1+kam<kamailio version>),
# DEB_KAMAILIO_VERSION (the kamailio version to pin, for a tree without the version file),
# DEB_MAINTAINER, NO_BUILD=1 (package the existing build without running cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PKG=kamailio-apiban-module
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$REPO/$TARGET_DIR
DEB_OUT_DIR=${DEB_OUT_DIR:-$TARGET_DIR/debian}
MODULE=$TARGET_DIR/release/libapiban.so

die() { echo "package-deb: $*" >&2; exit 1; }

for tool in dpkg-deb dpkg-query dpkg-shlibdeps objcopy gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/setup-debian.sh (it installs dpkg-dev)"
done

# The kamailio the module is built against: the Debian version of the tree build.rs reads.
export KAMAILIO_SRC=${KAMAILIO_SRC:-/usr/local/src/kamailio}
if [[ -n ${DEB_KAMAILIO_VERSION:-} ]]; then
    kver=$DEB_KAMAILIO_VERSION
elif [[ -f $KAMAILIO_SRC/.apiban-debian-version ]]; then
    kver=$(cat "$KAMAILIO_SRC/.apiban-debian-version")
else
    die "$KAMAILIO_SRC (KAMAILIO_SRC) has no .apiban-debian-version, so the kamailio version to depend on is" \
        "unknown: build against Debian's source (scripts/setup-debian.sh), or set DEB_KAMAILIO_VERSION"
fi
installed=$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null) || true
if [[ $installed != "$kver" ]]; then
    echo "package-deb: note: built against kamailio $kver; this machine has ${installed:-no kamailio package}," \
         "so the package installs on a machine with kamailio $kver only"
fi

if [[ -z ${NO_BUILD:-} ]]; then
    source scripts/env.sh
    echo "package-deb: cargo build --release"
    cargo build --release --locked
fi
[[ -f $MODULE ]] || die "$MODULE not found: build it first (cargo build --release)"

crate_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
[[ -n $crate_version ]] || die "no version in Cargo.toml"
# Debian versions: the kamailio version's '-' becomes '.', so it fits in our own revision.
DEB_VERSION=${DEB_VERSION:-$crate_version-1+kam${kver//-/.}}
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
MAINTAINER=${DEB_MAINTAINER:-apiban maintainers <root@localhost>}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
moddir=$root/usr/lib/$multiarch/kamailio/modules
docdir=$root/usr/share/doc/$PKG
install -d "$moddir" "$docdir/examples" "$root/DEBIAN"

# The state directory is made by postinst, not shipped: dpkg would remove it (with an operator's
# snapshot in it) on removal, and it must belong to the service user, who exists only once kamailio
# is configured (kamailio's postinst creates it; Depends makes dpkg configure kamailio first).
STATE_DIR=/var/lib/kamailio
cat > "$root/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
# The state directory of the apiban module (snapshot_file in the sample config), writable by the
# user Debian's kamailio.service runs the server as. An operator's dpkg-statoverride wins.
if [ "\$1" = configure ]; then
    if ! getent passwd kamailio >/dev/null; then
        echo "$PKG: no user kamailio: create $STATE_DIR writable by the server's user" >&2
        exit 0
    fi
    if [ ! -d $STATE_DIR ]; then
        install -d -o kamailio -g kamailio -m 0750 $STATE_DIR
    elif ! dpkg-statoverride --list $STATE_DIR >/dev/null 2>&1; then
        chown kamailio:kamailio $STATE_DIR
        chmod u+rwx $STATE_DIR
    fi
fi
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
# Removal keeps the snapshot (a reinstall starts warm); purge removes it, and the state directory
# when nothing else is in it.
if [ "\$1" = purge ]; then
    rm -f $STATE_DIR/apiban.snapshot $STATE_DIR/.apiban.snapshot.tmp.*
    rmdir $STATE_DIR 2>/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

# The module, without its debug info (the dynamic symbols Kamailio looks up stay).
objcopy --strip-debug "$MODULE" "$moddir/apiban.so"
chmod 0644 "$moddir/apiban.so"

install -m 0644 kamailio-cfg/kamailio.cfg "$docdir/examples/kamailio.cfg"
gzip -9n -c README.md > "$docdir/README.md.gz"
chmod 0644 "$docdir/README.md.gz"
# The guides the README links to, beside it as in the repository.
install -d -m 0755 "$docdir/docs"
for f in docs/*.md; do
    gzip -9n -c "$f" > "$docdir/docs/$(basename "$f").gz"
    chmod 0644 "$docdir/docs/$(basename "$f").gz"
done
cat > "$docdir/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: apiban
Comment: Kamailio module built against kamailio $kver.

Files: *
License: GPL-2.0-or-later
 On Debian systems the full text of the GNU General Public License version 2 is in
 /usr/share/common-licenses/GPL-2.
EOF
changelog=$stage/changelog.Debian
cat > "$changelog" <<EOF
$PKG ($DEB_VERSION) unstable; urgency=medium

  * Built from the apiban sources against kamailio $kver.

 -- $MAINTAINER  $(date -R)
EOF
gzip -9n -c "$changelog" > "$docdir/changelog.Debian.gz"
chmod 0644 "$docdir/copyright" "$docdir/changelog.Debian.gz"

# Shared-library dependencies of the module (libc6, libgcc-s1), as dpkg-shlibdeps finds them; it
# wants a debian/control beside the files it reads.
mkdir -p "$stage/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PKG" "$PKG" > "$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O "$moddir/apiban.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || die "dpkg-shlibdeps found no dependencies for the module"

size_kb=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: $PKG
Version: $DEB_VERSION
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $size_kb
Depends: kamailio (= $kver), $shlibs
Section: net
Priority: optional
Homepage: https://www.apiban.org
Description: APIBAN ban list for Kamailio, in shared memory
 The apiban module keeps the APIBAN list of known SIP attackers in a shared-memory
 table, refreshed by its own process, and answers the routing script in one native
 call: if (apiban_check()) { sl_send_reply("403", "Forbidden"); exit; }
 .
 Built against kamailio $kver: it loads only into that version.
 A sample configuration is in /usr/share/doc/$PKG/examples/; it keeps the
 snapshot in $STATE_DIR, which the package creates for the user kamailio.
EOF

mkdir -p "$DEB_OUT_DIR"
deb=$DEB_OUT_DIR/${PKG}_${DEB_VERSION}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "package-deb: $deb"
echo "package-deb: Depends: kamailio (= $kver), $shlibs"
