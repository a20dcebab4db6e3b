//! Bad input: tar-split.

use super::*;

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
    // Each has a CRC-64 (8 bytes, base64), as a file entry with a payload must.
    let p = tar_split(&s.storage, &bad.layer);
    let entries = read_tar_split(&p);
    let line = b"{\"type\":1,\"name\":\"f\",\"size\":1,\"payload\":\"AAAAAAAAAAA=\"}\n".repeat(1 << 16);
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
