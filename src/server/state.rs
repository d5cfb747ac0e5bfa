//! Cluster state: what sheep keeps in `sys->cinfo`, the vid bitmaps and the
//! per-vid `vdi_state` entries.
//!
//! Everything except locks is persisted in `DIR/state.json`, rewritten
//! atomically (temporary file, fsync, rename, directory fsync) whenever it
//! changes. Locks live in memory only, as on a real sheep.

use super::error::ServerError;
use crate::proto::bitmap::VidBitmap;
use crate::proto::node::{lock_state, NodeId, VdiState};
use crate::proto::{cluster_flags, cluster_status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

const STATE_VERSION: u32 = 1;

/// One vid's state (`struct vdi_state_entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiEntry {
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub snapshot: bool,
    pub deleted: bool,
    pub parent: u32,
    // In memory only.
    pub lock_state: u32,
    pub owner: NodeId,
    pub participants: Vec<(u32, NodeId)>,
}

impl VdiEntry {
    pub fn new(
        copies: u8,
        copy_policy: u8,
        block_size_shift: u8,
        snapshot: bool,
        parent: u32,
    ) -> Self {
        VdiEntry {
            copies,
            copy_policy,
            block_size_shift,
            snapshot,
            deleted: false,
            parent,
            lock_state: lock_state::UNLOCKED,
            owner: NodeId::default(),
            participants: Vec::new(),
        }
    }

    pub fn to_wire(&self, vid: u32) -> VdiState {
        VdiState {
            vid,
            nr_copies: self.copies,
            snapshot: self.snapshot as u8,
            deleted: self.deleted as u8,
            copy_policy: self.copy_policy,
            block_size_shift: self.block_size_shift,
            parent_vid: self.parent,
            lock_state: self.lock_state,
            lock_owner: self.owner,
            participants: self.participants.clone(),
        }
    }
}

/// A VDI operation that changes several files, recorded in the state before
/// its first change and cleared by the state commit that finishes it. After a
/// crash, startup (or the next VDI operation) rolls it forward when its new
/// inode is complete and back otherwise ([`crate::server::Sheep`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub op: IntentOp,
    /// The vid that becomes a snapshot (snapshot, rebase; 0 otherwise).
    pub snap: u32,
    /// The vid whose map is copied and whose references are bumped (0 for a
    /// fresh create).
    pub src: u32,
    /// The vid being created, or deleted for [`IntentOp::Delete`].
    pub vid: u32,
    /// The new inode's create_time, also the snap_ctime given to `snap`.
    pub time: u64,
    /// What the finishing commit registers (`notify_vdi_add` arguments).
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub parent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentOp {
    Create,
    Clone,
    Snapshot,
    Rebase,
    Delete,
}

impl IntentOp {
    /// Name used in logs and crash points.
    pub fn name(self) -> &'static str {
        match self {
            IntentOp::Create => "create",
            IntentOp::Clone => "clone",
            IntentOp::Snapshot => "snapshot",
            IntentOp::Rebase => "rebase",
            IntentOp::Delete => "delete",
        }
    }
}

/// The in-memory cluster state.
#[derive(Clone)]
pub struct State {
    pub formatted: bool,
    pub status: u8,
    pub ctime: u64,
    pub epoch: u32,
    /// When epoch 1 started (Unix seconds).
    pub epoch_time: u64,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub flags: u16,
    pub store: String,
    pub disable_recovery: bool,
    pub inuse: VidBitmap,
    pub deleted: VidBitmap,
    pub vdis: BTreeMap<u32, VdiEntry>,
    /// The VDI operation in progress (persisted; see [`Intent`]).
    pub pending: Option<Intent>,
    /// Vids whose data objects are read-only although they are not (yet)
    /// snapshots in `vdis`: a snapshot of them is in progress. In memory only.
    pub frozen: HashSet<u32>,
}

impl State {
    /// A never-formatted node: sheep starts with AUTO_VNODES set.
    pub fn unformatted() -> State {
        State {
            formatted: false,
            status: cluster_status::WAIT,
            ctime: 0,
            epoch: 0,
            epoch_time: 0,
            nr_copies: 0,
            copy_policy: 0,
            block_size_shift: 0,
            flags: cluster_flags::AUTO_VNODES,
            store: String::new(),
            disable_recovery: false,
            inuse: VidBitmap::new(),
            deleted: VidBitmap::new(),
            vdis: BTreeMap::new(),
            pending: None,
            frozen: HashSet::new(),
        }
    }

