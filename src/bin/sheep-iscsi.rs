//! sheep-iscsi: an iSCSI target whose LUNs are Sheepdog VDIs.
//! See sheep-iscsi(8).

use clap::Parser;
use sheepfs::client;
use sheepfs::iscsi::config::{self, parse_portal, Config, Credential, LunConfig, TargetConfig};
use sheepfs::iscsi::{Limits, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sheep-iscsi",
    version,
    about = "iSCSI target serving Sheepdog VDIs as LUNs",
    after_help = "BACKING is tcp:HOST:PORT:VDI or unix:PATH:VDI, optionally followed by :TAG or \
                  :SNAPID for a read-only snapshot LUN (tgt's --bstype sheepdog syntax).\n\
                  Example: sheep-iscsi --target iqn.2024-01.org.example:vol1 --lun 1=tcp:127.0.0.1:7000:vol1"
)]
struct Args {
    /// Address to listen on (repeatable); default 0.0.0.0:3260.
    #[arg(long = "portal", value_name = "ADDR:PORT", value_parser = parse_portal)]
    portals: Vec<SocketAddr>,
    /// iSCSI name of the target the --lun options belong to.
    #[arg(long, value_name = "IQN")]
    target: Option<String>,
    /// Alias of that target (TargetAlias).
    #[arg(long, value_name = "NAME", requires = "target")]
    alias: Option<String>,
    /// A LUN of that target (repeatable).
    #[arg(long = "lun", value_name = "N=BACKING", requires = "target")]
    luns: Vec<LunConfig>,
    /// Require CHAP from initiators with this user and secret (repeatable).
    #[arg(long = "chap", value_name = "USER:SECRET", requires = "target")]
    chap: Vec<Credential>,
    /// Credentials the target answers with when an initiator asks for mutual CHAP.
    #[arg(long = "mutual-chap", value_name = "USER:SECRET", requires = "target")]
    mutual_chap: Option<Credential>,
    /// Only these initiator names may log in to that target (repeatable).
    #[arg(long = "initiator", value_name = "IQN", requires = "target")]
    initiators: Vec<String>,
    /// TOML file describing more targets (see sheep-iscsi(8)).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds a sheep request may keep failing (server down) before the
    /// SCSI command fails with a medium error.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Commands in flight per session (the CmdSN window).
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    queue_depth: u32,
    /// Seconds of silence on a connection before the target pings it (NOP-In).
    #[arg(long, value_name = "SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    nop_interval: u64,
    /// Seconds a ping may stay unanswered before the connection is dropped.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    nop_timeout: u64,
    /// Log filter (tracing syntax), overridden by RUST_LOG.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

fn build_config(a: &Args) -> Result<Config, String> {
    let (mut portals, mut targets) = match &a.config {
        Some(p) => config::load_file(p)?,
        None => (Vec::new(), Vec::new()),
    };
    if let Some(name) = &a.target {
        config::validate_iscsi_name(name)?;
        targets.push(TargetConfig {
            name: name.to_ascii_lowercase(),
            alias: a.alias.clone(),
            luns: a.luns.clone(),
            chap: a.chap.clone(),
            mutual_chap: a.mutual_chap.clone(),
            initiators: a.initiators.clone(),
        });
    }
    if !a.portals.is_empty() {
        portals = a.portals.clone();
    }
    if portals.is_empty() {
        portals.push(SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)));
    }
    let cfg = Config { portals, targets };
    cfg.validate()?;
    Ok(cfg)
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sheep-iscsi: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sheep-iscsi: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let client_opts = client::Options {
        request_timeout: timeout,
        retry_timeout: timeout,
        ..client::Options::default()
    };
    let limits = Limits {
        queue_depth: args.queue_depth,
        nop_interval: Duration::from_secs(args.nop_interval),
        nop_timeout: Duration::from_secs(args.nop_timeout),
        ..Limits::default()
    };
    rt.block_on(async {
        let server = match Server::build(&cfg, limits, client_opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sheep-iscsi: {e}");
                return ExitCode::from(1);
            }
        };
        for p in server.portals() {
            tracing::info!(portal = %p, "listening");
        }
        server.run(stop_signal()).await;
        ExitCode::SUCCESS
    })
}
