//! Issue: hardening. Real stores made with podman, damaged on purpose (bad input), and
//! faults while serving (layers removed mid-download, the store changing under load,
//! kill -9, read-only stores, load, least privilege).
//!
//! Every bad-input case has two or more sound images next to the damaged one and checks:
//! no panic (`cstor-fs list` exits cleanly, the mount daemon keeps running), no byte from
//! outside the layer directory, a log line or `cstor-fs list` entry naming what is wrong,
//! the damaged image left out or failing with EIO, and every other image still served
//! byte-exact (each blob hashes to its name).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

// ---------------------------------------------------------------------------------------
// Inputs

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
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
struct Img {
    name: String,
    repo: String,
    tag: String,
    id: String,
    layer: String,
    /// The tarball podman imported: for `podman import` it is the layer blob, byte for byte.
    tar: PathBuf,
}

fn import(s: &MiniStore, name: &str, files: &[(&str, &[u8])]) -> Img {
    let id = s.import(name, files);
    let tar = s.root().join(format!("{}.tar", name.replace(['/', ':'], "_")));
    img_of(s, name, &id, tar)
}

fn img_of(s: &MiniStore, name: &str, id: &str, tar: PathBuf) -> Img {
    let entry = json_array(&images_json(&s.storage))
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("image {id} not in images.json"));
    let layer = entry["layer"].as_str().unwrap().to_string();
    let (repo, tag) = name.rsplit_once(':').unwrap();
    Img { name: name.into(), repo: repo.into(), tag: tag.into(), id: id.into(), layer, tar }
}

/// Two sound images; every case stores its damaged ones next to these.
fn goods(s: &MiniStore) -> Vec<Img> {
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
fn host_file() -> PathBuf {
    for p in ["/etc/hostname", "/etc/os-release", "/etc/passwd"] {
        if std::fs::metadata(p).is_ok_and(|m| m.len() > 0) {
            return PathBuf::from(p);
        }
    }
    panic!("no readable host file to aim at");
}

/// A damageable image: `a.txt` (4096 bytes), `etc/hostname` (the host's hostname file's
/// bytes, so a followed symlink would pass size and CRC checks), `b.bin` (200000 bytes).
fn bad_image(s: &MiniStore, name: &str, seed: u64) -> Img {
    let host = std::fs::read(host_file()).unwrap();
    let a = pattern(4096, seed);
    let b = pattern(200_000, seed + 1000);
    import(s, name, &[("a.txt", &a), ("etc/hostname", &host), ("b.bin", &b)])
}

fn images_json(storage: &Path) -> PathBuf {
    storage.join("overlay-images/images.json")
}

fn layers_json(storage: &Path) -> PathBuf {
    storage.join("overlay-layers/layers.json")
}

fn json_array(p: &Path) -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_bytes(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn entry_index(arr: &[Value], id: &str) -> usize {
    arr.iter().position(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} not found"))
}

fn tar_split(storage: &Path, layer: &str) -> PathBuf {
    storage.join(format!("overlay-layers/{layer}.tar-split.gz"))
}

fn diff_dir(storage: &Path, layer: &str) -> PathBuf {
    storage.join(format!("overlay/{layer}/diff"))
}

fn read_tar_split(p: &Path) -> Vec<Value> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(File::open(p).unwrap()).read_to_string(&mut s).unwrap();
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_tar_split(p: &Path, entries: &[Value]) {
    let mut gz = flate2::write::GzEncoder::new(File::create(p).unwrap(), flate2::Compression::default());
    for e in entries {
        serde_json::to_writer(&mut gz, e).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap();
}

/// tar-split's file checksum: base64 of the big-endian CRC-64 (Go ISO table).
fn crc_payload(data: &[u8]) -> String {
    use base64::Engine as _;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// The tar-split file entry (type 1) whose name ends with `suffix`.
fn file_entry<'a>(entries: &'a mut [Value], suffix: &str) -> &'a mut Value {
    entries
        .iter_mut()
        .find(|e| e["type"] == 1 && e["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no tar-split entry for {suffix}"))
}

fn big_data_file(storage: &Path, image: &str, key: &str) -> PathBuf {
    use base64::Engine as _;
    let name = if key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    };
    storage.join("overlay-images").join(image).join(name)
}

// ---------------------------------------------------------------------------------------
// Running cstor-fs

/// `cstor-fs list`: must not panic or die by a signal. Returns (exit code, stdout, stderr).
fn list(storage: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("list")
        .arg("--storage")
        .arg(storage)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!e.contains("panicked"), "cstor-fs list panicked:\n{e}");
    let code = out.status.code().unwrap_or_else(|| panic!("cstor-fs list killed: {}\n{e}", out.status));
    (code, o, e)
}

/// `cstor-fs list` that must succeed; returns stdout.
fn list_ok(storage: &Path) -> String {
    let (code, out, err) = list(storage);
    assert_eq!(code, 0, "cstor-fs list failed:\n{out}\n{err}");
    out
}

/// The lines of one section ("left out:" or "warnings:") of `cstor-fs list`.
fn section<'a>(list_out: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = list_out.lines().skip_while(|l| *l != title);
    lines.next();
    lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect()
}

fn assert_listed(list_out: &str, title: &str, all_of: &[&str]) {
    let lines = section(list_out, title);
    assert!(
        lines.iter().any(|l| all_of.iter().all(|w| l.contains(w))),
        "no line under {title:?} of cstor-fs list contains all of {all_of:?}:\n{list_out}"
    );
}

// ---------------------------------------------------------------------------------------
// Checking what is served

/// Why an image was not served (the strings are for failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Fail {
    /// Not in the tree (left out, or vanished while being read).
    Missing(String),
    /// A read failed with EIO.
    Eio(String),
    /// Any other error.
    Other(String),
    /// Bytes were served that do not hash to their name: never allowed.
    Wrong(String),
}

fn classify(what: &str, e: std::io::Error) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Fail::Missing(format!("{what}: {e}")),
        Some(libc::EIO) => Fail::Eio(format!("{what}: {e}")),
        _ => Fail::Other(format!("{what}: {e}")),
    }
}

/// Reads a file in a helper thread; panics if that takes longer than `limit` (a hang).
fn read_timed(p: &Path, limit: Duration) -> std::io::Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.to_path_buf();
    std::thread::spawn(move || {
        // Streamed as HTTP servers read, never sized up front from the file's length
        // (std::fs::read would try to allocate a damaged blob's declared 2^62 bytes).
        let stream = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&p2)?;
            let (mut v, mut chunk) = (Vec::new(), vec![0u8; 1 << 20]);
            loop {
                match f.read(&mut chunk)? {
                    0 => return Ok(v),
                    n => v.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let _ = tx.send(stream());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("reading {} hung for {limit:?}", p.display()))
}

/// Everything `img` is served as through the mount: the manifest by tag hashes to the
/// digest the tag links to, and every blob it names hashes to its name.
fn check_image(v2: &Path, img: &Img) -> Result<usize, Fail> {
    check_ref(v2, &img.repo, &img.tag)
}

fn check_ref(v2: &Path, repo: &str, tag: &str) -> Result<usize, Fail> {
    let dir = v2.join(repo);
    let what = format!("{repo}:{tag}");
    let link = dir.join("manifests").join(tag);
    let target = std::fs::read_link(&link).map_err(|e| classify(&format!("{what} tag"), e))?;
    let digest = target.to_string_lossy().to_string();
    let bytes = read_timed(&link, Duration::from_secs(30)).map_err(|e| classify(&format!("{what} manifest"), e))?;
    if format!("sha256:{}", sha256_hex(&bytes)) != digest {
        return Err(Fail::Wrong(format!("{what}: manifest does not hash to {digest}")));
    }
    let m: Value = serde_json::from_slice(&bytes).map_err(|e| Fail::Wrong(format!("{what}: manifest: {e}")))?;
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    blobs.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    for d in &blobs {
        let p = dir.join("blobs").join(d);
        let b = read_timed(&p, Duration::from_secs(60)).map_err(|e| classify(&format!("{what} blob {d}"), e))?;
        if format!("sha256:{}", sha256_hex(&b)) != *d {
            return Err(Fail::Wrong(format!(
                "{what}: blob {d} ({} bytes) hashes to sha256:{}",
                b.len(),
                sha256_hex(&b)
            )));
        }
    }
    Ok(blobs.len())
}

fn assert_served(v2: &Path, img: &Img, log: &str) {
    if let Err(f) = check_image(v2, img) {
        panic!("{} is not served correctly: {f:?}\n--- daemon log\n{log}", img.name);
    }
}

/// The damaged image must be left out or fail with EIO; never wrong bytes.
fn assert_refused(v2: &Path, img: &Img, log: &str) -> Fail {
    match check_image(v2, img) {
        Ok(_) => panic!("{} is damaged but was served in full\n--- daemon log\n{log}", img.name),
        Err(f @ Fail::Wrong(_)) | Err(f @ Fail::Other(_)) => panic!("{}: {f:?}\n--- daemon log\n{log}", img.name),
        Err(f) => f,
    }
}

/// The layer blob of `img`, read one 4 KiB page at a time: (offset, bytes or errno).
/// Every read that succeeds must give the true bytes (the imported tarball's).
fn page_reads(v2: &Path, img: &Img) -> Vec<(u64, Result<Vec<u8>, i32>)> {
    let p = v2.join(&img.repo).join("blobs").join(layer_digest(img));
    let expected = std::fs::read(&img.tar).unwrap();
    let Ok(f) = File::open(&p) else { return Vec::new() };
    let size = f.metadata().unwrap().len();
    assert_eq!(size, expected.len() as u64, "{}", p.display());
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let mut buf = vec![0u8; 4096];
        let r = match f.read_at(&mut buf, off) {
            Ok(n) => {
                buf.truncate(n);
                let o = off as usize;
                assert!(buf[..] == expected[o..o + n], "{}: wrong bytes at {off}", p.display());
                Ok(buf)
            }
            Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
        };
        out.push((off, r));
        off += 4096;
    }
    out
}

