//! Running in the background: fork before any thread exists, let the parent
//! wait until the child reports that the mount is up (or why it is not),
//! and log to syslog from then on.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use tracing_subscriber::fmt::MakeWriter;

/// The child's end of the report pipe.
pub struct Ready {
    pipe: Option<std::fs::File>,
}

/// Forks. The parent waits for the child's report and exits with 0 once
/// the mount is up, or prints the child's error and exits with 1; it never
/// returns. The child returns in a new session, in `/`, with stdio on
/// /dev/null.
///
/// Must be called before any thread is started (tokio, FUSE).
pub fn daemonize() -> io::Result<Ready> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (documented precondition).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: plain syscalls in the child. Leaving the working
            // directory keeps it from being busy for as long as we run.
            unsafe {
                libc::setsid();
                libc::chdir(c"/".as_ptr());
            }
            redirect_stdio()?;
            Ok(Ready {
                pipe: Some(std::fs::File::from(wr)),
            })
        }
        child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "OK" {
                std::process::exit(0);
            }
            let msg = msg.strip_prefix("ERR ").unwrap_or(&msg).trim();
            if msg.is_empty() {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe {
                    libc::waitpid(child, &mut status, 0);
                }
                eprintln!("sheepfs: exited before the mount was up (wait status {status:#x})");
            } else {
                eprintln!("sheepfs: {msg}");
            }
            std::process::exit(1);
        }
    }
}

fn redirect_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Ready {
    /// A no-op reporter (foreground mode).
    pub fn none() -> Ready {
        Ready { pipe: None }
    }

    /// The mount is up: the parent exits 0.
    pub fn success(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"OK");
        }
    }

    /// Startup failed: the parent prints `msg` and exits 1.
    pub fn failure(&mut self, msg: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(format!("ERR {msg}").as_bytes());
        }
    }

    pub fn is_daemon(&self) -> bool {
        self.pipe.is_some()
    }
}

/// Opens the syslog connection (ident `sheepfs`, facility daemon).
pub fn open_syslog() {
    // SAFETY: the ident is a static C string, as openlog requires.
    unsafe {
        libc::openlog(c"sheepfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
    }
}

/// A `tracing_subscriber` writer that sends each formatted event to syslog
/// at the priority of its level.
#[derive(Debug, Clone, Copy, Default)]
pub struct Syslog;

pub struct SyslogLine {
    prio: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        self.buf.retain(|&b| b != 0);
        if let Ok(c) = CString::new(std::mem::take(&mut self.buf)) {
            // SAFETY: "%s" with one valid C string argument.
            unsafe {
                libc::syslog(self.prio, c"%s".as_ptr(), c.as_ptr());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            prio: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let prio = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            prio,
            buf: Vec::new(),
        }
    }
}
