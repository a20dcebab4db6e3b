//! `-o` mount options, as mount(8)/mount.fuse pass them.

use std::path::PathBuf;

use super::Attrs;

/// Parsed `-o` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub allow_root: bool,
    pub auto_unmount: bool,
    pub storage: Option<PathBuf>,
    pub driver: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: Option<u16>,
    pub dir_mode: Option<u16>,
    pub fsname: Option<String>,
    /// Whether to read a rootless store inside its user namespace (`userns=`).
    pub userns: crate::userns::Policy,
    /// Compressed delivery (`compress=zstd|gzip[:LEVEL]`, `cache=DIR`, `cache_size=SIZE`).
    pub compress: Option<crate::compress::Spec>,
    pub cache: Option<PathBuf>,
    pub cache_size: Option<u64>,
}

/// Options mount(8) and systemd pass that mean nothing to a read-only FUSE daemon.
const IGNORED: &[&str] = &[
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "default_permissions",
    "silent",
    "loud",
    "comment",
];

impl MountOptions {
    /// Parses each `-o` argument (comma-separated lists).
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<MountOptions, String> {
        let mut o = MountOptions::default();
        for arg in args {
            for opt in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (key, val) = match opt.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (opt, None),
                };
                let need = || val.ok_or_else(|| format!("mount option {key} needs a value ({key}=...)"));
                let num = |radix| {
                    need().and_then(|v| {
                        u32::from_str_radix(v, radix).map_err(|_| format!("mount option {opt}: not a number"))
                    })
                };
                match key {
                    "allow_other" => o.allow_other = true,
                    "allow_root" => o.allow_root = true,
                    "auto_unmount" => o.auto_unmount = true,
                    "storage" => o.storage = Some(PathBuf::from(need()?)),
                    "driver" => o.driver = Some(need()?.to_string()),
                    "uid" => o.uid = Some(num(10)?),
                    "gid" => o.gid = Some(num(10)?),
                    "file_mode" => o.file_mode = Some(mode(num(8)?, opt)?),
                    "dir_mode" => o.dir_mode = Some(mode(num(8)?, opt)?),
                    "fsname" => o.fsname = Some(need()?.to_string()),
                    "userns" => o.userns = need()?.parse()?,
                    "compress" => o.compress = Some(need()?.parse()?),
                    "cache" => o.cache = Some(PathBuf::from(need()?)),
                    "cache_size" => o.cache_size = Some(crate::compress::parse_size(need()?)?),
                    // subtype is fixed; mount.fuse may pass it.
                    "subtype" => {}
                    k if IGNORED.contains(&k) || k.starts_with("x-") || k.starts_with("comment=") => {}
                    _ => return Err(format!("unknown mount option {opt:?}")),
                }
            }
        }
        Ok(o)
    }

    pub fn attrs(&self) -> Attrs {
        let d = Attrs::default();
        Attrs {
            uid: self.uid.unwrap_or(d.uid),
            gid: self.gid.unwrap_or(d.gid),
            file_mode: self.file_mode.unwrap_or(d.file_mode),
            dir_mode: self.dir_mode.unwrap_or(d.dir_mode),
        }
    }
}

fn mode(m: u32, opt: &str) -> Result<u16, String> {
    // Read-only: no write bits, and no special bits.
    if m & !0o555 != 0 {
        return Err(format!("mount option {opt}: only read/execute bits are allowed"));
    }
    Ok(m as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_mount_passes() {
        let o = MountOptions::parse([
            "rw,nosuid,nodev,allow_other,auto_unmount",
            "storage=/s,uid=33,gid=33,x-systemd.automount,_netdev",
        ])
        .unwrap();
        assert!(o.allow_other && o.auto_unmount);
        assert_eq!(o.storage, Some(PathBuf::from("/s")));
        assert_eq!((o.uid, o.gid), (Some(33), Some(33)));
        let o = MountOptions::parse(["file_mode=0440,dir_mode=550,driver=vfs"]).unwrap();
        assert_eq!((o.file_mode, o.dir_mode, o.driver.as_deref()), (Some(0o440), Some(0o550), Some("vfs")));
        assert_eq!(MountOptions::parse(["userns=off"]).unwrap().userns, crate::userns::Policy::Off);
        assert!(MountOptions::parse(["userns=maybe"]).is_err());
        let o = MountOptions::parse(["compress=zstd:5,cache=/c,cache_size=2G"]).unwrap();
        assert_eq!(o.compress.map(|s| s.to_string()).as_deref(), Some("zstd:5"));
        assert_eq!((o.cache.as_deref(), o.cache_size), (Some(std::path::Path::new("/c")), Some(2 << 30)));
        assert!(MountOptions::parse(["compress=lz4"]).is_err());
        assert!(MountOptions::parse(["cache_size=lots"]).is_err());
        assert!(MountOptions::parse(["bogus"]).unwrap_err().contains("bogus"));
        assert!(MountOptions::parse(["uid=x"]).is_err());
        assert!(MountOptions::parse(["storage"]).is_err());
        assert!(MountOptions::parse(["file_mode=0644"]).is_err());
    }
}
