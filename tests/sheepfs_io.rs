//! Volume file I/O through real sheepfs mounts: checksummed reads and
//! writes across object boundaries, copy-on-write, the end of the volume,
//! truncate, discard, SEEK_DATA/SEEK_HOLE, snapshots taken underneath,
//! 16 readers + 16 writers, the -k cache, memory use.

mod common;
mod sheepfs_common;

use common::{pattern, SheepLite};
use parking_lot::RwLock;
use sheepfs_common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn rw(m: &Mount, name: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p(&format!("volume/{name}")))
        .unwrap_or_else(|e| panic!("open volume/{name}: {e}"))
}

fn ctl_read(s: &SheepLite, args: &[&str]) -> Vec<u8> {
    s.ctl(args).assert_ok().stdout.clone()
}

/// pwrite/pread and dd with checksums at offsets straddling object
/// boundaries, for the default 4 MiB objects and for 1 MiB objects (-z 20);
/// unwritten ranges read as zeros; sheepctl sees the same bytes.
#[test]
fn checksums_across_object_boundaries() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "big", "64M"]).assert_ok();
    s.ctl(&["vdi", "create", "-z", "20", "small", "16M"])
        .assert_ok();
    let m = Mount::start(&s, &[]);
    for (name, obj) in [("big", 4u64 << 20), ("small", 1u64 << 20)] {
        m.attach(name);
        let md = std::fs::metadata(m.p(&format!("volume/{name}"))).unwrap();
        assert_eq!(md.blksize(), obj, "st_blksize of {name} = object size");
        let f = rw(&m, name);
        let cases: Vec<(u64, usize)> = vec![
            (0, 512),
            (obj - 1, 2),
            (obj - 4096, 8192),
            (2 * obj - 1000, 3000),
            (3 * obj - 123, obj as usize + 456), // spans three objects
            (5 * obj + 17, 100_000),
        ];
        let mut model = vec![0u8; md.len() as usize];
        for (i, &(off, len)) in cases.iter().enumerate() {
            let d = noise(len, i as u64 + obj);
            f.write_all_at(&d, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&d);
        }
        for &(off, len) in &cases {
            let got = pread_exact(&f, off, len);
            assert_eq!(
                sha256(&got),
                sha256(&model[off as usize..][..len]),
                "{name} {off}+{len}"
            );
        }
        // Whole volume through sheepfs and through sheepctl.
        let all = read_file(&m.p(&format!("volume/{name}")));
        assert_eq!(all.len(), model.len());
        assert_eq!(sha256(&all), sha256(&model), "{name} whole");
        let srv = ctl_read(&s, &["vdi", "read", name]);
        assert_eq!(sha256(&srv), sha256(&model), "{name} via sheepctl");
        // An untouched object reads as zeros.
        assert!(pread_exact(&f, 7 * obj, 4096).iter().all(|&b| b == 0));
    }
    // dd in and out with a block size that does not divide the object size.
    let src = tempfile::NamedTempFile::new().unwrap();
    let data = noise(3 * 1000 * 1024, 77);
    std::fs::write(src.path(), &data).unwrap();
    let vol = m.p("volume/big");
    sh_ok(
        "dd",
        &[
            &format!("if={}", src.path().display()),
            &format!("of={}", vol.display()),
            "bs=1000k",
            "seek=3",
            "conv=notrunc",
            "status=none",
        ],
    );
    let out = tempfile::NamedTempFile::new().unwrap();
    sh_ok(
        "dd",
        &[
            &format!("if={}", vol.display()),
            &format!("of={}", out.path().display()),
            "bs=1000k",
            "skip=3",
            "count=3",
            "status=none",
        ],
    );
    assert_eq!(sha256(&read_file(out.path())), sha256(&data));
    let srv = ctl_read(
        &s,
        &["vdi", "read", "big", "3072000", &data.len().to_string()],
    );
    assert_eq!(sha256(&srv), sha256(&data));
    let st = m.stats("big");
    assert!(st["writes"].parse::<u64>().unwrap() > 0);
    assert!(st["bytes_read"].parse::<u64>().unwrap() >= data.len() as u64);
}

