//! Run-time administration: the requests `sheep-iscsi-adm` sends (tgtadm's
//! modes and operations), their answers with tgtadm's error numbers, the
//! `show` output (tgtadm's text shape, JSON, config dump), and
//! [`apply_config`], which makes the running state match a configuration
//! (start-up and SIGHUP reload) touching only what differs.
//!
//! Every change holds the registry lock, so changes never interleave.

use super::backend::{Disk, Registry};
use super::config::{
    self, parse_acl_address, Backing, Config, Credential, LunConfig, TargetConfig,
};
use super::scsi::{LogicalUnit, Path};
use super::shared::{Lun, SessionShared, Shared, Target};
use super::stats::{LunStats, StatsSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// tgtadm's error numbers (`enum tgtadm_errno`): the daemon answers with
/// one, the admin command prints its text and exits with EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum AdmErr {
    Success = 0,
    UnknownErr = 1,
    NoDriver = 3,
    NoTarget = 4,
    NoLun = 5,
    NoSession = 6,
    NoConnection = 7,
    NoBinding = 8,
    TargetExist = 9,
    LunExist = 10,
    BindingExist = 11,
    AclExist = 12,
    AclNoExist = 13,
    UserExist = 14,
    NoUser = 15,
    InvalidRequest = 17,
    OutAccountExist = 18,
    TargetActive = 19,
    LunActive = 20,
    UnsupportedOperation = 22,
    UnknownParam = 23,
}

impl AdmErr {
    /// tgtadm's message for this error.
    pub fn message(self) -> &'static str {
        match self {
            AdmErr::Success => "success",
            AdmErr::UnknownErr => "unknown error",
            AdmErr::NoDriver => "can't find the driver",
            AdmErr::NoTarget => "can't find the target",
            AdmErr::NoLun => "can't find the logical unit",
            AdmErr::NoSession => "can't find the session",
            AdmErr::NoConnection => "can't find the connection",
            AdmErr::NoBinding => "can't find the binding",
            AdmErr::TargetExist => "this target already exists",
            AdmErr::LunExist => "this logical unit number already exists",
            AdmErr::BindingExist => "this binding already exists",
            AdmErr::AclExist => "this access control rule already exists",
            AdmErr::AclNoExist => "this access control rule does not exist",
            AdmErr::UserExist => "this account already exists",
            AdmErr::NoUser => "can't find the account",
            AdmErr::InvalidRequest => "invalid request",
            AdmErr::OutAccountExist => "this target already has an outgoing account",
            AdmErr::TargetActive => "this target is still active",
            AdmErr::LunActive => "this logical unit is still active",
            AdmErr::UnsupportedOperation => "this operation isn't supported",
            AdmErr::UnknownParam => "unknown parameter",
        }
    }
}

/// One request over the control socket (one JSON line). Field names follow
/// tgtadm's long options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    pub mode: String,
    pub op: String,
    pub tid: Option<u32>,
    pub sid: Option<u64>,
    pub cid: Option<u32>,
    pub lun: Option<u64>,
    pub targetname: Option<String>,
    pub initiator_address: Option<String>,
    pub initiator_name: Option<String>,
    pub bstype: Option<String>,
    pub backing_store: Option<String>,
    pub params: Option<String>,
    pub name: Option<String>,
    pub value: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub outgoing: bool,
    pub force: bool,
    /// `show` as JSON.
    pub json: bool,
    /// `show` as a config file.
    pub dump: bool,
}

/// The answer (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: AdmErr,
    /// What exactly went wrong and what to do (empty on success).
    pub detail: String,
    /// What `show` prints.
    pub output: String,
}

type AResult<T> = Result<T, (AdmErr, String)>;

fn err<T>(code: AdmErr, detail: impl Into<String>) -> AResult<T> {
    Err((code, detail.into()))
}

fn need<T: Clone>(v: &Option<T>, what: &str) -> AResult<T> {
    match v {
        Some(x) => Ok(x.clone()),
        None => err(
            AdmErr::InvalidRequest,
            format!("'{what}' option is necessary"),
        ),
    }
}

/// Serves one request.
pub async fn handle(shared: &Arc<Shared>, req: &Request) -> Reply {
    let r = dispatch(shared, req).await;
    match r {
        Ok(output) => Reply {
            code: AdmErr::Success,
            detail: String::new(),
            output,
        },
        Err((code, detail)) => {
            tracing::info!(mode = %req.mode, op = %req.op, error = code.message(), %detail,
                "admin request refused");
            Reply {
                code,
                detail,
                output: String::new(),
            }
        }
    }
}

