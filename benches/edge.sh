#!/usr/bin/env bash
# benches/edge.sh: many pullers of one image through an nginx edge cache (nginx/edge.conf)
# in front of a cstor-fs origin (a cstor-fs mount served by nginx/cstor-fs.conf).
#
#   sudo benches/edge.sh [--quick] [--pullers N]
#
# Prints a Markdown section (BENCHMARKS.md "Edge cache" holds one, pasted by hand).
# Needs root, /dev/fuse, cargo, podman, nginx, curl, jq, python3. Loopback only.
#
# One image, localhost/edge/big:1: one layer of files picked from /usr (512 MiB; --quick
# 128 MiB). N pullers (default 32) start at once; each fetches the manifest by tag, then
# the config and the layer, piping every blob through sha256sum and checking it against
# its digest (as a client does). Three rounds, each with a freshly mounted origin:
#   direct     N pullers straight from the origin (no cache)
#   edge-cold  N pullers through the edge with an empty cache
#   edge-warm  the same again, everything cached
# Reported: wall time of the round, aggregate throughput (bytes the pullers received /
# wall time), and how many times the origin served each blob (its access log).
# Everything runs in a private mount namespace (tests/fixtures/isolate.sh) under
# $EDGE_ROOT (default /var/tmp/cstor-edge-bench), removed on exit (KEEP=1 keeps it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
die() { echo "edge-bench: $*" >&2; exit 1; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

QUICK=0 N=32
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --pullers) N=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
if [ -z "${CSTOR_FIXTURE_ISOLATED:-}" ]; then
  exec "$repo/tests/fixtures/isolate.sh" "$0" "${ARGS[@]}"
fi
for t in podman nginx curl jq python3 fusermount3 mountpoint sha256sum; do
  command -v $t >/dev/null || die "missing $t"
done
if [ $QUICK = 1 ]; then BYTES=$((128 << 20)); else BYTES=$((512 << 20)); fi

ROOT=${EDGE_ROOT:-/var/tmp/cstor-edge-bench}
case $ROOT in /|/tmp|/var/tmp|/var/lib/containers*|/run/containers*) die "refusing EDGE_ROOT=$ROOT" ;; esac
if [ -e "$ROOT" ]; then
  [ -e "$ROOT/.cstor-edge-bench" ] || die "$ROOT exists and is not an edge bench directory"
  rm -rf "$ROOT"
fi
mkdir -p "$ROOT" && touch "$ROOT/.cstor-edge-bench"
ROOT=$(cd "$ROOT" && pwd -P)
chmod 755 "$ROOT"
S=$ROOT/s R=$ROOT/r C=$ROOT/conf T=$ROOT/tmp W=$ROOT/w
BIN=$repo/target/release/cstor-fs
PIDS=()
START=$(date +%s)

cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null; done
  awk -v d="$ROOT" 'index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  [ -n "${KEEP:-}" ] || rm -rf "$ROOT"
  [ $rc = 0 ] || echo "edge-bench: FAILED (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop_pid() {
  kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
  local keep=() p; for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}")
}

say "building cstor-fs"
(cd "$repo" && cargo build --release --quiet) || die "cargo build failed"

# --- a private store with one image -----------------------------------------------------
mkdir -p "$C" "$T" "$W"
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$S" "$R" >"$C/storage.conf"
printf '[engine]\nevents_logger = "none"\n' >"$C/containers.conf"
export CONTAINERS_STORAGE_CONF=$C/storage.conf CONTAINERS_CONF=$C/containers.conf HOME=$C TMPDIR=$T
unset STORAGE_DRIVER STORAGE_OPTS
say "building the image ($((BYTES >> 20)) MiB of files from /usr)"
python3 - "$BYTES" "$T/list" <<'EOF'
import os, sys
want, out = int(sys.argv[1]), sys.argv[2]
chosen, total = [], 0
for d, dirs, fs in os.walk("/usr"):
    dirs.sort()
    for f in sorted(fs):
        p = os.path.join(d, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK) and st.st_nlink == 1:
            chosen.append(p); total += st.st_size
        if total >= want:
            break
    if total >= want:
        break
with open(out, "wb") as o:
    for p in chosen:
        o.write(p.lstrip("/").encode("utf-8", "surrogateescape") + b"\0")
EOF
tar -C / --null -T "$T/list" -cf "$T/big.tar"
podman import -q "$T/big.tar" localhost/edge/big:1 >/dev/null
rm -f "$T/big.tar"
find "$S/overlay" -path '*/diff/*' -type f -print0 | xargs -0 cat >/dev/null 2>&1 || true

# --- origin (mount + nginx with an access log) and edge -------------------------------------
MNT=$W/mnt OPORT=$(free_port) EPORT=$(free_port)
mkdir -p "$MNT" "$W/origin" "$W/edge" "$W/cache"
chown nobody:nogroup "$W/cache"
sed 's|access_log off;|access_log access.log;|' "$repo/nginx/nginx.conf" >"$W/origin/nginx.conf"
sed -e "s|@MOUNT@|$MNT|g" -e "s|@LISTEN@|127.0.0.1:$OPORT|" "$repo/nginx/cstor-fs.conf" >"$W/origin/cstor-fs.conf"
cp "$repo/nginx/edge-nginx.conf" "$W/edge/"
sed -e "s|@UPSTREAM@|127.0.0.1:$OPORT|" -e "s|@LISTEN@|127.0.0.1:$EPORT|" -e "s|@CACHE@|$W/cache|" \
  "$repo/nginx/edge.conf" >"$W/edge/edge.conf"
