//! Issue #12, the API half: the index page in a real browser (headless Chromium), the
//! referrers API, `n`/`last` paging with `Link`, JSON error bodies, and the read-only checks
//! of the OCI distribution-spec conformance suite, through nginx and Caddy (`cstor-fs serve`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const SBOM: &str = "application/vnd.example.sbom";
/// The error codes of the distribution spec (what a conforming error body may name).
const ERROR_CODES: [&str; 15] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

/// One HTTP exchange done with curl.
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// A distribution-spec error body: JSON, `errors[0].code` one of the spec's codes.
    fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.status);
        let code = self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_string();
        code
    }
}

fn http(method: &str, url: &str, headers: &[&str]) -> Resp {
    let tmp = TempDir::new("curl");
    let (h, b) = (tmp.path().join("h"), tmp.path().join("b"));
    let mut c = Command::new("curl");
    c.args(["-sS", "--path-as-is", "--max-time", "60", "-o"]).arg(&b).arg("-D").arg(&h).args(["-w", "%{http_code}"]);
    if method == "HEAD" {
        c.arg("--head");
    } else {
        c.args(["-X", method]);
    }
    for x in headers {
        c.args(["-H", x]);
    }
    let out = run(c.arg(url));
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mut map = BTreeMap::new();
    for line in std::fs::read_to_string(&h).unwrap().lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let body = if method == "HEAD" { Vec::new() } else { std::fs::read(&b).unwrap_or_default() };
    Resp { status, headers: map, body }
}

fn get(url: &str) -> Resp {
    http("GET", url, &[])
}

fn sha256_of(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// An image made of one uncompressed layer holding `files`, stored with `skopeo copy
/// dir:` so that its manifest (with `subject`, `artifactType`, annotations) is kept verbatim.
fn copy_in(store: &MiniStore, name: &str, files: &[(&str, &[u8])], extra: serde_json::Value) -> (String, Vec<u8>) {
    let dir = store.root().join(format!("dir-{}", name.replace(['/', ':'], "_")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    let layer = b.into_inner().unwrap();
    let layer_d = sha256_of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_d]},
    }))
    .unwrap();
    let config_d = sha256_of(&config);
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer.len()}],
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    let manifest = serde_json::to_vec(&m).unwrap();
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    std::fs::write(dir.join(&layer_d[7..]), &layer).unwrap();
    std::fs::write(dir.join(&config_d[7..]), &config).unwrap();
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    let src = format!("dir:{}", dir.display());
    let dst = format!("containers-storage:{name}");
    run(&mut store.tool("skopeo", &["--insecure-policy", "copy", "--quiet", &src, &dst]));
    (sha256_of(&manifest), manifest)
}

/// What the referrers store holds.
struct Refs {
    store: MiniStore,
    repo: &'static str,
    /// app:v1, the subject of `sbom` and `sig`.
    subject: String,
    /// (digest, bytes) of the referrers.
    sbom: (String, Vec<u8>),
    sig: (String, Vec<u8>),
    orphan: (String, Vec<u8>),
    /// The subject of `orphan`: not in the store.
    missing: String,
    tags: Vec<String>,
}

