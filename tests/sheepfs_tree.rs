//! sheepfs tree, state files, control files, attach/detach, locks and the
//! command line, on real mounts over a real sheep-lite.

mod common;
mod sheepfs_common;

use common::{bin, pattern, SheepLite};
use sheepfs_common::*;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn errno(r: std::io::Result<usize>) -> i32 {
    match r {
        Ok(n) => panic!("expected an error, wrote {n} bytes"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn tree_has_every_file() {
    let s = SheepLite::start_formatted();
    let m = Mount::start(&s, &[]);
    assert_eq!(
        names(&m.mnt),
        ["cluster", "config", "log", "node", "stats", "vdi", "volume"]
    );
    assert_eq!(names(&m.p("cluster")), ["info", "info.json"]);
    assert_eq!(
        names(&m.p("vdi")),
        ["list", "list.json", "mount", "unmount"]
    );
    assert_eq!(
        names(&m.p("node")),
        ["info", "info.json", "list", "list.json"]
    );
    assert_eq!(
        names(&m.p("config")),
        ["fuse", "object_cache", "page_cache", "sheep_info"]
    );
    assert!(names(&m.p("volume")).is_empty());
    assert!(names(&m.p("stats")).is_empty());
    for d in ["cluster", "vdi", "node", "config", "volume", "stats"] {
        assert!(m.p(d).is_dir(), "{d}");
    }
    assert_eq!(m.read_string("config/page_cache"), "0\n");
    assert_eq!(m.read_string("config/object_cache"), "0\n");
    assert_eq!(
        m.read_string("config/sheep_info"),
        format!("127.0.0.1:{}\n", s.port)
    );
    assert_eq!(m.read_string("vdi/mount"), "");
    let fuse = m.read_string("config/fuse");
    assert!(fuse.contains("max_write: 1048576\n"), "{fuse}");
    assert!(fuse.contains("volume_direct_io: 1\n"), "{fuse}");
    assert!(fuse.contains("FUSE_ASYNC_READ"), "{fuse}");
}

/// Every state file equals sheepctl's output for the same cluster; its
/// size in `stat` equals what `read` returns; reads at any offset and of
/// any size return the right bytes.
#[test]
fn state_files_equal_sheepctl() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "alpha", "1G"]).assert_ok();
    s.ctl(&["vdi", "create", "beta", "64M"]).assert_ok();
    s.ctl_stdin(&["vdi", "write", "alpha", "0", "8192"], &pattern(8192, 1))
        .assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "snap1", "alpha"])
        .assert_ok();
    s.ctl(&["vdi", "clone", "-s", "snap1", "alpha", "gamma"])
        .assert_ok();
    let m = Mount::start(&s, &[]);
    for (file, args) in [
        ("cluster/info", &["cluster", "info"][..]),
        ("vdi/list", &["vdi", "list"][..]),
        ("node/list", &["node", "list"][..]),
        ("node/info", &["node", "info"][..]),
    ] {
        let want = s.ctl(args).assert_ok().text();
        assert!(!want.is_empty(), "{args:?} printed nothing");
        let got = m.read_string(file);
        assert_eq!(got, want, "{file} differs from sheepctl {args:?}");
        let st = std::fs::metadata(m.p(file)).expect("stat");
        assert_eq!(st.len(), got.len() as u64, "stat size of {file}");
        assert_eq!(st.mode() & 0o777, 0o444);
        // Partial reads at many offsets, through one open.
        let f = File::open(m.p(file)).expect("open");
        let b = got.as_bytes();
        for off in [
            0usize,
            1,
            7,
            b.len() / 3,
            b.len() / 2,
            b.len() - 1,
            b.len(),
            b.len() + 10,
        ] {
            for len in [1usize, 5, 64, 4096] {
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, off as u64).expect("pread");
                let end = (off + len).min(b.len());
                let want = if off >= b.len() {
                    &[][..]
                } else {
                    &b[off..end]
                };
                assert_eq!(&buf[..n], want, "{file} at {off}+{len}");
            }
        }
        // Tiny sequential reads reassemble the same text.
        let mut f = File::open(m.p(file)).expect("open");
        let mut all = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, b);
    }
    for f in [
        "cluster/info.json",
        "vdi/list.json",
        "node/list.json",
        "node/info.json",
    ] {
        let v: serde_json::Value =
            serde_json::from_slice(&m.read(f)).unwrap_or_else(|e| panic!("{f} is not JSON: {e}"));
        assert!(!v.is_null(), "{f}");
    }
    let list: serde_json::Value = serde_json::from_slice(&m.read("vdi/list.json")).unwrap();
    let text = list.to_string();
    for n in ["alpha", "beta", "gamma", "snap1"] {
        assert!(text.contains(n), "vdi/list.json lacks {n}: {text}");
    }
    // Fresh on each open: a new VDI shows up in the next read.
    s.ctl(&["vdi", "create", "delta", "4M"]).assert_ok();
    assert!(m.read_string("vdi/list").contains("delta"));
    assert_eq!(
        m.read_string("vdi/list"),
        s.ctl(&["vdi", "list"]).assert_ok().text()
    );
}

