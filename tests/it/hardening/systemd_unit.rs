//! The shipped systemd unit under a real systemd.

use super::*;

/// systemd as PID 1 of a private PID + mount namespace (tests/fixtures/systemd-ns.sh),
/// with this build as /usr/local/bin/cstor-fs. Killing it on drop ends every process and
/// mount of the namespace.
struct SystemdNs {
    unshare: Daemon,
    /// systemd's pid in our namespace (paths below `/proc/<pid>/root` see its mounts).
    pid: u32,
    log: PathBuf,
    _tmp: TempDir,
}

impl SystemdNs {
    /// Boots it; `dirs` (below /tmp) are the only part of /tmp it sees.
    fn boot(dirs: &[&Path]) -> SystemdNs {
        assert!(Path::new("/lib/systemd/systemd").exists(), "systemd is not installed");
        let tmp = TempDir::new("hsd");
        let log = tmp.path().join("systemd.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--propagation", "private"])
            .arg(repo_root().join("tests/fixtures/systemd-ns.sh"))
            .arg(BIN)
            .args(dirs)
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(tmp.path().join("unshare.err")).unwrap());
        let unshare = Daemon::spawn("systemd-ns.sh", cmd, None);
        let mut sd = SystemdNs { pid: 0, unshare, log, _tmp: tmp };
        let children = format!("/proc/{0}/task/{0}/children", sd.unshare.pid());
        wait_for("systemd to start", Duration::from_secs(20), || {
            if let Some(st) = sd.unshare.exited() {
                panic!("systemd-ns.sh exited ({st}): {}", sd.log());
            }
            let Some(pid) = std::fs::read_to_string(&children).ok().and_then(|c| c.trim().parse().ok()) else {
                return false;
            };
            sd.pid = pid;
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
                && sd.systemctl(&["is-system-running"]).status.code().is_some_and(|c| c != 1)
                && !String::from_utf8_lossy(&sd.systemctl(&["is-system-running"]).stdout).contains("starting")
        });
        sd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `systemctl ARGS` inside the namespace.
    fn systemctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--", "systemctl", "--no-pager"])
            .args(args)
            .output()
            .unwrap()
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        let o = self.systemctl(&["show", "-p", prop, "--value", unit]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// A path as seen inside the namespace.
    fn path(&self, p: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(p.strip_prefix("/").unwrap())
    }

    fn is_mounted(&self, dir: &Path) -> bool {
        let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", self.pid)).unwrap_or_default();
        mounts.lines().any(|l| l.split(' ').nth(1) == dir.to_str() && l.contains("fuse"))
    }
}

