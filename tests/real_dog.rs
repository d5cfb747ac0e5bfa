//! sheepctl against real dog on real 3-node sheep clusters (copies 3): one
//! scripted session, every step compared byte for byte (stdout, stderr, exit
//! code).
//!
//! Two clusters, A and B, get the same session: dog mutates A, sheepctl
//! mutates B. Then:
//! - every step's output of dog on A equals sheepctl's on B, after masking
//!   what differs between two clusters by construction: their ports (each
//!   becomes `PORT<i>`, node i being the i-th lowest port on both) and
//!   timestamps (creation and epoch times, dates and raw seconds alike),
//!   masked identically on both sides;
//! - every reading step is also run by both tools on the SAME cluster A,
//!   where nothing is masked at all;
//! - and dog on B equals dog on A (masked), so sheepctl left B in the same
//!   state as dog left A.
//!
//! The one deliberate difference, the program's name in usage text
//! ("Usage: sheepctl vdi create ..."), is mapped back to "dog" on sheepctl's
//! side before comparing.

mod common;
mod real_common;

use common::{pattern, Out};
use real_common::Cluster;
use std::time::{Duration, Instant};

/// What a step does to the cluster.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Changes it: dog runs it on A, sheepctl on B.
    Mutate,
    /// Only reads: also run by both tools on A, unmasked.
    Read,
    /// Reads figures of the host's disk (node info): compared on A only,
    /// retried while free space moves under it.
    Disk,
    /// Where dog silently loses bytes and sheepctl refuses on purpose
    /// (sheepctl(8), DIFFERENCES FROM DOG): sheepctl on B must exit 1 with
    /// "nothing was written" and leave B as it was (dog is not run).
    Refused,
}

struct Step {
    kind: Kind,
    args: &'static [&'static str],
    stdin: Vec<u8>,
}

fn m(args: &'static [&'static str]) -> Step {
    Step {
        kind: Kind::Mutate,
        args,
        stdin: Vec::new(),
    }
}

fn r(args: &'static [&'static str]) -> Step {
    Step {
        kind: Kind::Read,
        args,
        stdin: Vec::new(),
    }
}

fn write(args: &'static [&'static str], len: usize, seed: u8) -> Step {
    Step {
        kind: Kind::Mutate,
        args,
        stdin: pattern(len, seed),
    }
}

