//! `sys`: the operating-system plumbing the rest of the crate uses, on `nix`.
//!
//! Ids and user names, PATH lookup, pipes, the stop signals (blocked in every thread,
//! waited for by one), daemonizing, killing and reaping children, user namespaces,
//! unmounting, OFD read locks, `open`/`openat`/`openat2` for [`crate::confine`], and the
//! mount table: one parser of `/proc/self/mountinfo` that undoes the kernel's octal
//! escapes (a mountpoint with a space is listed as `\040`). `unsafe` is left only where
//! it is inherent: `fork`, `_exit`, and taking ownership of inherited descriptors.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

pub use nix::unistd::ForkResult;

fn io(e: Errno) -> io::Error {
    io::Error::from(e)
}

// ---- ids and users ----------------------------------------------------------------

pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

pub fn gid() -> u32 {
    nix::unistd::getgid().as_raw()
}

pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

pub fn egid() -> u32 {
    nix::unistd::getegid().as_raw()
}

pub fn pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// The login name of `uid` (through NSS), if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// The id of group `name` (through NSS), if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}

/// This host's name (gethostname(2)), if it has one that is valid UTF-8.
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok()
}

/// The IP addresses of this host's interfaces (getifaddrs(3)); empty if that fails.
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| match (s.as_sockaddr_in(), s.as_sockaddr_in6()) {
            (Some(v4), _) => Some(std::net::IpAddr::V4(v4.ip())),
            (_, Some(v6)) => Some(std::net::IpAddr::V6(v6.ip())),
            _ => None,
        })
        .collect()
}

/// Lowers the calling thread's scheduling priority to `nice` (threads it starts inherit it).
pub fn nice_this_thread(nice: i32) {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority(2) takes plain integers; nix has no wrapper for a thread's
    // priority. A failure only leaves the priority as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
}

/// An exclusive flock(2) on `file`, waited for; released when the returned guard drops.
pub fn flock_exclusive(file: File) -> io::Result<nix::fcntl::Flock<File>> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| io(e))
}

/// Whether this process may read and write `path`.
pub fn can_read_write(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_ok()
}

/// `program` in `$PATH`, else in `extra` directories: the first regular file found.
pub fn find_program(program: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra.iter().map(PathBuf::from)).map(|d| d.join(program)).find(|p| p.is_file())
}

// ---- pipes, processes, signals ----------------------------------------------------

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io)?;
    Ok((File::from(r), File::from(w)))
}

/// The signals that stop the daemon and `serve`: SIGINT, SIGTERM, SIGHUP.
#[derive(Debug, Clone, Copy)]
pub struct StopSignals(SigSet);

impl StopSignals {
    /// Blocks the stop signals in this thread and every thread it starts later, so one
    /// thread can [`StopSignals::wait`] for them.
    pub fn block() -> io::Result<StopSignals> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block().map_err(io)?;
        Ok(StopSignals(set))
    }

    /// Waits for one of them; returns its number.
    pub fn wait(&self) -> i32 {
        loop {
            if let Ok(sig) = self.0.wait() {
                return sig as i32;
            }
        }
    }
}

/// For a child between fork and exec (async-signal-safe): default signal mask and its
/// own process group.
pub fn reset_signals_and_detach_group() -> io::Result<()> {
    SigSet::empty().thread_set_mask().map_err(io)?;
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(io)
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let sig = Signal::try_from(sig).map_err(io)?;
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::sys::signal::kill(Pid::from_raw(pid), sig).map_err(io)
}

/// Waits for child `pid` to end.
pub fn reap(pid: i32) {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// `fork(2)`.
///
/// # Safety
/// The process must be single-threaded (or the child must only make
/// async-signal-safe calls before it execs or exits).
pub unsafe fn fork() -> io::Result<ForkResult> {
    // SAFETY: passed on to the caller.
    unsafe { nix::unistd::fork() }.map_err(io)
}

/// Ends the process at once with `code`: no destructors, no atexit handlers, no flush
/// (a forked parent or helper must not tear down state its other half still uses).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and always sound; skipping destructors is the point.
    unsafe { libc::_exit(code) }
}

/// Forks; the parent exits 0 at once, the child detaches (new session, stdio on
/// /dev/null, stderr kept when RUST_LOG is set, cwd `/`) and returns.
///
/// Must be called while the process is single-threaded.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: the caller is single-threaded (documented precondition; no thread has
    // been started yet), so the child may run ordinary code.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => exit_now(0),
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            if let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                if std::env::var_os("RUST_LOG").is_none() {
                    let _ = nix::unistd::dup2_stderr(&null);
                }
            }
            let _ = std::env::set_current_dir("/");
            Ok(())
        }
    }
}

