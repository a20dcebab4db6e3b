//! Structured tar-split streams (segments, files with good, wrong or no CRC-64, odd
//! names, huge sizes) written as JSON lines, indexed eagerly (`Index::parse`) or lazily
//! (`Index::open_gz`, reads first, maybe from two threads), and read back with
//! `read_at` over a layer directory holding the files. Checked against a model built
//! here: the index accepts exactly the streams it should, with a size that is the sum
//! of the entries; every successful read returns exactly the model's bytes, never a
//! byte past what the stream validly describes; a read fails only where a payload is
//! missing, of another size, or fails its CRC-64, or when the stream is bad; once a
//! parse failed, every read fails.
#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Cursor, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use arbitrary::Arbitrary;
use base64::Engine as _;
use cstor_fs::tarsplit::{BlobReader, Index, LayerBlob};
use cstor_fs_fuzz::{clean, fresh_dir, id};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 14] =
    ["a", "b", "a/b", "a/c", "./a", "/a", "a//b/", "d/../a", "../../a", ".", "/", "..", "d/e/f", "a/b/c"];

#[derive(Arbitrary, Debug)]
enum Name {
    Pool(u8),
    Utf8(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Crc {
    Right,
    None,
    Wrong(u64),
}

#[derive(Arbitrary, Debug)]
enum Ent {
    Seg(Vec<u8>),
    /// A long run of zeros and a marker (crosses the 64 KiB segment chunks).
    Zeros(u16, u8),
    File {
        name: Name,
        size: u16,
        crc: Crc,
    },
    Huge {
        name: Name,
        size: i64,
    },
    Blank,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ents: Vec<Ent>,
    step: u16,
    reads: Vec<(u32, u16)>,
    expect: Expect,
    lazy: bool,
    threads: bool,
}

/// The `expected_size` passed to the parser.
#[derive(Arbitrary, Debug)]
enum Expect {
    Nothing,
    /// The model's total.
    Right,
    Other(u64),
}

/// Payload bytes are a function of (path, size), so two entries naming the same
/// file with the same size agree on what it holds.
fn content(path: &[u8], size: u64) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    (0..size).map(|i| (h.wrapping_add(i.wrapping_mul(0x9e37_79b9)) >> 24) as u8).collect()
}

/// CRC-64/GO-ISO, bit by bit (independent of the crate's table-driven one).
fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0xd800_0000_0000_0000; // reversed ISO polynomial
    let mut crc = !0u64;
    for &b in data {
        crc ^= b as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
        }
    }
    !crc
}

enum Piece {
    Bytes(Vec<u8>),
    /// (cleaned path, size, CRC-64 recorded is the content's)
    File(Vec<u8>, u64, bool),
}

fn name_bytes(n: &Name) -> Vec<u8> {
    match n {
        Name::Pool(i) => NAMES[*i as usize % NAMES.len()].as_bytes().to_vec(),
        Name::Utf8(s) => s.as_bytes().to_vec(),
        Name::Raw(b) => b.clone(),
    }
}

