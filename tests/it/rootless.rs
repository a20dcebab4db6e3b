//! Rootless stores: a real unprivileged user with subordinate ids builds images with
//! rootless podman (files of mode 0000/0600 and a 0700 directory, owned by root and by
//! uid 1000 inside the image), pulls a gzip-compressed one back through a loopback
//! docker-registry, and then, as that user (no root, no --privileged), lists, verifies,
//! mounts and serves its own default store. A second user without subordinate ids gets
//! the clear error, what it can read, and EIO plus a log line for the rest.
//!
//! The users are made with `useradd` and removed with `userdel`: the one with subordinate
//! ids and its images once per storage driver, shared by that driver's tests (each check
//! is a test of its own, failing alone) and removed when the test binary exits; the others
//! per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

fn need_tools() {
    for t in ["podman", "skopeo", "docker-registry", "newuidmap", "newgidmap", "getsubids", "fusermount3", "nginx"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin", "/usr/bin"].map(PathBuf::from))
            .any(|d| d.join(t).is_file());
        assert!(found, "{t} is missing: the rootless tests need it (.ci/setup installs podman, uidmap, ...)");
    }
}

/// An unprivileged user made for one test, with a private directory as its HOME and
/// XDG_RUNTIME_DIR, and its own copy of the cstor-fs binary.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    dir: TempDir,
}

impl User {
    fn new(subids: bool) -> User {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("cstor-rl{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = TempDir::new("rl");
        let count = if subids { "65536" } else { "0" };
        // useradd allocates a free subordinate range (or none).
        run(Command::new("useradd").args(["-M", "-s", "/bin/sh", "-d"]).arg(dir.path().join("home")).args([
            "-K",
            &format!("SUB_UID_COUNT={count}"),
            "-K",
            &format!("SUB_GID_COUNT={count}"),
            &name,
        ]));
        let id = |flag: &str| stdout(Command::new("id").arg(flag).arg(&name)).trim().parse::<u32>().unwrap();
        let u = User { uid: id("-u"), gid: id("-g"), name, dir };
        for d in ["home", "run", "bin"] {
            std::fs::create_dir_all(u.dir.path().join(d)).unwrap();
        }
        std::fs::copy(BIN, u.bin()).unwrap();
        let conf = u.home().join(".config/containers");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        std::fs::write(
            conf.join("containers.conf"),
            "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        run(Command::new("chown").arg("-R").arg(format!("{}:{}", u.uid, u.gid)).arg(u.dir.path()));
        run(Command::new("chmod").arg("0700").arg(u.dir.path().join("run")));
        let subuids = Command::new("getsubids").arg(&u.name).output().unwrap();
        assert_eq!(subuids.status.success(), subids, "getsubids {}: {subuids:?}", u.name);
        u
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin/cstor-fs")
    }

    /// The store rootless podman (and cstor-fs) use by default for this user.
    fn default_store(&self) -> PathBuf {
        self.home().join(".local/share/containers/storage")
    }

    /// `prog args` as this user (no supplementary groups), with a clean environment.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(prog);
        c.args(args)
            .uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("USER", &self.name)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("RUST_LOG", "info,fuser=warn")
            .current_dir("/");
        c
    }

    fn cstor(&self, args: &[&str]) -> Command {
        self.cmd(self.bin(), args)
    }

    fn podman(&self, args: &[&str]) -> Command {
        self.cmd("podman", args)
    }

    /// A directory this user owns (for build contexts and mount points).
    fn mkdir(&self, rel: &str) -> PathBuf {
        let d = self.dir.path().join(rel);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(self.uid), Some(self.gid)).unwrap();
        d
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // Rootless podman leaves a pause process holding its namespaces: stop it by pid.
        let pause = self.dir.path().join("run/libpod/tmp/pause.pid");
        if let Some(pid) = std::fs::read_to_string(pause).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: signalling the pause process this test's podman started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let t = Instant::now();
            let alive = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
            };
            while alive() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // -f: an unreaped zombie of the user's must not keep the account (and its ranges).
        let _ = Command::new("userdel").arg("-f").arg(&self.name).status();
    }
}

/// `docker-registry` on a free loopback port (its data and log in a TempDir it keeps).
fn registry() -> Daemon {
    let dir = TempDir::new("rlreg");
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = dir.path().join("registry.yml");
    std::fs::write(
        &conf,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}/data\nhttp:\n  addr: {addr}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&conf).env_remove("REGISTRY_AUTH_FILE");
    let log = dir.path().join("log");
    Daemon::spawn("docker-registry", cmd, Some(log)).keeping(dir).serving_at(&addr, Duration::from_secs(20))
}

