//! The target server: targets and their LUNs, portals, sessions (TSIH
//! allocation, reinstatement), and a clean shutdown.

use super::backend::Registry;
use super::config::{Config, TargetConfig};
use super::conn;
use super::login::TPGT;
use super::scsi::{LogicalUnit, Nexus, Path};
use super::task::TaskCtl;
use crate::client;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Our side of the negotiation and other bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// MaxRecvDataSegmentLength we declare.
    pub max_recv_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    /// Commands in flight per session (the CmdSN window).
    pub queue_depth: u32,
    /// Idle time before we send a NOP-In ping.
    pub nop_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    pub login_timeout: Duration,
    /// How long logout and shutdown wait for commands in flight.
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recv_data_segment: 262_144,
            max_burst: 16_776_192,
            first_burst: 1 << 20,
            max_outstanding_r2t: 8,
            queue_depth: 128,
            nop_interval: Duration::from_secs(15),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// A LUN of a target: the path to a logical unit.
pub struct Lun {
    pub lu: Arc<LogicalUnit>,
    pub path: Path,
}

impl Lun {
    /// Identifies the logical unit across targets (for resets and aborts).
    pub fn lu_key(&self) -> usize {
        Arc::as_ptr(&self.lu) as usize
    }
}

/// One target with its LUNs and live sessions.
pub struct Target {
    pub cfg: TargetConfig,
    /// Relative target port identifier: one target port per target.
    pub rel_port: u16,
    pub luns: BTreeMap<u64, Arc<Lun>>,
    pub lun_ids: Vec<u64>,
    pub sessions: Mutex<HashMap<u64, Arc<SessionShared>>>,
}

impl Target {
    /// Every task of this target's sessions on one of these logical units.
    pub fn tasks_on(&self, lus: &[usize]) -> Vec<Arc<TaskCtl>> {
        let sessions: Vec<Arc<SessionShared>> = self.sessions.lock().values().cloned().collect();
        let mut v = Vec::new();
        for s in sessions {
            for t in s.tasks.lock().values() {
                if lus.contains(&t.lu_key) {
                    v.push(t.clone());
                }
            }
        }
        v
    }
}

/// What other parts of the server may do to a session.
pub struct SessionShared {
    pub id: u64,
    pub tsih: u16,
    pub key: SessionKey,
    pub nexus: Nexus,
    pub target: Option<Arc<Target>>,
    /// Tasks by ITT.
    pub tasks: Mutex<HashMap<u32, Arc<TaskCtl>>>,
    /// Set to end the session (reinstatement, cold reset).
    pub kill: watch::Sender<bool>,
    /// Set when the session has cleaned up.
    pub closed: watch::Sender<bool>,
}

/// (initiator name, ISID, target name or "" for discovery).
pub type SessionKey = (String, [u8; 6], String);

/// State shared by every connection.
pub struct Shared {
    pub targets: Vec<Arc<Target>>,
    pub portals: Vec<SocketAddr>,
    pub limits: Limits,
    next_tsih: AtomicU16,
    next_sid: AtomicU64,
    sessions: Mutex<HashMap<SessionKey, Arc<SessionShared>>>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Every task, through any target, on one of these logical units.
    pub fn tasks_on(&self, lus: &[usize]) -> Vec<Arc<TaskCtl>> {
        self.targets.iter().flat_map(|t| t.tasks_on(lus)).collect()
    }