fn name_fields(out: &mut String, n: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    match std::str::from_utf8(n) {
        Ok(s) => write!(out, r#","name":{}"#, serde_json::to_string(s).unwrap()).unwrap(),
        Err(_) => write!(out, r#","name":"?","name_raw":"{}""#, b64.encode(n)).unwrap(),
    }
}

fuzz_target!(|input: Input| {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut stream = String::new();
    // The pieces the stream validly describes, up to the first entry it must refuse.
    let mut model: Vec<Piece> = Vec::new();
    let mut total: u128 = 0;
    let mut refused = false;
    let mut add = |model: &mut Vec<Piece>, p: Option<Piece>, refused: &mut bool| {
        if *refused {
            return;
        }
        let len = match &p {
            None => {
                *refused = true;
                return;
            }
            Some(Piece::Bytes(b)) => b.len() as u128,
            Some(Piece::File(_, size, _)) => *size as u128,
        };
        if total + len > u64::MAX as u128 {
            *refused = true;
            return;
        }
        total += len;
        model.extend(p);
    };
    for (pos, e) in input.ents.iter().enumerate() {
        match e {
            Ent::Seg(b) => {
                writeln!(stream, r#"{{"type":2,"payload":"{}","position":{pos}}}"#, b64.encode(b)).unwrap();
                add(&mut model, Some(Piece::Bytes(b.clone())), &mut refused);
            }
            Ent::Zeros(n, m) => {
                let mut b = vec![0u8; *n as usize];
                b.push(*m);
                writeln!(stream, r#"{{"type":2,"payload":"{}"}}"#, b64.encode(&b)).unwrap();
                add(&mut model, Some(Piece::Bytes(b)), &mut refused);
            }
            Ent::File { name, size, crc } => {
                let n = name_bytes(name);
                // Small files keep runs fast (a payload failing its CRC-64 is hashed again
                // on every read of it); Zeros segments cross the 64 KiB chunks.
                let size = (*size % 8192) as u64;
                let mut line = String::from(r#"{"type":1"#);
                name_fields(&mut line, &n);
                write!(line, r#","size":{size}"#).unwrap();
                let path = clean(&n);
                let right = path.as_ref().map(|p| crc64(&content(p, size)));
                let (recorded, good) = match crc {
                    Crc::None => (None, true),
                    Crc::Right => (right, true),
                    Crc::Wrong(x) => (Some(*x), Some(*x) == right),
                };
                if let Some(c) = recorded {
                    write!(line, r#","payload":"{}""#, b64.encode(c.to_be_bytes())).unwrap();
                }
                writeln!(stream, "{line},\"position\":{pos}}}").unwrap();
                if size > 0 {
                    // A payload with no file name, or with no CRC-64 to check it, is refused.
                    let piece = path.filter(|_| recorded.is_some()).map(|p| Piece::File(p, size, good));
                    add(&mut model, piece, &mut refused);
                }
            }
            Ent::Huge { name, size } => {
                let n = name_bytes(name);
                let mut line = String::from(r#"{"type":1"#);
                name_fields(&mut line, &n);
                writeln!(stream, "{line},\"size\":{size}}}").unwrap();
                if *size != 0 {
                    // No CRC-64 (and a negative size): refused.
                    add(&mut model, None, &mut refused);
                }
            }
            Ent::Blank => stream.push_str("  \n"),
        }
    }
    let total = total as u64;
    let expected = match input.expect {
        Expect::Nothing => None,
        Expect::Right => Some(total),
        Expect::Other(x) => Some(x),
    };
    // Whether the whole stream is good and of the recorded size.
    let good = !refused && expected.is_none_or(|x| x == total);

    let ix = if input.lazy {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(stream.as_bytes()).unwrap();
        Index::open_gz(Cursor::new(z.finish().unwrap()), expected)
    } else {
        match Index::parse(Cursor::new(stream.into_bytes()), expected) {
            Ok(ix) => {
                assert!(good, "accepted a stream the model refuses (size {})", ix.size());
                ix
            }
            Err(e) => {
                assert!(!good, "refused a good stream of {total} bytes: {e}");
                return;
            }
        }
    };
    let size = expected.unwrap_or_else(|| ix.size());
    if !input.lazy {
        assert_eq!(ix.size(), total);
        let files = model.iter().filter(|p| matches!(p, Piece::File(..))).count();
        assert_eq!(ix.file_count(), files);
    }

    // Lay the files out: the last successful write of a path decides what it holds.
    let dir = fresh_dir("layer");
    let mut on_disk: HashMap<Vec<u8>, u64> = HashMap::new();
    for p in &model {
        let Piece::File(path, fsize, _) = p else { continue };
        if *fsize > 1 << 16 {
            continue;
        }
        let full = dir.join(std::ffi::OsStr::from_bytes(path));
        let ok = full.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&full, content(path, *fsize)).is_ok();
        if ok {
            on_disk.insert(path.clone(), *fsize);
        }
    }
    // Model bytes, and which ranges may fail.
    let mut ranges: Vec<(u64, u64, Option<Vec<u8>>, bool)> = Vec::new(); // (start, len, bytes, servable)
    let mut at = 0u64;
    for p in &model {
        match p {
            Piece::Bytes(b) => {
                if !b.is_empty() {
                    ranges.push((at, b.len() as u64, Some(b.clone()), true));
                }
                at += b.len() as u64;
            }
            Piece::File(path, fsize, good) => {
                let servable = *good && on_disk.get(path) == Some(fsize);
                let bytes = (*fsize <= 1 << 16).then(|| content(path, *fsize));
                ranges.push((at, *fsize, bytes, servable));
                at += fsize;
            }
        }
    }
    assert_eq!(at, total);

    let blob = Arc::new(LayerBlob::new(id(7), Arc::new(ix), &[dir]).expect("opening the layer dir"));
    assert_eq!(blob.size(), size);
    let check = |r: &BlobReader, off: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let got = r.read_at(off, &mut buf);
        let end = (off.saturating_add(len as u64)).min(size);
        let covered: Vec<_> = ranges.iter().filter(|(s, l, _, _)| off < end && *s < end && s + l > off).collect();
        match got {
            Ok(n) => {
                assert_eq!(n as u64, end.saturating_sub(off), "read of {len} at {off} of {size}");
                assert!(n == 0 || end <= total, "served {off}..{end}, past the {total} bytes the stream describes");
                for (s, l, bytes, _) in covered {
                    let bytes = bytes.as_ref().expect("a huge payload cannot have been read");
                    let from = off.max(*s);
                    let to = end.min(s + l);
                    assert!(
                        buf[(from - off) as usize..(to - off) as usize]
                            == bytes[(from - s) as usize..(to - s) as usize],
                        "wrong bytes in {from}..{to}"
                    );
                }
            }
            Err(e) => {
                assert!(
                    !good || covered.iter().any(|c| !c.3),
                    "read of {len} at {off} failed over servable entries: {e}"
                );
            }
        }
    };
    let reader = BlobReader::new(blob.clone());
    let other = BlobReader::new(blob.clone());
    // Sequential, in steps of the input's choosing.
    let sequential = || {
        if size <= 1 << 22 {
            let step = (input.step as usize).max(1).max((size / 512) as usize + 1);
            let mut off = 0;
            while off < size {
                check(&reader, off, step);
                off += step as u64;
            }
        }
    };
    // Random reads on a second reader (its own file and chunk caches).
    let random = || {
        for &(o, len) in input.reads.iter().take(32) {
            let off =
                if size <= u32::MAX as u64 { o as u64 % (size + 2) } else { size - (o as u64 % size.min(1 << 32)) };
            check(&other, off, len as usize);
        }
    };
    if input.threads {
        std::thread::scope(|s| {
            let t = s.spawn(random);
            sequential();
            // Joined (not just awaited by the scope) so the thread has exited, its
            // thread-locals freed, before LeakSanitizer looks.
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        });
    } else {
        random();
        sequential();
    }
    match blob.index().complete() {
        Ok(n) => {
            assert!(good, "completed a stream the model refuses");
            assert_eq!(n, total);
        }
        Err(e) => {
            assert!(!good, "a good stream failed to complete: {e}");
            assert!(blob.index().failed());
            if size > 0 {
                assert!(reader.read_at(0, &mut [0u8; 1]).is_err(), "a read after the parse failed succeeded");
            }
        }
    }
});
