//! The filesystem core driven directly, without FUSE or root: the same
//! calls the adapter makes, against a real sheep-lite.

mod common;

use common::{pattern, SheepLite};
use sheepfs::fs::control::VolumeSpec;
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
