//! An honest start and errors a user can read: sheepfs refuses a port that
//! is not a sheep, a bare number, a second mount on one mountpoint and a
//! dead one; mounts an unformatted cluster and says so; MOUNT/log explains
//! failed control-file writes; locks name the way out; volume files report
//! what is stored (du = vdi list's Used) and when they changed.

mod common;
mod sheepfs_common;

use common::{bin, SheepLite};
use sheepfs_common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `sheepfs -f ARGS MNT` expected to fail: its stderr.
fn failed_start(args: &[&str], mnt: &std::path::Path) -> String {
    let mut c = Command::new(bin("sheepfs"))
        .arg("-f")
        .args(args)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_child(&mut c, Duration::from_secs(60)).expect("sheepfs hung");
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!st.success(), "sheepfs {args:?} mounted:\n{err}");
    err
}

/// Like [`failed_start`] on a free mountpoint, which stays unmounted.
fn refused(args: &[&str], mnt: &std::path::Path) -> String {
    let err = failed_start(args, mnt);
    assert!(!is_mounted(mnt), "{args:?}: mounted anyway");
    err
}

fn errno(r: std::io::Result<usize>) -> i32 {
    match r {
        Ok(n) => panic!("expected an error, wrote {n} bytes"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refuses_what_is_not_a_sheep() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    // A port that accepts and never answers (an iSCSI portal waiting for
    // a login, say).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let keep = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let err = refused(&["-p", &port, "-t", "2"], &mnt);
    assert!(err.contains("did not answer a sheep request"), "{err}");
    keep.join().unwrap();
    // A port that answers with something else and hangs up.
    let chatty = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = chatty.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for mut s in chatty.incoming().flatten().take(1) {
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    let err = refused(&["-p", &port, "-t", "2"], &mnt);
    assert!(err.contains("does not answer as a sheep"), "{err}");
    // Nothing listening: said once, with what to check.
    let err = refused(&["-p", &common::free_port().to_string()], &mnt);
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(err.contains("is sheep running there?"), "{err}");
    // A bare number is not a host.
    let err = refused(&["-a", "2"], &mnt);
    assert!(err.contains("bare number"), "{err}");
}

#[test]
fn sheep_info_accepts_only_a_sheep() {
    let s = SheepLite::start_formatted();
    let m = Mount::start(&s, &[]);
    assert_eq!(
        errno(m.write_ctl("config/sheep_info", b"2\n")),
        libc::EINVAL
    );
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("127.0.0.1:{}\n", silent.local_addr().unwrap().port());
    let _hold = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(15));
        drop(held);
    });
    let e = errno(m.write_ctl("config/sheep_info", addr.as_bytes()));
    assert!(e == libc::ETIMEDOUT || e == libc::EPROTO, "errno {e}");
    assert_eq!(
        m.read_string("config/sheep_info"),
        format!("127.0.0.1:{}\n", s.port),
        "address changed anyway"
    );
    let log = m.read_string("log");
    assert!(log.contains("bare number"), "{log}");
    assert!(log.contains("did not answer a sheep request"), "{log}");
}

#[test]
fn unformatted_cluster_mounts_and_says_so() {
    let s = SheepLite::start();
    s.ctl(&["vdi", "list"]).assert_ok();
    let m = Mount::start(&s, &[]);
    let info = m.read_string("cluster/info");
    assert!(
        info.contains("Waiting for cluster to be formatted"),
        "{info}"
    );
    for f in ["node/info", "vdi/list"] {
        let t = m.read_string(f);
        assert!(!t.is_empty(), "{f} is empty");
    }
    assert_eq!(
        m.read_string("node/info"),
        "Waiting for cluster to be formatted\n"
    );
    // Attach needs a formatted cluster: ENXIO (documented), not EIO.
    assert_eq!(errno(m.write_ctl("vdi/mount", b"v\n")), libc::ENXIO);
    let log = m.read_string("log");
    assert!(
        log.contains("attach of VDI 'v'") && log.contains("sheepctl cluster format"),
        "{log}"
    );
    // After formatting, the same mount works.
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "v", "16M"]).assert_ok();
    m.attach("v");
}

