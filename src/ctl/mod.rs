//! `sheepctl`: dog's command line, output, messages and exit codes, over
//! [`crate::client::Client`].
//!
//! Each command follows the code path of its dog counterpart (dog/*.c at
//! sheepdog 3ebe5ea): the same requests in the same order with the same
//! bytes, the same stdout, the same stderr lines and exit codes. Beyond dog:
//! `--socket PATH` talks to sheep's unix socket, `--version` prints the
//! version, and usage texts name the program `sheepctl`.

mod cmds;
pub mod dog;
pub mod getopt;
mod progress;
mod tree;

use crate::client::{Options, SheepAddr};
use dog::Ctx;
use getopt::{Item, OptSpec};
use std::io::Write;
use std::time::{Duration, Instant};

pub const EXIT_SUCCESS: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_SYSFAIL: i32 = 2;
pub const EXIT_EXISTS: i32 = 3;
pub const EXIT_FULL: i32 = 4;
pub const EXIT_MISSING: i32 = 5;
pub const EXIT_USAGE: i32 = 64;

/// An early exit with this code (dog's `exit()` in the middle of things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub i32);

pub type R<T> = std::result::Result<T, Exit>;

const PROG: &str = "sheepctl";

/// One line on stderr (dog's `sd_err`). Write errors are ignored, as dog does.
pub fn errln(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(s.as_bytes());
    let _ = e.write_all(b"\n");
}

