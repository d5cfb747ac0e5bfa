//! sheepfs and sheepctl with 2,000 VDIs on sheep-lite: the state files equal
//! sheepctl's output and dog's formats, looking at the tree sends nothing to
//! the cluster, concurrent opens share a render, each open sees the cluster
//! afresh, and memory stays bounded. sheepfs talks to sheep-lite through a
//! proxy that counts requests by opcode.

mod common;
mod sheepfs_common;

use common::{pattern, SheepLite};
use sheepfs::proto::op;
use sheepfs_common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const VDIS: usize = 2000;

/// Requests seen by opcode.
struct Counts([AtomicU64; 256]);

impl Counts {
    fn get(&self, opcode: u8) -> u64 {
        self.0[opcode as usize].load(Ordering::SeqCst)
    }
    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }
}

/// A TCP proxy to sheep-lite on 127.0.0.1 counting requests by opcode.
fn counting_proxy(port: u16) -> (u16, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let me = l.local_addr().expect("addr").port();
    let counts = Arc::new(Counts(std::array::from_fn(|_| AtomicU64::new(0))));
    let c = counts.clone();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (mut d2, mut u2) = (down.try_clone().expect("dup"), up.try_clone().expect("dup"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(std::net::Shutdown::Both);
            });
            let c = c.clone();
            std::thread::spawn(move || forward_requests(down, up, &c));
        }
    });
    (me, counts)
}

