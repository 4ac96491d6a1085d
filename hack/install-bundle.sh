#!/bin/sh
# Installs the frozen bundle so that an upgrade is atomic for a plugin started at any moment:
#   LIBDIR/VERSION/           the bundle, copied under a temporary name, then renamed in place
#   LIBDIR/current -> VERSION the one switch: replaced by rename(2), never absent
#   LIBDIR/previous -> OLD    the version before, kept until the next upgrade (a plugin started
#                             from it a moment ago may still be loading its libraries)
#   each LINK -> LIBDIR/current/isolation   made once (relative), never changed afterwards
# Versions older than `previous` are removed, except one a process still runs from (a slow
# ADD, or the resident agent, loads modules from its bundle lazily): a later upgrade
# removes it once nothing runs from it any more. A LINK that exists and is not a symlink is
# someone else's file: left as it is, and the install fails.
# usage: install-bundle.sh BUNDLE_DIR LIBDIR VERSION LINK...   (paths include any DESTDIR)
set -eu
bundle=$1 libdir=$2 version=$3
shift 3

# Swap a symlink in by rename: `ln -s` to a temporary name, then `mv -T` over the old one.
swap_link() {  # target link
  ln -sfn "$1" "$2.tmp.$$"
  mv -T "$2.tmp.$$" "$2"
}

for link in "$@"; do
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "install: $link exists and is not our link; left as it is" >&2
    exit 1
  fi
done

mkdir -p "$libdir"
if [ ! -d "$libdir/$version" ]; then  # the same build installed again: nothing to copy
  rm -rf "$libdir/.$version.tmp"
  cp -a "$bundle" "$libdir/.$version.tmp"
  mv -T "$libdir/.$version.tmp" "$libdir/$version"
fi

old=$(readlink "$libdir/current" 2>/dev/null || true)
if [ -n "$old" ] && [ "$old" != "$version" ]; then
  swap_link "$old" "$libdir/previous"
fi
swap_link "$version" "$libdir/current"

for link in "$@"; do
  mkdir -p "$(dirname "$link")"
  target=$(realpath -m -s --relative-to="$(dirname "$link")" "$libdir/current/isolation")
  [ "$(readlink "$link" 2>/dev/null || true)" = "$target" ] || swap_link "$target" "$link"
done

# Is a process running from this bundle? (Its /proc/PID/exe is there.)
in_use() {  # bundle directory
  find /proc -mindepth 2 -maxdepth 2 -name exe -lname "$(realpath "$1")/isolation" -print -quit 2>/dev/null |
    grep -q .
}

# The layout before versioned directories: the bundle itself in LIBDIR (no link uses it now).
if [ -d "$libdir/_internal" ] && ! in_use "$libdir"; then
  rm -rf "$libdir/isolation" "$libdir/_internal"
fi

keep_prev=$(readlink "$libdir/previous" 2>/dev/null || true)
for dir in "$libdir"/*/ "$libdir"/.*.tmp/; do
  [ -d "$dir" ] || continue
  name=$(basename "$dir")
  case "$name" in current|previous|"$version"|"$keep_prev") continue ;; esac
  [ -L "$libdir/$name" ] && continue
  in_use "$libdir/$name" && continue
  rm -rf "$libdir/$name"
done