/// Text on stdout (dog's `printf`).
pub fn out(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

// ------------------------------------------------------------------ tables

/// An option: letter, long name, takes an argument, help text.
pub struct Opt(pub char, pub &'static str, pub bool, pub &'static str);

const COMMON_OPTS: &[Opt] = &[
    Opt('a', "address", true, "specify the daemon address (default: localhost)"),
    Opt('p', "port", true, "specify the daemon port"),
    Opt(
        'r',
        "raw",
        false,
        "raw output mode: omit headers, separate fields with\n                          single spaces and print all sizes in decimal bytes",
    ),
    Opt('v', "verbose", false, "print more information than default"),
    Opt('h', "help", false, "display this help and exit"),
    Opt('T', "time", false, "show elapsed time"),
];

const VDI_OPTS: &[Opt] = &[
    Opt('P', "prealloc", false, "preallocate all the data objects"),
    Opt('n', "no-share", false, "share nothing with its parent"),
    Opt('i', "index", true, "specify the index of data objects"),
    Opt('s', "snapshot", true, "specify a snapshot id or tag name"),
    Opt('x', "exclusive", false, "write in an exclusive mode"),
    Opt('d', "delete", false, "delete a key"),
    Opt('w', "writeback", false, "use writeback mode"),
    Opt('c', "copies", true, "specify the data redundancy level"),
    Opt('F', "from", true, "create a differential backup from the snapshot"),
    Opt('f', "force", false, "do operation forcibly"),
    Opt('y', "hyper", false, "create a hyper volume"),
    Opt('o', "oid", true, "specify the object id of the tracking object"),
    Opt(
        'e',
        "exist",
        false,
        "only check objects exist or not,\n                          neither comparing nor repairing",
    ),
    Opt(
        'z',
        "block_size_shift",
        true,
        "specify the bit shift num for data object size",
    ),
    Opt(
        'R',
        "reduce-identical-snapshots",
        false,
        "do not create snapshot if working VDI doesn't have its own objects",
    ),
    Opt(
        'B',
        "nr-batched-reclamation",
        true,
        "specify a number of batchedreclamation during VDI deletion",
    ),
    Opt(
        'I',
        "reclamation-interval",
        true,
        "specify how long (unit: second)in reclamation loop during VDI deletion",
    ),
    Opt(
        'm',
        "max-reclaim",
        true,
        "specify the maximum number of reclaimed objects (if this option is specified, an inode object won't be reclaimed)",
    ),
];

const CLUSTER_OPTS: &[Opt] = &[
    Opt('b', "store", true, "specify backend store"),
    Opt(
        'c',
        "copies",
        true,
        "specify the default data redundancy (number of copies)",
    ),
    Opt('f', "force", false, "do not prompt for confirmation"),
    Opt(
        'F',
        "avoid-diskfull",
        false,
        "skip recovery if recovery process can cause disk full",
    ),
    Opt('l', "lock", false, "Lock vdi to exclude multiple users"),
    Opt(
        'm',
        "multithread",
        false,
        "use multi-thread for 'cluster snapshot save'",
    ),
    Opt('R', "recyclevid", false, "enable recycling of VID"),
    Opt(
        't',
        "strict",
        false,
        "do not serve write request if number of nodes is not sufficient",
    ),
    Opt(
        'z',
        "block_size_shift",
        true,
        "specify the shift num of default data object size",
    ),
    Opt(
        'V',
        "fixedvnodes",
        false,
        "disable automatic vnodes calculation",
    ),
    Opt(
        'd',
        "diff",
        false,
        "just output the changes between the two adjacent epochesfor cluster info",
    ),
];

const NEED_NODELIST: u32 = 1;
const NEED_ARG: u32 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cmd {
    VdiCreate,
    VdiSnapshot,
    VdiClone,
    VdiDelete,
    VdiList,
    VdiTree,
    VdiSetattr,
    VdiGetattr,
    VdiResize,
    VdiRead,
    VdiWrite,
    VdiLock,
    VdiLockList,
    VdiLockUnlock,
    NodeList,
    NodeInfo,
    ClusterInfo,
    ClusterFormat,
    ClusterShutdown,
}

pub struct Sub {
    pub name: &'static str,
    pub arg: Option<&'static str>,
    pub opts: &'static str,
    pub desc: &'static str,
    pub sub: &'static [Sub],
    pub flags: u32,
    pub cmd: Cmd,
}

const fn sub(
    name: &'static str,
    arg: Option<&'static str>,
    opts: &'static str,
    desc: &'static str,
    flags: u32,
    cmd: Cmd,
) -> Sub {
    Sub {
        name,
        arg,
        opts,
        desc,
        sub: &[],
        flags,
        cmd,
    }
}

const VDI_LOCK_CMDS: &[Sub] = &[
    sub("list", None, "", "list locked VDIs", 0, Cmd::VdiLockList),
    sub(
        "unlock",
        Some("<vdiname>"),
        "",
        "unlock locked VDI forcibly",
        NEED_ARG,
        Cmd::VdiLockUnlock,
    ),
];

const VDI_CMDS: &[Sub] = &[
    sub(
        "create",
        Some("<vdiname> <size>"),
        "PycaphrvzT",
        "create an image",
        NEED_NODELIST | NEED_ARG,
        Cmd::VdiCreate,
    ),
    sub(
        "snapshot",
        Some("<vdiname>"),
        "saphrvTR",
        "create a snapshot",
        NEED_ARG,
        Cmd::VdiSnapshot,
    ),
    sub(
        "clone",
        Some("<src vdi> <dst vdi>"),
        "sPnaphrvT",
        "clone an image",
        NEED_ARG,
        Cmd::VdiClone,
    ),
    sub(
        "delete",
        Some("<vdiname>"),
        "saphTBIm",
        "delete an image",
        NEED_ARG,
        Cmd::VdiDelete,
    ),
    sub(
        "list",
        Some("[vdiname]"),
        "aprhoT",
        "list images",
        0,
        Cmd::VdiList,
    ),
    sub(
        "tree",
        None,
        "aphT",
        "show images in tree view format",
        0,
        Cmd::VdiTree,
    ),
    sub(
        "setattr",
        Some("<vdiname> <key> [value]"),
        "dxaphT",
        "set a VDI attribute",
        NEED_ARG,
        Cmd::VdiSetattr,
    ),
    sub(
        "getattr",
        Some("<vdiname> <key>"),
        "aphT",
        "get a VDI attribute",
        NEED_ARG,
        Cmd::VdiGetattr,
    ),
    sub(
        "resize",
        Some("<vdiname> <new size>"),
        "aphT",
        "resize an image",
        NEED_ARG,
        Cmd::VdiResize,
    ),
    sub(
        "read",
        Some("<vdiname> [<offset> [<len>]]"),
        "saphT",
        "read data from an image",
        NEED_ARG,
        Cmd::VdiRead,
    ),
    sub(
        "write",
        Some("<vdiname> [<offset> [<len>]]"),
        "apwhT",
        "write data to an image",
        NEED_ARG,
        Cmd::VdiWrite,
    ),
    Sub {
        name: "lock",
        arg: None,
        opts: "saphT",
        desc: "See 'sheepctl vdi lock' for more information",
        sub: VDI_LOCK_CMDS,
        flags: NEED_ARG,
        cmd: Cmd::VdiLock,
    },
];

const NODE_CMDS: &[Sub] = &[
    sub(
        "list",
        None,
        "aprhT",
        "list nodes",
        NEED_NODELIST,
        Cmd::NodeList,
    ),
    sub(
        "info",
        None,
        "aprhT",
        "show information about each node",
        NEED_NODELIST,
        Cmd::NodeInfo,
    ),
];

const CLUSTER_CMDS: &[Sub] = &[
    sub(
        "info",
        None,
        "aprhvTd",
        "show cluster information",
        NEED_NODELIST,
        Cmd::ClusterInfo,
    ),
    sub(
        "format",
        None,
        "bcltaphzTVRfF",
        "create a Sheepdog store",
        NEED_NODELIST,
        Cmd::ClusterFormat,
    ),
    sub(
        "shutdown",
        None,
        "aphT",
        "stop Sheepdog",
        0,
        Cmd::ClusterShutdown,
    ),
];

const COMMANDS: &[(&str, &[Sub], &[Opt])] = &[
    ("vdi", VDI_CMDS, VDI_OPTS),
    ("node", NODE_CMDS, &[]),
    ("cluster", CLUSTER_CMDS, CLUSTER_OPTS),
];

/// Long-only options of sheepctl.
const OPT_SOCKET: u32 = 0x100;
const OPT_VERSION: u32 = 0x101;

fn find_opt(ch: char, cmd_opts: &'static [Opt]) -> Option<&'static Opt> {
    COMMON_OPTS
        .iter()
        .find(|o| o.0 == ch)
        .or_else(|| cmd_opts.iter().find(|o| o.0 == ch))
}

// ------------------------------------------------------------------ usage

fn usage(status: i32) -> Exit {
    if status != 0 {
        errln(&format!("Try '{PROG} --help' for more information."));
    } else {
        let mut s = format!(
            "Sheepdog administrator utility (version {})\n",
            env!("CARGO_PKG_VERSION")
        );
        s.push_str(&format!("Usage: {PROG} <command> <subcommand> [options]\n"));
        s.push_str("\nAvailable commands:\n");
        for (name, subs, _) in COMMANDS {
            for sc in subs.iter() {
                s.push_str(&format!(
                    "  {:<24}{}\n",
                    format!("{name} {}", sc.name),
                    sc.desc
                ));
            }
        }
        s.push('\n');
        s.push_str(&format!(
            "For more information, run '{PROG} <command> <subcommand> --help'.\n"
        ));
        out(&s);
    }
    Exit(status)
}

/// dog's `subcommand_usage`; `stack` names nested subcommands already taken.
fn subcommand_usage(
    cmd: &str,
    sc: &Sub,
    cmd_opts: &'static [Opt],
    stack: &[&Sub],
    status: i32,
) -> Exit {
    let mut s = format!("Usage: {PROG} {cmd} {}", sc.name);
    let (subsub, arg) = match stack.last() {
        Some(last) => {
            for st in stack {
                s.push_str(&format!(" {}", st.name));
            }
            (last.sub, sc.arg)
        }
        None => (sc.sub, sc.arg),
    };
    match subsub.len() {
        0 => {}
        1 => s.push_str(&format!(" {}", subsub[0].name)),
        _ => {
            let names: Vec<&str> = subsub.iter().map(|x| x.name).collect();
            s.push_str(&format!(" {{{}}}", names.join("|")));
        }
    }
    let opts: Vec<&Opt> = sc
        .opts
        .chars()
        .filter_map(|c| find_opt(c, cmd_opts))
        .collect();
    for o in &opts {
        if o.2 {
            s.push_str(&format!(" [-{} {}]", o.0, o.1));
        } else {
            s.push_str(&format!(" [-{}]", o.0));
        }
    }
    if let Some(a) = arg {
        s.push_str(&format!(" {a}"));
    }
    s.push('\n');
    if !subsub.is_empty() {
        s.push_str("Available subcommands:\n");
        for x in subsub {
            s.push_str(&format!("  {:<24}{}\n", x.name, x.desc));
        }
    }
    s.push_str("Options:\n");
    for o in &opts {
        s.push_str(&format!(
            "  {:<24}{}\n",
            format!("-{}, --{}", o.0, o.1),
            o.3
        ));
    }
    out(&s);
    Exit(status)
}

// ------------------------------------------------------------------ parsing helpers

/// C's `strtol(s, &end, base)`: (value, bytes consumed; 0 = no conversion).
pub fn c_strtol(s: &str, base: u32) -> (i64, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i] == b' ' || (9..=13).contains(&b[i])) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    if base == 16 && i + 1 < b.len() && b[i] == b'0' && (b[i + 1] | 0x20) == b'x' {
        let d = b.get(i + 2).map(|c| (*c as char).is_ascii_hexdigit());
        if d == Some(true) {
            i += 2;
        }
    }
    let start = i;
    let mut v: i128 = 0;
    while i < b.len() {
        let Some(d) = (b[i] as char).to_digit(base) else {
            break;
        };
        v = (v * base as i128 + d as i128).min(i64::MAX as i128 + 1);
        i += 1;
    }
    if i == start {
        return (0, 0);
    }
    let v = if neg { -v } else { v };
    (v.clamp(i64::MIN as i128, i64::MAX as i128) as i64, i)
}

