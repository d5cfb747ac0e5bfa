//! Fault points for tests, inert unless the environment names them:
//! - `SHEEP_LITE_CRASH_AT=<point>`: the server kills itself (SIGKILL: no
//!   cleanup, no flush) when it reaches that point of a multi-step operation,
//!   so tests can check crash recovery at each step;
//! - `SHEEP_LITE_FAIL_AT=<point>`: the step at that point fails with EIO, so
//!   tests can check that a failed operation is undone.
//!
//! Points: `<op>-intent` (the intent is durable; op = create, clone,
//! snapshot, rebase), `<op>-base` (the base inodes are changed; op = clone,
//! snapshot, rebase), `<op>-inode` (the new inode is written; op = create,
//! clone, snapshot, rebase), `delete-intent`, `delete-inode` (the inode is
//! cleared).

use super::error::OpResult;
use crate::proto::SdRes;
use std::sync::OnceLock;

pub const CRASH_ENV: &str = "SHEEP_LITE_CRASH_AT";
pub const FAIL_ENV: &str = "SHEEP_LITE_FAIL_AT";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// Dies or fails here if the environment asks for it.
pub fn point(name: &str) -> OpResult<()> {
    static AT: OnceLock<(Option<String>, Option<String>)> = OnceLock::new();
    let (crash, fail) = AT.get_or_init(|| (var(CRASH_ENV), var(FAIL_ENV)));
    if crash.as_deref() == Some(name) {
        tracing::error!(point = name, "{CRASH_ENV} reached: killing this process");
        // SAFETY: plain kill(2) of this very process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
    if fail.as_deref() == Some(name) {
        tracing::error!(point = name, "{FAIL_ENV} reached: failing this step");
        return Err(SdRes::EIO);
    }
    Ok(())
}
