//! VDI operations: name lookup and vid allocation (§5.6), NEW_VDI
//! (create/clone/snapshot/rebase, §5.4), DEL_VDI (§5.9), attributes (§5.8)
//! and locking (§7), following sheep's algorithms step by step so that vids,
//! inode bytes and results match a real cluster.

use super::core::{cstr, vdi_args, Reply, Req, Sheep};
use super::error::OpResult;
use super::fault;
use super::state::{Intent, IntentOp};
use crate::proto::bytes::{get_u32, get_u64, put_u32, put_u64};
use crate::proto::header::VdiRsp;
use crate::proto::inode::{
    self, DATA_VDI_ID_OFFSET, GREF_OFFSET, SD_INODE_DATA_INDEX, SD_INODE_HEADER_SIZE, SD_INODE_SIZE,
};
use crate::proto::node::lock_state;
use crate::proto::{
    attr, flags, oid, vdi_name_hash, SdRes, LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED, SD_MAX_VDI_LEN,
    SD_NR_VDIS,
};

const NAME_LEN: usize = SD_MAX_VDI_LEN;
const SNAP_ID_OFF: usize = 556;
const VDI_ID_OFF: usize = 560;
const CREATE_TIME_OFF: usize = 512;
/// Participant states of shared locks.
const SHARED_MODIFIED: u32 = 1;
const SHARED_SHARED: u32 = 2;
const SHARED_INVALIDATED: u32 = 3;

/// What a lookup request asks for (`struct vdi_iocb`).
struct Query<'a> {
    name: &'a [u8],
    /// None when the payload had no tag field (256-byte form).
    tag: Option<&'a [u8]>,
    snapid: u32,
}

impl Query<'_> {
    fn has_tag(&self) -> bool {
        self.tag.map(|t| !cstr(t).is_empty()).unwrap_or(false) || self.snapid != 0
    }
}

/// `struct vdi_info`: what a lookup found.
#[derive(Default, Debug)]
struct Info {
    vid: u32,
    snapid: u32,
    create_time: u64,
    free_bit: u32,
}

/// Parses name[256] (+ tag[256]); other lengths are INVALID_PARMS.
fn parse_name_tag(data: &[u8], snapid: u32) -> OpResult<Query<'_>> {
    match data.len() {
        NAME_LEN => Ok(Query {
            name: &data[..NAME_LEN],
            tag: None,
            snapid,
        }),
        l if l == 2 * NAME_LEN => Ok(Query {
            name: &data[..NAME_LEN],
            tag: Some(&data[NAME_LEN..]),
            snapid,
        }),
        _ => Err(SdRes::INVALID_PARMS),
    }
}

fn first_clear(bm: &crate::proto::bitmap::VidBitmap, from: u32) -> u32 {
    bm.next_clear(from).unwrap_or(SD_NR_VDIS)
}

