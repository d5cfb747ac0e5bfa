//! Per-command bookkeeping shared between a connection's reader, the task
//! executing the command, and task management (abort, resets); command
//! sequence numbers; and how a SCSI result becomes Data-In / SCSI Response
//! PDUs.

use super::pdu::{op, Bhs, Pdu, RESERVED_TAG};
use super::scsi;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for data or for earlier overlapping commands.
    Waiting,
    /// Executing on the backend (cannot be interrupted).
    Running,
    /// Aborted: no response will be sent.
    Aborted,
    /// Its response is on the way; too late to abort.
    Responded,
}

/// One SCSI command in flight.
pub struct TaskCtl {
    pub itt: u32,
    pub lun: u64,
    /// The logical unit (see `Lun::lu_key`), 0 for none.
    pub lu_key: usize,
    pub cmd_sn: u32,
    state: Mutex<State>,
    /// Woken when the state becomes Aborted.
    abort_notify: Notify,
    done: AtomicBool,
    done_notify: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortResult {
    /// The task will not answer; wait for [`TaskCtl::wait_done`].
    Aborted,
    /// Its response was already sent or queued.
    TooLate,
}

impl TaskCtl {
    pub fn new(itt: u32, lun: u64, lu_key: usize, cmd_sn: u32) -> TaskCtl {
        TaskCtl {
            itt,
            lun,
            lu_key,
            cmd_sn,
            state: Mutex::new(State::Waiting),
            abort_notify: Notify::new(),
            done: AtomicBool::new(false),
            done_notify: Notify::new(),
        }
    }

    pub fn abort(&self) -> AbortResult {
        let mut s = self.state.lock();
        match *s {
            State::Waiting | State::Running | State::Aborted => {
                *s = State::Aborted;
                self.abort_notify.notify_waiters();
                AbortResult::Aborted
            }
            State::Responded => AbortResult::TooLate,
        }
    }

    pub fn is_aborted(&self) -> bool {
        *self.state.lock() == State::Aborted
    }

    /// Resolves when the task is aborted.
    pub async fn aborted(&self) {
        wait_until(&self.abort_notify, || self.is_aborted()).await
    }

    /// Waiting -> Running; false if aborted meanwhile.
    pub fn start(&self) -> bool {
        let mut s = self.state.lock();
        if *s == State::Waiting {
            *s = State::Running;
            true
        } else {
            false
        }
    }

    /// Running -> Responded; false if aborted while running.
    pub fn respond(&self) -> bool {
        let mut s = self.state.lock();
        if *s == State::Running {
            *s = State::Responded;
            true
        } else {
            false
        }
    }

    /// The task has released everything (called last).
    pub fn mark_done(&self) {
        self.done.store(true, Ordering::Release);
        self.done_notify.notify_waiters();
    }

    pub async fn wait_done(&self) {
        wait_until(&self.done_notify, || self.done.load(Ordering::Acquire)).await
    }
}

/// Waits until `cond` holds; whoever makes it true calls
/// `notify.notify_waiters()` afterwards. (One Notify: a watch channel costs
/// an allocation and eight notifies per command.)
pub async fn wait_until(notify: &Notify, cond: impl Fn() -> bool) {
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        // Registered before the check: a change after it wakes us.
        woken.as_mut().enable();
        if cond() {
            return;
        }
        woken.await;
    }
}

/// CmdSN window of a session (RFC 7143 §4.2.2.1): ExpCmdSN advances as
/// commands are delivered; MaxCmdSN leaves room for `depth` commands in
/// flight and never decreases.
pub struct SnState {
    inner: Mutex<Sn>,
}

struct Sn {
    exp: u32,
    max: u32,
    inflight: u32,
    depth: u32,
}

impl SnState {
    pub fn new(exp: u32, depth: u32) -> SnState {
        let depth = depth.max(1);
        SnState {
            inner: Mutex::new(Sn {
                exp,
                max: exp.wrapping_add(depth - 1),
                inflight: 0,
                depth,
            }),
        }
    }

