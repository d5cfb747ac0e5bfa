//! sheepctl end to end: against a real sheep-lite (full VDI lifecycle with
//! checksums), and against broken setups (unknown VDI, existing name, bad
//! sizes, unformatted cluster, wrong port, a server that goes away), where
//! it must print dog's message, exit with dog's code, and never panic.

mod common;

use common::{free_port, pattern, Out, SheepLite};
use sha2::Digest;
use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

const MB: usize = 1 << 20;

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Runs sheepctl with exactly `args` (no address added), with a deadline.
fn ctl_raw(args: &[&str], stdin: &[u8]) -> Out {
    common::run_sheepctl(args, stdin, &[], Duration::from_secs(60))
}

#[track_caller]
fn expect(o: &Out, code: i32, stderr: &str) {
    assert!(!o.stderr.contains("panicked"), "panic: {o:?}");
    assert_eq!(o.code, code, "{o:?}");
    assert_eq!(o.stderr, stderr, "{o:?}");
}

/// `vdi list -r` rows as fields.
fn list_raw(s: &SheepLite) -> Vec<Vec<String>> {
    let o = s.ctl(&["vdi", "list", "-r"]);
    o.assert_ok();
    o.text()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

// ------------------------------------------------------------------ no server needed

#[test]
fn usage_errors_like_dog() {
    let o = ctl_raw(&[], &[]);
    assert_eq!(o.code, 0);
    assert!(o
        .text()
        .contains("Usage: sheepctl <command> <subcommand> [options]"));
    assert!(o
        .text()
        .contains("  vdi create              create an image\n"));

    expect(
        &ctl_raw(&["bogus"], &[]),
        64,
        "Invalid command 'bogus'\nTry 'sheepctl --help' for more information.\n",
    );
    let o = ctl_raw(&["vdi"], &[]);
    assert_eq!(o.code, 64);
    assert!(o
        .stderr
        .starts_with("Available vdi commands:\n  vdi create\n"));
    let o = ctl_raw(&["vdi", "frob"], &[]);
    assert_eq!(o.code, 64);
    assert!(o
        .stderr
        .starts_with("Invalid command 'vdi frob'\nAvailable vdi commands:\n"));

    let o = ctl_raw(&["vdi", "list", "--bogus"], &[]);
    assert_eq!(o.code, 64);
    assert!(o.stderr.ends_with(
        ": unrecognized option '--bogus'\nTry 'sheepctl --help' for more information.\n"
    ));
    let o = ctl_raw(&["vdi", "read", "-r", "x"], &[]);
    assert_eq!(o.code, 64);
    assert!(o.stderr.contains(": invalid option -- 'r'\n"));
    expect(
        &ctl_raw(&["node", "list", "-p", "0"], &[]),
        64,
        "Invalid port number '0'\n",
    );
    expect(
        &ctl_raw(&["node", "list", "-p", "70000"], &[]),
        64,
        "Invalid port number '70000'\n",
    );
    expect(
        &ctl_raw(&["node", "list", "-a", "no.such.host.invalid"], &[]),
        1,
        "Invalid ip address no.such.host.invalid\n",
    );
    expect(
        &ctl_raw(&["vdi", "create", "-c", "4:3x", "a", "1G"], &[]),
        1,
        "Invalid parameter 4:3x\nTo create replicated vdi, set -c x\n  x(1 to 31)   - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips\n",
    );
    expect(
        &ctl_raw(&["vdi", "create", "-z", "19", "a", "1G"], &[]),
        1,
        "Object Size is larger than 2^20. Please set shift bit larger than 20\n",
    );
    expect(
        &ctl_raw(&["vdi", "create", "-z", "22", "-y", "a", "1G"], &[]),
        1,
        "Don't specify both -y and -z options, please\n",
    );
    expect(
        &ctl_raw(&["vdi", "read", "-s", "0", "a"], &[]),
        1,
        "The snapshot id must be larger than zero\n",
    );

    // Per-command help, exit 0.
    let o = ctl_raw(&["vdi", "create", "-h"], &[]);
    assert_eq!(o.code, 0);
    assert_eq!(
        o.text().lines().next().unwrap(),
        "Usage: sheepctl vdi create [-P] [-y] [-c copies] [-a address] [-p port] [-h] [-r] [-v] [-z block_size_shift] [-T] <vdiname> <size>"
    );
    assert!(o
        .text()
        .contains("  -P, --prealloc          preallocate all the data objects\n"));
    let o = ctl_raw(&["vdi", "lock", "--help"], &[]);
    assert_eq!(o.code, 0);
    assert!(o.text().starts_with(
        "Usage: sheepctl vdi lock {list|unlock} [-s snapshot] [-a address] [-p port] [-h] [-T]\nAvailable subcommands:\n  list                    list locked VDIs\n"
    ));
    let o = ctl_raw(&["--version"], &[]);
    assert_eq!(o.code, 0);
    assert!(o.text().starts_with("sheepctl "));
}

#[test]
fn wrong_port_like_dog() {
    let port = free_port().to_string();
    let refused = format!("failed to connect to 127.0.0.1:{port}: Connection refused\n");
    let twice = format!("{refused}{refused}");
    // Commands that need the node list fail there.
    for cmd in [
        &["node", "list"][..],
        &["node", "info"],
        &["cluster", "info"],
        &["cluster", "format"],
        &["vdi", "create", "a", "1G"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-p", &port]);
        let o = ctl_raw(&args, b"yes\n");
        expect(&o, 2, &format!("{twice}Failed to get node list\n"));
        assert!(o.stdout.is_empty());
    }
    // vdi list prints its header first.
    let o = ctl_raw(&["vdi", "list", "-p", &port], &[]);
    expect(&o, 2, &twice);
    assert!(o.text().starts_with("  Name        Id    Size"));
    // Lookups report an I/O error.
    for (cmd, code, msg) in [
        (
            &["vdi", "read", "a"][..],
            1,
            "Failed to open VDI a (snapshot id: 0 snapshot tag: ): I/O error\n",
        ),
        (
            &["vdi", "write", "a"],
            1,
            "Failed to open VDI a (snapshot id: 0 snapshot tag: ): I/O error\n",
        ),
        (
            &["vdi", "delete", "a"],
            0,
            "Failed to open VDI a (snapshot id: 0 snapshot tag: ): I/O error\n",
        ),
        (
            &["vdi", "snapshot", "a"],
            1,
            "Failed to create snapshot for a: I/O error\n",
        ),
        (
            &["vdi", "getattr", "a", "k"],
            5,
            "Failed to find attribute oid: I/O error\n",
        ),
        (&["cluster", "shutdown"], 1, "failed to execute request\n"),
        (&["vdi", "lock", "list"], 2, "Failed to get VDI state\n"),
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-p", &port]);
        let o = ctl_raw(&args, &[]);
        expect(&o, code, &format!("{twice}{msg}"));
    }
}

/// A server that takes connections and drops each one after reading a
/// request: sheep dying in the middle of a command.
fn dying_server() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        // Serve a bounded number of connections, then stop listening.
        for _ in 0..1 {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut h = [0u8; 48];
            let _ = s.read_exact(&mut h);
        }
    });
    (port, t)
}

