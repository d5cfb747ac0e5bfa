//! One iSCSI connection: login, then the full feature phase in one loop
//! that reads PDUs, polls the command tasks and writes what they queue
//! (stamping sequence numbers in send order), so a command goes from its
//! PDU to its response without a hop to another task or thread.

use super::backend::Reservation;
use super::login::{Login, LoginResult, Outcome, SessionKind, SessionParams};
use super::pdu::{self, off, op, read_pdu, reject, Bhs, Framing, Pdu, PduError, RESERVED_TAG};
use super::scsi::{self, lu, Access, Command, Nexus};
use super::shared::{nexus_for, Lun, SessionShared, Shared, Target, TPGT};
use super::task::{self, AbortResult, Out, SnState, TaskCtl};
use super::text::{self, KvList};
use super::wire::{Inbound, Outbound};
use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};
use tracing::Instrument;

/// Largest EDTL we collect for one write (the SCSI layer's limit plus room
/// for parameter lists).
const MAX_WRITE_EDTL: u32 = (scsi::MAX_XFER_BYTES as u32) + 65536;
/// Immediate SCSI commands allowed beyond the CmdSN window.
const IMMEDIATE_SLACK: u32 = 16;
/// SPC-4 REPORTED LUNS DATA HAS CHANGED.
const REPORTED_LUNS_CHANGED: (u8, u8) = (0x3f, 0x0e);
/// Unsent bytes beyond which the loop stops reading new PDUs until the
/// initiator takes its responses (the commands in flight still finish).
const OUT_BACKLOG: usize = 8 << 20;

/// Serves one TCP connection to the end.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no local address");
            return;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let span = tracing::info_span!("conn", %peer);
    let res = login(&shared, peer, &mut rd, &mut wr)
        .instrument(span.clone())
        .await;
    let Some(res) = res else { return };
    full_feature(shared, rd, wr, res, local, peer)
        .instrument(span)
        .await;
}

async fn login(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Option<LoginResult> {
    let mut l = Login::new(shared.clone()).with_peer(peer.ip());
    let deadline = tokio::time::Instant::now() + shared.limits.login_timeout;
    let fr = Framing::login();
    loop {
        let pdu = match tokio::time::timeout_at(deadline, read_pdu(rd, &fr)).await {
            Err(_) => {
                tracing::info!("login timed out");
                return None;
            }
            Ok(Err(PduError::Eof)) => return None,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "login failed");
                return None;
            }
            Ok(Ok(p)) => p,
        };
        let (rsp, result) = match l.step(&pdu) {
            Outcome::Continue(p) => (p, None),
            Outcome::Done(p, r) => (p, Some(Ok(r))),
            Outcome::Fail(p, why) => {
                tracing::info!(initiator = %l.initiator(), reason = %why, "login refused");
                (p, Some(Err(())))
            }
        };
        let ok = async {
            pdu::write_pdu(wr, rsp, &fr).await?;
            wr.flush().await
        }
        .await;
        if let Err(e) = ok {
            tracing::info!(error = %e, "login: write failed");
            return None;
        }
        match result {
            None => continue,
            Some(Ok(r)) => return Some(*r),
            Some(Err(())) => {
                let _ = wr.shutdown().await;
                return None;
            }
        }
    }
}

/// State the command tasks share with the connection.
struct ConnShared {
    /// PDUs for the loop to send, in order; None once the connection ended.
    out: parking_lot::Mutex<Option<Vec<Out>>>,
    sn: SnState,
    /// Wakes the loop when a PDU was queued from outside it (task
    /// management). Command tasks need not: the loop polls them itself and
    /// looks at the queue (and at logout and drain) after each poll.
    idle: Notify,
    /// MaxRecvDataSegmentLength of the initiator (may change by Text).
    initiator_mrdsl: AtomicU32,
    max_burst: u32,
}

impl ConnShared {
    /// Queues PDUs for the loop to send; false once the connection ended.
    fn queue(&self, pdus: impl IntoIterator<Item = Out>) -> bool {
        match self.out.lock().as_mut() {
            Some(q) => {
                q.extend(pdus);
                true
            }
            None => false,
        }
    }
}

/// Where a write's data comes from.
enum DataIn {
    None,
    Ready(Bytes),
    Wait(oneshot::Receiver<XferResult>),
}

/// All the data and the number of R2Ts, or why the data phase failed.
type XferResult = Result<(Bytes, u32), scsi::Sense>;

/// A write collecting its Data-Out.
struct WriteXfer {
    task: Arc<TaskCtl>,
    lun_raw: [u8; 8],
    edtl: u32,
    buf: BytesMut,
    unsol_end: u32,
    unsol_sn: u32,
    solicited: bool,
    r2ts: VecDeque<R2tSeq>,
    next_off: u32,
    r2t_sn: u32,
    tx: Option<oneshot::Sender<XferResult>>,
}

struct R2tSeq {
    ttt: u32,
    end: u32,
    next_sn: u32,
}

/// A Text response longer than the initiator's segment limit, sent in parts.
struct TextCont {
    ttt: u32,
    itt: u32,
    rest: Bytes,
}

enum Kind {
    Lu(Arc<Lun>),
    /// REPORT LUNS, or a LUN that does not exist.
    Target(Arc<Target>),
}

