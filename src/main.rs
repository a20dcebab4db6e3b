//! The `cstor-fs` command: mount (the default), `list`, `verify` and `serve`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sha2::Digest as _;

use cstor_fs::fs::{MountConfig, MountOptions};
use cstor_fs::live::{Live, DEFAULT_INDEX_BUDGET};
use cstor_fs::registry::{BlobSource, Registry};
use cstor_fs::store::{self, config, Store};
use cstor_fs::tarsplit::BlobReader;
use cstor_fs::{userns, Digest};

/// Serve containers-storage, read-only, as a registry-shaped FUSE tree.
///
/// Mount: cstor-fs [OPTIONS] [STORE] MOUNTPOINT [-o OPT[,OPT...]]
///
/// STORE defaults to the graphroot podman would use. Mount options: allow_other,
/// allow_root, auto_unmount, storage=DIR, driver=overlay|vfs, uid=N, gid=N,
/// file_mode=0444, dir_mode=0555, fsname=NAME, userns=auto|require|off (a rootless
/// store is read inside podman's user namespace); generic ones that mount(8) passes
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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print repositories, tags, manifests and blobs, and what was left out and why.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Mount the store privately and serve it with nginx (or Caddy) as a registry.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on; serving beyond localhost is an explicit choice.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// HTTP server to run.
        #[arg(long, value_enum, default_value_t = ServerArg::Nginx)]
        server: ServerArg,
        /// Where to put the mount and the server's files (default: /run/cstor-fs/serve-PID
        /// for root, $XDG_RUNTIME_DIR/cstor-fs/serve-PID otherwise).
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
    },
    /// Stream every served blob and manifest and check it hashes to its digest.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Names (repo:tag, repo), image ids or id prefixes; default: everything.
        images: Vec<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ServerArg {
    Nginx,
    Caddy,
}

fn open_live(storage: Option<PathBuf>, driver: Option<&str>) -> Result<Arc<Live>> {
    let req = config::Request { graphroot: storage, driver: driver.map(str::parse).transpose()? };
    let location = config::resolve(&req, &config::Env::from_process())?;
    let store = Store::open(location.clone())
        .with_context(|| format!("opening {} store at {}", location.driver, location.graphroot.display()))?;
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
        Some(Cmd::List { store }) => list(store),
        Some(Cmd::Verify { store, images }) => verify(store, &images),
        Some(Cmd::Serve { store, listen, server, runtime_dir }) => serve(store, listen, server, runtime_dir),
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
    listen: std::net::SocketAddr,
    server: ServerArg,
    runtime_dir: Option<PathBuf>,
) -> Result<ExitCode> {
    // Resolve the store now, so a wrong path fails before anything starts.
    let live = open_live(store.storage.clone(), store.driver.as_deref())?;
    let loc = live.store().location().clone();
    let view = live.view();
    drop(live);
    let tagged =
        || view.registry.repos.iter().filter_map(|(r, repo)| repo.tags.keys().next().map(|t| format!("{r}:{t}")));
    let example = tagged().find(|r| r.starts_with("localhost/")).or_else(|| tagged().next());
    let cfg = cstor_fs::serve::ServeConfig {
        mount_args: vec![
            loc.graphroot.to_string_lossy().to_string(),
            "-o".into(),
            format!("driver={},userns={}", loc.driver.name(), store.userns.name()),
        ],
        listen,
        server: match server {
            ServerArg::Nginx => cstor_fs::serve::Server::Nginx,
            ServerArg::Caddy => cstor_fs::serve::Server::Caddy,
        },
        runtime_dir: runtime_dir.unwrap_or_else(cstor_fs::serve::default_runtime_dir),
    };
    cstor_fs::serve::run(&cfg, |mnt, url| {
        let host = url.trim_start_matches("http://");
        println!(
            "cstor-fs: serving {} ({}) at {url} with {server:?}, mounted at {}",
            loc.graphroot.display(),
            loc.driver,
            mnt.display()
        );
        println!("  catalog:   curl {url}/v2/_catalog");
        if let Some(ex) = &example {
            println!("  pull:      podman pull --tls-verify=false {host}/{ex}");
            println!("             skopeo inspect --tls-verify=false docker://{host}/{ex}");
        }
        println!("  or trust it in /etc/containers/registries.conf.d/cstor-fs.conf:");
        println!("             [[registry]]\n             location = \"{host}\"\n             insecure = true");
        println!("Ctrl-C stops the server and unmounts.");
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

fn checked_live(store: &StoreArgs) -> Result<Arc<Live>> {
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
    Ok(live)
}

fn list(store: StoreArgs) -> Result<ExitCode> {
    let live = checked_live(&store)?;
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
            let what = match &b.source {
                BlobSource::Bytes(_) => "config".to_string(),
                BlobSource::Layer(id) => format!("layer {}", id.short()),
            };
            writeln!(out, "  blob {d} {} bytes, {what}", b.size)?;
        }
    }
    if !reg.excluded.is_empty() {
        writeln!(out, "\nleft out:")?;
        for x in &reg.excluded {
            writeln!(out, "  {}: {}", x.image, x.reason)?;
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

fn verify(store: StoreArgs, images: &[String]) -> Result<ExitCode> {
    let live = checked_live(&store)?;
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
