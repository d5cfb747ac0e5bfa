//! Harness for the sheepfs tests: real sheepfs mounts over a real sheep-lite,
//! loop devices and filesystem mounts, each undone by a Drop guard even when
//! the test fails.
#![allow(dead_code)]

use crate::common::{bin, SheepLite};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test at once (never silently skips) when not root: the tests
/// mount FUSE and use loop devices; CI runs them as root.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "sheepfs tests need root (FUSE mounts, loop devices); run them as root (scripts/test)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse)"
    );
}

/// Is `path` a mount point right now (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mount) == Some(p.to_string()))
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Runs a command, returning (status ok, stdout, stderr).
pub fn sh(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let (ok, out, err) = sh(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{out}\n{err}");
    out
}

/// Unmounts `path`: normally, else lazily. Bounded.
pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let p = path.to_string_lossy().into_owned();
    for _ in 0..20 {
        if sh("fusermount3", &["-u", "-q", &p]).0 || sh("umount", &[&p]).0 {
            return;
        }
        if !is_mounted(path) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sh("umount", &["-l", &p]);
}

/// A sheepfs mount: `sheepfs -f ... MNT` as a child process.
pub struct Mount {
    pub mnt: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts over TCP to `s` with extra options (e.g. `-k`, `-o`).
    pub fn start(s: &SheepLite, opts: &[&str]) -> Mount {
        let port = s.port.to_string();
        let mut args: Vec<&str> = vec!["-a", "127.0.0.1", "-p", &port];
        args.extend_from_slice(opts);
        Mount::start_args(&args)
    }

    /// Mounts with exactly these options (plus `-f` and the mount point).
    pub fn start_args(args: &[&str]) -> Mount {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let log = dir.path().join("sheepfs.log");
        let logf = File::create(&log).expect("log file");
        let child = Command::new(bin("sheepfs"))
            .arg("-f")
            .args(args)
            .arg(&mnt)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn sheepfs");
        let mut m = Mount {
            mnt,
            log,
            child: Some(child),
            _dir: dir,
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&self.mnt) && self.p("cluster").exists() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "sheepfs exited ({st}) before mounting:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "sheepfs did not mount within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.p(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn read_string(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).expect("utf-8")
    }

    /// One write(2) of `data` into a control file; the errno on failure.
    pub fn write_ctl(&self, rel: &str, data: &[u8]) -> io::Result<usize> {
        let mut f = OpenOptions::new().write(true).open(self.p(rel))?;
        f.write(data)
    }

    #[track_caller]
    pub fn attach(&self, name: &str) {
        let line = format!("{name}\n");
        let n = self
            .write_ctl("vdi/mount", line.as_bytes())
            .unwrap_or_else(|e| panic!("attach {name}: {e}\n{}", self.log_text()));
        assert_eq!(n, line.len());
        assert!(self.p(&format!("volume/{name}")).exists());
    }

    /// Detaches `name`, waiting (with a deadline) while it is busy: a loop
    /// device lets go of its file after `losetup -d` returns (the kernel
    /// closes it later), so its FUSE release may still be on its way.
    #[track_caller]
    pub fn detach(&self, name: &str) {
        let line = format!("{name}\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.write_ctl("vdi/unmount", line.as_bytes()) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("detach {name}: {e}\n{}", self.log_text()),
            }
        }
        assert!(!self.p(&format!("volume/{name}")).exists());
    }

    /// `stats/<name>` as key → value.
    pub fn stats(&self, name: &str) -> std::collections::HashMap<String, String> {
        self.read_string(&format!("stats/{name}"))
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// SIGTERM the daemon and wait for it to exit (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        wait_child(&mut c, Duration::from_secs(30))
    }

    /// Unmounts with fusermount3 -u and waits for sheepfs to exit.
    pub fn unmount(&mut self) -> Option<std::process::ExitStatus> {
        unmount(&self.mnt);
        let mut c = self.child.take()?;
        wait_child(&mut c, Duration::from_secs(30))
    }
}

/// Waits for a child; SIGKILLs it after `limit`.
pub fn wait_child(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            if wait_child(&mut c, Duration::from_secs(20)).is_none() {
                eprintln!("sheepfs did not exit after unmount; killed");
            }
        }
        if is_mounted(&self.mnt) {
            let _ = sh("umount", &["-l", &self.mnt.to_string_lossy()]);
        }
    }
}

/// A loop device over a file, detached on drop.
pub struct LoopDev {
    pub dev: String,
}

impl LoopDev {
    pub fn new(file: &Path) -> LoopDev {
        let out = sh_ok("losetup", &["--find", "--show", &file.to_string_lossy()]);
        LoopDev {
            dev: out.trim().to_string(),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..50 {
            if sh("losetup", &["-d", &self.dev]).0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not detach {}", self.dev);
    }
}

/// A mounted block filesystem, unmounted on drop.
pub struct FsMount {
    pub dir: tempfile::TempDir,
}

impl FsMount {
    pub fn new(dev: &str) -> FsMount {
        let dir = tempfile::tempdir().expect("tempdir");
        sh_ok("mount", &[dev, &dir.path().to_string_lossy()]);
        FsMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        let p = self.dir.path().to_string_lossy().into_owned();
        if !sh("umount", &[&p]).0 {
            let _ = sh("umount", &["-l", &p]);
        }
    }
}

pub fn pread_exact(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off)
        .unwrap_or_else(|e| panic!("pread {len} at {off}: {e}"));
    b
}

/// lseek(2) on an open file (SEEK_DATA and SEEK_HOLE included).
pub fn lseek(f: &File, off: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn read_file(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Finds a tool in PATH or ~/.cargo/bin; fails the test clearly if absent.
#[track_caller]
pub fn tool(name: &str, how: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push("/root/.cargo/bin".into());
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found in PATH or ~/.cargo/bin; install it: {how}");
}

/// RSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Compares data without printing megabytes when it differs.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, expected {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}