    fn recompute(s: &mut Sn) {
        let room = s.depth.saturating_sub(s.inflight);
        let cand = s.exp.wrapping_add(room).wrapping_sub(1);
        if super::pdu::sn_lt(s.max, cand) {
            s.max = cand;
        }
    }

    /// (ExpCmdSN, MaxCmdSN).
    pub fn values(&self) -> (u32, u32) {
        let s = self.inner.lock();
        (s.exp, s.max)
    }

    pub fn advance(&self) {
        let mut s = self.inner.lock();
        s.exp = s.exp.wrapping_add(1);
        Self::recompute(&mut s);
    }

    pub fn task_started(&self) {
        self.inner.lock().inflight += 1;
    }

    pub fn task_finished(&self) {
        let mut s = self.inner.lock();
        s.inflight = s.inflight.saturating_sub(1);
        Self::recompute(&mut s);
    }

    pub fn inflight(&self) -> u32 {
        self.inner.lock().inflight
    }
}

/// A PDU for the connection to send; StatSN, ExpCmdSN and MaxCmdSN are
/// filled in at send time so they go out in order.
#[derive(Debug)]
pub enum Out {
    /// `status`: the PDU consumes a StatSN.
    Pdu { pdu: Pdu, status: bool },
}

/// What a command's PDUs need from the session.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub itt: u32,
    pub lun_raw: [u8; 8],
    pub edtl: u32,
    /// Largest data segment the initiator accepts.
    pub mrdsl: u32,
    pub max_burst: u32,
    /// R2Ts sent (for ExpDataSN of a write's response).
    pub r2ts: u32,
}

