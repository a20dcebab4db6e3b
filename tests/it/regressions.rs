//! Issue #11: regressions, each failing before its fix. Names colliding with the tree's
//! own entries, a tar-split file entry without a CRC-64, `-o auto_unmount` alone, and
//! mountpoints with a space.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The layer ids under a mini store's overlay-layers (each has a tar-split).
fn layer_ids(storage: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(storage.join("overlay-layers"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".tar-split.gz").map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn list(storage: &Path) -> String {
    stdout(Command::new(BIN).arg("list").arg("--storage").arg(storage))
}

/// Whether `dir` is a mountpoint, as util-linux sees it (independent of our parser).
fn mountpoint(dir: &Path) -> bool {
    Command::new("mountpoint").arg("-q").arg(dir).status().unwrap().success()
}

#[test]
fn names_running_into_the_tree_entries_are_left_out_and_the_mount_comes_up() {
    let s = MiniStore::new("overlay");
    s.import("localhost/app:1", &[("a", b"app")]);
    for name in ["localhost/app/tags/list:1", "localhost/app/manifests/x:1", "localhost/app/blobs:1"] {
        run(&mut s.tool("podman", &["tag", "localhost/app:1", name]));
    }
    // Before the fix the daemon panicked building the tree and the mount never came up.
    let m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    let tags: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v2.join("localhost/app/tags/list")).unwrap()).unwrap();
    assert_eq!(tags["name"], "localhost/app");
    assert_eq!(tags["tags"], serde_json::json!(["1"]));
    assert!(std::fs::symlink_metadata(v2.join("localhost/app/manifests/1")).unwrap().file_type().is_symlink());
    let out = list(&s.storage);
    for (repo, entry) in [
        ("localhost/app/tags/list", "tags"),
        ("localhost/app/manifests/x", "manifests"),
        ("localhost/app/blobs", "blobs"),
    ] {
        let line =
            format!("{repo}: repository {repo} collides with the {entry}/ directory of repository localhost/app");
        assert!(out.contains(&line), "{line}\n{out}");
    }
}

#[test]
fn a_colliding_name_added_while_mounted_does_not_stop_later_changes() {
    let s = MiniStore::new("overlay");
    s.import("localhost/app:1", &[("a", b"app")]);
    let m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    // Before the fix this killed the refresh thread: nothing changed in the tree after it.
    run(&mut s.tool("podman", &["tag", "localhost/app:1", "localhost/app/tags/list:1"]));
    std::thread::sleep(Duration::from_millis(800));
    s.import("localhost/later:1", &[("l", b"later")]);
    wait_for("localhost/later in the tree", Duration::from_secs(10), || v2.join("localhost/later/tags/list").exists());
    assert!(std::fs::read(v2.join("localhost/app/tags/list")).unwrap().starts_with(b"{"));
}

#[test]
fn a_file_entry_without_crc_leaves_the_layer_out() {
    let s = MiniStore::new("overlay");
    s.import("localhost/nocrc:1", &[("f.txt", b"original content")]);
    let ids = layer_ids(&s.storage);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    // Drop the payload CRC-64 of f.txt from the tar-split, then change the file (same size).
    let ts = s.storage.join(format!("overlay-layers/{id}.tar-split.gz"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&ts).unwrap()).read_to_string(&mut text).unwrap();
    let mut changed = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["type"] == 1 && v["name"] == "f.txt" {
                v["payload"] = serde_json::Value::Null;
                changed += 1;
            }
            v.to_string()
        })
        .collect();
    assert_eq!(changed, 1, "{text}");
    let mut z = flate2::write::GzEncoder::new(std::fs::File::create(&ts).unwrap(), flate2::Compression::fast());
    z.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    z.finish().unwrap();
    std::fs::write(s.storage.join(format!("overlay/{id}/diff/f.txt")), b"ORIGINAL content").unwrap();
    // Before the fix the changed bytes were served under the layer's digest.
    let out = list(&s.storage);
    let left = out.split("left out:").nth(1).unwrap_or_else(|| panic!("nothing left out:\n{out}"));
    assert!(left.contains("localhost/nocrc") && left.contains("f.txt") && left.contains("no CRC-64"), "{out}");
    let out = Command::new(BIN).arg("verify").arg("--storage").arg(&s.storage).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("left out") && text.contains("no CRC-64") && !text.contains("FAIL"), "{text}");
}

#[test]
fn auto_unmount_alone_mounts_as_root() {
    let s = MiniStore::new("overlay");
    s.import("localhost/au:1", &[("a", b"au")]);
    // Before the fix: "auto_unmount requires acl != Owner, got: Owner".
    let mut m = Daemon::mount(&s.storage, "auto_unmount");
    assert!(std::fs::read(m.v2().join("localhost/au/tags/list")).is_ok());
    // fusermount3 unmounts it when the daemon dies, even by SIGKILL.
    m.kill().expect("it was running");
    wait_for("the auto unmount", Duration::from_secs(10), || !mountpoint(m.dir()));
}

#[test]
fn serve_and_mount_at_paths_with_a_space() {
    let s = MiniStore::new("overlay");
    s.import("localhost/sp:1", &[("a", b"space")]);
    let tmp = TempDir::new("space");
    let rt: PathBuf = tmp.path().join("run dir\twith tab/rt");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--storage")
        .arg(&s.storage)
        .args(["--listen", &addr, "--runtime-dir"])
        .arg(&rt)
        .env("RUST_LOG", "info,fuser=warn");
    let mut serve =
        Daemon::spawn("cstor-fs serve", cmd, Some(tmp.path().join("serve.log"))).mounted_at(&rt.join("mnt"));
    // Before the fix serve never saw its mount and gave up after 60 s.
    serve.wait_ready("serve to answer", Duration::from_secs(40), |_| http_status(&format!("http://{addr}/v2/")) == 200);
    assert_eq!(http_status(&format!("http://{addr}/v2/localhost/sp/manifests/1")), 200);
    let mnt = rt.join("mnt");
    assert!(mountpoint(&mnt));
    let st = serve.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!rt.exists(), "serve removes its runtime dir");

    // A plain mount there: up, and gone after SIGTERM.
    let dir = tmp.path().join("a mount");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-f").arg(&s.storage).arg(&dir);
    let mut m = Daemon::spawn("cstor-fs", cmd, Some(tmp.path().join("mount.log"))).mounted_at(&dir);
    m.wait_ready("the mount", Duration::from_secs(20), |_| mountpoint(&dir));
    assert!(dir.join("v2/localhost/sp/tags/list").exists());
    let st = m.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!mountpoint(&dir));
}