/// Writing a clone's volume changes neither its parent nor the snapshot.
#[test]
fn clone_writes_leave_parent_and_snapshot() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "base", "16M"]).assert_ok();
    let orig = noise(16 << 20, 1);
    s.ctl_stdin(&["vdi", "write", "base"], &orig).assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "base"]).assert_ok();
    s.ctl(&["vdi", "clone", "-s", "s1", "base", "child"])
        .assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("child");
    m.attach("base");
    let c = rw(&m, "child");
    let mut model = orig.clone();
    for (i, (off, len)) in [
        (0u64, 4096usize),
        ((4 << 20) - 100, 200),
        (9 << 20, 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let d = noise(len, 100 + i as u64);
        c.write_all_at(&d, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
    assert_eq!(sha256(&read_file(&m.p("volume/child"))), sha256(&model));
    assert_eq!(sha256(&read_file(&m.p("volume/base"))), sha256(&orig));
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "base"])),
        sha256(&orig)
    );
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "-s", "s1", "base"])),
        sha256(&orig)
    );
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "child"])),
        sha256(&model)
    );
    // And the parent's own writes stay out of the clone.
    let b = rw(&m, "base");
    b.write_all_at(&pattern(4096, 42), 8 << 20).unwrap();
    assert_bytes(
        &pread_exact(&c, 8 << 20, 4096),
        &orig[8 << 20..][..4096],
        "data",
    );
}

/// A snapshot taken by someone else while the volume is attached: later
/// writes go to the new working VDI (COW), never EIO.
#[test]
fn snapshot_taken_underneath() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    for opts in [&[][..], &["-k"][..]] {
        let m = Mount::start(&s, opts);
        m.attach("vol");
        let f = rw(&m, "vol");
        let a = noise(1 << 20, 5);
        f.write_all_at(&a, 0).unwrap();
        let tag = format!("under{}", opts.len());
        s.ctl(&["vdi", "snapshot", "-s", &tag, "vol"]).assert_ok();
        let b = noise(1 << 20, 6);
        f.write_all_at(&b, 512 << 10)
            .unwrap_or_else(|e| panic!("write after snapshot: {e}"));
        let mut want = a.clone();
        want.resize(1536 << 10, 0);
        want[512 << 10..].copy_from_slice(&b);
        assert_eq!(sha256(&pread_exact(&f, 0, 1536 << 10)), sha256(&want));
        assert_eq!(
            sha256(&ctl_read(
                &s,
                &["vdi", "read", "-s", &tag, "vol", "0", "1048576"]
            )),
            sha256(&a),
            "the snapshot keeps the old data"
        );
        assert_eq!(
            sha256(&ctl_read(&s, &["vdi", "read", "vol", "0", "1572864"])),
            sha256(&want)
        );
        drop(f);
        m.detach("vol");
    }
}

