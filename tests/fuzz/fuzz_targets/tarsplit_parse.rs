//! Arbitrary bytes as a layer's tar-split stream (plain JSON lines, or gzip when the
//! input starts with the gzip magic): indexing never panics, sizes are consistent
//! between the plain and gzip'd forms and with `expected_size`, and reads over the
//! index (no payload files on disk) stay in bounds and never panic.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use cstor_fs::tarsplit::{BlobReader, Error, Index, LayerBlob};
use cstor_fs_fuzz::{fresh_dir, id};
use libfuzzer_sys::fuzz_target;

fn parse(data: &[u8], gz: bool, expected: Option<u64>) -> Result<Index, Error> {
    if gz {
        Index::parse_gz(data, expected)
    } else {
        Index::parse(data, expected)
    }
}

fuzz_target!(|data: &[u8]| {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let Ok(ix) = parse(data, gz, None) else { return };
    let size = ix.size();
    let files = ix.file_count();
    let _ = ix.heap_bytes();

    // The recorded size is accepted, any other is refused naming both.
    let again = parse(data, gz, Some(size)).expect("the size it computed is accepted");
    assert_eq!(again.size(), size);
    match parse(data, gz, Some(size ^ 1)) {
        Err(Error::SizeMismatch { expected, actual }) => assert_eq!((expected, actual), (size ^ 1, size)),
        other => panic!("a wrong expected size gave {other:?}"),
    }
    if !gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        let z = e.finish().unwrap();
        let ixz = Index::parse_gz(&z[..], None).expect("the gzip'd stream parses like the plain one");
        assert_eq!((ixz.size(), ixz.file_count()), (size, files));
    }

    // No payload on disk: segment bytes are served, payload ranges fail, nothing
    // reads past the end.
    let dir = fresh_dir("layer");
    let blob = Arc::new(LayerBlob::new(id(1), Arc::new(ix), &[dir]).expect("opening the layer dir"));
    assert_eq!(blob.size(), size);
    let r = BlobReader::new(blob);
    let mut buf = vec![0u8; 4096];
    assert_eq!(r.read_at(size, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(r.read_at(0, &mut []).unwrap(), 0);
    let mut off = 0u64;
    let mut step = 1usize;
    while off < size.min(1 << 20) {
        let want = step.min(buf.len());
        if let Ok(n) = r.read_at(off, &mut buf[..want]) {
            assert_eq!(n as u64, (want as u64).min(size - off), "short read at {off} of {size}");
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
