//! The protocol core: one synchronous handler per opcode, run on the blocking
//! pool by the network layer (small reads and cached writes that need no
//! waiting run in place: [`Sheep::handle_quick`]). It knows nothing about
//! sockets.

use super::error::{io_res, OpResult};
use super::state::{State, StateFile};
use super::store::Store;
use super::store::COPY_CHUNK;
use crate::proto::bytes::{get_u32, put_u64};
use crate::proto::header::{
    ClusterArgs, ClusterDefaultRsp, NodeRsp, ObjArgs, VdiArgs, VdiStateArgs, RSP_ARGS_LEN,
};
use crate::proto::inode::{self, DATA_VDI_ID_OFFSET, GREF_OFFSET, SD_INODE_DATA_INDEX};
use crate::proto::node::{ClusterInfo, EpochLog, SdNode, SD_NODE_SIZE, VDI_STATE_SIZE};
use crate::proto::{
    attr::SD_ATTR_OBJ_SIZE, cluster_status, flags, oid, op, ReqHeader, SdRes, SD_PROTO_VER,
    SD_SHEEP_PROTO_VER, VDI_BITMAP_SIZE,
};
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A decoded request with its payload (empty unless CMD_WRITE).
pub struct Req {
    pub hdr: ReqHeader,
    pub data: Vec<u8>,
}

/// What to do after the reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// SHUTDOWN / KILL_NODE: stop serving and exit cleanly.
    Stop,
}

/// The opcode-specific part of a reply; the network layer fills opcode, id,
/// epoch and data_length.
pub struct Reply {
    pub result: SdRes,
    pub args: [u8; RSP_ARGS_LEN],
    pub data: Vec<u8>,
    /// Reply bytes sent from a file after `data` (large reads), so they are
    /// never held in memory whole.
    pub stream: Option<FileRange>,
    pub action: Action,
}

/// A range of an object file to send as (the rest of) a reply payload.
pub struct FileRange {
    pub oid: u64,
    pub file: std::sync::Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

impl Reply {
    pub fn res(result: SdRes) -> Reply {
        Reply {
            result,
            args: [0; RSP_ARGS_LEN],
            data: Vec::new(),
            stream: None,
            action: Action::None,
        }
    }
    pub fn ok() -> Reply {
        Reply::res(SdRes::SUCCESS)
    }
    pub fn data(data: Vec<u8>) -> Reply {
        Reply {
            data,
            ..Reply::ok()
        }
    }
    pub fn with_args(mut self, args: [u8; RSP_ARGS_LEN]) -> Reply {
        self.args = args;
        self
    }
}

fn from_res(r: OpResult<Reply>) -> Reply {
    r.unwrap_or_else(Reply::res)
}

/// Ops answered before the cluster is formatted (§4 column F).
fn is_force_op(opcode: u8) -> bool {
    matches!(
        opcode,
        op::READ_VDIS
            | op::GET_CLUSTER_DEFAULT
            | op::GET_NODE_LIST
            | op::MAKE_FS
            | op::SHUTDOWN
            | op::STAT_CLUSTER
            | op::FORCE_RECOVER
            | op::GET_STORE_LIST
            | op::CLEANUP
            | op::NOTIFY_VDI_DEL
            | op::KILL_NODE
            | op::GET_VDI_COPIES
            | op::NOTIFY_VDI_ADD
            | op::GET_LOGLEVEL
            | op::SET_LOGLEVEL
            | op::EXIST
            | op::CLUSTER_INFO
            | op::OIDS_EXIST
            | op::READ_DEL_VDIS
            | op::GET_RECOVERY
            | op::SET_RECOVERY
    )
}

// Opcodes without a named constant in `proto::op`.
pub(crate) const OP_REWEIGHT: u8 = 0xB5;
pub(crate) const OP_READ_PEER: u8 = 0xA4;
pub(crate) const OP_WRITE_PEER: u8 = 0xA5;
pub(crate) const OP_CREATE_AND_WRITE_PEER: u8 = 0xA3;
const OP_REMOVE_PEER: u8 = 0xA6;

/// Ops this server implements (anything else is INVALID_PARMS after the
/// version check, as for opcodes without a handler on sheep).
fn is_known_op(opcode: u8) -> bool {
    is_force_op(opcode)
        || matches!(
            opcode,
            op::CREATE_AND_WRITE_OBJ
                | op::READ_OBJ
                | op::WRITE_OBJ
                | op::REMOVE_OBJ
                | op::DISCARD_OBJ
                | op::NEW_VDI
                | op::LOCK_VDI
                | op::RELEASE_VDI
                | op::GET_VDI_INFO
                | op::FLUSH_VDI
                | op::DEL_VDI
                | op::STAT_SHEEP
                | op::GET_VDI_ATTR
                | op::STAT_RECOVERY
                | op::FLUSH_DEL_CACHE
                | op::GET_OBJ_LIST
                | op::GET_EPOCH
                | op::ENABLE_RECOVER
                | op::DISABLE_RECOVER
                | op::DELETE_CACHE
                | op::MD_INFO
                | op::STAT
                | op::ALTER_CLUSTER_COPY
                | op::ALTER_VDI_COPY
                | op::GET_VNODES
                | op::SET_VNODES
                | OP_REWEIGHT
                | OP_READ_PEER
                | OP_WRITE_PEER
                | OP_CREATE_AND_WRITE_PEER
                | OP_REMOVE_PEER
        )
}

/// Request counters for SD_OP_STAT (`struct sd_stat`, gateway half).
#[derive(Default)]
struct Stats {
    total: AtomicU64,
    rx: AtomicU64,
    tx: AtomicU64,
    remove: AtomicU64,
    read: AtomicU64,
    write: AtomicU64,
    flush: AtomicU64,
}

/// Settings that are only kept in memory.
struct Misc {
    loglevel: i32,
    recovery: [u8; 24],
    vnodes: i32,
}

/// Stripes of [`Sheep::gates`].
const GATES: usize = 256;

/// The single-node sheep.
pub struct Sheep {
    pub(crate) store: Store,
    pub(crate) state: RwLock<State>,
    state_file: StateFile,
    /// Serialises cluster operations (VDI create/delete, format, ...), as
    /// sheep's cluster driver orders them: they take it for writing. Name
    /// lookups and object reclaims take it for reading, so they never see a
    /// VDI operation half done.
    pub(crate) vdi_lock: RwLock<()>,
    /// Per-vid stripes ordering data-object mutations against a VDI becoming
    /// a snapshot: a mutation holds its vid's stripe for reading from the
    /// read-only check until its change is made; freezing a vid takes it for
    /// writing, so no mutation that passed the check is still in flight.
    gates: Box<[RwLock<()>]>,
    /// One reclaim scan at a time: its buffers (a B-tree root and leaf of a
    /// hyper volume) are outside any request's reservation, so they are
    /// bounded by running one.
    reclaiming: Mutex<()>,
    /// This node as advertised in node lists.
    pub(crate) node: SdNode,
    dir: PathBuf,
    stats: Stats,
    misc: Mutex<Misc>,
}

impl Sheep {
    pub fn new(dir: &Path, node: SdNode, fd_cache: usize) -> Result<Sheep, super::ServerError> {
        let store =
            Store::open(&dir.join("obj"), fd_cache).map_err(|source| super::ServerError::Dir {
                path: dir.join("obj"),
                source,
            })?;
        let state_file = StateFile::new(dir);
        let state = state_file.load()?;
        let sheep = Sheep {
            store,
            state: RwLock::new(state),
            state_file,
            vdi_lock: RwLock::new(()),
            gates: (0..GATES).map(|_| RwLock::new(())).collect(),
            reclaiming: Mutex::new(()),
            node,
            dir: dir.to_path_buf(),
            stats: Stats::default(),
            misc: Mutex::new(Misc {
                loglevel: 6,
                recovery: [0; 24],
                vnodes: crate::proto::SD_DEFAULT_VNODES as i32,
            }),
        };
        // Finish or undo a VDI operation a crash interrupted before serving.
        sheep
            .resolve_pending()
            .map_err(|e| super::ServerError::State {
                path: sheep.state_file.path().to_path_buf(),
                what: format!("cannot finish the interrupted VDI operation: {e:?}"),
            })?;
        Ok(sheep)
    }

