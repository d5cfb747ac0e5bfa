//! The filesystem core driven directly, without FUSE or root: the same
//! calls the adapter makes, against a real sheep-lite.

mod common;

use common::{pattern, SheepLite};
use sheepfs::fs::control::VolumeSpec;
use sheepfs::fs::readahead;
use sheepfs::fs::tree::{self, Kind};
use sheepfs::fs::{FsCore, FsOptions};
use std::sync::Arc;

fn core(s: &SheepLite, opts: FsOptions) -> Arc<FsCore> {
    Arc::new(FsCore::new(s.client(), opts))
}

async fn lookup_path(c: &FsCore, path: &str) -> sheepfs::fs::FsResult<u64> {
    let mut ino = tree::ROOT;
    for part in path.split('/') {
        ino = c.lookup(ino, part).await?.ino;
    }
    Ok(ino)
}

async fn read_all(c: &FsCore, path: &str) -> Vec<u8> {
    let ino = lookup_path(c, path).await.expect("lookup");
    let o = c.open(ino, libc::O_RDONLY).await.expect("open");
    let mut out = Vec::new();
    loop {
        let b = c.read(ino, o.fh, out.len() as u64, 7).await.expect("read");
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    c.release(o.fh);
    out
}

async fn write_ctl(c: &FsCore, path: &str, data: &[u8]) -> sheepfs::fs::FsResult<u32> {
    let ino = lookup_path(c, path).await?;
    let o = c.open(ino, libc::O_WRONLY).await?;
    let r = c.write(ino, o.fh, 0, data.to_vec()).await;
    c.release(o.fh);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_without_a_mount() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "8M"]).assert_ok();
    s.ctl(&["vdi", "snapshot", "-s", "s1", "vol"]).assert_ok();
    let c = core(&s, FsOptions::default());

    // The tree.
    let root: Vec<String> = c
        .readdir(tree::ROOT)
        .unwrap()
        .into_iter()
        .map(|(_, _, n)| n)
        .collect();
    assert_eq!(
        root,
        [".", "..", "cluster", "vdi", "node", "config", "volume", "stats", "log"]
    );
    let a = c.getattr(tree::DIR_VOLUME).await.unwrap();
    assert_eq!(a.kind, Kind::Dir);
    assert_eq!(
        c.lookup(tree::ROOT, "nope").await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        c.lookup(lookup_path(&c, "cluster/info").await.unwrap(), "x")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOTDIR
    );

    // State files: the same text as sheepctl, read 7 bytes at a time; the
    // size in getattr matches.
    let info = read_all(&c, "vdi/list").await;
    assert_eq!(info, s.ctl(&["vdi", "list"]).assert_ok().stdout);
    let ino = lookup_path(&c, "vdi/list").await.unwrap();
    assert_eq!(c.getattr(ino).await.unwrap().size, info.len() as u64);
    assert_eq!(
        c.open(ino, libc::O_WRONLY).await.unwrap_err().errno(),
        libc::EACCES
    );

    // Attach through the control file; errors carry specific errnos.
    assert_eq!(write_ctl(&c, "vdi/mount", b"vol\n").await.unwrap(), 4);
    assert_eq!(c.attached(), ["vol"]);
    assert_eq!(
        write_ctl(&c, "vdi/mount", b"missing\n")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_eq!(
        write_ctl(&c, "vdi/mount", b"a/b")
            .await
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    c.attach(&VolumeSpec::parse("vol@s1").unwrap())
        .await
        .unwrap();
    assert_eq!(read_all(&c, "vdi/mount").await, b"vol\nvol@s1\n");

    // Volume I/O.
    let v = lookup_path(&c, "volume/vol").await.unwrap();
    let attr = c.getattr(v).await.unwrap();
    assert_eq!((attr.size, attr.blksize), (8 << 20, 4 << 20));
    let o = c.open(v, libc::O_RDWR).await.unwrap();
    assert!(o.direct_io && o.parallel_direct_writes);
    let d = pattern(10000, 4);
    assert_eq!(
        c.write(v, o.fh, (4 << 20) - 5000, d.clone()).await.unwrap(),
        10000
    );
    assert!(c.read(v, o.fh, (4 << 20) - 5000, 10000).await.unwrap() == d);
    assert_eq!(
        c.write(v, o.fh, 8 << 20, vec![1])
            .await
            .unwrap_err()
            .errno(),
        libc::ENOSPC
    );
    assert_eq!(
        c.write(v, o.fh, (8 << 20) - 3, vec![1; 10]).await.unwrap(),
        3
    );
    assert!(c.read(v, o.fh, 8 << 20, 100).await.unwrap().is_empty());
    // Busy while open, then detach.
    assert_eq!(
        write_ctl(&c, "vdi/unmount", b"vol")
            .await
            .unwrap_err()
            .errno(),
        libc::EBUSY
    );
    c.release(o.fh);
    let snap = lookup_path(&c, "volume/vol@s1").await.unwrap();
    assert_eq!(
        c.open(snap, libc::O_RDWR).await.unwrap_err().errno(),
        libc::EROFS
    );
    let stats = String::from_utf8(read_all(&c, "stats/vol").await).unwrap();
    assert!(stats.contains("writes: 2\n"), "{stats}");
    assert_eq!(
        write_ctl(&c, "vdi/unmount", b"vol\nvol@s1\n")
            .await
            .unwrap(),
        11
    );
    assert!(c.attached().is_empty());
    // The detached inode is gone for good.
    assert_eq!(c.getattr(v).await.unwrap_err().errno(), libc::ENOENT);
    // What was written is on the server.
    let back = s
        .ctl(&[
            "vdi",
            "read",
            "vol",
            &((4u64 << 20) - 5000).to_string(),
            "10000",
        ])
        .assert_ok()
        .stdout
        .clone();
    assert!(back == d, "data on the server differs");
    c.shutdown().await;
}

/// Compares read data without printing megabytes when it differs.
fn same(got: &[u8], want: &[u8], at: usize) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "read at {at}: {} bytes, {} expected; first difference at byte {first:?}",
        got.len(),
        want.len()
    );
}

