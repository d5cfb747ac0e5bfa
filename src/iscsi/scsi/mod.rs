//! The SCSI layer (SPC-4 / SBC-3 subset): a logical unit executes a CDB
//! with its data-out buffer and returns status, data-in and sense. It knows
//! nothing about iSCSI; `Nexus` identifies the initiator port.

pub mod lu;
mod opcodes;
mod pr;

pub use lu::{LogicalUnit, Path};

use bytes::Bytes;

pub const BLOCK_SIZE: u64 = 512;
pub const BLOCK_SHIFT: u32 = 9;
/// Largest data transfer of one command (reported in the Block Limits VPD).
pub const MAX_XFER_BYTES: u64 = 8 << 20;
pub const MAX_XFER_BLOCKS: u64 = MAX_XFER_BYTES / BLOCK_SIZE;

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Additional sense code + qualifier pairs we report.
pub mod asc {
    pub const NONE: (u8, u8) = (0x00, 0x00);
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const LU_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAM_LIST: (u8, u8) = (0x26, 0x00);
    pub const PARAM_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    pub const INVALID_FIELD_IN_IU: (u8, u8) = (0x0e, 0x03);
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    pub const SPACE_ALLOC_FAILED_WRITE_PROTECT: (u8, u8) = (0x27, 0x07);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
    pub const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2a, 0x09);
    pub const SAVING_PARAMS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: (u8, u8) = (0x55, 0x04);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: (u8, u8) = (0x2f, 0x00);
    pub const DATA_PHASE_ERROR: (u8, u8) = (0x4b, 0x00);
    pub const INVALID_TTT: (u8, u8) = (0x4b, 0x01);
    pub const TOO_MUCH_WRITE_DATA: (u8, u8) = (0x4b, 0x02);
    pub const DATA_OFFSET_ERROR: (u8, u8) = (0x4b, 0x05);
}

/// Sense data in the making.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the miscompare offset).
    pub info: Option<u64>,
    /// Sense-key-specific field pointer: (in CDB?, byte, bit).
    pub field: Option<(bool, u16, Option<u8>)>,
}

impl Sense {
    pub fn new(key: u8, (asc, ascq): (u8, u8)) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }
    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }
    /// Points at the offending CDB byte (and bit).
    pub fn cdb_field(mut self, byte: u16, bit: Option<u8>) -> Sense {
        self.field = Some((true, byte, bit));
        self
    }
    pub fn param_field(mut self, byte: u16, bit: Option<u8>) -> Sense {
        self.field = Some((false, byte, bit));
        self
    }

    fn sks(&self) -> Option<[u8; 3]> {
        let (cd, byte, bit) = self.field?;
        let mut b0 = 0x80;
        if cd {
            b0 |= 0x40;
        }
        if let Some(bit) = bit {
            b0 |= 0x08 | (bit & 7);
        }
        Some([b0, (byte >> 8) as u8, byte as u8])
    }

    /// Fixed (0x70) or descriptor (0x72) format.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            let mut v = vec![0x72, self.key, self.asc, self.ascq, 0, 0, 0, 0];
            if let Some(i) = self.info {
                v.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
                v.extend_from_slice(&i.to_be_bytes());
            }
            if let Some(s) = self.sks() {
                v.extend_from_slice(&[0x02, 0x06, 0, 0, s[0], s[1], s[2], 0]);
            }
            v[7] = (v.len() - 8) as u8;
            v
        } else {
            let mut v = vec![0u8; 18];
            v[0] = 0x70;
            v[2] = self.key;
            if let Some(i) = self.info {
                v[0] |= 0x80;
                v[3..7].copy_from_slice(&(i.min(u32::MAX as u64) as u32).to_be_bytes());
            }
            v[7] = 10;
            v[12] = self.asc;
            v[13] = self.ascq;
            if let Some(s) = self.sks() {
                v[15..18].copy_from_slice(&s);
            }
            v
        }
    }
}

/// Shorthands for the usual errors.
pub fn illegal(a: (u8, u8)) -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, a)
}
pub fn invalid_cdb(byte: u16) -> Sense {
    illegal(asc::INVALID_FIELD_IN_CDB).cdb_field(byte, None)
}
pub fn invalid_param(byte: u16) -> Sense {
    illegal(asc::INVALID_FIELD_IN_PARAM_LIST).param_field(byte, None)
}
pub fn lba_out_of_range() -> Sense {
    illegal(asc::LBA_OUT_OF_RANGE)
}

/// The I_T nexus a command arrived on (SPC-4 initiator port + target port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Identifies the I_T nexus: `initiator_port|target_port`.
    pub id: String,
    /// `iqn...,i,0x<ISID>`: the initiator port name (SPC-4 TransportID).
    pub initiator_port: String,
    /// The initiator's iSCSI name.
    pub initiator_name: String,
    /// The target port (`iqn...,t,0x0001`) and its relative port id.
    pub target_port: String,
    pub rel_port: u16,
}

/// A command as the logical unit sees it.
#[derive(Debug)]
pub struct Command<'a> {
    pub cdb: &'a [u8],
    /// The LUN (and target) the command came through.
    pub path: &'a Path,
    /// Everything the initiator sent (EDTL bytes, or fewer on overflow).
    pub data_out: &'a Bytes,
    pub nexus: &'a Nexus,
}

/// The outcome of one command.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u8,
    /// Data-In, already cut to the CDB's allocation length.
    pub data: Bytes,
    /// Encoded sense data (CHECK CONDITION only).
    pub sense: Vec<u8>,
    /// Bytes of data-out the command wanted (for residuals of writes).
    pub wanted_out: u64,
}

impl Nexus {
    pub fn new(
        initiator_port: String,
        initiator_name: String,
        target_port: String,
        rel_port: u16,
    ) -> Nexus {
        Nexus {
            id: format!("{initiator_port}|{target_port}"),
            initiator_port,
            initiator_name,
            target_port,
            rel_port,
        }
    }
}

impl Response {
    pub fn good() -> Response {
        Response {
            status: status::GOOD,
            data: Bytes::new(),
            sense: Vec::new(),
            wanted_out: 0,
        }
    }
    pub fn data(d: impl Into<Bytes>) -> Response {
        Response {
            data: d.into(),
            ..Response::good()
        }
    }
    pub fn status(s: u8) -> Response {
        Response {
            status: s,
            ..Response::good()
        }
    }
    pub fn check(sense: &Sense, descriptor: bool) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: sense.encode(descriptor),
            ..Response::good()
        }
    }
}

/// What the transport must know before the data arrives: the byte range
/// the command touches (for ordering) and whether it modifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No media access (INQUIRY, ...): never waits.
    None,
    Read {
        start: u64,
        end: u64,
    },
    Write {
        start: u64,
        end: u64,
    },
    /// Range only known from the data (UNMAP) or whole-LU effects: waits
    /// for everything before it and everything after waits for it.
    Barrier,
}

pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(crate) fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

/// Length of the CDB for an opcode (by group code), SPC-4 §4.2.5.1.
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense() {
        let s = invalid_cdb(2);
        let f = s.encode(false);
        assert_eq!(f.len(), 18);
        assert_eq!((f[0], f[2], f[12], f[13]), (0x70, 5, 0x24, 0));
        assert_eq!(&f[15..18], &[0xc0, 0, 2]);
        let d = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(513)
            .encode(true);
        assert_eq!((d[0], d[1], d[2], d[3], d[7]), (0x72, 0xe, 0x1d, 0, 12));
        assert_eq!(&d[8..12], &[0, 0x0a, 0x80, 0]);
        assert_eq!(be64(&d[12..20]), 513);
    }
}
