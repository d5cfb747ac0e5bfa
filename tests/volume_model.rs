//! A model of [`Volume`]: proptest generates sequences of operations (write,
//! read, discard, write-zeroes, a snapshot taken underneath by another
//! client, clone, resize, reopen, client cache on/off, server restart) and
//! runs each against a fresh sheep-lite, comparing every read with an
//! in-memory model: the bytes of the working VDI plus the snapshot/clone
//! tree. Some cases run with injected faults (requests delayed past the
//! client's timeout, so they are retried and fenced; READ_OBJ errors): an
//! operation that fails leaves its range unknown in the model until it is
//! written again. A failing sequence is shrunk to a minimal one.
//!
//! `SHEEPFS_MODEL_CASES` sets the number of cases (default 40, about a minute).
//! Needs sheep-lite built with `--features fault-injection`.
#![cfg(feature = "fault-injection")]

mod common;

use common::SheepLite;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sheepfs::client::{Client, CreateOptions, ObjectCache, OpenOptions, Options, SnapSel, Volume};
use std::sync::Arc;
use std::time::Duration;

const OBJ: u64 = 1 << 20;
const SIZE0: u64 = 4 * OBJ;
const MAX_IO: u64 = 384 << 10;

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u8,
    },
    Read {
        off: u64,
        len: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    WriteZeroes {
        off: u64,
        len: u64,
    },
    /// Discard of whole objects `idx..idx+n`.
    DiscardObjects {
        idx: u64,
        n: u64,
    },
    Snapshot,
    /// Reads snapshot `i % snapshots` (whole, compared with its model).
    ReadSnapshot {
        i: usize,
    },
    /// Clones snapshot `i % snapshots` and writes into the clone.
    Clone {
        i: usize,
        off: u64,
        len: u64,
        seed: u8,
    },
    Resize {
        grow: u64,
    },
    Reopen,
    Cache {
        on: bool,
    },
    Restart,
}