/// C's `strtoull(s, &end, 16)` for `-o`.
fn c_strtoull16(s: &str) -> (u64, usize) {
    let t = s.trim_start();
    let skip = s.len() - t.len();
    let (neg, t2, sign) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..], 1),
        Some(b'+') => (false, &t[1..], 1),
        _ => (false, t, 0),
    };
    let (t3, pre) = if (t2.starts_with("0x") || t2.starts_with("0X"))
        && t2[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (&t2[2..], 2)
    } else {
        (t2, 0)
    };
    let n = t3.bytes().take_while(|c| c.is_ascii_hexdigit()).count();
    if n == 0 {
        return (0, 0);
    }
    let v = u64::from_str_radix(&t3[..n], 16).unwrap_or(u64::MAX);
    (
        if neg { v.wrapping_neg() } else { v },
        skip + sign + pre + n,
    )
}

/// dog's `option_parse_size`: [`crate::util::size_value`]'s grammar with
/// dog's messages and its `(uint64_t)` cast of negatives; 2^64 and more is
/// refused where dog wraps to 0.
pub fn option_parse_size(value: &str) -> Option<u64> {
    let Some(v) = crate::util::size_value(value) else {
        errln(&format!("Invalid size '{value}'"));
        errln("You may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, gigabytes, terabytes and petabytes.");
        return None;
    };
    if v >= 18446744073709551616.0 {
        // Deliberately unlike dog, whose (uint64_t) cast makes this 0.
        errln(&format!(
            "Invalid size '{value}': sizes and offsets must be below 16 EB (2^64 bytes)"
        ));
        return None;
    }
    // (uint64_t) of a double on x86-64, including its wrap for negatives.
    Some(if v.is_nan() {
        1u64 << 63
    } else if v < 0.0 {
        (v as i64) as u64
    } else {
        v as u64
    })
}

