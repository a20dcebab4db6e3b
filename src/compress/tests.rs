use super::*;

/// Compressible, not trivially: a pseudo-random mix of text and noise.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"usr/share/doc/cstor-fs/README ");
        }
    }
    out.truncate(len);
    out
}

fn zstd_with(data: &[u8], workers: u32) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.multithread(workers).unwrap();
    z.include_checksum(true).unwrap();
    z.include_contentsize(true).unwrap();
    z.set_pledged_src_size(Some(data.len() as u64)).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

#[test]
fn zstd_output_does_not_depend_on_workers() {
    // Several multi-threaded jobs' worth (a job is a few MiB at level 3).
    let data = sample(24 << 20);
    let one = zstd_with(&data, 1);
    for n in [2, 3, 8] {
        assert!(zstd_with(&data, n) == one, "{n} workers compress differently from 1");
    }
    // Through the encoder the cache uses, fed in odd pieces.
    let mut z = zstd_encoder(Vec::new(), 3, data.len() as u64).unwrap();
    for c in data.chunks(777_777) {
        z.write_all(c).unwrap();
    }
    assert!(z.finish().unwrap() == one);
}

/// Golden digests: a library update that changes the bytes fails here; bump
/// `cache::FORMAT` or the engine string (so old cache entries are not mixed in) and
/// update the digests.
#[test]
fn output_is_pinned() {
    let data = sample(1 << 20);
    let z = zstd_with(&data, ZSTD_WORKERS);
    let mut g = gzip_encoder(Vec::new(), 6);
    g.write_all(&data).unwrap();
    let g = g.finish().unwrap();
    assert_eq!(&g[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255], "gzip header: no name, mtime 0, OS 255");
    let pinned = [
        (cache::engine(Codec::Zstd), Digest::of(&z).to_string()),
        (cache::engine(Codec::Gzip), Digest::of(&g).to_string()),
    ];
    eprintln!("{pinned:?}");
    assert_eq!(
        pinned,
        [
            (
                "zstd-1.5.7".to_string(),
                "sha256:5664556c32192b274065cbf46cc610eeac22f515fdb06f078bbdf98bae698e44".to_string()
            ),
            (
                "flate2-1/miniz_oxide-0.9".to_string(),
                "sha256:6b954c7cc0f6ba5990989fc3cd59174b7bc9e5a77f3a9db9c65c54fff2cefa1b".to_string()
            )
        ]
    );
}

#[test]
fn specs_and_sizes_parse() {
    assert_eq!("zstd".parse::<Spec>().unwrap(), Spec { codec: Codec::Zstd, level: 3 });
    assert_eq!("gzip:9".parse::<Spec>().unwrap(), Spec { codec: Codec::Gzip, level: 9 });
    assert_eq!("zstd:19".parse::<Spec>().unwrap().to_string(), "zstd:19");
    for bad in ["lz4", "zstd:0", "gzip:10", "zstd:x", ""] {
        assert!(bad.parse::<Spec>().is_err(), "{bad}");
    }
    assert_eq!(parse_size("123").unwrap(), 123);
    assert_eq!(parse_size("2k").unwrap(), 2048);
    assert_eq!(parse_size("10G").unwrap(), 10 << 30);
    for bad in ["", "G", "1X", "-1", "99999999999T"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn keys_name_everything_that_decides_the_bytes() {
    let d = Digest::of(b"layer");
    let k = cache::key(&d, Codec::Zstd, 3);
    assert_eq!(k, cache::key(&d, Codec::Zstd, 3));
    assert_ne!(k, cache::key(&d, Codec::Zstd, 4));
    assert_ne!(k, cache::key(&d, Codec::Gzip, 3));
    assert_ne!(k, cache::key(&Digest::of(b"other"), Codec::Zstd, 3));
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cstor-fs-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fill(data: &[u8], codec: Codec) -> impl FnOnce(&mut File) -> Result<Ready, Error> + '_ {
    move |f: &mut File| {
        let bytes = match codec {
            Codec::Zstd => zstd_with(data, ZSTD_WORKERS),
            Codec::Gzip => {
                let mut g = gzip_encoder(Vec::new(), 6);
                g.write_all(data).unwrap();
                g.finish().unwrap()
            }
        };
        f.write_all(&bytes).unwrap();
        Ok(Ready { digest: Digest::of(&bytes), size: bytes.len() as u64 })
    }
}

#[test]
fn cache_entries_are_checked_and_damage_is_not_served() {
    let dir = tmpdir("cache");
    let c = Cache::new(&dir);
    let data = sample(3 << 20);
    let diff = Digest::of(&data);
    for codec in [Codec::Zstd, Codec::Gzip] {
        let key = cache::key(&diff, codec, 3);
        assert!(c.lookup(&key, &diff, codec).is_none());
        let e = c.build(&key, &diff, codec, fill(&data, codec)).unwrap();
        assert_eq!(c.lookup(&key, &diff, codec), Some(e));
        // Same stamp: served without a full check.
        c.open_checked(&key, &e, &diff, codec).unwrap();
        // A flipped byte in the middle: the stamp changes, the full check fails.
        let path = c.blob_path(&key);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert!(c.open_checked(&key, &e, &diff, codec).is_err());
        assert!(c.lookup(&key, &diff, codec).is_none(), "a damaged entry is dropped");
        assert!(!path.exists());
        // Truncated.
        let e = c.build(&key, &diff, codec, fill(&data, codec)).unwrap();
        File::options().write(true).open(&path).unwrap().set_len(e.ready.size - 1).unwrap();
        assert!(c.open_checked(&key, &e, &diff, codec).is_err());
        // Something that decompresses to other bytes, with a matching description.
        let other = sample(1000);
        let e2 = c.build(&key, &diff, codec, fill(&other, codec));
        assert!(matches!(e2, Err(Error::Check { .. })), "{e2:?}");
        assert!(!path.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eviction_removes_least_recently_used_first() {
    let dir = tmpdir("evict");
    let c = Cache::new(&dir);
    let mut keys = Vec::new();
    for i in 0..3u8 {
        let data = sample(100_000 + i as usize);
        let diff = Digest::of(&data);
        let key = cache::key(&diff, Codec::Gzip, 6);
        let e = c.build(&key, &diff, Codec::Gzip, fill(&data, Codec::Gzip)).unwrap();
        keys.push((key, e));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Use the first again: the second is now the least recently used.
    let size: u64 = keys.iter().map(|(_, e)| e.ready.size).sum();
    let f = File::options().write(true).open(dir.join("v1").join(format!("{}.json", keys[0].0))).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    c.evict(size - 1, None);
    assert!(c.blob_path(&keys[0].0).exists() && c.blob_path(&keys[2].0).exists());
    assert!(!c.blob_path(&keys[1].0).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_inside_the_store_is_refused() {
    let dir = tmpdir("inside");
    let s = |d: PathBuf| Settings { spec: "zstd".parse().unwrap(), dir: d, max_bytes: 1 << 30 };
    let e = Compressor::new(s(dir.join("store/cache/x")), &[dir.join("store")]).unwrap_err();
    assert!(e.contains("never writes the store"), "{e}");
    assert!(Compressor::new(s(dir.join("cache")), &[dir.join("store")]).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
