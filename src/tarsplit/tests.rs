//! Unit tests: synthetic layers whose tar-split is derived from a tar built with the
//! `tar` crate, read back through every access pattern.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;

use super::*;
use crate::Id;
use std::os::unix::ffi::OsStrExt;

struct Fixture {
    dir: PathBuf,
    tar: Vec<u8>,
    tar_split: Vec<u8>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("cstor-fs-ts-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Derives tar-split lines from a tar the way tar-split records it: raw bytes as
/// type-2 segments, each regular file's content as a type-1 entry with its CRC-64.
fn tar_split_of(tar: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = Vec::new();
    let mut pos = 0u64;
    let seg = |lines: &mut Vec<u8>, bytes: &[u8]| {
        if !bytes.is_empty() {
            writeln!(lines, r#"{{"type":2,"payload":"{}"}}"#, b64.encode(bytes)).unwrap();
        }
    };
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let start = e.raw_file_position();
        let size = e.size();
        seg(&mut lines, &tar[pos as usize..start as usize]);
        let name = e.path_bytes().into_owned();
        let content = &tar[start as usize..(start + size) as usize];
        let crc = CRC64.checksum(content).to_be_bytes();
        let name_field = match std::str::from_utf8(&name) {
            Ok(s) => format!(r#""name":{}"#, serde_json::to_string(s).unwrap()),
            Err(_) => format!(r#""name_raw":"{}""#, b64.encode(&name)),
        };
        if size == 0 {
            writeln!(lines, r#"{{"type":1,{name_field},"payload":null}}"#).unwrap();
        } else {
            writeln!(lines, r#"{{"type":1,{name_field},"size":{size},"payload":"{}"}}"#, b64.encode(crc)).unwrap();
        }
        pos = start + size;
    }
    seg(&mut lines, &tar[pos as usize..]);
    lines
}

fn fixture(files: &[(&[u8], Vec<u8>)]) -> Fixture {
    let dir = tmpdir("fx");
    let root = dir.join("diff");
    std::fs::create_dir_all(&root).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let name_os = std::ffi::OsStr::from_bytes(name);
        let p = root.join(name_os);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, Path::new(name_os), &content[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let tar_split = tar_split_of(&tar);
    Fixture { dir, tar, tar_split }
}

fn reader(fx: &Fixture) -> BlobReader {
    let ix = Arc::new(Index::parse(&fx.tar_split[..], Some(fx.tar.len() as u64)).unwrap());
    BlobReader::new(Arc::new(
        LayerBlob::new("11".repeat(32).parse::<Id>().unwrap(), ix, &[fx.dir.join("diff")]).unwrap(),
    ))
}

fn sample() -> Fixture {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(150));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    fixture(&[
        (b"etc/hostname", b"box\n".to_vec()),
        (b"empty", Vec::new()),
        (long.as_bytes(), b"long name".to_vec()),
        (b"bin/big", big),
        (b"odd/\xff\xfename", b"raw".to_vec()),
        (b"exact512", vec![b'x'; 512]),
    ])
}

fn read_all(r: &BlobReader, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0; chunk];
    loop {
        let n = r.read_at(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn sequential_read_equals_tar() {
    let fx = sample();
    let r = reader(&fx);
    assert_eq!(r.blob().size(), fx.tar.len() as u64);
    for chunk in [1, 511, 4096, 1 << 20, 8 << 20] {
        assert!(read_all(&r, chunk) == fx.tar, "chunk {chunk}");
    }
}

#[test]
fn random_reads_equal_tar_slices() {
    let fx = sample();
    let r = reader(&fx);
    let len = fx.tar.len() as u64;
    // xorshift: deterministic, no extra crate.
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..2000 {
        let off = next() % len;
        let n = (next() % 70_000) as usize + 1;
        let mut buf = vec![0; n];
        let got = r.read_at(off, &mut buf).unwrap();
        let end = (off as usize + n).min(fx.tar.len());
        assert_eq!(got, end - off as usize);
        assert!(buf[..got] == fx.tar[off as usize..end], "off {off} len {n}");
    }
    // Every entry boundary, +-1.
    let ix = r.blob().index().clone();
    for e in &ix.entries {
        for off in [e.start.saturating_sub(1), e.start, e.start + 1] {
            let mut buf = vec![0; 1024];
            let got = r.read_at(off, &mut buf).unwrap();
            assert!(buf[..got] == fx.tar[off as usize..off as usize + got]);
        }
    }
    let mut buf = [0u8; 8];
    assert_eq!(r.read_at(len, &mut buf).unwrap(), 0);
}

#[test]
fn size_mismatch_is_refused() {
    let fx = sample();
    let err = Index::parse(&fx.tar_split[..], Some(fx.tar.len() as u64 + 1)).unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    // Smaller than the stream: refused at the line that passes it, not at the end.
    let err = Index::parse(&fx.tar_split[..], Some(600)).unwrap_err();
    match err {
        Error::TooLarge { expected: 600, line } => assert!(line < 5, "{line}"),
        e => panic!("{e}"),
    }
}

#[test]
fn damaged_payloads_are_errors_naming_the_file() {
    let fx = sample();
    let diff = fx.dir.join("diff");
    let offset_of = |name: &str| {
        let ix = Index::parse(&fx.tar_split[..], None).unwrap();
        let f = (0..ix.files.len() as u32).find(|&f| ix.name(f) == name.as_bytes()).unwrap();
        ix.entries.iter().find(|e| matches!(e.src, Src::File { file } if file == f)).unwrap().start
    };
    let read_err = |name: &str| {
        let r = reader(&fx);
        let mut buf = [0u8; 16];
        let e = r.read_at(offset_of(name), &mut buf).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
        e
    };
    // Same size, different content: CRC catches it.
    std::fs::write(diff.join("etc/hostname"), b"BOX\n").unwrap();
    assert!(read_err("etc/hostname").contains("CRC"));
    // Shorter.
    std::fs::write(diff.join("etc/hostname"), b"bo").unwrap();
    assert!(read_err("etc/hostname").contains("bytes"));
    // A symlink out of the layer.
    std::fs::remove_file(diff.join("etc/hostname")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", diff.join("etc/hostname")).unwrap();
    read_err("etc/hostname");
    // A symlinked directory.
    std::fs::rename(diff.join("bin"), fx.dir.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(fx.dir.join("elsewhere"), diff.join("bin")).unwrap();
    read_err("bin/big");
    // Missing.
    std::fs::remove_file(diff.join("exact512")).unwrap();
    assert!(read_err("exact512").contains("missing"));
    // A FIFO does not block.
    let c = std::ffi::CString::new(diff.join("exact512").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    read_err("exact512");
}

#[test]
fn walk_fallback_confines_like_openat2() {
    let d = tmpdir("walk");
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/f"), b"ok").unwrap();
    std::os::unix::fs::symlink("/etc", d.join("a/etc")).unwrap();
    std::os::unix::fs::symlink("b/f", d.join("a/lnk")).unwrap();
    let dir = confine::open_dir(&d).unwrap();
    for open in [confine::open_beneath, confine::walk] {
        assert!(open(&dir, b"a/b/f").is_ok());
        assert!(open(&dir, b"a/etc/hostname").is_err());
        assert!(open(&dir, b"a/lnk").is_err());
    }
    assert!(confine::open_beneath(&dir, b"../x").is_err());
    assert!(confine::open_beneath(&dir, b"a//b").is_err());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn clean_paths() {
    assert_eq!(clean_path(b"./etc/passwd").unwrap(), b"etc/passwd");
    assert_eq!(clean_path(b"../../etc//passwd").unwrap(), b"etc/passwd");
    assert_eq!(clean_path(b"/a/./b/../c").unwrap(), b"a/c");
    assert!(clean_path(b"./").is_none());
    assert!(clean_path(b"..").is_none());
}

#[test]
fn malformed_streams_are_errors() {
    for bad in [
        &b"{\"type\":9}\n"[..],
        b"not json\n",
        b"{\"type\":2,\"payload\":\"!!!\"}\n",
        b"{\"type\":1,\"name\":\"a\",\"size\":-1}\n",
        b"{\"type\":1,\"name\":\"a\",\"size\":3,\"payload\":\"AAAA\"}\n",
        b"{\"type\":1,\"name\":\"./\",\"size\":3}\n",
        b"{\"type\":1,\"name\":\"a\",\"size\":18446744073709551615}\n{\"type\":1,\"name\":\"b\",\"size\":2}\n",
    ] {
        assert!(Index::parse(bad, None).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn cache_shares_and_evicts() {
    let fx = sample();
    let gz = fx.dir.join("ts.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&fx.tar_split).unwrap();
    enc.finish().unwrap();
    let cache = IndexCache::new(1);
    let a: Id = "aa".repeat(32).parse().unwrap();
    let b: Id = "bb".repeat(32).parse().unwrap();
    let i1 = cache.get(&a, &gz, None).unwrap();
    let i2 = cache.get(&a, &gz, None).unwrap();
    assert!(Arc::ptr_eq(&i1, &i2));
    cache.get(&b, &gz, None).unwrap();
    // Over budget: only the newest stays.
    let i3 = cache.get(&a, &gz, None).unwrap();
    assert!(!Arc::ptr_eq(&i1, &i3));
    assert!(cache.get(&a, &fx.dir.join("missing.gz"), None).is_ok(), "cached a");
}
