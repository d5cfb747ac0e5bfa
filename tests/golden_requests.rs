//! Capture replay: a fake sheep serves the responses real sheep gave to real
//! dog (captures/dog.jsonl), and checks that sheepctl (and the dogfmt gather
//! functions) send the very same requests, byte for byte, in the same order.
//! Then sheepctl's stdout, stderr and exit code are compared with dog's
//! (captures/steps.jsonl).
//!
//! Ignored in the comparison: the request `id` (our client numbers its
//! requests) and MAKE_FS's `ctime` (the time of the format). Listings
//! (`vdi list`, `node info`, `vdi lock list`) read many inodes at once
//! instead of one after another, so in those steps the requests may come in
//! any order: each must still be one of dog's, every one of dog's must come,
//! and each gets the reply sheep gave to that very request. In the steps
//! that talk to each node (`cluster format`, `node info`) the fake server
//! rewrites the port the node advertises in GET_NODE_LIST / CLUSTER_INFO
//! replies (7101) to its own, so those requests come back to it; those steps
//! print no addresses.

mod common;

use base64::Engine;
use sha2::Digest;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Rec {
    conn: u64,
    is_req: bool,
    hdr: Vec<u8>,
    len: usize,
    payload_b64: String,
    step: String,
}

impl Rec {
    fn payload(&self) -> Vec<u8> {
        if self.len == 0 {
            return Vec::new();
        }
        let gz = base64::engine::general_purpose::STANDARD
            .decode(&self.payload_b64)
            .expect("base64");
        let mut out = Vec::with_capacity(self.len);
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out.len(), self.len);
        out
    }
}

/// One recorded request and the response sheep gave to it.
#[derive(Clone)]
struct Exchange {
    req_hdr: Vec<u8>,
    req_payload: Vec<u8>,
    rsp_hdr: Vec<u8>,
    rsp_payload: Vec<u8>,
}

