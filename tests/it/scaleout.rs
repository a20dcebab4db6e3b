//! Issue #16: many pullers. cstor-fs stays the origin; proven engines go in front:
//! an nginx edge cache (`nginx/edge.conf`) and a pull-through mirror (distribution's
//! `docker-registry` with `mirror/config.yml`). Real origin (a cstor-fs mount served by
//! the repository's nginx config, with an access log to count what the origin served),
//! real caches, real skopeo/podman pulls checked byte for byte.
//!
//! The origin is plain HTTP; the TLS + basic-auth origin (`serve --tls/--htpasswd`) is
//! not tested here yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The path of `tool`, or a panic naming the package: a missing tool fails the test.
fn need(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed (apt-get install {package}); this test needs it"))
}

/// A response as curl saw it: status, lower-cased headers, body.
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn curl(url: &str, extra: &[&str]) -> Resp {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "60", "-H", &format!("Accept: {MANIFEST_TYPES}")]).args(extra).arg(url);
    let raw = run(&mut cmd).stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{url}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp { status, headers, body: raw[split + 4..].to_vec() }
}

fn get(url: &str) -> Resp {
    curl(url, &[])
}

/// The test's own requests to the origin come from 127.0.0.2, so that the origin's
/// access log tells them from the cache's (127.0.0.1).
const DIRECT: [&str; 2] = ["--interface", "127.0.0.2"];

fn direct(url: &str) -> Resp {
    curl(url, &DIRECT)
}

/// An nginx run from a private prefix directory; stopped on drop.
struct Nginx {
    daemon: Option<Daemon>,
    addr: String,
}

impl Nginx {
    /// Writes `files` (name, text) into `prefix` and runs `nginx -c prefix/<main>`.
    fn start(prefix: &Path, main: &str, files: &[(&str, String)], addr: &str) -> Nginx {
        let bin = need("nginx", "nginx");
        std::fs::create_dir_all(prefix).unwrap();
        for (name, text) in files {
            std::fs::write(prefix.join(name), text).unwrap();
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(prefix.join(main))
            .arg("-p")
            .arg(format!("{}/", prefix.display()))
            .args(["-g", "daemon off;"]);
        let mut daemon = Daemon::spawn(&format!("nginx on {addr}"), cmd, Some(prefix.join("stderr.log")));
        let url = format!("http://{addr}/v2/");
        daemon.wait_ready(&format!("nginx on {addr}"), Duration::from_secs(20), |_| {
            // Any HTTP answer: an edge whose origin is down answers 502.
            http_status(&url) != 0
        });
        Nginx { daemon: Some(daemon), addr: addr.to_string() }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }
}

/// The origin: a cstor-fs mount served by the repository's nginx config, access log on.
struct Origin {
    nginx: Option<Nginx>,
    mount: Daemon,
    dir: TempDir,
    addr: String,
}

impl Origin {
    fn start(storage: &Path) -> Origin {
        let mount = Daemon::mount(storage, "allow_other");
        let dir = TempDir::new("origin");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut o = Origin { nginx: None, mount, dir, addr };
        o.restart();
        o
    }

    /// (Re)starts the origin's nginx; the access log keeps growing.
    fn restart(&mut self) {
        let main = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).unwrap();
        let main = main.replace("access_log off;", "access_log access.log;");
        assert!(main.contains("access_log access.log;"), "nginx/nginx.conf: no `access_log off;` to turn on");
        let mnt = self.mount.dir().to_string_lossy().to_string();
        let server = std::fs::read_to_string(repo_root().join("nginx/cstor-fs.conf"))
            .unwrap()
            .replace("@MOUNT@", &mnt)
            .replace("@LISTEN@", &self.addr);
        let prefix = self.dir.path().join("nginx");
        self.nginx =
            Some(Nginx::start(&prefix, "nginx.conf", &[("nginx.conf", main), ("cstor-fs.conf", server)], &self.addr));
    }

