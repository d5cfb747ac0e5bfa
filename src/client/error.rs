//! The client layer's error type.

use crate::proto::{inode::BtreeError, SdRes};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sheep answered with a non-success result; displays dog's message.
    #[error("{res}")]
    Sheep { op: u8, res: SdRes },
    #[error("cannot connect to sheep at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to sheep at {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sheep at {addr} did not answer {op} within {secs} s")]
    Timeout {
        addr: String,
        op: &'static str,
        secs: u64,
    },
    /// An earlier write to the same object may still land (its connection
    /// failed and sheep has not closed it): sending this one could let the
    /// older data win.
    #[error("an earlier write to object {oid:016x} on sheep at {addr} is still in doubt after {secs} s (sheep has not closed the failed connection); not sending a newer one that it could overwrite: check sheep, then retry")]
    Fenced { addr: String, oid: u64, secs: u64 },
    #[error("malformed reply from sheep at {addr}: {what}")]
    Protocol { addr: String, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("volume {0} is read-only")]
    ReadOnly(String),
    #[error("I/O beyond the end of volume {name} ({size} bytes)")]
    OutOfRange { name: String, size: u64 },
    #[error("corrupt inode of VDI {vid:#x}: {source}")]
    Btree {
        vid: u32,
        #[source]
        source: BtreeError,
    },
    #[error("client is shut down")]
    Closed,
    /// A VDI size beyond what the inode can map: `max` is the flat limit of
    /// its object size, or 16 PiB (`hyper`).
    #[error("VDI size {size} is larger than {max} bytes{}", if *hyper { "" } else { "; use a hyper volume or a larger object size" })]
    TooLarge { size: u64, max: u64, hyper: bool },
    /// A step of a VDI administration operation failed (see
    /// [`Step`]); `oid` is the object it worked on (0: none).
    /// Displays as the error beneath, as the operation's callers showed it before.
    #[error("{source}")]
    At {
        step: Step,
        oid: u64,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn sheep(op: u8, res: SdRes) -> Self {
        Error::Sheep { op, res }
    }

    /// The sheep result code, if this is a sheep answer.
    pub fn result(&self) -> Option<SdRes> {
        match self {
            Error::Sheep { res, .. } => Some(*res),
            Error::At { source, .. } => source.result(),
            _ => None,
        }
    }

    /// The error beneath the step of an admin operation ([`Error::At`]).
    pub fn root(&self) -> &Error {
        match self {
            Error::At { source, .. } => source.root(),
            e => e,
        }
    }

    pub fn is(&self, res: SdRes) -> bool {
        self.result() == Some(res)
    }

    /// Transport-level failure (worth retrying once the server is back).
    pub fn is_transport(&self) -> bool {
        matches!(
            self.root(),
            Error::Connect { .. } | Error::Io { .. } | Error::Timeout { .. } | Error::Fenced { .. }
        )
    }
}

/// The request of an admin operation that failed (see [`Error::At`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// CLUSTER_INFO for the cluster's object size (create without `-z`/`-y`).
    ClusterInfo,
    /// GET_VDI_INFO of the VDI the operation works on.
    Lookup,
    /// Snapshot: looking up the tag (and reading the inode it names) to
    /// check it is free; a tag in use is VDI_EXIST.
    LookupTag,
    /// Clone: looking up and reading back the new VDI.
    Reopen,
    /// Reading the whole data map (snapshot's reduce-identical check).
    ReadMap,
    /// Reading its inode.
    ReadInode,
    /// NEW_VDI.
    NewVdi,
    /// Reading a data object (clone copying data).
    ReadData,
    /// Creating a data object (preallocation, clone).
    WriteData,
    /// Writing the inode (map entries, B-tree, tag, size).
    WriteInode,
    /// DEL_VDI.
    DelVdi,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::ClusterInfo => "reading the cluster info",
            Step::Lookup => "looking up the VDI",
            Step::LookupTag => "checking the snapshot tag",
            Step::Reopen => "reading back the new VDI",
            Step::ReadMap => "reading the data map",
            Step::ReadInode => "reading the inode",
            Step::NewVdi => "creating the VDI",
            Step::ReadData => "reading a data object",
            Step::WriteData => "writing a data object",
            Step::WriteInode => "writing the inode",
            Step::DelVdi => "deleting the VDI",
        })
    }
}
