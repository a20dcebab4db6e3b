//! Brief shared locks on containers-storage lock files, taken the way a reader must.
//!
//! c/storage holds POSIX record locks on `layers.lock` / `images.lock`. An open file
//! description (OFD) read lock conflicts with those, survives other fds of the file
//! being closed, and needs only `O_RDONLY` (so it works on a read-only bind mount).
//! The first 64 bytes of a lock file are the last writer's token.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// A held OFD read lock; released on drop (closing the only fd of the description).
#[derive(Debug)]
pub struct ReadLock {
    _file: File,
}

/// Opens `path` read-only and waits for a whole-file shared lock.
pub fn read_lock(path: &Path) -> io::Result<ReadLock> {
    // Non-blocking and regular-only: a FIFO in place of a lock file must not stall us.
    let file = crate::confine::open_regular(path)?;
    crate::sys::ofd_read_lock(&file)?;
    Ok(ReadLock { _file: file })
}

fn token_of(mut f: &File) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let _ = f.by_ref().take(64).read_to_end(&mut buf);
    buf
}

/// Reads a lock file's token without locking (for cheap change checks).
pub fn peek_token(path: &Path) -> Option<Vec<u8>> {
    let f = crate::confine::open_regular(path).ok()?;
    Some(token_of(&f))
}
