//! Test harness shared by the integration tests: a real sheep-lite on a free
//! port in a temp dir, killed when dropped.
#![allow(dead_code)]

use sheepfs::client::{Client, Options, Request, Response, SheepAddr};
use sheepfs::proto::header::ObjArgs;
use sheepfs::proto::ReqHeader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SheepLite {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Extra environment of every (re)start, e.g. fault-injection rules.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

pub fn bin(name: &str) -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_<name> for integration tests.
    match name {
        "sheep-lite" => PathBuf::from(env!("CARGO_BIN_EXE_sheep-lite")),
        "sheepctl" => PathBuf::from(env!("CARGO_BIN_EXE_sheepctl")),
        "sheepfs" => PathBuf::from(env!("CARGO_BIN_EXE_sheepfs")),
        "sheep-iscsi" => PathBuf::from(env!("CARGO_BIN_EXE_sheep-iscsi")),
        other => panic!("unknown binary {other}"),
    }
}

/// A free TCP port in `range` (tgt's sheepdog backing store only parses
/// ports of at most 4 digits).
pub fn free_port_in(range: std::ops::Range<u16>) -> u16 {
    let span = (range.end - range.start).max(1) as u32;
    let start = std::process::id() % span;
    (0..span)
        .map(|i| range.start + ((start + i) % span) as u16)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("no free port in range")
}

impl SheepLite {
    /// Spawns sheep-lite on `dir` and `port` and waits until it listens.
    fn launch(dir: tempfile::TempDir, port: u16, env: &[(&str, &str)]) -> SheepLite {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = SheepLite {
            dir,
            port,
            env,
            child: None,
        };
        s.spawn();
        s
    }

    /// Starts an unformatted sheep-lite on a given port.
    pub fn start_on(port: u16) -> SheepLite {
        SheepLite::launch(tempfile::tempdir().expect("tempdir"), port, &[])
    }

    /// Starts an unformatted sheep-lite.
    pub fn start() -> SheepLite {
        SheepLite::start_on(free_port())
    }

    /// Starts an unformatted sheep-lite with extra environment (kept across
    /// restarts).
    pub fn start_with_env(env: &[(&str, &str)]) -> SheepLite {
        SheepLite::launch(tempfile::tempdir().expect("tempdir"), free_port(), env)
    }

    /// Starts an unformatted sheep-lite whose store lives under `parent`
    /// (e.g. /dev/shm, where a test creating thousands of VDIs does not wait
    /// for the disk's fsyncs).
    pub fn start_in(parent: &Path) -> SheepLite {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        SheepLite::launch(dir, free_port(), &[])
    }

    /// Starts and formats (`cluster format`, default copies).
    pub fn start_formatted() -> SheepLite {
        let s = SheepLite::start();
        s.ctl(&["cluster", "format"]).assert_ok();
        s
    }

    pub fn spawn(&mut self) {
        let child = Command::new(bin("sheep-lite"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sheep-lite");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sheep-lite did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().ok()
    }

    /// Waits (bounded) for the server to exit by itself, e.g. after SHUTDOWN.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            match c.try_wait() {
                Ok(Some(s)) => {
                    self.child = None;
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn addr(&self) -> SheepAddr {
        SheepAddr::tcp("127.0.0.1", self.port)
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr(), Options::default())
    }

    /// Runs sheepctl against this server.
    pub fn ctl(&self, args: &[&str]) -> Out {
        self.ctl_stdin(args, &[])
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let port = self.port.to_string();
        let mut all = args.to_vec();
        all.extend(["-a", "127.0.0.1", "-p", &port]);
        run_sheepctl(&all, stdin, &[], Duration::from_secs(120))
    }
}

impl Drop for SheepLite {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// Deterministic test data: pattern A of the captures (`i mod 251`), offset by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

/// The recordings of real dog, sheepfs and tgt the golden tests replay
/// (`tests/data`, see its README).
pub fn captures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A request header for an object operation, as dog builds it.
pub fn obj_hdr(opcode: u8, oid: u64, offset: u32, len: u32) -> ReqHeader {
    let mut h = ReqHeader::for_op(opcode);
    h.data_length = len;
    h.args = ObjArgs {
        oid,
        offset,
        ..Default::default()
    }
    .encode();
    h
}

/// The lookup payload: name[256] + tag[256].
pub fn name_payload(name: &str, tag: &str) -> Vec<u8> {
    let mut v = vec![0u8; 512];
    v[..name.len()].copy_from_slice(name.as_bytes());
    v[256..256 + tag.len()].copy_from_slice(tag.as_bytes());
    v
}

/// Sends one raw request (with `payload` if not empty); panics on a transport error.
pub async fn send(c: &Client, h: ReqHeader, payload: Vec<u8>) -> Response {
    let mut r = Request::new(h);
    if !payload.is_empty() {
        r = r.with_payload(payload);
    }
    c.send(r).await.expect("transport")
}

pub fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Runs sheepctl with exactly `args` (dog's address variables removed, `env`
/// added), feeding it `stdin`; killed and a panic after `limit`.
pub fn run_sheepctl(args: &[&str], stdin: &[u8], env: &[(&str, &str)], limit: Duration) -> Out {
    run_prog(&bin("sheepctl"), args, stdin, env, limit)
}

/// Runs `prog` (sheepctl, or real dog in the interop tests) like
/// [`run_sheepctl`].
pub fn run_prog(
    prog: &Path,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
    limit: Duration,
) -> Out {
    use std::io::{Read, Write};
    let mut c = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SHEEPDOG_DOG_ADDR")
        .env_remove("SHEEPDOG_DOG_PORT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
    let mut si = c.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = si.write_all(&data);
    });
    let mut so = c.stdout.take().expect("stdout");
    let mut se = c.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = c.try_wait().expect("wait for the child") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} {args:?} did not finish in {limit:?}", prog.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = w.join();
    Out {
        code: status.code().unwrap_or(-1),
        stdout: ro.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&re.join().expect("stderr reader")).into_owned(),
    }
}
