//! sheepfs(8): mount a Sheepdog cluster as a filesystem.

use clap::Parser;
use sheepfs::client::{Client, Options, SheepAddr};
use sheepfs::fs::control::VolumeSpec;
use sheepfs::fs::{self, core, daemon, FsCore, FsOptions, MountConfig, DEFAULT_CACHE_SIZE};
use sheepfs::util::logging::{self, LogRing, LogSetup};
use sheepfs::util::notify;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
                  as MOUNTPOINT/volume/NAME. Recent warnings and errors are in \
                  MOUNTPOINT/log. See sheepfs(8); for fstab, mount.sheepfs(8)."
)]
struct Args {
    /// Where to mount.
    mountpoint: PathBuf,

    /// Host of the sheep to talk to.
    #[arg(
        short = 'a',
        long = "address",
        value_name = "HOST",
        default_value = "127.0.0.1",
        value_parser = parse_host
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

    /// Memory budget of the -k object cache (K/M/G suffixes; default 256M).
    /// It must hold 4 objects of the cluster's object size.
    #[arg(long = "cache-size", value_name = "SIZE", value_parser = parse_cache_size)]
    cache_size: Option<u64>,

    /// Attach every VDI read-only (no VDI lock is taken).
    #[arg(long = "read-only")]
    read_only: bool,

    /// Let other users access the mount (FUSE allow_other).
    #[arg(long = "allow-other")]
    allow_other: bool,

    /// Attach this VDI (NAME, NAME@TAG or NAME@SNAPID) once mounted;
    /// repeatable. The mount fails if an attach fails.
    #[arg(long = "attach", value_name = "VDI")]
    attach: Vec<String>,

    /// Seconds a request may wait for a dead or restarting sheep (retrying
    /// with backoff) before it fails with EIO.
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,

    /// Threads reading FUSE requests.
    #[arg(long = "fuse-threads", value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    fuse_threads: u16,
}

fn parse_port(s: &str) -> Result<u16, String> {
    sheepfs::client::parse_port(s).ok_or_else(|| format!("invalid port '{s}' (1..65535)"))
}

fn parse_host(s: &str) -> Result<String, String> {
    sheepfs::util::check_host(s)?;
    Ok(s.to_string())
}

fn parse_cache_size(s: &str) -> Result<u64, String> {
    let n = sheepfs::util::parse_size(s)?;
    if n < (1 << 20) {
        return Err(format!("'{s}' is too small (at least 1M)"));
    }
    Ok(n)
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    if fs::mountopt::is_helper_name(&argv0) {
        let rest: Vec<String> = std::env::args().skip(1).collect();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sheepfs"));
        std::process::exit(fs::mountopt::helper_main(&exe, &rest));
    }
    sheepfs::util::completions_from_env::<Args>("sheepfs");
    let args = Args::parse();
    // Paths must be absolute before the daemon changes to /.
    let mnt = match check_mountpoint(&args.mountpoint) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sheepfs: {e}");
            std::process::exit(1);
        }
    };
    let specs = match args
        .attach
        .iter()
        .map(|s| VolumeSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sheepfs: --attach: {e}");
            std::process::exit(2);
        }
    };
    let addr = match &args.socket {
        Some(p) => SheepAddr::Unix(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        None => SheepAddr::tcp(args.address.clone(), args.port),
    };
    let foreground = args.foreground || args.debug;
    let syslog = !foreground && logging::syslog_available();
    let mut ready = if foreground {
        daemon::Ready::none()
    } else {
        // Without syslog the log stays on stderr, unless that is a pipe
        // whose reader (mount(8), a script) would wait for us to close it.
        match daemon::daemonize(!syslog && stderr_is_lasting()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sheepfs: cannot go to the background: {e}");
                std::process::exit(1);
            }
        }
    };
    let ring = LogRing::default();
    logging::init(LogSetup {
        default_filter: if args.debug { "debug" } else { "info" }.into(),
        syslog: syslog.then_some(c"sheepfs"),
        target: args.debug,
        ring: Some(ring.clone()),
    });
    let code = match run(&args, addr, mnt, specs, ring, &mut ready) {
        Ok(()) => 0,
        Err(msg) => {
            // Said once: by the waiting parent (daemon) or the log (-f).
            if ready.is_daemon() {
                if syslog {
                    tracing::error!("{msg}");
                }
                ready.failure(&msg);
            } else {
                tracing::error!("{msg}");
            }
            1
        }
    };
    std::process::exit(code);
}

/// Is stderr a terminal or a file (not a pipe someone waits on)?
fn stderr_is_lasting() -> bool {
    use std::os::fd::AsFd;
    let err = std::io::stderr();
    if err.is_terminal() {
        return true;
    }
    let Ok(fd) = err.as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.file_type().is_file())
}

/// The mountpoint, absolute. Refused: a path that is not a directory, a
/// dead FUSE mount left by a crashed daemon, and a path where something is
/// mounted already (a second sheepfs there would hide the first, and one
/// umount would take both down).
fn check_mountpoint(p: &Path) -> Result<PathBuf, String> {
    let dead = |e: &std::io::Error| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        format!(
            "mountpoint {} is a dead FUSE mount (its daemon exited: {e}); \
             unmount it first: umount -l {}",
            abs.display(),
            abs.display()
        )
    };
    let m = match p.canonicalize() {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(dead(&e)),
        Err(e) => return Err(format!("mountpoint {}: {e}", p.display())),
    };
    match std::fs::metadata(&m) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(format!("mountpoint {} is not a directory", m.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(dead(&e)),
        Err(e) => return Err(format!("mountpoint {}: {e}", m.display())),
    }
    if let Some((fstype, source)) = mounted_at(&m) {
        return Err(format!(
            "{} is already a mount point ({fstype} from {source}); unmount it first \
             (umount {}) or choose another directory",
            m.display(),
            m.display()
        ));
    }
    Ok(m)
}

