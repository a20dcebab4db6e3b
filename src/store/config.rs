//! Where the store is: the graphroot and driver podman itself would use.
//!
//! Follows containers-storage's lookup: `$CONTAINERS_STORAGE_CONF`, then (rootless)
//! `$XDG_CONFIG_HOME/containers/storage.conf` or `~/.config/containers/storage.conf`,
//! then `/etc/containers/storage.conf`, then `/usr/share/containers/storage.conf`.
//! `STORAGE_DRIVER` overrides the driver; with none configured, the driver is probed
//! from which `<driver>-layers/` directory exists.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Driver, Error};

/// What the caller asked for; `None` means "as podman would".
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub graphroot: Option<PathBuf>,
    pub driver: Option<Driver>,
}

/// A resolved store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub graphroot: PathBuf,
    pub driver: Driver,
}

#[derive(Debug, Default, Deserialize)]
struct ConfFile {
    #[serde(default)]
    storage: ConfStorage,
}

#[derive(Debug, Default, Deserialize)]
struct ConfStorage {
    driver: Option<String>,
    graphroot: Option<String>,
    rootless_storage_path: Option<String>,
    imagestore: Option<String>,
    #[serde(default)]
    options: ConfOptions,
}

#[derive(Debug, Default, Deserialize)]
struct ConfOptions {
    #[serde(default)]
    additionalimagestores: Vec<String>,
}

/// The stores besides the graphroot that podman reads images from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageStores {
    /// `imagestore`: images (and their layers' files) kept apart from the graphroot.
    pub image_store: Option<PathBuf>,
    /// `additionalimagestores`: read-only stores, in the order configured.
    pub additional: Vec<PathBuf>,
}

/// Environment inputs, passed explicitly so tests need not touch the process env.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub euid: u32,
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    pub storage_conf: Option<PathBuf>,
    pub storage_driver: Option<String>,
    /// Where system-wide configuration files live (`/etc` and `/usr/share` normally).
    pub system_conf_files: Vec<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        Env {
            euid: crate::sys::euid(),
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_data_home: var("XDG_DATA_HOME"),
            storage_conf: var("CONTAINERS_STORAGE_CONF"),
            storage_driver: std::env::var("STORAGE_DRIVER").ok().filter(|v| !v.is_empty()),
            system_conf_files: vec![
                PathBuf::from("/etc/containers/storage.conf"),
                PathBuf::from("/usr/share/containers/storage.conf"),
            ],
        }
    }

    fn rootless(&self) -> bool {
        self.euid != 0
    }

    /// The storage.conf that applies, if any exists.
    fn conf_file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.storage_conf {
            return Some(p.clone());
        }
        let mut candidates = Vec::new();
        if self.rootless() {
            if let Some(x) = &self.xdg_config_home {
                candidates.push(x.join("containers/storage.conf"));
            } else if let Some(h) = &self.home {
                candidates.push(h.join(".config/containers/storage.conf"));
            }
        }
        candidates.extend(self.system_conf_files.iter().cloned());
        candidates.into_iter().find(|p| p.is_file())
    }
}

fn expand_home(s: &str, env: &Env) -> PathBuf {
    match (s.strip_prefix("~/"), s.strip_prefix("$HOME/"), &env.home) {
        (Some(rest), _, Some(h)) | (_, Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(s),
    }
}

/// Resolves `req` against storage.conf and the environment.
pub fn resolve(req: &Request, env: &Env) -> Result<Location, Error> {
    resolve_all(req, env).map(|(location, _)| location)
}

/// [`resolve`], plus the image store and additional image stores storage.conf names.
pub fn resolve_all(req: &Request, env: &Env) -> Result<(Location, ImageStores), Error> {
    let conf = match env.conf_file() {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            toml::from_str::<ConfFile>(&text).map_err(|e| Error::format(&path, e))?
        }
        None => ConfFile::default(),
    };
    let graphroot = match &req.graphroot {
        Some(p) => p.clone(),
        None if env.rootless() => match &conf.storage.rootless_storage_path {
            Some(p) => expand_home(p, env),
            None => match (&env.xdg_data_home, &env.home) {
                (Some(x), _) => x.join("containers/storage"),
                (None, Some(h)) => h.join(".local/share/containers/storage"),
                (None, None) => {
                    return Err(Error::Config("rootless store: neither XDG_DATA_HOME nor HOME is set".into()))
                }
            },
        },
        None => conf
            .storage
            .graphroot
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/containers/storage")),
    };
    let driver = match req.driver {
        Some(d) => d,
        None => {
            let named = env.storage_driver.as_deref().or(conf.storage.driver.as_deref());
            match named {
                Some(name) if !name.is_empty() => name.parse()?,
                _ => probe_driver(&graphroot)?,
            }
        }
    };
    let non_empty = |p: &String| !p.trim().is_empty();
    let others = ImageStores {
        image_store: conf.storage.imagestore.as_ref().filter(|p| non_empty(p)).map(|p| expand_home(p, env)),
        additional: conf
            .storage
            .options
            .additionalimagestores
            .iter()
            .filter(|p| non_empty(p))
            .map(|p| expand_home(p, env))
            .filter(|p| *p != graphroot)
            .collect(),
    };
    Ok((Location { graphroot, driver }, others))
}

