//! `fs`: a thin, read-only fuser adapter over the current [`Tree`].
//!
//! Each `Filesystem` method validates, looks up a [`Node`] in the current tree and
//! sends one reply. Shared state is an `ArcSwap<Tree>` swapped by [`Shared::update`]
//! (called from the refresh loop, which also tells the kernel to forget vanished
//! names) plus a table of open handles. Digest-named nodes (files and `.ref/<digest>`
//! directories) get long kernel TTLs and digest-named files keep their page cache;
//! tags, lists and other directories get zero TTLs so changes show at once. Computed
//! entries (`.after/<last>`, the [`Dyn`] directories of pages and referrers) are built on
//! lookup and kept in a bounded side table so that later getattr/open/readdir calls find
//! them by inode. This is the only module that names fuser.

mod mount;
mod options;
mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::live::Live;
use crate::tarsplit::BlobReader;
pub use mount::{run, MountConfig};
pub use options::MountOptions;
pub use tree::{ino_of, Content, Dyn, Kind, Node, Tree, ROOT};

/// How long the kernel may cache names and attributes of digest-named nodes.
const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// Computed entries (`.after/<last>`, pages) kept at most (they are recomputed on lookup).
const MAX_DYNAMIC: usize = 4096;

/// What the files show.
#[derive(Debug, Clone, Copy)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

impl Default for Attrs {
    fn default() -> Attrs {
        let (uid, gid) = (crate::sys::uid(), crate::sys::gid());
        Attrs { uid, gid, file_mode: 0o444, dir_mode: 0o555 }
    }
}

