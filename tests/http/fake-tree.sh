#!/usr/bin/env bash
# Build a fake cstor-fs tree from ordinary files and symlinks, for tests/http/check.sh.
#
#   tests/http/fake-tree.sh DIR
#
# DIR must not exist or be empty; afterwards DIR is what a cstor-fs mount root shows:
#   v2/_catalog
#   v2/<repo>/tags/list
#   v2/<repo>/tags/.after/<name>          the real fs answers ANY name; this fake only has every
#                                         tag plus the probe names check.sh uses ($PROBES below)
#   v2/<repo>/manifests/<tag>             -> sha256:<hex>
#   v2/<repo>/manifests/sha256:<hex>
#   v2/<repo>/manifests/.ref/<tag>        -> sha256:<hex>
#   v2/<repo>/manifests/.ref/sha256:<hex>/sha256:<hex>.<kind>
#   v2/<repo>/blobs/sha256:<hex>
#   v2/<repo>/tags/.page/<n>/[<last>/]@   -> .to/<n>/<next> | .end/<last>|- | .none   (n and last;
#   v2/.catalog/<n>/[<last...>/]@         the real fs answers any n and last: this fake has the
#                                         n check.sh uses, after every name; see the mount's docs)
#
# Repositories:
#   docker.io/library/alpine    a real, pullable tiny image (one uncompressed tar layer) in every
#                               manifest kind: latest (oci-manifest), docker (docker-manifest),
#                               multi (oci-index: amd64 + arm64), multi-docker (docker-list),
#                               edge.oci-index (an oci-manifest: the tag's suffix must not matter)
#   localhost/app/web           1.0 and 1.1 (docker-manifest, oci-manifest) naming a 3 MiB random blob
#   example.com_5000/my-ns/x__y v1 (oci-manifest); exercises the `_`, `__`, `-` separators
set -euo pipefail
export LC_ALL=C

