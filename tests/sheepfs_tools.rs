//! Standard tools on a sheepfs volume file: losetup + mkfs.ext4 + mount +
//! e2fsck, qemu-io and qemu-img compare, fio with verification, fsx.

mod common;
mod sheepfs_common;

use common::SheepLite;
use sheepfs_common::*;
use std::path::Path;

/// ext4 on a loop device over the volume file: make, fill, unmount, fsck
/// clean, remount, verify; then detach, reattach and check again.
fn ext4_on_loop(opts: &[&str]) {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "disk", "256M"]).assert_ok();
    let m = Mount::start(&s, opts);
    m.attach("disk");
    let vol = m.p("volume/disk");
    let mut files = Vec::new();
    {
        let lo = LoopDev::new(&vol);
        sh_ok("mkfs.ext4", &["-q", "-F", &lo.dev]);
        {
            let fsm = FsMount::new(&lo.dev);
            std::fs::create_dir(fsm.path().join("dir")).unwrap();
            for i in 0..24u64 {
                let len = 1000 + (i as usize * 311_017) % (3 << 20);
                let data = noise(len, 500 + i);
                let rel = if i % 3 == 0 {
                    format!("dir/f{i}")
                } else {
                    format!("f{i}")
                };
                std::fs::write(fsm.path().join(&rel), &data).unwrap();
                files.push((rel, sha256(&data)));
            }
            sh_ok("sync", &[]);
        }
        let (ok, out, err) = sh("e2fsck", &["-fn", &lo.dev]);
        assert!(ok, "e2fsck -fn found problems:\n{out}\n{err}");
        let fsm = FsMount::new(&lo.dev);
        for (rel, sum) in &files {
            assert_eq!(&sha256(&read_file(&fsm.path().join(rel))), sum, "{rel}");
        }
    }
    // Detach and attach again: the filesystem is in the VDI.
    m.detach("disk");
    m.attach("disk");
    let lo = LoopDev::new(&vol);
    let (ok, out, err) = sh("e2fsck", &["-fn", &lo.dev]);
    assert!(ok, "e2fsck after reattach:\n{out}\n{err}");
    let fsm = FsMount::new(&lo.dev);
    for (rel, sum) in &files {
        assert_eq!(&sha256(&read_file(&fsm.path().join(rel))), sum, "{rel}");
    }
}

#[test]
fn ext4_on_loop_device() {
    ext4_on_loop(&[]);
}

#[test]
fn ext4_on_loop_device_cached() {
    ext4_on_loop(&["-k"]);
}

/// A hypervisor's view: qemu-io writes and verifies patterns with O_DIRECT
/// (-t none) and buffered (-t writeback); qemu-img compare agrees with the
/// VDI as sheepctl reads it.
#[test]
fn qemu_io_and_compare() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "vm", "64M"]).assert_ok();
    for (i, opts) in [&[][..], &["-k"][..]].into_iter().enumerate() {
        let m = Mount::start(&s, opts);
        m.attach("vm");
        let vol = m.p("volume/vm").to_string_lossy().into_owned();
        for (cache, p) in [
            ("none", 0x10 + i as u8 * 2),
            ("writeback", 0x11 + i as u8 * 2),
        ] {
            let base = if cache == "none" { 0 } else { 32u64 << 20 };
            let w = [
                format!("write -P {p} {} 1M", base),
                format!("write -P {} {} 8k", p + 0x40, base + (4 << 20) - 4096),
                format!("write -P {} {} 512", p + 0x80, base + (8 << 20) + 512),
                format!("write -z {} 64k", base + (12 << 20)),
            ];
            let r = [
                format!("read -P {p} {} 1M", base),
                format!("read -P {} {} 8k", p + 0x40, base + (4 << 20) - 4096),
                format!("read -P {} {} 512", p + 0x80, base + (8 << 20) + 512),
                format!("read -P 0 {} 64k", base + (12 << 20)),
                format!("read -P 0 {} 512", base + (8 << 20)),
            ];
            let mut args = vec!["-f".to_string(), "raw".into(), "-t".into(), cache.into()];
            for c in w.iter().chain(r.iter()) {
                args.push("-c".into());
                args.push(c.clone());
            }
            args.push(vol.clone());
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = sh("qemu-io", &a);
            assert!(ok, "qemu-io -t {cache} failed:\n{out}\n{err}");
            assert!(!out.contains("verification failed"), "{out}");
            // Reading in a separate process too.
            let mut args = vec!["-f".to_string(), "raw".into(), "-t".into(), cache.into()];
            for c in &r {
                args.push("-c".into());
                args.push(c.clone());
            }
            args.push(vol.clone());
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = sh("qemu-io", &a);
            assert!(ok, "qemu-io re-read -t {cache}:\n{out}\n{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("vm.raw");
        let data = s.ctl(&["vdi", "read", "vm"]).assert_ok().stdout.clone();
        std::fs::write(&img, &data).unwrap();
        let (ok, out, err) = sh(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                &vol,
                &img.to_string_lossy(),
            ],
        );
        assert!(ok, "qemu-img compare: images differ:\n{out}\n{err}");
        // And it does notice a difference.
        let mut bad = data;
        bad[12345] ^= 0xff;
        std::fs::write(&img, &bad).unwrap();
        let (ok, _, _) = sh(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                &vol,
                &img.to_string_lossy(),
            ],
        );
        assert!(!ok, "qemu-img compare missed a difference");
    }
}

