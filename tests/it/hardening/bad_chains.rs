//! Bad input: chains, big data, names.

use super::*;

#[test]
fn missing_parent_and_looping_parent_leave_the_image_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    // A two-layer image built on a third base image.
    let base = import(&s, "localhost/base:1", &[("base.txt", b"the base")]);
    let ctx = s.root().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    write_bytes(&ctx.join("x"), &pattern(50_000, 60));
    write_bytes(&ctx.join("Containerfile"), b"FROM localhost/base:1\nCOPY x /x\n");
    let out = stdout(&mut s.tool("podman", &["build", "-q", "-t", "localhost/bad/child:1", ctx.to_str().unwrap()]));
    let child_id = out.trim().trim_start_matches("sha256:").to_string();
    let child = img_of(&s, "localhost/bad/child:1", &child_id, PathBuf::new());
    let looping = bad_image(&s, "localhost/bad/loop:1", 61);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let missing = "ab".repeat(32);
    let i = entry_index(&arr, &child.layer);
    arr[i]["parent"] = Value::from(missing.clone());
    let j = entry_index(&arr, &looping.layer);
    arr[j]["parent"] = Value::from(looping.layer.clone());
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let mut all_good = good.clone();
    all_good.push(base);
    let seen = examine(&s, &all_good, &[&child, &looping]);
    assert_listed(&seen.list, "left out:", &[&child.name, &missing, "missing from layers.json"]);
    assert_listed(&seen.list, "left out:", &[&looping.name, &looping.layer, "loop"]);
    assert!(seen.log.contains(&format!("left out {}", child.name)), "{}", seen.log);
}

#[test]
fn missing_big_data_leaves_the_image_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let noman = bad_image(&s, "localhost/bad/nomanifest:1", 70);
    let noconf = bad_image(&s, "localhost/bad/noconfig:1", 71);
    std::fs::remove_file(big_data_file(&s.storage, &noman.id, "manifest")).unwrap();
    std::fs::remove_file(big_data_file(&s.storage, &noconf.id, &format!("sha256:{}", noconf.id))).unwrap();
    let seen = examine(&s, &good, &[&noman, &noconf]);
    assert_listed(&seen.list, "left out:", &[&noman.name, "manifest"]);
    assert_listed(&seen.list, "left out:", &[&noconf.name, "config"]);
    assert!(seen.log.contains(&format!("left out {}", noman.name)), "{}", seen.log);
}

#[test]
fn big_data_that_does_not_match_its_digest_is_left_out() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/confchanged:1", 73);
    // Still valid JSON, still naming the same layers: only the digest tells.
    let conf = big_data_file(&s.storage, &bad.id, &format!("sha256:{}", bad.id));
    let mut b = std::fs::read(&conf).unwrap();
    b.push(b' ');
    write_bytes(&conf, &b);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "left out:", &[&bad.name, "config"]);
}

#[test]
fn big_data_symlinked_out_of_the_store_is_not_served() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/conflink:1", 72);
    let marker = format!("SECRET-CONFIG-{}", std::process::id());
    let secret = s.root().join("secret.json");
    write_bytes(&secret, format!("{{\"secret\":\"{marker}\"}}").as_bytes());
    let conf = big_data_file(&s.storage, &bad.id, &format!("sha256:{}", bad.id));
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&secret, &conf).unwrap();
    let list_out = list_ok(&s.storage);
    let mut m = Daemon::mount(&s.storage, "");
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    // Nothing anywhere in the tree may carry the secret.
    let out = Command::new("grep").args(["-r", "-l", &marker]).arg(m.v2()).output().unwrap();
    assert!(out.stdout.is_empty(), "served: {}", String::from_utf8_lossy(&out.stdout));
    assert!(list_out.contains(&bad.name) && section(&list_out, "left out:").iter().any(|l| l.contains(&bad.name)));
    m.assert_alive();
}

#[test]
fn names_that_are_not_references_are_warned_about_and_never_become_paths() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let b1 = bad_image(&s, "localhost/bad/one:1", 80);
    let b2 = bad_image(&s, "localhost/bad/two:1", 81);
    let b3 = bad_image(&s, "localhost/bad/three:1", 82);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let set = |arr: &mut Vec<Value>, id: &str, names: &[&str]| {
        let i = entry_index(arr, id);
        arr[i]["names"] = serde_json::json!(names);
    };
    set(&mut arr, &b1.id, &["localhost/a b:1", "localhost/UPPER:1"]);
    set(&mut arr, &b2.id, &["localhost/../../../etc:1", "localhost/x:bad tag", "localhost/y/:1", "localhost//z:1"]);
    set(&mut arr, &b3.id, &["UPPER/x:1", "localhost/nul\u{0}:1", "localhost/tab\t:1"]);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let list_out = list_ok(&s.storage);
    for n in ["localhost/a b:1", "localhost/UPPER:1", "localhost/../../../etc:1", "localhost/x:bad tag"] {
        assert_listed(&list_out, "warnings:", &[n]);
    }
    let mut m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    for g in &good {
        assert_served(&v2, g, &m.log());
    }
    let catalog: Value = serde_json::from_slice(&std::fs::read(v2.join("_catalog")).unwrap()).unwrap();
    let repos: Vec<String> =
        catalog["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let an = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        !b.is_empty()
            && an(b[0])
            && an(b[b.len() - 1])
            && b.iter().all(|&x| an(x) || matches!(x, b'.' | b'_' | b'-'))
            && c != ".."
    };
    for r in &repos {
        assert!(r.split('/').all(component_ok), "{r:?} is not a valid repository name: {repos:?}");
    }
    // Each damaged image is either left out or served correctly, under a valid name.
    let mut found = 0;
    for b in [&b1, &b2, &b3] {
        for r in &repos {
            let tags: Value = serde_json::from_slice(&std::fs::read(v2.join(r).join("tags/list")).unwrap()).unwrap();
            for t in tags["tags"].as_array().unwrap() {
                let t = t.as_str().unwrap();
                let target = std::fs::read_link(v2.join(r).join("manifests").join(t)).unwrap();
                let m: Value =
                    serde_json::from_slice(&std::fs::read(v2.join(r).join("manifests").join(&target)).unwrap())
                        .unwrap();
                if m["config"]["digest"] == format!("sha256:{}", b.id) {
                    check_ref(&v2, r, t).unwrap_or_else(|f| panic!("{r}:{t}: {f:?}"));
                    found += 1;
                }
            }
        }
    }
    eprintln!("names: damaged images served under {found} valid names; repositories {repos:?}");
    m.assert_alive();
}
