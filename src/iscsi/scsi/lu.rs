//! One logical unit: a [`Disk`] seen through SBC-3 block commands.

use super::opcodes;
use super::pr::{Class, PrError, Reservations};
use super::*;
use crate::iscsi::backend::{BackendError, Disk};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Most WRITE SAME blocks in one command (Block Limits VPD).
const MAX_WS_BLOCKS: u64 = 1 << 15;
/// Most blocks of one COMPARE AND WRITE.
const MAX_CAW_BLOCKS: u64 = 32;
const MAX_UNMAP_DESCRIPTORS: usize = 256;
/// Unit attentions queued per nexus before old ones are dropped.
const MAX_UA: usize = 16;
/// Buffer for WRITE SAME patterns and zeros.
const WS_CHUNK: u64 = 1 << 20;

pub const VENDOR: &[u8; 8] = b"SHEEPDOG";
pub const PRODUCT: &[u8; 16] = b"VDI             ";
pub const REVISION: &[u8; 4] = b"0001";

/// How one LUN of one target reaches a logical unit. Several paths may
/// lead to the same logical unit (two LUNs or two targets on one VDI): they
/// share its data, reservations, unit attentions and mode pages.
#[derive(Debug, Clone)]
pub struct Path {
    pub lun: u64,
    /// The target's iSCSI name (for device identification).
    pub target_name: String,
    /// Relative target port identifier (one per target).
    pub rel_port: u16,
    /// Refuse writes through this path (configured read-only, or a snapshot).
    pub read_only: bool,
}

struct LuState {
    res: Reservations,
    ua: HashMap<String, VecDeque<(u8, u8)>>,
    known: HashSet<String>,
    /// Control mode page bits an initiator may change.
    d_sense: bool,
    swp: bool,
    prevent: HashSet<String>,
    last_size: u64,
}

/// One logical unit: a disk and the SCSI state kept for it.
pub struct LogicalUnit {
    pub disk: Arc<Disk>,
    state: Mutex<LuState>,
}

fn io_sense(e: &BackendError, write: bool) -> Sense {
    match e {
        BackendError::OutOfRange => lba_out_of_range(),
        BackendError::ReadOnly => Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED),
        BackendError::NoSpace => {
            Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOC_FAILED_WRITE_PROTECT)
        }
        BackendError::Unavailable(_) => Sense::new(
            key::MEDIUM_ERROR,
            if write {
                asc::WRITE_ERROR
            } else {
                asc::UNRECOVERED_READ_ERROR
            },
        ),
        BackendError::Failed(_) => Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE),
    }
}

/// Decoded READ/WRITE/VERIFY-style CDB.
#[derive(Debug, Clone, Copy)]
struct Rw {
    lba: u64,
    blocks: u64,
    /// Byte 1 flags.
    flags: u8,
    /// Byte where the transfer length lives (for field pointers).
    len_byte: u16,
}

