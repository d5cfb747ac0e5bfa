//! `sheep-lite [-b ADDR] [-p PORT] [limits] DIR`: a single-node Sheepdog server.

use clap::Parser;
use sheepfs::server::{run, Config};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

// Large payload and reply buffers are mapped and recycled, not kept in
// glibc's arenas, so memory returns after a burst (sheep-lite(8), LIMITS).
#[global_allocator]
static ALLOC: sheepfs::server::alloc::Recycler = sheepfs::server::alloc::Recycler;

/// A single-node Sheepdog server (sheep wire protocol on TCP and DIR/sock).
#[derive(Parser, Debug)]
#[command(
    name = "sheep-lite",
    version,
    about = "A single-node Sheepdog server: speaks sheep's wire protocol, stores objects under DIR"
)]
struct Args {
    /// Address to listen on; use 0.0.0.0 (or ::) for all interfaces. The node
    /// advertises this address (127.0.0.1 when it is unspecified).
    #[arg(short = 'b', long = "bindaddr", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// TCP port.
    #[arg(short = 'p', long = "port", default_value_t = 7000, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Bytes of payloads, working sets and reply buffers held at once (K/M/G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = size)]
    memory_budget: u64,
    /// Of the budget, bytes payloads still arriving may hold (at most half the budget).
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = size)]
    recv_memory: u64,
    /// Of the budget, bytes one connection may hold, unread replies included.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = size)]
    conn_memory: u64,
    /// Requests one connection may have in flight.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    conn_requests: u32,
    /// Seconds a started header or payload, or a reply being sent, may make no
    /// progress before the connection is closed.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = secs)]
    io_timeout: Duration,
    /// Seconds a connection with nothing in flight may stay silent before it
    /// is closed; 0 = never.
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = secs)]
    idle_timeout: Duration,
    /// Log requests (debug level); RUST_LOG overrides.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Store directory (created if missing); the Unix socket is DIR/sock.
    dir: PathBuf,
}

fn size(s: &str) -> Result<u64, String> {
    match sheepfs::util::parse_size(s)? {
        0 => Err("must be more than 0".into()),
        n => Ok(n),
    }
}

/// Seconds, decimals allowed (tests use fractions of a second).
fn secs(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a number of seconds (0 to 1e9)")),
    }
}

fn main() {
    sheepfs::util::completions_from_env::<Args>("sheep-lite");
    let args = Args::parse();
    sheepfs::util::logging::init(sheepfs::util::logging::LogSetup {
        default_filter: if args.verbose {
            "sheepfs=debug"
        } else {
            "sheepfs=info"
        }
        .into(),
        syslog: None,
        target: true,
        ring: None,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sheep-lite: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut cfg = Config::new(args.dir);
    cfg.bind = args.bind;
    cfg.port = args.port;
    cfg.memory_budget = args.memory_budget;
    cfg.recv_memory = args.recv_memory;
    cfg.conn_memory = args.conn_memory;
    cfg.conn_requests = args.conn_requests as usize;
    cfg.io_timeout = args.io_timeout;
    cfg.idle_timeout = args.idle_timeout;
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("sheep-lite: {e}");
        std::process::exit(1);
    }
}
