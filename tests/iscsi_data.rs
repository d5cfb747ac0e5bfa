//! Data through sheep-iscsi on a real sheep-lite: iSCSI writes read back by
//! `sheepctl vdi read` and the other way, two LUNs and two targets on one
//! VDI, snapshot LUNs, digests, many commands in flight, ordering of
//! overlapping writes, sheep-lite restarted during I/O, and the medium error
//! for a server that stays away.

mod common;
mod iscsi_common;

use common::{pattern, SheepLite};
use iscsi_common::*;
use std::time::{Duration, Instant};

const T: &str = "iqn.2024-01.org.sheepfs.test:data";
const MIB: u64 = 1 << 20;

fn backing(s: &SheepLite, vdi: &str) -> String {
    format!("tcp:127.0.0.1:{}:{vdi}", s.port)
}

fn login(t: &TargetProc, target: &str) -> Initiator {
    Initiator::connect(&t.addr(), &LoginOpts::normal(target)).expect("login")
}

fn ctl_read(s: &SheepLite, vdi: &str, off: u64, len: usize) -> Vec<u8> {
    let o = s.ctl(&["vdi", "read", vdi, &off.to_string(), &len.to_string()]);
    o.assert_ok();
    o.stdout
}

#[test]
fn iscsi_writes_match_sheepctl_reads_and_back() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let t = TargetProc::start(&["--target", T, "--lun", &l1]);
    let mut i = login(&t, T);

    // 6 MiB across the object boundary at 4 MiB, unaligned to objects.
    let a = pattern(6 * MIB as usize, 7);
    i.write_bytes(1, 3 * MIB - 4096, &a);
    assert_eq!(sha(&ctl_read(&s, "vol", 3 * MIB - 4096, a.len())), sha(&a));
    // Unwritten space reads as zeros both ways.
    assert!(ctl_read(&s, "vol", 20 * MIB, 65536).iter().all(|&b| b == 0));
    assert!(i.read_bytes(1, 20 * MIB, 65536).iter().all(|&b| b == 0));

    // sheepctl writes, iSCSI reads. A served VDI has one writer: the target
    // caches the inode, so it re-opens the VDI after the outside write.
    drop(i);
    let mut t = t;
    assert!(t.term(Duration::from_secs(30)).is_some_and(|s| s.success()));
    let b = pattern(5 * MIB as usize + 512, 99);
    s.ctl_stdin(
        &[
            "vdi",
            "write",
            "vol",
            &(30 * MIB).to_string(),
            &b.len().to_string(),
        ],
        &b,
    )
    .assert_ok();
    let t = TargetProc::start(&["--target", T, "--lun", &l1]);
    let mut j = login(&t, T);
    assert_eq!(sha(&j.read_bytes(1, 30 * MIB, b.len())), sha(&b));
    // And the first write is still there through iSCSI.
    assert_eq!(sha(&j.read_bytes(1, 3 * MIB - 4096, a.len())), sha(&a));
}

#[test]
fn two_luns_and_two_targets_on_one_vdi_are_coherent() {
    let s = SheepLite::start();
    // With locking on, a second Volume on the VDI would fail to open: this
    // also proves the LUNs share one.
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "32M"]).assert_ok();
    let b = backing(&s, "vol");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("targets.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[target]]\nname = \"{T}\"\n[[target.lun]]\nid = 1\nbacking = \"{b}\"\n\
             [[target.lun]]\nid = 2\nbacking = \"{b}\"\n\
             [[target]]\nname = \"{T}2\"\n[[target.lun]]\nid = 0\nbacking = \"{b}\"\n"
        ),
    )
    .unwrap();
    let t = TargetProc::start(&["--config", cfg.to_str().unwrap()]);
    let mut i = login(&t, T);
    let mut k =
        Initiator::connect(&t.addr(), &LoginOpts::normal(&format!("{T}2"))).expect("login 2");
    for round in 0..20u8 {
        let lba = (round as u64) * 1000 + 3;
        let d = pattern(8192 + 512 * round as usize, round);
        // Write through LUN 1, read through LUN 2 and through the other target.
        assert_eq!(i.write16(1, lba, &d).status, 0);
        assert_eq!(i.read16(2, lba, (d.len() / 512) as u32).data, d);
        assert_eq!(k.read16(0, lba, (d.len() / 512) as u32).data, d);
        // And back the other way.
        let e = pattern(d.len(), round.wrapping_add(100));
        assert_eq!(k.write16(0, lba, &e).status, 0);
        assert_eq!(i.read16(1, lba, (e.len() / 512) as u32).data, e);
    }
    // Same NAA/serial for both LUNs: one logical unit seen through two
    // paths, sharing its SCSI state too.
    let inq = |i: &mut Initiator, lun| i.scsi(lun, &[0x12, 1, 0x80, 0, 255, 0], &[], 255).data;
    assert_eq!(inq(&mut i, 1), inq(&mut i, 2));
    assert_eq!(inq(&mut i, 1), inq(&mut k, 0));
    // A reservation taken through LUN 1 holds for LUN 2 and the other target.
    assert_eq!(i.scsi(1, &[0x16, 0, 0, 0, 0, 0], &[], 0).status, 0);
    let mut z = login(&t, T);
    assert_eq!(z.write16(2, 0, &[1u8; 512]).status, 0x18);
    assert_eq!(k.write16(0, 0, &[1u8; 512]).status, 0x18);
    assert_eq!(i.write16(2, 0, &[1u8; 512]).status, 0);
    assert_eq!(i.scsi(2, &[0x17, 0, 0, 0, 0, 0], &[], 0).status, 0);
    assert_eq!(z.write16(2, 0, &[1u8; 512]).status, 0);
}