/// Turns a SCSI result into Data-In PDUs (status in the last one when
/// allowed) and/or a SCSI Response.
pub fn response_pdus(f: &Framing, resp: &scsi::Response, read: bool) -> Vec<Out> {
    let edtl = f.edtl as u64;
    let transferred = if !resp.data.is_empty() {
        resp.data.len() as u64
    } else {
        resp.wanted_out
    };
    // (overflow, underflow, residual)
    let (over, under, residual) = if transferred > edtl {
        (true, false, transferred - edtl)
    } else if transferred < edtl {
        (false, true, edtl - transferred)
    } else {
        (false, false, 0)
    };
    let residual = residual.min(u32::MAX as u64) as u32;
    let res_flags = if over { 0x04 } else { 0 } | if under { 0x02 } else { 0 };
    let data: Bytes = if read {
        resp.data.slice(..resp.data.len().min(f.edtl as usize))
    } else {
        Bytes::new()
    };
    let mut out = Vec::new();
    let status_in_data = resp.status == scsi::status::GOOD && resp.sense.is_empty();
    let mut data_sn = 0u32;
    if !data.is_empty() {
        let seg = f.mrdsl.max(512) as usize;
        let burst = f.max_burst.max(512) as usize;
        let mut off = 0usize;
        while off < data.len() {
            // Segments never cross a burst boundary; the last of each burst has F.
            let to_burst = burst - off % burst;
            let n = seg.min(data.len() - off).min(to_burst);
            let last = off + n == data.len();
            let mut b = Bhs::new(op::DATA_IN);
            let mut fl = 0u8;
            if last || (off + n) % burst == 0 {
                fl |= 0x80;
            }
            let with_status = last && status_in_data;
            if with_status {
                fl |= 0x01 | res_flags;
                b.0[3] = resp.status;
                b.set_u32(44, residual);
            }
            b.set_flags(fl);
            b.set_lun_raw(f.lun_raw);
            b.set_itt(f.itt);
            b.set_u32(20, RESERVED_TAG);
            b.set_u32(36, data_sn);
            b.set_u32(40, off as u32);
            data_sn += 1;
            out.push(Out::Pdu {
                pdu: Pdu::new(b).with_data(data.slice(off..off + n)),
                status: with_status,
            });
            off += n;
        }
        if status_in_data {
            return out;
        }
    }
    let mut b = Bhs::new(op::SCSI_RSP);
    b.set_flags(0x80 | res_flags);
    b.0[2] = 0; // command completed at target
    b.0[3] = resp.status;
    b.set_itt(f.itt);
    b.set_u32(20, 0); // SNACK tag
    b.set_u32(36, if read { data_sn } else { f.r2ts });
    b.set_u32(44, residual);
    let mut seg = Vec::new();
    if !resp.sense.is_empty() {
        seg.extend_from_slice(&(resp.sense.len() as u16).to_be_bytes());
        seg.extend_from_slice(&resp.sense);
    }
    out.push(Out::Pdu {
        pdu: Pdu::new(b).with_data(seg),
        status: true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(edtl: u32) -> Framing {
        Framing {
            itt: 9,
            lun_raw: [0, 1, 0, 0, 0, 0, 0, 0],
            edtl,
            mrdsl: 1024,
            max_burst: 2048,
            r2ts: 0,
        }
    }

    fn pdus(v: &[Out]) -> Vec<&Pdu> {
        v.iter().map(|Out::Pdu { pdu, .. }| pdu).collect()
    }

    #[test]
    fn data_in_segmentation_and_status() {
        let r = scsi::Response::data(vec![7u8; 5000]);
        let out = response_pdus(&fr(5000), &r, true);
        let p = pdus(&out);
        assert_eq!(p.len(), 5);
        let lens: Vec<usize> = p.iter().map(|p| p.data.len()).collect();
        assert_eq!(lens, vec![1024, 1024, 1024, 1024, 904]);
        // F at burst boundaries (2048, 4096) and at the end; S only at the end.
        let flags: Vec<u8> = p.iter().map(|p| p.bhs.flags()).collect();
        assert_eq!(flags, vec![0x00, 0x80, 0x00, 0x80, 0x81]);
        assert_eq!(p[4].bhs.u32_at(36), 4);
        assert_eq!(p[4].bhs.u32_at(40), 4096);
    }

    #[test]
    fn residuals() {
        // Read of 512 bytes with EDTL 200: overflow 312, 200 bytes sent.
        let r = scsi::Response::data(vec![1u8; 512]);
        let out = response_pdus(&fr(200), &r, true);
        let p = pdus(&out);
        assert_eq!(p[0].data.len(), 200);
        assert_eq!(p[0].bhs.flags(), 0x80 | 0x01 | 0x04);
        assert_eq!(p[0].bhs.u32_at(44), 312);
        // Write wanting 512 with EDTL 10000: underflow 9488, SCSI Response.
        let r = scsi::Response {
            wanted_out: 512,
            ..scsi::Response::good()
        };
        let out = response_pdus(&fr(10000), &r, false);
        let p = pdus(&out);
        assert_eq!(p[0].opcode(), op::SCSI_RSP);
        assert_eq!(p[0].bhs.flags(), 0x80 | 0x02);
        assert_eq!(p[0].bhs.u32_at(44), 9488);
        // Check condition carries sense with its length prefix.
        let s = scsi::invalid_cdb(1);
        let r = scsi::Response::check(&s, false);
        let out = response_pdus(&fr(0), &r, true);
        let p = pdus(&out);
        assert_eq!(p[0].bhs.0[3], scsi::status::CHECK_CONDITION);
        assert_eq!(&p[0].data[..2], &[0, 18]);
    }

    #[test]
    fn window_tracks_inflight() {
        let s = SnState::new(10, 4);
        assert_eq!(s.values(), (10, 13));
        // Delivering a command moves the window; finishing it opens room again.
        s.advance();
        s.task_started();
        assert_eq!(s.values(), (11, 14));
        s.advance();
        s.task_started();
        assert_eq!(s.values(), (12, 14));
        s.task_finished();
        assert_eq!(s.values(), (12, 14));
        s.task_finished();
        assert_eq!(s.values(), (12, 15));
    }

    #[tokio::test]
    async fn abort_states() {
        let t = TaskCtl::new(1, 0, 0, 0);
        assert!(t.start());
        assert_eq!(t.abort(), AbortResult::Aborted);
        assert!(!t.respond());
        t.mark_done();
        t.wait_done().await;
        let t = TaskCtl::new(2, 0, 0, 0);
        assert!(t.start());
        assert!(t.respond());
        assert_eq!(t.abort(), AbortResult::TooLate);
    }
}