/// dog's `parse_copy`: copies, and the EC policy byte. None if invalid.
pub fn parse_copy(s: &str) -> Option<(u8, u8)> {
    let mut toks = s.split(':').filter(|t| !t.is_empty());
    let n1 = toks.next()?;
    let n2 = toks.next();
    let numeric = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if !numeric(n1) || n2.is_some_and(|t| !numeric(t)) {
        return None;
    }
    let copy = c_strtol(n1, 10).0 as u8;
    if copy > crate::proto::SD_MAX_COPIES {
        return None;
    }
    let Some(n2) = n2 else {
        return (copy != 0).then_some((copy, 0));
    };
    if ![2, 4, 8, 16].contains(&copy) {
        return None;
    }
    let parity = c_strtol(n2, 10).0 as u8;
    if parity >= 16 || parity == 0 {
        return None;
    }
    Some((copy + parity, ((copy / 2) << 4) + parity))
}

fn invalid_copies(opt: &str) -> Exit {
    errln(&format!(
        "Invalid parameter {opt}\nTo create replicated vdi, set -c x\n  x(1 to {})   - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips",
        crate::proto::SD_MAX_COPIES
    ));
    Exit(EXIT_FAILURE)
}

/// `str_to_addr`: the first address `getaddrinfo` gives for a host.
fn resolve(host: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(ip.to_string());
    }
    (host, 0u16)
        .to_socket_addrs()
        .ok()?
        .next()
        .map(|a| a.ip().to_string())
}

