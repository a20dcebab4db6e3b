//! Mounting: the fuser session, daemonizing once the mount is live, entering a rootless
//! store's user namespace (through [`crate::userns`], before any thread starts), the
//! refresh and layer-check loops, and unmounting on SIGINT/SIGTERM/SIGHUP.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL};

use super::options::MountOptions;
use super::{CstorFs, Shared};
use crate::live::Live;
use crate::sys::{self, is_mounted, StopSignals};
use crate::userns::{self, Keeper};

/// How a mount runs.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub foreground: bool,
    pub threads: usize,
    /// How often the store is checked for changes.
    pub poll: Duration,
    /// Source shown in /proc/mounts (overridden by `-o fsname=`).
    pub fsname: String,
    /// Enter the store's user namespace once mounted (see [`crate::userns`]).
    pub userns: Option<userns::Plan>,
}

/// Why an unprivileged mount may have been refused, when the cause is recognisable.
fn hint(e: &io::Error) -> &'static str {
    let dev_fuse_usable = || sys::can_read_write(std::path::Path::new("/dev/fuse"));
    if e.kind() == io::ErrorKind::PermissionDenied && !dev_fuse_usable() {
        " (/dev/fuse is not read-writable for this user; standard systems make it mode 0666, \
         or add -o auto_unmount to mount through fusermount3)"
    } else {
        ""
    }
}

/// Mounts and serves until unmounted or signalled. Without `foreground`, the calling
/// process exits with status 0 as soon as the mount is live and a child serves it.
pub fn run(live: Arc<Live>, cfg: MountConfig, on_live: impl FnOnce()) -> io::Result<()> {
    let root = sys::euid() == 0;
    if !root && (cfg.options.allow_other || cfg.options.allow_root) && !fuse_conf_allows_other() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "allow_other and allow_root need `user_allow_other` in /etc/fuse.conf when not mounting as root: \
             add that line, or mount without them (then only this user, e.g. its own nginx, can read the mount)",
        ));
    }
    let signals = StopSignals::block()?;
    let shared = Shared::new(live.clone(), cfg.options.attrs());
    let mut opts = vec![
        MountOption::FSName(cfg.options.fsname.clone().unwrap_or(cfg.fsname.clone())),
        MountOption::Subtype("cstor-fs".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if cfg.options.auto_unmount {
        opts.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = session_acl(&cfg.options, root)?;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let mut session = Session::new(CstorFs::new(shared.clone()), &cfg.mountpoint, &config)
        .map_err(|e| io::Error::new(e.kind(), format!("mounting at {}: {e}{}", cfg.mountpoint.display(), hint(&e))))?;
    if !cfg.foreground {
        sys::daemonize()?;
    }
    // Before any thread starts: a multi-threaded process cannot enter a user namespace.
    let keeper = enter_userns(&cfg)?.map(Arc::new);
    on_live();
    notify_ready();
    let view = live.view();
    log::info!(
        "mounted {} at {}: {} repositories, {} images left out",
        live.store().location().graphroot.display(),
        cfg.mountpoint.display(),
        view.registry.repos.len(),
        view.registry.excluded.len()
    );
    let mut unmounter = session.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    let keeper2 = keeper.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let sig = signals.wait();
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        if let Err(e) = unmounter.unmount() {
            log::error!("unmounting {}: {e}", mountpoint.display());
        }
        // With auto_unmount the unmount is fusermount3's job; do not depend on it.
        std::thread::sleep(Duration::from_millis(100));
        if is_mounted(&mountpoint) {
            match &keeper2 {
                // Inside the user namespace only the keeper (outside it) can unmount.
                Some(k) => k.unmount(),
                None => force_unmount(&mountpoint),
            }
        }
        // A copy of the mount in a mount namespace made meanwhile (unshare -m) keeps the
        // connection open after a lazy unmount here: do not wait for it forever.
        std::thread::sleep(Duration::from_secs(3));
        if !is_mounted(&mountpoint) {
            log::info!("unmounted {}; the connection is still held elsewhere: exiting", mountpoint.display());
            std::process::exit(0);
        }
    })?;
    let notifier = session.notifier();
    let poll = cfg.poll;
    let s = shared.clone();
    std::thread::Builder::new().name("refresh".into()).spawn(move || refresh_loop(&s, &notifier, poll))?;
    if let Some(c) = live.compressor() {
        c.start()?;
    }
    let h = live.clone();
    std::thread::Builder::new().name("check".into()).spawn(move || loop {
        if h.check_unchecked() == 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    let r = session.run();
    log::info!("unmounted {}", cfg.mountpoint.display());
    drop(keeper);
    r
}

/// Who may use the mount. fuser lets fusermount3 unmount automatically only when it
/// checks access itself (`allow_root`/`allow_other`); for root, `allow_root` admits
/// exactly the owner, so `auto_unmount` alone works as with libfuse file systems.
fn session_acl(options: &MountOptions, root: bool) -> io::Result<SessionACL> {
    Ok(if options.allow_other {
        SessionACL::All
    } else if options.allow_root || (options.auto_unmount && root) {
        SessionACL::RootAndOwner
    } else if options.auto_unmount {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "auto_unmount needs allow_root (or allow_other) when not mounting as root, because the FUSE \
             library cstor-fs uses hands the unmount to fusermount3 only for mounts it checks access to itself: \
             add -o allow_root (and `user_allow_other` to /etc/fuse.conf), or leave auto_unmount out",
        ));
    } else {
        SessionACL::Owner
    })
}

