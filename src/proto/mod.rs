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
/// The port sheep listens on by default.
pub const SD_LISTEN_PORT: u16 = 7000;
/// Size of a request header.
pub const SD_REQ_SIZE: usize = 48;
/// Size of a reply header.
pub const SD_RSP_SIZE: usize = 48;

/// Size of the name field (names are at most 255 bytes).
pub const SD_MAX_VDI_LEN: usize = 256;
/// Size of the tag field.
pub const SD_MAX_VDI_TAG_LEN: usize = 256;
/// Size of the attribute key field.
pub const SD_MAX_VDI_ATTR_KEY_LEN: usize = 256;
/// Largest attribute value.
pub const SD_MAX_VDI_ATTR_VALUE_LEN: usize = 65536;
/// Number of vids.
pub const SD_NR_VDIS: u32 = 1 << 24;
/// Default object size shift (4 MiB).
pub const SD_DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
/// Default object size.
pub const SD_DATA_OBJ_SIZE: u64 = 1 << 22;
/// Smallest object size shift (1 MiB).
pub const MIN_BLOCK_SIZE_SHIFT: u8 = 20;
/// Largest object size shift (2 GiB).
pub const MAX_BLOCK_SIZE_SHIFT: u8 = 31;
/// Data objects a flat map holds.
pub const OLD_MAX_DATA_OBJS: u64 = 1 << 20;
/// Data objects a B-tree map holds.
pub const MAX_DATA_OBJS: u64 = 1 << 32;
/// Largest flat VDI with the default object size (4 TiB).
pub const SD_OLD_MAX_VDI_SIZE: u64 = SD_DATA_OBJ_SIZE * OLD_MAX_DATA_OBJS;
/// Largest VDI (16 PiB).
pub const SD_MAX_VDI_SIZE: u64 = SD_DATA_OBJ_SIZE * MAX_DATA_OBJS;
/// Default number of copies.
pub const SD_DEFAULT_COPIES: u8 = 3;
/// Most copies.
pub const SD_MAX_COPIES: u8 = 31;
/// Default virtual nodes per node.
pub const SD_DEFAULT_VNODES: u16 = 128;
/// Most nodes in a cluster.
pub const SD_MAX_NODES: usize = 6144;
/// Size of the store name field.
pub const STORE_LEN: usize = 16;
/// An exclusive VDI lock.
pub const LOCK_TYPE_NORMAL: u32 = 0;
/// A shared VDI lock.
pub const LOCK_TYPE_SHARED: u32 = 1;
/// The vid meaning "the working VDI".
pub const CURRENT_VDI_ID: u32 = 0;
/// Size of the READ_VDIS / READ_DEL_VDIS bitmap payload.
pub const VDI_BITMAP_SIZE: usize = (SD_NR_VDIS / 8) as usize;