async fn dispatch(shared: &Arc<Shared>, r: &Request) -> AResult<String> {
    match (r.mode.as_str(), r.op.as_str()) {
        ("target", "show") => {
            let only = match r.tid {
                Some(_) => Some(target(shared, r.tid)?),
                None => None,
            };
            let pick = |t: &Arc<Target>| only.as_ref().is_none_or(|o| o.tid == t.tid);
            Ok(if r.dump {
                let mut c = running_config(shared);
                c.targets
                    .retain(|t| only.as_ref().is_none_or(|o| Some(o.tid) == t.tid));
                c.to_toml()
            } else if r.json {
                show_json(shared, &pick)
            } else {
                show_text(shared, &pick)
            })
        }
        ("target", "new") => {
            let tid = need(&r.tid, "tid")?;
            let name = need(&r.targetname, "targetname")?;
            let _g = shared.registry.lock().await;
            new_target(
                shared,
                TargetConfig {
                    name: name.to_ascii_lowercase(),
                    tid: Some(tid),
                    ..Default::default()
                },
            )
            .map(|_| String::new())
        }
        ("target", "delete") => {
            let t = target(shared, r.tid)?;
            let mut reg = shared.registry.lock().await;
            if !r.force && !t.sessions().is_empty() {
                return err(
                    AdmErr::TargetActive,
                    format!(
                        "target {} ({}) has {} session(s): use --force to end them",
                        t.tid,
                        t.name,
                        t.sessions().len()
                    ),
                );
            }
            delete_target(shared, &mut reg, &t).await;
            Ok(String::new())
        }
        ("target", "bind") | ("target", "unbind") => {
            let t = target(shared, r.tid)?;
            let _g = shared.registry.lock().await;
            acl_change(&t, r, r.op == "bind")?;
            Ok(String::new())
        }
        ("target", "update") => {
            let t = target(shared, r.tid)?;
            let _g = shared.registry.lock().await;
            match (r.name.as_deref(), r.value.as_deref()) {
                (Some(n), Some(v)) if n.eq_ignore_ascii_case("TargetAlias") => {
                    t.cfg.write().alias = (!v.is_empty()).then(|| v.to_string());
                    Ok(String::new())
                }
                (Some(n), Some(_)) => err(
                    AdmErr::UnknownParam,
                    format!("'{n}' cannot be changed (only TargetAlias)"),
                ),
                _ => err(
                    AdmErr::InvalidRequest,
                    "update operation requires 'name' and 'value' options",
                ),
            }
        }
        ("logicalunit", op) => lu_request(shared, r, op).await,
        ("account", op) => account_request(shared, r, op).await,
        ("conn", "show") => {
            let t = target(shared, r.tid)?;
            let mut o = String::new();
            for s in t.sessions() {
                if r.sid.is_some_and(|sid| sid != s.id) {
                    continue;
                }
                let _ = write!(
                    o,
                    "Session: {}\n    Connection: {}\n        Initiator: {}\n        IP Address: {}\n",
                    s.id,
                    s.cid,
                    s.nexus.initiator_name,
                    s.peer.ip()
                );
            }
            Ok(o)
        }
        ("conn", "delete") => {
            let t = target(shared, r.tid)?;
            let sid = need(&r.sid, "sid")?;
            let s = t.sessions().into_iter().find(|s| s.id == sid).ok_or((
                AdmErr::NoSession,
                format!("target {} has no session {sid}", t.tid),
            ))?;
            if r.cid.is_some_and(|c| c != u32::from(s.cid)) {
                return err(
                    AdmErr::NoConnection,
                    format!("session {sid} has no connection {}", r.cid.unwrap_or(0)),
                );
            }
            tracing::info!(sid, initiator = %s.nexus.initiator_name, "closing session (admin)");
            end_sessions(shared, &[s]).await;
            Ok(String::new())
        }
        ("system", "show") => Ok(system_show(shared)),
        ("system", "delete") => {
            let sessions = shared.all_sessions().len();
            if sessions > 0 && !r.force {
                return err(
                    AdmErr::TargetActive,
                    format!("{sessions} session(s) open: use --force to stop anyway"),
                );
            }
            shared.stop_request.notify_one();
            Ok(String::new())
        }
        (m, o) if ["target", "conn", "system"].contains(&m) => err(
            AdmErr::UnsupportedOperation,
            format!("operation {o} not supported in {m} mode"),
        ),
        (m, _) => err(AdmErr::InvalidRequest, format!("unknown mode: {m}")),
    }
}

fn target(shared: &Shared, tid: Option<u32>) -> AResult<Arc<Target>> {
    let tid = need(&tid, "tid")?;
    shared
        .find_tid(tid)
        .ok_or((AdmErr::NoTarget, format!("no target with tid {tid}")))
}

fn new_target(shared: &Shared, cfg: TargetConfig) -> AResult<Arc<Target>> {
    if let Err(e) = cfg.validate() {
        return err(AdmErr::InvalidRequest, e);
    }
    let tid = match cfg.tid {
        Some(t) => t,
        None => next_tid(shared, &BTreeSet::new()),
    };
    if shared.find_tid(tid).is_some() {
        return err(AdmErr::TargetExist, format!("tid {tid} is taken"));
    }
    if shared.find_target(&cfg.name).is_some() {
        return err(AdmErr::TargetExist, format!("target {} exists", cfg.name));
    }
    let t = Arc::new(Target::new(tid, cfg));
    shared.insert_target(t.clone());
    tracing::info!(tid, target_name = %t.name, "target created");
    if let Some(w) = open_warning(shared, &t) {
        tracing::warn!("{w}");
    }
    Ok(t)
}