fn referrers_store() -> Refs {
    let store = MiniStore::new("overlay");
    store.import("localhost/app:v1", &[("etc/os-release", b"ID=subject\n")]);
    // More repositories, for catalog paging.
    store.import("localhost/other/deep:1", &[("a", b"a")]);
    store.import("localhost/zz:1", &[("b", b"b")]);
    let raw = run(&mut store.tool("skopeo", &["inspect", "--raw", "containers-storage:localhost/app:v1"])).stdout;
    let subject = sha256_of(&raw);
    let desc = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": raw.len()});
    let sbom = copy_in(
        &store,
        "localhost/app:sbom",
        &[("sbom.json", b"{\"sbom\":1}")],
        serde_json::json!({"artifactType": SBOM, "subject": desc, "annotations": {"org.example.kind": "sbom"}}),
    );
    // No artifactType: the config's media type stands for it.
    let sig = copy_in(
        &store,
        "localhost/app:sig",
        &[("sig", b"signature")],
        serde_json::json!({"subject": desc, "annotations": {"org.example.kind": "sig"}}),
    );
    let missing = sha256_of(b"a manifest that is not in the store");
    let orphan = copy_in(
        &store,
        "localhost/app:orphan",
        &[("sbom.json", b"{\"sbom\":2}")],
        serde_json::json!({"artifactType": SBOM, "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 9}}),
    );
    // Mixed case, as the conformance suite's tags.
    run(&mut store.tool("podman", &["tag", "localhost/app:v1", "localhost/app:TEST0", "localhost/app:test0"]));
    let mut tags: Vec<String> =
        ["v1", "sbom", "sig", "orphan", "TEST0", "test0"].iter().map(|s| s.to_string()).collect();
    tags.sort();
    Refs { store, repo: "localhost/app", subject, sbom, sig, orphan, missing, tags }
}

/// The descriptor of `manifest` in a referrers answer.
fn descriptor(list: &serde_json::Value, digest: &str) -> serde_json::Value {
    list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} not in {list}"))
        .clone()
}

fn referrers_answer(r: &Resp, what: &str) -> serde_json::Value {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{what}");
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2, "{what}");
    assert_eq!(v["mediaType"], OCI_INDEX, "{what}");
    assert!(v["manifests"].is_array(), "{what}");
    v
}

fn digests(v: &serde_json::Value) -> Vec<String> {
    let mut d: Vec<String> =
        v["manifests"].as_array().unwrap().iter().map(|d| d["digest"].as_str().unwrap().to_string()).collect();
    d.sort();
    d
}

fn check_referrers(url: &str, r: &Refs) {
    let base = format!("{url}/v2/{}/referrers", r.repo);
    // Everything that refers to app:v1, with the descriptors the spec asks for.
    let all = referrers_answer(&get(&format!("{base}/{}", r.subject)), "referrers of app:v1");
    let mut want = vec![r.sbom.0.clone(), r.sig.0.clone()];
    want.sort();
    assert_eq!(digests(&all), want);
    let sbom = descriptor(&all, &r.sbom.0);
    assert_eq!(sbom["mediaType"], OCI_MANIFEST);
    assert_eq!(sbom["size"], r.sbom.1.len());
    assert_eq!(sbom["artifactType"], SBOM);
    assert_eq!(sbom["annotations"], serde_json::json!({"org.example.kind": "sbom"}));
    let sig = descriptor(&all, &r.sig.0);
    assert_eq!(sig["size"], r.sig.1.len());
    assert_eq!(sig["artifactType"], OCI_CONFIG, "no artifactType: the config's media type");
    assert_eq!(sig["annotations"]["org.example.kind"], "sig");
    assert!(get(&format!("{base}/{}", r.subject)).header("oci-filters-applied").is_none());
    let head = http("HEAD", &format!("{base}/{}", r.subject), &[]);
    assert_eq!((head.status, head.header("content-type")), (200, Some(OCI_INDEX)));

    // Filtered by artifactType, however the client encodes it.
    for (q, want) in [
        (format!("artifactType={SBOM}"), vec![r.sbom.0.clone()]),
        ("artifactType=application%2Fvnd.example.sbom".to_string(), vec![r.sbom.0.clone()]),
        ("artifactType=application%2Fvnd.oci.image.config.v1%2Bjson".to_string(), vec![r.sig.0.clone()]),
        ("artifactType=application/vnd.oci.image.config.v1%2Bjson".to_string(), vec![r.sig.0.clone()]),
        ("artifactType=application/x-nothing".to_string(), vec![]),
    ] {
        let resp = get(&format!("{base}/{}?{q}", r.subject));
        let v = referrers_answer(&resp, &q);
        assert_eq!(digests(&v), want, "{q}");
        assert_eq!(resp.header("oci-filters-applied"), Some("artifactType"), "{q}");
    }
    // A subject that is not in the store still lists what refers to it.
    let v = referrers_answer(&get(&format!("{base}/{}", r.missing)), "referrers of a missing subject");
    assert_eq!(digests(&v), vec![r.orphan.0.clone()]);
    assert_eq!(descriptor(&v, &r.orphan.0)["artifactType"], SBOM);
    // Nothing refers to it, an unknown repository, another algorithm: 200 and empty, never 404.
    for p in [
        format!("{base}/{}", sha256_of(b"hello world")),
        format!("{base}/{}?artifactType={SBOM}", sha256_of(b"hello world")),
        format!("{url}/v2/localhost/no-such-repo/referrers/{}", r.subject),
        format!("{base}/sha512:{}", "ab".repeat(64)),
    ] {
        let v = referrers_answer(&get(&p), &p);
        assert_eq!(v["manifests"], serde_json::json!([]), "{p}");
    }
    // Not a digest, not a media type: 400 with a JSON error.
    for (p, code) in [
        (format!("{base}/sha256:short"), "DIGEST_INVALID"),
        (format!("{base}/latest"), "DIGEST_INVALID"),
        (format!("{base}/{}?artifactType=not-a-type", r.subject), "UNSUPPORTED"),
    ] {
        let resp = get(&p);
        assert_eq!(resp.status, 400, "{p}");
        assert_eq!(resp.error_code(), code, "{p}");
    }
    // The referrers are served like any manifest, bytes as stored.
    for (d, bytes) in [&r.sbom, &r.sig, &r.orphan] {
        let m = get(&format!("{url}/v2/{}/manifests/{d}", r.repo));
        assert_eq!(m.status, 200);
        assert_eq!(&m.body, bytes, "{d} served verbatim");
    }
}