fn out_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tar of `(path, uid, mode, content)`; `None` content is a directory.
fn tarball(path: &Path, entries: &[(&str, u64, u32, Option<&[u8]>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, uid, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, name, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap();
}

/// Files only the user namespace can read: mode 0000 and 0600, owned by root and by
/// uid 1000 in the image, one of them below a 0700 directory of uid 1000.
fn secret_tar(path: &Path, tag: &str) {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let t = tag.as_bytes();
    tarball(
        path,
        &[
            ("etc/", 0, 0o755, None),
            ("etc/shadow", 0, 0o000, Some(&[b"root:*:19000:0:99999:7:::\n", t].concat())),
            ("etc/root-0600", 0, 0o600, Some(t)),
            ("home/", 0, 0o755, None),
            ("home/app/", 1000, 0o700, None),
            ("home/app/key", 1000, 0o600, Some(&[b"app key ", t].concat())),
            ("home/app/big", 1000, 0o644, Some(&big)),
            ("home/locked", 1000, 0o000, Some(&[b"locked ", t].concat())),
        ],
    );
}

/// Files anyone who owns them can read.
fn plain_tar(path: &Path) {
    tarball(path, &[("srv/", 0, 0o755, None), ("srv/index.html", 0, 0o644, Some(b"<p>plain</p>\n"))]);
}

/// Builds `name` from `tars` (one layer each) as `user`, in its default store or in `root`.
fn build(user: &User, ctx: &Path, name: &str, tars: &[&str], root: Option<&Path>) {
    let mut file = String::from("FROM scratch\n");
    for t in tars {
        file += &format!("ADD {t} /\n");
    }
    std::fs::write(ctx.join("Containerfile"), file).unwrap();
    run(Command::new("chown").arg("-R").arg(format!("{}:{}", user.uid, user.gid)).arg(ctx));
    let mut args: Vec<String> = Vec::new();
    if let Some(r) = root {
        args.extend(["--root".into(), r.display().to_string(), "--runroot".into(), format!("{}-run", r.display())]);
    }
    args.extend(["build", "--pull=never", "-q", "-t", name].map(String::from));
    args.push(ctx.display().to_string());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&mut user.podman(&a));
}

fn blob_hashes_as(user: &User, v2: &Path) -> Vec<(String, String)> {
    let out = stdout(&mut user.cmd(
        "sh",
        &["-c", "find \"$1\" -path '*/blobs/sha256:*' -type f -exec sha256sum {} +", "sh", v2.to_str().unwrap()],
    ));
    out.lines()
        .map(|l| {
            let (sum, path) = l.split_once("  ").unwrap();
            let name = path.rsplit('/').next().unwrap().trim_start_matches("sha256:");
            (name.to_string(), sum.to_string())
        })
        .collect()
}

/// (pid, parent pid) of `uid`'s processes with `arg` on their command line.
fn procs_with_arg(uid: u32, arg: &str) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        };
        let mine = field("Uid:") == Some(uid as i64) && !status.contains("State:\tZ");
        if mine && cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            out.push((pid, field("PPid:").unwrap_or(0) as i32));
        }
    }
    out
}

/// What the rootless tests of one driver share: user `a` (with subordinate ids) whose
/// default store holds the images, built once per run; removed when the tests are done.
struct Rootless {
    a: User,
    driver: &'static str,
    /// (name, image id) of the three images.
    ids: Vec<(String, String)>,
}

/// The shared set-up of each driver: empty until built, `Failed` if building it panicked.
enum Shared {
    Empty,
    Failed,
    Built(Arc<Rootless>),
}

static VFS: Mutex<Shared> = Mutex::new(Shared::Empty);
static OVERLAY: Mutex<Shared> = Mutex::new(Shared::Empty);

extern "C" fn drop_shared() {
    for cell in [&VFS, &OVERLAY] {
        let mut st = cell.lock().unwrap_or_else(|e| e.into_inner());
        *st = Shared::Empty;
    }
}