#[test]
fn server_gone_mid_command_like_dog() {
    let (port, t) = dying_server();
    let p = port.to_string();
    let o = ctl_raw(&["node", "list", "-p", &p], &[]);
    expect(
        &o,
        2,
        "failed to read a response\nFailed to get node list\n",
    );
    let _ = t.join();

    let (port, t) = dying_server();
    let p = port.to_string();
    let o = ctl_raw(&["vdi", "read", "test", "-p", &p], &[]);
    expect(
        &o,
        1,
        "failed to read a response\nFailed to open VDI test (snapshot id: 0 snapshot tag: ): I/O error\n",
    );
    let _ = t.join();
}

// ------------------------------------------------------------------ against sheep-lite

#[test]
fn unformatted_cluster_like_dog() {
    let s = SheepLite::start();
    let o = s.ctl(&["cluster", "info"]);
    o.assert_ok();
    assert_eq!(
        o.text(),
        "Cluster status: Waiting for cluster to be formatted\n\n"
    );
    expect(
        &s.ctl(&["vdi", "create", "test", "1G"]),
        1,
        "Failed to create VDI test: Waiting for cluster to be formatted\n",
    );
    expect(
        &s.ctl(&["vdi", "read", "test"]),
        1,
        "Failed to open VDI test (snapshot id: 0 snapshot tag: ): Waiting for cluster to be formatted\n",
    );
    // vdi list works before format (the bitmaps are served): just the header.
    let o = s.ctl(&["vdi", "list"]);
    o.assert_ok();
    assert_eq!(o.text().lines().count(), 1);
    let o = s.ctl(&["cluster", "format"]);
    expect(&o, 0, "");
    assert_eq!(o.text(), "using backend plain store\n");
    let o = s.ctl(&["cluster", "info", "-v", "-r"]);
    o.assert_ok();
    let t = o.text();
    assert!(
        t.starts_with(
            "running, auto-recovery enabled\nplain with 3 redundancy policy\nauto\nnode\n"
        ),
        "{t}"
    );
    assert!(
        t.ends_with(&format!(" 1 [127.0.0.1:{}:128]\n", s.port)),
        "{t}"
    );
}

