#!/usr/bin/env bash
# benches/compress.sh: pull time over a shaped link, uncompressed vs zstd (cold and warm
# cache), as a Markdown section on stdout (or --out FILE).
#
#   sudo benches/compress.sh [--mb SIZE_MB] [--reps N] [--out FILE]
#
# Builds a private store (overlay, under $BENCH_ROOT, default /var/tmp/cstor-cbench) with
# one image, localhost/bench/usr:1: one layer of files picked from /usr (SIZE_MB, default
# 200). Creates two network namespaces joined by a veth pair (10.213.77.1 <-> .2, nothing
# else: all traffic stays inside them), shapes both directions with tbf at 1 Gbit/s and at
# 100 Mbit/s, runs `cstor-fs serve` in one namespace and `skopeo copy` in the other:
#   uncompressed  serve without --compress; pull
#   zstd cold     serve --compress zstd with an empty cache; time until the tag names the
#                 compressed manifest (compression of the layer) + the pull
#   zstd warm     serve restarted on the filled cache; pull
# and the peak RSS (VmHWM) of the mount daemon after compressing.
# Medians of --reps runs (default 3); raw values follow each table. Everything it creates
# (namespaces, servers, mounts, store) is removed on exit.
# Needs root, cargo (or a built target/release/cstor-fs), podman, skopeo, nginx, curl, jq,
# iproute2 (ip, tc; tbf in the kernel). If the kernel has netem, DELAY_MS (default 2) is
# added each way; without it the link has no added delay (the report says which).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
die() { echo "compress-bench: $*" >&2; exit 1; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

MB=200 REPS=3 OUT=
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --mb) MB=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root"
if [ -z "${CSTOR_FIXTURE_ISOLATED:-}" ]; then
  exec "$repo/tests/fixtures/isolate.sh" "$0" "${ARGS[@]}"
fi
for t in podman skopeo nginx curl jq ip tc; do command -v $t >/dev/null || die "$t is missing"; done

ROOT=${BENCH_ROOT:-/var/tmp/cstor-cbench}
BIN=$repo/target/release/cstor-fs
[ -x "$BIN" ] || (cd "$repo" && cargo build --release --locked)
NS_S=csb-srv-$$ NS_C=csb-cli-$$
ADDR=10.213.77.1 PORT=8000
IMG=localhost/bench/usr:1
SERVE_PID=

cleanup() {
  set +e
  [ -n "$SERVE_PID" ] && stop_serve
  ip netns del "$NS_S" 2>/dev/null
  ip netns del "$NS_C" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$ROOT"
}
trap cleanup EXIT

rm -rf "$ROOT"
mkdir -p "$ROOT/conf/home"
chmod 0755 "$ROOT"
cat >"$ROOT/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$ROOT/storage"
runroot = "$ROOT/run"
EOF
printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' >"$ROOT/conf/registries.conf"
printf '[engine]\nevents_logger = "none"\n' >"$ROOT/conf/containers.conf"
export CONTAINERS_STORAGE_CONF=$ROOT/conf/storage.conf CONTAINERS_CONF=$ROOT/conf/containers.conf
export CONTAINERS_REGISTRIES_CONF=$ROOT/conf/registries.conf HOME=$ROOT/conf/home
unset STORAGE_DRIVER STORAGE_OPTS

say "building a ${MB} MB layer from /usr"
find /usr/share /usr/lib -xdev -type f -size -8M -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v max=$((MB << 20)) '{ s += $1; sub(/^[0-9]+ \//, ""); if (s <= max) print }' >"$ROOT/paths.txt"
tar -C / -cf "$ROOT/layer.tar" --files-from="$ROOT/paths.txt" 2>/dev/null || true
podman import --quiet "$ROOT/layer.tar" $IMG >/dev/null
rm -f "$ROOT/layer.tar"
layer_bytes=$(podman image inspect --format '{{.Size}}' $IMG)
files=$(wc -l <"$ROOT/paths.txt")
say "image: $files files, $layer_bytes bytes"

say "network namespaces $NS_S and $NS_C"
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add csb-s$$ netns "$NS_S" type veth peer name csb-c$$ netns "$NS_C"
ip -n "$NS_S" addr add $ADDR/24 dev csb-s$$
ip -n "$NS_C" addr add 10.213.77.2/24 dev csb-c$$
for n in "$NS_S" "$NS_C"; do ip -n "$n" link set lo up; done
ip -n "$NS_S" link set csb-s$$ up
ip -n "$NS_C" link set csb-c$$ up
DELAY_MS=${DELAY_MS:-2}
netem=0
if ip netns exec "$NS_S" tc qdisc add dev csb-s$$ root handle 1: netem delay ${DELAY_MS}ms 2>/dev/null; then
  netem=1
  ip netns exec "$NS_S" tc qdisc del dev csb-s$$ root
fi

shape() { # rate
  local rate=$1
  for pair in "$NS_S csb-s$$" "$NS_C csb-c$$"; do
    set -- $pair "$rate"
    ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
    if [ $netem = 1 ]; then
      ip netns exec "$1" tc qdisc add dev "$2" root handle 1: netem delay ${DELAY_MS}ms
      ip netns exec "$1" tc qdisc add dev "$2" parent 1: handle 2: tbf rate "$3" burst 256kb latency 50ms
    else
      ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$3" burst 256kb latency 50ms
    fi
  done
}