    fn stop(&mut self) {
        if let Some(mut n) = self.nginx.take() {
            n.stop();
        }
        assert_eq!(http_status(&format!("http://{}/v2/", self.addr)), 0, "origin still answering");
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests for exactly `path` the origin answered from 127.0.0.1 (the
    /// caches in front; the test's own requests come from 127.0.0.2).
    fn hits(&self, path: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("nginx/access.log")).unwrap_or_default();
        let needle = format!(" {path} HTTP/");
        log.lines().filter(|l| l.starts_with("127.0.0.1 ") && l.contains(&needle)).count()
    }
}

/// An nginx edge cache from nginx/edge.conf + nginx/edge-nginx.conf in front of `upstream`.
fn start_edge(upstream: &str, dir: &Path) -> Nginx {
    let addr = format!("127.0.0.1:{}", free_port());
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    // Workers run as nobody when nginx starts as root.
    run(Command::new("chown").arg("nobody:nogroup").arg(&cache));
    let conf = std::fs::read_to_string(repo_root().join("nginx/edge.conf"))
        .unwrap()
        .replace("@UPSTREAM@", upstream)
        .replace("@LISTEN@", &addr)
        .replace("@CACHE@", cache.to_str().unwrap());
    assert!(!conf.contains('@'), "edge.conf has a placeholder left: {conf}");
    let main = std::fs::read_to_string(repo_root().join("nginx/edge-nginx.conf")).unwrap();
    Nginx::start(&dir.join("edge"), "edge-nginx.conf", &[("edge-nginx.conf", main), ("edge.conf", conf)], &addr)
}

/// Deterministic, incompressible-looking bytes (xorshift), so Range checks mean something.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A private store with localhost/scale/app:v1 and :v2 (one 6 MiB layer each) and
/// localhost/scale/other:v1 (to move a tag to).
fn scale_store() -> MiniStore {
    let store = MiniStore::new("overlay");
    let big1 = noise(1, 6 << 20);
    let big2 = noise(2, 6 << 20);
    store.import("localhost/scale/app:v1", &[("data/big.bin", &big1), ("etc/version", b"1\n")]);
    store.import("localhost/scale/app:v2", &[("data/big.bin", &big2), ("etc/version", b"2\n")]);
    store.import("localhost/scale/other:v1", &[("etc/version", b"other\n")]);
    store
}

/// (manifest digest, [config, layers...]) of `repo:reference` as the origin serves it.
fn manifest_and_blobs(base: &str, repo: &str, reference: &str) -> (String, Vec<String>) {
    let r = direct(&format!("{base}/v2/{repo}/manifests/{reference}"));
    assert_eq!(r.status, 200, "{base} {repo}:{reference}: {}", String::from_utf8_lossy(&r.body));
    let digest = format!("sha256:{}", sha256_hex(&r.body));
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut blobs = vec![json["config"]["digest"].as_str().unwrap().to_string()];
    blobs.extend(json["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    (digest, blobs)
}

/// The largest of `blobs` (at the origin) and its size.
fn largest(base: &str, repo: &str, blobs: &[String]) -> (String, u64) {
    blobs
        .iter()
        .map(|b| {
            let r = curl(&format!("{base}/v2/{repo}/blobs/{b}"), &["-I", DIRECT[0], DIRECT[1]]);
            (b.clone(), r.header("content-length").unwrap().parse::<u64>().unwrap())
        })
        .max_by_key(|(_, n)| *n)
        .unwrap()
}

/// Same status, body and registry headers at the edge as at the origin.
fn same_as_origin(origin: &str, edge: &str, path: &str) -> Resp {
    let o = direct(&format!("{origin}{path}"));
    let e = get(&format!("{edge}{path}"));
    assert_eq!(o.status, 200, "origin {path}");
    assert_eq!(e.status, 200, "edge {path}");
    assert!(e.body == o.body, "edge {path}: body differs from the origin's");
    let by_digest = path.contains("/blobs/") || path.contains("/manifests/");
    for h in ["content-type", "docker-content-digest", "content-length", "cache-control"] {
        let required = h != "docker-content-digest" || by_digest;
        assert!(!required || o.header(h).is_some(), "origin {path}: no {h}");
        assert_eq!(e.header(h), o.header(h), "edge {path}: {h}");
    }
    e
}

/// skopeo copies `reference` from `registry` to a dir and checks every blob's sha256.
fn skopeo_copy_checked(store: &MiniStore, registry: &str, reference: &str, dst: &Path) {
    let src = format!("docker://{registry}/{reference}");
    let d = format!("dir:{}", dst.display());
    run(&mut store.tool("skopeo", &["copy", "--quiet", "--src-tls-verify=false", &src, &d]));
    let mut n = 0;
    for e in std::fs::read_dir(dst).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.len() == 64 {
            assert_eq!(sha256_file(&p), name, "{src}: blob {name}");
            n += 1;
        }
    }
    assert!(n >= 2, "{src}: {n} blobs");
}

/// edge.conf caches tags for 10 s; nginx counts in whole seconds and expires an entry
/// once the clock is past it, so up to 11 s, plus a margin.
const TAG_TTL: Duration = Duration::from_millis(12_000);

fn cache_status(r: &Resp) -> &str {
    r.header("x-cache-status").unwrap_or("")
}

#[test]
fn edge_cache_serves_pulls_once_from_the_origin_ranges_and_stale_digests() {
    let store = scale_store();
    let mut origin = Origin::start(&store.storage);
    let tmp = TempDir::new("edge");
    let edge = start_edge(&origin.addr, tmp.path());
    let (o, e) = (origin.url(), edge.url());
    let repo = "localhost/scale/app";

    // Headers and bytes as the origin's: manifests by tag and digest, config, layers.
    let (m1, blobs1) = manifest_and_blobs(&o, repo, "v1");
    let r = same_as_origin(&o, &e, &format!("/v2/{repo}/manifests/v1"));
    assert_eq!(r.header("docker-content-digest"), Some(m1.as_str()));
    same_as_origin(&o, &e, &format!("/v2/{repo}/manifests/{m1}"));
    for b in &blobs1 {
        same_as_origin(&o, &e, &format!("/v2/{repo}/blobs/{b}"));
        let again = get(&format!("{e}/v2/{repo}/blobs/{b}"));
        assert_eq!(cache_status(&again), "HIT", "{b}");
    }
    let r = same_as_origin(&o, &e, &format!("/v2/{repo}/tags/list"));
    assert!(String::from_utf8_lossy(&r.body).contains("\"v2\""));

    // Range on an uncached blob (v2's layer): 206 with the right bytes, and the origin
    // is asked once for the whole blob.
    let (m2, blobs2) = manifest_and_blobs(&o, repo, "v2");
    let (layer2, size2) = largest(&o, repo, &blobs2);
    let full2 = direct(&format!("{o}/v2/{repo}/blobs/{layer2}")).body;
    let path2 = format!("/v2/{repo}/blobs/{layer2}");
    let before = origin.hits(&path2);
    for (i, (a, b)) in [(1_000_000u64, 1_999_999u64), (0, 0), (size2 - 4096, size2 - 1)].into_iter().enumerate() {
        let r = curl(&format!("{e}{path2}"), &["-H", &format!("Range: bytes={a}-{b}")]);
        assert_eq!(r.status, 206, "range {a}-{b} ({})", cache_status(&r));
        assert_eq!(r.header("content-range"), Some(format!("bytes {a}-{b}/{size2}").as_str()));
        assert!(r.body == full2[a as usize..=b as usize], "range {a}-{b}: wrong bytes");
        assert_eq!(r.header("docker-content-digest"), Some(layer2.as_str()));
        if i == 0 {
            assert_eq!(cache_status(&r), "MISS");
        } else {
            assert_eq!(cache_status(&r), "HIT", "range {a}-{b} on the cached blob");
        }
    }
    assert_eq!(origin.hits(&path2) - before, 1, "origin asked more than once for {path2}");

    // Concurrent misses collapse: 12 clients at once, one origin request.
    let (m_other, blobs_other) = manifest_and_blobs(&o, "localhost/scale/other", "v1");
    let layer_other = &blobs_other[1];
    let path_other = format!("/v2/localhost/scale/other/blobs/{layer_other}");
    let want = layer_other.trim_start_matches("sha256:").to_string();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            Command::new("bash")
                .arg("-c")
                .arg(format!("curl -sf {e}{path_other} | sha256sum"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).split(' ').next().unwrap(), want);
    }
    assert_eq!(origin.hits(&path_other), 1, "12 concurrent misses reached the origin more than once");

    // skopeo (by tag and by digest) and podman pull through the edge: byte-exact, same
    // image id as the origin store; each blob came from the origin once.
    skopeo_copy_checked(&store, &edge.addr, &format!("{repo}:v1"), &tmp.path().join("sk-tag"));
    skopeo_copy_checked(&store, &edge.addr, &format!("{repo}@{m2}"), &tmp.path().join("sk-digest"));
    let dst = MiniStore::new("overlay");
    for name in [format!("{repo}:v1"), format!("{repo}:v2"), "localhost/scale/other:v1".to_string()] {
        let remote = format!("{}/{name}", edge.addr);
        run(&mut dst.tool("podman", &["pull", "-q", "--tls-verify=false", &remote]));
        assert_eq!(podman_image_id(dst.root(), &remote), podman_image_id(store.root(), &name), "{name}");
    }
    for b in blobs1.iter().chain(&blobs2) {
        let p = format!("/v2/{repo}/blobs/{b}");
        assert_eq!(origin.hits(&p), 1, "the origin served {p} {} times", origin.hits(&p));
    }
    for d in [&m1, &m2] {
        let p = format!("/v2/{repo}/manifests/{d}");
        assert!(origin.hits(&p) <= 1, "the origin served {p} {} times", origin.hits(&p));
    }

    // A moved tag: the edge keeps the old digest for at most its 10 s TTL, then shows
    // the new one.
    let tag_path = format!("/v2/{repo}/manifests/v1");
    let mut cached_at = Instant::now();
    let r = get(&format!("{e}{tag_path}"));
    if cache_status(&r) == "HIT" {
        // Cached earlier; let it expire and fetch it again to know when it was cached.
        std::thread::sleep(TAG_TTL);
        cached_at = Instant::now();
        let r = get(&format!("{e}{tag_path}"));
        assert_eq!(cache_status(&r), "EXPIRED");
    }
    run(&mut store.tool("podman", &["tag", "localhost/scale/other:v1", &format!("{repo}:v1")]));
    wait_for("the origin to show the moved tag", Duration::from_secs(5), || {
        direct(&format!("{o}{tag_path}")).header("docker-content-digest") == Some(m_other.as_str())
    });
    let r = get(&format!("{e}{tag_path}"));
    assert!(cached_at.elapsed() < Duration::from_secs(9), "test too slow to see the cached tag");
    assert_eq!(cache_status(&r), "HIT");
    assert_eq!(r.header("docker-content-digest"), Some(m1.as_str()), "within its TTL the edge serves the cached tag");
    std::thread::sleep(TAG_TTL.saturating_sub(cached_at.elapsed()));
    let r = get(&format!("{e}{tag_path}"));
    cached_at = Instant::now();
    assert_eq!(cache_status(&r), "EXPIRED");
    assert_eq!(r.header("docker-content-digest"), Some(m_other.as_str()), "after the TTL the edge shows the move");
    assert_eq!(sha256_hex(&r.body), m_other.trim_start_matches("sha256:"));

    // Origin down: cached digests are still served (HIT), ranges too, a pull by digest
    // works; an expired tag is served stale; what was never cached fails.
    origin.stop();
    for b in &blobs1 {
        let r = get(&format!("{e}/v2/{repo}/blobs/{b}"));
        assert_eq!(r.status, 200, "{b} with the origin down");
        assert_eq!(cache_status(&r), "HIT");
        assert_eq!(sha256_hex(&r.body), b.trim_start_matches("sha256:"));
    }
    let r = curl(&format!("{e}{path2}"), &["-H", "Range: bytes=4096-8191"]);
    assert_eq!((r.status, cache_status(&r)), (206, "HIT"));
    assert!(r.body == full2[4096..8192]);
    let r = get(&format!("{e}/v2/{repo}/manifests/{m1}"));
    assert_eq!((r.status, cache_status(&r)), (200, "HIT"));
    let dst2 = MiniStore::new("overlay");
    let by_digest = format!("{}/{repo}@{m1}", edge.addr);
    run(&mut dst2.tool("podman", &["pull", "-q", "--tls-verify=false", &by_digest]));
    let id = stdout(&mut dst2.tool("podman", &["image", "inspect", "--format", "{{.Id}}", &by_digest]));
    assert_eq!(id.trim(), blobs1[0].trim_start_matches("sha256:"), "image id = config digest");
    std::thread::sleep(TAG_TTL.saturating_sub(cached_at.elapsed()));
    let r = get(&format!("{e}{tag_path}"));
    assert_eq!((r.status, cache_status(&r)), (200, "STALE"), "an expired tag with the origin down");
    assert_eq!(r.header("docker-content-digest"), Some(m_other.as_str()));
    let r = get(&format!("{e}/v2/_catalog"));
    assert_eq!(r.status, 502, "never fetched through the edge, with the origin down");
    drop(edge);
}

/// Debian's Caddy (2.6) has no HTTP cache handler: the edge cache is nginx only. This
/// fails when a Caddy with one is installed, so that README's claim gets revisited.
#[test]
fn caddy_has_no_cache_module() {
    let caddy = need("caddy", "caddy");
    let out = stdout(Command::new(caddy).arg("list-modules"));
    assert!(out.lines().any(|l| l.starts_with("http.handlers.file_server")), "{out}");
    let caches: Vec<_> = out.lines().filter(|l| l.contains("cache")).collect();
    assert!(caches.is_empty(), "this Caddy has cache modules: {caches:?}");
}

// ---------------------------------------------------------------------------------------
// Pull-through mirror: distribution (docker-registry) in proxy mode.

/// A docker-registry from mirror/config.yml proxying `upstream`; stopped on drop.
struct Mirror {
    daemon: Daemon,
    addr: String,
}

impl Mirror {
    fn start(upstream: &str, dir: &Path) -> Mirror {
        let bin = need("docker-registry", "docker-registry");
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.join("mirror-data");
        std::fs::create_dir_all(&storage).unwrap();
        let conf = std::fs::read_to_string(repo_root().join("mirror/config.yml"))
            .unwrap()
            .replace("@UPSTREAM@", upstream)
            .replace("@LISTEN@", &addr)
            .replace("@STORAGE@", storage.to_str().unwrap());
        assert!(!conf.contains('@'), "mirror/config.yml has a placeholder left: {conf}");
        let file = dir.join("mirror.yml");
        std::fs::write(&file, conf).unwrap();
        // REGISTRY_* variables override the config file: start from a clean environment.
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&file).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let mut daemon = Daemon::spawn("docker-registry (mirror)", cmd, Some(dir.join("mirror.log")));
        let url = format!("http://{addr}/v2/");
        daemon.wait_ready("the mirror to answer /v2/", Duration::from_secs(20), |_| http_status(&url) == 200);
        Mirror { daemon, addr }
    }
}

