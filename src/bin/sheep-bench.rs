//! sheep-bench: drives the client library directly (no FUSE, no iSCSI) with a
//! fio-like workload and prints one JSON line of results. Used by
//! scripts/bench-client and as the "client" anchor of scripts/bench-sheepfs.
//! Two more modes serve scripts/bench-scale: `--rw create` makes `--count`
//! VDIs named `--vdi` + number, `--depth` at a time; `--rw list` renders
//! `vdi list` with `--depth` VDIs in flight (1: one request at a time, as
//! dog does).
//! `--rw hostile` is scripts/bench-hostile: 4 KiB read latency of a
//! well-behaved client alone, then beside hostile connections, and the
//! server's RSS during and after.

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
    /// Sheep address: HOST or HOST:PORT, tcp:HOST:PORT or unix:PATH.
    #[arg(short, long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// VDI to use (must exist and be at least --size bytes); the name
    /// prefix with `--rw create`.
    #[arg(long, default_value = "")]
    vdi: String,
    /// write | read | randread | randwrite | create | list | hostile
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
    /// hostile: hostile connections (3 never-read pipelines, 22 stalled
    /// NEW_VDIs, the rest half-sent 4 MiB writes).
    #[arg(long, default_value_t = 100)]
    hostile: usize,
    /// hostile: pid of the server, whose RSS is sampled.
    #[arg(long)]
    server_pid: Option<u32>,
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
        addr.clone(),
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
    if a.rw == "hostile" {
        return hostile::run(&a, addr, vol, blocks, bs).await;
    }
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

mod hostile {
    //! The hostile-clients benchmark (scripts/bench-hostile).
    use super::Args;
    use anyhow::{Context, Result};
    use rand::{Rng, SeedableRng};
    use sheepfs::client::{SheepAddr, Volume};
    use sheepfs::proto::header::{ObjArgs, VdiArgs};
    use sheepfs::proto::{flags, oid, op, ReqHeader};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    const MB4: u32 = 4 << 20;
    /// How long the server gets to return memory after the hostiles leave.
    const AFTER: Duration = Duration::from_secs(10);

    /// Latencies of one phase, sorted.
    struct Phase {
        lat: Vec<Duration>,
    }

    impl Phase {
        fn pct(&self, p: f64) -> Duration {
            if self.lat.is_empty() {
                return Duration::ZERO;
            }
            let i = ((self.lat.len() as f64 * p).ceil() as usize).clamp(1, self.lat.len());
            self.lat[i - 1]
        }
        fn max(&self) -> Duration {
            self.lat.last().copied().unwrap_or_default()
        }
    }

