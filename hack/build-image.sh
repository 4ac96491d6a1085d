#!/bin/sh
# Builds the DaemonSet's image (deploy/Containerfile) with podman, offline: FROM scratch,
# the bundle, and the system libraries the bundle does not carry (glibc's, found by ldd).
# usage: build-image.sh BUNDLE_DIR TAG
set -eu
bundle=$1 tag=$2
here=$(cd "$(dirname "$0")/.." && pwd)
ctx=$(mktemp -d "${TMPDIR:-/tmp}/isolation-image-XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/lib" "$ctx/lib64"
cp -a "$bundle" "$ctx/isolation"
# Every library an ELF file of the bundle resolves outside the bundle.
find "$bundle" -type f \( -name isolation -o -name '*.so*' \) -exec ldd {} + 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib64\// {print $1}' | sort -u |
  while read -r lib; do
    case "$lib" in
      "$bundle"/*) ;;
      /lib64/*) cp -L "$lib" "$ctx/lib64/" ;;
      *) cp -L "$lib" "$ctx/lib/" ;;
    esac
  done
podman build --quiet --pull=never -f "$here/deploy/Containerfile" -t "$tag" "$ctx"