/// Picks the driver whose `<driver>-layers` directory exists.
pub fn probe_driver(graphroot: &Path) -> Result<Driver, Error> {
    let found: Vec<Driver> = [Driver::Overlay, Driver::Vfs]
        .into_iter()
        .filter(|d| graphroot.join(format!("{}-layers", d.name())).is_dir())
        .collect();
    match found.as_slice() {
        [d] => Ok(*d),
        [] => Err(Error::Config(format!(
            "{}: no overlay-layers/ or vfs-layers/ directory: not a containers-storage graphroot (or no image was ever stored there)",
            graphroot.display()
        ))),
        _ => Ok(Driver::Overlay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cstor-fs-conf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn root_defaults_and_conf() {
        let d = tmp();
        let env = Env { euid: 0, system_conf_files: vec![d.join("none.conf")], ..Env::default() };
        let req = Request { driver: Some(Driver::Overlay), ..Request::default() };
        assert_eq!(resolve(&req, &env).unwrap().graphroot, PathBuf::from("/var/lib/containers/storage"));
        let conf = d.join("storage.conf");
        std::fs::write(&conf, "[storage]\ndriver = \"vfs\"\ngraphroot = \"/srv/store\"\n").unwrap();
        let env = Env { storage_conf: Some(conf.clone()), ..env };
        let loc = resolve(&Request::default(), &env).unwrap();
        assert_eq!(loc, Location { graphroot: "/srv/store".into(), driver: Driver::Vfs });
        let env = Env { storage_driver: Some("overlay".into()), ..env };
        assert_eq!(resolve(&Request::default(), &env).unwrap().driver, Driver::Overlay);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn rootless_rules() {
        let d = tmp();
        let env = Env {
            euid: 1000,
            home: Some("/home/u".into()),
            system_conf_files: vec![d.join("none.conf")],
            ..Env::default()
        };
        let req = Request { driver: Some(Driver::Overlay), ..Request::default() };
        assert_eq!(resolve(&req, &env).unwrap().graphroot, PathBuf::from("/home/u/.local/share/containers/storage"));
        let env2 = Env { xdg_data_home: Some("/x".into()), ..env.clone() };
        assert_eq!(resolve(&req, &env2).unwrap().graphroot, PathBuf::from("/x/containers/storage"));
        let cfg = d.join("cfg");
        std::fs::create_dir_all(cfg.join("containers")).unwrap();
        std::fs::write(cfg.join("containers/storage.conf"), "[storage]\nrootless_storage_path = \"$HOME/store\"\n")
            .unwrap();
        let env3 = Env { xdg_config_home: Some(cfg), ..env };
        assert_eq!(resolve(&req, &env3).unwrap().graphroot, PathBuf::from("/home/u/store"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn image_stores_from_conf() {
        let d = tmp();
        let conf = d.join("storage.conf");
        std::fs::write(
            &conf,
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"/g\"\nimagestore = \"/i\"\n\
             [storage.options]\nadditionalimagestores = [\"/usr/lib/containers/storage\", \"\", \"/g\", \"/b\"]\n",
        )
        .unwrap();
        let env = Env { storage_conf: Some(conf), ..Env::default() };
        let (loc, others) = resolve_all(&Request::default(), &env).unwrap();
        assert_eq!(loc.graphroot, PathBuf::from("/g"));
        assert_eq!(others.image_store, Some(PathBuf::from("/i")));
        assert_eq!(others.additional, [PathBuf::from("/usr/lib/containers/storage"), PathBuf::from("/b")]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_conf_is_an_error_naming_the_file() {
        let d = tmp();
        let conf = d.join("storage.conf");
        std::fs::write(&conf, "[storage\n").unwrap();
        let env = Env { storage_conf: Some(conf), ..Env::default() };
        let err = resolve(&Request::default(), &env).unwrap_err().to_string();
        assert!(err.contains("storage.conf"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