fn next_tid(shared: &Shared, reserved: &BTreeSet<u32>) -> u32 {
    let used: BTreeSet<u32> = shared.targets().iter().map(|t| t.tid).collect();
    (1..)
        .find(|t| !used.contains(t) && !reserved.contains(t))
        .unwrap_or(u32::MAX)
}

/// Ends these sessions and waits (bounded) until they have cleaned up.
async fn end_sessions(shared: &Shared, sessions: &[Arc<SessionShared>]) {
    for s in sessions {
        s.kill.send_replace(true);
    }
    let wait = shared.limits.drain_timeout + Duration::from_secs(15);
    for s in sessions {
        let mut rx = s.closed.subscribe();
        if tokio::time::timeout(wait, rx.wait_for(|c| *c))
            .await
            .is_err()
        {
            tracing::warn!(sid = s.id, "session did not end in time");
        }
    }
}

/// Removes a target: its sessions end, its LUNs go, VDIs no longer used
/// are closed (their locks released).
async fn delete_target(shared: &Shared, reg: &mut Registry, t: &Arc<Target>) {
    shared.remove_target(t.tid);
    let sessions = t.sessions();
    if !sessions.is_empty() {
        tracing::info!(
            tid = t.tid,
            sessions = sessions.len(),
            "ending the target's sessions"
        );
    }
    end_sessions(shared, &sessions).await;
    for id in t.lun_ids() {
        remove_lun(shared, reg, t, id).await;
    }
    tracing::info!(tid = t.tid, target_name = %t.name, "target deleted");
}

/// Adds a LUN on an opened disk; sessions of the target are told.
fn add_lun(shared: &Shared, t: &Target, cfg: LunConfig, disk: Arc<Disk>) {
    // One logical unit per disk, whatever number of LUNs lead to it.
    let lu = shared
        .targets()
        .iter()
        .flat_map(|t| t.all_luns())
        .map(|l| l.lu.clone())
        .find(|lu| Arc::ptr_eq(&lu.disk, &disk))
        .unwrap_or_else(|| Arc::new(LogicalUnit::new(disk.clone())));
    let path = Path {
        lun: cfg.id,
        target_name: t.name.clone(),
        rel_port: t.rel_port,
        read_only: cfg.read_only || cfg.backing.is_snapshot(),
    };
    tracing::info!(tid = t.tid, target_name = %t.name, lun = cfg.id, backing = %cfg.backing,
        size = disk.backend.size(), read_only = path.read_only, "LUN ready");
    let lun = Lun {
        lu,
        path,
        cfg,
        stats: Arc::new(LunStats::default()),
    };
    t.luns.write().insert(lun.cfg.id, Arc::new(lun));
    t.luns_changed();
}

/// Removes a LUN: new commands to it fail at once (LOGICAL UNIT NOT
/// SUPPORTED), those in flight get a bounded time to finish, then its VDI
/// is released (and closed if no other LUN uses it, which releases the
/// lock; commands still running on it then fail).
async fn remove_lun(shared: &Shared, reg: &mut Registry, t: &Target, id: u64) -> bool {
    let Some(l) = t.luns.write().remove(&id) else {
        return false;
    };
    t.luns_changed();
    let tasks: Vec<_> = t
        .sessions()
        .iter()
        .flat_map(|s| s.tasks.lock().values().cloned().collect::<Vec<_>>())
        .filter(|task| task.lun == id)
        .collect();
    let wait = shared.limits.drain_timeout.min(Duration::from_secs(30));
    let all = async {
        for task in &tasks {
            task.wait_done().await;
        }
    };
    if tokio::time::timeout(wait, all).await.is_err() {
        tracing::warn!(
            tid = t.tid,
            lun = id,
            "commands still running on a deleted LUN will fail"
        );
    }
    for s in t.sessions() {
        l.lu.nexus_lost(&s.nexus.id);
    }
    reg.release(&l.lu.disk).await;
    tracing::info!(tid = t.tid, target_name = %t.name, lun = id, backing = %l.cfg.backing,
        "LUN deleted");
    true
}

