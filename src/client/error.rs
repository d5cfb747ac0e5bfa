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
    /// [`super::admin::Step`]); `oid` is the object it worked on (0: none).
    /// Displays as the error beneath, as the operation's callers showed it before.
    #[error("{source}")]
    At {
        step: super::admin::Step,
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

    /// The errno a filesystem should report.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Sheep { res, .. } => match *res {
                SdRes::NO_VDI | SdRes::NO_TAG | SdRes::NO_OBJ => libc::ENOENT,
                SdRes::VDI_EXIST => libc::EEXIST,
                SdRes::VDI_LOCKED => libc::EBUSY,
                SdRes::INVALID_PARMS => libc::EINVAL,
                SdRes::NO_SPACE | SdRes::FULL_VDI => libc::ENOSPC,
                SdRes::READONLY => libc::EROFS,
                SdRes::NO_MEM => libc::ENOMEM,
                _ => libc::EIO,
            },
            Error::Invalid(_) | Error::TooLarge { .. } => libc::EINVAL,
            Error::At { source, .. } => source.errno(),
            Error::ReadOnly(_) => libc::EROFS,
            Error::OutOfRange { .. } => libc::ENOSPC,
            Error::Timeout { .. } | Error::Connect { .. } | Error::Io { .. } => libc::EIO,
            Error::Fenced { .. } => libc::EIO,
            Error::Protocol { .. } | Error::Btree { .. } | Error::Closed => libc::EIO,
        }
    }
}
