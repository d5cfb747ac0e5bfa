//! The one error type at the filesystem boundary: an errno for the kernel,
//! a message for the log, and how loudly to log it.

use crate::client;
use crate::proto::SdRes;
use std::fmt;
use tracing::Level;

pub type FsResult<T> = std::result::Result<T, FsError>;

/// The errno of anything that needs a formatted cluster, on one that is not
/// (documented in sheepfs(8)).
pub(crate) const ERRNO_UNFORMATTED: i32 = libc::ENXIO;

/// The errno a filesystem reports for a client error (a cluster that is not
/// formatted is EIO here; [`FsError::client`] makes it ENXIO).
pub fn errno(e: &client::Error) -> i32 {
    use client::Error;
    match e.root() {
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
        Error::ReadOnly(_) => libc::EROFS,
        Error::OutOfRange { .. } => libc::ENOSPC,
        _ => libc::EIO,
    }
}

#[derive(Debug)]
pub struct FsError {
    errno: i32,
    msg: String,
    source: Option<client::Error>,
    level: Level,
}

impl FsError {
    /// An error the caller caused or should know about (logged at WARN).
    pub fn new(errno: i32, msg: impl Into<String>) -> Self {
        FsError {
            errno,
            msg: msg.into(),
            source: None,
            level: Level::WARN,
        }
    }

    /// An error that is part of normal operation, such as a lookup of a name
    /// that does not exist (logged at DEBUG only).
    pub(crate) fn quiet(errno: i32, msg: impl Into<String>) -> Self {
        FsError::new(errno, msg).with_level(Level::DEBUG)
    }

    /// A client error with context saying what we were doing, e.g.
    /// "read of volume test at 4096".
    ///
    /// A cluster that is not formatted yet gives ENXIO ("no such device or
    /// address": there is no storage behind the address yet), not EIO,
    /// which means an I/O failure.
    pub fn client(context: impl fmt::Display, e: client::Error) -> Self {
        let errno = if e.is(SdRes::WAIT_FOR_FORMAT) {
            ERRNO_UNFORMATTED
        } else {
            errno(&e)
        };
        // Transport trouble and corrupt replies deserve ERROR; a sheep
        // refusing a request (no such VDI, locked...) is a WARN.
        let level = if errno == libc::EIO {
            Level::ERROR
        } else {
            Level::WARN
        };
        FsError {
            errno,
            msg: context.to_string(),
            source: Some(e),
            level,
        }
    }

    pub(crate) fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Emits the error as a tracing event at its own level (inside the
    /// caller's span, which names the request).
    pub fn log(&self) {
        let errno = self.errno;
        match self.level {
            Level::ERROR => tracing::error!(errno, "{self}"),
            Level::WARN => tracing::warn!(errno, "{self}"),
            Level::INFO => tracing::info!(errno, "{self}"),
            Level::DEBUG => tracing::debug!(errno, "{self}"),
            _ => tracing::trace!(errno, "{self}"),
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) if e.is(SdRes::WAIT_FOR_FORMAT) => write!(
                f,
                "{}: {e}; format it first: sheepctl cluster format -l",
                self.msg
            ),
            Some(e) => write!(f, "{}: {}", self.msg, e),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{op, SdRes};

    #[test]
    fn errno_and_message() {
        let e = FsError::client(
            "attach of VDI 'x'",
            client::Error::sheep(op::LOCK_VDI, SdRes::VDI_LOCKED),
        );
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(e.to_string().starts_with("attach of VDI 'x': "));
        assert_eq!(e.level(), Level::WARN);
        let e = FsError::client("read", client::Error::Closed);
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.level(), Level::ERROR);
        assert_eq!(FsError::quiet(libc::ENOENT, "x").level(), Level::DEBUG);
        let e = FsError::client(
            "attach of VDI 'x'",
            client::Error::sheep(op::LOCK_VDI, SdRes::WAIT_FOR_FORMAT),
        );
        assert_eq!(e.errno(), libc::ENXIO);
        assert!(e.to_string().contains("sheepctl cluster format"), "{e}");
    }
}
