//! sheep-bench: drives the client library directly (no FUSE, no iSCSI) with a
//! fio-like workload and prints one JSON line of results. Used by
//! scripts/bench-client and as the "client" anchor of scripts/bench-sheepfs.
//! Two more modes serve scripts/bench-scale: `--rw create` makes `--count`
//! VDIs named `--vdi` + number, `--depth` at a time; `--rw list` renders
//! `vdi list` with `--depth` VDIs in flight (1: one request at a time, as
//! dog does).

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use sheepfs::client::{Client, ObjectCache, OpenOptions, Options, SheepAddr, Volume};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmark the sheepfs client library against a sheep"
)]
struct Args {
    /// Sheep address: HOST[:PORT], tcp:HOST:PORT or unix:PATH.
    #[arg(short, long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// VDI to use (must exist and be at least --size bytes); the name
    /// prefix with `--rw create`.
    #[arg(long, default_value = "")]
    vdi: String,
    /// write | read | randread | randwrite | create | list
    #[arg(long)]
    rw: String,
    /// VDIs to make (`--rw create`).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Block size (K/M suffixes).
    #[arg(long, default_value = "4M")]
    bs: String,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Bytes of the VDI to cover (sequential) or to pick offsets from (random).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Stop after this many seconds (sequential runs also stop after one pass).
    #[arg(long, default_value_t = 10)]
    runtime: u64,
    /// Set SD_FLAG_CMD_CACHE (sheep's object cache).
    #[arg(long)]
    object_cache: bool,
    /// Client-side object LRU cache budget (like sheepfs -k), 0 = off.
    #[arg(long, default_value = "0")]
    cache_size: String,
    /// Connections in the client pool.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let bs = sheepfs::util::parse_size(&a.bs).map_err(anyhow::Error::msg)? as usize;
    let size = sheepfs::util::parse_size(&a.size).map_err(anyhow::Error::msg)?;
    let cache = sheepfs::util::parse_size(&a.cache_size).map_err(anyhow::Error::msg)?;
    if bs == 0 || size < bs as u64 {
        bail!("--size must be at least --bs");
    }
    let addr: SheepAddr = a.addr.parse().map_err(anyhow::Error::msg)?;
    let client = Client::new(
        addr,
        Options {
            connections: a.connections,
            ..Default::default()
        },
    );
    match a.rw.as_str() {
        "create" => return create_mode(&client, &a, size).await,
        "list" => return list_mode(&client, a.depth).await,
        _ => {}
    }
    let vol = Arc::new(
        Volume::open(
            client,
            &a.vdi,
            OpenOptions {
                object_cache: a.object_cache,
                cache: (cache > 0).then(|| Arc::new(ObjectCache::new(cache))),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("opening VDI {}", a.vdi))?,
    );
    let blocks = size / bs as u64;
    let (random, write) = match a.rw.as_str() {
        "write" => (false, true),
        "read" => (false, false),
        "randwrite" => (true, true),
        "randread" => (true, false),
        other => bail!("unknown --rw {other}"),
    };
    let next = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.runtime);
    let buf = bytes::Bytes::from(vec![0x5au8; bs]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..a.depth {
        let (vol, next, ops, buf) = (vol.clone(), next.clone(), ops.clone(), buf.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            while Instant::now() < deadline {
                let block = if random {
                    rng.gen_range(0..blocks)
                } else {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= blocks {
                        break;
                    }
                    b
                };
                let off = block * buf.len() as u64;
                if write {
                    vol.write_bytes(off, buf.clone()).await?;
                } else {
                    vol.read_at(off, buf.len()).await?;
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sheepfs::client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "rw": a.rw, "bs": bs, "depth": a.depth, "ops": n, "secs": secs,
            "iops": n as f64 / secs,
            "mbps": n as f64 * bs as f64 / secs / 1e6,
        })
    );
    Ok(())
}

/// `--rw create`: `--count` thin VDIs of `size` bytes, `--depth` at a time.
async fn create_mode(client: &Client, a: &Args, size: u64) -> Result<()> {
    use futures::StreamExt;
    let opts = sheepfs::client::CreateOptions::default();
    let start = Instant::now();
    let mut made = futures::stream::iter(0..a.count)
        .map(|i| {
            let name = format!("{}{i}", a.vdi);
            let opts = &opts;
            async move {
                client
                    .create_vdi(&name, size, opts)
                    .await
                    .with_context(|| format!("creating VDI {name}"))
            }
        })
        .buffer_unordered(a.depth.max(1));
    while let Some(r) = made.next().await {
        r?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rw": "create", "count": a.count, "depth": a.depth, "secs": secs})
    );
    Ok(())
}

/// `--rw list`: the text of `vdi list`, `window` VDIs in flight.
async fn list_mode(client: &Client, window: usize) -> Result<()> {
    use futures::StreamExt;
    let start = Instant::now();
    let vids = client.live_vids().await?;
    let opts = sheepfs::client::ScanOptions {
        window: window.max(1),
        ..Default::default()
    };
    let mut rows = std::pin::pin!(client.scan_vdis(vids, opts));
    let (mut text, mut n) = (String::new(), 0usize);
    while let Some(r) = rows.next().await {
        let v = r.map_err(|e| anyhow::anyhow!("reading inode of vid {:x}: {}", e.vid, e.error))?;
        text.push_str(&sheepfs::dogfmt::vdi_list_row(&v.entry, false));
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rw": "list", "depth": window, "vdis": n, "bytes": text.len(), "secs": secs})
    );
    Ok(())
}
