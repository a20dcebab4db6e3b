//! The table of contents of a zstd:chunked layer, as far as a rebuild needs it.
//!
//! A partially pulled layer in a store with `use_composefs` keeps its files content-
//! addressed: the payload of each regular file lives at `diff/<hex[..2]>/<hex[2..]>`,
//! named by the sha256 of the whole file, and the layer's `zstd-chunked-manifest` big
//! data (this table of contents, JSON) records that digest for each `reg` entry.
//! [`Objects`] maps a tar-split entry's cleaned name to that object path. The table is
//! untrusted input like everything else in the store: a name it maps is still only a
//! place to look, and the payload found there is checked for type, size and CRC-64
//! exactly like any other before a byte of it is served.

use std::collections::HashMap;

use serde::Deserialize;

use super::clean_path;
use crate::Digest;

/// Why a table of contents cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("not a zstd:chunked table of contents: {0}")]
    Json(#[from] serde_json::Error),
    #[error("table of contents version {0} is not supported (1 is)")]
    Version(u64),
    #[error("table of contents entry {name:?}: digest {digest:?}: {why}")]
    Digest { name: String, digest: String, why: crate::digest::ParseError },
}

#[derive(Deserialize)]
struct RawToc {
    version: u64,
    #[serde(default)]
    entries: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    digest: String,
}

/// Cleaned entry name -> sha256 of the whole file, for the regular files with content.
#[derive(Debug, Default)]
pub struct Objects {
    by_name: HashMap<Box<[u8]>, Digest>,
}

impl Objects {
    /// Parses a table of contents (the `zstd-chunked-manifest` JSON).
    pub fn parse(bytes: &[u8]) -> Result<Objects, TocError> {
        let raw: RawToc = serde_json::from_slice(bytes)?;
        if raw.version != 1 {
            return Err(TocError::Version(raw.version));
        }
        let mut by_name = HashMap::new();
        for e in raw.entries {
            // Empty files have no payload to find; chunks only continue a `reg` entry.
            if e.kind != "reg" || e.size <= 0 {
                continue;
            }
            let Some(name) = clean_path(e.name.as_bytes()) else { continue };
            let digest: Digest =
                e.digest.parse().map_err(|why| TocError::Digest { name: e.name.clone(), digest: e.digest, why })?;
            by_name.insert(name.into_boxed_slice(), digest);
        }
        Ok(Objects { by_name })
    }

    /// The object holding the payload of `name` (a cleaned entry name), relative to the
    /// layer's `diff` directory: `<hex[..2]>/<hex[2..]>`.
    pub(crate) fn object_path(&self, name: &[u8]) -> Option<Vec<u8>> {
        let hex = self.by_name.get(name)?.hex();
        Some(format!("{}/{}", &hex[..2], &hex[2..]).into_bytes())
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Approximate heap use, for cache budgets.
    pub fn heap_bytes(&self) -> usize {
        self.by_name.keys().map(|k| k.len() + 32 + 48).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e1eb9d89bf4e4ac2e811984516e43f6955f190378c481f6b3f801a6d8df9847f";

    #[test]
    fn maps_regular_files_with_content_to_their_objects() {
        let toc = format!(
            r#"{{"version":1,"entries":[
              {{"type":"dir","name":"p5/"}},
              {{"type":"reg","name":"./p5/a.txt","size":6,"digest":"{D}","offset":1,"endOffset":9}},
              {{"type":"reg","name":"p5/empty"}},
              {{"type":"hardlink","name":"p5/b.txt","linkName":"p5/a.txt"}},
              {{"type":"chunk","name":"p5/a.txt","size":3,"digest":"sha256:{z}"}}
            ],"tarSplitDigest":"sha256:{z}"}}"#,
            z = "0".repeat(64)
        );
        let o = Objects::parse(toc.as_bytes()).unwrap();
        assert_eq!(o.len(), 1);
        let want = format!("e1/{}", &D["sha256:e1".len()..]);
        assert_eq!(o.object_path(b"p5/a.txt").as_deref(), Some(want.as_bytes()));
        assert_eq!(o.object_path(b"p5/empty"), None);
        assert_eq!(o.object_path(b"p5/b.txt"), None);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        assert!(matches!(Objects::parse(b"[]"), Err(TocError::Json(_))));
        assert!(matches!(Objects::parse(br#"{"version":2,"entries":[]}"#), Err(TocError::Version(2))));
        let bad = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":1,"digest":"sha256:../../etc"}]}"#;
        assert!(matches!(Objects::parse(bad), Err(TocError::Digest { .. })));
        let none = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":1}]}"#;
        assert!(matches!(Objects::parse(none), Err(TocError::Digest { .. })));
    }
}