    /// The server's RSS (kB from /proc, in bytes), or 0 when unknown.
    fn rss(pid: Option<u32>) -> u64 {
        let Some(pid) = pid else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Samples the RSS every 50 ms until `stop`; returns the maximum.
    fn sample_rss(pid: Option<u32>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(rss(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            max.max(rss(pid))
        })
    }

    /// 4 KiB random reads at queue depth 1 for `secs`.
    async fn victim(vol: &Volume, blocks: u64, bs: usize, secs: u64) -> Result<Phase> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut lat = Vec::new();
        while Instant::now() < end {
            let off = rng.gen_range(0..blocks) * bs as u64;
            let t = Instant::now();
            vol.read_at(off, bs).await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        Ok(Phase { lat })
    }

    fn tcp_target(addr: &SheepAddr) -> Result<(String, u16)> {
        match addr {
            SheepAddr::Tcp { host, port } => Ok((host.clone(), *port)),
            _ => anyhow::bail!("--rw hostile needs a TCP address"),
        }
    }

    /// A header for 4 MiB of object `oid` from offset 0.
    fn obj_4mib(opcode: u8, oid: u64) -> ReqHeader {
        let mut h = ReqHeader::for_op(opcode);
        h.data_length = MB4;
        h.args = ObjArgs {
            oid,
            ..Default::default()
        }
        .encode();
        h
    }

    /// Opens the hostile connections and sends their bytes; they stay open
    /// (and unread) until the returned handles are aborted.
    async fn start_hostiles(
        target: &(String, u16),
        n: usize,
        obj: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut t = TcpStream::connect((target.0.as_str(), target.1))
                .await
                .with_context(|| format!("connecting to {}:{}", target.0, target.1))?;
            let mut bytes = Vec::new();
            if i < 3 {
                // A pipeline of 256 x 4 MiB reads whose replies are never read.
                for id in 0..256u32 {
                    let mut h = obj_4mib(op::READ_OBJ, obj);
                    h.id = id;
                    bytes.extend_from_slice(&h.encode());
                }
            } else if i < 25 {
                // A NEW_VDI header and 7 of its 256 payload bytes.
                let mut h = ReqHeader::for_op(op::NEW_VDI);
                h.flags = flags::CMD_WRITE;
                h.data_length = 256;
                h.args = VdiArgs {
                    vdi_size: 1 << 30,
                    ..Default::default()
                }
                .encode();
                bytes.extend_from_slice(&h.encode());
                bytes.extend_from_slice(b"stalled");
            } else {
                // A 4 MiB WRITE_OBJ sent halfway.
                let mut h = obj_4mib(op::WRITE_OBJ, obj);
                h.flags = flags::CMD_WRITE;
                bytes.extend_from_slice(&h.encode());
                bytes.resize(48 + (MB4 / 2) as usize, 0x5a);
            }
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                for piece in bytes.chunks(64 << 10) {
                    if t.write_all(piece).await.is_err() {
                        return;
                    }
                    sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                // Hold the connection open, reading nothing.
                std::future::pending::<()>().await;
                drop(t);
            }));
        }
        Ok(tasks)
    }

    pub async fn run(
        a: &Args,
        addr: SheepAddr,
        vol: Arc<Volume>,
        blocks: u64,
        bs: usize,
    ) -> Result<()> {
        let target = tcp_target(&addr)?;
        let pid = a.server_pid;
        let obj = oid::vid_to_data_oid(vol.vid(), 0);
        // Object 0 must exist for the reads to cost what they should.
        vol.write_bytes(0, bytes::Bytes::from(vec![0x5au8; MB4 as usize]))
            .await?;

        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_rss(pid, stop.clone());
        let base = victim(&vol, blocks, bs, a.runtime).await?;
        stop.store(true, Ordering::Relaxed);
        let base_rss = sampler.join().unwrap_or(0);

        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_rss(pid, stop.clone());
        let hostiles = start_hostiles(&target, a.hostile, obj, sent.clone()).await?;
        let hot = victim(&vol, blocks, bs, a.runtime).await?;
        for h in &hostiles {
            h.abort();
        }
        for h in hostiles {
            let _ = h.await;
        }
        stop.store(true, Ordering::Relaxed);
        let hot_rss = sampler.join().unwrap_or(0);

        // After: when does the RSS get under 64 MiB, and where is it at +10 s?
        let t0 = Instant::now();
        let mut under = None;
        let mut after_max = 0;
        while t0.elapsed() < AFTER {
            let r = rss(pid);
            after_max = after_max.max(r);
            if under.is_none() && r < 64 << 20 {
                under = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let end_rss = rss(pid);

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "\n{:<34} {:>8} {:>9} {:>9} {:>9} {:>10}",
            "phase (4 KiB reads, QD1)", "ops", "p50 ms", "p99 ms", "max ms", "RSS max MiB"
        );
        for (name, p, r) in [
            ("alone (anchor)", &base, base_rss),
            (
                &*format!("beside {} hostile connections", a.hostile),
                &hot,
                hot_rss,
            ),
        ] {
            println!(
                "{:<34} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>10.1}",
                name,
                p.lat.len(),
                ms(p.pct(0.5)),
                ms(p.pct(0.99)),
                ms(p.max()),
                mib(r)
            );
        }
        let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64().max(1e-9);
        let p99_ratio = ratio(hot.pct(0.99), base.pct(0.99));
        println!(
            "\nratios hostile/alone: p50 {:.2}  p99 {:.2}  max {:.2}   (hostile bytes sent: {:.0} MiB)",
            ratio(hot.pct(0.5), base.pct(0.5)),
            p99_ratio,
            ratio(hot.max(), base.max()),
            mib(sent.load(Ordering::Relaxed))
        );
        println!(
            "after the hostiles left: RSS max {:.1} MiB, under 64 MiB after {}, {:.1} MiB at +{}s",
            mib(after_max),
            under.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            mib(end_rss),
            AFTER.as_secs()
        );
        let ok = |b: bool| if b { "ok" } else { "MISSED" };
        println!(
            "targets: p99 <= 5x alone: {}; no read over 1 s: {}; RSS <= 256 MiB: {}; < 64 MiB within 10 s after: {}",
            ok(p99_ratio <= 5.0),
            ok(hot.max() < Duration::from_secs(1)),
            ok(hot_rss.max(after_max) <= 256 << 20),
            ok(under.is_some()),
        );
        Ok(())
    }
}