/// The `reads:` counter of a volume's stats file.
async fn volume_reads(c: &FsCore, name: &str) -> u64 {
    let stats = String::from_utf8(read_all(c, &format!("stats/{name}")).await).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("reads: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reads counter in {stats}"))
}

/// Waits (with a deadline) until the volume has done `n` reads.
async fn wait_reads(c: &FsCore, name: &str, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while volume_reads(c, name).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached {n} reads"
        );
        tokio::task::yield_now().await;
    }
}

/// Sequential reads are read ahead (one read more than asked, done before
/// the next request), and data read ahead is never served once a write or
/// discard through the mount has ended after it was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_follows_streams_and_never_serves_stale_data() {
    const B: usize = 64 << 10;
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vol", "8M"]).assert_ok();
    let c = core(&s, FsOptions::default());
    write_ctl(&c, "vdi/mount", b"vol\n").await.unwrap();
    let v = lookup_path(&c, "volume/vol").await.unwrap();
    let o = c.open(v, libc::O_RDWR).await.unwrap();
    let mut model = pattern(8 << 20, 1);
    c.write(v, o.fh, 0, model.clone()).await.unwrap();
    let read = |off: usize| {
        let c = c.clone();
        async move { c.read(v, o.fh, off as u64, B as u32).await.unwrap() }
    };

    // A stream: the second read starts reading the third range ahead.
    same(&read(0).await, &model[..B], 0);
    same(&read(B).await, &model[B..2 * B], B);
    wait_reads(&c, "vol", 3).await;
    // A write ending after that read-ahead: the next read sees it.
    let w = pattern(100, 9);
    c.write(v, o.fh, (2 * B + 10) as u64, w.clone())
        .await
        .unwrap();
    model[2 * B + 10..2 * B + 110].copy_from_slice(&w);
    same(&read(2 * B).await, &model[2 * B..3 * B], 2 * B);
    // So does a discard...
    wait_reads(&c, "vol", 5).await;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    c.fallocate(v, (3 * B) as u64, B as u64, libc::FALLOC_FL_ZERO_RANGE)
        .await
        .unwrap();
    model[3 * B..4 * B].fill(0);
    same(&read(3 * B).await, &model[3 * B..4 * B], 3 * B);
    // ...and a write through another open of the same volume.
    wait_reads(&c, "vol", 7).await;
    let o2 = c.open(v, libc::O_WRONLY).await.unwrap();
    c.write(v, o2.fh, (4 * B) as u64, vec![7u8; B])
        .await
        .unwrap();
    c.release(o2.fh);
    model[4 * B..5 * B].fill(7);
    same(&read(4 * B).await, &model[4 * B..5 * B], 4 * B);

    // Undisturbed, the stream is served from what was read ahead: one read
    // of the volume per request, plus the one ahead of the last.
    wait_reads(&c, "vol", 9).await;
    for i in 5..20 {
        same(&read(i * B).await, &model[i * B..(i + 1) * B], i * B);
    }
    wait_reads(&c, "vol", 24).await;
    assert_eq!(volume_reads(&c, "vol").await, 24);
    // Data read ahead too long ago is read again (and the stream goes on).
    tokio::time::sleep(readahead::MAX_AGE + std::time::Duration::from_millis(20)).await;
    same(&read(20 * B).await, &model[20 * B..21 * B], 20 * B);
    wait_reads(&c, "vol", 26).await;
    // A jump elsewhere drops it and starts no read-ahead; reading on from
    // there starts a new stream.
    same(&read(100 * B).await, &model[100 * B..101 * B], 100 * B);
    same(&read(101 * B).await, &model[101 * B..102 * B], 101 * B);
    wait_reads(&c, "vol", 29).await;
    // A discard of whole objects drops it too.
    c.fallocate(v, 4 << 20, 4 << 20, punch).await.unwrap();
    model[4 << 20..].fill(0);
    same(&read(102 * B).await, &model[102 * B..103 * B], 102 * B);
    // The last range has nothing after it to read ahead.
    let last = (8 << 20) / B - 1;
    same(
        &read((last - 1) * B).await,
        &model[(last - 1) * B..last * B],
        (last - 1) * B,
    );
    same(&read(last * B).await, &model[last * B..], last * B);
    c.release(o.fh);
    c.shutdown().await;
}
