//! Result codes (`SD_RES_*`) with their names and dog's messages.

use std::fmt;

/// A Sheepdog result code as carried in the response header (u32 @16).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SdRes(pub u32);

macro_rules! results {
    ($($name:ident = $val:expr, $msg:expr;)*) => {
        impl SdRes {
            $(
                #[doc = concat!("`SD_RES_", stringify!($name), "`.")]
                pub const $name: SdRes = SdRes($val);
            )*

            /// The `SD_RES_` suffix, e.g. `NO_VDI`.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some(stringify!($name)),)* _ => None }
            }

            /// dog's text for this code (`sd_strerror`).
            pub fn message(self) -> String {
                let m: Option<&'static str> = match self.0 { $($val => $msg,)* _ => None };
                match m {
                    Some(m) => m.to_string(),
                    None => format!("Invalid error code {:x}", self.0),
                }
            }
        }
    };
}

results! {
    SUCCESS = 0x00, Some("Success");
    UNKNOWN = 0x01, Some("Unknown error");
    NO_OBJ = 0x02, Some("No object found");
    EIO = 0x03, Some("I/O error");
    VDI_EXIST = 0x04, Some("VDI exists already");
    INVALID_PARMS = 0x05, Some("Invalid parameters");
    SYSTEM_ERROR = 0x06, Some("System error");
    VDI_LOCKED = 0x07, Some("VDI is already locked");
    NO_VDI = 0x08, Some("No VDI found");
    NO_BASE_VDI = 0x09, Some("No base VDI found");
    VDI_READ = 0x0A, Some("Failed to read from requested VDI");
    VDI_WRITE = 0x0B, Some("Failed to write to requested VDI");
    BASE_VDI_READ = 0x0C, Some("Failed to read from base VDI");
    BASE_VDI_WRITE = 0x0D, Some("Failed to write to base VDI");
    NO_TAG = 0x0E, Some("Failed to find requested tag");
    STARTUP = 0x0F, Some("System is still booting");
    VDI_NOT_LOCKED = 0x10, Some("VDI is not locked");
    SHUTDOWN = 0x11, Some("System is shutting down");
    NO_MEM = 0x12, Some("Out of memory on server");
    FULL_VDI = 0x13, Some("Maximum number of VDIs reached");
    VER_MISMATCH = 0x14, Some("Protocol version mismatch");
    NO_SPACE = 0x15, Some("Server has no space for new objects");
    WAIT_FOR_FORMAT = 0x16, Some("Waiting for cluster to be formatted");
    WAIT_FOR_JOIN = 0x17, Some("Waiting for other nodes to join cluster");
    JOIN_FAILED = 0x18, Some("Node has failed to join cluster");
    HALT = 0x19, Some("IO has halted as there are not enough living nodes");
    READONLY = 0x1A, Some("Object is read-only");
    INODE_INVALIDATED = 0x1D, Some("Inode object is invalidated");
    OLD_NODE_VER = 0x81, Some("Request has an old epoch");
    NEW_NODE_VER = 0x82, Some("Request has a new epoch");
    NOT_FORMATTED = 0x83, Some("Cluster has not been formatted");
    INVALID_CTIME = 0x84, Some("Creation times differ");
    INVALID_EPOCH = 0x85, Some("Invalid epoch");
    NETWORK_ERROR = 0x86, Some("Network error between sheep");
    NO_CACHE = 0x87, Some("No cache object found");
    BUFFER_SMALL = 0x88, Some("The buffer is too small");
    FORCE_RECOVER = 0x89, Some("Cluster is running/halted and cannot be force recovered");
    NO_STORE = 0x8A, Some("Targeted backend store is not found");
    NO_SUPPORT = 0x8B, Some("Operation is not supported");
    NODE_IN_RECOVERY = 0x8C, Some("Targeted node is in recovery");
    KILLED = 0x8D, Some("Node is killed");
    OID_EXIST = 0x8E, Some("Object ID exists already");
    AGAIN = 0x8F, Some("Ask to try again");
    STALE_OBJ = 0x90, Some("Object may be stale");
    CLUSTER_ERROR = 0x91, Some("Cluster driver error");
    VDI_NOT_EMPTY = 0x92, None;
    NOT_FOUND = 0x93, None;
    INCOMPLETE = 0x94, None;
    COLLECTING_CINFO = 0x95, None;
    GATEWAY_MODE = 0x97, Some("Targeted node is gateway mode");
    INVALID_VNODES_STRATEGY = 0x98, Some("Invalid cluster vnodes strategy");
    NO_CHECKPOINT_ENTRY = 0x99, None;
}

impl SdRes {
    /// Whether this is `SUCCESS`.
    pub fn is_success(self) -> bool {
        self == SdRes::SUCCESS
    }
}

impl fmt::Debug for SdRes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "SD_RES_{n}"),
            None => write!(f, "SD_RES({:#x})", self.0),
        }
    }
}

impl fmt::Display for SdRes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages() {
        assert_eq!(SdRes::NO_VDI.message(), "No VDI found");
        assert_eq!(SdRes(0x16).message(), "Waiting for cluster to be formatted");
        assert_eq!(SdRes(0x1B).message(), "Invalid error code 1b");
        assert_eq!(SdRes(0x95).message(), "Invalid error code 95");
        assert_eq!(SdRes::READONLY.name(), Some("READONLY"));
        assert_eq!(format!("{:?}", SdRes::VDI_EXIST), "SD_RES_VDI_EXIST");
    }
}
