//! Bad input: images.json and layers.json.

use super::*;

#[test]
fn images_json_entry_of_the_wrong_shape_costs_only_that_entry() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 10);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let i = entry_index(&arr, &bad.id);
    // Valid JSON, wrong types: names is an object, layer a number.
    arr[i]["names"] = serde_json::json!({"not": "a list"});
    arr[i]["layer"] = serde_json::json!(42);
    // Move it to the middle so entries after it must survive too.
    let e = arr.remove(i);
    arr.insert(1, e);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json", "entry 1"]);
    assert!(matches!(seen.bad[0], Fail::Missing(_)), "{:?}", seen.bad);
    assert!(seen.log.contains("images.json"), "{}", seen.log);
}

#[test]
fn images_json_syntax_error_in_the_middle_costs_only_that_entry() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 11);
    let p = images_json(&s.storage);
    let arr = json_array(&p);
    let text = |v: &Value| serde_json::to_string(v).unwrap();
    let i = entry_index(&arr, &bad.id);
    // The damaged entry between the two sound ones: a `:` lost and a stray byte.
    let damaged = text(&arr[i]).replacen("\":", "\" ", 1).replacen(",", ",\u{1}", 1);
    let others: Vec<String> = arr.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| text(v)).collect();
    let body = format!("[{},{damaged},{}]", others[0], others[1]);
    write_bytes(&p, body.as_bytes());
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json"]);
    assert!(matches!(seen.bad[0], Fail::Missing(_)), "{:?}", seen.bad);
}

#[test]
fn truncated_images_json_keeps_the_complete_entries() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 12);
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let e = arr.remove(entry_index(&arr, &bad.id));
    let head = serde_json::to_vec(&arr).unwrap(); // [g1,g2]
    arr.push(e);
    let full = serde_json::to_vec(&arr).unwrap(); // [g1,g2,bad]
                                                  // Cut in the middle of the last entry, as a crash mid-write would.
    let cut = head.len() + (full.len() - head.len()) / 2;
    write_bytes(&p, &full[..cut]);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["images.json", "2 complete entries"]);
    assert!(seen.log.contains("images.json"), "{}", seen.log);
}

#[test]
fn truncated_layers_json_leaves_out_the_images_of_the_lost_layers() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad:1", 13);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let e = arr.remove(entry_index(&arr, &bad.layer));
    let head = serde_json::to_vec(&arr).unwrap();
    arr.push(e);
    let full = serde_json::to_vec(&arr).unwrap();
    write_bytes(&p, &full[..head.len() + (full.len() - head.len()) / 2]);
    let seen = examine(&s, &good, &[&bad]);
    assert_listed(&seen.list, "warnings:", &["layers.json"]);
    assert_listed(&seen.list, "left out:", &[&bad.name, &bad.layer, "missing from layers.json"]);
    assert!(seen.log.contains(&format!("left out {}", bad.name)), "{}", seen.log);
}

#[test]
fn images_json_truncated_in_its_first_entry_still_mounts_and_recovers() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let p = images_json(&s.storage);
    let original = std::fs::read(&p).unwrap();
    write_bytes(&p, &original[..original.len() / 5]);
    let (code, out, err) = list(&s.storage);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_listed(&out, "warnings:", &["images.json"]);
    let mut m = Daemon::mount(&s.storage, "");
    // podman rewrites the file: the images appear.
    let tmp = p.with_extension("tmp");
    write_bytes(&tmp, &original);
    std::fs::rename(&tmp, &p).unwrap();
    wait_for("the images after images.json was rewritten", Duration::from_secs(5), || {
        good.iter().all(|g| check_image(&m.v2(), g).is_ok())
    });
    m.assert_alive();
}

#[test]
fn unreadable_images_json_at_start_fails_cleanly_and_while_mounted_keeps_the_last_good_state() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let p = images_json(&s.storage);
    let original = std::fs::read(&p).unwrap();
    // At start: a clean error naming the file (no panic, no hang).
    write_bytes(&p, b"\x00\x00garbage{[");
    let (code, out, err) = list(&s.storage);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("images.json"), "{err}");
    // While mounted: replaced (as podman does, by rename) with garbage, then fixed.
    write_bytes(&p, &original);
    let mut m = Daemon::mount(&s.storage, "");
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    let tmp = p.with_extension("tmp");
    write_bytes(&tmp, b"{\"this is\": not an array");
    std::fs::rename(&tmp, &p).unwrap();
    wait_for("the error in the log", Duration::from_secs(5), || m.log().contains("still serving the last good state"));
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    write_bytes(&tmp, &original);
    std::fs::rename(&tmp, &p).unwrap();
    let new = import(&s, "localhost/after/repair:1", &[("n.txt", b"new after the repair")]);
    wait_for("an image added after the repair", Duration::from_secs(5), || check_image(&m.v2(), &new).is_ok());
    for g in &good {
        assert_served(&m.v2(), g, &m.log());
    }
    m.assert_alive();
}

