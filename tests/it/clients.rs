//! Issue: real pull clients. containerd's `ctr`, dockerd (`docker pull`) and the PyPI
//! `oras` library pull from `cstor-fs serve`, with nginx and with Caddy, and get exactly
//! the digests the fixture store holds.
//!
//! containerd and dockerd run as private daemons: every socket, root, state and key file
//! lives in a TempDir, and a guard stops them (and anything they started) even when a
//! test panics.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The path of `tool`, or a panic naming what to install: a missing client must fail
/// the test, never skip it.
fn need(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed ({install}); the client tests need it"))
}

/// The last lines of a daemon's log, for panic messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    format!("--- last lines of {}\n{}", path.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
}

/// Live processes (other than this one) whose command line mentions `needle`.
fn procs_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let me = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|mp| *mp == me || mp.strip_prefix(&me).is_some_and(|rest| rest.starts_with('/')))
        .map(str::to_string)
        .collect()
}

/// Runs `cmd`; on failure panics with its output and the tail of the daemon's `log`.
fn stdout_or_panic(cmd: &mut Command, what: &str, log: &Path) -> String {
    let out = cmd.output().unwrap();
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_tail(log)
        );
    }
    String::from_utf8(out.stdout).unwrap()
}

/// Kills (by pid) whatever our daemons started that still runs from `dir`, unmounts
/// whatever they left below it, and reports both (empty when all was clean).
fn sweep(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    // With the slash: TempDir names share prefixes (ctd9-1, ctd9-10) across parallel tests.
    for (pid, cmd) in procs_mentioning(&format!("{}/", dir.display())) {
        // SAFETY: plain kill(2) of a process started (indirectly) by this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        left.push(format!("process {pid}: {cmd}"));
    }
    for mp in mounts_below(dir).into_iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
        left.push(format!("mount {mp}"));
    }
    left
}

/// A GET with curl: (status, lower-cased headers, body).
fn http_get(url: &str, accept: &str) -> (u16, HashMap<String, String>, Vec<u8>) {
    let out =
        run(Command::new("curl").args(["-sS", "-i", "--max-time", "60", "-H", &format!("Accept: {accept}"), url]));
    let raw = out.stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{url}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

/// A manifest (or index) as served, with the digest the server claims for it.
struct Served {
    digest: String,
    media_type: String,
    json: Value,
}

fn served_manifest(s: &Daemon, repo: &str, reference: &str) -> Served {
    let url = format!("{}/v2/{repo}/manifests/{reference}", s.url());
    let (status, headers, body) = http_get(&url, MANIFEST_TYPES);
    assert_eq!(status, 200, "{} GET {url}: {}", s.label(), String::from_utf8_lossy(&body));
    let digest = format!("sha256:{}", sha256_hex(&body));
    assert_eq!(
        headers.get("docker-content-digest"),
        Some(&digest),
        "{}: GET {url}: Docker-Content-Digest is not the sha256 of the body",
        s.label()
    );
    let media_type = headers.get("content-type").cloned().unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{url}: {e}"));
    Served { digest, media_type, json }
}

fn split_ref(name: &str) -> (&str, &str) {
    name.rsplit_once(':').unwrap()
}

/// The fixture's podman image id (= config digest) of the image a platform of
/// localhost/multi:1 was built from.
fn multi_part_id(fx: &Fixture, arch: &str) -> String {
    podman_image_id(&fx.root, &format!("localhost/multi/part:{arch}"))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => panic!("the fixture's localhost/multi:1 has amd64 and arm64 only, this is {a}"),
    }
}

// ---------------------------------------------------------------------------------------
// containerd

/// A private containerd: config, root, state, opt dir and sockets in a TempDir.
pub(crate) struct Containerd {
    proc: Daemon,
    sock: PathBuf,
    log: PathBuf,
    ctr: PathBuf,
    dir: TempDir,
}

