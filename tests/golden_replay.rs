//! Golden replay: the byte-exact captures of real dog, sheepfs and tgt talking
//! to a real sheep (tests/data, copied from the reference captures) are replayed against a fresh
//! sheep-lite, and every reply (header and payload) is compared with the
//! recorded one.
//!
//! Ignored: only the fields README §6 lists as varying between runs (times,
//! disk sizes), the node's own address/port/zone (the capture's sheep was
//! 127.0.0.1:7101, ours listens elsewhere), and one intended difference:
//! FLUSH_VDI answers SUCCESS on sheep-lite (it syncs writes sent with
//! CMD_CACHE) where sheep answers INVALID_PARMS; clients accept both.
//! Time fields must still agree on being zero or not (a snapshot must have a
//! non-zero snap_ctime).

mod common;

use base64::Engine;
use common::{captures_dir, SheepLite};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Rec {
    seq: u64,
    conn: u64,
    req: bool,
    hdr: [u8; 48],
    payload: Vec<u8>,
    step: String,
}

fn load(file: &str) -> Vec<Rec> {
    let path = captures_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            let hdr: [u8; 48] = hex::decode(v["hdr"].as_str().expect("hdr"))
                .expect("hex")
                .try_into()
                .expect("48 bytes");
            let len = v["len"].as_u64().expect("len") as usize;
            let payload = if len == 0 {
                Vec::new()
            } else {
                let gz = base64::engine::general_purpose::STANDARD
                    .decode(v["payload"].as_str().expect("payload"))
                    .expect("base64");
                let mut out = Vec::with_capacity(len);
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut out)
                    .expect("gzip");
                out
            };
            assert_eq!(payload.len(), len);
            Rec {
                seq: v["seq"].as_u64().expect("seq"),
                conn: v["conn"].as_u64().expect("conn"),
                req: v["dir"] == "req",
                hdr,
                payload,
                step: v["step"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// How a byte range of a reply is compared.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Rule {
    /// Varies between runs, but zero must stay zero and non-zero non-zero.
    Time,
    /// Varies (disk sizes, the node's address, port and zone).
    Ignore,
}

/// (absolute offset range in the payload, rule, field name)
type Mask = Vec<(usize, usize, Rule, String)>;

/// Node address/port (24..42) and zone/space (68..80) of an sd_node at `base`.
fn node_mask(m: &mut Mask, base: usize, what: &str) {
    m.push((
        base + 24,
        base + 42,
        Rule::Ignore,
        format!("{what}.nid (address, port)"),
    ));
    m.push((base + 68, base + 72, Rule::Ignore, format!("{what}.zone")));
    m.push((base + 72, base + 80, Rule::Ignore, format!("{what}.space")));
}

fn inode_field(abs: usize) -> String {
    const GREF: usize = 4_198_968;
    match abs {
        0..=255 => "inode.name".into(),
        256..=511 => "inode.tag".into(),
        512..=519 => "inode.create_time".into(),
        520..=527 => "inode.snap_ctime".into(),
        528..=535 => "inode.vm_clock_nsec".into(),
        536..=543 => "inode.vdi_size".into(),
        544..=551 => "inode.vm_state_size".into(),
        552 => "inode.copy_policy".into(),
        553 => "inode.store_policy".into(),
        554 => "inode.nr_copies".into(),
        555 => "inode.block_size_shift".into(),
        556..=559 => "inode.snap_id".into(),
        560..=563 => "inode.vdi_id".into(),
        564..=567 => "inode.parent_vdi_id".into(),
        568..=571 => "inode.btree_counter".into(),
        572..=4663 => "inode.unused".into(),
        4664..=4_198_967 => format!("inode.data_vdi_id[{}]", (abs - 4664) / 4),
        _ if abs >= GREF => {
            let i = (abs - GREF) / 8;
            let f = if (abs - GREF) % 8 < 4 {
                "generation"
            } else {
                "count"
            };
            format!("inode.gref[{i}].{f}")
        }
        _ => format!("inode+{abs}"),
    }
}

/// The mask and a field namer for a reply to `req`.
fn reply_mask(req: &[u8; 48], rsp_len: usize) -> (Mask, Box<dyn Fn(usize) -> String>) {
    let opcode = req[1];
    let mut m = Mask::new();
    match opcode {
        0x82 => {
            // GET_NODE_LIST
            for i in 0..rsp_len / 80 {
                node_mask(&mut m, 80 * i, &format!("nodes[{i}]"));
            }
            (m, Box::new(|o| format!("sd_node[{}]+{}", o / 80, o % 80)))
        }
        0x87 => {
            // STAT_CLUSTER: records of 48 + 80·N bytes.
            let n = u32_at(req, 40) as usize;
            let stride = 48 + 80 * n;
            for r in 0..rsp_len / stride {
                let b = r * stride;
                m.push((b, b + 8, Rule::Time, format!("epoch_log[{r}].ctime")));
                m.push((b + 8, b + 16, Rule::Time, format!("epoch_log[{r}].time")));
                for k in 0..n {
                    node_mask(
                        &mut m,
                        b + 48 + 80 * k,
                        &format!("epoch_log[{r}].nodes[{k}]"),
                    );
                }
            }
            (
                m,
                Box::new(move |o| format!("epoch_log[{}]+{}", o / stride, o % stride)),
            )
        }
        0xbe => {
            // CLUSTER_INFO
            m.push((8, 16, Rule::Time, "cluster_info.ctime".into()));
            for i in 0..6144 {
                node_mask(&mut m, 48 + 80 * i, &format!("cluster_info.nodes[{i}]"));
            }
            (m, Box::new(|o| format!("cluster_info+{o}")))
        }
        0x02 => {
            let oid = u64_at(req, 16);
            let off = u32_at(req, 40) as usize;
            if oid & (1 << 63) != 0 {
                // Inode: create_time and snap_ctime vary.
                for (s, e, name) in [
                    (512, 520, "inode.create_time"),
                    (520, 528, "inode.snap_ctime"),
                ] {
                    if off < e && off + rsp_len > s {
                        m.push((
                            s.max(off) - off,
                            e.min(off + rsp_len) - off,
                            Rule::Time,
                            name.into(),
                        ));
                    }
                }
                (m, Box::new(move |o| inode_field(o + off)))
            } else if oid & (1 << 61) != 0 {
                if off <= 512 && off + rsp_len >= 520 {
                    m.push((512 - off, 520 - off, Rule::Time, "attr.ctime".into()));
                }
                (m, Box::new(move |o| format!("vdi_attr+{}", o + off)))
            } else {
                (
                    m,
                    Box::new(move |o| format!("object {oid:016x}+{}", o + off)),
                )
            }
        }
        _ => (m, Box::new(|o| format!("payload+{o}"))),
    }
}

/// Compares `got` with `want` under `mask`; returns the first difference.
fn diff(got: &[u8], want: &[u8], mask: &Mask, name: &dyn Fn(usize) -> String) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} (recorded {})", got.len(), want.len()));
    }
    let mut rule_at = vec![None; 0];
    if !mask.is_empty() {
        rule_at = vec![None; got.len()];
        for (s, e, r, n) in mask {
            for slot in rule_at.iter_mut().take((*e).min(got.len())).skip(*s) {
                *slot = Some((*r, n.as_str()));
            }
        }
    }
    let mut i = 0;
    while i < got.len() {
        if got[i] == want[i] {
            i += 1;
            continue;
        }
        match rule_at.get(i).copied().flatten() {
            Some((Rule::Ignore, _)) => i += 1,
            Some((Rule::Time, fname)) => {
                // Compare zero-ness of the whole field.
                let (s, e) = mask
                    .iter()
                    .find(|(s, e, _, _)| (*s..*e).contains(&i))
                    .map(|(s, e, _, _)| (*s, *e))
                    .unwrap_or((i, i + 1));
                let gz = got[s..e].iter().all(|&b| b == 0);
                let wz = want[s..e].iter().all(|&b| b == 0);
                if gz != wz {
                    return Some(format!(
                        "offset {s} ({fname}): zero={gz}, recorded zero={wz}"
                    ));
                }
                i = e;
            }
            None => {
                return Some(format!(
                    "offset {i} ({}): got {:#04x}, recorded {:#04x}",
                    name(i),
                    got[i],
                    want[i]
                ))
            }
        }
    }
    None
}