/// The layer digest of an imported image (= sha256 of the tarball).
fn layer_digest(img: &Img) -> String {
    format!("sha256:{}", sha256_file(&img.tar))
}

/// What one damaged store looks like to `cstor-fs list` and to a mount.
struct Seen {
    list: String,
    log: String,
    bad: Vec<Fail>,
}

/// Lists and mounts the store: every good image served byte-exact before and after the
/// damaged ones are tried, each damaged one left out or failing with EIO, no panic.
fn examine(s: &MiniStore, good: &[Img], bad: &[&Img]) -> Seen {
    let list = list_ok(&s.storage);
    let mut m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    for g in good {
        assert_served(&v2, g, &m.log());
    }
    let mut fails = Vec::new();
    for b in bad {
        fails.push(assert_refused(&v2, b, &m.log()));
    }
    // The check thread may have left an image out meanwhile: the rest is unaffected.
    std::thread::sleep(Duration::from_millis(600));
    for g in good {
        assert_served(&v2, g, &m.log());
    }
    for b in bad {
        assert_refused(&v2, b, &m.log());
    }
    m.assert_alive();
    Seen { list, log: m.log(), bad: fails }
}

// ---------------------------------------------------------------------------------------
// Bad input: images.json and layers.json

#[test]
fn images_json_entry_of_the_wrong_shape_costs_only_that_entry() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 10);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let i = entry_index(&arr, &bad.id);
    // Valid JSON, wrong types: names is an object, layer a number.
    arr[i]["names"] = serde_json::json!({"not": "a list"});
    arr[i]["layer"] = serde_json::json!(42);
    // Move it to the middle so entries after it must survive too.
    let e = arr.remove(i);
    arr.insert(1, e);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json", "entry 1"]);
    assert!(matches!(seen.bad[0], Fail::Missing(_)), "{:?}", seen.bad);
    assert!(seen.log.contains("images.json"), "{}", seen.log);
}

#[test]
fn images_json_syntax_error_in_the_middle_costs_only_that_entry() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 11);
    let p = images_json(&s.storage);
    let arr = json_array(&p);
    let text = |v: &Value| serde_json::to_string(v).unwrap();
    let i = entry_index(&arr, &bad.id);
    // The damaged entry between the two sound ones: a `:` lost and a stray byte.
    let damaged = text(&arr[i]).replacen("\":", "\" ", 1).replacen(",", ",\u{1}", 1);
    let others: Vec<String> = arr.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| text(v)).collect();
    let body = format!("[{},{damaged},{}]", others[0], others[1]);
    write_bytes(&p, body.as_bytes());
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json"]);
    assert!(matches!(seen.bad[0], Fail::Missing(_)), "{:?}", seen.bad);
}

#[test]
fn truncated_images_json_keeps_the_complete_entries() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 12);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let e = arr.remove(entry_index(&arr, &bad.id));
    let head = serde_json::to_vec(&arr).unwrap(); // [g1,g2]
    arr.push(e);
    let full = serde_json::to_vec(&arr).unwrap(); // [g1,g2,bad]
                                                  // Cut in the middle of the last entry, as a crash mid-write would.
    let cut = head.len() + (full.len() - head.len()) / 2;
    write_bytes(&p, &full[..cut]);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json", "2 complete entries"]);
    assert!(seen.log.contains("images.json"), "{}", seen.log);
}

#[test]
fn truncated_layers_json_leaves_out_the_images_of_the_lost_layers() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 13);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let e = arr.remove(entry_index(&arr, &bad.layer));
    let head = serde_json::to_vec(&arr).unwrap();
    arr.push(e);
    let full = serde_json::to_vec(&arr).unwrap();
    write_bytes(&p, &full[..head.len() + (full.len() - head.len()) / 2]);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["layers.json"]);
    assert_listed(&seen.list, "left out:", &[&bad.name, &bad.layer, "missing from layers.json"]);
    assert!(seen.log.contains(&format!("left out {}", bad.name)), "{}", seen.log);
}

#[test]
fn images_json_truncated_in_its_first_entry_still_mounts_and_recovers() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let p = images_json(&s.storage);
    let original = std::fs::read(&p).unwrap();
    write_bytes(&p, &original[..original.len() / 5]);
    let (code, out, err) = list(&s.storage);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_listed(&out, "warnings:", &["images.json"]);
    let mut m = Daemon::mount(&s.storage, "");
    // podman rewrites the file: the images appear.
    let tmp = p.with_extension("tmp");
    write_bytes(&tmp, &original);
    std::fs::rename(&tmp, &p).unwrap();
    wait_for("the images after images.json was rewritten", Duration::from_secs(5), || {
        good.iter().all(|g| check_image(&m.v2(), g).is_ok())
    });
    m.assert_alive();
}

#[test]
fn unreadable_images_json_at_start_fails_cleanly_and_while_mounted_keeps_the_last_good_state() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let p = images_json(&s.storage);
    let original = std::fs::read(&p).unwrap();
    // At start: a clean error naming the file (no panic, no hang).
    write_bytes(&p, b"\x00\x00garbage{[");
    let (code, out, err) = list(&s.storage);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("images.json"), "{err}");
    // While mounted: replaced (as podman does, by rename) with garbage, then fixed.
    write_bytes(&p, &original);
    let mut m = Daemon::mount(&s.storage, "");
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    let tmp = p.with_extension("tmp");
    write_bytes(&tmp, b"{\"this is\": not an array");
    std::fs::rename(&tmp, &p).unwrap();
    wait_for("the error in the log", Duration::from_secs(5), || m.log().contains("still serving the last good state"));
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    write_bytes(&tmp, &original);
    std::fs::rename(&tmp, &p).unwrap();
    let new = import(&s, "localhost/after/repair:1", &[("n.txt", b"new after the repair")]);
    wait_for("an image added after the repair", Duration::from_secs(5), || check_image(&m.v2(), &new).is_ok());
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    m.assert_alive();
}

#[test]
fn duplicate_image_and_layer_ids_never_serve_wrong_bytes() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let third = bad_image(&s, "localhost/dup/three:1", 14);
    let untouched = import(&s, "localhost/good/untouched:1", &[("u.txt", b"no duplicate of me")]);
    // images.json: an exact copy of one entry, and a copy of another under another name.
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let a = arr[entry_index(&arr, &good[0].id)].clone();
    let mut b = arr[entry_index(&arr, &good[1].id)].clone();
    b["names"] = serde_json::json!(["localhost/dup/renamed:1"]);
    arr.push(a);
    arr.insert(0, b);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());
    // layers.json: an exact copy, and a copy of third's layer that contradicts it.
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let l0 = arr[entry_index(&arr, &good[0].layer)].clone();
    let mut l3 = arr[entry_index(&arr, &third.layer)].clone();
    l3["diff-size"] = serde_json::json!(l3["diff-size"].as_i64().unwrap() + 512);
    arr.push(l0);
    arr.push(l3);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let list_out = list_ok(&s.storage);
    assert_listed(&list_out, "warnings:", &["images.json", "duplicate image id", &good[0].id]);
    assert_listed(&list_out, "warnings:", &["layers.json", "duplicate layer id"]);
    let mut m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    // Untouched, and exactly duplicated: served.
    assert_served(&v2, &untouched, &m.log());
    assert_served(&v2, &good[0], &m.log());
    // Two entries with one id and different names: served correctly under one of them
    // (which one wins is the store's ambiguity), never wrong.
    let renamed = Img { repo: "localhost/dup/renamed".into(), tag: "1".into(), ..good[1].clone() };
    let r = [check_image(&v2, &good[1]), check_image(&v2, &renamed)];
    assert!(r.iter().any(|r| r.is_ok()), "{r:?}");
    assert!(r.iter().all(|r| matches!(r, Ok(_) | Err(Fail::Missing(_)))), "{r:?}");
    // The contradicting layer copy: served right or refused, never wrong.
    match check_image(&v2, &third) {
        Ok(_) | Err(Fail::Missing(_)) | Err(Fail::Eio(_)) => {}
        Err(f) => panic!("{f:?}"),
    }
    m.assert_alive();
}