fn session() -> Vec<Step> {
    vec![
        m(&["vdi", "create", "alpha", "64M"]),
        m(&["vdi", "create", "-P", "pre", "8M"]),
        m(&["vdi", "create", "alpha", "1G"]),
        m(&["vdi", "create", "big", "5T"]),
        m(&["vdi", "create", "-y", "hyper", "5T"]),
        m(&["vdi", "create", "bad", "12Q"]),
        write(&["vdi", "write", "alpha", "0", "1M"], 1 << 20, 0),
        write(&["vdi", "write", "alpha", "5M", "4096"], 4096, 3),
        // dog writes the first 4 MiB of these 8 and exits 0; sheepctl
        // refuses, and the read shows B unchanged before dog's part is
        // written to both.
        Step {
            kind: Kind::Refused,
            args: &["vdi", "write", "alpha", "60M", "8M"],
            stdin: pattern(8 << 20, 4),
        },
        r(&["vdi", "read", "alpha", "60M", "4M"]),
        write(&["vdi", "write", "alpha", "60M", "4M"], 4 << 20, 4),
        r(&["vdi", "read", "alpha", "0", "1M"]),
        r(&["vdi", "read", "alpha", "4M", "2M"]),
        r(&["vdi", "read", "alpha", "63M", "2M"]),
        r(&["vdi", "read", "pre", "0", "4096"]),
        m(&["vdi", "snapshot", "-s", "snap1", "alpha"]),
        m(&["vdi", "snapshot", "-s", "snap1", "alpha"]),
        write(&["vdi", "write", "alpha", "0", "4096"], 4096, 7),
        m(&["vdi", "snapshot", "-s", "snap2", "alpha"]),
        m(&["vdi", "clone", "-s", "snap1", "alpha", "beta"]),
        m(&["vdi", "clone", "-s", "nosnap", "alpha", "gamma"]),
        write(&["vdi", "write", "beta", "8192", "4096"], 4096, 9),
        r(&["vdi", "read", "alpha", "0", "8192"]),
        r(&["vdi", "read", "-s", "snap1", "alpha", "0", "8192"]),
        r(&["vdi", "read", "-s", "1", "alpha", "0", "8192"]),
        r(&["vdi", "read", "beta", "0", "16384"]),
        m(&["vdi", "resize", "alpha", "128M"]),
        m(&["vdi", "resize", "alpha", "32M"]),
        m(&["vdi", "resize", "nosuch", "128M"]),
        m(&["vdi", "setattr", "alpha", "color", "blue"]),
        r(&["vdi", "getattr", "alpha", "color"]),
        r(&["vdi", "getattr", "alpha", "missing"]),
        r(&["vdi", "getattr", "nosuch", "color"]),
        m(&["vdi", "setattr", "-x", "alpha", "color", "red"]),
        m(&["vdi", "setattr", "alpha", "color", "red"]),
        r(&["vdi", "getattr", "alpha", "color"]),
        m(&["vdi", "setattr", "-d", "alpha", "color"]),
        r(&["vdi", "getattr", "alpha", "color"]),
        r(&["vdi", "lock", "list"]),
        r(&["vdi", "list"]),
        r(&["vdi", "list", "-r"]),
        r(&["vdi", "list", "alpha"]),
        r(&["vdi", "list", "-r", "beta"]),
        r(&["vdi", "list", "nosuch"]),
        r(&["vdi", "tree"]),
        r(&["vdi", "tree", "extra-words-are-ignored"]),
        r(&["vdi", "tree", "-h"]),
        r(&["vdi", "read", "nosuch", "0", "512"]),
        r(&["vdi", "read", "alpha", "200M", "512"]),
        r(&["node", "list"]),
        r(&["node", "list", "-r"]),
        Step {
            kind: Kind::Disk,
            args: &["node", "info"],
            stdin: Vec::new(),
        },
        Step {
            kind: Kind::Disk,
            args: &["node", "info", "-r"],
            stdin: Vec::new(),
        },
        r(&["cluster", "info"]),
        r(&["cluster", "info", "-r"]),
        m(&["vdi", "delete", "beta"]),
        m(&["vdi", "delete", "nosuch"]),
        m(&["vdi", "delete", "-s", "nosnap", "alpha"]),
        m(&["vdi", "delete", "-s", "snap1", "alpha"]),
        r(&["vdi", "list", "-r"]),
        // snap2, whose parent snapshot is gone, now heads alpha's tree.
        r(&["vdi", "tree"]),
        m(&["vdi", "delete", "alpha"]),
        m(&["vdi", "delete", "hyper"]),
        r(&["vdi", "list"]),
        r(&["vdi", "tree"]),
        r(&["vdi", "lock", "list"]),
    ]
}

