//! Image names as stored by containers-storage, mapped to registry repository paths.

use std::fmt;

use crate::Digest;

/// What a stored name points at inside its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Tag(t) => f.write_str(t),
            Ref::Digest(d) => d.fmt(f),
        }
    }
}

/// Splits a stored name (`localhost/a/b:v1`, `example.com:5000/x@sha256:..`) into a
/// repository path that is valid in a registry URL and a tag or digest. The registry
/// domain stays the first component; a port's `:` becomes `_`; the domain is lowercased.
pub fn parse_name(name: &str) -> Result<(String, Ref), String> {
    let bad = |why: &str| format!("name {name:?}: {why}");
    let (path, r) = match name.split_once('@') {
        Some((p, d)) => (p, Ref::Digest(d.parse().map_err(|e| bad(&format!("{e}")))?)),
        None => {
            let slash = name.rfind('/').map_or(0, |i| i + 1);
            match name[slash..].rfind(':') {
                Some(c) => (&name[..slash + c], Ref::Tag(name[slash + c + 1..].to_string())),
                None => (name, Ref::Tag("latest".to_string())),
            }
        }
    };
    if let Ref::Tag(t) = &r {
        if !valid_tag(t) {
            return Err(bad("invalid tag"));
        }
    }
    let mut parts = path.split('/');
    let domain = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return Err(bad("no registry domain (containers-storage names are fully qualified)"));
    }
    let domain = domain.to_ascii_lowercase().replace(':', "_");
    let mut repo = domain;
    for c in rest {
        repo.push('/');
        repo.push_str(c);
    }
    if !valid_repo(&repo) {
        return Err(bad("not a valid repository path"));
    }
    Ok((repo, r))
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Distribution-spec repository grammar: components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`, at most 255 bytes.
pub fn valid_repo(repo: &str) -> bool {
    repo.len() <= 255 && !repo.is_empty() && repo.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = |s: &str| Ref::Tag(s.into());
        assert_eq!(parse_name("localhost/app/web:v1").unwrap(), ("localhost/app/web".into(), t("v1")));
        assert_eq!(
            parse_name("docker.io/library/alpine:latest").unwrap(),
            ("docker.io/library/alpine".into(), t("latest"))
        );
        assert_eq!(parse_name("example.com:5000/ns/x:1").unwrap(), ("example.com_5000/ns/x".into(), t("1")));
        assert_eq!(parse_name("Quay.IO/a/b:T_1").unwrap(), ("quay.io/a/b".into(), t("T_1")));
        let d = "sha256:".to_string() + &"ab".repeat(32);
        assert_eq!(
            parse_name(&format!("localhost/x@{d}")).unwrap(),
            ("localhost/x".into(), Ref::Digest(d.parse().unwrap()))
        );
        assert_eq!(parse_name("localhost/x").unwrap().1, t("latest"));
        for bad in [
            "alpine:1",
            "localhost/UP:1",
            "localhost/a:-x",
            "localhost/a//b:1",
            "localhost/a@sha256:zz",
            "[::1]:5000/a:1",
            "localhost/a..b:1",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grammar() {
        assert!(valid_repo("a/b__c/d-e---f/g.h"));
        assert!(!valid_repo("a/_b"));
        assert!(!valid_repo("a/b___c"));
        assert!(valid_tag("v1.0-rc_1"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
