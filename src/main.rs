//! The `cstor-fs` command: mount (the default), `list`, `verify`, `serve` and `publish`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sha2::Digest as _;

use cstor_fs::compress::{self, Compressor};
use cstor_fs::fs::{MountConfig, MountOptions};
use cstor_fs::live::{Live, DEFAULT_INDEX_BUDGET};
use cstor_fs::registry::compressed as compress_codec;
use cstor_fs::registry::{BlobSource, Registry};
use cstor_fs::store::{self, config, Store};
use cstor_fs::tarsplit::BlobReader;
use cstor_fs::{userns, Digest, Id};

/// Serve containers-storage, read-only, as a registry-shaped FUSE tree.
///
/// Mount: cstor-fs [OPTIONS] [STORE] MOUNTPOINT [-o OPT[,OPT...]]
///
/// STORE defaults to the graphroot podman would use. Mount options: allow_other,
/// allow_root, auto_unmount, storage=DIR, driver=overlay|vfs, uid=N, gid=N,
/// file_mode=0444, dir_mode=0555, fsname=NAME, userns=auto|require|off (a rootless
/// store is read inside podman's user namespace), compress=zstd|gzip[:LEVEL], cache=DIR,
/// cache_size=SIZE (compressed delivery, cached); generic ones that mount(8) passes
/// (rw, ro, nodev, nosuid, noauto, nofail, _netdev, x-systemd.*, ...) are accepted.
/// Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`.
#[derive(Parser, Debug)]
#[command(
    name = "cstor-fs",
    version,
    args_conflicts_with_subcommands = true,
    verbatim_doc_comment,
    override_usage = "cstor-fs [OPTIONS] [STORE] MOUNTPOINT [-o OPT[,OPT...]]\n       cstor-fs <COMMAND> [OPTIONS]"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    mount: MountArgs,
}

#[derive(Args, Debug)]
struct MountArgs {
    /// [STORE] MOUNTPOINT
    #[arg(value_name = "PATH", num_args = 0..=2)]
    paths: Vec<PathBuf>,
    /// Mount options, comma-separated (may be repeated).
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    options: Vec<String>,
    /// Stay in the foreground (for systemd); otherwise detach once the mount is live.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// How often to look for store changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// The store's graphroot (default: as podman would use).
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// Storage driver (default: from storage.conf, or probed).
    #[arg(long, value_name = "overlay|vfs")]
    driver: Option<String>,
    /// Read a rootless store inside its user namespace (as `podman unshare` does):
    /// auto (for a store this non-root user owns), require, or off.
    #[arg(long, value_name = "auto|require|off", default_value = "auto")]
    userns: userns::Policy,
}

/// Compressed delivery (off unless --compress is given).
#[derive(Args, Debug, Clone, Default)]
struct CompressArgs {
    /// Serve compressed layers: zstd or gzip, optionally with a level (zstd:19, gzip:9).
    /// Docker-format images always get gzip. Built in the background and cached.
    #[arg(long, value_name = "zstd|gzip[:LEVEL]")]
    compress: Option<compress::Spec>,
    /// Cache of compressed blobs (default: /var/cache/cstor-fs for root,
    /// $XDG_CACHE_HOME/cstor-fs otherwise); shared by every mount.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Size limit of the cache (K, M, G, T suffixes); least recently used entries go first.
    #[arg(long, value_name = "SIZE", value_parser = compress::parse_size)]
    cache_size: Option<u64>,
}

impl CompressArgs {
    fn settings(&self) -> Option<compress::Settings> {
        let spec = self.compress?;
        let dir = self.cache.clone().unwrap_or_else(compress::default_cache_dir);
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Some(compress::Settings { spec, dir, max_bytes: self.cache_size.unwrap_or(compress::DEFAULT_CACHE_SIZE) })
    }
}