/// Closes every descriptor of this process but `keep` (in a forked helper, which must
/// not hold the parent's /dev/fuse connection open).
pub fn close_fds_except(keep: &[i32]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|fd| !keep.contains(fd)) {
        // SAFETY: a descriptor inherited across fork that nothing in this (single-threaded)
        // child uses; dropping the OwnedFd closes it. The one read_dir used is closed
        // already (an EBADF on it is harmless).
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Moves this process into a new user namespace.
pub fn unshare_user() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io)
}

/// Sets real, effective and saved gid and uid to 0 (inside a user namespace mapping 0).
pub fn become_root() -> io::Result<()> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(io)?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(io)
}

// ---- files --------------------------------------------------------------------------

/// Takes an OFD read lock on the whole of `file`, waiting for writers.
pub fn ofd_read_lock(file: &File) -> io::Result<()> {
    let fl = libc::flock { l_type: libc::F_RDLCK as _, l_whence: libc::SEEK_SET as _, l_start: 0, l_len: 0, l_pid: 0 };
    loop {
        match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLKW(&fl)) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// `open(2)` of `path` with `flags`.
pub fn open(path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    nix::fcntl::open(path, flags, Mode::empty()).map_err(io)
}

/// `openat(2)` of `name` below `dir`.
pub fn openat(dir: impl AsFd, name: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
    nix::fcntl::openat(dir, std::ffi::OsStr::from_bytes(name), flags, Mode::empty()).map_err(io)
}

/// `openat2(2)` of `rel` below `dir` with `resolve`, retried on EAGAIN/EINTR.
pub fn openat2(dir: impl AsFd, rel: &[u8], flags: OFlag, resolve: ResolveFlag) -> io::Result<OwnedFd> {
    let rel = std::ffi::OsStr::from_bytes(rel);
    loop {
        match nix::fcntl::openat2(dir.as_fd(), rel, OpenHow::new().flags(flags).resolve(resolve)) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            r => return r.map_err(io),
        }
    }
}

/// Detaches whatever is mounted at `dir` (`umount2(MNT_DETACH)`).
pub fn unmount_detach(dir: &Path) -> io::Result<()> {
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(io)
}

// ---- the mount table ---------------------------------------------------------------

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount.
    pub id: u64,
    /// `major:minor` of the device.
    pub dev: String,
    /// Where it is mounted, unescaped.
    pub mount_point: PathBuf,
    /// The filesystem type (`fuse.cstor-fs`, `ext4`, ...).
    pub fs_type: String,
}

/// Undoes the kernel's escaping of mount table fields: `\` + three octal digits is
/// that byte (space `\040`, tab `\011`, newline `\012`, backslash `\134`); anything
/// else stays as it is.
pub fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses `/proc/self/mountinfo` text; malformed lines are skipped.
///
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let id = f.first()?.parse().ok()?;
            let dev = f.get(2)?.to_string();
            let mount_point = PathBuf::from(OsString::from_vec(unescape(f.get(4)?)));
            let sep = f.iter().skip(6).position(|x| *x == "-")? + 6;
            let fs_type = String::from_utf8_lossy(&unescape(f.get(sep + 1)?)).into_owned();
            Some(MountEntry { id, dev, mount_point, fs_type })
        })
        .collect()
}

/// The mount table of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// What is mounted on top at `dir`, if anything.
pub fn mount_at(dir: &Path) -> Option<MountEntry> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts().ok()?.into_iter().rev().find(|m| m.mount_point == dir)
}

/// Whether something is mounted at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    mount_at(dir).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        let text = "\
22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
91 22 0:50 / /tmp/a\\040b\\011c\\012d\\134e rw,nosuid,nodev master:1 shared:2 - fuse.cstor-fs /store\\040x ro
92 22 0:51 / /tmp/no\\09sc rw - fuse.x y rw
garbage
93 22 0:52 / /tmp/plain rw - ext4
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m[0].mount_point, Path::new("/proc"));
        assert_eq!(m[1].mount_point, Path::new("/tmp/a b\tc\nd\\e"));
        assert_eq!((m[1].id, m[1].dev.as_str(), m[1].fs_type.as_str()), (91, "0:50", "fuse.cstor-fs"));
        // Not three octal digits: kept as written.
        assert_eq!(m[2].mount_point, Path::new("/tmp/no\\09sc"));
        assert_eq!(m[2].fs_type, "fuse.x");
        assert_eq!(unescape("\\040"), b" ");
        assert_eq!(unescape("x\\"), b"x\\");
        assert_eq!(unescape("\\777"), b"\\777");
    }

    #[test]
    fn the_root_is_mounted_and_a_fresh_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let d = std::env::temp_dir().join(format!("cstor-fs-sys-{} x", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(!is_mounted(&d));
        std::fs::remove_dir(&d).unwrap();
    }
}
