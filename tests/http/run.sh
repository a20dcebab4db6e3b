#!/usr/bin/env bash
# End-to-end check of nginx/ and caddy/ configs: build a fake tree (or use MNT), start nginx
# (nginx/nginx.conf) and Caddy (caddy/Caddyfile) on free 127.0.0.1 ports, run check.sh against
# each and, if skopeo is installed, pull the real tiny image of the fake tree through each.
# Stops everything it started.
#
#   tests/http/run.sh [MNT]      MNT: a cstor-fs mount; default: a fresh fake tree
#                                (the skopeo smoke test needs the fake tree's image)
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as nobody when started by root
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if [[ $# -ge 1 ]]; then
    mnt=$(cd "$1" && pwd)
    fake=
else
    mnt=$work/tree
    "$here/fake-tree.sh" "$mnt" >/dev/null
    fake=1
fi

free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 50); do
        if ! ss -Hltn "sport = :$p" | grep -q .; then echo "$p"; return; fi
    done
    echo "no free port" >&2
    return 1
}
# render IN OUT NAME=VALUE...: replace @NAME@ placeholders
render() {
    local s kv
    s=$(<"$1")
    shopt -u patsub_replacement 2>/dev/null || true
    for kv in "${@:3}"; do s=${s//@${kv%%=*}@/${kv#*=}}; done
    if [[ $s =~ @[A-Z_]+@ ]]; then
        echo "$1: unsubstituted placeholder left" >&2
        return 1
    fi
    printf '%s\n' "$s" >"$2"
}
wait_up() { # URL PID
    local i
    for i in $(seq 50); do
        curl -sf -o /dev/null "$1/v2/" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "server at $1 did not come up" >&2
    return 1
}

status=0
nginx_port=$(free_port)
mkdir -p "$work/nginx/conf" "$work/nginx/prefix"
cp "$top/nginx/nginx.conf" "$work/nginx/conf/"
render "$top/nginx/cstor-fs.conf" "$work/nginx/conf/cstor-fs.conf" MOUNT="$mnt" LISTEN="127.0.0.1:$nginx_port"
nginx -c "$work/nginx/conf/nginx.conf" -p "$work/nginx/prefix/" -g 'daemon off;' 2>"$work/nginx.log" &
pids+=($!)
wait_up "http://127.0.0.1:$nginx_port" $! || { cat "$work/nginx.log"; exit 1; }

caddy_port=$(free_port)
mkdir -p "$work/caddy/state"
render "$top/caddy/Caddyfile" "$work/caddy/Caddyfile" MOUNT="$mnt" LISTEN_HOST=127.0.0.1 LISTEN_PORT="$caddy_port"
HOME=$work/caddy/state XDG_CONFIG_HOME=$work/caddy/state XDG_DATA_HOME=$work/caddy/state \
    caddy run --adapter caddyfile --config "$work/caddy/Caddyfile" 2>"$work/caddy.log" &
pids+=($!)
wait_up "http://127.0.0.1:$caddy_port" $! || { cat "$work/caddy.log"; exit 1; }

kinds=
[[ -n $fake ]] && kinds="oci-manifest oci-index docker-manifest docker-list"
for server in nginx:$nginx_port caddy:$caddy_port; do
    name=${server%%:*}
    base=http://127.0.0.1:${server#*:}
    echo "=== $name $base"
    CHECK_REQUIRE_KINDS=$kinds "$here/check.sh" "$mnt" "$base" || status=1

    [[ -n $fake ]] && command -v skopeo >/dev/null || continue
    echo "--- skopeo against $name"
    img=127.0.0.1:${server#*:}/docker.io/library/alpine
    m=$mnt/v2/docker.io/library/alpine/manifests
    smoke() { # DESC COMMAND...
        local desc=$1
        shift
        if "$@" >"$work/out" 2>&1; then echo "ok   $desc"; else
            echo "FAIL $desc"
            sed 's/^/     /' "$work/out"
            status=1
        fi
    }
    same_digest() { [[ $(skopeo inspect --tls-verify=false "docker://$img:$1" | jq -r .Digest) == "$(readlink "$m/$2")" ]]; }
    raw_is() { skopeo inspect --tls-verify=false --raw "docker://$img:$1" | cmp - "$m/$(readlink "$m/$1")"; }
    copy_ok() { # REF [--all]: copy to dir: and check every file there against its digest
        local d=$work/copy
        rm -rf "$d"
        skopeo copy --quiet "${@:2}" --src-tls-verify=false "docker://$img$1" "dir:$d" || return 1
        local f
        for f in "$d"/*; do
            [[ $(basename "$f") =~ ^([0-9a-f]{64})$ ]] || continue
            [[ $(sha256sum "$f" | cut -d' ' -f1) == "$(basename "$f")" ]] || return 1
        done
    }
    smoke "inspect :latest (oci-manifest), Digest = the tag's" same_digest latest latest
    smoke "inspect :docker (docker-manifest)" same_digest docker docker
    smoke "inspect :multi (oci-index), Digest = the index's" same_digest multi multi
    smoke "inspect :multi-docker (docker-list), Digest = the list's" same_digest multi-docker multi-docker
    smoke "inspect --override-arch arm64 :multi picks the arm64 image" bash -c \
        "skopeo --override-arch arm64 inspect --tls-verify=false docker://$img:multi | jq -e '.Architecture == \"arm64\"'"
    smoke "inspect --raw :latest = stored bytes" raw_is latest
    smoke "inspect --raw :multi = stored bytes" raw_is multi
    smoke "inspect --raw :multi-docker = stored bytes" raw_is multi-docker
    smoke "list-tags" bash -c "skopeo list-tags --tls-verify=false docker://$img | jq -e '.Tags | length == 5'"
    smoke "copy :latest to dir:" copy_ok :latest
    smoke "copy @$(readlink "$m/latest") to dir:" copy_ok "@$(readlink "$m/latest")"
    smoke "copy :docker to dir:" copy_ok :docker
    smoke "copy :multi to dir:" copy_ok :multi
    smoke "copy --all :multi to dir:" copy_ok :multi --all
    smoke "copy --all :multi-docker to dir:" copy_ok :multi-docker --all
done

echo "=== server logs"
grep -v -e '"level":"info"' -e 'admin endpoint disabled' -e 'automatic HTTPS is completely disabled' \
    "$work/nginx.log" "$work/caddy.log" || echo "(nothing beyond startup notices)"
echo "written by caddy: $(cd "$work/caddy/state" && find . -mindepth 1 | tr '\n' ' ')"
[[ $status -eq 0 ]] && echo "ALL OK" || echo "FAILURES"
exit $status
