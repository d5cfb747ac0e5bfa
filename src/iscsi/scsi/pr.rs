//! Reservations of one logical unit: SPC-2 RESERVE/RELEASE and SPC-4
//! persistent reservations (registrations kept in memory; APTPL is not
//! supported, which REPORT CAPABILITIES says).

use super::{asc, be32, be64, illegal, invalid_cdb, invalid_param, Nexus, Sense};

/// Persistent reservation types.
pub mod ptype {
    pub const WE: u8 = 1;
    pub const EA: u8 = 3;
    pub const WE_RO: u8 = 5;
    pub const EA_RO: u8 = 6;
    pub const WE_AR: u8 = 7;
    pub const EA_AR: u8 = 8;
}

/// How a command uses the medium, for conflict checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never conflicts (INQUIRY, REPORT LUNS, ...).
    Free,
    Read,
    Write,
}

#[derive(Debug, Clone)]
struct PrRes {
    holder: String,
    rtype: u8,
}

#[derive(Debug, Default)]
pub struct Reservations {
    /// SPC-2 RESERVE holder (initiator port).
    spc2: Option<String>,
    generation: u32,
    /// (I_T nexus id, key, relative target port) in registration order.
    regs: Vec<(String, u64, u16)>,
    res: Option<PrRes>,
}

/// Why PERSISTENT RESERVE OUT did not succeed.
pub enum PrError {
    Conflict,
    Sense(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Sense(s)
    }
}

fn all_registrants(t: u8) -> bool {
    t == ptype::WE_AR || t == ptype::EA_AR
}
fn registrants_only(t: u8) -> bool {
    t == ptype::WE_RO || t == ptype::EA_RO
}
fn exclusive_access(t: u8) -> bool {
    matches!(t, ptype::EA | ptype::EA_RO | ptype::EA_AR)
}
fn valid_type(t: u8) -> bool {
    matches!(
        t,
        ptype::WE | ptype::EA | ptype::WE_RO | ptype::EA_RO | ptype::WE_AR | ptype::EA_AR
    )
}

/// Effects of a PR OUT on other nexuses: unit attentions to queue.
pub type Attentions = Vec<(String, (u8, u8))>;

impl Reservations {
    fn key_of(&self, port: &str) -> Option<u64> {
        self.regs
            .iter()
            .find(|(p, _, _)| p == port)
            .map(|(_, k, _)| *k)
    }

