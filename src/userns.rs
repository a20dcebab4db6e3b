//! `userns`: reading a rootless store with the rights of podman's user namespace.
//!
//! A rootless store's files belong to the user's subordinate ids (`/etc/subuid`,
//! `/etc/subgid`); some (`/etc/shadow`, mode 0000) only a process inside the user
//! namespace podman uses can open. [`plan`] decides, before anything is mounted, whether
//! the store needs that namespace and finds what setting it up takes (the id ranges, via
//! `getsubids` or the files, and `newuidmap`/`newgidmap`), so a missing piece is an
//! error naming it. [`Plan::enter`] then moves this process, which must still be
//! single-threaded, into a new user namespace with podman's mappings (`0 → uid`,
//! `1.. → the subordinate ranges`, as `podman unshare` has). The setuid helpers must run
//! outside it, so a child forked first writes the maps; for a mount that child stays
//! outside as the [`Keeper`], which unmounts through `fusermount3` (whose setuid bit
//! means nothing inside the namespace) on request or when the daemon dies. Only the
//! user namespace changes: the mount namespace, and so the FUSE mount, stays the user's.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys;

/// Whether to enter the namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// When a non-root user reads a store it owns (a rootless store); a failure to set
    /// the namespace up is logged and files the user can read are still served.
    #[default]
    Auto,
    /// As `Auto`, but a failure is fatal.
    Require,
    /// Never: read with the process's own rights.
    Off,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "auto" => Ok(Policy::Auto),
            "require" => Ok(Policy::Require),
            "off" => Ok(Policy::Off),
            _ => Err(format!("userns must be auto, require or off, not {s:?}")),
        }
    }
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Require => "require",
            Policy::Off => "off",
        }
    }
}

/// Why the namespace cannot be set up; each names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "user {user} (uid {uid}) has no subordinate {kind}s ({file}): add a range no other user has, as rootless \
         podman needs too: `usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST {user}`"
    )]
    NoRange { user: String, uid: u32, kind: &'static str, file: &'static str },
    #[error("{0} is not installed (apt-get install uidmap)")]
    MissingTool(&'static str),
    #[error("cannot enter a user namespace: the process already runs {0} threads")]
    Threads(usize),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("setting up the user namespace: {0}")]
    Map(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A subordinate id range: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// Everything entering the namespace needs, found before it is entered.
#[derive(Debug, Clone)]
pub struct Plan {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub uids: Vec<Range>,
    pub gids: Vec<Range>,
    newuidmap: PathBuf,
    newgidmap: PathBuf,
}

/// The ranges of `user`/`uid` in a subuid/subgid file (lines `name-or-uid:start:count`).
pub fn parse_subid(text: &str, user: &str, uid: u32) -> Vec<Range> {
    let uid_s = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || (who != user && who != uid_s) {
                return None;
            }
            let r = Range { start: start.trim().parse().ok()?, count: count.trim().parse().ok()? };
            (r.count > 0).then_some(r)
        })
        .collect()
}

/// The ranges `getsubids` prints (`0: user 100000 65536` per range).
fn parse_getsubids(text: &str) -> Vec<Range> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, _, start, count] => Some(Range { start: start.parse().ok()?, count: count.parse().ok()? }),
                _ => None,
            }
            .filter(|r| r.count > 0)
        })
        .collect()
}

/// `newuidmap`/`newgidmap` arguments after the pid: the user's own id as 0, then the
/// ranges one after another from 1 (podman's rootless mapping).
pub fn map_args(own: u32, ranges: &[Range]) -> Vec<String> {
    let mut args = vec!["0".to_string(), own.to_string(), "1".to_string()];
    let mut next: u64 = 1;
    for r in ranges {
        if next + r.count as u64 > u32::MAX as u64 {
            break;
        }
        args.extend([next.to_string(), r.start.to_string(), r.count.to_string()]);
        next += r.count as u64;
    }
    args
}

fn find_tool(name: &str) -> Option<PathBuf> {
    sys::find_program(name, &["/usr/bin", "/usr/sbin", "/bin", "/sbin"])
}

fn user_name(uid: u32) -> String {
    sys::user_name(uid).unwrap_or_else(|| uid.to_string())
}

