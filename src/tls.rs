//! `serve --tls`: a self-signed CA and a server certificate, made once (with `rcgen`) and
//! kept in a state directory.
//!
//! [`ensure`] makes `<state>/tls/{ca.crt,ca.key}` the first time and never again (clients
//! trust that CA once), and issues `server.{crt,key}` from it for the names and addresses
//! [`host_names`] lists. A later run reuses the server certificate while it still covers
//! every name asked for and has more than [`RENEW_BEFORE_DAYS`] left; otherwise it issues a
//! new one from the same CA covering the old names too. Keys are written mode 0600; every
//! file goes in by rename, and a lock file serialises two `serve`s sharing a state dir.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A server certificate this close to expiry is replaced on start.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Cert { what: &'static str, source: rcgen::Error },
    #[error("{path}: {why} (move the tls directory aside to make a new CA; clients must then trust the new one)")]
    Stored { path: PathBuf, why: String },
}

/// The files `serve` hands to the HTTP server, and what happened to them.
#[derive(Debug, Clone)]
pub struct Made {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Subject alternative names of the server certificate (DNS names and IP addresses).
    pub names: Vec<String>,
    pub new_ca: bool,
    pub new_cert: bool,
}

/// `/var/lib/cstor-fs` for root, `$XDG_STATE_HOME/cstor-fs` (default `~/.local/state`) otherwise.
pub fn default_state_dir() -> PathBuf {
    if crate::sys::uid() == 0 {
        return PathBuf::from("/var/lib/cstor-fs");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|x| !x.is_empty()).map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cstor-fs-state-{}", crate::sys::uid())));
    base.join("cstor-fs")
}

/// This host's name as gethostname(2) gives it (`None` if it is not a valid DNS name).
pub fn hostname() -> Option<String> {
    let name = crate::sys::hostname()?.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then_some(name)
}

/// The addresses of this host's interfaces (getifaddrs(3)); empty if it fails.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = crate::sys::interface_addresses();
    // Link-local addresses need a zone, which certificates cannot name.
    out.retain(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80));
    out
}

/// What the server certificate should name for `listen`: the address itself (every
/// interface's for 0.0.0.0 / ::), the loopback addresses, `localhost` and the host name.
pub fn host_names(listen: SocketAddr) -> Vec<String> {
    let mut names = BTreeSet::new();
    let ip = listen.ip();
    if ip.is_unspecified() {
        for a in interface_addresses() {
            if a.is_ipv4() || ip.is_ipv6() {
                names.insert(a.to_string());
            }
        }
    } else {
        names.insert(ip.to_string());
    }
    names.extend(["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]);
    names.extend(hostname());
    names.into_iter().collect()
}

fn san(name: &str) -> Result<SanType, Error> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(
            name.to_string().try_into().map_err(|source| Error::Cert { what: "a DNS name", source })?,
        )),
    }
}

fn san_name(s: &SanType) -> Option<String> {
    match s {
        SanType::IpAddress(ip) => Some(ip.to_string()),
        SanType::DnsName(n) => Some(n.as_str().to_string()),
        _ => None,
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { what: "reading", path: path.to_path_buf(), source })
}

