//! sheep-lite under hostile clients: stalled payloads, half-sent requests,
//! pipelines whose replies are never read, absurd data_lengths, requests
//! trying to raise the payload limit, idle and stalled connections. For each
//! pattern a well-behaved client's 4 KiB read (checked byte for byte) must
//! complete within 2 s while the hostile connections stay open.
//!
//! Synchronisation: a hostile connection is "in place" once the server has
//! consumed what the pattern needs (its headers), read from the socket
//! queues in /proc/net/tcp (bytes sent minus what is still queued on either
//! side), so no test passes because the server had not got to them yet.

mod common;

use common::{bin, free_port, obj_hdr, pattern, run_sheepctl, send};
use sheepfs::client::{Client, Options, SheepAddr};
use sheepfs::proto::header::VdiArgs;
use sheepfs::proto::{flags, oid, op, ReqHeader, RspHeader, SdRes};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MB4: u32 = 4 << 20;
/// How long the victim's read may take while the hostile connections are open.
const VICTIM_LIMIT: Duration = Duration::from_secs(2);

/// A sheep-lite started with extra flags, formatted, with one VDI whose
/// object 0 holds `pattern(4 MiB, 7)`; killed when dropped.
struct Server {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
    /// Data object 0 of the VDI.
    obj: u64,
}

