//! sheep-iscsi administered at run time with sheep-iscsi-adm (tgtadm's
//! grammar) against a real sheep-lite: tgt's README.sheepdog sequence on an
//! empty target, LUNs added and removed under running sessions, forced
//! deletion releasing the VDI lock, SIGHUP reload, the stop signals, the
//! counters of `show`, ACLs, and a control socket that refuses strangers
//! and garbage.

mod common;
mod iscsi_common;

use common::{pattern, SheepLite};
use iscsi_common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const README_T: &str = "iqn.2013-10.org.sheepdog-project";
const T: &str = "iqn.2024-01.org.sheepfs.test:admin";
const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// (sense key, ASC, ASCQ) of REPORTED LUNS DATA HAS CHANGED.
const UA_LUNS_CHANGED: (u8, u8, u8) = (6, 0x3f, 0x0e);
/// LOGICAL UNIT NOT SUPPORTED.
const NO_SUCH_LUN: (u8, u8, u8) = (5, 0x25, 0);

fn tool(prog: &str, args: &[&str]) -> (i32, String, String) {
    run(prog, args, &[], TIMEOUT)
}

fn unix_backing(s: &SheepLite, vdi: &str) -> String {
    format!("unix:{}:{vdi}", s.sock().display())
}

fn login(t: &TargetProc, target: &str) -> Initiator {
    Initiator::connect(&t.addr(), &LoginOpts::normal(target)).expect("login")
}

/// sheep-iscsi-adm with the arguments of a command line (split at spaces).
fn adm_line(t: &TargetProc, line: &str) -> (i32, String, String) {
    t.adm(&line.split_whitespace().collect::<Vec<_>>())
}

/// Like adm_line; the command must succeed. Its output.
fn ok(t: &TargetProc, line: &str) -> String {
    t.adm_ok(&line.split_whitespace().collect::<Vec<_>>())
}

fn add_target(t: &TargetProc, tid: &str, name: &str) {
    ok(
        t,
        &format!("--op new --mode target --tid {tid} --targetname {name}"),
    );
}

fn add_lun(t: &TargetProc, tid: &str, lun: &str, backing: &str) {
    let bs = format!("--bstype sheepdog --backing-store {backing}");
    ok(
        t,
        &format!("--op new --mode lu --tid {tid} --lun {lun} {bs}"),
    );
}

fn locks(s: &SheepLite) -> String {
    s.ctl(&["vdi", "lock", "list"]).text()
}

/// Polls `cond` until it holds or the deadline passes.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn show_json(t: &TargetProc) -> serde_json::Value {
    let out = ok(t, "--op show --mode target --json");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("show --json: {e}\n{out}"))
}

