//! Sheepdog wire protocol: bytes only, no I/O.
//!
//! Offsets and sizes follow `shared/reference/sheepdog-protocol.md` (x86-64
//! little-endian layout of upstream sheepdog 3ebe5ea). Everything is encoded
//! field by field; nothing is transmuted.

pub mod attr;
pub mod bitmap;
pub mod bytes;
pub mod hash;
pub mod header;
pub mod inode;
pub mod node;
pub mod oid;
pub mod result;

pub use hash::vdi_name_hash;
pub use header::{ReqHeader, RspHeader};
pub use result::SdRes;

/// Public protocol version dog sends for opcodes < 0x80.
pub const SD_PROTO_VER: u8 = 0x02;
/// Internal protocol version; must be exact for opcodes >= 0x80.
pub const SD_SHEEP_PROTO_VER: u8 = 0x0a;
pub const SD_LISTEN_PORT: u16 = 7000;
pub const SD_REQ_SIZE: usize = 48;
pub const SD_RSP_SIZE: usize = 48;

pub const SD_MAX_VDI_LEN: usize = 256;
pub const SD_MAX_VDI_TAG_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_KEY_LEN: usize = 256;
pub const SD_MAX_VDI_ATTR_VALUE_LEN: usize = 65536;
pub const SD_NR_VDIS: u32 = 1 << 24;
pub const SD_DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
pub const SD_DATA_OBJ_SIZE: u64 = 1 << 22;
pub const MIN_BLOCK_SIZE_SHIFT: u8 = 20;
pub const MAX_BLOCK_SIZE_SHIFT: u8 = 31;
pub const OLD_MAX_DATA_OBJS: u64 = 1 << 20;
pub const MAX_DATA_OBJS: u64 = 1 << 32;
pub const SD_OLD_MAX_VDI_SIZE: u64 = SD_DATA_OBJ_SIZE * OLD_MAX_DATA_OBJS;
pub const SD_MAX_VDI_SIZE: u64 = SD_DATA_OBJ_SIZE * MAX_DATA_OBJS;
pub const SD_DEFAULT_COPIES: u8 = 3;
pub const SD_MAX_COPIES: u8 = 31;
pub const SD_DEFAULT_VNODES: u16 = 128;
pub const SD_MAX_NODES: usize = 6144;
pub const STORE_LEN: usize = 16;
pub const LOCK_TYPE_NORMAL: u32 = 0;
pub const LOCK_TYPE_SHARED: u32 = 1;
pub const CURRENT_VDI_ID: u32 = 0;
/// Size of the READ_VDIS / READ_DEL_VDIS bitmap payload.
pub const VDI_BITMAP_SIZE: usize = (SD_NR_VDIS / 8) as usize;

/// Opcodes (`SD_OP_*`).
pub mod op {
    pub const CREATE_AND_WRITE_OBJ: u8 = 0x01;
    pub const READ_OBJ: u8 = 0x02;
    pub const WRITE_OBJ: u8 = 0x03;
    pub const REMOVE_OBJ: u8 = 0x04;
    pub const DISCARD_OBJ: u8 = 0x05;
    pub const NEW_VDI: u8 = 0x11;
    pub const LOCK_VDI: u8 = 0x12;
    pub const RELEASE_VDI: u8 = 0x13;
    pub const GET_VDI_INFO: u8 = 0x14;
    pub const READ_VDIS: u8 = 0x15;
    pub const FLUSH_VDI: u8 = 0x16;
    pub const DEL_VDI: u8 = 0x17;
    pub const GET_CLUSTER_DEFAULT: u8 = 0x18;
    pub const GET_NODE_LIST: u8 = 0x82;
    pub const MAKE_FS: u8 = 0x84;
    pub const SHUTDOWN: u8 = 0x85;
    pub const STAT_SHEEP: u8 = 0x86;
    pub const STAT_CLUSTER: u8 = 0x87;
    pub const GET_VDI_ATTR: u8 = 0x89;
    pub const FORCE_RECOVER: u8 = 0x8A;
    pub const GET_STORE_LIST: u8 = 0x90;
    pub const CLEANUP: u8 = 0x94;
    pub const STAT_RECOVERY: u8 = 0x97;
    pub const FLUSH_DEL_CACHE: u8 = 0x98;
    pub const NOTIFY_VDI_DEL: u8 = 0x99;
    pub const KILL_NODE: u8 = 0x9A;
    pub const GET_OBJ_LIST: u8 = 0xA1;
    pub const GET_EPOCH: u8 = 0xA2;
    pub const ENABLE_RECOVER: u8 = 0xA8;
    pub const DISABLE_RECOVER: u8 = 0xA9;
    pub const GET_VDI_COPIES: u8 = 0xAB;
    pub const NOTIFY_VDI_ADD: u8 = 0xAF;
    pub const DELETE_CACHE: u8 = 0xB0;
    pub const MD_INFO: u8 = 0xB1;
    pub const GET_HASH: u8 = 0xB4;
    pub const STAT: u8 = 0xB8;
    pub const GET_LOGLEVEL: u8 = 0xB9;
    pub const SET_LOGLEVEL: u8 = 0xBA;
    pub const EXIST: u8 = 0xBD;
    pub const CLUSTER_INFO: u8 = 0xBE;
    pub const ALTER_CLUSTER_COPY: u8 = 0xBF;
    pub const ALTER_VDI_COPY: u8 = 0xC0;
    pub const OIDS_EXIST: u8 = 0xC6;
    pub const READ_DEL_VDIS: u8 = 0xC9;
    pub const GET_RECOVERY: u8 = 0xCA;
    pub const SET_RECOVERY: u8 = 0xCB;
    pub const SET_VNODES: u8 = 0xCC;
    pub const GET_VNODES: u8 = 0xCD;

