#!/bin/sh
# Builds isolation_VERSION_amd64.deb from the frozen bundle with dpkg-deb (no debhelper:
# nothing is compiled, the bundle is copied as it is).
#   /usr/lib/isolation/VERSION/            the bundle, in a directory of its own per version:
#                                          dpkg unpacks the new one beside the old, then
#                                          renames each link over the old one (atomic)
#   /usr/lib/cni/isolation, /usr/sbin/isolation   links into it
#   /opt/cni/bin/isolation -> /usr/lib/cni/isolation   made by postinst (never over a file of
#                                          another's), removed by postrm
#   /lib/systemd/system/isolation-agent.service   the agent, not enabled
#   /usr/share/doc/isolation/               copyright, changelog, examples (conf-examples and
#                                          the schema); the man page, lintian's overrides
# usage: build-deb.sh BUNDLE_DIR VERSION OUTPUT_DIR   (DEB_COMPRESS=gzip: faster than the default xz)
set -eu
bundle=$1 version=$2 out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
glibc_floor=$(sed -n 's/^GLIBC_FLOOR = "\([0-9.]*\)".*/\1/p' "$here/tests/e2e/test_glibc_floor.py")
stage=$(mktemp -d "${TMPDIR:-/tmp}/isolation-deb-XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
umask 022

install -d "$root/usr/lib/isolation" "$root/usr/lib/cni" "$root/usr/sbin" \
  "$root/lib/systemd/system" "$root/usr/share/doc/isolation/examples" "$root/usr/share/lintian/overrides" \
  "$root/usr/share/man/man8" "$root/DEBIAN"
cp -a "$bundle" "$root/usr/lib/isolation/$version"
chmod -R u=rwX,go=rX "$root/usr/lib/isolation"
find "$root/usr/lib/isolation" -name '*.so*' -type f -exec chmod 0644 {} +  # loaded, never run
ln -s "../isolation/$version/isolation" "$root/usr/lib/cni/isolation"
ln -s "../lib/isolation/$version/isolation" "$root/usr/sbin/isolation"
install -m 0644 "$here/conf-examples/isolation-agent.service" "$root/lib/systemd/system/"
install -m 0644 "$here"/conf-examples/*.conflist "$here/conf-examples/isolation.schema.json" \
  "$root/usr/share/doc/isolation/examples/"
install -m 0644 "$here/packaging/deb/copyright" "$root/usr/share/doc/isolation/copyright"
install -m 0644 "$here/packaging/deb/lintian-overrides" "$root/usr/share/lintian/overrides/isolation"
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf 'isolation (%s) unstable; urgency=medium\n\n  * Built from the isolation source tree (see its git history).\n\n -- %s  %s\n' \
  "$version" "isolation developers <maintainers@users.noreply.github.com>" "$date" |
  gzip -9n > "$root/usr/share/doc/isolation/changelog.gz"
gzip -9n < "$here/packaging/deb/isolation.8" > "$root/usr/share/man/man8/isolation.8.gz"
install -m 0755 "$here/packaging/deb/postinst" "$here/packaging/deb/prerm" \
  "$here/packaging/deb/postrm" "$root/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" -e "s/@GLIBC@/$glibc_floor/" \
  "$here/packaging/deb/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  > "$root/DEBIAN/md5sums"
mkdir -p "$out"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$root" "$out/isolation_${version}_amd64.deb" >/dev/null
echo "$out/isolation_${version}_amd64.deb"
