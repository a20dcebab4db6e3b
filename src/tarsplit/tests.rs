//! Unit tests: synthetic layers whose tar-split is derived from a tar built with the
//! `tar` crate, read back through every access pattern.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;

use super::*;
use crate::Id;
use std::os::unix::ffi::OsStrExt;

/// CRC-64 as tar-split computes it (Go `hash/crc64` with the ISO table), from the
/// reference `crc` crate: the fixtures' checksums do not come from the code under test.
const CRC64: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);

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
    let ix = Arc::new(Index::parse(io::Cursor::new(fx.tar_split.clone()), Some(fx.tar.len() as u64)).unwrap());
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
    let entries = ix.table().entries.clone();
    for e in &entries {
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
    let err = Index::parse(io::Cursor::new(fx.tar_split.clone()), Some(fx.tar.len() as u64 + 1)).unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    // Smaller than the stream: refused at the entry that passes it, not at the end.
    let err = Index::parse(io::Cursor::new(fx.tar_split.clone()), Some(600)).unwrap_err();
    match err {
        Error::SizeMismatch { expected: 600, actual } => assert!(actual < fx.tar.len() as u64 / 2, "{actual}"),
        e => panic!("{e}"),
    }
}

#[test]
fn a_check_outcome_holds_for_that_file_only() {
    let fx = sample();
    let blob = reader(&fx).blob().clone();
    let ix = Index::parse(io::Cursor::new(fx.tar_split.clone()), None).unwrap();
    let t = ix.table();
    let f = (0..t.files.len() as u32).find(|&f| t.name(f) == b"bin/big").unwrap();
    let at = t.entries.iter().find(|e| matches!(e.src(), Src::File { file } if file == f)).unwrap().start;
    let path = fx.dir.join("diff/bin/big");
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[1_000_000] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let mut buf = [0u8; 4096];
    let e = BlobReader::new(blob.clone()).read_at(at, &mut buf).unwrap_err().to_string();
    assert!(e.contains("CRC-64") && e.contains("bin/big"), "{e}");
    // Another reader of the same index: refused without hashing the 3 MB again.
    let e = BlobReader::new(blob.clone()).read_at(at + 8192, &mut buf).unwrap_err().to_string();
    assert!(e.contains("checked before"), "{e}");
    // Put right (a new ctime): checked again, and served.
    std::fs::write(&path, &good).unwrap();
    assert_eq!(BlobReader::new(blob.clone()).read_at(at, &mut buf).unwrap(), buf.len());
    assert!(buf[..] == fx.tar[at as usize..at as usize + buf.len()]);
}