#[test]
fn lifecycle_with_checksums() {
    let s = SheepLite::start_formatted();

    // node list / node info
    let o = s.ctl(&["node", "list", "-r"]);
    o.assert_ok();
    assert_eq!(o.text(), format!("0 127.0.0.1:{} 128 16777343\n", s.port));
    let o = s.ctl(&["node", "info"]);
    o.assert_ok();
    assert!(o.text().starts_with("Id\tSize\tUsed\tAvail\tUse%\n 0\t"));
    assert!(o.text().ends_with("\nTotal virtual image size\t0.0 MB\n"));

    // create
    expect(&s.ctl(&["vdi", "create", "test", "64M"]), 0, "");
    expect(&s.ctl(&["vdi", "create", "-P", "pre", "12M"]), 0, "");
    expect(&s.ctl(&["vdi", "create", "-z", "20", "small", "8M"]), 0, "");
    let o = s.ctl(&["vdi", "create", "-v", "-r", "hyper", "5T", "-y"]);
    expect(&o, 0, "");
    assert_eq!(o.text(), "5b5b59\n");
    let rows = list_raw(&s);
    let find = |rows: &Vec<Vec<String>>, name: &str, vid: &str| {
        rows.iter()
            .find(|r| r[1] == name && r[7] == vid)
            .cloned()
            .unwrap_or_else(|| panic!("{name} {vid} not in {rows:?}"))
    };
    assert_eq!(find(&rows, "test", "7c2b25")[3], (64 * MB).to_string());
    let pre = find(&rows, "pre", "a1edc6");
    assert_eq!((pre[3].as_str(), pre[4].as_str()), ("12582912", "12582912"));
    assert_eq!(find(&rows, "small", "98998c")[10], "20");
    assert_eq!(find(&rows, "hyper", "5b5b59")[3], "5497558138880");

    // write and read back, across an object boundary, and unwritten space
    let a = pattern(3 * MB, 1);
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", "3M", "3M"], &a),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "test", "3M", "3M"]);
    expect(&o, 0, "");
    assert_eq!(sha(&o.stdout), sha(&a));
    let o = s.ctl(&["vdi", "read", "test", "32M", "4096"]);
    expect(&o, 0, "");
    assert_eq!(o.stdout, vec![0u8; 4096]);
    // Without a length, read runs to the end of the VDI.
    let o = s.ctl(&["vdi", "read", "test", "60M"]);
    expect(&o, 0, "");
    assert_eq!(o.stdout.len(), 4 * MB);
    // Short input: the rest of the piece stays as it was (unwritten: zeros).
    expect(
        &s.ctl_stdin(&["vdi", "write", "small", "0"], b"hello"),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "small", "0", "2M"]);
    let mut want = vec![0u8; 2 * MB];
    want[..5].copy_from_slice(b"hello");
    assert_eq!(sha(&o.stdout), sha(&want));
    // A hyper volume past 4 TiB.
    let h = pattern(4096, 7);
    expect(
        &s.ctl_stdin(&["vdi", "write", "hyper", "4398046515200", "4096"], &h),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "hyper", "4398046515200", "4096"]);
    assert_eq!(sha(&o.stdout), sha(&h));

    // snapshot, copy on write, clone
    expect(&s.ctl(&["vdi", "snapshot", "-s", "snap1", "test"]), 0, "");
    let b = pattern(MB, 9);
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", "3M", "1M"], &b),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "-s", "snap1", "test", "3M", "1M"]);
    expect(&o, 0, "");
    assert_eq!(sha(&o.stdout), sha(&a[..MB]), "snapshot keeps the old data");
    let o = s.ctl(&["vdi", "read", "-s", "1", "test", "3M", "1M"]);
    assert_eq!(sha(&o.stdout), sha(&a[..MB]), "snapshot by id");
    let o = s.ctl(&["vdi", "read", "test", "3M", "3M"]);
    let mut cur = a.clone();
    cur[..MB].copy_from_slice(&b);
    assert_eq!(sha(&o.stdout), sha(&cur), "working VDI has the new data");
    expect(
        &s.ctl(&["vdi", "clone", "-s", "snap1", "test", "clone1"]),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "clone1", "3M", "3M"]);
    assert_eq!(sha(&o.stdout), sha(&a));
    let c = pattern(4096, 3);
    expect(
        &s.ctl_stdin(&["vdi", "write", "clone1", "4M", "4096"], &c),
        0,
        "",
    );
    let o = s.ctl(&["vdi", "read", "clone1", "4M", "4096"]);
    assert_eq!(sha(&o.stdout), sha(&c));
    let o = s.ctl(&["vdi", "read", "-s", "snap1", "test", "4M", "4096"]);
    assert_eq!(
        sha(&o.stdout),
        sha(&a[MB..MB + 4096]),
        "clone writes do not leak"
    );

    let rows = list_raw(&s);
    let snap = find(&rows, "test", "7c2b25");
    assert_eq!(
        (snap[0].as_str(), snap[2].as_str(), snap[9].as_str()),
        ("s", "1", "snap1")
    );
    assert_eq!(find(&rows, "test", "7c2b26")[0], "=");
    assert_eq!(find(&rows, "clone1", "c8f989")[0], "c");
    let o = s.ctl(&["vdi", "list", "test"]);
    o.assert_ok();
    assert_eq!(o.text().lines().count(), 3, "header + snapshot + working");

    // resize
    expect(&s.ctl(&["vdi", "resize", "test", "128M"]), 0, "");
    assert_eq!(
        find(&list_raw(&s), "test", "7c2b26")[3],
        (128 * MB).to_string()
    );
    expect(
        &s.ctl(&["vdi", "resize", "test", "64M"]),
        64,
        "Shrinking VDIs is not implemented\n",
    );

    // attributes
    expect(&s.ctl(&["vdi", "setattr", "test", "key", "value"]), 0, "");
    let o = s.ctl(&["vdi", "getattr", "test", "key"]);
    expect(&o, 0, "");
    assert_eq!(o.text(), "value");
    expect(
        &s.ctl(&["vdi", "setattr", "-x", "test", "key", "other"]),
        3,
        "The attribute 'key' already exists\n",
    );
    expect(
        &s.ctl_stdin(&["vdi", "setattr", "test", "k2"], b"from stdin"),
        0,
        "",
    );
    assert_eq!(
        s.ctl(&["vdi", "getattr", "test", "k2"]).text(),
        "from stdin"
    );
    expect(
        &s.ctl(&["vdi", "getattr", "test", "nokey"]),
        5,
        "Attribute 'nokey' not found\n",
    );
    expect(
        &s.ctl(&["vdi", "getattr", "nope", "key"]),
        5,
        "VDI not found\n",
    );

    // lock list: nothing locked
    let o = s.ctl(&["vdi", "lock", "list"]);
    expect(&o, 0, "");
    assert_eq!(
        o.text(),
        "  Name         Id  VDI id  Tag            Owner node(s)\n"
    );

    // delete
    expect(&s.ctl(&["vdi", "delete", "clone1"]), 0, "");
    expect(&s.ctl(&["vdi", "delete", "-s", "snap1", "test"]), 0, "");
    let rows = list_raw(&s);
    assert!(!rows.iter().any(|r| r[1] == "clone1"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r[1] == "test").count(), 1);
    // The working VDI still reads its data.
    let o = s.ctl(&["vdi", "read", "test", "3M", "3M"]);
    assert_eq!(sha(&o.stdout), sha(&cur));

    let o = s.ctl(&["node", "info", "-r"]);
    o.assert_ok();
    let total = o.text().lines().last().unwrap().to_string();
    let vsize: u64 = total.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(vsize, (128 * MB + 12 * MB + 8 * MB) as u64 + (5u64 << 40));

    // shutdown
    expect(&s.ctl(&["cluster", "shutdown"]), 0, "");
}