#[test]
fn huge_declared_sizes_are_refused() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/huge:1", 15);
    let bad2 = bad_image(&s, "localhost/bad/overflow:1", 16);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let i = entry_index(&arr, &bad.layer);
    arr[i]["diff-size"] = serde_json::json!(1u64 << 62);
    // A size no 64-bit signed integer holds (c/storage writes int64).
    let j = entry_index(&arr, &bad2.layer);
    arr[j]["diff-size"] = serde_json::json!(u64::MAX);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let seen = examine(&s, &good, &[&bad, &bad2]);
    assert_listed(&seen.list, "left out:", &[&bad.name, &bad.layer, &(1u64 << 62).to_string()]);
    assert_listed(&seen.list, "left out:", &[&bad2.name, &bad2.layer]);
    assert_listed(&seen.list, "warnings:", &["layers.json", &u64::MAX.to_string()]);
    // The mount must not keep advertising a 2^62-byte blob.
    let m = Daemon::mount(&s.storage, "");
    let blob = m.v2().join(&bad.repo).join("blobs").join(layer_digest(&bad));
    wait_for("the huge blob to be left out", Duration::from_secs(5), || !blob.exists());
    assert!(m.log().contains(&bad.layer), "{}", m.log());
}

// ---------------------------------------------------------------------------------------
// Bad input: tar-split

/// Runs `cstor-fs list` and returns (exit code, peak RSS in KiB).
///
/// Measured through a small python parent: a child spawned straight from this test
/// process would report the test process's own peak (the kernel keeps the old mm's
/// high-water mark across exec, and posix_spawn's child shares our mm until then).
fn list_peak_rss(storage: &Path) -> (i32, i64) {
    let script = "import os, sys\n\
                  pid = os.fork()\n\
                  if pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n\
                  _, st, ru = os.wait4(pid, 0)\n\
                  print(os.waitstatus_to_exitcode(st), ru.ru_maxrss)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .arg("list")
        .arg("--storage")
        .arg(storage)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default().to_string();
    let (code, rss) = last.split_once(' ').unwrap_or_else(|| panic!("no rusage line in {text:?}"));
    (code.parse().unwrap(), rss.trim().parse().unwrap())
}

#[test]
fn tar_split_expanding_past_diff_size_is_refused_without_buffering_it() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/bomb:1", 17);
    // 4 million one-byte file entries before the real ones: ~4 MB rebuilt (against a
    // diff-size of ~200 KiB) from a gzip of about 1 MiB, but ~57 bytes of index each (~250 MiB).
    let p = tar_split(&s.storage, &bad.layer);
    let entries = read_tar_split(&p);
    let line = b"{\"type\":1,\"name\":\"f\",\"size\":1}\n".repeat(1 << 16);
    let mut gz = flate2::write::GzEncoder::new(File::create(&p).unwrap(), flate2::Compression::fast());
    for _ in 0..(4 << 20) >> 16 {
        gz.write_all(&line).unwrap();
    }
    for e in &entries {
        serde_json::to_writer(&mut gz, e).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap();
    eprintln!("bomb: tar-split.gz is {} bytes", std::fs::metadata(&p).unwrap().len());
    let t = Instant::now();
    let (code, rss) = list_peak_rss(&s.storage);
    eprintln!("bomb: cstor-fs list exited {code} after {:?}, peak RSS {} MiB", t.elapsed(), rss >> 10);
    assert_eq!(code, 0);
    assert!(rss < 100 << 10, "cstor-fs list peaked at {} MiB on a 200 KiB layer", rss >> 10);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "left out:", &[&bad.name, &bad.layer, "diff-size"]);
}

#[test]
fn missing_or_truncated_tar_split_leaves_the_image_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let gone = bad_image(&s, "localhost/bad/gone:1", 20);
    let cut = bad_image(&s, "localhost/bad/cut:1", 21);
    let short = bad_image(&s, "localhost/bad/short:1", 22);
    std::fs::remove_file(tar_split(&s.storage, &gone.layer)).unwrap();
    // Half a gzip stream.
    let p = tar_split(&s.storage, &cut.layer);
    let b = std::fs::read(&p).unwrap();
    write_bytes(&p, &b[..b.len() / 2]);
    // A whole gzip stream with the last file and the end blocks missing.
    let p = tar_split(&s.storage, &short.layer);
    let entries = read_tar_split(&p);
    let last_file = entries.iter().rposition(|e| e["type"] == 1).unwrap();
    write_tar_split(&p, &entries[..last_file]);

    let seen = examine(&s, &good, &[&gone, &cut, &short]);
    assert_listed(&seen.list, "left out:", &[&gone.name, &gone.layer, "no tar-split"]);
    assert_listed(&seen.list, "left out:", &[&cut.name, &cut.layer, "tar-split"]);
    assert_listed(&seen.list, "left out:", &[&short.name, &short.layer, "diff-size"]);
    for b in [&cut, &short] {
        assert!(seen.log.contains(&b.layer), "no log line names {}:\n{}", b.layer, seen.log);
    }
}

#[test]
fn tar_split_names_with_dotdot_or_absolute_paths_never_reach_outside() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/escape:1", 30);
    // Secrets outside the store with exactly the sizes the entries record, and the
    // tar-split's CRCs set to theirs: followed, they would pass every check.
    let marker = format!("SECRET-{}-", std::process::id());
    let secret = |len: usize| -> Vec<u8> { marker.as_bytes().iter().copied().cycle().take(len).collect() };
    let dir = s.root().join("outside");
    std::fs::create_dir(&dir).unwrap();
    let (sa, sb) = (secret(4096), secret(200_000));
    write_bytes(&dir.join("a"), &sa);
    write_bytes(&dir.join("b"), &sb);
    let p = tar_split(&s.storage, &bad.layer);
    let mut entries = read_tar_split(&p);
    let rel = dir.join("a").to_string_lossy().trim_start_matches('/').to_string();
    let e = file_entry(&mut entries, "a.txt");
    e["name"] = Value::from(format!("{}{rel}", "../".repeat(20)));
    e["payload"] = Value::from(crc_payload(&sa));
    let e = file_entry(&mut entries, "b.bin");
    e["name"] = Value::from(dir.join("b").to_string_lossy().to_string());
    e["payload"] = Value::from(crc_payload(&sb));
    write_tar_split(&p, &entries);
    let seen = examine(&s, &good, &[&bad]);
    assert!(matches!(seen.bad[0], Fail::Eio(_)), "{:?}", seen.bad);
    // Page by page: what is served is the true bytes (never the secrets), the rest EIO.
    let m = Daemon::mount(&s.storage, "");
    let pages = page_reads(&m.v2(), &bad);
    assert!(pages.iter().any(|(_, r)| *r == Err(libc::EIO)), "no read failed");
    for (off, r) in &pages {
        if let Ok(b) = r {
            assert!(!b.windows(8).any(|w| w == &marker.as_bytes()[..8]), "secret bytes served at {off}");
        }
    }
    let log = m.log();
    assert!(log.contains(&bad.layer) && log.contains("payload"), "{log}");
}

