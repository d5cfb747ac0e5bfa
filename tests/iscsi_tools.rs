//! sheep-iscsi against libiscsi's command-line tools (userspace initiators;
//! this kernel has none): discovery, INQUIRY and VPD pages, READ CAPACITY,
//! CHAP (one-way and mutual, wrong secrets refused), start-up errors that
//! name the LUN, and SIGTERM releasing the VDI lock.

mod common;
mod iscsi_common;

use common::SheepLite;
use iscsi_common::*;
use std::time::Duration;

const T: &str = "iqn.2024-01.org.sheepfs.test:tools";
const TIMEOUT: Duration = Duration::from_secs(60);

fn backing(s: &SheepLite, vdi: &str) -> String {
    format!("tcp:127.0.0.1:{}:{vdi}", s.port)
}

fn tool(prog: &str, args: &[&str]) -> (i32, String, String) {
    run(prog, args, &[], TIMEOUT)
}

#[test]
fn discovery_inquiry_and_capacity() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    s.ctl(&["vdi", "create", "big", "3G"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let l2 = format!("2={}", backing(&s, "big"));
    let t = TargetProc::start(&["--target", T, "--lun", &l1, "--lun", &l2]);

    // Discovery (SendTargets=All) and a LUN scan.
    let (code, out, err) = tool("iscsi-ls", &["-s", &format!("iscsi://{}", t.addr())]);
    assert_eq!(code, 0, "iscsi-ls: {err}");
    assert!(
        out.contains(&format!("Target:{T} Portal:{},1", t.addr())),
        "{out}"
    );
    assert!(
        out.contains("Lun:1    Type:DIRECT_ACCESS (Size:63M)"),
        "{out}"
    );
    assert!(
        out.contains("Lun:2    Type:DIRECT_ACCESS (Size:2G)"),
        "{out}"
    );

    // Standard INQUIRY.
    let (code, out, err) = tool("iscsi-inq", &[&t.url(T, 1)]);
    assert_eq!(code, 0, "iscsi-inq: {err}");
    assert!(
        out.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{out}"
    );
    assert!(out.contains("Vendor:SHEEPDOG"), "{out}");
    assert!(out.contains("Version Descriptor:0960 iSCSI"), "{out}");

    // VPD: serial and device identification differ per VDI, and are stable.
    let serial = |lun| {
        let (code, out, err) = tool("iscsi-inq", &["-e", "1", "-c", "128", &t.url(T, lun)]);
        assert_eq!(code, 0, "{err}");
        let s = out
            .split('[')
            .nth(1)
            .and_then(|x| x.split(']').next())
            .unwrap_or_default()
            .to_string();
        assert_eq!(s.len(), 16, "{out}");
        s
    };
    let s1 = serial(1);
    assert_ne!(s1, serial(2));
    assert_eq!(s1, serial(1));
    let (code, out, _) = tool("iscsi-inq", &["-e", "1", "-c", "131", &t.url(T, 1)]);
    assert_eq!(code, 0);
    assert!(out.contains("Designator Type:(3) NAA"), "{out}");
    assert!(out.contains(&format!("Designator:[SHEEPDOG{s1}]")), "{out}");
    assert!(out.contains(&format!("Designator:[{T},t,0x0001]")), "{out}");
    // Block limits: the object size (4 MiB) is the optimal granularity.
    let (code, out, _) = tool("iscsi-inq", &["-e", "1", "-c", "176", &t.url(T, 1)]);
    assert_eq!(code, 0);
    assert!(
        out.contains("optimal transfer length granularity:8192"),
        "{out}"
    );
    let (code, out, _) = tool("iscsi-inq", &["-e", "1", "-c", "178", &t.url(T, 1)]);
    assert_eq!(code, 0);
    assert!(out.contains("lbpu:1") && out.contains("lbprz:1"), "{out}");

    // READ CAPACITY(16): size and thin provisioning bits.
    for (lun, size) in [(1, 64u64 << 20), (2, 3u64 << 30)] {
        let (code, out, err) = tool("iscsi-readcapacity16", &[&t.url(T, lun)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("Total size:{size}")), "{out}");
        assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
        assert!(out.contains("LBPME:1 LBPRZ:1"), "{out}");
    }

    // A LUN that does not exist.
    let (code, _, _) = tool("iscsi-readcapacity16", &[&t.url(T, 7)]);
    assert_ne!(code, 0);
}

#[test]
fn chap_one_way_and_mutual() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let t = TargetProc::start(&[
        "--target",
        T,
        "--lun",
        &l1,
        "--chap",
        "alice:alicesecret12",
        "--mutual-chap",
        "tgtuser:targetsecret1",
    ]);
    let url = |cred: &str, extra: &str| format!("iscsi://{cred}{}/{T}/1{extra}", t.addr());

    let (code, out, err) = tool("iscsi-readcapacity16", &[&url("alice%alicesecret12@", "")]);
    assert_eq!(code, 0, "right secret refused: {err}");
    assert!(out.contains("Total size:16777216"), "{out}");

    // Wrong secret, unknown user, no credentials: refused.
    for cred in ["alice%wrongsecret00@", "bob%alicesecret12@", ""] {
        let (code, _, err) = tool("iscsi-readcapacity16", &[&url(cred, "")]);
        assert_ne!(code, 0, "login with {cred:?} accepted");
        assert!(!err.is_empty());
    }

    // Mutual: libiscsi checks the target's answer.
    let good = url(
        "alice%alicesecret12@",
        "?target_user=tgtuser&target_password=targetsecret1",
    );
    let (code, _, err) = tool("iscsi-readcapacity16", &[&good]);
    assert_eq!(code, 0, "mutual CHAP failed: {err}");
    let bad = url(
        "alice%alicesecret12@",
        "?target_user=tgtuser&target_password=notthesecret",
    );
    let (code, _, _) = tool("iscsi-readcapacity16", &[&bad]);
    assert_ne!(code, 0, "initiator accepted a target with the wrong secret");

    // Login statuses seen by our own initiator.
    let mut o = LoginOpts::normal(T);
    o.chap = Some(("alice".into(), "nottheone123".into()));
    match Initiator::connect(&t.addr(), &o) {
        Err(LoginError::Status(2, 1)) => {}
        other => panic!(
            "expected authentication failure, got {:?}",
            other.map(|_| ())
        ),
    }
    o.chap = None;
    match Initiator::connect(&t.addr(), &o) {
        Err(LoginError::Status(2, 1)) => {}
        other => panic!(
            "expected authentication failure, got {:?}",
            other.map(|_| ())
        ),
    }
    o.chap = Some(("alice".into(), "alicesecret12".into()));
    o.mutual = Some(("tgtuser".into(), "targetsecret1".into()));
    let mut i = Initiator::connect(&t.addr(), &o).expect("mutual CHAP login");
    let r = i.read16(1, 0, 1);
    assert_eq!(r.status, 0);
    assert!(t
        .log_text()
        .contains("CHAP authentication of user 'alice' failed"));
}