impl Containerd {
    pub(crate) fn start(tag: &str) -> Containerd {
        let bin = need("containerd", "Debian package containerd");
        let ctr = need("ctr", "Debian package containerd");
        let dir = TempDir::new(tag);
        let d = dir.path().to_path_buf();
        let sock = d.join("c.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let log = d.join("containerd.log");
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config).process_group(0);
        let proc = Daemon::spawn("containerd", cmd, Some(log.clone()));
        let mut c = Containerd { proc, sock, log, ctr, dir };
        let (sock, mut version) = (c.sock.clone(), c.ctr(&["version"]));
        c.proc.wait_ready("containerd to answer on its socket", Duration::from_secs(30), |_| {
            sock.exists() && version.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        c
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.sock).args(args);
        cmd
    }

    pub(crate) fn ctr_out(&self, args: &[&str]) -> String {
        stdout_or_panic(&mut self.ctr(args), &format!("ctr {args:?}"), &self.log)
    }

    /// Stops containerd; returns what had to be cleaned up besides it.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        self.proc.stop();
        sweep(self.dir.path())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ctr pulls every kind of manifest the fixture has; containerd stores (and verifies)
/// exactly the served manifests and blobs, and unpacks them.
fn containerd_pulls(server: &'static str) {
    let t = Instant::now();
    let fx = Fixture::shared("overlay");
    let s = Daemon::serve(&fx.storage, server);
    let mut c = Containerd::start("ctd");
    let images = ["localhost/app/web:v1", "localhost/pulled/gzip:1", "localhost/dockerfmt:1", "localhost/multi:1"];
    for name in images {
        let remote = format!("{}/{name}", s.addr());
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if name == "localhost/multi:1" {
            args.push("--all-platforms");
        }
        args.push(&remote);
        c.ctr_out(&args);
    }

    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    let listed: HashMap<String, (String, String)> = c
        .ctr_out(&["images", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), (f[1].to_string(), f[2].to_string())))
        })
        .collect();
    // DIGEST SIZE AGE LABELS
    let content: HashMap<String, String> = c
        .ctr_out(&["content", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(|d| (d.to_string(), l.to_string())))
        .collect();
    // REF TYPE DIGEST STATUS SIZE UNPACKED (for the host platform)
    let checked = c.ctr_out(&["images", "check", "--snapshotter", "native"]);

    for name in images {
        let (repo, tag) = split_ref(name);
        let remote = format!("{}/{name}", s.addr());
        let top = served_manifest(&s, repo, tag);
        let (ty, digest) = listed.get(&remote).unwrap_or_else(|| panic!("{server}: ctr images ls lacks {remote}"));
        assert_eq!(digest, &top.digest, "{server}: {remote}: containerd's target digest");
        assert_eq!(ty, &top.media_type, "{server}: {remote}: containerd's target media type");
        let line = checked.lines().find(|l| l.starts_with(&format!("{remote} "))).unwrap();
        assert!(
            line.contains(" complete (") && line.trim_end().ends_with("true"),
            "{server}: ctr images check: {line}"
        );

        // (manifest digest, expected config digest) per platform.
        let mut manifests = Vec::new();
        if let Some(entries) = top.json["manifests"].as_array() {
            assert_eq!(entries.len(), 2, "{name}: {}", top.json);
            for e in entries {
                let arch = e["platform"]["architecture"].as_str().unwrap();
                manifests.push((e["digest"].as_str().unwrap().to_string(), multi_part_id(fx, arch)));
            }
        } else {
            manifests.push((top.digest.clone(), podman_image_id(&fx.root, name)));
        }
        assert!(content.contains_key(&top.digest), "{server}: content store lacks {name}'s {}", top.digest);
        for (digest, image_id) in manifests {
            let m = served_manifest(&s, repo, &digest);
            assert_eq!(m.digest, digest, "{name}: manifest by digest");
            let config = m.json["config"]["digest"].as_str().unwrap();
            assert_eq!(config, format!("sha256:{image_id}"), "{server}: {name}: config digest vs the podman image id");
            let layers = m.json["layers"].as_array().unwrap();
            assert!(!layers.is_empty());
            for d in std::iter::once(&digest)
                .map(String::as_str)
                .chain(std::iter::once(config))
                .chain(layers.iter().map(|l| l["digest"].as_str().unwrap()))
            {
                assert!(content.contains_key(d), "{server}: {name}: containerd's content store lacks {d}");
            }
            // Unpacked into the native snapshotter (both platforms with --all-platforms).
            assert!(
                content[config].contains("containerd.io/gc.ref.snapshot.native="),
                "{server}: {name}: config {config} not unpacked: {}",
                content[config]
            );
        }
    }
    // A blob read back from containerd is the served blob (its content store checked the digest on the way in).
    let web = served_manifest(&s, "localhost/app/web", "v1");
    let config = web.json["config"]["digest"].as_str().unwrap();
    let got = c.ctr(&["content", "get", config]).output().unwrap().stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&got)), config);

    let left = c.stop();
    assert!(left.is_empty(), "left behind after containerd stopped: {left:?}");
    eprintln!("containerd pulls via {server}: {:?}", t.elapsed());
}