fn load(file: &str) -> Vec<Rec> {
    let p = common::captures_dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            Rec {
                conn: v["conn"].as_u64().unwrap(),
                is_req: v["dir"] == "req",
                hdr: hex::decode(v["hdr"].as_str().unwrap()).unwrap(),
                len: v["len"].as_u64().unwrap() as usize,
                payload_b64: v["payload"].as_str().unwrap_or("").to_string(),
                step: v["step"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// The exchanges of `step` in request order (each response is the next
/// record on the same connection).
fn exchanges(recs: &[Rec], step: &str) -> Vec<Exchange> {
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if !r.is_req || r.step != step {
            continue;
        }
        let rsp = recs[i + 1..]
            .iter()
            .find(|x| !x.is_req && x.conn == r.conn)
            .expect("response");
        out.push(Exchange {
            req_hdr: r.hdr.clone(),
            req_payload: r.payload(),
            rsp_hdr: rsp.hdr.clone(),
            rsp_payload: rsp.payload(),
        });
    }
    out
}

fn steps() -> Vec<serde_json::Value> {
    let p = common::captures_dir().join("steps.jsonl");
    std::fs::read_to_string(p)
        .expect("steps.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ------------------------------------------------------------------ fake sheep

struct Fake {
    port: u16,
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct FakeState {
    ex: Vec<Exchange>,
    rewrite_port: bool,
    /// Requests may come in any order (listings): matched by content.
    any_order: bool,
    served: Vec<bool>,
    errors: Vec<String>,
}

impl FakeState {
    /// The recorded exchange request `h` + `payload` answers: the next one in
    /// order, or for `any_order` the first unserved one with these bytes
    /// (ignoring the id).
    fn pick(&self, h: &[u8], payload: &[u8]) -> Option<usize> {
        let mut unserved = (0..self.ex.len()).filter(|&i| !self.served[i]);
        if !self.any_order {
            return unserved.next();
        }
        let first = unserved.clone().next();
        unserved
            .find(|&i| {
                let e = &self.ex[i];
                e.req_hdr[..8] == h[..8] && e.req_hdr[12..] == h[12..] && e.req_payload == payload
            })
            .or(first)
    }
}

/// Steps that list VDIs (their inode reads are pipelined).
fn any_order(step: &str) -> bool {
    ["vdi-list", "node-info", "lock-list"]
        .iter()
        .any(|w| step.contains(w))
}

fn describe(h: &[u8]) -> String {
    format!(
        "op {:#04x} flags {:#06x} len {}",
        h[1],
        u16::from_le_bytes([h[2], h[3]]),
        u32::from_le_bytes([h[12], h[13], h[14], h[15]])
    )
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

impl Fake {
    fn start(ex: Vec<Exchange>, rewrite_port: bool, any_order: bool) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            served: vec![false; ex.len()],
            ex,
            rewrite_port,
            any_order,
            errors: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        conns.push(std::thread::spawn(move || serve(s, st, port)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Fake {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Errors, plus any recorded request that never came.
    fn finish(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut errs = st.errors.clone();
        if let Some(k) = st.served.iter().position(|&s| !s) {
            errs.push(format!(
                "only {} of {} recorded requests were sent; missing: #{k} {}",
                st.served.iter().filter(|&&s| s).count(),
                st.ex.len(),
                describe(&st.ex[k].req_hdr)
            ));
        }
        errs
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, st: Arc<Mutex<FakeState>>, port: u16) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    loop {
        let mut h = [0u8; 48];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let fl = u16::from_le_bytes([h[2], h[3]]);
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let mut payload = vec![0u8; if fl & 1 != 0 { len } else { 0 }];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let reply = {
            let mut g = st.lock().unwrap();
            let Some(k) = g.pick(&h, &payload) else {
                let n = g.ex.len();
                g.errors
                    .push(format!("unexpected request #{n}: {}", describe(&h)));
                return;
            };
            g.served[k] = true;
            let e = g.ex[k].clone();
            // Compare with the recorded request, ignoring id (8..12) and
            // MAKE_FS's ctime (24..32).
            let mut want = e.req_hdr.clone();
            let mut got = h.to_vec();
            for b in [&mut want, &mut got] {
                b[8..12].fill(0);
                if b[1] == 0x84 {
                    b[24..32].fill(0);
                }
            }
            if want != got {
                g.errors.push(format!(
                    "request #{k} header differs at byte {:?}: got {} want {} (got {}, want {})",
                    first_diff(&got, &want),
                    hex::encode(&got),
                    hex::encode(&want),
                    describe(&got),
                    describe(&want)
                ));
            } else if payload != e.req_payload {
                g.errors.push(format!(
                    "request #{k} ({}) payload differs at byte {:?} (len {} vs {})",
                    describe(&h),
                    first_diff(&payload, &e.req_payload),
                    payload.len(),
                    e.req_payload.len()
                ));
            }
            let mut rh = e.rsp_hdr.clone();
            rh[8..12].copy_from_slice(&h[8..12]);
            let mut rp = e.rsp_payload.clone();
            match if g.rewrite_port { rh[1] } else { 0 } {
                // sd_node.port of every node in GET_NODE_LIST.
                0x82 => {
                    for n in rp.chunks_exact_mut(80) {
                        n[40..42].copy_from_slice(&port.to_le_bytes());
                    }
                }
                // cluster_info.nodes[i].port.
                0xbe if rp.len() >= 48 => {
                    let nr = u16::from_le_bytes([rp[2], rp[3]]) as usize;
                    for i in 0..nr {
                        let o = 48 + 80 * i + 40;
                        if o + 2 <= rp.len() {
                            rp[o..o + 2].copy_from_slice(&port.to_le_bytes());
                        }
                    }
                }
                _ => {}
            }
            (rh, rp)
        };
        if s.write_all(&reply.0).is_err() || s.write_all(&reply.1).is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------------ sheepctl steps

fn pattern_a(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn pattern_b(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((3 * i + 7) % 256) as u8).collect()
}

fn stdin_for(file: &str) -> Vec<u8> {
    match file {
        "yes.txt" => b"yes\n".to_vec(),
        f if f.starts_with("patA-") => pattern_a(f[5..f.len() - 4].parse().unwrap()),
        f if f.starts_with("patB-") => pattern_b(f[5..f.len() - 4].parse().unwrap()),
        f => panic!("unknown stdin file {f}"),
    }
}

/// Steps whose requests go to each node's advertised address.
fn per_node(step: &str) -> bool {
    step.contains("cluster-format") || step.contains("node-info")
}

/// Replays one dog step; returns the problems found.
fn replay_step(recs: &[Rec], step: &serde_json::Value) -> Vec<String> {
    let name = step["step"].as_str().unwrap();
    let fake = Fake::start(exchanges(recs, name), per_node(name), any_order(name));
    let cmd = step["command"].as_str().unwrap();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(words[0], "dog");
    let mut args = Vec::new();
    let mut stdin = Vec::new();
    let mut i = 1;
    while i < words.len() {
        match words[i] {
            "<" => {
                stdin = stdin_for(words[i + 1]);
                i += 2;
                continue;
            }
            "7100" => args.push(fake.port.to_string()),
            w => args.push(w.to_string()),
        }
        i += 1;
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = common::run_sheepctl(&args, &stdin, &[("TZ", "UTC")], Duration::from_secs(120));
    let mut errs = fake.finish();
    let want_rc = step["rc"].as_i64().unwrap() as i32;
    if r.code != want_rc {
        errs.push(format!("exit code {} (dog: {want_rc})", r.code));
    }
    if r.stderr != step["stderr"].as_str().unwrap_or("") {
        errs.push(format!("stderr {:?} (dog: {:?})", r.stderr, step["stderr"]));
    }
    match step["stdout"].as_str() {
        Some(want) => {
            let got = String::from_utf8_lossy(&r.stdout);
            if got != want {
                errs.push(format!("stdout {got:?}\n   dog: {want:?}"));
            }
        }
        None => {
            let len = step["stdout_len"].as_u64().unwrap() as usize;
            let sha = hex::encode(sha2::Sha256::digest(&r.stdout));
            if r.stdout.len() != len || sha != step["stdout_sha256"].as_str().unwrap() {
                errs.push(format!(
                    "stdout: {} bytes sha256 {sha} (dog: {len} bytes, {})",
                    r.stdout.len(),
                    step["stdout_sha256"]
                ));
            }
        }
    }
    errs.into_iter().map(|e| format!("{name}: {e}")).collect()
}

#[test]
fn sheepctl_sends_dogs_requests_and_prints_dogs_output() {
    let recs = load("dog.jsonl");
    let mut problems = Vec::new();
    let mut n = 0;
    for step in steps() {
        if step["client"] != "dog" {
            continue;
        }
        n += 1;
        problems.extend(replay_step(&recs, &step));
    }
    assert_eq!(n, 34, "dog steps in steps.jsonl");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ------------------------------------------------------------------ dogfmt gather functions

/// The library renderers that sheepfs uses must send dog's requests too and
/// produce dog's text.
#[test]
fn dogfmt_gathers_like_dog() {
    // Only this test renders local time in this process.
    std::env::set_var("TZ", "UTC");
    let dog = load("dog.jsonl");
    let sheepfs = load("sheepfs.jsonl");
    let texts: HashMap<String, String> = steps()
        .into_iter()
        .filter_map(|s| {
            Some((
                s["step"].as_str()?.to_string(),
                s["stdout"].as_str()?.to_string(),
            ))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    type Gather = fn(
        sheepfs::client::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = sheepfs::client::Result<String>>>,
    >;
    let cases: Vec<(&[Rec], &str, Gather)> = vec![
        (&dog, "dog-01-cluster-info-unformatted", |c| {
            Box::pin(async move { sheepfs::dogfmt::cluster_info(&c, false, false).await })
        }),
        (&dog, "dog-03-cluster-info", |c| {
            Box::pin(async move { sheepfs::dogfmt::cluster_info(&c, false, false).await })
        }),
        (&dog, "dog-33-cluster-info-v", |c| {
            Box::pin(async move { sheepfs::dogfmt::cluster_info(&c, false, true).await })
        }),
        (&sheepfs, "sheepfs-02-cat-cluster-info", |c| {
            Box::pin(async move { sheepfs::dogfmt::cluster_info(&c, false, false).await })
        }),
        (&dog, "dog-04-node-list", |c| {
            Box::pin(async move { sheepfs::dogfmt::node_list(&c, false).await })
        }),
        (&dog, "dog-05-node-info", |c| {
            Box::pin(async move { sheepfs::dogfmt::node_info(&c, false).await })
        }),
        (&dog, "dog-32-node-info", |c| {
            Box::pin(async move { sheepfs::dogfmt::node_info(&c, false).await })
        }),
        (&dog, "dog-10-vdi-list", |c| {
            Box::pin(async move { sheepfs::dogfmt::vdi_list(&c, false, None).await })
        }),
        (&dog, "dog-25-vdi-list", |c| {
            Box::pin(async move { sheepfs::dogfmt::vdi_list(&c, false, None).await })
        }),
        (&dog, "dog-31-vdi-list-r", |c| {
            Box::pin(async move { sheepfs::dogfmt::vdi_list(&c, true, None).await })
        }),
        (&sheepfs, "sheepfs-03-cat-vdi-list", |c| {
            Box::pin(async move { sheepfs::dogfmt::vdi_list(&c, false, None).await })
        }),
        (&dog, "dog-26-vdi-lock-list", |c| {
            Box::pin(async move { sheepfs::dogfmt::vdi_lock_list(&c).await })
        }),
    ];
    let mut problems = Vec::new();
    for (recs, step, f) in cases {
        let fake = Fake::start(exchanges(recs, step), per_node(step), any_order(step));
        let client = sheepfs::client::Client::new(
            sheepfs::client::SheepAddr::tcp("127.0.0.1", fake.port),
            sheepfs::client::Options {
                connections: 1,
                retry_timeout: Duration::ZERO,
                ..Default::default()
            },
        );
        let got = rt.block_on(f(client));
        problems.extend(fake.finish().into_iter().map(|e| format!("{step}: {e}")));
        match got {
            Ok(text) => {
                if &text != texts.get(step).expect("stdout") {
                    problems.push(format!("{step}: text {text:?}\n   dog: {:?}", texts[step]));
                }
            }
            Err(e) => problems.push(format!("{step}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------------------------ client ops

type Op = fn(
    sheepfs::client::Client,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;

/// The client library's high-level operations send dog's bytes for the core
/// of each command (dog's node-list preamble and format checks, which the
/// library does not do, are skipped: `skip` = recorded requests left out).
#[test]
fn client_ops_send_dogs_requests() {
    use sheepfs::client::{CreateOptions, SnapSel};
    let dog = load("dog.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fn e<T>(r: sheepfs::client::Result<T>) -> Result<(), String> {
        r.map(|_| ()).map_err(|e| e.to_string())
    }
    let cases: Vec<(&str, usize, Op)> = vec![
        ("dog-02-cluster-format", 4, |c| {
            Box::pin(async move { e(c.make_fs(0, 0, 0x4, 0, "plain").await) })
        }),
        ("dog-06-vdi-create-test-1G", 2, |c| {
            Box::pin(async move {
                e(c.create_vdi("test", 1 << 30, &CreateOptions::default())
                    .await)
            })
        }),
        ("dog-07-vdi-create-P-pre-12M", 2, |c| {
            Box::pin(async move {
                let o = CreateOptions {
                    prealloc: true,
                    ..Default::default()
                };
                e(c.create_vdi("pre", 12 << 20, &o).await)
            })
        }),
        ("dog-08-vdi-create-z20-small-8M", 2, |c| {
            Box::pin(async move {
                let o = CreateOptions {
                    block_size_shift: Some(20),
                    ..Default::default()
                };
                e(c.create_vdi("small", 8 << 20, &o).await)
            })
        }),
        ("dog-09-vdi-create-y-hyper-5T", 2, |c| {
            Box::pin(async move {
                let o = CreateOptions {
                    hyper: true,
                    ..Default::default()
                };
                e(c.create_vdi("hyper", 5 << 40, &o).await)
            })
        }),
        ("dog-19-vdi-snapshot-s-snap1-test", 0, |c| {
            Box::pin(async move { e(c.snapshot_vdi("test", "snap1").await) })
        }),
        ("dog-20-vdi-clone-s-snap1-test-clone1", 0, |c| {
            Box::pin(async move {
                e(c.clone_vdi("test", &SnapSel::Tag("snap1".into()), "clone1")
                    .await)
            })
        }),
        ("dog-24-vdi-resize-test-2G", 0, |c| {
            Box::pin(async move { e(c.resize_vdi("test", 2 << 30).await) })
        }),
        ("dog-27-vdi-setattr-test-key-value", 0, |c| {
            Box::pin(async move { e(c.set_attr("test", "key", b"value", false, false).await) })
        }),
        ("dog-28-vdi-getattr-test-key", 0, |c| {
            Box::pin(async move {
                match c.get_attr("test", "key").await {
                    Ok(v) if v == b"value" => Ok(()),
                    Ok(v) => Err(format!("value {v:?}")),
                    Err(x) => Err(x.to_string()),
                }
            })
        }),
        ("dog-29-vdi-delete-clone1", 0, |c| {
            Box::pin(async move { e(c.delete_vdi("clone1", &SnapSel::Working).await) })
        }),
        ("dog-30-vdi-delete-s-snap1-test", 0, |c| {
            Box::pin(async move { e(c.delete_vdi("test", &SnapSel::Tag("snap1".into())).await) })
        }),
        ("dog-34-cluster-shutdown", 0, |c| {
            Box::pin(async move { e(c.shutdown().await) })
        }),
    ];
    let mut problems = Vec::new();
    for (step, skip, f) in cases {
        let ex: Vec<Exchange> = exchanges(&dog, step).into_iter().skip(skip).collect();
        let fake = Fake::start(ex, false, false);
        let client = sheepfs::client::Client::new(
            sheepfs::client::SheepAddr::tcp("127.0.0.1", fake.port),
            sheepfs::client::Options {
                connections: 1,
                retry_timeout: Duration::ZERO,
                ..Default::default()
            },
        );
        if let Err(x) = rt.block_on(f(client)) {
            problems.push(format!("{step}: {x}"));
        }
        problems.extend(fake.finish().into_iter().map(|x| format!("{step}: {x}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
