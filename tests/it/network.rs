//! Issue: serving on a network. `cstor-fs serve` with TLS (a certificate the test makes
//! with openssl, and `--tls`'s own CA kept in a state dir) and `--htpasswd` (made by
//! `htpasswd -B`), with nginx and with Caddy; podman, skopeo, ctr and docker pull with
//! TLS verification on and credentials, and get exactly the store's digests and ids;
//! curl sees 401s with the Basic challenge and a JSON UNAUTHORIZED body. Plain HTTP
//! beyond loopback is refused. All traffic goes to 127.0.0.0/8.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::clients::{Containerd, Dockerd};
use crate::common::*;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-pw";
const CREDS: &str = "alice:s3cret-pw";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// An htpasswd file with alice (bcrypt, by `htpasswd -B`) and a second user.
fn htpasswd_file(dir: &Path) -> PathBuf {
    let f = dir.join("htpasswd");
    run(Command::new("htpasswd").args(["-B", "-b", "-c"]).arg(&f).args([USER, PASSWORD]));
    run(Command::new("htpasswd").args(["-B", "-b"]).arg(&f).args(["bob", "other-pw"]));
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.lines().all(|l| l.split(':').nth(1).unwrap().starts_with("$2y$")), "{text}");
    // Root-only, as it should be: nginx's workers (nobody) still get to check passwords.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// A CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI.
/// Returns (ca.crt, server.crt, server.key).
fn openssl_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt"))
        .args(["-days", "2", "-subj", "/CN=cstor-fs test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr"))
        .args(["-subj", "/CN=127.0.0.1"]));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

/// A directory holding only `ca.crt`, as `--cert-dir` and certs.d want it.
fn cert_dir(parent: &Path, ca: &Path) -> PathBuf {
    let d = parent.join("certs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(ca, d.join("ca.crt")).unwrap();
    d
}

/// `cstor-fs serve` with extra flags, stdout kept in a file (a [`Daemon`]: stopped,
/// reaped and unmounted on drop).
struct NetServe {
    daemon: Daemon,
    addr: String,
    server: &'static str,
    out: PathBuf,
    runtime_dir: PathBuf,
}

impl NetServe {
    /// Starts serve and waits until `GET https://ADDR/v2/` (CA `ca`) answers 200 or 401.
    fn start(
        storage: &Path,
        server: &'static str,
        tmp: &Path,
        ca: Option<&Path>,
        extra: &[&std::ffi::OsStr],
    ) -> NetServe {
        let addr = format!("127.0.0.1:{}", free_port());
        let runtime_dir = tmp.join(format!("rt-{}", addr.replace([':', '.'], "_")));
        let out = tmp.join(format!("serve-{}.out", addr.replace([':', '.'], "_")));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--storage")
            .arg(storage)
            .args(["--listen", &addr, "--server", server, "--runtime-dir"])
            .arg(&runtime_dir)
            .args(extra)
            .env("RUST_LOG", "info,fuser=warn");
        let mut daemon = Daemon::spawn(&format!("cstor-fs serve ({server})"), cmd, Some(out.clone()))
            .mounted_at(&runtime_dir.join("mnt"));
        let runtime_dir = runtime_dir.clone();
        daemon.wait_ready("cstor-fs serve to print its instructions", Duration::from_secs(60), |d| {
            d.log().contains("Ctrl-C stops")
        });
        let s = NetServe { daemon, addr, server, out, runtime_dir };
        if let Some(ca) = ca {
            let (status, _, _) = curl(&s.url("/v2/"), ca, None);
            assert!(status == 200 || status == 401, "{server}: GET /v2/ over TLS: {status}");
        }
        s
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.stop()
    }
}

/// A GET with curl verifying the server with `ca`: (status, lower-cased headers, body),
/// plus the HTTP version in the `:version` header.
fn curl(url: &str, ca: &Path, user: Option<&str>) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--max-time", "60", "--cacert"]).arg(ca).args(["-H", &format!("Accept: {MANIFEST_TYPES}")]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let raw = run(c.arg(url)).stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{url}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let status = first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers: HashMap<String, String> = HashMap::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_string();
        // Repeated headers are joined with " | " so a duplicate shows.
        headers.entry(k).and_modify(|e| *e = format!("{e} | {v}")).or_insert(v);
    }
    headers.insert(":version".into(), first.split(' ').next().unwrap_or_default().to_string());
    (status, headers, raw[split + 4..].to_vec())
}

