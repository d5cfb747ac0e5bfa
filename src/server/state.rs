//! Cluster state: what sheep keeps in `sys->cinfo`, the vid bitmaps and the
//! per-vid `vdi_state` entries.
//!
//! Everything except locks is persisted in `DIR/state.json` and
//! `DIR/state.journal` ([`StateFile`]): each change is one journal line, so
//! a commit costs the same with 10 VDIs or 100,000. Locks live in memory
//! only, as on a real sheep.

use super::error::ServerError;
use crate::proto::bitmap::VidBitmap;
use crate::proto::node::{lock_state, NodeId, VdiState};
use crate::proto::{cluster_flags, cluster_status};
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// 2: `next_seq` and the journal. Version 1 files (no journal) still load;
/// an older sheep-lite refuses a version 2 store instead of ignoring its journal.
const STATE_VERSION: u32 = 2;

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

    /// The persisted scalars.
    fn header(&self) -> Header {
        Header {
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
            pending: self.pending.clone(),
        }
    }

    fn set_header(&mut self, h: Header) {
        self.formatted = h.formatted;
        self.status = if h.formatted {
            cluster_status::OK
        } else {
            cluster_status::WAIT
        };
        self.ctime = h.ctime;
        self.epoch = h.epoch;
        self.epoch_time = h.epoch_time;
        self.nr_copies = h.nr_copies;
        self.copy_policy = h.copy_policy;
        self.block_size_shift = h.block_size_shift;
        self.flags = h.flags;
        self.store = h.store;
        self.disable_recovery = h.disable_recovery;
        self.pending = h.pending;
    }

    /// Inserts or replaces the persisted part of a vid's entry; an existing
    /// entry keeps its (in-memory) lock.
    fn set_rec(&mut self, r: &VdiRec) {
        let e = self.vdis.entry(r.vid).or_insert_with(|| {
            VdiEntry::new(
                r.copies,
                r.copy_policy,
                r.block_size_shift,
                r.snapshot,
                r.parent,
            )
        });
        e.copies = r.copies;
        e.copy_policy = r.copy_policy;
        e.block_size_shift = r.block_size_shift;
        e.snapshot = r.snapshot;
        e.deleted = r.deleted;
        e.parent = r.parent;
    }

    fn to_persist(&self, next_seq: u64) -> Persist {
        Persist {
            version: STATE_VERSION,
            next_seq,
            hdr: self.header(),
            inuse: self.inuse.iter_set().collect(),
            deleted: self.deleted.iter_set().collect(),
            vdis: self
                .vdis
                .iter()
                .map(|(&vid, e)| VdiRec::of(vid, e))
                .collect(),
        }
    }

    fn from_persist(p: Persist) -> State {
        let mut s = State::unformatted();
        s.set_header(p.hdr);
        for v in p.inuse {
            s.inuse.set(v);
        }
        for v in p.deleted {
            s.deleted.set(v);
        }
        for r in &p.vdis {
            s.set_rec(r);
        }
        s
    }

    /// What changed in the persisted part from `self` to `new`. Costs a
    /// compare of the bitmaps and the entries, no I/O.
    fn delta(&self, new: &State, seq: u64) -> Delta {
        let mut d = Delta {
            seq,
            ..Delta::default()
        };
        let hdr = new.header();
        if hdr != self.header() {
            d.hdr = Some(hdr);
        }
        bit_changes(
            &self.inuse,
            &new.inuse,
            &mut d.inuse_set,
            &mut d.inuse_clear,
        );
        bit_changes(
            &self.deleted,
            &new.deleted,
            &mut d.deleted_set,
            &mut d.deleted_clear,
        );
        for (&vid, e) in &new.vdis {
            let r = VdiRec::of(vid, e);
            if self.vdis.get(&vid).map(|o| VdiRec::of(vid, o)) != Some(r.clone()) {
                d.vdis.push(r);
            }
        }
        d.removed = self
            .vdis
            .keys()
            .filter(|v| !new.vdis.contains_key(v))
            .copied()
            .collect();
        d
    }

    fn apply(&mut self, d: &Delta) {
        if let Some(h) = &d.hdr {
            self.set_header(h.clone());
        }
        d.inuse_set.iter().for_each(|&v| self.inuse.set(v));
        d.inuse_clear.iter().for_each(|&v| self.inuse.clear(v));
        d.deleted_set.iter().for_each(|&v| self.deleted.set(v));
        d.deleted_clear.iter().for_each(|&v| self.deleted.clear(v));
        for r in &d.vdis {
            self.set_rec(r);
        }
        for v in &d.removed {
            self.vdis.remove(v);
        }
    }
}