#[test]
fn duplicate_image_and_layer_ids_never_serve_wrong_bytes() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let third = bad_image(&s, "localhost/dup/three:1", 14);
    let untouched = import(&s, "localhost/good/untouched:1", &[("u.txt", b"no duplicate of me")]);
    // images.json: an exact copy of one entry, and a copy of another under another name.
    let p = images_json(&s.storage);
    let mut arr = json_array(&p);
    let a = arr[entry_index(&arr, &good[0].id)].clone();
    let mut b = arr[entry_index(&arr, &good[1].id)].clone();
    b["names"] = serde_json::json!(["localhost/dup/renamed:1"]);
    arr.push(a);
    arr.insert(0, b);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());
    // layers.json: an exact copy, and a copy of third's layer that contradicts it.
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let l0 = arr[entry_index(&arr, &good[0].layer)].clone();
    let mut l3 = arr[entry_index(&arr, &third.layer)].clone();
    l3["diff-size"] = serde_json::json!(l3["diff-size"].as_i64().unwrap() + 512);
    arr.push(l0);
    arr.push(l3);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let list_out = list_ok(&s.storage);
    assert_listed(&list_out, "warnings:", &["images.json", "duplicate image id", &good[0].id]);
    assert_listed(&list_out, "warnings:", &["layers.json", "duplicate layer id"]);
    let mut m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    // Untouched, and exactly duplicated: served.
    assert_served(&v2, &untouched, &m.log());
    assert_served(&v2, &good[0], &m.log());
    // Two entries with one id and different names: served correctly under one of them
    // (which one wins is the store's ambiguity), never wrong.
    let renamed = Img { repo: "localhost/dup/renamed".into(), tag: "1".into(), ..good[1].clone() };
    let r = [check_image(&v2, &good[1]), check_image(&v2, &renamed)];
    assert!(r.iter().any(|r| r.is_ok()), "{r:?}");
    assert!(r.iter().all(|r| matches!(r, Ok(_) | Err(Fail::Missing(_)))), "{r:?}");
    // The contradicting layer copy: served right or refused, never wrong.
    match check_image(&v2, &third) {
        Ok(_) | Err(Fail::Missing(_)) | Err(Fail::Eio(_)) => {}
        Err(f) => panic!("{f:?}"),
    }
    m.assert_alive();
}

#[test]
fn huge_declared_sizes_are_refused() {
    let s = MiniStore::new("overlay");
    let good = goods(&s);
    let bad = bad_image(&s, "localhost/bad/huge:1", 15);
    let bad2 = bad_image(&s, "localhost/bad/overflow:1", 16);
    let p = layers_json(&s.storage);
    let mut arr = json_array(&p);
    let i = entry_index(&arr, &bad.layer);
    arr[i]["diff-size"] = serde_json::json!(1u64 << 62);
    // A size no 64-bit signed integer holds (c/storage writes int64).
    let j = entry_index(&arr, &bad2.layer);
    arr[j]["diff-size"] = serde_json::json!(u64::MAX);
    write_bytes(&p, &serde_json::to_vec(&arr).unwrap());

    let seen = examine(&s, &good, &[&bad, &bad2]);
    assert_listed(&seen.list, "left out:", &[&bad.name, &bad.layer, &(1u64 << 62).to_string()]);
    assert_listed(&seen.list, "left out:", &[&bad2.name, &bad2.layer]);
    assert_listed(&seen.list, "warnings:", &["layers.json", &u64::MAX.to_string()]);
    // The mount must not keep advertising a 2^62-byte blob.
    let m = Daemon::mount(&s.storage, "");
    let blob = m.v2().join(&bad.repo).join("blobs").join(layer_digest(&bad));
    wait_for("the huge blob to be left out", Duration::from_secs(5), || !blob.exists());
    assert!(m.log().contains(&bad.layer), "{}", m.log());
}