/// Turns compressed delivery on for `live` if asked for.
fn attach_compressor(live: &Arc<Live>, args: &CompressArgs) -> Result<Option<Arc<Compressor>>> {
    let Some(settings) = args.settings() else { return Ok(None) };
    let store = live.store();
    let dirs: Vec<PathBuf> = store.origins().into_iter().map(|o| store.root(o).to_path_buf()).collect();
    let c = Arc::new(Compressor::new(settings, &dirs).map_err(anyhow::Error::msg)?);
    live.set_compressor(c.clone());
    Ok(Some(c))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print repositories, tags, manifests and blobs, and what was left out and why.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        compress: CompressArgs,
    },
    /// Mount the store privately and serve it with nginx (or Caddy) as a registry.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        compress: CompressArgs,
        /// Address to listen on; serving beyond localhost is an explicit choice (needs
        /// --tls, --tls-cert or --insecure-http).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        net: NetArgs,
        /// HTTP server to run.
        #[arg(long, value_enum, default_value_t = ServerArg::Nginx)]
        server: ServerArg,
        /// Where to put the mount and the server's files (default: /run/cstor-fs/serve-PID
        /// for root, $XDG_RUNTIME_DIR/cstor-fs/serve-PID otherwise).
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
    },
    /// Upload what a pull needs to S3-compatible object storage (a static registry).
    ///
    /// Objects go under v2/ in the bucket (blobs, manifests by digest and tag, tags/list, v2/),
    /// so that the bucket's (virtual-host) URL, or a CDN in front of it, serves pulls.
    /// Objects already there are skipped. Credentials and region as the AWS tools take them:
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_SESSION_TOKEN], AWS_PROFILE,
    /// ~/.aws/credentials, AWS_REGION, ~/.aws/config, AWS_ENDPOINT_URL[_S3].
    #[command(verbatim_doc_comment)]
    Publish {
        #[command(flatten)]
        store: StoreArgs,
        /// s3://BUCKET[/PREFIX] (created if missing).
        #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
        to: String,
        /// S3 endpoint URL (default: AWS's for the region).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Path-style requests (ENDPOINT/BUCKET/KEY); default for IP-address endpoints.
        #[arg(long)]
        path_style: bool,
        /// Let anyone read (and list) the bucket: sets a bucket policy.
        #[arg(long)]
        public: bool,
        /// Blobs uploaded at a time.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Blobs above this many MiB go up in multipart uploads with parts of this size.
        #[arg(long, value_name = "MiB", default_value_t = 64)]
        part_size: u64,
        /// Names (repo:tag or repo); default: every tagged image.
        images: Vec<String>,
    },
    /// Stream every served blob and manifest and check it hashes to its digest.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        compress: CompressArgs,
        /// Names (repo:tag, repo), image ids or id prefixes; default: everything.
        images: Vec<String>,
    },
}

