#!/usr/bin/env bash
# benches/bench.sh: end-to-end performance of cstor-fs + nginx, against baselines measured
# in the same run, written as a Markdown report to BENCHMARKS.md.
#
#   sudo benches/bench.sh [--quick] [--out FILE]
#
# Needs root, /dev/fuse, cargo, podman, skopeo, nginx, docker-registry, curl, jq, openssl,
# python3 (and perf for the profile; skipped if missing). Loopback only, no network.
#
# What it does (all under $BENCH_ROOT, default /var/tmp/cstor-bench, which must not exist or
# must be a previous run's directory):
#   1. builds a private containers-storage store (overlay) with
#      - localhost/bench/big:1    one layer made of files picked from /usr: every small file
#                                 first, then larger ones, until >= 100k files and >= 1 GB
#                                 (--quick: 20k files, 200 MB)
#      - localhost/bench/small:1  a small image (5k files / 64 MB; --quick 2k / 32 MB)
#      - localhost/bench/files-N:1 synthetic layers of N 512-byte files (index-build scaling)
#   2. measures, each a median of several runs (raw values are in the report):
#      blob download through nginx over cstor-fs (first read after a fresh mount, repeat
#      read) vs nginx serving the same bytes from a plain file with the same config;
#      time to first byte; peak RSS of the mount daemon; extra disk used; end-to-end
#      "image in the store -> pulled by a client" vs docker-registry and vs an OCI export
#      served statically; 1/8/32 concurrent clients; listing and index-build scaling;
#      one `perf record` profile of the daemon during a cold download.
#   3. writes the report (default BENCHMARKS.md in the repository; benches/report.py
#      computes the medians and ratios from the raw values) with the exact command,
#      machine facts and versions.
# No timed assertions: the goals are reported as met or not, the exit status only says
# whether the run itself worked. The store's layer files are in the page cache for every
# measurement (they were just written and are read once beforehand); "first read" means
# cstor-fs has not built the layer's index and the FUSE page cache is empty.
#
# Everything runs in a private mount namespace (tests/fixtures/isolate.sh): podman/skopeo
# get a private configuration, the machine's own store is never touched, and every mount,
# server and store this script creates is removed on exit, also on failure or Ctrl-C.
# Environment: BENCH_ROOT (default /var/tmp/cstor-bench, off /tmp, which test runs and
# tmp cleaners may empty; keep it short, podman refuses long
# runroots), BENCH_PORT (first of 4 ports, default 18500), KEEP=1 keeps BENCH_ROOT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
die() { echo "bench: $*" >&2; exit 1; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

QUICK=0 OUT=$repo/BENCHMARKS.md
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root (sudo $0)"
if [ -z "${CSTOR_FIXTURE_ISOLATED:-}" ]; then
  exec "$repo/tests/fixtures/isolate.sh" "$0" "${ARGS[@]}"
fi
for t in podman skopeo nginx docker-registry curl jq openssl python3 fusermount3 mountpoint; do
  command -v $t >/dev/null || die "missing $t"
done

ROOT=${BENCH_ROOT:-/var/tmp/cstor-bench}
PORT0=${BENCH_PORT:-18500}
case $ROOT in /|/tmp|/var/tmp|/var/lib/containers*|/run/containers*) die "refusing BENCH_ROOT=$ROOT" ;; esac
if [ -e "$ROOT" ]; then
  [ -e "$ROOT/.cstor-bench" ] || die "$ROOT exists and is not a bench directory"
  awk -v d="$ROOT" 'index($5, d "/") == 1 {exit 1}' /proc/self/mountinfo || die "$ROOT has mounts: is a bench running?"
  rm -rf "$ROOT"
fi
mkdir -p "$ROOT" && touch "$ROOT/.cstor-bench"
ROOT=$(cd "$ROOT" && pwd -P)

if [ $QUICK = 1 ]; then
  BIG_FILES=20000 BIG_BYTES=$((200 << 20)) SMALL_FILES=2000 SMALL_BYTES=$((32 << 20))
  SCALE_FILES="1000 10000 50000" NAMES="1 50 200"
  REPS=3 E2E_REPS=1 REG_REPS=1 CONC="1 8 32" REG_FORMATS="gzip"