#[test]
fn bad_input_like_dog() {
    let s = SheepLite::start_formatted();
    expect(&s.ctl(&["vdi", "create", "test", "1G"]), 0, "");
    expect(
        &s.ctl(&["vdi", "create", "test", "1G"]),
        1,
        "Failed to create VDI test: VDI exists already\n",
    );
    let o = s.ctl(&["vdi", "create", "x", "12Q"]);
    expect(
        &o,
        64,
        "Invalid size '12Q'\nYou may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, gigabytes, terabytes and petabytes.\n",
    );
    assert!(o.text().starts_with("Usage: sheepctl vdi create "));
    expect(
        &s.ctl(&["vdi", "create", "x", "5T"]),
        64,
        "VDI size is larger than 4.0 TB bytes, please use '-y' to create a hyper volume with size up to 16 PB bytes or use '-z' to create larger object size volume\n",
    );
    expect(
        &s.ctl(&["vdi", "create", "x"]),
        64,
        "Please specify the VDI size\n",
    );
    let o = s.ctl(&["vdi", "create"]);
    assert_eq!(o.code, 64);
    assert!(o.text().starts_with("Usage: sheepctl vdi create"));
    for cmd in [
        &["vdi", "read", "nope"][..],
        &["vdi", "write", "nope"],
        &["vdi", "resize", "nope", "2G"],
    ] {
        expect(
            &s.ctl(cmd),
            1,
            "Failed to open VDI nope (snapshot id: 0 snapshot tag: ): No VDI found\n",
        );
    }
    expect(
        &s.ctl(&["vdi", "read", "-s", "nosnap", "test"]),
        1,
        "Failed to open VDI test (snapshot id: 0 snapshot tag: nosnap): Failed to find requested tag\n",
    );
    // dog's delete reports but exits 0.
    expect(
        &s.ctl(&["vdi", "delete", "nope"]),
        0,
        "Failed to open VDI nope (snapshot id: 0 snapshot tag: ): No VDI found\n",
    );
    expect(
        &s.ctl(&["vdi", "snapshot", "nope"]),
        1,
        "Failed to create snapshot for nope: No VDI found\n",
    );
    expect(
        &s.ctl(&["vdi", "clone", "test", "c"]),
        64,
        "Only snapshot VDIs can be cloned\nPlease specify the '-s' option\n",
    );
    expect(
        &s.ctl(&["vdi", "read", "test", "2G"]),
        1,
        "Read offset is beyond the end of the VDI\n",
    );
    expect(
        &s.ctl(&["vdi", "write", "test", "2G"]),
        1,
        "Write offset is beyond the end of the VDI\n",
    );
    expect(
        &s.ctl(&["vdi", "resize", "test", "5T"]),
        64,
        "New VDI size is too large. This volume's max size is 4398046511104\n",
    );
    // A snapshot tag that exists already.
    expect(&s.ctl(&["vdi", "snapshot", "-s", "t1", "test"]), 0, "");
    expect(
        &s.ctl(&["vdi", "snapshot", "-s", "t1", "test"]),
        1,
        "Failed to create snapshot for test, maybe snapshot id (0) or tag (t1) is existed\n",
    );
    expect(
        &s.ctl(&["vdi", "snapshot", "-s", "5", "test"]),
        64,
        "Please specify a non-integer value for a snapshot tag name\n",
    );
}