/// Offsets are fractions of the size at run time, so shrinking keeps them valid.
fn op() -> impl Strategy<Value = Op> {
    let frac = 0u64..1000;
    let len = 1u64..MAX_IO;
    prop_oneof![
        6 => (frac.clone(), len.clone(), any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        4 => (frac.clone(), len.clone()).prop_map(|(off, len)| Op::Read { off, len }),
        1 => (frac.clone(), len.clone()).prop_map(|(off, len)| Op::Discard { off, len }),
        1 => (frac.clone(), len.clone()).prop_map(|(off, len)| Op::WriteZeroes { off, len }),
        1 => (0u64..6, 1u64..3).prop_map(|(idx, n)| Op::DiscardObjects { idx, n }),
        1 => Just(Op::Snapshot),
        1 => (0usize..8).prop_map(|i| Op::ReadSnapshot { i }),
        1 => (0usize..8, frac.clone(), len.clone(), any::<u8>()).prop_map(|(i, off, len, seed)| Op::Clone { i, off, len, seed }),
        1 => (0u64..3 * OBJ).prop_map(|grow| Op::Resize { grow }),
        1 => Just(Op::Reopen),
        1 => any::<bool>().prop_map(|on| Op::Cache { on }),
        1 => Just(Op::Restart),
    ]
}

/// Bytes and which of them are known (a failed write leaves its range unknown).
#[derive(Debug, Clone)]
struct Image {
    bytes: Vec<u8>,
    known: Vec<bool>,
}

impl Image {
    fn zeroed(size: u64) -> Image {
        Image {
            bytes: vec![0; size as usize],
            known: vec![true; size as usize],
        }
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn put(&mut self, off: u64, data: &[u8]) {
        let r = off as usize..off as usize + data.len();
        self.bytes[r.clone()].copy_from_slice(data);
        self.known[r].fill(true);
    }
    fn forget(&mut self, off: u64, len: u64) {
        self.known[off as usize..(off + len) as usize].fill(false);
    }
    /// Compares `got`, read at `off`, with the known bytes.
    fn check(&self, what: &str, off: u64, got: &[u8]) -> Result<(), TestCaseError> {
        let want = &self.bytes[off as usize..off as usize + got.len()];
        let known = &self.known[off as usize..off as usize + got.len()];
        if let Some(i) = (0..got.len()).find(|&i| known[i] && got[i] != want[i]) {
            return Err(TestCaseError::fail(format!(
                "{what}: byte {} is {:#04x}, the model says {:#04x}",
                off + i as u64,
                got[i],
                want[i]
            )));
        }
        Ok(())
    }
}

fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// `(off, len)` inside `size` from a fraction and a length.
fn place(size: u64, frac: u64, len: u64) -> (u64, u64) {
    let off = size * frac / 1000;
    (off, len.clamp(1, size - off))
}

struct World {
    server: SheepLite,
    /// The volume's client (short timeouts when faults are injected).
    client: Client,
    /// For VDI operations (not retried: never given short timeouts).
    admin: Client,
    vol: Volume,
    cache: Option<Arc<ObjectCache>>,
    model: Image,
    /// (tag, image) of each snapshot, oldest first.
    snaps: Vec<(String, Image)>,
    clones: usize,
}

fn options(faults: bool) -> Options {
    Options {
        request_timeout: if faults {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(30)
        },
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Up to three tries: an injected READ_OBJ error never hits two in a row.
async fn again<T, F, Fut>(what: &str, mut f: F) -> Result<T, TestCaseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sheepfs::client::Result<T>>,
{
    let mut last = None;
    for _ in 0..3 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(TestCaseError::fail(format!("{what}: {last:?}")))
}

async fn open_sel(
    c: &Client,
    name: &str,
    snapshot: SnapSel,
    cache: Option<Arc<ObjectCache>>,
) -> Result<Volume, TestCaseError> {
    again("open", || {
        Volume::open(
            c.clone(),
            name,
            OpenOptions {
                snapshot: snapshot.clone(),
                cache: cache.clone(),
                ..Default::default()
            },
        )
    })
    .await
}

async fn open(
    c: &Client,
    name: &str,
    cache: Option<Arc<ObjectCache>>,
) -> Result<Volume, TestCaseError> {
    open_sel(c, name, SnapSel::Working, cache).await
}

/// Whether `name[@sel]` exists (an operation that failed may have happened).
async fn exists(c: &Client, name: &str, sel: &SnapSel) -> bool {
    c.vdi_lookup(name, sel).await.is_ok()
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> TestCaseError + '_ {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

impl World {
    async fn new(faults: bool) -> World {
        let env: &[(&str, &str)] = if faults {
            &[(
                "SHEEP_LITE_REQ_FAULTS",
                "WRITE_OBJ:5/17:delay=400,READ_OBJ:7/23:delay=400,READ_OBJ:11/29:eio",
            )]
        } else {
            &[]
        };
        let server = SheepLite::start_with_env(env);
        server.ctl(&["cluster", "format"]).assert_ok();
        let client = Client::new(server.addr(), options(faults));
        let admin = Client::new(server.addr(), options(false));
        admin
            .create_vdi(
                "m",
                SIZE0,
                &CreateOptions {
                    block_size_shift: Some(20),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        let vol = open(&client, "m", None).await.expect("open");
        World {
            server,
            client,
            admin,
            vol,
            cache: None,
            model: Image::zeroed(SIZE0),
            snaps: Vec::new(),
            clones: 0,
        }
    }

    async fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let size = self.model.size();
        match *op {
            Op::Write { off, len, seed } => {
                let (off, len) = place(size, off, len);
                let d = data(len, seed);
                match self.vol.write_at(off, &d).await {
                    Ok(()) => self.model.put(off, &d),
                    Err(_) => self.model.forget(off, len),
                }
            }
            Op::Read { off, len } => {
                let (off, len) = place(size, off, len);
                if let Ok(got) = self.vol.read_at(off, len as usize).await {
                    prop_assert_eq!(got.len() as u64, len);
                    self.model.check("read", off, &got)?;
                }
            }
            Op::Discard { off, len } | Op::WriteZeroes { off, len } => {
                let (off, len) = place(size, off, len);
                let res = if matches!(op, Op::Discard { .. }) {
                    self.vol.discard(off, len).await
                } else {
                    self.vol.write_zeroes(off, len).await
                };
                match res {
                    Ok(()) => self.model.put(off, &vec![0; len as usize]),
                    Err(_) => self.model.forget(off, len),
                }
            }
            Op::DiscardObjects { idx, n } => {
                let objs = size / OBJ;
                let idx = idx % objs.max(1);
                let n = n.min(objs - idx);
                let (off, len) = (idx * OBJ, n * OBJ);
                match self.vol.discard(off, len).await {
                    Ok(()) => self.model.put(off, &vec![0; len as usize]),
                    Err(_) => self.model.forget(off, len),
                }
            }
            Op::Snapshot => {
                // Another client, as `dog vdi snapshot` would.
                let tag = format!("s{}", self.snaps.len());
                let other = &self.admin;
                let sel = SnapSel::Tag(tag.clone());
                again("snapshot", || async {
                    if exists(other, "m", &sel).await {
                        return Ok((0, 0));
                    }
                    other.snapshot_vdi("m", &tag).await
                })
                .await?;
                self.snaps.push((tag, self.model.clone()));
            }
            Op::ReadSnapshot { i } => {
                if self.snaps.is_empty() {
                    return Ok(());
                }
                let (tag, img) = &self.snaps[i % self.snaps.len()];
                let v = open_sel(&self.client, "m", SnapSel::Tag(tag.clone()), None).await?;
                if let Ok(got) = v.read_at(0, img.size() as usize).await {
                    img.check(&format!("snapshot {tag}"), 0, &got)?;
                }
                prop_assert!(v.write_at(0, b"x").await.is_err(), "snapshot writable");
            }
            Op::Clone { i, off, len, seed } => {
                if self.snaps.is_empty() {
                    return Ok(());
                }
                let (tag, img) = &self.snaps[i % self.snaps.len()];
                let name = format!("c{}", self.clones);
                self.clones += 1;
                let c = &self.admin;
                let sel = SnapSel::Tag(tag.clone());
                again("clone", || async {
                    if exists(c, &name, &SnapSel::Working).await {
                        return Ok(0);
                    }
                    c.clone_vdi("m", &sel, &name).await
                })
                .await?;
                let mut cimg = img.clone();
                let v = open(&self.client, &name, self.cache.clone()).await?;
                let (off, len) = place(cimg.size(), off, len);
                let d = data(len, seed);
                match v.write_at(off, &d).await {
                    Ok(()) => cimg.put(off, &d),
                    Err(_) => cimg.forget(off, len),
                }
                if let Ok(got) = v.read_at(0, cimg.size() as usize).await {
                    cimg.check(&format!("clone {name}"), 0, &got)?;
                }
            }
            Op::Resize { grow } => {
                let new = size + grow;
                let v = &self.vol;
                again("resize", || v.resize(new)).await?;
                self.model.bytes.resize(new as usize, 0);
                self.model.known.resize(new as usize, true);
            }
            Op::Reopen => {
                self.vol.close().await.map_err(fail("close"))?;
                self.vol = open(&self.client, "m", self.cache.clone()).await?;
                prop_assert_eq!(self.vol.size(), size);
            }
            Op::Cache { on } => {
                self.cache = on.then(|| Arc::new(ObjectCache::new(64 << 20)));
                self.vol.set_cache(self.cache.clone());
            }
            Op::Restart => self.server.restart(),
        }
        Ok(())
    }

    /// The whole working VDI, through a fresh client, after everything.
    async fn final_check(&self) -> Result<(), TestCaseError> {
        let c = Client::new(self.server.addr(), options(false));
        let v = open(&c, "m", None).await?;
        prop_assert_eq!(v.size(), self.model.size());
        let got = again("final read", || v.read_at(0, self.model.size() as usize)).await?;
        self.model.check("final", 0, &got)
    }
}

fn cases() -> u32 {
    std::env::var("SHEEPFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

#[test]
fn volume_matches_its_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        // Each case starts a server: keep shrinking bounded.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (any::<bool>(), proptest::collection::vec(op(), 1..40));
    let result = runner.run(&strategy, |(faults, ops)| {
        rt.block_on(async {
            let mut w = World::new(faults).await;
            for (i, op) in ops.iter().enumerate() {
                w.run(op)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
            }
            w.final_check().await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