impl Server {
    fn start(flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(bin("sheep-lite"))
            .args(["-p", &port.to_string()])
            .args(flags)
            .arg(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sheep-lite");
        let mut s = Server {
            _dir: dir,
            port,
            child,
            obj: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sheep-lite did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let p = port.to_string();
        let fmt = run_sheepctl(
            &["cluster", "format", "-a", "127.0.0.1", "-p", &p],
            &[],
            &[],
            Duration::from_secs(60),
        );
        assert_eq!(fmt.code, 0, "format: {fmt:?}");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        s.obj = rt.block_on(async {
            let c = s.client();
            let vid = c
                .create_vdi("v", 64 << 20, &Default::default())
                .await
                .expect("create VDI");
            let o = oid::vid_to_data_oid(vid, 0);
            let mut h = obj_hdr(op::CREATE_AND_WRITE_OBJ, o, 0, MB4);
            h.flags = flags::CMD_WRITE;
            let r = send(&c, h, pattern(MB4 as usize, 7)).await;
            assert_eq!(r.result(), SdRes::SUCCESS, "write object 0");
            o
        });
        s
    }

    fn client(&self) -> Client {
        Client::new(
            SheepAddr::tcp("127.0.0.1", self.port),
            Options {
                request_timeout: Duration::from_secs(30),
                retry_timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
    }

    fn conn(&self) -> TcpStream {
        let t = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        t.set_nodelay(true).unwrap();
        t
    }

    /// The well-behaved client: on a new connection, reads 4 KiB at `off`
    /// of object 0, checks the bytes and returns how long it took.
    fn victim_read(&self, off: u32) -> Duration {
        let start = Instant::now();
        let mut t = self.conn();
        let mut h = obj_hdr(op::READ_OBJ, self.obj, off, 4096);
        h.id = 9;
        t.write_all(&h.encode()).unwrap();
        let (r, d) = reply(&mut t);
        let took = start.elapsed();
        assert_eq!((r.id, r.result()), (9, SdRes::SUCCESS));
        let want = pattern(MB4 as usize, 7);
        assert!(
            d == want[off as usize..off as usize + 4096],
            "victim read wrong bytes"
        );
        took
    }

    #[track_caller]
    fn assert_victim_unhindered(&self) {
        for off in [0, 4096, MB4 - 4096] {
            let took = self.victim_read(off);
            assert!(
                took < VICTIM_LIMIT,
                "a 4 KiB read took {took:?} while hostile connections were open"
            );
        }
    }

    fn rss(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let line = s
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"));
        line.split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u64>().ok())
            .expect("a number of kB")
            * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one reply (header and data).
fn reply(t: &mut TcpStream) -> (RspHeader, Vec<u8>) {
    let mut hb = [0u8; 48];
    t.read_exact(&mut hb).expect("reply header");
    let r = RspHeader::decode(&hb);
    let mut d = vec![0u8; r.data_length as usize];
    t.read_exact(&mut d).expect("reply data");
    (r, d)
}

/// Queues of one TCP socket from /proc/net/tcp: (state, tx_queue, rx_queue).
fn socket_queues(local: u16, remote: u16) -> Option<(u8, u64, u64)> {
    let tab = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want = (
        format!("0100007F:{local:04X}"),
        format!("0100007F:{remote:04X}"),
    );
    tab.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || (f[1], f[2]) != (want.0.as_str(), want.1.as_str()) {
            return None;
        }
        let st = u8::from_str_radix(f[3], 16).ok()?;
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            st,
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

const ESTABLISHED: u8 = 1;

/// A hostile connection and the bytes it sent.
struct Hostile {
    t: TcpStream,
    sent: u64,
}

impl Hostile {
    fn new(s: &Server) -> Hostile {
        Hostile {
            t: s.conn(),
            sent: 0,
        }
    }

    fn send(&mut self, b: &[u8]) {
        self.t.write_all(b).expect("hostile send");
        self.sent += b.len() as u64;
    }

    fn ports(&self, s: &Server) -> u16 {
        assert_eq!(self.t.peer_addr().unwrap().port(), s.port);
        self.t.local_addr().unwrap().port()
    }

    /// Bytes the server process has taken off this connection (a lower
    /// bound: bytes in flight count as queued on both sides).
    fn consumed(&self, s: &Server) -> u64 {
        let p = self.ports(s);
        let (Some((_, ctx, _)), Some((_, _, srx))) =
            (socket_queues(p, s.port), socket_queues(s.port, p))
        else {
            return 0;
        };
        self.sent.saturating_sub(ctx + srx)
    }

    /// Replies the server has queued and not got out (its send queue).
    fn server_unsent(&self, s: &Server) -> u64 {
        let p = self.ports(s);
        socket_queues(s.port, p).map_or(0, |(_, tx, _)| tx)
    }

    fn server_side_open(&self, s: &Server) -> bool {
        let p = self.ports(s);
        socket_queues(s.port, p).is_some_and(|(st, _, _)| st == ESTABLISHED)
    }
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
#[track_caller]
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Flags for the pattern tests: timeouts far beyond the test, so the hostile
/// connections stay open throughout.
const PATIENT: &[&str] = &["--io-timeout", "600", "--idle-timeout", "0"];

fn new_vdi_header(name_len: u32) -> ReqHeader {
    let mut h = ReqHeader::for_op(op::NEW_VDI);
    h.flags = flags::CMD_WRITE;
    h.data_length = name_len;
    h.args = VdiArgs {
        vdi_size: 1 << 30,
        ..Default::default()
    }
    .encode();
    h
}

#[test]
fn stalled_new_vdi_payloads_do_not_block_others() {
    let s = Server::start(PATIENT);
    let mut hostile: Vec<Hostile> = (0..22).map(|_| Hostile::new(&s)).collect();
    for h in &mut hostile {
        h.send(&new_vdi_header(256).encode());
        h.send(b"stalled");
    }
    wait_for(
        "the server to read every stalled request",
        Duration::from_secs(20),
        || hostile.iter().all(|h| h.consumed(&s) == h.sent),
    );
    s.assert_victim_unhindered();
    // A NEW_VDI (whose working set is two inodes) from a good client too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = Instant::now();
    rt.block_on(s.client().create_vdi("good", 1 << 30, &Default::default()))
        .expect("NEW_VDI beside stalled ones");
    assert!(
        start.elapsed() < VICTIM_LIMIT,
        "NEW_VDI took {:?}",
        start.elapsed()
    );
    assert!(hostile.iter().all(|h| h.server_side_open(&s)));
}

#[test]
fn half_sent_4mib_writes_do_not_block_others() {
    let s = Server::start(PATIENT);
    let half = vec![0x5a; (MB4 / 2) as usize];
    let mut hostile = Vec::new();
    for i in 0..130u32 {
        let mut h = Hostile::new(&s);
        let mut hdr = obj_hdr(op::WRITE_OBJ, s.obj, 0, MB4);
        hdr.flags = flags::CMD_WRITE;
        hdr.id = i;
        h.send(&hdr.encode());
        // Half the payload: as much as the kernel takes without blocking
        // the test (the server may stop reading once arriving payloads hold
        // their share of the budget).
        h.t.set_nonblocking(true).unwrap();
        if let Ok(n) = h.t.write(&half) {
            h.sent += n as u64;
        }
        hostile.push(h);
    }
    wait_for(
        "the server to read every header",
        Duration::from_secs(20),
        || hostile.iter().all(|h| h.consumed(&s) >= 48),
    );
    s.assert_victim_unhindered();
    assert!(hostile.iter().all(|h| h.server_side_open(&s)));
}

#[test]
fn pipelined_reads_never_read_back_stay_bounded() {
    let s = Server::start(PATIENT);
    let mut hostile: Vec<Hostile> = (0..3).map(|_| Hostile::new(&s)).collect();
    let mut burst = Vec::new();
    for i in 0..256u32 {
        let mut h = obj_hdr(op::READ_OBJ, s.obj, 0, MB4);
        h.id = i;
        burst.extend_from_slice(&h.encode());
    }
    for h in &mut hostile {
        h.send(&burst);
    }
    wait_for(
        "the pipelines to be read and their replies to back up",
        Duration::from_secs(30),
        || {
            hostile
                .iter()
                .all(|h| h.consumed(&s) == h.sent && h.server_unsent(&s) > 0)
        },
    );
    s.assert_victim_unhindered();
    // Each connection holds at most its share (32 MiB) of unread replies.
    let rss = s.rss("VmHWM:");
    assert!(
        rss < 200 << 20,
        "sheep-lite peaked at {} MiB with 3 unread pipelines",
        rss >> 20
    );
    // Nothing was lost: one pipeline, read at last, gets all 256 replies.
    read_pipeline(&mut hostile[0].t, 256, None);
}

/// Reads the `n` replies (in completion order) of a pipeline of 4 MiB reads
/// of object 0 with ids 0..n, checking every byte; pauses for `pause` after
/// the first.
#[track_caller]
fn read_pipeline(t: &mut TcpStream, n: u32, pause: Option<Duration>) {
    let want = pattern(MB4 as usize, 7);
    let mut seen = vec![false; n as usize];
    for k in 0..n {
        let (r, d) = reply(t);
        assert_eq!(r.result(), SdRes::SUCCESS);
        assert!(
            !std::mem::replace(&mut seen[r.id as usize], true),
            "two replies to {}",
            r.id
        );
        assert!(d == want, "reply {} has wrong bytes", r.id);
        if let (0, Some(p)) = (k, pause) {
            std::thread::sleep(p);
        }
    }
}

#[test]
fn huge_data_length_on_a_small_op_holds_nothing() {
    let s = Server::start(PATIENT);
    let mut h = Hostile::new(&s);
    let mut hdr = ReqHeader::for_op(op::GET_STORE_LIST);
    hdr.data_length = u32::MAX;
    hdr.id = 3;
    h.send(&hdr.encode());
    wait_for(
        "the server to read the header",
        Duration::from_secs(20),
        || h.consumed(&s) == 48,
    );
    s.assert_victim_unhindered();
    // It is answered at its natural size.
    let (r, d) = reply(&mut h.t);
    assert_eq!((r.id, r.result()), (3, SdRes::SUCCESS));
    assert_eq!(d, b"tree plain \0");
}

#[test]
fn new_vdi_with_2gib_objects_does_not_raise_the_payload_limit() {
    let s = Server::start(PATIENT);
    let mut t = s.conn();
    // A legal NEW_VDI with 2 GiB objects.
    let mut h = new_vdi_header(256);
    let mut a = VdiArgs::decode(&h.args);
    a.block_size_shift = 31;
    h.args = a.encode();
    let mut name = vec![0u8; 256];
    name[..3].copy_from_slice(b"big");
    t.write_all(&h.encode()).unwrap();
    t.write_all(&name).unwrap();
    let (r, _) = reply(&mut t);
    assert_eq!(r.result(), SdRes::SUCCESS, "NEW_VDI with 2 GiB objects");
    let big = oid::vid_to_data_oid(sheepfs::proto::header::VdiRsp::decode(&r.args).vdi_id, 0);
    // The other VDI's objects are still 4 MiB: 8 MiB is refused (and its
    // payload skipped: the connection stays usable).
    let mut w = obj_hdr(op::WRITE_OBJ, s.obj, 0, 8 << 20);
    w.flags = flags::CMD_WRITE;
    w.id = 1;
    t.write_all(&w.encode()).unwrap();
    t.write_all(&vec![1u8; 8 << 20]).unwrap();
    let (r, _) = reply(&mut t);
    assert_eq!((r.id, r.result()), (1, SdRes::INVALID_PARMS));
    let mut rd = obj_hdr(op::READ_OBJ, s.obj, 0, 8 << 20);
    rd.id = 2;
    t.write_all(&rd.encode()).unwrap();
    let (r, d) = reply(&mut t);
    assert_eq!((r.id, r.result(), d.len()), (2, SdRes::INVALID_PARMS, 0));
    // Requests naming no object: a 4 MiB name is refused too.
    let mut n = new_vdi_header(4 << 20);
    n.id = 3;
    t.write_all(&n.encode()).unwrap();
    t.write_all(&vec![b'x'; 4 << 20]).unwrap();
    let (r, _) = reply(&mut t);
    assert_eq!((r.id, r.result()), (3, SdRes::INVALID_PARMS));
    // The new VDI's own objects take what their size allows.
    let data = pattern(8 << 20, 11);
    let mut c = obj_hdr(op::CREATE_AND_WRITE_OBJ, big, 0, 8 << 20);
    c.flags = flags::CMD_WRITE;
    c.id = 4;
    t.write_all(&c.encode()).unwrap();
    t.write_all(&data).unwrap();
    let (r, _) = reply(&mut t);
    assert_eq!((r.id, r.result()), (4, SdRes::SUCCESS));
    let mut rd = obj_hdr(op::READ_OBJ, big, 0, 8 << 20);
    rd.id = 5;
    t.write_all(&rd.encode()).unwrap();
    let (r, d) = reply(&mut t);
    assert_eq!((r.id, r.result()), (5, SdRes::SUCCESS));
    assert!(d == data, "8 MiB read back from a 2 GiB object differs");
    s.assert_victim_unhindered();
}

/// Waits until the server closed `t` (EOF or reset on read).
#[track_caller]
fn assert_closed_by_server(t: &mut TcpStream, within: Duration) {
    use std::io::ErrorKind;
    t.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64 << 10];
    loop {
        match t.read(&mut b) {
            Ok(0) => return,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Ok(_) => continue,
            Err(e) => panic!("connection still open after {within:?}: {e}"),
        }
    }
}

#[test]
fn idle_and_stalled_connections_time_out() {
    let s = Server::start(&["--io-timeout", "0.5", "--idle-timeout", "0.5"]);
    // Idle from the start.
    let mut idle = s.conn();
    // Idle after a request.
    let mut used = s.conn();
    let mut h = ReqHeader::for_op(op::GET_STORE_LIST);
    h.data_length = 64;
    used.write_all(&h.encode()).unwrap();
    assert_eq!(reply(&mut used).0.result(), SdRes::SUCCESS);
    // Half a header.
    let mut half = s.conn();
    half.write_all(&h.encode()[..20]).unwrap();
    // A header and 7 of its 256 payload bytes.
    let mut stalled = s.conn();
    stalled.write_all(&new_vdi_header(256).encode()).unwrap();
    stalled.write_all(b"stalled").unwrap();
    for t in [&mut idle, &mut used, &mut half, &mut stalled] {
        assert_closed_by_server(t, Duration::from_secs(10));
    }
    // A pipeline whose replies are never read: closed once its replies stop
    // moving for the I/O timeout.
    let mut p = Hostile::new(&s);
    let mut burst = Vec::new();
    for i in 0..256u32 {
        let mut h = obj_hdr(op::READ_OBJ, s.obj, 0, MB4);
        h.id = i;
        burst.extend_from_slice(&h.encode());
    }
    p.send(&burst);
    wait_for(
        "the server to close a connection that reads no replies",
        Duration::from_secs(20),
        || !p.server_side_open(&s),
    );
    s.assert_victim_unhindered();
}

#[test]
fn busy_connections_are_not_idle() {
    // Requests in flight keep a connection open past the idle timeout: a
    // pipeline of 64 x 4 MiB reads takes longer than 0.2 s to read back at
    // the pace of a slow reader.
    let s = Server::start(&["--io-timeout", "30", "--idle-timeout", "0.2"]);
    let mut t = s.conn();
    let mut burst = Vec::new();
    for i in 0..64u32 {
        let mut h = obj_hdr(op::READ_OBJ, s.obj, 0, MB4);
        h.id = i;
        burst.extend_from_slice(&h.encode());
    }
    t.write_all(&burst).unwrap();
    // A slow reader: the rest only after twice the idle timeout.
    read_pipeline(&mut t, 64, Some(Duration::from_millis(400)));
}
