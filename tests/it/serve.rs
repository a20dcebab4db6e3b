//! Issue: serving. `cstor-fs serve` with nginx and Caddy, checked with curl (check.sh),
//! skopeo and podman against real stores.

use std::process::Command;

use crate::common::*;

fn check_sh(s: &Daemon) {
    let out = Command::new(repo_root().join("tests/http/check.sh"))
        .arg(s.mnt())
        .arg(s.url())
        .env("CHECK_MAX_BLOB_BYTES", "300000000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check.sh against {} failed:\n{text}\n{}",
        s.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
}

/// skopeo copies by tag and by digest; every blob hashes to its name.
pub(crate) fn skopeo_copies(s: &Daemon, fx: &Fixture) {
    let tmp = TempDir::new("skopeo");
    for (name, all) in [
        ("localhost/app/web:v1", false),
        ("localhost/dockerfmt:1", false),
        ("localhost/pulled/gzip:1", false),
        ("localhost/pulled/zstd:1", false),
        ("localhost/multi:1", true),
    ] {
        let src = format!("docker://{}/{name}", s.addr());
        let inspect = stdout(&mut fx.tool("skopeo", &["inspect", "--raw", "--tls-verify=false", &src]));
        let digest = format!("sha256:{}", sha256_hex(inspect.as_bytes()));
        let repo = name.rsplit_once(':').unwrap().0;
        let by_digest = format!("docker://{}/{repo}@{digest}", s.addr());
        for (i, r) in [&src, &by_digest].into_iter().enumerate() {
            let out = tmp.path().join(format!("{}-{i}", repo.replace('/', "_")));
            let mut args = vec!["copy", "--quiet", "--src-tls-verify=false"];
            if all {
                args.push("--all");
            }
            let dst = format!("dir:{}", out.display());
            args.extend([r.as_str(), dst.as_str()]);
            run(&mut fx.tool("skopeo", &args));
            let mut blobs = 0;
            for e in std::fs::read_dir(&out).unwrap() {
                let p = e.unwrap().path();
                let n = p.file_name().unwrap().to_str().unwrap().to_string();
                if n.len() == 64 {
                    assert_eq!(sha256_file(&p), n, "{name} via {r}: blob {n}");
                    blobs += 1;
                }
            }
            assert!(blobs >= 2, "{name}: {blobs} blobs");
        }
    }
}

/// podman pulls into a second private store and gets the same image id.
pub(crate) fn podman_pull_same_id(s: &Daemon, fx: &Fixture) {
    let dst = MiniStore::with_tools("overlay", fx.tools);
    for name in ["localhost/app/web:v1", "localhost/dockerfmt:1", "localhost/pulled/gzip:1", "localhost/pulled/zstd:1"]
    {
        let remote = format!("{}/{name}", s.addr());
        run(&mut dst.tool("podman", &["pull", "-q", "--tls-verify=false", &remote]));
        let id = |mut c: Command| stdout(&mut c).trim().to_string();
        let inspect = |n| ["image", "inspect", "--format", "{{.Id}}", n];
        assert_eq!(id(dst.tool("podman", &inspect(&remote))), id(fx.tool("podman", &inspect(name))), "{name}");
    }
}

fn serve_everything(server: &'static str) {
    let fx = Fixture::shared("overlay");
    let mut s = Daemon::serve(&fx.storage, server);
    check_sh(&s);
    skopeo_copies(&s, fx);
    podman_pull_same_id(&s, fx);
    // SIGTERM: clean exit, nothing left behind.
    let st = s.stop().expect("was running");
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&s.mnt()), "mount left behind");
    assert!(!s.runtime_dir().exists(), "runtime dir left behind");
    let leftovers = Command::new("pgrep").arg("-f").arg(s.runtime_dir().to_str().unwrap()).output().unwrap();
    assert!(leftovers.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&leftovers.stdout));
    assert_eq!(http_status(&format!("{}/v2/", s.url())), 0, "server still answering");
}

#[test]
fn nginx_serves_clients() {
    serve_everything("nginx");
}

#[test]
fn caddy_serves_clients() {
    serve_everything("caddy");
}

#[test]
fn serve_refuses_a_taken_port_and_a_missing_server() {
    let fx = Fixture::shared("overlay");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let out = Command::new(BIN).args(["serve", "--listen", &addr, "--storage"]).arg(&fx.storage).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen") && err.contains(&addr), "{err}");
    // caddy lives in /usr/bin: a PATH without it means it is missing.
    let out = Command::new(BIN)
        .args(["serve", "--server", "caddy", "--listen", &format!("127.0.0.1:{}", free_port()), "--storage"])
        .arg(&fx.storage)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("caddy is not installed"), "{err}");
}

#[test]
fn systemd_unit_is_valid_and_notifies_readiness() {
    let fx = Fixture::shared("overlay");
    let unit = repo_root().join("systemd/cstor-fs.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("Type=notify") && text.contains("Restart=on-failure"));
    assert!(text.contains("allow_other,auto_unmount") && text.contains("/srv/registry"));
    // The unit names /usr/local/bin/cstor-fs: verify it where that is this build.
    if std::fs::read("/usr/local/bin/cstor-fs").ok() == std::fs::read(BIN).ok() {
        let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("cstor-fs.service:"), "{err}");
    }
    // Type=notify: READY=1 arrives on NOTIFY_SOCKET once the mount is live.
    let tmp = TempDir::new("notify");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mnt = tmp.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(&fx.storage)
        .arg(&mnt)
        .args(["-o", "allow_other,auto_unmount"])
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(is_mounted(&mnt), "READY=1 before the mount was live");
    // SIGTERM (systemctl stop) unmounts and exits 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&mnt));
}