struct Conn {
    shared: Arc<Shared>,
    sess: Arc<SessionShared>,
    kind: SessionKind,
    params: SessionParams,
    cs: Arc<ConnShared>,
    local: SocketAddr,
    peer: SocketAddr,
    xfers: HashMap<u32, WriteXfer>,
    pending: BTreeMap<u32, Option<Pdu>>,
    next_ttt: u32,
    text_cont: Option<TextCont>,
    text_partial: Option<(u32, Vec<u8>)>,
    logout: Option<(u32, Instant)>,
    draining: Option<Instant>,
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
    /// Commands just delivered; the connection's loop moves them into the
    /// set it polls itself (no hop to another task or thread between
    /// receiving a command and running it). A mutex only to keep Conn Sync.
    new_tasks: parking_lot::Mutex<Vec<BoxFuture<'static, ()>>>,
}

/// Why the connection ends.
#[derive(Debug)]
enum End {
    Closed,
    Protocol(String),
}

async fn full_feature(
    shared: Arc<Shared>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    res: LoginResult,
    local: SocketAddr,
    peer: SocketAddr,
) {
    let target_name = match &res.kind {
        SessionKind::Normal(t) => t.name.clone(),
        SessionKind::Discovery => String::new(),
    };
    let rel_port = match &res.kind {
        SessionKind::Normal(t) => t.rel_port,
        SessionKind::Discovery => 0,
    };
    let nexus = nexus_for(&res.initiator, &res.isid, &target_name, rel_port);
    let (kill_tx, mut kill_rx) = watch::channel(false);
    let sess = Arc::new(SessionShared {
        id: shared.next_session_id(),
        tsih: res.tsih,
        cid: res.cid,
        peer,
        since: std::time::SystemTime::now(),
        luns_changed: std::sync::atomic::AtomicBool::new(false),
        key: (
            res.initiator.to_ascii_lowercase(),
            res.isid,
            target_name.clone(),
        ),
        nexus,
        target: match &res.kind {
            SessionKind::Normal(t) => Some(t.clone()),
            SessionKind::Discovery => None,
        },
        tasks: parking_lot::Mutex::new(HashMap::new()),
        kill: kill_tx,
        closed: watch::channel(false).0,
    });
    shared
        .register_session(sess.clone(), shared.limits.drain_timeout)
        .await;
    if let Some(t) = &sess.target {
        // Deleted while this login ran: its session-ending pass missed us.
        if !shared.find_tid(t.tid).is_some_and(|x| Arc::ptr_eq(&x, t)) {
            tracing::info!(target = %target_name, "target deleted during login");
            sess.kill.send_replace(true);
        }
    }
    tracing::info!(initiator = %res.initiator, target = %target_name, tsih = res.tsih,
        kind = ?res.kind, header_digest = res.params.header_digest,
        data_digest = res.params.data_digest, "session started");

    let framing = Framing {
        header_digest: res.params.header_digest,
        data_digest: res.params.data_digest,
        max_recv: res.params.target_mrdsl,
    };
    let cs = Arc::new(ConnShared {
        out: parking_lot::Mutex::new(Some(Vec::new())),
        sn: SnState::new(res.cmd_sn, shared.limits.queue_depth),
        idle: Notify::new(),
        initiator_mrdsl: AtomicU32::new(res.params.initiator_mrdsl),
        max_burst: res.params.max_burst,
    });
    let mut inbound = Inbound::new(rd, framing);
    let mut outbound = Outbound::new(wr, framing, res.stat_sn);
    let mut sending = Vec::new();

    let mut c = Conn {
        shared: shared.clone(),
        sess: sess.clone(),
        kind: res.kind.clone(),
        params: res.params.clone(),
        cs: cs.clone(),
        local,
        peer,
        xfers: HashMap::new(),
        pending: BTreeMap::new(),
        next_ttt: 1,
        text_cont: None,
        text_partial: None,
        logout: None,
        draining: None,
        ping: None,
        last_rx: Instant::now(),
        new_tasks: parking_lot::Mutex::new(Vec::new()),
    };
    let mut running: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    let mut shutdown = shared.shutdown.clone();
    if *shutdown.borrow() {
        c.draining = Some(Instant::now());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let end = loop {
        running.extend(c.new_tasks.get_mut().drain(..));
        // Every command that can go on does so now: new ones send their
        // requests, finished ones queue their responses to share one write.
        while let Some(Some(())) = running.next().now_or_never() {}
        if let Some(e) = c.check_finish().await {
            break e;
        }
        send_queued(&cs, &mut sending, &mut outbound);
        if let Err(e) = outbound.try_flush() {
            tracing::debug!(error = %e, "write failed");
            break End::Closed;
        }
        let backlog = outbound.pending() > OUT_BACKLOG;
        tokio::select! {
            r = inbound.fill(), if !backlog => match r {
                Ok(0) if inbound.partial() => break End::Protocol("connection closed inside a PDU".into()),
                Ok(0) => break End::Closed,
                Ok(_) => {
                    // Every PDU that has arrived, without another wake-up.
                    if let Err(e) = receive(&mut c, &mut inbound).await {
                        break e;
                    }
                }
                Err(e) => break End::Protocol(format!("receive failed: {e}")),
            },
            r = outbound.writable(), if outbound.pending() > 0 => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "write failed");
                    break End::Closed;
                }
            }
            Some(()) = running.next(), if !running.is_empty() => {}
            _ = cs.idle.notified() => {}
            _ = tick.tick() => {
                if let Some(e) = c.keepalive().await {
                    break e;
                }
            }
            r = shutdown.changed(), if c.draining.is_none() => {
                if r.is_err() || *shutdown.borrow() {
                    tracing::info!("draining for shutdown");
                    c.draining = Some(Instant::now());
                }
            }
            _ = kill_rx.changed() => break End::Protocol("session reinstated or reset".into()),
        }
    };
    match &end {
        End::Closed => tracing::info!(peer = %peer, "connection closed"),
        End::Protocol(why) => tracing::info!(peer = %peer, reason = %why, "closing connection"),
    }
    // Tasks still running finish their I/O but send nothing.
    let tasks: Vec<Arc<TaskCtl>> = sess.tasks.lock().values().cloned().collect();
    for t in &tasks {
        t.abort();
    }
    c.xfers.clear();
    running.extend(c.new_tasks.get_mut().drain(..));
    drop(c);
    // What was queued before the end (a logout response, a reject) is
    // sent; an initiator that stopped reading gets a bounded wait. Meanwhile
    // the commands still executing run to their end.
    let grace = Duration::from_secs(10);
    send_queued(&cs, &mut sending, &mut outbound);
    *cs.out.lock() = None;
    let close = async {
        match tokio::time::timeout(grace, outbound.flush()).await {
            Ok(Ok(())) => outbound.shutdown().await,
            Ok(Err(e)) => tracing::debug!(error = %e, "write failed"),
            Err(_) => tracing::info!("initiator not reading; dropping unsent PDUs"),
        }
    };
    let drain = async { while running.next().await.is_some() {} };
    futures::join!(close, drain);
    for t in &tasks {
        t.wait_done().await;
    }
    shared.unregister_session(&sess);
    if let Some(t) = &sess.target {
        for l in t.all_luns() {
            l.lu.nexus_lost(&sess.nexus.id);
        }
    }
    sess.closed.send_replace(true);
}