fn forward_requests(mut from: TcpStream, mut to: TcpStream, c: &Counts) {
    loop {
        let mut h = [0u8; 48];
        if from.read_exact(&mut h).is_err() {
            let _ = to.shutdown(std::net::Shutdown::Both);
            return;
        }
        c.0[h[1] as usize].fetch_add(1, Ordering::SeqCst);
        let write = u16::from_le_bytes([h[2], h[3]]) & 1 != 0;
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let mut payload = vec![0u8; if write { len } else { 0 }];
        if from.read_exact(&mut payload).is_err()
            || to.write_all(&h).is_err()
            || to.write_all(&payload).is_err()
        {
            let _ = to.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// 2,000 thin VDIs, created many at a time through the client, plus data,
/// a snapshot, a clone and a hyper volume so every column has something.
fn populate(s: &SheepLite) {
    use futures::StreamExt;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = s.client();
    rt.block_on(async {
        let opts = sheepfs::client::CreateOptions::default();
        let mut made = futures::stream::iter(0..VDIS)
            .map(|i| {
                let (c, opts) = (&c, &opts);
                async move { c.create_vdi(&format!("vm-{i:05}"), 1 << 30, opts).await }
            })
            .buffer_unordered(32);
        while let Some(r) = made.next().await {
            r.expect("create VDI");
        }
    });
    s.ctl_stdin(
        &["vdi", "write", "vm-00007", "0", "8192"],
        &pattern(8192, 3),
    )
    .assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "vm-00007"])
        .assert_ok();
    s.ctl(&["vdi", "clone", "-s", "s1", "vm-00007", "clone-a"])
        .assert_ok();
    s.ctl(&["vdi", "create", "-y", "hyper-a", "5T"]).assert_ok();
}

fn cat(m: &Mount, rel: &str) -> String {
    m.read_string(rel)
}

/// Every file and directory of the fixed tree.
fn tree_paths(m: &Mount) -> Vec<std::path::PathBuf> {
    let mut v = vec![m.p("")];
    for d in ["cluster", "vdi", "node", "config", "volume", "stats"] {
        let dir = m.p(d);
        v.push(dir.clone());
        for e in std::fs::read_dir(&dir).expect("readdir") {
            v.push(e.expect("entry").path());
        }
    }
    v
}

#[test]
fn two_thousand_vdis() {
    // The store in memory when possible: 2,000 creates on a loaded disk
    // would spend the test's minute in fsync.
    let shm = std::path::Path::new("/dev/shm");
    let s = if shm.is_dir() {
        SheepLite::start_in(shm)
    } else {
        SheepLite::start()
    };
    s.ctl(&["cluster", "format"]).assert_ok();
    populate(&s);
    let (port, counts) = counting_proxy(s.port);
    let port = port.to_string();
    let m = Mount::start_args(&["-a", "127.0.0.1", "-p", &port]);

    // Looking at the tree (stat, ls -l, lookups) asks the cluster nothing,
    // before and after the state files were first rendered.
    for round in 0..2 {
        let before = counts.total();
        for p in tree_paths(&m) {
            std::fs::metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            if p.is_dir() {
                for e in std::fs::read_dir(&p).expect("readdir") {
                    e.expect("entry").metadata().expect("ls -l");
                }
            }
        }
        assert_eq!(
            counts.total(),
            before,
            "stat/ls -l of the tree sent requests (round {round}); READ_VDIS {}",
            counts.get(op::READ_VDIS)
        );
        if round == 0 {
            for f in ["vdi/list", "vdi/list.json", "node/info", "node/info.json"] {
                cat(&m, f);
            }
        }
    }

    // The state files equal sheepctl's output (itself dog's, byte for byte,
    // see golden_requests) and dog's formats.
    let want = s.ctl(&["vdi", "list"]).assert_ok().text();
    assert_eq!(want.lines().count(), 1 + VDIS + 3, "sheepctl vdi list rows");
    let vdis_before = counts.get(op::READ_VDIS);
    assert_eq!(cat(&m, "vdi/list"), want, "vdi/list differs from sheepctl");
    assert_eq!(
        counts.get(op::READ_VDIS) - vdis_before,
        1,
        "one listing reads the bitmap once"
    );
    // stat shows the size of the last rendering.
    assert_eq!(
        std::fs::metadata(m.p("vdi/list")).expect("stat").len(),
        want.len() as u64
    );
    assert_eq!(
        cat(&m, "node/info"),
        s.ctl(&["node", "info"]).assert_ok().text(),
        "node/info differs from sheepctl"
    );
    let c = s.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let entries = rt.block_on(c.list_vdis()).expect("list_vdis");
    assert_eq!(entries.len(), VDIS + 3);
    assert_eq!(
        cat(&m, "vdi/list.json"),
        sheepfs::dogfmt::render_vdi_list_json(&entries),
        "vdi/list.json differs from the formatter of the whole list"
    );
    let ni: serde_json::Value =
        serde_json::from_str(&cat(&m, "node/info.json")).expect("node/info.json");
    let total: u64 = entries
        .iter()
        .filter(|e| !e.header.is_snapshot())
        .map(|e| e.header.vdi_size)
        .sum();
    assert_eq!(ni["total_vdi_size"], total);
    assert_eq!(total, (VDIS as u64 + 1) * (1 << 30) + (5 << 40));

    // Concurrent opens: identical text, and they share renders.
    let n = 8;
    let bar = Arc::new(Barrier::new(n));
    let vdis_before = counts.get(op::READ_VDIS);
    let texts: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let (bar, p) = (bar.clone(), m.p("vdi/list"));
                sc.spawn(move || {
                    bar.wait();
                    let mut t = String::new();
                    std::fs::File::open(p)
                        .and_then(|mut f| f.read_to_string(&mut t))
                        .expect("cat vdi/list");
                    t
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("reader")).collect()
    });
    for t in &texts {
        assert_eq!(t, &want, "a concurrent cat vdi/list differs");
    }
    let renders = counts.get(op::READ_VDIS) - vdis_before;
    assert!(
        (1..n as u64).contains(&renders),
        "{n} concurrent opens made {renders} renders"
    );

    // A VDI created or deleted between two opens shows in the second.
    s.ctl(&["vdi", "create", "fresh-one", "1G"]).assert_ok();
    assert!(cat(&m, "vdi/list").contains(" fresh-one "));
    s.ctl(&["vdi", "delete", "fresh-one"]).assert_ok();
    let after = cat(&m, "vdi/list");
    assert!(!after.contains(" fresh-one "));
    assert_eq!(after, want);

    // Nothing of the listings is kept: RSS stays under the bound.
    let rss = rss_kib(m.pid().expect("pid"));
    assert!(rss < 48 << 10, "sheepfs RSS {rss} KiB after listing");
    // The pipelined listing answers like dog's one-at-a-time one.
    assert_eq!(
        s.ctl(&["vdi", "list", "-r"])
            .assert_ok()
            .text()
            .lines()
            .count(),
        VDIS + 3
    );
}