# Names check.sh also asks for as ?last=<name>; they are not tags.
PROBES=(0-not-a-tag m-not-a-tag zz-not-a-tag)

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
root=$1
mkdir -p "$root"
[[ -z $(ls -A "$root") ]] || { echo "$root is not empty" >&2; exit 1; }
root=$(cd "$root" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# add_blob REPO FILE -> prints sha256:<hex>, copies FILE into the repo's blobs/
add_blob() {
    local d
    d=sha256:$(sha "$2")
    mkdir -p "$root/v2/$1/blobs"
    cp "$2" "$root/v2/$1/blobs/$d"
    echo "$d"
}

# add_manifest REPO KIND FILE -> prints sha256:<hex>
add_manifest() {
    local repo=$1 kind=$2 f=$3 d m
    d=sha256:$(sha "$f")
    m=$root/v2/$repo/manifests
    mkdir -p "$m/.ref/$d"
    cp "$f" "$m/$d"
    cp "$f" "$m/.ref/$d/$d.$kind"
    echo "$d"
}

# tag REPO TAG DIGEST
tag() {
    local m=$root/v2/$1/manifests
    ln -sfn "$3" "$m/$2"
    ln -sfn "$3" "$m/.ref/$2"
}

# finish_repo REPO: tags/list and tags/.after/* from the tag symlinks
finish_repo() {
    local repo=$1 t name
    mkdir -p "$root/v2/$repo/tags/.after"
    find "$root/v2/$repo/manifests/.ref" -mindepth 1 -maxdepth 1 -type l -printf '%f\n' | sort \
        | jq -R . | jq -cs --arg n "$repo" '{name: $n, tags: .}' >"$work/tags.json"
    printf '%s' "$(cat "$work/tags.json")" >"$root/v2/$repo/tags/list"
    for name in $(jq -r '.tags[]' "$work/tags.json") "${PROBES[@]}"; do
        jq -jc --arg l "$name" '{name, tags: [.tags[] | select(. > $l)]}' "$work/tags.json" \
            >"$root/v2/$repo/tags/.after/$name"
    done
}

# json FILE: compact, no trailing newline (like a registry would store it)
json() { jq -jc . >"$1"; }

OCI_M=application/vnd.oci.image.manifest.v1+json
OCI_I=application/vnd.oci.image.index.v1+json
DOCKER_M=application/vnd.docker.distribution.manifest.v2+json
DOCKER_L=application/vnd.docker.distribution.manifest.list.v2+json

# ---- docker.io/library/alpine: a real tiny image ------------------------------------------
repo=docker.io/library/alpine
mkdir -p "$work/rootfs/etc"
echo "hello from cstor-fs fake tree" >"$work/rootfs/hello.txt"
echo "fake" >"$work/rootfs/etc/os-release"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
layer=$(add_blob $repo "$work/layer.tar")
lsize=$(stat -c %s "$work/layer.tar")

mkconfig() { # ARCH
    jq -n --arg a "$1" --arg l "$layer" '{
        architecture: $a, os: "linux", created: "1970-01-01T00:00:00Z",
        config: {Cmd: ["/hello.txt"], Env: ["PATH=/"]},
        rootfs: {type: "layers", diff_ids: [$l]},
        history: [{created: "1970-01-01T00:00:00Z", created_by: "fake-tree.sh"}]}' | json "$work/config-$1.json"
}
mkimage() { # ARCH MANIFEST_MT CONFIG_MT LAYER_MT OUT
    local c csize
    c=$(add_blob $repo "$work/config-$1.json")
    csize=$(stat -c %s "$work/config-$1.json")
    jq -n --arg mt "$2" --arg cmt "$3" --arg lmt "$4" --arg c "$c" --argjson cs "$csize" \
        --arg l "$layer" --argjson ls "$lsize" '{
        schemaVersion: 2, mediaType: $mt,
        config: {mediaType: $cmt, digest: $c, size: $cs},
        layers: [{mediaType: $lmt, digest: $l, size: $ls}]}' | json "$5"
}
desc() { # FILE MEDIATYPE ARCH -> descriptor JSON
    jq -nc --arg mt "$2" --arg d "sha256:$(sha "$1")" --argjson s "$(stat -c %s "$1")" --arg a "$3" \
        '{mediaType: $mt, digest: $d, size: $s, platform: {architecture: $a, os: "linux"}}'
}
for arch in amd64 arm64; do
    mkconfig $arch
    mkimage $arch $OCI_M application/vnd.oci.image.config.v1+json application/vnd.oci.image.layer.v1.tar \
        "$work/oci-$arch.json"
    mkimage $arch $DOCKER_M application/vnd.docker.container.image.v1+json \
        application/vnd.docker.image.rootfs.diff.tar "$work/docker-$arch.json"
done
oci_amd64=$(add_manifest $repo oci-manifest "$work/oci-amd64.json")
add_manifest $repo oci-manifest "$work/oci-arm64.json" >/dev/null
docker_amd64=$(add_manifest $repo docker-manifest "$work/docker-amd64.json")
add_manifest $repo docker-manifest "$work/docker-arm64.json" >/dev/null
jq -n --arg mt $OCI_I --argjson a "$(desc "$work/oci-amd64.json" $OCI_M amd64)" \
    --argjson b "$(desc "$work/oci-arm64.json" $OCI_M arm64)" \
    '{schemaVersion: 2, mediaType: $mt, manifests: [$a, $b]}' | json "$work/index.json"
jq -n --arg mt $DOCKER_L --argjson a "$(desc "$work/docker-amd64.json" $DOCKER_M amd64)" \
    --argjson b "$(desc "$work/docker-arm64.json" $DOCKER_M arm64)" \
    '{schemaVersion: 2, mediaType: $mt, manifests: [$a, $b]}' | json "$work/list.json"
index=$(add_manifest $repo oci-index "$work/index.json")
list=$(add_manifest $repo docker-list "$work/list.json")
tag $repo latest "$oci_amd64"
tag $repo edge.oci-index "$oci_amd64"
tag $repo docker "$docker_amd64"
tag $repo multi "$index"
tag $repo multi-docker "$list"
finish_repo $repo

# ---- localhost/app/web: a 3 MiB random blob ------------------------------------------------
repo=localhost/app/web
head -c 3145728 /dev/urandom >"$work/big"
big=$(add_blob $repo "$work/big")
echo '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["'"$big"'"]}}' \
    | json "$work/webcfg.json"