/// Opcodes (`SD_OP_*`).
pub mod op {
    /// `SD_OP_CREATE_AND_WRITE_OBJ`: creates an object and writes into it.
    pub const CREATE_AND_WRITE_OBJ: u8 = 0x01;
    /// `SD_OP_READ_OBJ`: reads bytes of an object.
    pub const READ_OBJ: u8 = 0x02;
    /// `SD_OP_WRITE_OBJ`: writes bytes into an object.
    pub const WRITE_OBJ: u8 = 0x03;
    /// `SD_OP_REMOVE_OBJ`: deletes an object.
    pub const REMOVE_OBJ: u8 = 0x04;
    /// `SD_OP_DISCARD_OBJ`: deletes a data object and clears its map entry.
    pub const DISCARD_OBJ: u8 = 0x05;
    /// `SD_OP_NEW_VDI`: creates a VDI or snapshot.
    pub const NEW_VDI: u8 = 0x11;
    /// `SD_OP_LOCK_VDI`: looks up and locks a VDI.
    pub const LOCK_VDI: u8 = 0x12;
    /// `SD_OP_RELEASE_VDI`: unlocks a VDI.
    pub const RELEASE_VDI: u8 = 0x13;
    /// `SD_OP_GET_VDI_INFO`: looks up a VDI by name and tag or snapshot id.
    pub const GET_VDI_INFO: u8 = 0x14;
    /// `SD_OP_READ_VDIS`: the in-use vid bitmap.
    pub const READ_VDIS: u8 = 0x15;
    /// `SD_OP_FLUSH_VDI`: makes cached writes of a VDI durable.
    pub const FLUSH_VDI: u8 = 0x16;
    /// `SD_OP_DEL_VDI`: deletes a VDI.
    pub const DEL_VDI: u8 = 0x17;
    /// `SD_OP_GET_CLUSTER_DEFAULT`: copies, policy and object size of new VDIs.
    pub const GET_CLUSTER_DEFAULT: u8 = 0x18;
    /// `SD_OP_GET_NODE_LIST`: the nodes.
    pub const GET_NODE_LIST: u8 = 0x82;
    /// `SD_OP_MAKE_FS`: formats the cluster.
    pub const MAKE_FS: u8 = 0x84;
    /// `SD_OP_SHUTDOWN`: stops the cluster.
    pub const SHUTDOWN: u8 = 0x85;
    /// `SD_OP_STAT_SHEEP`: store size and free space of a node.
    pub const STAT_SHEEP: u8 = 0x86;
    /// `SD_OP_STAT_CLUSTER`: cluster status and epoch records.
    pub const STAT_CLUSTER: u8 = 0x87;
    /// `SD_OP_GET_VDI_ATTR`: looks up, creates or deletes a VDI attribute.
    pub const GET_VDI_ATTR: u8 = 0x89;
    /// `SD_OP_FORCE_RECOVER`: forces recovery.
    pub const FORCE_RECOVER: u8 = 0x8A;
    /// `SD_OP_GET_STORE_LIST`: backend store names.
    pub const GET_STORE_LIST: u8 = 0x90;
    /// `SD_OP_CLEANUP`: removes stale objects.
    pub const CLEANUP: u8 = 0x94;
    /// `SD_OP_STAT_RECOVERY`: recovery progress.
    pub const STAT_RECOVERY: u8 = 0x97;
    /// `SD_OP_FLUSH_DEL_CACHE`: flushes and drops a VDI's object cache.
    pub const FLUSH_DEL_CACHE: u8 = 0x98;
    /// `SD_OP_NOTIFY_VDI_DEL`: internal: a VDI was deleted.
    pub const NOTIFY_VDI_DEL: u8 = 0x99;
    /// `SD_OP_KILL_NODE`: stops a node.
    pub const KILL_NODE: u8 = 0x9A;
    /// `SD_OP_GET_OBJ_LIST`: internal: objects of a node.
    pub const GET_OBJ_LIST: u8 = 0xA1;
    /// `SD_OP_GET_EPOCH`: internal: an epoch record.
    pub const GET_EPOCH: u8 = 0xA2;
    /// `SD_OP_ENABLE_RECOVER`: enables recovery.
    pub const ENABLE_RECOVER: u8 = 0xA8;
    /// `SD_OP_DISABLE_RECOVER`: disables recovery.
    pub const DISABLE_RECOVER: u8 = 0xA9;
    /// `SD_OP_GET_VDI_COPIES`: per-VDI state (copies, locks).
    pub const GET_VDI_COPIES: u8 = 0xAB;
    /// `SD_OP_NOTIFY_VDI_ADD`: internal: a VDI was added.
    pub const NOTIFY_VDI_ADD: u8 = 0xAF;
    /// `SD_OP_DELETE_CACHE`: drops a VDI's object cache.
    pub const DELETE_CACHE: u8 = 0xB0;
    /// `SD_OP_MD_INFO`: multi-disk information.
    pub const MD_INFO: u8 = 0xB1;
    /// `SD_OP_GET_HASH`: internal: hash of an object.
    pub const GET_HASH: u8 = 0xB4;
    /// `SD_OP_STAT`: request statistics.
    pub const STAT: u8 = 0xB8;
    /// `SD_OP_GET_LOGLEVEL`: the log level.
    pub const GET_LOGLEVEL: u8 = 0xB9;
    /// `SD_OP_SET_LOGLEVEL`: sets the log level.
    pub const SET_LOGLEVEL: u8 = 0xBA;
    /// `SD_OP_EXIST`: internal: whether an object exists.
    pub const EXIST: u8 = 0xBD;
    /// `SD_OP_CLUSTER_INFO`: the cluster's format and nodes.
    pub const CLUSTER_INFO: u8 = 0xBE;
    /// `SD_OP_ALTER_CLUSTER_COPY`: changes the cluster's copies.
    pub const ALTER_CLUSTER_COPY: u8 = 0xBF;
    /// `SD_OP_ALTER_VDI_COPY`: changes a VDI's copies.
    pub const ALTER_VDI_COPY: u8 = 0xC0;
    /// `SD_OP_OIDS_EXIST`: internal: which objects exist.
    pub const OIDS_EXIST: u8 = 0xC6;
    /// `SD_OP_READ_DEL_VDIS`: the deleted vid bitmap.
    pub const READ_DEL_VDIS: u8 = 0xC9;
    /// `SD_OP_GET_RECOVERY`: recovery throttling.
    pub const GET_RECOVERY: u8 = 0xCA;
    /// `SD_OP_SET_RECOVERY`: sets recovery throttling.
    pub const SET_RECOVERY: u8 = 0xCB;
    /// `SD_OP_SET_VNODES`: sets virtual nodes.
    pub const SET_VNODES: u8 = 0xCC;
    /// `SD_OP_GET_VNODES`: virtual nodes.
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
    /// The request carries a payload.
    pub const CMD_WRITE: u16 = 0x0001;
    /// Create the object as a copy of `cow_oid`.
    pub const CMD_COW: u16 = 0x0002;
    /// Go through sheep's object cache.
    pub const CMD_CACHE: u16 = 0x0004;
    /// Bypass sheep's object cache.
    pub const CMD_DIRECT: u16 = 0x0008;
    /// Internal (sheep to sheep).
    pub const CMD_PIGGYBACK: u16 = 0x0010;
    /// Internal (sheep to sheep).
    pub const CMD_TGT: u16 = 0x0020;
    /// Internal: forwarded by a gateway.
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
    /// Refuse writes when fewer nodes than copies are up.
    pub const STRICT: u16 = 0x0001;
    /// Vnodes per disk.
    pub const DISKMODE: u16 = 0x0002;
    /// Vnodes derived from node sizes.
    pub const AUTO_VNODES: u16 = 0x0004;
    /// VDI locking enforced.
    pub const USE_LOCK: u16 = 0x0008;
    /// Vids of deleted VDIs are reused.
    pub const RECYCLE_VID: u16 = 0x0010;
    /// Avoid nodes whose disks are full.
    pub const AVOID_DISKFULL: u16 = 0x0020;
}

/// Cluster status values in `cluster_info.status`.
pub mod cluster_status {
    /// Serving.
    pub const OK: u8 = 1;
    /// Waiting (for format or nodes).
    pub const WAIT: u8 = 2;
    /// Shut down.
    pub const SHUTDOWN: u8 = 3;
    /// Killed.
    pub const KILLED: u8 = 4;
}

/// Why a VDI name or tag cannot go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An empty name.
    #[error("VDI name is empty")]
    Empty,
    /// A name of this many bytes (at most 255 fit).
    #[error("VDI name is too long ({0} bytes, at most 255)")]
    TooLong(usize),
    /// A name with a NUL byte (the field is NUL-terminated).
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
