//! State every part of the target shares: limits, targets and their LUNs
//! (which change at run time), live sessions, and the disk registry. Kept
//! apart from [`super::server`] so that the connection and login code
//! depend on it without depending on the server.

use super::backend::Registry;
use super::config::{Credential, LunConfig, TargetConfig};
use super::scsi::{LogicalUnit, Nexus, Path};
use super::stats::LunStats;
use super::task::TaskCtl;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The one portal group every portal belongs to.
pub const TPGT: u16 = 1;

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

/// A LUN of a target: the path to a logical unit, how it was configured,
/// and its counters.
pub struct Lun {
    pub lu: Arc<LogicalUnit>,
    pub path: Path,
    pub cfg: LunConfig,
    /// Kept across a LUN's updates (read-only toggles).
    pub stats: Arc<LunStats>,
}

impl Lun {
    /// Identifies the logical unit across targets (for resets and aborts).
    pub fn lu_key(&self) -> usize {
        Arc::as_ptr(&self.lu) as usize
    }
}

/// One target with its LUNs and live sessions.
pub struct Target {
    /// tgtadm's target id.
    pub tid: u32,
    /// The iSCSI name (lower-case).
    pub name: String,
    /// Relative target port identifier: one target port per target.
    pub rel_port: u16,
    /// Alias, CHAP and ACL; its `luns` stays empty (see `luns`).
    pub cfg: RwLock<TargetConfig>,
    pub luns: RwLock<BTreeMap<u64, Arc<Lun>>>,
    pub sessions: Mutex<HashMap<u64, Arc<SessionShared>>>,
}

impl Target {
    pub fn new(tid: u32, mut cfg: TargetConfig) -> Target {
        cfg.luns.clear();
        cfg.tid = Some(tid);
        Target {
            tid,
            name: cfg.name.clone(),
            rel_port: u16::try_from(tid).unwrap_or(u16::MAX),
            cfg: RwLock::new(cfg),
            luns: RwLock::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn lun(&self, id: u64) -> Option<Arc<Lun>> {
        self.luns.read().get(&id).cloned()
    }

    pub fn lun_ids(&self) -> Vec<u64> {
        self.luns.read().keys().copied().collect()
    }

    pub fn all_luns(&self) -> Vec<Arc<Lun>> {
        self.luns.read().values().cloned().collect()
    }

    pub fn sessions(&self) -> Vec<Arc<SessionShared>> {
        let mut v: Vec<_> = self.sessions.lock().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Whether this initiator may log in now.
    pub fn allows(&self, initiator: &str, addr: Option<std::net::IpAddr>) -> bool {
        self.cfg.read().allows(initiator, addr)
    }

    /// The configuration that recreates this target as it is now.
    pub fn config(&self) -> TargetConfig {
        let mut c = self.cfg.read().clone();
        c.tid = Some(self.tid);
        c.luns = self.all_luns().iter().map(|l| l.cfg.clone()).collect();
        c
    }

    /// Every session of this target gets REPORTED LUNS DATA HAS CHANGED
    /// with its next command.
    pub fn luns_changed(&self) {
        for s in self.sessions() {
            s.luns_changed.store(true, Ordering::Relaxed);
        }
    }

    /// Every task of this target's sessions on one of these logical units.
    pub fn tasks_on(&self, lus: &[usize]) -> Vec<Arc<TaskCtl>> {
        let mut v = Vec::new();
        for s in self.sessions() {
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
    pub cid: u16,
    pub key: SessionKey,
    pub nexus: Nexus,
    pub target: Option<Arc<Target>>,
    pub peer: SocketAddr,
    pub since: SystemTime,
    /// Tasks by ITT.
    pub tasks: Mutex<HashMap<u32, Arc<TaskCtl>>>,
    /// The target's LUN inventory changed: the next command gets a unit
    /// attention (SPC-4 REPORTED LUNS DATA HAS CHANGED).
    pub luns_changed: AtomicBool,
    /// Set to end the session (reinstatement, cold reset, admin).
    pub kill: watch::Sender<bool>,
    /// Set when the session has cleaned up.
    pub closed: watch::Sender<bool>,
}

/// (initiator name, ISID, target name or "" for discovery).
pub type SessionKey = (String, [u8; 6], String);

/// State shared by every connection.
pub struct Shared {
    targets: RwLock<Vec<Arc<Target>>>,
    pub portals: Vec<SocketAddr>,
    pub limits: Limits,
    /// CHAP accounts by user name (tgtadm's account list).
    pub accounts: Mutex<BTreeMap<String, Credential>>,
    /// The open disks. Its lock also serialises every change of targets,
    /// LUNs and accounts (admin requests, reloads).
    pub registry: tokio::sync::Mutex<Registry>,
    next_tsih: AtomicU16,
    next_sid: AtomicU64,
    sessions: Mutex<HashMap<SessionKey, Arc<SessionShared>>>,
    pub shutdown: watch::Receiver<bool>,
    /// Asks the server to stop (`--mode system --op delete`).
    pub stop_request: tokio::sync::Notify,
    pub started: Instant,
}

impl Shared {
    pub fn new(
        portals: Vec<SocketAddr>,
        limits: Limits,
        registry: Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Shared {
        Shared {
            targets: RwLock::new(Vec::new()),
            portals,
            limits,
            accounts: Mutex::new(BTreeMap::new()),
            registry: tokio::sync::Mutex::new(registry),
            next_tsih: AtomicU16::new(1),
            next_sid: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            shutdown,
            stop_request: tokio::sync::Notify::new(),
            started: Instant::now(),
        }
    }

    /// The targets, by tid.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets.read().clone()
    }

    /// Adds a target (the caller checked name and tid are free).
    pub fn insert_target(&self, t: Arc<Target>) {
        let mut g = self.targets.write();
        let at = g.partition_point(|x| x.tid < t.tid);
        g.insert(at, t);
    }

    pub fn remove_target(&self, tid: u32) -> Option<Arc<Target>> {
        let mut g = self.targets.write();
        let i = g.iter().position(|t| t.tid == tid)?;
        Some(g.remove(i))
    }

    /// Every task, through any target, on one of these logical units.
    pub fn tasks_on(&self, lus: &[usize]) -> Vec<Arc<TaskCtl>> {
        self.targets()
            .iter()
            .flat_map(|t| t.tasks_on(lus))
            .collect()
    }

    pub fn find_target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn find_tid(&self, tid: u32) -> Option<Arc<Target>> {
        self.targets.read().iter().find(|t| t.tid == tid).cloned()
    }

    /// Every session, discovery ones included, by id.
    pub fn all_sessions(&self) -> Vec<Arc<SessionShared>> {
        let mut v: Vec<_> = self.sessions.lock().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
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
        let s = Shared::new(
            vec!["127.0.0.1:3260".parse().expect("addr")],
            Limits::default(),
            Registry::new(crate::client::Options::default()),
            watch::channel(false).1,
        );
        for (i, cfg) in cfgs.into_iter().enumerate() {
            s.insert_target(Arc::new(Target::new(i as u32 + 1, cfg)));
        }
        Arc::new(s)
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
