//! Arbitrary bytes as a store's `images.json` and `layers.json` (split at the first
//! NUL byte), loaded through `Store::load` from a scratch graphroot and then built
//! into a registry. Never panics; what is kept is well-formed (unique ids, every
//! warning names its file), loading is deterministic, and when a file is a whole
//! JSON array every kept entry is one of its entries with the same fields.
#![no_main]

use std::collections::BTreeMap;

use cstor_fs::registry::{LayerChecks, Registry};
use cstor_fs::store::{Driver, Location, Snapshot, Store};
use cstor_fs_fuzz::fresh_dir;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The objects of a whole JSON array, by their `id` string (None if the file is not one).
fn whole_array(bytes: &[u8]) -> Option<Vec<serde_json::Map<String, Value>>> {
    match serde_json::from_slice::<Value>(bytes).ok()? {
        Value::Array(v) => {
            Some(v.into_iter().filter_map(|e| if let Value::Object(o) = e { Some(o) } else { None }).collect())
        }
        _ => None,
    }
}

fn str_field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

fn load(root: &std::path::Path) -> Option<Snapshot> {
    let store = Store::open(Location { graphroot: root.to_path_buf(), driver: Driver::Overlay }).expect("open");
    match store.load() {
        Ok(s) => Some(s),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("images.json") || msg.contains("layers.json"), "error names no file: {msg}");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (images, layers) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"[]"[..]),
    };
    let root = fresh_dir("store");
    std::fs::create_dir_all(root.join("overlay-layers")).unwrap();
    std::fs::create_dir_all(root.join("overlay-images")).unwrap();
    std::fs::write(root.join("overlay-layers/layers.lock"), b"").unwrap();
    std::fs::write(root.join("overlay-images/images.lock"), b"").unwrap();
    std::fs::write(root.join("overlay-images/images.json"), images).unwrap();
    std::fs::write(root.join("overlay-layers/layers.json"), layers).unwrap();

    let Some(snap) = load(&root) else { return };
    for w in &snap.warnings {
        let file = w.file.to_string_lossy();
        assert!(file.ends_with(".json") || file.ends_with(".lock"), "warning names no file: {w}");
        assert!(w.to_string().starts_with(&*file), "{w}");
    }
    // Deterministic: a second load of the same files gives the same snapshot.
    let again = load(&root).expect("second load of the same files");
    assert_eq!(format!("{:?}", snap.images), format!("{:?}", again.images));
    assert_eq!(format!("{:?}", snap.layers), format!("{:?}", again.layers));
    assert_eq!(snap.warnings, again.warnings);

    for (k, l) in &snap.layers {
        assert_eq!(*k, l.id);
    }
    let mut ids = BTreeMap::new();
    for img in &snap.images {
        assert!(ids.insert(img.id, ()).is_none(), "image {} kept twice", img.id);
    }

    if let Some(entries) = whole_array(layers) {
        assert!(snap.layers.len() <= entries.len());
        for l in snap.layers.values() {
            let hex = l.id.to_string();
            let from = entries.iter().filter(|o| str_field(o, "id") == Some(hex.as_str()));
            let ok = from.clone().any(|o| {
                let parent = str_field(o, "parent").filter(|p| !p.is_empty());
                let diff = str_field(o, "diff-digest").filter(|p| !p.is_empty());
                parent == l.parent.map(|p| p.to_string()).as_deref()
                    && diff == l.diff_digest.map(|d| d.to_string()).as_deref()
            });
            assert!(ok, "layer {hex} kept with fields no entry has");
        }
    }
    if let Some(entries) = whole_array(images) {
        assert!(snap.images.len() <= entries.len());
        for img in &snap.images {
            let hex = img.id.to_string();
            let ok = entries.iter().any(|o| {
                str_field(o, "id") == Some(hex.as_str())
                    && str_field(o, "layer").filter(|p| !p.is_empty())
                        == img.top_layer.map(|t| t.to_string()).as_deref()
            });
            assert!(ok, "image {hex} kept with fields no entry has");
        }
    }

    // The registry over whatever was kept (big data files are absent: unreadable).
    let reg = Registry::build(&snap, &LayerChecks::new());
    for repo in reg.repos.values() {
        for d in repo.tags.values().chain(&repo.manifests) {
            assert!(reg.manifests.contains_key(d));
        }
    }
});