/// The LUN numbers of one target, from `show --json`.
fn luns_of(t: &TargetProc, name: &str) -> Vec<u64> {
    let j = show_json(t);
    j["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == name)
        .flat_map(|x| x["luns"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["lun"].as_u64())
        .collect()
}

/// A read that tolerates exactly the unit attention announcing a LUN
/// inventory change (what any initiator does: note it, retry).
fn read_retrying_ua(i: &mut Initiator, lun: u64, lba: u64, blocks: u32) -> (ScsiResult, bool) {
    let r = i.read16(lun, lba, blocks);
    if r.status == 2 && r.sense_triple() == Some(UA_LUNS_CHANGED) {
        return (i.read16(lun, lba, blocks), true);
    }
    (r, false)
}

#[test]
fn readme_sheepdog_sequence_on_an_empty_target() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "tgt0", "64M"]).assert_ok();
    // Only --portal and --control: nothing is served yet.
    let t = TargetProc::start(&[]);
    let (code, out, err) = tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr())]);
    assert_eq!(code, 0, "iscsi-ls: {err}");
    assert!(!out.contains("Target:"), "{out}");

    // tgt's README.sheepdog, with tgtadm replaced by sheep-iscsi-adm.
    let bs = unix_backing(&s, "tgt0");
    for line in [
        format!("--op new --mode target --tid 1 --lld iscsi --targetname {README_T}"),
        format!("--op new --mode lu --tid 1 --lun 2 --bstype sheepdog --backing-store {bs}"),
        "--lld iscsi --op bind --mode target --tid 1 -I ALL".to_string(),
    ] {
        let (code, _, err) = adm_line(&t, &line);
        assert_eq!(code, 0, "{line}: {err}");
    }

    let (code, out, err) = tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr())]);
    assert_eq!(code, 0, "iscsi-ls: {err}");
    assert!(
        out.contains(&format!("Target:{README_T} Portal:{},1", t.addr())),
        "{out}"
    );
    assert!(
        out.contains("Lun:2    Type:DIRECT_ACCESS (Size:63M)"),
        "{out}"
    );
    let (code, out, err) = tool("iscsi-inq", &[&t.url(README_T, 2)]);
    assert_eq!(code, 0, "iscsi-inq: {err}");
    assert!(out.contains("Vendor:SHEEPDOG"), "{out}");
    let (code, out, err) = tool("iscsi-readcapacity16", &[&t.url(README_T, 2)]);
    assert_eq!(code, 0, "iscsi-readcapacity16: {err}");
    assert!(out.contains("Total size:67108864"), "{out}");

    // Data written over iSCSI is what sheepctl reads from the VDI. (No
    // libiscsi tool here writes chosen data: the test initiator does.)
    let data = pattern(3 * MIB, 41);
    let mut i = login(&t, README_T);
    i.write_bytes(2, 5 * MIB as u64, &data);
    let o = s.ctl(&[
        "vdi",
        "read",
        "tgt0",
        &(5 * MIB).to_string(),
        &data.len().to_string(),
    ]);
    o.assert_ok();
    assert_eq!(sha(&o.stdout), sha(&data));

    // tgtadm's errors and exit codes for what scripts check.
    for (line, code, msg) in [
        (
            format!("--op new --mode target --tid 1 --targetname {T}"),
            22,
            "this target already exists",
        ),
        (
            format!("--op new --mode lu --tid 1 --lun 2 --backing-store {bs}"),
            22,
            "this logical unit number already exists",
        ),
        (
            "--op delete --mode target --tid 9".into(),
            22,
            "can't find the target",
        ),
        (
            "--op new --mode lu --tid 1 --lun 3 --bstype rdwr --backing-store /tmp/x".into(),
            22,
            "invalid request",
        ),
        (
            "--op new --mode target --tid 2".into(),
            22,
            "creating new target requires a name",
        ),
        (
            "--op new --mode target --tid 2 --targetname x --lun 1".into(),
            22,
            "target mode: option '-l' is not allowed/supported",
        ),
        ("--op show --mode bogus".into(), 1, "unknown mode: bogus"),
        (
            "--op delete --mode lu --tid 1 --lun 2".into(),
            22,
            "this logical unit is still active",
        ),
        (
            "--op delete --mode target --tid 1".into(),
            22,
            "this target is still active",
        ),
    ] {
        let (c, _, err) = adm_line(&t, &line);
        assert_eq!(c, code, "{line}: {err}");
        assert!(
            err.starts_with(&format!("sheep-iscsi-adm: {msg}")),
            "{line}: {err}"
        );
    }
}