#[test]
fn snapshot_luns_read_and_refuse_writes() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let old = pattern(MIB as usize, 1);
    s.ctl_stdin(&["vdi", "write", "vol", "0", &old.len().to_string()], &old)
        .assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "snap1", "vol"])
        .assert_ok();
    let new = pattern(MIB as usize, 2);
    s.ctl_stdin(&["vdi", "write", "vol", "0", &new.len().to_string()], &new)
        .assert_ok();

    let b = backing(&s, "vol");
    let (l1, l2, l3) = (format!("1={b}:snap1"), format!("2={b}"), format!("3={b}:1"));
    let t = TargetProc::start(&["--target", T, "--lun", &l1, "--lun", &l2, "--lun", &l3]);
    let mut i = login(&t, T);
    assert_eq!(
        sha(&i.read_bytes(1, 0, old.len())),
        sha(&old),
        "snapshot by tag"
    );
    assert_eq!(
        sha(&i.read_bytes(3, 0, old.len())),
        sha(&old),
        "snapshot by id"
    );
    assert_eq!(
        sha(&i.read_bytes(2, 0, new.len())),
        sha(&new),
        "working VDI"
    );

    // Writes to the snapshot fail with DATA PROTECT / WRITE PROTECTED.
    for lun in [1, 3] {
        let r = i.write16(lun, 0, &[0u8; 4096]);
        assert_eq!(r.status, 2);
        assert_eq!(r.sense_triple(), Some((0x7, 0x27, 0x00)));
        let mut unmap = vec![0u8; 24];
        unmap[1] = 22;
        unmap[3] = 16;
        unmap[8..16].copy_from_slice(&0u64.to_be_bytes());
        unmap[16..20].copy_from_slice(&8u32.to_be_bytes());
        let r = i.scsi(lun, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap, 0);
        assert_eq!(r.sense_triple(), Some((0x7, 0x27, 0x00)));
        // MODE SENSE(6) reports WP in the device-specific parameter.
        let r = i.scsi(lun, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[], 255);
        assert_eq!(r.data[2] & 0x80, 0x80);
    }
    let r = i.scsi(2, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[], 255);
    assert_eq!(r.data[2] & 0x80, 0);
    // The snapshot is unchanged.
    assert_eq!(sha(&ctl_read(&s, "vol", 0, old.len())), sha(&new));
    let o = s.ctl(&[
        "vdi",
        "read",
        "-s",
        "snap1",
        "vol",
        "0",
        &old.len().to_string(),
    ]);
    o.assert_ok();
    assert_eq!(sha(&o.stdout), sha(&old));
}