#[test]
fn damaged_payloads_are_errors_naming_the_file() {
    let fx = sample();
    let diff = fx.dir.join("diff");
    let offset_of = |name: &str| {
        let ix = Index::parse(io::Cursor::new(fx.tar_split.clone()), None).unwrap();
        let t = ix.table();
        let f = (0..t.files.len() as u32).find(|&f| t.name(f) == name.as_bytes()).unwrap();
        t.entries.iter().find(|e| matches!(e.src(), Src::File { file } if file == f)).unwrap().start
    };
    let read_err = |name: &str| {
        let r = reader(&fx);
        let mut buf = [0u8; 16];
        let e = r.read_at(offset_of(name), &mut buf).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
        e
    };
    // Same size, different content: CRC catches it, whether the read covers the whole
    // payload (read straight into the caller's buffer) or part of it (read into the
    // reader's own buffer first).
    std::fs::write(diff.join("etc/hostname"), b"BOX\n").unwrap();
    assert!(read_err("etc/hostname").contains("CRC"));
    let mut two = [0u8; 2];
    let e = reader(&fx).read_at(offset_of("etc/hostname") + 1, &mut two).unwrap_err().to_string();
    assert!(e.contains("CRC") && e.contains("etc/hostname"), "{e}");
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
    nix::unistd::mkfifo(&diff.join("exact512"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
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
        // Beyond tar-split's int64: refused by the JSON decoding already.
        b"{\"type\":1,\"name\":\"a\",\"size\":18446744073709551615}\n{\"type\":1,\"name\":\"b\",\"size\":2}\n",
    ] {
        assert!(Index::parse(bad, None).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn sizes_summing_past_u64_reach_the_overflow_guard() {
    // Each size is a valid int64; three of them overflow a u64 offset.
    let line = format!("{{\"type\":1,\"name\":\"a\",\"size\":{},\"payload\":\"AAAAAAAAAAA=\"}}\n", i64::MAX);
    let stream = line.repeat(3).into_bytes();
    match Index::parse(std::io::Cursor::new(stream), None) {
        Err(Error::Format { line: 3, msg }) => assert!(msg.contains("overflows"), "{msg}"),
        other => panic!("expected the overflow guard on line 3, got {other:?}"),
    }
}

#[test]
fn file_entry_without_crc_is_refused_naming_the_file() {
    // Regression: a payload with no recorded CRC-64 was served unchecked.
    for payload in ["", r#","payload":null"#, r#","payload":"""#] {
        let stream = format!("{{\"type\":1,\"name\":\"etc/passwd\",\"size\":3{payload}}}\n").into_bytes();
        match Index::parse(std::io::Cursor::new(stream), None) {
            Err(Error::Format { line: 1, msg }) => {
                assert!(msg.contains("etc/passwd") && msg.contains("no CRC-64"), "{msg}")
            }
            other => panic!("expected a refusal naming etc/passwd, got {other:?}"),
        }
    }
    // An empty file has no payload to check and needs none.
    let ok = b"{\"type\":1,\"name\":\"empty\",\"size\":0}\n{\"type\":1,\"name\":\"empty2\"}\n";
    assert_eq!(Index::parse(&ok[..], None).unwrap().size(), 0);
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
    // Indexes are parsed on demand; a parsed one counts against the budget.
    assert_eq!(i1.complete().unwrap(), fx.tar.len() as u64);
    cache.get(&b, &gz, None).unwrap().complete().unwrap();
    // Over budget: only the newest stays.
    let i3 = cache.get(&a, &gz, None).unwrap();
    assert!(!Arc::ptr_eq(&i1, &i3));
    assert!(cache.get(&a, &fx.dir.join("missing.gz"), None).is_ok(), "cached a");
}

#[test]
fn fast_crc_equals_reference() {
    let data: Vec<u8> = (0..1_100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for len in [0, 1, 7, 8, 15, 16, 63, 64, 65, 255, 256, 4095, 4096, 65_537, 1_100_000] {
        let d = &data[..len];
        let want = CRC64.checksum(d);
        assert_eq!(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, d), want, "len {len}");
        // In pieces, as crc_of streams a large file.
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
        for piece in d.chunks(1000) {
            digest.update(piece);
        }
        assert_eq!(digest.finalize(), want, "len {len} in pieces");
    }
}

/// A fixture of `n` small files (so the tar-split has many lines to parse lazily).
fn many(n: usize) -> Fixture {
    let files: Vec<(Vec<u8>, Vec<u8>)> =
        (0..n).map(|i| (format!("d{}/f{i}", i % 7).into_bytes(), vec![(i % 251) as u8; 1 + (i * 37) % 1500])).collect();
    let refs: Vec<(&[u8], Vec<u8>)> = files.iter().map(|(n, c)| (&n[..], c.clone())).collect();
    fixture(&refs)
}

/// A reader over an index that is parsed only as reads need it.
fn lazy_reader(fx: &Fixture, expected: Option<u64>, tar_split: Vec<u8>) -> BlobReader {
    let ix = Index::lazy(Box::new(io::BufReader::new(io::Cursor::new(tar_split))), expected);
    BlobReader::new(Arc::new(
        LayerBlob::new("22".repeat(32).parse::<Id>().unwrap(), Arc::new(ix), &[fx.dir.join("diff")]).unwrap(),
    ))
}

#[test]
fn lazy_index_serves_the_start_before_parsing_the_rest() {
    let fx = many(3000);
    let len = fx.tar.len() as u64;
    let r = lazy_reader(&fx, Some(len), fx.tar_split.clone());
    assert_eq!(r.blob().size(), len, "the recorded size is known before parsing");
    let mut buf = vec![0u8; 4096];
    assert_eq!(r.read_at(0, &mut buf).unwrap(), 4096);
    assert!(buf[..] == fx.tar[..4096]);
    let parsed = r.blob().index().table().size;
    assert!(parsed < len / 4, "parsed {parsed} of {len} bytes for the first read");
    // Reading on parses on; the last byte needs the whole parse.
    assert!(read_all(&r, 100_000) == fx.tar);
    assert_eq!(r.blob().index().status.load(Ordering::Acquire), DONE);
}

#[test]
fn lazy_reads_at_every_boundary_while_parsing() {
    let fx = many(400);
    let len = fx.tar.len();
    let full = Index::parse(io::Cursor::new(fx.tar_split.clone()), None).unwrap();
    let bounds: Vec<u64> = full.table().entries.iter().map(|e| e.start).chain([len as u64]).collect();
    for (k, &b) in bounds.iter().enumerate() {
        // Each boundary is the first read of a fresh index, and then again mid-parse
        // on one shared index (the table ending just before, at or after it).
        let fresh = lazy_reader(&fx, Some(len as u64), fx.tar_split.clone());
        for off in [b.saturating_sub(1), b, b + 1] {
            for n in [1usize, 2, 700] {
                let mut buf = vec![0u8; n];
                let got = fresh.read_at(off, &mut buf).unwrap();
                let end = (off as usize + n).min(len);
                let want = if (off as usize) < len { &fx.tar[off as usize..end] } else { &[][..] };
                assert!(buf[..got] == *want, "boundary {k}: {off}+{n}");
            }
        }
    }
}

#[test]
fn lazy_index_under_concurrent_readers_and_a_full_parse() {
    let fx = many(3000);
    let len = fx.tar.len() as u64;
    let r = Arc::new(lazy_reader(&fx, Some(len), fx.tar_split.clone()));
    let tar = Arc::new(fx.tar.clone());
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let (r, tar) = (r.clone(), tar.clone());
        threads.push(std::thread::spawn(move || {
            let mut s = 0x9e3779b97f4a7c15u64 ^ t;
            for _ in 0..300 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let off = s % len;
                let mut buf = vec![0u8; (s % 9000) as usize + 1];
                let got = r.read_at(off, &mut buf).unwrap();
                assert!(buf[..got] == tar[off as usize..off as usize + got], "{off}");
            }
        }));
    }
    let ix = r.blob().index().clone();
    threads.push(std::thread::spawn(move || assert_eq!(ix.complete().unwrap(), len)));
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn lazy_index_that_disagrees_with_the_recorded_size_fails_every_read() {
    let fx = many(3000);
    let len = fx.tar.len() as u64;
    let mut buf = [0u8; 512];
    // Recorded larger than the tar-split: found at the end, then nothing is served.
    let r = lazy_reader(&fx, Some(len + 512), fx.tar_split.clone());
    assert!(r.read_at(0, &mut buf).is_ok());
    let e = r.read_at(len, &mut buf).unwrap_err().to_string();
    assert!(e.contains("diff-size"), "{e}");
    assert!(r.read_at(0, &mut buf).is_err(), "served after the size check failed");
    // Recorded smaller: refused as soon as the parse passes it, without parsing on.
    let r = lazy_reader(&fx, Some(len / 2), fx.tar_split.clone());
    let e = r.read_at(len / 2 - 1, &mut buf).unwrap_err().to_string();
    assert!(e.contains("diff-size"), "{e}");
    assert!(r.blob().index().table().size < len, "parsed past the recorded size");
    assert!(r.read_at(0, &mut buf).is_err());
}

#[test]
fn lazy_index_with_a_bad_line_fails_once_the_parse_reaches_it() {
    let fx = many(3000);
    let len = fx.tar.len() as u64;
    let lines: Vec<&[u8]> = fx.tar_split.split_inclusive(|&b| b == b'\n').collect();
    let mut ts = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        ts.extend_from_slice(if i == lines.len() / 2 { b"{\"type\":7}\n" } else { l });
    }
    let r = lazy_reader(&fx, Some(len), ts);
    let mut buf = [0u8; 512];
    assert!(r.read_at(0, &mut buf).is_ok());
    let e = r.read_at(len - 512, &mut buf).unwrap_err().to_string();
    assert!(e.contains("unknown entry type 7"), "{e}");
    assert!(r.read_at(0, &mut buf).is_err(), "served after the parse failed");
    assert!(r.blob().index().failed());
}