    pub fn find_target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets
            .iter()
            .find(|t| t.cfg.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !self.tsih_in_use(t) {
                return t;
            }
        }
    }

    pub fn tsih_in_use(&self, tsih: u16) -> bool {
        self.sessions.lock().values().any(|s| s.tsih == tsih)
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_sid.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session; an existing one with the same key is ended first
    /// (session reinstatement, RFC 7143 §6.3.5).
    pub async fn register_session(&self, s: Arc<SessionShared>, wait: Duration) {
        let old = self.sessions.lock().remove(&s.key);
        if let Some(old) = old {
            tracing::info!(initiator = %s.key.0, tsih = old.tsih, "reinstating session");
            old.kill.send_replace(true);
            let mut rx = old.closed.subscribe();
            if tokio::time::timeout(wait, rx.wait_for(|c| *c))
                .await
                .is_err()
            {
                tracing::warn!(tsih = old.tsih, "old session did not close in time");
            }
        }
        if let Some(t) = &s.target {
            t.sessions.lock().insert(s.id, s.clone());
        }
        self.sessions.lock().insert(s.key.clone(), s);
    }

    pub fn unregister_session(&self, s: &SessionShared) {
        let mut g = self.sessions.lock();
        if g.get(&s.key).is_some_and(|x| x.id == s.id) {
            g.remove(&s.key);
        }
        drop(g);
        if let Some(t) = &s.target {
            t.sessions.lock().remove(&s.id);
        }
    }

    /// A server with these targets and no LUNs (login tests).
    #[cfg(test)]
    pub fn for_tests(cfgs: Vec<TargetConfig>) -> Arc<Shared> {
        let targets = cfgs
            .into_iter()
            .map(|cfg| {
                Arc::new(Target {
                    cfg,
                    rel_port: 1,
                    luns: BTreeMap::new(),
                    lun_ids: vec![],
                    sessions: Mutex::new(HashMap::new()),
                })
            })
            .collect();
        Arc::new(Shared {
            targets,
            portals: vec!["127.0.0.1:3260".parse().expect("addr")],
            limits: Limits::default(),
            next_tsih: AtomicU16::new(1),
            next_sid: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).1,
        })
    }
}

/// The nexus of a session: SPC-4 initiator and target port names.
pub fn nexus_for(initiator: &str, isid: &[u8; 6], target: &str, rel_port: u16) -> Nexus {
    let isid_hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    Nexus::new(
        format!("{},i,0x{}", initiator.to_ascii_lowercase(), isid_hex),
        initiator.to_string(),
        format!("{target},t,0x{TPGT:04x}"),
        rel_port,
    )
}

/// A configured, listening target server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    shutdown_tx: watch::Sender<bool>,
    registry: Registry,
}

impl Server {
    /// Opens every LUN's VDI (each once) and binds every portal. Errors name
    /// the target, LUN and backing store, or the portal.
    pub async fn build(
        cfg: &Config,
        limits: Limits,
        client_opts: client::Options,
    ) -> Result<Server, String> {
        cfg.validate()?;
        let mut registry = Registry::new(client_opts);
        let mut targets = Vec::new();
        // One logical unit per disk, whatever number of LUNs lead to it.
        let mut lus: HashMap<usize, Arc<LogicalUnit>> = HashMap::new();
        for (ti, t) in cfg.targets.iter().enumerate() {
            let rel_port = u16::try_from(ti + 1).unwrap_or(u16::MAX);
            let mut luns = BTreeMap::new();
            for l in &t.luns {
                let disk = match registry.open(&l.backing).await {
                    Ok(d) => d,
                    Err(e) => {
                        registry.close_all().await;
                        return Err(format!(
                            "target {} LUN {} ({}): {e}",
                            t.name, l.id, l.backing
                        ));
                    }
                };
                let path = Path {
                    lun: l.id,
                    target_name: t.name.clone(),
                    rel_port,
                    read_only: l.read_only || l.backing.is_snapshot(),
                };
                tracing::info!(target_name = %t.name, lun = l.id, backing = %l.backing,
                    size = disk.backend.size(), read_only = path.read_only, "LUN ready");
                let lu = lus
                    .entry(Arc::as_ptr(&disk) as usize)
                    .or_insert_with(|| Arc::new(LogicalUnit::new(disk.clone())))
                    .clone();
                luns.insert(l.id, Arc::new(Lun { lu, path }));
            }
            targets.push(Arc::new(Target {
                cfg: t.clone(),
                rel_port,
                lun_ids: luns.keys().copied().collect(),
                luns,
                sessions: Mutex::new(HashMap::new()),
            }));
        }
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for p in &cfg.portals {
            match TcpListener::bind(p).await {
                Ok(l) => {
                    bound.push(l.local_addr().unwrap_or(*p));
                    listeners.push(l);
                }
                Err(e) => {
                    registry.close_all().await;
                    return Err(format!("cannot listen on portal {p}: {e}"));
                }
            }
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            targets,
            portals: bound,
            limits,
            next_tsih: AtomicU16::new(1),
            next_sid: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            shutdown: shutdown_rx,
        });
        Ok(Server {
            shared,
            listeners,
            shutdown_tx,
            registry,
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
        self.registry.close_all().await;
        tracing::info!("stopped");
    }
}
