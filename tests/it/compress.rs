//! Issue: compressed delivery (`--compress`, `-o compress=`). Real clients (skopeo,
//! podman, ctr, docker) pull compressed images from `cstor-fs serve` byte-exact and get the
//! same image IDs; digests survive restarts and an emptied cache; a damaged cache entry is
//! rebuilt, not served; the size limit evicts; an unusable cache degrades to uncompressed.
//! The shared fixture store is only read; every cache is a private temp dir.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::clients::{Containerd, Dockerd};
use crate::common::*;

const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Images checked in each mode: an OCI build, a Docker schema 2 image, pulled gzip and
/// zstd images (served rewritten).
const IMAGES: [&str; 4] =
    ["localhost/app/web:v1", "localhost/dockerfmt:1", "localhost/pulled/gzip:1", "localhost/pulled/zstd:1"];

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn wait_log(log: &Path, needle: &str, timeout: Duration) {
    let t = std::time::Instant::now();
    while !log_text(log).contains(needle) {
        if t.elapsed() > timeout {
            panic!("no {needle:?} in the log after {timeout:?}:\n{}", log_text(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cstor-fs -f STORE MNT -o OPTS` with its log in a file (a [`Daemon`]).
struct CMount {
    d: Daemon,
    log: PathBuf,
}

impl CMount {
    fn start(storage: &Path, opts: &str) -> CMount {
        let d = Daemon::mount(storage, opts);
        CMount { log: d.log_path().to_path_buf(), d }
    }

    fn v2(&self) -> PathBuf {
        self.d.v2()
    }

    fn stop(&mut self) {
        self.d.unmount();
    }
}

/// `cstor-fs serve` with extra arguments and its log in a file (a [`Daemon`]).
struct CServe {
    _d: Daemon,
    addr: String,
}

impl CServe {
    fn start(storage: &Path, extra: &[&str]) -> CServe {
        let d = Daemon::serve_with(storage, extra);
        CServe { addr: d.addr().to_string(), _d: d }
    }

    fn v2(&self) -> PathBuf {
        self._d.mnt().join("v2")
    }
}

fn split(name: &str) -> (&str, &str) {
    name.rsplit_once(':').unwrap()
}

fn manifest(v2: &Path, repo: &str, reference: &str) -> (String, Value) {
    let bytes = std::fs::read(v2.join(repo).join("manifests").join(reference)).unwrap();
    (format!("sha256:{}", sha256_hex(&bytes)), serde_json::from_slice(&bytes).unwrap())
}

fn layer_types(m: &Value) -> Vec<String> {
    m["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap().to_string()).collect()
}

/// The layer type `name` gets in `mode` ("zstd" or "gzip"): Docker manifests get gzip.
fn expected_type(v2: &Path, name: &str, mode: &str) -> &'static str {
    let (repo, tag) = split(name);
    let (_, m) = manifest(v2, repo, tag);
    let docker = m["mediaType"].as_str() == Some("application/vnd.docker.distribution.manifest.v2+json");
    match (docker, mode) {
        (true, _) => DOCKER_GZIP,
        (false, "zstd") => OCI_ZSTD,
        _ => OCI_GZIP,
    }
}

/// Waits until every image in `names` is served compressed under its tag.
fn wait_compressed(v2: &Path, names: &[&str], mode: &str) {
    wait_for("the tags to name compressed manifests", Duration::from_secs(180), || {
        names.iter().all(|name| {
            let (repo, tag) = split(name);
            let want = expected_type(v2, name, mode);
            layer_types(&manifest(v2, repo, tag).1).iter().all(|t| t == want)
        })
    });
}

/// Every tag of every repository: path -> digest.
fn tags(v2: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, v2: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name == "blobs" || name == "tags" {
                continue;
            }
            if name == "manifests" {
                for t in std::fs::read_dir(&p).unwrap().flatten() {
                    if let Ok(target) = std::fs::read_link(t.path()) {
                        let key = t.path().strip_prefix(v2).unwrap().to_string_lossy().to_string();
                        out.insert(key, target.to_string_lossy().to_string());
                    }
                }
            } else if e.file_type().unwrap().is_dir() {
                walk(&p, v2, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v2, v2, &mut out);
    out
}

fn decompressed_digest(path: &Path, media_type: &str) -> String {
    use sha2::Digest;
    let f = std::fs::File::open(path).unwrap();
    let mut r: Box<dyn Read> = match media_type {
        OCI_ZSTD => Box::new(zstd::stream::read::Decoder::new(f).unwrap()),
        OCI_GZIP | DOCKER_GZIP => Box::new(flate2::read::GzDecoder::new(f)),
        OCI_TAR | DOCKER_TAR => Box::new(f),
        other => panic!("unexpected layer type {other}"),
    };
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A `dir:` copy: every blob hashes to its name, the layers are of `layer_type` and
/// decompress to the config's diff_ids. Returns the config digest.
fn check_dir_copy(dir: &Path, layer_type: &str, what: &str) -> String {
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let config_digest = m["config"]["digest"].as_str().unwrap().to_string();
    let blob = |d: &str| dir.join(d.trim_start_matches("sha256:"));
    assert_eq!(format!("sha256:{}", sha256_file(&blob(&config_digest))), config_digest, "{what}: config");
    let config: Value = serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len(), "{what}");
    for (l, diff) in layers.iter().zip(diff_ids) {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(l["mediaType"], layer_type, "{what}: {d}");
        assert_eq!(format!("sha256:{}", sha256_file(&blob(d))), d, "{what}: blob {d}");
        assert_eq!(std::fs::metadata(blob(d)).unwrap().len(), l["size"].as_u64().unwrap(), "{what}: size of {d}");
        assert_eq!(decompressed_digest(&blob(d), layer_type), diff.as_str().unwrap(), "{what}: {d} decompressed");
    }
    config_digest
}

/// skopeo copies each image by tag and by its compressed digest; podman pulls it into a
/// private store and gets the fixture's image id.
fn skopeo_and_podman(s: &CServe, fx: &Fixture, mode: &str) {
    let tmp = TempDir::new("cskopeo");
    let dst = MiniStore::new("overlay");
    for name in IMAGES {
        let (repo, tag) = split(name);
        let want = expected_type(&s.v2(), name, mode);
        let (digest, _) = manifest(&s.v2(), repo, tag);
        let id = podman_image_id(&fx.root, name);
        for (i, r) in [format!("{}/{name}", s.addr), format!("{}/{repo}@{digest}", s.addr)].iter().enumerate() {
            let out = tmp.path().join(format!("{}-{i}", repo.replace('/', "_")));
            let src = format!("docker://{r}");
            let dst_ref = format!("dir:{}", out.display());
            run(&mut fx.tool("skopeo", &["copy", "--quiet", "--src-tls-verify=false", &src, &dst_ref]));
            assert_eq!(sha256_file(&out.join("manifest.json")), digest.trim_start_matches("sha256:"), "{r}");
            let config = check_dir_copy(&out, want, r);
            assert_eq!(config, format!("sha256:{id}"), "{r}: config digest vs podman's image id");
        }
        let remote = format!("{}/{name}", s.addr);
        run(&mut dst.tool("podman", &["pull", "-q", "--tls-verify=false", &remote]));
        let got = stdout(&mut dst.tool("podman", &["image", "inspect", "--format", "{{.Id}}", &remote]));
        assert_eq!(got.trim(), id, "{name}: podman's image id");
    }
}

#[test]
fn zstd_skopeo_podman_and_ctr_pull_byte_exact_with_the_same_image_ids() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let cache_s = cache.path().join("c").to_string_lossy().to_string();
    let s = CServe::start(&fx.storage, &["--compress", "zstd", "--cache", &cache_s]);
    wait_compressed(&s.v2(), &IMAGES, "zstd");
    wait_compressed(&s.v2(), &["localhost/multi/part:amd64", "localhost/multi/part:arm64"], "zstd");
    // The list under its tag names the compressed children once both are ready.
    wait_for("localhost/multi:1 to be the compressed index", Duration::from_secs(30), || {
        let (_, ix) = manifest(&s.v2(), "localhost/multi", "1");
        ix["manifests"].as_array().unwrap().iter().all(|c| {
            let (_, m) = manifest(&s.v2(), "localhost/multi", c["digest"].as_str().unwrap());
            layer_types(&m).iter().all(|t| t == OCI_ZSTD)
        })
    });
    skopeo_and_podman(&s, fx, "zstd");

    // containerd: pulls, verifies and unpacks (checking the diff_ids as it decompresses).
    let mut c = Containerd::start("cctd");
    for name in ["localhost/app/web:v1", "localhost/pulled/zstd:1", "localhost/dockerfmt:1", "localhost/multi:1"] {
        let remote = format!("{}/{name}", s.addr);
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if name == "localhost/multi:1" {
            args.push("--all-platforms");
        }
        args.push(&remote);
        c.ctr_out(&args);
        let (repo, tag) = split(name);
        let (digest, _) = manifest(&s.v2(), repo, tag);
        let listed = c.ctr_out(&["images", "ls"]);
        let line = listed.lines().find(|l| l.starts_with(&format!("{remote} "))).unwrap();
        assert!(line.contains(&digest), "{name}: containerd's target is not the compressed manifest {digest}: {line}");
    }
    let checked = c.ctr_out(&["images", "check", "--snapshotter", "native"]);
    for l in checked.lines().skip(1) {
        assert!(l.contains(" complete (") && l.trim_end().ends_with("true"), "ctr images check: {l}");
    }
    let content = c.ctr_out(&["content", "ls"]);
    let (_, web) = manifest(&s.v2(), "localhost/app/web", "v1");
    for l in web["layers"].as_array().unwrap() {
        assert!(content.contains(l["digest"].as_str().unwrap()), "containerd lacks {}", l["digest"]);
    }
    let left = c.stop();
    assert!(left.is_empty(), "left behind: {left:?}");

    // verify (and list) see the same cache.
    let out = Command::new(BIN)
        .args(["verify", "--compress", "zstd", "--cache", &cache_s, "--storage"])
        .arg(&fx.storage)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let (_, web) = manifest(&s.v2(), "localhost/app/web", "v1");
    for l in web["layers"].as_array().unwrap() {
        assert!(
            text.contains(&format!("ok   {}", l["digest"].as_str().unwrap())),
            "verify skipped {}:\n{text}",
            l["digest"]
        );
    }
    let list = stdout(
        Command::new(BIN).args(["list", "--compress", "zstd", "--cache", &cache_s, "--storage"]).arg(&fx.storage),
    );
    assert!(list.contains("zstd: ") && list.contains(", ready") && list.contains("zstd of layer"), "{list}");
}

#[test]
fn gzip_docker_pulls_with_the_same_image_ids() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let cache_s = cache.path().join("c").to_string_lossy().to_string();
    let s = CServe::start(&fx.storage, &["--compress", "gzip:9", "--cache", &cache_s]);
    let names = ["localhost/app/web:v1", "localhost/dockerfmt:1", "localhost/pulled/gzip:1"];
    wait_compressed(&s.v2(), &names, "gzip");
    let mut dk = Dockerd::start(&s.addr);
    for name in names {
        let (repo, tag) = split(name);
        let (digest, _) = manifest(&s.v2(), repo, tag);
        let remote = format!("{}/{name}", s.addr);
        dk.docker_out(&["pull", "-q", &remote]);
        let id = dk.docker_out(&["image", "inspect", "--format", "{{.Id}}", &remote]);
        assert_eq!(id.trim(), format!("sha256:{}", podman_image_id(&fx.root, name)), "{name}: docker's image id");
        let digests = dk.docker_out(&["image", "inspect", "--format", "{{json .RepoDigests}}", &remote]);
        assert!(digests.contains(&digest), "{name}: RepoDigests {digests} lack the compressed manifest {digest}");
    }
    let left = dk.stop();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Ready when the compressor went idle and the tags moved (the next refresh after it).
fn settled(m: &CMount) -> BTreeMap<String, String> {
    wait_log(&m.log, "compression idle", Duration::from_secs(180));
    wait_compressed(&m.v2(), &["localhost/app/web:v1"], "zstd");
    std::thread::sleep(Duration::from_millis(800));
    tags(&m.v2())
}

#[test]
fn digests_are_the_same_after_a_restart_and_an_emptied_cache() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let opts = |c: &str| format!("compress=zstd,cache={}", cache.path().join(c).display());
    let mut m = CMount::start(&fx.storage, &opts("a"));
    let first = settled(&m);
    assert!(first.len() > 10, "{first:?}");
    m.stop();

    // A restart takes the cache as it is: nothing is compressed again.
    let mut m = CMount::start(&fx.storage, &opts("a"));
    assert_eq!(settled(&m), first, "tags after a restart");
    assert!(!log_text(&m.log).contains("compressed layer"), "rebuilt after a restart:\n{}", log_text(&m.log));
    m.stop();

    // An empty cache: everything is compressed again, to the same bytes.
    let m = CMount::start(&fx.storage, &opts("b"));
    assert_eq!(settled(&m), first, "tags after emptying the cache");
    assert!(log_text(&m.log).contains("compressed layer"));
}

/// The cache files of the blob `digest` (its `.blob`), found through the descriptions.
fn cache_blob(cache: &Path, digest: &str) -> PathBuf {
    for e in std::fs::read_dir(cache.join("v1")).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") && std::fs::read_to_string(&p).unwrap().contains(digest) {
            return p.with_extension("blob");
        }
    }
    panic!("no cache entry for {digest}");
}

#[test]
fn a_damaged_cache_entry_is_rebuilt_not_served() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let dir = cache.path().join("c");
    let opts = format!("compress=zstd,cache={}", dir.display());
    let mut m = CMount::start(&fx.storage, &opts);
    let before = settled(&m);
    let (_, web) = manifest(&m.v2(), "localhost/app/web", "v1");
    let mut layers: Vec<(u64, String)> = web["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["size"].as_u64().unwrap(), l["digest"].as_str().unwrap().to_string()))
        .collect();
    layers.sort();
    let (_, small) = layers[0].clone();
    let (_, mid) = layers.iter().rev().find(|(s, _)| *s < 10 << 20).unwrap().clone();
    let blobs = m.v2().join("localhost/app/web/blobs");
    let blob = |d: &str| blobs.join(d);

    // A flipped byte (same size) and a truncation: detected on open, rebuilt, served right.
    let flipped = cache_blob(&dir, &mid);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&flipped, &bytes).unwrap();
    let cut = cache_blob(&dir, &small);
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::File::options().write(true).open(&cut).unwrap().set_len(len - 1).unwrap();
    for d in [&mid, &small] {
        assert_eq!(format!("sha256:{}", sha256_file(&blob(d))), *d, "served {d}");
        assert_eq!(format!("sha256:{}", sha256_file(&cache_blob(&dir, d))), *d, "cache entry of {d} rebuilt");
    }
    let rebuilt = log_text(&m.log).matches(": rebuilding it").count();
    assert_eq!(rebuilt, 2, "{}", log_text(&m.log));
    m.stop();

    // Damaged while no daemon runs: found at start, removed and rebuilt; same digests.
    let again = cache_blob(&dir, &mid);
    let mut bytes = std::fs::read(&again).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&again, &bytes).unwrap();
    let m = CMount::start(&fx.storage, &opts);
    assert_eq!(settled(&m), before);
    let log = log_text(&m.log);
    assert!(log.contains(": removing it") && log.contains("compressed layer"), "{log}");
    assert_eq!(format!("sha256:{}", sha256_file(&m.v2().join("localhost/app/web/blobs").join(&mid))), mid);
}

fn cache_bytes(dir: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("v1")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "blob") {
            total += e.metadata().unwrap().len();
            n += 1;
        }
    }
    (total, n)
}

#[test]
fn the_cache_size_limit_evicts_least_recently_used_entries() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let dir = cache.path().join("c");
    // Less than what the fixture needs (two ~2 MB layers each way, one ~100 MB layer).
    let limit = 3u64 << 20;
    let m = CMount::start(&fx.storage, &format!("compress=zstd,cache={},cache_size=3M", dir.display()));
    settled(&m);
    let (total, n) = cache_bytes(&dir);
    assert!(total <= limit, "cache holds {total} bytes in {n} entries, limit {limit}");
    assert!(log_text(&m.log).contains("evicted"), "{}", log_text(&m.log));
    // An evicted blob is still served, rebuilt to the published bytes.
    let (_, web) = manifest(&m.v2(), "localhost/app/web", "v1");
    let big = web["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64()).unwrap();
    let d = big["digest"].as_str().unwrap();
    assert!(big["size"].as_u64().unwrap() > limit);
    assert_eq!(format!("sha256:{}", sha256_file(&m.v2().join("localhost/app/web/blobs").join(d))), d);
    let (total, _) = cache_bytes(&dir);
    assert!(total <= limit, "{total} after serving an evicted blob");
}

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", opts, "cstor-it-cache"]).arg(dir));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn serves_uncompressed(m: &CMount) {
    // Ready blobs may still move small images; app/web holds the ~100 MB layer.
    std::thread::sleep(Duration::from_millis(800));
    let (_, web) = manifest(&m.v2(), "localhost/app/web", "v1");
    assert!(layer_types(&web).iter().all(|t| t == OCI_TAR), "{web}");
    for l in web["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(format!("sha256:{}", sha256_file(&m.v2().join("localhost/app/web/blobs").join(d))), d);
    }
}

#[test]
fn a_read_only_or_full_cache_serves_uncompressed_with_a_log_line() {
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("cfull");
    let ro = Tmpfs::mount(&tmp.path().join("ro"), "ro,size=1m");
    let m = CMount::start(&fx.storage, &format!("compress=zstd,cache={}", ro.0.join("c").display()));
    wait_log(&m.log, "is unusable", Duration::from_secs(60));
    assert!(log_text(&m.log).contains("Read-only file system"), "{}", log_text(&m.log));
    serves_uncompressed(&m);
    drop(m);

    let full = Tmpfs::mount(&tmp.path().join("full"), "size=1m");
    let m = CMount::start(&fx.storage, &format!("compress=zstd,cache={}", full.0.join("c").display()));
    wait_log(&m.log, "No space left on device", Duration::from_secs(120));
    assert!(log_text(&m.log).contains("is unusable"), "{}", log_text(&m.log));
    serves_uncompressed(&m);
    // No temporary files left behind by the failed builds. (Builds of the other layers
    // go on after the first failure, each writing its own temporary file until it fails
    // too: wait for the worker to have tried them all.)
    let temps = || {
        std::fs::read_dir(full.0.join("c/v1"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    let t = std::time::Instant::now();
    while !temps().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "temporary files left: {:?}", temps());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_mounts_share_one_cache_and_build_concurrently_without_harm() {
    let fx = Fixture::shared("overlay");
    let cache = TempDir::new("ccache");
    let dir = cache.path().join("c");
    let opts = format!("compress=zstd,cache={}", dir.display());
    // Started together, both build the same entries at the same time.
    let a = CMount::start(&fx.storage, &opts);
    let b = CMount::start(&fx.storage, &opts);
    let (ta, tb) = (settled(&a), settled(&b));
    assert_eq!(ta, tb, "both mounts serve the same digests");
    for m in [&a, &b] {
        let log = log_text(&m.log);
        assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
        let (_, web) = manifest(&m.v2(), "localhost/app/web", "v1");
        for l in web["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            assert_eq!(format!("sha256:{}", sha256_file(&m.v2().join("localhost/app/web/blobs").join(d))), d);
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.join("v1"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