fn decode_rw(cdb: &[u8]) -> Option<Rw> {
    let op = cdb[0];
    Some(match op {
        0x08 | 0x0a => {
            let lba = (((cdb[1] & 0x1f) as u64) << 16) | ((cdb[2] as u64) << 8) | cdb[3] as u64;
            let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
            Rw {
                lba,
                blocks: n,
                flags: 0,
                len_byte: 4,
            }
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x34 | 0x35 | 0x41 => Rw {
            lba: be32(&cdb[2..6]) as u64,
            blocks: be16(&cdb[7..9]) as u64,
            flags: cdb[1],
            len_byte: 7,
        },
        0xa8 | 0xaa | 0xae | 0xaf => Rw {
            lba: be32(&cdb[2..6]) as u64,
            blocks: be32(&cdb[6..10]) as u64,
            flags: cdb[1],
            len_byte: 6,
        },
        0x88 | 0x8a | 0x8b | 0x8e | 0x8f | 0x90 | 0x91 | 0x93 => Rw {
            lba: be64(&cdb[2..10]),
            blocks: be32(&cdb[10..14]) as u64,
            flags: cdb[1],
            len_byte: 10,
        },
        0x89 => Rw {
            lba: be64(&cdb[2..10]),
            blocks: cdb[13] as u64,
            flags: cdb[1],
            len_byte: 13,
        },
        _ => return None,
    })
}

fn is_write_op(op: u8) -> bool {
    matches!(
        op,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x89 | 0x8b
    )
}

/// Reservation class of an opcode (SPC-4 table of commands vs reservations).
fn class_of(cdb: &[u8]) -> Class {
    match cdb[0] {
        0x12 | 0xa0 | 0x03 | 0x5e | 0x5f | 0x00 | 0x25 => Class::Free,
        0x9e if cdb[1] & 0x1f == 0x10 => Class::Free,
        0xa3 => Class::Free,
        0x1e if cdb[4] & 0x03 == 0 => Class::Free,
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x1a | 0x5a | 0x9e
        | 0x37 | 0xb7 => Class::Read,
        _ => Class::Write,
    }
}

impl LogicalUnit {
    pub fn new(disk: Arc<Disk>) -> LogicalUnit {
        let size = disk.backend.size();
        LogicalUnit {
            disk,
            state: Mutex::new(LuState {
                res: Reservations::default(),
                ua: HashMap::new(),
                known: HashSet::new(),
                d_sense: false,
                swp: false,
                prevent: HashSet::new(),
                last_size: size,
            }),
        }
    }

    fn blocks(&self) -> u64 {
        self.disk.backend.size() >> BLOCK_SHIFT
    }

    fn write_protected(&self, st: &LuState, path: &Path) -> bool {
        path.read_only || st.swp || self.disk.backend.read_only()
    }

    /// Whether sense data should use the descriptor format.
    pub fn descriptor_sense(&self) -> bool {
        self.state.lock().d_sense
    }

    /// Which bytes the command touches, decided from the CDB alone.
    pub fn access(&self, cdb: &[u8]) -> Access {
        let op = cdb[0];
        match op {
            0x42 => return Access::Barrier,
            0x35 | 0x91 => return Access::None,
            _ => {}
        }
        let Some(rw) = decode_rw(cdb) else {
            return Access::None;
        };
        let start = rw.lba.saturating_mul(BLOCK_SIZE);
        let end = if rw.blocks == 0 && matches!(op, 0x41 | 0x93) {
            u64::MAX // WRITE SAME through the last block
        } else {
            rw.lba
                .saturating_add(rw.blocks.max(1))
                .saturating_mul(BLOCK_SIZE)
        };
        if is_write_op(op) {
            Access::Write { start, end }
        } else {
            Access::Read { start, end }
        }
    }

    /// Queues a unit attention for every nexus that has used this LU
    /// (except `but`).
    pub fn unit_attention_all(&self, a: (u8, u8), but: Option<&str>) {
        let mut st = self.state.lock();
        let known: Vec<String> = st.known.iter().cloned().collect();
        for k in known {
            if Some(k.as_str()) != but {
                push_ua(&mut st, &k, a);
            }
        }
    }

    /// LUN reset (SAM-5): SPC-2 reservations go, and every I_T nexus
    /// (the requester's too) gets a reset unit attention.
    pub fn reset(&self) {
        {
            let mut st = self.state.lock();
            st.res.reset();
            st.prevent.clear();
        }
        self.unit_attention_all(asc::BUS_DEVICE_RESET, None);
    }

    /// The nexus is gone (session closed): its SPC-2 reservation and
    /// medium-removal prevention end.
    pub fn nexus_lost(&self, nexus: &str) {
        let port = nexus;
        let mut st = self.state.lock();
        st.res.nexus_lost(port);
        st.prevent.remove(port);
        st.ua.remove(port);
        st.known.remove(port);
    }

    fn check(&self, s: Sense) -> Response {
        Response::check(&s, self.descriptor_sense())
    }

    /// Executes one command.
    pub async fn execute(&self, cmd: &Command<'_>) -> Response {
        let cdb = cmd.cdb;
        let port = cmd.nexus.id.as_str();
        let op = cdb[0];
        // Unit attentions, reservations: decided under the state lock.
        {
            let mut st = self.state.lock();
            let size = self.disk.backend.size();
            if size != st.last_size {
                st.last_size = size;
                let known: Vec<String> = st.known.iter().cloned().collect();
                for k in known {
                    push_ua(&mut st, &k, asc::CAPACITY_DATA_CHANGED);
                }
            }
            if !st.known.contains(port) {
                st.known.insert(port.to_string());
                st.ua.entry(port.to_string()).or_default();
            }
            if !matches!(op, 0x12 | 0xa0 | 0x03) {
                if let Some(a) = st.ua.get_mut(port).and_then(|q| q.pop_front()) {
                    let d = st.d_sense;
                    return Response::check(&Sense::new(key::UNIT_ATTENTION, a), d);
                }
            }
            let spc2_exempt = matches!(op, 0x17 | 0x57);
            if st.res.conflicts(port, class_of(cdb), spc2_exempt) {
                return Response::status(status::RESERVATION_CONFLICT);
            }
        }
        let r = self.dispatch(cmd).await;
        match r {
            Ok(resp) => resp,
            Err(s) => self.check(s),
        }
    }

    async fn dispatch(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        match cdb[0] {
            0x00 => Ok(Response::good()),
            0x03 => self.request_sense(cmd),
            0x12 => self.inquiry(cdb, cmd.path),
            0xa0 => Err(invalid_cdb(0)), // handled by the target (knows all LUNs)
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(cdb).await,
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => self.write(cmd).await,
            0x2f | 0xaf | 0x8f => self.verify(cmd).await,
            0x35 | 0x91 => self.sync_cache(cdb).await,
            0x34 | 0x90 => self.prefetch(cdb),
            0x41 | 0x93 => self.write_same(cmd).await,
            0x42 => self.unmap(cmd).await,
            0x89 => self.compare_and_write(cmd).await,
            0x8b => self.orwrite(cmd).await,
            0x25 => self.read_capacity10(cdb),
            0x9e => match cdb[1] & 0x1f {
                0x10 => self.read_capacity16(cdb),
                0x12 => self.get_lba_status(cdb),
                _ => Err(invalid_cdb(1)),
            },
            0x1a | 0x5a => self.mode_sense(cdb, cmd.path),
            0x15 | 0x55 => self.mode_select(cmd),
            0xa3 if cdb[1] & 0x1f == 0x0c => {
                let alloc = be32(&cdb[6..10]) as usize;
                let d = opcodes::report(cdb)?;
                Ok(Response::data(truncate(d, alloc)))
            }
            0x1b => self.start_stop(cmd),
            0x1e => {
                let mut st = self.state.lock();
                if cdb[4] & 0x03 != 0 {
                    st.prevent.insert(cmd.nexus.id.clone());
                } else {
                    st.prevent.remove(&cmd.nexus.id);
                }
                Ok(Response::good())
            }
            0x16 | 0x56 => {
                if cdb[0] == 0x56 && cdb[1] & 0x02 != 0 {
                    // Third-party reservations are not supported.
                    return Err(invalid_cdb(1));
                }
                let ok = self.state.lock().res.reserve(&cmd.nexus.id);
                Ok(if ok {
                    Response::good()
                } else {
                    Response::status(status::RESERVATION_CONFLICT)
                })
            }
            0x17 | 0x57 => {
                self.state.lock().res.release(&cmd.nexus.id);
                Ok(Response::good())
            }
            0x5e => {
                let alloc = be16(&cdb[7..9]) as usize;
                let d = self.state.lock().res.pr_in(cdb)?;
                Ok(Response::data(truncate(d, alloc)))
            }
            0x5f => self.pr_out(cmd),
            0x37 | 0xb7 => Ok(self.read_defect_data(cdb)),
            _ => Err(illegal(asc::INVALID_OPCODE).cdb_field(0, None)),
        }
    }

    // ---------------------------------------------------------------- helpers

    /// Decodes a READ/WRITE-style CDB without protection information (the
    /// *PROTECT bits set are INVALID FIELD IN CDB) and checks its range.
    fn decode_io(&self, cdb: &[u8], limit: u64) -> Result<(Rw, u64, u64), Sense> {
        let rw = decode_rw(cdb).ok_or_else(|| invalid_cdb(0))?;
        if rw.flags & 0xe0 != 0 {
            return Err(invalid_cdb(1));
        }
        let (off, len) = self.check_range(&rw, limit)?;
        Ok((rw, off, len))
    }

    /// Checks `[lba, lba+blocks)` against the capacity and the transfer limit.
    fn check_range(&self, rw: &Rw, limit: u64) -> Result<(u64, u64), Sense> {
        let nb = self.blocks();
        if rw.lba > nb || rw.blocks > nb - rw.lba {
            return Err(lba_out_of_range());
        }
        if rw.blocks > limit {
            return Err(invalid_cdb(rw.len_byte));
        }
        Ok((rw.lba << BLOCK_SHIFT, rw.blocks << BLOCK_SHIFT))
    }

    fn check_writable(&self, path: &Path) -> Result<(), Sense> {
        let st = self.state.lock();
        if self.write_protected(&st, path) {
            return Err(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED));
        }
        Ok(())
    }

    async fn backend_read(&self, off: u64, len: u64) -> Result<Vec<u8>, Sense> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let d = self
            .disk
            .backend
            .read(off, len as usize)
            .await
            .map_err(|e| {
                tracing::warn!(disk = %self.disk.backend.describe(), off, len, error = %e, "read failed");
                io_sense(&e, false)
            })?;
        if d.len() as u64 != len {
            tracing::warn!(off, len, got = d.len(), "short read");
            return Err(io_sense(&BackendError::Failed("short read".into()), false));
        }
        Ok(d)
    }

    async fn backend_write(&self, off: u64, data: Bytes) -> Result<(), Sense> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len();
        self.disk.backend.write(off, data).await.map_err(|e| {
            tracing::warn!(disk = %self.disk.backend.describe(), off, len, error = %e, "write failed");
            io_sense(&e, true)
        })
    }

    async fn backend_flush(&self) -> Result<(), Sense> {
        self.disk.backend.flush().await.map_err(|e| {
            tracing::warn!(disk = %self.disk.backend.describe(), error = %e, "flush failed");
            io_sense(&e, true)
        })
    }

    async fn backend_discard(&self, off: u64, len: u64) -> Result<(), Sense> {
        if len == 0 {
            return Ok(());
        }
        self.disk.backend.discard(off, len).await.map_err(|e| {
            tracing::warn!(disk = %self.disk.backend.describe(), off, len, error = %e, "discard failed");
            io_sense(&e, true)
        })
    }

    // ---------------------------------------------------------------- commands

    fn request_sense(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        let desc = cdb[1] & 0x01 != 0;
        let alloc = cdb[4] as usize;
        let pending = {
            let mut st = self.state.lock();
            st.ua.get_mut(&cmd.nexus.id).and_then(|q| q.pop_front())
        };
        let s = match pending {
            Some(a) => Sense::new(key::UNIT_ATTENTION, a),
            None => Sense::new(key::NO_SENSE, asc::NONE),
        };
        Ok(Response::data(truncate(s.encode(desc), alloc)))
    }

    fn inquiry(&self, cdb: &[u8], path: &Path) -> Result<Response, Sense> {
        let evpd = cdb[1] & 0x01 != 0;
        if cdb[1] & 0x02 != 0 {
            return Err(invalid_cdb(1));
        }
        let page = cdb[2];
        let alloc = be16(&cdb[3..5]) as usize;
        let d = if !evpd {
            if page != 0 {
                return Err(invalid_cdb(2));
            }
            self.standard_inquiry()
        } else {
            match page {
                0x00 => vpd(0x00, &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
                0x80 => vpd(0x80, self.serial().as_bytes()),
                0x83 => vpd(0x83, &self.device_id(path)),
                0xb0 => vpd(0xb0, &self.block_limits()),
                0xb1 => {
                    let mut p = vec![0u8; 0x3c];
                    p[1] = 0x01; // non-rotating medium
                    vpd(0xb1, &p)
                }
                0xb2 => {
                    // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type thin.
                    vpd(0xb2, &[0, 0xe4, 0x02, 0])
                }
                _ => return Err(invalid_cdb(2)),
            }
        };
        Ok(Response::data(truncate(d, alloc)))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut d = vec![0u8; 96];
        d[0] = 0x00; // connected, direct access block device
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HiSup, response data format 2
        d[4] = (d.len() - 5) as u8;
        d[7] = 0x02; // CmdQue
        d[8..16].copy_from_slice(VENDOR);
        d[16..32].copy_from_slice(PRODUCT);
        d[32..36].copy_from_slice(REVISION);
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    pub fn serial(&self) -> String {
        format!("{:016x}", self.disk.id)
    }

    fn device_id(&self, path: &Path) -> Vec<u8> {
        let mut p = Vec::new();
        // NAA locally assigned (type 3), binary, LU association.
        p.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        p.extend_from_slice(&((3u64 << 60) | self.disk.id).to_be_bytes());
        // T10 vendor id: vendor + serial, ASCII.
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(self.serial().as_bytes());
        p.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        p.extend_from_slice(&t10);
        // Relative target port (iSCSI, target port association, PIV).
        p.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0, 0]);
        p.extend_from_slice(&path.rel_port.to_be_bytes());
        // SCSI name strings: target port and target device.
        let port = format!("{},t,0x0001", path.target_name);
        push_name(&mut p, 0x98, &port);
        push_name(&mut p, 0xa8, &path.target_name);
        p
    }

    fn block_limits(&self) -> Vec<u8> {
        let gran = (self.disk.backend.granularity() >> BLOCK_SHIFT).max(1);
        let mut p = vec![0u8; 0x3c];
        p[1] = MAX_CAW_BLOCKS as u8;
        p[2..4].copy_from_slice(&(gran.min(0xffff) as u16).to_be_bytes());
        p[4..8].copy_from_slice(&(MAX_XFER_BLOCKS as u32).to_be_bytes());
        p[8..12].copy_from_slice(&(gran.min(MAX_XFER_BLOCKS) as u32).to_be_bytes());
        p[12..16].copy_from_slice(&(MAX_XFER_BLOCKS as u32).to_be_bytes());
        p[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        p[20..24].copy_from_slice(&(MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
        p[24..28].copy_from_slice(&(gran.min(u32::MAX as u64) as u32).to_be_bytes());
        p[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
        p[32..40].copy_from_slice(&MAX_WS_BLOCKS.to_be_bytes());
        p
    }

    async fn read(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let (_, off, len) = self.decode_io(cdb, MAX_XFER_BLOCKS)?;
        let d = self.backend_read(off, len).await?;
        Ok(Response::data(d))
    }

    async fn write(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let (rw, off, len) = self.decode_io(cmd.cdb, MAX_XFER_BLOCKS)?;
        self.check_writable(cmd.path)?;
        // Only whole blocks the initiator actually sent are written (residual overflow).
        let have = (cmd.data_out.len() as u64).min(len) & !(BLOCK_SIZE - 1);
        // The initiator's buffer itself goes to the backend (no copy).
        self.backend_write(off, cmd.data_out.slice(..have as usize))
            .await?;
        let fua = cmd.cdb[0] != 0x0a && rw.flags & 0x08 != 0;
        let verify = matches!(cmd.cdb[0], 0x2e | 0xae | 0x8e);
        if fua || verify {
            self.backend_flush().await?;
        }
        Ok(Response {
            wanted_out: len,
            ..Response::good()
        })
    }

    async fn verify(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let (rw, off, len) = self.decode_io(cmd.cdb, MAX_XFER_BLOCKS)?;
        let bytchk = (rw.flags >> 1) & 0x03;
        match bytchk {
            0 => Ok(Response::good()),
            1 | 3 => {
                let want = if bytchk == 1 {
                    len
                } else {
                    BLOCK_SIZE.min(len)
                };
                if len == 0 {
                    return Ok(Response::good());
                }
                if (cmd.data_out.len() as u64) < want {
                    return Err(illegal(asc::INVALID_FIELD_IN_IU));
                }
                let disk = self.backend_read(off, len).await?;
                let data = &cmd.data_out[..want as usize];
                let mismatch = if bytchk == 1 {
                    first_mismatch(&disk, data)
                } else {
                    disk.chunks(BLOCK_SIZE as usize)
                        .enumerate()
                        .find_map(|(i, blk)| {
                            first_mismatch(blk, data).map(|m| i * BLOCK_SIZE as usize + m)
                        })
                };
                if let Some(m) = mismatch {
                    return Err(Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
                        .with_info(m as u64));
                }
                Ok(Response {
                    wanted_out: want,
                    ..Response::good()
                })
            }
            _ => Err(invalid_cdb(1)),
        }
    }

    async fn sync_cache(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let rw = decode_rw(cdb).ok_or_else(|| invalid_cdb(0))?;
        self.check_range(&rw, u64::MAX)?;
        self.backend_flush().await?;
        Ok(Response::good())
    }

    fn prefetch(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let rw = decode_rw(cdb).ok_or_else(|| invalid_cdb(0))?;
        self.check_range(&rw, u64::MAX)?;
        // No cache to fill: GOOD says "not all of it fits" (SBC-3 §5.9).
        Ok(Response::good())
    }

    async fn write_same(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        let rw = decode_rw(cdb).ok_or_else(|| invalid_cdb(0))?;
        let unmap = cdb[1] & 0x08 != 0;
        let anchor = cdb[1] & 0x10 != 0;
        let ndob = cdb[0] == 0x93 && cdb[1] & 0x01 != 0;
        if rw.flags & 0xe0 != 0 || anchor {
            return Err(invalid_cdb(1));
        }
        let mut rw = rw;
        if rw.blocks == 0 {
            // WSNZ = 0: zero blocks means "through the last block".
            let nb = self.blocks();
            if rw.lba > nb {
                return Err(lba_out_of_range());
            }
            rw.blocks = nb - rw.lba;
        }
        let (off, len) = self.check_range(&rw, MAX_WS_BLOCKS)?;
        self.check_writable(cmd.path)?;
        let wanted = if ndob { 0 } else { BLOCK_SIZE };
        let block: Vec<u8> = if ndob {
            vec![0u8; BLOCK_SIZE as usize]
        } else {
            if (cmd.data_out.len() as u64) < BLOCK_SIZE {
                return Err(illegal(asc::INVALID_FIELD_IN_IU));
            }
            cmd.data_out[..BLOCK_SIZE as usize].to_vec()
        };
        let zero = block.iter().all(|&b| b == 0);
        // UNMAP=1 deallocates (reads then return zeros: LBPRZ) whatever the block holds.
        if unmap || (ndob && zero) {
            self.backend_discard(off, len).await?;
        } else {
            let chunk = WS_CHUNK.min(len);
            let buf: Bytes = block.iter().copied().cycle().take(chunk as usize).collect();
            let mut pos = 0;
            while pos < len {
                let n = chunk.min(len - pos);
                self.backend_write(off + pos, buf.slice(..n as usize))
                    .await?;
                pos += n;
            }
        }
        Ok(Response {
            wanted_out: wanted,
            ..Response::good()
        })
    }

    async fn unmap(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        if cdb[1] & 0x01 != 0 {
            // ANCHOR
            return Err(invalid_cdb(1));
        }
        let plen = be16(&cdb[7..9]) as usize;
        let done = Response {
            wanted_out: plen as u64,
            ..Response::good()
        };
        if plen == 0 {
            return Ok(done);
        }
        if plen < 8 {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
        }
        let p = &cmd.data_out[..plen.min(cmd.data_out.len())];
        if p.len() < 8 {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
        }
        let dlen = be16(&p[0..2]) as usize;
        let bdlen = be16(&p[2..4]) as usize;
        if dlen < 6 || bdlen > dlen - 6 || 8 + bdlen > p.len() {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
        }
        let n = bdlen / 16;
        if n > MAX_UNMAP_DESCRIPTORS {
            return Err(invalid_param(2));
        }
        self.check_writable(cmd.path)?;
        let nb = self.blocks();
        let mut ranges = Vec::with_capacity(n);
        for i in 0..n {
            let d = &p[8 + 16 * i..8 + 16 * (i + 1)];
            let lba = be64(&d[0..8]);
            let cnt = be32(&d[8..12]) as u64;
            if lba > nb || cnt > nb - lba {
                return Err(lba_out_of_range());
            }
            ranges.push((lba, cnt));
        }
        for (lba, cnt) in ranges {
            self.backend_discard(lba << BLOCK_SHIFT, cnt << BLOCK_SHIFT)
                .await?;
        }
        Ok(done)
    }

    async fn compare_and_write(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let (rw, off, len) = self.decode_io(cmd.cdb, MAX_CAW_BLOCKS)?;
        let wanted = 2 * len;
        let done = Response {
            wanted_out: wanted,
            ..Response::good()
        };
        if len == 0 {
            return Ok(done);
        }
        self.check_writable(cmd.path)?;
        if (cmd.data_out.len() as u64) < wanted {
            return Err(illegal(asc::INVALID_FIELD_IN_IU));
        }
        let verify = &cmd.data_out[..len as usize];
        let write = cmd.data_out.slice(len as usize..wanted as usize);
        // Atomic against other commands: the order lock holds this range exclusively.
        let cur = self.backend_read(off, len).await?;
        if let Some(m) = first_mismatch(&cur, verify) {
            return Err(
                Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_info(m as u64)
            );
        }
        self.backend_write(off, write).await?;
        if rw.flags & 0x08 != 0 {
            self.backend_flush().await?;
        }
        Ok(done)
    }

    async fn orwrite(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let (_, off, len) = self.decode_io(cmd.cdb, MAX_XFER_BLOCKS)?;
        self.check_writable(cmd.path)?;
        let have = (cmd.data_out.len() as u64).min(len) & !(BLOCK_SIZE - 1);
        if have > 0 {
            let mut cur = self.backend_read(off, have).await?;
            for (c, d) in cur.iter_mut().zip(&cmd.data_out[..have as usize]) {
                *c |= *d;
            }
            self.backend_write(off, cur.into()).await?;
        }
        Ok(Response {
            wanted_out: len,
            ..Response::good()
        })
    }

    fn read_capacity10(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let pmi = cdb[8] & 0x01 != 0;
        if !pmi && be32(&cdb[2..6]) != 0 {
            return Err(invalid_cdb(2));
        }
        let last = self.blocks().saturating_sub(1);
        let mut d = vec![0u8; 8];
        d[0..4].copy_from_slice(&(last.min(u32::MAX as u64) as u32).to_be_bytes());
        d[4..8].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        Ok(Response::data(d))
    }

    fn read_capacity16(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let alloc = be32(&cdb[10..14]) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        d[14] = 0xc0; // LBPME, LBPRZ
        Ok(Response::data(truncate(d, alloc)))
    }

    fn get_lba_status(&self, cdb: &[u8]) -> Result<Response, Sense> {
        let start = be64(&cdb[2..10]);
        let alloc = be32(&cdb[10..14]) as usize;
        let nb = self.blocks();
        if start >= nb {
            return Err(lba_out_of_range());
        }
        let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 1024);
        let mut body = Vec::new();
        let mut lba = start;
        while lba < nb && body.len() / 16 < max_desc {
            let (mapped, run) = self.disk.backend.block_status(lba << BLOCK_SHIFT);
            let blocks = (run >> BLOCK_SHIFT)
                .max(1)
                .min(nb - lba)
                .min(u32::MAX as u64);
            let mut desc = [0u8; 16];
            desc[0..8].copy_from_slice(&lba.to_be_bytes());
            desc[8..12].copy_from_slice(&(blocks as u32).to_be_bytes());
            desc[12] = if mapped { 0 } else { 1 };
            body.extend_from_slice(&desc);
            lba += blocks;
        }
        let mut d = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&body);
        Ok(Response::data(truncate(d, alloc)))
    }

    /// READ DEFECT DATA (10/12): a VDI has no defects; the list is empty.
    fn read_defect_data(&self, cdb: &[u8]) -> Response {
        let (alloc, d) = if cdb[0] == 0x37 {
            (be16(&cdb[7..9]) as usize, vec![0, cdb[2] & 0x1f, 0, 0])
        } else {
            (
                be32(&cdb[6..10]) as usize,
                vec![0, cdb[1] & 0x1f, 0, 0, 0, 0, 0, 0],
            )
        };
        Response::data(truncate(d, alloc))
    }

    // ---- mode pages

    fn mode_page(&self, code: u8, pc: u8, st: &LuState) -> Option<Vec<u8>> {
        let changeable = pc == 1;
        let current = pc == 0;
        Some(match code {
            0x01 => {
                // Read-write error recovery: nothing to change.
                let mut p = vec![0u8; 12];
                p[0] = 0x01;
                p[1] = 0x0a;
                p
            }
            0x08 => {
                let mut p = vec![0u8; 20];
                p[0] = 0x08;
                p[1] = 0x12;
                if !changeable {
                    p[2] = 0x04; // WCE: FLUSH_VDI makes the object cache durable
                }
                p
            }
            0x0a => {
                let mut p = vec![0u8; 12];
                p[0] = 0x0a;
                p[1] = 0x0a;
                if changeable {
                    p[2] = 0x04; // D_SENSE
                    p[4] = 0x08; // SWP
                } else {
                    if current && st.d_sense {
                        p[2] |= 0x04;
                    }
                    p[3] = 0x10; // unrestricted reordering allowed
                    if current && st.swp {
                        p[4] |= 0x08;
                    }
                    p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
                }
                p
            }
            0x1c => {
                let mut p = vec![0u8; 12];
                p[0] = 0x1c;
                p[1] = 0x0a;
                p
            }
            _ => return None,
        })
    }

    fn mode_sense(&self, cdb: &[u8], path: &Path) -> Result<Response, Sense> {
        let ten = cdb[0] == 0x5a;
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = ten && cdb[1] & 0x10 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let sub = cdb[3];
        let alloc = if ten {
            be16(&cdb[7..9]) as usize
        } else {
            cdb[4] as usize
        };
        if pc == 3 {
            return Err(illegal(asc::SAVING_PARAMS_NOT_SUPPORTED).cdb_field(2, Some(7)));
        }
        if sub != 0 && sub != 0xff {
            return Err(invalid_cdb(3));
        }
        let st = self.state.lock();
        let mut pages = Vec::new();
        if page == 0x3f {
            for c in [0x01, 0x08, 0x0a, 0x1c] {
                pages.extend(self.mode_page(c, pc, &st).unwrap_or_default());
            }
        } else {
            match self.mode_page(page, pc, &st) {
                Some(p) => pages = p,
                None => return Err(invalid_cdb(2)),
            }
        }
        let wp = self.write_protected(&st, path);
        drop(st);
        let nb = self.blocks();
        let mut bd = Vec::new();
        if !dbd {
            if llbaa {
                bd.extend_from_slice(&nb.to_be_bytes());
                bd.extend_from_slice(&[0; 4]);
                bd.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
            } else {
                let n = nb.min(0xff_ffff) as u32;
                bd.push(0);
                bd.extend_from_slice(&n.to_be_bytes()[1..]);
                bd.push(0);
                bd.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes()[1..]);
            }
        }
        // Device-specific parameter: WP, DPOFUA.
        let dsp = if wp { 0x80 } else { 0 } | 0x10;
        let mut d = Vec::new();
        if ten {
            let total = 8 + bd.len() + pages.len();
            d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
            d.extend_from_slice(&[0, dsp, if llbaa { 1 } else { 0 }, 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            let total = 4 + bd.len() + pages.len();
            d.extend_from_slice(&[(total - 1).min(255) as u8, 0, dsp, bd.len() as u8]);
        }
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        Ok(Response::data(truncate(d, alloc)))
    }

    fn mode_select(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        let ten = cdb[0] == 0x55;
        let plen = if ten {
            be16(&cdb[7..9]) as usize
        } else {
            cdb[4] as usize
        };
        let done = Response {
            wanted_out: plen as u64,
            ..Response::good()
        };
        if cdb[1] & 0x01 != 0 {
            // SP: we cannot save pages.
            return Err(invalid_cdb(1));
        }
        if plen == 0 {
            return Ok(done);
        }
        if cdb[1] & 0x10 == 0 {
            // PF = 0: vendor-specific format, not supported.
            return Err(invalid_cdb(1));
        }
        let p = &cmd.data_out[..plen.min(cmd.data_out.len())];
        let hdr = if ten { 8 } else { 4 };
        if p.len() < hdr {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
        }
        let bdlen = if ten {
            be16(&p[6..8]) as usize
        } else {
            p[3] as usize
        };
        if hdr + bdlen > p.len() {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
        }
        if bdlen >= 8 {
            let bd = &p[hdr..hdr + bdlen];
            let blen = be32(&bd[bdlen - 4..]) & 0xff_ffff;
            if blen != BLOCK_SIZE as u32 {
                return Err(invalid_param((hdr + bdlen - 3) as u16));
            }
        }
        let mut pos = hdr + bdlen;
        let mut new_d_sense = None;
        let mut new_swp = None;
        let mut st = self.state.lock();
        while pos < p.len() {
            if pos + 2 > p.len() {
                return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
            }
            let code = p[pos] & 0x3f;
            if p[pos] & 0x40 != 0 {
                // Sub-page format: we have none.
                return Err(invalid_param(pos as u16));
            }
            let len = p[pos + 1] as usize + 2;
            if pos + len > p.len() {
                return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR));
            }
            let page = &p[pos..pos + len];
            let cur = self
                .mode_page(code, 0, &st)
                .ok_or_else(|| invalid_param(pos as u16))?;
            let mask = self.mode_page(code, 1, &st).unwrap_or_default();
            if cur.len() != len {
                return Err(invalid_param(pos as u16 + 1));
            }
            for i in 2..len {
                if (page[i] ^ cur[i]) & !mask[i] != 0 {
                    return Err(invalid_param((pos + i) as u16));
                }
            }
            if code == 0x0a {
                new_d_sense = Some(page[2] & 0x04 != 0);
                new_swp = Some(page[4] & 0x08 != 0);
            }
            pos += len;
        }
        let mut changed = false;
        if let Some(d) = new_d_sense {
            changed |= st.d_sense != d;
            st.d_sense = d;
        }
        if let Some(s) = new_swp {
            changed |= st.swp != s;
            st.swp = s;
        }
        if changed {
            let me = cmd.nexus.id.clone();
            let known: Vec<String> = st.known.iter().cloned().collect();
            for k in known {
                if k != me {
                    push_ua(&mut st, &k, asc::MODE_PARAMETERS_CHANGED);
                }
            }
        }
        Ok(done)
    }

    fn start_stop(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let cdb = cmd.cdb;
        let loej = cdb[4] & 0x02 != 0;
        let start = cdb[4] & 0x01 != 0;
        let power_cond = cdb[4] >> 4;
        if loej && !start && power_cond == 0 {
            let st = self.state.lock();
            if !st.prevent.is_empty() {
                return Err(illegal(asc::MEDIUM_REMOVAL_PREVENTED));
            }
        }
        // A VDI has no medium to spin or eject: accept.
        Ok(Response::good())
    }

    fn pr_out(&self, cmd: &Command<'_>) -> Result<Response, Sense> {
        let plen = be32(&cmd.cdb[5..9]) as u64;
        let result = {
            let mut st = self.state.lock();
            let r = st.res.pr_out(cmd.cdb, cmd.data_out, cmd.nexus);
            if let Ok(ua) = &r {
                for (port, a) in ua {
                    push_ua(&mut st, port, *a);
                }
            }
            r
        };
        match result {
            Ok(_) => Ok(Response {
                wanted_out: plen,
                ..Response::good()
            }),
            Err(PrError::Conflict) => Ok(Response {
                wanted_out: plen,
                ..Response::status(status::RESERVATION_CONFLICT)
            }),
            Err(PrError::Sense(s)) => Err(s),
        }
    }
}