impl Sheep {
    fn read_inode(&self, vid: u32, len: usize) -> OpResult<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.store.read(oid::vid_to_vdi_oid(vid), 0, &mut b)?;
        Ok(b)
    }

    /// `fill_vdi_info_range`: scans `[left, right)` downwards.
    fn fill_range(&self, left: u32, right: u32, q: &Query, info: &mut Info) -> OpResult<()> {
        let mut vdi_found = false;
        let mut below = right;
        while let Some(i) = self.prev_used(left.max(1), below) {
            below = i;
            let ino = self.read_inode(i, inode::LOOKUP_READ)?;
            if cstr(&ino[..NAME_LEN]) != cstr(q.name) {
                continue;
            }
            let snap_ctime = get_u64(&ino, inode::SNAP_CTIME_OFFSET);
            let snap_id = get_u32(&ino, SNAP_ID_OFF);
            let vdi_id = get_u32(&ino, VDI_ID_OFF);
            if q.has_tag() {
                if snap_ctime == 0 {
                    vdi_found = true;
                    info.vid = vdi_id;
                    continue;
                }
                let itag = cstr(&ino[256..512]);
                let tag_match = !itag.is_empty() && q.tag.map(|t| cstr(t) == itag).unwrap_or(false);
                if !tag_match && q.snapid != snap_id {
                    continue;
                }
            } else {
                info.snapid = snap_id.wrapping_add(1);
                if snap_ctime != 0 {
                    // The working VDI was deleted; only snapshots remain.
                    info.vid = vdi_id;
                    break;
                }
            }
            info.create_time = get_u64(&ino, CREATE_TIME_OFF);
            info.vid = vdi_id;
            return Ok(());
        }
        Err(if vdi_found {
            SdRes::NO_TAG
        } else {
            SdRes::NO_VDI
        })
    }

    /// The highest vid in `[left, below)` set in the in-use or deleted
    /// bitmap. The state lock is held only for the search, never across inode
    /// reads (a thread holding an object lock may need the state); the
    /// bitmaps cannot change in between, as lookups run under `vdi_lock`.
    fn prev_used(&self, left: u32, below: u32) -> Option<u32> {
        let st = self.state.read();
        let (u, d) = (st.inuse.as_bytes(), st.deleted.as_bytes());
        let mut v = below.min(SD_NR_VDIS);
        while v > left {
            let byte = (v / 8) as usize;
            if v % 8 == 0 && v - 8 >= left && u[byte - 1] | d[byte - 1] == 0 {
                v -= 8;
                continue;
            }
            v -= 1;
            if st.inuse.test(v) || st.deleted.test(v) {
                return Some(v);
            }
        }
        None
    }

    /// `vdi_lookup` (§5.6). The caller holds `vdi_lock`.
    fn lookup(&self, q: &Query, info: &mut Info) -> OpResult<()> {
        let (recycle, left, first_free) = {
            let st = self.state.read();
            let left = vdi_name_hash(cstr(q.name));
            (
                st.recycle_vid(),
                left,
                (first_clear(&st.inuse, 1), first_clear(&st.inuse, left)),
            )
        };
        if recycle {
            info.free_bit = first_free.0;
            let r = self.fill_range(1, SD_NR_VDIS, q, info);
            if r == Err(SdRes::NO_VDI) && info.vid != 0 && self.state.read().inuse.test(info.vid) {
                return Ok(());
            }
            return r;
        }
        let mut right = first_free.1;
        info.free_bit = right;
        if left == right {
            return Err(SdRes::NO_VDI);
        }
        if right == SD_NR_VDIS {
            right = first_free.0;
            info.free_bit = right;
            if right == SD_NR_VDIS {
                return Err(SdRes::FULL_VDI);
            }
        }
        if left < right {
            return self.fill_range(left, right, q, info);
        }
        let r = if right > 1 {
            self.fill_range(1, right, q, info)
        } else {
            Err(SdRes::NO_VDI)
        };
        match r {
            Err(SdRes::NO_VDI) | Err(SdRes::NO_TAG) => self.fill_range(left, SD_NR_VDIS, q, info),
            r => r,
        }
    }

    fn vdi_rsp(&self, vid: u32) -> [u8; crate::proto::header::RSP_ARGS_LEN] {
        let st = self.state.read();
        VdiRsp {
            vdi_id: vid,
            attr_id: 0,
            copies: st.copies_of(vid),
            block_size_shift: st.shift_of(vid),
        }
        .encode()
    }

    /// GET_VDI_INFO. Under `vdi_lock` for reading: never between the steps
    /// of a snapshot, clone or delete, when a name may have no working VDI.
    pub(crate) fn get_vdi_info(&self, req: &Req) -> Reply {
        let _v = self.vdi_lock.read();
        self.get_vdi_info_locked(req)
    }

    fn get_vdi_info_locked(&self, req: &Req) -> Reply {
        let a = vdi_args(&req.hdr);
        let q = match parse_name_tag(&req.data, a.snapid) {
            Ok(q) => q,
            Err(e) => return Reply::res(e),
        };
        let mut info = Info::default();
        match self.lookup(&q, &mut info) {
            Ok(()) => Reply::ok().with_args(self.vdi_rsp(info.vid)),
            Err(e) => Reply::res(e),
        }
    }

    /// LOCK_VDI (§7.1): a lookup, plus the lock when the cluster uses locking.
    /// The lock owner is this node, whoever the client is.
    pub(crate) fn lock_vdi(&self, req: &Req) -> Reply {
        let _v = self.vdi_lock.read();
        let r = self.get_vdi_info_locked(req);
        if r.result != SdRes::SUCCESS || !self.state.read().use_lock() {
            return r;
        }
        let vid = VdiRsp::decode(&r.args).vdi_id;
        let ty = vdi_args(&req.hdr).lock_type;
        let me = self.node.nid;
        let mut st = self.state.write();
        let Some(e) = st.vdis.get_mut(&vid) else {
            return Reply::res(SdRes::VDI_LOCKED).with_args(r.args);
        };
        let locked = match (ty, e.lock_state) {
            (LOCK_TYPE_NORMAL, lock_state::UNLOCKED) => {
                e.lock_state = lock_state::LOCKED;
                e.owner = me;
                true
            }
            (LOCK_TYPE_SHARED, lock_state::UNLOCKED) => {
                e.lock_state = lock_state::SHARED;
                e.participants = vec![(SHARED_MODIFIED, me)];
                true
            }
            (LOCK_TYPE_SHARED, lock_state::SHARED) => {
                if e.participants.len() >= crate::proto::SD_MAX_COPIES as usize
                    || e.participants.iter().any(|p| p.1 == me)
                {
                    false
                } else {
                    let modified = e.participants.iter().any(|p| p.0 == SHARED_MODIFIED);
                    let s = if modified {
                        SHARED_INVALIDATED
                    } else {
                        SHARED_SHARED
                    };
                    e.participants.push((s, me));
                    true
                }
            }
            _ => false,
        };
        if locked {
            tracing::info!(vid = format_args!("{vid:x}"), ty, "VDI locked");
            r
        } else {
            tracing::info!(vid = format_args!("{vid:x}"), ty, "VDI lock refused");
            Reply::res(SdRes::VDI_LOCKED).with_args(r.args)
        }
    }

    /// RELEASE_VDI (§7.2): always SUCCESS; the owner is not checked for NORMAL.
    pub(crate) fn release_vdi(&self, req: &Req) -> Reply {
        let a = vdi_args(&req.hdr);
        let me = self.node.nid;
        let mut st = self.state.write();
        if !st.use_lock() {
            return Reply::ok();
        }
        if let Some(e) = st.vdis.get_mut(&a.base_vdi_id) {
            match (a.lock_type, e.lock_state) {
                (LOCK_TYPE_NORMAL, lock_state::LOCKED) => {
                    e.lock_state = lock_state::UNLOCKED;
                    e.owner = Default::default();
                }
                (LOCK_TYPE_SHARED, lock_state::SHARED) => {
                    e.participants.retain(|p| p.1 != me);
                    if e.participants.is_empty() {
                        e.lock_state = lock_state::UNLOCKED;
                    }
                }
                _ => {}
            }
        }
        Reply::ok()
    }

    /// NEW_VDI (§5.4).
    pub(crate) fn new_vdi(&self, req: &Req) -> Reply {
        let a = vdi_args(&req.hdr);
        let (mut copies, mut cp, mut shift) = (a.copies, a.copy_policy, a.block_size_shift);
        {
            let st = self.state.read();
            if copies == 0 {
                copies = st.nr_copies;
                cp = st.copy_policy;
            }
            if shift == 0 {
                shift = st.block_size_shift;
            }
        }
        if cp != 0 {
            if cp & 0xf == 0 {
                return Reply::res(SdRes::INVALID_PARMS);
            }
            copies = (cp >> 4) * 2 + (cp & 0xf);
        }
        let rsp = |vid: u32| {
            VdiRsp {
                vdi_id: vid,
                attr_id: 0,
                copies,
                block_size_shift: shift,
            }
            .encode()
        };
        // Error replies carry no args: sheep answers a failed cluster
        // operation with a bare header (seen in the differential test).
        if req.data.len() != NAME_LEN {
            return Reply::res(SdRes::INVALID_PARMS);
        }
        // Objects must stay below 4 GiB (obj.offset is 32-bit) and the name
        // must not look like a deleted inode.
        if !(crate::proto::MIN_BLOCK_SIZE_SHIFT..=crate::proto::MAX_BLOCK_SIZE_SHIFT)
            .contains(&shift)
            || cstr(&req.data).is_empty()
            || a.store_policy > 1
        {
            return Reply::res(SdRes::INVALID_PARMS);
        }
        let p = NewVdi {
            name: &req.data,
            size: a.vdi_size,
            base: a.base_vdi_id,
            copies,
            cp,
            store_policy: a.store_policy,
            shift,
            time: crate::proto::sd_time_now(),
        };
        let _g = self.vdi_lock.write();
        let r = self.resolve_pending().and_then(|()| {
            if a.snapid != 0 {
                self.vdi_snapshot(&p)
            } else {
                self.vdi_create(&p)
            }
        });
        match r {
            Ok(vid) => {
                tracing::info!(
                    name = %String::from_utf8_lossy(cstr(p.name)),
                    vid = format_args!("{vid:x}"),
                    base = format_args!("{:x}", p.base),
                    snapshot = a.snapid != 0,
                    "new VDI"
                );
                Reply::ok().with_args(rsp(vid))
            }
            Err(e) => Reply::res(e),
        }
    }

    /// `vdi_create`: fresh create or clone.
    fn vdi_create(&self, p: &NewVdi) -> OpResult<u32> {
        let q = Query {
            name: p.name,
            tag: None,
            snapid: 0,
        };
        let mut info = Info::default();
        match self.lookup(&q, &mut info) {
            Ok(()) => return Err(SdRes::VDI_EXIST),
            Err(SdRes::NO_VDI) => {}
            Err(e) => return Err(e),
        }
        let snapid = if info.snapid == 0 { 1 } else { info.snapid };
        let it = Intent {
            op: if p.base == 0 {
                IntentOp::Create
            } else {
                IntentOp::Clone
            },
            snap: 0,
            src: p.base,
            vid: info.free_bit,
            time: p.time,
            copies: p.copies,
            copy_policy: p.cp,
            block_size_shift: p.shift,
            parent: if p.base == 0 { info.vid } else { p.base },
        };
        self.begin(&it)?;
        let r = if p.base == 0 {
            self.write_new_inode(p, snapid, it.vid, None)
        } else {
            self.bump_base_refs(p.base, None).and_then(|base| {
                fault::point("clone-base")?;
                self.write_new_inode(p, snapid, it.vid, Some(&base))
            })
        };
        self.finish(&it, r)
    }

    /// `vdi_snapshot`: snapshot (base = working) or rebase.
    ///
    /// The working VDI `w` is frozen first: from then on its data objects
    /// are READONLY, and no change admitted before is still in flight. Then,
    /// under its inode's lock, its map is copied and snap_ctime set in one
    /// atomic replacement of the inode, so a client that updates a map entry
    /// and then reads snap_ctime either had its entry copied or sees the
    /// snapshot. All of it is bracketed by an intent (crash safety).
    fn vdi_snapshot(&self, p: &NewVdi) -> OpResult<u32> {
        let q = Query {
            name: p.name,
            tag: None,
            snapid: 0,
        };
        let mut info = Info::default();
        self.lookup(&q, &mut info)?;
        let w = info.vid;
        let rebase = p.base != w;
        let it = Intent {
            op: if rebase {
                IntentOp::Rebase
            } else {
                IntentOp::Snapshot
            },
            snap: w,
            src: p.base,
            vid: info.free_bit,
            time: p.time,
            copies: p.copies,
            copy_policy: p.cp,
            block_size_shift: p.shift,
            parent: w,
        };
        self.begin(&it)?;
        let r = if !rebase {
            self.bump_base_refs(w, Some(p.time))
        } else {
            // Rebase: the current working VDI becomes a snapshot; the new one
            // is cloned from `base`.
            self.set_snap_ctime(w, p.time)
                .and_then(|()| self.bump_base_refs(p.base, None))
        }
        .and_then(|base| {
            fault::point(&format!("{}-base", it.op.name()))?;
            self.write_new_inode(p, info.snapid, it.vid, Some(&base))
        });
        self.finish(&it, r)
    }

    /// Records `it` durably before anything changes; freezes the VDI that
    /// becomes a snapshot.
    fn begin(&self, it: &Intent) -> OpResult<()> {
        self.commit(|s| s.pending = Some(it.clone()))?;
        if it.snap != 0 {
            self.freeze(it.snap);
        }
        if let Err(e) = fault::point(&format!("{}-intent", it.op.name())) {
            // Nothing changed yet, but the intent is there: undo it.
            self.finish(it, Err(e))?;
        }
        Ok(())
    }

    /// Makes the data objects of `vid` read-only (see `gates`).
    fn freeze(&self, vid: u32) {
        let _g = self.gate(vid).write();
        self.state.write().frozen.insert(vid);
    }

    /// Ends an operation: commits it when its steps succeeded, else undoes
    /// them.
    fn finish(&self, it: &Intent, r: OpResult<()>) -> OpResult<u32> {
        let r = r.and_then(|()| {
            fault::point(&format!("{}-inode", it.op.name()))?;
            self.complete(it)
        });
        match r {
            Ok(()) => Ok(it.vid),
            Err(e) => {
                tracing::warn!(?it, ?e, "VDI operation failed; undoing it");
                if let Err(e2) = self.roll_back(it) {
                    tracing::error!(
                        ?it,
                        ?e2,
                        "undoing the failed VDI operation failed; retried by the next one and at startup"
                    );
                }
                Err(e)
            }
        }
    }

    /// The commit that finishes a create/clone/snapshot/rebase: the new vid
    /// is registered (its parent becomes a snapshot) and the intent cleared.
    fn complete(&self, it: &Intent) -> OpResult<()> {
        self.commit(|s| {
            s.notify_vdi_add(
                it.vid,
                it.copies,
                it.parent,
                it.copy_policy,
                it.block_size_shift,
                false,
            );
            s.inuse.set(it.vid);
            s.pending = None;
            s.frozen.remove(&it.snap);
        })
    }

    /// Finishes or undoes the operation a crash (or a failed undo) left in
    /// the state. Runs at startup and before every VDI operation, under
    /// `vdi_lock` for writing. A deletion is always finished; the others are
    /// finished when their new inode is complete (it is written last, after
    /// every other change) and undone otherwise.
    pub(crate) fn resolve_pending(&self) -> OpResult<()> {
        let Some(it) = self.state.read().pending.clone() else {
            return Ok(());
        };
        if it.op == IntentOp::Delete {
            tracing::warn!(?it, "finishing an interrupted VDI deletion");
            return self.finish_delete(it.vid);
        }
        if self.new_inode_complete(&it)? {
            tracing::warn!(?it, "finishing an interrupted VDI operation");
            self.complete(&it)
        } else {
            tracing::warn!(?it, "undoing an interrupted VDI operation");
            self.roll_back(&it)
        }
    }

    /// Whether the inode `it` creates exists (creates are atomic, so an
    /// existing file is whole) and is this operation's (its create_time).
    fn new_inode_complete(&self, it: &Intent) -> OpResult<bool> {
        match self.read_inode(it.vid, inode::LOOKUP_READ) {
            Ok(h) => {
                Ok(get_u32(&h, VDI_ID_OFF) == it.vid && get_u64(&h, CREATE_TIME_OFF) == it.time)
            }
            Err(SdRes::NO_OBJ) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Undoes an unfinished create/clone/snapshot/rebase: drops its new inode,
    /// clears the snap_ctime it gave the working VDI (and, for a snapshot,
    /// the references it added with it), then clears the intent and thaws
    /// the VDI. References a clone or rebase added to its source may stay
    /// one too high: that only keeps objects longer, never loses any.
    fn roll_back(&self, it: &Intent) -> OpResult<()> {
        if self.new_inode_complete(it)? {
            match self.store.remove(oid::vid_to_vdi_oid(it.vid)) {
                Ok(()) | Err(SdRes::NO_OBJ) => {}
                Err(e) => return Err(e),
            }
        }
        match it.op {
            IntentOp::Snapshot => self.unbump_base(it.snap, it.time)?,
            IntentOp::Rebase => {
                let ioid = oid::vid_to_vdi_oid(it.snap);
                let _g = self.store.lock(ioid);
                let mut b = [0u8; 8];
                self.store
                    .read_locked(ioid, inode::SNAP_CTIME_OFFSET as u64, &mut b)?;
                if u64::from_le_bytes(b) == it.time {
                    self.store.write_locked(
                        ioid,
                        inode::SNAP_CTIME_OFFSET as u64,
                        &[0; 8],
                        true,
                    )?;
                }
            }
            _ => {}
        }
        self.commit(|s| {
            s.pending = None;
            s.frozen.remove(&it.snap);
        })
    }

    /// Sets snap_ctime of the working VDI `vid` (rebase).
    fn set_snap_ctime(&self, vid: u32, time: u64) -> OpResult<()> {
        let ioid = oid::vid_to_vdi_oid(vid);
        let _g = self.store.lock(ioid);
        self.store.write_locked(
            ioid,
            inode::SNAP_CTIME_OFFSET as u64,
            &time.to_le_bytes(),
            true,
        )
    }

    /// Reads the base inode, increments its references for every mapped entry
    /// (and sets snap_ctime when it becomes a snapshot), writes the changes
    /// back and returns the updated inode. The inode is replaced atomically
    /// (a crash leaves the old one or the new one), under its lock.
    fn bump_base_refs(&self, base: u32, snap_time: Option<u64>) -> OpResult<Vec<u8>> {
        let boid = oid::vid_to_vdi_oid(base);
        let _g = self.store.lock(boid);
        let mut ino = vec![0u8; SD_INODE_SIZE];
        self.store
            .read_locked(boid, 0, &mut ino)
            .map_err(|_| SdRes::BASE_VDI_READ)?;
        if let Some(t) = snap_time {
            put_u64(&mut ino, inode::SNAP_CTIME_OFFSET, t);
        }
        for i in 0..SD_INODE_DATA_INDEX {
            if get_u32(&ino, DATA_VDI_ID_OFFSET + 4 * i) != 0 {
                let off = GREF_OFFSET + 8 * i + 4;
                let c = get_u32(&ino, off);
                put_u32(&mut ino, off, c.wrapping_add(1));
            }
        }
        self.store
            .create_locked(boid, SD_INODE_SIZE as u64, &[(0, &ino)])
            .map_err(|e| {
                if e == SdRes::NO_SPACE {
                    e
                } else {
                    SdRes::BASE_VDI_WRITE
                }
            })?;
        Ok(ino)
    }

    /// Undoes [`Sheep::bump_base_refs`] of a snapshot if it happened (the
    /// inode has this snapshot's time): snap_ctime back to 0, one reference
    /// less per mapped entry. Entries rewritten since had their references
    /// cleared by that update, so they stay at 0.
    fn unbump_base(&self, base: u32, time: u64) -> OpResult<()> {
        let boid = oid::vid_to_vdi_oid(base);
        let _g = self.store.lock(boid);
        let mut ino = vec![0u8; SD_INODE_SIZE];
        self.store.read_locked(boid, 0, &mut ino)?;
        if get_u64(&ino, inode::SNAP_CTIME_OFFSET) != time {
            return Ok(());
        }
        put_u64(&mut ino, inode::SNAP_CTIME_OFFSET, 0);
        for i in 0..SD_INODE_DATA_INDEX {
            if get_u32(&ino, DATA_VDI_ID_OFFSET + 4 * i) != 0 {
                let off = GREF_OFFSET + 8 * i + 4;
                let c = get_u32(&ino, off);
                put_u32(&mut ino, off, c.saturating_sub(1));
            }
        }
        self.store
            .create_locked(boid, SD_INODE_SIZE as u64, &[(0, &ino)])
    }

    /// `alloc_inode` + create: a new inode, optionally cloned from `base`.
    fn write_new_inode(
        &self,
        p: &NewVdi,
        snapid: u32,
        vid: u32,
        base: Option<&[u8]>,
    ) -> OpResult<()> {
        let mut h = vec![0u8; SD_INODE_HEADER_SIZE];
        let name = cstr(p.name);
        let n = name.len().min(NAME_LEN - 1);
        h[..n].copy_from_slice(&name[..n]);
        put_u64(&mut h, CREATE_TIME_OFF, p.time);
        put_u64(&mut h, 536, p.size);
        h[552] = p.cp;
        h[553] = p.store_policy;
        h[554] = p.copies;
        h[555] = p.shift;
        put_u32(&mut h, SNAP_ID_OFF, snapid);
        put_u32(&mut h, VDI_ID_OFF, vid);
        put_u32(&mut h, 564, p.base);
        let ioid = oid::vid_to_vdi_oid(vid);
        let size = SD_INODE_SIZE as u64;
        let res = match base {
            None => {
                if p.store_policy == 1 {
                    let root = inode::encode_leaf(&[]);
                    self.store
                        .create(ioid, size, &[(0, &h), (DATA_VDI_ID_OFFSET as u64, &root)])
                } else {
                    self.store.create(ioid, size, &[(0, &h)])
                }
            }
            Some(b) => {
                // data_vdi_id is copied; each mapped entry's generation is the
                // base's plus one (its count starts at 0).
                let map = &b[DATA_VDI_ID_OFFSET..GREF_OFFSET];
                let mut gref = vec![0u8; SD_INODE_SIZE - GREF_OFFSET];
                for i in 0..SD_INODE_DATA_INDEX {
                    if get_u32(map, 4 * i) != 0 {
                        let g = get_u32(b, GREF_OFFSET + 8 * i);
                        put_u32(&mut gref, 8 * i, g.wrapping_add(1));
                    }
                }
                self.store.create(
                    ioid,
                    size,
                    &[
                        (0, &h),
                        (DATA_VDI_ID_OFFSET as u64, map),
                        (GREF_OFFSET as u64, &gref),
                    ],
                )
            }
        };
        res.map_err(|e| {
            if e == SdRes::NO_SPACE {
                e
            } else {
                SdRes::VDI_WRITE
            }
        })
    }

    /// DEL_VDI (§5.9). SUCCESS with the vid even when the deletion itself had
    /// to be abandoned because data_vdi_id still maps objects.
    pub(crate) fn del_vdi(&self, req: &Req) -> Reply {
        let a = vdi_args(&req.hdr);
        let q = match parse_name_tag(&req.data, a.snapid) {
            Ok(q) => q,
            Err(e) => return Reply::res(e),
        };
        let _g = self.vdi_lock.write();
        if let Err(e) = self.resolve_pending() {
            return Reply::res(e);
        }
        let mut info = Info::default();
        if let Err(e) = self.lookup(&q, &mut info) {
            return Reply::res(e);
        }
        let vid = info.vid;
        // Recorded first so that a crash between clearing the inode and
        // setting the deleted bit is finished at startup.
        let it = Intent {
            op: IntentOp::Delete,
            snap: 0,
            src: 0,
            vid,
            time: 0,
            copies: 0,
            copy_policy: 0,
            block_size_shift: 0,
            parent: 0,
        };
        if let Err(e) = self.commit(|s| s.pending = Some(it.clone())) {
            return Reply::res(e);
        }
        if let Err(e) = fault::point("delete-intent") {
            // Nothing changed yet: drop the intent.
            let _ = self.commit(|s| s.pending = None);
            return Reply::res(e);
        }
        // From here on a deletion is only ever finished, never undone.
        if let Err(e) = self.finish_delete(vid) {
            return Reply::res(e);
        }
        Reply::ok().with_args(
            VdiRsp {
                vdi_id: vid,
                ..Default::default()
            }
            .encode(),
        )
    }

    /// The steps of a deletion after its intent: the inode, then the
    /// deleted bit (clearing the intent). Repeatable.
    fn finish_delete(&self, vid: u32) -> OpResult<()> {
        if let Err(e) = self.delete_inode(vid) {
            tracing::error!(vid = format_args!("{vid:x}"), ?e, "deleting VDI failed");
        }
        fault::point("delete-inode")?;
        self.commit(|s| {
            s.deleted.set(vid);
            if let Some(e) = s.vdis.get_mut(&vid) {
                e.deleted = true;
            }
            s.pending = None;
        })
    }

    /// `delete_vdi_work`. The caller holds `vdi_lock` for writing.
    fn delete_inode(&self, vid: u32) -> OpResult<()> {
        let ioid = oid::vid_to_vdi_oid(vid);
        // Header and map; the references are not needed.
        let mut ino = vec![0u8; GREF_OFFSET];
        self.store.read(ioid, 0, &mut ino)?;
        let deleted = ino[0] == 0;
        if get_u64(&ino, 536) == 0 && deleted {
            return Ok(());
        }
        let shift = ino[555];
        if ino[553] == 0 {
            let nr = if shift >= 64 {
                1
            } else {
                get_u64(&ino, 536).div_ceil(1u64 << shift)
            };
            let nr = nr.min(SD_INODE_DATA_INDEX as u64) as usize;
            if let Some(i) = (0..nr).find(|&i| get_u32(&ino, DATA_VDI_ID_OFFSET + 4 * i) != 0) {
                tracing::warn!(
                    vid = format_args!("{vid:x}"),
                    idx = i,
                    "VDI still maps objects; deletion abandoned (clear data_vdi_id first)"
                );
                return Ok(());
            }
        } else if !self.state.read().is_snapshot(vid) {
            // Hyper volume: drop the data objects this vid owns and no other
            // inode maps.
            drop(ino);
            match self.load_btree(vid) {
                Ok(tree) => {
                    let own: Vec<u32> = tree
                        .entries()
                        .into_iter()
                        .filter(|&(_, owner)| owner == vid)
                        .map(|(idx, _)| idx)
                        .collect();
                    self.reclaim_locked(vid, &own, true);
                }
                Err(e) => tracing::warn!(
                    vid = format_args!("{vid:x}"),
                    ?e,
                    "cannot read the B-tree; its objects are kept"
                ),
            }
        }
        if deleted {
            return Ok(());
        }
        // Name and size cleared, everything after the header zero: the new
        // inode replaces the old one atomically.
        let _g = self.store.lock(ioid);
        let mut h = vec![0u8; SD_INODE_HEADER_SIZE];
        self.store.read_locked(ioid, 0, &mut h)?;
        h[..NAME_LEN].fill(0);
        put_u64(&mut h, 536, 0);
        self.store
            .create_locked(ioid, SD_INODE_SIZE as u64, &[(0, &h)])
    }

    /// GET_VDI_ATTR (§5.8).
    pub(crate) fn get_vdi_attr(&self, req: &Req) -> Reply {
        let h = &req.hdr;
        let a = vdi_args(h);
        if req.data.len() < attr::ATTR_VALUE_OFFSET || req.data.len() > attr::SD_ATTR_OBJ_SIZE {
            return Reply::res(SdRes::INVALID_PARMS);
        }
        let mut vattr = req.data.clone();
        let q = Query {
            name: &req.data[..NAME_LEN],
            tag: Some(&req.data[256..512]),
            snapid: a.snapid,
        };
        let _g = self.vdi_lock.write();
        let mut info = Info::default();
        if let Err(e) = self.lookup(&q, &mut info) {
            return Reply::res(e);
        }
        // Attributes live under the name hash, so they survive snapshots.
        let vid = vdi_name_hash(cstr(&req.data[..NAME_LEN]));
        put_u64(&mut vattr, 512, info.create_time);
        let wr = h.flags & flags::CMD_CREAT != 0;
        let excl = h.flags & flags::CMD_EXCL != 0;
        let del = h.flags & flags::CMD_DEL != 0;
        let (res, attr_id) = self.attr_op(vid, &vattr, wr, excl, del);
        let copies = self.state.read().copies_of(vid);
        Reply::res(res).with_args(
            VdiRsp {
                vdi_id: vid,
                attr_id,
                copies,
                block_size_shift: 0,
            }
            .encode(),
        )
    }

    /// `get_vdi_attr`: probes attribute slots from the attribute hash.
    fn attr_op(&self, vid: u32, vattr: &[u8], wr: bool, excl: bool, del: bool) -> (SdRes, u32) {
        let mut id = attr::attr_id(&pad_attr(vattr));
        let end = id.wrapping_sub(1);
        let mut ret = SdRes::NO_OBJ;
        let mut tmp = vec![0u8; attr::SD_ATTR_OBJ_SIZE];
        while id != end {
            let aoid = oid::vid_to_attr_oid(vid, id);
            if excl || !wr {
                ret = match self.store.read(aoid, 0, &mut tmp) {
                    Ok(()) => SdRes::SUCCESS,
                    Err(e) => e,
                };
            }
            if ret == SdRes::NO_OBJ && wr {
                let size = attr::SD_ATTR_OBJ_SIZE as u64;
                let r = match self.store.create(aoid, size, &[(0, vattr)]) {
                    Ok(()) => SdRes::SUCCESS,
                    Err(SdRes::NO_SPACE) => SdRes::NO_SPACE,
                    Err(_) => SdRes::EIO,
                };
                return (r, id);
            }
            if ret != SdRes::SUCCESS {
                return (ret, id);
            }
            let same = cstr(&tmp[..256]) == cstr(&vattr[..256])
                && cstr(&tmp[256..512]) == cstr(&vattr[256..512])
                && tmp[520..524] == vattr[520..524]
                && cstr(&tmp[528..784]) == cstr(&vattr[528..784]);
            if same {
                let r = if excl {
                    SdRes::VDI_EXIST
                } else if del {
                    ok_or_eio(self.store.write(aoid, 0, &[0], true))
                } else if wr {
                    ok_or_eio(self.store.write(aoid, 0, &pad_attr(vattr), true))
                } else {
                    SdRes::SUCCESS
                };
                return (r, id);
            }
            id = id.wrapping_add(1);
        }
        (SdRes::FULL_VDI, id)
    }
}

fn ok_or_eio(r: OpResult<()>) -> SdRes {
    match r {
        Ok(()) => SdRes::SUCCESS,
        Err(SdRes::NO_SPACE) => SdRes::NO_SPACE,
        Err(_) => SdRes::EIO,
    }
}

/// An attribute payload padded to the full structure (sheep works on the
/// whole struct even when the client sent fewer bytes).
fn pad_attr(v: &[u8]) -> Vec<u8> {
    let mut b = v.to_vec();
    b.resize(attr::SD_ATTR_OBJ_SIZE, 0);
    b
}

/// Parameters of one NEW_VDI (`struct vdi_iocb`).
struct NewVdi<'a> {
    name: &'a [u8],
    size: u64,
    base: u32,
    copies: u8,
    cp: u8,
    store_policy: u8,
    shift: u8,
    time: u64,
}
