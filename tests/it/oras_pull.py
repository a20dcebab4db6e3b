"""Pulls from a cstor-fs registry with the PyPI `oras` library (plain http) and checks
every digest. Usage: python oras_pull.py HOST:PORT OUTDIR [REF...]

For each REF (default localhost/app/web:v1):
- HEAD by tag, the request oras makes to resolve a tag to a digest before it acts on
  it (OrasClient.delete_tag): Docker-Content-Digest must be there and equal sha256 of
  the GET body, Content-Length must match;
- get_manifest by tag and by that digest: same manifest, exact Content-Type;
- tags/list (get_tags) names the tag;
- pull (every layer blob, streamed to files) and download_blob for the config: each
  file's sha256 and size must equal its descriptor's;
- delete_tag must fail because the server refuses DELETE - and not because the HEAD
  lacked Docker-Content-Digest - and the manifest must still be served afterwards.
Prints one line per check; exits 1 on the first mismatch.
"""

import hashlib
import os
import sys

import oras.client
import oras.defaults

MANIFEST_TYPES = {
    oras.defaults.default_manifest_media_type,
    oras.defaults.docker_manifest_media_type,
}


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print(f"ok: {msg}", flush=True)


def file_sha256(path):
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def pull_one(client, host, ref, outdir):
    repo, tag = ref.rsplit(":", 1)
    target = f"{host}/{ref}"
    container = client.get_container(target)
    url = f"{client.prefix}://{container.manifest_url()}"
    accept = ", ".join(oras.defaults.default_manifest_accepted_media_types)

    # The raw manifest as served, to hash.
    get = client.do_request(url, "GET", headers={"Accept": accept})
    check(get.status_code == 200, f"{ref}: GET manifest -> {get.status_code}")
    body = get.content
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    ctype = get.headers.get("Content-Type")
    check(ctype in MANIFEST_TYPES, f"{ref}: manifest Content-Type {ctype!r}")
    check(
        get.headers.get("Docker-Content-Digest") == digest,
        f"{ref}: GET Docker-Content-Digest {get.headers.get('Docker-Content-Digest')} == {digest}",
    )

    # Tag resolution as oras does it (HEAD with an OCI Accept header).
    head = client.do_request(
        url, "HEAD", headers={"Accept": oras.defaults.default_manifest_media_type}
    )
    check(head.status_code == 200, f"{ref}: HEAD manifest -> {head.status_code}")
    check(
        head.headers.get("Docker-Content-Digest") == digest,
        f"{ref}: HEAD Docker-Content-Digest {head.headers.get('Docker-Content-Digest')} == {digest}",
    )
    check(
        head.headers.get("Content-Length") == str(len(body)),
        f"{ref}: HEAD Content-Length {head.headers.get('Content-Length')} == {len(body)}",
    )

    manifest = client.get_manifest(target)
    check(manifest.get("mediaType", ctype) == ctype, f"{ref}: mediaType {manifest.get('mediaType')} matches Content-Type")
    by_digest = client.get_manifest(f"{host}/{repo}@{digest}")
    check(by_digest == manifest, f"{ref}: manifest by digest {digest} equals the one by tag")

    tags = client.get_tags(target)
    check(tag in tags, f"{ref}: tags/list {tags} names {tag}")

    # pull: every layer, streamed to OUTDIR/<digest>.
    layers = manifest.get("layers") or []
    check(len(layers) >= 1, f"{ref}: {len(layers)} layers")
    dest = os.path.join(outdir, repo.replace("/", "_"))
    files = client.pull(target, outdir=dest)
    check(len(files) == len(layers), f"{ref}: pull wrote {len(files)} files for {len(layers)} layers")
    cfg = manifest["config"]
    cfg_file = client.download_blob(container, cfg["digest"], os.path.join(dest, "config"))
    for desc, path in list(zip(layers, files)) + [(cfg, cfg_file)]:
        got, size = file_sha256(path)
        check(got == desc["digest"], f"{ref}: blob {desc['digest']} hashes to {got}")
        check(size == desc["size"], f"{ref}: blob {desc['digest']} has {size} bytes, descriptor {desc['size']}")

    # The only oras call that reads Docker-Content-Digest: it HEADs the tag, then DELETEs
    # the digest. A read-only server must refuse the DELETE.
    try:
        deleted = client.delete_tag(target, tag)
        fail(f"{ref}: delete_tag returned {deleted} (expected the server to refuse DELETE)")
    except RuntimeError as e:
        check("Docker-Content-Digest" not in str(e), f"{ref}: delete_tag refused after resolving the tag: {e}")
    except Exception as e:  # e.g. a non-JSON error body
        check(
            "Docker-Content-Digest" not in str(e),
            f"{ref}: delete_tag refused after resolving the tag ({type(e).__name__}: {e})",
        )
    again = client.do_request(url, "GET", headers={"Accept": accept})
    check(
        again.status_code == 200 and again.content == body,
        f"{ref}: manifest unchanged after the refused DELETE",
    )


def main():
    if len(sys.argv) < 3:
        fail("usage: oras_pull.py HOST:PORT OUTDIR [REF...]")
    host, outdir = sys.argv[1], sys.argv[2]
    refs = sys.argv[3:] or ["localhost/app/web:v1"]
    client = oras.client.OrasClient(hostname=host, insecure=True)
    for ref in refs:
        pull_one(client, host, ref, outdir)
    print("all ok", flush=True)


if __name__ == "__main__":
    main()