fn push_ua(st: &mut LuState, port: &str, a: (u8, u8)) {
    let q = st.ua.entry(port.to_string()).or_default();
    if q.contains(&a) {
        return;
    }
    if q.len() >= MAX_UA {
        q.pop_front();
    }
    q.push_back(a);
}

fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// A SCSI name string designator (UTF-8, NUL-terminated, padded to 4).
fn push_name(p: &mut Vec<u8>, assoc_type: u8, name: &str) {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    p.extend_from_slice(&[0x53, assoc_type, 0x00, n.len() as u8]);
    p.extend_from_slice(&n);
}

fn truncate(mut d: Vec<u8>, alloc: usize) -> Vec<u8> {
    d.truncate(alloc);
    d
}

fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// REPORT LUNS (answered by the target for any LUN address).
pub fn report_luns(cdb: &[u8], luns: &[u64]) -> Result<Vec<u8>, Sense> {
    let select = cdb[2];
    let alloc = be32(&cdb[6..10]) as usize;
    if alloc < 16 {
        return Err(invalid_cdb(6));
    }
    let list: &[u64] = match select {
        0 | 2 => luns,
        1 => &[],
        0x10..=0x12 => luns,
        _ => return Err(invalid_cdb(2)),
    };
    let mut d = ((list.len() * 8) as u32).to_be_bytes().to_vec();
    d.extend_from_slice(&[0; 4]);
    for &l in list {
        d.extend_from_slice(&crate::iscsi::pdu::lun_encode(l));
    }
    Ok(truncate(d, alloc))
}