fn ranges(user: &str, uid: u32, group: bool) -> Result<Vec<Range>, Error> {
    let (kind, file) = if group { ("gid", "/etc/subgid") } else { ("uid", "/etc/subuid") };
    let found = match find_tool("getsubids") {
        // getsubids asks libsubid, which follows nsswitch's `subid:` (files, sss, ...).
        Some(tool) => {
            let mut c = Command::new(tool);
            if group {
                c.arg("-g");
            }
            match c.arg(user).stderr(std::process::Stdio::null()).output() {
                Ok(o) if o.status.success() => parse_getsubids(&String::from_utf8_lossy(&o.stdout)),
                _ => Vec::new(),
            }
        }
        None => match std::fs::read_to_string(file) {
            Ok(text) => parse_subid(&text, user, uid),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::Io { what: format!("reading {file}"), source: e }),
        },
    };
    if found.is_empty() {
        return Err(Error::NoRange { user: user.to_string(), uid, kind, file });
    }
    Ok(found)
}

/// Whether `graphroot` needs the namespace under `policy`, and if so what entering it
/// takes. `Ok(None)`: read with the process's own rights (root, `Off`, or a store this
/// user does not own).
pub fn plan(policy: Policy, graphroot: &Path) -> Result<Option<Plan>, Error> {
    let (uid, gid) = (sys::euid(), sys::egid());
    if policy == Policy::Off || uid == 0 {
        return Ok(None);
    }
    if policy == Policy::Auto {
        // A rootless store belongs to the user whose podman made it.
        match std::fs::metadata(graphroot) {
            Ok(md) if md.uid() == uid => {}
            _ => return Ok(None),
        }
    }
    let user = user_name(uid);
    let uids = ranges(&user, uid, false)?;
    let gids = ranges(&user, uid, true)?;
    let newuidmap = find_tool("newuidmap").ok_or(Error::MissingTool("newuidmap"))?;
    let newgidmap = find_tool("newgidmap").ok_or(Error::MissingTool("newgidmap"))?;
    Ok(Some(Plan { user, uid, gid, uids, gids, newuidmap, newgidmap }))
}

/// A process outside the namespace that unmounts `mountpoint` when asked, or when this
/// process exits (its pipe closes), if it is still mounted then.
#[derive(Debug)]
pub struct Keeper {
    pipe: Option<File>,
    pid: i32,
}

