//! Arbitrary bytes as a layer's tar-split stream (plain JSON lines, or gzip when the
//! input starts with the gzip magic): indexing never panics, the eager parse, the lazy
//! (`open_gz`) one and the gzip'd form agree, a recorded size is enforced, and reads
//! over the index (no payload files on disk) stay in bounds, agree between a lazy and
//! an eager index, and never panic.
#![no_main]

use std::io::{Cursor, Write};
use std::sync::Arc;

use cstor_fs::tarsplit::{BlobReader, Error, Index, LayerBlob};
use cstor_fs_fuzz::{fresh_dir, id};
use libfuzzer_sys::fuzz_target;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The stream as gzip (as stored), and an index of it, parsed to the end.
fn parse(data: &[u8], expected: Option<u64>) -> (Vec<u8>, Result<Index, Error>) {
    if data.starts_with(&[0x1f, 0x8b]) {
        let ix = Index::open_gz(Cursor::new(data.to_vec()), expected);
        let r = ix.complete().map(|_| ix);
        (data.to_vec(), r)
    } else {
        (gzip(data), Index::parse(Cursor::new(data.to_vec()), expected))
    }
}

fn reader(ix: Index) -> BlobReader {
    let dir = fresh_dir("layer");
    BlobReader::new(Arc::new(LayerBlob::new(id(1), Arc::new(ix), &[dir]).expect("opening the layer dir")))
}

fuzz_target!(|data: &[u8]| {
    let (gz, parsed) = parse(data, None);
    let lazy = Index::open_gz(Cursor::new(gz.clone()), None);
    let Ok(ix) = parsed else {
        assert!(lazy.complete().is_err(), "the lazy parse accepts what the eager one refused");
        assert!(lazy.failed());
        return;
    };
    let size = ix.size();
    let files = ix.file_count();
    let _ = ix.heap_bytes();
    assert_eq!(lazy.complete().expect("the lazy parse accepts what the eager one did"), size);
    assert_eq!(lazy.file_count(), files);

    // The recorded size is accepted, any other is refused naming both.
    let again = parse(data, Some(size)).1.expect("the size it computed is accepted");
    assert_eq!(again.size(), size);
    let wrong = size ^ 1;
    match parse(data, Some(wrong)).1 {
        // Parsing stops as soon as the stream outgrows the recorded size.
        Err(Error::SizeMismatch { expected, actual }) if wrong < size => {
            assert!(expected == wrong && actual > wrong && actual <= size, "{expected} {actual} {size}")
        }
        Err(Error::SizeMismatch { expected, actual }) => assert_eq!((expected, actual), (wrong, size)),
        other => panic!("a wrong expected size gave {other:?}"),
    }

    // No payload on disk: segment bytes are served, payload ranges fail, nothing reads
    // past the end; an index parsed lazily (reads first) serves the same bytes.
    let r = reader(ix);
    let lazy = reader(Index::open_gz(Cursor::new(gz), Some(size)));
    let mut buf = vec![0u8; 4096];
    let mut other = vec![0u8; 4096];
    for rd in [&r, &lazy] {
        assert_eq!(rd.read_at(size, &mut buf).unwrap(), 0);
        assert_eq!(rd.read_at(u64::MAX, &mut buf).unwrap(), 0);
        assert_eq!(rd.read_at(0, &mut []).unwrap(), 0);
    }
    let mut off = 0u64;
    let mut step = 1usize;
    while off < size.min(1 << 20) {
        let want = step.min(buf.len());
        let a = r.read_at(off, &mut buf[..want]);
        let b = lazy.read_at(off, &mut other[..want]);
        if let Ok(n) = a {
            assert_eq!(n as u64, (want as u64).min(size - off), "short read at {off} of {size}");
        }
        match (a, b) {
            (Ok(n), Ok(m)) => assert!(n == m && buf[..n] == other[..n], "lazy and eager differ at {off}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("at {off}: eager {a:?}, lazy {b:?}"),
        }
        off += want as u64;
        step = (step * 3 + 1).min(buf.len());
    }
    if size > 0 {
        for off in [size - 1, size / 2, size.saturating_sub(4096)] {
            if let Ok(n) = r.read_at(off, &mut buf) {
                assert_eq!(n as u64, 4096u64.min(size - off));
            }
        }
    }
});