    pub fn use_lock(&self) -> bool {
        self.flags & cluster_flags::USE_LOCK != 0
    }

    pub fn recycle_vid(&self) -> bool {
        self.flags & cluster_flags::RECYCLE_VID != 0
    }

    /// `vid_is_snapshot`: from the vdi state (unknown vids are not snapshots).
    pub fn is_snapshot(&self, vid: u32) -> bool {
        self.vdis.get(&vid).map(|e| e.snapshot).unwrap_or(false)
    }

    /// Whether the data objects of `vid` are read-only: it is a snapshot, or
    /// is becoming one.
    pub fn data_readonly(&self, vid: u32) -> bool {
        self.is_snapshot(vid) || self.frozen.contains(&vid)
    }

    /// `get_vdi_copy_number`: unknown vids get the cluster default.
    pub fn copies_of(&self, vid: u32) -> u8 {
        self.vdis
            .get(&vid)
            .map(|e| e.copies)
            .unwrap_or(self.nr_copies)
    }

    /// `get_vdi_block_size_shift`: unknown vids get the cluster default.
    pub fn shift_of(&self, vid: u32) -> u8 {
        self.vdis
            .get(&vid)
            .map(|e| e.block_size_shift)
            .unwrap_or(self.block_size_shift)
    }

    /// `add_vdi_state`: insert or update (an existing entry keeps its lock and
    /// keeps its parent unless a non-zero one is given).
    pub fn add_vdi(
        &mut self,
        vid: u32,
        copies: u8,
        snapshot: bool,
        cp: u8,
        shift: u8,
        parent: u32,
    ) {
        match self.vdis.get_mut(&vid) {
            Some(e) => {
                e.copies = copies;
                e.snapshot = snapshot;
                e.copy_policy = cp;
                e.block_size_shift = shift;
                if parent != 0 {
                    e.parent = parent;
                }
            }
            None => {
                self.vdis
                    .insert(vid, VdiEntry::new(copies, cp, shift, snapshot, parent));
            }
        }
    }

    /// `cluster_notify_vdi_add`: the old vid becomes a snapshot, the new one
    /// is registered with it as parent.
    pub fn notify_vdi_add(
        &mut self,
        new_vid: u32,
        copies: u8,
        old_vid: u32,
        cp: u8,
        shift: u8,
        set_bitmap: bool,
    ) {
        if old_vid != 0 {
            let (oc, os) = (self.copies_of(old_vid), self.shift_of(old_vid));
            self.add_vdi(old_vid, oc, true, cp, os, 0);
        }
        if set_bitmap {
            self.inuse.set(new_vid);
        }
        self.add_vdi(new_vid, copies, false, cp, shift, old_vid);
    }

    /// Largest object any request may carry (data objects of the VDI with the
    /// largest block_size_shift, or an inode).
    pub fn max_object_size(&self) -> u64 {
        let shift = self
            .vdis
            .values()
            .map(|e| e.block_size_shift)
            .chain(std::iter::once(self.block_size_shift))
            .filter(|&s| s <= crate::proto::MAX_BLOCK_SIZE_SHIFT)
            .max()
            .unwrap_or(crate::proto::SD_DEFAULT_BLOCK_SIZE_SHIFT);
        (1u64 << shift).max(crate::proto::inode::SD_INODE_SIZE as u64)
    }

    fn to_persist(&self) -> Persist {
        Persist {
            version: STATE_VERSION,
            formatted: self.formatted,
            ctime: self.ctime,
            epoch: self.epoch,
            epoch_time: self.epoch_time,
            nr_copies: self.nr_copies,
            copy_policy: self.copy_policy,
            block_size_shift: self.block_size_shift,
            flags: self.flags,
            store: self.store.clone(),
            disable_recovery: self.disable_recovery,
            inuse: self.inuse.iter_set().collect(),
            deleted: self.deleted.iter_set().collect(),
            vdis: self
                .vdis
                .iter()
                .map(|(&vid, e)| VdiRec {
                    vid,
                    copies: e.copies,
                    copy_policy: e.copy_policy,
                    block_size_shift: e.block_size_shift,
                    snapshot: e.snapshot,
                    deleted: e.deleted,
                    parent: e.parent,
                })
                .collect(),
            pending: self.pending.clone(),
        }
    }