fn fio(vol: &Path, name: &str, extra: &[&str]) {
    let f = format!("--filename={}", vol.display());
    let mut args = vec![
        "--name",
        name,
        &f,
        "--size=48M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        // No state file in the current directory.
        "--verify_state_save=0",
        "--fallocate=none",
        "--randseed=42",
        "--output-format=terse",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = sh("fio", &args);
    assert!(ok, "fio {name} failed:\n{out}\n{err}");
    assert!(!err.contains("verify:"), "fio {name}: {err}");
}

/// fio with data verification, direct and buffered.
#[test]
fn fio_verify() {
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "-z", "20", "vol", "64M"])
        .assert_ok();
    for opts in [&[][..], &["-k"][..]] {
        let m = Mount::start(&s, opts);
        m.attach("vol");
        let vol = m.p("volume/vol");
        fio(
            &vol,
            "direct-rand",
            &[
                "--rw=randwrite",
                "--bsrange=4k-256k",
                "--direct=1",
                "--ioengine=libaio",
                "--iodepth=16",
            ],
        );
        fio(
            &vol,
            "direct-seq",
            &["--rw=write", "--bs=1M", "--direct=1", "--ioengine=psync"],
        );
        fio(
            &vol,
            "buffered-rand",
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--direct=0",
                "--ioengine=psync",
                "--size=8M",
            ],
        );
        fio(
            &vol,
            "buffered-seq",
            &["--rw=write", "--bs=128k", "--direct=0", "--ioengine=psync"],
        );
        drop(m);
    }
}

fn fsx(opts: &[&str], mmap: bool) {
    let fsx = tool("fsx", "cargo install fsx");
    let s = SheepLite::start_formatted();
    s.ctl(&["vdi", "create", "-z", "20", "vol", "16M"])
        .assert_ok();
    let m = Mount::start(&s, opts);
    m.attach("vol");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("fsx.toml");
    let mm = if mmap { 2 } else { 0 };
    std::fs::write(
        &conf,
        format!(
            "blockmode = true\nnosizechecks = true\n\
             [opsize]\nmin = 512\nmax = 1048576\nalign = 512\n\
             [weights]\nclose_open = 0\nread = 10\nwrite = 10\nmapread = {mm}\nmapwrite = {mm}\n\
             invalidate = 0\ntruncate = 0\nfsync = 1\nfdatasync = 1\nposix_fallocate = 0\n\
             punch_hole = 2\nsendfile = 1\nposix_fadvise = 1\ncopy_file_range = 1\n"
        ),
    )
    .unwrap();
    let art = dir.path().join("art");
    std::fs::create_dir(&art).unwrap();
    let out = std::process::Command::new(&fsx)
        .args(["-N", "10000", "-S", "7", "-f"])
        .arg(&conf)
        .arg("-P")
        .arg(&art)
        .arg(m.p("volume/vol"))
        .output()
        .expect("run fsx");
    assert!(
        out.status.success(),
        "fsx failed ({}):\n{}\n{}\nsheepfs log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
}

#[test]
fn fsx_block_mode() {
    fsx(&[], false);
}

#[test]
fn fsx_block_mode_cached() {
    fsx(&["-k"], true);
}
