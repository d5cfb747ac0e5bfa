//! The one error type at the filesystem boundary: an errno for the kernel,
//! a message for the log, and how loudly to log it.

use crate::client;
use std::fmt;
use tracing::Level;

pub type FsResult<T> = std::result::Result<T, FsError>;

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
    pub fn quiet(errno: i32, msg: impl Into<String>) -> Self {
        FsError::new(errno, msg).with_level(Level::DEBUG)
    }

    /// A client error with context saying what we were doing, e.g.
    /// "read of volume test at 4096".
    pub fn client(context: impl fmt::Display, e: client::Error) -> Self {
        let errno = e.errno();
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

    pub fn with_level(mut self, level: Level) -> Self {
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
    }
}