/// Where dog loses bytes silently (a write cut at the end of the VDI, an
/// offset or size that wraps past 2^64, a name or tag cut to 255 bytes, a
/// short input zero-padded over existing data), sheepctl refuses with a
/// message and a non-zero exit (documented in sheepctl(8)).
#[test]
fn never_loses_bytes_silently_unlike_dog() {
    let s = SheepLite::start_formatted();
    expect(&s.ctl(&["vdi", "create", "test", "4M"]), 0, "");
    let end = (4 * MB - 1).to_string();

    // Input longer than the room up to the end: the part that fits is
    // written, the rest reported.
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", &end], b"abc"),
        1,
        "Input is longer than VDI test: wrote 1 bytes from offset 4194303 up to its end (4194304 bytes); the rest of the input was not written\n",
    );
    assert_eq!(s.ctl(&["vdi", "read", "test", &end]).stdout, b"a");
    // Exactly fitting input is fine.
    expect(&s.ctl_stdin(&["vdi", "write", "test", &end], b"z"), 0, "");
    // An explicit length past the end: nothing is written.
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", &end, "3"], b"xyz"),
        1,
        "Write of 3 bytes at offset 4194303 goes past the end of VDI test (4194304 bytes); nothing was written\n",
    );
    assert_eq!(s.ctl(&["vdi", "read", "test", &end]).stdout, b"z");

    // Short input does not zero what follows it in the object.
    let p = pattern(8192, 3);
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", "0", "8192"], &p),
        0,
        "",
    );
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", "0", "8192"], b"hi"),
        0,
        "",
    );
    let mut want = p.clone();
    want[..2].copy_from_slice(b"hi");
    let o = s.ctl(&["vdi", "read", "test", "0", "8192"]);
    assert_eq!(sha(&o.stdout), sha(&want));

    // Offsets and sizes of 2^64 and more do not wrap.
    let big =
        "Invalid size '18446744073709551616': sizes and offsets must be below 16 EB (2^64 bytes)\n";
    let o = s.ctl(&["vdi", "read", "test", "18446744073709551616", "1"]);
    expect(&o, 64, big);
    assert!(o.text().starts_with("Usage: sheepctl vdi read"));
    expect(
        &s.ctl(&["vdi", "create", "huge", "16777216T"]),
        64,
        "Invalid size '16777216T': sizes and offsets must be below 16 EB (2^64 bytes)\n",
    );
    expect(
        &s.ctl(&["vdi", "resize", "test", "18446744073709551616"]),
        64,
        big,
    );

    // Names, tags and keys longer than 255 bytes are refused, not cut.
    let long = "n".repeat(300);
    for args in [
        vec!["vdi", "create", long.as_str(), "4M"],
        vec!["vdi", "read", long.as_str()],
        vec!["vdi", "delete", long.as_str()],
        vec!["vdi", "clone", "-s", "1", "test", long.as_str()],
        vec!["vdi", "lock", "unlock", long.as_str()],
    ] {
        expect(
            &s.ctl(&args),
            1,
            "VDI name is too long: 300 bytes, at most 255\n",
        );
    }
    expect(
        &s.ctl(&["vdi", "snapshot", "-s", &long, "test"]),
        1,
        "Snapshot tag is too long: 300 bytes, at most 255\n",
    );
    expect(
        &s.ctl(&["vdi", "setattr", "test", &long, "v"]),
        1,
        "Attribute key is too long: 300 bytes, at most 255\n",
    );
    // A 255-byte name is fine and is kept whole.
    let max = "m".repeat(255);
    expect(&s.ctl(&["vdi", "create", &max, "4M"]), 0, "");
    assert!(list_raw(&s).iter().any(|r| r[1] == max));
    let rows = list_raw(&s);
    assert_eq!(rows.len(), 2, "{rows:?}");
}

