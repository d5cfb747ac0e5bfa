//! The client layer's error type.

use crate::proto::{inode::BtreeError, SdRes};

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to sheep. New kinds may be added: match with a
/// wildcard arm, or use [`Error::result`], [`Error::is`] and
/// [`Error::is_transport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sheep answered with a non-success result; displays dog's message.
    #[error("{res}")]
    Sheep {
        /// The request's opcode.
        op: u8,
        /// sheep's answer.
        res: SdRes,
    },
    /// No connection could be made (nothing was sent).
    #[error("cannot connect to sheep at {addr}: {source}")]
    Connect {
        /// The sheep's address.
        addr: String,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke while a request was in flight.
    #[error("connection to sheep at {addr} failed: {source}")]
    Io {
        /// The sheep's address.
        addr: String,
        /// What broke.
        #[source]
        source: std::io::Error,
    },
    /// No reply within [`Options::request_timeout`](super::Options::request_timeout).
    #[error("sheep at {addr} did not answer {op} within {secs} s")]
    Timeout {
        /// The sheep's address.
        addr: String,
        /// The opcode's name.
        op: &'static str,
        /// The timeout.
        secs: u64,
    },
    /// An earlier write to the same object may still land (its connection
    /// failed and sheep has not closed it): sending this one could let the
    /// older data win.
    #[error("an earlier write to object {oid:016x} on sheep at {addr} is still in doubt after {secs} s (sheep has not closed the failed connection); not sending a newer one that it could overwrite: check sheep, then retry")]
    Fenced {
        /// The sheep's address.
        addr: String,
        /// The object written.
        oid: u64,
        /// How long the write waited.
        secs: u64,
    },
    /// A reply that does not make sense (short, inconsistent).
    #[error("malformed reply from sheep at {addr}: {what}")]
    Protocol {
        /// The sheep's address.
        addr: String,
        /// What is wrong with it.
        what: String,
    },
    /// A request refused before sending (bad name, size, argument).
    #[error("{0}")]
    Invalid(String),
    /// A write to a snapshot or a volume opened read-only (its name).
    #[error("volume {0} is read-only")]
    ReadOnly(String),
    /// A write past the end of a volume.
    #[error("I/O beyond the end of volume {name} ({size} bytes)")]
    OutOfRange {
        /// The volume.
        name: String,
        /// Its size.
        size: u64,
    },
    /// A B-tree (hyper volume) map that cannot be read.
    #[error("corrupt inode of VDI {vid:#x}: {source}")]
    Btree {
        /// The VDI.
        vid: u32,
        /// What is wrong with its map.
        #[source]
        source: BtreeError,
    },
    /// The client (or volume) was closed.
    #[error("client is shut down")]
    Closed,
    /// A VDI size beyond what the inode can map: `max` is the flat limit of
    /// its object size, or 16 PiB (`hyper`).
    #[error("VDI size {size} is larger than {max} bytes{}", if *hyper { "" } else { "; use a hyper volume or a larger object size" })]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// The largest size possible.
        max: u64,
        /// Whether `max` is the hyper volume limit.
        hyper: bool,
    },
    /// A step of a VDI administration operation failed (see
    /// [`Step`]); `oid` is the object it worked on (0: none).
    /// Displays as the error beneath, as the operation's callers showed it before.
    #[error("{source}")]
    At {
        /// The step that failed.
        step: Step,
        /// The object it worked on (0: none).
        oid: u64,
        /// The error of the step.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// sheep's answer `res` to opcode `op`.
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

    /// Whether sheep answered `res` (through [`Error::At`] too).
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