    /// Epoch to put in reply headers.
    pub fn epoch(&self) -> u32 {
        self.state.read().epoch
    }

    /// Size of the object `oid` names (for budgeting COW creates).
    pub fn object_size(&self, oid: u64) -> u64 {
        let st = self.state.read();
        objsize(&st, oid)
    }

    /// Marks the cluster as shutting down: every later request gets SHUTDOWN.
    pub fn set_shutdown(&self) {
        self.state.write().status = cluster_status::SHUTDOWN;
    }

    /// Makes every cached write durable (clean shutdown).
    pub fn sync_all(&self) -> OpResult<()> {
        self.store.sync_all()
    }

    /// Applies `f` to the state: first to a copy that is saved durably, then,
    /// once that succeeded, to the live state. So nothing a client can see
    /// is lost by a crash, and a failed save changes nothing. Callers hold
    /// `vdi_lock` for writing (commits are serialised); `f` must be
    /// deterministic, as it runs twice.
    pub(crate) fn commit(&self, f: impl Fn(&mut State)) -> OpResult<()> {
        // The journal lock orders commits: each record is the change of one
        // `f` over the state the previous commits left.
        let mut journal = self.state_file.lock();
        let mut next = self.state.read().clone();
        f(&mut next);
        let recorded = journal.record(&self.state.read(), &next);
        recorded.map_err(|e| io_res(&e, "save state", self.state_file.path()))?;
        let mut st = self.state.write();
        f(&mut st);
        let st = RwLockWriteGuard::downgrade(st);
        if journal.snapshot_due(st.vdis.len()) {
            // The journal stays valid if this fails: the next commit retries.
            if let Err(e) = journal.snapshot(&st) {
                tracing::warn!(path = %self.state_file.path().display(), error = %e,
                    "cannot write the state snapshot; the journal keeps growing");
            }
        }
        Ok(())
    }

    /// The gate stripe of `vid` (see `gates`).
    pub(crate) fn gate(&self, vid: u32) -> &RwLock<()> {
        &self.gates[vid as usize % GATES]
    }

    /// Handles one request.
    pub fn handle(&self, req: Req) -> Reply {
        self.serve(&req, false)
            .unwrap_or_else(|| Reply::res(SdRes::SYSTEM_ERROR))
    }

    /// Answers `req` right away if it is a small read or a small cached
    /// write (SD_FLAG_CMD_CACHE: no sync) of a data object that needs no
    /// waiting: no lock held by another request, the object's file open,
    /// a read's bytes in the page cache. Such a request costs a few
    /// microseconds, less than handing it to the blocking pool and its reply
    /// back. None: run [`Sheep::handle`] on the blocking pool (nothing was
    /// done).
    pub fn handle_quick(&self, req: &Req) -> Option<Reply> {
        if !is_quick_candidate(&req.hdr) || super::fault::requests_active() {
            return None;
        }
        self.serve(req, true)
    }