impl Rootless {
    /// The set-up for `driver`, built by the first test that asks; its user is removed at exit.
    fn shared(driver: &'static str) -> Arc<Rootless> {
        let cell = if driver == "vfs" { &VFS } else { &OVERLAY };
        let mut st = cell.lock().unwrap_or_else(|e| e.into_inner());
        match &*st {
            Shared::Built(r) => return r.clone(),
            Shared::Failed => panic!("the rootless {driver} set-up failed in an earlier test (see its output)"),
            Shared::Empty => {}
        }
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a plain function; it runs once tests are over, from exit().
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(drop_shared);
        });
        *st = Shared::Failed;
        let r = Arc::new(Rootless::build(driver));
        *st = Shared::Built(r.clone());
        r
    }

    fn build(driver: &'static str) -> Rootless {
        need_tools();
        let a = User::new(true);
        let conf = a.home().join(".config/containers/storage.conf");
        std::fs::write(&conf, format!("[storage]\ndriver = \"{driver}\"\n")).unwrap();
        std::os::unix::fs::chown(&conf, Some(a.uid), Some(a.gid)).unwrap();

        // Images: built in the default store, and built elsewhere, pushed gzip'd and pulled.
        let ctx = a.mkdir("ctx");
        secret_tar(&ctx.join("secret.tar"), "built");
        plain_tar(&ctx.join("plain.tar"));
        build(&a, &ctx, "localhost/secret:built", &["secret.tar", "plain.tar"], None);
        build(&a, &ctx, "localhost/plain:1", &["plain.tar"], None);
        let reg = registry();
        let ctx2 = a.mkdir("ctx2");
        secret_tar(&ctx2.join("secret.tar"), "pulled");
        let scratch = a.mkdir("scratch");
        build(&a, &ctx2, "localhost/src/pulled:1", &["secret.tar"], Some(&scratch));
        let remote = format!("{}/rl/pulled:1", reg.addr());
        run(&mut a.podman(&[
            "--root",
            scratch.to_str().unwrap(),
            "--runroot",
            &format!("{}-run", scratch.display()),
            "push",
            "-q",
            "--tls-verify=false",
            "--compression-format",
            "gzip",
            "localhost/src/pulled:1",
            &format!("docker://{remote}"),
        ]));
        run(&mut a.podman(&["pull", "-q", "--tls-verify=false", &remote]));
        run(&mut a.podman(&["tag", &remote, "localhost/pulled:1"]));
        let ids = ["localhost/secret:built", "localhost/plain:1", "localhost/pulled:1"]
            .iter()
            .map(|n| {
                (n.to_string(), stdout(&mut a.podman(&["image", "inspect", "--format", "{{.Id}}", n])).trim().into())
            })
            .collect();
        Rootless { a, driver, ids }
    }
}

/// `cmd` (a `cstor-fs -f` of `user`) as a daemon serving `mnt`, logging to `log` in the
/// user's directory; returns once mounted.
fn mount_as(user: &User, cmd: Command, mnt: &Path, log: &str) -> Daemon {
    let mut m = Daemon::spawn("cstor-fs", cmd, Some(user.dir.path().join(log))).mounted_at(mnt);
    m.wait_mounted(Duration::from_secs(30));
    m
}

fn builds_files_out_of_reach_of_the_user(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // The files really are out of the user's reach outside the namespace.
    let shadow = stdout(Command::new("find").arg(a.default_store()).args(["-path", "*/etc/shadow"]));
    let shadow = shadow.lines().next().expect("etc/shadow in the store").to_string();
    assert!(!a.cmd("cat", &[&shadow]).output().unwrap().status.success(), "{shadow} is readable without the namespace");
}

fn list_and_verify_find_the_default_store(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // list/verify with the default store and storage.conf of a rootless user.
    let list = stdout(&mut a.cstor(&["list"]));
    assert!(
        list.starts_with(&format!("store {} ({})", a.default_store().display(), r.driver)),
        "rootless default store not found:\n{list}"
    );
    assert!(list.contains("localhost/pulled") && list.contains("rewritten"), "{list}");
    let v = a.cstor(&["verify"]).output().unwrap();
    let text = out_text(&v);
    assert!(v.status.success() && text.contains(" 0 failed"), "verify as the rootless user:\n{text}");
    let v = a.cstor(&["verify", "--userns", "off"]).output().unwrap();
    let text = out_text(&v);
    assert!(!v.status.success() && text.contains("Permission denied"), "verify --userns off should fail:\n{text}");
}