/// Writes `data` to `path` by rename, with `mode`.
fn write(path: &Path, data: &str, mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    fn io<'a>(what: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io { what, path: p.to_path_buf(), source }
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(data.as_bytes()).and_then(|_| f.sync_all()).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

fn new_key() -> Result<KeyPair, Error> {
    // ECDSA P-256: every client (Go, OpenSSL, NSS) takes it.
    KeyPair::generate().map_err(|source| Error::Cert { what: "making a key", source })
}

/// Makes the CA if there is none, and a server certificate for `names` if the kept one
/// does not cover them or is about to expire.
pub fn ensure(state_dir: &Path, names: &[String]) -> Result<Made, Error> {
    let dir = state_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { what: "creating", path: dir.clone(), source })?;
    // The certificates are public; the keys are 0600 on their own.
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    let lock_path = dir.join(".lock");
    let lock =
        File::create(&lock_path).map_err(|source| Error::Io { what: "creating", path: lock_path.clone(), source })?;
    let _lock =
        crate::sys::flock_exclusive(lock).map_err(|source| Error::Io { what: "locking", path: lock_path, source })?;

    let (ca, ca_key, cert, key) =
        (dir.join("ca.crt"), dir.join("ca.key"), dir.join("server.crt"), dir.join("server.key"));
    let now = OffsetDateTime::now_utc();
    let mut made =
        Made { ca: ca.clone(), cert: cert.clone(), key: key.clone(), names: vec![], new_ca: false, new_cert: false };

    if !ca.exists() || !ca_key.exists() {
        if ca.exists() != ca_key.exists() {
            let (there, gone) = if ca.exists() { (&ca, &ca_key) } else { (&ca_key, &ca) };
            return Err(Error::Stored { path: there.clone(), why: format!("is there but {} is not", gone.display()) });
        }
        let k = new_key()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cstor-fs");
        dn.push(DnType::CommonName, format!("cstor-fs CA {}", hostname().unwrap_or_default()).trim_end());
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(CA_DAYS);
        let c = p.self_signed(&k).map_err(|source| Error::Cert { what: "making the CA certificate", source })?;
        write(&ca_key, &k.serialize_pem(), 0o600)?;
        write(&ca, &c.pem(), 0o644)?;
        // A server certificate from an older CA must not survive.
        let _ = std::fs::remove_file(&cert);
        made.new_ca = true;
    }
    let ca_pem = read(&ca)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| Error::Stored { path: ca.clone(), why: format!("not a certificate rcgen can read: {e}") })?;
    let ca_kp = KeyPair::from_pem(&read(&ca_key)?)
        .map_err(|e| Error::Stored { path: ca_key.clone(), why: format!("not a private key rcgen can read: {e}") })?;
    let issuer = ca_params.self_signed(&ca_kp).map_err(|source| Error::Cert { what: "loading the CA", source })?;

    let mut want: BTreeSet<String> = names.iter().cloned().collect();
    if cert.exists() && key.exists() {
        let kept = CertificateParams::from_ca_cert_pem(&read(&cert)?)
            .map_err(|e| Error::Stored { path: cert.clone(), why: format!("not a certificate rcgen can read: {e}") })?;
        let have: BTreeSet<String> = kept.subject_alt_names.iter().filter_map(san_name).collect();
        if want.is_subset(&have) && kept.not_after > now + Duration::days(RENEW_BEFORE_DAYS) {
            made.names = have.into_iter().collect();
            return Ok(made);
        }
        // Keep serving the names the old certificate had (another --listen).
        want.extend(have);
    }
    let k = new_key()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cstor-fs");
    dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("cstor-fs"));
    p.distinguished_name = dn;
    p.subject_alt_names = want.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(SERVER_DAYS);
    let c = p
        .signed_by(&k, &issuer, &ca_kp)
        .map_err(|source| Error::Cert { what: "making the server certificate", source })?;
    write(&key, &k.serialize_pem(), 0o600)?;
    write(&cert, &c.pem(), 0o644)?;
    made.names = want.into_iter().collect();
    made.new_cert = true;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cstor-fs-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn makes_once_reuses_and_reissues_from_the_same_ca() {
        let d = tmp("ensure");
        let names = vec!["127.0.0.2".to_string(), "localhost".to_string()];
        let a = ensure(&d, &names).unwrap();
        assert!(a.new_ca && a.new_cert);
        assert_eq!((mode(&d.join("tls/ca.key")), mode(&a.key), mode(&a.ca)), (0o600, 0o600, 0o644));
        let (ca1, cert1) = (std::fs::read(&a.ca).unwrap(), std::fs::read(&a.cert).unwrap());
        let b = ensure(&d, &names[..1]).unwrap();
        assert!(!b.new_ca && !b.new_cert);
        assert_eq!((std::fs::read(&b.ca).unwrap(), std::fs::read(&b.cert).unwrap()), (ca1.clone(), cert1.clone()));
        // Another address: a new server certificate naming both, from the same CA.
        let c = ensure(&d, &["10.1.2.3".to_string()]).unwrap();
        assert!(!c.new_ca && c.new_cert);
        assert_eq!(std::fs::read(&c.ca).unwrap(), ca1);
        assert_ne!(std::fs::read(&c.cert).unwrap(), cert1);
        assert_eq!(c.names, ["10.1.2.3", "127.0.0.2", "localhost"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_ca_without_its_key_is_refused() {
        let d = tmp("half");
        ensure(&d, &["localhost".to_string()]).unwrap();
        std::fs::remove_file(d.join("tls/ca.key")).unwrap();
        let e = ensure(&d, &["localhost".to_string()]).unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("is there but"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn host_names_cover_the_address_and_loopback() {
        let n = host_names("192.0.2.7:5000".parse().unwrap());
        for want in ["192.0.2.7", "127.0.0.1", "::1", "localhost"] {
            assert!(n.iter().any(|x| x == want), "{n:?}");
        }
        assert!(host_names("0.0.0.0:5000".parse().unwrap()).iter().any(|x| x == "127.0.0.1"));
    }
}