    /// The gates every request passes, then its handler (see
    /// [`Sheep::handle_quick`] for `quick`).
    fn serve(&self, req: &Req, quick: bool) -> Option<Reply> {
        let h = &req.hdr;
        // §1.6: version gate, then unknown ops, then the cluster-state gate.
        if h.opcode >= 0x80 {
            if h.proto_ver != SD_SHEEP_PROTO_VER {
                return Some(Reply::res(SdRes::VER_MISMATCH));
            }
        } else if h.proto_ver > SD_PROTO_VER {
            return Some(Reply::res(SdRes::VER_MISMATCH));
        }
        if !is_known_op(h.opcode) {
            tracing::warn!(opcode = format_args!("{:#04x}", h.opcode), "unknown opcode");
            return Some(Reply::res(SdRes::INVALID_PARMS));
        }
        {
            // Quick: not even behind a state commit in progress.
            let st = if quick {
                self.state.try_read()?
            } else {
                self.state.read()
            };
            match st.status {
                cluster_status::KILLED => return Some(Reply::res(SdRes::KILLED)),
                cluster_status::SHUTDOWN => return Some(Reply::res(SdRes::SHUTDOWN)),
                cluster_status::WAIT if !is_force_op(h.opcode) => {
                    return Some(Reply::res(if st.ctime == 0 {
                        SdRes::WAIT_FOR_FORMAT
                    } else {
                        SdRes::WAIT_FOR_JOIN
                    }))
                }
                _ => {}
            }
        }
        if let Err(res) = super::fault::request(h.opcode) {
            self.count(req);
            return Some(Reply::res(res));
        }
        let r = if quick {
            self.dispatch_quick(req)?
        } else {
            self.dispatch(req)
        };
        self.count(req);
        let streamed = r.stream.as_ref().map(|s| s.len).unwrap_or(0);
        self.stats
            .tx
            .fetch_add(r.data.len() as u64 + streamed, Ordering::Relaxed);
        Some(r)
    }

    /// The quick forms of READ_OBJ and WRITE_OBJ (see
    /// [`Sheep::handle_quick`]); None where they would wait.
    fn dispatch_quick(&self, req: &Req) -> Option<Reply> {
        let h = &req.hdr;
        let o = ObjArgs::decode(&h.args);
        let off = o.offset as u64;
        let done = if h.opcode == op::READ_OBJ {
            let mut buf = vec![0u8; h.data_length as usize];
            match self.store.try_read_cached(o.oid, off, &mut buf) {
                Ok(true) => return Some(Reply::data(buf)),
                other => other,
            }
        } else {
            // As `mutate`, without waiting for a freeze in progress.
            let vid = oid::oid_to_vid(o.oid);
            let _g = self.gate(vid).try_read()?;
            if self.state.try_read()?.data_readonly(vid) {
                return Some(Reply::res(SdRes::READONLY));
            }
            self.store.try_write_cached(o.oid, off, &req.data)
        };
        match done {
            Ok(true) => Some(Reply::ok()),
            Ok(false) => None,
            Err(res) => Some(Reply::res(res)),
        }
    }