/// Reads stop at the end; writes past it fail with ENOSPC (a write
/// crossing it is short); truncate grows the VDI and refuses to shrink it.
#[test]
fn end_of_volume_and_truncate() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "8M"]).assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("vol");
    let size = 8u64 << 20;
    let f = rw(&m, "vol");
    let mut b = vec![0u8; 100];
    assert_eq!(f.read_at(&mut b, size).unwrap(), 0);
    assert_eq!(f.read_at(&mut b, size - 10).unwrap(), 10);
    let e = f.write_at(b"x", size).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    let e = f.write_at(b"x", size + (1 << 20)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(f.write_at(&[7u8; 100], size - 40).unwrap(), 40);
    assert_bytes(&pread_exact(&f, size - 40, 40), &[7u8; 40], "data");
    // dd past the end reports the error.
    let (ok, _, err) = sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", m.p("volume/vol").display()),
            "bs=1M",
            "seek=8",
            "count=1",
            "conv=notrunc",
        ],
    );
    assert!(!ok, "dd past the end succeeded");
    assert!(err.contains("No space left"), "{err}");

    // Grow.
    f.set_len(12 << 20).unwrap();
    assert_eq!(
        std::fs::metadata(m.p("volume/vol")).unwrap().len(),
        12 << 20
    );
    assert!(s
        .ctl(&["vdi", "list", "-r", "vol"])
        .assert_ok()
        .text()
        .contains(&(12u64 << 20).to_string()));
    f.write_all_at(&pattern(4096, 3), 11 << 20).unwrap();
    assert_bytes(&pread_exact(&f, 11 << 20, 4096), &pattern(4096, 3), "data");
    // Shrink is refused, the size stays.
    let e = f.set_len(4 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(m.log_text().contains("cannot shrink volume vol"));
    // O_TRUNC does not truncate a volume.
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.p("volume/vol"))
            .unwrap(),
    );
    assert_eq!(
        std::fs::metadata(m.p("volume/vol")).unwrap().len(),
        12 << 20
    );
    assert_bytes(&pread_exact(&f, 11 << 20, 4096), &pattern(4096, 3), "data");
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// PUNCH_HOLE and ZERO_RANGE: whole objects discarded, partial ones zeroed;
/// SEEK_DATA/SEEK_HOLE follow the inode map.
#[test]
fn discard_zero_and_seek() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "32M"]).assert_ok();
    let m = Mount::start(&s, &[]);
    m.attach("vol");
    let f = rw(&m, "vol");
    let o = 4u64 << 20;
    let size = 32u64 << 20;
    assert_eq!(
        lseek(&f, 0, libc::SEEK_DATA).unwrap_err().raw_os_error(),
        Some(libc::ENXIO),
        "an empty volume has no data"
    );
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE).unwrap(), 0);
    // Objects 1, 2 and 5 get data.
    let d = noise(3 * o as usize, 9);
    f.write_all_at(&d[..o as usize], o).unwrap();
    f.write_all_at(&d[o as usize..2 * o as usize], 2 * o)
        .unwrap();
    f.write_all_at(&d[2 * o as usize..], 5 * o).unwrap();
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), o);
    assert_eq!(lseek(&f, o + 5, libc::SEEK_DATA).unwrap(), o + 5);
    assert_eq!(lseek(&f, o, libc::SEEK_HOLE).unwrap(), 3 * o);
    assert_eq!(lseek(&f, 3 * o, libc::SEEK_DATA).unwrap(), 5 * o);
    assert_eq!(lseek(&f, 5 * o, libc::SEEK_HOLE).unwrap(), 6 * o);
    assert_eq!(
        lseek(&f, 6 * o, libc::SEEK_DATA)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENXIO)
    );
    assert_eq!(
        lseek(&f, size, libc::SEEK_HOLE).unwrap_err().raw_os_error(),
        Some(libc::ENXIO)
    );

    // Punch object 2 entirely plus the last 4 KiB of object 1.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, punch, 2 * o - 4096, o + 4096).unwrap();
    let mut model = vec![0u8; size as usize];
    model[o as usize..3 * o as usize].copy_from_slice(&d[..2 * o as usize]);
    model[5 * o as usize..6 * o as usize].copy_from_slice(&d[2 * o as usize..]);
    model[(2 * o - 4096) as usize..3 * o as usize].fill(0);
    // Zero 10000 bytes in the middle of object 5.
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        5 * o + 1000,
        10000,
    )
    .unwrap();
    model[(5 * o + 1000) as usize..(5 * o + 11000) as usize].fill(0);
    assert_eq!(sha256(&read_file(&m.p("volume/vol"))), sha256(&model));
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "vol"])),
        sha256(&model)
    );
    // Object 2 is unallocated again.
    assert_eq!(lseek(&f, 2 * o, libc::SEEK_DATA).unwrap(), 5 * o);
    assert_eq!(lseek(&f, o, libc::SEEK_HOLE).unwrap(), 2 * o);
    // Plain preallocation is not offered; growing via ZERO_RANGE neither.
    assert_eq!(
        fallocate(&f, 0, 0, 4096).unwrap_err().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    assert!(fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, size - 10, 100).is_err());
}

/// Per-block shared/exclusive locks of the test (not of sheepfs): they
/// only make the expected content of every block known at every read.
struct Model {
    blocks: Vec<RwLock<u64>>,
    next_version: AtomicU64,
}

const BLK: usize = 4096;

fn block_data(block: usize, version: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0u8; BLK];
    }
    noise(BLK, (block as u64) << 32 | version)
}