#[test]
fn symlinked_directory_symlinked_payload_and_fifo_payload_are_refused() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let host = host_file();
    let host_dir = host.parent().unwrap().to_path_buf();
    let host_name = host.file_name().unwrap().to_string_lossy().to_string();
    // etc -> the host's directory holding the very file (same bytes, so same size and CRC).
    let host_bytes = std::fs::read(&host).unwrap();
    let dirlink = import(
        &s,
        "localhost/bad/dirlink:1",
        &[("a.txt", &pattern(4096, 40)), (&format!("etc/{host_name}"), &host_bytes)],
    );
    let d = diff_dir(&s.storage, &dirlink.layer);
    std::fs::remove_dir_all(d.join("etc")).unwrap();
    std::os::unix::fs::symlink(&host_dir, d.join("etc")).unwrap();
    // A payload that is a symlink to a file with the same bytes, outside the layer.
    let filelink = bad_image(&s, "localhost/bad/filelink:1", 41);
    let outside = s.root().join("outside-a.txt");
    write_bytes(&outside, &pattern(4096, 41));
    let d = diff_dir(&s.storage, &filelink.layer);
    std::fs::remove_file(d.join("a.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("a.txt")).unwrap();
    // A payload that is a FIFO: must not hang the daemon.
    let fifo = bad_image(&s, "localhost/bad/fifo:1", 42);
    let d = diff_dir(&s.storage, &fifo.layer);
    std::fs::remove_file(d.join("b.bin")).unwrap();
    let c = std::ffi::CString::new(d.join("b.bin").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let seen = examine(&s, &good, &[&dirlink, &filelink, &fifo]);
    for (b, f) in [&dirlink, &filelink, &fifo].iter().zip(&seen.bad) {
        assert!(matches!(f, Fail::Eio(_)), "{}: {f:?}", b.name);
        assert!(seen.log.contains(&b.layer), "no log line names {}:\n{}", b.layer, seen.log);
    }
    assert!(seen.log.contains(&format!("etc/{host_name}")), "{}", seen.log);
    assert!(seen.log.contains("a.txt") && seen.log.contains("b.bin"), "{}", seen.log);
    // Not one byte of the host file came through the symlinked directory: the pages
    // holding its payload fail (the other pages are the true bytes).
    let m = Daemon::mount(&s.storage, "");
    let mut ar = tar::Archive::new(File::open(&dirlink.tar).unwrap());
    let at = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with(format!("etc/{host_name}")))
        .expect("the payload in the tarball")
        .raw_file_position();
    for (off, r) in page_reads(&m.v2(), &dirlink) {
        if off + 4096 > at && off < at + host_bytes.len() as u64 {
            assert_eq!(r.err(), Some(libc::EIO), "the page at {off} holds the host file's bytes and was served");
        }
    }
}

#[test]
fn payload_shorter_longer_or_different_fails_with_eio_naming_the_file() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let short = bad_image(&s, "localhost/bad/short:1", 50);
    let long = bad_image(&s, "localhost/bad/long:1", 51);
    let flipped = bad_image(&s, "localhost/bad/flipped:1", 52);
    let f = diff_dir(&s.storage, &short.layer).join("b.bin");
    File::options().write(true).open(&f).unwrap().set_len(199_999).unwrap();
    let f = diff_dir(&s.storage, &long.layer).join("b.bin");
    File::options().append(true).open(&f).unwrap().write_all(b"more").unwrap();
    let f = diff_dir(&s.storage, &flipped.layer).join("b.bin");
    let mut b = std::fs::read(&f).unwrap();
    b[100_000] ^= 0xff;
    write_bytes(&f, &b);

    let seen = examine(&s, &good, &[&short, &long, &flipped]);
    for (b, f) in [&short, &long, &flipped].iter().zip(&seen.bad) {
        assert!(matches!(f, Fail::Eio(_)), "{}: {f:?}", b.name);
    }
    let lines = |layer: &str| -> Vec<String> {
        seen.log.lines().filter(|l| l.contains(layer) && l.contains("b.bin")).map(String::from).collect()
    };
    assert!(lines(&short.layer).iter().any(|l| l.contains("199999")), "{}", seen.log);
    assert!(lines(&long.layer).iter().any(|l| l.contains("200004")), "{}", seen.log);
    assert!(lines(&flipped.layer).iter().any(|l| l.contains("CRC")), "{}", seen.log);
    // verify: FAIL for each, naming the file; ok for the rest.
    let out = Command::new(BIN).arg("verify").arg("--storage").arg(&s.storage).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("FAIL") && l.contains("b.bin")).count(), 3, "{text}");
    for g in &good {
        assert!(text.contains(&format!("ok   {}", layer_digest(g))), "{text}");
    }
}

#[test]
fn payload_changed_after_a_verified_read_is_not_served() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let img = bad_image(&s, "localhost/later:1", 53);
    // The same layer under a second name: another inode, so no shared page cache.
    run(&mut s.tool("podman", &["tag", "localhost/later:1", "localhost/later/again:1"]));
    let again = Img { repo: "localhost/later/again".into(), ..img.clone() };
    let mut m = Daemon::mount(&s.storage, "");
    assert_served(&m.v2(), &img, &m.log());
    let f = diff_dir(&s.storage, &img.layer).join("b.bin");
    let mut b = std::fs::read(&f).unwrap();
    b[100_000] ^= 0xff;
    write_bytes(&f, &b);
    match check_image(&m.v2(), &again) {
        Err(Fail::Eio(_)) => {}
        other => panic!("changed payload: {other:?}\n{}", m.log()),
    }
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    m.assert_alive();
}

// ---------------------------------------------------------------------------------------
// Bad input: chains, big data, names

#[test]
fn missing_parent_and_looping_parent_leave_the_image_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    // A two-layer image built on a third base image.
    let base = import(&s, "localhost/base:1", &[("base.txt", b"the base")]);
    let ctx = s.root().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    write_bytes(&ctx.join("x"), &pattern(50_000, 60));
    write_bytes(&ctx.join("Containerfile"), b"FROM localhost/base:1\nCOPY x /x\n");
    let out = stdout(&mut s.tool("podman", &["build", "-q", "-t", "localhost/bad/child:1", ctx.to_str().unwrap()]));
    let child_id = out.trim().trim_start_matches("sha256:").to_string();
    let child = img_of(&s, "localhost/bad/child:1", &child_id, PathBuf::new());
    let looping = bad_image(&s, "localhost/bad/loop:1", 61);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let missing = "ab".repeat(32);
    let i = entry_index(&arr, &child.layer);
    arr[i]["parent"] = Value::from(missing.clone());
    let j = entry_index(&arr, &looping.layer);
    arr[j]["parent"] = Value::from(looping.layer.clone());
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let mut all_good = good.clone();
    all_good.push(base);
    let seen = examine(&s, &all_good, &[&child, &looping]);
    assert_listed(&seen.list, "left out:", &[&child.name, &missing, "missing from layers.json"]);
    assert_listed(&seen.list, "left out:", &[&looping.name, &looping.layer, "loop"]);
    assert!(seen.log.contains(&format!("left out {}", child.name)), "{}", seen.log);
}

#[test]
fn missing_big_data_leaves_the_image_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let noman = bad_image(&s, "localhost/bad/nomanifest:1", 70);
    let noconf = bad_image(&s, "localhost/bad/noconfig:1", 71);
    std::fs::remove_file(big_data_file(&s.storage, &noman.id, "manifest")).unwrap();
    std::fs::remove_file(big_data_file(&s.storage, &noconf.id, &format!("sha256:{}", noconf.id))).unwrap();
    let seen = examine(&s, &good, &[&noman, &noconf]);
    assert_listed(&seen.list, "left out:", &[&noman.name, "manifest"]);
    assert_listed(&seen.list, "left out:", &[&noconf.name, "config"]);
    assert!(seen.log.contains(&format!("left out {}", noman.name)), "{}", seen.log);
}

#[test]
fn big_data_that_does_not_match_its_digest_is_left_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/confchanged:1", 73);
    // Still valid JSON, still naming the same layers: only the digest tells.
    let conf = big_data_file(&s.storage, &bad.id, &format!("sha256:{}", bad.id));
    let mut b = std::fs::read(&conf).unwrap();
    b.push(b' ');
    write_bytes(&conf, &b);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "left out:", &[&bad.name, "config"]);
}

#[test]
fn big_data_symlinked_out_of_the_store_is_not_served() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/conflink:1", 72);
    let marker = format!("SECRET-CONFIG-{}", std::process::id());
    let secret = s.root().join("secret.json");
    write_bytes(&secret, format!("{{\"secret\":\"{marker}\"}}").as_bytes());
    let conf = big_data_file(&s.storage, &bad.id, &format!("sha256:{}", bad.id));
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&secret, &conf).unwrap();
    let list_out = list_ok(&s.storage);
    let mut m = Daemon::mount(&s.storage, "");
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    // Nothing anywhere in the tree may carry the secret.
    let out = Command::new("grep").args(["-r", "-l", &marker]).arg(m.v2()).output().unwrap();
    assert!(out.stdout.is_empty(), "served: {}", String::from_utf8_lossy(&out.stdout));
    assert!(list_out.contains(&bad.name) && section(&list_out, "left out:").iter().any(|l| l.contains(&bad.name)));
    m.assert_alive();
}