async fn lu_request(shared: &Arc<Shared>, r: &Request, op: &str) -> AResult<String> {
    let t = target(shared, r.tid)?;
    let id = need(&r.lun, "lun")?;
    let mut reg = shared.registry.lock().await;
    match op {
        "new" => {
            if let Some(b) = r.bstype.as_deref().filter(|b| *b != "sheepdog") {
                return err(
                    AdmErr::InvalidRequest,
                    format!("backing store type '{b}' is not supported: use --bstype sheepdog"),
                );
            }
            if id > config::MAX_LUN {
                return err(
                    AdmErr::InvalidRequest,
                    format!("LUN {id} is above {}", config::MAX_LUN),
                );
            }
            let bs = need(&r.backing_store, "backing-store")?;
            let backing: Backing = bs.parse().map_err(|e| (AdmErr::InvalidRequest, e))?;
            let read_only = match &r.params {
                Some(p) => parse_lu_params(p)?.unwrap_or(false),
                None => false,
            };
            if t.lun(id).is_some() {
                return err(AdmErr::LunExist, format!("target {} has a LUN {id}", t.tid));
            }
            let disk = reg.open(&backing).await.map_err(|e| {
                (
                    AdmErr::InvalidRequest,
                    format!("target {} LUN {id} ({backing}): {e}", t.name),
                )
            })?;
            let cfg = LunConfig {
                id,
                backing,
                read_only,
            };
            add_lun(shared, &t, cfg, disk);
            Ok(String::new())
        }
        "delete" => {
            if t.lun(id).is_none() {
                return err(AdmErr::NoLun, format!("target {} has no LUN {id}", t.tid));
            }
            let n = t.sessions().len();
            if n > 0 && !r.force {
                return err(
                    AdmErr::LunActive,
                    format!(
                        "LUN {id} of target {} is in use by {n} session(s): use --force to delete it anyway (their commands to it then fail)",
                        t.tid
                    ),
                );
            }
            remove_lun(shared, &mut reg, &t, id).await;
            Ok(String::new())
        }
        "update" => {
            let Some(old) = t.lun(id) else {
                return err(AdmErr::NoLun, format!("target {} has no LUN {id}", t.tid));
            };
            let p = need(&r.params, "params")?;
            let Some(ro) = parse_lu_params(&p)? else {
                return Ok(String::new());
            };
            let mut cfg = old.cfg.clone();
            cfg.read_only = ro;
            let mut path = old.path.clone();
            path.read_only = ro || cfg.backing.is_snapshot();
            let new = Lun {
                lu: old.lu.clone(),
                path,
                cfg,
                stats: old.stats.clone(),
            };
            t.luns.write().insert(id, Arc::new(new));
            tracing::info!(tid = t.tid, lun = id, read_only = ro, "LUN updated");
            Ok(String::new())
        }
        o => err(
            AdmErr::UnsupportedOperation,
            format!("operation {o} not supported in logicalunit mode"),
        ),
    }
}

/// `readonly=0|1` (the one LU parameter that applies); `None` = not given.
fn parse_lu_params(p: &str) -> AResult<Option<bool>> {
    let mut ro = None;
    for kv in p.split(',').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("readonly", "1")) => ro = Some(true),
            Some(("readonly", "0")) => ro = Some(false),
            Some(("readonly", v)) => {
                return err(
                    AdmErr::InvalidRequest,
                    format!("readonly={v}: expected 0 or 1"),
                )
            }
            _ => {
                return err(
                    AdmErr::UnknownParam,
                    format!("'{kv}': the only parameter is readonly=0|1"),
                )
            }
        }
    }
    Ok(ro)
}

fn acl_change(t: &Target, r: &Request, bind: bool) -> AResult<()> {
    let mut cfg = t.cfg.write();
    let (list, value) = match (&r.initiator_address, &r.initiator_name) {
        (Some(a), _) => {
            parse_acl_address(a).map_err(|e| (AdmErr::InvalidRequest, e))?;
            let a = if a.eq_ignore_ascii_case("ALL") {
                "ALL".to_string()
            } else {
                a.clone()
            };
            (&mut cfg.addresses, a)
        }
        (None, Some(n)) => {
            config::validate_iscsi_name(n).map_err(|e| (AdmErr::InvalidRequest, e))?;
            (&mut cfg.initiators, n.clone())
        }
        (None, None) => {
            return err(
                AdmErr::InvalidRequest,
                "bind and unbind need --initiator-address or --initiator-name",
            )
        }
    };
    let at = list.iter().position(|x| x.eq_ignore_ascii_case(&value));
    match (bind, at) {
        (true, Some(_)) => return err(AdmErr::AclExist, format!("{value} is already bound")),
        (true, None) => list.push(value.clone()),
        (false, Some(i)) => {
            list.remove(i);
        }
        (false, None) => return err(AdmErr::AclNoExist, format!("{value} is not bound")),
    }
    tracing::info!(tid = t.tid, acl = %value, bind, "ACL changed (applies to new logins)");
    Ok(())
}