/// 16 readers and 16 writers on one volume file at random offsets and
/// sizes (crossing object boundaries), every read verified: zero mismatches.
fn readers_and_writers(opts: &[&str]) {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "-z", "20", "vol", "32M"])
        .assert_ok();
    let m = Mount::start(&s, opts);
    m.attach("vol");
    let nblocks = (32 << 20) / BLK;
    let model = Arc::new(Model {
        blocks: (0..nblocks).map(|_| RwLock::new(0)).collect(),
        next_version: AtomicU64::new(1),
    });
    let mismatches = Arc::new(AtomicU64::new(0));
    let path = m.p("volume/vol");
    let mut threads = Vec::new();
    for t in 0..32u64 {
        let model = model.clone();
        let mismatches = mismatches.clone();
        let path = path.clone();
        threads.push(std::thread::spawn(move || {
            let writer = t < 16;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut rng = noise(8 * 400, 1000 + t)
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
                .into_iter();
            let ops = if writer { 60 } else { 120 };
            for _ in 0..ops {
                let r = rng.next().unwrap_or(1);
                let n = 1 + (r % 64) as usize; // up to 256 KiB
                let first = ((r >> 8) as usize) % (nblocks - n);
                let range = first..first + n;
                if writer {
                    let mut guards: Vec<_> =
                        range.clone().map(|b| model.blocks[b].write()).collect();
                    let mut buf = Vec::with_capacity(n * BLK);
                    for (i, b) in range.clone().enumerate() {
                        let v = model.next_version.fetch_add(1, Ordering::Relaxed);
                        buf.extend_from_slice(&block_data(b, v));
                        *guards[i] = v;
                    }
                    f.write_all_at(&buf, (first * BLK) as u64).unwrap();
                } else {
                    let guards: Vec<_> = range.clone().map(|b| model.blocks[b].read()).collect();
                    let got = pread_exact(&f, (first * BLK) as u64, n * BLK);
                    for (i, b) in range.clone().enumerate() {
                        if got[i * BLK..(i + 1) * BLK] != block_data(b, *guards[i])[..] {
                            mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().expect("I/O thread panicked");
    }
    assert_eq!(
        mismatches.load(Ordering::Relaxed),
        0,
        "reads returned wrong data"
    );
    let mut want = Vec::with_capacity(nblocks * BLK);
    for (b, v) in model.blocks.iter().enumerate() {
        want.extend_from_slice(&block_data(b, *v.read()));
    }
    assert_eq!(
        sha256(&read_file(&path)),
        sha256(&want),
        "final content via sheepfs"
    );
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "vol"])),
        sha256(&want),
        "final content on the server"
    );
}

#[test]
fn sixteen_readers_sixteen_writers() {
    readers_and_writers(&[]);
}

#[test]
fn sixteen_readers_sixteen_writers_cached() {
    readers_and_writers(&["-k", "--cache-size", "16M"]);
}

/// -k: a re-read is served from the object cache; writes go through to
/// sheep first; writing config/page_cache drops the cache.
#[test]
fn page_cache_write_through_and_drop() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let m = Mount::start(&s, &["-k"]);
    assert_eq!(m.read_string("config/page_cache"), "1\n");
    assert!(m
        .read_string("config/fuse")
        .contains("volume_keep_cache: 1"));
    m.attach("vol");
    let f = rw(&m, "vol");
    let d = noise(2 << 20, 3);
    f.write_all_at(&d, 1 << 20).unwrap();
    // Acknowledged means on the server.
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "vol", "1048576", "2097152"])),
        sha256(&d)
    );
    // Read through a fresh O_DIRECT fd twice: second time from the cache.
    use std::os::unix::fs::OpenOptionsExt;
    let read_direct = || {
        let g = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(m.p("volume/vol"))
            .unwrap();
        let layout = std::alloc::Layout::from_size_align(2 << 20, 4096).unwrap();
        // SAFETY: aligned buffer for O_DIRECT, freed below.
        let p = unsafe { std::alloc::alloc(layout) };
        let buf = unsafe { std::slice::from_raw_parts_mut(p, 2 << 20) };
        g.read_exact_at(buf, 1 << 20).unwrap();
        let v = buf.to_vec();
        unsafe { std::alloc::dealloc(p, layout) };
        v
    };
    assert_eq!(sha256(&read_direct()), sha256(&d));
    let hits0: u64 = m.stats("vol")["cache_hits"].parse().unwrap();
    assert_eq!(sha256(&read_direct()), sha256(&d));
    let hits1: u64 = m.stats("vol")["cache_hits"].parse().unwrap();
    assert!(
        hits1 > hits0,
        "re-read did not hit the cache ({hits0} -> {hits1})"
    );
    // A write after caching: later reads see it.
    f.write_all_at(&pattern(1000, 8), (1 << 20) + 5).unwrap();
    let mut want = d.clone();
    want[5..1005].copy_from_slice(&pattern(1000, 8));
    assert_eq!(sha256(&read_direct()), sha256(&want));
    assert_eq!(sha256(&pread_exact(&f, 1 << 20, 2 << 20)), sha256(&want));
    // Switching the cache off applies to the attached volume at once: reads
    // neither hit nor fill it any more.
    m.write_ctl("config/page_cache", b"0\n").unwrap();
    assert_eq!(m.read_string("config/page_cache"), "0\n");
    // config/fuse says how volume files open now, not at mount time.
    let fuse = m.read_string("config/fuse");
    assert!(
        fuse.contains("volume_direct_io: 1\nvolume_keep_cache: 0\n"),
        "{fuse}"
    );
    let counts = |m: &Mount| {
        let st = m.stats("vol");
        (st["cache_hits"].clone(), st["cache_misses"].clone())
    };
    let before = counts(&m);
    assert_eq!(sha256(&pread_exact(&f, 1 << 20, 2 << 20)), sha256(&want));
    assert_eq!(sha256(&read_direct()), sha256(&want));
    assert_eq!(
        counts(&m),
        before,
        "cache still used after switching it off"
    );
    m.write_ctl("config/page_cache", b"1\n").unwrap();
    assert_eq!(sha256(&read_direct()), sha256(&want));
    let misses: u64 = m.stats("vol")["cache_misses"].parse().unwrap();
    assert!(
        misses > before.1.parse::<u64>().unwrap(),
        "cache back on: refilled"
    );
}

