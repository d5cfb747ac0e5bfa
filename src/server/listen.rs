//! Serving: on sockets (the TCP and Unix listeners of [`run`], signals, the
//! clean stop) and in-process ([`serve_duplex`]).

use super::net::{self, Ctx};
use super::{advertised_node, open_dir, Config, ServerError, Sheep};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

/// How long a clean stop waits for in-flight requests and replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes buffered each way by [`serve_duplex`]: a few requests of a
/// typical size, so the pipelines of both sides keep moving.
const DUPLEX_BUFFER: usize = 1 << 20;

/// One end of an in-memory stream whose other end `ctx` serves, as a
/// connection from a client: for a [`crate::client::Client`] running in
/// the same process (see [`crate::client::Client::with_connector`]).
/// Must be called inside a tokio runtime; the server side ends when the
/// returned end is dropped or shut down.
pub fn serve_duplex(ctx: &Arc<Ctx>) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
    let ctx = ctx.clone();
    tokio::spawn(async move { net::serve_stream(&ctx, server).await });
    client
}

/// Raises the open-file limit to its hard maximum (object files are cached).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the server until SIGTERM/SIGINT/SIGHUP or SD_OP_SHUTDOWN, then stops cleanly:
/// in-flight requests finish, cached writes are synced, the socket file is
/// removed.
pub async fn run(cfg: Config) -> Result<(), ServerError> {
    raise_nofile();
    let (dir, _lock) = open_dir(&cfg.dir)?;
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(cfg.port);
    let sheep = Arc::new(Sheep::new(
        &dir,
        advertised_node(cfg.bind, port),
        cfg.fd_cache,
    )?);
    let sock_path = dir.join("sock");
    // A stale socket from an earlier run is replaced, as sheep does.
    match std::fs::remove_file(&sock_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Listen {
                addr: sock_path.display().to_string(),
                source,
            })
        }
    }
    let unix = UnixListener::bind(&sock_path).map_err(|source| ServerError::Listen {
        addr: sock_path.display().to_string(),
        source,
    })?;
    let ctx = Ctx::build(sheep.clone(), &cfg, None);
    let mut stop_rx = ctx.stopped();
    tracing::info!(
        dir = %dir.display(),
        tcp = %SocketAddr::new(cfg.bind, port),
        unix = %sock_path.display(),
        node = %sheep.node.nid.to_addr_port(),
        "sheep-lite listening"
    );

    let mut conns = JoinSet::new();
    // Returns memory after bursts (see `Ctx::trim_heap`).
    let mut housekeeping = tokio::time::interval(Duration::from_millis(200));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Other(format!("cannot install SIGTERM handler: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| ServerError::Other(format!("cannot install SIGINT handler: {e}")))?;
    // SIGHUP (a closed terminal, a careless `kill -HUP`) stops cleanly too:
    // there is nothing to reload.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ServerError::Other(format!("cannot install SIGHUP handler: {e}")))?;
    crate::util::notify::ready();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            a = tcp.accept() => match a {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    conns.spawn(net::serve(ctx.clone(), s, peer.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            a = unix.accept() => match a {
                Ok((s, _)) => {
                    conns.spawn(net::serve(ctx.clone(), s, "unix".to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: stopping");
                break;
            }
            _ = stop_rx.changed() => break,
            _ = housekeeping.tick() => {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || ctx.trim_heap());
            }
        }
    }
    // Stop: no new connections or requests; let in-flight ones finish.
    crate::util::notify::stopping();
    drop(tcp);
    drop(unix);
    ctx.stop();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections did not finish in time; closing them");
        conns.abort_all();
    }
    let s2 = sheep.clone();
    let synced = tokio::task::spawn_blocking(move || s2.sync_all())
        .await
        .map_err(|e| ServerError::Other(format!("final sync failed: {e}")))?;
    let _ = std::fs::remove_file(&sock_path);
    if let Err(e) = synced {
        return Err(ServerError::Other(format!(
            "final sync of cached writes failed: {e:?}"
        )));
    }
    tracing::info!("sheep-lite stopped");
    Ok(())
}
