//! `serve`: one command that mounts a store privately and runs nginx or Caddy over it.
//!
//! The bundled configs (`nginx/`, `caddy/`, compiled in) are filled in for the mount
//! and address; the mount is a `cstor-fs -f` child process and the server another.
//! SIGINT/SIGTERM/SIGHUP (or either child dying) stops the server, unmounts and removes
//! the runtime directory.
//!
//! TLS and authentication are blocks of the same configs, commented out: lines marked
//! `#[tls] ` / `#[auth] ` are uncommented by [`render_blocks`] when [`ServeConfig::tls`] /
//! [`ServeConfig::htpasswd`] is set, and lines ending in `#[plain]` are dropped with TLS.
//! Plain HTTP is only served on a loopback address unless asked for ([`check_exposure`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::htpasswd::Htpasswd;
use crate::sys::{self, is_mounted};

const NGINX_MAIN: &str = include_str!("../nginx/nginx.conf");
const NGINX_SERVER: &str = include_str!("../nginx/cstor-fs.conf");
const CADDYFILE: &str = include_str!("../caddy/Caddyfile");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Nginx,
    Caddy,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::Caddy => "caddy",
        }
    }
}

/// What `cstor-fs serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Arguments for the mount child that select the store (`--storage`, `-o driver=`).
    pub mount_args: Vec<String>,
    pub listen: SocketAddr,
    pub server: Server,
    /// Directory for the mount and the server's files (created, removed at the end).
    pub runtime_dir: PathBuf,
    /// Serve HTTPS with this certificate (chain) and key.
    pub tls: Option<Tls>,
    /// Require HTTP Basic authentication against these users.
    pub htpasswd: Option<Htpasswd>,
    /// Allow plain HTTP on a non-loopback address.
    pub insecure_http: bool,
}

/// PEM files for the server: a certificate (chain) and its private key.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Refuses plain HTTP on an address other machines can reach, unless `insecure_http`.
pub fn check_exposure(listen: SocketAddr, tls: bool, insecure_http: bool) -> Result<(), Error> {
    if tls || insecure_http || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(Error::Exposed(listen))
}

/// Errors name what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not installed (apt-get install {1})")]
    Missing(&'static str, &'static str),
    #[error("cannot listen on {0}: {1} (is another server using it? pick one with --listen)")]
    PortTaken(SocketAddr, io::Error),
    #[error(
        "refusing to serve plain HTTP on {0}, which is not a loopback address: anyone who can reach it \
         could read every image in the store and change what clients receive on the way. Add --tls (a \
         CA made and kept for you) or --tls-cert FILE --tls-key FILE, and --htpasswd FILE to require a \
         password; or add --insecure-http if this network is trusted"
    )]
    Exposed(SocketAddr),
    #[error("{0}")]
    Failed(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The directory `serve` uses when none is given.
pub fn default_runtime_dir() -> PathBuf {
    let uid = sys::uid();
    let base = if uid == 0 {
        PathBuf::from("/run/cstor-fs")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("cstor-fs")
    } else {
        std::env::temp_dir().join(format!("cstor-fs-{uid}"))
    };
    base.join(format!("serve-{}", std::process::id()))
}

fn find(program: &str) -> Option<PathBuf> {
    sys::find_program(program, &["/usr/sbin", "/sbin"])
}

/// Fills `@NAME@` placeholders.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("@{k}@"), v);
    }
    out
}

