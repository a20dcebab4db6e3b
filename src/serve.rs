//! `serve`: one command that mounts a store privately and runs nginx or Caddy over it.
//!
//! The bundled configs (`nginx/`, `caddy/`, compiled in) are filled in for the mount
//! and address; the mount is a `cstor-fs -f` child process and the server another.
//! SIGINT/SIGTERM/SIGHUP (or either child dying) stops the server, unmounts and removes
//! the runtime directory.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
}

/// Errors name what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not installed (apt-get install {1})")]
    Missing(&'static str, &'static str),
    #[error("cannot listen on {0}: {1} (is another server using it? pick one with --listen)")]
    PortTaken(SocketAddr, io::Error),
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

fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
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
    let mut cmd = match cfg.server {
        Server::Nginx => {
            let prefix = dir.join("nginx");
            std::fs::create_dir_all(&prefix).map_err(io_err("creating the nginx prefix"))?;
            let vars = [("MOUNT", mount_s.as_str()), ("LISTEN", listen_s.as_str())];
            std::fs::write(prefix.join("nginx.conf"), render(NGINX_MAIN, &vars))
                .and_then(|_| std::fs::write(prefix.join("cstor-fs.conf"), render(NGINX_SERVER, &vars)))
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
            let vars = [("MOUNT", mount_s.as_str()), ("LISTEN_HOST", host.as_str()), ("LISTEN_PORT", port.as_str())];
            let file = state.join("Caddyfile");
            std::fs::write(&file, render(CADDYFILE, &vars)).map_err(io_err("writing the Caddyfile"))?;
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
    let listen = cfg.listen;
    wait_until("it answered GET /v2/", running, Duration::from_secs(30), || http_ok(listen))?;

    on_ready(&session.mnt, &format!("http://{}", cfg.listen));
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
        for (t, names) in
            [(NGINX_SERVER, &["MOUNT", "LISTEN"][..]), (CADDYFILE, &["MOUNT", "LISTEN_HOST", "LISTEN_PORT"][..])]
        {
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
}
