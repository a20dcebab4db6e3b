#!/usr/bin/env bash
# radosgw.sh ROOT DATA PORT: run Ceph's radosgw standalone (no cluster: the dbstore
# backend with the posix filter) from the Debian sid root ROOT (radosgw-root.sh), on
# 127.0.0.1:PORT, keeping its data in DATA, with one S3 user:
#   access key cstor-fs-test, secret key cstor-fs-test-secret.
# Buckets answer path-style (127.0.0.1:PORT/BUCKET/KEY) and virtual-host style
# (BUCKET.localhost:PORT/KEY: `rgw dns name = localhost`).
#
# Runs in a private mount namespace: ROOT is used read-only (DATA, a config and
# tmpfs over /run, /tmp and /var/log are mounted over it), and every mount vanishes
# when radosgw exits. radosgw's log goes to DATA/radosgw.log. Stop it with SIGTERM.
set -euo pipefail
die() { echo "radosgw.sh: $*" >&2; exit 1; }
[ $# = 3 ] || die "usage: $0 ROOT DATA PORT"
[ "$(id -u)" = 0 ] || die "must run as root"
ROOT=$1 DATA=$2 PORT=$3
if [ -z "${CSTOR_RGW_INNER:-}" ]; then
  [ -x "$ROOT/usr/bin/radosgw" ] || die "$ROOT has no radosgw (build it with radosgw-root.sh)"
  mkdir -p "$DATA"
  exec env CSTOR_RGW_INNER=1 unshare --mount --propagation private "$0" "$@"
fi
mkdir -p "$DATA/rgw/posix" "$DATA/rgw/db" "$DATA/etc"
cat >"$DATA/etc/ceph.conf" <<CONF
[global]
fsid = 00000000-0000-0000-0000-000000000016
auth cluster required = none
auth service required = none
auth client required = none
log to stderr = false
err to stderr = true
log file = /var/lib/rgw/radosgw.log
[client]
rgw backend store = dbstore
rgw config store = dbstore
dbstore config uri = file:/var/lib/rgw/rgw/db/config.db
rgw filter = posix
rgw posix base path = /var/lib/rgw/rgw/posix
rgw posix database root = /var/lib/rgw/rgw/db
dbstore db dir = /var/lib/rgw/rgw/db
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw dns name = localhost
rgw enable usage log = false
rgw run sync thread = false
CONF
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
for d in run tmp var/log; do mount -t tmpfs "cstor-rgw-$d" "$ROOT/$d"; done
mkdir -p "$ROOT/run/ceph"
mount -t tmpfs cstor-rgw-etc "$ROOT/etc/ceph"
cp "$DATA/etc/ceph.conf" "$ROOT/etc/ceph/ceph.conf"
mkdir -p "$ROOT/var/lib/rgw" 2>/dev/null || true
mount --bind "$DATA" "$ROOT/var/lib/rgw"
C=(chroot "$ROOT")
"${C[@]}" radosgw-admin --no-mon-config -n client.rgw user info --uid cstor-fs-test >/dev/null 2>&1 ||
  "${C[@]}" radosgw-admin --no-mon-config -n client.rgw user create --uid cstor-fs-test \
    --display-name cstor-fs-test --access-key cstor-fs-test --secret-key cstor-fs-test-secret >"$DATA/user.json"
exec "${C[@]}" radosgw -f --no-mon-config -n client.rgw