DAEMON="" ONGINX=""
wait_http() { local i; for i in $(seq 1 500); do curl -s -o /dev/null "$1" && return 0; sleep 0.02; done; die "$1 does not answer"; }
origin_up() {
  "$BIN" -f "$S" "$MNT" -o allow_other 2>>"$W/cstor-fs.log" &
  DAEMON=$!; PIDS+=("$DAEMON")
  local i; for i in $(seq 1 500); do mountpoint -q "$MNT" && break; sleep 0.02; done
  mountpoint -q "$MNT" || die "mount did not come up"
  nginx -c "$W/origin/nginx.conf" -p "$W/origin/" -g 'daemon off;' 2>>"$W/origin.err" &
  ONGINX=$!; PIDS+=("$ONGINX")
  wait_http "http://127.0.0.1:$OPORT/v2/"
}
origin_down() {
  stop_pid "$ONGINX"
  fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"
  stop_pid "$DAEMON"
}
nginx -c "$W/edge/edge-nginx.conf" -p "$W/edge/" -g 'daemon off;' 2>>"$W/edge.err" &
PIDS+=($!)

ACCEPT="application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
REPO=localhost/edge/big
# pull BASE OUT: one client; writes "bytes ok|BAD" to OUT
pull() {
  local base=$1 out=$2 m d got bytes=0 n
  m=$(curl -sf -H "Accept: $ACCEPT" "$base/v2/$REPO/manifests/1") || { echo "0 BAD" >"$out"; return; }
  bytes=${#m}
  for d in $(jq -r '.config.digest, .layers[].digest' <<<"$m"); do
    got=$(curl -sf -o - -w '%{stderr}%{size_download}' "$base/v2/$REPO/blobs/$d" 2>"$out.n" | sha256sum | cut -d' ' -f1)
    n=$(cat "$out.n"); n=${n:-0}
    bytes=$((bytes + n))
    [ "sha256:$got" = "$d" ] || { echo "$bytes BAD" >"$out"; return; }
  done
  echo "$bytes ok" >"$out"
}
declare -A WALL MIBS BAD HITS
round() { # NAME BASE
  local name=$1 base=$2 i t0 t1 total=0 bad=0 before
  before=$(wc -l <"$W/origin/access.log" 2>/dev/null || echo 0)
  rm -f "$T"/p.*
  t0=$(date +%s.%N)
  local pids=()
  for i in $(seq 1 "$N"); do pull "$base" "$T/p.$i" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || true; done
  t1=$(date +%s.%N)
  for i in $(seq 1 "$N"); do
    read -r b s <"$T/p.$i"; total=$((total + b)); [ "$s" = ok ] || bad=$((bad + 1))
  done
  WALL[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  MIBS[$name]=$(awk -v t="$total" -v w="${WALL[$name]}" 'BEGIN{printf "%.0f", t/1048576/w}')
  BAD[$name]=$bad
  # origin requests per blob during this round: "digest=count" for config and layer
  HITS[$name]=$(tail -n +$((before + 1)) "$W/origin/access.log" \
    | awk '$7 ~ /\/blobs\/sha256:/ {split($7, a, "sha256:"); n[substr(a[2], 1, 12)]++} END {for (k in n) print k "=" n[k]}' \
    | sort | paste -sd' ')
  say "$name: ${WALL[$name]} s, ${MIBS[$name]} MiB/s aggregate, $bad bad, origin blob requests: ${HITS[$name]:-none}"
}

origin_up
round direct "http://127.0.0.1:$OPORT"
origin_down; origin_up
round edge-cold "http://127.0.0.1:$EPORT"
round edge-warm "http://127.0.0.1:$EPORT"
origin_down

LAYER=$(podman image inspect --format '{{.Size}}' localhost/edge/big:1)
cat <<EOF

## Edge cache: $N concurrent pulls of one image (benches/edge.sh)

Generated by \`sudo benches/edge.sh$([ $QUICK = 1 ] && echo " --quick")$([ "$N" != 32 ] && echo " --pullers $N")\` on $(date -u +%Y-%m-%d) in $(( $(date +%s) - START )) s.
Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, load average $(cut -d' ' -f1 /proc/loadavg) at the end; $(nginx -v 2>&1 | sed 's/.*: //'), cstor-fs $(cd "$repo" && git rev-parse --short HEAD).
Image: one layer of $((BYTES >> 20)) MiB of files from /usr (image size $((LAYER >> 20)) MiB). Each puller: manifest by tag, then config and
layer through \`curl | sha256sum\`, checked against the digest. Every round starts with a freshly mounted origin (no layer index built).

| round | wall (s) | aggregate (MiB/s) | pulls with a wrong digest | origin requests per blob (digest prefix = count) |
|---|---|---|---|---|
| $N pullers straight from the origin | ${WALL[direct]} | ${MIBS[direct]} | ${BAD[direct]} | ${HITS[direct]} |
| $N pullers through the edge, empty cache | ${WALL[edge-cold]} | ${MIBS[edge-cold]} | ${BAD[edge-cold]} | ${HITS[edge-cold]} |
| $N pullers through the edge, cached | ${WALL[edge-warm]} | ${MIBS[edge-warm]} | ${BAD[edge-warm]} | ${HITS[edge-warm]:-none} |
EOF
