//! The client library against a real 3-node sheep cluster (copies 3,
//! formatted with -l so that LOCK_VDI is enforced), checked through real
//! dog: data both ways, COW of snapshots and clones, a snapshot taken by dog
//! under an open Volume, locks, a hyper volume past 4 TiB, 1 MiB and 16 MiB
//! objects. All tests share one cluster; each uses its own VDI names.

mod common;
mod real_common;

use common::{pattern, Out};
use real_common::Cluster;
use sheepfs::client::{Client, CreateOptions, LockMode, OpenOptions, SnapSel, Volume};
use sheepfs::proto::SdRes;

const MB: u64 = 1 << 20;
const TB: u64 = 1 << 40;

fn cluster() -> Option<&'static Cluster> {
    real_common::shared(&["-l"])
}

async fn open(c: &Client, name: &str) -> Volume {
    Volume::open(c.clone(), name, OpenOptions::default())
        .await
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

#[track_caller]
fn dog_ok(c: &Cluster, args: &[&str], stdin: &[u8]) -> Out {
    let o = c.dog_stdin(args, stdin);
    assert_eq!(o.code, 0, "dog {args:?}: {o:?}");
    o
}

#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_both_ways_with_dog() {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    c.create_vdi("both", 64 * MB, &CreateOptions::default())
        .await
        .unwrap();
    let v = open(&c, "both").await;
    // Across the object boundaries at 4 and 8 MiB.
    let ours = pattern((5 * MB) as usize, 11);
    v.write_at(3 * MB + 512, &ours).await.unwrap();
    same(
        &cl.dog_read("both", None, 3 * MB + 512, 5 * MB),
        &ours,
        "dog reads what the library wrote",
    );
    // dog writes; the library reads, also what lies around it.
    let theirs = pattern((2 * MB) as usize, 23);
    dog_ok(
        cl,
        &["vdi", "write", "both", "10485760", "2097152"],
        &theirs,
    );
    same(
        &v.read_at(10 * MB, (2 * MB) as usize).await.unwrap(),
        &theirs,
        "the library reads what dog wrote",
    );
    assert_eq!(
        v.read_at(12 * MB, 4096).await.unwrap(),
        vec![0; 4096],
        "never written reads as zeros"
    );
    same(
        &v.read_at(3 * MB + 512, ours.len()).await.unwrap(),
        &ours,
        "own write still there",
    );
    v.close().await.unwrap();
    // A VDI dog made and preallocated, written by the library.
    dog_ok(cl, &["vdi", "create", "-P", "both-dog", "8M"], &[]);
    let v = open(&c, "both-dog").await;
    v.write_at(4 * MB - 100, b"straddles an object boundary")
        .await
        .unwrap();
    assert_eq!(
        cl.dog_read("both-dog", None, 4 * MB - 100, 28),
        b"straddles an object boundary"
    );
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cow_of_snapshots_and_clones() {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    c.create_vdi("cow", 16 * MB, &CreateOptions::default())
        .await
        .unwrap();
    let v = open(&c, "cow").await;
    let a = pattern((6 * MB) as usize, 1);
    v.write_at(0, &a).await.unwrap();
    v.close().await.unwrap();
    c.snapshot_vdi("cow", "one").await.unwrap();
    let v = open(&c, "cow").await;
    let b = pattern(4096, 2);
    v.write_at(MB, &b).await.unwrap();
    c.clone_vdi("cow", &SnapSel::Tag("one".into()), "cow-clone")
        .await
        .unwrap();
    let k = open(&c, "cow-clone").await;
    let k_data = pattern(8192, 3);
    k.write_at(5 * MB, &k_data).await.unwrap();

    // The snapshot kept the old data, seen by dog and by the library.
    same(&cl.dog_read("cow", Some("one"), 0, 6 * MB), &a, "snapshot");
    let snap = Volume::open(
        c.clone(),
        "cow",
        OpenOptions {
            snapshot: SnapSel::Tag("one".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    same(
        &snap.read_at(0, a.len()).await.unwrap(),
        &a,
        "snapshot read",
    );
    assert!(
        snap.write_at(0, b"x").await.is_err(),
        "snapshots are read-only"
    );
    // The working VDI has the new block over the old data.
    let mut want = a.clone();
    want[MB as usize..MB as usize + b.len()].copy_from_slice(&b);
    same(&cl.dog_read("cow", None, 0, 6 * MB), &want, "working VDI");
    // The clone: the snapshot's data plus its own write only.
    let mut want = a.clone();
    want[5 * MB as usize..5 * MB as usize + k_data.len()].copy_from_slice(&k_data);
    same(&cl.dog_read("cow-clone", None, 0, 6 * MB), &want, "clone");
    for x in [v, k, snap] {
        x.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_by_dog_under_an_open_volume() {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    c.create_vdi("under", 16 * MB, &CreateOptions::default())
        .await
        .unwrap();
    let v = open(&c, "under").await;
    let old = pattern((MB + 4096) as usize, 5);
    v.write_at(MB, &old).await.unwrap();
    dog_ok(cl, &["vdi", "snapshot", "-s", "taken", "under"], &[]);
    // The open Volume must find its VDI became a snapshot, follow the new
    // working VDI and copy on write, both over old data and into new objects.
    let new = pattern(8192, 6);
    v.write_at(MB + 4096, &new).await.unwrap();
    v.write_at(12 * MB, &new).await.unwrap();
    same(
        &cl.dog_read("under", Some("taken"), MB, old.len() as u64),
        &old,
        "the snapshot keeps what was there when dog took it",
    );
    assert_eq!(
        cl.dog_read("under", Some("taken"), 12 * MB, 8192),
        vec![0; 8192]
    );
    let mut want = old.clone();
    want[4096..4096 + new.len()].copy_from_slice(&new);
    same(
        &cl.dog_read("under", None, MB, old.len() as u64),
        &want,
        "the working VDI has the new write",
    );
    same(
        &cl.dog_read("under", None, 12 * MB, 8192),
        &new,
        "new object",
    );
    same(
        &v.read_at(MB, old.len()).await.unwrap(),
        &want,
        "the Volume reads the working VDI",
    );
    v.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_refuse_a_second_opener() {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    c.create_vdi("locked", 8 * MB, &CreateOptions::default())
        .await
        .unwrap();
    let opts = OpenOptions {
        lock: LockMode::Normal,
        ..Default::default()
    };
    let v = Volume::open(c.clone(), "locked", opts.clone())
        .await
        .unwrap();
    // A second client, as another host would be.
    let other = cl.client();
    let e = match Volume::open(other.clone(), "locked", opts.clone()).await {
        Ok(_) => panic!("a second locking opener must be refused"),
        Err(e) => e,
    };
    assert!(e.is(SdRes::VDI_LOCKED), "{e}");
    // dog and sheepctl list the lock alike.
    let d = cl.dog(&["vdi", "lock", "list"]);
    let s = cl.ctl(&["vdi", "lock", "list"]);
    assert!(d.text().contains("locked"), "{d:?}");
    assert_eq!((d.code, d.text(), &d.stderr), (s.code, s.text(), &s.stderr));
    v.write_at(0, b"mine").await.unwrap();
    v.close().await.unwrap();
    let v = Volume::open(other, "locked", opts).await.unwrap();
    assert_eq!(v.read_at(0, 4).await.unwrap(), b"mine");
    v.close().await.unwrap();
    assert!(!cl.dog(&["vdi", "lock", "list"]).text().contains("locked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_volume_past_4_tib() {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    let opts = CreateOptions {
        hyper: true,
        ..Default::default()
    };
    c.create_vdi("hyper", 5 * TB, &opts).await.unwrap();
    let v = open(&c, "hyper").await;
    assert_eq!(v.size(), 5 * TB);
    let far = 4 * TB + 123 * MB + 7;
    let data = pattern((MB + 11) as usize, 9);
    v.write_at(far, &data).await.unwrap();
    v.write_at(5 * TB - 4096, &data[..4096]).await.unwrap();
    same(
        &cl.dog_read("hyper", None, far, data.len() as u64),
        &data,
        "past 4 TiB",
    );
    same(
        &cl.dog_read("hyper", None, 5 * TB - 4096, 4096),
        &data[..4096],
        "last block",
    );
    // dog writes there too; the library reads it after a reload.
    dog_ok(
        cl,
        &["vdi", "write", "hyper", "4611686018427", "4096"],
        &data[..4096],
    );
    v.reload().await.unwrap();
    same(
        &v.read_at(4_611_686_018_427, 4096).await.unwrap(),
        &data[..4096],
        "dog's write past 4 TiB",
    );
    let raw = cl.dog(&["vdi", "list", "-r", "hyper"]).text();
    assert_eq!(raw.split(' ').nth(3), Some("5497558138880"), "{raw}");
    v.close().await.unwrap();
}

async fn object_size(shift: u8) {
    let Some(cl) = cluster() else { return };
    let c = cl.client();
    let obj = 1u64 << shift;
    let name = format!("z{shift}");
    let opts = CreateOptions {
        block_size_shift: Some(shift),
        ..Default::default()
    };
    c.create_vdi(&name, 64 * MB, &opts).await.unwrap();
    let v = open(&c, &name).await;
    assert_eq!(v.object_size(), obj);
    let data = pattern((obj + 2 * 4096) as usize, shift);
    v.write_at(obj - 4096, &data).await.unwrap();
    same(
        &cl.dog_read(&name, None, obj - 4096, data.len() as u64),
        &data,
        "library to dog",
    );
    // dog makes one of that size too, and the library reads its writes.
    let dname = format!("z{shift}-dog");
    dog_ok(
        cl,
        &["vdi", "create", "-z", &shift.to_string(), &dname, "64M"],
        &[],
    );
    let off = (2 * obj - 10).to_string();
    dog_ok(
        cl,
        &["vdi", "write", &dname, &off, "20"],
        b"twenty bytes of data",
    );
    let w = open(&c, &dname).await;
    assert_eq!(w.object_size(), obj);
    assert_eq!(
        w.read_at(2 * obj - 10, 20).await.unwrap(),
        b"twenty bytes of data"
    );
    let raw = cl.dog(&["vdi", "list", "-r", &dname]).text();
    assert_eq!(
        raw.trim_end().rsplit(' ').next(),
        Some(&*shift.to_string()),
        "{raw}"
    );
    v.close().await.unwrap();
    w.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_objects() {
    object_size(20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_objects() {
    object_size(24).await
}