/// Commands to a LUN that does not exist (SPC-4 §4.6.4).
pub fn no_such_lun(cdb: &[u8], luns: &[u64]) -> Response {
    match cdb[0] {
        0x12 => {
            let alloc = be16(&cdb[3..5]) as usize;
            if cdb[1] & 0x01 != 0 {
                return Response::check(&illegal(asc::LU_NOT_SUPPORTED), false);
            }
            let mut d = vec![0u8; 36];
            d[0] = 0x7f; // peripheral qualifier 011b, type 1Fh: no LU here
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            d[8..16].copy_from_slice(VENDOR);
            d[16..32].copy_from_slice(PRODUCT);
            d[32..36].copy_from_slice(REVISION);
            Response::data(truncate(d, alloc))
        }
        0xa0 => match report_luns(cdb, luns) {
            Ok(d) => Response::data(d),
            Err(s) => Response::check(&s, false),
        },
        0x03 => {
            let alloc = cdb[4] as usize;
            let s = illegal(asc::LU_NOT_SUPPORTED).encode(cdb[1] & 1 != 0);
            Response::data(truncate(s, alloc))
        }
        _ => Response::check(&illegal(asc::LU_NOT_SUPPORTED), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::backend::MemBackend;

    fn lu(size: u64) -> (LogicalUnit, Arc<MemBackend>) {
        let m = Arc::new(MemBackend::new(size, 1 << 20));
        let d = Disk::new(m.clone(), 0x1234);
        (LogicalUnit::new(d), m)
    }

    fn path(read_only: bool) -> Path {
        Path {
            lun: 1,
            target_name: "iqn.2024-01.test:t".into(),
            rel_port: 1,
            read_only,
        }
    }

    fn nexus(p: &str) -> Nexus {
        Nexus::new(p.into(), p.into(), "iqn.2024-01.test:t,t,0x0001".into(), 1)
    }

    async fn run(lu: &LogicalUnit, cdb: &[u8], data: &[u8]) -> Response {
        let n = nexus("a");
        lu.execute(&Command {
            cdb,
            path: &path(false),
            data_out: &Bytes::copy_from_slice(data),
            nexus: &n,
        })
        .await
    }

    fn sense_of(r: &Response) -> (u8, u8, u8) {
        assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
        (r.sense[2] & 0xf, r.sense[12], r.sense[13])
    }

    fn rw16(op: u8, lba: u64, n: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&n.to_be_bytes());
        c
    }

    #[tokio::test]
    async fn write_read_roundtrip_and_bounds() {
        let (lu, _) = lu(4 << 20);
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let r = run(&lu, &rw16(0x8a, 10, 2), &data).await;
        assert_eq!(r.status, status::GOOD);
        let r = run(&lu, &rw16(0x88, 10, 2), &[]).await;
        assert_eq!(&r.data[..], &data[..]);
        let nb = (4 << 20) / 512;
        let r = run(&lu, &rw16(0x88, nb - 1, 2), &[]).await;
        assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x21, 0));
        let r = run(&lu, &rw16(0x88, nb, 0), &[]).await;
        assert_eq!(r.status, status::GOOD);
        let r = run(&lu, &[0xee, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x20, 0));
        // READ(6) with length 0 means 256 blocks.
        let r = run(&lu, &[0x08, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(r.data.len(), 256 * 512);
    }

    #[tokio::test]
    async fn read_only_lun_refuses_writes() {
        let m = Arc::new(MemBackend::new(1 << 20, 1 << 20).read_only());
        let lu = LogicalUnit::new(Disk::new(m, 1));
        let r = run(&lu, &rw16(0x8a, 0, 1), &[0u8; 512]).await;
        assert_eq!(sense_of(&r), (key::DATA_PROTECT, 0x27, 0));
        let r = run(&lu, &rw16(0x88, 0, 1), &[]).await;
        assert_eq!(r.status, status::GOOD);
        // MODE SENSE reports WP.
        let r = run(&lu, &[0x1a, 0, 0x3f, 0, 255, 0], &[]).await;
        assert_eq!(r.data[2] & 0x80, 0x80);
    }

    #[tokio::test]
    async fn unmap_and_write_same() {
        let (lu, m) = lu(4 << 20);
        let r = run(&lu, &rw16(0x8a, 0, 4096), &vec![7u8; 4096 * 512][..]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(m.allocated_chunks(), 2);
        // UNMAP first MiB and half a block range of the second.
        let mut p = vec![0u8; 8 + 32];
        p[0..2].copy_from_slice(&38u16.to_be_bytes());
        p[2..4].copy_from_slice(&32u16.to_be_bytes());
        p[8..16].copy_from_slice(&0u64.to_be_bytes());
        p[16..20].copy_from_slice(&2048u32.to_be_bytes());
        p[24..32].copy_from_slice(&2048u64.to_be_bytes());
        p[32..36].copy_from_slice(&1u32.to_be_bytes());
        let mut cdb = [0u8; 10];
        cdb[0] = 0x42;
        cdb[7..9].copy_from_slice(&40u16.to_be_bytes());
        let r = run(&lu, &cdb, &p).await;
        assert_eq!(r.status, status::GOOD, "{r:?}");
        assert_eq!(m.allocated_chunks(), 1);
        let r = run(&lu, &rw16(0x88, 2047, 3), &[]).await;
        assert!(r.data[..1024].iter().all(|&b| b == 0));
        assert!(r.data[1024..].iter().all(|&b| b == 7));
        // WRITE SAME(16) with a pattern, then with UNMAP.
        let mut ws = rw16(0x93, 100, 10);
        let blk: Vec<u8> = (0..512).map(|i| i as u8).collect();
        assert_eq!(run(&lu, &ws, &blk).await.status, status::GOOD);
        let r = run(&lu, &rw16(0x88, 100, 10), &[]).await;
        assert!(r.data.chunks(512).all(|c| c == &blk[..]));
        ws[1] = 0x08;
        assert_eq!(run(&lu, &ws, &[0u8; 512]).await.status, status::GOOD);
        let r = run(&lu, &rw16(0x88, 100, 10), &[]).await;
        assert!(r.data.iter().all(|&b| b == 0));
        // GET LBA STATUS from LBA 2048: one MiB mapped, then two MiB never written.
        let mut g = [0u8; 16];
        g[0] = 0x9e;
        g[1] = 0x12;
        g[2..10].copy_from_slice(&2048u64.to_be_bytes());
        g[10..14].copy_from_slice(&1024u32.to_be_bytes());
        let r = run(&lu, &g, &[]).await;
        assert_eq!(be32(&r.data[0..4]), 4 + 32);
        assert_eq!(be64(&r.data[8..16]), 2048);
        assert_eq!(be32(&r.data[16..20]), 2048);
        assert_eq!(r.data[8 + 12], 0);
        assert_eq!(be64(&r.data[24..32]), 4096);
        assert_eq!(be32(&r.data[32..36]), 4096);
        assert_eq!(r.data[24 + 12], 1);
    }

    #[tokio::test]
    async fn compare_and_write_and_verify() {
        let (lu, _) = lu(1 << 20);
        let a = vec![1u8; 512];
        run(&lu, &rw16(0x8a, 5, 1), &a).await;
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[2..10].copy_from_slice(&5u64.to_be_bytes());
        caw[13] = 1;
        let mut d = a.clone();
        d.extend_from_slice(&[2u8; 512]);
        assert_eq!(run(&lu, &caw, &d).await.status, status::GOOD);
        // Now the compare fails at byte 0.
        let r = run(&lu, &caw, &d).await;
        assert_eq!(sense_of(&r).0, key::MISCOMPARE);
        assert_eq!(r.sense[0] & 0x80, 0x80);
        // VERIFY(16) BYTCHK=1 against [2; 512].
        let mut v = rw16(0x8f, 5, 1);
        v[1] = 0x02;
        assert_eq!(run(&lu, &v, &[2u8; 512]).await.status, status::GOOD);
        let mut bad = vec![2u8; 512];
        bad[100] = 0;
        let r = run(&lu, &v, &bad).await;
        assert_eq!(sense_of(&r).0, key::MISCOMPARE);
        assert_eq!(be32(&r.sense[3..7]), 100);
    }

    #[tokio::test]
    async fn inquiry_pages() {
        let (lu, _) = lu(1 << 20);
        let r = run(&lu, &[0x12, 0, 0, 0, 255, 0], &[]).await;
        assert_eq!(r.data.len(), 96);
        assert_eq!(&r.data[8..16], VENDOR);
        let r = run(&lu, &[0x12, 1, 0x83, 0, 255, 0], &[]).await;
        assert_eq!(r.data[1], 0x83);
        assert_eq!(r.data[4..8], [0x01, 0x03, 0x00, 0x08]);
        assert_eq!(be64(&r.data[8..16]), (3 << 60) | 0x1234);
        let r = run(&lu, &[0x12, 1, 0xb0, 0, 255, 0], &[]).await;
        assert_eq!(be32(&r.data[12..16]), 2048); // optimal = 1 MiB granularity
        let r = run(&lu, &[0x12, 1, 0x99, 0, 255, 0], &[]).await;
        assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x24, 0));
        let r = run(&lu, &[0x12, 1, 0x00, 0, 5, 0], &[]).await;
        assert_eq!(r.data.len(), 5);
    }

    #[tokio::test]
    async fn swp_and_unit_attention() {
        let (lu, _) = lu(1 << 20);
        // Another nexus is known to the LU.
        let b = nexus("b");
        lu.execute(&Command {
            cdb: &[0, 0, 0, 0, 0, 0],
            path: &path(false),
            data_out: &Bytes::new(),
            nexus: &b,
        })
        .await;
        // Set SWP through MODE SELECT(6) of the control page.
        let ms = run(&lu, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[]).await;
        let mut page = ms.data.to_vec();
        page[0] = 0;
        page[4 + 4] |= 0x08;
        let r = run(&lu, &[0x15, 0x10, 0, 0, page.len() as u8, 0], &page).await;
        assert_eq!(r.status, status::GOOD, "{r:?}");
        let r = run(&lu, &rw16(0x8a, 0, 1), &[0u8; 512]).await;
        assert_eq!(sense_of(&r), (key::DATA_PROTECT, 0x27, 0));
        // b gets MODE PARAMETERS CHANGED once.
        let r = lu
            .execute(&Command {
                cdb: &[0, 0, 0, 0, 0, 0],
                path: &path(false),
                data_out: &Bytes::new(),
                nexus: &b,
            })
            .await;
        assert_eq!(sense_of(&r), (key::UNIT_ATTENTION, 0x2a, 0x01));
        // Changing a non-changeable bit is refused.
        page[4 + 3] ^= 0x80;
        let r = run(&lu, &[0x15, 0x10, 0, 0, page.len() as u8, 0], &page).await;
        assert_eq!(sense_of(&r), (key::ILLEGAL_REQUEST, 0x26, 0));
    }

    #[test]
    fn report_luns_lists() {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[9] = 255;
        let d = report_luns(&cdb, &[0, 1, 300]).unwrap();
        assert_eq!(be32(&d[0..4]), 24);
        assert_eq!(&d[24..26], &[0x41, 0x2c]);
        cdb[9] = 4;
        assert!(report_luns(&cdb, &[0]).is_err());
    }
}
