//! Inputs.

use super::*;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An imported image and where its parts are.
#[derive(Debug, Clone)]
pub(super) struct Img {
    pub(super) name: String,
    pub(super) repo: String,
    pub(super) tag: String,
    pub(super) id: String,
    pub(super) layer: String,
    /// The tarball podman imported: for `podman import` it is the layer blob, byte for byte.
    pub(super) tar: PathBuf,
}

pub(super) fn import(s: &MiniStore, name: &str, files: &[(&str, &[u8])]) -> Img {
    let id = s.import(name, files);
    let tar = s.root().join(format!("{}.tar", name.replace(['/', ':'], "_")));
    img_of(s, name, &id, tar)
}

pub(super) fn img_of(s: &MiniStore, name: &str, id: &str, tar: PathBuf) -> Img {
    let entry = json_array(&images_json(&s.storage))
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("image {id} not in images.json"));
    let layer = entry["layer"].as_str().unwrap().to_string();
    let (repo, tag) = name.rsplit_once(':').unwrap();
    Img { name: name.into(), repo: repo.into(), tag: tag.into(), id: id.into(), layer, tar }
}

/// Two sound images; every case stores its damaged ones next to these.
pub(super) fn goods(s: &MiniStore) -> Vec<Img> {
    vec![
        import(
            s,
            "localhost/good/one:1",
            &[("one.txt", b"the first sound image\n"), ("data/one.bin", &pattern(300_000, 1))],
        ),
        import(
            s,
            "localhost/good/two:1",
            &[("two.txt", b"the second sound image\n"), ("data/two.bin", &pattern(1 << 20, 2))],
        ),
    ]
}

/// The host file the symlink cases aim at (non-empty, readable).
pub(super) fn host_file() -> PathBuf {
    for p in ["/etc/hostname", "/etc/os-release", "/etc/passwd"] {
        if std::fs::metadata(p).is_ok_and(|m| m.len() > 0) {
            return PathBuf::from(p);
        }
    }
    panic!("no readable host file to aim at");
}

/// A damageable image: `a.txt` (4096 bytes), `etc/hostname` (the host's hostname file's
/// bytes, so a followed symlink would pass size and CRC checks), `b.bin` (200000 bytes).
pub(super) fn bad_image(s: &MiniStore, name: &str, seed: u64) -> Img {
    let host = std::fs::read(host_file()).unwrap();
    let a = pattern(4096, seed);
    let b = pattern(200_000, seed + 1000);
    import(s, name, &[("a.txt", &a), ("etc/hostname", &host), ("b.bin", &b)])
}

pub(super) fn images_json(storage: &Path) -> PathBuf {
    storage.join("overlay-images/images.json")
}

pub(super) fn layers_json(storage: &Path) -> PathBuf {
    storage.join("overlay-layers/layers.json")
}

pub(super) fn json_array(p: &Path) -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

pub(super) fn write_bytes(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

pub(super) fn entry_index(arr: &[Value], id: &str) -> usize {
    arr.iter().position(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} not found"))
}

pub(super) fn tar_split(storage: &Path, layer: &str) -> PathBuf {
    storage.join(format!("overlay-layers/{layer}.tar-split.gz"))
}

pub(super) fn diff_dir(storage: &Path, layer: &str) -> PathBuf {
    storage.join(format!("overlay/{layer}/diff"))
}

pub(super) fn read_tar_split(p: &Path) -> Vec<Value> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(File::open(p).unwrap()).read_to_string(&mut s).unwrap();
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub(super) fn write_tar_split(p: &Path, entries: &[Value]) {
    let mut gz = flate2::write::GzEncoder::new(File::create(p).unwrap(), flate2::Compression::default());
    for e in entries {
        serde_json::to_writer(&mut gz, e).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap();
}

/// tar-split's file checksum: base64 of the big-endian CRC-64 (Go ISO table).
pub(super) fn crc_payload(data: &[u8]) -> String {
    use base64::Engine as _;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// The tar-split file entry (type 1) whose name ends with `suffix`.
pub(super) fn file_entry<'a>(entries: &'a mut [Value], suffix: &str) -> &'a mut Value {
    entries
        .iter_mut()
        .find(|e| e["type"] == 1 && e["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no tar-split entry for {suffix}"))
}

pub(super) fn big_data_file(storage: &Path, image: &str, key: &str) -> PathBuf {
    use base64::Engine as _;
    let name = if key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    };
    storage.join("overlay-images").join(image).join(name)
}