/// Enters the store's user namespace if planned; returns the keeper that unmounts from
/// outside it. A failure is fatal only under `userns=require`.
fn enter_userns(cfg: &MountConfig) -> io::Result<Option<Keeper>> {
    let Some(plan) = &cfg.userns else { return Ok(None) };
    let required = cfg.options.userns == userns::Policy::Require;
    let (keeper, error) = match plan.enter(Some(&cfg.mountpoint)) {
        Ok(e) => (e.keeper, e.error),
        Err(e) => (None, Some(e)),
    };
    match error {
        None => log::info!(
            "reading the store inside a user namespace: uid 0 = {} ({}), 1.. = its subordinate ids",
            plan.user,
            plan.uid
        ),
        Some(e) if required => return Err(io::Error::other(e.to_string())),
        Some(e) => log::error!("{e}: serving only the files {} can read; others fail with EIO", plan.user),
    }
    Ok(keeper)
}

/// Whether `/etc/fuse.conf` lets non-root users mount with `allow_other`/`allow_root`.
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|t| t.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
        .unwrap_or(false)
}

/// Tells systemd (Type=notify) that the mount is live, if it is listening.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("NOTIFY_SOCKET: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(b"READY=1\n", &a))
    } else {
        sock.send_to(b"READY=1\n", &path)
    };
    if let Err(e) = r {
        log::warn!("telling systemd we are ready: {e}");
    }
}

fn force_unmount(dir: &std::path::Path) {
    if sys::unmount_detach(dir).is_err() {
        // Not root: the setuid helper may unmount what this user mounted.
        let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(dir).status();
    }
}

/// Never ends: a failed refresh (an error, or a panic building the new state) is logged,
/// the last good tree keeps being served, and the next tick tries again, so the next
/// store change is still picked up.
fn refresh_loop(shared: &Shared, notifier: &Notifier, poll: Duration) {
    let mut last_err = String::new();
    loop {
        std::thread::sleep(poll);
        let step =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| refresh_once(shared, notifier, &mut last_err)));
        if step.is_err() {
            let msg = "refreshing the view failed (see the panic above); still serving the last good state".to_string();
            if msg != last_err {
                log::error!("{msg}");
                last_err = msg;
            }
        }
    }
}

fn refresh_once(shared: &Shared, notifier: &Notifier, last_err: &mut String) {
    // What is served now: the tree's view (behind `Live`'s if building a tree failed).
    let before = shared.served_view();
    if let Err(e) = shared.live().refresh() {
        let msg = e.to_string();
        if msg != *last_err {
            log::error!("reading the store: {msg} (still serving the last good state)");
            *last_err = msg;
        }
        return;
    }
    let view = shared.live().view();
    if Arc::ptr_eq(&before, &view) {
        return;
    }
    let gone = shared.update();
    last_err.clear();
    // podman touches the lock files on every command: only real changes are news.
    let (a, b) = (&before.registry, &view.registry);
    if a.repos != b.repos || a.excluded != b.excluded || !gone.is_empty() {
        log::info!(
            "store changed: {} repositories, {} images left out, {} names gone",
            b.repos.len(),
            b.excluded.len(),
            gone.len()
        );
        for w in &view.snapshot.warnings {
            log::warn!("{w}");
        }
        for x in b.excluded.iter().filter(|x| !a.excluded.contains(x)) {
            log::warn!("left out {}: {}", x.image, x.reason);
        }
    }
    for (parent, name) in gone {
        // ENOENT just means the kernel had not cached it.
        let _ = notifier.inval_entry(INodeNo(parent), name.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_unmount_alone_works_for_root_and_says_what_to_add_otherwise() {
        let opts = |o: &str| MountOptions::parse([o]).unwrap();
        // Regression: fuser refused auto_unmount with the owner-only ACL, even for root.
        assert_eq!(session_acl(&opts("auto_unmount"), true).unwrap(), SessionACL::RootAndOwner);
        let e = session_acl(&opts("auto_unmount"), false).unwrap_err().to_string();
        assert!(e.contains("add -o allow_root"), "{e}");
        assert_eq!(session_acl(&opts("auto_unmount,allow_root"), false).unwrap(), SessionACL::RootAndOwner);
        assert_eq!(session_acl(&opts("auto_unmount,allow_other"), false).unwrap(), SessionACL::All);
        assert_eq!(session_acl(&opts("ro"), true).unwrap(), SessionACL::Owner);
        assert_eq!(session_acl(&opts("allow_root"), true).unwrap(), SessionACL::RootAndOwner);
    }
}