#[test]
fn lun_added_and_removed_under_running_io() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "a", "64M"]).assert_ok();
    s.ctl(&["vdi", "create", "b", "32M"]).assert_ok();
    let la = format!("1={}", unix_backing(&s, "a"));
    let t = TargetProc::start(&["--target", T, "--lun", &la]);

    // A session writes and verifies on LUN 1 until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut i = login(&t, T);
    let io = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ops, mut uas) = (0u32, 0u32);
            let mut errors = Vec::new();
            let mut n = 0u8;
            while !stop.load(Ordering::Relaxed) || ops < 20 {
                n = n.wrapping_add(1);
                let lba = u64::from(n % 64) * 256;
                let d = pattern(128 * 1024, n);
                let mut w = i.write16(1, lba, &d);
                if w.status == 2 && w.sense_triple() == Some(UA_LUNS_CHANGED) {
                    uas += 1;
                    w = i.write16(1, lba, &d);
                }
                let (r, ua) = read_retrying_ua(&mut i, 1, lba, 256);
                uas += u32::from(ua);
                if w.status != 0 || r.status != 0 || sha(&r.data) != sha(&d) {
                    errors.push(format!(
                        "op {ops}: write {} {:?}, read {} {:?}",
                        w.status,
                        w.sense_triple(),
                        r.status,
                        r.sense_triple()
                    ));
                }
                ops += 1;
            }
            (ops, uas, errors, i)
        })
    };
    wait_for("I/O to start", || {
        luns_of(&t, T) == vec![1]
            && show_json(&t)["targets"][0]["luns"][0]["stats"]["commands"].as_u64() > Some(4)
    });
    add_lun(&t, "1", "2", &unix_backing(&s, "b"));
    // A new login sees it at once.
    let (code, out, err) = tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr())]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Lun:2    Type:DIRECT_ACCESS (Size:31M)"),
        "{out}"
    );
    let (code, _, err) = adm_line(&t, "--op delete --mode logicalunit --tid 1 --lun 2");
    assert_eq!(code, 22, "in use, must be refused");
    assert!(err.contains("this logical unit is still active"), "{err}");
    ok(&t, "--op delete --mode logicalunit --tid 1 --lun 2 --force");
    assert_eq!(luns_of(&t, T), vec![1]);
    stop.store(true, Ordering::Relaxed);
    let (ops, uas, errors, mut i) = io.join().expect("I/O thread");
    assert!(errors.is_empty(), "errors on LUN 1: {errors:?}");
    assert!(ops >= 20, "{ops}");
    // The session was told about the changes (once per change at most).
    assert!((1..=2).contains(&uas), "unit attentions: {uas}");
    // REPORT LUNS on the old session: only LUN 1 again.
    let r = i.scsi(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[], 64);
    assert_eq!(r.status, 0);
    assert_eq!(&r.data[0..4], &8u32.to_be_bytes(), "one LUN: {:?}", r.data);
}

#[test]
fn forced_lun_delete_fails_commands_and_releases_the_lock() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    let t = TargetProc::start(&[]);
    add_target(&t, "3", T);
    add_lun(&t, "3", "1", &unix_backing(&s, "vol"));
    assert!(locks(&s).contains("vol"), "{}", locks(&s));
    let mut i = login(&t, T);
    let d = pattern(MIB, 5);
    i.write_bytes(1, 0, &d);

    let (code, _, err) = adm_line(&t, "--op delete --mode lu --tid 3 --lun 1");
    assert_eq!(code, 22);
    assert!(err.contains("this logical unit is still active"), "{err}");
    assert!(locks(&s).contains("vol"));

    // A write in flight while the LUN is deleted by force: it gets an
    // answer (done, or failed), never silence.
    let big = pattern(4 * MIB, 9);
    let itt = i.submit(1, &rw16(0x8a, 8192, (big.len() / 512) as u32), &big, 0);
    std::thread::scope(|sc| {
        let del = sc.spawn(|| ok(&t, "--op delete --mode lu --tid 3 --lun 1 --force"));
        i.set_read_timeout(Duration::from_secs(30));
        let r = i.wait(itt).expect("an answer to the in-flight write");
        assert!(r.status == 0 || r.status == 2, "{r:?}");
        del.join().expect("adm thread");
    });
    // The lock is gone once the command returns.
    assert!(!locks(&s).contains("vol"), "{}", locks(&s));
    // The initiator is told, then gets an error for the LUN, at once.
    let r = i.read16(1, 0, 8);
    assert_eq!((r.status, r.sense_triple()), (2, Some(UA_LUNS_CHANGED)));
    let r = i.read16(1, 0, 8);
    assert_eq!((r.status, r.sense_triple()), (2, Some(NO_SUCH_LUN)));
    // What was written before is in the VDI.
    let o = s.ctl(&["vdi", "read", "vol", "0", &d.len().to_string()]);
    o.assert_ok();
    assert_eq!(sha(&o.stdout), sha(&d));
    // Another holder can lock the VDI now.
    let l = format!("1={}", unix_backing(&s, "vol"));
    let _t2 = TargetProc::start(&[
        "--target",
        "iqn.2024-01.org.sheepfs.test:other",
        "--lun",
        &l,
    ]);

    // Forced target deletion ends the session.
    ok(&t, "--op delete --mode target --tid 3 --force");
    assert!(i.closed_by_target(Duration::from_secs(30)));
    assert!(ok(&t, "--op show --mode target").is_empty());
}