else
  BIG_FILES=100000 BIG_BYTES=$((1100 << 20)) SMALL_FILES=5000 SMALL_BYTES=$((64 << 20))
  SCALE_FILES="1000 10000 100000" NAMES="1 50 200"
  REPS=5 E2E_REPS=3 REG_REPS=1 CONC="1 8 32" REG_FORMATS="gzip zstd"
fi

S=$ROOT/s R=$ROOT/r C=$ROOT/conf T=$ROOT/tmp W=$ROOT/w
BIN=$repo/target/release/cstor-fs
PIDS=() # servers and mount daemons to stop on exit
RESULTS=$ROOT/results.txt
: >"$RESULTS"
START=$(date +%s)

unmount_all_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "bench: could not unmount $m" >&2
  done
}
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null; done
  unmount_all_under "$ROOT"
  if [ -z "${KEEP:-}" ]; then rm -rf "$ROOT"; fi
  [ $rc = 0 ] || echo "bench: FAILED (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers --------------------------------------------------------------------------
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
# record KEY VALUE: raw values, one per line, for benches/report.py (medians, ratios, the report)
record() { echo "$1 $2" >>"$RESULTS"; }
med() { python3 "$here/report.py" median "$RESULTS" "$1"; } # for progress lines
free_pids() { local p; local keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; free_pids "$1"; }
load() { cut -d' ' -f1 /proc/loadavg; }

q() { local out; if ! out=$("$@" 2>&1); then echo "$out" >&2; die "failed: $*"; fi; }

# --- build (before HOME changes: cargo/rustup read it) ------------------------------------------------------------------------------
say "building cstor-fs (cargo build --release)"
if command -v cargo >/dev/null; then (cd "$repo" && cargo build --release --quiet) || die "cargo build failed"; fi
[ -x "$BIN" ] || die "no $BIN"

# --- private podman configuration (as tests/fixtures/make-store.sh) -----------------
mkdir -p "$C/home/.config/containers" "$C/networks" "$T" "$R/xdg" "$W"
cat >"$C/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "$R/libpod"
[network]
network_config_dir = "$C/networks"
EOF
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$S" "$R" >"$C/storage.conf"
printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' >"$C/registries.conf"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$C/policy.json"
cp "$C/policy.json" "$C/home/.config/containers/policy.json"
echo '{"auths":{}}' >"$C/auth.json"
export CONTAINERS_CONF=$C/containers.conf CONTAINERS_STORAGE_CONF=$C/storage.conf
export CONTAINERS_REGISTRIES_CONF=$C/registries.conf REGISTRIES_CONFIG_PATH=$C/registries.conf
export REGISTRY_AUTH_FILE=$C/auth.json HOME=$C/home XDG_CONFIG_HOME=$C/home/.config
export XDG_RUNTIME_DIR=$R/xdg TMPDIR=$T
unset STORAGE_DRIVER STORAGE_OPTS CONTAINER_HOST DOCKER_HOST
P() { podman --root "$S" --runroot "$R" --storage-driver overlay "$@"; }
# a client store: $1 = short name
PC() { local d=$ROOT/$1; podman --root "$d/s" --runroot "$d/r" --storage-driver overlay "${@:2}"; }
SK=(skopeo --policy "$C/policy.json")

# --- the store ----------------------------------------------------------------------------
# pick.py ROOTDIR FILES BYTES SEED OUT: NUL-separated list (relative to /) of regular files
# under /usr, smallest first until FILES, then random larger ones until BYTES, plus their
# directories; prints "files bytes".
cat >"$T/pick.py" <<'EOF'
import os, random, sys
top, nfiles, nbytes, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
files = []
for d, dirs, fs in os.walk(top):
    dirs.sort()
    for f in sorted(fs):
        p = os.path.join(d, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK) and st.st_nlink == 1:
            files.append((st.st_size, p))
rng = random.Random(seed)
rng.shuffle(files)
small = sorted(files, key=lambda x: x[0])
chosen, total = [], 0
take = set()
for s, p in small:
    if len(chosen) >= nfiles:
        break
    chosen.append(p); take.add(p); total += s
rest = [x for x in files if x[1] not in take]
for s, p in rest:
    if total >= nbytes:
        break
    if s > nbytes // 4:   # no single giant file dominates
        continue
    chosen.append(p); total += s
if len(chosen) < nfiles or total < nbytes:
    sys.exit(f"pick: only {len(chosen)} files / {total} bytes under {top}")
