//! sheepfs(8): mount a Sheepdog cluster as a filesystem.

use anyhow::{bail, Context, Result};
use clap::Parser;
use sheepfs::client::{Client, Options, SheepAddr};
use sheepfs::fs::{self, daemon, FsCore, FsOptions, MountConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "sheepfs",
    version,
    about = "Mount a Sheepdog cluster as a filesystem: cluster state files, \
             attach/detach of VDIs, VDIs as files",
    after_help = "Attach a VDI with `echo NAME > MOUNTPOINT/vdi/mount`; it appears \
                  as MOUNTPOINT/volume/NAME. See sheepfs(8)."
)]
struct Args {
    /// Where to mount.
    mountpoint: PathBuf,

    /// Host of the sheep to talk to.
    #[arg(
        short = 'a',
        long = "address",
        value_name = "HOST",
        default_value = "127.0.0.1"
    )]
    address: String,

    /// TCP port of the sheep.
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value_t = 7000,
          value_parser = parse_port)]
    port: u16,

    /// Talk to sheep over its unix socket (STORE_DIR/sock) instead of TCP.
    #[arg(long = "socket", value_name = "PATH", conflicts_with_all = ["address", "port"])]
    socket: Option<PathBuf>,

    /// Debug output (every request); implies --foreground.
    #[arg(short = 'd', long = "debug")]
    debug: bool,

    /// Stay in the foreground and log to stderr.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,

    /// Cache objects in sheepfs (LRU, see --cache-size) and use the kernel
    /// page cache for volume files.
    #[arg(short = 'k', long = "pagecache")]
    pagecache: bool,

    /// Use sheep's object cache: CMD_CACHE on I/O, FLUSH_VDI on fsync.
    #[arg(short = 'o', long = "objectcache")]
    objectcache: bool,

    /// Memory budget of the -k object cache (K/M/G suffixes).
    #[arg(long = "cache-size", value_name = "SIZE", default_value = "256M",
          value_parser = parse_cache_size)]
    cache_size: u64,

    /// Attach every VDI read-only (no VDI lock is taken).
    #[arg(long = "read-only")]
    read_only: bool,

    /// Let other users access the mount (FUSE allow_other).
    #[arg(long = "allow-other")]
    allow_other: bool,

    /// Seconds a request may wait for a dead or restarting sheep (retrying
    /// with backoff) before it fails with EIO.
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,

    /// Threads reading FUSE requests.
    #[arg(long = "fuse-threads", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    fuse_threads: u16,
}

fn parse_port(s: &str) -> Result<u16, String> {
    sheepfs::client::parse_port(s).ok_or_else(|| format!("invalid port '{s}' (1..65535)"))
}

fn parse_cache_size(s: &str) -> Result<u64, String> {
    let n = sheepfs::util::parse_size(s)?;
    if n < (1 << 20) {
        return Err(format!("'{s}' is too small (at least 1M)"));
    }
    Ok(n)
}

fn main() {
    let args = Args::parse();
    // Paths must be absolute before the daemon changes to /.
    let mnt = match check_mountpoint(&args.mountpoint) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sheepfs: {e:#}");
            std::process::exit(1);
        }
    };
    let addr = match &args.socket {
        Some(p) => SheepAddr::Unix(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        None => SheepAddr::tcp(args.address.clone(), args.port),
    };
    let foreground = args.foreground || args.debug;
    let mut ready = if foreground {
        daemon::Ready::none()
    } else {
        match daemon::daemonize() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sheepfs: cannot go to the background: {e}");
                std::process::exit(1);
            }
        }
    };
    init_logging(&args, ready.is_daemon());
    let code = match run(&args, addr, mnt, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if ready.is_daemon() {
                ready.failure(&msg);
            } else {
                eprintln!("sheepfs: {msg}");
            }
            1
        }
    };
    std::process::exit(code);
}

fn check_mountpoint(p: &std::path::Path) -> Result<PathBuf> {
    let m = p
        .canonicalize()
        .with_context(|| format!("mountpoint {}", p.display()))?;
    if !m.is_dir() {
        bail!("mountpoint {} is not a directory", m.display());
    }
    Ok(m)
}

fn init_logging(args: &Args, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if args.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if daemon {
        daemon::open_syslog();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(daemon::Syslog)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(args.debug)
            .try_init();
    }
}

fn run(args: &Args, addr: SheepAddr, mnt: PathBuf, ready: &mut daemon::Ready) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .thread_name("sheepfs-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let timeout = Duration::from_secs(args.timeout);
    let copts = Options {
        request_timeout: timeout,
        retry_timeout: timeout,
        connect_timeout: timeout.min(Duration::from_secs(5)),
        ..Options::default()
    };
    let client = rt
        .block_on(Client::connect(addr.clone(), copts))
        .with_context(|| format!("cannot reach sheep at {addr}"))?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let core = Arc::new(FsCore::new(
        client,
        FsOptions {
            page_cache: args.pagecache,
            object_cache: args.objectcache,
            cache_size: args.cache_size,
            read_only: args.read_only,
            uid,
            gid,
        },
    ));
    let mcfg = MountConfig {
        threads: args.fuse_threads as usize,
        allow_other: args.allow_other,
    };
    let mut session = fs::mount(core, rt.handle().clone(), &mnt, mcfg)
        .with_context(|| format!("cannot mount at {}", mnt.display()))?;
    let unmounter = session.unmount_callable();
    rt.spawn(on_signals(unmounter, mnt.clone()));
    info!(mountpoint = %mnt.display(), sheep = %addr, "mounted");
    ready.success();
    let r = match session.run() {
        // The kernel ends the connection with ENODEV (fuser's clean end) or,
        // when the last user of a lazily detached mount goes, sometimes
        // ECONNABORTED: the same end of the session (destroy has run).
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("FUSE connection closed by the kernel");
            Ok(())
        }
        r => r,
    };
    info!(mountpoint = %mnt.display(), "unmounted");
    rt.shutdown_timeout(Duration::from_secs(5));
    r.context("FUSE session failed")
}

/// SIGTERM/SIGINT: unmount; the session then ends, in-flight requests
/// finish and every volume is detached (locks released) in `destroy`. A
/// busy mount (open files, a loop device) is detached lazily and keeps
/// serving its users until they close it.
async fn on_signals(mut un: fuser::SessionUnmounter, mnt: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; use umount to stop sheepfs");
        return;
    };
    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!("{sig}: unmounting {}", mnt.display());
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = un.unmount() {
            warn!(error = %e, "unmount failed; detaching lazily");
            lazy_unmount(&mnt);
        }
    })
    .await;
}

fn lazy_unmount(mnt: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: valid C string path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "lazy unmount failed");
    }
}