    fn count(&self, req: &Req) {
        let s = &self.stats;
        s.total.fetch_add(1, Ordering::Relaxed);
        s.rx.fetch_add(req.data.len() as u64, Ordering::Relaxed);
        let c = match req.hdr.opcode {
            op::READ_OBJ => &s.read,
            op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ => &s.write,
            op::REMOVE_OBJ => &s.remove,
            op::FLUSH_VDI => &s.flush,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn dispatch(&self, req: &Req) -> Reply {
        let h = &req.hdr;
        // A write that announces no data (no CMD_WRITE) is refused, as sheep
        // does, before the object is even looked up.
        if matches!(h.opcode, op::WRITE_OBJ | op::CREATE_AND_WRITE_OBJ)
            && h.flags & flags::CMD_WRITE == 0
        {
            return Reply::res(SdRes::INVALID_PARMS);
        }
        match h.opcode {
            op::READ_OBJ | OP_READ_PEER => from_res(self.read_obj(req)),
            op::WRITE_OBJ | OP_WRITE_PEER => from_res(self.write_obj(req).map(|_| Reply::ok())),
            op::CREATE_AND_WRITE_OBJ | OP_CREATE_AND_WRITE_PEER => {
                from_res(self.create_obj(req).map(|_| Reply::ok()))
            }
            op::REMOVE_OBJ | OP_REMOVE_PEER => from_res(self.remove_obj(req).map(|_| Reply::ok())),
            op::DISCARD_OBJ => from_res(self.discard_obj(req)),
            op::FLUSH_VDI => {
                // Intended difference from sheep (which always answers
                // INVALID_PARMS): writes sent with CMD_CACHE skip the per-write
                // sync here, and FLUSH_VDI makes them durable. Clients treat
                // both answers as success.
                let o = ObjArgs::decode(&h.args);
                from_res(
                    self.store
                        .sync_vid(oid::oid_to_vid(o.oid))
                        .map(|_| Reply::ok()),
                )
            }
            op::NEW_VDI => self.new_vdi(req),
            op::GET_VDI_INFO => self.get_vdi_info(req),
            op::LOCK_VDI => self.lock_vdi(req),
            op::RELEASE_VDI => self.release_vdi(req),
            op::DEL_VDI => self.del_vdi(req),
            op::GET_VDI_ATTR => self.get_vdi_attr(req),
            op::READ_VDIS | op::READ_DEL_VDIS => {
                if h.data_length as usize != VDI_BITMAP_SIZE {
                    return Reply::res(SdRes::INVALID_PARMS);
                }
                let st = self.state.read();
                let bm = if h.opcode == op::READ_VDIS {
                    &st.inuse
                } else {
                    &st.deleted
                };
                Reply::data(bm.as_bytes().to_vec())
            }
            op::GET_CLUSTER_DEFAULT => {
                let st = self.state.read();
                Reply::ok().with_args(
                    ClusterDefaultRsp {
                        nr_copies: st.nr_copies,
                        copy_policy: st.copy_policy,
                        block_size_shift: st.block_size_shift,
                    }
                    .encode(),
                )
            }
            op::GET_NODE_LIST => Reply::data(self.node_bytes(true).to_vec()).with_args(
                NodeRsp {
                    nr_nodes: 1,
                    ..Default::default()
                }
                .encode(),
            ),
            op::MAKE_FS => from_res(self.make_fs(req)),
            op::SHUTDOWN => {
                self.set_shutdown();
                tracing::info!("shutdown requested by a client");
                Reply {
                    action: Action::Stop,
                    ..Reply::ok()
                }
            }
            op::KILL_NODE => {
                self.state.write().status = cluster_status::KILLED;
                tracing::info!("kill requested by a client");
                Reply {
                    action: Action::Stop,
                    ..Reply::ok()
                }
            }
            op::STAT_SHEEP => {
                let (size, free) = self.space();
                Reply::ok().with_args(
                    NodeRsp {
                        nr_nodes: 0,
                        store_size: size,
                        store_free: free,
                    }
                    .encode(),
                )
            }
            op::STAT_CLUSTER => self.stat_cluster(h),
            op::CLUSTER_INFO => Reply::data(self.cluster_info()),
            op::GET_STORE_LIST => {
                // Registration order on sheep puts "tree" first; the reply is
                // the text plus its NUL, clipped to the buffer.
                let mut v = b"tree plain \0".to_vec();
                v.truncate(h.data_length as usize);
                Reply::data(v)
            }
            op::GET_VDI_COPIES => {
                let st = self.state.read();
                let need = st.vdis.len() * VDI_STATE_SIZE;
                if (h.data_length as usize) < need {
                    return Reply::res(SdRes::BUFFER_SMALL);
                }
                let mut v = Vec::with_capacity(need);
                for (&vid, e) in &st.vdis {
                    v.extend_from_slice(&e.to_wire(vid).encode());
                }
                Reply::data(v)
            }
            op::FLUSH_DEL_CACHE
            | op::DELETE_CACHE
            | op::CLEANUP
            | op::NOTIFY_VDI_DEL
            | OP_REWEIGHT => Reply::ok(),
            op::EXIST => {
                let o = ObjArgs::decode(&h.args);
                Reply::res(if self.store.exists(o.oid) {
                    SdRes::SUCCESS
                } else {
                    SdRes::NO_OBJ
                })
            }
            op::OIDS_EXIST => {
                let missing: Vec<u8> = req
                    .data
                    .chunks_exact(8)
                    .filter(|c| {
                        !self
                            .store
                            .exists(u64::from_le_bytes((*c).try_into().unwrap_or([0; 8])))
                    })
                    .flatten()
                    .copied()
                    .collect();
                if missing.is_empty() {
                    Reply::ok()
                } else {
                    Reply {
                        data: missing,
                        ..Reply::res(SdRes::NO_OBJ)
                    }
                }
            }
            op::GET_OBJ_LIST => match self.store.list_upto(h.data_length as usize / 8) {
                Ok(Some(oids)) => Reply::data(oids.iter().flat_map(|o| o.to_le_bytes()).collect()),
                Ok(None) => Reply::res(SdRes::BUFFER_SMALL),
                Err(e) => Reply::res(e),
            },
            op::GET_EPOCH => self.get_epoch(h),
            op::STAT_RECOVERY => {
                if h.data_length < 24 {
                    return Reply::res(SdRes::INVALID_PARMS);
                }
                Reply::data(vec![0u8; 24])
            }
            op::ENABLE_RECOVER | op::DISABLE_RECOVER => {
                let _g = self.vdi_lock.write();
                let disable = h.opcode == op::DISABLE_RECOVER;
                from_res(
                    self.commit(|s| s.disable_recovery = disable)
                        .map(|_| Reply::ok()),
                )
            }
            op::FORCE_RECOVER => {
                // Only a cluster waiting for nodes can be force-recovered.
                if self.state.read().status != cluster_status::WAIT {
                    Reply::res(SdRes::FORCE_RECOVER)
                } else {
                    Reply::res(SdRes::WAIT_FOR_FORMAT)
                }
            }
            op::ALTER_CLUSTER_COPY => {
                let c = ClusterArgs::decode(&h.args);
                if c.copy_policy != 0 {
                    return Reply::res(SdRes::INVALID_PARMS);
                }
                let _g = self.vdi_lock.write();
                from_res(self.commit(|s| s.nr_copies = c.copies).map(|_| Reply::ok()))
            }
            op::ALTER_VDI_COPY => {
                let a = VdiStateArgs::decode(&h.args);
                if a.copy_policy != 0 {
                    return Reply::res(SdRes::INVALID_PARMS);
                }
                let _g = self.vdi_lock.write();
                from_res(
                    self.commit(|s| {
                        if let Some(e) = s.vdis.get_mut(&a.new_vid) {
                            e.copies = a.copies;
                        }
                    })
                    .map(|_| Reply::ok()),
                )
            }
            op::NOTIFY_VDI_ADD => {
                let a = VdiStateArgs::decode(&h.args);
                let _g = self.vdi_lock.write();
                from_res(
                    self.commit(|s| {
                        s.notify_vdi_add(
                            a.new_vid,
                            a.copies,
                            a.old_vid,
                            a.copy_policy,
                            a.block_size_shift,
                            a.set_bitmap != 0,
                        )
                    })
                    .map(|_| Reply::ok()),
                )
            }
            op::STAT => {
                if h.data_length < 120 {
                    return Reply::res(SdRes::INVALID_PARMS);
                }
                let s = &self.stats;
                let mut v = vec![0u8; 120];
                let vals = [
                    (16, &s.total),
                    (32, &s.rx),
                    (40, &s.tx),
                    (64, &s.remove),
                    (72, &s.read),
                    (80, &s.write),
                    (88, &s.flush),
                ];
                for (off, c) in vals {
                    put_u64(&mut v, off, c.load(Ordering::Relaxed));
                }
                Reply::data(v)
            }
            op::MD_INFO => self.md_info(h),
            op::GET_LOGLEVEL => Reply::data(self.misc.lock().loglevel.to_le_bytes().to_vec()),
            op::SET_LOGLEVEL => match req.data.get(..4) {
                Some(b) => {
                    self.misc.lock().loglevel = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    Reply::ok()
                }
                None => Reply::res(SdRes::INVALID_PARMS),
            },
            op::GET_RECOVERY => Reply::data(self.misc.lock().recovery.to_vec()),
            op::SET_RECOVERY => match req.data.get(..24) {
                Some(b) => {
                    self.misc.lock().recovery.copy_from_slice(b);
                    Reply::ok()
                }
                None => Reply::res(SdRes::INVALID_PARMS),
            },
            op::GET_VNODES => Reply::data(self.misc.lock().vnodes.to_le_bytes().to_vec()),
            op::SET_VNODES => match req.data.get(..4) {
                Some(b) => {
                    self.misc.lock().vnodes = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    Reply::ok()
                }
                None => Reply::res(SdRes::INVALID_PARMS),
            },
            _ => Reply::res(SdRes::INVALID_PARMS),
        }
    }

    // ------------------------------------------------------------ cluster info

    /// This node as 80 bytes. Nodes taken from sheep's in-memory tree carry the
    /// rb-tree colour word of a single black root (1) in their first byte;
    /// epoch-log copies have zeros there.
    fn node_bytes(&self, from_tree: bool) -> [u8; SD_NODE_SIZE] {
        let mut n = self.node;
        n.space = self.capacity();
        let mut b = n.encode();
        if from_tree {
            b[0] = 1;
        }
        b
    }

    /// Capacity of the store's filesystem.
    fn capacity(&self) -> u64 {
        statvfs(&self.dir).map(|(total, _)| total).unwrap_or(0)
    }

    /// STAT_SHEEP: (size, free) as sheep computes them: free = available
    /// bytes of the filesystem, size = free + bytes used by objects.
    fn space(&self) -> (u64, u64) {
        let free = statvfs(&self.dir).map(|(_, avail)| avail).unwrap_or(0);
        (free + self.store.used_bytes(), free)
    }

    fn cluster_info(&self) -> Vec<u8> {
        let st = self.state.read();
        let ci = ClusterInfo {
            proto_ver: SD_SHEEP_PROTO_VER,
            disable_recovery: st.disable_recovery as u8,
            epoch: st.epoch,
            ctime: st.ctime,
            flags: st.flags,
            nr_copies: st.nr_copies,
            copy_policy: st.copy_policy,
            status: st.status,
            block_size_shift: st.block_size_shift,
            default_store: st.store.clone(),
            nodes: if st.formatted {
                vec![self.node]
            } else {
                vec![]
            },
        };
        let mut b = ci.encode();
        if st.formatted {
            b[48..48 + SD_NODE_SIZE].copy_from_slice(&self.node_bytes(true));
        }
        b
    }

    fn epoch_log(&self, st: &State, first: bool, with_nodes: bool) -> EpochLog {
        let mut node = self.node;
        node.space = self.capacity();
        EpochLog {
            ctime: if first { st.ctime } else { 0 },
            time: if with_nodes { st.epoch_time } else { 0 },
            epoch: st.epoch,
            disable_recovery: if first { st.disable_recovery as u8 } else { 0 },
            nr_copies: if first { st.nr_copies } else { 0 },
            copy_policy: if first { st.copy_policy } else { 0 },
            flags: if first { st.flags } else { 0 },
            drv_name: if first {
                st.store.clone()
            } else {
                String::new()
            },
            nodes: if with_nodes { vec![node] } else { vec![] },
        }
    }

    /// STAT_CLUSTER (§8.1): records from the latest epoch down; this node only
    /// ever has epoch 1.
    fn stat_cluster(&self, h: &ReqHeader) -> Reply {
        let st = self.state.read();
        let result = match st.status {
            cluster_status::OK => SdRes::SUCCESS,
            cluster_status::WAIT if st.ctime == 0 => SdRes::WAIT_FOR_FORMAT,
            cluster_status::WAIT => SdRes::WAIT_FOR_JOIN,
            cluster_status::SHUTDOWN => SdRes::SHUTDOWN,
            _ => SdRes::SYSTEM_ERROR,
        };
        if !st.formatted || st.epoch == 0 {
            return Reply::res(result);
        }
        // An epoch has at most SD_MAX_NODES nodes: the reply (and what it
        // allocates) stays bounded whatever nodes_nr a client sends.
        let n =
            (ClusterArgs::decode(&h.args).nodes_nr as u64).min(crate::proto::SD_MAX_NODES as u64);
        let stride = 48 + 80 * n;
        if (h.data_length as u64) < stride {
            return Reply::res(result);
        }
        let log = self.epoch_log(&st, true, n > 0);
        // One record: `slots` is at least 1 here whenever nodes are wanted.
        Reply {
            data: log.encode(n as usize),
            ..Reply::res(result)
        }
    }

    fn get_epoch(&self, h: &ReqHeader) -> Reply {
        let o = ObjArgs::decode(&h.args);
        let st = self.state.read();
        if !st.formatted || o.tgt_epoch != st.epoch || st.epoch == 0 {
            return Reply::res(SdRes::NO_TAG);
        }
        if (h.data_length as usize) < SD_NODE_SIZE + 8 {
            return Reply::res(SdRes::BUFFER_SMALL);
        }
        let mut v = self.node_bytes(false).to_vec();
        v.extend_from_slice(&st.epoch_time.to_le_bytes());
        Reply::data(v)
    }

    fn md_info(&self, h: &ReqHeader) -> Reply {
        const MD_INFO_SIZE: usize = 263_688;
        if h.data_length as usize != MD_INFO_SIZE {
            return Reply::res(SdRes::INVALID_PARMS);
        }
        let mut v = vec![0u8; MD_INFO_SIZE];
        let (_, free) = self.space();
        put_u64(&mut v, 8, free);
        put_u64(&mut v, 16, self.store.used_bytes());
        let path = self.dir.join("obj");
        let p = path.to_string_lossy();
        let n = p.len().min(4095);
        v[24..24 + n].copy_from_slice(&p.as_bytes()[..n]);
        v[263_680..263_684].copy_from_slice(&1i32.to_le_bytes());
        Reply::data(v)
    }

    fn make_fs(&self, req: &Req) -> OpResult<Reply> {
        let c = ClusterArgs::decode(&req.hdr.args);
        let name = cstr(&req.data);
        if name != b"plain" && name != b"tree" {
            tracing::warn!(store = %String::from_utf8_lossy(name), "MAKE_FS with an unknown store driver");
            return Err(SdRes::NO_STORE);
        }
        let mut store = String::from_utf8_lossy(name).into_owned();
        store.truncate(crate::proto::STORE_LEN - 1);
        let _g = self.vdi_lock.write();
        // A crash during the wipe must not leave a state naming objects that
        // are gone: the node is unformatted on disk until the wipe is done.
        self.commit(|s| {
            let status = s.status;
            *s = State::unformatted();
            s.status = status;
        })?;
        self.store.wipe()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.commit(|s| {
            *s = State::unformatted();
            s.formatted = true;
            s.status = cluster_status::OK;
            s.ctime = c.ctime;
            s.epoch = 1;
            s.epoch_time = now;
            s.nr_copies = if c.copies == 0 {
                crate::proto::SD_DEFAULT_COPIES
            } else {
                c.copies
            };
            s.copy_policy = c.copy_policy;
            s.block_size_shift = if c.block_size_shift == 0 {
                crate::proto::SD_DEFAULT_BLOCK_SIZE_SHIFT
            } else {
                c.block_size_shift
            };
            s.flags = c.flags;
            s.store = store.clone();
        })?;
        tracing::info!("cluster formatted");
        Ok(Reply::ok())
    }

    // ------------------------------------------------------------ object I/O

    /// Bytes of memory a request uses while it is handled and replied to: its
    /// payload or reply buffer plus the handler's working set. The network
    /// layer reserves this (capped at the whole budget) before it reads the
    /// payload, in one piece, so a request never waits for more while holding
    /// some.
    pub fn memory_need(&self, h: &ReqHeader) -> u64 {
        let dl = h.data_length as u64;
        let o = ObjArgs::decode(&h.args);
        match h.opcode {
            op::READ_OBJ | OP_READ_PEER if streams(o.oid, dl) => STREAM_CHUNK as u64,
            op::CREATE_AND_WRITE_OBJ | OP_CREATE_AND_WRITE_PEER
                if h.flags & flags::CMD_COW != 0 =>
            {
                dl + COPY_CHUNK as u64
            }
            // A map update also holds the old entries and references.
            op::WRITE_OBJ | OP_WRITE_PEER if is_map_update(o.oid, o.offset as u64, dl) => 4 * dl,
            // At most one inode copy and one reference table at a time.
            op::NEW_VDI | op::DEL_VDI => dl + 2 * inode::SD_INODE_SIZE as u64,
            op::GET_VDI_ATTR => dl + 2 * SD_ATTR_OBJ_SIZE as u64,
            _ => dl,
        }
    }

    fn read_obj(&self, req: &Req) -> OpResult<Reply> {
        let h = &req.hdr;
        let o = ObjArgs::decode(&h.args);
        let (off, len) = (o.offset as u64, h.data_length as u64);
        if streams(o.oid, len) {
            // Sent from the file in chunks by the network layer.
            let file = self.store.open_range(o.oid, off, len)?;
            return Ok(Reply {
                stream: Some(FileRange {
                    oid: o.oid,
                    file,
                    offset: off,
                    len,
                }),
                ..Reply::ok()
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.store.read(o.oid, off, &mut buf)?;
        Ok(Reply::data(buf))
    }

    /// Runs a change of `oid`. Data objects of a snapshot, or of a VDI that is
    /// becoming one, are READONLY; the check and the change run under the
    /// vid's gate, so a freeze waits for every change it did not refuse.
    fn mutate<T>(&self, oid: u64, f: impl FnOnce() -> OpResult<T>) -> OpResult<T> {
        if !oid::is_data_obj(oid) {
            return f();
        }
        let vid = oid::oid_to_vid(oid);
        let _g = self.gate(vid).read();
        if self.state.read().data_readonly(vid) {
            return Err(SdRes::READONLY);
        }
        f()
    }

    fn create_obj(&self, req: &Req) -> OpResult<()> {
        let h = &req.hdr;
        let o = ObjArgs::decode(&h.args);
        self.mutate(o.oid, || {
            let size = self.object_size(o.oid);
            let off = o.offset as u64;
            if off + req.data.len() as u64 > size {
                tracing::warn!(
                    oid = format_args!("{:016x}", o.oid),
                    off,
                    len = req.data.len(),
                    size,
                    "create beyond the object size"
                );
                return Err(SdRes::INVALID_PARMS);
            }
            if h.flags & flags::CMD_COW != 0 && req.data.len() as u64 != size {
                // Partial COW: the new object is the source with the payload on top.
                return self
                    .store
                    .create_cow(o.oid, size, o.cow_oid, off, &req.data);
            }
            self.store.create(o.oid, size, &[(off, &req.data)])
        })
    }

    fn write_obj(&self, req: &Req) -> OpResult<()> {
        let h = &req.hdr;
        let o = ObjArgs::decode(&h.args);
        let sync = h.flags & flags::CMD_CACHE == 0;
        let off = o.offset as u64;
        if !is_map_update(o.oid, off, req.data.len() as u64) {
            return self.mutate(o.oid, || self.store.write(o.oid, off, &req.data, sync));
        }
        let dead = self.update_map(o.oid, off, &req.data, sync)?;
        self.reclaim(oid::oid_to_vid(o.oid), &dead);
        Ok(())
    }

    /// A data_vdi_id update (§6.4): writes the entries and clears their
    /// generational references as sheep does. Returns the indexes whose
    /// object this VDI owned, no longer maps and never shared: candidates for
    /// [`Sheep::reclaim`]. Decided under the inode's lock, which a snapshot
    /// holds while it copies the map, and never for a VDI that is (becoming)
    /// a snapshot, whose objects its children may share.
    fn update_map(&self, ioid: u64, off: u64, data: &[u8], sync: bool) -> OpResult<Vec<u32>> {
        let rel = off - DATA_VDI_ID_OFFSET as u64;
        if rel % 4 != 0 || data.len() % 4 != 0 {
            // Clients write whole u32 entries; anything else would be
            // misread as other vids.
            tracing::warn!(
                oid = format_args!("{ioid:016x}"),
                off,
                len = data.len(),
                "data_vdi_id update not made of whole entries; refused"
            );
            return Err(SdRes::INVALID_PARMS);
        }
        let first = (rel / 4) as usize;
        let n = data.len() / 4;
        if n == 0 {
            return self.store.write(ioid, off, data, sync).map(|_| Vec::new());
        }
        let own = oid::oid_to_vid(ioid);
        let gref_off = (GREF_OFFSET + 8 * first) as u64;
        let mut old = vec![0u8; 4 * n];
        let mut grefs = vec![0u8; 8 * n];
        let _g = self.store.lock(ioid);
        self.store.read_locked(ioid, off, &mut old)?;
        self.store.read_locked(ioid, gref_off, &mut grefs)?;
        self.store.write_locked(ioid, off, data, sync)?;
        let mut dead = Vec::new();
        if !self.state.read().data_readonly(own) {
            for i in 0..n {
                let shared = grefs[8 * i..8 * i + 8].iter().any(|&b| b != 0);
                if get_u32(&old, 4 * i) == own && get_u32(data, 4 * i) != own && !shared {
                    dead.push((first + i) as u32);
                }
            }
        }
        grefs.fill(0);
        self.store.write_locked(ioid, gref_off, &grefs, sync)?;
        if !dead.is_empty() {
            // A hyper volume keeps a B-tree here, not entries.
            let mut sp = [0u8; 1];
            self.store.read_locked(ioid, STORE_POLICY_OFF, &mut sp)?;
            if sp[0] != 0 {
                dead.clear();
            }
        }
        Ok(dead)
    }

    /// Removes the objects `idxs` of `own` that no inode maps any more.
    /// Holds `vdi_lock` for reading, so no VDI operation copies a map
    /// meanwhile.
    fn reclaim(&self, own: u32, idxs: &[u32]) {
        if idxs.is_empty() {
            return;
        }
        let _v = self.vdi_lock.read();
        self.reclaim_locked(own, idxs, false);
    }

    /// [`Sheep::reclaim`] for callers holding `vdi_lock`; with `deleting`,
    /// the map of `own` itself is not consulted (it is being deleted).
    pub(crate) fn reclaim_locked(&self, own: u32, idxs: &[u32], deleting: bool) {
        let _r = self.reclaiming.lock();
        let keep = match self.still_mapped(own, idxs, deleting) {
            Ok(k) => k,
            Err(e) => {
                // Keeping an object is safe; removing a used one is not.
                tracing::warn!(
                    vid = format_args!("{own:x}"),
                    ?e,
                    "cannot check who maps these objects; keeping them"
                );
                return;
            }
        };
        for &idx in idxs {
            if keep.contains(&idx) {
                continue;
            }
            let doid = oid::vid_to_data_oid(own, idx);
            match self.store.remove(doid) {
                Ok(()) | Err(SdRes::NO_OBJ) => {}
                Err(e) => {
                    tracing::warn!(oid = format_args!("{doid:016x}"), ?e, "reclaim failed")
                }
            }
        }
    }

    /// Which of the objects `(own, idx)` for `idx` in `idxs` some inode
    /// still maps. Generational references alone cannot tell (a later map
    /// update clears them), so every inode is asked; this only runs when
    /// objects are about to be removed.
    fn still_mapped(&self, own: u32, idxs: &[u32], skip_own: bool) -> OpResult<HashSet<u32>> {
        let vids: BTreeSet<u32> = {
            let st = self.state.read();
            st.vdis.keys().copied().chain(st.inuse.iter_set()).collect()
        };
        // A flat map only has indexes below SD_INODE_DATA_INDEX (a hyper
        // volume's go up to u32::MAX): that bounds the range read (4 MiB).
        let flat: Vec<u32> = idxs
            .iter()
            .copied()
            .filter(|&i| (i as usize) < inode::SD_INODE_DATA_INDEX)
            .collect();
        let lo = flat.iter().copied().min().unwrap_or(0);
        let hi = flat.iter().copied().max().unwrap_or(0);
        let mut map = vec![
            0u8;
            if flat.is_empty() {
                0
            } else {
                4 * (hi - lo + 1) as usize
            }
        ];
        let mut keep = HashSet::new();
        for vid in vids {
            if skip_own && vid == own {
                continue;
            }
            let ioid = oid::vid_to_vdi_oid(vid);
            let mut sp = [0u8; 1];
            match self.store.read(ioid, STORE_POLICY_OFF, &mut sp) {
                Ok(()) => {}
                Err(SdRes::NO_OBJ) => continue,
                Err(e) => return Err(e),
            }
            if sp[0] == 0 {
                if flat.is_empty() {
                    continue;
                }
                self.store
                    .read(ioid, inode::data_vdi_id_offset(lo), &mut map)?;
                for &idx in &flat {
                    if get_u32(&map, 4 * (idx - lo) as usize) == own {
                        keep.insert(idx);
                    }
                }
            } else {
                let tree = self.load_btree(vid)?;
                for &idx in idxs {
                    if tree.get(idx) == own {
                        keep.insert(idx);
                    }
                }
            }
        }
        Ok(keep)
    }

    /// The whole B-tree of a hyper volume (root and leaves).
    pub(crate) fn load_btree(&self, vid: u32) -> OpResult<inode::Btree> {
        let ioid = oid::vid_to_vdi_oid(vid);
        let mut root = vec![0u8; GREF_OFFSET - DATA_VDI_ID_OFFSET];
        self.store
            .read(ioid, DATA_VDI_ID_OFFSET as u64, &mut root)?;
        let mut tree = inode::Btree::from_root(&root).map_err(|e| {
            tracing::error!(vid = format_args!("{vid:x}"), error = %e, "corrupt B-tree root");
            SdRes::EIO
        })?;
        drop(root);
        let mut node = vec![0u8; inode::BTREE_NODE_SIZE];
        for (_, leaf) in tree.root_indirect.clone() {
            self.store.read(leaf, 0, &mut node)?;
            tree.add_leaf(leaf, &node).map_err(|e| {
                tracing::error!(oid = format_args!("{leaf:016x}"), error = %e, "corrupt B-tree leaf");
                SdRes::EIO
            })?;
        }
        Ok(tree)
    }

    /// REMOVE_OBJ. Data objects of a snapshot are refused (READONLY): dog
    /// never sends REMOVE_OBJ (its deletes clear maps and use DEL_VDI, and
    /// the server removes what is unused), and removing one would take the
    /// data from the snapshot and from every VDI sharing the object.
    fn remove_obj(&self, req: &Req) -> OpResult<()> {
        let o = ObjArgs::decode(&req.hdr.args);
        self.mutate(o.oid, || self.store.remove(o.oid))
    }

    /// DISCARD_OBJ: unmap the index in the owner's inode and drop the object.
    /// A snapshot's objects are READONLY (as for writes; sheep would unmap
    /// the snapshot's entry): the client re-resolves its working VDI.
    fn discard_obj(&self, req: &Req) -> OpResult<Reply> {
        let o = ObjArgs::decode(&req.hdr.args);
        if !oid::is_data_obj(o.oid) {
            return Err(SdRes::INVALID_PARMS);
        }
        let vid = oid::oid_to_vid(o.oid);
        let idx = oid::oid_to_idx(o.oid);
        let ioid = oid::vid_to_vdi_oid(vid);
        let dead = self.mutate(o.oid, || {
            let mut sp = [0u8; 1];
            self.store.read(ioid, STORE_POLICY_OFF, &mut sp)?;
            if sp[0] != 0 {
                // Hyper volumes: the B-tree update is not implemented here.
                return Err(SdRes::NO_SUPPORT);
            }
            if idx as usize >= SD_INODE_DATA_INDEX {
                return Err(SdRes::INVALID_PARMS);
            }
            let off = inode::data_vdi_id_offset(idx);
            let mut b = [0u8; 4];
            self.store.read(ioid, off, &mut b)?;
            if u32::from_le_bytes(b) == 0 {
                return Ok(Vec::new());
            }
            self.update_map(ioid, off, &[0; 4], true)
        })?;
        // Outside the gate: reclaiming takes vdi_lock, which a freeze holds.
        self.reclaim(vid, &dead);
        Ok(Reply::ok())
    }
}

/// Offset of store_policy (1 = hyper volume, B-tree map) in an inode.
pub(crate) const STORE_POLICY_OFF: u64 = 553;
/// Data reads longer than this are streamed from the object file.
const STREAM_MIN: u64 = 8 << 20;
/// Bytes per piece of a streamed reply.
pub const STREAM_CHUNK: usize = 1 << 20;

/// Whether a READ_OBJ of `len` bytes of `oid` is streamed. Only data and
/// vmstate objects: inode, B-tree and ledger reads stay whole under the
/// object's lock, so a client always sees a consistent map.
fn streams(oid: u64, len: u64) -> bool {
    len > STREAM_MIN && matches!(oid::kind(oid), oid::ObjKind::Data | oid::ObjKind::Vmstate)
}

/// Largest payload of a request [`Sheep::handle_quick`] takes.
pub const QUICK_MAX: u32 = 128 << 10;

/// A READ_OBJ, or a WRITE_OBJ with SD_FLAG_CMD_CACHE, of at most
/// [`QUICK_MAX`] bytes of a data object (the client forms: a peer's
/// requests and every other opcode take the blocking pool).
fn is_quick_candidate(h: &ReqHeader) -> bool {
    let cached_write = flags::CMD_WRITE | flags::CMD_CACHE;
    let fits = match h.opcode {
        op::READ_OBJ => true,
        op::WRITE_OBJ => h.flags & cached_write == cached_write,
        _ => false,
    };
    fits && h.data_length <= QUICK_MAX && oid::is_data_obj(ObjArgs::decode(&h.args).oid)
}

/// Whether a WRITE_OBJ lies inside an inode's data_vdi_id (sheep's
/// `is_data_vid_update`).
fn is_map_update(oid: u64, off: u64, len: u64) -> bool {
    oid::is_vdi_obj(oid) && off >= DATA_VDI_ID_OFFSET as u64 && off + len <= GREF_OFFSET as u64
}

/// Object size of `oid` (`get_objsize`).
pub(crate) fn objsize(st: &State, oid: u64) -> u64 {
    match oid::kind(oid) {
        oid::ObjKind::Inode => inode::SD_INODE_SIZE as u64,
        oid::ObjKind::Attr => SD_ATTR_OBJ_SIZE as u64,
        oid::ObjKind::Btree => inode::BTREE_NODE_SIZE as u64,
        oid::ObjKind::Ledger => 4 << 20,
        oid::ObjKind::Data | oid::ObjKind::Vmstate => {
            let s = st.shift_of(oid::oid_to_vid(oid));
            if (crate::proto::MIN_BLOCK_SIZE_SHIFT..=crate::proto::MAX_BLOCK_SIZE_SHIFT)
                .contains(&s)
            {
                1u64 << s
            } else {
                crate::proto::SD_DATA_OBJ_SIZE
            }
        }
    }
}

/// The bytes of a C string stored in `b` (up to the first NUL).
pub(crate) fn cstr(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// (capacity, available) of the filesystem holding `path`.
pub(crate) fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if r != 0 {
        return None;
    }
    let f = s.f_frsize as u64;
    Some((s.f_blocks as u64 * f, s.f_bavail as u64 * f))
}

/// Decodes the VDI union of a request (helper for the VDI ops).
pub(crate) fn vdi_args(h: &ReqHeader) -> VdiArgs {
    VdiArgs::decode(&h.args)
}
