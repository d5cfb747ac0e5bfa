//! The iSCSI protocol edges of sheep-iscsi, driven PDU by PDU: login status
//! codes, SendTargets with Text continuation, Reject for malformed PDUs,
//! the CmdSN window, task management, NOP keep-alive, logout and session
//! reinstatement. The LUNs are VDIs on a real sheep-lite.

mod common;
mod iscsi_common;

use common::SheepLite;
use iscsi_common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const T: &str = "iqn.2024-01.org.sheepfs.test:proto";

struct Env {
    _s: SheepLite,
    t: TargetProc,
}

fn env(extra: &[&str]) -> Env {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "32M"]).assert_ok();
    let l1 = format!("1=tcp:127.0.0.1:{}:vol", s.port);
    let mut args = vec!["--target", T, "--lun", &l1];
    args.extend_from_slice(extra);
    let t = TargetProc::start(&args);
    Env { _s: s, t }
}

/// One raw login request; the target's answer.
fn raw_login(addr: &str, bhs_edit: impl Fn(&mut Pdu), kv: &[(&str, &str)]) -> Pdu {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut p = Pdu::new(0x43);
    p.bhs[1] = 0x87;
    p.bhs[8] = 0x80;
    p.set_u32(16, 1);
    p.data = kv_encode(kv);
    bhs_edit(&mut p);
    s.write_all(&encode(&p, false, false)).unwrap();
    let mut i = RawConn(s);
    i.recv()
}

struct RawConn(TcpStream);

impl RawConn {
    fn recv(&mut self) -> Pdu {
        use std::io::Read;
        let mut bhs = [0u8; 48];
        self.0
            .read_exact(&mut bhs)
            .expect("a response, not a closed socket");
        let n = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut d = vec![0u8; n + (4 - n % 4) % 4];
        self.0.read_exact(&mut d).unwrap();
        d.truncate(n);
        Pdu { bhs, data: d }
    }
}

fn status(p: &Pdu) -> (u8, u8) {
    assert_eq!(p.op(), 0x23, "login response expected");
    (p.bhs[36], p.bhs[37])
}

