//! Running cstor-fs.

use super::*;

/// `cstor-fs list`: must not panic or die by a signal. Returns (exit code, stdout, stderr).
pub(super) fn list(storage: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("list")
        .arg("--storage")
        .arg(storage)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!e.contains("panicked"), "cstor-fs list panicked:\n{e}");
    let code = out.status.code().unwrap_or_else(|| panic!("cstor-fs list killed: {}\n{e}", out.status));
    (code, o, e)
}

/// `cstor-fs list` that must succeed; returns stdout.
pub(super) fn list_ok(storage: &Path) -> String {
    let (code, out, err) = list(storage);
    assert_eq!(code, 0, "cstor-fs list failed:\n{out}\n{err}");
    out
}

/// The lines of one section ("left out:" or "warnings:") of `cstor-fs list`.
pub(super) fn section<'a>(list_out: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = list_out.lines().skip_while(|l| *l != title);
    lines.next();
    lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect()
}

pub(super) fn assert_listed(list_out: &str, title: &str, all_of: &[&str]) {
    let lines = section(list_out, title);
    assert!(
        lines.iter().any(|l| all_of.iter().all(|w| l.contains(w))),
        "no line under {title:?} of cstor-fs list contains all of {all_of:?}:\n{list_out}"
    );
}
