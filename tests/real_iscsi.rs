//! sheep-iscsi with a LUN on a real 3-node sheep cluster (copies 3),
//! backing store `tcp:127.0.0.1:PORT:VDI`:
//! - libiscsi's Read, Write, WriteSame and Unmap suites (`iscsi-test-cu
//!   --dataloss`) give every test the outcome it has on a sheep-lite LUN of
//!   the same size, run in the same test (tests/iscsi_conformance.rs runs
//!   the whole suite on sheep-lite), and none fails;
//! - data written over iSCSI (our initiator of tests/iscsi_common) reads
//!   back through real `dog vdi read`, and what dog wrote reads back over
//!   iSCSI, compared by checksum.

mod common;
mod iscsi_common;
mod real_common;

use common::{pattern, SheepLite};
use iscsi_common::*;
use real_common::Cluster;
use std::collections::BTreeMap;
use std::time::Duration;

const T: &str = "iqn.2024-01.org.sheepfs.test:real";
const MIB: u64 = 1 << 20;

/// The suites run (each `iscsi-test-cu --test FAMILY.SUITE`).
const SUITES: &[&str] = &[
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.Write10",
    "SCSI.Write12",
    "SCSI.Write16",
    "SCSI.WriteSame10",
    "SCSI.WriteSame16",
    "SCSI.Unmap",
];

/// The size of the LUN on both servers.
const LUN_SIZE: &str = "64M";

fn cluster() -> Option<&'static Cluster> {
    real_common::shared(&[])
}

/// Per-test outcomes of the suites against one LUN.
fn run_suites(url: &str) -> BTreeMap<String, Outcome> {
    let mut all = BTreeMap::new();
    for suite in SUITES {
        let args = ["--dataloss", "--test", suite, url];
        let (_code, out, err) = run("iscsi-test-cu", &args, &[], Duration::from_secs(600));
        let res = parse_test_cu(&out);
        assert!(
            !res.is_empty(),
            "no results from iscsi-test-cu {args:?}:\n{out}\n{err}"
        );
        if res.iter().any(|(_, o)| *o == Outcome::Fail) {
            eprintln!("--- iscsi-test-cu {suite} on {url} ---\n{out}");
        }
        for (name, o) in res {
            all.insert(format!("SCSI.{name}"), o);
        }
    }
    all
}

fn lun(backing: String) -> String {
    format!("1={backing}")
}

#[test]
fn libiscsi_suites_as_on_sheep_lite() {
    let Some(c) = cluster() else { return };
    let o = c.dog(&["vdi", "create", "suites", LUN_SIZE]);
    assert_eq!(o.code, 0, "{o:?}");
    // sheep-lite's run goes alongside (its own target and server).
    let lite = std::thread::spawn(|| {
        let s = SheepLite::start_formatted();
        s.ctl(&["vdi", "create", "suites", LUN_SIZE]).assert_ok();
        let lite_lun = lun(format!("tcp:127.0.0.1:{}:suites", s.port));
        let t = TargetProc::start(&["--target", T, "--lun", &lite_lun]);
        run_suites(&t.url(T, 1))
    });
    let real_lun = lun(format!("tcp:127.0.0.1:{}:suites", c.port()));
    let t = TargetProc::start(&["--target", T, "--lun", &real_lun]);
    let real = run_suites(&t.url(T, 1));
    drop(t);
    let lite = lite.join().expect("the sheep-lite run failed (see above)");

    let (r, l) = (tally_of(&real), tally_of(&lite));
    eprintln!(
        "iscsi-test-cu {SUITES:?}: pass/fail/skip real sheep {}/{}/{}, sheep-lite {}/{}/{}",
        r.0, r.1, r.2, l.0, l.1, l.2
    );
    let failed: Vec<&String> = real
        .iter()
        .filter(|(_, o)| **o == Outcome::Fail)
        .map(|(n, _)| n)
        .collect();
    assert!(failed.is_empty(), "failed on real sheep: {failed:?}");
    let differ: Vec<String> = real
        .keys()
        .chain(lite.keys())
        .filter(|n| real.get(*n) != lite.get(*n))
        .map(|n| format!("{n}: real {:?}, sheep-lite {:?}", real.get(n), lite.get(n)))
        .collect();
    assert!(
        differ.is_empty(),
        "outcomes differ from sheep-lite:\n{}",
        differ.join("\n")
    );
    // The suites really ran, mostly passing (counts of libiscsi 1.19).
    assert!(real.len() >= 50, "only {} tests ran", real.len());
    assert!(r.0 >= 40, "only {} passes", r.0);
}

fn tally_of(m: &BTreeMap<String, Outcome>) -> (usize, usize, usize) {
    let v: Vec<(String, Outcome)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    tally(&v)
}

/// SYNCHRONIZE CACHE (10) of the whole LUN: GOOD.
fn sync_cache(i: &mut Initiator) {
    let r = i.scsi(1, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE: {:?}", r.sense_triple());
}

#[test]
fn data_both_ways_with_dog() {
    let Some(c) = cluster() else { return };
    let o = c.dog(&["vdi", "create", "data", "64M"]);
    assert_eq!(o.code, 0, "{o:?}");
    // dog writes before the target opens the VDI: a served VDI has one
    // writer (the target keeps the inode's map).
    let theirs = pattern(5 * MIB as usize + 512, 99);
    let o = c.dog_stdin(
        &[
            "vdi",
            "write",
            "data",
            &(30 * MIB).to_string(),
            &theirs.len().to_string(),
        ],
        &theirs,
    );
    assert_eq!(o.code, 0, "{o:?}");

    let backing = lun(format!("tcp:127.0.0.1:{}:data", c.port()));
    let t = TargetProc::start(&["--target", T, "--lun", &backing]);
    let mut i = Initiator::connect(&t.addr(), &LoginOpts::normal(T)).expect("login");
    assert_eq!(
        sha(&i.read_bytes(1, 30 * MIB, theirs.len())),
        sha(&theirs),
        "what dog wrote, read over iSCSI"
    );

    // 6 MiB across the object boundary at 4 MiB, not object-aligned; and
    // 1 MiB over the middle of dog's data.
    let ours = pattern(6 * MIB as usize, 7);
    i.write_bytes(1, 3 * MIB - 4096, &ours);
    let over = pattern(MIB as usize, 55);
    i.write_bytes(1, 32 * MIB, &over);
    sync_cache(&mut i);
    assert_eq!(
        sha(&c.dog_read("data", None, 3 * MIB - 4096, ours.len() as u64)),
        sha(&ours),
        "what iSCSI wrote, read by dog"
    );
    let mut want = theirs.clone();
    want[(2 * MIB) as usize..(3 * MIB) as usize].copy_from_slice(&over);
    assert_eq!(
        sha(&c.dog_read("data", None, 30 * MIB, want.len() as u64)),
        sha(&want)
    );
    assert_eq!(sha(&i.read_bytes(1, 30 * MIB, want.len())), sha(&want));
    // Space nobody wrote reads as zeros both ways.
    assert!(c
        .dog_read("data", None, 20 * MIB, 65536)
        .iter()
        .all(|&b| b == 0));
    assert!(i.read_bytes(1, 20 * MIB, 65536).iter().all(|&b| b == 0));
    assert_eq!(i.logout(), 0);
}