/// (type, source) of what is mounted at `p`, per /proc/self/mountinfo.
fn mounted_at(p: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = p.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let point = pre.split(' ').nth(4)?;
        if unescape_mount(point) != want {
            return None;
        }
        let mut f = post.split(' ');
        Some((f.next()?.to_string(), unescape_mount(f.next()?)))
    })
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run(
    args: &Args,
    addr: SheepAddr,
    mnt: PathBuf,
    specs: Vec<VolumeSpec>,
    ring: LogRing,
    ready: &mut daemon::Ready,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .thread_name("sheepfs-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    // Before mounting: a stop request from then on must unmount cleanly.
    let signals = {
        let _g = rt.enter();
        StopSignals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?
    };
    let timeout = Duration::from_secs(args.timeout);
    let copts = Options {
        request_timeout: timeout,
        retry_timeout: timeout,
        connect_timeout: timeout.min(Duration::from_secs(5)),
        ..Options::default()
    };
    let (probe, default_object) = rt.block_on(check_sheep(&addr, &copts))?;
    let cache_size = args.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
    if (args.pagecache || args.cache_size.is_some()) && cache_size < 4 * default_object {
        return Err(format!(
            "--cache-size {cache_size}: the -k cache must hold 4 objects of {default_object} \
             bytes (the cluster's object size); use --cache-size {}M or more",
            (4 * default_object).div_ceil(1 << 20)
        ));
    }
    let client = Client::new(addr.clone(), copts);
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let core = Arc::new(FsCore::new(
        client,
        FsOptions {
            page_cache: args.pagecache,
            object_cache: args.objectcache,
            cache_size,
            read_only: args.read_only,
            uid,
            gid,
            log: ring,
        },
    ));
    if !probe.formatted {
        warn!(
            "the cluster at {addr} is not formatted: its state files say so and attaching \
             fails with ENXIO until it is (sheepctl cluster format -l)"
        );
    }
    // Before mounting, so a failure leaves nothing behind.
    for s in &specs {
        if let Err(e) = rt.block_on(core.attach(s)) {
            rt.block_on(core.shutdown());
            return Err(format!("{e}"));
        }
    }
    let mcfg = MountConfig {
        threads: args.fuse_threads as usize,
        allow_other: args.allow_other,
        fsname: addr.to_string(),
    };
    let (session, unmounter) = match fs::mount(core.clone(), rt.handle().clone(), &mnt, mcfg) {
        Ok(s) => s,
        Err(e) => {
            rt.block_on(core.shutdown());
            return Err(mount_error(&mnt, &e));
        }
    };
    drop(rt.spawn(on_signals(signals, unmounter, mnt.clone())));
    info!(mountpoint = %mnt.display(), sheep = %addr, "mounted");
    ready.success();
    notify::ready();
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
    r.map_err(|e| format!("FUSE session failed: {e}"))
}

/// Probes the sheep (it must answer a real request) and returns what it
/// said with the cluster's default object size (4 MiB until formatted).
async fn check_sheep(addr: &SheepAddr, o: &Options) -> Result<(core::Probe, u64), String> {
    let c = Client::new(addr.clone(), core::probe_options(o));
    let r = async {
        let p = core::probe(&c).await.map_err(|e| e.to_string())?;
        let shift = match p.formatted {
            true => c.cluster_default().await.map_or(22, |d| d.block_size_shift),
            false => 22,
        };
        Ok((p, 1u64 << shift.clamp(20, 31)))
    }
    .await;
    c.close().await;
    r
}

/// Says what to do about a failed mount(2).
fn mount_error(mnt: &Path, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => format!(
            "cannot mount at {}: {e}; run as root: mounting needs /dev/fuse and the \
             mount privilege (or a setuid fusermount3)",
            mnt.display()
        ),
        Some(libc::ENOENT | libc::ENODEV) if !Path::new("/dev/fuse").exists() => format!(
            "cannot mount at {}: /dev/fuse is missing; load the module: modprobe fuse",
            mnt.display()
        ),
        _ => format!("cannot mount at {}: {e}", mnt.display()),
    }
}

/// The signals that stop sheepfs.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM, SIGINT and SIGHUP: unmount; the session then ends, in-flight
/// requests finish and every volume is detached (locks released) in
/// `destroy`. A busy mount (open files, a loop device) is detached lazily
/// and keeps serving its users until they close it.
async fn on_signals(mut s: StopSignals, mut un: fs::fuse::Unmounter, mnt: PathBuf) {
    let sig = tokio::select! {
        _ = s.term.recv() => "SIGTERM",
        _ = s.int.recv() => "SIGINT",
        _ = s.hup.recv() => "SIGHUP",
    };
    info!("{sig}: unmounting {}", mnt.display());
    notify::stopping();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = un.unmount() {
            info!("{} is busy ({e}); detaching it lazily", mnt.display());
            if let Err(e) = fs::fuse::umount2(&mnt, libc::MNT_DETACH) {
                warn!("lazy unmount of {} failed: {e}", mnt.display());
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mount("plain\\"), "plain\\");
    }
}
