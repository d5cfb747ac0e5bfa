//! `sheep-lite`: a single-node Sheepdog server.
//!
//! It speaks the sheep wire protocol (see `shared/reference/sheepdog-protocol.md`)
//! closely enough that unmodified clients — dog, sheepfs, tgt's sheepdog
//! backing store, QEMU's old driver — cannot tell it from a one-node cluster:
//! vids, inode bytes (including generational references), result codes and
//! reply layouts follow sheep's algorithms. `tests/golden_replay.rs` replays
//! captures of real clients against it and compares every reply byte.
//!
//! Layout under the store directory `DIR`:
//! - `obj/<oid>`: one file per object, full object size (sparse);
//! - `state.json`: cluster state (format, epoch, defaults, bitmaps, per-vid state);
//! - `sock`: the Unix socket (always created, as sheep does);
//! - `lock`: held with flock while the server runs.
//!
//! Intended differences from sheep:
//! - FLUSH_VDI answers SUCCESS after syncing the VDI's cached writes (sheep
//!   always answers INVALID_PARMS; clients accept both). Writes carrying
//!   SD_FLAG_CMD_CACHE skip the per-write fdatasync until then.
//! - Objects shared between VDIs are never reclaimed; a VDI's own objects are
//!   removed when its map stops referencing them and no other inode maps them
//!   (sheep uses ledger objects).
//! - Requests past the end of an object get INVALID_PARMS instead of garbage;
//!   so do data_vdi_id updates that are not whole u32 entries.
//! - DISCARD_OBJ and REMOVE_OBJ of a snapshot's data object answer READONLY,
//!   as writes do (sheep would unmap or remove the snapshot's object). dog
//!   never sends REMOVE_OBJ; its deletes clear the map and send DEL_VDI.
//! - Locks are in memory only and owned by this node, as on sheep.
//!
//! Consistency of VDI operations (NEW_VDI, DEL_VDI):
//! - they hold `vdi_lock` for writing; name lookups (GET_VDI_INFO, LOCK_VDI)
//!   hold it for reading, so a lookup never sees one half done;
//! - a snapshot first freezes the working VDI (its data objects answer
//!   READONLY, and changes already admitted have finished), then copies its
//!   map and sets snap_ctime in one atomic replacement of the inode, under
//!   the inode's lock: a client that writes a map entry and then reads
//!   snap_ctime either had its entry copied or sees the snapshot;
//! - each is recorded in `state.json` (an intent) before its first change and
//!   cleared by the commit that ends it; after a crash, startup finishes it
//!   when its new inode is complete and undoes it otherwise (deletions are
//!   always finished). A step that fails undoes the operation at once.
//!   With the `fault-injection` cargo feature (tests only),
//!   `SHEEP_LITE_CRASH_AT` / `SHEEP_LITE_FAIL_AT` (see `fault`) let tests
//!   kill or fail the server at each step; without it they do not exist;
//! - state changes reach memory only after they are durable.

pub mod alloc;
mod core;
mod error;
mod fault;
mod net;
mod state;
mod store;
mod vdi;

pub use self::core::Sheep;
pub use error::ServerError;
pub use net::{serve_stream, Ctx};

use crate::proto::node::{NodeId, SdNode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

/// How long a clean stop waits for in-flight requests and replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store directory.
    pub dir: PathBuf,
    /// Address to bind (127.0.0.1 by default; 0.0.0.0 or :: for all interfaces).
    pub bind: IpAddr,
    pub port: u16,
    /// Open object files kept in the LRU.
    pub fd_cache: usize,
    /// Bytes of request payloads, working sets and reply buffers held at
    /// once (`--memory-budget`).
    pub memory_budget: u64,
    /// Of the budget, bytes that payloads still arriving may hold
    /// (`--recv-memory`; at most half the budget).
    pub recv_memory: u64,
    /// Of the budget, bytes one connection may hold, replies it has not read
    /// included (`--conn-memory`).
    pub conn_memory: u64,
    /// Requests one connection may have in flight (`--conn-requests`).
    pub conn_requests: usize,
    /// A started header or payload, or a reply being sent, that makes no
    /// progress for this long closes the connection (`--io-timeout`).
    pub io_timeout: Duration,
    /// A connection with nothing in flight that sends nothing for this long
    /// is closed; zero = never (`--idle-timeout`).
    pub idle_timeout: Duration,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: crate::proto::SD_LISTEN_PORT,
            fd_cache: 1024,
            memory_budget: 512 << 20,
            recv_memory: 32 << 20,
            conn_memory: 32 << 20,
            conn_requests: 128,
            io_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The address and node record advertised for a bind address and port:
/// unspecified addresses advertise 127.0.0.1.
pub fn advertised_node(bind: IpAddr, port: u16) -> SdNode {
    let ip = if bind.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bind
    };
    let nid = NodeId::new(ip, port);
    SdNode {
        nid,
        nr_vnodes: crate::proto::SD_DEFAULT_VNODES,
        zone: SdNode::default_zone(&nid.addr),
        space: 0,
    }
}

