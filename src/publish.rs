//! `publish`: upload what a pull needs to S3-compatible object storage, laid out as the
//! registry HTTP API, so that the bucket (alone or behind a CDN) is a static pull-only
//! registry.
//!
//! Objects, below an optional prefix: `v2/` (`{}`, so `GET /v2/` answers 200),
//! `v2/<repo>/blobs/<digest>`, `v2/<repo>/manifests/<digest>` and `.../manifests/<tag>`
//! (with the manifest's exact Content-Type), `v2/<repo>/tags/list`. Blobs already in the
//! bucket (same key, same size) are skipped; small objects carry their sha256 in
//! `x-amz-meta-cstor-digest` and are skipped when it is unchanged, so publishing again
//! uploads nothing. Layers are streamed from [`crate::tarsplit::BlobReader`] (no temp
//! copy, bounded memory), several blobs at a time, large ones as multipart uploads, and
//! hashed on the way: an object whose bytes do not hash to its digest is deleted (or its
//! multipart upload aborted) and the publish fails.
//!
//! Requests are signed with SigV4 by `rusty-s3` (presigned URLs, unsigned payload) and
//! sent with the blocking `ureq` client. Credentials and region come from where the AWS
//! tools take them (environment, `~/.aws/credentials`, `~/.aws/config`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::Digest as _;

use crate::live::{Live, View};
use crate::registry::{BlobSource, Registry};
use crate::tarsplit::BlobReader;
use crate::Digest;

/// How long a presigned request stays valid (a part or a blob upload must start by then).
const SIGN_FOR: Duration = Duration::from_secs(3600);
/// The smallest part S3 accepts (except the last).
pub const MIN_PART: u64 = 5 << 20;
/// Metadata holding a small object's sha256, to skip re-uploading it unchanged.
const META_DIGEST: &str = "x-amz-meta-cstor-digest";

/// Errors name the object and what the server said.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{what}: HTTP {status}: {body}")]
    Status { what: String, status: u16, body: String },
    #[error("{what}: {source}")]
    Transport { what: String, source: Box<ureq::Transport> },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{key}: the uploaded bytes hash to {got}, not to its digest (deleted again)")]
    Mismatch { key: String, got: Digest },
    #[error("{0}: no such image is served (see `cstor-fs list`)")]
    NoSuchImage(String),
    #[error("{0}: a compressed blob; publish uploads the uncompressed model only")]
    Compressed(Digest),
}

/// `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
}

impl std::str::FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Target, Error> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| Error::Config(format!("{s}: not an s3://BUCKET URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Err(Error::Config(format!("{bucket:?}: not a valid bucket name (3-63 of a-z 0-9 . -)")));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(Error::Config(format!("{s}: the prefix must not contain . or ..")));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(Target { bucket: bucket.to_string(), prefix })
    }
}

