//! Helpers shared by the fuzz targets: a per-process scratch directory and small
//! builders of ids and digests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cstor_fs::{Digest, Id};

/// A directory private to this fuzzing process (libFuzzer may run several workers),
/// under `$CSTOR_FS_FUZZ_TMP`, else `tests/fuzz/target/scratch` (not `/tmp`, which
/// other test runs on the machine may clean up). libFuzzer exits without running
/// destructors, so it is left behind (a few KiB).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("CSTOR_FS_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/scratch"));
        let d = base.join(format!("{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("creating the scratch directory");
        d
    })
}

/// `scratch()/name`, removed and created empty.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = scratch().join(name);
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", d.display()),
    }
    std::fs::create_dir_all(&d).expect("creating a scratch directory");
    d
}

/// The id made of byte `n` repeated.
pub fn id(n: u8) -> Id {
    format!("{n:02x}").repeat(32).parse().expect("64 hex digits")
}

/// A digest standing for "the uncompressed layer number `n`".
pub fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

/// Go's `filepath.Clean("/" + name)` without the leading `/`; `None` for the root.
/// Written independently of the crate's own, as the model the index is checked against.
pub fn clean(name: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        if c == b".." {
            out.pop();
        } else {
            out.push(c);
        }
    }
    (!out.is_empty()).then(|| out.join(&b'/'))
}
