//! A dead or restarting server under a sheepfs mount: I/O waits and
//! retries, fails with EIO after the timeout, and works again without a
//! remount once the server is back; acknowledged writes are never lost.

mod common;
mod sheepfs_common;

use common::SheepLite;
use parking_lot::Mutex;
use sheepfs_common::*;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLK: usize = 64 << 10;

fn block(i: usize) -> Vec<u8> {
    noise(BLK, 7000 + i as u64)
}

/// sheep-lite is killed (SIGKILL) and restarted while a writer and a
/// reader are busy: no I/O fails, and every acknowledged block is intact.
#[test]
fn server_killed_and_restarted_during_io() {
    for opts in [&[][..], &["-k"][..]] {
        let mut s = SheepLite::start_formatted();
        s.ctl(&["vdi", "create", "-z", "20", "vol", "32M"])
            .assert_ok();
        let m = Mount::start(&s, opts);
        m.attach("vol");
        let path = m.p("volume/vol");
        let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let nblocks = (32 << 20) / BLK;

        let writer = {
            let (acked, failed, path) = (acked.clone(), failed.clone(), path.clone());
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                for i in 0..nblocks {
                    match f.write_all_at(&block(i), (i * BLK) as u64) {
                        Ok(()) => acked.lock().push(i),
                        Err(e) => failed.lock().push(format!("write {i}: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let reader = {
            let (acked, failed, stop, path) =
                (acked.clone(), failed.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || {
                let f = OpenOptions::new().read(true).open(&path).unwrap();
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let done: Vec<usize> = acked.lock().clone();
                    if let Some(&i) = done.get(k % done.len().max(1)) {
                        let mut b = vec![0u8; BLK];
                        match f.read_exact_at(&mut b, (i * BLK) as u64) {
                            Ok(()) if b == block(i) => {}
                            Ok(()) => failed.lock().push(format!("read {i}: wrong data")),
                            Err(e) => failed.lock().push(format!("read {i}: {e}")),
                        }
                    }
                    k += 7;
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        // Let some writes land, then kill the server in the middle of the run.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().len() < nblocks / 4 {
            assert!(Instant::now() < deadline, "writes do not progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        s.kill9();
        std::thread::sleep(Duration::from_millis(1500));
        s.spawn();
        writer.join().expect("writer");
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader");
        let failed = failed.lock().clone();
        assert!(
            failed.is_empty(),
            "I/O failed across the restart: {failed:?}\n{}",
            m.log_text()
        );
        let acked = acked.lock().clone();
        assert_eq!(acked.len(), nblocks);
        let f = OpenOptions::new().read(true).open(&path).unwrap();
        let srv = s.ctl(&["vdi", "read", "vol"]).assert_ok().stdout.clone();
        for &i in &acked {
            let got = pread_exact(&f, (i * BLK) as u64, BLK);
            assert!(got == block(i), "block {i} lost via sheepfs ({opts:?})");
            assert!(
                srv[i * BLK..(i + 1) * BLK] == block(i)[..],
                "block {i} lost on server"
            );
        }
        let st = m.stats("vol");
        assert_eq!(st["errors"], "0", "{st:?}");
    }
}

/// With the server down longer than --timeout, I/O fails with EIO (not a
/// hang); once it is back the same mount and open file work again.
#[test]
fn dead_server_timeout_then_recovery() {
    let mut s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let m = Mount::start(&s, &["--timeout", "2"]);
    m.attach("vol");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.p("volume/vol"))
        .unwrap();
    let d = noise(4096, 1);
    let aligned = |d: &[u8]| {
        // O_DIRECT wants an aligned buffer.
        let mut v = vec![0u8; d.len() + 4096];
        let off = v.as_ptr().align_offset(4096);
        v[off..off + d.len()].copy_from_slice(d);
        (v, off)
    };
    let (buf, o) = aligned(&d);
    f.write_all_at(&buf[o..o + 4096], 8192).unwrap();
    s.kill9();
    let t = Instant::now();
    let (mut rb, ro) = aligned(&[0u8; 4096]);
    let e = f.read_exact_at(&mut rb[ro..ro + 4096], 8192).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took >= Duration::from_millis(1500),
        "gave up too early ({took:?})"
    );
    assert!(
        took < Duration::from_secs(20),
        "took {took:?} for a 2 s timeout"
    );
    let e = f.write_all_at(&buf[o..o + 4096], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let e = std::fs::read(m.p("cluster/info")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    s.spawn();
    f.read_exact_at(&mut rb[ro..ro + 4096], 8192).unwrap();
    assert_bytes(&rb[ro..ro + 4096], &d, "data after recovery");
    f.write_all_at(&buf[o..o + 4096], 0).unwrap();
    f.read_exact_at(&mut rb[ro..ro + 4096], 0).unwrap();
    assert_bytes(&rb[ro..ro + 4096], &d, "data after recovery");
    assert!(m.read_string("cluster/info").contains("running"));
    let st = m.stats("vol");
    assert!(st["errors"].parse::<u64>().unwrap() >= 2, "{st:?}");
}

/// -o against sheep-lite: writes, fsync, and the data is there after the
/// server is killed and restarted.
#[test]
fn object_cache_durable_after_restart() {
    let mut s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "32M"]).assert_ok();
    let m = Mount::start(&s, &["-o"]);
    m.attach("vol");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volume/vol"))
        .unwrap();
    let d = noise(8 << 20, 3);
    f.write_all_at(&d, 3 << 20).unwrap();
    f.sync_all().unwrap();
    s.kill9();
    s.spawn();
    let srv = s.ctl(&[
        "vdi",
        "read",
        "vol",
        &(3u64 << 20).to_string(),
        &d.len().to_string(),
    ]);
    assert_eq!(sha256(&srv.assert_ok().stdout), sha256(&d));
    assert_eq!(sha256(&pread_exact(&f, 3 << 20, d.len())), sha256(&d));
    // And again with a clean restart, writing after reconnecting.
    let d2 = noise(1 << 20, 4);
    f.write_all_at(&d2, 20 << 20).unwrap();
    f.sync_data().unwrap();
    s.restart();
    assert_eq!(sha256(&pread_exact(&f, 20 << 20, d2.len())), sha256(&d2));
    assert_eq!(sha256(&pread_exact(&f, 3 << 20, d.len())), sha256(&d));
}