dirs = set()
for p in chosen:
    d = os.path.dirname(p)
    while d not in dirs and d not in ("/", ""):
        dirs.add(d); d = os.path.dirname(d)
with open(out, "wb") as o:
    for p in sorted(dirs) + sorted(chosen):
        o.write(p.lstrip("/").encode("utf-8", "surrogateescape") + b"\0")
print(len(chosen), total)
EOF
# gen.py OUT N: a tar of N 512-byte files in 100 directories
cat >"$T/gen.py" <<'EOF'
import io, random, sys, tarfile
out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(n)
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    for i in range(n):
        data = rng.randbytes(512)
        ti = tarfile.TarInfo(f"data/d{i % 100:03d}/f{i:07d}.bin"); ti.size = len(data); ti.mtime = 1700000000
        t.addfile(ti, io.BytesIO(data))
EOF

import_picked() { # NAME FILES BYTES SEED
  local name=$1 list=$T/$1.list tar=$T/$1.tar nf nb
  read -r nf nb < <(python3 "$T/pick.py" /usr "$2" "$3" "$4" "$list")
  tar -C / --null --no-recursion -T "$list" -cf "$tar"
  q P import --change 'CMD ["/bin/sh"]' "$tar" "localhost/bench/$name:1"
  rm -f "$tar"
  record "files_$name" "$nf"; record "bytes_$name" "$nb"
}
say "building the store in $S (big: >= $BIG_FILES files, >= $((BIG_BYTES >> 20)) MiB)"
t0=$(now)
import_picked big "$BIG_FILES" "$BIG_BYTES" 1
import_picked small "$SMALL_FILES" "$SMALL_BYTES" 2
for n in $SCALE_FILES; do
  python3 "$T/gen.py" "$T/files-$n.tar" "$n"
  q P import "$T/files-$n.tar" "localhost/bench/files-$n:1"
  rm -f "$T/files-$n.tar"
done
say "store built in $(since "$t0") s"
# Page cache: read every layer file once, so that all measurements start from the same state.
find "$S/overlay" -path '*/diff/*' -type f -print0 | xargs -0 cat >/dev/null 2>&1 || true

# --- mounts and servers ----------------------------------------------------------------
MNT=$W/mnt
mkdir -p "$MNT"
chmod 755 "$ROOT" "$W"
DAEMON=""
mount_fs() { # mounts $S on $MNT; sets DAEMON
  # stderr through a pipe: the daemon's own storage writes (/proc/PID/io write_bytes) then
  # exclude its log lines, so the disk figure shows what serving writes.
  "$BIN" -f "$S" "$MNT" -o allow_other 2> >(cat >>"$W/cstor-fs.log") &
  DAEMON=$!
  PIDS+=("$DAEMON")
  local i
  for i in $(seq 1 600); do
    mountpoint -q "$MNT" && [ -e "$MNT/v2/_catalog" ] && return 0
    kill -0 "$DAEMON" 2>/dev/null || die "cstor-fs exited (see $W/cstor-fs.log)"
    sleep 0.01
  done
  die "mount did not come up"
}
umount_fs() {
  fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  [ -n "$DAEMON" ] && stop_pid "$DAEMON"
  DAEMON=""
}
declare -A NGINX=()
start_nginx() { # NAME DOCROOT PORT: nginx with the repository's config around DOCROOT
  local p=$W/nginx-$1
  mkdir -p "$p"
  sed -e "s|@MOUNT@|$2|" -e "s|@LISTEN@|127.0.0.1:$3|" "$repo/nginx/cstor-fs.conf" >"$p/cstor-fs.conf"
  cp "$repo/nginx/nginx.conf" "$p/nginx.conf"
  nginx -c "$p/nginx.conf" -p "$p/" -g 'daemon off;' 2>>"$p/error.log" &
  NGINX[$1]=$!
  PIDS+=("${NGINX[$1]}")
  wait_http "$3"
}
wait_http() { local i; for i in $(seq 1 1000); do curl -sf -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.01; done; die "nothing answers on port $1"; }
stop_nginx() { [ -n "${NGINX[$1]:-}" ] || return 0; stop_pid "${NGINX[$1]}"; unset "NGINX[$1]"; }