fn parse_port(p: &str) -> R<u16> {
    let (v, n) = c_strtol(p, 10);
    let numeric = !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if n == 0 || !(1..=65535).contains(&v) || !numeric {
        errln(&format!("Invalid port number '{p}'"));
        return Err(Exit(EXIT_USAGE));
    }
    Ok(v as u16)
}

// ------------------------------------------------------------------ per-command options

/// `vdi_cmd_data` and `cluster_cmd_data` together.
#[derive(Debug, Clone, Default)]
pub struct CmdData {
    pub snapshot_id: u32,
    pub snapshot_tag: String,
    pub prealloc: bool,
    pub no_share: bool,
    pub exclusive: bool,
    pub delete: bool,
    pub writeback: bool,
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub store_policy: u8,
    pub oid: u64,
    pub reduce_identical_snapshots: bool,
    pub nr_batched_reclamation: i32,
    pub reclamation_interval: i32,
    pub nr_max_reclaim: i32,
    pub force: bool,
    // cluster
    pub store: String,
    pub strict: bool,
    pub use_lock: bool,
    pub recycle_vid: bool,
    pub fixed_vnodes: bool,
    pub avoid_diskfull: bool,
    pub diff: bool,
}

/// Names, tags and keys travel in 256-byte fields with a NUL: dog cuts
/// longer ones to 255 bytes (and may then act on another VDI); we refuse.
pub fn check_len(what: &str, s: &str) -> R<()> {
    let max = crate::proto::SD_MAX_VDI_LEN - 1;
    if s.len() > max {
        errln(&format!(
            "{what} is too long: {} bytes, at most {max}",
            s.len()
        ));
        return Err(Exit(EXIT_FAILURE));
    }
    Ok(())
}

fn pstr(s: &str, len: usize) -> String {
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_string()
}

fn positive(opt: &str, what: &str, what2: &str) -> R<i32> {
    let (v, n) = c_strtol(opt, 10);
    if n == 0 {
        errln(&format!("The {what} is invalid: {opt}"));
        return Err(Exit(EXIT_FAILURE));
    }
    let v = v as i32;
    if v <= 0 {
        errln(&format!("The {what2} must bepositive integer"));
        return Err(Exit(EXIT_FAILURE));
    }
    Ok(v)
}

