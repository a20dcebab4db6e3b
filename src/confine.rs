//! Opening files of a (possibly hostile) store so that nothing in it can lead the open
//! elsewhere or stall it: no symlink is followed at any component below a directory
//! handle and no `..` escapes (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; on
//! kernels without it, a walk one component at a time with `O_NOFOLLOW`), every open
//! is `O_NONBLOCK` (a FIFO never blocks), and [`open_regular`] / [`open_regular_beneath`]
//! refuse anything but a regular file. Used by `store` and `tarsplit` alike.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Flags for the final open: never block on a FIFO, never become a controlling tty.
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens `path` (its last component must not be a symlink) if it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), FILE_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by no one else.
    regular(unsafe { File::from_raw_fd(fd) })
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
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    let c = CString::new(rel).expect("checked for NUL");
    // SAFETY: open_how is a plain C struct; zero is valid for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FILE_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid dirfd, NUL-terminated path, and a pointer to a live open_how of the given size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new fd that we now own.
            return Ok(unsafe { File::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn openat(dir: libc::c_int, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(name).expect("checked for NUL");
    // SAFETY: valid dirfd and NUL-terminated name.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn walk(dir: &OwnedFd, rel: &[u8]) -> io::Result<File> {
    let mut parts = rel.split(|&b| b == b'/').peekable();
    let mut cur: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let base = cur.as_ref().unwrap_or(dir).as_raw_fd();
        if parts.peek().is_none() {
            return openat(base, part, FILE_FLAGS).map(File::from);
        }
        let next =
            openat(base, part, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).map_err(|e| {
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