/// The working VDI is attached even when snapshots exist (the original
/// attached the oldest snapshot); `name@tag` and `name@id` are read-only.
#[test]
fn attach_working_and_snapshots() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    let a = pattern(65536, 3);
    let b = pattern(65536, 99);
    s.ctl_stdin(&["vdi", "write", "vol", "0", "65536"], &a)
        .assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "vol"]).assert_ok();
    s.ctl_stdin(&["vdi", "write", "vol", "0", "65536"], &b)
        .assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s2", "vol"]).assert_ok();
    let m = Mount::start(&s, &[]);

    m.attach("vol");
    let f = File::open(m.p("volume/vol")).unwrap();
    assert_bytes(
        &pread_exact(&f, 0, 65536),
        &b,
        "working VDI has the latest data",
    );
    let md = std::fs::metadata(m.p("volume/vol")).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert_eq!(md.blksize(), 4 << 20);
    // Writable.
    OpenOptions::new()
        .write(true)
        .open(m.p("volume/vol"))
        .unwrap()
        .write_all_at(b"new", 0)
        .unwrap();

    m.attach("vol@s1");
    let f1 = File::open(m.p("volume/vol@s1")).unwrap();
    assert_bytes(
        &pread_exact(&f1, 0, 65536),
        &a,
        "snapshot s1 has the old data",
    );
    let e = OpenOptions::new()
        .write(true)
        .open(m.p("volume/vol@s1"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        std::fs::metadata(m.p("volume/vol@s1")).unwrap().mode() & 0o777,
        0o444
    );
    m.attach("vol@1");
    assert_bytes(
        &pread_exact(&File::open(m.p("volume/vol@1")).unwrap(), 0, 65536),
        &a,
        "data",
    );
    m.attach("vol@s2");
    assert_bytes(
        &pread_exact(&File::open(m.p("volume/vol@s2")).unwrap(), 0, 65536),
        &b,
        "data",
    );

    // Attaching again is a no-op.
    m.attach("vol");
    assert_eq!(m.read_string("vdi/mount"), "vol\nvol@1\nvol@s1\nvol@s2\n");
    assert_eq!(names(&m.p("volume")), ["vol", "vol@1", "vol@s1", "vol@s2"]);
    assert_eq!(names(&m.p("stats")), ["vol", "vol@1", "vol@s1", "vol@s2"]);
    let st = m.stats("vol@s1");
    assert_eq!(st["read_only"], "1");
    assert_eq!(st["snapshot"], "tag s1");

    // Busy while open.
    let e = errno(m.write_ctl("vdi/unmount", b"vol\n"));
    assert_eq!(e, libc::EBUSY);
    drop(f);
    drop(f1);
    m.detach("vol@1");
    m.detach("vol@s2");
    // Several names in one write.
    assert_eq!(m.write_ctl("vdi/unmount", b"vol\nvol@s1\n").unwrap(), 11);
    assert!(names(&m.p("volume")).is_empty());
    assert_eq!(m.read_string("vdi/mount"), "");
    // What we wrote through sheepfs is in the working VDI.
    let out = s
        .ctl(&["vdi", "read", "vol", "0", "3"])
        .assert_ok()
        .stdout
        .clone();
    assert_eq!(out, b"new");
    // Several names in one write, attach side; a failure in the middle gives
    // a short write covering the lines before it.
    s.ctl(&["vdi", "create", "other", "8M"]).assert_ok();
    assert_eq!(m.write_ctl("vdi/mount", b"vol\nother\n").unwrap(), 10);
    assert_eq!(m.read_string("vdi/mount"), "other\nvol\n");
    m.write_ctl("vdi/unmount", b"vol\nother\n").unwrap();
    assert_eq!(
        m.write_ctl("vdi/mount", b"vol\nnosuch\nother\n").unwrap(),
        4
    );
    assert_eq!(m.read_string("vdi/mount"), "vol\n");
    assert_eq!(
        errno(m.write_ctl("vdi/mount", b"nosuch\nother\n")),
        libc::ENOENT
    );
}

