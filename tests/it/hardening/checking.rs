//! Checking what is served.

use super::*;

/// Why an image was not served (the strings are for failure messages).
#[derive(Debug)]
#[allow(dead_code)]
pub(super) enum Fail {
    /// Not in the tree (left out, or vanished while being read).
    Missing(String),
    /// A read failed with EIO.
    Eio(String),
    /// Any other error.
    Other(String),
    /// Bytes were served that do not hash to their name: never allowed.
    Wrong(String),
}

pub(super) fn classify(what: &str, e: std::io::Error) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Fail::Missing(format!("{what}: {e}")),
        Some(libc::EIO) => Fail::Eio(format!("{what}: {e}")),
        _ => Fail::Other(format!("{what}: {e}")),
    }
}

/// Reads a file in a helper thread; panics if that takes longer than `limit` (a hang).
pub(super) fn read_timed(p: &Path, limit: Duration) -> std::io::Result<Vec<u8>> {
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
pub(super) fn check_image(v2: &Path, img: &Img) -> Result<usize, Fail> {
    check_ref(v2, &img.repo, &img.tag)
}

pub(super) fn check_ref(v2: &Path, repo: &str, tag: &str) -> Result<usize, Fail> {
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

pub(super) fn assert_served(v2: &Path, img: &Img, log: &str) {
    if let Err(f) = check_image(v2, img) {
        panic!("{} is not served correctly: {f:?}\n--- daemon log\n{log}", img.name);
    }
}

/// The damaged image must be left out or fail with EIO; never wrong bytes.
pub(super) fn assert_refused(v2: &Path, img: &Img, log: &str) -> Fail {
    match check_image(v2, img) {
        Ok(_) => panic!("{} is damaged but was served in full\n--- daemon log\n{log}", img.name),
        Err(f @ Fail::Wrong(_)) | Err(f @ Fail::Other(_)) => panic!("{}: {f:?}\n--- daemon log\n{log}", img.name),
        Err(f) => f,
    }
}

/// The layer blob of `img`, read one 4 KiB page at a time: (offset, bytes or errno).
/// Every read that succeeds must give the true bytes (the imported tarball's).
pub(super) fn page_reads(v2: &Path, img: &Img) -> Vec<(u64, Result<Vec<u8>, i32>)> {
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
pub(super) fn layer_digest(img: &Img) -> String {
    format!("sha256:{}", sha256_file(&img.tar))
}

/// What one damaged store looks like to `cstor-fs list` and to a mount.
pub(super) struct Seen {
    pub(super) list: String,
    pub(super) log: String,
    pub(super) bad: Vec<Fail>,
}

/// Lists and mounts the store: every good image served byte-exact before and after the
/// damaged ones are tried, each damaged one left out or failing with EIO, no panic.
pub(super) fn examine(s: &MiniStore, good: &[Img], bad: &[&Img]) -> Seen {
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