async fn account_request(shared: &Arc<Shared>, r: &Request, op: &str) -> AResult<String> {
    let _g = shared.registry.lock().await;
    match op {
        "show" => {
            let mut o = String::from("Account list:\n");
            for u in shared.accounts.lock().keys() {
                let _ = writeln!(o, "    {u}");
            }
            Ok(o)
        }
        "new" => {
            let user = need(&r.user, "user")?;
            let pass = need(&r.password, "password")?;
            let c: Credential = format!("{user}:{pass}")
                .parse()
                .map_err(|e| (AdmErr::InvalidRequest, e))?;
            let mut a = shared.accounts.lock();
            if a.contains_key(&user) {
                return err(AdmErr::UserExist, format!("account '{user}' exists"));
            }
            a.insert(user, c);
            Ok(String::new())
        }
        "delete" => {
            let user = need(&r.user, "user")?;
            if shared.accounts.lock().remove(&user).is_none() {
                return err(AdmErr::NoUser, format!("no account '{user}'"));
            }
            // Like tgt: the account goes from every target too.
            for t in shared.targets() {
                let mut c = t.cfg.write();
                c.chap.retain(|x| x.user != user);
                if c.mutual_chap.as_ref().is_some_and(|m| m.user == user) {
                    c.mutual_chap = None;
                }
            }
            Ok(String::new())
        }
        "bind" | "unbind" => {
            let user = need(&r.user, "user")?;
            if r.tid.is_none() {
                return err(
                    AdmErr::UnsupportedOperation,
                    "discovery authentication is not supported: give --tid",
                );
            }
            let t = target(shared, r.tid)?;
            let Some(cred) = shared.accounts.lock().get(&user).cloned() else {
                return err(AdmErr::NoUser, format!("no account '{user}'"));
            };
            let mut c = t.cfg.write();
            match (op, r.outgoing) {
                ("bind", true) => match &c.mutual_chap {
                    Some(m) if m.user != user => {
                        return err(
                            AdmErr::OutAccountExist,
                            format!("target {} answers as '{}'", t.tid, m.user),
                        )
                    }
                    _ => c.mutual_chap = Some(cred),
                },
                ("bind", false) => {
                    if c.chap.iter().any(|x| x.user == user) {
                        return err(AdmErr::BindingExist, format!("'{user}' is bound"));
                    }
                    c.chap.push(cred);
                }
                (_, true) => {
                    if c.mutual_chap.as_ref().is_none_or(|m| m.user != user) {
                        return err(AdmErr::NoBinding, format!("'{user}' is not bound"));
                    }
                    c.mutual_chap = None;
                }
                (_, false) => {
                    let before = c.chap.len();
                    c.chap.retain(|x| x.user != user);
                    if c.chap.len() == before {
                        return err(AdmErr::NoBinding, format!("'{user}' is not bound"));
                    }
                }
            }
            tracing::info!(
                tid = t.tid,
                user,
                op,
                outgoing = r.outgoing,
                "account binding changed"
            );
            Ok(String::new())
        }
        o => err(
            AdmErr::UnsupportedOperation,
            format!("operation {o} not supported in account mode"),
        ),
    }
}

// ---- configuration ------------------------------------------------------------

/// The configuration that recreates the running state.
pub fn running_config(shared: &Shared) -> Config {
    let targets: Vec<TargetConfig> = shared.targets().iter().map(|t| t.config()).collect();
    let bound: BTreeSet<String> = targets
        .iter()
        .flat_map(|t| t.chap.iter().chain(t.mutual_chap.iter()))
        .map(|c| c.user.clone())
        .collect();
    Config {
        portals: shared.portals.clone(),
        accounts: shared
            .accounts
            .lock()
            .values()
            .filter(|c| !bound.contains(&c.user))
            .cloned()
            .collect(),
        targets,
    }
}