#[test]
fn containerd_pulls_from_nginx() {
    containerd_pulls("nginx");
}

#[test]
fn containerd_pulls_from_caddy() {
    containerd_pulls("caddy");
}

// ---------------------------------------------------------------------------------------
// dockerd

/// Paths dockerd 20.10 and its managed containerd write outside --data-root/--exec-root
/// unless told otherwise. None of them may appear.
const DOCKER_SIDE_EFFECTS: [&str; 6] = [
    "/etc/docker/key.json",
    "/opt/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/docker.sock",
];

/// A private dockerd (vfs, no networking, no iptables) in its own mount namespace, with
/// its own containerd (dockerd's managed one would create /opt/containerd).
pub(crate) struct Dockerd {
    proc: Daemon,
    sock: PathBuf,
    log: PathBuf,
    docker: PathBuf,
    made_run_docker: bool,
    dir: TempDir,
    containerd: Containerd,
}

impl Dockerd {
    pub(crate) fn start(insecure_registry: &str) -> Dockerd {
        Dockerd::start_in(Some(insecure_registry), None)
    }

    /// `etc_docker`: a directory dockerd sees as /etc/docker (bind-mounted in its private
    /// mount namespace), e.g. holding certs.d/HOST:PORT/ca.crt.
    pub(crate) fn start_in(insecure_registry: Option<&str>, etc_docker: Option<&Path>) -> Dockerd {
        let bin = need("dockerd", "Debian package docker.io");
        // The CLI of the same release when there is one; a newer one negotiates down.
        let docker = match Path::new("/usr/bin/docker") {
            p if p.is_file() => p.to_path_buf(),
            _ => need("docker", "Debian package docker.io"),
        };
        let unshare = need("unshare", "Debian package util-linux");
        let before: Vec<bool> = DOCKER_SIDE_EFFECTS.iter().map(|p| Path::new(p).exists()).collect();
        let made_run_docker = !Path::new("/run/docker").exists();
        let containerd = Containerd::start("dkc");
        let dir = TempDir::new("dkd");
        let d = dir.path();
        // An explicit (empty) daemon config keeps /etc/docker/daemon.json out; the key
        // path keeps the libtrust key out of /etc/docker.
        let config = d.join("daemon.json");
        std::fs::write(&config, serde_json::json!({ "deprecated-key-path": d.join("key.json") }).to_string()).unwrap();
        let sock = d.join("d.sock");
        let log = d.join("dockerd.log");
        // A private mount namespace: dockerd's bind mount of its data root (and anything
        // else it mounts) dies with it.
        let mut cmd = Command::new(unshare);
        cmd.args(["--mount", "--propagation", "private"]);
        if let Some(etc) = etc_docker {
            cmd.args(["sh", "-c", "mount --bind \"$0\" /etc/docker && exec \"$@\""]).arg(etc);
        }
        cmd.arg(bin)
            .arg("--config-file")
            .arg(&config)
            .arg("--containerd")
            .arg(&containerd.sock)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .args(insecure_registry.map(|r| ["--insecure-registry", r]).into_iter().flatten())
            .process_group(0);
        let proc = Daemon::spawn("dockerd", cmd, Some(log.clone()));
        let mut dk = Dockerd { proc, sock, log, docker, made_run_docker, dir, containerd };
        let (sock, mut version) = (dk.sock.clone(), dk.docker(&["version"]));
        dk.proc.wait_ready("dockerd to answer `docker version`", Duration::from_secs(60), |_| {
            sock.exists() && version.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        for (p, existed) in DOCKER_SIDE_EFFECTS.iter().zip(before) {
            assert!(existed || !Path::new(p).exists(), "dockerd created {p} outside its TempDir");
        }
        dk
    }

    pub(crate) fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("-H").arg(format!("unix://{}", self.sock.display())).args(args);
        // The CLI's own config (and anything it caches) stays in the TempDir too.
        cmd.env("DOCKER_CONFIG", self.dir.path().join("cli"));
        cmd
    }

    pub(crate) fn docker_out(&self, args: &[&str]) -> String {
        stdout_or_panic(&mut self.docker(args), &format!("docker {args:?}"), &self.log)
    }

    /// Stops dockerd and its containerd; returns what had to be cleaned up besides them.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        self.proc.stop();
        let mut left = sweep(self.dir.path());
        left.extend(self.containerd.stop());
        // dockerd 20.10 always creates /run/docker/plugins (plugin discovery, not
        // configurable); remove it again if it was not there before (only if empty).
        if self.made_run_docker {
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
        left
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// docker pull by tag and by digest: the image id is the fixture's podman image id (the
/// config digest) and the repo digest is the served manifest's digest.
fn dockerd_pulls(server: &'static str) {
    let t = Instant::now();
    let fx = Fixture::shared("overlay");
    let s = Daemon::serve(&fx.storage, server);
    let mut dk = Dockerd::start(s.addr());
    for name in ["localhost/app/web:v1", "localhost/dockerfmt:1", "localhost/pulled/gzip:1", "localhost/multi:1"] {
        let (repo, tag) = split_ref(name);
        let top = served_manifest(&s, repo, tag);
        let want_id =
            if name == "localhost/multi:1" { multi_part_id(fx, host_arch()) } else { podman_image_id(&fx.root, name) };
        let remote = format!("{}/{name}", s.addr());
        let by_digest = format!("{}/{repo}@{}", s.addr(), top.digest);
        for r in [&remote, &by_digest] {
            let out = dk.docker_out(&["pull", "-q", r]);
            assert_eq!(out.trim(), r.as_str(), "{server}: docker pull -q {r}");
            let id = dk.docker_out(&["image", "inspect", "--format", "{{.Id}}", r]);
            assert_eq!(id.trim(), format!("sha256:{want_id}"), "{server}: docker image id of {r} vs podman's");
        }
        let digests = dk.docker_out(&["image", "inspect", "--format", "{{json .RepoDigests}}", &remote]);
        let digests: Vec<String> = serde_json::from_str(digests.trim()).unwrap();
        assert!(digests.contains(&by_digest), "{server}: {remote}: RepoDigests {digests:?} lack {by_digest}");
    }
    let left = dk.stop();
    assert!(left.is_empty(), "left behind after dockerd stopped: {left:?}");
    eprintln!("dockerd pulls via {server}: {:?}", t.elapsed());
}

#[test]
fn dockerd_pulls_from_nginx() {
    dockerd_pulls("nginx");
}

#[test]
fn dockerd_pulls_from_caddy() {
    dockerd_pulls("caddy");
}

// ---------------------------------------------------------------------------------------
// oras (Python)

/// tests/it/oras_pull.py (the PyPI oras library over plain http) resolves tags with HEAD,
/// checks Docker-Content-Digest, pulls manifests by tag and digest and every blob and
/// checks their digests; here the configs it downloaded are checked against podman's ids.
fn oras_pulls(server: &'static str) {
    let t = Instant::now();
    let python = repo_root().join("target/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run .ci/setup, or `python3 -m venv target/venv && target/venv/bin/pip install oras`",
        python.display()
    );
    let fx = Fixture::shared("overlay");
    let s = Daemon::serve(&fx.storage, server);
    let out_dir = TempDir::new("oras");
    let images = ["localhost/app/web:v1", "localhost/dockerfmt:1", "localhost/pulled/gzip:1"];
    let out = Command::new(&python)
        .arg(repo_root().join("tests/it/oras_pull.py"))
        .arg(s.addr())
        .arg(out_dir.path())
        .args(images)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("all ok"),
        "oras_pull.py against {server} failed ({}):\n{text}",
        out.status
    );
    for name in images {
        let (repo, _) = split_ref(name);
        let config = out_dir.path().join(repo.replace('/', "_")).join("config");
        assert_eq!(sha256_file(&config), podman_image_id(&fx.root, name), "{server}: {name}: config oras downloaded");
    }
    eprintln!("oras pulls via {server}: {:?}", t.elapsed());
}

#[test]
fn oras_pulls_from_nginx() {
    oras_pulls("nginx");
}

#[test]
fn oras_pulls_from_caddy() {
    oras_pulls("caddy");
}
