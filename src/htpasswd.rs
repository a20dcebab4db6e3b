//! `serve --htpasswd`: read and check an htpasswd file of bcrypt entries.
//!
//! [`Htpasswd::load`] accepts exactly what `htpasswd -B` writes (`user:$2y$NN$<53 chars>`,
//! plus blank and `#` lines, which nginx also skips) and refuses anything else by line
//! number: nginx would treat an unknown hash as a plain crypt(3) string, Caddy only
//! takes bcrypt, and a config both read the same way is the point. nginx reads the file
//! itself (`auth_basic_user_file`); Caddy's `basicauth` block is made from the entries by
//! [`Htpasswd::caddy_accounts`]. No password is ever checked here.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// One `user:hash` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub hash: String,
}

/// A checked htpasswd file.
#[derive(Debug, Clone)]
pub struct Htpasswd {
    /// Absolute path (nginx reads it from its own working directory).
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {why} (make entries with `htpasswd -B {path} USER`)")]
    Line { path: PathBuf, line: usize, why: &'static str },
    #[error("{path} holds no user (add one with `htpasswd -B {path} USER`)")]
    Empty { path: PathBuf },
}

/// Why `hash` is not a bcrypt hash as `htpasswd -B` writes it, if it is not.
fn bcrypt_problem(hash: &str) -> Option<&'static str> {
    let b = hash.as_bytes();
    // $2a$ / $2b$ / $2y$ (and $2x$), a two-digit cost, 22 characters of salt and 31 of hash.
    if !(b.len() == 60 && b[0] == b'$' && b[1] == b'2' && b[3] == b'$' && b[6] == b'$') {
        return Some("not a bcrypt hash ($2y$NN$ and 53 characters)");
    }
    if !matches!(b[2], b'a' | b'b' | b'x' | b'y') {
        return Some("unknown bcrypt variant");
    }
    let cost = match (b[4], b[5]) {
        (d1 @ b'0'..=b'9', d2 @ b'0'..=b'9') => (d1 - b'0') * 10 + (d2 - b'0'),
        _ => return Some("bcrypt cost is not two digits"),
    };
    if !(4..=31).contains(&cost) {
        return Some("bcrypt cost is not between 04 and 31");
    }
    if !b[7..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/') {
        return Some("bcrypt salt and hash hold a character outside ./A-Za-z0-9");
    }
    None
}

fn user_problem(user: &str) -> Option<&'static str> {
    if user.is_empty() {
        return Some("empty user name");
    }
    // Whitespace, quotes and braces would change the meaning of the generated Caddyfile.
    if !user.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '`' | '{' | '}' | '\\' | '#')) {
        return Some("user name holds a space, quote, brace, backslash, # or non-ASCII character");
    }
    None
}

impl Htpasswd {
    pub fn parse(path: &Path, text: &str) -> Result<Htpasswd, Error> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_err = |why| Error::Line { path: path.to_path_buf(), line: i + 1, why };
            let l = raw.trim_end_matches('\r');
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = l.split_once(':') else { return Err(line_err("no `user:hash`")) };
            // htpasswd may write a third field (a comment); nginx ignores it, Caddy cannot.
            if hash.contains(':') {
                return Err(line_err("more than `user:hash`"));
            }
            if let Some(why) = user_problem(user).or_else(|| bcrypt_problem(hash)) {
                return Err(line_err(why));
            }
            if entries.iter().any(|e: &Entry| e.user == user) {
                return Err(line_err("user listed twice"));
            }
            entries.push(Entry { user: user.to_string(), hash: hash.to_string() });
        }
        if entries.is_empty() {
            return Err(Error::Empty { path: path.to_path_buf() });
        }
        Ok(Htpasswd { path: path.to_path_buf(), entries })
    }

    pub fn load(path: &Path) -> Result<Htpasswd, Error> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let abs = std::path::absolute(path).map_err(io)?;
        let text = std::fs::read_to_string(&abs).map_err(io)?;
        Htpasswd::parse(&abs, &text)
    }

    /// The accounts of a Caddy 2.6 `basicauth` block, one `user base64(hash)` a line,
    /// indented by `indent`. Caddy 2.6 documents the hash base64-encoded (it also takes
    /// the bare hash; later releases document that form).
    pub fn caddy_accounts(&self, indent: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.entries.iter().map(|e| format!("{indent}{} {}\n", e.user, b64.encode(&e.hash))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "$2y$05$cES3DKeWXObFkmlofIjMOed.HhxE9TPxdk5y6/GOcpVfxBnXnpvSi";

    fn parse(text: &str) -> Result<Htpasswd, Error> {
        Htpasswd::parse(Path::new("/x/pw"), text)
    }

    #[test]
    fn accepts_htpasswd_b_output_comments_and_blank_lines() {
        let h = parse(&format!("# users\n\nalice:{H}\r\nbob:{}\n", H.replace("$2y$", "$2b$"))).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0], Entry { user: "alice".into(), hash: H.into() });
        let caddy = h.caddy_accounts("\t");
        let first = caddy.lines().next().unwrap();
        assert_eq!(first, "\talice JDJ5JDA1JGNFUzNES2VXWE9iRmttbG9mSWpNT2VkLkhoeEU5VFB4ZGs1eTYvR09jcFZmeEJuWG5wdlNp");
    }

    #[test]
    fn refuses_what_is_not_bcrypt_by_line() {
        for (text, why) in [
            ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "not a bcrypt hash"),
            ("alice:$apr1$abc$defghijklmnopqrstuvwx", "not a bcrypt hash"),
            ("alice:plaintext", "not a bcrypt hash"),
            ("alice", "no `user:hash`"),
            (&format!(":{H}"), "empty user name"),
            (&format!("al ice:{H}"), "user name"),
            (&format!("al{{ice:{H}"), "user name"),
            (&format!("alice:{H}:comment"), "more than"),
            (&format!("alice:{}", H.replace("$05$", "$99$")), "cost"),
            (&format!("alice:{}", H.replace("$2y$", "$2q$")), "variant"),
            (&format!("alice:{}", H.replace('.', "!")), "outside"),
            (&format!("alice:{H}\nalice:{H}"), "twice"),
        ] {
            let e = parse(&format!("# c\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("/x/pw line ") && e.contains("htpasswd -B"), "{text}: {e}");
        }
        assert!(parse("# nobody\n\n").unwrap_err().to_string().contains("no user"));
    }
}