/// `/v2/`, a manifest and a blob: 401 with the Basic challenge and a JSON UNAUTHORIZED
/// body without credentials and with wrong ones; 200 and the right bytes with them.
fn auth_is_enforced(s: &NetServe, ca: &Path) {
    let (status, h, body) = curl(&s.url("/v2/localhost/app/web/manifests/v1"), ca, Some(CREDS));
    assert_eq!(status, 200, "{}: {}", s.server, String::from_utf8_lossy(&body));
    let digest = format!("sha256:{}", sha256_hex(&body));
    assert_eq!(h.get("docker-content-digest"), Some(&digest), "{}", s.server);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let blob = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let urls = [
        s.url("/v2/"),
        s.url(&format!("/v2/localhost/app/web/manifests/{digest}")),
        s.url(&format!("/v2/localhost/app/web/blobs/{blob}")),
    ];
    for url in &urls {
        for user in [None, Some("alice:wrong"), Some("mallory:s3cret-pw")] {
            let (status, h, body) = curl(url, ca, user);
            let what = format!("{}: GET {url} as {user:?}", s.server);
            assert_eq!(status, 401, "{what}: {}", String::from_utf8_lossy(&body));
            assert_eq!(h.get("www-authenticate").map(String::as_str), Some(r#"Basic realm="cstor-fs""#), "{what}");
            assert_eq!(h.get("content-type").map(String::as_str), Some("application/json"), "{what}");
            let j: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(j["errors"][0]["code"], "UNAUTHORIZED", "{what}: {j}");
            assert!(j["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {j}");
        }
        for user in [CREDS, "bob:other-pw"] {
            let (status, h, body) = curl(url, ca, Some(user));
            assert_eq!(status, 200, "{}: GET {url} as {user}", s.server);
            // HTTP/2 over TLS (curl offers h2 by ALPN).
            assert_eq!(h[":version"], "HTTP/2", "{}: {url}", s.server);
            if url.contains("/blobs/") {
                assert_eq!(format!("sha256:{}", sha256_hex(&body)), blob);
            }
        }
    }
    // Answers the servers compute themselves (referrers, the index page, a bad `last`, an
    // unknown endpoint) are no way around the password either.
    for path in [
        format!("/v2/localhost/app/web/referrers/{digest}"),
        "/index.html".to_string(),
        "/v2/localhost/app/web/tags/list?last=-bad".to_string(),
        "/v2/no/such/endpoint".to_string(),
    ] {
        let (status, h, body) = curl(&s.url(&path), ca, None);
        let what = format!("{}: GET {path} without credentials", s.server);
        assert_eq!(status, 401, "{what}: {}", String::from_utf8_lossy(&body));
        assert_eq!(h.get("www-authenticate").map(String::as_str), Some(r#"Basic realm="cstor-fs""#), "{what}");
    }
}

/// skopeo inspect and copy with `--cert-dir` and creds: every blob hashes to its name.
fn skopeo_copies(s: &NetServe, fx: &Fixture, certs: &Path, tmp: &Path) {
    let certs = certs.to_str().unwrap();
    for name in ["localhost/app/web:v1", "localhost/dockerfmt:1"] {
        let src = format!("docker://{}/{name}", s.addr);
        let raw = stdout(&mut fx.tool("skopeo", &["inspect", "--raw", "--cert-dir", certs, "--creds", CREDS, &src]));
        let (status, h, _) = curl(
            &s.url(&format!("/v2/{}/manifests/{}", name.split_once(':').unwrap().0, name.split_once(':').unwrap().1)),
            &Path::new(certs).join("ca.crt"),
            Some(CREDS),
        );
        assert_eq!(status, 200);
        assert_eq!(h["docker-content-digest"], format!("sha256:{}", sha256_hex(raw.as_bytes())), "{name}");
        let out = tmp.join(format!("skopeo-{}-{}", s.server, name.replace(['/', ':'], "_")));
        let dst = format!("dir:{}", out.display());
        run(&mut fx.tool("skopeo", &["copy", "--quiet", "--src-cert-dir", certs, "--src-creds", CREDS, &src, &dst]));
        let mut blobs = 0;
        for e in std::fs::read_dir(&out).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_str().unwrap().to_string();
            if n.len() == 64 {
                assert_eq!(sha256_file(&p), n, "{}: {name}: blob {n}", s.server);
                blobs += 1;
            }
        }
        assert!(blobs >= 2, "{name}: {blobs} blobs");
    }
    // Without the CA, verification fails; without credentials, so does the pull.
    let src = format!("docker://{}/localhost/app/web:v1", s.addr);
    let out = fx.tool("skopeo", &["inspect", "--raw", "--creds", CREDS, &src]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("certificate"), "{}: no CA: {err}", s.server);
    let out = fx.tool("skopeo", &["inspect", "--raw", "--cert-dir", certs, &src]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unauthorized"), "{}: no creds: {err}", s.server);
}

/// podman pulls into a private store with `--cert-dir` and `--creds`: same image ids.
fn podman_pulls(s: &NetServe, fx: &Fixture, certs: &Path) {
    let certs = certs.to_str().unwrap();
    let dst = MiniStore::new("overlay");
    for name in ["localhost/app/web:v1", "localhost/pulled/gzip:1"] {
        let remote = format!("{}/{name}", s.addr);
        run(&mut dst.tool("podman", &["pull", "-q", "--cert-dir", certs, "--creds", CREDS, &remote]));
        assert_eq!(podman_image_id(dst.root(), &remote), podman_image_id(&fx.root, name), "{}: {name}", s.server);
    }
    let remote = format!("{}/localhost/dockerfmt:1", s.addr);
    let out =
        dst.tool("podman", &["pull", "-q", "--cert-dir", certs, "--creds", "alice:wrong", &remote]).output().unwrap();
    assert!(!out.status.success(), "{}: podman pulled with a wrong password", s.server);
}

/// ctr pulls with `--tlscacert` and `--user`: containerd's target digest is the served
/// one and its content store (which checks every digest on the way in) holds the config.
///
/// containerd 1.6 speaks plain HTTP to a localhost or 127.0.0.1 registry whatever
/// `--tlscacert` says, so the test names the https server in a hosts.toml (as serve
/// prints it for containerd) and passes `--tlscacert` too.
fn ctr_pulls(s: &NetServe, ca: &Path, tmp: &Path) {
    let mut c = Containerd::start("nctd");
    let ca_s = ca.to_str().unwrap();
    let hosts = tmp.join("ctr-hosts");
    std::fs::create_dir_all(hosts.join(&s.addr)).unwrap();
    std::fs::write(
        hosts.join(&s.addr).join("hosts.toml"),
        format!("server = \"https://{a}\"\n[host.\"https://{a}\"]\n  ca = \"{ca_s}\"\n  capabilities = [\"pull\", \"resolve\"]\n", a = s.addr),
    )
    .unwrap();
    let hosts_s = hosts.to_str().unwrap();
    for name in ["localhost/app/web:v1", "localhost/multi:1"] {
        let remote = format!("{}/{name}", s.addr);
        let mut args = vec![
            "images",
            "pull",
            "--hosts-dir",
            hosts_s,
            "--tlscacert",
            ca_s,
            "--user",
            CREDS,
            "--snapshotter",
            "native",
        ];
        if name == "localhost/multi:1" {
            args.push("--all-platforms");
        }
        args.push(&remote);
        c.ctr_out(&args);
        let (repo, tag) = name.rsplit_once(':').unwrap();
        let (_, h, body) = curl(&s.url(&format!("/v2/{repo}/manifests/{tag}")), ca, Some(CREDS));
        let digest = format!("sha256:{}", sha256_hex(&body));
        assert_eq!(h["docker-content-digest"], digest);
        let listed = c.ctr_out(&["images", "ls"]);
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{remote} ")) && l.contains(&digest)),
            "{}: ctr images ls lacks {remote} at {digest}:\n{listed}",
            s.server
        );
        let m: Value = serde_json::from_slice(&body).unwrap();
        if let Some(config) = m["config"]["digest"].as_str() {
            let got = c.ctr(&["content", "get", config]).output().unwrap().stdout;
            assert_eq!(format!("sha256:{}", sha256_hex(&got)), config);
        }
    }
    let remote = format!("{}/localhost/dockerfmt:1", s.addr);
    let out = c.ctr(&["images", "pull", "--hosts-dir", hosts_s, "--user", "alice:wrong", &remote]).output().unwrap();
    assert!(!out.status.success(), "{}: ctr pulled with a wrong password", s.server);
    let left = c.stop();
    assert!(left.is_empty(), "left behind after containerd stopped: {left:?}");
}

fn given_certificate(server: &'static str) {
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("net");
    let (ca, cert, key) = openssl_ca(tmp.path());
    let pw = htpasswd_file(tmp.path());
    let certs = cert_dir(tmp.path(), &ca);
    let args: Vec<&std::ffi::OsStr> = vec![
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--htpasswd".as_ref(),
        pw.as_os_str(),
    ];
    let mut s = NetServe::start(&fx.storage, server, tmp.path(), Some(&ca), &args);
    assert!(s.stdout().contains(&format!("https://{}", s.addr)), "{}", s.stdout());
    auth_is_enforced(&s, &ca);
    skopeo_copies(&s, fx, &certs, tmp.path());
    podman_pulls(&s, fx, &certs);
    ctr_pulls(&s, &ca, tmp.path());
    let st = s.stop().expect("was running");
    assert!(st.success(), "{st}");
    assert!(!s.runtime_dir.exists(), "runtime dir left behind");
}

#[test]
fn nginx_https_and_htpasswd_with_a_given_certificate() {
    given_certificate("nginx");
}

#[test]
fn caddy_https_and_htpasswd_with_a_given_certificate() {
    given_certificate("caddy");
}

/// `--tls`: the CA and certificate are made once in the state dir (keys 0600), serve
/// prints where and how to trust them, podman pulls with that CA, and a restart reuses
/// the same files byte for byte.
fn self_signed(server: &'static str) {
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("nettls");
    let state = tmp.path().join("state");
    let pw = htpasswd_file(tmp.path());
    let args: Vec<&std::ffi::OsStr> =
        vec!["--tls".as_ref(), "--state-dir".as_ref(), state.as_os_str(), "--htpasswd".as_ref(), pw.as_os_str()];
    let ca = state.join("tls/ca.crt");
    let mut first: Option<(Vec<u8>, Vec<u8>)> = None;
    for round in 0..2 {
        let mut s = NetServe::start(&fx.storage, server, tmp.path(), None, &args);
        let out = s.stdout();
        let files = (std::fs::read(&ca).unwrap(), std::fs::read(state.join("tls/server.crt")).unwrap());
        match &first {
            None => first = Some(files),
            Some(f) => assert!(f == &files, "{server}: restart made a new CA or certificate"),
        }
        for k in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(state.join("tls").join(k)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k}");
        }
        for want in [
            format!("install -D -m 0644 {} /etc/containers/certs.d/{}/ca.crt", ca.display(), s.addr),
            format!("/etc/docker/certs.d/{}/ca.crt", s.addr),
            format!("/etc/containerd/certs.d/{}/hosts.toml", s.addr),
            format!("--tlscacert {}", ca.display()),
        ] {
            assert!(out.contains(&want), "{server}: serve's output lacks {want:?}:\n{out}");
        }
        // The kept certificate verifies against the kept CA for 127.0.0.1 and localhost.
        let port = s.addr.rsplit_once(':').unwrap().1.to_string();
        let (status, _, _) = curl(&s.url("/v2/_catalog"), &ca, Some(CREDS));
        assert_eq!(status, 200, "{server} round {round}");
        let by_name = run(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-u", CREDS, "--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/v2/")));
        assert_eq!(String::from_utf8_lossy(&by_name.stdout), "200", "{server}: by name localhost");
        if round == 0 {
            let certs = cert_dir(tmp.path(), &ca);
            let dst = MiniStore::new("overlay");
            let remote = format!("{}/localhost/app/web:v1", s.addr);
            run(&mut dst
                .tool("podman", &["pull", "-q", "--cert-dir", certs.to_str().unwrap(), "--creds", CREDS, &remote]));
            assert_eq!(podman_image_id(dst.root(), &remote), podman_image_id(&fx.root, "localhost/app/web:v1"));
        }
        let st = s.stop().expect("was running");
        assert!(st.success(), "{st}");
    }
}

#[test]
fn nginx_tls_makes_a_ca_once_and_reuses_it() {
    self_signed("nginx");
}

#[test]
fn caddy_tls_makes_a_ca_once_and_reuses_it() {
    self_signed("caddy");
}

/// docker login, then docker pull over HTTPS, with the CA in /etc/docker/certs.d (a
/// private directory bind-mounted over /etc/docker in dockerd's own mount namespace).
/// What this does not prove: that dockerd verified the certificate. dockerd always treats
/// 127.0.0.0/8 as an insecure registry (TLS without verification), and all traffic here
/// stays on loopback. It does prove login and pull over TLS (the server speaks nothing
/// else) and byte-exact images.
fn docker_pulls(server: &'static str) {
    assert!(Path::new("/etc/docker").is_dir(), "/etc/docker must exist (as a mount point for the test's own)");
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("netdk");
    let (ca, cert, key) = openssl_ca(tmp.path());
    let pw = htpasswd_file(tmp.path());
    let args: Vec<&std::ffi::OsStr> = vec![
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--htpasswd".as_ref(),
        pw.as_os_str(),
    ];
    let s = NetServe::start(&fx.storage, server, tmp.path(), Some(&ca), &args);
    let etc = tmp.path().join("etc-docker");
    let host_dir = etc.join("certs.d").join(&s.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&ca, host_dir.join("ca.crt")).unwrap();
    let mut dk = Dockerd::start_in(None, Some(&etc));
    let remote = format!("{}/localhost/app/web:v1", s.addr);
    // Not logged in: refused.
    let out = dk.docker(&["pull", "-q", &remote]).output().unwrap();
    assert!(!out.status.success(), "{server}: docker pulled without logging in");
    let mut login = dk.docker(&["login", "-u", USER, "--password-stdin", &s.addr]);
    login.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{server}: docker login: {}", String::from_utf8_lossy(&out.stderr));
    for name in ["localhost/app/web:v1", "localhost/dockerfmt:1"] {
        let r = format!("{}/{name}", s.addr);
        assert_eq!(dk.docker_out(&["pull", "-q", &r]).trim(), r);
        let id = dk.docker_out(&["image", "inspect", "--format", "{{.Id}}", &r]);
        assert_eq!(id.trim(), format!("sha256:{}", podman_image_id(&fx.root, name)), "{server}: {name}");
    }
    let left = dk.stop();
    assert!(left.is_empty(), "left behind after dockerd stopped: {left:?}");
}

#[test]
fn docker_login_and_pull_over_https_from_nginx() {
    docker_pulls("nginx");
}

#[test]
fn docker_login_and_pull_over_https_from_caddy() {
    docker_pulls("caddy");
}

/// Plain HTTP on a non-loopback address is refused before anything starts (exit 1 and a
/// sentence naming the flags); any 127.0.0.0/8 address is loopback and served; a bad
/// htpasswd line is refused by line number.
#[test]
fn serve_refuses_plain_http_beyond_loopback() {
    let fx = Fixture::shared("overlay");
    // Nothing listens or is contacted: the refusal comes before binding.
    for addr in ["0.0.0.0:8000", "192.0.2.10:8000", "[::]:8000", "[2001:db8::1]:8000"] {
        let out = Command::new(BIN).args(["serve", "--listen", addr, "--storage"]).arg(&fx.storage).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {err}");
        for want in ["refusing to serve plain HTTP", "not a loopback address", "--tls", "--tls-cert", "--insecure-http"]
        {
            assert!(err.contains(want), "{addr}: {want:?} missing from: {err}");
        }
    }
    let tmp = TempDir::new("netbad");
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, "# users\nalice:$apr1$xyz$0123456789abcdefghijkl\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--htpasswd"])
        .arg(&bad)
        .arg("--storage")
        .arg(&fx.storage)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 2") && err.contains("not a bcrypt hash") && err.contains("htpasswd -B"), "{err}");

    // 127.0.0.2 is loopback: plain HTTP is served there without --insecure-http.
    let addr = format!("127.0.0.2:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", &addr, "--runtime-dir"])
        .arg(tmp.path().join("rt"))
        .arg("--storage")
        .arg(&fx.storage);
    let mut serve = Daemon::spawn("serve on 127.0.0.2", cmd, None).mounted_at(&tmp.path().join("rt/mnt"));
    serve.wait_ready("serve on 127.0.0.2", Duration::from_secs(60), |_| {
        http_status(&format!("http://{addr}/v2/")) == 200
    });
    let st = serve.stop().unwrap();
    assert!(st.success(), "{st}");
}