/// `n` and `last` with `Link`, walked page by page as a client follows the header.
fn walk_pages(url: &str, first: &str, key: &str) -> (Vec<String>, usize) {
    let mut next = Some(first.to_string());
    let mut out = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = get(&format!("{url}{path}"));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        out.extend(r.json()[key].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
        pages += 1;
        assert!(pages < 100, "paging does not end");
        if let Some(link) = r.header("link") {
            let (u, rel) = link.split_once(">; ").unwrap_or_else(|| panic!("Link: {link}"));
            assert_eq!(rel, "rel=\"next\"", "{link}");
            next = Some(u.trim_start_matches('<').to_string());
        }
    }
    (out, pages)
}

fn check_paging(url: &str, repo: &str, tags: &[String], catalog: &[String]) {
    for n in 1..=tags.len() + 1 {
        let (got, pages) = walk_pages(url, &format!("/v2/{repo}/tags/list?n={n}"), "tags");
        assert_eq!(got, tags, "n={n}");
        assert_eq!(pages, tags.len().div_ceil(n).max(1), "n={n}: pages");
    }
    for n in [1, 2, catalog.len()] {
        let (got, _) = walk_pages(url, &format!("/v2/_catalog?n={n}"), "repositories");
        assert_eq!(got, catalog, "catalog n={n}");
    }
    // n=0: empty, no Link; last without n: everything after it.
    let r = get(&format!("{url}/v2/{repo}/tags/list?n=0"));
    assert_eq!((r.status, r.json()["tags"].clone()), (200, serde_json::json!([])));
    assert!(r.header("link").is_none());
    let r = get(&format!("{url}/v2/_catalog?n=0"));
    assert_eq!((r.status, r.json()["repositories"].clone()), (200, serde_json::json!([])));
    assert!(r.header("link").is_none());
    let r = get(&format!("{url}/v2/{repo}/tags/list?n=2&last={}", tags[tags.len() - 2]));
    assert_eq!(r.json()["tags"], serde_json::json!([tags[tags.len() - 1]]));
    assert!(r.header("link").is_none(), "nothing remains");
    let r = get(&format!("{url}/v2/_catalog?last={}", catalog[0]));
    assert_eq!(r.json()["repositories"], serde_json::json!(catalog[1..]));
    let enc = catalog[0].replace('/', "%2F");
    let r = get(&format!("{url}/v2/_catalog?n=1&last={enc}"));
    assert_eq!(r.json()["repositories"], serde_json::json!(catalog[1..2]), "last with %2F");
    for p in [format!("/v2/{repo}/tags/list?n=x"), format!("/v2/{repo}/tags/list?n=-1"), "/v2/_catalog?n=1x".into()] {
        let r = get(&format!("{url}{p}"));
        assert_eq!(r.status, 400, "{p}");
        assert!(ERROR_CODES.contains(&r.error_code().as_str()) || r.error_code() == "PAGINATION_NUMBER_INVALID");
    }
    let r = get(&format!("{url}/v2/localhost/no-such-repo/tags/list?n=1"));
    assert_eq!((r.status, r.error_code().as_str()), (404, "NAME_UNKNOWN"));
}

