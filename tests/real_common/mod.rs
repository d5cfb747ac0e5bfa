//! Harness for the interop tests against real upstream Sheepdog: builds it
//! once (scripts/real-sheep, cached by the tarball's checksum) and starts
//! `local`-driver clusters of real `sheep` on free ports in temp dirs.
//!
//! Without the upstream tarball (a clone with no ../shared beside it) every
//! test here passes without running, after ONE line saying so per test
//! binary; `$SHEEP_SKIP_LOG`, when set, gets one line per skipped test so
//! that scripts/test can count them. When the tarball is there the tests run,
//! and a failed build fails them.
#![allow(dead_code)]

use crate::common::{run_prog, run_sheepctl, Out};
use sheepfs::client::{Client, Options, SheepAddr};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long one dog or sheepctl command may take.
pub const CMD_LIMIT: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/real-sheep")
}

/// Runs scripts/real-sheep; (exit code, stdout, stderr).
fn real_sheep(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(script())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

/// The install prefix of the built upstream Sheepdog, or None (after
/// recording the skip) when its source is absent. Panics when the build
/// fails: in CI these tests must run.
pub fn prefix() -> Option<&'static Path> {
    static PREFIX: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    let r = PREFIX.get_or_init(|| match real_sheep(&["build"]) {
        (0, out, _) => Ok(Some(PathBuf::from(out))),
        (3, _, err) => {
            // The script's own "skipped: no upstream sheepdog source at
            // ...", written past libtest's capture so that it always shows.
            let _ = writeln!(std::io::stderr(), "{err}");
            Ok(None)
        }
        (code, _, err) => Err(format!(
            "building upstream sheepdog failed (exit {code}):\n{err}"
        )),
    });
    match r {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            record_skip();
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// One line per skipped test in $SHEEP_SKIP_LOG (libtest names each test's
/// thread after the test).
fn record_skip() {
    let Some(log) = std::env::var_os("SHEEP_SKIP_LOG") else {
        return;
    };
    let name = std::thread::current().name().unwrap_or("?").to_string();
    let bin = std::env::args().next().unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{bin} {name}");
    }
}

/// Real dog, or None (skipped).
pub fn dog_bin() -> Option<PathBuf> {
    prefix().map(|p| p.join("bin/dog"))
}

/// A running cluster of real sheep (stopped and removed on drop; a watcher
/// started by the script does the same if this process dies first).
pub struct Cluster {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// The nodes' ports, ascending; node i is in zone i.
    pub ports: Vec<u16>,
    dog: PathBuf,
}

impl Cluster {
    /// Starts and formats a 3-node cluster with copies 3; `opts` go to
    /// `scripts/real-sheep start` (e.g. `-l`, `-z 20`, `-n 1`, `-c 1`).
    /// None when skipped.
    pub fn start(opts: &[&str]) -> Option<Cluster> {
        let prefix = prefix()?;
        let dir = tempfile::Builder::new()
            .prefix("real-sheep.")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_path_buf();
        let owner = std::process::id().to_string();
        let mut args = vec!["start", path.to_str().expect("utf-8 temp path")];
        args.extend_from_slice(opts);
        args.extend(["--owner", &owner]);
        // A failed start has stopped what it started (the script's trap).
        let (code, _, err) = real_sheep(&args);
        assert_eq!(code, 0, "starting a real sheep cluster failed:\n{err}");
        let ports = std::fs::read_to_string(path.join("ports")).expect("ports file");
        let ports = ports
            .lines()
            .map(|l| l.parse().expect("port number"))
            .collect();
        Some(Cluster {
            _dir: dir,
            path,
            ports,
            dog: prefix.join("bin/dog"),
        })
    }

    /// The port dog and our tools are pointed at (node 0).
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    pub fn addr(&self) -> SheepAddr {
        SheepAddr::tcp("127.0.0.1", self.port())
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr(), Options::default())
    }

    pub fn dog_path(&self) -> &Path {
        &self.dog
    }

    /// The directory holding the nodes' stores and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs real dog with `args` plus `-p PORT` (options go after the
    /// subcommand in dog's grammar).
    pub fn dog(&self, args: &[&str]) -> Out {
        self.dog_stdin(args, &[])
    }

    pub fn dog_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let port = self.port().to_string();
        let mut all = args.to_vec();
        all.extend(["-p", &port]);
        run_prog(&self.dog, &all, stdin, &[], CMD_LIMIT)
    }

    /// `dog vdi read [-s TAG] NAME OFF LEN`'s bytes; dog must succeed.
    #[track_caller]
    pub fn dog_read(&self, name: &str, tag: Option<&str>, off: u64, len: u64) -> Vec<u8> {
        let (off, len) = (off.to_string(), len.to_string());
        let mut args = vec!["vdi", "read"];
        if let Some(t) = tag {
            args.extend(["-s", t]);
        }
        args.extend([name, &off, &len]);
        let o = self.dog(&args);
        assert_eq!(o.code, 0, "dog {args:?}: {o:?}");
        o.stdout
    }

    /// Runs sheepctl the same way.
    pub fn ctl(&self, args: &[&str]) -> Out {
        self.ctl_stdin(args, &[])
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let port = self.port().to_string();
        let mut all = args.to_vec();
        all.extend(["-p", &port]);
        run_sheepctl(&all, stdin, &[], CMD_LIMIT)
    }

    /// SIGKILLs node `i` (and waits for it to be gone).
    pub fn kill_node(&self, i: usize) {
        let (code, _, err) = real_sheep(&["kill", self.path_str(), &i.to_string()]);
        assert_eq!(code, 0, "killing node {i} failed: {err}");
    }

    /// Stops every node (SIGTERM, then SIGKILL after 20 s).
    pub fn stop(&self) {
        let (code, _, err) = real_sheep(&["stop", self.path_str()]);
        assert_eq!(code, 0, "stopping the cluster failed: {err}");
    }

    /// Starts every node of a stopped cluster again on the same ports.
    pub fn restart(&self) {
        let (code, _, err) = real_sheep(&["restart", self.path_str()]);
        assert_eq!(code, 0, "restarting the cluster failed: {err}");
    }

    fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = real_sheep(&["stop", self.path_str()]);
    }
}

/// One cluster shared by the tests of a binary, started by the first caller
/// with `opts`, stopped when the process exits. None when skipped.
pub fn shared(opts: &'static [&'static str]) -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    prefix()?;
    SHARED
        .get_or_init(|| {
            let c = Cluster::start(opts)?;
            extern "C" fn stop_shared() {
                if let Some(Some(c)) = SHARED.get() {
                    let _ = real_sheep(&["stop", c.path_str()]);
                    let _ = std::fs::remove_dir_all(c.path());
                }
            }
            // Statics are never dropped; libtest ends with exit(), which runs
            // this.
            // SAFETY: registers a plain extern "C" fn with no arguments.
            unsafe { libc::atexit(stop_shared) };
            Some(c)
        })
        .as_ref()
}
