#!/usr/bin/env bash
# radosgw-root.sh: print the path of a Debian sid root file system holding radosgw,
# building it once (debootstrap + apt-get inside it) and caching it under
# /var/cache/cstor-fs-ci/ keyed by VERSION below (bump it to rebuild).
#
# Why sid: radosgw 18.2 (trixie) with its dbstore backend returns wrong bytes for Range
# GETs at offsets > 0 and corrupts multipart uploads; radosgw 20.2 (sid) with
# `rgw filter = posix` does neither. The tests run it chrooted (tests/fixtures/radosgw.sh).
#
# apt ignores Valid-Until (a machine whose clock is ahead of the mirror's Release file).
# Everything is done in a private mount namespace: the /proc, /sys, /dev mounts that
# debootstrap and apt-get need vanish when the script ends, on the host nothing stays
# mounted. Needs root, debootstrap and the network to deb.debian.org (Debian packages only).
set -euo pipefail
VERSION=sid-radosgw-1
CACHE=${CSTOR_CI_CACHE:-/var/cache/cstor-fs-ci}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
die() { echo "radosgw-root: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
dir=$CACHE/$VERSION
if [ "${1:-}" = --inner ]; then
  tmp=$2
  set -x
  debootstrap --variant=minbase sid "$tmp" "$MIRROR"
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod +x "$tmp/usr/sbin/policy-rc.d"
  mount -t proc proc "$tmp/proc"
  mount --rbind /dev "$tmp/dev"
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false update -qq
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends radosgw ceph-common
  chroot "$tmp" apt-get clean
  chroot "$tmp" radosgw --version
  exit 0
fi
if [ -e "$dir/.complete" ]; then echo "$dir"; exit 0; fi
command -v debootstrap >/dev/null || die "missing debootstrap (apt-get install debootstrap)"
mkdir -p "$CACHE"
exec 9>"$CACHE/$VERSION.lock"
flock 9
if [ -e "$dir/.complete" ]; then echo "$dir"; exit 0; fi

tmp=$dir.tmp
rm -rf "$tmp"
log=$CACHE/$VERSION.log
echo "radosgw-root: building $dir (debootstrap sid + radosgw; log in $log)" >&2
if ! unshare --mount --propagation private "$0" --inner "$tmp" >"$log" 2>&1; then
  tail -30 "$log" >&2
  die "building the root failed (see $log)"
fi
mv "$tmp" "$dir"
touch "$dir/.complete"
echo "$dir"