fn vdi_parser(d: &mut CmdData, ch: char, opt: &str) -> R<()> {
    match ch {
        'P' => d.prealloc = true,
        'n' => d.no_share = true,
        's' => {
            let (v, n) = c_strtol(opt, 10);
            if n == 0 || n != opt.len() {
                // Deliberately unlike dog, which cuts the tag to 255 bytes.
                check_len("Snapshot tag", opt)?;
                d.snapshot_id = 0;
                d.snapshot_tag = opt.to_string();
            } else if v as i32 == 0 {
                errln("The snapshot id must be larger than zero");
                return Err(Exit(EXIT_FAILURE));
            } else {
                d.snapshot_id = v as i32 as u32;
            }
        }
        'x' => d.exclusive = true,
        'd' => d.delete = true,
        'w' => d.writeback = true,
        'c' => {
            let (c, p) = parse_copy(opt).ok_or_else(|| invalid_copies(opt))?;
            d.copies = c;
            d.copy_policy = p;
        }
        'f' => d.force = true,
        'y' => {
            d.store_policy = 1;
            if d.block_size_shift != 0 {
                errln("Don't specify both -y and -z options, please");
                return Err(Exit(EXIT_FAILURE));
            }
        }
        'o' => {
            let (v, n) = c_strtoull16(opt);
            if n == 0 {
                errln("object id must be a hex integer");
                return Err(Exit(EXIT_FAILURE));
            }
            d.oid = v;
        }
        'z' => {
            let shift = c_strtol(opt, 10).0 as i32 as u8;
            if shift > 31 {
                errln("Object Size is limited to 2^31. Please set shift bit lower than 31");
                return Err(Exit(EXIT_FAILURE));
            } else if shift < 20 {
                errln("Object Size is larger than 2^20. Please set shift bit larger than 20");
                return Err(Exit(EXIT_FAILURE));
            }
            if d.store_policy == 1 {
                errln("Don't specify both -y and -z options, please");
                return Err(Exit(EXIT_FAILURE));
            }
            d.block_size_shift = shift;
        }
        'R' => d.reduce_identical_snapshots = true,
        'B' => {
            d.nr_batched_reclamation = positive(
                opt,
                "number of batched reclamation",
                "number of batched reclamation",
            )?
        }
        'I' => {
            d.reclamation_interval = positive(
                opt,
                "interval of batched reclamation",
                "interval of batched reclamation",
            )?
        }
        'm' => {
            d.nr_max_reclaim = positive(
                opt,
                "maximum number of reclamation",
                "maximum number of reclamation",
            )?
        }
        _ => {}
    }
    Ok(())
}