    fn is_holder(&self, port: &str) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.rtype) => self.key_of(port).is_some(),
            Some(r) => r.holder == port,
            None => false,
        }
    }

    /// Whether a command of `class` from `port` meets a reservation conflict.
    pub fn conflicts(&self, port: &str, class: Class, spc2_exempt: bool) -> bool {
        if class == Class::Free {
            return false;
        }
        if let Some(h) = &self.spc2 {
            if h != port && !spc2_exempt {
                return true;
            }
        }
        let Some(r) = &self.res else { return false };
        if self.is_holder(port) {
            return false;
        }
        let registered = self.key_of(port).is_some();
        if (registrants_only(r.rtype) || all_registrants(r.rtype)) && registered {
            return false;
        }
        class == Class::Write || exclusive_access(r.rtype)
    }

    pub fn has_persistent(&self) -> bool {
        self.res.is_some() || !self.regs.is_empty()
    }

    // ---- SPC-2 ----

    /// RESERVE(6/10).
    pub fn reserve(&mut self, port: &str) -> bool {
        if self.has_persistent() {
            return false;
        }
        match &self.spc2 {
            Some(h) if h != port => false,
            _ => {
                self.spc2 = Some(port.to_string());
                true
            }
        }
    }

    /// RELEASE(6/10): only the holder's release has an effect.
    pub fn release(&mut self, port: &str) {
        if self.spc2.as_deref() == Some(port) {
            self.spc2 = None;
        }
    }

    /// LUN reset: SPC-2 reservations go, persistent ones stay.
    pub fn reset(&mut self) {
        self.spc2 = None;
    }

    /// I_T nexus loss (logout, session end).
    pub fn nexus_lost(&mut self, port: &str) {
        self.release(port);
    }

    // ---- PERSISTENT RESERVE IN ----

    pub fn pr_in(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let sa = cdb[1] & 0x1f;
        let mut out = Vec::new();
        out.extend_from_slice(&self.generation.to_be_bytes());
        match sa {
            0 => {
                out.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for (_, k, _) in &self.regs {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => match &self.res {
                None => out.extend_from_slice(&0u32.to_be_bytes()),
                Some(r) => {
                    out.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(r.rtype) {
                        0
                    } else {
                        self.key_of(&r.holder).unwrap_or(0)
                    };
                    out.extend_from_slice(&key.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 0, 0, r.rtype & 0x0f, 0, 0]);
                }
            },
            2 => {
                out.clear();
                // Length 8; CRH=1 (SPC-2 RESERVE fails under PR), no SIP_C,
                // no ATP_C, no PTPL_C; TMV=1, ALLOW_COMMANDS=0.
                out.extend_from_slice(&[0, 8, 0x10, 0x80, 0xea, 0x01, 0, 0]);
            }
            3 => {
                let mut body = Vec::new();
                for (port, key, rel) in &self.regs {
                    let mut d = vec![0u8; 24];
                    d[..8].copy_from_slice(&key.to_be_bytes());
                    if self.is_holder(port) {
                        if let Some(r) = &self.res {
                            d[12] = 0x01;
                            d[13] = r.rtype & 0x0f;
                        }
                    }
                    d[18..20].copy_from_slice(&rel.to_be_bytes());
                    // The nexus id is "initiator port|target port".
                    let tid = transport_id(port.split('|').next().unwrap_or(port));
                    d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                    body.extend_from_slice(&d);
                }
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
            }
            _ => return Err(invalid_cdb(1)),
        }
        Ok(out)
    }

    // ---- PERSISTENT RESERVE OUT ----

    /// Applies a PR OUT; returns the unit attentions for other nexuses.
    pub fn pr_out(
        &mut self,
        cdb: &[u8],
        param: &[u8],
        nexus: &Nexus,
    ) -> Result<Attentions, PrError> {
        let sa = cdb[1] & 0x1f;
        let scope = cdb[2] >> 4;
        let rtype = cdb[2] & 0x0f;
        let plen = be32(&cdb[5..9]) as usize;
        if sa > 7 {
            return Err(invalid_cdb(1).into());
        }
        if sa == 7 {
            // REGISTER AND MOVE: not supported.
            return Err(invalid_cdb(1).into());
        }
        if plen != 24 {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR).into());
        }
        if param.len() < 24 {
            return Err(illegal(asc::PARAM_LIST_LENGTH_ERROR).into());
        }
        let rkey = be64(&param[0..8]);
        let sakey = be64(&param[8..16]);
        let flags = param[20];
        if flags & 0x08 != 0 {
            // SPEC_I_PT
            return Err(invalid_param(20).into());
        }
        if flags & 0x04 != 0 {
            // ALL_TG_PT: we have one target port per LU; accept but ignore
            // would mislead, so refuse as SPC-4 allows when ATP_C = 0.
            return Err(invalid_param(20).into());
        }
        if flags & 0x01 != 0 {
            // APTPL: registrations are not kept across power loss.
            return Err(invalid_param(20).into());
        }
        let me = nexus.id.as_str();
        let mine = self.key_of(me);
        let mut ua = Attentions::new();
        match sa {
            0 | 6 => {
                if sa == 0 {
                    match mine {
                        None if rkey != 0 => return Err(PrError::Conflict),
                        Some(k) if k != rkey => return Err(PrError::Conflict),
                        _ => {}
                    }
                }
                match (mine, sakey) {
                    (None, 0) => {}
                    (None, k) => {
                        self.regs.push((me.to_string(), k, nexus.rel_port));
                        self.generation = self.generation.wrapping_add(1);
                    }
                    (Some(_), 0) => {
                        self.unregister(me, &mut ua);
                        self.generation = self.generation.wrapping_add(1);
                    }
                    (Some(_), k) => {
                        if let Some(r) = self.regs.iter_mut().find(|(p, _, _)| p == me) {
                            r.1 = k;
                        }
                        self.generation = self.generation.wrapping_add(1);
                    }
                }
            }
            1 => {
                if mine != Some(rkey) {
                    return Err(PrError::Conflict);
                }
                if scope != 0 || !valid_type(rtype) {
                    return Err(invalid_cdb(2).into());
                }
                match &self.res {
                    None => {
                        self.res = Some(PrRes {
                            holder: me.to_string(),
                            rtype,
                        })
                    }
                    Some(r) if self.is_holder(me) && r.rtype == rtype => {}
                    Some(_) => return Err(PrError::Conflict),
                }
            }
            2 => {
                if mine != Some(rkey) {
                    return Err(PrError::Conflict);
                }
                if let Some(r) = self.res.clone() {
                    if self.is_holder(me) {
                        if r.rtype != rtype || scope != 0 {
                            return Err(illegal((0x26, 0x04)).into());
                        }
                        self.res = None;
                        if registrants_only(r.rtype) || all_registrants(r.rtype) {
                            for (p, _, _) in &self.regs {
                                if p != me {
                                    ua.push((p.clone(), asc::RESERVATIONS_RELEASED));
                                }
                            }
                        }
                    }
                }
            }
            3 => {
                if mine != Some(rkey) {
                    return Err(PrError::Conflict);
                }
                for (p, _, _) in &self.regs {
                    if p != me {
                        ua.push((p.clone(), asc::RESERVATIONS_PREEMPTED));
                    }
                }
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
            }
            4 | 5 => {
                if mine != Some(rkey) {
                    return Err(PrError::Conflict);
                }
                self.preempt(me, sakey, scope, rtype, &mut ua)?;
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(invalid_cdb(1).into()),
        }
        Ok(ua)
    }

    fn unregister(&mut self, port: &str, ua: &mut Attentions) {
        self.regs.retain(|(p, _, _)| p != port);
        if let Some(r) = self.res.clone() {
            let drop_res = if all_registrants(r.rtype) {
                self.regs.is_empty()
            } else {
                r.holder == port
            };
            if drop_res {
                self.res = None;
                if registrants_only(r.rtype) {
                    for (p, _, _) in &self.regs {
                        ua.push((p.clone(), asc::RESERVATIONS_RELEASED));
                    }
                }
            }
        }
    }

    fn preempt(
        &mut self,
        me: &str,
        sakey: u64,
        scope: u8,
        rtype: u8,
        ua: &mut Attentions,
    ) -> Result<(), PrError> {
        let remove_matching = |s: &mut Self, ua: &mut Attentions, key: u64, keep: &str| -> usize {
            let mut n = 0;
            s.regs.retain(|(p, k, _)| {
                if *k == key && p != keep {
                    ua.push((p.clone(), asc::REGISTRATIONS_PREEMPTED));
                    n += 1;
                    false
                } else {
                    true
                }
            });
            n
        };
        match self.res.clone() {
            None => {
                if sakey == 0 {
                    return Err(invalid_param(8).into());
                }
                if remove_matching(self, ua, sakey, me) == 0 {
                    return Err(PrError::Conflict);
                }
            }
            Some(r) if all_registrants(r.rtype) => {
                if sakey == 0 {
                    if scope != 0 || !valid_type(rtype) {
                        return Err(invalid_cdb(2).into());
                    }
                    let others: Vec<String> = self
                        .regs
                        .iter()
                        .filter(|(p, _, _)| p != me)
                        .map(|(p, _, _)| p.clone())
                        .collect();
                    for p in others {
                        ua.push((p, asc::REGISTRATIONS_PREEMPTED));
                    }
                    self.regs.retain(|(p, _, _)| p == me);
                    self.res = Some(PrRes {
                        holder: me.to_string(),
                        rtype,
                    });
                } else {
                    remove_matching(self, ua, sakey, me);
                }
            }
            Some(r) => {
                let holder_key = self.key_of(&r.holder);
                if holder_key == Some(sakey) {
                    if scope != 0 || !valid_type(rtype) {
                        return Err(invalid_cdb(2).into());
                    }
                    remove_matching(self, ua, sakey, me);
                    self.res = Some(PrRes {
                        holder: me.to_string(),
                        rtype,
                    });
                    if r.rtype != rtype {
                        for (p, _, _) in &self.regs {
                            if p != me {
                                ua.push((p.clone(), asc::RESERVATIONS_RELEASED));
                            }
                        }
                    }
                } else {
                    if sakey == 0 {
                        return Err(invalid_param(8).into());
                    }
                    if remove_matching(self, ua, sakey, me) == 0 {
                        return Err(PrError::Conflict);
                    }
                }
            }
        }
        Ok(())
    }
}

