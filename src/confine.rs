//! Opening files of a (possibly hostile) store so that nothing in it can lead the open
//! elsewhere or stall it: no symlink is followed at any component below a directory
//! handle and no `..` escapes (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; on
//! kernels without it, a walk one component at a time with `O_NOFOLLOW`), every open
//! is `O_NONBLOCK` (a FIFO never blocks), and [`open_regular`] / [`open_regular_beneath`]
//! refuse anything but a regular file. Used by `store` and `tarsplit` alike.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, ResolveFlag};

use crate::sys;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Flags for the final open: never block on a FIFO, never become a controlling tty.
const FILE_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_CLOEXEC).union(OFlag::O_NOFOLLOW).union(OFlag::O_NONBLOCK).union(OFlag::O_NOCTTY);

/// Opens `path` (its last component must not be a symlink) if it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    regular(File::from(sys::open(path, FILE_FLAGS)?))
}

/// [`open_beneath`], then refuses anything but a regular file.
pub fn open_regular_beneath(dir: &OwnedFd, rel: &[u8]) -> io::Result<File> {
    regular(open_beneath(dir, rel)?)
}

fn regular(f: File) -> io::Result<File> {
    let ft = f.metadata()?.file_type();
    if ft.is_file() {
        Ok(f)
    } else if ft.is_symlink() {
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({})", kind(&ft))))
    }
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Opens a directory to resolve payloads beneath (an `O_PATH` handle pins it even if
/// the layer directory is renamed away).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    sys::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
}

/// Opens `rel` (a cleaned relative path, no empty or `..` components) beneath `dir`.
pub fn open_beneath(dir: &OwnedFd, rel: &[u8]) -> io::Result<File> {
    if rel.is_empty() || rel.contains(&0) || rel.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a clean relative path"));
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2(dir, rel) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    walk(dir, rel)
}

fn openat2(dir: &OwnedFd, rel: &[u8]) -> io::Result<File> {
    let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    sys::openat2(dir, rel, FILE_FLAGS, resolve).map(File::from)
}

pub(crate) fn walk(dir: &OwnedFd, rel: &[u8]) -> io::Result<File> {
    let mut parts = rel.split(|&b| b == b'/').peekable();
    let mut cur: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let base = cur.as_ref().unwrap_or(dir);
        if parts.peek().is_none() {
            return sys::openat(base, part, FILE_FLAGS).map(File::from);
        }
        let next = sys::openat(base, part, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                e
            }
        })?;
        cur = Some(next);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}
