//! Renderers against the texts dog printed in the captures (steps.jsonl),
//! with rows built from the captured values, plus edge cases.

use super::*;
use crate::proto::node::{NodeId, SdNode};

fn steps() -> Vec<serde_json::Value> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/steps.jsonl");
    let text = std::fs::read_to_string(&p).expect("steps.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The stdout dog printed in `step`.
fn dog_stdout(step: &str) -> String {
    steps()
        .into_iter()
        .find(|s| s["step"] == step)
        .and_then(|s| s["stdout"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no stdout for {step}"))
}

struct V {
    name: &'static str,
    vid: u32,
    size: u64,
    used: u64,
    shared: u64,
    ctime: u64,
    snap: bool,
    snap_id: u32,
    parent: u32,
    tag: &'static str,
    shift: u8,
}

fn entry(v: &V) -> VdiEntry {
    let mut h = InodeHeader {
        name: v.name.into(),
        tag: v.tag.into(),
        create_time: v.ctime << 32 | 123_000,
        snap_ctime: if v.snap { (v.ctime + 5) << 32 } else { 0 },
        vdi_size: v.size,
        nr_copies: 3,
        block_size_shift: v.shift,
        snap_id: v.snap_id,
        vdi_id: v.vid,
        parent_vdi_id: v.parent,
        ..Default::default()
    };
    h.raw_name[..v.name.len()].copy_from_slice(v.name.as_bytes());
    h.raw_tag[..v.tag.len()].copy_from_slice(v.tag.as_bytes());
    VdiEntry {
        header: h,
        used_objs: v.used,
        shared_objs: v.shared,
    }
}

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;

fn v(name: &'static str, vid: u32, size: u64, ctime: u64) -> V {
    V {
        name,
        vid,
        size,
        used: 0,
        shared: 0,
        ctime,
        snap: false,
        snap_id: 1,
        parent: 0,
        tag: "",
        shift: 22,
    }
}

/// The four VDIs after dog-09 (vdi list of dog-10/11).
fn initial_vdis() -> Vec<VdiEntry> {
    [
        v("hyper", 0x5b5b59, 5 << 40, 1795377800),
        v("test", 0x7c2b25, G, 1795377798),
        V {
            shift: 20,
            ..v("small", 0x98998c, 8 * M, 1795377799)
        },
        V {
            used: 3,
            ..v("pre", 0xa1edc6, 12 * M, 1795377799)
        },
    ]
    .iter()
    .map(entry)
    .collect()
}

#[test]
fn vdi_list_matches_dog_10_and_11() {
    let e = initial_vdis();
    assert_eq!(
        render_vdi_list_tz(&e, false, None, Tz::Utc),
        dog_stdout("dog-10-vdi-list")
    );
    assert_eq!(
        render_vdi_list_tz(&e, true, None, Tz::Utc),
        dog_stdout("dog-11-vdi-list-r")
    );
}

#[test]
fn vdi_list_matches_dog_25_and_31() {
    let all = [
        V {
            used: 1,
            ..v("hyper", 0x5b5b59, 5 << 40, 1795377800)
        },
        V {
            used: 2,
            snap: true,
            tag: "snap1",
            ..v("test", 0x7c2b25, G, 1795377798)
        },
        V {
            shared: 2,
            snap_id: 2,
            parent: 0x7c2b25,
            ..v("test", 0x7c2b26, 2 * G, 1795377806)
        },
        V {
            shift: 20,
            ..v("small", 0x98998c, 8 * M, 1795377799)
        },
        V {
            used: 3,
            ..v("pre", 0xa1edc6, 12 * M, 1795377799)
        },
        V {
            used: 1,
            shared: 1,
            parent: 0x7c2b25,
            ..v("clone1", 0xc8f989, G, 1795377807)
        },
    ];
    let e: Vec<VdiEntry> = all.iter().map(entry).collect();
    assert_eq!(
        render_vdi_list_tz(&e, false, None, Tz::Utc),
        dog_stdout("dog-25-vdi-list")
    );
    // dog-31: after deleting clone1 and the snapshot.
    let left: Vec<VdiEntry> = [0usize, 2, 3, 4].iter().map(|&i| e[i].clone()).collect();
    assert_eq!(
        render_vdi_list_tz(&left, true, None, Tz::Utc),
        dog_stdout("dog-31-vdi-list-r")
    );
    // With a name only that family is listed (snapshot and working VDI).
    let only = render_vdi_list_tz(&e, true, Some("test"), Tz::Utc);
    assert_eq!(only.lines().count(), 2);
    assert!(only.starts_with("s test 1 1073741824 8388608 0 1795377798 7c2b25 3 snap1 22\n"));
}

#[test]
fn vdi_list_edge_cases() {
    // Names with spaces and backslashes are escaped in raw mode only.
    let e = entry(&V {
        tag: "",
        ..v("my disk\\1", 0x10, 4 * M, 0)
    });
    let raw = vdi_list_row_tz(&e, true, Tz::Utc);
    assert_eq!(raw, "= my\\ disk\\\\1 0 4194304 0 0 0 10 3  22\n");
    let text = vdi_list_row_tz(&e, false, Tz::Utc);
    assert_eq!(
        text,
        "  my disk\\1     0  4.0 MB  0.0 MB  0.0 MB 1970-01-01 00:00       10      3                22\n"
    );
    // Tabs count as spaces (C isspace).
    let t = entry(&v("a\tb", 0x11, M, 0));
    assert!(vdi_list_row_tz(&t, true, Tz::Utc).starts_with("= a\\\tb 0 "));
    // Erasure coding prints D:P; long names and tags are not cut.
    let mut ec = entry(&V {
        tag: "a-very-long-tag-name",
        snap: true,
        snap_id: 7,
        ..v("averyveryverylongname", 0xabcdef, 10 * G, 0)
    });
    ec.header.copy_policy = 0x22;
    ec.header.nr_copies = 6;
    assert_eq!(
        vdi_list_row_tz(&ec, false, Tz::Utc),
        "s averyveryverylongname     7   10 GB  0.0 MB  0.0 MB 1970-01-01 00:00   abcdef    4:2 a-very-long-tag-name  22\n"
    );
    assert_eq!(
        vdi_list_row_tz(&ec, true, Tz::Utc),
        "s averyveryverylongname 7 10737418240 0 0 0 abcdef 4:2 a-very-long-tag-name 22\n"
    );
    // A clone is snap_id 1 with a parent; a later generation is a working VDI.
    let c = entry(&V {
        parent: 5,
        ..v("c", 1, M, 0)
    });
    assert!(vdi_list_row_tz(&c, true, Tz::Utc).starts_with("c c "));
    assert!(vdi_list_row_tz(&c, false, Tz::Utc).starts_with("c c        "));
    let w = entry(&V {
        parent: 5,
        snap_id: 2,
        ..v("w", 1, M, 0)
    });
    assert!(vdi_list_row_tz(&w, true, Tz::Utc).starts_with("= w "));
    // The header alone when nothing matches.
    assert_eq!(
        render_vdi_list_tz(&[c], false, Some("nope"), Tz::Utc),
        VDI_LIST_HEADER
    );
}

#[test]
fn vdi_list_json_fields() {
    let e = initial_vdis();
    let j: serde_json::Value = serde_json::from_str(&render_vdi_list_json(&e)).unwrap();
    let pre = &j[3];
    assert_eq!(pre["name"], "pre");
    assert_eq!(pre["type"], "working");
    assert_eq!(pre["vid"], "a1edc6");
    assert_eq!(pre["size"], 12 * M);
    assert_eq!(pre["used"], 12 * M);
    assert_eq!(pre["shared"], 0);
    assert_eq!(pre["ctime"], 1795377799u64);
    assert_eq!(pre["copies"], 3);
    assert_eq!(pre["redundancy"], "3");
    assert_eq!(pre["tag"], "");
    assert_eq!(pre["block_size_shift"], 22);
    assert_eq!(pre["snapid"], 0);
}

#[test]
fn human_sizes() {
    let cases: &[(u64, &str)] = &[
        (0, "0.0 MB"),
        (1, "0.0 MB"),
        (52_429, "0.1 MB"),
        (M, "1.0 MB"),
        (10 * M - 1, "10.0 MB"),
        (10 * M, "10 MB"),
        (1023 * M, "1023 MB"),
        (1024 * M - 1, "1024 MB"),
        (1024 * M, "1.0 GB"),
        (10 * G, "10 GB"),
        (1 << 40, "1.0 TB"),
        (5 << 40, "5.0 TB"),
        (16 << 50, "16 PB"),
        (1 << 60, "1.0 EB"),
        (u64::MAX, "16 EB"),
        (10 * M + M / 2, "10 MB"),
        (11 * M + M / 2, "12 MB"),
    ];
    for &(b, s) in cases {
        assert_eq!(human_size(b), s, "{b}");
    }
    assert_eq!(size_str(12345, true), "12345");
}

fn node(port: u16, vnodes: u16) -> SdNode {
    let nid = NodeId::new("127.0.0.1".parse().unwrap(), port);
    SdNode {
        zone: SdNode::default_zone(&nid.addr),
        nid,
        nr_vnodes: vnodes,
        space: 0,
    }
}

fn formatted_status() -> ClusterStatus {
    ClusterStatus {
        result: SdRes::SUCCESS,
        has_data: true,
        logs: vec![EpochLog {
            ctime: 7711088918292121616,
            time: 1795377796,
            epoch: 1,
            nr_copies: 3,
            flags: 4,
            drv_name: "plain".into(),
            nodes: vec![node(7101, 128)],
            ..Default::default()
        }],
    }
}

#[test]
fn cluster_info_matches_dog() {
    let utc = ClusterInfoOpts {
        tz: Tz::Utc,
        ..Default::default()
    };
    let unformatted = ClusterStatus {
        result: SdRes::WAIT_FOR_FORMAT,
        has_data: false,
        logs: vec![],
    };
    assert_eq!(
        render_cluster_info(&unformatted, utc),
        dog_stdout("dog-01-cluster-info-unformatted")
    );
    assert_eq!(
        render_cluster_info(&formatted_status(), utc),
        dog_stdout("dog-03-cluster-info")
    );
    assert_eq!(
        render_cluster_info(
            &formatted_status(),
            ClusterInfoOpts {
                verbose: true,
                ..utc
            }
        ),
        dog_stdout("dog-33-cluster-info-v")
    );
    assert_eq!(
        render_cluster_info(&formatted_status(), ClusterInfoOpts { raw: true, ..utc }),
        "running, auto-recovery enabled\n\n1795377796 1 [127.0.0.1:7101:128]\n"
    );
}

#[test]
fn cluster_info_variants() {
    let utc = ClusterInfoOpts {
        tz: Tz::Utc,
        ..Default::default()
    };
    // Erasure-coded default, fixed vnodes, recovery disabled, raw verbose.
    let mut st = formatted_status();
    st.logs[0].copy_policy = 0x22;
    st.logs[0].flags = 0;
    st.logs[0].disable_recovery = 1;
    assert_eq!(
        render_cluster_info(
            &st,
            ClusterInfoOpts {
                raw: true,
                verbose: true,
                ..utc
            }
        ),
        "running, auto-recovery disabled\nplain with 4:2 redundancy policy\nfixed\nnode\n1795377796 1 [127.0.0.1:7101:128]\n"
    );
    // Two epochs, -d shows what changed; the oldest says "formated".
    let mut st = formatted_status();
    let mut e2 = st.logs[0].clone();
    e2.epoch = 2;
    e2.time += 60;
    e2.nodes.push(node(7102, 64));
    st.logs.insert(0, e2);
    let out = render_cluster_info(&st, ClusterInfoOpts { diff: true, ..utc });
    assert!(out.ends_with(
        "2026-11-22 20:04:16      2 [+127.0.0.1:7102]\n2026-11-22 20:03:16      1 [formated]\n"
    ));
    let out = render_cluster_info(&st, utc);
    assert!(out.contains("      2 [127.0.0.1:7101:128, 127.0.0.1:7102:64]\n"));
    // Shutting down: the message of the result.
    let st = ClusterStatus {
        result: SdRes::SHUTDOWN,
        ..formatted_status()
    };
    assert!(
        render_cluster_info(&st, utc).starts_with("Cluster status: System is shutting down\n\n")
    );
    let j: serde_json::Value =
        serde_json::from_str(&render_cluster_info_json(&formatted_status())).unwrap();
    assert_eq!(j["running"], true);
    assert_eq!(j["copies"], 3);
    assert_eq!(j["created"], 1795377796u64);
    assert_eq!(j["epochs"][0]["nodes"][0]["port"], 7101);
    assert_eq!(j["vnodes_strategy"], "auto");
}

#[test]
fn ctime_format() {
    assert_eq!(fmt_ctime(1795377796, Tz::Utc), "Sun Nov 22 20:03:16 2026\n");
    // Single-digit days are space padded.
    assert_eq!(fmt_ctime(86400 * 3, Tz::Utc), "Sun Jan  4 00:00:00 1970\n");
}

#[test]
fn node_list_matches_dog() {
    let n = sort_nodes(&[node(7101, 128)]);
    assert_eq!(render_node_list(&n, false), dog_stdout("dog-04-node-list"));
    assert_eq!(
        render_node_list(&n, true),
        "0 127.0.0.1:7101 128 16777343\n"
    );
    // dog's order is by address then port, whatever the reply order.
    let n = sort_nodes(&[node(7002, 8), node(7001, 8), node(7001, 8)]);
    assert_eq!(n.len(), 2);
    assert_eq!(n[0].nid.port, 7001);
    let j: serde_json::Value = serde_json::from_str(&render_node_list_json(&n)).unwrap();
    assert_eq!(j[1]["port"], 7002);
    assert_eq!(j[1]["addr"], "127.0.0.1");
}

#[test]
fn node_info_matches_dog() {
    let nid = node(7101, 128).nid;
    let info = NodeInfo {
        nodes: vec![(
            nid,
            Some(NodeSpace {
                size: 79137882112,
                free: 79137882112,
            }),
        )],
        total_vdi_size: 0,
    };
    assert_eq!(
        render_node_info(&info, false),
        dog_stdout("dog-05-node-info")
    );
    let info = NodeInfo {
        nodes: vec![(
            nid,
            Some(NodeSpace {
                size: 79124299776,
                free: 79094820864,
            }),
        )],
        total_vdi_size: (5 << 40) + 2 * G + 8 * M + 12 * M,
    };
    assert_eq!(
        render_node_info(&info, false),
        dog_stdout("dog-32-node-info")
    );
    assert_eq!(
        render_node_info(&info, true),
        "0 79124299776 29478912 79094820864 0%\nTotal 79124299776 29478912 79094820864 0% 5499726594048\n"
    );
    // A node reporting no store: 0% per node; the total divides by zero as dog does.
    let info = NodeInfo {
        nodes: vec![(nid, Some(NodeSpace { size: 0, free: 0 }))],
        total_vdi_size: 0,
    };
    assert_eq!(
        render_node_info(&info, true),
        "0 0 0 0 0%\nTotal 0 0 0 -2147483648% 0\n"
    );
    let j: serde_json::Value = serde_json::from_str(&render_node_info_json(&info)).unwrap();
    assert_eq!(j["total"]["use_percent"], 0);
}

#[test]
fn lock_list_rows() {
    let e = initial_vdis();
    let h: Vec<InodeHeader> = e.iter().map(|e| e.header.clone()).collect();
    assert_eq!(
        render_lock_list(&h, &[]),
        dog_stdout("dog-26-vdi-lock-list")
    );
    let owner = NodeId::new("127.0.0.1".parse().unwrap(), 7000);
    let states = vec![
        VdiState {
            vid: 0x7c2b25,
            lock_state: lock_state::LOCKED,
            lock_owner: owner,
            ..Default::default()
        },
        VdiState {
            vid: 0xa1edc6,
            lock_state: lock_state::SHARED,
            participants: vec![(1, owner), (3, NodeId::new("::1".parse().unwrap(), 7001))],
            ..Default::default()
        },
        VdiState {
            vid: 0x98998c,
            lock_state: lock_state::UNLOCKED,
            ..Default::default()
        },
    ];
    assert_eq!(
        render_lock_list(&h, &states),
        format!(
            // "  %6x  %-13s " then " %s": 2 + 13 + 1 + 1 spaces for an empty tag.
            "{LOCK_LIST_HEADER}  test          0  7c2b25{pad}IPv4 ip:127.0.0.1 port:7000\n  pre           0  a1edc6{pad}IPv4 ip:127.0.0.1 port:7000(modified) IPv6 ip:::1 port:7001(invalidated)\n",
            pad = " ".repeat(17)
        )
    );
}

#[test]
fn c_int_conversion() {
    assert_eq!(c_double_to_int(f64::NAN), i32::MIN);
    assert_eq!(c_double_to_int(99.9), 99);
    assert_eq!(c_double_to_int(1e12), i32::MIN);
}
