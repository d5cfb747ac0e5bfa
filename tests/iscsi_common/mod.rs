//! Helpers for the sheep-iscsi integration tests: the target binary as a
//! child process, a small blocking iSCSI initiator written independently of
//! the target's code (its own PDU codec), and the parser of iscsi-test-cu's
//! per-test output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- processes

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// sheep-iscsi running as a child; SIGKILLed on drop.
pub struct TargetProc {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TargetProc {
    /// Starts sheep-iscsi on a free 127.0.0.1 port with these arguments and
    /// waits until it accepts connections.
    pub fn start(args: &[&str]) -> TargetProc {
        match Self::try_start(args) {
            Ok(t) => t,
            Err((code, log)) => panic!("sheep-iscsi exited with {code:?}:\n{log}"),
        }
    }

    /// Like start, but returns the exit code and log if it does not come up.
    pub fn try_start(args: &[&str]) -> Result<TargetProc, (Option<i32>, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sheep-iscsi.log");
        let port = free_port();
        let portal = format!("127.0.0.1:{port}");
        let f = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sheep-iscsi"));
        cmd.args(["--portal", &portal, "--log", "info,sheepfs::iscsi=debug"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn sheep-iscsi");
        let mut t = TargetProc {
            child: Some(child),
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = t.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    t.child = None;
                    return Err((st.code(), t.log_text()));
                }
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err((None, format!("did not start in time\n{}", t.log_text())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, target: &str, lun: u64) -> String {
        format!("iscsi://127.0.0.1:{}/{}/{}", self.port, target, lun)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn term(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return Some(st);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The child gets SIGKILL if the test thread that started it dies, so a
/// test killed by a timeout leaves no servers behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs a program with a timeout; (exit code, stdout, stderr).
pub fn run(
    prog: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (i32, String, String) {
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    die_with_parent(&mut c);
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    // Lossy: some tools print binary designators.
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code().unwrap_or(-1),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{prog} {args:?} did not finish within {timeout:?}");
            }
        }
    };
    (
        code,
        to.join().unwrap_or_default(),
        te.join().unwrap_or_default(),
    )
}

// ---------------------------------------------------------------- PDUs

pub const RSV: u32 = 0xffff_ffff;

#[derive(Clone, Debug)]
pub struct Pdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn new(opcode: u8) -> Pdu {
        let mut bhs = [0u8; 48];
        bhs[0] = opcode;
        Pdu {
            bhs,
            data: Vec::new(),
        }
    }
    pub fn op(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().unwrap())
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32(16)
    }
}

fn crc(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

/// Serialises a PDU (data length filled in), with optional digests.
pub fn encode(p: &Pdu, hd: bool, dd: bool) -> Vec<u8> {
    let mut bhs = p.bhs;
    let n = p.data.len() as u32;
    bhs[5..8].copy_from_slice(&n.to_be_bytes()[1..]);
    let mut v = bhs.to_vec();
    if hd {
        v.extend_from_slice(&crc(&[&bhs]).to_le_bytes());
    }
    if !p.data.is_empty() {
        let pad = (4 - p.data.len() % 4) % 4;
        let mut d = p.data.clone();
        d.extend(std::iter::repeat_n(0u8, pad));
        v.extend_from_slice(&d);
        if dd {
            v.extend_from_slice(&crc(&[&d]).to_le_bytes());
        }
    }
    v
}

pub fn kv_encode(kv: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in kv {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

pub fn kv_decode(d: &[u8]) -> Vec<(String, String)> {
    d.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let h = s.trim_start_matches("0x").trim_start_matches("0X");
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

// ---------------------------------------------------------------- initiator

#[derive(Clone, Debug)]
pub struct LoginOpts {
    pub initiator: String,
    /// None: discovery session.
    pub target: Option<String>,
    pub chap: Option<(String, String)>,
    /// Target credentials expected for mutual CHAP.
    pub mutual: Option<(String, String)>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_burst: u32,
    pub first_burst: u32,
    pub isid: [u8; 6],
    /// MaxRecvDataSegmentLength we declare.
    pub mrdsl: u32,
}

impl LoginOpts {
    pub fn normal(target: &str) -> LoginOpts {
        LoginOpts {
            initiator: "iqn.2024-01.org.sheepfs.test:init".into(),
            target: Some(target.into()),
            chap: None,
            mutual: None,
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: false,
            max_burst: 262_144,
            first_burst: 65_536,
            isid: next_isid(),
            mrdsl: MY_MRDSL,
        }
    }
    pub fn discovery() -> LoginOpts {
        LoginOpts {
            target: None,
            ..LoginOpts::normal("")
        }
    }
}

/// A distinct ISID per session: the same (initiator, ISID) pair would
/// reinstate (end) the earlier session.
fn next_isid() -> [u8; 6] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut i = [0x80, 0, 0, 0, 0, 0];
    i[2..6].copy_from_slice(&n.to_be_bytes());
    i
}

#[derive(Debug)]
pub enum LoginError {
    /// The target answered with this status class/detail.
    Status(u8, u8),
    /// Anything else (I/O, unexpected PDU, failed mutual authentication).
    Other(String),
}

/// A SCSI command's outcome.
#[derive(Debug, Default, Clone)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    /// (overflow, underflow, count)
    pub residual: (bool, bool, u32),
}

impl ScsiResult {
    /// (sense key, ASC, ASCQ) of fixed or descriptor sense.
    pub fn sense_triple(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        if s.is_empty() {
            return None;
        }
        Some(if s[0] & 0x7f >= 0x72 {
            (s[1] & 0xf, s[2], s[3])
        } else {
            (s[2] & 0xf, s[12], s[13])
        })
    }
}

struct Pending {
    lun: u64,
    out: Vec<u8>,
    result: ScsiResult,
    done: bool,
}

/// A blocking initiator: one connection, any number of commands in flight.
pub struct Initiator {
    s: TcpStream,
    pub hd: bool,
    pub dd: bool,
    itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    /// MaxRecvDataSegmentLength the target declared.
    pub target_mrdsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub tsih: u16,
    pub login_keys: Vec<(String, String)>,
    pending: HashMap<u32, Pending>,
    /// Non-SCSI PDUs that arrived while waiting (NOP-In, TMF/Text/Logout responses, Reject, Async).
    pub others: Vec<Pdu>,
}

pub const MY_MRDSL: u32 = 262_144;

impl Initiator {
    pub fn connect(addr: &str, o: &LoginOpts) -> Result<Initiator, LoginError> {
        let s = TcpStream::connect(addr).map_err(|e| LoginError::Other(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.set_nodelay(true).ok();
        let mut i = Initiator {
            s,
            hd: false,
            dd: false,
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            target_mrdsl: 8192,
            max_burst: o.max_burst,
            first_burst: o.first_burst,
            immediate_data: o.immediate_data,
            initial_r2t: o.initial_r2t,
            tsih: 0,
            login_keys: Vec::new(),
            pending: HashMap::new(),
            others: Vec::new(),
        };
        i.login(o)?;
        Ok(i)
    }

    /// The raw stream (for malformed-PDU tests).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    fn login_pdu(
        &mut self,
        o: &LoginOpts,
        csg: u8,
        nsg: u8,
        transit: bool,
        kv: &[(&str, &str)],
    ) -> Pdu {
        let mut p = Pdu::new(0x43);
        p.bhs[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
        p.bhs[8..14].copy_from_slice(&o.isid);
        p.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        p.set_u32(16, self.itt);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        p.data = kv_encode(kv);
        p
    }

    fn login_exchange(&mut self, p: Pdu) -> Result<(Pdu, Vec<(String, String)>), LoginError> {
        self.send_raw(&encode(&p, false, false))
            .map_err(|e| LoginError::Other(e.to_string()))?;
        let r = self
            .recv_pdu_with(false, false)
            .map_err(|e| LoginError::Other(e.to_string()))?;
        if r.op() != 0x23 {
            return Err(LoginError::Other(format!(
                "unexpected opcode {:#x} in login",
                r.op()
            )));
        }
        if r.bhs[36] != 0 || r.bhs[37] != 0 {
            return Err(LoginError::Status(r.bhs[36], r.bhs[37]));
        }
        self.exp_stat_sn = r.u32(24).wrapping_add(1);
        self.max_cmd_sn = r.u32(32);
        self.tsih = u16::from_be_bytes([r.bhs[14], r.bhs[15]]);
        let kv = kv_decode(&r.data);
        self.login_keys.extend(kv.iter().cloned());
        Ok((r, kv))
    }

    fn login(&mut self, o: &LoginOpts) -> Result<(), LoginError> {
        let mut first: Vec<(&str, &str)> = vec![("InitiatorName", &o.initiator)];
        match &o.target {
            Some(t) => {
                first.push(("SessionType", "Normal"));
                first.push(("TargetName", t));
            }
            None => first.push(("SessionType", "Discovery")),
        }
        if let Some((user, secret)) = &o.chap {
            first.push(("AuthMethod", "CHAP,None"));
            let p = self.login_pdu(o, 0, 1, false, &first);
            let (_, kv) = self.login_exchange(p)?;
            let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
            if get("AuthMethod").as_deref() != Some("CHAP") {
                return Err(LoginError::Other(format!(
                    "target chose {:?}",
                    get("AuthMethod")
                )));
            }
            let p = self.login_pdu(o, 0, 1, false, &[("CHAP_A", "5")]);
            let (_, kv) = self.login_exchange(p)?;
            let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
            let id: u8 = get("CHAP_I")
                .and_then(|s| s.parse().ok())
                .ok_or(LoginError::Other("no CHAP_I".into()))?;
            let c = unhex(&get("CHAP_C").ok_or(LoginError::Other("no CHAP_C".into()))?);
            let r = hex(&chap_md5(id, secret.as_bytes(), &c));
            let my_c = [0x5au8; 16];
            let my_c_hex = hex(&my_c);
            let mut keys: Vec<(&str, &str)> = vec![("CHAP_N", user), ("CHAP_R", &r)];
            if o.mutual.is_some() {
                keys.push(("CHAP_I", "33"));
                keys.push(("CHAP_C", &my_c_hex));
            }
            let p = self.login_pdu(o, 0, 1, true, &keys);
            let (_, kv) = self.login_exchange(p)?;
            if let Some((tu, ts)) = &o.mutual {
                let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
                let want = chap_md5(33, ts.as_bytes(), &my_c);
                if get("CHAP_N").as_deref() != Some(tu.as_str())
                    || get("CHAP_R").map(|r| unhex(&r)) != Some(want)
                {
                    return Err(LoginError::Other("target failed mutual CHAP".into()));
                }
            }
        } else {
            first.push(("AuthMethod", "None"));
            let p = self.login_pdu(o, 0, 1, true, &first);
            self.login_exchange(p)?;
        }
        let hd = if o.header_digest { "CRC32C" } else { "None" };
        let dd = if o.data_digest { "CRC32C" } else { "None" };
        let mrdsl = o.mrdsl.to_string();
        let mb = o.max_burst.to_string();
        let fb = o.first_burst.to_string();
        let ops: Vec<(&str, &str)> = vec![
            ("HeaderDigest", hd),
            ("DataDigest", dd),
            ("MaxRecvDataSegmentLength", &mrdsl),
            ("ImmediateData", if o.immediate_data { "Yes" } else { "No" }),
            ("InitialR2T", if o.initial_r2t { "Yes" } else { "No" }),
            ("MaxBurstLength", &mb),
            ("FirstBurstLength", &fb),
            ("MaxOutstandingR2T", "4"),
            ("ErrorRecoveryLevel", "0"),
        ];
        let p = self.login_pdu(o, 1, 3, true, &ops);
        let (r, kv) = self.login_exchange(p)?;
        if r.bhs[1] & 0x83 != 0x83 {
            return Err(LoginError::Other(format!(
                "login did not reach full feature: {:#x}",
                r.bhs[1]
            )));
        }
        let all = self.login_keys.clone();
        let get = |k: &str| {
            all.iter()
                .rev()
                .find(|(a, _)| a == k)
                .map(|(_, b)| b.clone())
        };
        self.hd = get("HeaderDigest").as_deref() == Some("CRC32C");
        self.dd = get("DataDigest").as_deref() == Some("CRC32C");
        if let Some(n) = get("MaxRecvDataSegmentLength").and_then(|v| v.parse().ok()) {
            self.target_mrdsl = n;
        }
        if let Some(n) = get("MaxBurstLength").and_then(|v| v.parse().ok()) {
            self.max_burst = n;
        }
        if let Some(n) = get("FirstBurstLength").and_then(|v| v.parse().ok()) {
            self.first_burst = n;
        }
        if let Some(v) = get("ImmediateData") {
            self.immediate_data = v == "Yes";
        }
        if let Some(v) = get("InitialR2T") {
            self.initial_r2t = v == "Yes";
        }
        let _ = kv;
        Ok(())
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    pub fn send(&mut self, p: &Pdu) -> std::io::Result<()> {
        let b = encode(p, self.hd, self.dd);
        self.s.write_all(&b)
    }

    fn recv_pdu_with(&mut self, hd: bool, dd: bool) -> std::io::Result<Pdu> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs)?;
        let ahs = bhs[4] as usize * 4;
        let mut skip = vec![0u8; ahs];
        self.s.read_exact(&mut skip)?;
        if hd {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(
                u32::from_le_bytes(d),
                crc(&[&bhs, &skip]),
                "header digest from target"
            );
        }
        let n = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let padded = n + (4 - n % 4) % 4;
        let mut data = vec![0u8; padded];
        self.s.read_exact(&mut data)?;
        if dd && n > 0 {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(
                u32::from_le_bytes(d),
                crc(&[&data]),
                "data digest from target"
            );
        }
        data.truncate(n);
        Ok(Pdu { bhs, data })
    }

    /// The next PDU as it comes (pings are not answered).
    pub fn recv_raw(&mut self) -> std::io::Result<Pdu> {
        self.recv_pdu_with(self.hd, self.dd)
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.s.set_read_timeout(Some(t)).ok();
    }

    /// The next PDU from the target (answers NOP-In pings by itself).
    pub fn recv(&mut self) -> std::io::Result<Pdu> {
        loop {
            let p = self.recv_pdu_with(self.hd, self.dd)?;
            if matches!(p.op(), 0x21 | 0x22 | 0x24 | 0x26 | 0x3f | 0x32)
                || (p.op() == 0x25 && p.bhs[1] & 1 != 0)
            {
                self.exp_stat_sn = p.u32(24).wrapping_add(1);
            }
            if p.op() == 0x20 && p.itt() != RSV {
                self.exp_stat_sn = p.u32(24).wrapping_add(1);
            }
            if matches!(
                p.op(),
                0x20 | 0x21 | 0x22 | 0x24 | 0x25 | 0x26 | 0x31 | 0x3f
            ) {
                let m = p.u32(32);
                if (m.wrapping_sub(self.max_cmd_sn) as i32) > 0 {
                    self.max_cmd_sn = m;
                }
            }
            if p.op() == 0x20 && p.itt() == RSV && p.u32(20) != RSV {
                // Target ping: answer with the same TTT.
                let mut r = Pdu::new(0x40);
                r.bhs[1] = 0x80;
                r.set_u32(16, RSV);
                r.set_u32(20, p.u32(20));
                r.set_u32(24, self.cmd_sn);
                r.set_u32(28, self.exp_stat_sn);
                self.send(&r)?;
                continue;
            }
            return Ok(p);
        }
    }

    fn next_itt(&mut self) -> u32 {
        let i = self.itt;
        self.itt = self.itt.wrapping_add(1);
        i
    }

    fn lun_bytes(lun: u64) -> [u8; 8] {
        let mut l = [0u8; 8];
        if lun < 256 {
            l[1] = lun as u8;
        } else {
            l[0] = 0x40 | (lun >> 8) as u8;
            l[1] = lun as u8;
        }
        l
    }

    /// Sends a SCSI command (with immediate and unsolicited data as
    /// negotiated); returns its ITT. `edtl` None = length of data or read_len.
    pub fn submit(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], read_len: u32) -> u32 {
        self.submit_ext(lun, cdb, data_out, read_len, None)
    }

    pub fn submit_ext(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
        edtl: Option<u32>,
    ) -> u32 {
        let itt = self.next_itt();
        let write = !data_out.is_empty();
        let edtl = edtl.unwrap_or(if write {
            data_out.len() as u32
        } else {
            read_len
        });
        let mut p = Pdu::new(0x01);
        let mut f = 0u8;
        if read_len > 0 {
            f |= 0x40;
        }
        if write {
            f |= 0x20;
        }
        f |= 0x01; // SIMPLE
        p.bhs[8..16].copy_from_slice(&Self::lun_bytes(lun));
        p.set_u32(16, itt);
        p.set_u32(20, edtl);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let unsol_limit = if self.initial_r2t {
            0
        } else {
            self.first_burst.min(edtl) as usize
        };
        let imm = if self.immediate_data && write {
            data_out
                .len()
                .min(self.first_burst as usize)
                .min(self.target_mrdsl as usize)
        } else {
            0
        };
        let unsol_end = unsol_limit.max(imm).min(data_out.len());
        if imm == data_out.len() || unsol_end == imm {
            f |= 0x80;
        }
        p.bhs[1] = f;
        p.data = data_out[..imm].to_vec();
        self.send(&p).expect("send command");
        // Unsolicited Data-Out after the immediate data.
        let mut off = imm;
        let mut sn = 0u32;
        while off < unsol_end {
            let n = (unsol_end - off).min(self.target_mrdsl as usize);
            let mut d = Pdu::new(0x05);
            if off + n == unsol_end {
                d.bhs[1] = 0x80;
            }
            d.bhs[8..16].copy_from_slice(&Self::lun_bytes(lun));
            d.set_u32(16, itt);
            d.set_u32(20, RSV);
            d.set_u32(28, self.exp_stat_sn);
            d.set_u32(36, sn);
            d.set_u32(40, off as u32);
            d.data = data_out[off..off + n].to_vec();
            self.send(&d).expect("send data-out");
            off += n;
            sn += 1;
        }
        self.pending.insert(
            itt,
            Pending {
                lun,
                out: data_out.to_vec(),
                result: ScsiResult::default(),
                done: false,
            },
        );
        itt
    }

    /// Processes one PDU for pending commands; returns false on EOF.
    fn pump(&mut self) -> std::io::Result<()> {
        let p = self.recv()?;
        let itt = p.itt();
        match p.op() {
            0x31 => {
                // R2T: send the requested range.
                let ttt = p.u32(20);
                let off = p.u32(40) as usize;
                let len = p.u32(44) as usize;
                let (lun, out) = match self.pending.get(&itt) {
                    Some(t) => (t.lun, t.out.clone()),
                    None => return Ok(()),
                };
                let mut pos = off;
                let mut sn = 0;
                while pos < off + len {
                    let n = (off + len - pos).min(self.target_mrdsl as usize);
                    let mut d = Pdu::new(0x05);
                    if pos + n == off + len {
                        d.bhs[1] = 0x80;
                    }
                    d.bhs[8..16].copy_from_slice(&Self::lun_bytes(lun));
                    d.set_u32(16, itt);
                    d.set_u32(20, ttt);
                    d.set_u32(28, self.exp_stat_sn);
                    d.set_u32(36, sn);
                    d.set_u32(40, pos as u32);
                    d.data = out[pos..(pos + n).min(out.len())].to_vec();
                    self.send(&d)?;
                    pos += n;
                    sn += 1;
                }
            }
            0x25 => {
                if let Some(t) = self.pending.get_mut(&itt) {
                    let off = p.u32(40) as usize;
                    assert_eq!(off, t.result.data.len(), "Data-In out of order");
                    t.result.data.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        t.result.status = p.bhs[3];
                        t.result.residual = (p.bhs[1] & 0x04 != 0, p.bhs[1] & 0x02 != 0, p.u32(44));
                        t.done = true;
                    }
                }
            }
            0x21 => {
                if let Some(t) = self.pending.get_mut(&itt) {
                    t.result.status = p.bhs[3];
                    t.result.residual = (p.bhs[1] & 0x04 != 0, p.bhs[1] & 0x02 != 0, p.u32(44));
                    if p.data.len() >= 2 {
                        let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        t.result.sense = p.data[2..(2 + n).min(p.data.len())].to_vec();
                    }
                    t.done = true;
                }
            }
            _ => self.others.push(p),
        }
        Ok(())
    }

    /// Waits for a command's completion.
    pub fn wait(&mut self, itt: u32) -> std::io::Result<ScsiResult> {
        loop {
            if self.pending.get(&itt).is_some_and(|t| t.done) {
                let t = self.pending.remove(&itt).expect("pending");
                return Ok(t.result);
            }
            self.pump()?;
        }
    }

    /// Waits for the next non-SCSI PDU (answering SCSI traffic meanwhile).
    pub fn wait_other(&mut self) -> std::io::Result<Pdu> {
        loop {
            if !self.others.is_empty() {
                return Ok(self.others.remove(0));
            }
            self.pump()?;
        }
    }

    pub fn scsi(&mut self, lun: u64, cdb: &[u8], data_out: &[u8], read_len: u32) -> ScsiResult {
        let itt = self.submit(lun, cdb, data_out, read_len);
        self.wait(itt).expect("SCSI command")
    }

    pub fn read16(&mut self, lun: u64, lba: u64, blocks: u32) -> ScsiResult {
        self.scsi(lun, &rw16(0x88, lba, blocks), &[], blocks * 512)
    }

    pub fn write16(&mut self, lun: u64, lba: u64, data: &[u8]) -> ScsiResult {
        self.scsi(lun, &rw16(0x8a, lba, (data.len() / 512) as u32), data, 0)
    }

    /// Reads `len` bytes at byte offset `off` (both multiples of 512), in
    /// chunks of at most 1 MiB.
    pub fn read_bytes(&mut self, lun: u64, off: u64, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut pos = 0usize;
        while pos < len {
            let n = (len - pos).min(1 << 20);
            let r = self.read16(lun, (off + pos as u64) / 512, (n / 512) as u32);
            assert_eq!(
                r.status,
                0,
                "read at {}: {:?}",
                off + pos as u64,
                r.sense_triple()
            );
            v.extend_from_slice(&r.data);
            pos += n;
        }
        v
    }

    pub fn write_bytes(&mut self, lun: u64, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let n = (data.len() - pos).min(1 << 20);
            let r = self.write16(lun, (off + pos as u64) / 512, &data[pos..pos + n]);
            assert_eq!(
                r.status,
                0,
                "write at {}: {:?}",
                off + pos as u64,
                r.sense_triple()
            );
            pos += n;
        }
    }

    /// A non-SCSI request: returns its response.
    pub fn request(&mut self, p: Pdu, immediate: bool) -> std::io::Result<Pdu> {
        let itt = self.next_itt();
        self.request_itt(p, immediate, itt)
    }

    /// A request with a given ITT (the PDUs of one Text exchange share it).
    pub fn request_itt(&mut self, mut p: Pdu, immediate: bool, itt: u32) -> std::io::Result<Pdu> {
        p.set_u32(16, itt);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        if immediate {
            p.bhs[0] |= 0x40;
        } else {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.send(&p)?;
        loop {
            let r = self.wait_other()?;
            if r.itt() == itt || r.op() == 0x3f {
                return Ok(r);
            }
        }
    }

    /// SendTargets=value; follows Text continuations.
    pub fn send_targets(&mut self, value: &str) -> Vec<(String, String)> {
        let mut all = Vec::new();
        let mut ttt = RSV;
        let mut kv = format!("SendTargets={value}\0").into_bytes();
        let itt = self.next_itt();
        loop {
            let mut p = Pdu::new(0x04);
            p.bhs[1] = 0x80;
            p.set_u32(20, ttt);
            p.data = std::mem::take(&mut kv);
            let r = self.request_itt(p, false, itt).expect("text response");
            assert_eq!(r.op(), 0x24, "expected Text Response, got {:#x}", r.op());
            all.extend_from_slice(&r.data);
            if r.bhs[1] & 0x40 == 0 {
                break;
            }
            ttt = r.u32(20);
        }
        kv_decode(&all)
    }

    pub fn nop(&mut self, data: &[u8]) -> Pdu {
        let mut p = Pdu::new(0x00);
        p.bhs[1] = 0x80;
        p.set_u32(20, RSV);
        p.data = data.to_vec();
        self.request(p, true).expect("NOP-In")
    }

    /// Task management; returns the response code.
    pub fn tmf(&mut self, func: u8, lun: u64, rtt: u32, ref_sn: u32) -> u8 {
        let mut p = Pdu::new(0x02);
        p.bhs[1] = 0x80 | func;
        p.bhs[8..16].copy_from_slice(&Self::lun_bytes(lun));
        p.set_u32(20, rtt);
        p.set_u32(32, ref_sn);
        let r = self.request(p, true).expect("TMF response");
        assert_eq!(r.op(), 0x22);
        r.bhs[2]
    }

    pub fn logout(&mut self) -> u8 {
        let mut p = Pdu::new(0x06);
        p.bhs[1] = 0x80;
        let r = self.request(p, false).expect("logout response");
        assert_eq!(r.op(), 0x26);
        r.bhs[2]
    }

    /// True once the target has closed the connection (bounded wait).
    pub fn closed_by_target(&mut self, within: Duration) -> bool {
        self.s.set_read_timeout(Some(within)).ok();
        let mut b = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }
}

pub fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn sha(d: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(d);
    h.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- iscsi-test-cu

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// Per-test outcomes from iscsi-test-cu's normal/verbose output: `Suite.Test`
/// -> outcome. CUnit counts skips as passes; a test that logged
/// `[SKIPPED]` before its verdict is a skip here.
pub fn parse_test_cu(out: &str) -> Vec<(String, Outcome)> {
    let mut res = Vec::new();
    let mut suite = String::new();
    let mut cur: Option<String> = None;
    let mut verdict: Option<Outcome> = None;
    let mut skipped = false;
    let flush = |cur: &mut Option<String>,
                 verdict: &mut Option<Outcome>,
                 skipped: &mut bool,
                 res: &mut Vec<(String, Outcome)>| {
        if let Some(name) = cur.take() {
            let v = match verdict.take() {
                Some(Outcome::Pass) if *skipped => Outcome::Skip,
                Some(v) => v,
                None => Outcome::Fail,
            };
            res.push((name, v));
        }
        *skipped = false;
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            flush(&mut cur, &mut verdict, &mut skipped, &mut res);
            suite = s.trim().to_string();
            continue;
        }
        if line.starts_with("Run Summary") {
            flush(&mut cur, &mut verdict, &mut skipped, &mut res);
            continue;
        }
        let mut rest = line;
        if let Some(t) = line.strip_prefix("  Test: ") {
            flush(&mut cur, &mut verdict, &mut skipped, &mut res);
            let name = t.split(" ...").next().unwrap_or(t).trim();
            cur = Some(format!("{suite}.{name}"));
            rest = t.split_once(" ...").map(|(_, r)| r).unwrap_or("");
        }
        if cur.is_none() || verdict.is_some() {
            continue;
        }
        // The verdict is "passed"/"FAILED" right after "..." or at a line start.
        let pos_pass = find_verdict(rest, "passed");
        let pos_fail = find_verdict(rest, "FAILED");
        let pos_skip = rest.find("[SKIPPED]");
        let first = [pos_pass, pos_fail].into_iter().flatten().min();
        if let Some(s) = pos_skip {
            if first.is_none_or(|f| s < f) {
                skipped = true;
            }
        }
        verdict = match (pos_pass, pos_fail) {
            (Some(p), Some(f)) => Some(if p < f { Outcome::Pass } else { Outcome::Fail }),
            (Some(_), None) => Some(Outcome::Pass),
            (None, Some(_)) => Some(Outcome::Fail),
            (None, None) => None,
        };
    }
    flush(&mut cur, &mut verdict, &mut skipped, &mut res);
    res
}

fn find_verdict(s: &str, word: &str) -> Option<usize> {
    if s.starts_with(word) {
        return Some(0);
    }
    let t = s.trim_start();
    if t.starts_with(word) && !s.starts_with("    ") {
        return Some(s.len() - t.len());
    }
    s.find(&format!("...{word}")).map(|i| i + 3)
}

/// (pass, fail, skip)
pub fn tally(r: &[(String, Outcome)]) -> (usize, usize, usize) {
    let c = |o| r.iter().filter(|(_, x)| *x == o).count();
    (c(Outcome::Pass), c(Outcome::Fail), c(Outcome::Skip))
}
