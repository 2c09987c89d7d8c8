# Sourced by scripts/setup-debian.sh and scripts/build-kamailio-6.0.sh: Debian's kamailio source
# package, fetched, unpacked and configured exactly as its own debian/rules configures it, so that
# build.rs reads the defines the packaged binary was compiled with. Needs root and a deb-src line
# that offers the wanted version.

# debian_source_fetch SPEC DEST: `apt-get source SPEC` (kamailio=5.6.3-2, kamailio/trixie, ...)
# unpacked at DEST, replacing what is there; DEST/.apiban-debian-version holds the version.
#
# The registry this machine reaches does not serve upstream signatures (.orig.tar.gz.asc: 404),
# which makes `apt-get source` give up before unpacking. apt has checked every file it did fetch
# against the signed Sources index, and dpkg-source checks them against the .dsc: so fetch, drop an
# unavailable signature from the .dsc, and unpack.
debian_source_fetch() {
    local spec=$1 dest=$2 work dsc f
    work=$(mktemp -d "$(dirname "$dest")/.kamailio-src.XXXXXX")
    (cd "$work" && apt-get source -qq --download-only "$spec" >/dev/null 2>&1) || true
    dsc=$(cd "$work" && ls -- *.dsc 2>/dev/null | head -n1)
    if [[ -z $dsc ]]; then
        rm -rf "$work"
        echo "apt-get source $spec fetched no .dsc: is there a deb-src line that offers it?" >&2
        return 1
    fi
    for f in $(awk '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s&&NF==3{print $3}' "$work/$dsc"); do
        [[ -f $work/$f ]] && continue
        if [[ $f != *.asc ]]; then
            rm -rf "$work"
            echo "apt-get source $spec did not fetch $f" >&2
            return 1
        fi
        echo "$f is not served here; unpacking without it (the tarball was checked against the signed index)" >&2
        sed -i "/ ${f//./\\.}\$/d" "$work/$dsc"
    done
    (cd "$work" && dpkg-source --no-check -x "$dsc" src >/dev/null) || { rm -rf "$work"; return 1; }
    rm -rf "$dest"
    mv "$work/src" "$dest"
    dpkg-parsechangelog -l "$dest/debian/changelog" -S Version > "$dest/.apiban-debian-version"
    rm -rf "$work"
}

# debian_source_configure DEST: the tree's own debian/rules, target configure-stamp: `make cfg` with
# Debian's prefix, flavour, module groups, DEB_BUILD_MAINT_OPTIONS=hardening=+all and the
# dpkg-buildflags CPPFLAGS/CFLAGS/LDFLAGS plus -DVERSION_NODATE. In a clean environment: CFLAGS or
# CC from the caller (cargo sets some) would change the flags.
debian_source_configure() {
    local dest=$1
    rm -f "$dest/configure-stamp"
    (cd "$dest" && env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 make -s -f debian/rules configure-stamp >/dev/null)
    if [[ ! -f $dest/src/config.mak ]]; then
        echo "debian/rules configure-stamp wrote no $dest/src/config.mak" >&2
        return 1
    fi
}
