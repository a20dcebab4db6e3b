//! Lock files and read-only stores.

use super::*;

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