#[test]
fn names_that_are_not_references_are_warned_about_and_never_become_paths() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let b1 = bad_image(&s, "localhost/bad/one:1", 80);
    let b2 = bad_image(&s, "localhost/bad/two:1", 81);
    let b3 = bad_image(&s, "localhost/bad/three:1", 82);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let set = |arr: &mut Vec<Value>, id: &str, names: &[&str]| {
        let i = entry_index(arr, id);
        arr[i]["names"] = serde_json::json!(names);
    };
    set(&mut arr, &b1.id, &["localhost/a b:1", "localhost/UPPER:1"]);
    set(&mut arr, &b2.id, &["localhost/../../../etc:1", "localhost/x:bad tag", "localhost/y/:1", "localhost//z:1"]);
    set(&mut arr, &b3.id, &["UPPER/x:1", "localhost/nul\u{0}:1", "localhost/tab\t:1"]);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let list_out = list_ok(&s.storage);
    for n in ["localhost/a b:1", "localhost/UPPER:1", "localhost/../../../etc:1", "localhost/x:bad tag"] {
        assert_listed(&list_out, "warnings:", &[n]);
    }
    let mut m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    for g in &good {
        assert_served(&v2, g, &m.log());
    }
    let catalog: Value = serde_json::from_slice(&std::fs::read(v2.join("_catalog")).unwrap()).unwrap();
    let repos: Vec<String> =
        catalog["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let an = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        !b.is_empty()
            && an(b[0])
            && an(b[b.len() - 1])
            && b.iter().all(|&x| an(x) || matches!(x, b'.' | b'_' | b'-'))
            && c != ".."
    };
    for r in &repos {
        assert!(r.split('/').all(component_ok), "{r:?} is not a valid repository name: {repos:?}");
    }
    // Each damaged image is either left out or served correctly, under a valid name.
    let mut found = 0;
    for b in [&b1, &b2, &b3] {
        for r in &repos {
            let tags: Value = serde_json::from_slice(&std::fs::read(v2.join(r).join("tags/list")).unwrap()).unwrap();
            for t in tags["tags"].as_array().unwrap() {
                let t = t.as_str().unwrap();
                let target = std::fs::read_link(v2.join(r).join("manifests").join(t)).unwrap();
                let m: Value =
                    serde_json::from_slice(&std::fs::read(v2.join(r).join("manifests").join(&target)).unwrap())
                        .unwrap();
                if m["config"]["digest"] == format!("sha256:{}", b.id) {
                    check_ref(&v2, r, t).unwrap_or_else(|f| panic!("{r}:{t}: {f:?}"));
                    found += 1;
                }
            }
        }
    }
    eprintln!("names: damaged images served under {found} valid names; repositories {repos:?}");
    m.assert_alive();
}

// ---------------------------------------------------------------------------------------
// Lock files and read-only stores

#[test]
fn read_only_bind_mount_with_unopenable_lock_files_is_served() {
    let s = MiniStore::new("overlay");
    let mut good = goods(&s);
    good.push(import(&s, "localhost/good/three:1", &[("three.txt", b"three")]));
    std::fs::remove_file(s.storage.join("overlay-images/images.lock")).unwrap();
    let ll = s.storage.join("overlay-layers/layers.lock");
    std::fs::remove_file(&ll).unwrap();
    // A symlink to itself: every open fails (ELOOP), even for root.
    std::os::unix::fs::symlink("layers.lock", &ll).unwrap();
    let tmp = TempDir::new("hro");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    run(Command::new("mount").arg("--bind").arg(&s.storage).arg(&ro));
    run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&ro));
    assert_eq!(
        std::fs::write(ro.join("probe"), b"x").err().and_then(|e| e.raw_os_error()),
        Some(libc::EROFS),
        "the bind mount is not read-only"
    );
    let list_out = list_ok(&ro);
    assert_listed(&list_out, "warnings:", &["images.lock", "read lock"]);
    assert_listed(&list_out, "warnings:", &["layers.lock", "read lock"]);
    {
        let mut m = Daemon::mount(&ro, "");
        for g in &good {
            assert_served(&m.v2(), g, &m.log());
        }
        // The refresh loop keeps running without lock files.
        std::thread::sleep(Duration::from_millis(800));
        for g in &good {
            assert_served(&m.v2(), g, &m.log());
        }
        m.assert_alive();
    }
    run(Command::new("umount").arg(&ro));
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

#[test]
fn fifos_in_place_of_store_files_do_not_hang() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let noman = bad_image(&s, "localhost/bad/fifomanifest:1", 85);
    let nosplit = bad_image(&s, "localhost/bad/fifosplit:1", 86);
    mkfifo(&s.storage.join("overlay-images/images.lock"));
    mkfifo(&s.storage.join("overlay-layers/layers.lock"));
    mkfifo(&big_data_file(&s.storage, &noman.id, "manifest"));
    mkfifo(&tar_split(&s.storage, &nosplit.layer));
    let mut child = Command::new(BIN)
        .arg("list")
        .arg("--storage")
        .arg(&s.storage)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.is_some_and(|s| s.success()), "cstor-fs list hung (or failed) on FIFOs in the store: {st:?}");
    let seen = examine(&s, &good, &[&noman, &nosplit]);
    assert_listed(&seen.list, "warnings:", &["images.lock"]);
    assert_listed(&seen.list, "left out:", &[&noman.name, "manifest"]);
    assert_listed(&seen.list, "left out:", &[&nosplit.name, "tar-split"]);
}

// ---------------------------------------------------------------------------------------
// Faults: serving over HTTP

/// The `cstor-fs -f` mount daemon a `cstor-fs serve` started.
fn mount_daemon_of(srv: &Daemon) -> i32 {
    let serve = srv.pid() as i32;
    let rt = srv.runtime_dir().to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        let is_us = args.first().is_some_and(|a| a.ends_with("/cstor-fs"))
            && args.iter().any(|a| a == "-f")
            && args.iter().any(|a| a.starts_with(&rt));
        if is_us && ppid(pid) == Some(serve) {
            return pid;
        }
    }
    panic!("no mount daemon under serve {serve}");
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn proc_status(pid: i32, key: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines().find(|l| l.starts_with(key)).map(|l| l[key.len()..].trim().to_string()).unwrap_or_default()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// GET with curl, hashing the body as it streams. `Ok((bytes, sha256 hex))` only when
/// curl completed (HTTP 2xx, full length); `Err(curl exit code)` otherwise.
fn curl_sha(url: &str, extra: &[&str]) -> Result<(u64, String), i32> {
    use sha2::Digest as _;
    let mut c = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120", "-o", "-"])
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(_) => break,
        }
    }
    let st = c.wait().unwrap();
    if st.success() {
        Ok((n, h.finalize().iter().map(|b| format!("{b:02x}")).collect()))
    } else {
        Err(st.code().unwrap_or(-1))
    }
}

