//! Debian's tgt with its built-in sheepdog backing store, against sheep-lite:
//! LUN 1 over TCP, LUN 2 over DIR/sock. Checked with libiscsi's tools
//! (iscsi-inq, iscsi-readcapacity16, iscsi-test-cu) and with libiscsi itself
//! (loaded at run time) to move known data in both directions between the
//! iSCSI initiator and our client library. Needs root (tgtd).

mod common;

use common::{free_port, pattern, SheepLite};
use sheepfs::client::{Client, CreateOptions, DataMap, ObjWrite, Options};
use sheepfs::proto::{inode, oid};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VDI_SIZE: u64 = 64 << 20;
const OBJ: u64 = 4 << 20;

/// A tgtd we started; stopped (by pid) when dropped, also on failure.
struct Tgtd {
    child: Option<Child>,
    control: u16,
}

impl Tgtd {
    fn start(control: u16, portal: u16, log: &Path) -> Tgtd {
        let log = std::fs::File::create(log).expect("tgtd log");
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{portal}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tgtd (is tgt installed?)");
        // If tgtd cannot come up, this stops it (by pid) on the way out.
        let t = Tgtd {
            child: Some(child),
            control,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = t.adm(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
            if o.status.success() {
                break;
            }
            if Instant::now() > deadline {
                drop(t);
                panic!("tgtd did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    fn adm(&self, args: &[&str]) -> Output {
        Command::new("tgtadm")
            .arg("-C")
            .arg(self.control.to_string())
            .args(args)
            .output()
            .expect("tgtadm")
    }

    #[track_caller]
    fn adm_ok(&self, args: &[&str]) {
        let o = self.adm(args);
        assert!(
            o.status.success(),
            "tgtadm {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // tgtd ignores SIGTERM; it stops once its targets are gone.
        for lun in ["1", "2"] {
            let _ = self.adm(&[
                "--lld",
                "iscsi",
                "--op",
                "delete",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                lun,
            ]);
        }
        let _ = self.adm(&[
            "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
        ]);
        let _ = self.adm(&["--op", "delete", "--mode", "system"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A control port no tgtd uses (its socket file is /var/run/tgtd/socket.N).
fn free_control_port() -> u16 {
    let base = (std::process::id() % 20_000) as u16 + 1000;
    (0..2000u16)
        .map(|i| base + i)
        .find(|n| !Path::new(&format!("/var/run/tgtd/socket.{n}")).exists())
        .expect("no free tgtd control port")
}

#[track_caller]
fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Minimal libiscsi binding (loaded with dlopen, so no build dependency).
mod iscsi {
    use std::ffi::{c_char, c_int, c_void, CString};

    #[repr(C)]
    struct IoVec {
        base: *mut c_void,
        len: usize,
    }

    type CreateCtx = unsafe extern "C" fn(*const c_char) -> *mut c_void;
    type SetStr = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
    type SetInt = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
    type Connect = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
    type Read16 = unsafe extern "C" fn(
        *mut c_void,
        c_int,
        u64,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *mut IoVec,
        c_int,
    ) -> *mut c_void;
    type Write16 = unsafe extern "C" fn(
        *mut c_void,
        c_int,
        u64,
        *mut u8,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *mut IoVec,
        c_int,
    ) -> *mut c_void;
    type TaskStatus = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
    type FreeTask = unsafe extern "C" fn(*mut c_void);
    type Destroy = unsafe extern "C" fn(*mut c_void) -> c_int;
    type GetError = unsafe extern "C" fn(*mut c_void) -> *const c_char;

    pub struct Session {
        ctx: *mut c_void,
        lun: c_int,
        read16: Read16,
        write16: Write16,
        status: TaskStatus,
        free: FreeTask,
        destroy: Destroy,
    }

    unsafe fn sym<T: Copy>(lib: *mut c_void, name: &str) -> T {
        let c = CString::new(name).unwrap();
        let p = libc::dlsym(lib, c.as_ptr());
        assert!(!p.is_null(), "libiscsi has no {name}");
        std::mem::transmute_copy(&p)
    }

    impl Session {
        pub fn connect(portal: &str, target: &str, lun: i32) -> Session {
            // SAFETY: plain C calls into libiscsi with valid, NUL-terminated
            // strings; returned pointers are checked before use.
            unsafe {
                let name = CString::new("libiscsi.so.7").unwrap();
                let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW);
                assert!(!lib.is_null(), "cannot load libiscsi.so.7 (libiscsi7)");
                let create: CreateCtx = sym(lib, "iscsi_create_context");
                let set_target: SetStr = sym(lib, "iscsi_set_targetname");
                let set_type: SetInt = sym(lib, "iscsi_set_session_type");
                let set_digest: SetInt = sym(lib, "iscsi_set_header_digest");
                let connect: Connect = sym(lib, "iscsi_full_connect_sync");
                let get_error: GetError = sym(lib, "iscsi_get_error");
                let iname = CString::new("iqn.2026-11.sheepfs:test-initiator").unwrap();
                let ctx = create(iname.as_ptr());
                assert!(!ctx.is_null());
                let t = CString::new(target).unwrap();
                set_target(ctx, t.as_ptr());
                set_type(ctx, 2); // ISCSI_SESSION_NORMAL
                set_digest(ctx, 0); // ISCSI_HEADER_DIGEST_NONE
                let p = CString::new(portal).unwrap();
                if connect(ctx, p.as_ptr(), lun) != 0 {
                    let e = std::ffi::CStr::from_ptr(get_error(ctx));
                    panic!("iSCSI login to {portal} {target} lun {lun}: {e:?}");
                }
                Session {
                    ctx,
                    lun,
                    read16: sym(lib, "iscsi_read16_iov_sync"),
                    write16: sym(lib, "iscsi_write16_iov_sync"),
                    status: sym(lib, "scsi_task_get_status"),
                    free: sym(lib, "scsi_free_scsi_task"),
                    destroy: sym(lib, "iscsi_destroy_context"),
                }
            }
        }

        pub fn read(&self, lba: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            let mut iov = IoVec {
                base: buf.as_mut_ptr().cast(),
                len,
            };
            // SAFETY: the iovec points at `buf`, which outlives the call.
            unsafe {
                let t = (self.read16)(
                    self.ctx, self.lun, lba, len as u32, 512, 0, 0, 0, 0, 0, &mut iov, 1,
                );
                assert!(!t.is_null(), "READ(16) failed to run");
                let st = (self.status)(t, std::ptr::null_mut());
                (self.free)(t);
                assert_eq!(st, 0, "READ(16) at lba {lba} status {st}");
            }
            buf
        }

        pub fn write(&self, lba: u64, data: &[u8]) {
            let mut buf = data.to_vec();
            let mut iov = IoVec {
                base: buf.as_mut_ptr().cast(),
                len: buf.len(),
            };
            // SAFETY: as in `read`.
            unsafe {
                let t = (self.write16)(
                    self.ctx,
                    self.lun,
                    lba,
                    std::ptr::null_mut(),
                    buf.len() as u32,
                    512,
                    0,
                    0,
                    0,
                    0,
                    0,
                    &mut iov,
                    1,
                );
                assert!(!t.is_null(), "WRITE(16) failed to run");
                let st = (self.status)(t, std::ptr::null_mut());
                (self.free)(t);
                assert_eq!(st, 0, "WRITE(16) at lba {lba} status {st}");
            }
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            // SAFETY: ctx came from iscsi_create_context and is dropped once.
            unsafe {
                (self.destroy)(self.ctx);
            }
        }
    }
}

/// Reads `len` bytes at `off` of a VDI through the inode map, as dog does.
async fn client_read(c: &Client, vid: u32, off: u64, len: usize) -> Vec<u8> {
    let ino = c.read_inode(vid, true).await.expect("inode");
    let DataMap::Flat(map) = ino.map else {
        panic!("flat VDI expected")
    };
    let mut out = Vec::with_capacity(len);
    let mut pos = off;
    while out.len() < len {
        let idx = pos / OBJ;
        let in_obj = pos % OBJ;
        let n = ((OBJ - in_obj) as usize).min(len - out.len());
        let owner = map[idx as usize];
        if owner == 0 {
            out.extend(std::iter::repeat_n(0u8, n));
        } else {
            let d = c
                .read_obj(
                    oid::vid_to_data_oid(owner, idx as u32),
                    in_obj as u32,
                    n as u32,
                    0,
                )
                .await
                .expect("read object");
            out.extend_from_slice(&d);
        }
        pos += n as u64;
    }
    out
}

/// Writes whole-object-aligned data through the client (create + inode update).
async fn client_write_object(c: &Client, vid: u32, idx: u32, off_in_obj: u32, data: &[u8]) {
    let doid = oid::vid_to_data_oid(vid, idx);
    c.write_obj(ObjWrite::new(doid, off_in_obj, data.to_vec()).creating(0))
        .await
        .expect("create object");
    let entry = inode::data_vdi_id_offset(idx) as u32;
    let map = vid.to_le_bytes().to_vec();
    c.write_obj(ObjWrite::new(oid::vid_to_vdi_oid(vid), entry, map))
        .await
        .expect("update inode");
}

#[tokio::test(flavor = "multi_thread")]
async fn tgt_sheepdog_backing_store_against_sheep_lite() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "tgtd needs root");
    // tgt formats the port into a 5-byte buffer, so only 4-digit ports work.
    let s = SheepLite::start_on(common::free_port_in(7100..9999));
    let c = Client::new(s.addr(), Options::default());
    c.make_fs(0, 0, sheepfs::proto::cluster_flags::AUTO_VNODES, 0, "plain")
        .await
        .unwrap();
    let opts = CreateOptions {
        block_size_shift: Some(22),
        ..Default::default()
    };
    let v1 = c.create_vdi("tgt1", VDI_SIZE, &opts).await.unwrap();
    let v2 = c.create_vdi("tgt2", VDI_SIZE, &opts).await.unwrap();
    // Data written through the client before tgt opens the VDIs.
    let pre1 = pattern(1 << 20, 11);
    client_write_object(&c, v1, 2, 4096, &pre1).await;
    let pre2 = pattern(300 * 512, 22);
    client_write_object(&c, v2, 5, 0, &pre2).await;

    let control = free_control_port();
    let portal = free_port();
    let log = s.path().join("tgtd.log");
    let mut tgtd = Tgtd::start(control, portal, &log);
    let iqn = "iqn.2026-11.sheepfs:sheep-lite";
    tgtd.adm_ok(&[
        "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn,
    ]);
    let bs1 = format!("tcp:127.0.0.1:{}:tgt1", s.port);
    let bs2 = format!("unix:{}:tgt2", s.sock().display());
    for (lun, bs) in [("1", &bs1), ("2", &bs2)] {
        tgtd.adm_ok(&[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            lun,
            "--bstype",
            "sheepdog",
            "--backing-store",
            bs,
        ]);
    }
    tgtd.adm_ok(&[
        "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    let url = |lun: u32| format!("iscsi://127.0.0.1:{portal}/{iqn}/{lun}");

    for lun in [1, 2] {
        let inq = run_ok("iscsi-inq", &[&url(lun)]);
        assert!(inq.contains("Peripheral Device Type"), "{inq}");
        let cap = run_ok("iscsi-readcapacity16", &[&url(lun)]);
        let blocks = VDI_SIZE / 512;
        assert!(
            cap.contains(&format!("Total size:{VDI_SIZE}"))
                || cap.contains(&format!("Returned Logical Block Address:{}", blocks - 1)),
            "{cap}"
        );
    }

    // Client -> iSCSI: what the client wrote reads back through tgt.
    let sess1 = iscsi::Session::connect(&format!("127.0.0.1:{portal}"), iqn, 1);
    let got = sess1.read((2 * OBJ + 4096) / 512, pre1.len());
    assert!(got == pre1, "LUN 1 (tcp) does not return the client's data");
    let sess2 = iscsi::Session::connect(&format!("127.0.0.1:{portal}"), iqn, 2);
    assert!(
        sess2.read(5 * OBJ / 512, pre2.len()) == pre2,
        "LUN 2 (unix)"
    );
    // Unallocated ranges read as zeros.
    assert!(sess1.read(10 * OBJ / 512, 8192).iter().all(|&b| b == 0));

    // iSCSI -> client: writes through tgt (new objects, overwrites, a range
    // crossing an object boundary) read back identically through the client.
    let w1 = pattern(2 << 20, 33);
    let off1 = 7 * OBJ - (1 << 20);
    sess1.write(off1 / 512, &w1);
    let w2 = pattern(64 * 1024, 44);
    let off2 = 5 * OBJ + 8192;
    sess2.write(off2 / 512, &w2);
    drop(sess1);
    drop(sess2);
    assert!(
        client_read(&c, v1, off1, w1.len()).await == w1,
        "tgt write over tcp not seen by the client"
    );
    let mut want2 = pre2.clone();
    want2[8192..8192 + w2.len()].copy_from_slice(&w2);
    assert!(
        client_read(&c, v2, 5 * OBJ, want2.len()).await == want2,
        "tgt write over unix not seen by the client"
    );

    // libiscsi's conformance tests for reads and writes, on both LUNs.
    for lun in [1, 2] {
        for family in ["SCSI.Read10", "SCSI.Write10", "SCSI.Read16", "SCSI.Write16"] {
            let o = Command::new("iscsi-test-cu")
                .args(["--dataloss", "--test", family, &url(lun)])
                .output()
                .expect("iscsi-test-cu");
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && !out.contains("FAILED"),
                "iscsi-test-cu {family} on LUN {lun}:\n{out}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(out.contains("passed"), "{family}: no test ran:\n{out}");
        }
    }

    assert!(tgtd.stop(), "tgtd did not stop");
    // The server is unharmed.
    c.node_list().await.unwrap();
}
