//! Checked identifiers: [`Digest`] (`sha256:<64 hex>`) and [`Id`] (64 lowercase hex,
//! as used for containers-storage image and layer ids).
//!
//! Both are parsed at the edge (store JSON, file names) so the rest of the crate never
//! handles unchecked strings that end up in paths.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A 64-character lowercase hex identifier (image id, layer id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; 32]);

/// A `sha256:<hex>` content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not an [`Id`] or [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn parse_hex64(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0])?;
        let lo = hex_val(pair[1])?;
        out[i] = hi << 4 | lo;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 32]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl Id {
    pub fn hex(&self) -> String {
        self.to_string()
    }
    /// The first 12 hex characters, as podman shows ids.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl FromStr for Id {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_hex64(s).map(Id).ok_or_else(|| ParseError(format!("{s:?} is not a 64-character lowercase hex id")))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

impl Digest {
    /// The sha256 digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }
    pub fn from_sha256(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
    /// The 64 hex characters without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        Id(self.0).to_string()
    }
    /// The same 32 bytes read as an [`Id`] (image ids are config digests).
    pub fn as_id(&self) -> Id {
        Id(self.0)
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        s.strip_prefix("sha256:")
            .and_then(parse_hex64)
            .map(Digest)
            .ok_or_else(|| ParseError(format!("{s:?} is not a sha256:<64 lowercase hex> digest")))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_round_trip() {
        let hex = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(d.hex(), hex);
        let id: Id = hex.parse().unwrap();
        assert_eq!(id.to_string(), hex);
        assert_eq!(id.short(), &hex[..12]);
        assert_eq!(d.as_id(), id);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "sha256:",
            "sha512:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
            "sha256:A3ED95CAEB02FFE68CDD9FD84406680AE93D633CB16422D00E8A7C22955B46D4",
            "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d",
            "sha256:../../../../etc/passwd/../../../../../../../../../../../../../xx",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!("../x".parse::<Id>().is_err());
        assert!("é".repeat(32).parse::<Id>().is_err());
    }

    #[test]
    fn digest_of_empty() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