#[test]
fn digests_many_in_flight_and_ordering() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let t = TargetProc::start(&["--target", T, "--lun", &l1]);
    let mut o = LoginOpts::normal(T);
    o.header_digest = true;
    o.data_digest = true;
    o.immediate_data = false;
    o.initial_r2t = true;
    o.max_burst = 65536;
    let mut i = Initiator::connect(&t.addr(), &o).expect("login with digests");
    assert!(i.hd && i.dd);

    // 64 writes of 192 KiB in flight at once (R2T-driven, several bursts each).
    let chunk = 192 * 1024;
    let mut itts = Vec::new();
    let mut expect = vec![0u8; 64 * chunk];
    for k in 0..64 {
        let d = pattern(chunk, k as u8);
        expect[k * chunk..(k + 1) * chunk].copy_from_slice(&d);
        itts.push(i.submit(
            1,
            &rw16(0x8a, (k * chunk / 512) as u64, (chunk / 512) as u32),
            &d,
            0,
        ));
    }
    for itt in itts {
        assert_eq!(i.wait(itt).unwrap().status, 0);
    }
    assert_eq!(sha(&ctl_read(&s, "vol", 0, expect.len())), sha(&expect));

    // Overlapping writes sent back to back land in CmdSN order; a read sent
    // after them sees the last one.
    for round in 0..10u8 {
        let lba = 40_000 + round as u64 * 64;
        let a = pattern(32 * 1024, round);
        let b = pattern(8 * 1024, round.wrapping_add(50));
        let w1 = i.submit(1, &rw16(0x8a, lba, 64), &a, 0);
        let w2 = i.submit(1, &rw16(0x8a, lba + 8, 16), &b, 0);
        let r = i.submit(1, &rw16(0x88, lba, 64), &[], 32 * 1024);
        let rr = i.wait(r).unwrap();
        assert_eq!(i.wait(w1).unwrap().status, 0);
        assert_eq!(i.wait(w2).unwrap().status, 0);
        let mut want = a.clone();
        want[4096..4096 + 8192].copy_from_slice(&b);
        assert_eq!(rr.data, want, "round {round}");
    }

    // Reads in flight together, Data-In split in many PDUs.
    let itts: Vec<u32> = (0..32)
        .map(|k| {
            i.submit(
                1,
                &rw16(0x88, (k * chunk / 512) as u64, (chunk / 512) as u32),
                &[],
                chunk as u32,
            )
        })
        .collect();
    for (k, itt) in itts.into_iter().enumerate() {
        let r = i.wait(itt).unwrap();
        assert_eq!(r.data, expect[k * chunk..(k + 1) * chunk], "read {k}");
    }
}

#[test]
fn sheep_lite_restart_during_io_then_medium_error_when_gone() {
    let mut s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "32M"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let t = TargetProc::start(&["--target", T, "--lun", &l1, "--timeout", "20"]);
    let mut i = login(&t, T);
    let base = pattern(MIB as usize, 5);
    i.write_bytes(1, 0, &base);

    // Commands keep flowing while the server goes away and comes back.
    let addr = t.addr();
    let io = std::thread::spawn(move || {
        let mut i = Initiator::connect(&addr, &LoginOpts::normal(T)).expect("login");
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let d = pattern(65536, n as u8);
            let lba = 4096 + (n % 64) * 128;
            let w = i.write16(1, lba, &d);
            assert_eq!(w.status, 0, "write {n}: {:?}", w.sense_triple());
            let r = i.read16(1, lba, 128);
            assert_eq!(r.status, 0, "read {n}: {:?}", r.sense_triple());
            assert_eq!(r.data, d, "read-back {n}");
            n += 1;
        }
        n
    });
    std::thread::sleep(Duration::from_millis(800));
    s.stop();
    std::thread::sleep(Duration::from_secs(2));
    s.spawn();
    let n = match io.join() {
        Ok(n) => n,
        Err(e) => panic!("I/O thread: {e:?}\n{}", t.log_text()),
    };
    assert!(n > 10, "only {n} rounds");
    assert_eq!(sha(&i.read_bytes(1, 0, base.len())), sha(&base));

    // A server that stays away: MEDIUM ERROR after the timeout, not a hang.
    let t2 = TargetProc::start(&["--target", T, "--lun", &l1, "--timeout", "2"]);
    let mut j = login(&t2, T);
    assert_eq!(j.read16(1, 0, 8).status, 0);
    s.kill9();
    let started = Instant::now();
    let r = j.read16(1, 0, 8);
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_triple(), Some((0x3, 0x11, 0x00)), "read");
    let r = j.write16(1, 0, &[1u8; 4096]);
    assert_eq!(r.sense_triple(), Some((0x3, 0x0c, 0x00)), "write");
    assert!(started.elapsed() < Duration::from_secs(30));
}