fn curl_json(url: &str) -> Option<Value> {
    let out = Command::new("curl").args(["-sS", "--fail", "--max-time", "10", url]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// (config + layer digests) of `repo:tag` over HTTP.
fn blobs_of(url: &str, repo: &str, tag: &str) -> Option<Vec<String>> {
    let m = curl_json(&format!("{url}/v2/{repo}/manifests/{tag}"))?;
    let mut v = vec![m["config"]["digest"].as_str()?.to_string()];
    for l in m["layers"].as_array()? {
        v.push(l["digest"].as_str()?.to_string());
    }
    Some(v)
}

/// Every blob of `repo:tag` downloads completely and hashes to its name.
fn assert_http_image(url: &str, repo: &str, tag: &str) {
    let blobs = blobs_of(url, repo, tag).unwrap_or_else(|| panic!("{repo}:{tag}: no manifest over HTTP"));
    for d in blobs {
        let r = curl_sha(&format!("{url}/v2/{repo}/blobs/{d}"), &[]);
        match r {
            Ok((_, h)) => assert_eq!(format!("sha256:{h}"), d, "{repo} blob"),
            Err(code) => panic!("{repo}:{tag} blob {d}: curl exit {code}"),
        }
    }
}

#[test]
fn layer_removed_mid_download_never_completes_with_wrong_bytes() {
    let s = MiniStore::new("overlay");
    let stable = import(&s, "localhost/stable:1", &[("s.bin", &pattern(2 << 20, 90))]);
    // 8 payloads of 4 MiB: the later ones are not opened before the removal.
    let parts: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("part{i}.bin"), pattern(4 << 20, 91 + i))).collect();
    let files: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let big = import(&s, "localhost/big:1", &files);
    let expected = std::fs::read(&big.tar).unwrap();
    let digest = layer_digest(&big);
    let mut srv = Daemon::serve(&s.storage, "nginx");
    let url = format!("{}/v2/{}/blobs/{digest}", srv.url(), big.repo);
    let out = s.root().join("download");
    let t = Instant::now();
    let mut curl = Command::new("curl")
        .args(["-sS", "--fail", "--limit-rate", "4M", "--max-time", "60", "-o"])
        .arg(&out)
        .arg(&url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("3 MiB downloaded", Duration::from_secs(20), || std::fs::metadata(&out).is_ok_and(|m| m.len() >= 3 << 20));
    let at = std::fs::metadata(&out).unwrap().len();
    run(&mut s.tool("podman", &["rmi", "localhost/big:1"]));
    let removed_at = t.elapsed();
    let st = curl.wait().unwrap();
    let body = std::fs::read(&out).unwrap();
    eprintln!(
        "rmi mid-download: removed after {removed_at:?} at {at} bytes; curl {st} after {:?} with {} of {} bytes",
        t.elapsed(),
        body.len(),
        expected.len()
    );
    if st.success() {
        assert!(body == expected, "download completed with wrong bytes ({} bytes)", body.len());
    } else {
        assert!(body.len() < expected.len(), "curl failed but the body is complete?");
        assert!(body[..] == expected[..body.len()], "the partial body is not a prefix of the layer");
        assert_ne!(format!("sha256:{}", sha256_hex(&body)), digest);
    }
    // A new request for it is refused; the stable image is served; the daemon lives.
    assert_ne!(http_status(&url), 200);
    assert_http_image(&srv.url(), &stable.repo, &stable.tag);
    srv.assert_alive();
    if !st.success() {
        let log = srv.log();
        assert!(log.contains(&big.layer), "no log line names the removed layer:\n{log}");
    }
}

#[test]
fn store_changing_under_load_never_serves_wrong_bytes() {
    let s = MiniStore::new("overlay");
    let stable = import(&s, "localhost/stable:1", &[("s.bin", &pattern(3 << 20, 100))]);
    let srv = Daemon::serve(&s.storage, "nginx");
    let url = srv.url();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, stable_ok) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let wrong = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stable_failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let (url, stop, ok, failed, stable_ok, wrong, stable_failed) = (
                url.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                stable_ok.clone(),
                wrong.clone(),
                stable_failed.clone(),
            );
            let stable = stable.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (repo, tag) = if i % 2 == 0 {
                        (stable.repo.clone(), stable.tag.clone())
                    } else {
                        // A changing image: whatever the catalog holds now.
                        let Some(cat) = curl_json(&format!("{url}/v2/_catalog")) else { continue };
                        let repos: Vec<String> = cat["repositories"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(|r| r.as_str().map(String::from))
                            .filter(|r| r.starts_with("localhost/churn"))
                            .collect();
                        if repos.is_empty() {
                            continue;
                        }
                        (repos[(i as usize / 2) % repos.len()].clone(), "1".to_string())
                    };
                    let Some(blobs) = blobs_of(&url, &repo, &tag) else {
                        if repo == stable.repo {
                            stable_failed.lock().unwrap().push("manifest".into());
                        }
                        continue;
                    };
                    for d in blobs {
                        match curl_sha(&format!("{url}/v2/{repo}/blobs/{d}"), &[]) {
                            Ok((n, h)) if format!("sha256:{h}") == d => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if repo == stable.repo {
                                    stable_ok.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = n;
                            }
                            Ok((n, h)) => wrong.lock().unwrap().push(format!("{repo} {d}: {n} bytes hashing to {h}")),
                            Err(code) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if repo == stable.repo {
                                    stable_failed.lock().unwrap().push(format!("{d}: curl {code}"));
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // ~20 s of podman import / rmi.
    let t = Instant::now();
    let (mut built, mut removed) = (0, 0);
    let mut live: Vec<String> = Vec::new();
    while t.elapsed() < Duration::from_secs(20) {
        let name = format!("localhost/churn/n{built}:1");
        let parts = [
            ("c.bin", pattern((1 << 20) + built * 4096, 200 + built as u64)),
            ("d.bin", pattern(2 << 20, 300 + (built % 3) as u64)),
        ];
        let files: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        s.import(&name, &files);
        built += 1;
        live.push(name);
        if live.len() > 2 {
            let gone = live.remove(0);
            run(&mut s.tool("podman", &["rmi", &gone]));
            removed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed, stable_ok) =
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), stable_ok.load(Ordering::Relaxed));
    eprintln!(
        "churn: {built} built, {removed} removed in {:?}; {ok} fetches verified ({stable_ok} of the stable image), {failed} incomplete",
        t.elapsed()
    );
    let wrong = wrong.lock().unwrap();
    assert!(wrong.is_empty(), "completed fetches with wrong bytes: {wrong:?}");
    let sf = stable_failed.lock().unwrap();
    assert!(sf.is_empty(), "the stable image failed under churn: {sf:?}");
    assert!(stable_ok >= 10 && ok > stable_ok, "too little was fetched: {ok} ({stable_ok} stable)");
    assert_http_image(&url, &stable.repo, &stable.tag);
    for n in &live {
        let (repo, tag) = n.rsplit_once(':').unwrap();
        wait_for("the last built images", Duration::from_secs(5), || blobs_of(&url, repo, tag).is_some());
        assert_http_image(&url, repo, tag);
    }
    let mut srv = srv;
    srv.assert_alive();
}

#[test]
fn kill_9_of_the_daemon_releases_the_mountpoint() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let tmp = TempDir::new("hkill");
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let mut first = Daemon::mount_at(&s.storage, &dir, "auto_unmount,allow_other");
    let catalog = std::fs::read(first.v2().join("_catalog")).unwrap();
    let digests: Vec<_> =
        good.iter().map(|g| std::fs::read_link(first.v2().join(&g.repo).join("manifests/1")).unwrap()).collect();
    for g in &good {
        check_image(&first.v2(), g).unwrap();
    }
    // Another reader holds a file open across the kill.
    let held = File::open(first.v2().join(&good[1].repo).join("blobs").join(layer_digest(&good[1]))).unwrap();
    let t = Instant::now();
    first.kill().expect("the daemon was running");
    wait_for("the mountpoint to be released", Duration::from_secs(5), || !is_mounted(&dir));
    let released = t.elapsed();
    let md = std::fs::metadata(&dir);
    assert!(md.is_ok(), "the mountpoint is dead: {:?}", md.err());
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "the mountpoint is not the empty directory again");
    // A file held open across the kill: a read returns (page cache or error), never hangs.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let _ = tx.send(held.read_at(&mut buf, 1 << 20).map(|_| ()));
    });
    let r = rx.recv_timeout(Duration::from_secs(10)).expect("a read of a file held across kill -9 hung");
    eprintln!("kill -9: read of a held file afterwards: {r:?}");
    drop(first);
    eprintln!("kill -9: mountpoint released after {released:?}");
    let second = Daemon::mount_at(&s.storage, &dir, "auto_unmount,allow_other");
    assert_eq!(std::fs::read(second.v2().join("_catalog")).unwrap(), catalog);
    for (g, d) in good.iter().zip(&digests) {
        assert_eq!(&std::fs::read_link(second.v2().join(&g.repo).join("manifests/1")).unwrap(), d);
        check_image(&second.v2(), g).unwrap();
    }
}