thread_local! {
    /// Each FUSE thread's buffer for layer reads.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

enum Handle {
    Bytes(Arc<[u8]>),
    Layer {
        reader: BlobReader,
        path: String,
    },
    /// A checked compressed blob from the cache (held open: eviction cannot cut it short).
    File {
        file: std::fs::File,
        path: String,
    },
}

/// State shared by the FUSE threads and the refresh loop.
pub struct Shared {
    live: Arc<Live>,
    tree: ArcSwap<Tree>,
    attrs: Attrs,
    started: SystemTime,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    dynamic: Mutex<HashMap<u64, Node>>,
}

impl Shared {
    pub fn new(live: Arc<Live>, attrs: Attrs) -> Arc<Shared> {
        let tree = Tree::build(live.view());
        Arc::new(Shared {
            live,
            tree: ArcSwap::from_pointee(tree),
            attrs,
            started: SystemTime::now(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            dynamic: Mutex::default(),
        })
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The view the current tree was built from.
    pub fn served_view(&self) -> Arc<crate::live::View> {
        self.tree.load().view.clone()
    }

    /// Rebuilds the tree if `Live` published a new view. Returns the entries that
    /// vanished, for the caller to invalidate in the kernel.
    pub fn update(&self) -> Vec<(u64, String)> {
        let view = self.live.view();
        let old = self.tree.load_full();
        if Arc::ptr_eq(&old.view, &view) {
            return Vec::new();
        }
        let new = Tree::build(view);
        let gone = new.vanished_since(&old);
        self.tree.store(Arc::new(new));
        self.dynamic.lock().unwrap_or_else(|p| p.into_inner()).clear();
        gone
    }

    fn node(&self, tree: &Tree, ino: u64) -> Option<Node> {
        tree.nodes
            .get(&ino)
            .cloned()
            .or_else(|| self.dynamic.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned())
    }

    fn attr(&self, tree: &Tree, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, perm, nlink) = match &node.kind {
            Kind::Dir { .. } | Kind::Dynamic(_) => (FileType::Directory, 0, self.attrs.dir_mode, 2),
            Kind::File(c) => (FileType::RegularFile, c.size(), self.attrs.file_mode, 1),
            Kind::Link(t) => (FileType::Symlink, t.len() as u64, 0o777, 1),
        };
        let time = if node.immutable { self.started } else { tree.view.built };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: self.attrs.uid,
            gid: self.attrs.gid,
            rdev: 0,
            flags: 0,
            blksize: 128 << 10,
        }
    }

    fn ttl(node: &Node) -> Duration {
        if node.immutable {
            IMMUTABLE_TTL
        } else {
            Duration::ZERO
        }
    }

    fn lookup_node(&self, tree: &Tree, parent: u64, name: &str) -> Option<(u64, Node)> {
        let parent_node = self.node(tree, parent)?;
        let kind = match &parent_node.kind {
            Kind::Dir { children, after_tags_of } => {
                if let Some(&ino) = children.get(name) {
                    return Some((ino, tree.nodes.get(&ino)?.clone()));
                }
                let repo = after_tags_of.as_ref()?;
                // `.after/<last>`: computed on demand for any name.
                Kind::File(Content::Bytes(tree::tags_json(&tree.view.registry, repo, Some(name)).into()))
            }
            Kind::Dynamic(d) => tree::dyn_lookup(&tree.view.registry, d, name)?,
            _ => return None,
        };
        Some(self.remember(parent, &parent_node.path, name, kind))
    }

    /// Keeps a computed entry so that getattr/open/readdir find it by inode.
    fn remember(&self, parent: u64, parent_path: &str, name: &str, kind: Kind) -> (u64, Node) {
        let path = format!("{parent_path}/{name}");
        let ino = ino_of(&path);
        let node = Node { parent, kind, immutable: false, path };
        let mut dynamic = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
        if dynamic.len() >= MAX_DYNAMIC {
            dynamic.clear();
        }
        dynamic.insert(ino, node.clone());
        (ino, node)
    }

    fn open_file(&self, ino: u64) -> Result<(Handle, bool), Errno> {
        let tree = self.tree.load();
        let node = self.node(&tree, ino).ok_or(Errno::ENOENT)?;
        let Kind::File(content) = &node.kind else { return Err(Errno::EISDIR) };
        let handle = match content {
            Content::Bytes(b) => Handle::Bytes(b.clone()),
            Content::Layer { id, size } => {
                let blob = self.live.open_layer(&tree.view, id).map_err(|e| {
                    log::error!("{}: cannot open: {e}", node.path);
                    Errno::EIO
                })?;
                if blob.size() != *size {
                    log::error!("{}: layer {id} rebuilds {} bytes, expected {size}", node.path, blob.size());
                    return Err(Errno::EIO);
                }
                Handle::Layer { reader: BlobReader::new(blob), path: node.path.clone() }
            }
            Content::Compressed(tree::CompressedBlob { layer, diff, codec, size }) => {
                let c = self.live.compressor().ok_or(Errno::EIO)?;
                let (file, ready) = c.open(layer, diff, *codec).map_err(|e| {
                    log::error!("{}: cannot open: {e}", node.path);
                    Errno::EIO
                })?;
                if ready.size != *size {
                    log::error!("{}: compressed blob is {} bytes, expected {size}", node.path, ready.size);
                    return Err(Errno::EIO);
                }
                Handle::File { file, path: node.path.clone() }
            }
        };
        Ok((handle, node.immutable))
    }
}

/// The fuser `Filesystem`.
pub struct CstorFs {
    shared: Arc<Shared>,
}

impl CstorFs {
    pub fn new(shared: Arc<Shared>) -> CstorFs {
        CstorFs { shared }
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::ENOENT)
}

impl Filesystem for CstorFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        let tree = s.tree.load();
        let found = name_str(name).ok().and_then(|n| s.lookup_node(&tree, parent.0, n));
        match found {
            Some((ino, node)) => reply.entry(&Shared::ttl(&node), &s.attr(&tree, ino, &node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.shared;
        let tree = s.tree.load();
        match s.node(&tree, ino.0) {
            Some(node) => reply.attr(&Shared::ttl(&node), &s.attr(&tree, ino.0, &node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let tree = self.shared.tree.load();
        match self.shared.node(&tree, ino.0).map(|n| n.kind) {
            Some(Kind::Link(t)) => reply.data(t.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.shared.open_file(ino.0) {
            Ok((handle, immutable)) => {
                let fh = self.shared.next_fh.fetch_add(1, Ordering::Relaxed);
                self.shared.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, Arc::new(handle));
                // Immutable content may stay in the page cache across opens; mutable
                // files (tags, lists) are re-read on every open.
                let f = if immutable { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(FileHandle(fh), f);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let handle = self.shared.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&fh.0).cloned();
        match handle.as_deref() {
            None => reply.error(Errno::EBADF),
            Some(Handle::Bytes(b)) => {
                let start = (offset.min(b.len() as u64)) as usize;
                let end = start.saturating_add(size as usize).min(b.len());
                reply.data(&b[start..end]);
            }
            Some(Handle::File { file, path }) => READ_BUF.with_borrow_mut(|buf| {
                use std::os::unix::fs::FileExt;
                if buf.len() < size as usize {
                    buf.resize(size as usize, 0);
                }
                let mut n = 0;
                while n < size as usize {
                    match file.read_at(&mut buf[n..size as usize], offset + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::error!("{path}: read at {offset}: {e}");
                            return reply.error(Errno::EIO);
                        }
                    }
                }
                reply.data(&buf[..n]);
            }),
            Some(Handle::Layer { reader, path }) => READ_BUF.with_borrow_mut(|buf| {
                // Reused per thread, never cleared: only the bytes just read are sent.
                if buf.len() < size as usize {
                    buf.resize(size as usize, 0);
                }
                match reader.read_at(offset, &mut buf[..size as usize]) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => {
                        log::error!("{path}: read at {offset}: {e}");
                        reply.error(Errno::EIO);
                    }
                }
            }),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.shared.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = &self.shared;
        let tree = s.tree.load();
        let Some(node) = s.node(&tree, ino.0) else { return reply.error(Errno::ENOENT) };
        let file_type = |k: &Kind| match k {
            Kind::Dir { .. } | Kind::Dynamic(_) => FileType::Directory,
            Kind::File(_) => FileType::RegularFile,
            Kind::Link(_) => FileType::Symlink,
        };
        let entries: Vec<(u64, FileType, String)> = match &node.kind {
            Kind::Dir { children, .. } => children
                .iter()
                .filter_map(|(name, &child)| Some((child, file_type(&tree.nodes.get(&child)?.kind), name.clone())))
                .collect(),
            // Only the page directories list their one file (a glob in Caddy's try_files).
            Kind::Dynamic(d) => tree::dyn_children(&tree.view.registry, d)
                .into_iter()
                .map(|(name, kind)| {
                    let t = file_type(&kind);
                    (s.remember(ino.0, &node.path, &name, kind).0, t, name)
                })
                .collect(),
            _ => return reply.error(Errno::ENOTDIR),
        };
        let dots = [(ino.0, FileType::Directory, "."), (node.parent, FileType::Directory, "..")];
        let rest = entries.iter().map(|(child, kind, name)| (*child, *kind, name.as_str()));
        for (i, (child, kind, name)) in dots.into_iter().chain(rest).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.shared.tree.load().nodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    /// Regular files are always ready, as on a disk filesystem.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.poll(events & (fuser::PollEvents::POLLIN | fuser::PollEvents::POLLRDNORM));
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }
}