/// Every check the conformance suite (opencontainers/distribution-spec `conformance/`: the
/// pull and content-discovery workflows of the 1.1 suite, and the ping, empty, tag-list,
/// head, pull, referrers and manifest-error tests of the redesigned one) makes of a
/// read-only registry with preloaded data: repository `repo`, a tag, its manifest and a blob.
fn conformance(url: &str, repo: &str, tag: &str, manifest: &str, blob: &str) {
    let v2 = format!("{url}/v2/{repo}");
    let nonexistent = sha256_of(b"hello world");
    // ping
    assert_eq!(get(&format!("{url}/v2/")).status, 200, "ping");
    // blobs: HEAD and GET, missing and present (digest header, when sent, must match)
    for m in ["HEAD", "GET"] {
        assert_eq!(http(m, &format!("{v2}/blobs/{nonexistent}"), &[]).status, 404, "{m} missing blob");
        let r = http(m, &format!("{v2}/blobs/{blob}"), &[]);
        assert_eq!(r.status, 200, "{m} blob");
        if let Some(d) = r.header("docker-content-digest") {
            assert_eq!(d, blob);
        }
        if m == "GET" {
            assert_eq!(sha256_of(&r.body), blob, "blob body");
            assert_eq!(r.header("content-length").unwrap(), r.body.len().to_string());
        } else {
            assert!(r.body.is_empty());
        }
    }
    // manifests: HEAD and GET by digest and by tag, with the suite's Accept headers
    let accept = [format!("Accept: {OCI_INDEX}"), format!("Accept: {OCI_MANIFEST}")];
    let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
    let body = get(&format!("{v2}/manifests/{manifest}")).body;
    // As the suite detects it: the mediaType field, else an image manifest (an index if
    // it has `manifests`).
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).unwrap();
    let media_type = match (&parsed["mediaType"], parsed.get("manifests")) {
        (serde_json::Value::String(t), _) => serde_json::Value::String(t.clone()),
        (_, Some(_)) => serde_json::Value::String(OCI_INDEX.into()),
        _ => serde_json::Value::String(OCI_MANIFEST.into()),
    };
    for m in ["HEAD", "GET"] {
        for r in [manifest, tag] {
            let resp = http(m, &format!("{v2}/manifests/{r}"), &accept);
            assert_eq!(resp.status, 200, "{m} manifest {r}");
            if let Some(d) = resp.header("docker-content-digest") {
                assert_eq!(d, manifest, "{m} {r}");
            }
            assert_eq!(Some(resp.header("content-type").unwrap()), media_type.as_str(), "{m} {r}");
            assert_eq!(resp.header("content-length").unwrap(), body.len().to_string());
            if m == "GET" {
                assert_eq!(resp.body, body);
                assert_eq!(sha256_of(&resp.body), manifest);
            }
        }
        for missing in [".INVALID_MANIFEST_NAME".to_string(), "missing-abcdefghij".into(), sha256_of(b"random")] {
            assert_eq!(http(m, &format!("{v2}/manifests/{missing}"), &accept).status, 404, "{m} {missing}");
        }
    }
    // a malformed digest: 400 (with a spec error code) or 404
    for bad in ["sha256:totallywrong", "sha256:baddigeststring"] {
        let r = http("GET", &format!("{v2}/manifests/{bad}"), &[&format!("Content-Type: {OCI_MANIFEST}")]);
        assert!(r.status == 400 || r.status == 404, "{bad}: {}", r.status);
        if r.status == 400 {
            assert!(ERROR_CODES.contains(&r.error_code().as_str()), "{bad}");
        }
    }
    // tags/list: sorted; n limits; last starts after the given tag
    let tags: Vec<String> = get(&format!("{v2}/tags/list")).json()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let mut ascii = tags.clone();
    ascii.sort();
    assert_eq!(tags, ascii, "tags sorted");
    assert!(tags.len() >= 4, "enough tags to page");
    assert!(tags.contains(&tag.to_string()));
    let half = tags.len() / 2;
    let page = get(&format!("{v2}/tags/list?n={half}")).json();
    assert_eq!(page["tags"].as_array().unwrap().len(), half, "n");
    let last = page["tags"][half - 1].as_str().unwrap().to_string();
    let after = get(&format!("{v2}/tags/list?n={half}&last={last}")).json();
    let after: Vec<&str> = after["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(after.len() <= half && !after.contains(&last.as_str()), "n and last");
    let rest = get(&format!("{v2}/tags/list?last={}", ascii[half - 1])).json();
    let rest: Vec<&str> = rest["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(rest, ascii[half..].iter().map(String::as_str).collect::<Vec<_>>(), "last");
    // referrers: a digest nothing refers to answers an empty index
    for subject in [nonexistent, sha256_of(b"random subject")] {
        let r = get(&format!("{v2}/referrers/{subject}"));
        let v = referrers_answer(&r, "empty referrers");
        assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
    }
    // teardown: deletes are refused (405), never a 2xx
    assert_eq!(http("DELETE", &format!("{v2}/manifests/{manifest}"), &[]).status, 405);
    assert_eq!(http("DELETE", &format!("{v2}/blobs/{blob}"), &[]).status, 405);
}

fn check_sh(s: &Daemon) {
    let out = Command::new(repo_root().join("tests/http/check.sh")).arg(s.mnt()).arg(s.url()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(" 0 failed"), "check.sh against {}:\n{text}", s.label());
}

fn referrers_paging_and_conformance(server: &'static str) {
    let r = referrers_store();
    let s = Daemon::serve(&r.store.storage, server);
    let url = s.url();
    check_referrers(&url, &r);
    let catalog: Vec<String> = get(&format!("{url}/v2/_catalog")).json()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    check_paging(&url, r.repo, &r.tags, &catalog);
    let manifest = std::fs::read_link(s.mnt().join("v2/localhost/app/manifests/v1")).unwrap();
    let manifest = manifest.to_str().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&get(&format!("{url}/v2/{}/manifests/v1", r.repo)).body).unwrap();
    conformance(&url, r.repo, "v1", manifest, m["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest, r.subject, "app:v1 is served verbatim");
    check_sh(&s);
    // The page and the pages follow the store at once (zero TTL, as tags).
    run(&mut r.store.tool("podman", &["tag", "localhost/app:v1", "localhost/app:zz-new"]));
    wait_for("the new tag on the index page", std::time::Duration::from_secs(20), || {
        String::from_utf8_lossy(&get(&format!("{url}/")).body).contains("/localhost/app:zz-new</code>")
    });
    let last = r.tags.last().unwrap();
    let page = get(&format!("{url}/v2/{}/tags/list?n=1&last={last}", r.repo));
    assert_eq!(page.json()["tags"], serde_json::json!(["zz-new"]));
}

#[test]
fn nginx_referrers_paging_and_conformance() {
    referrers_paging_and_conformance("nginx");
}

#[test]
fn caddy_referrers_paging_and_conformance() {
    referrers_paging_and_conformance("caddy");
}

/// The full fixture (lists, rewritten and verbatim manifests) passes the conformance checks.
#[test]
fn fixture_meets_the_conformance_checks_through_nginx_and_caddy() {
    let fx = Fixture::shared("overlay");
    for server in ["nginx", "caddy"] {
        let s = Daemon::serve(&fx.storage, server);
        let repo = "localhost/app/web";
        let d = std::fs::read_link(s.mnt().join(format!("v2/{repo}/manifests/v1"))).unwrap();
        let blobs: Vec<_> = std::fs::read_dir(s.mnt().join(format!("v2/{repo}/blobs"))).unwrap().collect();
        let blob = blobs[0].as_ref().unwrap().file_name();
        // app/web has two tags: the paging checks need more, so only the rest here.
        let v2 = format!("{}/v2/{repo}", s.url());
        for m in ["HEAD", "GET"] {
            let r = http(m, &format!("{v2}/manifests/v1"), &[]);
            assert_eq!(r.header("docker-content-digest"), d.to_str(), "{server}");
            let r = http(m, &format!("{v2}/blobs/{}", blob.to_str().unwrap()), &[]);
            assert_eq!(r.status, 200, "{server}");
        }
        let r = get(&format!("{v2}/referrers/{}", d.to_str().unwrap()));
        assert_eq!(referrers_answer(&r, server)["manifests"], serde_json::json!([]));
    }
}

/// 416 and read errors are JSON error bodies too (known gaps: Caddy's 416 is Go's
/// text/plain, and Caddy reports a file that fails to open with EIO as a 404).
#[test]
fn server_errors_have_json_bodies() {
    let store = MiniStore::new("overlay");
    store.import("localhost/broken:1", &[("f", b"some bytes")]);
    for server in ["nginx", "caddy"] {
        let s = Daemon::serve(&store.storage, server);
        let repo = s.mnt().join("v2/localhost/broken/blobs");
        let layer =
            std::fs::read_dir(&repo).unwrap().map(|e| e.unwrap()).max_by_key(|e| e.metadata().unwrap().len()).unwrap();
        let (name, size) = (layer.file_name().into_string().unwrap(), layer.metadata().unwrap().len());
        let url = format!("{}/v2/localhost/broken/blobs/{name}", s.url());
        let r = http("GET", &url, &[&format!("Range: bytes={size}-")]);
        assert_eq!(r.status, 416, "{server}");
        if server == "nginx" {
            assert_eq!(r.error_code(), "UNSUPPORTED");
        }
        drop(s);
    }
    // A layer whose files vanished under a live mount (its index is cached since the
    // mount's first check): opening the blob fails with EIO, the server says 5xx.
    for server in ["nginx", "caddy"] {
        let s = Daemon::serve(&store.storage, server);
        let repo = s.mnt().join("v2/localhost/broken/blobs");
        let layer = std::fs::read_dir(&repo)
            .unwrap()
            .map(|e| e.unwrap())
            .max_by_key(|e| e.metadata().unwrap().len())
            .unwrap()
            .file_name()
            .into_string()
            .unwrap();
        // An imported layer's id is its diff digest.
        let dir = store.storage.join("overlay").join(&layer[7..]);
        let moved = store.storage.join("overlay").join("moved-away");
        std::fs::rename(&dir, &moved).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let r = get(&format!("{}/v2/localhost/broken/blobs/{layer}", s.url()));
        std::fs::rename(&moved, &dir).unwrap();
        // nginx: 500. Caddy 2.6 turns any open error of a regular file into 404 (its
        // mapDirOpenError stats the path, finds a file, says "not exist"): still JSON.
        let want = if server == "nginx" { 500 } else { 404 };
        assert_eq!(r.status, want, "{server}: {}", String::from_utf8_lossy(&r.body));
        let code = r.error_code();
        assert!(code == "UNKNOWN" || ERROR_CODES.contains(&code.as_str()), "{server}: {code}");
        assert!(r.header("docker-content-digest").is_none() && r.header("cache-control").is_none(), "{server}");
    }
}

/// `html` without its tags.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Where a test leaves files to look at (screenshots).
fn output_dir(test: &str) -> PathBuf {
    let d = repo_root().join("target/it-output").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chromium(args: &[&str], url: &str, profile: &Path) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is installed (apt-get install chromium; .ci/setup does)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The index page, loaded in headless Chromium from nginx and Caddy: every repository,
/// tag and digest is there, the pull commands name the address the page came from (its
/// script ran), and a screenshot is left in target/it-output/ to look at.
#[test]
fn index_page_in_chromium() {
    let fx = Fixture::shared("overlay");
    let out = output_dir("index_page_in_chromium");
    for server in ["nginx", "caddy"] {
        let s = Daemon::serve(&fx.storage, server);
        let url = format!("{}/", s.url());
        let r = get(&url);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{server}");
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert_eq!(get(&format!("{}/index.html", s.url())).body, r.body);

        let profile = TempDir::new("chrome");
        let dom = String::from_utf8(chromium(&["--dump-dom"], &url, profile.path()).stdout).unwrap();
        std::fs::write(out.join(format!("{server}.html")), &dom).unwrap();
        assert!(dom.contains("<h1>cstor-fs registry</h1>"), "{server}: {dom}");
        let reg = s.addr();
        assert!(!dom.contains(">HOST<"), "{server}: the script did not fill in the host");
        // The text as shown (tags dropped: the host is a <span> of its own).
        let text = strip_tags(&dom);
        assert!(text.contains(&format!("podman pull --tls-verify=false {reg}/localhost/app/web:v1")), "{server}");
        assert!(text.contains(&format!("bootc switch {reg}/localhost/app/web:v1")));
        assert!(text.contains(&format!("docker pull {reg}/localhost/app/web:v1")));
        assert!(text.contains(&format!("docker://{reg}/localhost/app/web:v1")));
        let mnt = s.mnt();
        let catalog: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mnt.join("v2/_catalog")).unwrap()).unwrap();
        for repo in catalog["repositories"].as_array().unwrap() {
            let repo = repo.as_str().unwrap();
            assert!(dom.contains(&format!("<h2>{repo}</h2>")), "{server}: {repo}");
            let tags: serde_json::Value =
                serde_json::from_slice(&std::fs::read(mnt.join(format!("v2/{repo}/tags/list"))).unwrap()).unwrap();
            for tag in tags["tags"].as_array().unwrap() {
                let t = tag.as_str().unwrap();
                let d = std::fs::read_link(mnt.join(format!("v2/{repo}/manifests/{t}"))).unwrap();
                assert!(dom.contains(d.to_str().unwrap()), "{server}: {repo}:{t} digest");
                assert!(text.contains(&format!("{reg}/{repo}:{t}")), "{server}: {repo}:{t} pull");
            }
        }
        for word in ["(verbatim)", "(rewritten)", "linux/amd64, linux/arm64", OCI_INDEX, "created", " MB ("] {
            assert!(text.contains(word), "{server}: {word}");
        }

        let png = out.join(format!("{server}.png"));
        let shot = format!("--screenshot={}", png.display());
        chromium(&[&shot, "--window-size=1280,2400", "--hide-scrollbars"], &url, profile.path());
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "{server}: screenshot");
    }
}