fn write_config(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[test]
fn sighup_applies_the_config_difference() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    for v in ["v1", "v2", "v3", "v4"] {
        s.ctl(&["vdi", "create", v, "16M"]).assert_ok();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("sheep-iscsi.toml");
    let b = |v: &str| unix_backing(&s, v);
    let ta = "iqn.2024-01.org.sheepfs.test:a";
    let tb = "iqn.2024-01.org.sheepfs.test:b";
    let tc = "iqn.2024-01.org.sheepfs.test:c";
    write_config(
        &cfg,
        &format!(
            "[[target]]\nname = \"{ta}\"\n[[target.lun]]\nid = 1\nbacking = \"{}\"\n[[target.lun]]\nid = 2\nbacking = \"{}\"\n\
             [[target]]\nname = \"{tb}\"\n[[target.lun]]\nid = 1\nbacking = \"{}\"\n",
            b("v1"),
            b("v2"),
            b("v3")
        ),
    );
    let cfg_s = cfg.to_string_lossy().into_owned();
    let t = TargetProc::start(&["--config", &cfg_s]);
    let mut i = login(&t, ta);
    let d = pattern(MIB, 3);
    i.write_bytes(1, 0, &d);
    let before = ok(&t, "--op show --mode target --dump");

    // A: LUN 2 removed, LUN 3 added; B removed; C added.
    write_config(
        &cfg,
        &format!(
            "[[target]]\nname = \"{ta}\"\n[[target.lun]]\nid = 1\nbacking = \"{}\"\n[[target.lun]]\nid = 3\nbacking = \"{}\"\n\
             [[target]]\nname = \"{tc}\"\n[[target.lun]]\nid = 1\nbacking = \"{}\"\n",
            b("v1"),
            b("v4"),
            b("v3")
        ),
    );
    t.signal(libc::SIGHUP);
    wait_for("the reload", || luns_of(&t, ta) == vec![1, 3]);
    assert!(luns_of(&t, tb).is_empty());
    assert_eq!(luns_of(&t, tc), vec![1]);
    let l = locks(&s);
    assert!(
        !l.contains("v2") && l.contains("v4") && l.contains("v3"),
        "{l}"
    );
    // The untouched session is alive: it is told, then reads its data.
    let (r, ua) = read_retrying_ua(&mut i, 1, 0, (MIB / 512) as u32);
    assert!(ua, "no unit attention after the LUN change");
    assert_eq!(r.status, 0);
    assert_eq!(sha(&r.data), sha(&d));
    let (code, out, _) = tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr())]);
    assert_eq!(code, 0);
    assert!(out.contains(tc) && !out.contains(tb), "{out}");
    assert!(!before.contains(tc));

    // A bad file (syntax, then a VDI that does not exist) changes nothing.
    let now = ok(&t, "--op show --mode target --dump");
    for (n, bad) in [
        "[[target]\nname = \"x\"\n".to_string(),
        format!(
            "[[target]]\nname = \"{ta}\"\n[[target.lun]]\nid = 1\nbacking = \"{}\"\n[[target.lun]]\nid = 5\nbacking = \"{}\"\n",
            b("v1"),
            b("nosuchvdi")
        ),
    ]
    .iter()
    .enumerate()
    {
        write_config(&cfg, bad);
        t.signal(libc::SIGHUP);
        wait_for("the failed reload in the log", || {
            t.log_text().matches("reload failed; nothing changed").count() > n
        });
        assert_eq!(ok(&t, "--op show --mode target --dump"), now);
    }
    assert!(
        t.log_text().contains("nosuchvdi"),
        "the error names the VDI"
    );
    let (r, ua) = read_retrying_ua(&mut i, 1, 0, 8);
    assert_eq!((r.status, ua), (0, false));
}

