//! The login phase (RFC 7143 §6.3, §11.12-11.13, §13): security
//! negotiation (None or CHAP), operational negotiation, and the login
//! status codes for what goes wrong. A pure state machine: PDUs in,
//! PDUs out; the connection code does the I/O.

use super::chap;
use super::config::Credential;
use super::pdu::{op, Bhs, Pdu};
pub use super::shared::TPGT;
use super::shared::{Limits, Shared, Target};
use super::text::{self, KvList};
use std::collections::HashSet;
use std::sync::Arc;

/// Login status (class, detail).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILED: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILED: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 1);
}

pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// Parameters in force after login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator accepts per PDU (limits our Data-In segments).
    pub initiator_mrdsl: u32,
    /// What we accept per PDU (declared by us).
    pub target_mrdsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub time2wait: u32,
    pub time2retain: u32,
}

impl SessionParams {
    /// RFC 7143 defaults, with our declared receive limit.
    pub fn defaults(limits: &Limits) -> SessionParams {
        SessionParams {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: limits.max_recv_data_segment,
            max_burst: 262_144.min(limits.max_burst),
            first_burst: 65_536.min(limits.first_burst),
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            time2wait: 2,
            time2retain: 20,
        }
    }
}

#[derive(Clone)]
pub enum SessionKind {
    Discovery,
    Normal(Arc<Target>),
}

impl std::fmt::Debug for SessionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionKind::Discovery => write!(f, "Discovery"),
            SessionKind::Normal(t) => write!(f, "Normal({})", t.name),
        }
    }
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub initiator: String,
    pub kind: SessionKind,
    pub params: SessionParams,
    /// ExpCmdSN at the start of the full feature phase.
    pub cmd_sn: u32,
    /// Next StatSN to send.
    pub stat_sn: u32,
}

pub enum Outcome {
    /// Send this and read the next Login Request.
    Continue(Pdu),
    /// Send this; the full feature phase starts.
    Done(Pdu, Box<LoginResult>),
    /// Send this and close the connection (the string says why, for logs).
    Fail(Pdu, String),
}

enum Auth {
    /// Nothing negotiated yet.
    Start,
    Done,
    WaitChapA,
    WaitChapR {
        id: u8,
        challenge: Vec<u8>,
    },
}

pub struct Login {
    shared: Arc<Shared>,
    started: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    itt: u32,
    cmd_sn: u32,
    stat_sn: u32,
    stage: u8,
    initiator: String,
    kind: Option<SessionKind>,
    auth: Auth,
    chap_user: Option<String>,
    params: SessionParams,
    seen: HashSet<String>,
    partial: Vec<u8>,
    declared_mrdsl: bool,
    sent_tpgt: bool,
    /// The initiator's address, for address ACLs (unknown in unit tests).
    peer: Option<std::net::IpAddr>,
}

struct Failure((u8, u8), String);

fn fail(st: (u8, u8), why: impl Into<String>) -> Failure {
    Failure(st, why.into())
}

impl Login {
    pub fn new(shared: Arc<Shared>) -> Login {
        let params = SessionParams::defaults(&shared.limits);
        Login {
            shared,
            started: false,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 0,
            stat_sn: 0,
            stage: STAGE_SECURITY,
            initiator: String::new(),
            kind: None,
            auth: Auth::Start,
            chap_user: None,
            params,
            seen: HashSet::new(),
            partial: Vec::new(),
            declared_mrdsl: false,
            sent_tpgt: false,
            peer: None,
        }
    }

    /// Where the initiator connects from (address ACLs match it).
    pub fn with_peer(mut self, ip: std::net::IpAddr) -> Login {
        self.peer = Some(ip);
        self
    }

