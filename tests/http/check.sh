#!/usr/bin/env bash
# Check a running cstor-fs HTTP front end (nginx or Caddy) against the tree it serves.
#
#   tests/http/check.sh MNT BASE_URL        e.g. check.sh /run/cstor-fs http://127.0.0.1:5000
#
# Repositories, tags, manifests and blobs are discovered by walking MNT (a cstor-fs mount or a
# tree from fake-tree.sh), so the same checks run against the real mount. Needs curl, jq, sha256sum.
# Prints failures (all checks with CHECK_VERBOSE=1), then "N passed, M failed"; exits 1 on failure.
#
# Environment:
#   CHECK_MAX_PER_REPO=20          tags, manifests and blobs checked per repository
#   CHECK_MAX_BLOB_BYTES=268435456 blobs up to this size are fetched whole and digested
#   CHECK_REQUIRE_KINDS="..."      manifest kinds that must occur (fake tree: all four)
#   CHECK_VERBOSE=1
set -euo pipefail
export LC_ALL=C

[[ $# -eq 2 ]] || { echo "usage: $0 MNT BASE_URL" >&2; exit 2; }
MNT=${1%/}
BASE=${2%/}
MAX_PER_REPO=${CHECK_MAX_PER_REPO:-20}
MAX_BLOB_BYTES=${CHECK_MAX_BLOB_BYTES:-268435456}
REQUIRE_KINDS=${CHECK_REQUIRE_KINDS:-}
[[ -f $MNT/v2/_catalog ]] || { echo "$MNT/v2/_catalog: not a cstor-fs tree" >&2; exit 2; }

IMMUTABLE="public, max-age=31536000, immutable"
ZERO=sha256:0000000000000000000000000000000000000000000000000000000000000000
declare -A MEDIA_TYPE=(
    [oci-manifest]=application/vnd.oci.image.manifest.v1+json
    [oci-index]=application/vnd.oci.image.index.v1+json
    [docker-manifest]=application/vnd.docker.distribution.manifest.v2+json
    [docker-list]=application/vnd.docker.distribution.manifest.list.v2+json
)
# Probe names for ?last= that are not tags; fake-tree.sh precomputes tags/.after for them.
PROBES=(0-not-a-tag m-not-a-tag zz-not-a-tag)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
declare -A kinds_seen=()

ok() {
    pass=$((pass + 1))
    if [[ -n ${CHECK_VERBOSE:-} ]]; then echo "ok   $*"; fi
}
bad() {
    fail=$((fail + 1))
    echo "FAIL $*"
}
# is DESC GOT WANT
is() {
    if [[ $2 == "$3" ]]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}
# holds DESC COMMAND...: passes if COMMAND succeeds
holds() {
    local desc=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$desc"; else bad "$desc"; fi
}
sha() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
size() { stat -L -c %s "$1"; }
slice() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=65536 status=none; } # FILE OFF LEN

# req METHOD PATH [CURL_ARGS...]: sets $status and $what; headers in $tmp/h, body in $tmp/b.
req() {
    local method=$1 path=$2
    shift 2
    local m=(-X "$method")
    [[ $method == HEAD ]] && m=(--head)
    what="$method $path${*:+ ($*)}"
    : >"$tmp/b"
    status=$(curl -sS --path-as-is -o "$tmp/b" -D "$tmp/h" -w '%{http_code}' "${m[@]}" "$@" "$BASE$path") \
        || status=000
    [[ $method == HEAD ]] && : >"$tmp/b"
    return 0
}
# hdr NAME: the last response's header value ("" if absent)
hdr() { grep -i -m1 "^$1:" "$tmp/h" | sed -e 's/^[^:]*:[[:space:]]*//' -e 's/\r$//' || true; }

# error_is STATUS CODE: the last response is a JSON registry error; CODE "!X" means "not X"
error_is() {
    is "$what: status" "$status" "$1"
    is "$what: Content-Type" "$(hdr Content-Type)" application/json
    [[ ${what%% *} == HEAD ]] && return 0
    local code
    code=$(jq -r '.errors[0].code // ""' "$tmp/b" 2>/dev/null || echo "<not JSON>")
    if [[ $2 == !* ]]; then
        if [[ -n $code && $code != "<not JSON>" && $code != "${2#!}" ]]; then ok "$what: code"; else
            bad "$what: code '$code', must be a JSON error code other than ${2#!}"
        fi
    else
        is "$what: code" "$code" "$2"
    fi
}
# no_encoding: no compression, Content-Length equal to the body's length
no_encoding() {
    is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
    is "$what: Content-Length = body" "$(hdr Content-Length)" "$(size "$tmp/b")"
}

# ---- base -------------------------------------------------------------------------------------
for m in GET HEAD; do
    req $m /v2/
    is "$what: status" "$status" 200
    is "$what: API version" "$(hdr Docker-Distribution-API-Version)" registry/2.0
done

# ---- index page ------------------------------------------------------------------------------
if [[ -f $MNT/index.html ]]; then
    for p in / /index.html; do
        for m in GET HEAD; do
            req $m "$p" -H 'Accept-Encoding: gzip'
            is "$what: status" "$status" 200
            is "$what: Content-Type" "$(hdr Content-Type)" "text/html; charset=utf-8"
            is "$what: Cache-Control" "$(hdr Cache-Control)" no-cache
            is "$what: Content-Length" "$(hdr Content-Length)" "$(size "$MNT/index.html")"
        done
        req GET "$p"
        holds "$what: body = index.html" cmp "$tmp/b" "$MNT/index.html"
    done
fi

# link_next: the URL of the last response's Link rel="next" ("" if none)
link_next() { hdr Link | sed -n 's/^<\(.*\)>; rel="next"$/\1/p'; }
# pages FIRST_PATH KEY: follows Link headers; prints the names of every page, one a line
pages() {
    local path=$1 key=$2 n=0
    while [[ -n $path ]]; do
        req GET "$path"
        [[ $status == 200 ]] || { bad "$what: status $status"; return; }
        jq -r ".$key[]" "$tmp/b"
        path=$(link_next)
        n=$((n + 1))
        [[ $n -lt 1000 ]] || { bad "$what: paging does not end"; return; }
    done
}

# ---- catalog ----------------------------------------------------------------------------------
mapfile -t repos < <(find "$MNT/v2" -name '.*' -prune -o -path '*/tags/list' -type f -printf '%P\n' \
    | sed 's,/tags/list$,,' | sort)
[[ ${#repos[@]} -gt 0 ]] || bad "no repositories under $MNT/v2"
echo "checking $BASE against $MNT: ${#repos[@]} repositories"
is "tree: _catalog lists the repositories found" \
    "$(jq -c .repositories "$MNT/v2/_catalog")" "$(printf '%s\n' "${repos[@]}" | jq -R . | jq -cs .)"
for m in GET HEAD; do
    req $m /v2/_catalog -H 'Accept-Encoding: gzip'
    is "$what: status" "$status" 200
    is "$what: Content-Type" "$(hdr Content-Type)" application/json
    is "$what: Cache-Control" "$(hdr Cache-Control)" no-cache
    is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
    is "$what: Content-Length" "$(hdr Content-Length)" "$(size "$MNT/v2/_catalog")"
done
req GET /v2/_catalog
holds "$what: body = v2/_catalog" cmp "$tmp/b" "$MNT/v2/_catalog"
all_repos=$(jq -r '.repositories[]' "$MNT/v2/_catalog")
for n in 1 2 7; do
    is "_catalog?n=$n followed by Link: every repository once, in order" "$(pages "/v2/_catalog?n=$n" repositories)" "$all_repos"
done
req GET "/v2/_catalog?n=0"
is "$what: body" "$(jq -c . "$tmp/b" 2>/dev/null)" '{"repositories":[]}'
is "$what: no Link" "$(hdr Link)" ""
req GET "/v2/_catalog?n=${#repos[@]}"
is "$what: all in one page, no Link" "$(hdr Link)" ""
req GET "/v2/_catalog?n=1&last=${repos[0]}"
is "$what: Link" "$(hdr Link)" \
    "$([[ ${#repos[@]} -gt 2 ]] && echo "</v2/_catalog?n=1&last=${repos[1]//\//%2F}>; rel=\"next\"")"
for p in "/v2/_catalog?n=x" "/v2/_catalog?n=-1" "/v2/_catalog?last=..%2f..%2fetc" "/v2/_catalog?last=.catalog"; do
    req GET "$p"
    error_is 400 '!NAME_UNKNOWN'
done

# ---- per repository ---------------------------------------------------------------------------
check_manifest() { # REPO REF DIGEST KIND
    local repo=$1 ref=$2 digest=$3 kind=$4 file cache m
    file=$MNT/v2/$repo/manifests/$digest
    cache=no-cache
    [[ $ref == sha256:* ]] && cache=$IMMUTABLE
    for m in GET HEAD; do
        req $m "/v2/$repo/manifests/$ref" -H 'Accept-Encoding: gzip'
        is "$what: status" "$status" 200
        is "$what: Content-Type" "$(hdr Content-Type)" "${MEDIA_TYPE[$kind]}"
        is "$what: Content-Length" "$(hdr Content-Length)" "$(size "$file")"
        is "$what: Docker-Content-Digest" "$(hdr Docker-Content-Digest)" "$digest"
        is "$what: Cache-Control" "$(hdr Cache-Control)" "$cache"
        is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
    done
    req GET "/v2/$repo/manifests/$ref"
    is "$what: sha256 of body" "$(sha "$tmp/b")" "$digest"
}

check_blob() { # REPO DIGEST
    local repo=$1 digest=$2 file n m
    file=$MNT/v2/$repo/blobs/$digest
    n=$(size "$file")
    for m in HEAD GET; do
        [[ $m == GET && $n -gt $MAX_BLOB_BYTES ]] && { echo "note: $digest ($n bytes) not fetched whole"; continue; }
        req $m "/v2/$repo/blobs/$digest" -H 'Accept-Encoding: gzip'
        is "$what: status" "$status" 200
        is "$what: Content-Type" "$(hdr Content-Type)" application/octet-stream
        is "$what: Content-Length" "$(hdr Content-Length)" "$n"
        is "$what: Docker-Content-Digest" "$(hdr Docker-Content-Digest)" "$digest"
        is "$what: Cache-Control" "$(hdr Cache-Control)" "$IMMUTABLE"
        is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
        is "$what: Accept-Ranges" "$(hdr Accept-Ranges)" bytes
    done
    [[ $n -le $MAX_BLOB_BYTES ]] && is "$what: sha256 of body" "$(sha "$tmp/b")" "$digest"
    return 0
}

check_ranges() { # REPO DIGEST: a resume from the middle, two ranges at once, a range past the end
    local repo=$1 digest=$2 file n from z a b len cr off hl start range
    file=$MNT/v2/$repo/blobs/$digest
    n=$(size "$file")
    if [[ $n -lt 2 ]]; then echo "note: $repo: no blob of >= 2 bytes, ranges not checked"; return; fi
    from=$((n > 2097152 ? n - 1048576 : n / 2))
    req GET "/v2/$repo/blobs/$digest" -H "Range: bytes=$from-" -H 'Accept-Encoding: gzip'
    is "$what: status" "$status" 206
    is "$what: Content-Range" "$(hdr Content-Range)" "bytes $from-$((n - 1))/$n"
    is "$what: Content-Length" "$(hdr Content-Length)" $((n - from))
    is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
    is "$what: Docker-Content-Digest" "$(hdr Docker-Content-Digest)" "$digest"
    slice "$file" $from $((n - from)) >"$tmp/want"
    holds "$what: body = bytes $from- of the blob" cmp "$tmp/b" "$tmp/want"

    z=$(((n / 2 < 10 ? n / 2 : 10) - 1))
    a=$((n / 2))
    b=$((a + 99 < n - 1 ? a + 99 : n - 1))
    req GET "/v2/$repo/blobs/$digest" -H "Range: bytes=0-$z,$a-$b" -H 'Accept-Encoding: gzip'
    is "$what: status" "$status" 206
    holds "$what: Content-Type multipart/byteranges" grep -qi '^Content-Type: multipart/byteranges; boundary=' "$tmp/h"
    no_encoding
    is "$what: parts" "$(grep -ac '^Content-Range: bytes ' "$tmp/b" || true)" 2
    for range in "0 $z" "$a $b"; do
        set -- $range
        len=$(($2 - $1 + 1))
        cr="Content-Range: bytes $1-$2/$n"
        off=$(grep -obaF "$cr" "$tmp/b" | head -1 | cut -d: -f1 || true)
        if [[ -z $off ]]; then bad "$what: no part '$cr'"; continue; fi
        # the part's data starts after the first empty header line ("\r\n") following it
        hl=$(slice "$tmp/b" "$off" 4096 | grep -abx -m1 $'\r' | cut -d: -f1 || true)
        if [[ -z $hl ]]; then bad "$what: part '$cr' has no end of headers"; continue; fi
        start=$((off + hl + 2))
        slice "$tmp/b" $start $len >"$tmp/got"
        slice "$file" $1 $len >"$tmp/want"
        holds "$what: part $1-$2 bytes" cmp "$tmp/got" "$tmp/want"
    done

    req GET "/v2/$repo/blobs/$digest" -H "Range: bytes=$n-"
    is "$what: status" "$status" 416
}

for repo in "${repos[@]}"; do
    r=$MNT/v2/$repo
    echo "repository $repo"

    # tags/list
    holds "tree: $repo/tags/list is JSON with name and sorted tags" \
        jq -e --arg n "$repo" '.name == $n and .tags == (.tags | sort)' "$r/tags/list"
    mapfile -t tags < <(jq -r '.tags[]' "$r/tags/list")
    is "tree: $repo/tags/list = the tag symlinks in manifests/" \
        "$(printf '%s\n' "${tags[@]}")" "$(find "$r/manifests" -mindepth 1 -maxdepth 1 -name '.*' -prune -o -type l -printf '%f\n' | sort)"
    for m in GET HEAD; do
        req $m "/v2/$repo/tags/list" -H 'Accept-Encoding: gzip'
        is "$what: status" "$status" 200
        is "$what: Content-Type" "$(hdr Content-Type)" application/json
        is "$what: Cache-Control" "$(hdr Cache-Control)" no-cache
        is "$what: Content-Encoding" "$(hdr Content-Encoding)" ""
        is "$what: Content-Length" "$(hdr Content-Length)" "$(size "$r/tags/list")"
    done
    req GET "/v2/$repo/tags/list"
    holds "$what: body = tags/list" cmp "$tmp/b" "$r/tags/list"
    lasts=("${PROBES[@]}")
    if [[ ${#tags[@]} -gt 0 ]]; then
        lasts+=("${tags[0]}" "${tags[$((${#tags[@]} / 2))]}" "${tags[$((${#tags[@]} - 1))]}")
    fi
    for last in "${lasts[@]}"; do
        req GET "/v2/$repo/tags/list?last=$last"
        is "$what: status" "$status" 200
        is "$what: Content-Type" "$(hdr Content-Type)" application/json
        is "$what: Cache-Control" "$(hdr Cache-Control)" no-cache
        is "$what: body" "$(jq -cS . "$tmp/b" 2>/dev/null || echo '<not JSON>')" \
            "$(jq -cS --arg l "$last" '{name, tags: [.tags[] | select(. > $l)]}' "$r/tags/list")"
    done
    for last in '../../../_catalog' '.ref' '%2e%2e%2f%2e%2e%2f_catalog'; do
        for n in "" 1; do
            req GET "/v2/$repo/tags/list?last=$last${n:+&n=$n}"
            case $status in 400 | 404) error_is "$status" '!NAME_UNKNOWN' ;; *) is "$what: status" "$status" 400 ;; esac
        done
    done
    # n and last: pages of n tags, Link to the next while more remain (a cstor-fs mount
    # computes tags/.page; a fake-tree.sh tree has none)
    [[ -d $r/tags/.page ]] || bad "tree: $repo has no tags/.page (paging not checked)"
    for n in 1 2 3; do
        is "$repo: tags/list?n=$n followed by Link: every tag once, in order" \
            "$(pages "/v2/$repo/tags/list?n=$n" tags)" "$(printf '%s\n' "${tags[@]}" | sed '/^$/d')"
    done
    req GET "/v2/$repo/tags/list?n=1"
    is "$what: Cache-Control" "$(hdr Cache-Control)" no-cache
    is "$what: Link" "$(hdr Link)" \
        "$([[ ${#tags[@]} -gt 1 ]] && echo "</v2/$repo/tags/list?n=1&last=${tags[0]}>; rel=\"next\"")"
    req GET "/v2/$repo/tags/list?n=0"
    is "$what: body" "$(jq -c .tags "$tmp/b" 2>/dev/null)" "[]"
    is "$what: no Link" "$(hdr Link)" ""
    for n in x -1 1000000000; do
        req GET "/v2/$repo/tags/list?n=$n"
        error_is 400 '!NAME_UNKNOWN'
    done

    # manifests by tag and by digest
    for tag in "${tags[@]:0:$MAX_PER_REPO}"; do
        d=$(readlink "$r/manifests/$tag")
        is "tree: $repo/manifests/.ref/$tag -> manifests/$tag's target" "$(readlink "$r/manifests/.ref/$tag")" "$d"
        k=$(find "$r/manifests/.ref/$d/" -mindepth 1 -maxdepth 1 -printf '%f\n')
        check_manifest "$repo" "$tag" "$d" "${k#"$d".}"
    done
    mapfile -t digests < <(find "$r/manifests" -mindepth 1 -maxdepth 1 -name 'sha256:*' -type f -printf '%f\n' | sort)
    [[ ${#digests[@]} -gt 0 ]] || bad "tree: $repo has no manifests/sha256:*"
    for d in "${digests[@]:0:$MAX_PER_REPO}"; do
        mapfile -t k < <(find "$r/manifests/.ref/$d/" -mindepth 1 -maxdepth 1 -printf '%f\n')
        if [[ ${#k[@]} -ne 1 || ! -v MEDIA_TYPE[${k[0]#"$d".}] || ${k[0]%%.*} != "$d" ]]; then
            bad "tree: $repo/manifests/.ref/$d/ must hold exactly $d.<kind>, holds: ${k[*]}"
            continue
        fi
        kind=${k[0]#"$d".}
        kinds_seen[$kind]=1
        is "tree: sha256 of $repo/manifests/$d" "$(sha "$r/manifests/$d")" "$d"
        holds "tree: $repo/manifests/.ref/$d/${k[0]} = manifests/$d" cmp "$r/manifests/.ref/$d/${k[0]}" "$r/manifests/$d"
        is "tree: $repo/manifests/$d mediaType matches .$kind" \
            "$(jq -r --arg t "${MEDIA_TYPE[$kind]}" '.mediaType // $t' "$r/manifests/$d")" "${MEDIA_TYPE[$kind]}"
        check_manifest "$repo" "$d" "$d" "$kind"
    done

    # blobs: the smallest ones and the largest one (ranges are checked on the largest)
    mapfile -t blobs < <(find "$r/blobs" -mindepth 1 -maxdepth 1 -name 'sha256:*' -printf '%s %f\n' | sort -n | cut -d' ' -f2)
    [[ ${#blobs[@]} -gt 0 ]] || bad "tree: $repo has no blobs"
    if [[ ${#blobs[@]} -gt 0 ]]; then
        largest=${blobs[-1]}
        for d in $(printf '%s\n' "${blobs[@]:0:$((MAX_PER_REPO - 1))}" "$largest" | sort -u); do
            [[ $(size "$r/blobs/$d") -le $MAX_BLOB_BYTES ]] && is "tree: sha256 of $repo/blobs/$d" "$(sha "$r/blobs/$d")" "$d"
            check_blob "$repo" "$d"
        done
        check_ranges "$repo" "$largest"
    fi

    # referrers: an OCI index for any digest, as the tree has it (empty if nothing refers)
    some=${digests[0]:-$ZERO}
    for d in "$some" "$ZERO"; do
        for m in GET HEAD; do
            req $m "/v2/$repo/referrers/$d"
            is "$what: status" "$status" 200
            is "$what: Content-Type" "$(hdr Content-Type)" application/vnd.oci.image.index.v1+json
            is "$what: OCI-Filters-Applied" "$(hdr OCI-Filters-Applied)" ""
        done
        want='{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}'
        [[ -f $r/.referrers/$d ]] && want=$(jq -cS . "$r/.referrers/$d")
        req GET "/v2/$repo/referrers/$d"
        is "$what: body" "$(jq -cS . "$tmp/b" 2>/dev/null || echo '<not JSON>')" "$want"
        req GET "/v2/$repo/referrers/$d?artifactType=application/vnd.oci.image.config.v1%2Bjson"
        is "$what: status" "$status" 200
        is "$what: OCI-Filters-Applied" "$(hdr OCI-Filters-Applied)" artifactType
        is "$what: only that type" "$(jq -c '[.manifests[] | select(.artifactType != "application/vnd.oci.image.config.v1+json")]' "$tmp/b")" "[]"
    done
    for p in "referrers/sha256:abc" "referrers/latest" "manifests/sha256:totallywrong" "blobs/sha256:abc" "blobs/latest"; do
        for m in GET HEAD; do
            req $m "/v2/$repo/$p"
            error_is 400 DIGEST_INVALID
        done
    done

    # what is not there
    for m in GET HEAD; do
        req $m "/v2/$repo/manifests/cstor-check-no-such-tag"
        error_is 404 MANIFEST_UNKNOWN
        req $m "/v2/$repo/manifests/$ZERO"
        error_is 404 MANIFEST_UNKNOWN
        req $m "/v2/$repo/blobs/$ZERO"
        error_is 404 BLOB_UNKNOWN
    done

    # no listings, no hidden names, no way out of v2/
    tag=${tags[0]:-latest}
    k=$(find "$r/manifests/.ref/$some/" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | head -1)
    for p in "/v2/$repo/" "/v2/$repo/manifests/" "/v2/$repo/blobs/" "/v2/$repo/tags/" \
        "/v2/$repo/manifests/.ref/" "/v2/$repo/manifests/.ref/$tag" "/v2/$repo/manifests/.ref/$some/$k" \
        "/v2/$repo/manifests/%2eref/$tag" "/v2/$repo/tags/.after/" "/v2/$repo/tags/.after/$tag" \
        "/v2/$repo/tags/.after/.." "/v2/$repo/tags/%2Eafter/$tag" "/v2/$repo/tags/list/.." \
        "/v2/$repo/blobs/..%2fmanifests%2f.ref%2f$tag" "/v2/$repo/blobs/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd" \
        "/v2/$repo/manifests/$tag/" "/v2/$repo/manifests/$some/x"; do
        req GET "$p"
        case $status in 400 | 404) error_is "$status" '!NAME_UNKNOWN' ;; *) is "$what: status" "$status" 404 ;; esac
    done
done

# ---- unknown repository, traversal, methods ---------------------------------------------------
nr=cstor-check/no-such-repo
for m in GET HEAD; do
    for p in tags/list manifests/latest "manifests/$ZERO" "blobs/$ZERO"; do
        req $m "/v2/$nr/$p"
        error_is 404 NAME_UNKNOWN
    done
done
req GET "/v2/$nr/referrers/$ZERO"
is "$what: status (never 404 for referrers)" "$status" 200
is "$what: Content-Type" "$(hdr Content-Type)" application/vnd.oci.image.index.v1+json

# /v2/../ is / after normalisation: the index page (where the tree has one), nothing else.
for p in /v2/../ /v2/%2e%2e/; do
    req GET "$p"
    if [[ -f $MNT/index.html && $status == 200 ]]; then holds "$what: the index page" cmp "$tmp/b" "$MNT/index.html"; else
        case $status in 400 | 404) error_is "$status" '!NAME_UNKNOWN' ;; *) is "$what: status" "$status" 404 ;; esac
    fi
done
for p in /v2 /_catalog /index.htm /v2/index.html /v2/.catalog/1/@/end /v2/%2e%2e/%2e%2e/etc/passwd /v2/../../etc/passwd \
    /v2/..%2f..%2fetc%2fpasswd /v2/.ref /v2/_catalog/x "/v2/$ZERO"; do
    req GET "$p"
    case $status in 400 | 404) error_is "$status" '!NAME_UNKNOWN' ;; *) is "$what: status" "$status" 404 ;; esac
    if grep -qa 'root:' "$tmp/b"; then bad "$what: body looks like /etc/passwd"; fi
done

repo=${repos[0]:-x}
for m in PUT POST DELETE PATCH OPTIONS; do
    for p in /v2/ "/v2/$repo/manifests/latest" "/v2/$repo/blobs/uploads/" "/v2/$repo/blobs/$ZERO"; do
        req $m "$p" -H 'Content-Type: application/json' --data-binary '{}'
        error_is 405 UNSUPPORTED
        holds "$what: says read-only" grep -qi 'read-only' "$tmp/b"
        holds "$what: Allow has GET" grep -qiE '^Allow:.*GET' "$tmp/h"
    done
done

for k in $REQUIRE_KINDS; do
    holds "a manifest of kind $k was checked" test -n "${kinds_seen[$k]:-}"
done

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