#[test]
fn load_32_concurrent_downloads_5_rounds_verify_and_leak_no_fds() {
    let s = MiniStore::new("overlay");
    let sizes = [1usize << 20, 4 << 20, 8 << 20, 16 << 20];
    let mut imgs = Vec::new();
    for (k, n) in sizes.iter().enumerate() {
        imgs.push(import(
            &s,
            &format!("localhost/load/i{k}:1"),
            &[("f.bin", &pattern(*n, 400 + k as u64)), ("g.txt", b"g")],
        ));
    }
    // Each round reads through other names (other inodes): the daemon serves every round,
    // not the page cache.
    for (k, _) in imgs.iter().enumerate() {
        let mut args = vec!["tag".to_string(), format!("localhost/load/i{k}:1")];
        args.extend((1..5).map(|r| format!("localhost/load/r{r}/i{k}:1")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&mut s.tool("podman", &a));
    }
    let srv = Daemon::serve(&s.storage, "nginx");
    let url = srv.url();
    let pid = mount_daemon_of(&srv);
    // Blob URLs per round: (url, digest).
    let mut rounds: Vec<Vec<(String, String)>> = Vec::new();
    for r in 0..5 {
        let mut v = Vec::new();
        for k in 0..imgs.len() {
            let repo = if r == 0 { format!("localhost/load/i{k}") } else { format!("localhost/load/r{r}/i{k}") };
            for d in blobs_of(&url, &repo, "1").unwrap() {
                v.push((format!("{url}/v2/{repo}/blobs/{d}"), d));
            }
        }
        rounds.push(v);
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = fd_count(pid);
    let rss_before = proc_status(pid, "VmRSS:");
    let t = Instant::now();
    let mut bytes = 0u64;
    let mut per_round = Vec::new();
    for (r, blobs) in rounds.iter().enumerate() {
        let tr = Instant::now();
        let threads: Vec<_> = (0..32usize)
            .map(|i| {
                // blobs = [config, layer] per image: 28 layer downloads (7 of each size,
                // at the same time) and 4 configs.
                let k = i % imgs.len();
                let (u, d) = blobs[2 * k + usize::from(i % 8 != 7)].clone();
                std::thread::spawn(move || (curl_sha(&u, &[]), d, u))
            })
            .collect();
        for th in threads {
            let (res, d, u) = th.join().unwrap();
            match res {
                Ok((n, h)) => {
                    assert_eq!(format!("sha256:{h}"), d, "round {r}: {u}");
                    bytes += n;
                }
                Err(code) => panic!("round {r}: {u}: curl exit {code}\n{}", srv.log()),
            }
        }
        per_round.push(tr.elapsed());
    }
    let elapsed = t.elapsed();
    // Handles are released when nginx closes the files: give it a moment.
    let mut fds_after = fd_count(pid);
    let w = Instant::now();
    while fds_after > fds_before + 2 && w.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fd_count(pid);
    }
    eprintln!(
        "load: 5 x 32 downloads, {} MiB in {elapsed:?} ({:.0} MiB/s), rounds {per_round:?}; daemon {pid}: \
         VmHWM {}, VmRSS {} (before {rss_before}), fds {fds_before} -> {fds_after}",
        bytes >> 20,
        (bytes >> 20) as f64 / elapsed.as_secs_f64(),
        proc_status(pid, "VmHWM:"),
        proc_status(pid, "VmRSS:"),
    );
    assert!(fds_after <= fds_before + 2, "fd leak: {fds_before} before, {fds_after} after");
    let mut srv = srv;
    srv.assert_alive();
}

#[test]
fn daemon_never_opens_the_store_for_writing() {
    assert!(Path::new("/usr/bin/strace").exists(), "strace is not installed (apt-get install strace)");
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let tmp = TempDir::new("hstrace");
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let trace = tmp.path().join("trace");
    let calls = "open,openat,openat2,creat,truncate,ftruncate,mkdir,mkdirat,unlink,unlinkat,rmdir,rename,renameat,\
                 renameat2,link,linkat,symlink,symlinkat,chmod,fchmod,fchmodat,chown,fchown,fchownat,lchown,\
                 utimensat,setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr,fcntl,flock,mknod,mknodat";
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-s", "512", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-o")
        .arg(&trace)
        .arg(BIN)
        .arg("-f")
        .arg(&s.storage)
        .arg(&dir)
        .env("RUST_LOG", "warn");
    let mut traced = Daemon::spawn("strace cstor-fs", cmd, Some(tmp.path().join("log"))).mounted_at(&dir);
    traced.wait_mounted(Duration::from_secs(30));
    let v2 = dir.join("v2");
    for g in &good {
        check_image(&v2, g).unwrap();
    }
    // A store change: the daemon reloads under its locks.
    let new = import(&s, "localhost/new:1", &[("n.txt", b"new")]);
    wait_for("the new image", Duration::from_secs(10), || check_image(&v2, &new).is_ok());
    run(&mut s.tool("podman", &["rmi", "localhost/good/one:1"]));
    wait_for("the removed image to vanish", Duration::from_secs(10), || !v2.join("localhost/good/one").exists());
    check_image(&v2, &good[1]).unwrap();
    run(Command::new("fusermount3").arg("-u").arg(&dir));
    assert!(traced.wait_exit(Duration::from_secs(20)).is_some(), "the traced daemon did not exit");
    drop(traced);
    let text = std::fs::read_to_string(&trace).unwrap();
    let store = std::fs::canonicalize(&s.storage).unwrap().to_string_lossy().to_string();
    let mut store_opens = 0;
    let mut bad = Vec::new();
    let writes = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"];
    let mutating = [
        "creat",
        "truncate",
        "ftruncate",
        "mkdir",
        "mkdirat",
        "unlink",
        "unlinkat",
        "rmdir",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "chmod",
        "fchmod",
        "fchmodat",
        "chown",
        "fchown",
        "fchownat",
        "lchown",
        "utimensat",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "removexattr",
        "lremovexattr",
        "fremovexattr",
        "mknod",
        "mknodat",
    ];
    for line in text.lines() {
        if !line.contains(&store) {
            continue;
        }
        let call = line.split_once(' ').map_or(line, |(_, c)| c).trim_start();
        let name = call.split('(').next().unwrap_or("");
        if call.starts_with("open") {
            store_opens += 1;
            if writes.iter().any(|w| call.contains(w)) {
                bad.push(line.to_string());
            }
        } else if call.starts_with("fcntl") || call.starts_with("flock") {
            if call.contains("F_WRLCK") || call.contains("LOCK_EX") {
                bad.push(line.to_string());
            }
        } else if mutating.contains(&name) {
            bad.push(line.to_string());
        }
    }
    eprintln!("strace: {store_opens} opens under the store, {} lines traced", text.lines().count());
    assert!(store_opens >= 20, "the trace saw only {store_opens} opens under {store}:\n{text}");
    assert!(bad.is_empty(), "the daemon changed or opened the store for writing:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Least privilege

/// The uid and gid of a system user made for these tests (created once, kept).
fn test_user(name: &str) -> (u32, u32) {
    if !Command::new("id").arg("-u").arg(name).stdout(Stdio::null()).status().unwrap().success() {
        run(Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]));
    }
    let id = |flag: &str| stdout(Command::new("id").arg(flag).arg(name)).trim().parse::<u32>().unwrap();
    (id("-u"), id("-g"))
}

/// `sha256sum` of every blob of `repos`, run as `uid`/`gid` (FUSE lets only the mounting
/// user in): (repo, blob file name, Ok(hex) or Err(error text)).
fn blob_hashes_as(uid: u32, gid: u32, v2: &Path, repos: &[&str]) -> Vec<(String, String, Result<String, String>)> {
    use std::os::unix::process::CommandExt;
    let mut out = Vec::new();
    for repo in repos {
        let dir = v2.join(repo).join("blobs");
        let names = Command::new("ls").arg(&dir).uid(uid).gid(gid).output().unwrap();
        assert!(
            names.status.success(),
            "ls {} as uid {uid}: {}",
            dir.display(),
            String::from_utf8_lossy(&names.stderr)
        );
        for name in String::from_utf8(names.stdout).unwrap().lines() {
            let o = Command::new("sha256sum").arg(dir.join(name)).uid(uid).gid(gid).output().unwrap();
            let r = if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).split(' ').next().unwrap().to_string())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            };
            out.push((repo.to_string(), name.to_string(), r));
        }
    }
    out
}