#[test]
fn one_sheepfs_per_mountpoint_and_dead_mounts() {
    let s = SheepLite::start_formatted();
    let mut m = Mount::start(&s, &[]);
    let port = s.port.to_string();
    let err = failed_start(&["-p", &port], &m.mnt);
    assert!(
        err.contains("already a mount point") && err.contains("umount"),
        "{err}"
    );
    // The first mount is untouched.
    assert!(m.read_string("cluster/info").contains("running"));
    // A sheepfs that died leaves a dead mount: refused with the fix.
    // SAFETY: killing our own child.
    unsafe { libc::kill(m.pid().unwrap() as i32, libc::SIGKILL) };
    wait_for(|| std::fs::metadata(&m.mnt).is_err(), "dead mount");
    let err = failed_start(&["-p", &port], &m.mnt);
    assert!(
        err.contains("dead FUSE mount") && err.contains("umount -l"),
        "{err}"
    );
    m.unmount();
}

#[test]
fn log_file_explains_failed_writes() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "v", "16M"]).assert_ok();
    let m = Mount::start(&s, &[]);
    let meta = std::fs::metadata(m.p("log")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o444);
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(m.p("log"))
        .is_err());
    assert_eq!(errno(m.write_ctl("vdi/mount", b"nope\n")), libc::ENOENT);
    let log = m.read_string("log");
    assert!(log.contains("attach of VDI 'nope'"), "{log}");
    assert!(!log.contains('\x1b'));
    // Locked by another mount: who holds it and how to recover.
    m.attach("v");
    let m2 = Mount::start(&s, &[]);
    assert_eq!(errno(m2.write_ctl("vdi/mount", b"v\n")), libc::EBUSY);
    let log = m2.read_string("log");
    assert!(
        log.contains("locked by another client") && log.contains("`sheepctl vdi lock unlock v`"),
        "{log}"
    );
    assert_eq!(m.stats("v")["locking"], "on");
}

#[test]
fn cluster_without_locking_warns_once() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "a", "16M"]).assert_ok();
    s.ctl(&["vdi", "create", "b", "16M"]).assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("a");
    m.attach("b");
    assert_eq!(m.stats("a")["locking"], "off");
    assert_eq!(m.stats("b")["locking"], "off");
    let log = m.read_string("log");
    assert_eq!(log.matches("without VDI locking").count(), 1, "{log}");
}

#[test]
fn volume_files_report_what_is_stored() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "thin", "1G"]).assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("thin");
    let p = m.p("volume/thin");
    let before = std::fs::metadata(&p).unwrap();
    assert_eq!(before.len(), 1 << 30);
    assert_eq!(before.blocks(), 0, "an empty thin volume stores nothing");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    for off in [0u64, 100 << 20, 700 << 20] {
        f.write_all_at(&[0xab; 4096], off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    // `vdi list -r`: "= name id size used shared ..."
    let list = s.ctl(&["vdi", "list", "-r"]).text();
    let used: u64 = list
        .split_whitespace()
        .nth(4)
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert_eq!(used, 3 * (4 << 20), "{list}");
    wait_for(
        || std::fs::metadata(&p).unwrap().blocks() * 512 == used,
        "st_blocks to match Used",
    );
    let du = sh_ok("du", &["-B1", &p.to_string_lossy()]);
    assert_eq!(
        du.split_whitespace().next(),
        Some(used.to_string().as_str())
    );
    let after = std::fs::metadata(&p).unwrap();
    assert!(after.mtime_nsec() != before.mtime_nsec() || after.mtime() > before.mtime());
    assert!(after.ctime() >= before.ctime());
}

#[test]
fn cache_size_too_small_is_refused() {
    require_root();
    let s = SheepLite::start_formatted();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let port = s.port.to_string();
    let err = refused(&["-p", &port, "-k", "--cache-size", "8M"], &mnt);
    assert!(err.contains("--cache-size 16M"), "{err}");
}