P_FS=$PORT0 P_PLAIN=$((PORT0 + 1)) P_REG=$((PORT0 + 2)) P_OCI=$((PORT0 + 3))
mount_fs
blob_of() { jq -r '.layers[0].digest' "$MNT/v2/localhost/bench/$1/manifests/1"; }
BIG=$(blob_of big) SMALL=$(blob_of small)
BIG_SIZE=$(stat -c %s "$MNT/v2/localhost/bench/big/blobs/$BIG")
SMALL_SIZE=$(stat -c %s "$MNT/v2/localhost/bench/small/blobs/$SMALL")
record size_big "$BIG_SIZE"; record size_small "$SMALL_SIZE"
# The plain-file baseline: the same bytes, written once through cstor-fs, in the same layout.
PLAIN=$W/plain
for img in big small; do
  d=$(blob_of $img)
  mkdir -p "$PLAIN/v2/localhost/bench/$img/blobs"
  cp "$MNT/v2/localhost/bench/$img/blobs/$d" "$PLAIN/v2/localhost/bench/$img/blobs/$d"
  got=sha256:$(openssl dgst -sha256 -r "$PLAIN/v2/localhost/bench/$img/blobs/$d" | cut -d' ' -f1)
  [ "$got" = "$d" ] || die "blob of $img hashes to $got, not $d"
  echo "$PLAIN/v2/localhost/bench/$img/tags/list" >/dev/null
  mkdir -p "$PLAIN/v2/localhost/bench/$img/tags" && echo '{}' >"$PLAIN/v2/localhost/bench/$img/tags/list"
done
chmod -R a+rX "$PLAIN"
umount_fs
start_nginx fs "$MNT" "$P_FS"
start_nginx plain "$PLAIN" "$P_PLAIN"
URL_FS=http://127.0.0.1:$P_FS/v2/localhost/bench
URL_PLAIN=http://127.0.0.1:$P_PLAIN/v2/localhost/bench
say "big layer: $(med files_big) files, blob $BIG_SIZE bytes; small: $SMALL_SIZE bytes; load $(load)"

# get URL EXPECTED_SIZE -> "ttfb total" (seconds); dies on a bad status or size
get() {
  local out code size ttfb total
  out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' "$1")
  read -r code size ttfb total <<<"$out"
  [ "$code" = 200 ] && [ "$size" = "$2" ] || die "GET $1: status $code, $size bytes (want $2)"
  echo "$ttfb $total"
}
mbps() { awk -v b="$1" -v t="$2" 'BEGIN{printf "%.1f", b/t/1048576}'; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; } # KiB
wbytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; } # bytes the process caused to be written to storage
cpu_s() { local t=0 p; for p in "$@"; do t=$(awk -v t="$t" '{printf "%.2f", t + ($14 + $15) / 100}' "/proc/$p/stat" 2>/dev/null || echo "$t"); done; echo "$t"; }
nginx_cpu() { cpu_s "${NGINX[$1]}" $(pgrep -P "${NGINX[$1]}"); } # master + workers, user + system seconds
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# --- 1-3: download, TTFB, RSS, disk -------------------------------------------------------
say "1-3: single downloads of the big blob ($REPS runs each)"
cat "$PLAIN/v2/localhost/bench/big/blobs/$BIG" >/dev/null
get "$URL_PLAIN/big/blobs/$BIG" "$BIG_SIZE" >/dev/null # warm up nginx and the page cache
for i in $(seq 1 "$REPS"); do
  record load_1 "$(load)"
  n0=$(nginx_cpu plain)
  r=$(get "$URL_PLAIN/big/blobs/$BIG" "$BIG_SIZE"); read -r ttfb total <<<"$r"
  record plain_cpu_nginx "$(awk -v a="$n0" -v b="$(nginx_cpu plain)" 'BEGIN{printf "%.2f", b-a}')"
  record plain_mbps "$(mbps "$BIG_SIZE" "$total")"; record plain_ttfb_ms "$(awk -v t="$ttfb" 'BEGIN{printf "%.2f", t*1000}')"
  # cold: fresh mount, index not built, FUSE page cache empty
  used0=$(df -B1 --output=used "$ROOT" | tail -1); du0=$(du -sb --exclude=mnt --exclude='*.log' --exclude=results.txt "$ROOT" | cut -f1)
  mount_fs
  rss0=$(rss "$DAEMON") wb0=$(wbytes "$DAEMON") c0=$(cpu_s "$DAEMON") n0=$(nginx_cpu fs)
  r=$(get "$URL_FS/big/blobs/$BIG" "$BIG_SIZE"); read -r ttfb total <<<"$r"
  record cold_cpu_daemon "$(awk -v a="$c0" -v b="$(cpu_s "$DAEMON")" 'BEGIN{printf "%.2f", b-a}')"
  record cold_cpu_nginx "$(awk -v a="$n0" -v b="$(nginx_cpu fs)" 'BEGIN{printf "%.2f", b-a}')"
  record disk_write_bytes "$(( $(wbytes "$DAEMON") - wb0 ))"
  record cold_mbps "$(mbps "$BIG_SIZE" "$total")"; record cold_ttfb_ms "$(awk -v t="$ttfb" 'BEGIN{printf "%.2f", t*1000}')"
  record cold_hwm_mib "$(awk -v k="$(hwm "$DAEMON")" 'BEGIN{printf "%.1f", k/1024}')"
  record idle_rss_mib "$(awk -v k="$rss0" 'BEGIN{printf "%.1f", k/1024}')"
  used1=$(df -B1 --output=used "$ROOT" | tail -1); du1=$(du -sb --exclude=mnt --exclude='*.log' --exclude=results.txt "$ROOT" | cut -f1)
  record disk_df_mib "$(awk -v a="$used0" -v b="$used1" 'BEGIN{printf "%.1f", (b-a)/1048576}')"
  record disk_du_bytes "$((du1 - du0))"
  # warm: the same mount again (index cached, FUSE page cache filled)
  r=$(get "$URL_FS/big/blobs/$BIG" "$BIG_SIZE"); read -r ttfb total <<<"$r"
  record warm_mbps "$(mbps "$BIG_SIZE" "$total")"; record warm_ttfb_ms "$(awk -v t="$ttfb" 'BEGIN{printf "%.2f", t*1000}')"
  record warm_hwm_mib "$(awk -v k="$(hwm "$DAEMON")" 'BEGIN{printf "%.1f", k/1024}')"
  umount_fs