fn mount_notifies_ready_and_serves_every_blob(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // Mount as the user: visible in the normal mount namespace, every blob hashes right.
    // As the user unit runs it: Type=notify, so READY=1 must come from inside the namespace.
    let mnt = a.mkdir("mnt-notify");
    let sock_path = a.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    std::os::unix::fs::chown(&sock_path, Some(a.uid), Some(a.gid)).unwrap();
    let mut cmd = a.cstor(&["-f", mnt.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut m = mount_as(a, cmd, &mnt, "mount.log");
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no READY=1 from the mount: {e}\n{}", m.log()));
    assert_eq!(&buf[..n], b"READY=1\n");
    let hashes = blob_hashes_as(a, &mnt.join("v2"));
    assert!(hashes.len() >= 7, "blobs: {hashes:?}");
    for (name, sum) in &hashes {
        assert_eq!(name, sum, "blob {name} hashes to {sum}\n{}", m.log());
    }
    assert!(m.log().contains("inside a user namespace"), "{}", m.log());
    m.unmount_by(a.cmd("fusermount3", &[]));
    assert!(!is_mounted(&mnt));
}

fn allow_other_needs_user_allow_other_and_lets_others_read(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // allow_other needs user_allow_other in /etc/fuse.conf.
    let mnt = a.mkdir("mnt-allow");
    let allows = std::fs::read_to_string("/etc/fuse.conf")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split('#').next().unwrap().trim() == "user_allow_other");
    if !allows {
        let o = a.cstor(&["-f", mnt.to_str().unwrap(), "-o", "allow_other"]).output().unwrap();
        assert!(!o.status.success() && out_text(&o).contains("user_allow_other"), "{}", out_text(&o));
        assert!(!is_mounted(&mnt));
    }
    // With user_allow_other (in a private mount namespace, over a private fuse.conf), other
    // users, such as a system nginx, read the rootless mount: root here, through /proc.
    let mnt_other = a.mkdir("mnt-other");
    let fuse_conf = a.dir.path().join("fuse.conf");
    std::fs::write(&fuse_conf, "user_allow_other\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/fuse.conf && exec setpriv --reuid={} --regid={} --clear-groups env -i HOME={} \
         XDG_RUNTIME_DIR={} PATH=/usr/bin:/bin RUST_LOG=info {} -f -o allow_other {}",
        fuse_conf.display(),
        a.uid,
        a.gid,
        a.home().display(),
        a.dir.path().join("run").display(),
        a.bin().display(),
        mnt_other.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let mut m = Daemon::spawn("cstor-fs -o allow_other", cmd, Some(a.dir.path().join("mount-other.log")));
    let pid = m.pid();
    let seen = PathBuf::from(format!("/proc/{pid}/root{}", mnt_other.display()));
    m.wait_ready("the allow_other mount", Duration::from_secs(20), |_| {
        std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default().contains(mnt_other.to_str().unwrap())
    });
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(seen.join("v2/localhost/secret/manifests/built")).unwrap()).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let sum = sha256_file(&seen.join("v2/localhost/secret/blobs").join(d));
        assert_eq!(format!("sha256:{sum}"), d, "read by another user through allow_other");
    }
    assert_eq!(m.stop().map(|st| st.success()), Some(true), "{}", m.log());
}