fn read_reply(s: &mut TcpStream) -> ([u8; 48], Vec<u8>) {
    let mut h = [0u8; 48];
    s.read_exact(&mut h).expect("reply header");
    let len = u32_at(&h, 12) as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).expect("reply payload");
    (h, data)
}

#[test]
fn replay_dog_sheepfs_tgt_captures() {
    let mut recs: Vec<Rec> = ["dog.jsonl", "sheepfs.jsonl", "tgt.jsonl"]
        .iter()
        .flat_map(|f| load(f))
        .collect();
    // The global order: dog up to dog-33, sheepfs, tgt, then dog-34.
    recs.sort_by_key(|r| r.seq);
    let mut by_conn: HashMap<u64, std::collections::VecDeque<usize>> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        if !r.req {
            by_conn.entry(r.conn).or_default().push_back(i);
        }
    }

    let mut sheep = SheepLite::start();
    let mut conns: HashMap<u64, TcpStream> = HashMap::new();
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut shutdown_sent = false;
    for r in recs.iter().filter(|r| r.req) {
        let s = conns.entry(r.conn).or_insert_with(|| {
            let s = TcpStream::connect(("127.0.0.1", sheep.port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.set_nodelay(true).unwrap();
            s
        });
        s.write_all(&r.hdr).expect("send header");
        s.write_all(&r.payload).expect("send payload");
        let (got_h, got_d) = read_reply(s);
        let want_i = by_conn
            .get_mut(&r.conn)
            .and_then(|q| q.pop_front())
            .expect("recorded reply");
        let want = &recs[want_i];
        compared += 1;
        let opcode = r.hdr[1];
        shutdown_sent |= opcode == 0x85;
        let ctx = format!(
            "seq {} ({}, conn {}, opcode {:#04x})",
            want.seq, r.step, r.conn, opcode
        );

        // Header: everything except STAT_SHEEP's store sizes, and FLUSH_VDI's
        // result (intended difference).
        let mut hmask = Mask::new();
        if opcode == 0x86 {
            hmask.push((32, 48, Rule::Ignore, "node.store_size/free".into()));
        }
        let mut want_h = want.hdr;
        if opcode == 0x16 && u32_at(&want_h, 16) == 0x05 {
            want_h[16..20].copy_from_slice(&0u32.to_le_bytes());
        }
        let hname = |o: usize| {
            match o {
                0 => "proto_ver",
                1 => "opcode",
                2..=3 => "flags",
                4..=7 => "epoch",
                8..=11 => "id",
                12..=15 => "data_length",
                16..=19 => "result",
                _ => "union",
            }
            .to_string()
                + &format!(" (byte {o})")
        };
        if let Some(d) = diff(&got_h, &want_h, &hmask, &hname) {
            failures.push(format!(
                "{ctx}: reply header differs at {d}\n  got      {}\n  recorded {}",
                hex::encode(got_h),
                hex::encode(want_h)
            ));
            continue;
        }
        let (mask, namer) = reply_mask(&r.hdr, want.payload.len());
        if let Some(d) = diff(&got_d, &want.payload, &mask, &*namer) {
            failures.push(format!("{ctx}: reply payload differs: {d}"));
        }
    }
    assert!(compared > 1700, "only {compared} replies compared");
    for f in failures.iter().take(40) {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} replies differ (first shown above)",
        failures.len()
    );

    // dog-34 was `dog cluster shutdown`: the server must exit cleanly.
    assert!(shutdown_sent);
    drop(conns);
    let status = sheep.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SHUTDOWN"
    );
    assert!(!sheep.sock().exists(), "socket file left behind");
}