    /// Human name of an opcode, for logs.
    pub fn name(op: u8) -> &'static str {
        match op {
            CREATE_AND_WRITE_OBJ => "CREATE_AND_WRITE_OBJ",
            READ_OBJ => "READ_OBJ",
            WRITE_OBJ => "WRITE_OBJ",
            REMOVE_OBJ => "REMOVE_OBJ",
            DISCARD_OBJ => "DISCARD_OBJ",
            NEW_VDI => "NEW_VDI",
            LOCK_VDI => "LOCK_VDI",
            RELEASE_VDI => "RELEASE_VDI",
            GET_VDI_INFO => "GET_VDI_INFO",
            READ_VDIS => "READ_VDIS",
            FLUSH_VDI => "FLUSH_VDI",
            DEL_VDI => "DEL_VDI",
            GET_CLUSTER_DEFAULT => "GET_CLUSTER_DEFAULT",
            GET_NODE_LIST => "GET_NODE_LIST",
            MAKE_FS => "MAKE_FS",
            SHUTDOWN => "SHUTDOWN",
            STAT_SHEEP => "STAT_SHEEP",
            STAT_CLUSTER => "STAT_CLUSTER",
            GET_VDI_ATTR => "GET_VDI_ATTR",
            GET_STORE_LIST => "GET_STORE_LIST",
            FLUSH_DEL_CACHE => "FLUSH_DEL_CACHE",
            GET_OBJ_LIST => "GET_OBJ_LIST",
            GET_EPOCH => "GET_EPOCH",
            GET_VDI_COPIES => "GET_VDI_COPIES",
            EXIST => "EXIST",
            CLUSTER_INFO => "CLUSTER_INFO",
            OIDS_EXIST => "OIDS_EXIST",
            READ_DEL_VDIS => "READ_DEL_VDIS",
            _ => "UNKNOWN",
        }
    }
}

/// Request header flags (`SD_FLAG_CMD_*`).
pub mod flags {
    pub const CMD_WRITE: u16 = 0x0001;
    pub const CMD_COW: u16 = 0x0002;
    pub const CMD_CACHE: u16 = 0x0004;
    pub const CMD_DIRECT: u16 = 0x0008;
    pub const CMD_PIGGYBACK: u16 = 0x0010;
    pub const CMD_TGT: u16 = 0x0020;
    pub const CMD_FWD: u16 = 0x0040;
    /// GET_VDI_ATTR: create the attribute if absent.
    pub const CMD_CREAT: u16 = 0x0100;
    /// GET_VDI_ATTR: fail with VDI_EXIST if present.
    pub const CMD_EXCL: u16 = 0x0200;
    /// GET_VDI_ATTR: delete the attribute.
    pub const CMD_DEL: u16 = 0x0400;
}

/// Cluster flags (`SD_CLUSTER_FLAG_*`).
pub mod cluster_flags {
    pub const STRICT: u16 = 0x0001;
    pub const DISKMODE: u16 = 0x0002;
    pub const AUTO_VNODES: u16 = 0x0004;
    pub const USE_LOCK: u16 = 0x0008;
    pub const RECYCLE_VID: u16 = 0x0010;
    pub const AVOID_DISKFULL: u16 = 0x0020;
}

/// Cluster status values in `cluster_info.status`.
pub mod cluster_status {
    pub const OK: u8 = 1;
    pub const WAIT: u8 = 2;
    pub const SHUTDOWN: u8 = 3;
    pub const KILLED: u8 = 4;
}

/// Why a VDI name or tag cannot go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("VDI name is empty")]
    Empty,
    #[error("VDI name is too long ({0} bytes, at most 255)")]
    TooLong(usize),
    #[error("VDI name contains a NUL byte")]
    Nul,
}

/// Checks that `name` fits a 256-byte NUL-padded field (255 bytes + NUL).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() >= SD_MAX_VDI_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.as_bytes().contains(&0) {
        return Err(NameError::Nul);
    }
    Ok(())
}

/// Sheepdog time format: upper 32 bits seconds, lower 32 bits µs × 1000.
pub fn sd_time_now() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 32) | (now.subsec_micros() as u64 * 1000)
}