/// Appends to `set` the bits set in `new` but not in `old`, to `clear` the
/// reverse. Equal 64-byte runs are skipped with one compare each.
fn bit_changes(old: &VidBitmap, new: &VidBitmap, set: &mut Vec<u32>, clear: &mut Vec<u32>) {
    const RUN: usize = 64;
    let runs = old.as_bytes().chunks(RUN).zip(new.as_bytes().chunks(RUN));
    for (r, (a, b)) in runs.enumerate().filter(|(_, (a, b))| a != b) {
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            for bit in (0..8).filter(|bit| (x ^ y) & (1 << bit) != 0) {
                let vid = ((r * RUN + i) * 8 + bit) as u32;
                if y & (1 << bit) != 0 {
                    set.push(vid);
                } else {
                    clear.push(vid);
                }
            }
        }
    }
}

/// The persisted scalars of [`State`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct Header {
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
    /// Absent in files written before intents existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Intent>,
}

/// The snapshot, `state.json`.
#[derive(Serialize, Deserialize)]
struct Persist {
    version: u32,
    /// The first journal record this snapshot does not contain (absent,
    /// 0, in version 1 files, which had no journal).
    #[serde(default)]
    next_seq: u64,
    #[serde(flatten)]
    hdr: Header,
    inuse: Vec<u32>,
    deleted: Vec<u32>,
    vdis: Vec<VdiRec>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct VdiRec {
    vid: u32,
    copies: u8,
    copy_policy: u8,
    block_size_shift: u8,
    snapshot: bool,
    deleted: bool,
    parent: u32,
}

impl VdiRec {
    fn of(vid: u32, e: &VdiEntry) -> VdiRec {
        VdiRec {
            vid,
            copies: e.copies,
            copy_policy: e.copy_policy,
            block_size_shift: e.block_size_shift,
            snapshot: e.snapshot,
            deleted: e.deleted,
            parent: e.parent,
        }
    }
}

/// One commit, a line of `state.journal`. Every field is an absolute value,
/// so replaying a record the snapshot already holds changes nothing.
#[derive(Default, Serialize, Deserialize)]
struct Delta {
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hdr: Option<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vdis: Vec<VdiRec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inuse_set: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inuse_clear: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleted_set: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleted_clear: Vec<u32>,
}

/// Journal records before a snapshot is due, at least; with more VDIs the
/// snapshot waits for as many records as there are VDIs, so its cost
/// (proportional to the VDI count) is spread over that many commits.
const COMPACT_MIN: u64 = 4096;

/// Where the state lives and how it is written: a snapshot (`state.json`,
/// rewritten atomically: temporary file, fsync, rename, directory fsync) and
/// a journal (`state.journal`, one line per commit, appended and
/// fdatasync'ed), so a commit costs one small write whatever the number of
/// VDIs. [`Journal::snapshot`] folds the journal into a new snapshot.
pub struct StateFile {
    path: PathBuf,
    journal: Mutex<Journal>,
}

/// The open journal; holding it serialises commits.
pub struct Journal {
    snapshot_path: PathBuf,
    path: PathBuf,
    file: Option<File>,
    next_seq: u64,
    /// Records since the snapshot.
    records: u64,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
            journal: Mutex::new(Journal {
                snapshot_path: dir.join("state.json"),
                path: dir.join("state.journal"),
                file: None,
                next_seq: 0,
                records: 0,
            }),
        }
    }

    fn corrupt(&self, path: &Path, what: impl std::fmt::Display) -> ServerError {
        ServerError::State {
            path: path.to_path_buf(),
            what: what.to_string(),
        }
    }

    /// Reads the snapshot and replays the journal over it. A last record
    /// cut short by a crash was never acknowledged: it is dropped.
    pub fn load(&self) -> Result<State, ServerError> {
        let mut j = self.journal.lock();
        let (mut state, mut next_seq) = match std::fs::read(&self.path) {
            Ok(bytes) => {
                let p: Persist = serde_json::from_slice(&bytes)
                    .map_err(|e| self.corrupt(&self.path, format_args!("corrupt: {e}")))?;
                if !(1..=STATE_VERSION).contains(&p.version) {
                    return Err(self.corrupt(
                        &self.path,
                        format_args!("unsupported version {}", p.version),
                    ));
                }
                let seq = p.next_seq;
                (State::from_persist(p), seq)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::unformatted(), 0),
            Err(e) => return Err(self.corrupt(&self.path, e)),
        };
        let journal = match std::fs::read(&j.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.corrupt(&j.path, e)),
        };
        let (mut good, mut records) = (0usize, 0u64);
        let mut rest = &journal[..];
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                break; // torn last record
            };
            let d: Delta = match serde_json::from_slice(&rest[..end]) {
                Ok(d) => d,
                Err(_) if end + 1 == rest.len() => break, // torn last record
                Err(e) => {
                    return Err(
                        self.corrupt(&j.path, format_args!("corrupt record at byte {good}: {e}"))
                    )
                }
            };
            if d.seq >= next_seq {
                state.apply(&d);
                next_seq = d.seq + 1;
            }
            records += 1;
            good += end + 1;
            rest = &rest[end + 1..];
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&j.path)
            .map_err(|e| self.corrupt(&j.path, e))?;
        if good < journal.len() {
            tracing::warn!(
                path = %j.path.display(),
                bytes = journal.len() - good,
                "dropping a state journal record cut short by a crash"
            );
            file.set_len(good as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| self.corrupt(&j.path, e))?;
        }
        sync_dir(&j.path).map_err(|e| self.corrupt(&j.path, e))?;
        j.file = Some(file);
        j.next_seq = next_seq;
        j.records = records;
        Ok(state)
    }

    /// The journal, for a commit ([`Journal::record`]).
    pub fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Journal {
    /// Makes the change from `old` to `new` durable: one appended line.
    pub fn record(&mut self, old: &State, new: &State) -> std::io::Result<()> {
        let d = old.delta(new, self.next_seq);
        let mut line = serde_json::to_vec(&d).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("state journal not open"))?;
        f.write_all(&line)?;
        f.sync_data()?;
        self.next_seq += 1;
        self.records += 1;
        Ok(())
    }

    /// Whether the journal is long enough to fold into a snapshot of a
    /// state with `vdis` entries.
    pub fn snapshot_due(&self, vdis: usize) -> bool {
        self.records >= COMPACT_MIN.max(vdis as u64)
    }

    /// Writes `s` (which must hold every recorded change) as the snapshot
    /// and empties the journal. A crash in between leaves records the new
    /// snapshot already holds; `load` skips them by sequence number.
    pub fn snapshot(&mut self, s: &State) -> std::io::Result<()> {
        let json =
            serde_json::to_vec(&s.to_persist(self.next_seq)).map_err(std::io::Error::other)?;
        let tmp = self.snapshot_path.with_extension("json.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.snapshot_path)?;
        sync_dir(&self.snapshot_path)?;
        if let Some(f) = &self.file {
            f.set_len(0)?;
            f.sync_all()?;
        }
        self.records = 0;
        Ok(())
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits `f` the way `Sheep::commit` does and returns the new state.
    fn commit(f: &StateFile, s: &State, change: impl Fn(&mut State)) -> State {
        let mut next = s.clone();
        change(&mut next);
        f.lock().record(s, &next).unwrap();
        next
    }

    fn formatted(f: &StateFile) -> State {
        let s = f.load().unwrap();
        assert!(!s.formatted);
        assert_eq!(s.flags, cluster_flags::AUTO_VNODES);
        commit(f, &s, |s| {
            s.formatted = true;
            s.ctime = 42;
            s.epoch = 1;
            s.nr_copies = 3;
            s.block_size_shift = 22;
            s.store = "plain".into();
        })
    }

    fn same(a: &State, b: &State) {
        assert!(a.header() == b.header());
        assert_eq!(a.inuse, b.inuse);
        assert_eq!(a.deleted, b.deleted);
        let recs =
            |s: &State| -> Vec<VdiRec> { s.vdis.iter().map(|(&v, e)| VdiRec::of(v, e)).collect() };
        assert!(recs(a) == recs(b));
    }

    #[test]
    fn journal_and_snapshot_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path());
        let s = formatted(&f);
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
        let s = commit(&f, &s, |s| {
            s.inuse.set(0x7c2b25);
            s.deleted.set(0x7c2b25);
            s.notify_vdi_add(0x7c2b26, 3, 0x7c2b25, 0, 22, true);
            s.pending = Some(it.clone());
            s.frozen.insert(0x7c2b26);
        });
        // From the journal alone.
        let t = StateFile::new(d.path()).load().unwrap();
        same(&s, &t);
        assert_eq!(t.pending, Some(it));
        assert!(t.frozen.is_empty(), "frozen is in memory only");
        assert_eq!(t.status, cluster_status::OK);
        assert!(t.inuse.test(0x7c2b26) && t.deleted.test(0x7c2b25));
        assert!(t.is_snapshot(0x7c2b25));
        assert_eq!(t.vdis[&0x7c2b26].parent, 0x7c2b25);
        assert_eq!(t.copies_of(1), 3);
        // Clearing bits and removing entries replay too.
        let s = commit(&f, &s, |s| {
            s.pending = None;
            s.deleted.clear(0x7c2b25);
            s.vdis.remove(&0x7c2b26);
        });
        same(&s, &StateFile::new(d.path()).load().unwrap());
        // A snapshot empties the journal; later records still replay.
        f.lock().snapshot(&s).unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("state.journal"))
                .unwrap()
                .len(),
            0
        );
        assert!(!std::fs::read_to_string(f.path())
            .unwrap()
            .contains("pending"));
        let s = commit(&f, &s, |s| s.add_vdi(7, 2, false, 0, 22, 0));
        same(&s, &StateFile::new(d.path()).load().unwrap());
        std::fs::write(f.path(), b"{").unwrap();
        assert!(StateFile::new(d.path()).load().is_err());
    }

    #[test]
    fn torn_last_record_is_dropped_and_middle_corruption_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path());
        let s = formatted(&f);
        let s2 = commit(&f, &s, |s| s.inuse.set(5));
        let jpath = d.path().join("state.journal");
        let good = std::fs::read(&jpath).unwrap();
        // A crash during the next append: half a line.
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"seq":2,"inuse_set":[6"#);
        std::fs::write(&jpath, &torn).unwrap();
        let f2 = StateFile::new(d.path());
        let t = f2.load().unwrap();
        same(&s2, &t);
        assert_eq!(std::fs::read(&jpath).unwrap(), good, "torn tail truncated");
        // Appends after the repair land on a clean line.
        let s3 = commit(&f2, &t, |s| s.inuse.set(6));
        same(&s3, &StateFile::new(d.path()).load().unwrap());
        // Garbage before the last record is corruption, not a torn write.
        let mut bad = b"{nonsense}\n".to_vec();
        bad.extend_from_slice(&std::fs::read(&jpath).unwrap());
        std::fs::write(&jpath, bad).unwrap();
        let e = StateFile::new(d.path()).load().err().expect("refused");
        assert!(format!("{e:?}").contains("corrupt record"), "{e:?}");
    }

    #[test]
    fn records_older_than_the_snapshot_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path());
        let s = formatted(&f);
        let s = commit(&f, &s, |s| s.add_vdi(9, 3, false, 0, 22, 0));
        let old_journal = std::fs::read(d.path().join("state.journal")).unwrap();
        let s = commit(&f, &s, |s| {
            s.vdis.remove(&9);
        });
        f.lock().snapshot(&s).unwrap();
        // A crash between the snapshot's rename and the journal's truncation
        // leaves records the snapshot already holds: replaying them would
        // bring vid 9 back.
        std::fs::write(d.path().join("state.journal"), old_journal).unwrap();
        let t = StateFile::new(d.path()).load().unwrap();
        assert!(!t.vdis.contains_key(&9));
        same(&s, &t);
    }

    #[test]
    fn version_1_files_load() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("state.json"),
            br#"{"version":1,"formatted":true,"ctime":42,"epoch":1,"epoch_time":7,"nr_copies":3,"copy_policy":0,"block_size_shift":22,"flags":0,"store":"plain","disable_recovery":false,"inuse":[8137509],"deleted":[],"vdis":[{"vid":8137509,"copies":3,"copy_policy":0,"block_size_shift":22,"snapshot":false,"deleted":false,"parent":0}]}"#,
        )
        .unwrap();
        let t = StateFile::new(d.path()).load().unwrap();
        assert!(t.formatted && t.inuse.test(0x7c2b25) && t.vdis.contains_key(&0x7c2b25));
        assert_eq!(t.pending, None);
    }

    #[test]
    fn snapshot_is_due_after_as_many_records_as_vdis() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path());
        f.load().unwrap();
        let mut j = f.lock();
        j.records = COMPACT_MIN - 1;
        assert!(!j.snapshot_due(10));
        j.records = COMPACT_MIN;
        assert!(j.snapshot_due(10) && !j.snapshot_due(10_000));
        j.records = 10_000;
        assert!(j.snapshot_due(10_000));
    }
}