/// `serve`'s TLS and authentication flags.
#[derive(Args, Debug, Clone)]
struct NetArgs {
    /// Serve HTTPS with a CA and server certificate made once and kept in --state-dir
    /// (clients trust the CA; serve prints how).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls: bool,
    /// Serve HTTPS with this PEM certificate (chain).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where --tls keeps its CA and certificate (default: /var/lib/cstor-fs for root,
    /// $XDG_STATE_HOME/cstor-fs otherwise).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Require HTTP Basic authentication by the users of this file (bcrypt entries, as
    /// `htpasswd -B` writes them).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback --listen address.
    #[arg(long)]
    insecure_http: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ServerArg {
    Nginx,
    Caddy,
}

fn open_live(storage: Option<PathBuf>, driver: Option<&str>) -> Result<Arc<Live>> {
    let req = config::Request { graphroot: storage, driver: driver.map(str::parse).transpose()? };
    let (location, others) = config::resolve_all(&req, &config::Env::from_process())?;
    let store = Store::open(location.clone())
        .with_context(|| format!("opening {} store at {}", location.driver, location.graphroot.display()))?
        .with_image_stores(others);
    Ok(Arc::new(Live::new(store, DEFAULT_INDEX_BUDGET)?))
}

/// What `policy` asks for the store at `graphroot`. A missing piece is an error under
/// `require` and a logged error under `auto` (files the user can read are still served).
fn userns_plan(policy: userns::Policy, graphroot: &std::path::Path) -> Result<Option<userns::Plan>> {
    match userns::plan(policy, graphroot) {
        Ok(p) => Ok(p),
        Err(e) if policy == userns::Policy::Require => Err(e.into()),
        Err(e) => {
            log::error!(
                "cannot read {} as its user namespace: {e}; files this user cannot read will fail with EIO",
                graphroot.display()
            );
            Ok(None)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,fuser=warn")).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::List { store, compress }) => list(store, &compress),
        Some(Cmd::Verify { store, compress, images }) => verify(store, &compress, &images),
        Some(Cmd::Publish { store, to, endpoint, path_style, public, jobs, part_size, images }) => {
            let target = to.parse::<cstor_fs::publish::Target>();
            target.map_err(anyhow::Error::from).and_then(|target| {
                let cfg = cstor_fs::publish::Config {
                    target,
                    endpoint,
                    path_style: path_style.then_some(true),
                    public,
                    jobs,
                    part_size: part_size.saturating_mul(1 << 20),
                };
                publish(store, &images, &cfg)
            })
        }
        Some(Cmd::Serve { store, compress, listen, net, server, runtime_dir }) => {
            serve(store, &compress, listen, net, server, runtime_dir)
        }
        None => mount(cli.mount),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cstor-fs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mount(args: MountArgs) -> Result<ExitCode> {
    let options = MountOptions::parse(args.options.iter().map(String::as_str)).map_err(anyhow::Error::msg)?;
    let (storage, mountpoint) = match args.paths.as_slice() {
        [m] => (options.storage.clone(), m.clone()),
        [s, m] => {
            if options.storage.is_some() {
                bail!("the store is given twice (STORE and -o storage=)");
            }
            (Some(s.clone()), m.clone())
        }
        _ => bail!("usage: cstor-fs [OPTIONS] [STORE] MOUNTPOINT [-o OPT,...] (see --help)"),
    };
    let live = open_live(storage, options.driver.as_deref())?;
    let compress =
        CompressArgs { compress: options.compress, cache: options.cache.clone(), cache_size: options.cache_size };
    if let Some(c) = attach_compressor(&live, &compress)? {
        let s = c.settings();
        log::info!("compressed delivery: {} into {} (at most {} bytes)", s.spec, s.dir.display(), s.max_bytes);
    }
    let fsname = live.store().location().graphroot.display().to_string();
    let userns = userns_plan(options.userns, &live.store().location().graphroot)?;
    let view = live.view();
    for w in view.snapshot.warnings.iter().map(ToString::to_string).chain(view.registry.warnings.iter().cloned()) {
        log::warn!("{w}");
    }
    for x in &view.registry.excluded {
        log::warn!("left out {}: {}", x.image, x.reason);
    }
    let cfg = MountConfig {
        mountpoint,
        options,
        foreground: args.foreground,
        threads: args.threads,
        poll: Duration::from_millis(args.poll_ms.max(10)),
        fsname,
        userns,
    };
    cstor_fs::fs::run(live, cfg, || {})?;
    Ok(ExitCode::SUCCESS)
}

fn serve(
    store: StoreArgs,
    compress: &CompressArgs,
    listen: std::net::SocketAddr,
    net: NetArgs,
    server: ServerArg,
    runtime_dir: Option<PathBuf>,
) -> Result<ExitCode> {
    let tls_asked = net.tls || net.tls_cert.is_some();
    // Before anything else: a refusal must not wait for the store.
    cstor_fs::serve::check_exposure(listen, tls_asked, net.insecure_http)?;
    let htpasswd = net.htpasswd.as_deref().map(cstor_fs::htpasswd::Htpasswd::load).transpose()?;
    if htpasswd.is_some() && !tls_asked && !listen.ip().is_loopback() {
        log::warn!("--htpasswd without TLS on {listen}: passwords cross the network in the clear");
    }
    let made = if net.tls {
        let state = net.state_dir.clone().unwrap_or_else(cstor_fs::tls::default_state_dir);
        Some(cstor_fs::tls::ensure(&state, &cstor_fs::tls::host_names(listen))?)
    } else {
        None
    };
    let tls = match (&made, net.tls_cert, net.tls_key) {
        (Some(m), _, _) => Some(cstor_fs::serve::Tls { cert: m.cert.clone(), key: m.key.clone() }),
        (None, Some(cert), Some(key)) => {
            let abs = |p: PathBuf| std::path::absolute(&p).with_context(|| format!("{}", p.display()));
            let (cert, key) = (abs(cert)?, abs(key)?);
            for p in [&cert, &key] {
                std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
            }
            Some(cstor_fs::serve::Tls { cert, key })
        }
        _ => None,
    };
    // Resolve the store now, so a wrong path fails before anything starts.
    let live = open_live(store.storage.clone(), store.driver.as_deref())?;
    let loc = live.store().location().clone();
    let view = live.view();
    drop(live);
    let tagged =
        || view.registry.repos.iter().filter_map(|(r, repo)| repo.tags.keys().next().map(|t| format!("{r}:{t}")));
    let example = tagged().find(|r| r.starts_with("localhost/")).or_else(|| tagged().next());
    let mut opts = format!("driver={},userns={}", loc.driver.name(), store.userns.name());
    if let Some(s) = compress.settings() {
        let dir = s.dir.to_string_lossy();
        if dir.contains(',') {
            bail!("the cache directory {dir} has a comma, which mount options cannot carry");
        }
        opts.push_str(&format!(",compress={},cache={dir},cache_size={}", s.spec, s.max_bytes));
    }
    let cfg = cstor_fs::serve::ServeConfig {
        mount_args: vec![loc.graphroot.to_string_lossy().to_string(), "-o".into(), opts],
        listen,
        server: match server {
            ServerArg::Nginx => cstor_fs::serve::Server::Nginx,
            ServerArg::Caddy => cstor_fs::serve::Server::Caddy,
        },
        runtime_dir: runtime_dir.unwrap_or_else(cstor_fs::serve::default_runtime_dir),
        tls,
        htpasswd,
        insecure_http: net.insecure_http,
    };
    let secure = cfg.tls.is_some();
    let creds = if cfg.htpasswd.is_some() { " --creds USER:PASSWORD" } else { "" };
    cstor_fs::serve::run(&cfg, |mnt, url| {
        let host = url.trim_start_matches("http://").trim_start_matches("https://");
        // The name clients use: the address, or this host's name for a wildcard one.
        let host = match listen.ip().is_unspecified() {
            true => format!("{}:{}", cstor_fs::tls::hostname().unwrap_or_else(|| "HOST".into()), listen.port()),
            false => host.to_string(),
        };
        println!(
            "cstor-fs: serving {} ({}) at {url} with {server:?}, mounted at {}",
            loc.graphroot.display(),
            loc.driver,
            mnt.display()
        );
        let ex = example.clone().unwrap_or_else(|| "REPO:TAG".into());
        if !secure {
            println!("  catalog:   curl {url}/v2/_catalog");
            println!("  pull:      podman pull --tls-verify=false{creds} {host}/{ex}");
            println!("             skopeo inspect --tls-verify=false{creds} docker://{host}/{ex}");
            println!("  or trust it in /etc/containers/registries.conf.d/cstor-fs.conf:");
            println!("             [[registry]]\n             location = \"{host}\"\n             insecure = true");
        } else if let Some(m) = &made {
            let ca = m.ca.display();
            let url = url.replace(&listen.to_string(), &host);
            println!("  TLS:       certificate for {} from the CA {ca}", m.names.join(", "));
            println!("  catalog:   curl --cacert {ca} {url}/v2/_catalog");
            println!("  trust the CA on each client (as root), then pull with TLS verification on:");
            println!("    podman, skopeo, buildah, bootc (containers/image):");
            println!("             install -D -m 0644 {ca} /etc/containers/certs.d/{host}/ca.crt");
            println!("             podman pull{creds} {host}/{ex}");
            println!("    docker:  install -D -m 0644 {ca} /etc/docker/certs.d/{host}/ca.crt");
            println!("             docker pull {host}/{ex}");
            println!("    containerd (CRI, nerdctl): install -D -m 0644 {ca} /etc/containerd/certs.d/{host}/ca.crt");
            println!("             and /etc/containerd/certs.d/{host}/hosts.toml:");
            println!("               server = \"https://{host}\"");
            println!("               [host.\"https://{host}\"]\n                 ca = \"/etc/containerd/certs.d/{host}/ca.crt\"");
            let user = if creds.is_empty() { "" } else { " --user USER:PASSWORD" };
            println!("    ctr:     ctr images pull --hosts-dir /etc/containerd/certs.d{user} {host}/{ex}");
            println!("             or, for a HOST other than localhost/127.0.0.1 (containerd 1.6 speaks plain");
            println!(
                "             HTTP to those unless hosts.toml says https): ctr images pull --tlscacert {ca}{user} ..."
            );
        } else {
            println!("  catalog:   curl {url}/v2/_catalog");
            println!("  pull:      podman pull{creds} {host}/{ex}");
        }
        if creds.is_empty() {
            println!("  no authentication: anyone who can reach {host} can pull (add --htpasswd FILE)");
        } else {
            println!("  log in:    podman login {host} / docker login {host} (users of the htpasswd file)");
        }
        println!("Ctrl-C stops the server and unmounts.");
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

fn checked_live(store: &StoreArgs, compress: &CompressArgs) -> Result<Arc<Live>> {
    let live = open_live(store.storage.clone(), store.driver.as_deref())?;
    // Payloads are read below (verify), so enter the namespace now, still single-threaded.
    if let Some(plan) = userns_plan(store.userns, &live.store().location().graphroot)? {
        let error = match plan.enter(None) {
            Ok(e) => e.error,
            Err(e) => Some(e),
        };
        if let Some(e) = error {
            if store.userns == userns::Policy::Require {
                return Err(e.into());
            }
            log::error!("{e}: files {} cannot read will fail", plan.user);
        }
    }
    // Full checks first, so size mismatches show as exclusions.
    live.check_unchecked();
    live.refresh()?;
    // What the compression cache holds for what is served (nothing is built here).
    if let Some(c) = attach_compressor(&live, compress)? {
        c.scan(&live.view());
        live.refresh()?;
    }
    Ok(live)
}

fn publish(store: StoreArgs, images: &[String], cfg: &cstor_fs::publish::Config) -> Result<ExitCode> {
    let live = checked_live(&store, &CompressArgs::default())?;
    let env = cstor_fs::publish::AwsEnv::from_process();
    let started = std::time::Instant::now();
    let c = cstor_fs::publish::publish(&live, images, cfg, &env, |line| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    })
    .with_context(|| format!("publishing to s3://{}/{}", cfg.target.bucket, cfg.target.prefix))?;
    println!(
        "published to s3://{}/{}: {} objects uploaded ({:.1} MiB), {} already there, {:.1}s",
        cfg.target.bucket,
        cfg.target.prefix,
        c.uploaded,
        c.uploaded_bytes as f64 / (1u64 << 20) as f64,
        c.skipped,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(store: StoreArgs, compress: &CompressArgs) -> Result<ExitCode> {
    let live = checked_live(&store, compress)?;
    let wanted: Vec<(Digest, compress_codec::Codec)> = match live.compressor() {
        Some(c) => compress_codec::wanted(&live.view().registry, c.settings().spec.codec),
        None => Vec::new(),
    };
    let view = live.view();
    let reg = &view.registry;
    let mut out = std::io::stdout().lock();
    let loc = live.store().location();
    writeln!(out, "store {} ({})", loc.graphroot.display(), store::Driver::name(loc.driver))?;
    for (name, repo) in &reg.repos {
        writeln!(out, "\n{name}")?;
        for (tag, d) in &repo.tags {
            writeln!(out, "  tag {tag} -> {d}")?;
        }
        for d in &repo.manifests {
            let m = &reg.manifests[d];
            let how = if m.verbatim { "verbatim" } else { "rewritten" };
            writeln!(
                out,
                "  manifest {d} {} {} bytes, {how}, image {}",
                m.media_type.as_str(),
                m.bytes.len(),
                m.image.short()
            )?;
        }
        for d in &repo.blobs {
            let b = &reg.blobs[d];
            let mut what = match &b.source {
                BlobSource::Bytes(_) => "config".to_string(),
                BlobSource::Layer(id) => format!("layer {}", id.short()),
                BlobSource::Compressed { layer, diff, codec } => {
                    format!("{} of layer {} ({diff})", codec.name(), layer.short())
                }
            };
            if let (Some(c), BlobSource::Layer(_)) = (live.compressor(), &b.source) {
                for (_, codec) in wanted.iter().filter(|(w, _)| w == d) {
                    match c.status(d, *codec) {
                        compress::Status::Ready(r) => {
                            what.push_str(&format!(", {}: {} bytes, ready", codec.name(), r.size))
                        }
                        compress::Status::NotBuilt => what.push_str(&format!(", {}: not built", codec.name())),
                    }
                }
            }
            writeln!(out, "  blob {d} {} bytes, {what}", b.size)?;
        }
    }
    if !reg.excluded.is_empty() {
        writeln!(out, "\nleft out:")?;
        for x in &reg.excluded {
            writeln!(out, "  {}: {}", x.image, x.reason)?;
        }
    }
    // Every image read, by store: what `podman images --all` shows, and what it serves as.
    let served: BTreeMap<&Id, Vec<&Digest>> = reg.manifests.iter().fold(BTreeMap::new(), |mut m, (d, man)| {
        m.entry(&man.image).or_default().push(d);
        m
    });
    writeln!(out, "\nimages:")?;
    for origin in live.store().origins() {
        let imgs: Vec<_> = view.snapshot.images.iter().filter(|i| i.origin == origin).collect();
        if imgs.is_empty() {
            continue;
        }
        writeln!(out, "  from {}", live.store().describe(origin))?;
        for img in imgs {
            let digests = served.get(&img.id).map(|ds| ds.iter().map(ToString::to_string).collect::<Vec<_>>());
            let names = if img.names.is_empty() { "<none>".to_string() } else { img.names.join(" ") };
            writeln!(out, "    {} {names} served as {}", img.id, digests.map_or("-".to_string(), |d| d.join(" ")))?;
        }
    }
    let warnings: Vec<String> =
        view.snapshot.warnings.iter().map(ToString::to_string).chain(reg.warnings.iter().cloned()).collect();
    if !warnings.is_empty() {
        writeln!(out, "\nwarnings:")?;
        for w in warnings {
            writeln!(out, "  {w}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The manifests (and so blobs) selected by `images`, or all.
fn selected(reg: &Registry, images: &[String]) -> Result<Vec<Digest>> {
    if images.is_empty() {
        let mut all: Vec<Digest> = reg.manifests.keys().copied().collect();
        all.sort();
        return Ok(all);
    }
    let mut out = Vec::new();
    for want in images {
        let before = out.len();
        for (name, repo) in &reg.repos {
            for (tag, d) in &repo.tags {
                if *want == format!("{name}:{tag}") || *want == *name {
                    out.push(*d);
                }
            }
        }
        if want.len() >= 12 && want.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.extend(reg.manifests.values().filter(|m| m.image.hex().starts_with(want.as_str())).map(|m| m.digest));
        }
        if out.len() == before {
            bail!("{want}: no such image is served (see `cstor-fs list`)");
        }
    }
    // Children of indexes.
    let mut i = 0;
    while i < out.len() {
        let m = &reg.manifests[&out[i]];
        if m.media_type.is_index() {
            out.extend(m.refs.iter().copied());
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn verify(store: StoreArgs, compress: &CompressArgs, images: &[String]) -> Result<ExitCode> {
    let live = checked_live(&store, compress)?;
    let view = live.view();
    let reg = &view.registry;
    let manifests = selected(reg, images)?;
    let mut blobs: Vec<Digest> = Vec::new();
    let (mut ok, mut bad) = (0usize, 0usize);
    let mut out = std::io::stdout().lock();
    for d in &manifests {
        let m = &reg.manifests[d];
        if Digest::of(&m.bytes) == *d {
            ok += 1;
        } else {
            bad += 1;
            writeln!(out, "FAIL manifest {d}: bytes hash differently")?;
        }
        if !m.media_type.is_index() {
            blobs.extend(m.refs.iter().copied());
        }
    }
    blobs.sort();
    blobs.dedup();
    for d in &blobs {
        let b = &reg.blobs[d];
        let started = std::time::Instant::now();
        let result = match &b.source {
            BlobSource::Bytes(bytes) => Ok((Digest::of(bytes), bytes.len() as u64)),
            // Hashed, and decompressed to the layer's digest.
            BlobSource::Compressed { diff, codec, .. } => match live.compressor() {
                Some(c) => c.verify(diff, *codec).map_err(|e| std::io::Error::other(e.to_string())),
                None => Err(std::io::Error::other("compressed blob without a compressor")),
            },
            BlobSource::Layer(id) => live.open_layer(&view, id).and_then(|blob| {
                let r = BlobReader::new(blob);
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                loop {
                    let n = r.read_at(off, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                Ok((Digest::from_sha256(h.finalize().into()), off))
            }),
        };
        match result {
            Ok((got, size)) if got == *d && size == b.size => {
                ok += 1;
                writeln!(out, "ok   {d} {size} bytes {:.2}s", started.elapsed().as_secs_f64())?;
            }
            Ok((got, size)) => {
                bad += 1;
                writeln!(out, "FAIL {d}: read {size} bytes (expected {}) hashing to {got}", b.size)?;
            }
            Err(e) => {
                bad += 1;
                writeln!(out, "FAIL {d}: {e}")?;
            }
        }
    }
    for x in &reg.excluded {
        writeln!(out, "left out {}: {}", x.image, x.reason)?;
    }
    writeln!(out, "{ok} verified, {bad} failed")?;
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
