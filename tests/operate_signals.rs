//! SIGTERM, SIGINT and SIGHUP stop sheepfs and sheep-lite cleanly: I/O in
//! flight finishes, VDI locks are released (checked with `sheepctl vdi lock
//! list` on a `-l` cluster), the mount goes, DIR/sock goes; both tell
//! systemd READY=1 / STOPPING=1 over $NOTIFY_SOCKET; no ESC byte and no
//! WARN in their logs.

mod common;
mod sheepfs_common;

use common::{bin, free_port, pattern, SheepLite};
use sheepfs_common::{is_mounted, require_root, wait_child, Mount};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIGNALS: [(i32, &str); 3] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
];

fn kill(pid: u32, sig: i32) {
    // SAFETY: signalling a child of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A datagram socket standing in for systemd's notify socket.
struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notify {
            sock,
            _dir: dir,
            path,
        }
    }
    #[track_caller]
    fn expect(&self, want: &str) {
        let mut b = [0u8; 256];
        let n = self
            .sock
            .recv(&mut b)
            .unwrap_or_else(|e| panic!("no {want} notification: {e}"));
        assert_eq!(String::from_utf8_lossy(&b[..n]), want);
    }
}

fn assert_clean_log(log: &str, who: &str) {
    assert!(!log.contains('\x1b'), "{who}: ESC in the log:\n{log}");
    assert!(
        !log.contains(" WARN "),
        "{who}: a warning on a clean stop:\n{log}"
    );
}

#[test]
fn sheepfs_stops_cleanly_on_each_signal() {
    require_root();
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "v", "64M"]).assert_ok();
    for (sig, name) in SIGNALS {
        let port = s.port.to_string();
        let mut m = Mount::start_args(&["-a", "127.0.0.1", "-p", &port, "--attach", "v"]);
        let list = s.ctl(&["vdi", "lock", "list"]).text();
        assert!(list.contains(" v "), "{name}: v not locked:\n{list}");
        // A writer with the volume open: the signal detaches the busy
        // mount lazily, and the writer's I/O keeps working until it closes.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.p("volume/v"))
            .unwrap();
        let data = pattern(1 << 20, sig as u8);
        f.write_all_at(&data[..1 << 19], 4096).unwrap();
        kill(m.pid().unwrap(), sig);
        wait_for(|| !is_mounted(&m.mnt), "mount gone from the namespace");
        f.write_all_at(&data[1 << 19..], 4096 + (1 << 19)).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let st = m.unmount().expect("sheepfs did not exit");
        assert!(
            st.success(),
            "{name}: sheepfs exited with {st}:\n{}",
            m.log_text()
        );
        let list = s.ctl(&["vdi", "lock", "list"]).text();
        assert!(!list.contains(" v "), "{name}: lock kept:\n{list}");
        let back = s.ctl(&["vdi", "read", "v", "4096", &(1 << 20).to_string()]);
        assert!(
            back.stdout == data,
            "{name}: data written around the signal differs"
        );
        let log = m.log_text();
        assert!(log.contains(&format!("{name}: unmounting")), "{log}");
        assert_clean_log(&log, name);
    }
}

#[test]
fn sheepfs_notifies_systemd() {
    require_root();
    let s = SheepLite::start_formatted();
    let n = Notify::new();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Unmount(mnt.clone());
    let mut c = Command::new(bin("sheepfs"))
        .args(["-f", "-p", &s.port.to_string()])
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &n.path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    n.expect("READY=1");
    assert!(is_mounted(&mnt), "READY=1 before the mount was up");
    kill(c.id(), libc::SIGTERM);
    n.expect("STOPPING=1");
    let st = wait_child(&mut c, Duration::from_secs(30)).expect("sheepfs did not exit");
    assert!(st.success());
    assert!(!is_mounted(&mnt));
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        sheepfs_common::unmount(&self.0);
    }
}

/// sheep-lite on `store`, notifying `n`, logging to `log`.
fn spawn_lite(store: &std::path::Path, port: u16, n: &Notify, log: &std::path::Path) -> Child {
    Command::new(bin("sheep-lite"))
        .args(["-p", &port.to_string()])
        .arg(store)
        .env("NOTIFY_SOCKET", &n.path)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn sheep_lite_stops_cleanly_on_each_signal() {
    for (sig, name) in SIGNALS {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("log");
        let n = Notify::new();
        let mut c = spawn_lite(&dir.path().join("store"), port, &n, &log);
        n.expect("READY=1");
        let sock = dir.path().join("store/sock");
        assert!(sock.exists());
        let ctl = |args: &[&str], stdin: &[u8]| {
            let mut child = Command::new(bin("sheepctl"))
                .args(args)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{args:?}");
            o.stdout
        };
        ctl(&["cluster", "format"], b"");
        ctl(&["vdi", "create", "v", "16M"], b"");
        let data = pattern(65536, sig as u8);
        ctl(&["vdi", "write", "v", "0", "65536"], &data);
        kill(c.id(), sig);
        n.expect("STOPPING=1");
        let st = wait_child(&mut c, Duration::from_secs(30)).expect("sheep-lite did not exit");
        assert!(st.success(), "{name}: exit {st}");
        assert!(!sock.exists(), "{name}: {} left behind", sock.display());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(&format!("{name}: stopping")), "{text}");
        assert_clean_log(&text, name);
        // What was written before the signal is there after a restart.
        let n2 = Notify::new();
        let mut again = spawn_lite(
            &dir.path().join("store"),
            port,
            &n2,
            &dir.path().join("log2"),
        );
        n2.expect("READY=1");
        let back = ctl(&["vdi", "read", "v", "0", "65536"], b"");
        kill(again.id(), libc::SIGTERM);
        wait_child(&mut again, Duration::from_secs(30));
        assert!(back == data, "{name}: data lost");
    }
}