/// `vdi write`/`vdi read` show progress (count, rate, ETA) on stderr only
/// when it is a terminal (here a pty from util-linux `script`); redirected,
/// stderr stays empty and stdout carries exactly the data, as with dog.
#[test]
fn progress_only_on_a_terminal() {
    let s = SheepLite::start_formatted();
    expect(&s.ctl(&["vdi", "create", "test", "12M"]), 0, "");
    let data = pattern(9 * MB, 5);
    let o = s.ctl_stdin(&["vdi", "write", "test", "4M"], &data);
    expect(&o, 1, "Input is longer than VDI test: wrote 8388608 bytes from offset 4194304 up to its end (12582912 bytes); the rest of the input was not written\n");
    let o = s.ctl_stdin(&["vdi", "write", "test", "1M", "9M"], &data);
    expect(&o, 0, "");
    assert!(o.stdout.is_empty());
    let o = s.ctl(&["vdi", "read", "test", "1M", "9M"]);
    expect(&o, 0, "");
    assert_eq!(sha(&o.stdout), sha(&data));

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, &data).unwrap();
    let ctl = common::bin("sheepctl");
    let port = s.port.to_string();
    let shell = format!(
        "{} vdi write test 1M 9M -p {port} < {} && {} vdi read test 1M 9M -p {port} > {}",
        ctl.display(),
        input.display(),
        ctl.display(),
        dir.path().join("out").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains("write: 9.0 MB / 9.0 MB (100%)")
            && tty.contains("read: 9.0 MB / 9.0 MB (100%)"),
        "{tty:?}"
    );
    assert!(tty.contains("MB/s"), "{tty:?}");
    let back = std::fs::read(dir.path().join("out")).unwrap();
    assert_eq!(sha(&back), sha(&data), "progress never goes to stdout");
}