fn cluster_parser(d: &mut CmdData, ch: char, opt: &str) -> R<()> {
    match ch {
        'b' => d.store = pstr(opt, crate::proto::STORE_LEN),
        'c' => {
            let (c, p) = parse_copy(opt).ok_or_else(|| invalid_copies(opt))?;
            d.copies = c;
            d.copy_policy = p;
        }
        'f' => d.force = true,
        'l' => d.use_lock = true,
        // dog's 'm' falls through to 't'.
        'm' | 't' => d.strict = true,
        'z' => {
            let shift = c_strtol(opt, 10).0 as i32 as u32;
            if shift > 31 {
                errln("Object Size is limited to 2^31. Please set shift bit lower than 31");
                return Err(Exit(EXIT_FAILURE));
            } else if shift < 20 {
                errln("Object Size is larger than 2^20. Please set shift bit larger than 20");
                return Err(Exit(EXIT_FAILURE));
            }
            d.block_size_shift = shift as u8;
        }
        'V' => d.fixed_vnodes = true,
        'R' => d.recycle_vid = true,
        'd' => d.diff = true,
        'F' => d.avoid_diskfull = true,
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ main

/// Runs sheepctl with `args` (including argv[0]); returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let start = Instant::now();
    let code = match run_inner(&args, start) {
        Ok(c) => c,
        Err(Exit(c)) => c,
    };
    let _ = std::io::stdout().flush();
    code
}

fn run_inner(args: &[String], start: Instant) -> R<i32> {
    let prog = args.first().map(String::as_str).unwrap_or(PROG);
    if args.len() < 2 {
        return Err(usage(0));
    }
    let cmd = args[1].as_str();
    if cmd == "--version" {
        out(&format!("{PROG} {}\n", env!("CARGO_PKG_VERSION")));
        return Ok(EXIT_SUCCESS);
    }
    let Some(&(cmd_name, subs, cmd_opts)) = COMMANDS.iter().find(|c| c.0 == cmd) else {
        if !matches!(cmd, "help" | "--help" | "-h") {
            errln(&format!("Invalid command '{cmd}'"));
            return Err(usage(EXIT_USAGE));
        }
        return Err(usage(0));
    };
    let subcmd = args.get(2).map(String::as_str);
    let Some(sc) = subcmd.and_then(|s| subs.iter().find(|x| x.name == s)) else {
        if let Some(s) = subcmd {
            if !matches!(s, "help" | "--help" | "-h") {
                errln(&format!("Invalid command '{cmd} {s}'"));
            }
        }
        errln(&format!("Available {cmd} commands:"));
        for x in subs {
            errln(&format!("  {cmd} {}", x.name));
        }
        return Err(Exit(EXIT_USAGE));
    };

    // getopt over argv[3..] with the subcommand's options plus ours.
    let mut specs: Vec<OptSpec> = sc
        .opts
        .chars()
        .filter_map(|c| find_opt(c, cmd_opts))
        .map(|o| OptSpec {
            ch: o.0 as u32,
            name: o.1,
            has_arg: o.2,
        })
        .collect();
    specs.push(OptSpec {
        ch: OPT_SOCKET,
        name: "socket",
        has_arg: true,
    });
    specs.push(OptSpec {
        ch: OPT_VERSION,
        name: "version",
        has_arg: false,
    });
    let (items, rest) = getopt::parse(prog, &args[3..], &specs);

    let mut host = "127.0.0.1".to_string();
    let mut port = crate::proto::SD_LISTEN_PORT;
    let mut socket: Option<String> = None;
    if let Ok(env) = std::env::var("SHEEPDOG_DOG_ADDR") {
        host = resolve(&env).ok_or_else(|| {
            errln(&format!("Invalid ip address {env}"));
            Exit(EXIT_FAILURE)
        })?;
    }
    if let Ok(env) = std::env::var("SHEEPDOG_DOG_PORT") {
        port = parse_port(&env)?;
    }
    let (mut raw, mut verbose, mut timed) = (false, false, false);
    let mut data = CmdData::default();
    for it in items {
        match it {
            Item::Err(msg) => {
                errln(&msg);
                return Err(usage(EXIT_USAGE));
            }
            Item::Opt(ch, val) => {
                let v = val.unwrap_or_default();
                match ch {
                    OPT_SOCKET => socket = Some(v),
                    OPT_VERSION => {
                        out(&format!("{PROG} {}\n", env!("CARGO_PKG_VERSION")));
                        return Ok(EXIT_SUCCESS);
                    }
                    _ => {
                        let c = char::from_u32(ch).unwrap_or('?');
                        match c {
                            'a' => {
                                host = resolve(&v).ok_or_else(|| {
                                    errln(&format!("Invalid ip address {v}"));
                                    Exit(EXIT_FAILURE)
                                })?
                            }
                            'p' => port = parse_port(&v)?,
                            'r' => raw = true,
                            'v' => verbose = true,
                            'h' => return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], 0)),
                            'T' => timed = true,
                            _ => match cmd_name {
                                "vdi" => vdi_parser(&mut data, c, &v)?,
                                "cluster" => cluster_parser(&mut data, c, &v)?,
                                _ => return Err(usage(EXIT_USAGE)),
                            },
                        }
                    }
                }
            }
        }
    }

    let addr = match socket {
        Some(p) => SheepAddr::Unix(p.into()),
        None => SheepAddr::tcp(host, port),
    };
    let opts = Options {
        connections: 1,
        // dog waits for sheep as long as it takes; we bound it generously.
        request_timeout: Duration::from_secs(300),
        // dog never retries a failed connect or exchange.
        retry_timeout: Duration::ZERO,
        connect_timeout: Duration::from_secs(5),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln(&format!("Failed to init work queue: {e}"));
            return Err(Exit(EXIT_SYSFAIL));
        }
    };
    let mut ctx = Ctx::new(addr, opts);
    ctx.raw = raw;
    ctx.verbose = verbose;
    let inv = Invocation {
        cmd_name,
        sc,
        cmd_opts,
        rest,
        data,
    };
    let ret = rt.block_on(async {
        if sc.flags & NEED_NODELIST != 0 {
            ctx.update_node_list().await?;
        }
        if sc.flags & NEED_ARG != 0 && inv.rest.is_empty() {
            return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], EXIT_USAGE));
        }
        let r = cmds::dispatch(&mut ctx, &inv).await?;
        ctx.client.close().await;
        Ok(r)
    })?;
    if ret == EXIT_USAGE {
        return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], EXIT_USAGE));
    }
    if timed {
        out(&format!(
            "\nElapsed time: {:.3} seconds\n",
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(ret)
}

/// The parsed command line a command runs with.
pub struct Invocation {
    pub cmd_name: &'static str,
    pub sc: &'static Sub,
    pub cmd_opts: &'static [Opt],
    /// Non-option words after `cmd sub`.
    pub rest: Vec<String>,
    pub data: CmdData,
}

impl Invocation {
    /// `subcommand_usage` with nested subcommands taken so far.
    pub fn usage(&self, stack: &[&Sub], status: i32) -> Exit {
        subcommand_usage(self.cmd_name, self.sc, self.cmd_opts, stack, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_dog() {
        assert_eq!(option_parse_size("1G"), Some(1 << 30));
        assert_eq!(option_parse_size("12M"), Some(12 << 20));
        assert_eq!(option_parse_size("5T"), Some(5 << 40));
        assert_eq!(option_parse_size("1.5k"), Some(1536));
        assert_eq!(option_parse_size("4096"), Some(4096));
        assert_eq!(option_parse_size("4096b"), Some(4096));
        assert_eq!(option_parse_size(" 7"), Some(7));
        assert_eq!(option_parse_size("1e3"), Some(1000));
        assert_eq!(option_parse_size("2P"), Some(2 << 50));
        assert_eq!(option_parse_size("4398046515200"), Some(4398046515200));
        assert_eq!(option_parse_size("-1"), Some(u64::MAX));
        assert_eq!(option_parse_size(""), Some(0));
        assert_eq!(option_parse_size("abc"), None);
        assert_eq!(option_parse_size("12MB"), None);
        assert_eq!(option_parse_size("1X"), None);
    }

    #[test]
    fn copies_like_dog() {
        assert_eq!(parse_copy("3"), Some((3, 0)));
        assert_eq!(parse_copy("4:2"), Some((6, 0x22)));
        assert_eq!(parse_copy("16:15"), Some((31, 0x8f)));
        assert_eq!(parse_copy("0"), None);
        assert_eq!(parse_copy("32"), None);
        assert_eq!(parse_copy("3:1"), None);
        assert_eq!(parse_copy("4:16"), None);
        assert_eq!(parse_copy("x"), None);
        assert_eq!(parse_copy(""), None);
    }

    #[test]
    fn strtol_like_c() {
        assert_eq!(c_strtol("12", 10), (12, 2));
        assert_eq!(c_strtol("12abc", 10), (12, 2));
        assert_eq!(c_strtol("abc", 10), (0, 0));
        assert_eq!(c_strtol(" -5", 10), (-5, 3));
        assert_eq!(c_strtoull16("807c2b2500000000"), (0x807c2b2500000000, 16));
        assert_eq!(c_strtoull16("0x10"), (16, 4));
        assert_eq!(c_strtoull16("zz"), (0, 0));
    }
}