    fn from_persist(p: Persist) -> State {
        let mut s = State::unformatted();
        s.formatted = p.formatted;
        s.status = if p.formatted {
            cluster_status::OK
        } else {
            cluster_status::WAIT
        };
        s.ctime = p.ctime;
        s.epoch = p.epoch;
        s.epoch_time = p.epoch_time;
        s.nr_copies = p.nr_copies;
        s.copy_policy = p.copy_policy;
        s.block_size_shift = p.block_size_shift;
        s.flags = p.flags;
        s.store = p.store;
        s.disable_recovery = p.disable_recovery;
        for v in p.inuse {
            s.inuse.set(v);
        }
        for v in p.deleted {
            s.deleted.set(v);
        }
        for r in p.vdis {
            let mut e = VdiEntry::new(
                r.copies,
                r.copy_policy,
                r.block_size_shift,
                r.snapshot,
                r.parent,
            );
            e.deleted = r.deleted;
            s.vdis.insert(r.vid, e);
        }
        s.pending = p.pending;
        s
    }
}

#[derive(Serialize, Deserialize)]
struct Persist {
    version: u32,
    formatted: bool,
    ctime: u64,
    epoch: u32,
    epoch_time: u64,
    nr_copies: u8,
    copy_policy: u8,
    block_size_shift: u8,
    flags: u16,
    store: String,
    disable_recovery: bool,
    inuse: Vec<u32>,
    deleted: Vec<u32>,
    vdis: Vec<VdiRec>,
    /// Absent in files written before intents existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Intent>,
}

#[derive(Serialize, Deserialize)]
struct VdiRec {
    vid: u32,
    copies: u8,
    copy_policy: u8,
    block_size_shift: u8,
    snapshot: bool,
    deleted: bool,
    parent: u32,
}

/// Where the state lives and how it is written.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn load(&self) -> Result<State, ServerError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::unformatted()),
            Err(e) => {
                return Err(ServerError::State {
                    path: self.path.clone(),
                    what: e.to_string(),
                })
            }
        };
        let p: Persist = serde_json::from_slice(&bytes).map_err(|e| ServerError::State {
            path: self.path.clone(),
            what: format!("corrupt: {e}"),
        })?;
        if p.version != STATE_VERSION {
            return Err(ServerError::State {
                path: self.path.clone(),
                what: format!("unsupported version {}", p.version),
            });
        }
        Ok(State::from_persist(p))
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, s: &State) -> std::io::Result<()> {
        let json = serde_json::to_vec(&s.to_persist()).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path());
        let mut s = f.load().unwrap();
        assert!(!s.formatted);
        assert_eq!(s.flags, cluster_flags::AUTO_VNODES);
        s.formatted = true;
        s.ctime = 42;
        s.epoch = 1;
        s.nr_copies = 3;
        s.block_size_shift = 22;
        s.store = "plain".into();
        s.inuse.set(0x7c2b25);
        s.deleted.set(0x7c2b25);
        s.notify_vdi_add(0x7c2b26, 3, 0x7c2b25, 0, 22, true);
        let it = Intent {
            op: IntentOp::Snapshot,
            snap: 0x7c2b26,
            src: 0x7c2b26,
            vid: 0x7c2b27,
            time: 99 << 32,
            copies: 3,
            copy_policy: 0,
            block_size_shift: 22,
            parent: 0x7c2b26,
        };
        s.pending = Some(it.clone());
        s.frozen.insert(0x7c2b26);
        f.save(&s).unwrap();
        let t = f.load().unwrap();
        assert_eq!(t.pending, Some(it));
        assert!(t.frozen.is_empty(), "frozen is in memory only");
        // Files written before intents existed still load.
        s.pending = None;
        f.save(&s).unwrap();
        assert!(!std::fs::read_to_string(f.path())
            .unwrap()
            .contains("pending"));
        let t = f.load().unwrap();
        assert_eq!(t.pending, None);
        assert_eq!(t.status, cluster_status::OK);
        assert!(t.inuse.test(0x7c2b26) && t.deleted.test(0x7c2b25));
        assert!(t.is_snapshot(0x7c2b25));
        assert_eq!(t.vdis[&0x7c2b26].parent, 0x7c2b25);
        assert_eq!(t.copies_of(1), 3);
        std::fs::write(f.path(), b"{").unwrap();
        assert!(f.load().is_err());
    }
}