/// SIGTERM and SIGINT: a write in flight completes, the VDI lock is
/// released, the control socket is removed, the exit is clean. SIGHUP
/// without a config file changes nothing and stops nothing.
#[test]
fn stop_signals_finish_commands_release_locks_and_remove_the_socket() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut t = TargetProc::start(&[]);
        add_target(&t, "1", T);
        add_lun(&t, "1", "1", &unix_backing(&s, "vol"));
        t.signal(libc::SIGHUP);
        wait_for("SIGHUP to be handled", || {
            t.log_text().contains("nothing to reload")
        });
        assert_eq!(luns_of(&t, T), vec![1]);
        assert!(t.control.exists());

        let mut i = login(&t, T);
        let data = pattern(4 * MIB, sig as u8);
        let itt = i.submit(1, &rw16(0x8a, 4096, (data.len() / 512) as u32), &data, 0);
        t.signal(sig);
        let r = i.wait(itt).expect("response to the in-flight write");
        assert_eq!(r.status, 0, "signal {sig}");
        let st = t.wait_exit(TIMEOUT).expect("sheep-iscsi did not exit");
        assert!(st.success(), "{st:?}\n{}", t.log_text());
        assert!(!t.control.exists(), "control socket left behind");
        assert!(!locks(&s).contains("vol"), "{}", locks(&s));
        let o = s.ctl(&[
            "vdi",
            "read",
            "vol",
            &(4096 * 512).to_string(),
            &data.len().to_string(),
        ]);
        o.assert_ok();
        assert_eq!(sha(&o.stdout), sha(&data));
    }
}

