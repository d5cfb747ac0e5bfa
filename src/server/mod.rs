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
mod listen;
mod net;
mod state;
mod store;
mod vdi;

pub use self::core::Sheep;
pub use error::ServerError;
pub use listen::{run, serve_duplex};
pub use net::{serve_stream, Ctx};

use crate::proto::node::{NodeId, SdNode};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
pub(crate) fn advertised_node(bind: IpAddr, port: u16) -> SdNode {
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