/// Prepares the store directory: creates it, checks it is writable and takes
/// its lock. Returns the canonical path and the lock file (kept open).
fn open_dir(dir: &Path) -> Result<(PathBuf, std::fs::File), ServerError> {
    let err = |source| ServerError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let dir = dir.canonicalize().map_err(err)?;
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ServerError::Dir {
            path: lock_path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServerError::DirInUse {
            dir: dir.clone(),
            lock: lock_path,
        });
    }
    Ok((dir, lock))
}

/// Raises the open-file limit to its hard maximum (object files are cached).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the server until SIGTERM/SIGINT/SIGHUP or SD_OP_SHUTDOWN, then stops cleanly:
/// in-flight requests finish, cached writes are synced, the socket file is
/// removed.
pub async fn run(cfg: Config) -> Result<(), ServerError> {
    raise_nofile();
    let (dir, _lock) = open_dir(&cfg.dir)?;
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(cfg.port);
    let sheep = Arc::new(Sheep::new(
        &dir,
        advertised_node(cfg.bind, port),
        cfg.fd_cache,
    )?);
    let sock_path = dir.join("sock");
    // A stale socket from an earlier run is replaced, as sheep does.
    match std::fs::remove_file(&sock_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Listen {
                addr: sock_path.display().to_string(),
                source,
            })
        }
    }
    let unix = UnixListener::bind(&sock_path).map_err(|source| ServerError::Listen {
        addr: sock_path.display().to_string(),
        source,
    })?;
    let ctx = net::Ctx::build(sheep.clone(), &cfg, None);
    let mut stop_rx = ctx.stopped();
    tracing::info!(
        dir = %dir.display(),
        tcp = %SocketAddr::new(cfg.bind, port),
        unix = %sock_path.display(),
        node = %sheep.node.nid.to_addr_port(),
        "sheep-lite listening"
    );

    let mut conns = JoinSet::new();
    // Returns memory after bursts (see `Ctx::trim_heap`).
    let mut housekeeping = tokio::time::interval(Duration::from_millis(200));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Other(format!("cannot install SIGTERM handler: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| ServerError::Other(format!("cannot install SIGINT handler: {e}")))?;
    // SIGHUP (a closed terminal, a careless `kill -HUP`) stops cleanly too:
    // there is nothing to reload.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ServerError::Other(format!("cannot install SIGHUP handler: {e}")))?;
    crate::util::notify::ready();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            a = tcp.accept() => match a {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    conns.spawn(net::serve(ctx.clone(), s, peer.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            a = unix.accept() => match a {
                Ok((s, _)) => {
                    conns.spawn(net::serve(ctx.clone(), s, "unix".to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: stopping");
                break;
            }
            _ = stop_rx.changed() => break,
            _ = housekeeping.tick() => {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || ctx.trim_heap());
            }
        }
    }
    // Stop: no new connections or requests; let in-flight ones finish.
    crate::util::notify::stopping();
    drop(tcp);
    drop(unix);
    ctx.stop();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections did not finish in time; closing them");
        conns.abort_all();
    }
    let s2 = sheep.clone();
    let synced = tokio::task::spawn_blocking(move || s2.sync_all())
        .await
        .map_err(|e| ServerError::Other(format!("final sync failed: {e}")))?;
    let _ = std::fs::remove_file(&sock_path);
    if let Err(e) = synced {
        return Err(ServerError::Other(format!(
            "final sync of cached writes failed: {e:?}"
        )));
    }
    tracing::info!("sheep-lite stopped");
    Ok(())
}
