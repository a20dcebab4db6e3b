//! Shared fixtures and guards: stores built once per run, private mini stores for
//! tests that change the store, and one guard ([`Daemon`]) for every process a test
//! starts, which always stops it and releases its mounts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cstor-fs");

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under target/, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        // Short: podman refuses runroots longer than 50 characters.
        let base = PathBuf::from("/tmp/cstor-it");
        std::fs::create_dir_all(&base).unwrap();
        let p = base.join(format!("{tag}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Unmount anything a failed test left below it first.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let me = format!("{}/", self.0.to_string_lossy());
            for line in mounts.lines().rev() {
                if let Some(mp) = line.split(' ').nth(1) {
                    if mp.starts_with(&me) {
                        let _ = Command::new("umount").arg("-l").arg(mp).status();
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// Which podman/buildah/skopeo a command runs: the machine's (Debian 12: podman 4.3) or a
/// current podman 5 in the chroot of tests/fixtures/podman5/chroot.sh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tools {
    Host,
    Podman5,
}

/// A store made by tests/fixtures/make-store.sh (or podman5/make-store5.sh).
pub struct Fixture {
    pub root: PathBuf,
    pub storage: PathBuf,
    pub driver: &'static str,
    /// (name or id, what it covers), from images.txt.
    pub images: Vec<(String, String)>,
    /// The tools that made it, and that [`Fixture::tool`] runs.
    pub tools: Tools,
}

impl Fixture {
    /// The full fixture store for `driver`, built once per test run (and reused across
    /// runs while the fixture scripts are unchanged).
    pub fn shared(driver: &'static str) -> &'static Fixture {
        static OVERLAY: OnceLock<Fixture> = OnceLock::new();
        static VFS: OnceLock<Fixture> = OnceLock::new();
        let cell = if driver == "vfs" { &VFS } else { &OVERLAY };
        cell.get_or_init(|| Fixture::build(driver, Tools::Host))
    }

    /// The same images written by a current podman (5.x, in a Debian trixie chroot), plus
    /// zstd:chunked images pulled with partial pulls (tests/fixtures/podman5/make-store5.sh).
    pub fn podman5() -> &'static Fixture {
        static P5: OnceLock<Fixture> = OnceLock::new();
        P5.get_or_init(|| Fixture::build("overlay", Tools::Podman5))
    }

    /// The podman 4.3 fixture's vfs store, written by podman 5.
    pub fn podman5_vfs() -> &'static Fixture {
        static P5VFS: OnceLock<Fixture> = OnceLock::new();
        P5VFS.get_or_init(|| Fixture::build("vfs", Tools::Podman5))
    }

    /// The podman 5 fixture's second store, with `use_composefs`: partially pulled
    /// layers whose files are content-addressed under `diff/`.
    pub fn composefs() -> &'static Fixture {
        static CFS: OnceLock<Fixture> = OnceLock::new();
        CFS.get_or_init(|| Fixture::podman5().part("composefs", "storage"))
    }

    /// The podman 5 fixture's stores read as one: `multi/graph` (the graphroot) with an
    /// image store `multi/images` and an additional image store `multi/ais`, as
    /// `multi/conf/storage.conf` says.
    pub fn multi_store() -> &'static Fixture {
        static MULTI: OnceLock<Fixture> = OnceLock::new();
        MULTI.get_or_init(|| Fixture::podman5().part("multi", "graph"))
    }

    fn part(&self, dir: &str, graphroot: &str) -> Fixture {
        let root = self.root.join(dir);
        let images = std::fs::read_to_string(root.join("images.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        Fixture { storage: root.join(graphroot), root, driver: self.driver, images, tools: self.tools }
    }

    fn build(driver: &'static str, tools: Tools) -> Fixture {
        let scripts = repo_root().join("tests/fixtures");
        // Keyed by the scripts that make it (files directly in tests/fixtures; the podman 5
        // store also by those in podman5/).
        let mut h = 0u64;
        let mut dirs = vec![scripts.clone()];
        if tools == Tools::Podman5 {
            dirs.push(scripts.join("podman5"));
        }
        for dir in dirs {
            let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            for p in names {
                for b in std::fs::read(&p).unwrap_or_default() {
                    h = (h ^ b as u64).wrapping_mul(0x100000001b3);
                }
            }
        }
        let name = match tools {
            Tools::Host => driver.to_string(),
            Tools::Podman5 => format!("podman5-{driver}"),
        };
        let root = PathBuf::from(format!("/tmp/cstor-it/{name}-{:08x}", h as u32));
        let done = root.join("images.txt");
        // Other test runs (other checkouts) may build the same store at the same time.
        std::fs::create_dir_all("/tmp/cstor-it").unwrap();
        let lock = std::fs::File::create(format!("/tmp/cstor-it/{name}-{:08x}.lock", h as u32)).unwrap();
        // SAFETY: flock on a file we own; released when `lock` drops.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&root);
            let t = Instant::now();
            match tools {
                Tools::Host => run(Command::new(scripts.join("make-store.sh")).arg(&root).arg(driver)),
                Tools::Podman5 => run(Command::new(scripts.join("podman5/make-store5.sh")).arg(&root).arg(driver)),
            };
            eprintln!("built {name} fixture store in {:?}", t.elapsed());
        }
        let images = std::fs::read_to_string(&done)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        drop(lock);
        Fixture { storage: root.join("storage"), root, driver, images, tools }
    }

    /// Runs a podman/skopeo/buildah command line against this store, isolated.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Command {
        tools_cmd(self.tools, &self.root, tool, args)
    }
}

/// `isolate.sh bash -c '. ROOT/conf/env; exec TOOL ARGS'`.
pub fn tool_cmd(root: &Path, tool: &str, args: &[&str]) -> Command {
    tools_cmd(Tools::Host, root, tool, args)
}

/// [`tool_cmd`] with the machine's tools or podman 5's (inside its chroot, where the
/// store's paths are the same).
pub fn tools_cmd(tools: Tools, root: &Path, tool: &str, args: &[&str]) -> Command {
    let isolate = repo_root().join("tests/fixtures/isolate.sh");
    let mut c = match tools {
        Tools::Host => Command::new(&isolate),
        Tools::Podman5 => {
            let mut c = Command::new(repo_root().join("tests/fixtures/podman5/chroot.sh"));
            c.arg("run").arg(&isolate);
            c
        }
    };
    c.arg("bash")
        .arg("-c")
        .arg(format!(". '{}/conf/env' && exec \"$@\"", root.display()))
        .arg("tool")
        .arg(tool)
        .args(args);
    c
}

/// A small private store for tests that change it: one imported image per call to
/// [`MiniStore::import`].
pub struct MiniStore {
    pub dir: TempDir,
    pub storage: PathBuf,
    pub driver: &'static str,
    pub tools: Tools,
}

impl MiniStore {
    pub fn new(driver: &'static str) -> MiniStore {
        MiniStore::with_tools(driver, Tools::Host)
    }

    pub fn with_tools(driver: &'static str, tools: Tools) -> MiniStore {
        let dir = TempDir::new("mini");
        let root = dir.path().to_path_buf();
        let storage = root.join("storage");
        let conf = root.join("conf");
        std::fs::create_dir_all(conf.join("home")).unwrap();
        std::fs::write(
            conf.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}/run\"\n",
                storage.display(),
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        std::fs::write(conf.join("containers.conf"), "[engine]\nevents_logger = \"none\"\n").unwrap();
        std::fs::write(
            conf.join("env"),
            format!(
                "export CONTAINERS_CONF={c}/containers.conf CONTAINERS_STORAGE_CONF={c}/storage.conf \
                 CONTAINERS_REGISTRIES_CONF={c}/registries.conf HOME={c}/home\nunset STORAGE_DRIVER STORAGE_OPTS\n",
                c = conf.display()
            ),
        )
        .unwrap();
        MiniStore { dir, storage, driver, tools }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn tool(&self, tool: &str, args: &[&str]) -> Command {
        tools_cmd(self.tools, self.root(), tool, args)
    }

    /// `podman import` of a tarball holding `files`, named `name`. Returns the image id.
    pub fn import(&self, name: &str, files: &[(&str, &[u8])]) -> String {
        let tar_path = self.root().join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap();
        let out = stdout(&mut self.tool("podman", &["import", "--quiet", tar_path.to_str().unwrap(), name]));
        out.trim().trim_start_matches("sha256:").to_string()
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    let d = std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| {
        l.split(' ').nth(1) == Some(d.to_str().unwrap()) && l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse"))
    })
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process a test started, and what it leaves behind: the FUSE mount it serves, the
/// runtime directory of a `cstor-fs serve` (whose mount is `RUNTIME_DIR/mnt`), a log file.
/// Dropping it, also when the test panics, stops the process (SIGTERM, then SIGKILL after
/// [`Daemon::GRACE`]), reaps it and releases its mounts (`fusermount3 -u`, then
/// `umount -l`); a failing test gets the end of the log.
pub struct Daemon {
    label: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    mountpoint: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    addr: Option<String>,
    log: Option<PathBuf>,
    _tmp: Option<TempDir>,
}

impl Daemon {
    /// How long a stopped process gets between SIGTERM and SIGKILL.
    pub const GRACE: Duration = Duration::from_secs(20);

    /// Starts `cmd` (called `label` in messages) with stdin from /dev/null and, given a
    /// `log`, stdout and stderr into that file.
    pub fn spawn(label: &str, mut cmd: Command, log: Option<PathBuf>) -> Daemon {
        cmd.stdin(Stdio::null());
        if let Some(log) = &log {
            let f = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            cmd.stdout(f.try_clone().unwrap()).stderr(f);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {label} ({cmd:?}): {e}"));
        Daemon {
            label: label.to_string(),
            child: Some(child),
            status: None,
            mountpoint: None,
            runtime_dir: None,
            addr: None,
            log,
            _tmp: None,
        }
    }

    /// Keeps `tmp` (e.g. the process's configuration) until the process has stopped.
    pub fn keeping(mut self, tmp: TempDir) -> Daemon {
        self._tmp = Some(tmp);
        self
    }

    /// Marks `dir` as the FUSE mount this process serves: released on drop.
    pub fn mounted_at(mut self, dir: &Path) -> Daemon {
        self.mountpoint = Some(dir.to_path_buf());
        self
    }

    /// `cstor-fs -f STORAGE DIR [-o OPTS]` at a fresh directory, logging to a file;
    /// returns once mounted.
    pub fn mount(storage: &Path, opts: &str) -> Daemon {
        Daemon::mount_via(storage, opts, &[], |_| {})
    }

    /// [`Daemon::mount`] at an existing directory.
    pub fn mount_at(storage: &Path, dir: &Path, opts: &str) -> Daemon {
        Daemon::cstor_mount(storage, dir, opts, &[], TempDir::new("mlog"))
    }

    /// [`Daemon::mount`] with the daemon run through `wrap` (e.g. `setpriv ...`), after
    /// `prepare` saw the fresh mountpoint.
    pub fn mount_via(storage: &Path, opts: &str, wrap: &[&str], prepare: impl FnOnce(&Path)) -> Daemon {
        let tmp = TempDir::new("mnt");
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        prepare(&dir);
        Daemon::cstor_mount(storage, &dir, opts, wrap, tmp)
    }

    fn cstor_mount(storage: &Path, dir: &Path, opts: &str, wrap: &[&str], tmp: TempDir) -> Daemon {
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("-f").arg(storage).arg(dir).env("RUST_LOG", "info,fuser=warn");
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts);
        }
        let mut m = Daemon::spawn("cstor-fs", cmd, Some(tmp.path().join("log"))).mounted_at(dir).keeping(tmp);
        m.wait_mounted(Duration::from_secs(20));
        m
    }

    /// `cstor-fs serve --server SERVER` of `storage` on a free loopback port, logging to a
    /// file; returns once it answers `/v2/`.
    pub fn serve(storage: &Path, server: &str) -> Daemon {
        Daemon::serve_with(storage, &["--server", server])
    }

    /// `cstor-fs serve` of `storage` with `args` on a free loopback port, logging to a
    /// file; returns once it answers `/v2/`.
    pub fn serve_with(storage: &Path, args: &[&str]) -> Daemon {
        let server = args.windows(2).find(|w| w[0] == "--server").map_or("nginx", |w| w[1]);
        let tmp = TempDir::new("serve");
        let runtime_dir = tmp.path().join("rt");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--storage")
            .arg(storage)
            .args(["--listen", &addr, "--runtime-dir"])
            .arg(&runtime_dir)
            .args(args)
            .env("RUST_LOG", "info,fuser=warn");
        let mut s =
            Daemon::spawn(&format!("cstor-fs serve ({server})"), cmd, Some(tmp.path().join("log"))).keeping(tmp);
        s.runtime_dir = Some(runtime_dir);
        s.serving_at(&addr, Duration::from_secs(60))
    }

    /// Marks this process as an HTTP server at `addr` (host:port): returns once it
    /// answers `/v2/` with 200.
    pub fn serving_at(mut self, addr: &str, timeout: Duration) -> Daemon {
        self.addr = Some(addr.to_string());
        let url = format!("{}/v2/", self.url());
        self.wait_ready(&format!("{url} to answer"), timeout, |_| http_status(&url) == 200);
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id (while it has not been stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap_or_else(|| panic!("{} was stopped", self.label)).id()
    }

    /// The mountpoint (see [`Daemon::mounted_at`]).
    pub fn dir(&self) -> &Path {
        self.mountpoint.as_deref().unwrap_or_else(|| panic!("{} has no mountpoint", self.label))
    }

    pub fn v2(&self) -> PathBuf {
        self.dir().join("v2")
    }

    /// host:port of a server (see [`Daemon::serving_at`]).
    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or_else(|| panic!("{} is not a server", self.label))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The runtime directory of a [`Daemon::serve`].
    pub fn runtime_dir(&self) -> &Path {
        self.runtime_dir.as_deref().unwrap_or_else(|| panic!("{} has no runtime dir", self.label))
    }

    /// The mount a [`Daemon::serve`] serves from.
    pub fn mnt(&self) -> PathBuf {
        self.runtime_dir().join("mnt")
    }

    /// What the process wrote to its log so far ("" without one).
    /// The file its output goes to (empty path if none).
    pub fn log_path(&self) -> &Path {
        self.log.as_deref().unwrap_or(Path::new(""))
    }

    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }

    /// How it ended, once it has; `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
                self.child = None;
            }
        }
        self.status
    }

    /// Panics if the process ended, its mountpoint is gone or its log tells of a panic.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.exited() {
            panic!("{} died ({st}):\n{}", self.label, self.log());
        }
        if let Some(dir) = &self.mountpoint {
            assert!(is_mounted(dir), "{}: mount gone:\n{}", self.label, self.log());
        }
        let log = self.log();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", self.label);
    }

    /// Waits up to `timeout` for `ready`; panics, with the log, if the process ends first.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut(&Daemon) -> bool) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                panic!("{} exited early ({st}), before {what}:\n{}", self.label, self.log());
            }
            if ready(self) {
                return;
            }
            assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the mountpoint to be mounted.
    pub fn wait_mounted(&mut self, timeout: Duration) {
        let what = format!("the mount at {}", self.dir().display());
        self.wait_ready(&what, timeout, |d| is_mounted(d.dir()));
    }

    /// Waits up to `timeout` for the process to end by itself; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        while self.exited().is_none() && t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited()
    }

    /// SIGTERM, up to [`Daemon::GRACE`] to exit, then SIGKILL; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let (None, Some(c)) = (self.exited(), self.child.as_ref()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if self.wait_exit(Daemon::GRACE).is_none() {
                return self.kill();
            }
        }
        self.status
    }

    /// SIGKILL now; returns how it ended.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
        self.status
    }

    /// Unmounts the way a user would (`fusermount3 -u`), gives the daemon 10 s to exit by
    /// itself, then stops it and releases what is left.
    pub fn unmount(&mut self) {
        self.unmount_by(Command::new("fusermount3"));
    }

    /// [`Daemon::unmount`] with `fusermount` (e.g. run as another user) given `-u DIR`.
    pub fn unmount_by(&mut self, mut fusermount: Command) {
        if is_mounted(self.dir()) {
            let _ = fusermount.arg("-u").arg(self.dir()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        self.wait_exit(Duration::from_secs(10));
        self.stop();
        self.release();
    }

    /// Unmounts what the (stopped) process left mounted.
    fn release(&self) {
        let serve_mnt = self.runtime_dir.as_ref().map(|r| r.join("mnt"));
        for dir in self.mountpoint.iter().chain(&serve_mnt) {
            if is_mounted(dir) {
                let _ = Command::new("fusermount3").arg("-u").arg(dir).stderr(Stdio::null()).status();
            }
            if is_mounted(dir) {
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        self.release();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            if !tail.is_empty() {
                eprintln!("--- last lines of the {} log:", self.label);
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HTTP status of a GET with curl (0 if it could not connect).
pub fn http_status(url: &str) -> u16 {
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url]).output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(0)
}

/// The image id podman reports for `name` in the store at `root` (a fixture or mini store).
pub fn podman_image_id(root: &Path, name: &str) -> String {
    stdout(&mut tool_cmd(root, "podman", &["image", "inspect", "--format", "{{.Id}}", name])).trim().to_string()
}

/// The guard's promise: a test that panics still has its daemon stopped, reaped and
/// unmounted.
#[test]
fn daemon_guard_stops_reaps_and_unmounts_when_the_test_panics() {
    let s = MiniStore::new("vfs");
    s.import("localhost/guard:1", &[("a.txt", b"a")]);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let m = Daemon::mount(&s.storage, "");
        tx.send((m.pid(), m.dir().to_path_buf())).unwrap();
        assert!(m.v2().join("localhost/guard").is_dir());
        panic!("a failing test");
    });
    assert!(r.is_err());
    let (pid, dir) = rx.recv().unwrap();
    assert!(!is_mounted(&dir), "{} still mounted", dir.display());
    // Reaped: no process (not even a zombie) with that pid is our child any more.
    // SAFETY: waitpid on a pid we spawned; WNOHANG never blocks.
    let r = unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1, "pid {pid} is still a child of ours");
}
