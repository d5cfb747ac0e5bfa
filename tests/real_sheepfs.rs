//! sheepfs mounted on a real 3-node sheep cluster (copies 3): state files
//! equal dog's output, attach/detach, data both ways with dog, fsync with
//! `-o` (real sheep answers FLUSH_VDI with INVALID_PARMS without an object
//! cache; the fsync must still succeed), concurrent writers and readers
//! verified through dog.

mod common;
mod real_common;
mod sheepfs_common;

use common::pattern;
use real_common::Cluster;
use sheepfs_common::Mount;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

const MB: u64 = 1 << 20;

fn cluster() -> Option<&'static Cluster> {
    real_common::shared(&[])
}

fn mount(c: &Cluster, extra: &[&str]) -> Mount {
    let port = c.port().to_string();
    let mut args = vec!["-a", "127.0.0.1", "-p", &port];
    args.extend_from_slice(extra);
    Mount::start_args(&args)
}

#[track_caller]
fn dog_read(c: &Cluster, name: &str, off: u64, len: u64) -> Vec<u8> {
    let o = c.dog(&["vdi", "read", name, &off.to_string(), &len.to_string()]);
    assert_eq!(o.code, 0, "{o:?}");
    o.stdout
}

#[test]
fn state_files_equal_dog() {
    let Some(c) = cluster() else { return };
    assert_eq!(c.dog(&["vdi", "create", "state", "16M"]).code, 0);
    let m = mount(c, &[]);
    for (file, args) in [
        ("cluster/info", &["cluster", "info"][..]),
        ("vdi/list", &["vdi", "list"][..]),
    ] {
        let dog = c.dog(args);
        assert_eq!(dog.code, 0, "{dog:?}");
        assert_eq!(m.read_string(file), dog.text(), "{file} vs dog {args:?}");
    }
}

#[test]
fn data_both_ways_and_fsync_with_o() {
    let Some(c) = cluster() else { return };
    assert_eq!(c.dog(&["vdi", "create", "fsd", "64M"]).code, 0);
    let m = mount(c, &["-o"]);
    m.attach("fsd");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volume/fsd"))
        .expect("open volume");
    let ours = pattern((3 * MB) as usize, 42);
    f.write_all_at(&ours, 3 * MB + 4096).expect("write");
    // FLUSH_VDI: INVALID_PARMS from a sheep without object cache = done.
    f.sync_all().expect("fsync on a real cluster");
    assert_eq!(dog_read(c, "fsd", 3 * MB + 4096, 3 * MB), ours);
    drop(f);
    // dog writes while the VDI is detached (an attached volume keeps its
    // inode map, as qemu does); after attaching again sheepfs reads it.
    m.detach("fsd");
    let theirs = pattern(65536, 7);
    let o = c.dog_stdin(&["vdi", "write", "fsd", "41943040", "65536"], &theirs);
    assert_eq!(o.code, 0, "{o:?}");
    m.attach("fsd");
    let f = std::fs::File::open(m.p("volume/fsd")).expect("reopen");
    let mut back = vec![0u8; theirs.len()];
    f.read_exact_at(&mut back, 40 * MB).expect("read");
    assert!(back == theirs, "sheepfs reads what dog wrote");
    let mut back = vec![0u8; ours.len()];
    f.read_exact_at(&mut back, 3 * MB + 4096).expect("read");
    assert!(back == ours, "own write after detach/attach");
}

#[test]
fn concurrent_writers_and_readers() {
    let Some(c) = cluster() else { return };
    assert_eq!(c.dog(&["vdi", "create", "conc", "128M"]).code, 0);
    let m = mount(c, &[]);
    m.attach("conc");
    let path = Arc::new(m.p("volume/conc"));
    // 16 regions of 2 MiB + 4 KiB (so they straddle object boundaries).
    // Regions 8..16 are written first; then 8 writers write regions 0..8
    // while 8 readers keep checking regions 8..16, byte for byte.
    let region = 2 * MB + 4096;
    let data = move |i: u64| pattern(region as usize, i as u8 + 1);
    let f = OpenOptions::new().write(true).open(&*path).expect("open");
    for i in 8..16 {
        f.write_all_at(&data(i), i * region).expect("write");
    }
    drop(f);
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&*path)
                    .expect("open");
                for round in 0..4 {
                    if t < 8 {
                        f.write_all_at(&data(t), t * region).expect("write");
                    } else {
                        let mut b = vec![0u8; region as usize];
                        f.read_exact_at(&mut b, t * region).expect("read");
                        assert!(b == data(t), "region {t}, round {round}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    for i in 0..16u64 {
        assert!(
            dog_read(c, "conc", i * region, region) == data(i),
            "region {i} through dog"
        );
    }
}
