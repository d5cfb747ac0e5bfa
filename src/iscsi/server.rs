//! The target server: portals, the accept loop, and a clean shutdown.
//! Targets, LUNs and sessions live in [`super::shared`]; they are set up
//! and changed by [`super::admin`].

use super::admin;
use super::backend::Registry;
use super::config::Config;
use super::conn;
pub use super::shared::{Limits, Shared};
use crate::client;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

fn bind_portal(p: SocketAddr) -> std::io::Result<TcpSocket> {
    let sock = if p.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(p)?;
    Ok(sock)
}

/// A configured, listening target server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Binds every portal and sets up the configured targets, opening
    /// every LUN's VDI (each once). Errors name the target, LUN and backing
    /// store, or the portal.
    pub async fn build(
        cfg: &Config,
        limits: Limits,
        client_opts: client::Options,
    ) -> Result<Server, String> {
        cfg.validate()?;
        // Bound now (so the addresses are known and taken), listening only
        // once the LUNs are ready: nobody connects to a target that may
        // still fail to start.
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for p in &cfg.portals {
            let sock = bind_portal(*p).map_err(|e| format!("cannot listen on portal {p}: {e}"))?;
            bound.push(sock.local_addr().unwrap_or(*p));
            sockets.push(sock);
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            bound.clone(),
            limits,
            Registry::new(client_opts),
            shutdown_rx,
        ));
        let mut listeners = Vec::new();
        let mut res = admin::apply_config(&shared, cfg).await;
        for (sock, p) in sockets.into_iter().zip(&bound) {
            if res.is_err() {
                break;
            }
            match sock.listen(1024) {
                Ok(l) => listeners.push(l),
                Err(e) => res = Err(format!("cannot listen on portal {p}: {e}")),
            }
        }
        if let Err(e) = res {
            shared.registry.lock().await.close_all().await;
            return Err(e);
        }
        Ok(Server {
            shared,
            listeners,
            shutdown_tx,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.shared.portals.clone()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `stop` resolves, then finishes commands in flight,
    /// closes connections and releases the VDIs.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let sem = Arc::new(Semaphore::new(self.shared.limits.max_connections));
        let mut conns = JoinSet::new();
        let mut accepts = JoinSet::new();
        let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
        for l in std::mem::take(&mut self.listeners) {
            let tx = conn_tx.clone();
            accepts.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok(c) => {
                            if tx.send(c).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        drop(conn_tx);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = self.shared.stop_request.notified() => {
                    tracing::info!("stop requested through the control socket");
                    break;
                }
                c = conn_rx.recv() => {
                    let Some((stream, peer)) = c else { break };
                    let Ok(permit) = sem.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many connections; refusing");
                        continue;
                    };
                    let shared = self.shared.clone();
                    conns.spawn(async move {
                        conn::serve(shared, stream, peer).await;
                        drop(permit);
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!("shutting down: finishing commands in flight");
        accepts.abort_all();
        self.shutdown_tx.send_replace(true);
        let grace = self.shared.limits.drain_timeout + Duration::from_secs(5);
        if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish in time; closing them");
            conns.abort_all();
        }
        self.shared.registry.lock().await.close_all().await;
        tracing::info!("stopped");
    }
}