/// Uncomments the lines of the optional blocks in `on` (`<indent>#[NAME] text` becomes
/// `<indent>text`) and, with `tls` on, drops the lines ending in `#[plain]`. Lines of
/// blocks that are off stay comments.
pub fn render_blocks(template: &str, on: &[&str]) -> String {
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        if on.contains(&"tls") && line.trim_end().ends_with("#[plain]") {
            continue;
        }
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let uncommented = on.iter().find_map(|b| body.strip_prefix(&format!("#[{b}] ")));
        match uncommented {
            Some(rest) => {
                out.push_str(indent);
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Writes the entries of `h` to `path` for nginx's workers: 0640 root:nogroup when `root`
/// (the workers' group), 0600 otherwise (they run as this user). Returns the path.
fn write_worker_htpasswd(path: &Path, h: &Htpasswd, root: bool) -> Result<String, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let text: String = h.entries.iter().map(|e| format!("{}:{}\n", e.user, e.hash)).collect();
    let what = || format!("writing {}", path.display());
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(what()))?;
    f.write_all(text.as_bytes()).map_err(io_err(what()))?;
    if root {
        let gid =
            sys::group_id("nogroup").ok_or_else(|| Error::Failed("no group `nogroup` for nginx's workers".into()))?;
        std::os::unix::fs::fchown(&f, Some(0), Some(gid)).map_err(io_err(what()))?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o640)).map_err(io_err(what()))?;
    }
    Ok(path.to_string_lossy().to_string())
}

/// Children get default signal handling and their own process group, so a terminal's
/// Ctrl-C reaches only `serve`, which then stops them in order.
fn detach_signals(cmd: &mut Command) {
    // SAFETY: the hook makes only async-signal-safe calls (pthread_sigmask, setpgid).
    unsafe {
        cmd.pre_exec(sys::reset_signals_and_detach_group);
    }
}

struct Running {
    child: Child,
    name: &'static str,
}