impl Keeper {
    /// Asks for the unmount (lazy, through `fusermount3 -u -z`).
    pub fn unmount(&self) {
        if let Some(mut p) = self.pipe.as_ref() {
            let _ = p.write_all(b"u");
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing the pipe tells the keeper we are done: it unmounts what is left and exits.
        drop(self.pipe.take());
        sys::reap(self.pid);
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
}

fn pipe() -> Result<(File, File), Error> {
    sys::pipe().map_err(io_err("creating a pipe"))
}

impl Plan {
    /// Enters a new user namespace with the store's mappings and becomes its root
    /// (which holds CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH over files of mapped ids).
    /// With `mountpoint`, the result holds the [`Keeper`] that can unmount it from outside.
    ///
    /// Must be called before any thread starts. `Err` means nothing changed. A failure
    /// after `unshare` is [`Entered::error`]: the process is then in a namespace without
    /// mappings, where it keeps exactly the user's own rights (credentials do not change),
    /// so serving what the user can read goes on.
    pub fn enter(&self, mountpoint: Option<&Path>) -> Result<Entered, Error> {
        let n = threads();
        if n > 1 {
            return Err(Error::Threads(n));
        }
        let (go_r, go_w) = pipe()?;
        let (res_r, res_w) = pipe()?;
        let me = sys::pid();
        let uid_args = map_args(self.uid, &self.uids);
        let gid_args = map_args(self.gid, &self.gids);
        let mnt = mountpoint.map(Path::to_path_buf);
        // SAFETY: single-threaded (checked above), so the child may run ordinary code.
        match unsafe { sys::fork() }.map_err(io_err("forking the id-map helper"))? {
            sys::ForkResult::Child => {
                drop(go_w);
                drop(res_r);
                let code = helper(me, go_r, res_w, self, &uid_args, &gid_args, mnt.as_deref());
                // Skipping destructors: the parent's mount and state are not ours.
                sys::exit_now(code)
            }
            sys::ForkResult::Parent { child } => {
                let pid = child.as_raw();
                drop(go_r);
                drop(res_w);
                let keeper = Keeper { pipe: Some(go_w), pid };
                if let Err(e) = sys::unshare_user() {
                    // Dropping the keeper before "go" makes the helper exit without acting.
                    return Err(Error::Map(format!(
                        "unshare(CLONE_NEWUSER): {e} (unprivileged user namespaces disabled? see sysctl \
                         user.max_user_namespaces, kernel.unprivileged_userns_clone, or AppArmor's \
                         restrict_unprivileged_userns; rootless podman needs them too)"
                    )));
                }
                let error = self.finish(&keeper, &res_r).err();
                // After unshare the keeper must outlive us whatever happened: inside the
                // namespace fusermount3 cannot unmount.
                let keeper = if mnt.is_some() {
                    Some(keeper)
                } else {
                    drop(keeper);
                    None
                };
                Ok(Entered { keeper, error })
            }
        }
    }

    /// The parent's half after `unshare`: let the helper write the maps, then become root.
    fn finish(&self, keeper: &Keeper, res: &File) -> Result<(), Error> {
        keeper.pipe.as_ref().expect("set in enter").write_all(b"g").map_err(io_err("starting the id-map helper"))?;
        let mut msg = String::new();
        let _ = (&*res).read_to_string(&mut msg);
        if msg != "ok" {
            return Err(Error::Map(if msg.is_empty() { "the id-map helper died".to_string() } else { msg }));
        }
        // 0 is mapped now.
        if let Err(e) = sys::become_root() {
            return Err(Error::Map(format!("becoming root in it: {e}")));
        }
        Ok(())
    }
}

/// The outcome of [`Plan::enter`] once `unshare` succeeded.
#[derive(Debug)]
pub struct Entered {
    /// With a mountpoint: the process that can unmount it from outside.
    pub keeper: Option<Keeper>,
    /// Set when the mappings could not be written: the process is in a namespace
    /// without them and keeps exactly the user's own rights.
    pub error: Option<Error>,
}

/// The forked child: writes the maps once the parent has unshared, then (for a mount)
/// keeps watch outside the namespace. Returns its exit code.
fn helper(
    parent: i32,
    mut go: File,
    mut res: File,
    plan: &Plan,
    uid_args: &[String],
    gid_args: &[String],
    mountpoint: Option<&Path>,
) -> i32 {
    // Hold nothing of the parent's: above all not the /dev/fuse connection.
    sys::close_fds_except(&[0, 1, 2, go.as_raw_fd(), res.as_raw_fd()]);
    // The mount to watch is the one there now, not one a restarted daemon makes later.
    let ours = mountpoint.and_then(mount_source);
    let mut b = [0u8; 1];
    if !matches!(go.read(&mut b), Ok(1)) {
        return 1; // the parent gave up before unsharing
    }
    let mut result = String::from("ok");
    for (tool, args) in [(&plan.newuidmap, uid_args), (&plan.newgidmap, gid_args)] {
        let cmd = format!("{} {parent} {}", tool.display(), args.join(" "));
        match Command::new(tool).arg(parent.to_string()).args(args).stdin(std::process::Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                result = format!("`{cmd}` failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
                break;
            }
            Err(e) => {
                result = format!("running `{cmd}`: {e}");
                break;
            }
        }
    }
    let _ = res.write_all(result.as_bytes());
    drop(res);
    let Some(mnt) = mountpoint else { return 0 };
    // Keep watch: 'u' asks for an unmount; end of file means the daemon is gone.
    loop {
        let n = go.read(&mut b).unwrap_or(0);
        let still_ours = match &ours {
            Some(_) => mount_source(mnt) == ours,
            None => sys::is_mounted(mnt),
        };
        if still_ours {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg("--").arg(mnt).status();
        }
        if n == 0 {
            return 0;
        }
    }
}

/// The mount id and device of what is mounted at `dir`, if anything.
fn mount_source(dir: &Path) -> Option<String> {
    sys::mount_at(dir).map(|m| format!("{} {}", m.id, m.dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines_by_name_and_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:65536\n# junk\nalice:x:1\nalice:5:0\n";
        assert_eq!(
            parse_subid(text, "alice", 1001),
            [Range { start: 100000, count: 65536 }, Range { start: 200000, count: 1000 }]
        );
        assert_eq!(parse_subid(text, "carol", 7), []);
        assert_eq!(
            parse_getsubids("0: rlt 100000 65536\n1: rlt 300000 10\n"),
            [Range { start: 100000, count: 65536 }, Range { start: 300000, count: 10 }]
        );
    }

    #[test]
    fn mapping_is_podmans() {
        let args = map_args(1001, &[Range { start: 100000, count: 65536 }, Range { start: 300000, count: 10 }]);
        assert_eq!(args.join(" "), "0 1001 1 1 100000 65536 65537 300000 10");
        assert!("bogus".parse::<Policy>().is_err());
        assert_eq!("require".parse::<Policy>(), Ok(Policy::Require));
    }
}