/// Makes the running targets, LUNs, ACLs and accounts those of `cfg`:
/// what is only in the running state goes (sessions of a removed target
/// end; a removed LUN fails its commands), what is new is added (sessions
/// see new LUNs through a unit attention), what is the same is not
/// touched. All VDIs to add are opened first: if one fails, nothing
/// changes. Portals are fixed at start.
pub async fn apply_config(shared: &Arc<Shared>, cfg: &Config) -> Result<(), String> {
    cfg.validate()?;
    if !shared.portals.is_empty() && cfg.portals != shared.portals {
        let differs = cfg.portals.iter().any(|p| !shared.portals.contains(p));
        if differs && !cfg.portals.is_empty() {
            tracing::warn!("portals cannot change while running; restart to apply them");
        }
    }
    let mut reg = shared.registry.lock().await;
    let running = shared.targets();
    let by_name: BTreeMap<&str, &Arc<Target>> =
        running.iter().map(|t| (t.name.as_str(), t)).collect();
    // Targets that stay (same name, same tid when one is given).
    let kept: Vec<(&TargetConfig, &Arc<Target>)> = cfg
        .targets
        .iter()
        .filter_map(|c| {
            by_name
                .get(c.name.as_str())
                .filter(|t| c.tid.is_none_or(|tid| tid == t.tid))
                .map(|t| (c, *t))
        })
        .collect();
    let kept_names: BTreeSet<&str> = kept.iter().map(|(c, _)| c.name.as_str()).collect();
    let gone: Vec<&Arc<Target>> = running
        .iter()
        .filter(|t| !kept_names.contains(t.name.as_str()))
        .collect();
    let fresh: Vec<&TargetConfig> = cfg
        .targets
        .iter()
        .filter(|c| !kept_names.contains(c.name.as_str()))
        .collect();
    // A new target may not take the tid of one that stays.
    for c in &fresh {
        if let Some(tid) = c.tid {
            if let Some((_, t)) = kept.iter().find(|(_, t)| t.tid == tid) {
                return Err(format!(
                    "target {}: tid {tid} belongs to target {}",
                    c.name, t.name
                ));
            }
        }
    }
    // LUN changes of kept targets: removed or changed go, new or changed come.
    let mut lun_gone: Vec<(&Arc<Target>, u64)> = Vec::new();
    let mut lun_new: Vec<(&Arc<Target>, &LunConfig)> = Vec::new();
    for (c, t) in &kept {
        let want: BTreeMap<u64, &LunConfig> = c.luns.iter().map(|l| (l.id, l)).collect();
        for l in t.all_luns() {
            if want.get(&l.cfg.id).is_none_or(|w| **w != l.cfg) {
                lun_gone.push((t, l.cfg.id));
            }
        }
        for (id, w) in &want {
            if t.lun(*id).is_none_or(|l| l.cfg != **w) {
                lun_new.push((t, w));
            }
        }
    }
    // Open everything first; on failure undo the opens and change nothing.
    let wanted: Vec<(&str, &LunConfig)> = lun_new
        .iter()
        .map(|(t, l)| (t.name.as_str(), *l))
        .chain(
            fresh
                .iter()
                .flat_map(|c| c.luns.iter().map(move |l| (c.name.as_str(), l))),
        )
        .collect();
    let mut opened: Vec<Arc<Disk>> = Vec::new();
    for (name, l) in &wanted {
        match reg.open(&l.backing).await {
            Ok(d) => opened.push(d),
            Err(e) => {
                for d in &opened {
                    reg.release(d).await;
                }
                return Err(format!("target {name} LUN {} ({}): {e}", l.id, l.backing));
            }
        }
    }
    let mut opened = opened.into_iter();
    let (mut added, mut removed) = (0, 0);
    for t in &gone {
        delete_target(shared, &mut reg, t).await;
    }
    for (t, id) in &lun_gone {
        removed += usize::from(remove_lun(shared, &mut reg, t, *id).await);
    }
    for (t, l) in &lun_new {
        if let Some(d) = opened.next() {
            add_lun(shared, t, (*l).clone(), d);
            added += 1;
        }
    }
    let mut reserved: BTreeSet<u32> = fresh.iter().filter_map(|c| c.tid).collect();
    for c in &fresh {
        let mut c = (*c).clone();
        let tid = c.tid.unwrap_or_else(|| next_tid(shared, &reserved));
        reserved.insert(tid);
        c.tid = Some(tid);
        let luns = std::mem::take(&mut c.luns);
        let t = match new_target(shared, c) {
            Ok(t) => t,
            Err((_, e)) => {
                // Validated above; only a race with nothing could get here.
                tracing::error!(error = %e, "cannot create target");
                continue;
            }
        };
        for l in luns {
            if let Some(d) = opened.next() {
                add_lun(shared, &t, l, d);
                added += 1;
            }
        }
    }
    // Access (alias, CHAP, ACL) of kept targets: for new logins.
    for (c, t) in &kept {
        let mut now = t.cfg.write();
        let mut want = (*c).clone();
        want.luns.clear();
        want.tid = Some(t.tid);
        if *now != want {
            tracing::info!(tid = t.tid, target_name = %t.name, "target access settings changed");
            *now = want;
        }
    }
    let mut accounts = BTreeMap::new();
    for c in cfg.accounts.iter().chain(
        cfg.targets
            .iter()
            .flat_map(|t| t.chap.iter().chain(t.mutual_chap.iter())),
    ) {
        accounts.insert(c.user.clone(), c.clone());
    }
    *shared.accounts.lock() = accounts;
    tracing::info!(
        targets_added = fresh.len(),
        targets_removed = gone.len(),
        luns_added = added,
        luns_removed = removed,
        "configuration applied"
    );
    Ok(())
}

// ---- show ---------------------------------------------------------------------

/// Why a target is reachable by anyone, if it is: no CHAP and no ACL (or
/// only `ALL`) while a portal listens beyond loopback.
pub fn open_warning(shared: &Shared, t: &Target) -> Option<String> {
    if !t.cfg.read().is_open() {
        return None;
    }
    let p = shared.portals.iter().find(|p| !p.ip().is_loopback())?;
    Some(format!(
        "target {} ({}) accepts any initiator on portal {p}: no CHAP account and no initiator ACL; bind one (sheep-iscsi-adm --op bind)",
        t.tid, t.name
    ))
}

/// tgt's size display (decimal megabytes, computed as tgtadm does).
fn disk_size_mb(bytes: u64) -> u64 {
    let sectors = bytes / 512;
    (sectors + 974).saturating_sub(sectors / 625) / 1950
}

