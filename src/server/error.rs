//! Errors of the server layer.
//!
//! Request handling fails with the wire result code itself ([`SdRes`]): that
//! is what the client sees, and every I/O error is logged with the object or
//! file it concerns before it is turned into one. Startup and shutdown fail
//! with [`ServerError`], which names the directory, address or file involved.

use crate::proto::SdRes;
use std::path::{Path, PathBuf};

pub type OpResult<T> = Result<T, SdRes>;

/// Maps an I/O error to the result code sheep would return (and logs it).
pub fn io_res(e: &std::io::Error, what: &str, path: &Path) -> SdRes {
    let res = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => SdRes::NO_SPACE,
        Some(libc::ENOENT) => SdRes::NO_OBJ,
        Some(libc::ENOMEM) => SdRes::NO_MEM,
        _ => SdRes::EIO,
    };
    if res == SdRes::NO_OBJ {
        tracing::debug!(path = %path.display(), error = %e, "{what} failed");
    } else {
        tracing::error!(path = %path.display(), error = %e, "{what} failed");
    }
    res
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store directory {} is in use by another sheep-lite (lock file {})", dir.display(), lock.display())]
    DirInUse { dir: PathBuf, lock: PathBuf },
    #[error("state file {}: {what}", path.display())]
    State { path: PathBuf, what: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}
