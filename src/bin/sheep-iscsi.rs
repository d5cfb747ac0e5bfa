//! sheep-iscsi: an iSCSI target whose LUNs are Sheepdog VDIs.
//! See sheep-iscsi(8).

use clap::Parser;
use sheepfs::client;
use sheepfs::iscsi::config::{self, parse_portal, Config, Credential, LunConfig, TargetConfig};
use sheepfs::iscsi::control::{self, ControlSocket};
use sheepfs::iscsi::shared::Shared;
use sheepfs::iscsi::{admin, Limits, Server};
use sheepfs::util::notify;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
    /// TOML file describing more targets (see sheep-iscsi(8)); SIGHUP
    /// re-reads it and applies the difference.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket for sheep-iscsi-adm (default /run/sheep-iscsi.sock).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Run without a control socket.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,
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

/// The start state: the config file (if any) plus the command line.
fn build_config(a: &Args) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => config::load_file(p)?,
        None => Config::default(),
    };
    if let Some(name) = &a.target {
        config::validate_iscsi_name(name)?;
        if a.luns.is_empty() {
            return Err(format!("target {name}: no LUNs (add --lun N=BACKING)"));
        }
        if a.mutual_chap.is_some() && a.chap.is_empty() {
            return Err(format!(
                "target {name}: mutual CHAP needs at least one CHAP user (--chap)"
            ));
        }
        cfg.targets.push(TargetConfig {
            name: name.to_ascii_lowercase(),
            alias: a.alias.clone(),
            luns: a.luns.clone(),
            chap: a.chap.clone(),
            mutual_chap: a.mutual_chap.clone(),
            initiators: a.initiators.clone(),
            ..Default::default()
        });
    }
    if !a.portals.is_empty() {
        cfg.portals = a.portals.clone();
    }
    if cfg.portals.is_empty() {
        cfg.portals
            .push(SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)));
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Waits for SIGTERM or SIGINT; meanwhile each SIGHUP reloads the config.
async fn signals(args: &Args, shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot handle signals; stop with --op delete --mode system");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM"),
            _ = int.recv() => return tracing::info!("SIGINT"),
            _ = hup.recv() => reload(args, &shared).await,
        }
    }
}

/// SIGHUP: re-read the config file and apply the difference; a bad file
/// is logged and changes nothing.
async fn reload(args: &Args, shared: &Arc<Shared>) {
    let Some(path) = &args.config else {
        tracing::info!("SIGHUP: no --config file; nothing to reload");
        return;
    };
    tracing::info!(config = %path.display(), "SIGHUP: reloading");
    notify::reloading();
    match build_config(args) {
        Err(e) => tracing::error!(error = %e, "reload failed; nothing changed"),
        Ok(cfg) => match admin::apply_config(shared, &cfg).await {
            Ok(()) => warn_open_targets(shared),
            Err(e) => tracing::error!(error = %e, "reload failed; nothing changed"),
        },
    }
    notify::ready();
}

fn warn_open_targets(shared: &Shared) {
    for t in shared.targets() {
        if let Some(w) = admin::open_warning(shared, &t) {
            tracing::warn!("{w}");
        }
    }
}

fn main() -> ExitCode {
    sheepfs::util::completions_from_env::<Args>("sheep-iscsi");
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
    if cfg.targets.is_empty() && args.config.is_none() && args.control.is_none() {
        // Most likely a mistake: say how to give targets.
        eprintln!(
            "sheep-iscsi: no targets configured (use --target and --lun, --config, or \
             --control PATH to add them at run time with sheep-iscsi-adm)"
        );
        return ExitCode::from(1);
    }
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
        // The control socket first: a second instance fails before it
        // touches any VDI. The default path being taken is not fatal.
        let control = if args.no_control {
            None
        } else {
            let path = args
                .control
                .clone()
                .unwrap_or_else(|| PathBuf::from(control::DEFAULT_PATH));
            match ControlSocket::bind(&path) {
                Ok(c) => Some(c),
                Err(e) if args.control.is_some() => {
                    eprintln!("sheep-iscsi: {e}");
                    return ExitCode::from(1);
                }
                Err(e) => {
                    tracing::warn!("{e}; running without a control socket");
                    None
                }
            }
        };
        let server = match Server::build(&cfg, limits, client_opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sheep-iscsi: {e}");
                return ExitCode::from(1);
            }
        };
        let shared = server.shared();
        for p in server.portals() {
            tracing::info!(portal = %p, "listening");
        }
        if let Some(c) = &control {
            tracing::info!(path = %c.path().display(), "control socket ready");
        }
        if shared.targets().is_empty() {
            tracing::info!("no targets yet: add them with sheep-iscsi-adm");
        }
        warn_open_targets(&shared);
        notify::send_logged(&format!("READY=1\nMAINPID={}", std::process::id()));
        let serve_control = async {
            match &control {
                Some(c) => c.serve(shared.clone()).await,
                None => std::future::pending().await,
            }
        };
        let stop = async {
            tokio::select! {
                _ = signals(&args, shared.clone()) => {}
                _ = serve_control => {}
            }
            notify::stopping();
        };
        server.run(stop).await;
        // Removes the socket file.
        drop(control);
        ExitCode::SUCCESS
    })
}