#[test]
fn control_files_reject_bad_input() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "vol"]).assert_ok();
    let m = Mount::start(&s, &[]);
    let long = format!("{}\n", "x".repeat(300));
    for (input, want) in [
        (&b"nosuch\n"[..], libc::ENOENT),
        (b"vol@nosuchtag\n", libc::ENOENT),
        (b"vol@77\n", libc::ENOENT),
        (b"\n", libc::EINVAL),
        (b"  \n\n", libc::EINVAL),
        (b"a/b\n", libc::EINVAL),
        (b"vol@\n", libc::EINVAL),
        (b"@s1\n", libc::EINVAL),
        (b"vol@0\n", libc::EINVAL),
        (b"..\n", libc::EINVAL),
        (b"\xff\xfe\n", libc::EINVAL),
        (long.as_bytes(), libc::ENAMETOOLONG),
    ] {
        let e = errno(m.write_ctl("vdi/mount", input));
        assert_eq!(e, want, "vdi/mount <- {:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(
        m.read_string("vdi/mount"),
        "",
        "nothing attached by bad input"
    );
    // The reason is logged, naming the VDI.
    let log = m.log_text();
    assert!(log.contains("nosuch"), "log does not name the VDI:\n{log}");
    for (input, want) in [
        (&b"vol\n"[..], libc::ENOENT),
        (b"\n", libc::EINVAL),
        (b"a/b\n", libc::EINVAL),
    ] {
        let e = errno(m.write_ctl("vdi/unmount", input));
        assert_eq!(
            e,
            want,
            "vdi/unmount <- {:?}",
            String::from_utf8_lossy(input)
        );
    }
    for f in ["config/page_cache", "config/object_cache"] {
        for bad in [&b"abc\n"[..], b"\n", b"1x"] {
            assert_eq!(errno(m.write_ctl(f, bad)), libc::EINVAL, "{f}");
        }
        assert_eq!(m.read_string(f), "0\n");
        m.write_ctl(f, b"2\n").unwrap();
        assert_eq!(m.read_string(f), "1\n");
        m.write_ctl(f, b"0").unwrap();
        assert_eq!(m.read_string(f), "0\n");
    }
    for bad in [&b"host:0\n"[..], b"h:99999", b"\n", b"unix:"] {
        assert_eq!(errno(m.write_ctl("config/sheep_info", bad)), libc::EINVAL);
    }
    // A well-formed address where nobody listens: refused, and nothing changes.
    let dead = common::free_port();
    let e = errno(m.write_ctl(
        "config/sheep_info",
        format!("127.0.0.1:{dead}\n").as_bytes(),
    ));
    assert_eq!(e, libc::ECONNREFUSED);
    let here = format!("127.0.0.1:{}\n", s.port);
    assert_eq!(m.read_string("config/sheep_info"), here);
    // Read-only files refuse writers at open.
    for f in ["cluster/info", "vdi/list", "node/list.json", "config/fuse"] {
        let e = OpenOptions::new().write(true).open(m.p(f)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{f}");
    }
    m.attach("vol");
    let e = OpenOptions::new()
        .write(true)
        .open(m.p("stats/vol"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    // The tree itself cannot be changed.
    assert_eq!(
        File::create(m.p("newfile")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        std::fs::remove_file(m.p("volume/vol"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        std::fs::create_dir(m.p("volume/d"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    // `echo name > vdi/mount` style (O_TRUNC) works.
    m.detach("vol");
    std::fs::write(m.p("vdi/mount"), "vol\n").unwrap();
    assert!(m.p("volume/vol").exists());
    std::fs::write(m.p("vdi/unmount"), "vol\n").unwrap();
    assert!(!m.p("volume/vol").exists());
}

/// sheep_info: writing the address of the same sheep over a different
/// route reconnects every volume and I/O keeps working.
#[test]
fn sheep_info_reconnects_volumes() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("vol");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volume/vol"))
        .unwrap();
    f.write_all_at(&pattern(4096, 5), 4096).unwrap();
    let sock = s.sock();
    m.write_ctl(
        "config/sheep_info",
        format!("unix:{}\n", sock.display()).as_bytes(),
    )
    .unwrap_or_else(|e| panic!("switch to unix socket: {e}\n{}", m.log_text()));
    assert_eq!(
        m.read_string("config/sheep_info"),
        format!("unix:{}\n", sock.display())
    );
    f.write_all_at(&pattern(4096, 6), 8192).unwrap();
    assert_bytes(&pread_exact(&f, 4096, 4096), &pattern(4096, 5), "data");
    assert_bytes(&pread_exact(&f, 8192, 4096), &pattern(4096, 6), "data");
    m.write_ctl(
        "config/sheep_info",
        format!("127.0.0.1:{}", s.port).as_bytes(),
    )
    .unwrap();
    assert_bytes(&pread_exact(&f, 8192, 4096), &pattern(4096, 6), "data");
    assert!(m.read_string("cluster/info").contains("running"));
}

/// The VDI lock: a second mount cannot attach a VDI the first has
/// attached (EBUSY) until the first detaches, unmounts or is terminated.
#[test]
fn vdi_lock_busy_and_released() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "vol"]).assert_ok();
    let mut m1 = Mount::start(&s, &[]);
    let m2 = Mount::start(&s, &[]);
    m1.attach("vol");
    assert_eq!(errno(m2.write_ctl("vdi/mount", b"vol\n")), libc::EBUSY);
    assert!(m2.log_text().contains("vol"), "{}", m2.log_text());
    // Snapshots are read-only and take no lock.
    m2.attach("vol@s1");
    m1.detach("vol");
    m2.attach("vol");
    assert_eq!(errno(m1.write_ctl("vdi/mount", b"vol\n")), libc::EBUSY);
    m2.detach("vol");

    // SIGTERM releases the lock.
    m1.attach("vol");
    let st = m1.terminate().expect("sheepfs exited after SIGTERM");
    assert!(st.success(), "exit status {st}: {}", m1.log_text());
    assert!(!is_mounted(&m1.mnt));
    m2.attach("vol");
    m2.detach("vol");

    // Unmounting releases it too.
    let mut m3 = Mount::start(&s, &[]);
    m3.attach("vol");
    assert_eq!(errno(m2.write_ctl("vdi/mount", b"vol\n")), libc::EBUSY);
    let st = m3.unmount().expect("sheepfs exited after umount");
    assert!(st.success(), "{}", m3.log_text());
    m2.attach("vol");
}

/// --read-only attaches without the lock, refuses writes, and sees what
/// another writer allocated.
#[test]
fn read_only_mount() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let ro = Mount::start(&s, &["--read-only"]);
    ro.attach("vol");
    let e = OpenOptions::new()
        .write(true)
        .open(ro.p("volume/vol"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let rw = Mount::start(&s, &[]);
    rw.attach("vol");
    OpenOptions::new()
        .write(true)
        .open(rw.p("volume/vol"))
        .unwrap()
        .write_all_at(&pattern(512, 7), 0)
        .unwrap();
    // The read-only attachment notices the new object within a second.
    std::thread::sleep(Duration::from_millis(1100));
    assert_bytes(
        &pread_exact(&File::open(ro.p("volume/vol")).unwrap(), 0, 512),
        &pattern(512, 7),
        "data",
    );
}

#[test]
fn unix_socket_mount() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let sock = s.sock();
    let m = Mount::start_args(&["--socket", &sock.to_string_lossy()]);
    assert_eq!(
        m.read_string("cluster/info"),
        s.ctl(&["cluster", "info"]).assert_ok().text()
    );
    m.attach("vol");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volume/vol"))
        .unwrap();
    f.write_all_at(&pattern(10000, 9), 4 << 20).unwrap();
    assert_bytes(&pread_exact(&f, 4 << 20, 10000), &pattern(10000, 9), "data");
}

#[test]
fn command_line() {
    let run = |args: &[&str]| {
        let o = Command::new(bin("sheepfs"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sheepfs");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "-a, --address",
        "-p, --port",
        "-d, --debug",
        "-f, --foreground",
        "-k, --pagecache",
        "-o, --objectcache",
        "--socket",
        "--cache-size",
        "--read-only",
        "--allow-other",
        "-t, --timeout",
        "-h, --help",
        "-V, --version",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}:\n{out}");
    }
    assert_eq!(run(&["-h"]).0, 0);
    let (code, out, _) = run(&["-V"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    assert_eq!(run(&["--version"]).0, 0);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    for (args, needle) in [
        (vec![], "MOUNTPOINT"),
        (vec!["-p", "0", &d], "invalid port"),
        (vec!["-p", "70000", &d], "invalid port"),
        (vec!["--port", "x", &d], "invalid port"),
        (vec!["--cache-size", "12Q", &d], "Invalid size"),
        (vec!["--bogus", &d], "--bogus"),
        (
            vec!["--socket", "/tmp/s", "-p", "7001", &d],
            "cannot be used with",
        ),
        (
            vec!["-f", "/nonexistent/sheepfs-mnt"],
            "/nonexistent/sheepfs-mnt",
        ),
    ] {
        let (code, out, err) = run(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(
            err.contains(needle) || out.contains(needle),
            "{args:?}: stderr lacks {needle:?}:\n{err}"
        );
        assert!(!is_mounted(dir.path()));
    }
}

/// Without -f: the command returns 0 only once the mount is up, and a
/// clear error with a non-zero status when it cannot be.
#[test]
fn daemon_mode() {
    require_root();
    let s = SheepLite::start_formatted();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.to_string_lossy().into_owned();
    let port = s.port.to_string();

    // Nothing listening: fails, says why, mounts nothing.
    let dead = common::free_port().to_string();
    let o = Command::new(bin("sheepfs"))
        .args(["-a", "127.0.0.1", "-p", &dead, &mnt_s])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("127.0.0.1:{dead}")), "{err}");
    assert!(!is_mounted(&mnt));

    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            unmount(&self.0);
        }
    }
    let t = Instant::now();
    let o = Command::new(bin("sheepfs"))
        .args(["-a", "127.0.0.1", "-p", &port, &mnt_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output() // returns only when the parent exits and the daemon let go of the pipes
        .unwrap();
    let _g = Guard(mnt.clone());
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(is_mounted(&mnt), "parent exited before the mount was up");
    let info = std::fs::read_to_string(mnt.join("cluster/info")).unwrap();
    assert_eq!(info, s.ctl(&["cluster", "info"]).assert_ok().text());
    let daemon = find_daemon(&mnt_s).expect("the daemon runs");
    sh_ok("fusermount3", &["-u", &mnt_s]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{daemon}")).exists() && !is_zombie(daemon) {
        if Instant::now() > deadline {
            // SAFETY: the daemon is ours (started above).
            unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
            panic!("daemon {daemon} did not exit after unmount");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&mnt));
}

fn find_daemon(mnt: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"sheepfs")) && args.contains(&mnt.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// SIGTERM while a volume is in use: the mount is detached lazily, the
/// open file keeps working until closed, then sheepfs exits and releases
/// the lock; everything written is on the server.
#[test]
fn sigterm_while_busy() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let mut m = Mount::start(&s, &[]);
    m.attach("vol");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volume/vol"))
        .unwrap();
    f.write_all_at(&pattern(65536, 1), 0).unwrap();
    let pid = m.pid().expect("pid") as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&m.mnt) {
        assert!(Instant::now() < deadline, "not detached after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still served through the open file.
    for i in 1..20u64 {
        f.write_all_at(&pattern(65536, i as u8), i * 65536)
            .unwrap_or_else(|e| panic!("write {i} after SIGTERM: {e}\n{}", m.log_text()));
    }
    assert_bytes(&pread_exact(&f, 65536, 65536), &pattern(65536, 1), "data");
    drop(f);
    let st = m
        .terminate()
        .expect("sheepfs exits once the file is closed");
    assert!(st.success(), "{st}: {}", m.log_text());
    let data = s
        .ctl(&["vdi", "read", "vol", "0", "1310720"])
        .assert_ok()
        .stdout
        .clone();
    for i in 0..20usize {
        let want = pattern(65536, i.max(1) as u8);
        assert!(data[i * 65536..][..65536] == want[..], "block {i} differs");
    }
    // The lock is free again.
    let m2 = Mount::start(&s, &[]);
    m2.attach("vol");
}