fn show_text(shared: &Shared, pick: &dyn Fn(&Arc<Target>) -> bool) -> String {
    let mut o = String::new();
    for t in shared.targets().into_iter().filter(pick) {
        let cfg = t.cfg.read().clone();
        let _ = write!(
            o,
            "Target {}: {}\n    System information:\n        Driver: iscsi\n        State: ready\n",
            t.tid, t.name
        );
        o.push_str("    I_T nexus information:\n");
        for s in t.sessions() {
            let _ = write!(
                o,
                "        I_T nexus: {}\n            Initiator: {} alias: none\n            Connection: {}\n                IP Address: {}\n",
                s.id,
                s.nexus.initiator_name,
                s.cid,
                s.peer.ip()
            );
        }
        o.push_str("    LUN information:\n");
        for l in t.all_luns() {
            let size = l.lu.disk.backend.size();
            let st = l.stats.snapshot();
            let yn = |b: bool| if b { "Yes" } else { "No" };
            let _ = write!(
                o,
                "        LUN: {}\n            Type: disk\n            SCSI ID: SHEEPDOG{}\n            SCSI SN: {}\n            Size: {} MB, Block size: 512\n            Online: Yes\n            Removable media: No\n            Prevent removal: No\n            Readonly: {}\n            SWP: No\n            Thin-provisioning: Yes\n            Backing store type: sheepdog\n            Backing store path: {}\n            Backing store flags:\n",
                l.cfg.id,
                l.lu.serial(),
                l.lu.serial(),
                disk_size_mb(size),
                yn(l.path.read_only),
                l.cfg.backing
            );
            let _ = write!(
                o,
                "            Commands: {}\n            Read bytes: {}\n            Written bytes: {}\n            Errors: {}\n            Latency (us): p50 {} p99 {} p99.9 {} max {}\n",
                st.commands,
                st.read_bytes,
                st.write_bytes,
                st.errors,
                st.latency_p50_us,
                st.latency_p99_us,
                st.latency_p999_us,
                st.latency_max_us
            );
        }
        o.push_str("    Account information:\n");
        for c in &cfg.chap {
            let _ = writeln!(o, "        {}", c.user);
        }
        if let Some(m) = &cfg.mutual_chap {
            let _ = writeln!(o, "        {} (outgoing)", m.user);
        }
        o.push_str("    ACL information:\n");
        for a in cfg.addresses.iter().chain(cfg.initiators.iter()) {
            let _ = writeln!(o, "        {a}");
        }
        if let Some(w) = open_warning(shared, &t) {
            let _ = writeln!(o, "    Warning: {w}");
        }
    }
    o
}