#[test]
fn login_errors_get_login_statuses() {
    let e = env(&[]);
    let a = e.t.addr();
    let init = ("InitiatorName", "iqn.2024-01.org.sheepfs.test:raw");
    // Missing InitiatorName.
    assert_eq!(status(&raw_login(&a, |_| {}, &[("TargetName", T)])), (2, 7));
    // Missing TargetName in a normal session.
    assert_eq!(status(&raw_login(&a, |_| {}, &[init])), (2, 7));
    // Unknown target.
    assert_eq!(
        status(&raw_login(
            &a,
            |_| {},
            &[init, ("TargetName", "iqn.2024-01.nope:x")]
        )),
        (2, 3)
    );
    // Unknown session type.
    assert_eq!(
        status(&raw_login(&a, |_| {}, &[init, ("SessionType", "Weird")])),
        (2, 9)
    );
    // Unsupported version.
    assert_eq!(
        status(&raw_login(&a, |p| p.bhs[3] = 1, &[init, ("TargetName", T)])),
        (2, 5)
    );
    // A TSIH that names no session.
    assert_eq!(
        status(&raw_login(
            &a,
            |p| p.bhs[15] = 77,
            &[init, ("TargetName", T)]
        )),
        (2, 10)
    );
    // Invalid stage transition (CSG 1 -> NSG 1).
    assert_eq!(
        status(&raw_login(
            &a,
            |p| p.bhs[1] = 0x85,
            &[init, ("TargetName", T)]
        )),
        (2, 0)
    );
    // Malformed text.
    let mut s = TcpStream::connect(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut p = Pdu::new(0x43);
    p.bhs[1] = 0x87;
    p.data = b"InitiatorName\0".to_vec();
    s.write_all(&encode(&p, false, false)).unwrap();
    assert_eq!(status(&RawConn(s).recv()), (2, 0));
    // Unknown and invalid keys are answered, not fatal.
    let mut o = LoginOpts::normal(T);
    o.max_burst = 1; // out of range: Reject
    let i = Initiator::connect(&a, &o).expect("login despite a rejected value");
    assert!(i
        .login_keys
        .iter()
        .any(|(k, v)| k == "MaxBurstLength" && v == "Reject"));
}

#[test]
fn send_targets_with_text_continuation() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    let mut text = String::new();
    for n in 0..40 {
        text.push_str(&format!(
            "[[target]]\nname = \"iqn.2024-01.org.sheepfs.test:a-rather-long-target-name-{n:03}\"\n\
             [[target.lun]]\nid = 0\nbacking = \"tcp:127.0.0.1:{}:vol\"\n",
            s.port
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let t = TargetProc::start(&["--config", cfg.to_str().unwrap()]);
    let mut o = LoginOpts::discovery();
    o.mrdsl = 512;
    let mut i = Initiator::connect(&t.addr(), &o).expect("discovery login");
    let kv = i.send_targets("All");
    let names: Vec<&String> = kv
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(names.len(), 40);
    let addrs = kv.iter().filter(|(k, _)| k == "TargetAddress").count();
    assert_eq!(addrs, 40);
    assert!(kv.contains(&("TargetAddress".into(), format!("{},1", t.addr()))));
    // SCSI commands are refused in a discovery session.
    let mut p = Pdu::new(0x01);
    p.bhs[1] = 0x80;
    p.set_u32(16, 999);
    p.set_u32(24, i.cmd_sn);
    i.cmd_sn += 1;
    i.send(&p).unwrap();
    assert_eq!(i.wait_other().unwrap().op(), 0x3f);
    assert_eq!(i.logout(), 0);
    // In a normal session SendTargets= (empty) names the current target.
    let name = "iqn.2024-01.org.sheepfs.test:a-rather-long-target-name-007";
    let mut j = Initiator::connect(&t.addr(), &LoginOpts::normal(name)).unwrap();
    let kv = j.send_targets("");
    assert_eq!(kv[0], ("TargetName".into(), name.into()));
    assert_eq!(kv.iter().filter(|(k, _)| k == "TargetName").count(), 1);
}

#[test]
fn malformed_pdus_are_rejected_not_fatal() {
    let e = env(&[]);
    let mut i = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    // Unknown opcode: Reject "command not supported", header echoed.
    let mut p = Pdu::new(0x1d);
    p.set_u32(16, 0x4242);
    i.send(&p).unwrap();
    let r = i.wait_other().unwrap();
    assert_eq!((r.op(), r.bhs[2]), (0x3f, 0x05));
    assert_eq!(&r.data[16..20], &0x4242u32.to_be_bytes());
    // Immediate data on a command without the W bit: protocol error.
    let mut p = Pdu::new(0x01);
    p.bhs[1] = 0x80 | 0x40;
    p.bhs[9] = 1;
    p.set_u32(16, 0x77);
    p.set_u32(20, 512);
    p.set_u32(24, i.cmd_sn);
    i.cmd_sn += 1;
    p.bhs[32..48].copy_from_slice(&rw16(0x88, 0, 1));
    p.data = vec![0u8; 512];
    i.send(&p).unwrap();
    let r = i.wait_other().unwrap();
    assert_eq!((r.op(), r.bhs[2]), (0x3f, 0x04));
    // Still usable.
    assert_eq!(i.nop(b"ping").data, b"ping");
    assert_eq!(i.read16(1, 0, 1).status, 0);

    // A Data-Out with a wrong DataSN fails that command only.
    let mut o = LoginOpts::normal(T);
    o.immediate_data = false;
    o.initial_r2t = false;
    let mut j = Initiator::connect(&e.t.addr(), &o).unwrap();
    let mut c = Pdu::new(0x01);
    c.bhs[1] = 0x21; // W, not final: unsolicited data follows
    c.bhs[9] = 1;
    c.set_u32(16, 0x100);
    c.set_u32(20, 1024);
    c.set_u32(24, j.cmd_sn);
    j.cmd_sn += 1;
    c.bhs[32..48].copy_from_slice(&rw16(0x8a, 0, 2));
    j.send(&c).unwrap();
    for (sn, off) in [(0u32, 0u32), (5, 512)] {
        let mut d = Pdu::new(0x05);
        d.bhs[1] = if off == 512 { 0x80 } else { 0 };
        d.bhs[9] = 1;
        d.set_u32(16, 0x100);
        d.set_u32(20, RSV);
        d.set_u32(36, sn);
        d.set_u32(40, off);
        d.data = vec![9u8; 512];
        j.send(&d).unwrap();
    }
    let r = loop {
        let p = j.recv().unwrap();
        if p.op() == 0x21 {
            break p;
        }
    };
    assert_eq!(r.bhs[3], 2);
    let sense = &r.data[2..];
    assert_eq!((sense[2] & 0xf, sense[12], sense[13]), (0xb, 0x4b, 0x00));
    assert_eq!(j.read16(1, 0, 2).status, 0);

    // Oversized data segment: Reject, then the connection closes.
    let mut p = Pdu::new(0x00);
    p.bhs[0] |= 0x40;
    p.bhs[1] = 0x80;
    p.set_u32(16, 5);
    p.set_u32(20, RSV);
    let mut raw = encode(&p, i.hd, i.dd);
    raw[5..8].copy_from_slice(&[0x10, 0, 0]); // 1 MiB announced, nothing sent
    i.send_raw(&raw).unwrap();
    let r = i.recv_raw().unwrap();
    assert_eq!((r.op(), r.bhs[2]), (0x3f, 0x04));
    assert!(i.closed_by_target(Duration::from_secs(10)));

    // Garbage instead of a login: closed, target still serving others.
    let mut s = TcpStream::connect(e.t.addr()).unwrap();
    s.write_all(&[0xffu8; 100]).unwrap();
    drop(s);
    let mut k = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    assert_eq!(k.read16(1, 0, 1).status, 0);
}

#[test]
fn header_digest_errors_close_the_connection() {
    let e = env(&[]);
    let mut o = LoginOpts::normal(T);
    o.header_digest = true;
    let mut i = Initiator::connect(&e.t.addr(), &o).unwrap();
    assert!(i.hd);
    let mut p = Pdu::new(0x40);
    p.bhs[1] = 0x80;
    p.set_u32(16, 3);
    p.set_u32(20, RSV);
    let mut raw = encode(&p, true, i.dd);
    raw[48] ^= 0xff;
    i.send_raw(&raw).unwrap();
    assert!(i.closed_by_target(Duration::from_secs(10)));
    assert!(e.t.log_text().contains("header digest"));
}

#[test]
fn cmdsn_window_and_order() {
    let e = env(&[]);
    let mut i = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    // Beyond MaxCmdSN: silently ignored.
    let sn = i.cmd_sn;
    i.cmd_sn = i.max_cmd_sn.wrapping_add(1);
    let lost = i.submit(1, &[0, 0, 0, 0, 0, 0], &[], 0);
    i.cmd_sn = sn;
    let ok = i.submit(1, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(i.wait(ok).unwrap().status, 0);
    i.set_read_timeout(Duration::from_secs(1));
    assert!(
        i.wait(lost).is_err(),
        "command beyond MaxCmdSN was answered"
    );
    drop(i);

    // Out of order within the window: delivered in CmdSN order.
    let mut i = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    let a = vec![0xaau8; 4096];
    let b = vec![0xbbu8; 4096];
    let sn = i.cmd_sn;
    i.cmd_sn = sn + 1;
    let wb = i.submit(1, &rw16(0x8a, 100, 8), &b, 0); // CmdSN sn+1, sent first
    i.cmd_sn = sn;
    let wa = i.submit(1, &rw16(0x8a, 100, 8), &a, 0); // CmdSN sn
    i.cmd_sn = sn + 2;
    assert_eq!(i.wait(wa).unwrap().status, 0);
    assert_eq!(i.wait(wb).unwrap().status, 0);
    assert_eq!(i.read16(1, 100, 8).data, b);
    // A duplicate CmdSN is ignored too.
    let dup_sn = i.cmd_sn - 1;
    let keep = i.cmd_sn;
    i.cmd_sn = dup_sn;
    let dup = i.submit(1, &rw16(0x8a, 100, 8), &a, 0);
    i.cmd_sn = keep;
    assert_eq!(i.read16(1, 100, 8).data, b);
    i.set_read_timeout(Duration::from_secs(1));
    assert!(i.wait(dup).is_err());

    // Aborting a command held for CmdSN order counts its CmdSN as received
    // (RFC 7143 §11.5.1): the commands after it still run.
    i.set_read_timeout(Duration::from_secs(10));
    let sn = i.cmd_sn;
    i.cmd_sn = sn + 1;
    let held = i.submit(1, &rw16(0x8a, 200, 8), &a, 0);
    let after = i.submit(1, &rw16(0x8a, 300, 8), &b, 0); // CmdSN sn+2
    i.cmd_sn = sn;
    assert_eq!(i.tmf(1, 1, held, sn + 1), 0);
    let first = i.submit(1, &rw16(0x8a, 100, 8), &a, 0); // CmdSN sn
    i.cmd_sn = sn + 3;
    assert_eq!(i.wait(first).unwrap().status, 0);
    assert_eq!(
        i.wait(after).unwrap().status,
        0,
        "stalled behind the aborted CmdSN"
    );
    assert_eq!(i.read16(1, 300, 8).data, b);
    assert!(
        i.read16(1, 200, 8).data.iter().all(|&x| x == 0),
        "aborted write ran"
    );
}

#[test]
fn task_management() {
    let e = env(&[]);
    let mut o = LoginOpts::normal(T);
    o.immediate_data = false;
    o.initial_r2t = true;
    let mut i = Initiator::connect(&e.t.addr(), &o).unwrap();
    let mut other = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    assert_eq!(other.read16(1, 0, 1).status, 0);

    // A write waiting for its data is aborted: no SCSI response follows.
    let mut c = Pdu::new(0x01);
    c.bhs[1] = 0xa1;
    c.bhs[9] = 1;
    c.set_u32(16, 0x500);
    c.set_u32(20, 4096);
    let ref_sn = i.cmd_sn;
    c.set_u32(24, ref_sn);
    i.cmd_sn += 1;
    c.bhs[32..48].copy_from_slice(&rw16(0x8a, 10, 8));
    i.send(&c).unwrap();
    let r2t = i.recv().unwrap();
    assert_eq!(r2t.op(), 0x31);
    assert_eq!(i.tmf(1, 1, 0x500, ref_sn), 0);
    // Data for the aborted task is discarded quietly.
    let mut d = Pdu::new(0x05);
    d.bhs[1] = 0x80;
    d.bhs[9] = 1;
    d.set_u32(16, 0x500);
    d.set_u32(20, r2t.u32(20));
    d.data = vec![1u8; 4096];
    i.send(&d).unwrap();
    assert_eq!(i.nop(b"x").op(), 0x20);
    assert!(i.others.is_empty(), "unexpected PDUs: {:?}", i.others);
    // Nothing was written.
    assert!(i.read16(1, 10, 8).data.iter().all(|&b| b == 0));

    // Unknown task; LUN that does not exist; unsupported functions.
    assert_eq!(i.tmf(1, 1, 0x999, i.cmd_sn), 1);
    assert_eq!(i.tmf(5, 9, RSV, 0), 2);
    assert_eq!(i.tmf(8, 1, RSV, 0), 4);
    assert_eq!(i.tmf(3, 1, RSV, 0), 5);

    // LUN RESET: every nexus, the requester's too, sees a unit attention once.
    assert_eq!(i.tmf(5, 1, RSV, 0), 0);
    for n in [&mut other, &mut i] {
        let r = n.scsi(1, &[0, 0, 0, 0, 0, 0], &[], 0);
        assert_eq!(r.sense_triple(), Some((0x6, 0x29, 0x03)));
        assert_eq!(n.scsi(1, &[0, 0, 0, 0, 0, 0], &[], 0).status, 0);
    }
    // TARGET WARM RESET.
    assert_eq!(i.tmf(6, 0, RSV, 0), 0);
    assert_eq!(
        i.scsi(1, &[0, 0, 0, 0, 0, 0], &[], 0)
            .sense_triple()
            .map(|s| s.0),
        Some(6)
    );
    assert_eq!(
        other
            .scsi(1, &[0, 0, 0, 0, 0, 0], &[], 0)
            .sense_triple()
            .map(|s| s.0),
        Some(6)
    );
}

#[test]
fn nop_keepalive_logout_and_reinstatement() {
    let e = env(&["--nop-interval", "1", "--nop-timeout", "2"]);
    // The target pings an idle connection with a TTT to echo.
    let mut i = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    i.set_read_timeout(Duration::from_secs(10));
    let p = i.recv_raw().unwrap();
    assert_eq!((p.op(), p.itt()), (0x20, RSV));
    assert_ne!(p.u32(20), RSV);
    // Not answering gets the connection dropped.
    assert!(i.closed_by_target(Duration::from_secs(10)));
    // Answering keeps it (recv answers pings).
    let mut j = Initiator::connect(&e.t.addr(), &LoginOpts::normal(T)).unwrap();
    j.set_read_timeout(Duration::from_secs(5));
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while std::time::Instant::now() < until {
        let p = j.recv_raw().expect("connection kept while answering pings");
        assert_eq!(p.op(), 0x20, "only pings expected");
        let mut r = Pdu::new(0x40);
        r.bhs[1] = 0x80;
        r.set_u32(16, RSV);
        r.set_u32(20, p.u32(20));
        r.set_u32(24, j.cmd_sn);
        j.send(&r).unwrap();
        pings += 1;
    }
    assert!(pings >= 2, "{pings} pings");
    j.set_read_timeout(Duration::from_secs(30));
    assert_eq!(j.read16(1, 0, 1).status, 0);

    // Logout waits for commands in flight, whose responses come first.
    let data = vec![3u8; 1 << 20];
    let w = j.submit(1, &rw16(0x8a, 0, 2048), &data, 0);
    let mut lo = Pdu::new(0x06);
    lo.bhs[1] = 0x80;
    lo.set_u32(16, 0x9999);
    lo.set_u32(24, j.cmd_sn);
    j.cmd_sn += 1;
    j.send(&lo).unwrap();
    assert_eq!(j.wait(w).unwrap().status, 0);
    let r = j.wait_other().unwrap();
    assert_eq!((r.op(), r.bhs[2]), (0x26, 0));
    assert!(j.closed_by_target(Duration::from_secs(10)));

    // Same initiator name and ISID: the new login replaces the old session.
    let o = LoginOpts::normal(T);
    let mut a = Initiator::connect(&e.t.addr(), &o).unwrap();
    assert_eq!(a.read16(1, 0, 1).status, 0);
    let mut b = Initiator::connect(&e.t.addr(), &o).unwrap();
    assert_eq!(b.read16(1, 0, 1).status, 0);
    assert!(a.closed_by_target(Duration::from_secs(10)));
}