/// A client store whose registries.conf is mirror/registries.conf for `origin` and `mirror`.
fn mirrored_client(origin: &str, mirror: &str) -> MiniStore {
    let client = MiniStore::new("overlay");
    let snippet = std::fs::read_to_string(repo_root().join("mirror/registries.conf"))
        .unwrap()
        .replace("@ORIGIN@", origin)
        .replace("@MIRROR@", mirror);
    let conf = client.root().join("conf/registries.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push('\n');
    text.push_str(&snippet);
    std::fs::write(&conf, text).unwrap();
    client
}

/// GET requests for exactly `path` the origin answered (HEADs not counted).
fn origin_gets(origin: &Origin, path: &str) -> usize {
    let log = std::fs::read_to_string(origin.dir.path().join("nginx/access.log")).unwrap_or_default();
    let needle = format!("\"GET {path} HTTP/");
    log.lines().filter(|l| l.starts_with("127.0.0.1 ") && l.contains(&needle)).count()
}

#[test]
fn distribution_mirror_pulls_through_keeps_digests_with_the_origin_down_and_follows_tags() {
    let store = scale_store();
    let mut origin = Origin::start(&store.storage);
    let tmp = TempDir::new("mirror");
    let mirror = Mirror::start(&origin.url(), tmp.path());
    let repo = "localhost/scale/app";
    let (o, m) = (origin.url(), format!("http://{}", mirror.addr));
    let (m1, blobs1) = manifest_and_blobs(&o, repo, "v1");
    let (m2, _) = manifest_and_blobs(&o, repo, "v2");

    // podman pulls the origin's name; registries.conf sends it to the mirror. Same image
    // id as in the origin's store; a second client's pull is served by the mirror alone.
    let id_v1 = podman_image_id(store.root(), &format!("{repo}:v1"));
    let name_v1 = format!("{}/{repo}:v1", origin.addr);
    let first = mirrored_client(&origin.addr, &mirror.addr);
    run(&mut first.tool("podman", &["pull", "-q", &name_v1]));
    assert_eq!(podman_image_id(first.root(), &name_v1), id_v1);
    let mirror_log = mirror.daemon.log();
    assert!(mirror_log.contains(&format!("/v2/{repo}/manifests/v1")), "the pull did not go through the mirror");
    let counts: Vec<usize> = blobs1.iter().map(|b| origin_gets(&origin, &format!("/v2/{repo}/blobs/{b}"))).collect();
    let origin_log = || std::fs::read_to_string(origin.dir.path().join("nginx/access.log")).unwrap_or_default();
    // distribution 2.8 fetches a missing blob twice: once streamed to the client, once
    // in the background into its storage (proxyblobstore.go ServeBlob/storeLocal).
    assert!(counts.iter().all(|&n| n == 2), "origin GETs per blob after the first pull: {counts:?}\n{}", origin_log());
    let second = mirrored_client(&origin.addr, &mirror.addr);
    run(&mut second.tool("podman", &["pull", "-q", &name_v1]));
    assert_eq!(podman_image_id(second.root(), &name_v1), id_v1);
    let again: Vec<usize> = blobs1.iter().map(|b| origin_gets(&origin, &format!("/v2/{repo}/blobs/{b}"))).collect();
    assert_eq!(again, counts, "the second pull fetched blobs from the origin again");

    // skopeo by digest through the mirror: every blob hashes to its name. Headers of a
    // manifest by digest as the origin's.
    skopeo_copy_checked(&store, &mirror.addr, &format!("{repo}@{m2}"), &tmp.path().join("sk"));
    let a = direct(&format!("{o}/v2/{repo}/manifests/{m1}"));
    let b = get(&format!("{m}/v2/{repo}/manifests/{m1}"));
    assert_eq!(b.status, 200);
    assert!(a.body == b.body);
    for h in ["content-type", "docker-content-digest", "content-length"] {
        assert_eq!(b.header(h), a.header(h), "mirror {h}");
    }

    // A moved tag shows at once (distribution asks the origin for every tag).
    let (m_other, _) = manifest_and_blobs(&o, "localhost/scale/other", "v1");
    run(&mut store.tool("podman", &["tag", "localhost/scale/other:v1", &format!("{repo}:v1")]));
    let tag_path = format!("/v2/{repo}/manifests/v1");
    wait_for("the origin to show the moved tag", Duration::from_secs(5), || {
        direct(&format!("{o}{tag_path}")).header("docker-content-digest") == Some(m_other.as_str())
    });
    let r = get(&format!("{m}{tag_path}"));
    assert_eq!(r.header("docker-content-digest"), Some(m_other.as_str()), "the mirror still serves the old tag");
    let third = mirrored_client(&origin.addr, &mirror.addr);
    run(&mut third.tool("podman", &["pull", "-q", &name_v1]));
    assert_eq!(podman_image_id(third.root(), &name_v1), podman_image_id(store.root(), "localhost/scale/other:v1"));

    // Origin down: what was pulled keeps working, by digest and by the last tag seen.
    origin.stop();
    let fourth = mirrored_client(&origin.addr, &mirror.addr);
    let by_digest = format!("{}/{repo}@{m1}", origin.addr);
    run(&mut fourth.tool("podman", &["pull", "-q", &by_digest]));
    let id = stdout(&mut fourth.tool("podman", &["image", "inspect", "--format", "{{.Id}}", &by_digest]));
    assert_eq!(id.trim(), id_v1);
    let r = get(&format!("{m}{tag_path}"));
    assert_eq!(r.status, 200, "tag with the origin down");
    assert_eq!(r.header("docker-content-digest"), Some(m_other.as_str()));
    let r = get(&format!("{m}/v2/{repo}/manifests/{m2}"));
    assert_eq!(r.status, 200, "v2 was copied by skopeo through the mirror");
}

// ---------------------------------------------------------------------------------------
// Static registry in S3-compatible object storage: `cstor-fs publish` to Ceph's radosgw.

/// radosgw from tests/scaleout/radosgw.sh (a cached Debian sid root, built on first use
/// by radosgw-root.sh); SIGTERM on drop, which also drops its mount namespace.
struct Radosgw {
    _daemon: Daemon,
    port: u16,
}

const S3_KEY: &str = "cstor-fs-test";
const S3_SECRET: &str = "cstor-fs-test-secret";

impl Radosgw {
    fn start() -> Radosgw {
        need("debootstrap", "debootstrap");
        let scripts = repo_root().join("tests/scaleout");
        let root = stdout(&mut Command::new(scripts.join("radosgw-root.sh"))).trim().to_string();
        let dir = TempDir::new("rgw");
        let port = free_port();
        let mut cmd = Command::new(scripts.join("radosgw.sh"));
        cmd.arg(&root).arg(dir.path().join("data")).arg(port.to_string());
        let mut daemon = Daemon::spawn("radosgw", cmd, Some(dir.path().join("stderr.log"))).keeping(dir);
        let url = format!("http://127.0.0.1:{port}/");
        daemon.wait_ready("radosgw to answer", Duration::from_secs(60), |_| http_status(&url) == 200);
        Radosgw { _daemon: daemon, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `cstor-fs publish` with `env` (and no other AWS_* variables).
fn publish(storage: &Path, rgw: &Radosgw, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("publish").arg("--storage").arg(storage);
    cmd.args(["--to", "s3://cstor-test", "--endpoint", &rgw.endpoint(), "--public", "--part-size", "5"]);
    cmd.args(extra);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    stdout(&mut cmd)
}

/// `tool` run against `store`'s configuration in a private mount namespace whose
/// /etc/hosts also names `host` as 127.0.0.1 (Go's resolver does not resolve
/// *.localhost by itself; the machine's /etc/hosts is not touched).
fn tool_with_host(store: &MiniStore, host: &str, tool: &str, args: &[&str]) -> Command {
    let hosts = store.root().join("hosts");
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.push_str(&format!("\n127.0.0.1 {host}\n"));
    std::fs::write(&hosts, text).unwrap();
    let mut c = Command::new(repo_root().join("tests/fixtures/isolate.sh"));
    c.arg("bash")
        .arg("-c")
        .arg(format!(
            "mount --bind '{}' /etc/hosts && . '{}/conf/env' && exec \"$@\"",
            hosts.display(),
            store.root().display()
        ))
        .arg("tool")
        .arg(tool)
        .args(args);
    c
}

#[test]
fn publish_to_radosgw_makes_a_bucket_clients_pull_from_byte_exact() {
    let fx = Fixture::shared("overlay");
    let rgw = Radosgw::start();
    let images = ["localhost/app/web:v1", "localhost/pulled/zstd:1", "localhost/dockerfmt:1", "localhost/multi:1"];
    let keys = [("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET)];
    let out = publish(&fx.storage, &rgw, &keys, &images);
    for name in images {
        assert!(out.contains(&format!("{name} sha256:")), "no progress line for {name}:\n{out}");
    }
    assert!(!out.contains(" 0 objects uploaded"), "{out}");

    // Again, with the credentials from ~/.aws/credentials: nothing to upload.
    let home = TempDir::new("aws");
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = {S3_SECRET}\n"),
    )
    .unwrap();
    let out = publish(&fx.storage, &rgw, &[("HOME", home.path().to_str().unwrap())], &images);
    assert!(out.contains(" 0 objects uploaded (0.0 MiB)"), "the second publish uploaded:\n{out}");

    // Anonymous pulls through virtual-host addressing (BUCKET.localhost:PORT).
    let host = "cstor-test.localhost";
    let registry = format!("{host}:{}", rgw.port);
    let base = format!("http://{registry}");
    assert_eq!(get(&format!("{base}/v2/")).status, 200, "GET /v2/");
    let client = MiniStore::new("overlay");
    let tmp = TempDir::new("s3pull");
    for name in images {
        let (repo, tag) = name.rsplit_once(':').unwrap();
        let r = get(&format!("{base}/v2/{repo}/manifests/{tag}"));
        assert_eq!(r.status, 200, "{name}");
        let digest = format!("sha256:{}", sha256_hex(&r.body));
        let list = String::from_utf8(get(&format!("{base}/v2/{repo}/tags/list")).body).unwrap();
        assert!(list.contains(&format!("\"{tag}\"")), "{list}");
        let media_type: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.header("content-type"), media_type["mediaType"].as_str(), "{name}: Content-Type");
        // skopeo, by tag and by digest; every blob hashes to its name.
        for (i, src) in
            [format!("docker://{registry}/{name}"), format!("docker://{registry}/{repo}@{digest}")].iter().enumerate()
        {
            let dst = tmp.path().join(format!("{}-{i}", repo.replace('/', "_")));
            let d = format!("dir:{}", dst.display());
            let mut args = vec!["copy", "--quiet", "--src-tls-verify=false"];
            if name == "localhost/multi:1" {
                args.push("--all");
            }
            args.extend([src.as_str(), d.as_str()]);
            run(&mut tool_with_host(&client, host, "skopeo", &args));
            let mut n = 0;
            for e in std::fs::read_dir(&dst).unwrap() {
                let p = e.unwrap().path();
                let f = p.file_name().unwrap().to_str().unwrap().to_string();
                if f.len() == 64 {
                    assert_eq!(sha256_file(&p), f, "{src}: blob {f}");
                    n += 1;
                }
            }
            assert!(n >= 2, "{src}: {n} blobs");
        }
        // podman, by tag and by digest: the same image id as in the store.
        if name != "localhost/multi:1" {
            for remote in [format!("{registry}/{name}"), format!("{registry}/{repo}@{digest}")] {
                run(&mut tool_with_host(&client, host, "podman", &["pull", "-q", "--tls-verify=false", &remote]));
                let id = stdout(&mut client.tool("podman", &["image", "inspect", "--format", "{{.Id}}", &remote]));
                assert_eq!(id.trim(), podman_image_id(&fx.root, name), "{remote}");
            }
        }
    }

    // Range reads at offsets > 0 of a multipart-uploaded layer give the layer's bytes.
    let r = get(&format!("{base}/v2/localhost/app/web/manifests/v1"));
    let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let (layer, size) = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_string(), l["size"].as_u64().unwrap()))
        .max_by_key(|(_, s)| *s)
        .unwrap();
    assert!(size > 3 * (5 << 20), "the largest layer ({size} bytes) is not multipart at 5 MiB parts");
    let copy = tmp.path().join("localhost_app_web-0").join(layer.trim_start_matches("sha256:"));
    let full = std::fs::read(&copy).unwrap();
    for (a, b) in [(1u64, 100u64), (5 << 20, (5 << 20) + 65535), (size - 1000, size - 1)] {
        let r = curl(&format!("{base}/v2/localhost/app/web/blobs/{layer}"), &["-H", &format!("Range: bytes={a}-{b}")]);
        assert_eq!(r.status, 206, "range {a}-{b}");
        assert!(r.body == full[a as usize..=b as usize], "range {a}-{b}: wrong bytes");
    }
}

/// A layer whose file changed on disk (same size, other bytes) fails the publish, and
/// nothing is left in the bucket under its digest; the other image is published.
#[test]
fn publish_of_a_damaged_layer_fails_and_leaves_no_object() {
    let store = MiniStore::new("overlay");
    store.import("localhost/scale/good:1", &[("etc/version", b"good\n")]);
    store.import("localhost/scale/bad:1", &[("data/big.bin", &noise(3, 7 << 20))]);
    let mount = Daemon::mount(&store.storage, "");
    let (_, blobs) = manifest_and_blobs_in(&mount, "localhost/scale/bad", "1");
    drop(mount);
    let mut damaged = 0;
    for e in std::fs::read_dir(store.storage.join("overlay")).unwrap() {
        let p = e.unwrap().path().join("diff/data/big.bin");
        if p.exists() {
            std::fs::write(&p, noise(4, 7 << 20)).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    let rgw = Radosgw::start();
    let keys = [("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET)];
    let out = publish(&store.storage, &rgw, &keys, &["localhost/scale/good:1"]);
    assert!(out.contains("localhost/scale/good:1 sha256:"), "{out}");
    for part_size in ["5", "64"] {
        let mut cmd = Command::new(BIN);
        cmd.arg("publish").arg("--storage").arg(&store.storage);
        cmd.args(["--to", "s3://cstor-test", "--endpoint", &rgw.endpoint(), "--part-size", part_size]);
        cmd.arg("localhost/scale/bad:1").envs(keys.iter().copied());
        let o = cmd.output().unwrap();
        assert!(!o.status.success(), "publishing a damaged layer succeeded: {}", String::from_utf8_lossy(&o.stdout));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("big.bin"), "part size {part_size} MiB: the error does not name the damaged file: {err}");
        let layer = &blobs[1];
        let url = format!("{}/cstor-test/v2/localhost/scale/bad/blobs/{layer}", rgw.endpoint());
        assert_eq!(http_status(&url), 404, "part size {part_size} MiB: {layer} is in the bucket");
        let tag = format!("{}/cstor-test/v2/localhost/scale/bad/manifests/1", rgw.endpoint());
        assert_eq!(http_status(&tag), 404, "the manifest of a failed image was published");
    }
    let good = format!("{}/cstor-test/v2/localhost/scale/good/manifests/1", rgw.endpoint());
    assert_eq!(http_status(&good), 200);
}

/// (manifest digest, [config, layers...]) of `repo:tag` read from a mount.
fn manifest_and_blobs_in(mount: &Daemon, repo: &str, tag: &str) -> (String, Vec<String>) {
    let bytes = std::fs::read(mount.v2().join(repo).join("manifests").join(tag)).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut blobs = vec![json["config"]["digest"].as_str().unwrap().to_string()];
    blobs.extend(json["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    (format!("sha256:{}", sha256_hex(&bytes)), blobs)
}
