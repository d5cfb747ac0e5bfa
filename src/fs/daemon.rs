//! Running in the background: fork before any thread exists, let the parent
//! wait until the child reports that the mount is up (or why it is not).
//! The child logs to syslog when there is one (see `util::logging`).

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// The child's end of the report pipe.
pub struct Ready {
    pipe: Option<std::fs::File>,
}

/// Forks. The parent waits for the child's report and exits with 0 once
/// the mount is up, or prints the child's error and exits with 1; it never
/// returns. The child returns in a new session, in `/`, with stdin and
/// stdout on /dev/null; stderr too unless `keep_stderr` (where the log goes
/// when there is no syslog).
///
/// Must be called before any thread is started (tokio, FUSE).
pub fn daemonize(keep_stderr: bool) -> io::Result<Ready> {
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
            redirect_stdio(if keep_stderr { 2 } else { 3 })?;
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

/// Points descriptors 0..n at /dev/null.
fn redirect_stdio(n: i32) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..n {
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
