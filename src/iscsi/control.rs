//! The control socket: a unix stream socket (mode 0600) on which
//! `sheep-iscsi-adm` sends one JSON [`Request`] line and reads one JSON
//! [`Reply`] line. Only root (or the user the target runs as) may talk to
//! it, checked with SO_PEERCRED; a malformed request gets an error reply
//! and never disturbs the target.

use super::admin::{self, AdmErr, Reply, Request};
use super::shared::Shared;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

/// Where the control socket lives unless `--control` says otherwise.
pub const DEFAULT_PATH: &str = "/run/sheep-iscsi.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// A client must send its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound control socket; the file is removed on drop.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0600). A stale socket left by a dead target is
    /// replaced; a live one (another sheep-iscsi) is an error, and so is
    /// any other file there.
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "control socket {} is in use by another sheep-iscsi; pick another with --control",
                        path.display()
                    ));
                }
                std::fs::remove_file(path).map_err(|e| {
                    format!("cannot remove stale control socket {}: {e}", path.display())
                })?;
            }
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot create control socket {}: {e}", path.display()))?;
        let sock = ControlSocket {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
        Ok(sock)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until the future is dropped.
    pub async fn serve(&self, shared: Arc<Shared>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { client(shared, stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn refusal(detail: String) -> Reply {
    Reply {
        code: AdmErr::InvalidRequest,
        detail,
        output: String::new(),
    }
}

/// Whether this peer may administer the target: root, or our own user.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot identify the peer: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not administer sheep-iscsi (root only)",
            cred.uid()
        ))
    }
}

async fn client(shared: Arc<Shared>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let reply = match peer_allowed(wr.as_ref()) {
        Err(why) => {
            tracing::warn!(reason = %why, "control socket: request refused");
            refusal(why)
        }
        Ok(()) => {
            let mut line = Vec::new();
            let mut rd = BufReader::new(rd).take(MAX_REQUEST + 1);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await;
            match read {
                Err(_) => refusal("no request within 10 seconds".into()),
                Ok(Err(e)) => refusal(format!("cannot read the request: {e}")),
                Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => {
                    refusal(format!("request longer than {MAX_REQUEST} bytes"))
                }
                Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => {
                        let span = tracing::info_span!("admin", mode = %req.mode, op = %req.op);
                        admin::handle(&shared, &req).instrument(span).await
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "control socket: malformed request");
                        refusal(format!("malformed request: {e}"))
                    }
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    let _ = wr.write_all(&out).await;
    let _ = wr.shutdown().await;
}

/// Why a call failed: the errno (tgtadm exits with it) and a message.
pub type CallError = (i32, String);

/// Sends one request to the control socket at `path` and returns the reply
/// (the client side, used by `sheep-iscsi-adm`).
pub async fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let io = async {
        let mut s = UnixStream::connect(path).await.map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let hint = if matches!(errno, libc::ENOENT | libc::ECONNREFUSED) {
                " (is sheep-iscsi running with this --control path?)"
            } else {
                ""
            };
            (
                errno,
                format!(
                    "can't connect to sheep-iscsi at {}: {e}{hint}",
                    path.display()
                ),
            )
        })?;
        let fail = |what: &str, e: std::io::Error| {
            (
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("{what}: {e}"),
            )
        };
        let mut line = serde_json::to_vec(req).map_err(|e| (libc::EINVAL, e.to_string()))?;
        line.push(b'\n');
        // A refusal may come (and the socket close) before the request is
        // read: the answer is worth more than the write error.
        let sent = s.write_all(&line).await;
        let mut buf = Vec::new();
        let got = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            sent.map_err(|e| fail("failed to send the request", e))?;
            got.map_err(|e| fail("can't get the response", e))?;
        }
        if buf.is_empty() {
            return Err((libc::EPIPE, "sheep-iscsi closed the socket".to_string()));
        }
        serde_json::from_slice::<Reply>(&buf)
            .map_err(|e| (libc::EPROTO, format!("malformed response: {e}")))
    };
    tokio::time::timeout(timeout, io).await.map_err(|_| {
        (
            libc::ETIMEDOUT,
            format!("no response from sheep-iscsi within {}s", timeout.as_secs()),
        )
    })?
}