impl Running {
    fn stop(&mut self, sig: i32, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = sys::kill(self.child.id(), sig);
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("{} did not stop in {grace:?}: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything `serve` started, torn down in reverse order on drop.
struct Session {
    dir: PathBuf,
    mnt: PathBuf,
    mount: Option<Running>,
    server: Option<Running>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.stop(libc::SIGTERM, Duration::from_secs(10));
        }
        if let Some(m) = self.mount.as_mut() {
            m.stop(libc::SIGTERM, Duration::from_secs(10));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the server answers: `GET /v2/` gets 200 (401 when it asks for credentials);
/// over TLS, which this has no client for, that it accepts connections.
fn http_ok(addr: SocketAddr, tls: bool) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    if tls {
        return true;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && (buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.1 401"))
}

fn wait_until(
    what: &str,
    running: &mut Running,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let t = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(st)) = running.child.try_wait() {
            return Err(Error::Failed(format!("{} exited ({st}) before {what}", running.name)));
        }
        if t.elapsed() > timeout {
            return Err(Error::Failed(format!("{what}: not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Blocks the stop signals and forwards them to a channel.
fn signal_channel() -> io::Result<mpsc::Receiver<i32>> {
    let set = sys::StopSignals::block()?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        if tx.send(set.wait()).is_err() {
            return;
        }
    })?;
    Ok(rx)
}

/// Runs until a stop signal or a child's death. `on_ready` gets the mount path and URL.
pub fn run(cfg: &ServeConfig, on_ready: impl FnOnce(&Path, &str)) -> Result<(), Error> {
    check_exposure(cfg.listen, cfg.tls.is_some(), cfg.insecure_http)?;
    let signals = signal_channel().map_err(io_err("setting up signal handling"))?;
    let (program, package) = match cfg.server {
        Server::Nginx => ("nginx", "nginx"),
        Server::Caddy => ("caddy", "caddy"),
    };
    let server_bin = find(program).ok_or(Error::Missing(program, package))?;
    // Fail early and clearly if the address is taken.
    drop(TcpListener::bind(cfg.listen).map_err(|e| Error::PortTaken(cfg.listen, e))?);

    let dir = cfg.runtime_dir.clone();
    if dir.exists() {
        return Err(Error::Failed(format!("{} exists: pick a fresh --runtime-dir", dir.display())));
    }
    // nginx workers (nobody) must be able to reach the mount: directories created here
    // are 0755 (and nothing that existed before is changed).
    let mut created = Vec::new();
    let mut d = dir.as_path();
    while !d.exists() {
        created.push(d.to_path_buf());
        d = d.parent().unwrap_or(Path::new("/"));
    }
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    for d in &created {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    let mut session = Session { dir: dir.clone(), mnt: dir.join("mnt"), mount: None, server: None };
    std::fs::create_dir_all(&session.mnt).map_err(io_err("creating the mount point"))?;

    let root = sys::uid() == 0;
    let exe = std::env::current_exe().map_err(io_err("finding the cstor-fs executable"))?;
    let mut mount = Command::new(exe);
    mount.arg("-f").args(&cfg.mount_args).arg(&session.mnt);
    if root {
        // Workers run as another user; auto_unmount releases the mount if we are killed.
        mount.args(["-o", "allow_other,auto_unmount"]);
    }
    mount.stdin(Stdio::null());
    detach_signals(&mut mount);
    let child = mount.spawn().map_err(io_err("starting the mount"))?;
    let running = session.mount.insert(Running { child, name: "the cstor-fs mount" });
    let mnt = session.mnt.clone();
    wait_until("the mount was live", running, Duration::from_secs(60), || is_mounted(&mnt))?;

    let mount_s = session.mnt.to_string_lossy().to_string();
    let listen_s = cfg.listen.to_string();
    let mut blocks = Vec::new();
    let path_s = |p: &Path| p.to_string_lossy().to_string();
    let (cert_s, key_s) = match &cfg.tls {
        Some(t) => {
            blocks.push("tls");
            (path_s(&t.cert), path_s(&t.key))
        }
        None => (String::new(), String::new()),
    };
    let (htpasswd_s, caddy_users) = match &cfg.htpasswd {
        Some(h) => {
            blocks.push("auth");
            (path_s(&h.path), h.caddy_accounts("\t\t"))
        }
        None => (String::new(), String::new()),
    };
    let secure = [("TLS_CERT", cert_s.as_str()), ("TLS_KEY", key_s.as_str()), ("HTPASSWD", htpasswd_s.as_str())];
    let mut cmd = match cfg.server {
        Server::Nginx => {
            let prefix = dir.join("nginx");
            std::fs::create_dir_all(&prefix).map_err(io_err("creating the nginx prefix"))?;
            let mut vars = vec![("MOUNT", mount_s.as_str()), ("LISTEN", listen_s.as_str())];
            vars.extend(secure);
            // Workers read the user file on every request, and run as nobody:nogroup when
            // started by root: they get a checked copy readable by that group only.
            let users_copy;
            if let Some(h) = &cfg.htpasswd {
                users_copy = write_worker_htpasswd(&prefix.join("htpasswd"), h, root)?;
                vars.retain(|(k, _)| *k != "HTPASSWD");
                vars.push(("HTPASSWD", users_copy.as_str()));
            }
            let main = render(&render_blocks(NGINX_MAIN, &blocks), &vars);
            let server = render(&render_blocks(NGINX_SERVER, &blocks), &vars);
            std::fs::write(prefix.join("nginx.conf"), main)
                .and_then(|_| std::fs::write(prefix.join("cstor-fs.conf"), server))
                .map_err(io_err("writing the nginx config"))?;
            let mut c = Command::new(&server_bin);
            c.arg("-c").arg(prefix.join("nginx.conf")).arg("-p").arg(format!("{}/", prefix.display()));
            c.args(["-g", "daemon off;"]);
            c
        }
        Server::Caddy => {
            let state = dir.join("caddy");
            std::fs::create_dir_all(&state).map_err(io_err("creating the caddy state dir"))?;
            let host = match cfg.listen.ip() {
                std::net::IpAddr::V6(ip) => ip.to_string(),
                std::net::IpAddr::V4(ip) => ip.to_string(),
            };
            let port = cfg.listen.port().to_string();
            let mut vars = vec![
                ("MOUNT", mount_s.as_str()),
                ("LISTEN_HOST", host.as_str()),
                ("LISTEN_PORT", port.as_str()),
                ("CADDY_USERS", caddy_users.as_str()),
            ];
            vars.extend(secure);
            let file = state.join("Caddyfile");
            // Caddy runs as this user; the file may hold password hashes.
            std::fs::write(&file, "")
                .and_then(|_| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)))
                .and_then(|_| std::fs::write(&file, render(&render_blocks(CADDYFILE, &blocks), &vars)))
                .map_err(io_err("writing the Caddyfile"))?;
            let mut c = Command::new(&server_bin);
            c.args(["run", "--adapter", "caddyfile", "--config"]).arg(&file);
            c.env("HOME", &state).env("XDG_CONFIG_HOME", &state).env("XDG_DATA_HOME", &state);
            c
        }
    };
    cmd.stdin(Stdio::null());
    detach_signals(&mut cmd);
    let child = cmd.spawn().map_err(io_err(format!("starting {}", server_bin.display())))?;
    let running = session.server.insert(Running { child, name: cfg.server.name() });
    let (listen, tls) = (cfg.listen, cfg.tls.is_some());
    wait_until("it answered GET /v2/", running, Duration::from_secs(30), || http_ok(listen, tls))?;

    on_ready(&session.mnt, &format!("{}://{}", if tls { "https" } else { "http" }, cfg.listen));
    loop {
        if let Ok(sig) = signals.recv_timeout(Duration::from_millis(200)) {
            log::info!("signal {sig}: stopping {} and unmounting", cfg.server.name());
            return Ok(());
        }
        for r in [session.server.as_mut(), session.mount.as_mut()].into_iter().flatten() {
            if let Ok(Some(st)) = r.child.try_wait() {
                return Err(Error::Failed(format!("{} exited ({st}); stopping", r.name)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_their_placeholders_and_render_them() {
        for (t, names) in [
            (NGINX_SERVER, &["MOUNT", "LISTEN", "TLS_CERT", "TLS_KEY", "HTPASSWD"][..]),
            (CADDYFILE, &["MOUNT", "LISTEN_HOST", "LISTEN_PORT", "TLS_CERT", "TLS_KEY", "CADDY_USERS"][..]),
        ] {
            let vars: Vec<(&str, &str)> = names.iter().map(|n| (*n, "X")).collect();
            for n in names {
                assert!(t.contains(&format!("@{n}@")), "{n}");
            }
            let out = render(t, &vars);
            for n in names {
                assert!(!out.contains(&format!("@{n}@")));
            }
        }
    }

    #[test]
    fn blocks_are_uncommented_only_when_on() {
        let t = "a {\n    listen X;   #[plain]\n    #[tls] listen X ssl;\n\t#[auth] auth_basic on;\n    # #[tls] prose\n}\n";
        assert_eq!(render_blocks(t, &[]), t);
        assert_eq!(
            render_blocks(t, &["tls"]),
            "a {\n    listen X ssl;\n\t#[auth] auth_basic on;\n    # #[tls] prose\n}\n"
        );
        assert_eq!(
            render_blocks(t, &["auth"]),
            "a {\n    listen X;   #[plain]\n    #[tls] listen X ssl;\n\tauth_basic on;\n    # #[tls] prose\n}\n"
        );
        // The shipped configs: with everything on, no marker is left outside comments.
        for t in [NGINX_SERVER, CADDYFILE] {
            let out = render_blocks(t, &["tls", "auth"]);
            let code = out.lines().filter(|l| !l.trim_start().starts_with('#'));
            assert!(code.clone().all(|l| !l.contains("#[plain]")), "{out}");
            assert!(out.lines().all(|l| !l.trim_start().starts_with("#[")), "{out}");
            assert!(out.contains("ssl_certificate") || out.contains("tls \"@TLS_CERT@\""));
        }
    }

    #[test]
    fn plain_http_only_on_loopback_unless_asked() {
        for a in ["127.0.0.1:80", "127.3.2.1:80", "[::1]:80"] {
            assert!(check_exposure(a.parse().unwrap(), false, false).is_ok(), "{a}");
        }
        for a in ["0.0.0.0:80", "10.0.0.1:80", "[::]:80"] {
            let e = check_exposure(a.parse().unwrap(), false, false).unwrap_err().to_string();
            assert!(e.contains("--tls") && e.contains("--insecure-http"), "{e}");
            assert!(check_exposure(a.parse().unwrap(), true, false).is_ok());
            assert!(check_exposure(a.parse().unwrap(), false, true).is_ok());
        }
    }
}