done
say "  plain $(med plain_mbps) MiB/s, cold $(med cold_mbps), warm $(med warm_mbps); ttfb cold $(med cold_ttfb_ms) ms"

# --- profile --------------------------------------------------------------------------------
PROFILE=$W/profile.txt
if command -v perf >/dev/null; then
  say "profile: perf record -g on the daemon during a cold download"
  mount_fs
  perf record -q -g -o "$W/perf.data" -p "$DAEMON" 2>/dev/null &
  PERF=$!; PIDS+=("$PERF"); sleep 0.5
  r=$(get "$URL_FS/big/blobs/$BIG" "$BIG_SIZE")
  kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true; free_pids "$PERF"
  umount_fs
  { echo "## self time, top symbols"; perf report -i "$W/perf.data" --no-children --stdio --sort sym -g none --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
    echo; echo "## by shared object"; perf report -i "$W/perf.data" --no-children --stdio --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  } >"$PROFILE" || true
else
  echo "perf not installed" >"$PROFILE"
fi

# --- 5: concurrency -----------------------------------------------------------------------
say "5: concurrent downloads of the small blob"
conc() { # URL N -> aggregate MiB/s, dies on any error
  local url=$1 n=$2 d=$W/conc i t0 bad
  rm -rf "$d"; mkdir -p "$d"
  t0=$(now)
  for i in $(seq 1 "$n"); do
    curl -s -o /dev/null -w '%{http_code} %{size_download}\n' "$url" >"$d/$i" &
  done
  wait
  local wall; wall=$(since "$t0")
  bad=$(cat "$d"/* | awk -v s="$SMALL_SIZE" '$1 != 200 || $2 != s' | wc -l)
  [ "$bad" = 0 ] || die "$bad of $n concurrent downloads of $url failed"
  awk -v n="$n" -v s="$SMALL_SIZE" -v w="$wall" 'BEGIN{printf "%.1f", n*s/w/1048576}'
}
conc_verify() { # URL N -> number of downloads whose sha256 differs
  local url=$1 n=$2 d=$W/conc i
  rm -rf "$d"; mkdir -p "$d"
  for i in $(seq 1 "$n"); do
    (curl -sf "$url" | openssl dgst -sha256 -r | cut -d' ' -f1 >"$d/$i") &
  done
  wait
  cat "$d"/* | grep -cv "^${SMALL#sha256:}\$" || true
}
mount_fs
for n in $CONC; do
  get "$URL_FS/small/blobs/$SMALL" "$SMALL_SIZE" >/dev/null
  get "$URL_PLAIN/small/blobs/$SMALL" "$SMALL_SIZE" >/dev/null
  for i in $(seq 1 "$REPS"); do
    r=$(conc "$URL_FS/small/blobs/$SMALL" "$n"); record "conc_fs_$n" "$r"
    r=$(conc "$URL_PLAIN/small/blobs/$SMALL" "$n"); record "conc_plain_$n" "$r"
  done
  record "conc_bad_$n" "$(conc_verify "$URL_FS/small/blobs/$SMALL" "$n")"
done
# a cold variant at 32: a fresh mount, all clients start together on the unindexed layer
for i in $(seq 1 "$REPS"); do
  umount_fs; mount_fs
  r=$(conc "$URL_FS/small/blobs/$SMALL" 32); record conc_fs_cold_32 "$r"
done
record conc_hwm_mib "$(awk -v k="$(hwm "$DAEMON")" 'BEGIN{printf "%.1f", k/1024}')"
umount_fs
say "  32 clients: fs $(med conc_fs_32) MiB/s, plain $(med conc_plain_32) MiB/s"

# --- 6: scaling -----------------------------------------------------------------------------
say "6: index build time vs files per layer"
for n in $SCALE_FILES; do
  for i in $(seq 1 "$REPS"); do
    mount_fs
    d=$(blob_of "files-$n")
    f=$MNT/v2/localhost/bench/files-$n/blobs/$d
    t0=$(now); head -c1 "$f" >/dev/null; record "index_s_$n" "$(since "$t0")"
    record "index_rss_mib_$n" "$(awk -v k="$(rss "$DAEMON")" 'BEGIN{printf "%.1f", k/1024}')"
    t0=$(now); cat "$f" >/dev/null; record "stream_s_$n" "$(since "$t0")"
    umount_fs
  done
done
for n in $SCALE_FILES; do
  t0=$(now); q "$BIN" verify --storage "$S" "localhost/bench/files-$n:1"; record "verify_s_$n" "$(since "$t0")"
done
say "6: listing vs number of names"
have=1 k=0
for n in $NAMES; do
  names=()
  while [ $have -lt "$n" ]; do k=$((k + 1)); names+=("localhost/bench/n$k/app:1"); have=$((have + 1)); done
  [ ${#names[@]} = 0 ] || q P tag localhost/bench/small:1 "${names[@]}"
  for i in $(seq 1 "$REPS"); do
    t0=$(now); mount_fs; record "mount_s_$n" "$(since "$t0")"
    t0=$(now); lines=$(ls -R "$MNT/v2" | wc -l); record "ls_s_$n" "$(since "$t0")"
    record "ls_lines_$n" "$lines"
    t0=$(now); curl -sf -o /dev/null "http://127.0.0.1:$P_FS/v2/_catalog"; record "catalog_s_$n" "$(since "$t0")"
    record "repos_$n" "$(curl -sf "http://127.0.0.1:$P_FS/v2/_catalog" | jq '.repositories | length')"
    umount_fs
  done
done
if [ ${#names[@]} -gt 0 ] || [ $k -gt 0 ]; then
  mapfile -t all < <(for j in $(seq 1 $k); do echo "localhost/bench/n$j/app:1"; done)
  q P untag localhost/bench/small:1 "${all[@]}"
fi

# --- 4: end to end ------------------------------------------------------------------------
say "4: end to end, image in the store -> pulled by a client"
IMG=localhost/bench/big:1
clean_client() { unmount_all_under "$ROOT/$1"; rm -rf "$ROOT/$1"; }
pull() { # CLIENT URLBASE(host:port) REPO -> seconds
  local t0
  case $1 in
    skopeo) t0=$(now); q "${SK[@]}" copy -q --src-tls-verify=false "docker://$2/$3:1" "dir:$W/out" ;;
    podman) t0=$(now); q PC cl pull -q --tls-verify=false "$2/$3:1" ;;
  esac
  since "$t0"
}
for client in skopeo podman; do
  for i in $(seq 1 "$E2E_REPS"); do
    # cstor-fs: mount + nginx + pull (nginx is started inside the timing too)
    stop_nginx fs; clean_client cl; rm -rf "$W/out"
    t0=$(now); mount_fs; start_nginx fs "$MNT" "$P_FS"
    p=$(pull $client "127.0.0.1:$P_FS" "localhost/bench/big")
    record "e2e_fs_$client" "$(since "$t0")"; record "e2e_fs_pullonly_$client" "$p"
    umount_fs
    # OCI export (uncompressed layers) laid out as a static registry, same nginx config
    rm -rf "$W/oci" "$W/ocireg"; stop_nginx oci; clean_client cl; rm -rf "$W/out"
    t0=$(now)
    q "${SK[@]}" copy -q --dest-oci-accept-uncompressed-layers "containers-storage:[overlay@$S+$R]$IMG" "oci:$W/oci:1"
    m=$(jq -r '.manifests[0].digest' "$W/oci/index.json"); r=$W/ocireg/v2/localhost/bench/big
    mkdir -p "$r/blobs" "$r/manifests/.ref/$m" "$r/tags"
    for b in "$W/oci/blobs/sha256/"*; do ln -s "$b" "$r/blobs/sha256:$(basename "$b")"; done
    cp "$W/oci/blobs/sha256/${m#sha256:}" "$r/manifests/.ref/$m/$m.oci-manifest"
    ln -s "$m" "$r/manifests/.ref/1"
    echo '{"name":"localhost/bench/big","tags":["1"]}' >"$r/tags/list"
    chmod -R a+rX "$W/oci" "$W/ocireg"
    start_nginx oci "$W/ocireg" "$P_OCI"
    p=$(pull $client "127.0.0.1:$P_OCI" "localhost/bench/big")
    record "e2e_oci_$client" "$(since "$t0")"; record "e2e_oci_pullonly_$client" "$p"
    stop_nginx oci
    # The client's own floor: the same uncompressed layer copied from the local OCI
    # layout, no HTTP at all (podman still unpacks it into its store).
    clean_client cl; rm -rf "$W/out"
    t0=$(now)
    case $client in
      skopeo) q "${SK[@]}" copy -q "oci:$W/oci:1" "dir:$W/out" ;;
      podman) q PC cl pull -q "oci:$W/oci:1" ;;
    esac
    record "e2e_floor_$client" "$(since "$t0")"
  done
  clean_client cl
done
# docker-registry: push (podman push compresses with gzip; also zstd) + pull by both clients
for fmt in $REG_FORMATS; do
  for i in $(seq 1 "$REG_REPS"); do
    rm -rf "$W/regdata"; mkdir -p "$W/regdata"
    cat >"$W/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/regdata}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$P_REG}
EOF
    # distribution reads REGISTRY_* variables as configuration: hide podman's REGISTRY_AUTH_FILE
    env -u REGISTRY_AUTH_FILE docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
    REG=$!; PIDS+=("$REG"); wait_http "$P_REG"
    t0=$(now)
    q P push -q --tls-verify=false --compression-format "$fmt" "$IMG" "docker://127.0.0.1:$P_REG/bench/big:1"
    push=$(since "$t0"); record "reg_push_$fmt" "$push"
    for client in skopeo podman; do
      clean_client cl; rm -rf "$W/out"
      p=$(pull $client "127.0.0.1:$P_REG" "bench/big")
      record "e2e_reg_${fmt}_$client" "$(awk -v a="$push" -v b="$p" 'BEGIN{print a+b}')"
      record "e2e_reg_${fmt}_pullonly_$client" "$p"
    done
    clean_client cl
    stop_pid "$REG"
  done
done

# --- report ---------------------------------------------------------------------------------
set +e
say "writing $OUT"
ELAPSED=$(( $(date +%s) - START ))
mode=full; [ $QUICK = 1 ] && mode=quick
# Before the report is opened for writing (which would make the tree look dirty).
VERSION=$(cd "$repo" && git describe --always --dirty 2>/dev/null || echo '?')
python3 "$here/report.py" report "$RESULTS" --out "$OUT" --mode "$mode" --elapsed "$ELAPSED" --version "$VERSION" \
  --profile "$PROFILE" --reps "$REPS" --e2e-reps "$E2E_REPS" --reg-reps "$REG_REPS" --conc "$CONC" \
  --reg-formats "$REG_FORMATS" --scale-files "$SCALE_FILES" --names "$NAMES" || die "writing the report failed"
cat "$OUT"
say "done in ${ELAPSED}s"
