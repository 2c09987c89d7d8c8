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
# and depends on exactly the kamailio version installed here, the one whose source the module was
# built against (build.rs reads $KAMAILIO_SRC, which scripts/setup-debian.sh fetches for that
# version): Kamailio refuses a module built for another version or other flags.
#
# Environment: CARGO_TARGET_DIR (where cargo builds; default target), DEB_OUT_DIR (where the .deb goes;
# default $CARGO_TARGET_DIR/debian), DEB_VERSION (default <crate version>-1+kam<kamailio version>),
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

kver=$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null) || true
[[ -n $kver ]] || die "the kamailio package is not installed: the module is built for, and depends on, the installed kamailio"
KAMAILIO_SRC=${KAMAILIO_SRC:-/usr/local/src/kamailio}
if [[ -f $KAMAILIO_SRC/.apiban-debian-version ]] && [[ $(cat "$KAMAILIO_SRC/.apiban-debian-version") != "$kver" ]]; then
    die "$KAMAILIO_SRC holds kamailio $(cat "$KAMAILIO_SRC/.apiban-debian-version") but $kver is installed: run scripts/setup-debian.sh, then this again"
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

# The module, without its debug info (the dynamic symbols Kamailio looks up stay).
objcopy --strip-debug "$MODULE" "$moddir/apiban.so"
chmod 0644 "$moddir/apiban.so"

install -m 0644 kamailio-cfg/kamailio.cfg "$docdir/examples/kamailio.cfg"
gzip -9n -c README.md > "$docdir/README.md.gz"
chmod 0644 "$docdir/README.md.gz"
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
 A sample configuration is in /usr/share/doc/$PKG/examples/.
EOF

mkdir -p "$DEB_OUT_DIR"
deb=$DEB_OUT_DIR/${PKG}_${DEB_VERSION}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "package-deb: $deb"
echo "package-deb: Depends: kamailio (= $kver), $shlibs"