#[test]
fn server_killed_between_commands() {
    let mut s = SheepLite::start_formatted();
    expect(&s.ctl(&["vdi", "create", "test", "16M"]), 0, "");
    let port = s.port;
    s.kill9();
    let refused = format!("failed to connect to 127.0.0.1:{port}: Connection refused\n");
    let o = s.ctl(&["vdi", "read", "test"]);
    expect(
        &o,
        1,
        &format!("{refused}{refused}Failed to open VDI test (snapshot id: 0 snapshot tag: ): I/O error\n"),
    );
    // After a restart the data is still there.
    s.spawn();
    let a = pattern(4096, 5);
    expect(
        &s.ctl_stdin(&["vdi", "write", "test", "0", "4096"], &a),
        0,
        "",
    );
    assert_eq!(
        sha(&s.ctl(&["vdi", "read", "test", "0", "4096"]).stdout),
        sha(&a)
    );
}

#[test]
fn unix_socket() {
    let s = SheepLite::start_formatted();
    let sock = s.sock();
    let sock = sock.to_str().unwrap();
    let o = ctl_raw(&["vdi", "create", "--socket", sock, "u", "8M"], &[]);
    expect(&o, 0, "");
    let a = pattern(8192, 11);
    expect(
        &ctl_raw(&["vdi", "write", "u", "0", "--socket", sock], &a),
        0,
        "",
    );
    let o = ctl_raw(&["vdi", "read", "u", "0", "8192", "--socket", sock], &[]);
    expect(&o, 0, "");
    assert_eq!(sha(&o.stdout), sha(&a));
    // node info reaches the only node through the socket too.
    let o = ctl_raw(&["node", "info", "--socket", sock], &[]);
    expect(&o, 0, "");
    let o = ctl_raw(&["vdi", "list", "--socket", "/nonexistent/sock"], &[]);
    expect(
        &o,
        2,
        "failed to connect to /nonexistent/sock: No such file or directory\nfailed to connect to /nonexistent/sock: No such file or directory\n",
    );
}