#[test]
fn show_lists_sessions_and_counts_the_io_done() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let l = format!("1={}", unix_backing(&s, "vol"));
    let t = TargetProc::start(&["--target", T, "--lun", &l]);
    let mut i = login(&t, T);
    // 2 writes of 512 KiB, 3 reads of 64 KiB, 1 read past the end.
    let d = pattern(512 * 1024, 1);
    for lba in [0, 1024] {
        assert_eq!(i.write16(1, lba, &d).status, 0);
    }
    for lba in [0, 128, 256] {
        assert_eq!(i.read16(1, lba, 128).status, 0);
    }
    assert_eq!(i.read16(1, 32768, 8).status, 2);

    let j = show_json(&t);
    let tj = &j["targets"][0];
    assert_eq!(tj["name"], T);
    assert_eq!(tj["tid"], 1);
    let sess = tj["sessions"].as_array().expect("sessions");
    assert_eq!(sess.len(), 1, "{j}");
    assert_eq!(sess[0]["initiator"], "iqn.2024-01.org.sheepfs.test:init");
    assert!(sess[0]["connections"][0]["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    let st = &tj["luns"][0]["stats"];
    assert_eq!(st["commands"], 6, "{j}");
    assert_eq!(st["write_bytes"], 1 << 20);
    assert_eq!(st["read_bytes"], 3 * 65536);
    assert_eq!(st["errors"], 1);
    assert!(st["latency_p50_us"].as_u64() <= st["latency_max_us"].as_u64());
    assert!(st["latency_max_us"].as_u64() > Some(0));
    assert_eq!(tj["luns"][0]["size"], 16 << 20);

    let text = ok(&t, "--op show --mode target");
    for want in [
        format!("Target 1: {T}\n"),
        "    I_T nexus information:\n        I_T nexus: ".to_string(),
        "            Initiator: iqn.2024-01.org.sheepfs.test:init alias: none\n".to_string(),
        "                IP Address: 127.0.0.1\n".to_string(),
        "        LUN: 1\n            Type: disk\n".to_string(),
        "            Size: 17 MB, Block size: 512\n".to_string(),
        "            Backing store type: sheepdog\n".to_string(),
        format!(
            "            Backing store path: {}\n",
            unix_backing(&s, "vol")
        ),
        "            Commands: 6\n".to_string(),
        "            Written bytes: 1048576\n".to_string(),
        "            Errors: 1\n".to_string(),
        "    ACL information:\n".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    // On a loopback portal an open target is no warning.
    assert!(!text.contains("Warning"), "{text}");

    // Connections: shown, and one can be ended.
    let sid = tj["sessions"][0]["sid"].as_u64().expect("sid").to_string();
    let conns = ok(&t, "--op show --mode conn --tid 1");
    assert!(
        conns.contains(&format!("Session: {sid}\n    Connection: 0\n")),
        "{conns}"
    );
    ok(
        &t,
        &format!("--op delete --mode conn --tid 1 --sid {sid} --cid 0"),
    );
    assert!(i.closed_by_target(Duration::from_secs(30)));
    wait_for("the session to go", || {
        show_json(&t)["targets"][0]["sessions"] == serde_json::json!([])
    });
    let (code, _, err) = adm_line(&t, &format!("--op delete --mode conn --tid 1 --sid {sid}"));
    assert_eq!(code, 22);
    assert!(err.contains("can't find the session"), "{err}");
}

#[test]
fn acls_and_accounts_apply_to_new_logins() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let t = TargetProc::start(&[]);
    add_target(&t, "1", T);
    add_lun(&t, "1", "1", &unix_backing(&s, "vol"));
    let refused = |o: &LoginOpts| match Initiator::connect(&t.addr(), o) {
        Ok(_) => false,
        Err(LoginError::Status(2, _)) => true,
        Err(e) => panic!("{e:?}"),
    };
    let me = LoginOpts::normal(T);
    // An address ACL that is not ours: refused; our name: admitted.
    ok(&t, "--op bind --mode target --tid 1 -I 10.9.9.0/24");
    assert!(refused(&me));
    ok(
        &t,
        &format!(
            "--op bind --mode target --tid 1 --initiator-name {}",
            me.initiator
        ),
    );
    let mut kept = Initiator::connect(&t.addr(), &me).expect("allowed by name");
    let (code, _, err) = adm_line(&t, "--op bind --mode target --tid 1 -I 10.9.9.0/24");
    assert_eq!(code, 22);
    assert!(
        err.contains("this access control rule already exists"),
        "{err}"
    );
    ok(
        &t,
        &format!(
            "--op unbind --mode target --tid 1 --initiator-name {}",
            me.initiator
        ),
    );
    assert!(refused(&LoginOpts::normal(T)));
    // The session logged in before is not disturbed.
    assert_eq!(kept.read16(1, 0, 8).status, 0);
    ok(&t, "--op bind --mode target --tid 1 -I 127.0.0.1");
    assert!(!refused(&LoginOpts::normal(T)));

    // CHAP: an account bound to the target makes it required.
    ok(
        &t,
        "--op new --mode account --user alice --password secret123456",
    );
    ok(&t, "--op bind --mode account --tid 1 --user alice");
    assert!(t
        .adm_ok(&["--op", "show", "--mode", "account"])
        .contains("    alice\n"));
    assert!(refused(&LoginOpts::normal(T)));
    let with_chap = LoginOpts {
        chap: Some(("alice".into(), "secret123456".into())),
        ..LoginOpts::normal(T)
    };
    assert!(!refused(&with_chap));
    let text = ok(&t, "--op show --mode target");
    assert!(
        text.contains("    Account information:\n        alice\n"),
        "{text}"
    );
    assert!(
        text.contains("    ACL information:\n        10.9.9.0/24\n        127.0.0.1\n"),
        "{text}"
    );
    // The dump restarts the same state.
    let dump = ok(&t, "--op show --mode target --dump");
    assert!(dump.contains("chap = [\"alice:secret123456\"]"), "{dump}");
    let (code, _, err) = adm_line(&t, "--op delete --mode account --user bob");
    assert_eq!(code, 22);
    assert!(err.contains("can't find the account"), "{err}");
}

#[test]
fn control_socket_refuses_strangers_and_garbage() {
    let t = TargetProc::start(&[]);
    let mode = std::fs::metadata(&t.control)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Malformed requests get an error and the target carries on.
    for junk in [
        &b"{not json\n"[..],
        b"\n",
        b"{\"mode\":\"target\",\"evil\":1}\n",
        &[0xffu8; 70_000][..],
    ] {
        let mut c = std::os::unix::net::UnixStream::connect(&t.control).expect("connect");
        c.set_read_timeout(Some(TIMEOUT)).ok();
        let _ = c.write_all(junk);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        assert!(reply.contains("InvalidRequest"), "{reply}");
    }
    // A client that connects and says nothing does not block the others.
    let _silent = std::os::unix::net::UnixStream::connect(&t.control).expect("connect");
    ok(&t, "--op show --mode system");

    // SO_PEERCRED: even with the file opened up, another uid is refused.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping the other-uid check");
        return;
    }
    std::fs::set_permissions(&t.control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let ctl = t.control.to_string_lossy().into_owned();
    let (code, _, err) = tool(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_sheep-iscsi-adm"),
            "--control",
            &ctl,
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "--targetname",
            T,
        ],
    );
    assert_eq!(code, 22, "{err}");
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    assert!(ok(&t, "--op show --mode target").is_empty());
    assert!(t.log_text().contains("request refused"));
}