/// Handles every complete PDU in the receive buffer.
async fn receive(c: &mut Conn, inbound: &mut Inbound) -> Result<(), End> {
    loop {
        match inbound.next_pdu() {
            Ok(Some(p)) => {
                c.last_rx = Instant::now();
                c.handle(p).await?;
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(c.read_error(e).await),
        }
    }
}

/// Moves what the loop and the tasks queued to the socket's queue, in order.
fn send_queued(cs: &ConnShared, sending: &mut Vec<Out>, outbound: &mut Outbound) {
    if let Some(q) = cs.out.lock().as_mut() {
        std::mem::swap(q, sending);
    }
    for Out::Pdu { pdu, status } in sending.drain(..) {
        outbound.push(pdu, status, cs.sn.values());
    }
}

impl Conn {
    async fn send(&self, pdu: Pdu, status: bool) -> Result<(), End> {
        if self.cs.queue([Out::Pdu { pdu, status }]) {
            Ok(())
        } else {
            Err(End::Closed)
        }
    }

    async fn reject(&self, bad: &Bhs, reason: u8) -> Result<(), End> {
        tracing::info!(reason, pdu = ?bad, "rejecting PDU");
        let mut b = Bhs::new(op::REJECT);
        b.set_flags(0x80);
        b.0[2] = reason;
        b.set_itt(RESERVED_TAG);
        self.send(Pdu::new(b).with_data(bad.0.to_vec()), true).await
    }

    /// The unit attention a command gets after the target's LUN inventory
    /// changed (once per change); REPORT LUNS clears it, INQUIRY and
    /// REQUEST SENSE pass (SPC-4 §5.14).
    fn luns_changed_attention(&self, opcode: u8) -> Option<scsi::Sense> {
        let flag = &self.sess.luns_changed;
        match opcode {
            0xa0 => {
                flag.store(false, Ordering::Relaxed);
                None
            }
            0x12 | 0x03 => None,
            _ => flag
                .swap(false, Ordering::Relaxed)
                .then(|| scsi::Sense::new(scsi::key::UNIT_ATTENTION, REPORTED_LUNS_CHANGED)),
        }
    }

    fn ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    async fn read_error(&mut self, e: PduError) -> End {
        match e {
            PduError::Eof => End::Closed,
            PduError::DataDigest(b) => {
                // ERL 0 cannot recover the lost data: reject, then close.
                let _ = self.reject(&b, reject::DATA_DIGEST).await;
                End::Protocol("data digest error".into())
            }
            PduError::TooLong { bhs, len, max } => {
                let _ = self.reject(&bhs, reject::PROTOCOL_ERROR).await;
                End::Protocol(format!("data segment of {len} bytes exceeds {max}"))
            }
            e => End::Protocol(e.to_string()),
        }
    }

    /// Ends the connection once a logout or a drain has nothing left to wait for.
    async fn check_finish(&mut self) -> Option<End> {
        let inflight = self.cs.sn.inflight();
        let limit = self.shared.limits.drain_timeout;
        if let Some((itt, since)) = self.logout {
            if inflight > 0 && since.elapsed() < limit {
                return None;
            }
            if inflight > 0 {
                tracing::warn!(inflight, "logout: aborting commands that did not finish");
            }
            let mut b = Bhs::new(op::LOGOUT_RSP);
            b.set_flags(0x80);
            b.0[2] = 0;
            b.set_itt(itt);
            let _ = self.send(Pdu::new(b), true).await;
            tracing::info!("logged out");
            return Some(End::Closed);
        }
        if let Some(since) = self.draining {
            if inflight == 0 || since.elapsed() >= limit {
                return Some(End::Protocol("target shutting down".into()));
            }
        }
        None
    }

    async fn keepalive(&mut self) -> Option<End> {
        let l = &self.shared.limits;
        if let Some((_, sent)) = self.ping {
            if sent.elapsed() >= l.nop_timeout {
                return Some(End::Protocol("initiator did not answer NOP-In".into()));
            }
            return None;
        }
        if self.last_rx.elapsed() >= l.nop_interval {
            let ttt = self.ttt();
            let mut b = Bhs::new(op::NOP_IN);
            b.set_flags(0x80);
            b.set_itt(RESERVED_TAG);
            b.set_u32(off::TTT, ttt);
            self.ping = Some((ttt, Instant::now()));
            if self.send(Pdu::new(b), false).await.is_err() {
                return Some(End::Closed);
            }
        }
        None
    }

    async fn handle(&mut self, p: Pdu) -> Result<(), End> {
        match p.opcode() {
            op::DATA_OUT => self.data_out(p).await,
            op::NOP_OUT if p.bhs.itt() == RESERVED_TAG => {
                // An answer to our ping (or a ping that wants no answer).
                let ttt = p.bhs.u32_at(off::TTT);
                if self.ping.is_some_and(|(t, _)| t == ttt) {
                    self.ping = None;
                }
                Ok(())
            }
            op::NOP_OUT | op::SCSI_CMD | op::TMF_REQ | op::TEXT_REQ | op::LOGOUT_REQ => {
                self.sequenced(p).await
            }
            op::LOGIN_REQ => self.reject(&p.bhs, reject::PROTOCOL_ERROR).await,
            op::SNACK_REQ => self.reject(&p.bhs, reject::CMD_NOT_SUPPORTED).await,
            _ => self.reject(&p.bhs, reject::CMD_NOT_SUPPORTED).await,
        }
    }

    /// Delivers requests in CmdSN order (RFC 7143 §4.2.2.1).
    async fn sequenced(&mut self, p: Pdu) -> Result<(), End> {
        if p.bhs.immediate() {
            // An immediate ABORT TASK may have counted ExpCmdSN as received.
            self.process(p).await?;
            return self.drain_pending().await;
        }
        let sn = p.bhs.u32_at(off::CMD_SN);
        let (exp, max) = self.cs.sn.values();
        if sn == exp {
            self.cs.sn.advance();
            self.process(p).await?;
            self.drain_pending().await
        } else if pdu::sn_lt(sn, exp) {
            tracing::debug!(cmd_sn = sn, exp, "CmdSN already seen; ignored");
            Ok(())
        } else if pdu::sn_lt(max, sn) {
            tracing::info!(cmd_sn = sn, max, "CmdSN beyond MaxCmdSN; ignored");
            Ok(())
        } else {
            // A slot already taken (a duplicate, or a CmdSN an abort counted
            // as received) keeps what it holds.
            self.pending.entry(sn).or_insert(Some(p));
            Ok(())
        }
    }

    /// Delivers held requests from ExpCmdSN on; an empty slot (an aborted
    /// command, RFC 7143 §11.5.1) only advances ExpCmdSN.
    async fn drain_pending(&mut self) -> Result<(), End> {
        loop {
            let (exp, _) = self.cs.sn.values();
            let Some(slot) = self.pending.remove(&exp) else {
                return Ok(());
            };
            self.cs.sn.advance();
            if let Some(next) = slot {
                self.process(next).await?;
            }
        }
    }

    async fn process(&mut self, p: Pdu) -> Result<(), End> {
        match p.opcode() {
            op::NOP_OUT => self.nop_out(p).await,
            op::SCSI_CMD => self.scsi_cmd(p).await,
            op::TMF_REQ => self.tmf(p).await,
            op::TEXT_REQ => self.text(p).await,
            op::LOGOUT_REQ => self.logout_req(p).await,
            _ => Ok(()),
        }
    }

    async fn nop_out(&mut self, p: Pdu) -> Result<(), End> {
        let mrdsl = self.cs.initiator_mrdsl.load(Ordering::Relaxed) as usize;
        let mut b = Bhs::new(op::NOP_IN);
        b.set_flags(0x80);
        b.set_lun_raw(p.bhs.lun_raw());
        b.set_itt(p.bhs.itt());
        b.set_u32(off::TTT, RESERVED_TAG);
        let echo = p.data.slice(..p.data.len().min(mrdsl));
        self.send(Pdu::new(b).with_data(echo), true).await
    }

    // ---------------------------------------------------------------- SCSI

    async fn scsi_cmd(&mut self, p: Pdu) -> Result<(), End> {
        let b = &p.bhs;
        let SessionKind::Normal(target) = self.kind.clone() else {
            return self.reject(b, reject::PROTOCOL_ERROR).await;
        };
        if self.logout.is_some() || self.draining.is_some() {
            tracing::debug!(
                itt = b.itt(),
                "command after logout/shutdown began; dropped"
            );
            return Ok(());
        }
        let flags = b.flags();
        let (fin, read, write) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
        let itt = b.itt();
        let edtl = b.u32_at(off::EDTL);
        let cmd_sn = b.u32_at(off::CMD_SN);
        let lun_raw = b.lun_raw();
        let imm = p.data.len() as u32;
        if itt == RESERVED_TAG {
            return self.reject(b, reject::INVALID_PDU_FIELD).await;
        }
        if self.sess.tasks.lock().contains_key(&itt) {
            return self.reject(b, reject::TASK_IN_PROGRESS).await;
        }
        if imm > 0
            && (!write
                || !self.params.immediate_data
                || imm > edtl
                || imm > self.params.first_burst)
        {
            return self.reject(b, reject::PROTOCOL_ERROR).await;
        }
        if b.immediate()
            && self.cs.sn.inflight() >= self.shared.limits.queue_depth + IMMEDIATE_SLACK
        {
            return self.reject(b, reject::IMMEDIATE_CMD_REJECT).await;
        }
        let mut cdb = b.0[off::CDB..off::CDB + 16].to_vec();
        cdb.truncate(scsi::cdb_len(cdb[0]).min(16));
        let lun = pdu::lun_decode(lun_raw);
        let lu = lun.and_then(|l| target.lun(l));
        let kind = match (&lu, cdb[0]) {
            (_, 0xa0) | (None, _) => Kind::Target(target.clone()),
            (Some(lu), _) => Kind::Lu(lu.clone()),
        };
        // Checks that need no data: answer at once, solicit nothing.
        // Bidirectional commands are not supported; oversized writes are not collected.
        let mut early: Option<scsi::Sense> =
            (write && (read || edtl > MAX_WRITE_EDTL)).then(|| scsi::invalid_cdb(0));
        if early.is_none() {
            early = self.luns_changed_attention(cdb[0]);
        }
        let lu_key = match &kind {
            Kind::Lu(l) => l.lu_key(),
            Kind::Target(_) => 0,
        };
        let task = Arc::new(TaskCtl::new(itt, lun.unwrap_or(u64::MAX), lu_key, cmd_sn));
        self.sess.tasks.lock().insert(itt, task.clone());
        self.cs.sn.task_started();

        let mut reservation: Option<Reservation> = None;
        let mut data = DataIn::None;
        let mut framing = task::Framing {
            itt,
            lun_raw,
            edtl,
            mrdsl: self.cs.initiator_mrdsl.load(Ordering::Relaxed),
            max_burst: self.cs.max_burst,
            r2ts: 0,
        };
        if early.is_none() {
            if let Kind::Lu(l) = &kind {
                let order = &l.lu.disk.order;
                reservation = match l.lu.access(&cdb) {
                    Access::None => None,
                    Access::Read { start, end } => Some(order.reserve(start, end, false)),
                    Access::Write { start, end } => Some(order.reserve(start, end, true)),
                    Access::Barrier => Some(order.reserve(0, u64::MAX, true)),
                };
            }
            if write && edtl > 0 {
                let unsol_end = if fin || self.params.initial_r2t {
                    imm
                } else {
                    self.params.first_burst.min(edtl).max(imm)
                };
                if imm == edtl {
                    // All in the command PDU: its buffer is the data, no copy.
                    data = DataIn::Ready(p.data.clone());
                } else {
                    let mut buf =
                        BytesMut::with_capacity((imm as usize).max(4096).min(edtl as usize));
                    buf.extend_from_slice(&p.data);
                    let (tx, rx) = oneshot::channel();
                    let mut x = WriteXfer {
                        task: task.clone(),
                        lun_raw,
                        edtl,
                        buf,
                        unsol_end,
                        unsol_sn: 0,
                        solicited: imm >= unsol_end,
                        r2ts: VecDeque::new(),
                        next_off: imm,
                        r2t_sn: 0,
                        tx: Some(tx),
                    };
                    if x.solicited {
                        self.solicit(itt, &mut x).await?;
                    }
                    self.xfers.insert(itt, x);
                    data = DataIn::Wait(rx);
                }
            }
        }
        framing.r2ts = 0;
        let run = TaskRun {
            task,
            sess: self.sess.clone(),
            cs: self.cs.clone(),
            kind,
            cdb,
            framing,
            read,
            data,
            reservation,
            early,
            arrived: Instant::now(),
        };
        let span = tracing::debug_span!("scsi", itt, lun = lun.unwrap_or(u64::MAX));
        self.new_tasks
            .lock()
            .push(Box::pin(run.run().instrument(span)));
        Ok(())
    }

    /// Sends R2Ts until MaxOutstandingR2T are outstanding or all is asked for.
    async fn solicit(&mut self, itt: u32, x: &mut WriteXfer) -> Result<(), End> {
        while (x.r2ts.len() as u32) < self.params.max_outstanding_r2t && x.next_off < x.edtl {
            let len = self.params.max_burst.min(x.edtl - x.next_off);
            let ttt = self.ttt();
            let mut b = Bhs::new(op::R2T);
            b.set_flags(0x80);
            b.set_lun_raw(x.lun_raw);
            b.set_itt(itt);
            b.set_u32(off::TTT, ttt);
            b.set_u32(off::DATA_SN, x.r2t_sn);
            b.set_u32(off::BUFFER_OFFSET, x.next_off);
            b.set_u32(off::DESIRED_LEN, len);
            x.r2t_sn += 1;
            x.r2ts.push_back(R2tSeq {
                ttt,
                end: x.next_off + len,
                next_sn: 0,
            });
            x.next_off += len;
            self.send(Pdu::new(b), false).await?;
        }
        Ok(())
    }

    async fn data_out(&mut self, p: Pdu) -> Result<(), End> {
        let itt = p.bhs.itt();
        let Some(mut x) = self.xfers.remove(&itt) else {
            // Aborted or already answered: the data is discarded (RFC 7143 §11.7).
            tracing::debug!(itt, "Data-Out for no pending write; discarded");
            return Ok(());
        };
        if x.task.is_aborted() {
            return Ok(());
        }
        if let Err((a, why)) = accept_data_out(&mut x, &p) {
            // ERL 0 has no within-command recovery: the command ends with
            // ABORTED COMMAND and the rest of its data is discarded.
            tracing::info!(itt, reason = %why, "bad Data-Out sequence; failing the command");
            if let Some(tx) = x.tx.take() {
                let _ = tx.send(Err(scsi::Sense::new(scsi::key::ABORTED_COMMAND, a)));
            }
            return Ok(());
        }
        if x.buf.len() as u32 == x.edtl {
            if let Some(tx) = x.tx.take() {
                let _ = tx.send(Ok((std::mem::take(&mut x.buf).freeze(), x.r2t_sn)));
            }
            return Ok(());
        }
        if x.solicited {
            self.solicit(itt, &mut x).await?;
        }
        self.xfers.insert(itt, x);
        Ok(())
    }

    // ---------------------------------------------------------------- TMF

    async fn tmf(&mut self, p: Pdu) -> Result<(), End> {
        let b = &p.bhs;
        let func = b.flags() & 0x7f;
        let itt = b.itt();
        let rtt = b.u32_at(off::TTT);
        let ref_sn = b.u32_at(32);
        let lun = pdu::lun_decode(b.lun_raw());
        let Some(target) = self.sess.target.clone() else {
            return self.reject(b, reject::PROTOCOL_ERROR).await;
        };
        let lu = lun.and_then(|l| target.lun(l));
        tracing::info!(func, itt, rtt, ?lun, "task management");
        // (response code, tasks to wait for, LUs to reset, close after)
        let mut aborted = Vec::new();
        let mut resets: Vec<Arc<scsi::LogicalUnit>> = Vec::new();
        let lu_key = lu.as_ref().map(|l| l.lu_key());
        let mut close = false;
        let code: u8 = match func {
            1 => {
                let t = self.sess.tasks.lock().get(&rtt).cloned();
                match t {
                    Some(t) if Some(t.lun) == lun => match t.abort() {
                        AbortResult::Aborted => {
                            aborted.push(t);
                            0
                        }
                        AbortResult::TooLate => 1,
                    },
                    Some(_) => 1,
                    None => {
                        // Not delivered yet: held for CmdSN order, or not
                        // arrived. Its CmdSN counts as received (RFC 7143
                        // §11.5.1), so the commands after it still run.
                        let held = self
                            .pending
                            .iter()
                            .find(|(_, q)| q.as_ref().is_some_and(|q| q.bhs.itt() == rtt))
                            .map(|(sn, _)| *sn);
                        let (exp, max) = self.cs.sn.values();
                        let unseen = !pdu::sn_lt(ref_sn, exp)
                            && !pdu::sn_lt(max, ref_sn)
                            && pdu::sn_lt(ref_sn, b.u32_at(off::CMD_SN))
                            && !self.pending.contains_key(&ref_sn);
                        match held {
                            Some(sn) if sn == ref_sn => {
                                self.pending.insert(sn, None);
                                0
                            }
                            None if unseen => {
                                self.pending.insert(ref_sn, None);
                                0
                            }
                            _ => 1,
                        }
                    }
                }
            }
            2 | 4 | 5 => {
                if lu.is_none() {
                    2
                } else {
                    // ABORT TASK SET: this nexus's tasks; CLEAR TASK SET and
                    // LUN RESET: every task on the logical unit, any path.
                    let tasks: Vec<Arc<TaskCtl>> = if func == 2 {
                        self.sess
                            .tasks
                            .lock()
                            .values()
                            .filter(|t| Some(t.lu_key) == lu_key)
                            .cloned()
                            .collect()
                    } else {
                        self.shared
                            .tasks_on(&lu_key.into_iter().collect::<Vec<_>>())
                    };
                    for t in tasks {
                        if t.abort() == AbortResult::Aborted {
                            aborted.push(t);
                        }
                    }
                    if func == 5 {
                        resets.extend(lu.as_ref().map(|l| l.lu.clone()));
                    }
                    0
                }
            }
            3 => 5, // CLEAR ACA: NACA is not supported
            6 | 7 => {
                let luns = target.all_luns();
                let keys: Vec<usize> = luns.iter().map(|l| l.lu_key()).collect();
                for t in self.shared.tasks_on(&keys) {
                    if t.abort() == AbortResult::Aborted {
                        aborted.push(t);
                    }
                }
                resets.extend(luns.iter().map(|l| l.lu.clone()));
                close = func == 7;
                0
            }
            8 => 4, // TASK REASSIGN: needs ERL 2
            _ => 255,
        };
        // Aborted writes stop soliciting; their later Data-Out is discarded.
        self.xfers.retain(|_, x| !x.task.is_aborted());
        let cs = self.cs.clone();
        let cold = close.then(|| target.clone());
        tokio::spawn(async move {
            for t in &aborted {
                t.wait_done().await;
            }
            for lu in &resets {
                lu.reset();
            }
            let mut b = Bhs::new(op::TMF_RSP);
            b.set_flags(0x80);
            b.0[2] = code;
            b.set_itt(itt);
            cs.queue([Out::Pdu {
                pdu: Pdu::new(b),
                status: true,
            }]);
            cs.idle.notify_one();
            if let Some(t) = cold {
                // TARGET COLD RESET: every session of the target ends.
                let sessions: Vec<Arc<SessionShared>> =
                    t.sessions.lock().values().cloned().collect();
                for s in sessions {
                    s.kill.send_replace(true);
                }
            }
        });
        Ok(())
    }

    // ---------------------------------------------------------------- text

    async fn text(&mut self, p: Pdu) -> Result<(), End> {
        let b = &p.bhs;
        let itt = b.itt();
        let ttt = b.u32_at(off::TTT);
        let cont = b.flags() & 0x40 != 0;
        let mrdsl = self.cs.initiator_mrdsl.load(Ordering::Relaxed) as usize;
        let mut data = Vec::new();
        if ttt != RESERVED_TAG {
            // Continuation: of a long response of ours, or of the initiator's text.
            if let Some(tc) = self.text_cont.take() {
                if tc.ttt == ttt && tc.itt == itt {
                    return self.send_text(itt, tc.rest, mrdsl, b.lun_raw()).await;
                }
            }
            match self.text_partial.take() {
                Some((t, d)) if t == ttt => data = d,
                _ => return self.reject(b, reject::INVALID_PDU_FIELD).await,
            }
        } else {
            self.text_cont = None;
            self.text_partial = None;
        }
        if data.len() + p.data.len() > text::MAX_TEXT {
            return self.reject(b, reject::PROTOCOL_ERROR).await;
        }
        data.extend_from_slice(&p.data);
        if cont {
            // The initiator's text continues: ask for the rest.
            let t = self.ttt();
            self.text_partial = Some((t, data));
            let mut r = Bhs::new(op::TEXT_RSP);
            r.set_lun_raw(b.lun_raw());
            r.set_itt(itt);
            r.set_u32(off::TTT, t);
            return self.send(Pdu::new(r), true).await;
        }
        let kv = match text::parse(&data) {
            Ok(kv) => kv,
            Err(e) => {
                tracing::info!(error = %e, "malformed text request");
                return self.reject(b, reject::PROTOCOL_ERROR).await;
            }
        };
        let mut out = KvList::new();
        for (k, v) in &kv.0 {
            match k.as_str() {
                "SendTargets" => self.send_targets(v, &mut out),
                "MaxRecvDataSegmentLength" => {
                    match text::parse_number(v).filter(|n| (512..=16_777_215).contains(n)) {
                        Some(n) => self.cs.initiator_mrdsl.store(n as u32, Ordering::Relaxed),
                        None => out.push(k, "Reject"),
                    }
                }
                k if k.starts_with("X-") || k.starts_with("X#") => out.push(k, "NotUnderstood"),
                "HeaderDigest"
                | "DataDigest"
                | "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "DefaultTime2Wait"
                | "DefaultTime2Retain"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
                | "ErrorRecoveryLevel"
                | "SessionType"
                | "InitiatorName"
                | "TargetName"
                | "AuthMethod" => {
                    // Leading/login-only keys cannot change in full feature phase.
                    out.push(k, "Reject")
                }
                _ => out.push(k, "NotUnderstood"),
            }
        }
        self.send_text(itt, Bytes::from(out.encode()), mrdsl, b.lun_raw())
            .await
    }

    async fn send_text(
        &mut self,
        itt: u32,
        all: Bytes,
        mrdsl: usize,
        lun_raw: [u8; 8],
    ) -> Result<(), End> {
        let mut r = Bhs::new(op::TEXT_RSP);
        r.set_lun_raw(lun_raw);
        r.set_itt(itt);
        let chunk = all.len().min(mrdsl.max(512));
        if chunk < all.len() {
            let t = self.ttt();
            r.set_flags(0x40);
            r.set_u32(off::TTT, t);
            self.text_cont = Some(TextCont {
                ttt: t,
                itt,
                rest: all.slice(chunk..),
            });
        } else {
            r.set_flags(0x80);
            r.set_u32(off::TTT, RESERVED_TAG);
        }
        self.send(Pdu::new(r).with_data(all.slice(..chunk)), true)
            .await
    }

    /// SendTargets=All | <name> | "" (RFC 7143 Appendix C).
    fn send_targets(&self, v: &str, out: &mut KvList) {
        let initiator = self.sess.nexus.initiator_name.clone();
        let current = self.sess.target.as_ref().map(|t| t.name.clone());
        let list: Vec<Arc<Target>> = match v {
            "All" => self
                .shared
                .targets()
                .into_iter()
                .filter(|t| {
                    matches!(self.kind, SessionKind::Discovery) || Some(&t.name) == current.as_ref()
                })
                .collect(),
            "" => current
                .and_then(|c| self.shared.find_target(&c))
                .into_iter()
                .collect(),
            name => self.shared.find_target(name).into_iter().collect(),
        };
        let peer = Some(self.peer.ip());
        for t in list.iter().filter(|t| t.allows(&initiator, peer)) {
            out.push("TargetName", t.name.clone());
            let mut seen = Vec::new();
            for p in &self.shared.portals {
                let ip = if p.ip().is_unspecified() {
                    self.local.ip()
                } else {
                    p.ip()
                };
                let a = SocketAddr::new(ip, p.port());
                if seen.contains(&a) {
                    continue;
                }
                seen.push(a);
                out.push("TargetAddress", format!("{a},{TPGT}"));
            }
        }
    }

    // ---------------------------------------------------------------- logout

    async fn logout_req(&mut self, p: Pdu) -> Result<(), End> {
        let b = &p.bhs;
        let reason = b.flags() & 0x7f;
        let itt = b.itt();
        let code = match reason {
            0 | 1 => {
                // One connection per session: closing it closes the session.
                self.logout = Some((itt, Instant::now()));
                return Ok(());
            }
            2 => 2, // connection recovery needs ERL 2
            _ => return self.reject(b, reject::INVALID_PDU_FIELD).await,
        };
        let mut r = Bhs::new(op::LOGOUT_RSP);
        r.set_flags(0x80);
        r.0[2] = code;
        r.set_itt(itt);
        self.send(Pdu::new(r), true).await
    }
}

/// Checks one Data-Out against the write's state (DataPDUInOrder and
/// DataSequenceInOrder are Yes, so data arrives in offset order) and
/// appends its data.
fn accept_data_out(x: &mut WriteXfer, p: &Pdu) -> Result<(), ((u8, u8), String)> {
    let b = &p.bhs;
    let ttt = b.u32_at(off::TTT);
    let data_sn = b.u32_at(off::DATA_SN);
    let offset = b.u32_at(off::BUFFER_OFFSET);
    let fin = b.final_bit();
    let len = p.data.len() as u32;
    if offset as usize != x.buf.len() {
        return Err((
            scsi::asc::DATA_OFFSET_ERROR,
            format!("offset {offset}, expected {}", x.buf.len()),
        ));
    }
    if ttt == RESERVED_TAG {
        if x.solicited || offset.saturating_add(len) > x.unsol_end {
            return Err((
                scsi::asc::TOO_MUCH_WRITE_DATA,
                "unsolicited data beyond FirstBurstLength".into(),
            ));
        }
        if data_sn != x.unsol_sn {
            return Err((
                scsi::asc::DATA_PHASE_ERROR,
                format!("DataSN {data_sn}, expected {}", x.unsol_sn),
            ));
        }
        x.unsol_sn += 1;
        x.buf.extend_from_slice(&p.data);
        if fin || x.buf.len() as u32 >= x.unsol_end {
            x.solicited = true;
            x.next_off = x.buf.len() as u32;
        }
    } else {
        let Some(seq) = x.r2ts.front_mut().filter(|s| s.ttt == ttt) else {
            return Err((scsi::asc::INVALID_TTT, format!("unknown TTT {ttt:#x}")));
        };
        if offset.saturating_add(len) > seq.end {
            return Err((
                scsi::asc::TOO_MUCH_WRITE_DATA,
                "more data than the R2T asked for".into(),
            ));
        }
        if data_sn != seq.next_sn {
            return Err((
                scsi::asc::DATA_PHASE_ERROR,
                format!("DataSN {data_sn}, expected {}", seq.next_sn),
            ));
        }
        seq.next_sn += 1;
        x.buf.extend_from_slice(&p.data);
        if x.buf.len() as u32 == seq.end {
            x.r2ts.pop_front();
        } else if fin {
            return Err((
                scsi::asc::DATA_PHASE_ERROR,
                "sequence ended before the R2T was satisfied".into(),
            ));
        }
    }
    Ok(())
}

/// A spawned SCSI command.
struct TaskRun {
    task: Arc<TaskCtl>,
    sess: Arc<SessionShared>,
    cs: Arc<ConnShared>,
    kind: Kind,
    cdb: Vec<u8>,
    framing: task::Framing,
    read: bool,
    data: DataIn,
    reservation: Option<Reservation>,
    early: Option<scsi::Sense>,
    /// When the command arrived (LUN latency counters).
    arrived: Instant,
}

impl TaskRun {
    async fn run(mut self) {
        let task = self.task.clone();
        self.run_inner().await;
        drop(self.reservation.take());
        self.sess.tasks.lock().remove(&task.itt);
        self.cs.sn.task_finished();
        task.mark_done();
    }

    async fn run_inner(&mut self) {
        let task = self.task.clone();
        let data = match std::mem::replace(&mut self.data, DataIn::None) {
            DataIn::None => Bytes::new(),
            DataIn::Ready(d) => d,
            DataIn::Wait(rx) => tokio::select! {
                r = rx => match r {
                    Ok(Ok((d, r2ts))) => {
                        self.framing.r2ts = r2ts;
                        d
                    }
                    Ok(Err(s)) => {
                        self.early = Some(s);
                        Bytes::new()
                    }
                    Err(_) => return, // connection or task gone
                },
                _ = task.aborted() => return,
            },
        };
        if let Some(r) = self.reservation.as_mut() {
            tokio::select! {
                _ = r.ready() => {}
                _ = task.aborted() => return,
            }
        }
        if !task.start() {
            return;
        }
        let nexus: &Nexus = &self.sess.nexus;
        let resp = if let Some(s) = &self.early {
            scsi::Response::check(s, false)
        } else {
            match &self.kind {
                Kind::Lu(l) => {
                    tracing::trace!(op = self.cdb[0], "execute");
                    l.lu.execute(&Command {
                        cdb: &self.cdb,
                        path: &l.path,
                        data_out: &data,
                        nexus,
                    })
                    .await
                }
                Kind::Target(t) => lu::no_such_lun(&self.cdb, &t.lun_ids()),
            }
        };
        let ok = resp.status == scsi::status::GOOD;
        if !ok {
            tracing::debug!(op = self.cdb[0], status = resp.status,
                sense = ?resp.sense.get(..14), "command failed");
        }
        if let Kind::Lu(l) = &self.kind {
            let read = if self.read { resp.data.len() } else { 0 };
            let written = if ok { data.len() } else { 0 };
            l.stats
                .record(read as u64, written as u64, !ok, self.arrived.elapsed());
        }
        drop(self.reservation.take());
        if !task.respond() {
            return;
        }
        self.framing.mrdsl = self.cs.initiator_mrdsl.load(Ordering::Relaxed);
        self.cs
            .queue(task::response_pdus(&self.framing, &resp, self.read));
    }
}