/// -o: writes carry CMD_CACHE, fsync sends FLUSH_VDI and succeeds;
/// switching the object cache at run time works.
#[test]
fn object_cache_fsync() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "16M"]).assert_ok();
    let m = Mount::start(&s, &["-o"]);
    assert_eq!(m.read_string("config/object_cache"), "1\n");
    m.attach("vol");
    let f = rw(&m, "vol");
    let d = noise(1 << 20, 4);
    f.write_all_at(&d, 0).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    assert_eq!(m.stats("vol")["object_cache"], "1");
    assert!(m.stats("vol")["fsyncs"].parse::<u64>().unwrap() >= 2);
    m.write_ctl("config/object_cache", b"0\n").unwrap();
    assert_eq!(m.stats("vol")["object_cache"], "0");
    f.write_all_at(&d, 4 << 20).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "vol", "0", "1048576"])),
        sha256(&d)
    );
    assert_eq!(
        sha256(&ctl_read(&s, &["vdi", "read", "vol", "4194304", "1048576"])),
        sha256(&d)
    );
}

/// With 10 volumes attached and used, sheepfs stays under 64 MiB RSS, plus
/// the cache budget with -k (here 32 MiB, while 160 MiB are read).
fn memory_with_ten_volumes(opts: &[&str], budget_mib: u64) {
    let s = SheepLite::start_formatted();
    for i in 0..10 {
        s.ctl(&["vdi", "create", &format!("v{i}"), "1G"])
            .assert_ok();
    }
    let m = Mount::start(&s, opts);
    let d = noise(4 << 20, 11);
    for i in 0..10 {
        let n = format!("v{i}");
        m.attach(&n);
        let f = rw(&m, &n);
        for k in 0..4u64 {
            f.write_all_at(&d, k * (256 << 20)).unwrap();
        }
    }
    // Drop the kernel's pages (and our objects), so that with -k the reads
    // below go through sheepfs's object cache: 160 MiB through its budget.
    m.write_ctl(
        "config/page_cache",
        m.read_string("config/page_cache").as_bytes(),
    )
    .unwrap();
    for i in 0..10 {
        let f = rw(&m, &format!("v{i}"));
        for k in 0..4u64 {
            assert_eq!(
                sha256(&pread_exact(&f, k * (256 << 20), d.len())),
                sha256(&d)
            );
        }
    }
    if budget_mib > 0 {
        let st = m.stats("v9");
        assert!(st["cache_misses"].parse::<u64>().unwrap() > 0, "{st:?}");
    }
    let rss = rss_kib(m.pid().expect("pid"));
    eprintln!("sheepfs {opts:?}: RSS with 10 volumes attached: {rss} KiB");
    assert!(rss > 0);
    assert!(
        rss < (64 + budget_mib) * 1024,
        "sheepfs {opts:?}: RSS {rss} KiB with 10 volumes attached"
    );
}

#[test]
fn memory_ten_volumes() {
    memory_with_ten_volumes(&[], 0);
}

#[test]
fn memory_ten_volumes_cached() {
    memory_with_ten_volumes(&["-k", "--cache-size", "32M"], 32);
}