/// One tool's result of one step, as compared.
#[derive(PartialEq, Debug)]
struct Seen {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Seen {
    fn of(o: &Out, c: &Cluster, mask: bool) -> Seen {
        let text = |s: &str| {
            let s = s.replace("sheepctl", "dog");
            if mask {
                masked(&s, c)
            } else {
                s
            }
        };
        let stdout = match String::from_utf8(o.stdout.clone()) {
            Ok(s) => text(&s),
            // `vdi read` output: compared whole, shown short.
            Err(_) => format!("<{} bytes, sha256 {}>", o.stdout.len(), hex(&o.stdout)),
        };
        Seen {
            code: o.code,
            stdout,
            stderr: text(&o.stderr),
        }
    }
}

fn hex(b: &[u8]) -> String {
    common::sha(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Masks the ports and times of cluster `c` (see the file's comment).
fn masked(s: &str, c: &Cluster) -> String {
    let mut out = mask_times(s);
    for (i, p) in c.ports.iter().enumerate() {
        out = out.replace(&p.to_string(), &format!("PORT{i}"));
    }
    out
}

/// Time stamps as dog prints them: `2026-12-05 16:16[:12]`, `Sat Dec  5
/// 16:16:12 2026` and, in raw (`-r`) output, seconds since the epoch (any
/// 10-digit word within a day of now).
fn mask_times(s: &str) -> String {
    const TEMPLATES: [&str; 3] = [
        "dddd-dd-dd dd:dd:dd",
        "dddd-dd-dd dd:dd",
        "Aaa Aaa Dd dd:dd:dd dddd",
    ];
    let fits = |t: &str, at: &[u8]| {
        t.len() <= at.len()
            && t.bytes().zip(at).all(|(k, &c)| match k {
                b'd' => c.is_ascii_digit(),
                b'D' => c.is_ascii_digit() || c == b' ',
                b'A' => c.is_ascii_uppercase(),
                b'a' => c.is_ascii_lowercase(),
                lit => lit == c,
            })
    };
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(t) = TEMPLATES.iter().find(|t| fits(t, &b[i..])) {
            out.push_str("<time>");
            i += t.len();
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let epoch = |w: &str| w.len() == 10 && w.parse::<u64>().is_ok_and(|t| t.abs_diff(now) < 86_400);
    out.split_inclusive([' ', '\n'])
        .map(|w| {
            let word = w.trim_end_matches([' ', '\n']);
            if epoch(word) {
                format!("<time>{}", &w[word.len()..])
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// Runs a Disk step with both tools on `a` until they agree (free space
/// moves while other processes write to the host's disk), for at most 10 s.
fn same_disk_figures(a: &Cluster, s: &Step) -> (Seen, Seen) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = Seen::of(&a.dog(s.args), a, false);
        let c = Seen::of(&a.ctl(s.args), a, false);
        if d == c || Instant::now() > deadline {
            return (d, c);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scripted_session_equals_dog() {
    let Some(a) = Cluster::start(&[]) else { return };
    let Some(b) = Cluster::start(&[]) else { return };
    let mut diffs = Vec::new();
    let mut note = |what: String, want: &Seen, got: &Seen| {
        if want != got {
            diffs.push(format!("{what}\n  dog:      {want:?}\n  sheepctl: {got:?}"));
        }
    };
    for s in session() {
        let cmd = s.args.join(" ");
        match s.kind {
            Kind::Mutate => {
                let d = Seen::of(&a.dog_stdin(s.args, &s.stdin), &a, true);
                let c = Seen::of(&b.ctl_stdin(s.args, &s.stdin), &b, true);
                note(format!("`{cmd}` (dog on A, sheepctl on B)"), &d, &c);
            }
            Kind::Read => {
                let d = Seen::of(&a.dog(s.args), &a, false);
                let c = Seen::of(&a.ctl(s.args), &a, false);
                note(format!("`{cmd}` (both on A)"), &d, &c);
                let da = Seen::of(&a.dog(s.args), &a, true);
                let db = Seen::of(&b.dog(s.args), &b, true);
                note(format!("`{cmd}` (dog on A vs dog on B: state)"), &da, &db);
            }
            Kind::Disk => {
                let (d, c) = same_disk_figures(&a, &s);
                note(format!("`{cmd}` (both on A)"), &d, &c);
            }
            Kind::Refused => {
                let c = b.ctl_stdin(s.args, &s.stdin);
                assert!(
                    c.code == 1 && c.stdout.is_empty() && c.stderr.contains("nothing was written"),
                    "`{cmd}`: sheepctl on B must refuse: {c:?}"
                );
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} step(s) differ from real dog:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn masking_is_exact() {
    let s = "a 1 1073741824 0 0 1796487417 1ec8c\n2026-12-05 16:16 x Sat Dec  5 16:16:12 2026";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = s.replace("1796487417", &now.to_string());
    assert_eq!(
        mask_times(&s),
        "a 1 1073741824 0 0 <time> 1ec8c\n<time> x <time>"
    );
}