impl Drop for SystemdNs {
    fn drop(&mut self) {
        if self.pid != 0 {
            // SAFETY: signalling the namespace's init; the kernel then kills the rest.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        self.unshare.kill();
    }
}

#[test]
fn systemd_unit_is_ready_when_mounted_restarts_after_kill_9_and_serves_the_same_digests() {
    assert!(Path::new("/usr/bin/nsenter").exists(), "nsenter (util-linux) is missing");
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let tmp = TempDir::new("hsdm");
    let mnt = tmp.path().join("registry");
    let sd = SystemdNs::boot(&[s.root(), tmp.path()]);
    // The shipped unit, verbatim, plus a drop-in naming the test store and mount point.
    let units = sd.path(Path::new("/etc/systemd/system"));
    std::fs::copy(repo_root().join("systemd/cstor-fs.service"), units.join("cstor-fs.service")).unwrap();
    std::fs::create_dir(units.join("cstor-fs.service.d")).unwrap();
    // There is no journald in the namespace: the daemon's output goes to a file.
    let daemon_log = tmp.path().join("daemon.log");
    let dropin = format!(
        "[Service]\nEnvironment=CSTOR_FS_STORE={} CSTOR_FS_MOUNT={}\nStandardOutput=append:{log}\nStandardError=append:{log}\n",
        s.storage.display(),
        mnt.display(),
        log = daemon_log.display()
    );
    write_bytes(&units.join("cstor-fs.service.d/test.conf"), dropin.as_bytes());
    let ok = |o: std::process::Output, what: &str| {
        if !o.status.success() {
            let st = sd.systemctl(&["status", "-l", "--lines=30", "cstor-fs.service"]);
            panic!(
                "{what}: {}{}\n{}\n{}\n--- daemon\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&st.stdout),
                sd.log(),
                std::fs::read_to_string(&daemon_log).unwrap_or_default()
            );
        }
    };
    ok(sd.systemctl(&["daemon-reload"]), "daemon-reload");
    // Type=notify: `start` returns once READY=1 came, i.e. the mount is live.
    ok(sd.systemctl(&["start", "cstor-fs.service"]), "start");
    assert!(sd.is_mounted(&mnt), "started but not mounted:\n{}", sd.log());
    let v2 = sd.path(&mnt).join("v2");
    let digests: Vec<_> =
        good.iter().map(|g| std::fs::read_link(v2.join(&g.repo).join("manifests/1")).unwrap()).collect();
    for g in &good {
        check_image(&v2, g).unwrap();
    }
    let first = sd.show("cstor-fs.service", "MainPID");
    assert_ne!(first, "0");
    // kill -9 of the daemon (its pid as the namespace sees it).
    ok(
        Command::new("nsenter")
            .arg("-t")
            .arg(sd.pid.to_string())
            .args(["-m", "-p", "--", "kill", "-9", &first])
            .output()
            .unwrap(),
        "kill -9",
    );
    wait_for("systemd to restart cstor-fs", Duration::from_secs(20), || {
        let pid = sd.show("cstor-fs.service", "MainPID");
        pid != "0" && pid != first && sd.show("cstor-fs.service", "ActiveState") == "active" && sd.is_mounted(&mnt)
    });
    assert_eq!(sd.show("cstor-fs.service", "NRestarts"), "1");
    for (g, d) in good.iter().zip(&digests) {
        assert_eq!(&std::fs::read_link(v2.join(&g.repo).join("manifests/1")).unwrap(), d);
        check_image(&v2, g).unwrap();
    }
    // A clean stop unmounts.
    ok(sd.systemctl(&["stop", "cstor-fs.service"]), "stop");
    assert!(!sd.is_mounted(&mnt), "still mounted after stop");
    assert_eq!(sd.show("cstor-fs.service", "Result"), "success");

    // The least-privilege drop-in, verbatim: its own user, only CAP_DAC_READ_SEARCH, and a
    // root-owned 0600 payload still served.
    let (uid, _) = test_user("cstor-fs");
    let secret = import(&s, "localhost/secret:1", &[("etc/shadow", b"root:*:1::::::\n")]);
    let shadow = diff_dir(&s.storage, &secret.layer).join("etc/shadow");
    std::fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&s.storage, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(
        repo_root().join("systemd/cstor-fs-unprivileged.conf"),
        units.join("cstor-fs.service.d/unprivileged.conf"),
    )
    .unwrap();
    ok(sd.systemctl(&["daemon-reload"]), "daemon-reload");
    ok(sd.systemctl(&["start", "cstor-fs.service"]), "start (unprivileged)");
    let pid = sd.show("cstor-fs.service", "MainPID");
    let status = std::fs::read_to_string(sd.path(Path::new("/proc")).join(&pid).join("status")).unwrap();
    let line = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap().to_string();
    assert!(line("Uid:").split_whitespace().skip(1).all(|x| x == uid.to_string()), "{}", line("Uid:"));
    assert!(line("CapEff:").ends_with("0000000000000004"), "{}", line("CapEff:"));
    for g in good.iter().chain([&secret]) {
        check_image(&v2, g).unwrap_or_else(|e| panic!("{}: {e:?}\n{}", g.name, sd.log()));
    }
    ok(sd.systemctl(&["stop", "cstor-fs.service"]), "stop (unprivileged)");
    assert!(!sd.is_mounted(&mnt), "still mounted after stop");
}
