//! Least privilege.

use super::*;

/// The uid and gid of a system user made for these tests (created once, kept).
pub(super) fn test_user(name: &str) -> (u32, u32) {
    if !Command::new("id").arg("-u").arg(name).stdout(Stdio::null()).status().unwrap().success() {
        run(Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]));
    }
    let id = |flag: &str| stdout(Command::new("id").arg(flag).arg(name)).trim().parse::<u32>().unwrap();
    (id("-u"), id("-g"))
}

/// `sha256sum` of every blob of `repos`, run as `uid`/`gid` (FUSE lets only the mounting
/// user in): (repo, blob file name, Ok(hex) or Err(error text)).
fn blob_hashes_as(uid: u32, gid: u32, v2: &Path, repos: &[&str]) -> Vec<(String, String, Result<String, String>)> {
    use std::os::unix::process::CommandExt;
    let mut out = Vec::new();
    for repo in repos {
        let dir = v2.join(repo).join("blobs");
        let names = Command::new("ls").arg(&dir).uid(uid).gid(gid).output().unwrap();
        assert!(
            names.status.success(),
            "ls {} as uid {uid}: {}",
            dir.display(),
            String::from_utf8_lossy(&names.stderr)
        );
        for name in String::from_utf8(names.stdout).unwrap().lines() {
            let o = Command::new("sha256sum").arg(dir.join(name)).uid(uid).gid(gid).output().unwrap();
            let r = if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).split(' ').next().unwrap().to_string())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            };
            out.push((repo.to_string(), name.to_string(), r));
        }
    }
    out
}

#[test]
fn an_unprivileged_daemon_serves_what_it_can_read_and_eio_for_the_rest() {
    assert!(Path::new("/usr/bin/setpriv").exists(), "setpriv (util-linux) is missing");
    let (uid, gid) = test_user("cstor-lp");
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let secret = import(&s, "localhost/secret:1", &[("pub.txt", b"public"), ("etc/shadow", b"root:*:1::::::\n")]);
    // The store readable by everyone except one root-owned 0600 file, as on a real host.
    run(Command::new("chmod").arg("-R").arg("o+rX").arg(&s.storage));
    let shadow = diff_dir(&s.storage, &secret.layer).join("etc/shadow");
    std::fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let owned = |dir: &Path| std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    let (u, g) = (format!("--reuid={uid}"), format!("--regid={gid}"));
    let plain = ["setpriv", &u, &g, "--clear-groups", "--inh-caps=-all"];
    let repos = ["localhost/good/one", "localhost/good/two", "localhost/secret"];

    // 1. A plain user: the readable images verify; the secret layer fails with EIO, logged.
    let mut m = Daemon::mount_via(&s.storage, "", &plain, owned);
    let pid = m.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uids.split_whitespace().skip(1).all(|x| x == uid.to_string()), "daemon not running as {uid}: {uids}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_string();
    assert!(caps.ends_with("0000000000000000"), "daemon has capabilities: {caps}");
    let got = blob_hashes_as(uid, gid, &m.v2(), &repos);
    let secret_layer = layer_digest(&secret);
    let mut failed = Vec::new();
    for (repo, name, r) in &got {
        match r {
            Ok(h) => assert_eq!(name, &format!("sha256:{h}"), "{repo}: blob {name} hashes to {h}"),
            Err(e) => failed.push((repo.clone(), name.clone(), e.clone())),
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}\n{}", m.log());
    assert_eq!(failed[0].1, secret_layer, "{failed:?}");
    assert!(failed[0].2.contains("Input/output error"), "{failed:?}");
    let log = m.log();
    assert!(log.contains("etc/shadow") && log.contains(&secret.layer[..12]), "no log line naming the file:\n{log}");
    assert!(got.len() >= 6, "{got:?}");
    m.assert_alive();
    drop(m);

    // 2. The same user with only CAP_DAC_READ_SEARCH (what the documented unit grants):
    //    everything verifies, and the daemon still cannot write anywhere it could not before.
    let cap = ["setpriv", &u, &g, "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"];
    std::fs::set_permissions(&s.storage, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut m = Daemon::mount_via(&s.storage, "", &cap, owned);
    let got = blob_hashes_as(uid, gid, &m.v2(), &repos);
    for (repo, name, r) in &got {
        let h = r.as_ref().unwrap_or_else(|e| panic!("{repo}/{name}: {e}\n{}", m.log()));
        assert_eq!(name, &format!("sha256:{h}"), "{repo}: blob {name}");
    }
    assert!(got.iter().any(|(_, n, _)| *n == secret_layer));
    for g in &good {
        assert!(got.iter().any(|(_, n, _)| *n == layer_digest(g)));
    }
    m.assert_alive();
}
