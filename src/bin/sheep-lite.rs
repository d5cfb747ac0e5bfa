//! `sheep-lite [-b ADDR] [-p PORT] DIR`: a single-node Sheepdog server.

use clap::Parser;
use sheepfs::server::{run, Config};
use std::net::IpAddr;
use std::path::PathBuf;

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
    /// Log requests (debug level); RUST_LOG overrides.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Store directory (created if missing); the Unix socket is DIR/sock.
    dir: PathBuf,
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
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("sheep-lite: {e}");
        std::process::exit(1);
    }
}