#[test]
fn initiator_allow_list() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let l1 = format!("1={}", backing(&s, "vol"));
    let t = TargetProc::start(&[
        "--target",
        T,
        "--lun",
        &l1,
        "--initiator",
        "iqn.2024-01.org.sheepfs.test:allowed",
    ]);
    let (code, _, _) = run(
        "iscsi-inq",
        &["-i", "iqn.2024-01.org.sheepfs.test:allowed", &t.url(T, 1)],
        &[],
        TIMEOUT,
    );
    assert_eq!(code, 0);
    let (code, _, _) = run(
        "iscsi-inq",
        &["-i", "iqn.2024-01.org.sheepfs.test:other", &t.url(T, 1)],
        &[],
        TIMEOUT,
    );
    assert_ne!(code, 0);
    // Discovery hides the target from initiators that may not use it.
    let (code, out, _) = run(
        "iscsi-ls",
        &[
            "-i",
            "iqn.2024-01.org.sheepfs.test:other",
            &format!("iscsi://{}", t.addr()),
        ],
        &[],
        TIMEOUT,
    );
    assert_eq!(code, 0);
    assert!(!out.contains(T), "{out}");
    let mut o = LoginOpts::normal(T);
    o.initiator = "iqn.2024-01.org.sheepfs.test:other".into();
    assert!(matches!(
        Initiator::connect(&t.addr(), &o),
        Err(LoginError::Status(2, 2))
    ));
}