#[test]
fn an_unprivileged_daemon_serves_what_it_can_read_and_eio_for_the_rest() {
    assert!(Path::new("/usr/bin/setpriv").exists(), "setpriv (util-linux) is missing");
    let (uid, gid) = test_user("cstor-lp");
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let secret = import(&s, "localhost/secret:1", &[("pub.txt", b"public"), ("etc/shadow", b"root:*:1::::::\n")]);
    // The store readable by everyone except one root-owned 0600 file, as on a real host.
    run(Command::new("chmod").arg("-R").arg("o+rX").arg(&s.storage));
    let shadow = diff_dir(&s.storage, &secret.layer).join("etc/shadow");
    std::fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let owned = |dir: &Path| std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    let (u, g) = (format!("--reuid={uid}"), format!("--regid={gid}"));
    let plain = ["setpriv", &u, &g, "--clear-groups", "--inh-caps=-all"];
    let repos = ["localhost/good/one", "localhost/good/two", "localhost/secret"];

    // 1. A plain user: the readable images verify; the secret layer fails with EIO, logged.
    let mut m = Daemon::mount_via(&s.storage, "", &plain, owned);
    let pid = m.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uids.split_whitespace().skip(1).all(|x| x == uid.to_string()), "daemon not running as {uid}: {uids}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_string();
    assert!(caps.ends_with("0000000000000000"), "daemon has capabilities: {caps}");
    let got = blob_hashes_as(uid, gid, &m.v2(), &repos);
    let secret_layer = layer_digest(&secret);
    let mut failed = Vec::new();
    for (repo, name, r) in &got {
        match r {
            Ok(h) => assert_eq!(name, &format!("sha256:{h}"), "{repo}: blob {name} hashes to {h}"),
            Err(e) => failed.push((repo.clone(), name.clone(), e.clone())),
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}\n{}", m.log());
    assert_eq!(failed[0].1, secret_layer, "{failed:?}");
    assert!(failed[0].2.contains("Input/output error"), "{failed:?}");
    let log = m.log();
    assert!(log.contains("etc/shadow") && log.contains(&secret.layer[..12]), "no log line naming the file:\n{log}");
    assert!(got.len() >= 6, "{got:?}");
    m.assert_alive();
    drop(m);

    // 2. The same user with only CAP_DAC_READ_SEARCH (what the documented unit grants):
    //    everything verifies, and the daemon still cannot write anywhere it could not before.
    let cap = ["setpriv", &u, &g, "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"];
    std::fs::set_permissions(&s.storage, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut m = Daemon::mount_via(&s.storage, "", &cap, owned);
    let got = blob_hashes_as(uid, gid, &m.v2(), &repos);
    for (repo, name, r) in &got {
        let h = r.as_ref().unwrap_or_else(|e| panic!("{repo}/{name}: {e}\n{}", m.log()));
        assert_eq!(name, &format!("sha256:{h}"), "{repo}: blob {name}");
    }
    assert!(got.iter().any(|(_, n, _)| *n == secret_layer));
    for g in &good {
        assert!(got.iter().any(|(_, n, _)| *n == layer_digest(g)));
    }
    m.assert_alive();
}

// ---------------------------------------------------------------------------------------
// The shipped systemd unit under a real systemd

/// systemd as PID 1 of a private PID + mount namespace (tests/fixtures/systemd-ns.sh),
/// with this build as /usr/local/bin/cstor-fs. Killing it on drop ends every process and
/// mount of the namespace.
struct SystemdNs {
    unshare: Daemon,
    /// systemd's pid in our namespace (paths below `/proc/<pid>/root` see its mounts).
    pid: u32,
    log: PathBuf,
    _tmp: TempDir,
}

impl SystemdNs {
    /// Boots it; `dirs` (below /tmp) are the only part of /tmp it sees.
    fn boot(dirs: &[&Path]) -> SystemdNs {
        assert!(Path::new("/lib/systemd/systemd").exists(), "systemd is not installed");
        let tmp = TempDir::new("hsd");
        let log = tmp.path().join("systemd.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--propagation", "private"])
            .arg(repo_root().join("tests/fixtures/systemd-ns.sh"))
            .arg(BIN)
            .args(dirs)
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(tmp.path().join("unshare.err")).unwrap());
        let unshare = Daemon::spawn("systemd-ns.sh", cmd, None);
        let mut sd = SystemdNs { pid: 0, unshare, log, _tmp: tmp };
        let children = format!("/proc/{0}/task/{0}/children", sd.unshare.pid());
        wait_for("systemd to start", Duration::from_secs(20), || {
            if let Some(st) = sd.unshare.exited() {
                panic!("systemd-ns.sh exited ({st}): {}", sd.log());
            }
            let Some(pid) = std::fs::read_to_string(&children).ok().and_then(|c| c.trim().parse().ok()) else {
                return false;
            };
            sd.pid = pid;
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
                && sd.systemctl(&["is-system-running"]).status.code().is_some_and(|c| c != 1)
                && !String::from_utf8_lossy(&sd.systemctl(&["is-system-running"]).stdout).contains("starting")
        });
        sd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `systemctl ARGS` inside the namespace.
    fn systemctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--", "systemctl", "--no-pager"])
            .args(args)
            .output()
            .unwrap()
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        let o = self.systemctl(&["show", "-p", prop, "--value", unit]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// A path as seen inside the namespace.
    fn path(&self, p: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(p.strip_prefix("/").unwrap())
    }

    fn is_mounted(&self, dir: &Path) -> bool {
        let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", self.pid)).unwrap_or_default();
        mounts.lines().any(|l| l.split(' ').nth(1) == dir.to_str() && l.contains("fuse"))
    }
}

impl Drop for SystemdNs {
    fn drop(&mut self) {
        if self.pid != 0 {
            // SAFETY: signalling the namespace's init; the kernel then kills the rest.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        self.unshare.kill();
    }
}

#[test]
fn systemd_unit_is_ready_when_mounted_restarts_after_kill_9_and_serves_the_same_digests() {
    assert!(Path::new("/usr/bin/nsenter").exists(), "nsenter (util-linux) is missing");
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let tmp = TempDir::new("hsdm");
    let mnt = tmp.path().join("registry");
    let sd = SystemdNs::boot(&[s.root(), tmp.path()]);
    // The shipped unit, verbatim, plus a drop-in naming the test store and mount point.
    let units = sd.path(Path::new("/etc/systemd/system"));
    std::fs::copy(repo_root().join("systemd/cstor-fs.service"), units.join("cstor-fs.service")).unwrap();
    std::fs::create_dir(units.join("cstor-fs.service.d")).unwrap();
    // There is no journald in the namespace: the daemon's output goes to a file.
    let daemon_log = tmp.path().join("daemon.log");
    let dropin = format!(
        "[Service]\nEnvironment=CSTOR_FS_STORE={} CSTOR_FS_MOUNT={}\nStandardOutput=append:{log}\nStandardError=append:{log}\n",
        s.storage.display(),
        mnt.display(),
        log = daemon_log.display()
    );
    write_bytes(&units.join("cstor-fs.service.d/test.conf"), dropin.as_bytes());
    let ok = |o: std::process::Output, what: &str| {
        if !o.status.success() {
            let st = sd.systemctl(&["status", "-l", "--lines=30", "cstor-fs.service"]);
            panic!(
                "{what}: {}{}\n{}\n{}\n--- daemon\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&st.stdout),
                sd.log(),
                std::fs::read_to_string(&daemon_log).unwrap_or_default()
            );
        }
    };
    ok(sd.systemctl(&["daemon-reload"]), "daemon-reload");
    // Type=notify: `start` returns once READY=1 came, i.e. the mount is live.
    ok(sd.systemctl(&["start", "cstor-fs.service"]), "start");
    assert!(sd.is_mounted(&mnt), "started but not mounted:\n{}", sd.log());
    let v2 = sd.path(&mnt).join("v2");
    let digests: Vec<_> =
        good.iter().map(|g| std::fs::read_link(v2.join(&g.repo).join("manifests/1")).unwrap()).collect();
    for g in &good {
        check_image(&v2, g).unwrap();
    }
    let first = sd.show("cstor-fs.service", "MainPID");
    assert_ne!(first, "0");
    // kill -9 of the daemon (its pid as the namespace sees it).
    ok(
        Command::new("nsenter")
            .arg("-t")
            .arg(sd.pid.to_string())
            .args(["-m", "-p", "--", "kill", "-9", &first])
            .output()
            .unwrap(),
        "kill -9",
    );
    wait_for("systemd to restart cstor-fs", Duration::from_secs(20), || {
        let pid = sd.show("cstor-fs.service", "MainPID");
        pid != "0" && pid != first && sd.show("cstor-fs.service", "ActiveState") == "active" && sd.is_mounted(&mnt)
    });
    assert_eq!(sd.show("cstor-fs.service", "NRestarts"), "1");
    for (g, d) in good.iter().zip(&digests) {
        assert_eq!(&std::fs::read_link(v2.join(&g.repo).join("manifests/1")).unwrap(), d);
        check_image(&v2, g).unwrap();
    }
    // A clean stop unmounts.
    ok(sd.systemctl(&["stop", "cstor-fs.service"]), "stop");
    assert!(!sd.is_mounted(&mnt), "still mounted after stop");
    assert_eq!(sd.show("cstor-fs.service", "Result"), "success");

    // The least-privilege drop-in, verbatim: its own user, only CAP_DAC_READ_SEARCH, and a
    // root-owned 0600 payload still served.
    let (uid, _) = test_user("cstor-fs");
    let secret = import(&s, "localhost/secret:1", &[("etc/shadow", b"root:*:1::::::\n")]);
    let shadow = diff_dir(&s.storage, &secret.layer).join("etc/shadow");
    std::fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&s.storage, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(
        repo_root().join("systemd/cstor-fs-unprivileged.conf"),
        units.join("cstor-fs.service.d/unprivileged.conf"),
    )
    .unwrap();
    ok(sd.systemctl(&["daemon-reload"]), "daemon-reload");
    ok(sd.systemctl(&["start", "cstor-fs.service"]), "start (unprivileged)");
    let pid = sd.show("cstor-fs.service", "MainPID");
    let status = std::fs::read_to_string(sd.path(Path::new("/proc")).join(&pid).join("status")).unwrap();
    let line = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap().to_string();
    assert!(line("Uid:").split_whitespace().skip(1).all(|x| x == uid.to_string()), "{}", line("Uid:"));
    assert!(line("CapEff:").ends_with("0000000000000004"), "{}", line("CapEff:"));
    for g in good.iter().chain([&secret]) {
        check_image(&v2, g).unwrap_or_else(|e| panic!("{}: {e:?}\n{}", g.name, sd.log()));
    }
    ok(sd.systemctl(&["stop", "cstor-fs.service"]), "stop (unprivileged)");
    assert!(!sd.is_mounted(&mnt), "still mounted after stop");
}