fn detached_mount_is_unmounted_by_its_keeper_when_the_daemon_dies(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // Detached (the default): back once live; if the daemon dies, its keeper outside the
    // namespace unmounts (fusermount3 cannot from inside).
    // (No pipes: the daemon keeps stderr when RUST_LOG is set, and output() would wait.)
    let mnt = a.mkdir("mnt-detached");
    let st = a.cstor(&[mnt.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(st.success() && is_mounted(&mnt), "detached mount: {st}");
    // The keeper is forked once the detached daemon runs.
    let mut procs = Vec::new();
    wait_for("the daemon and its keeper", Duration::from_secs(10), || {
        procs = procs_with_arg(a.uid, mnt.to_str().unwrap());
        procs.len() == 2
    });
    let daemon = procs.iter().find(|(_, pp)| !procs.iter().any(|(p, _)| p == pp)).expect("the daemon").0;
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    wait_for("the keeper to unmount after the daemon died", Duration::from_secs(10), || !is_mounted(&mnt));
}

fn serve_as_the_user_gives_root_the_same_images(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // Serve as the user (its own nginx), pull and copy from it as root.
    let addr = format!("127.0.0.1:{}", free_port());
    let log = Some(a.dir.path().join("serve.log"));
    let mut s = Daemon::spawn("cstor-fs serve", a.cstor(&["serve", "--listen", &addr]), log)
        .serving_at(&addr, Duration::from_secs(60));
    let client = MiniStore::new("vfs");
    for (name, id) in &r.ids {
        let src = format!("{addr}/{name}");
        let out = client.root().join(name.replace(['/', ':'], "_"));
        std::fs::create_dir_all(&out).unwrap();
        let skopeo = |args: &[&str]| stdout(&mut client.tool("skopeo", args));
        skopeo(&[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{src}"),
            &format!("dir:{}/tag", out.display()),
        ]);
        let digest = skopeo(&["inspect", "--tls-verify=false", "--format", "{{.Digest}}", &format!("docker://{src}")]);
        let (repo, _) = name.rsplit_once(':').unwrap();
        let by_digest = format!("docker://{addr}/{repo}@{}", digest.trim());
        skopeo(&["copy", "-q", "--src-tls-verify=false", &by_digest, &format!("dir:{}/digest", out.display())]);
        run(&mut client.tool("podman", &["pull", "-q", "--tls-verify=false", &src]));
        assert_eq!(podman_image_id(client.root(), &src), *id, "{name}: image id after the pull");
    }
    assert_eq!(s.stop().map(|st| st.success()), Some(true), "serve:\n{}", s.log());
}

fn broken_newuidmap_gives_the_error_what_is_readable_and_eio(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // newuidmap failing after the namespace exists: the error, what the user can read,
    // EIO for the rest, and the keeper still unmounts on SIGTERM.
    let fake = a.mkdir("fakebin");
    std::fs::write(fake.join("newuidmap"), "#!/bin/sh\necho 'newuidmap: broken on purpose' >&2\nexit 1\n").unwrap();
    run(Command::new("chmod").arg("0755").arg(fake.join("newuidmap")));
    let fake_path = format!("{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", fake.display());
    let o = a.cstor(&["verify", "localhost/plain:1"]).env("PATH", &fake_path).output().unwrap();
    let text = out_text(&o);
    assert!(o.status.success() && text.contains("broken on purpose"), "{text}");
    let mnt = a.mkdir("mnt-broken");
    let mut cmd = a.cstor(&["-f", mnt.to_str().unwrap()]);
    cmd.env("PATH", &fake_path);
    let mut m = mount_as(a, cmd, &mnt, "mount-broken.log");
    let secret = mnt.join("v2/localhost/secret/manifests/built");
    let manifest: serde_json::Value =
        serde_json::from_slice(&run(&mut a.cmd("cat", &[secret.to_str().unwrap()])).stdout).unwrap();
    let layer = mnt.join("v2/localhost/secret/blobs").join(manifest["layers"][0]["digest"].as_str().unwrap());
    let o = a.cmd("cat", &[layer.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && out_text(&o).contains("Input/output error"), "{}", out_text(&o));
    assert!(m.log().contains("broken on purpose") && m.log().contains("etc/shadow"), "{}", m.log());
    assert_eq!(m.stop().map(|st| st.success()), Some(true), "{}", m.log());
    assert!(!is_mounted(&mnt), "not unmounted on SIGTERM:\n{}", m.log());
}

fn store_lookup_agrees_with_podman_also_with_rootless_storage_path(driver: &'static str) {
    need_tools();
    // A user of its own: this test rewrites storage.conf, which the others read.
    let a = User::new(true);
    let conf = a.home().join(".config/containers/storage.conf");
    std::fs::write(&conf, format!("[storage]\ndriver = \"{driver}\"\n")).unwrap();
    std::os::unix::fs::chown(&conf, Some(a.uid), Some(a.gid)).unwrap();
    // The store lookup agrees with podman's, also with storage.conf's rootless_storage_path.
    let graphroot = || stdout(&mut a.podman(&["info", "--format", "{{.Store.GraphRoot}}"])).trim().to_string();
    assert_eq!(graphroot(), a.default_store().to_str().unwrap());
    std::fs::write(&conf, format!("[storage]\ndriver = \"{driver}\"\nrootless_storage_path = \"$HOME/alt\"\n"))
        .unwrap();
    let alt = graphroot();
    assert_eq!(alt, a.home().join("alt").to_str().unwrap());
    let list = stdout(&mut a.cstor(&["list"]));
    assert!(list.starts_with(&format!("store {alt} ({driver})")), "rootless_storage_path not followed:\n{list}");
}

fn a_user_without_subordinate_ids_gets_the_error_what_is_readable_and_eio(driver: &'static str) {
    let r = Rootless::shared(driver);
    let a = &r.a;
    // A user without subordinate ids: the clear error, what it can read, EIO for the rest.
    let b = User::new(false);
    let store = b.dir.path().join("store");
    run(Command::new("cp").arg("-a").arg(a.default_store()).arg(&store));
    run(Command::new("find").arg(&store).args([
        "-uid",
        &a.uid.to_string(),
        "-exec",
        "chown",
        "-h",
        &b.name,
        "{}",
        "+",
    ]));
    run(Command::new("find").arg(&store).args(["-gid", &a.gid.to_string(), "-exec", "chgrp", "-h"]).args([
        &b.gid.to_string(),
        "{}",
        "+",
    ]));
    let st = store.to_str().unwrap();
    let o = b.cstor(&["verify", "--storage", st, "localhost/plain:1"]).output().unwrap();
    let text = out_text(&o);
    assert!(o.status.success(), "the readable image verifies:\n{text}");
    assert!(
        text.contains("has no subordinate uids") && text.contains("usermod"),
        "the missing piece is named:\n{text}"
    );
    let o = b.cstor(&["verify", "--storage", st, "localhost/secret:built"]).output().unwrap();
    let text = out_text(&o);
    assert!(!o.status.success() && text.contains("Permission denied"), "{text}");
    assert!(text.contains("etc/shadow") || text.contains("home/"), "the unreadable file is named:\n{text}");
    let o = b.cstor(&["verify", "--storage", st, "--userns", "require"]).output().unwrap();
    assert!(!o.status.success() && out_text(&o).contains("has no subordinate uids"), "{}", out_text(&o));

    let mnt = b.mkdir("mnt");
    let mut m = mount_as(&b, b.cstor(&["-f", st, mnt.to_str().unwrap()]), &mnt, "mount.log");
    assert!(m.log().contains("has no subordinate uids"), "{}", m.log());
    let v2 = mnt.join("v2");
    let layer_of = |name: &str, tags: &str| -> Vec<PathBuf> {
        let manifest: serde_json::Value = serde_json::from_slice(
            &run(&mut b.cmd("cat", &[v2.join(name).join("manifests").join(tags).to_str().unwrap()])).stdout,
        )
        .unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| v2.join(name).join("blobs").join(l["digest"].as_str().unwrap()))
            .collect()
    };
    for blob in layer_of("localhost/plain", "1") {
        let out = stdout(&mut b.cmd("sha256sum", &[blob.to_str().unwrap()]));
        let name = blob.file_name().unwrap().to_str().unwrap().trim_start_matches("sha256:").to_string();
        assert_eq!(out.split_whitespace().next(), Some(name.as_str()), "{}", m.log());
    }
    let secret = &layer_of("localhost/secret", "built")[0];
    let o = b.cmd("cat", &[secret.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && out_text(&o).contains("Input/output error"), "{}", out_text(&o));
    assert!(
        m.log().lines().any(|l| l.contains("ERROR")
            && l.contains("Permission denied")
            && (l.contains("etc/shadow") || l.contains("home/"))),
        "no log line names the unreadable file:\n{}",
        m.log()
    );
    m.unmount_by(b.cmd("fusermount3", &[]));

    // userns=require makes the missing range fatal before anything is mounted.
    let o = b.cstor(&["-f", st, mnt.to_str().unwrap(), "-o", "userns=require"]).output().unwrap();
    assert!(!o.status.success() && out_text(&o).contains("has no subordinate uids"), "{}", out_text(&o));
    assert!(!is_mounted(&mnt));
}

/// Each check above as a test of its own, once per storage driver.
macro_rules! per_driver {
    ($($check:ident),* $(,)?) => {
        mod vfs {
            $(#[test] fn $check() { super::$check("vfs") })*
        }
        mod overlay {
            $(#[test] fn $check() { super::$check("overlay") })*
        }
    };
}

per_driver!(
    builds_files_out_of_reach_of_the_user,
    list_and_verify_find_the_default_store,
    mount_notifies_ready_and_serves_every_blob,
    allow_other_needs_user_allow_other_and_lets_others_read,
    detached_mount_is_unmounted_by_its_keeper_when_the_daemon_dies,
    serve_as_the_user_gives_root_the_same_images,
    broken_newuidmap_gives_the_error_what_is_readable_and_eio,
    store_lookup_agrees_with_podman_also_with_rootless_storage_path,
    a_user_without_subordinate_ids_gets_the_error_what_is_readable_and_eio,
);