#[test]
fn start_up_errors_name_the_lun() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let good = format!("1={}", backing(&s, "vol"));

    // A malformed backing string is refused by the argument parser.
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_sheep-iscsi"),
        &[
            "--target",
            T,
            "--lun",
            &good,
            "--lun",
            "2=tcp:127.0.0.1:notaport:vol",
        ],
        &[],
        TIMEOUT,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("LUN 2") && err.contains("invalid port 'notaport'"),
        "{err}"
    );

    // Unknown VDI, unknown snapshot, unreachable server, bad portal.
    let dead = common::free_port();
    let cases: Vec<(String, &str)> = vec![
        (format!("3={}", backing(&s, "nope")), "VDI 'nope' not found"),
        (
            format!("3={}:nosuchtag", backing(&s, "vol")),
            "snapshot 'nosuchtag' of VDI 'vol' not found",
        ),
        (
            format!("3=tcp:127.0.0.1:{dead}:vol"),
            "cannot connect to sheep",
        ),
    ];
    for (lun, msg) in cases {
        match TargetProc::try_start(&["--target", T, "--lun", &good, "--lun", &lun]) {
            Ok(_) => panic!("{lun} accepted"),
            Err((code, log)) => {
                assert_eq!(code, Some(1), "{log}");
                assert!(log.contains(&format!("target {T} LUN 3")), "{log}");
                assert!(log.contains(msg), "{msg}: {log}");
            }
        }
    }
    // Missing target / duplicate LUN / bad IQN.
    let (code, _, err) = run(env!("CARGO_BIN_EXE_sheep-iscsi"), &[], &[], TIMEOUT);
    assert_ne!(code, 0);
    assert!(err.contains("no targets configured"), "{err}");
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_sheep-iscsi"),
        &["--target", T, "--lun", &good, "--lun", &good],
        &[],
        TIMEOUT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("LUN 1 defined twice"), "{err}");
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_sheep-iscsi"),
        &["--target", "mytarget", "--lun", &good],
        &[],
        TIMEOUT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("invalid iSCSI name 'mytarget'"), "{err}");
}

#[test]
fn sigterm_finishes_commands_and_releases_the_lock() {
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "vol", "64M"]).assert_ok();
    // Two LUNs on one VDI share one Volume, hence one lock.
    let b = backing(&s, "vol");
    let (l1, l2) = (format!("1={b}"), format!("2={b}"));
    let mut t = TargetProc::start(&["--target", T, "--lun", &l1, "--lun", &l2]);
    let locks = s.ctl(&["vdi", "lock", "list"]).text();
    assert!(locks.contains("vol"), "{locks}");

    // A second target cannot take the same VDI while the first holds it.
    match TargetProc::try_start(&[
        "--target",
        "iqn.2024-01.org.sheepfs.test:other",
        "--lun",
        &l1,
    ]) {
        Ok(_) => panic!("second writer on a locked VDI"),
        Err((_, log)) => assert!(log.contains("locked"), "{log}"),
    }

    // A write in flight when SIGTERM arrives still completes.
    let mut i = Initiator::connect(&t.addr(), &LoginOpts::normal(T)).expect("login");
    let data = common::pattern(4 << 20, 3);
    let itt = i.submit(1, &rw16(0x8a, 2048, (data.len() / 512) as u32), &data, 0);
    let pid = t.pid().expect("pid");
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let r = i.wait(itt).expect("response to the in-flight write");
    assert_eq!(r.status, 0);
    let st = t
        .term(Duration::from_secs(60))
        .expect("sheep-iscsi did not exit");
    assert!(st.success(), "{st:?}\n{}", t.log_text());
    let out = s.ctl(&[
        "vdi",
        "read",
        "vol",
        &(2048 * 512).to_string(),
        &data.len().to_string(),
    ]);
    out.assert_ok();
    assert_eq!(sha(&out.stdout), sha(&data));

    // The lock is gone: the VDI can be served again.
    let locks = s.ctl(&["vdi", "lock", "list"]).text();
    assert!(!locks.contains("vol"), "{locks}");
    let _t2 = TargetProc::start(&["--target", T, "--lun", &l1]);
}
