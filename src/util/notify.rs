//! systemd readiness notification (`sd_notify(3)`) without libsystemd: one
//! datagram to the socket named by `$NOTIFY_SOCKET`. With `Type=notify`
//! units, systemd waits for `READY=1` before starting dependent units.
//!
//! Daemons call [`ready`] once they serve (listening, or mounted) and
//! [`stopping`] when a stop begins. Without `$NOTIFY_SOCKET` (not started
//! by systemd) both do nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `"READY=1"`, `"STOPPING=1"`, `"STATUS=..."`; several
/// assignments separated by newlines) to `$NOTIFY_SOCKET`. Returns whether a
/// notification was sent (false when the variable is unset).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = socket_addr(&path.to_string_lossy())?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// `NOTIFY_SOCKET` is a filesystem path, or `@name` for Linux's abstract
/// namespace.
fn socket_addr(s: &str) -> io::Result<SocketAddr> {
    if let Some(name) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !s.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET '{s}' is neither an absolute path nor @abstract"),
        ));
    }
    SocketAddr::from_pathname(s)
}

/// [`notify`], logging a failure instead of returning it: a daemon goes on
/// serving when systemd cannot be told.
pub fn send_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify systemd ({state}) over $NOTIFY_SOCKET: {e}");
    }
}

/// Tells systemd the service is up.
pub fn ready() {
    send_logged("READY=1");
}

/// Tells systemd the service is re-reading its configuration; [`ready`]
/// ends it.
pub fn reloading() {
    send_logged("RELOADING=1");
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send_logged("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(socket_addr("/run/systemd/notify").is_ok());
        assert!(socket_addr("@abstract").is_ok());
        assert!(socket_addr("relative").is_err());
    }

    #[test]
    fn datagram_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        let rx = UnixDatagram::bind(&p).unwrap();
        let addr = socket_addr(&p.to_string_lossy()).unwrap();
        UnixDatagram::unbound()
            .unwrap()
            .send_to_addr(b"READY=1", &addr)
            .unwrap();
        let mut b = [0u8; 64];
        let n = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"READY=1");
    }
}