/// iSCSI TransportID with ISID (SPC-4 §7.6.4.6), padded to 4 bytes.
fn transport_id(port: &str) -> Vec<u8> {
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    while name.len() % 4 != 0 || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![0x45, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(p: &str) -> Nexus {
        Nexus {
            id: p.into(),
            initiator_port: p.into(),
            initiator_name: p.into(),
            target_port: "t".into(),
            rel_port: 1,
        }
    }

    fn out(
        r: &mut Reservations,
        who: &str,
        sa: u8,
        rtype: u8,
        key: u64,
        sakey: u64,
    ) -> Result<Attentions, PrError> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5f;
        cdb[1] = sa;
        cdb[2] = rtype;
        cdb[8] = 24;
        let mut p = [0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        r.pr_out(&cdb, &p, &nx(who))
    }

    #[test]
    fn register_reserve_conflict_preempt() {
        let mut r = Reservations::default();
        assert!(out(&mut r, "a", 0, 0, 0, 1).is_ok());
        assert!(out(&mut r, "b", 0, 0, 0, 2).is_ok());
        // Wrong key.
        assert!(matches!(
            out(&mut r, "a", 1, ptype::WE, 9, 0),
            Err(PrError::Conflict)
        ));
        assert!(out(&mut r, "a", 1, ptype::WE, 1, 0).is_ok());
        assert!(!r.conflicts("b", Class::Read, false));
        assert!(r.conflicts("b", Class::Write, false));
        assert!(!r.conflicts("a", Class::Write, false));
        // b preempts a.
        let ua = out(&mut r, "b", 4, ptype::EA, 2, 1).ok().unwrap();
        assert_eq!(ua[0].0, "a");
        assert!(r.conflicts("a", Class::Read, false));
        assert_eq!(r.key_of("a"), None);
        // SPC-2 reserve is refused while PR exists.
        assert!(!r.reserve("c"));
        let keys = r.pr_in(&[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(be32(&keys[4..8]), 8);
        assert_eq!(be64(&keys[8..16]), 2);
    }

    #[test]
    fn spc2_reserve() {
        let mut r = Reservations::default();
        assert!(r.reserve("a"));
        assert!(r.reserve("a"));
        assert!(!r.reserve("b"));
        assert!(r.conflicts("b", Class::Read, false));
        assert!(!r.conflicts("b", Class::Read, true));
        r.release("b");
        assert!(r.conflicts("b", Class::Read, false));
        r.nexus_lost("a");
        assert!(!r.conflicts("b", Class::Write, false));
    }
}