/// What `cstor-fs publish` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    /// The S3 endpoint; default `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or AWS's for the region.
    pub endpoint: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`); default: for IP-address endpoints only.
    pub path_style: Option<bool>,
    /// Let anyone read the objects (bucket policy).
    pub public: bool,
    /// Blobs uploaded at a time.
    pub jobs: usize,
    /// Blobs larger than this go up as multipart uploads in parts of this size.
    pub part_size: u64,
}

/// The AWS tools' files and variables (`AWS_*`), read once.
#[derive(Debug, Clone, Default)]
pub struct AwsEnv {
    pub vars: HashMap<String, String>,
    pub home: Option<PathBuf>,
}

impl AwsEnv {
    pub fn from_process() -> AwsEnv {
        AwsEnv {
            vars: std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn profile(&self) -> &str {
        self.var("AWS_PROFILE").unwrap_or("default")
    }

    /// `[section]` of the INI file `path`, as key → value.
    fn ini_section(path: &std::path::Path, section: &str) -> HashMap<String, String> {
        let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
        let mut out = HashMap::new();
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                inside = line[1..line.len() - 1].trim() == section;
            } else if inside && !line.starts_with(['#', ';']) {
                if let Some((k, v)) = line.split_once('=') {
                    out.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        out
    }

    fn file(&self, var: &str, name: &str) -> Option<PathBuf> {
        self.var(var).map(PathBuf::from).or_else(|| self.home.as_ref().map(|h| h.join(".aws").join(name)))
    }

    /// Environment, then the shared credentials file's profile.
    pub fn credentials(&self) -> Result<Credentials, Error> {
        if let (Some(k), Some(s)) = (self.var("AWS_ACCESS_KEY_ID"), self.var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(match self.var("AWS_SESSION_TOKEN") {
                Some(t) => Credentials::new_with_token(k, s, t),
                None => Credentials::new(k, s),
            });
        }
        let file = self.file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        if let Some(f) = &file {
            let sec = AwsEnv::ini_section(f, self.profile());
            if let (Some(k), Some(s)) = (sec.get("aws_access_key_id"), sec.get("aws_secret_access_key")) {
                return Ok(match sec.get("aws_session_token") {
                    Some(t) => Credentials::new_with_token(k, s, t),
                    None => Credentials::new(k, s),
                });
            }
        }
        Err(Error::Config(format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile [{}] in {}",
            self.profile(),
            file.map(|f| f.display().to_string()).unwrap_or_else(|| "~/.aws/credentials".into())
        )))
    }

    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, the config file's profile, or us-east-1.
    pub fn region(&self) -> String {
        if let Some(r) = self.var("AWS_REGION").or_else(|| self.var("AWS_DEFAULT_REGION")) {
            return r.to_string();
        }
        let section = match self.profile() {
            "default" => "default".to_string(),
            p => format!("profile {p}"),
        };
        self.file("AWS_CONFIG_FILE", "config")
            .and_then(|f| AwsEnv::ini_section(&f, &section).remove("region"))
            .unwrap_or_else(|| "us-east-1".to_string())
    }

    fn endpoint(&self) -> Option<&str> {
        self.var("AWS_ENDPOINT_URL_S3").or_else(|| self.var("AWS_ENDPOINT_URL"))
    }
}

/// One HTTP client for one bucket.
struct Client {
    bucket: Bucket,
    creds: Credentials,
    agent: ureq::Agent,
    prefix: String,
}

/// What a HEAD of an object said.
struct Head {
    len: u64,
    digest: Option<String>,
    content_type: Option<String>,
}

impl Client {
    fn new(cfg: &Config, env: &AwsEnv) -> Result<Client, Error> {
        let region = env.region();
        let endpoint = match cfg.endpoint.as_deref().or_else(|| env.endpoint()) {
            Some(e) => e.to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let url: url::Url = endpoint.parse().map_err(|e| Error::Config(format!("endpoint {endpoint}: {e}")))?;
        let ip_host = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        let style = if cfg.path_style.unwrap_or(ip_host) { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(url, style, cfg.target.bucket.clone(), region)
            .map_err(|e| Error::Config(format!("endpoint {endpoint}: {e}")))?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .build();
        Ok(Client { bucket, creds: env.credentials()?, agent, prefix: cfg.target.prefix.clone() })
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// Sends a signed request; `headers` were signed with it.
    fn call(
        &self,
        what: &str,
        method: &str,
        url: url::Url,
        headers: &[(&str, String)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> Result<ureq::Response, Error> {
        let mut req = self.agent.request_url(method, &url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let res = match body {
            Some((r, len)) => req.set("Content-Length", &len.to_string()).send(r),
            None if method == "PUT" || method == "POST" => req.set("Content-Length", "0").call(),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => {
                let body = r.into_string().unwrap_or_default();
                Err(Error::Status { what: what.to_string(), status, body: body.chars().take(400).collect() })
            }
            Err(ureq::Error::Transport(t)) => Err(Error::Transport { what: what.to_string(), source: Box::new(t) }),
        }
    }

    fn head(&self, key: &str) -> Result<Option<Head>, Error> {
        let url = self.bucket.head_object(Some(&self.creds), key).sign(SIGN_FOR);
        match self.call(&format!("HEAD {key}"), "HEAD", url, &[], None) {
            Ok(r) => Ok(Some(Head {
                len: r.header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0),
                digest: r.header(META_DIGEST).map(str::to_string),
                content_type: r.header("Content-Type").map(str::to_string),
            })),
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let url = self.bucket.get_object(Some(&self.creds), key).sign(SIGN_FOR);
        match self.call(&format!("GET {key}"), "GET", url, &[], None) {
            Ok(r) => {
                let mut out = Vec::new();
                r.into_reader()
                    .take(16 << 20)
                    .read_to_end(&mut out)
                    .map_err(|source| Error::Io { what: format!("GET {key}"), source })?;
                Ok(Some(out))
            }
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &str) {
        let url = self.bucket.delete_object(Some(&self.creds), key).sign(SIGN_FOR);
        if let Err(e) = self.call(&format!("DELETE {key}"), "DELETE", url, &[], None) {
            log::error!("could not delete {key} again: {e}");
        }
    }

    /// PUT of a small object with its content type and digest; skipped (false) when
    /// the bucket has it with the same digest and type.
    fn put_small(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<bool, Error> {
        let digest = Digest::of(bytes).to_string();
        if let Some(h) = self.head(key)? {
            if h.digest.as_deref() == Some(digest.as_str()) && h.content_type.as_deref() == Some(content_type) {
                return Ok(false);
            }
        }
        let mut action = self.bucket.put_object(Some(&self.creds), key);
        action.headers_mut().insert("content-type", content_type.to_string());
        action.headers_mut().insert(META_DIGEST, digest.clone());
        let url = action.sign(SIGN_FOR);
        let headers = [("Content-Type", content_type.to_string()), (META_DIGEST, digest)];
        let mut r: &[u8] = bytes;
        self.call(&format!("PUT {key}"), "PUT", url, &headers, Some((&mut r, bytes.len() as u64)))?;
        Ok(true)
    }

    /// Creates the bucket if it does not exist.
    fn ensure_bucket(&self) -> Result<(), Error> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGN_FOR);
        let name = self.bucket.name().to_string();
        match self.call(&format!("HEAD bucket {name}"), "HEAD", url, &[], None) {
            Ok(_) => Ok(()),
            Err(Error::Status { status: 404, .. }) => {
                let url = self.bucket.create_bucket(&self.creds).sign(SIGN_FOR);
                let region = self.bucket.region();
                let body = if region == "us-east-1" {
                    String::new()
                } else {
                    format!(
                        "<CreateBucketConfiguration><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
                    )
                };
                let mut r = body.as_bytes();
                self.call(&format!("creating bucket {name}"), "PUT", url, &[], Some((&mut r, body.len() as u64)))?;
                eprintln!("created bucket {name}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Anyone may read objects (and list the bucket, so a missing key is a 404, not a 403).
    fn make_public(&self) -> Result<bool, Error> {
        let b = self.bucket.name();
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "CstorFsPublicRead", "Effect": "Allow", "Principal": "*",
                 "Action": ["s3:GetObject"], "Resource": [format!("arn:aws:s3:::{b}/*")]},
                {"Sid": "CstorFsPublicList", "Effect": "Allow", "Principal": "*",
                 "Action": ["s3:ListBucket"], "Resource": [format!("arn:aws:s3:::{b}")]}
            ]
        });
        let current = rusty_s3::actions::GetBucketPolicy::new(&self.bucket, Some(&self.creds)).sign(SIGN_FOR);
        if let Ok(r) = self.call("GET bucket policy", "GET", current, &[], None) {
            let text = r.into_string().unwrap_or_default();
            if serde_json::from_str::<serde_json::Value>(&text).ok().as_ref() == Some(&policy) {
                return Ok(false);
            }
        }
        // PutBucketPolicy is CreateBucket's PUT on the bucket with `?policy`.
        let mut a = self.bucket.create_bucket(&self.creds);
        a.query_mut().insert("policy", "");
        let url = a.sign(SIGN_FOR);
        let body = policy.to_string();
        let mut r = body.as_bytes();
        self.call("setting the public-read bucket policy", "PUT", url, &[], Some((&mut r, body.len() as u64)))?;
        Ok(true)
    }
}

/// Reads a blob sequentially from its source, hashing what it returns.
struct BlobStream<'a> {
    source: Source<'a>,
    off: u64,
    size: u64,
    hash: sha2::Sha256,
}

enum Source<'a> {
    Bytes(&'a [u8]),
    Layer(BlobReader),
}

impl Read for BlobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.size - self.off) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = match &self.source {
            Source::Bytes(b) => {
                let start = self.off as usize;
                buf[..want].copy_from_slice(&b[start..start + want]);
                want
            }
            Source::Layer(r) => r.read_at(self.off, &mut buf[..want])?,
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob ended before its size"));
        }
        self.hash.update(&buf[..n]);
        self.off += n as u64;
        Ok(n)
    }
}

/// Bytes and objects moved by a publish.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub skipped: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.uploaded += o.uploaded;
        self.uploaded_bytes += o.uploaded_bytes;
        self.skipped += o.skipped;
    }
    fn one(uploaded: bool, bytes: u64) -> Counts {
        if uploaded {
            Counts { uploaded: 1, uploaded_bytes: bytes, skipped: 0 }
        } else {
            Counts { skipped: 1, ..Counts::default() }
        }
    }
}

struct Publisher<'a> {
    client: Client,
    live: &'a Live,
    view: &'a View,
    cfg: &'a Config,
}

impl Publisher<'_> {
    /// Uploads one blob under `repo` unless the bucket has it (same key and size).
    fn blob(&self, repo: &str, digest: &Digest) -> Result<Counts, Error> {
        let reg = &self.view.registry;
        let blob = &reg.blobs[digest];
        let key = self.client.key(&format!("v2/{repo}/blobs/{digest}"));
        if let Some(h) = self.client.head(&key)? {
            if h.len == blob.size {
                return Ok(Counts::one(false, 0));
            }
        }
        let source = match &blob.source {
            BlobSource::Bytes(b) => Source::Bytes(b),
            BlobSource::Layer(id) => Source::Layer(BlobReader::new(
                self.live
                    .open_layer(self.view, id)
                    .map_err(|source| Error::Io { what: format!("opening layer {id} for {digest}"), source })?,
            )),
            // publish builds its view without a compressor, so this never occurs.
            BlobSource::Compressed { .. } => return Err(Error::Compressed(*digest)),
        };
        let mut s = BlobStream { source, off: 0, size: blob.size, hash: sha2::Sha256::new() };
        let c = &self.client;
        if blob.size <= self.cfg.part_size {
            let mut a = c.bucket.put_object(Some(&c.creds), &key);
            a.headers_mut().insert("content-type", "application/octet-stream");
            let url = a.sign(SIGN_FOR);
            let headers = [("Content-Type", "application/octet-stream".to_string())];
            let r = c.call(&format!("PUT {key}"), "PUT", url, &headers, Some((&mut s, blob.size)));
            let got = Digest::from_sha256(s.hash.finalize().into());
            if r.is_err() || got != *digest || s.off != blob.size {
                c.delete(&key);
                r?;
                return Err(Error::Mismatch { key, got });
            }
            return Ok(Counts::one(true, blob.size));
        }
        // Multipart: parts in order from one stream, so the hash covers the whole blob
        // before the upload is completed.
        let mut a = c.bucket.create_multipart_upload(Some(&c.creds), &key);
        a.headers_mut().insert("content-type", "application/octet-stream");
        let url = a.sign(SIGN_FOR);
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        let resp = c.call(&format!("starting a multipart upload of {key}"), "POST", url, &headers, None)?;
        let text = resp.into_string().map_err(|source| Error::Io { what: format!("POST {key}"), source })?;
        let created = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| Error::Config(format!("{key}: bad CreateMultipartUpload answer: {e}")))?;
        let upload_id = created.upload_id().to_string();
        let abort = || {
            let url = c.bucket.abort_multipart_upload(Some(&c.creds), &key, &upload_id).sign(SIGN_FOR);
            if let Err(e) = c.call(&format!("aborting the upload of {key}"), "DELETE", url, &[], None) {
                log::error!("{e}");
            }
        };
        let mut etags = Vec::new();
        let mut part = 1u16;
        while s.off < blob.size {
            let len = self.cfg.part_size.min(blob.size - s.off);
            let url = c.bucket.upload_part(Some(&c.creds), &key, part, &upload_id).sign(SIGN_FOR);
            let what = format!("PUT {key} part {part}");
            let before = s.off;
            let r = c.call(&what, "PUT", url, &[], Some((&mut Read::by_ref(&mut s).take(len), len)));
            let r = match r {
                Ok(r) if s.off == before + len => r,
                Ok(_) => {
                    abort();
                    return Err(Error::Io { what, source: io::ErrorKind::UnexpectedEof.into() });
                }
                Err(e) => {
                    abort();
                    return Err(e);
                }
            };
            let Some(etag) = r.header("ETag").map(str::to_string) else {
                abort();
                return Err(Error::Config(format!("{what}: the answer has no ETag")));
            };
            etags.push(etag);
            part = part
                .checked_add(1)
                .filter(|p| *p <= 10_000)
                .ok_or_else(|| Error::Config(format!("{key}: more than 10000 parts: raise --part-size")))?;
        }
        let got = Digest::from_sha256(s.hash.clone().finalize().into());
        if got != *digest {
            abort();
            return Err(Error::Mismatch { key, got });
        }
        let complete =
            c.bucket.complete_multipart_upload(Some(&c.creds), &key, &upload_id, etags.iter().map(String::as_str));
        let url = complete.sign(SIGN_FOR);
        let body = complete.body();
        let mut r = body.as_bytes();
        if let Err(e) =
            c.call(&format!("completing the upload of {key}"), "POST", url, &[], Some((&mut r, body.len() as u64)))
        {
            abort();
            return Err(e);
        }
        Ok(Counts::one(true, blob.size))
    }

    /// Blobs in parallel (`cfg.jobs` at a time); the first error stops the others.
    fn blobs(&self, repo: &str, digests: &[Digest]) -> Result<Counts, Error> {
        let queue = Mutex::new(digests.iter().collect::<VecDeque<_>>());
        let total = Mutex::new(Ok(Counts::default()));
        std::thread::scope(|s| {
            for _ in 0..self.cfg.jobs.clamp(1, 64).min(digests.len().max(1)) {
                s.spawn(|| loop {
                    if total.lock().unwrap_or_else(|p| p.into_inner()).is_err() {
                        return;
                    }
                    let Some(d) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return };
                    let r = self.blob(repo, d);
                    let mut t = total.lock().unwrap_or_else(|p| p.into_inner());
                    match (r, t.as_mut()) {
                        (Ok(c), Ok(sum)) => sum.add(c),
                        (Err(e), Ok(_)) => *t = Err(e),
                        (_, Err(_)) => {}
                    }
                });
            }
        });
        total.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// (repo, tag) pairs named by `images` (`repo:tag` or `repo`), or every tag outside the
/// `untagged` repository.
pub fn select(reg: &Registry, images: &[String]) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    if images.is_empty() {
        for (name, repo) in &reg.repos {
            if name != "untagged" {
                out.extend(repo.tags.keys().map(|t| (name.clone(), t.clone())));
            }
        }
        return Ok(out);
    }
    for want in images {
        let before = out.len();
        for (name, repo) in &reg.repos {
            for tag in repo.tags.keys() {
                if *want == format!("{name}:{tag}") || want == name {
                    out.push((name.clone(), tag.clone()));
                }
            }
        }
        if out.len() == before {
            return Err(Error::NoSuchImage(want.clone()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Publishes `images` (as [`select`]ed) of `live`'s current view to `cfg.target`. One line
/// per image goes to `progress`. Returns what was uploaded and skipped.
pub fn publish(
    live: &Live,
    images: &[String],
    cfg: &Config,
    env: &AwsEnv,
    mut progress: impl FnMut(&str),
) -> Result<Counts, Error> {
    let view = live.view();
    let reg = &view.registry;
    let selected = select(reg, images)?;
    if cfg.part_size < MIN_PART {
        return Err(Error::Config(format!("--part-size must be at least {} MiB", MIN_PART >> 20)));
    }
    let client = Client::new(cfg, env)?;
    client.ensure_bucket()?;
    let p = Publisher { client, live, view: &view, cfg };
    let mut total = Counts::default();
    if cfg.public && p.client.make_public()? {
        progress(&format!("s3://{}: public-read bucket policy set", cfg.target.bucket));
    }
    total.add(Counts::one(p.client.put_small(&p.client.key("v2/"), b"{}", "application/json")?, 2));

    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (repo, tag) in &selected {
        let started = Instant::now();
        let top = reg.repos[repo].tags[tag];
        // The manifest and, for an index, its children (children first: an index is
        // only uploaded once everything it names is there).
        let mut manifests = vec![top];
        if reg.manifests[&top].media_type.is_index() {
            manifests.splice(0..0, reg.manifests[&top].refs.iter().copied());
        }
        let mut blobs: Vec<Digest> = manifests
            .iter()
            .filter(|d| !reg.manifests[*d].media_type.is_index())
            .flat_map(|d| reg.manifests[d].refs.iter().copied())
            .collect();
        blobs.sort();
        blobs.dedup();
        let mut c = p.blobs(repo, &blobs)?;
        for d in &manifests {
            let m = &reg.manifests[d];
            let key = p.client.key(&format!("v2/{repo}/manifests/{d}"));
            c.add(Counts::one(p.client.put_small(&key, &m.bytes, m.media_type.as_str())?, m.bytes.len() as u64));
        }
        let m = &reg.manifests[&top];
        let key = p.client.key(&format!("v2/{repo}/manifests/{tag}"));
        c.add(Counts::one(p.client.put_small(&key, &m.bytes, m.media_type.as_str())?, m.bytes.len() as u64));
        tags.entry(repo.as_str()).or_default().insert(tag.as_str());
        progress(&format!(
            "{repo}:{tag} {top}: {} blobs and {} manifests, {} uploaded ({:.1} MiB), {} already there, {:.1}s",
            blobs.len(),
            manifests.len(),
            c.uploaded,
            c.uploaded_bytes as f64 / (1u64 << 20) as f64,
            c.skipped,
            started.elapsed().as_secs_f64()
        ));
        total.add(c);
    }
    // tags/list: the tags published now plus those published before.
    for (repo, new) in tags {
        let key = p.client.key(&format!("v2/{repo}/tags/list"));
        let mut all: BTreeSet<String> = new.iter().map(|t| t.to_string()).collect();
        if let Some(old) = p.client.get(&key)? {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&old) {
                all.extend(v["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)));
            }
        }
        let body = serde_json::to_vec(&serde_json::json!({"name": repo, "tags": all})).unwrap_or_default();
        total.add(Counts::one(p.client.put_small(&key, &body, "application/json")?, body.len() as u64));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_target(s: &str) -> Result<Target, Error> {
        s.parse()
    }

    #[test]
    fn targets_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_target("s3://my-bucket").unwrap(), Target { bucket: "my-bucket".into(), prefix: "".into() });
        assert_eq!(parse_target("s3://b12/x/y/").unwrap().prefix, "x/y/");
        for bad in ["my-bucket", "s3://", "s3://AB", "s3://-ab", "s3://ab_c", "s3://abc/../x", "http://abc"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_and_region_come_from_env_then_files() {
        let dir = std::env::temp_dir().join(format!("cstor-publish-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".aws")).unwrap();
        std::fs::write(
            dir.join(".aws/credentials"),
            "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n[other]\naws_access_key_id=OK\naws_secret_access_key=OS\naws_session_token=OT\n",
        )
        .unwrap();
        std::fs::write(dir.join(".aws/config"), "[default]\nregion = eu-west-3\n[profile other]\nregion=ap-south-1\n")
            .unwrap();
        let mut env = AwsEnv { vars: HashMap::new(), home: Some(dir.clone()) };
        let c = env.credentials().unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("AK", "SK", None));
        assert_eq!(env.region(), "eu-west-3");
        env.vars.insert("AWS_PROFILE".into(), "other".into());
        let c = env.credentials().unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("OK", "OS", Some("OT")));
        assert_eq!(env.region(), "ap-south-1");
        env.vars.insert("AWS_ACCESS_KEY_ID".into(), "EK".into());
        env.vars.insert("AWS_SECRET_ACCESS_KEY".into(), "ES".into());
        env.vars.insert("AWS_REGION".into(), "us-west-2".into());
        assert_eq!(env.credentials().unwrap().key(), "EK");
        assert_eq!(env.region(), "us-west-2");
        let none = AwsEnv { vars: HashMap::new(), home: Some(dir.join("nothing")) };
        assert!(none.credentials().is_err());
        assert_eq!(none.region(), "us-east-1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