wcfg=$(add_blob $repo "$work/webcfg.json")
for kind in docker-manifest oci-manifest; do
    if [[ $kind == oci-manifest ]]; then
        mt=$OCI_M cmt=application/vnd.oci.image.config.v1+json lmt=application/vnd.oci.image.layer.v1.tar
    else
        mt=$DOCKER_M cmt=application/vnd.docker.container.image.v1+json lmt=application/vnd.docker.image.rootfs.diff.tar
    fi
    jq -n --arg mt $mt --arg cmt $cmt --arg lmt $lmt --arg c "$wcfg" \
        --argjson cs "$(stat -c %s "$work/webcfg.json")" --arg l "$big" --argjson ls 3145728 '{
        schemaVersion: 2, mediaType: $mt,
        config: {mediaType: $cmt, digest: $c, size: $cs},
        layers: [{mediaType: $lmt, digest: $l, size: $ls}]}' | json "$work/web-$kind.json"
done
tag $repo 1.0 "$(add_manifest $repo docker-manifest "$work/web-docker-manifest.json")"
tag $repo 1.1 "$(add_manifest $repo oci-manifest "$work/web-oci-manifest.json")"
finish_repo $repo

# ---- example.com_5000/my-ns/x__y ------------------------------------------------------------
repo=example.com_5000/my-ns/x__y
printf 'tiny layer' >"$work/tiny"
tiny=$(add_blob $repo "$work/tiny")
echo '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' | json "$work/xcfg.json"
xcfg=$(add_blob $repo "$work/xcfg.json")
jq -n --arg mt $OCI_M --arg c "$xcfg" --argjson cs "$(stat -c %s "$work/xcfg.json")" \
    --arg l "$tiny" --argjson ls 10 '{
    schemaVersion: 2, mediaType: $mt,
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]}' \
    | json "$work/x.json"
tag $repo v1 "$(add_manifest $repo oci-manifest "$work/x.json")"
finish_repo $repo

# ---- catalog --------------------------------------------------------------------------------
find "$root/v2" -path '*/tags/list' -printf '%P\n' | sed 's,/tags/list$,,' | sort | jq -R . \
    | jq -jcs '{repositories: .}' >"$root/v2/_catalog"
# ---- pages (n and last), as the fs computes them ---------------------------------------------
python3 - "$root" <<'PY'
import json, os, sys
root = sys.argv[1]
def write(path, names, key, repo):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = {"name": repo, "tags": names} if key == "tags" else {"repositories": names}
    with open(path, "w") as f:
        f.write(json.dumps(body, separators=(",", ":")) + "\n")
def pages(base, names, key, repo=None):
    enc = lambda n: n.replace("/", "%2F")
    for n in sorted({0, 1, 2, 3, 7, len(names)}):
        for last in [None] + names:
            rest = [x for x in names if last is None or x > last]
            comps = last.split("/") if last else []
            up = "../" * (len(comps) + 1)
            if n == 0:
                target = up + ".none"
                write(f"{base}/.none/end", [], key, repo)
            elif len(rest) > n:
                target = f"{up}.to/{n}/{enc(rest[n - 1])}"
                write(f"{base}/.to/{n}/{enc(rest[n - 1])}/{enc(rest[n - 1])}.next", rest[:n], key, repo)
            else:
                e = enc(last) if last else "-"
                target = f"{up}.end/{e}"
                write(f"{base}/.end/{e}/end", rest, key, repo)
            d = os.path.join(base, str(n), *comps)
            os.makedirs(d, exist_ok=True)
            os.symlink(target, os.path.join(d, "@"))
            if len(comps) > 1:  # the same `last` as one component, `/` as %2F (nginx passes it raw)
                d = os.path.join(base, str(n), enc(last))
                os.makedirs(d, exist_ok=True)
                os.symlink(target[len("../" * (len(comps) - 1)):], os.path.join(d, "@"))
catalog = json.load(open(f"{root}/v2/_catalog"))["repositories"]
pages(f"{root}/v2/.catalog", catalog, "repositories")
for repo in catalog:
    tags = json.load(open(f"{root}/v2/{repo}/tags/list"))["tags"]
    pages(f"{root}/v2/{repo}/tags/.page", tags, "tags", repo)
PY
echo "fake tree in $root:"
jq -c . "$root/v2/_catalog"