#[test]
fn lock_list_and_unlock() {
    let s = SheepLite::start();
    expect(&s.ctl(&["cluster", "format", "-l"]), 0, "");
    expect(&s.ctl(&["vdi", "create", "test", "16M"]), 0, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = s.client();
    let vol = rt
        .block_on(sheepfs::client::Volume::open(
            c.clone(),
            "test",
            sheepfs::client::OpenOptions {
                lock: sheepfs::client::LockMode::Normal,
                ..Default::default()
            },
        ))
        .expect("open with lock");
    let o = s.ctl(&["vdi", "lock", "list"]);
    expect(&o, 0, "");
    let rows: Vec<&str> = o.stdout_lines();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[1].starts_with("  test          0  7c2b25                 IPv4 ip:127.0.0.1 port:"),
        "{rows:?}"
    );
    expect(&s.ctl(&["vdi", "lock", "unlock", "test"]), 0, "");
    let o = s.ctl(&["vdi", "lock", "list"]);
    assert_eq!(o.text().lines().count(), 1, "{o:?}");
    expect(
        &s.ctl(&["vdi", "lock", "unlock", "test"]),
        1,
        "VDI test (vid=7c2b25) is not locked\n",
    );
    expect(
        &s.ctl(&["vdi", "lock", "unlock", "nope"]),
        1,
        "Failed to find VDI nope: No VDI found\n",
    );
    let o = s.ctl(&["vdi", "lock", "frob"]);
    assert_eq!(o.code, 1);
    assert!(o
        .text()
        .starts_with("Usage: sheepctl vdi lock {list|unlock}"));
    let o = s.ctl(&["vdi", "lock", "unlock"]);
    assert_eq!(o.code, 64);
    assert!(
        o.text().starts_with("Usage: sheepctl vdi lock unlock "),
        "{o:?}"
    );
    drop(vol);
}

trait Lines {
    fn stdout_lines(&self) -> Vec<&str>;
}

impl Lines for Out {
    fn stdout_lines(&self) -> Vec<&str> {
        std::str::from_utf8(&self.stdout)
            .unwrap_or("")
            .lines()
            .collect()
    }
}

/// `vdi tree` on sheep-lite: snapshot chains under their name, a clone as a
/// tree of its own, trees in vid order, snapshot times as `vdi list` has
/// them; bold `(you are here)` only on a terminal. (tests/real_dog compares
/// it with real dog byte for byte.)
#[test]
fn vdi_tree_like_dog() {
    let s = SheepLite::start_formatted();
    for args in [
        &["vdi", "create", "alpha", "16M"][..],
        &["vdi", "snapshot", "-s", "one", "alpha"],
        &["vdi", "snapshot", "-s", "two", "alpha"],
        &["vdi", "clone", "-s", "one", "alpha", "beta"],
        &["vdi", "create", "gamma", "4M"],
    ] {
        expect(&s.ctl(args), 0, "");
    }
    // Rows of `vdi list -r`, in vid order: type name snapid size used
    // shared ctime vid ...
    let rows = list_raw(&s);
    let ctime = |snap: &str| {
        let r = rows
            .iter()
            .find(|r| r[1] == "alpha" && r[2] == snap)
            .expect("snapshot row");
        let t: i64 = r[6].parse().unwrap();
        sheepfs::dogfmt::fmt_date_minutes(t, sheepfs::dogfmt::Tz::Local)
    };
    let line = |name: &str| match name {
        "alpha" => format!(
            "alpha---[{}]---[{}]---(you are here)\n",
            ctime("1"),
            ctime("2")
        ),
        other => format!("{other}---(you are here)\n"),
    };
    let mut want = String::new();
    let mut seen = Vec::new();
    for r in &rows {
        if !seen.contains(&r[1]) {
            seen.push(r[1].clone());
            want.push_str(&line(&r[1]));
        }
    }
    let o = s.ctl(&["vdi", "tree"]);
    expect(&o, 0, "");
    assert_eq!(o.text(), want);

    // With a terminal the working VDIs are bold, as dog prints them.
    let shell = format!(
        "{} vdi tree -p {}",
        common::bin("sheepctl").display(),
        s.port
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux)");
    let tty = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    assert!(o.status.success(), "{tty}");
    assert_eq!(
        tty,
        want.replace("(you are here)", "\x1b[1m(you are here)\x1b[0m")
    );

    // Deleting the first snapshot: the second heads alpha's tree.
    expect(&s.ctl(&["vdi", "delete", "beta"]), 0, "");
    expect(&s.ctl(&["vdi", "delete", "-s", "one", "alpha"]), 0, "");
    let o = s.ctl(&["vdi", "tree"]);
    expect(&o, 0, "");
    assert!(
        o.text()
            .contains(&format!("alpha---[{}]---(you are here)\n", ctime("2"))),
        "{o:?}"
    );
    let o = s.ctl(&["vdi", "tree", "-h"]);
    expect(&o, 0, "");
    assert!(o
        .text()
        .starts_with("Usage: sheepctl vdi tree [-a address] [-p port] [-h] [-T]\n"));
}
