//! Faults: serving over HTTP.

use super::*;

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