    /// The initiator name, once known (for logs).
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    fn rsp(&mut self, transit: bool, csg: u8, nsg: u8, st: (u8, u8), data: Vec<u8>) -> Pdu {
        let mut b = Bhs::new(op::LOGIN_RSP);
        let mut f = (csg & 3) << 2 | (nsg & 3);
        if transit {
            f |= 0x80;
        }
        if st != status::SUCCESS {
            f = 0;
        }
        b.set_flags(f);
        b.0[2] = 0; // version-max
        b.0[3] = 0; // version-active
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_itt(self.itt);
        b.set_u32(24, self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        b.set_u32(28, self.cmd_sn);
        b.set_u32(
            32,
            self.cmd_sn
                .wrapping_add(self.shared.limits.queue_depth.max(1) - 1),
        );
        b.0[36] = st.0;
        b.0[37] = st.1;
        Pdu::new(b).with_data(data)
    }

    /// Handles one Login Request.
    pub fn step(&mut self, req: &Pdu) -> Outcome {
        match self.step_inner(req) {
            Ok(o) => o,
            Err(Failure(st, why)) => {
                let p = self.rsp(false, 0, 0, st, Vec::new());
                Outcome::Fail(p, why)
            }
        }
    }

    fn step_inner(&mut self, req: &Pdu) -> Result<Outcome, Failure> {
        let b = &req.bhs;
        if b.opcode() != op::LOGIN_REQ {
            return Err(fail(
                status::INVALID_DURING_LOGIN,
                format!("{} during login", op::name(b.opcode())),
            ));
        }
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        let tsih = b.u16_at(14);
        let cid = b.u16_at(20);
        self.itt = b.itt();
        if !self.started {
            self.started = true;
            self.isid = isid;
            self.tsih = tsih;
            self.cid = cid;
            self.cmd_sn = b.u32_at(24);
            self.stat_sn = b.u32_at(28);
            let (vmax, vmin) = (b.0[2], b.0[3]);
            if vmin > 0 || vmax < vmin {
                return Err(fail(
                    status::UNSUPPORTED_VERSION,
                    format!("iSCSI version {vmin}..{vmax} not supported"),
                ));
            }
        } else if isid != self.isid || tsih != self.tsih || cid != self.cid {
            return Err(fail(
                status::INITIATOR_ERROR,
                "ISID, TSIH or CID changed during login",
            ));
        }
        let flags = b.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        if transit && cont {
            return Err(fail(status::INITIATOR_ERROR, "T and C both set"));
        }
        if csg != self.stage || csg == 2 || csg == 3 {
            // The first PDU may skip security negotiation.
            let skip = csg == STAGE_OPERATIONAL
                && self.stage == STAGE_SECURITY
                && matches!(self.auth, Auth::Start);
            if !skip {
                return Err(fail(
                    status::INITIATOR_ERROR,
                    format!("login stage {csg} unexpected (at {})", self.stage),
                ));
            }
            self.stage = STAGE_OPERATIONAL;
        }
        if transit && (nsg == 2 || nsg <= csg) {
            return Err(fail(
                status::INITIATOR_ERROR,
                format!("invalid next stage {nsg} from stage {csg}"),
            ));
        }
        if self.partial.len() + req.data.len() > text::MAX_TEXT {
            return Err(fail(status::INITIATOR_ERROR, "login text too long"));
        }
        self.partial.extend_from_slice(&req.data);
        if cont {
            // More text follows: acknowledge with an empty response.
            let p = self.rsp(false, csg, 0, status::SUCCESS, Vec::new());
            return Ok(Outcome::Continue(p));
        }
        let data = std::mem::take(&mut self.partial);
        let kv = text::parse(&data).map_err(|e| fail(status::INITIATOR_ERROR, e.to_string()))?;
        for (k, _) in &kv.0 {
            if !self.seen.insert(k.clone()) {
                return Err(fail(
                    status::INITIATOR_ERROR,
                    format!("key {k} negotiated twice"),
                ));
            }
        }
        let mut out = KvList::new();
        if self.kind.is_none() {
            self.leading(&kv, &mut out)?;
        }
        if csg == STAGE_SECURITY {
            self.security(&kv, &mut out)?;
        } else if matches!(self.auth, Auth::Start) {
            // Operational stage without security negotiation.
            if self.auth_required() {
                return Err(fail(
                    status::AUTH_FAILED,
                    "authentication required but the initiator skipped it",
                ));
            }
            self.auth = Auth::Done;
        } else if !matches!(self.auth, Auth::Done) {
            return Err(fail(status::AUTH_FAILED, "authentication not finished"));
        }
        self.operational(&kv, csg, &mut out)?;

        // Transit only when asked and when authentication is complete.
        let can_transit = transit && matches!(self.auth, Auth::Done);
        // From the operational stage the only next stage is full feature.
        let t_nsg = match (can_transit, csg) {
            (false, _) => 0,
            (true, STAGE_OPERATIONAL) => STAGE_FULL_FEATURE,
            (true, _) => nsg,
        };
        if can_transit && t_nsg == STAGE_FULL_FEATURE && !self.declared_mrdsl {
            out.push(
                "MaxRecvDataSegmentLength",
                self.params.target_mrdsl.to_string(),
            );
            self.declared_mrdsl = true;
        }
        if can_transit && t_nsg == STAGE_FULL_FEATURE {
            let kind = self
                .kind
                .clone()
                .ok_or_else(|| fail(status::MISSING_PARAMETER, "session type unknown"))?;
            if self.tsih == 0 {
                self.tsih = self.shared.alloc_tsih();
            }
            // FirstBurstLength must not exceed MaxBurstLength (§13.14).
            self.params.first_burst = self.params.first_burst.min(self.params.max_burst);
            let data = out.encode();
            let p = self.rsp(true, csg, t_nsg, status::SUCCESS, data);
            let res = LoginResult {
                isid: self.isid,
                tsih: self.tsih,
                cid: self.cid,
                initiator: self.initiator.clone(),
                kind,
                params: self.params.clone(),
                cmd_sn: self.cmd_sn,
                stat_sn: self.stat_sn,
            };
            return Ok(Outcome::Done(p, Box::new(res)));
        }
        if can_transit {
            self.stage = t_nsg;
        }
        let data = out.encode();
        let p = self.rsp(can_transit, csg, t_nsg, status::SUCCESS, data);
        Ok(Outcome::Continue(p))
    }

    fn auth_required(&self) -> bool {
        match &self.kind {
            Some(SessionKind::Normal(t)) => !t.cfg.read().chap.is_empty(),
            _ => false,
        }
    }

    fn target_cfg(&self) -> Option<&Arc<Target>> {
        match &self.kind {
            Some(SessionKind::Normal(t)) => Some(t),
            _ => None,
        }
    }

    /// Keys of the first request: who is logging in, to what.
    fn leading(&mut self, kv: &KvList, out: &mut KvList) -> Result<(), Failure> {
        let name = kv
            .get("InitiatorName")
            .ok_or_else(|| fail(status::MISSING_PARAMETER, "InitiatorName missing"))?;
        if name.is_empty() || name.len() > 223 {
            return Err(fail(status::INITIATOR_ERROR, "invalid InitiatorName"));
        }
        self.initiator = name.to_string();
        let kind = match kv.get("SessionType").unwrap_or("Normal") {
            "Discovery" => SessionKind::Discovery,
            "Normal" => {
                let tn = kv
                    .get("TargetName")
                    .ok_or_else(|| fail(status::MISSING_PARAMETER, "TargetName missing"))?;
                let t = self
                    .shared
                    .find_target(tn)
                    .ok_or_else(|| fail(status::NOT_FOUND, format!("no target named {tn}")))?;
                if !t.allows(name, self.peer) {
                    return Err(fail(
                        status::AUTHORIZATION_FAILED,
                        format!("initiator {name} not allowed on {}", t.name),
                    ));
                }
                SessionKind::Normal(t)
            }
            other => {
                return Err(fail(
                    status::SESSION_TYPE_UNSUPPORTED,
                    format!("SessionType {other} unknown"),
                ))
            }
        };
        if self.tsih != 0 {
            return Err(if self.shared.tsih_in_use(self.tsih) {
                fail(
                    status::TOO_MANY_CONNECTIONS,
                    "adding a connection to a session is not supported (MaxConnections=1)",
                )
            } else {
                fail(
                    status::SESSION_DOES_NOT_EXIST,
                    format!("no session with TSIH {}", self.tsih),
                )
            });
        }
        if let SessionKind::Normal(t) = &kind {
            out.push("TargetPortalGroupTag", TPGT.to_string());
            if let Some(a) = t.cfg.read().alias.clone() {
                out.push("TargetAlias", a);
            }
            self.sent_tpgt = true;
        }
        self.kind = Some(kind);
        Ok(())
    }

    fn security(&mut self, kv: &KvList, out: &mut KvList) -> Result<(), Failure> {
        let required = self.auth_required();
        let has_chap_keys = kv.0.iter().any(|(k, _)| k.starts_with("CHAP_"));
        match std::mem::replace(&mut self.auth, Auth::Done) {
            Auth::Start => {
                match kv.get("AuthMethod") {
                    None if required => {
                        return Err(fail(
                            status::AUTH_FAILED,
                            "CHAP required, AuthMethod not offered",
                        ))
                    }
                    None => self.auth = Auth::Done,
                    Some(list) => {
                        let offered: Vec<&str> = list.split(',').collect();
                        if required {
                            if !offered.contains(&"CHAP") {
                                return Err(fail(
                                    status::AUTH_FAILED,
                                    format!("CHAP required, initiator offered AuthMethod={list}"),
                                ));
                            }
                            out.push("AuthMethod", "CHAP");
                            self.auth = Auth::WaitChapA;
                        } else if offered.contains(&"None") {
                            out.push("AuthMethod", "None");
                            self.auth = Auth::Done;
                        } else {
                            return Err(fail(
                                status::AUTH_FAILED,
                                format!(
                                    "no CHAP users configured, initiator offered AuthMethod={list}"
                                ),
                            ));
                        }
                    }
                }
                if has_chap_keys && matches!(self.auth, Auth::Done) {
                    return Err(fail(status::INITIATOR_ERROR, "CHAP keys without CHAP"));
                }
                if matches!(self.auth, Auth::WaitChapA) && kv.get("CHAP_A").is_some() {
                    self.auth = Auth::WaitChapA;
                    self.chap_a(kv, out)?;
                }
            }
            Auth::WaitChapA => {
                self.auth = Auth::WaitChapA;
                self.chap_a(kv, out)?;
            }
            Auth::WaitChapR { id, challenge } => {
                self.chap_r(kv, out, id, &challenge)?;
                self.auth = Auth::Done;
            }
            Auth::Done => {
                if has_chap_keys || kv.get("AuthMethod").is_some() {
                    return Err(fail(
                        status::INITIATOR_ERROR,
                        "security keys after authentication",
                    ));
                }
            }
        }
        Ok(())
    }

    fn chap_a(&mut self, kv: &KvList, out: &mut KvList) -> Result<(), Failure> {
        let list = kv
            .get("CHAP_A")
            .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP_A missing"))?;
        let md5 = list
            .split(',')
            .any(|a| text::parse_number(a) == Some(chap::ALG_MD5 as u64));
        if !md5 {
            return Err(fail(
                status::AUTH_FAILED,
                format!("CHAP_A={list}: only MD5 (5) is supported"),
            ));
        }
        let (id, challenge) = chap::new_challenge();
        out.push("CHAP_A", "5");
        out.push("CHAP_I", id.to_string());
        out.push("CHAP_C", text::encode_hex(&challenge));
        self.auth = Auth::WaitChapR { id, challenge };
        Ok(())
    }

    fn chap_r(
        &mut self,
        kv: &KvList,
        out: &mut KvList,
        id: u8,
        challenge: &[u8],
    ) -> Result<(), Failure> {
        let t = self
            .target_cfg()
            .cloned()
            .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP outside a normal session"))?;
        let user = kv
            .get("CHAP_N")
            .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP_N missing"))?;
        let r = kv
            .get("CHAP_R")
            .and_then(text::decode_binary)
            .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP_R missing or malformed"))?;
        let cred: Option<Credential> = t.cfg.read().chap.iter().find(|c| c.user == user).cloned();
        let ok = cred
            .map(|c| chap::ct_eq(&chap::response(id, &c.secret, challenge), &r))
            .unwrap_or(false);
        if !ok {
            return Err(fail(
                status::AUTH_FAILED,
                format!("CHAP authentication of user '{user}' failed"),
            ));
        }
        self.chap_user = Some(user.to_string());
        // Mutual CHAP: the initiator challenges us.
        match (kv.get("CHAP_I"), kv.get("CHAP_C")) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let mid = text::parse_number(i)
                    .filter(|&n| n <= 255)
                    .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP_I malformed"))?
                    as u8;
                let mc = text::decode_binary(c)
                    .filter(|c| !c.is_empty() && c.len() <= chap::MAX_CHALLENGE_LEN)
                    .ok_or_else(|| fail(status::AUTH_FAILED, "CHAP_C malformed"))?;
                if mc == challenge {
                    return Err(fail(
                        status::AUTH_FAILED,
                        "initiator reflected our CHAP challenge",
                    ));
                }
                let m = t.cfg.read().mutual_chap.clone().ok_or_else(|| {
                    fail(
                        status::AUTH_FAILED,
                        "initiator asked for mutual CHAP, none configured",
                    )
                })?;
                out.push("CHAP_N", m.user.clone());
                out.push(
                    "CHAP_R",
                    text::encode_hex(&chap::response(mid, &m.secret, &mc)),
                );
            }
            _ => {
                return Err(fail(
                    status::AUTH_FAILED,
                    "mutual CHAP needs both CHAP_I and CHAP_C",
                ))
            }
        }
        Ok(())
    }

    /// Operational keys (accepted in either stage; answered per §13).
    fn operational(&mut self, kv: &KvList, csg: u8, out: &mut KvList) -> Result<(), Failure> {
        let limits = self.shared.limits.clone();
        for (k, v) in &kv.0 {
            let k = k.as_str();
            let v = v.as_str();
            if matches!(v, "NotUnderstood" | "Irrelevant" | "Reject") {
                continue;
            }
            let num = |lo: u64, hi: u64| text::parse_number(v).filter(|n| (lo..=hi).contains(n));
            let answer: Option<String> = match k {
                "InitiatorName" | "InitiatorAlias" | "SessionType" | "TargetName" => None,
                "AuthMethod" if csg == STAGE_SECURITY => None,
                k if k.starts_with("CHAP_") && csg == STAGE_SECURITY => None,
                "AuthMethod" => {
                    return Err(fail(
                        status::INITIATOR_ERROR,
                        "AuthMethod outside security stage",
                    ))
                }
                k if k.starts_with("CHAP_") => {
                    return Err(fail(
                        status::INITIATOR_ERROR,
                        "CHAP keys outside security stage",
                    ))
                }
                "HeaderDigest" | "DataDigest" => {
                    let pick = v.split(',').find(|d| *d == "CRC32C" || *d == "None");
                    match pick {
                        Some(d) => {
                            let on = d == "CRC32C";
                            if k == "HeaderDigest" {
                                self.params.header_digest = on;
                            } else {
                                self.params.data_digest = on;
                            }
                            Some(d.to_string())
                        }
                        None => Some("Reject".into()),
                    }
                }
                "MaxConnections" => Some(match num(1, 65535) {
                    Some(_) => "1".into(),
                    None => "Reject".into(),
                }),
                "InitialR2T" => Some(match text::parse_bool(v) {
                    Some(b) => {
                        // Result function OR; ours is No.
                        self.params.initial_r2t = b;
                        text::yes_no(b).into()
                    }
                    None => "Reject".into(),
                }),
                "ImmediateData" => Some(match text::parse_bool(v) {
                    Some(b) => {
                        // Result function AND; ours is Yes.
                        self.params.immediate_data = b;
                        text::yes_no(b).into()
                    }
                    None => "Reject".into(),
                }),
                "MaxRecvDataSegmentLength" => match num(512, 16_777_215) {
                    Some(n) => {
                        self.params.initiator_mrdsl = n as u32;
                        None
                    }
                    None => Some("Reject".into()),
                },
                "MaxBurstLength" => Some(match num(512, 16_777_215) {
                    Some(n) => {
                        let r = (n as u32).min(limits.max_burst);
                        self.params.max_burst = r;
                        r.to_string()
                    }
                    None => "Reject".into(),
                }),
                "FirstBurstLength" => Some(match num(512, 16_777_215) {
                    Some(n) => {
                        let r = (n as u32).min(limits.first_burst);
                        self.params.first_burst = r;
                        r.to_string()
                    }
                    None => "Reject".into(),
                }),
                "DefaultTime2Wait" => Some(match num(0, 3600) {
                    Some(n) => {
                        let r = (n as u32).max(2);
                        self.params.time2wait = r;
                        r.to_string()
                    }
                    None => "Reject".into(),
                }),
                "DefaultTime2Retain" => Some(match num(0, 3600) {
                    Some(n) => {
                        // ERL 0: nothing is retained after a connection drops.
                        let r = (n as u32).min(20);
                        self.params.time2retain = r;
                        r.to_string()
                    }
                    None => "Reject".into(),
                }),
                "MaxOutstandingR2T" => Some(match num(1, 65535) {
                    Some(n) => {
                        let r = (n as u32).min(limits.max_outstanding_r2t);
                        self.params.max_outstanding_r2t = r;
                        r.to_string()
                    }
                    None => "Reject".into(),
                }),
                "DataPDUInOrder" | "DataSequenceInOrder" => Some(match text::parse_bool(v) {
                    // Result function OR; ours is Yes.
                    Some(_) => "Yes".into(),
                    None => "Reject".into(),
                }),
                "ErrorRecoveryLevel" => Some(match num(0, 2) {
                    Some(_) => "0".into(),
                    None => "Reject".into(),
                }),
                "IFMarker" | "OFMarker" => Some(match text::parse_bool(v) {
                    Some(_) => "No".into(),
                    None => "Reject".into(),
                }),
                "IFMarkInt" | "OFMarkInt" => Some("Irrelevant".into()),
                "iSCSIProtocolLevel" => Some(match num(0, 31) {
                    Some(n) => n.min(1).to_string(),
                    None => "Reject".into(),
                }),
                "TaskReporting" => Some("RFC3720".into()),
                "SendTargets" => Some("Irrelevant".into()),
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    Some("Irrelevant".into())
                }
                _ => Some("NotUnderstood".into()),
            };
            if let Some(a) = answer {
                out.push(k, a);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::config::TargetConfig;

    fn shared(chap: Vec<Credential>, mutual: Option<Credential>) -> Arc<Shared> {
        let cfg = TargetConfig {
            name: "iqn.2024-01.test:t".into(),
            alias: None,
            luns: vec![],
            chap,
            mutual_chap: mutual,
            ..Default::default()
        };
        Shared::for_tests(vec![cfg])
    }

    fn req(flags: u8, kv: &[(&str, &str)]) -> Pdu {
        let mut b = Bhs::new(op::LOGIN_REQ);
        b.set_immediate(true);
        b.set_flags(flags);
        b.0[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
        b.set_itt(1);
        let mut l = KvList::new();
        for (k, v) in kv {
            l.push(k, *v);
        }
        Pdu::new(b).with_data(l.encode())
    }

    fn kv(p: &Pdu) -> KvList {
        text::parse(&p.data).unwrap()
    }

    fn class(p: &Pdu) -> (u8, u8) {
        (p.bhs.0[36], p.bhs.0[37])
    }

    #[test]
    fn no_auth_login_to_full_feature() {
        let mut l = Login::new(shared(vec![], None));
        let o = l.step(&req(
            0x81,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2024-01.test:T"),
                ("SessionType", "Normal"),
                ("AuthMethod", "CHAP,None"),
            ],
        ));
        let Outcome::Continue(p) = o else { panic!() };
        assert_eq!(class(&p), (0, 0));
        assert_eq!(p.bhs.flags(), 0x81);
        let k = kv(&p);
        assert_eq!(k.get("AuthMethod"), Some("None"));
        assert_eq!(k.get("TargetPortalGroupTag"), Some("1"));
        let o = l.step(&req(
            0x87,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("InitialR2T", "No"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("X-com.example.Foo", "1"),
                ("ErrorRecoveryLevel", "2"),
            ],
        ));
        let Outcome::Done(p, r) = o else { panic!() };
        assert_eq!(p.bhs.flags(), 0x87);
        let k = kv(&p);
        assert_eq!(k.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(k.get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(k.get("ErrorRecoveryLevel"), Some("0"));
        assert!(k.get("MaxRecvDataSegmentLength").is_some());
        assert!(r.params.header_digest && !r.params.data_digest);
        assert_eq!(r.params.initiator_mrdsl, 65536);
        assert!(!r.params.initial_r2t);
        assert_ne!(r.tsih, 0);
    }

    #[test]
    fn missing_and_unknown() {
        let mut l = Login::new(shared(vec![], None));
        let Outcome::Fail(p, _) = l.step(&req(0x81, &[("TargetName", "iqn.2024-01.test:t")]))
        else {
            panic!()
        };
        assert_eq!(class(&p), status::MISSING_PARAMETER);
        let mut l = Login::new(shared(vec![], None));
        let Outcome::Fail(p, _) = l.step(&req(
            0x81,
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.nope")],
        )) else {
            panic!()
        };
        assert_eq!(class(&p), status::NOT_FOUND);
        let mut l = Login::new(shared(vec![], None));
        let Outcome::Fail(p, _) = l.step(&req(
            0x81,
            &[("InitiatorName", "iqn.i"), ("SessionType", "Bogus")],
        )) else {
            panic!()
        };
        assert_eq!(class(&p), status::SESSION_TYPE_UNSUPPORTED);
    }

    fn chap_login(secret: &str, mutual: bool) -> (Outcome, Vec<u8>) {
        let tgt_secret = b"targetsecret1".to_vec();
        let mut l = Login::new(shared(
            vec!["user:initsecret12".parse().unwrap()],
            Some(Credential {
                user: "tgt".into(),
                secret: tgt_secret.clone(),
            }),
        ));
        let Outcome::Continue(p) = l.step(&req(
            0x01,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2024-01.test:t"),
                ("AuthMethod", "CHAP,None"),
            ],
        )) else {
            panic!()
        };
        assert_eq!(kv(&p).get("AuthMethod"), Some("CHAP"));
        let Outcome::Continue(p) = l.step(&req(0x01, &[("CHAP_A", "7,5")])) else {
            panic!()
        };
        let k = kv(&p);
        let id: u8 = k.get("CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(k.get("CHAP_C").unwrap()).unwrap();
        let r = chap::response(id, secret.as_bytes(), &c);
        let rh = text::encode_hex(&r);
        let mut keys = vec![("CHAP_N", "user"), ("CHAP_R", rh.as_str())];
        let my_c = "0x0102030405060708090a0b0c0d0e0f10";
        if mutual {
            keys.push(("CHAP_I", "77"));
            keys.push(("CHAP_C", my_c));
        }
        let o = l.step(&req(0x81, &keys));
        let expect = chap::response(77, &tgt_secret, &text::decode_binary(my_c).unwrap());
        (o, expect.to_vec())
    }

    #[test]
    fn chap_one_way_and_mutual() {
        let (o, _) = chap_login("initsecret12", false);
        let Outcome::Continue(p) = o else { panic!() };
        assert_eq!(p.bhs.flags() & 0x80, 0x80);
        let (o, expect) = chap_login("initsecret12", true);
        let Outcome::Continue(p) = o else { panic!() };
        let k = kv(&p);
        assert_eq!(k.get("CHAP_N"), Some("tgt"));
        assert_eq!(
            text::decode_binary(k.get("CHAP_R").unwrap()).unwrap(),
            expect
        );
        let (o, _) = chap_login("wrongsecret!", false);
        let Outcome::Fail(p, why) = o else { panic!() };
        assert_eq!(class(&p), status::AUTH_FAILED, "{why}");
    }

    #[test]
    fn chap_required_cannot_be_skipped() {
        let mut l = Login::new(shared(vec!["user:initsecret12".parse().unwrap()], None));
        let Outcome::Fail(p, _) = l.step(&req(
            0x87,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2024-01.test:t"),
            ],
        )) else {
            panic!()
        };
        assert_eq!(class(&p), status::AUTH_FAILED);
    }

    #[test]
    fn duplicate_key_and_bad_stage() {
        let mut l = Login::new(shared(vec![], None));
        let _ = l.step(&req(
            0x81,
            &[("InitiatorName", "iqn.i"), ("SessionType", "Discovery")],
        ));
        let Outcome::Fail(p, _) = l.step(&req(0x87, &[("InitiatorName", "iqn.i")])) else {
            panic!()
        };
        assert_eq!(class(&p), status::INITIATOR_ERROR);
        let mut l = Login::new(shared(vec![], None));
        let Outcome::Fail(p, _) = l.step(&req(0x8e, &[("InitiatorName", "iqn.i")])) else {
            panic!()
        };
        assert_eq!(class(&p), status::INITIATOR_ERROR);
    }
}