#[derive(Serialize)]
struct JsonState {
    portals: Vec<String>,
    targets: Vec<JsonTarget>,
    accounts: Vec<String>,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct JsonTarget {
    tid: u32,
    name: String,
    alias: Option<String>,
    sessions: Vec<JsonSession>,
    luns: Vec<JsonLun>,
    accounts: Vec<String>,
    outgoing_account: Option<String>,
    acl: Vec<String>,
}

#[derive(Serialize)]
struct JsonSession {
    sid: u64,
    tsih: u16,
    initiator: String,
    initiator_port: String,
    connections: Vec<JsonConn>,
    commands_in_flight: usize,
}

#[derive(Serialize)]
struct JsonConn {
    cid: u16,
    address: String,
}

#[derive(Serialize)]
struct JsonLun {
    lun: u64,
    backing_store: String,
    size: u64,
    block_size: u32,
    readonly: bool,
    scsi_sn: String,
    stats: StatsSnapshot,
}

fn show_json(shared: &Shared, pick: &dyn Fn(&Arc<Target>) -> bool) -> String {
    let targets: Vec<Arc<Target>> = shared.targets().into_iter().filter(pick).collect();
    let state = JsonState {
        portals: shared.portals.iter().map(|p| p.to_string()).collect(),
        accounts: shared.accounts.lock().keys().cloned().collect(),
        warnings: targets
            .iter()
            .filter_map(|t| open_warning(shared, t))
            .collect(),
        targets: targets
            .iter()
            .map(|t| {
                let cfg = t.cfg.read().clone();
                JsonTarget {
                    tid: t.tid,
                    name: t.name.clone(),
                    alias: cfg.alias.clone(),
                    sessions: t
                        .sessions()
                        .iter()
                        .map(|s| JsonSession {
                            sid: s.id,
                            tsih: s.tsih,
                            initiator: s.nexus.initiator_name.clone(),
                            initiator_port: s.nexus.initiator_port.clone(),
                            connections: vec![JsonConn {
                                cid: s.cid,
                                address: s.peer.to_string(),
                            }],
                            commands_in_flight: s.tasks.lock().len(),
                        })
                        .collect(),
                    luns: t
                        .all_luns()
                        .iter()
                        .map(|l| JsonLun {
                            lun: l.cfg.id,
                            backing_store: l.cfg.backing.to_string(),
                            size: l.lu.disk.backend.size(),
                            block_size: 512,
                            readonly: l.path.read_only,
                            scsi_sn: l.lu.serial(),
                            stats: l.stats.snapshot(),
                        })
                        .collect(),
                    accounts: cfg.chap.iter().map(|c| c.user.clone()).collect(),
                    outgoing_account: cfg.mutual_chap.as_ref().map(|c| c.user.clone()),
                    acl: cfg
                        .addresses
                        .iter()
                        .chain(cfg.initiators.iter())
                        .cloned()
                        .collect(),
                }
            })
            .collect(),
    };
    let mut s =
        serde_json::to_string_pretty(&state).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

fn system_show(shared: &Shared) -> String {
    let mut o = String::from(
        "System:\n    State: ready\n    debug: off\nLLDs:\n    iscsi: ready\nBacking stores:\n    sheepdog\nDevice types:\n    disk\niSNS:\n    iSNS=Off\n",
    );
    o.push_str("Portals:\n");
    for p in &shared.portals {
        let _ = writeln!(o, "    {p},{}", super::shared::TPGT);
    }
    let _ = writeln!(
        o,
        "Uptime: {}s\nTargets: {}\nSessions: {}",
        shared.started.elapsed().as_secs(),
        shared.targets().len(),
        shared.all_sessions().len()
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_targets_on_public_portals_are_warned_about() {
        let shared = |portal: &str| {
            Arc::new(Shared::new(
                vec![portal.parse().unwrap()],
                super::super::shared::Limits::default(),
                Registry::new(crate::client::Options::default()),
                tokio::sync::watch::channel(false).1,
            ))
        };
        let open = Request {
            mode: "target".into(),
            op: "new".into(),
            tid: Some(1),
            targetname: Some("iqn.2024-01.x:t".into()),
            ..Default::default()
        };
        let lo = shared("127.0.0.1:3260");
        assert_eq!(handle(&lo, &open).await.code, AdmErr::Success);
        assert!(!show_text(&lo, &|_| true).contains("Warning"));
        let any = shared("0.0.0.0:3260");
        handle(&any, &open).await;
        let w = show_text(&any, &|_| true);
        assert!(
            w.contains("    Warning: target 1 (iqn.2024-01.x:t) accepts any initiator"),
            "{w}"
        );
        // ALL is no restriction; a name is.
        let bind = |acl: (&str, &str)| Request {
            mode: "target".into(),
            op: "bind".into(),
            tid: Some(1),
            initiator_address: (acl.0 == "-I").then(|| acl.1.to_string()),
            initiator_name: (acl.0 == "-Q").then(|| acl.1.to_string()),
            ..Default::default()
        };
        handle(&any, &bind(("-I", "ALL"))).await;
        assert!(show_json(&any, &|_| true).contains("accepts any initiator"));
        handle(&any, &bind(("-Q", "iqn.2024-01.x:init"))).await;
        assert!(!show_json(&any, &|_| true).contains("accepts any initiator"));
        // Errors carry tgtadm's numbers.
        assert_eq!(handle(&any, &open).await.code, AdmErr::TargetExist);
        let r = handle(&any, &bind(("-Q", "iqn.2024-01.x:init"))).await;
        assert_eq!(r.code, AdmErr::AclExist);
        let mut gone = open.clone();
        gone.op = "delete".into();
        gone.tid = Some(7);
        assert_eq!(handle(&any, &gone).await.code, AdmErr::NoTarget);
    }

    #[test]
    fn sizes_like_tgtadm() {
        // 64 MiB shows as 67 MB, 1 GiB as 1074 MB.
        assert_eq!(disk_size_mb(64 << 20), 67);
        assert_eq!(disk_size_mb(1 << 30), 1074);
    }

    #[test]
    fn lu_params() {
        assert_eq!(parse_lu_params("readonly=1"), Ok(Some(true)));
        assert_eq!(parse_lu_params("readonly=0"), Ok(Some(false)));
        assert_eq!(parse_lu_params("").map_err(|e| e.0), Ok(None));
        assert_eq!(
            parse_lu_params("foo=1").map_err(|e| e.0),
            Err(AdmErr::UnknownParam)
        );
        assert_eq!(
            parse_lu_params("readonly=2").map_err(|e| e.0),
            Err(AdmErr::InvalidRequest)
        );
    }

    #[test]
    fn requests_are_strict_json() {
        let r: Request = serde_json::from_str(r#"{"mode":"target","op":"show"}"#).unwrap();
        assert_eq!(r.mode, "target");
        assert!(serde_json::from_str::<Request>(r#"{"mode":"target","bogus":1}"#).is_err());
        let rep = Reply {
            code: AdmErr::LunActive,
            detail: "x".into(),
            output: String::new(),
        };
        let back: Reply = serde_json::from_str(&serde_json::to_string(&rep).unwrap()).unwrap();
        assert_eq!(back, rep);
        assert_eq!(back.code.message(), "this logical unit is still active");
    }
}
