//! Paginated listings: `tags/list` and `_catalog` with `n` and `last`.
//!
//! A [`Listing`] is a sorted list of names (a repository's tags, or the repository
//! names). A request for at most `n` names after `last` resolves to a [`Target`]:
//! `Next` when more remain (its `next` is the last name of the page, the `last` of the
//! following request, which the HTTP server puts in the `Link` header), `End` when this
//! page holds all that remain, `Empty` for `n = 0`. Pure: the file tree lays these out.

use super::Registry;

/// Which names are listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listing {
    /// The tags of one repository.
    Tags(String),
    /// The repository names.
    Catalog,
}

/// Where a page request resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `n` names ending at `next`; more follow.
    Next { n: u64, next: String },
    /// Every name after `after` (all of them for `None`); nothing follows.
    End { after: Option<String> },
    /// `n = 0`: no names.
    Empty,
}

impl Listing {
    /// The sorted names, or `None` for an unknown repository.
    pub fn entries<'a>(&self, reg: &'a Registry) -> Option<Vec<&'a str>> {
        match self {
            Listing::Tags(repo) => reg.repos.get(repo).map(|r| r.tags.keys().map(String::as_str).collect()),
            Listing::Catalog => Some(reg.catalog()),
        }
    }

    /// The JSON body for these names, as `tags/list` and `_catalog` are.
    pub fn json(&self, names: &[&str]) -> Vec<u8> {
        let v = match self {
            Listing::Tags(repo) => serde_json::json!({ "name": repo, "tags": names }),
            Listing::Catalog => serde_json::json!({ "repositories": names }),
        };
        let mut out = serde_json::to_vec(&v).expect("plain JSON");
        out.push(b'\n');
        out
    }
}

/// The names sorting after `last` (all for `None`).
pub fn after<'a>(entries: &[&'a str], last: Option<&str>) -> Vec<&'a str> {
    entries.iter().copied().filter(|e| last.is_none_or(|l| *e > l)).collect()
}

/// Resolves a request for at most `n` names after `last`.
pub fn resolve(entries: &[&str], n: u64, last: Option<&str>) -> Target {
    if n == 0 {
        return Target::Empty;
    }
    let rest = after(entries, last);
    match usize::try_from(n) {
        Ok(n) if rest.len() > n => Target::Next { n: n as u64, next: rest[n - 1].to_string() },
        _ => Target::End { after: last.map(str::to_string) },
    }
}

/// The page of a `Next` target: the (at most) `n` names ending at `next`, or `None` if
/// `next` is not a name (any more).
pub fn ending_at<'a>(entries: &[&'a str], n: u64, next: &str) -> Option<Vec<&'a str>> {
    let i = entries.iter().position(|e| *e == next)?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    Some(entries[(i + 1).saturating_sub(n)..=i].to_vec())
}

/// A name as one path component: `/` (in repository names) as `%2F`. Tags and
/// repository names hold no `%`, so this is reversible.
pub fn encode(name: &str) -> String {
    name.replace('/', "%2F")
}

/// The inverse of [`encode`] (either case of hex digit).
pub fn decode(component: &str) -> String {
    component.replace("%2F", "/").replace("%2f", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_every_name_once() {
        let all = ["a", "b", "c", "d", "e"];
        for n in 1..=6u64 {
            let mut last: Option<String> = None;
            let mut seen = Vec::new();
            loop {
                match resolve(&all, n, last.as_deref()) {
                    Target::Next { n: m, next } => {
                        assert_eq!(m, n);
                        let page = ending_at(&all, m, &next).unwrap();
                        assert_eq!(page.len() as u64, n);
                        seen.extend(page);
                        last = Some(next);
                    }
                    Target::End { after: a } => {
                        let page = after(&all, a.as_deref());
                        assert!(page.len() as u64 <= n);
                        seen.extend(page);
                        break;
                    }
                    Target::Empty => unreachable!(),
                }
            }
            assert_eq!(seen, all, "n={n}");
        }
        assert_eq!(resolve(&all, 0, None), Target::Empty);
        // exactly n left: no next page
        assert_eq!(resolve(&all, 2, Some("c")), Target::End { after: Some("c".into()) });
        // `last` need not be a name
        assert_eq!(resolve(&all, 1, Some("bb")), Target::Next { n: 1, next: "c".into() });
        assert_eq!(ending_at(&all, 3, "zz"), None);
        assert_eq!(ending_at(&all, 9, "b"), Some(vec!["a", "b"]));
        assert_eq!(resolve(&all, u64::MAX, None), Target::End { after: None });
    }

    #[test]
    fn names_encode_as_one_component() {
        assert_eq!(encode("localhost/app/web"), "localhost%2Fapp%2Fweb");
        assert_eq!(decode("localhost%2Fapp%2fweb"), "localhost/app/web");
        assert_eq!(Listing::Catalog.json(&["a/b"]), b"{\"repositories\":[\"a/b\"]}\n");
        assert_eq!(Listing::Tags("r".into()).json(&[]), b"{\"name\":\"r\",\"tags\":[]}\n");
    }
}