n_serve=0
start_serve() { # extra args
  n_serve=$((n_serve + 1))
  ip netns exec "$NS_S" "$BIN" serve --storage "$ROOT/storage" --listen $ADDR:$PORT \
    --runtime-dir "$ROOT/rt-$n_serve" "$@" >"$ROOT/serve-$n_serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 600); do
    code=$(ip netns exec "$NS_C" curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://$ADDR:$PORT/v2/ || true)
    [ "$code" = 200 ] && return 0
    kill -0 $SERVE_PID 2>/dev/null || die "serve exited: $(tail -5 "$ROOT/serve-$n_serve.log")"
    sleep 0.1
  done
  die "serve did not answer"
}
stop_serve() {
  kill -TERM $SERVE_PID 2>/dev/null
  wait $SERVE_PID 2>/dev/null || true
  SERVE_PID=
}
daemon_hwm_mib() {
  local pid
  pid=$(pgrep -P $SERVE_PID -x cstor-fs | head -1)
  awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$pid/status
}
layer_type() {
  ip netns exec "$NS_C" curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    http://$ADDR:$PORT/v2/localhost/bench/usr/manifests/1 | jq -r '.layers[0].mediaType'
}
now() { date +%s.%N; }
pull() { # -> seconds; the layer bytes on the wire go to $ROOT/pulled-bytes
  local d=$ROOT/pull t0 t1
  rm -rf "$d"
  t0=$(now)
  ip netns exec "$NS_C" skopeo copy --quiet --src-tls-verify=false \
    docker://$ADDR:$PORT/$IMG "dir:$d" >/dev/null
  t1=$(now)
  jq '[.layers[].size] | add' "$d/manifest.json" >"$ROOT/pulled-bytes"
  rm -rf "$d"
  echo "$t1 - $t0" | bc -l
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
fmt() { printf '%.2f' "$1"; }

declare -A R
for rate in 1gbit 100mbit; do
  shape $rate
  say "$rate: uncompressed"
  start_serve
  u=""
  for _ in $(seq "$REPS"); do u="$u $(pull)"; done
  R[$rate.u]=$u R[$rate.u_bytes]=$(cat "$ROOT/pulled-bytes")
  stop_serve
  say "$rate: zstd, cold cache"
  cold="" comp="" hwm=""
  for i in $(seq "$REPS"); do
    t0=$(now)
    start_serve --compress zstd --cache "$ROOT/cache-$rate-$i"
    while [ "$(layer_type)" != application/vnd.oci.image.layer.v1.tar+zstd ]; do sleep 0.05; done
    t1=$(now)
    p=$(pull)
    hwm="$hwm $(daemon_hwm_mib)"
    comp="$comp $(echo "$t1 - $t0" | bc -l)"
    cold="$cold $(echo "$t1 - $t0 + $p" | bc -l)"
    stop_serve
  done
  R[$rate.cold]=$cold R[$rate.comp]=$comp R[$rate.hwm]=$hwm
  say "$rate: zstd, warm cache"
  start_serve --compress zstd --cache "$ROOT/cache-$rate-1"
  while [ "$(layer_type)" != application/vnd.oci.image.layer.v1.tar+zstd ]; do sleep 0.05; done
  w=""
  for _ in $(seq "$REPS"); do w="$w $(pull)"; done
  R[$rate.w]=$w R[$rate.z_bytes]=$(cat "$ROOT/pulled-bytes")
  stop_serve
done

load=$(cut -d' ' -f1 /proc/loadavg)
{
  echo "## Compressed delivery over a shaped link"
  echo
  echo "Generated by \`benches/compress.sh --mb $MB --reps $REPS\` on $(date -u +%Y-%m-%d) at cstor-fs $(git -C "$repo" rev-parse --short HEAD)."
  echo "Machine: $(nproc) CPUs, kernel $(uname -r); 1-minute load at the end: $load (other jobs shared the machine)."
  if [ $netem = 1 ]; then
    echo "Link: a veth pair between two network namespaces, tbf at the rate below and netem ${DELAY_MS} ms each way."
  else
    echo "Link: a veth pair between two network namespaces, tbf at the rate below each way; **no added delay**: this kernel has no netem (CONFIG_NET_SCH_NETEM unset)."
  fi
  echo "Image: one layer of $files files from /usr, $layer_bytes bytes uncompressed (${R[100mbit.u_bytes]} on the wire), ${R[100mbit.z_bytes]} as zstd:3."
  echo "Client: \`skopeo copy docker://… dir:…\` in the other namespace. Medians of $REPS runs, seconds."
  echo
  echo "| link | uncompressed | zstd cold cache (compress + pull) | zstd warm cache | warm vs uncompressed | goal |"
  echo "|---|---|---|---|---|---|"
  for rate in 1gbit 100mbit; do
    mu=$(echo ${R[$rate.u]} | median) mc=$(echo ${R[$rate.cold]} | median) mw=$(echo ${R[$rate.w]} | median)
    ratio=$(echo "$mu / $mw" | bc -l)
    goal=""
    [ $rate = 100mbit ] && goal=">= 2.5x: $(awk -v r="$ratio" 'BEGIN {print (r >= 2.5) ? "met" : "**not met**"}')"
    echo "| $rate | $(fmt "$mu") | $(fmt "$mc") | $(fmt "$mw") | $(fmt "$ratio")x | $goal |"
  done
  echo
  hw=$(echo ${R[1gbit.hwm]} ${R[100mbit.hwm]} | tr ' ' '\n' | sort -g | tail -1)
  echo "Peak RSS (VmHWM) of the mount daemon after compressing the layer and serving it: $hw MiB (max of all cold runs)."
  echo
  for rate in 1gbit 100mbit; do
    echo "Raw $rate: uncompressed${R[$rate.u]}; cold${R[$rate.cold]} (of which waiting for compression${R[$rate.comp]}); warm${R[$rate.w]}; VmHWM${R[$rate.hwm]} MiB."
    echo
  done
} >"${OUT:-/dev/stdout}"
say done
