//! dog's output formats, byte for byte (reference §8), shared by `sheepctl`
//! and sheepfs's state files.
//!
//! Three layers:
//! - pure renderers (`render_*`, `*_row`, [`human_size`]) over plain data,
//!   tested against the texts in the captures;
//! - async "gather and render" functions over a [`Client`] (`vdi_list`,
//!   `cluster_info`, `node_list`, `node_info`, `vdi_lock_list`) that send the
//!   same requests dog sends and fail with the client's error on the first
//!   problem (sheepctl does its own gathering to mirror dog's per-step
//!   error messages, and reuses the renderers);
//! - JSON twins (`*_json`) for sheepfs's `*.json` files, with stable field
//!   names:
//!   - `vdi_list_json`: array of `{type: "working"|"snapshot"|"clone", name,
//!     snapid, size, used, shared, ctime (unix seconds), vid (lowercase hex
//!     string), copies (number of copies; data+parity for erasure coding),
//!     redundancy ("3" or "4:2", as dog prints it), tag, block_size_shift}`;
//!   - `cluster_info_json`: `{status (dog's text), running (bool),
//!     auto_recovery (bool), store, copies, redundancy, vnodes_strategy
//!     ("auto"|"fixed"), vnode_mode ("node"|"disk"), created (unix seconds,
//!     0 before format), epochs: [{epoch, time (unix), nodes: [{addr, port,
//!     vnodes}]}]}`;
//!   - `node_list_json`: array of `{id, addr, port, vnodes, zone}`;
//!   - `node_info_json`: `{nodes: [{id, addr, port, size, used, avail,
//!     use_percent}], total: {size, used, avail, use_percent},
//!     total_vdi_size}` (a node that did not answer is left out, as dog does).
//!
//! Times are rendered in local time with libc's `localtime_r`, exactly as
//! dog does; the `_tz` variants take [`Tz::Utc`] for tests.

use crate::client::{Client, Options, Result, SheepAddr, VdiEntry};
use crate::proto::inode::InodeHeader;
use crate::proto::node::{lock_state, EpochLog, NodeId, SdNode, VdiState};
use crate::proto::{cluster_flags, SdRes};
use serde::Serialize;

// ------------------------------------------------------------------ basics

/// Which clock rendering uses: the process's local zone (as dog) or UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tz {
    #[default]
    Local,
    Utc,
}

/// Broken-down time (the fields of `struct tm` dog's formats use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tm {
    year: i32,
    mon: i32,
    mday: i32,
    hour: i32,
    min: i32,
    sec: i32,
    wday: i32,
}

extern "C" {
    fn tzset();
}

fn tm(t: i64, tz: Tz) -> Option<Tm> {
    let tt = t as libc::time_t;
    // SAFETY: `out` is a plain C struct we own; localtime_r/gmtime_r only
    // write into it and return either a pointer to it or NULL.
    let mut out: libc::tm = unsafe { std::mem::zeroed() };
    let r = unsafe {
        match tz {
            Tz::Local => {
                tzset();
                libc::localtime_r(&tt, &mut out)
            }
            Tz::Utc => libc::gmtime_r(&tt, &mut out),
        }
    };
    if r.is_null() {
        return None;
    }
    Some(Tm {
        year: out.tm_year + 1900,
        mon: out.tm_mon + 1,
        mday: out.tm_mday,
        hour: out.tm_hour,
        min: out.tm_min,
        sec: out.tm_sec,
        wday: out.tm_wday,
    })
}

/// `strftime("%Y-%m-%d %H:%M")`, as in `vdi list`.
pub fn fmt_date_minutes(t: i64, tz: Tz) -> String {
    match tm(t, tz) {
        Some(m) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            m.year, m.mon, m.mday, m.hour, m.min
        ),
        None => String::new(),
    }
}

/// `strftime("%Y-%m-%d %H:%M:%S")`, as in `cluster info`.
pub(crate) fn fmt_date_seconds(t: i64, tz: Tz) -> String {
    match tm(t, tz) {
        Some(m) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            m.year, m.mon, m.mday, m.hour, m.min, m.sec
        ),
        None => String::new(),
    }
}

/// C's `ctime()`: `Sun Nov 22 20:03:16 2026\n`.
pub(crate) fn fmt_ctime(t: i64, tz: Tz) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    match tm(t, tz) {
        Some(m) => format!(
            "{} {}{:3} {:02}:{:02}:{:02} {}\n",
            DAYS.get(m.wday as usize).unwrap_or(&"???"),
            MONTHS.get((m.mon - 1) as usize).unwrap_or(&"???"),
            m.mday,
            m.hour,
            m.min,
            m.sec,
            m.year
        ),
        // printf("%s", NULL) in glibc.
        None => "(null)".to_string(),
    }
}

/// dog's `strnumber`: `4.0 MB`, `10 GB`, `16 PB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64 / (1024.0 * 1024.0);
    let mut i = 0;
    while i < UNITS.len() - 1 && size >= 1024.0 {
        i += 1;
        size /= 1024.0;
    }
    if size >= 10.0 {
        format!("{:.0} {}", size, UNITS[i])
    } else {
        format!("{:.1} {}", size, UNITS[i])
    }
}

/// dog's `strnumber_raw`: decimal bytes in raw mode, human size otherwise.
pub(crate) fn size_str(bytes: u64, raw: bool) -> String {
    if raw {
        bytes.to_string()
    } else {
        human_size(bytes)
    }
}

/// Copies as dog prints them: `3`, or `D:P` for erasure coding.
pub fn redundancy(copies: u8, copy_policy: u8) -> String {
    if copy_policy > 0 {
        format!("{}:{}", (copy_policy >> 4) as u32 * 2, copy_policy & 0x0f)
    } else {
        copies.to_string()
    }
}

/// C's `(int)` of a double on x86-64 (`cvttsd2si`): NaN and out-of-range
/// values become `INT_MIN`.
pub(crate) fn c_double_to_int(v: f64) -> i32 {
    if v.is_nan() || !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `printf("%-Ns")`: pads by bytes, as C does (Rust pads by chars).
fn pad_right(s: &str, w: usize) -> String {
    let mut o = s.to_string();
    while o.len() < w {
        o.push(' ');
    }
    o
}

/// `printf("%Ns")`.
fn pad_left(s: &str, w: usize) -> String {
    let mut o = String::new();
    while o.len() + s.len() < w {
        o.push(' ');
    }
    o.push_str(s);
    o
}

/// A NUL-terminated field as C's `%s` prints it.
fn cstr(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

// ------------------------------------------------------------------ vdi list

/// `  Name        Id    Size ...` (not printed in raw mode).
pub(crate) const VDI_LIST_HEADER: &str = "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n";

/// Type letter: `s` snapshot, `c` clone, otherwise blank (raw: `=`).
fn vdi_type(h: &InodeHeader, raw: bool) -> char {
    if h.is_snapshot() {
        's'
    } else if h.snap_id == 1 && h.parent_vdi_id != 0 {
        'c'
    } else if raw {
        '='
    } else {
        ' '
    }
}

fn vdi_type_word(h: &InodeHeader) -> &'static str {
    match vdi_type(h, true) {
        's' => "snapshot",
        'c' => "clone",
        _ => "working",
    }
}

/// One `vdi list` row (with its newline).
pub fn vdi_list_row(e: &VdiEntry, raw: bool) -> String {
    vdi_list_row_tz(e, raw, Tz::Local)
}

pub(crate) fn vdi_list_row_tz(e: &VdiEntry, raw: bool, tz: Tz) -> String {
    let h = &e.header;
    let name = cstr(&h.raw_name);
    let tag = cstr(&h.raw_tag);
    let snapid = if h.is_snapshot() { h.snap_id } else { 0 } as i32;
    let ti = (h.create_time >> 32) as i64;
    let obj = h.object_size();
    let used = e.used_objs.wrapping_mul(obj);
    let shared = e.shared_objs.wrapping_mul(obj);
    let red = redundancy(h.nr_copies, h.copy_policy);
    if raw {
        let mut esc = String::new();
        for c in name.chars() {
            if c == '\\' || matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
                esc.push('\\');
            }
            esc.push(c);
        }
        format!(
            "{} {} {} {} {} {} {} {:x} {} {} {}\n",
            vdi_type(h, true),
            esc,
            snapid,
            h.vdi_size,
            used,
            shared,
            ti,
            h.vdi_id,
            red,
            tag,
            h.block_size_shift
        )
    } else {
        format!(
            "{} {} {:5} {} {} {} {}  {:>7} {} {} {:3}\n",
            vdi_type(h, false),
            pad_right(&name, 8),
            snapid,
            pad_left(&human_size(h.vdi_size), 7),
            pad_left(&human_size(used), 7),
            pad_left(&human_size(shared), 7),
            fmt_date_minutes(ti, tz),
            format!("{:x}", h.vdi_id),
            pad_left(&red, 6),
            pad_left(&tag, 13),
            h.block_size_shift
        )
    }
}

/// `dog vdi list [-r] [NAME]`.
pub fn render_vdi_list(entries: &[VdiEntry], raw: bool, name: Option<&str>) -> String {
    render_vdi_list_tz(entries, raw, name, Tz::Local)
}

pub(crate) fn render_vdi_list_tz(
    entries: &[VdiEntry],
    raw: bool,
    name: Option<&str>,
    tz: Tz,
) -> String {
    let mut out = String::new();
    if !raw {
        out.push_str(VDI_LIST_HEADER);
    }
    for e in entries {
        if let Some(n) = name {
            if cstr(&e.header.raw_name) != n {
                continue;
            }
        }
        out.push_str(&vdi_list_row_tz(e, raw, tz));
    }
    out
}

/// `dog vdi list [-r] [NAME]` from the cluster, rendered row by row as the
/// pipelined scan delivers them (no list of entries is kept).
pub async fn vdi_list(client: &Client, raw: bool, name: Option<&str>) -> Result<String> {
    let mut out = String::new();
    if !raw {
        out.push_str(VDI_LIST_HEADER);
    }
    client
        .for_each_vdi(true, |e| {
            if name.is_none_or(|n| cstr(&e.header.raw_name) == n) {
                out.push_str(&vdi_list_row(e, raw));
            }
        })
        .await?;
    Ok(out)
}

#[derive(Serialize)]
struct VdiJson {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    snapid: u32,
    size: u64,
    used: u64,
    shared: u64,
    ctime: u64,
    vid: String,
    copies: u8,
    redundancy: String,
    tag: String,
    block_size_shift: u8,
}

/// The JSON twin of `vdi list` (field names in the module docs).
pub fn render_vdi_list_json(entries: &[VdiEntry]) -> String {
    let mut out = JsonArray::default();
    for e in entries {
        out.push(&vdi_json(e));
    }
    out.finish()
}

fn vdi_json(e: &VdiEntry) -> VdiJson {
    let h = &e.header;
    VdiJson {
        kind: vdi_type_word(h),
        name: cstr(&h.raw_name),
        snapid: if h.is_snapshot() { h.snap_id } else { 0 },
        size: h.vdi_size,
        used: e.used_bytes(),
        shared: e.shared_bytes(),
        ctime: h.create_time >> 32,
        vid: format!("{:x}", h.vdi_id),
        copies: h.nr_copies,
        redundancy: redundancy(h.nr_copies, h.copy_policy),
        tag: cstr(&h.raw_tag),
        block_size_shift: h.block_size_shift,
    }
}

/// The JSON twin of `vdi list` from the cluster, rendered row by row.
pub(crate) async fn vdi_list_json(client: &Client) -> Result<String> {
    let mut out = JsonArray::default();
    client
        .for_each_vdi(true, |e| out.push(&vdi_json(e)))
        .await?;
    Ok(out.finish())
}

/// A pretty-printed JSON array written one element at a time, byte for byte
/// what `to_json` makes of the whole array (elements indented by two).
#[derive(Default)]
struct JsonArray {
    out: String,
}

impl JsonArray {
    fn push<T: Serialize>(&mut self, v: &T) {
        self.out
            .push_str(if self.out.is_empty() { "[\n" } else { ",\n" });
        // Strings are escaped, so every newline of the element is a line break.
        let el = serde_json::to_string_pretty(v).unwrap_or_default();
        for (i, line) in el.split('\n').enumerate() {
            if i > 0 {
                self.out.push('\n');
            }
            self.out.push_str("  ");
            self.out.push_str(line);
        }
    }

    fn finish(mut self) -> String {
        if self.out.is_empty() {
            return "[]\n".into();
        }
        self.out.push_str("\n]\n");
        self.out
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

// ------------------------------------------------------------------ cluster info

/// What `cluster info` shows: the STAT_CLUSTER result and its epoch records
/// (latest first).
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub result: SdRes,
    /// Whether the reply carried a payload (dog prints the creation time and
    /// the epoch table only then).
    pub has_data: bool,
    pub logs: Vec<EpochLog>,
}

impl Default for ClusterStatus {
    fn default() -> Self {
        ClusterStatus {
            result: SdRes::SUCCESS,
            has_data: false,
            logs: Vec::new(),
        }
    }
}

/// Options of `cluster info`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterInfoOpts {
    pub raw: bool,
    pub verbose: bool,
    /// `-d`: per-epoch node differences.
    pub diff: bool,
    pub tz: Tz,
}

fn print_nodes(log: &EpochLog, flags: u16) -> String {
    let mut s = String::new();
    for (i, n) in log.nodes.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("{}:{}", n.nid.to_addr_port(), n.nr_vnodes));
        if flags & cluster_flags::DISKMODE != 0 {
            // The default build carries no disk table; dog counts 0 disks.
            s.push_str("(0)");
        }
    }
    s
}

fn print_nodes_diff_one(a: &EpochLog, b: &EpochLog, act: char) -> String {
    let mut s = String::new();
    let mut first = true;
    for n in &a.nodes {
        if !b
            .nodes
            .iter()
            .any(|m| m.nid.addr == n.nid.addr && m.nid.port == n.nid.port)
        {
            if !first {
                s.push_str(", ");
            }
            s.push(act);
            s.push_str(&n.nid.to_addr_port());
            first = false;
        }
    }
    s
}

/// The text of `dog cluster info`.
pub(crate) fn render_cluster_info(st: &ClusterStatus, o: ClusterInfoOpts) -> String {
    let mut out = String::new();
    let first = st.logs.first().cloned().unwrap_or_default();
    if !o.raw {
        out.push_str("Cluster status: ");
    }
    if st.result == SdRes::SUCCESS {
        out.push_str(&format!(
            "running, auto-recovery {}\n",
            if first.disable_recovery != 0 {
                "disabled"
            } else {
                "enabled"
            }
        ));
    } else {
        out.push_str(&format!("{}\n", st.result.message()));
    }
    if o.verbose {
        if !o.raw {
            out.push_str("Cluster store: ");
        }
        if st.result == SdRes::SUCCESS {
            out.push_str(&format!(
                "{} with {} redundancy policy\n",
                first.drv_name,
                redundancy(first.nr_copies, first.copy_policy)
            ));
            if !o.raw {
                out.push_str("Cluster vnodes strategy: ");
            }
            if first.flags & cluster_flags::AUTO_VNODES != 0 {
                out.push_str("auto\n");
            } else {
                out.push_str("fixed\n");
            }
        } else {
            out.push_str(&format!("{}\n", st.result.message()));
        }
        if !o.raw {
            out.push_str("Cluster vnode mode: ");
        }
        if first.flags & cluster_flags::DISKMODE != 0 {
            out.push_str("disk\n");
        } else {
            out.push_str("node\n");
        }
    } else {
        out.push('\n');
    }
    if !o.raw && st.has_data {
        out.push_str(&format!(
            "Cluster created at {}\n",
            fmt_ctime((first.ctime >> 32) as i64, o.tz)
        ));
        out.push_str("Epoch Time           Version [Host:Port:V-Nodes,,,]\n");
    }
    let n = st.logs.len();
    for (i, log) in st.logs.iter().enumerate() {
        let ti = log.time as i64;
        if o.raw {
            out.push_str(&format!("{} {}", ti, log.epoch as i32));
        } else {
            out.push_str(&format!(
                "{} {:6}",
                fmt_date_seconds(ti, o.tz),
                log.epoch as i32
            ));
        }
        out.push_str(" [");
        if o.diff {
            if i == n - 1 {
                out.push_str("formated");
            } else {
                let older = &st.logs[i + 1];
                out.push_str(&print_nodes_diff_one(log, older, '+'));
                out.push_str(&print_nodes_diff_one(older, log, '-'));
            }
        } else {
            out.push_str(&print_nodes(log, first.flags));
        }
        out.push_str("]\n");
    }
    out
}

/// `dog cluster info [-r] [-v]`.
pub async fn cluster_info(client: &Client, raw: bool, verbose: bool) -> Result<String> {
    let st = gather_cluster_status(client).await?;
    Ok(render_cluster_info(
        &st,
        ClusterInfoOpts {
            raw,
            verbose,
            ..Default::default()
        },
    ))
}

/// dog's sequence ([`Client::cluster_status`]) as the formatter wants it.
pub(crate) async fn gather_cluster_status(client: &Client) -> Result<ClusterStatus> {
    let (result, logs) = client.cluster_status().await?;
    Ok(ClusterStatus {
        result,
        has_data: !logs.is_empty(),
        logs,
    })
}

#[derive(Serialize)]
struct EpochNodeJson {
    addr: String,
    port: u16,
    vnodes: u16,
}

#[derive(Serialize)]
struct EpochJson {
    epoch: u32,
    time: u64,
    nodes: Vec<EpochNodeJson>,
}

#[derive(Serialize)]
struct ClusterJson {
    status: String,
    running: bool,
    auto_recovery: bool,
    store: String,
    copies: u8,
    redundancy: String,
    vnodes_strategy: &'static str,
    vnode_mode: &'static str,
    created: u64,
    epochs: Vec<EpochJson>,
}

/// The JSON twin of `cluster info`.
pub(crate) fn render_cluster_info_json(st: &ClusterStatus) -> String {
    let first = st.logs.first().cloned().unwrap_or_default();
    let running = st.result == SdRes::SUCCESS;
    let j = ClusterJson {
        status: if running {
            "running".to_string()
        } else {
            st.result.message()
        },
        running,
        auto_recovery: first.disable_recovery == 0,
        store: first.drv_name.clone(),
        copies: first.nr_copies,
        redundancy: redundancy(first.nr_copies, first.copy_policy),
        vnodes_strategy: if first.flags & cluster_flags::AUTO_VNODES != 0 {
            "auto"
        } else {
            "fixed"
        },
        vnode_mode: if first.flags & cluster_flags::DISKMODE != 0 {
            "disk"
        } else {
            "node"
        },
        created: first.ctime >> 32,
        epochs: st
            .logs
            .iter()
            .map(|l| EpochJson {
                epoch: l.epoch,
                time: l.time,
                nodes: l
                    .nodes
                    .iter()
                    .map(|n| EpochNodeJson {
                        addr: crate::proto::node::addr_text(&n.nid.addr),
                        port: n.nid.port,
                        vnodes: n.nr_vnodes,
                    })
                    .collect(),
            })
            .collect(),
    };
    to_json(&j)
}

pub(crate) async fn cluster_info_json(client: &Client) -> Result<String> {
    let st = gather_cluster_status(client).await?;
    Ok(render_cluster_info_json(&st))
}

// ------------------------------------------------------------------ node list

/// Nodes in dog's order: sorted by (address bytes, port), duplicates dropped.
pub(crate) fn sort_nodes(nodes: &[SdNode]) -> Vec<SdNode> {
    let mut v = nodes.to_vec();
    v.sort_by_key(|n| (n.nid.addr, n.nid.port));
    v.dedup_by(|a, b| a.nid.addr == b.nid.addr && a.nid.port == b.nid.port);
    v
}

pub(crate) const NODE_LIST_HEADER: &str = "  Id   Host:Port         V-Nodes       Zone\n";

/// The text of `dog node list` (nodes already in dog's order).
pub(crate) fn render_node_list(nodes: &[SdNode], raw: bool) -> String {
    let mut out = String::new();
    if !raw {
        out.push_str(NODE_LIST_HEADER);
    }
    for (i, n) in nodes.iter().enumerate() {
        let host = n.nid.to_addr_port();
        if raw {
            out.push_str(&format!("{} {} {} {}\n", i, host, n.nr_vnodes, n.zone));
        } else {
            out.push_str(&format!(
                "{:4}   {}\t{:2}{:11}\n",
                i,
                pad_right(&host, 20),
                n.nr_vnodes,
                n.zone
            ));
        }
    }
    out
}

/// dog's node-list preamble: GET_NODE_LIST, then STAT_CLUSTER (48 bytes).
async fn gather_nodes(client: &Client) -> Result<Vec<SdNode>> {
    let nodes = client.node_list().await?;
    client.stat_cluster(0, 1).await?;
    Ok(sort_nodes(&nodes))
}

/// `dog node list [-r]`.
pub async fn node_list(client: &Client, raw: bool) -> Result<String> {
    Ok(render_node_list(&gather_nodes(client).await?, raw))
}

#[derive(Serialize)]
struct NodeJson {
    id: usize,
    addr: String,
    port: u16,
    vnodes: u16,
    zone: u32,
}

pub(crate) fn render_node_list_json(nodes: &[SdNode]) -> String {
    let v: Vec<NodeJson> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeJson {
            id: i,
            addr: crate::proto::node::addr_text(&n.nid.addr),
            port: n.nid.port,
            vnodes: n.nr_vnodes,
            zone: n.zone,
        })
        .collect();
    to_json(&v)
}

pub(crate) async fn node_list_json(client: &Client) -> Result<String> {
    Ok(render_node_list_json(&gather_nodes(client).await?))
}

// ------------------------------------------------------------------ node info

/// One node's STAT_SHEEP answer; `None` for a node that did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpace {
    pub size: u64,
    pub free: u64,
}

/// What `node info` shows.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// Per node in dog's order, with its address.
    pub nodes: Vec<(NodeId, Option<NodeSpace>)>,
    /// Sum of the sizes of the non-snapshot VDIs.
    pub total_vdi_size: u64,
}

fn use_ratio(size: u64, free: u64) -> i32 {
    c_double_to_int((size.wrapping_sub(free) as f64 / size as f64) * 100.0)
}

/// [`use_ratio`] with 0% for an empty disk, as dog checks before dividing.
fn use_ratio_or_zero(size: u64, free: u64) -> i32 {
    if size == 0 {
        0
    } else {
        use_ratio(size, free)
    }
}

/// `Id\tSize\tUsed\tAvail\tUse%` (not printed in raw mode).
pub(crate) const NODE_INFO_HEADER: &str = "Id\tSize\tUsed\tAvail\tUse%\n";

/// One per-node row of `node info`; `i` counts answering nodes only.
pub(crate) fn node_info_row(i: usize, s: NodeSpace, raw: bool) -> String {
    let ratio = use_ratio_or_zero(s.size, s.free);
    let used = s.size.wrapping_sub(s.free);
    if raw {
        format!(
            "{} {} {} {} {}%\n",
            i,
            size_str(s.size, true),
            size_str(used, true),
            size_str(s.free, true),
            ratio
        )
    } else {
        format!(
            "{:2}\t{}\t{}\t{}\t{:3}%\n",
            i,
            human_size(s.size),
            human_size(used),
            human_size(s.free),
            ratio
        )
    }
}

/// The `Total` line(s) of `node info`.
pub(crate) fn node_info_total(
    total_size: u64,
    total_avail: u64,
    total_vdi_size: u64,
    raw: bool,
) -> String {
    let used = total_size.wrapping_sub(total_avail);
    // dog divides without a zero check; x86 turns the NaN into INT_MIN.
    let pct = use_ratio(total_size, total_avail);
    if raw {
        format!(
            "Total {} {} {} {}% {}\n",
            size_str(total_size, true),
            size_str(used, true),
            size_str(total_avail, true),
            pct,
            size_str(total_vdi_size, true)
        )
    } else {
        format!(
            "Total\t{}\t{}\t{}\t{:3}%\n\nTotal virtual image size\t{}\n",
            human_size(total_size),
            human_size(used),
            human_size(total_avail),
            pct,
            human_size(total_vdi_size)
        )
    }
}

/// The text of `dog node info` (when at least one node answered).
pub(crate) fn render_node_info(info: &NodeInfo, raw: bool) -> String {
    let mut out = String::new();
    if !raw {
        out.push_str(NODE_INFO_HEADER);
    }
    let (mut tsize, mut tfree, mut i) = (0u64, 0u64, 0usize);
    for (_, s) in &info.nodes {
        if let Some(s) = s {
            out.push_str(&node_info_row(i, *s, raw));
            i += 1;
            tsize = tsize.wrapping_add(s.size);
            tfree = tfree.wrapping_add(s.free);
        }
    }
    out.push_str(&node_info_total(tsize, tfree, info.total_vdi_size, raw));
    out
}

/// The address to reach a node at: the client's own connection when it is
/// that node (or the only node behind a unix socket), else the advertised one.
pub(crate) fn node_client(client: &Client, nid: &NodeId, nr_nodes: usize) -> Client {
    let addr = SheepAddr::tcp(crate::proto::node::addr_text(&nid.addr), nid.port);
    let own = client.addr();
    if own == addr || (matches!(own, SheepAddr::Unix(_)) && nr_nodes == 1) {
        client.clone()
    } else {
        Client::new(addr, Options::clone(client.options()))
    }
}

pub(crate) async fn gather_node_info(client: &Client) -> Result<NodeInfo> {
    let nodes = gather_nodes(client).await?;
    let mut info = NodeInfo::default();
    let mut any = false;
    for n in &nodes {
        let c = node_client(client, &n.nid, nodes.len());
        let s = match c.stat_sheep().await {
            Ok((size, free)) => {
                any = true;
                Some(NodeSpace { size, free })
            }
            Err(_) => None,
        };
        info.nodes.push((n.nid, s));
    }
    if !any {
        return Err(crate::client::Error::Invalid(
            "Cannot get information from any nodes".into(),
        ));
    }
    let mut total = 0u64;
    client
        .for_each_vdi(false, |e| {
            if !e.header.is_snapshot() {
                total = total.wrapping_add(e.header.vdi_size);
            }
        })
        .await?;
    info.total_vdi_size = total;
    Ok(info)
}

/// `dog node info [-r]`.
pub async fn node_info(client: &Client, raw: bool) -> Result<String> {
    Ok(render_node_info(&gather_node_info(client).await?, raw))
}

#[derive(Serialize)]
struct NodeSpaceJson {
    id: usize,
    addr: String,
    port: u16,
    size: u64,
    used: u64,
    avail: u64,
    use_percent: i32,
}

#[derive(Serialize)]
struct TotalJson {
    size: u64,
    used: u64,
    avail: u64,
    use_percent: i32,
}

#[derive(Serialize)]
struct NodeInfoJson {
    nodes: Vec<NodeSpaceJson>,
    total: TotalJson,
    total_vdi_size: u64,
}

pub(crate) fn render_node_info_json(info: &NodeInfo) -> String {
    let mut nodes = Vec::new();
    let (mut tsize, mut tfree) = (0u64, 0u64);
    for (nid, s) in &info.nodes {
        if let Some(s) = s {
            nodes.push(NodeSpaceJson {
                id: nodes.len(),
                addr: crate::proto::node::addr_text(&nid.addr),
                port: nid.port,
                size: s.size,
                used: s.size.wrapping_sub(s.free),
                avail: s.free,
                use_percent: use_ratio_or_zero(s.size, s.free),
            });
            tsize = tsize.wrapping_add(s.size);
            tfree = tfree.wrapping_add(s.free);
        }
    }
    let j = NodeInfoJson {
        nodes,
        total: TotalJson {
            size: tsize,
            used: tsize.wrapping_sub(tfree),
            avail: tfree,
            use_percent: use_ratio_or_zero(tsize, tfree),
        },
        total_vdi_size: info.total_vdi_size,
    };
    to_json(&j)
}

pub(crate) async fn node_info_json(client: &Client) -> Result<String> {
    Ok(render_node_info_json(&gather_node_info(client).await?))
}

// ------------------------------------------------------------------ vdi lock list

pub(crate) const LOCK_LIST_HEADER: &str =
    "  Name         Id  VDI id  Tag            Owner node(s)\n";

/// sheep's `node_id_to_str`: `IPv4 ip:127.0.0.1 port:7000`.
pub(crate) fn node_id_str(nid: &NodeId) -> String {
    let a = &nid.addr;
    let v4 = a[12] != 0 && a[..12].iter().all(|&b| b == 0);
    format!(
        "{} ip:{} port:{}",
        if v4 { "IPv4" } else { "IPv6" },
        crate::proto::node::addr_text(a),
        nid.port
    )
}

/// One `vdi lock list` row, or nothing for an unlocked VDI.
pub(crate) fn lock_list_row(h: &InodeHeader, st: Option<&VdiState>) -> String {
    let Some(st) = st else {
        return String::new();
    };
    if st.lock_state == lock_state::UNLOCKED {
        return String::new();
    }
    let snapid = if h.is_snapshot() { h.snap_id } else { 0 };
    let mut out = format!(
        "{} {}  {:5}  {:6x}  {} ",
        vdi_type(h, false),
        pad_right(&cstr(&h.raw_name), 8),
        snapid,
        h.vdi_id,
        pad_right(&cstr(&h.raw_tag), 13)
    );
    if st.lock_state == lock_state::LOCKED {
        out.push_str(&format!(" {}\n", node_id_str(&st.lock_owner)));
        return out;
    }
    for (state, nid) in &st.participants {
        out.push_str(&format!(" {}", node_id_str(nid)));
        match *state {
            1 => out.push_str("(modified)"),
            2 => out.push_str("(shared)"),
            3 => out.push_str("(invalidated)"),
            s => out.push_str(&format!("(UNKNOWN {s}, BUG!)")),
        }
    }
    out.push('\n');
    out
}

/// The text of `dog vdi lock list`.
pub fn render_lock_list(entries: &[InodeHeader], states: &[VdiState]) -> String {
    let by_vid = lock_states(states);
    let mut out = LOCK_LIST_HEADER.to_string();
    for h in entries {
        out.push_str(&lock_list_row(h, by_vid.get(&h.vdi_id).copied()));
    }
    out
}

/// The state of each vid (the first one reported, as dog's search finds).
fn lock_states(states: &[VdiState]) -> std::collections::HashMap<u32, &VdiState> {
    let mut m = std::collections::HashMap::new();
    for s in states {
        m.entry(s.vid).or_insert(s);
    }
    m
}

/// `dog vdi lock list`: GET_VDI_COPIES, then the full vdi scan (with the
/// map reads dog makes), rendered row by row.
pub async fn vdi_lock_list(client: &Client) -> Result<String> {
    let states = client.vdi_copies().await?;
    let by_vid = lock_states(&states);
    let mut out = LOCK_LIST_HEADER.to_string();
    client
        .for_each_vdi(true, |e| {
            out.push_str(&lock_list_row(
                &e.header,
                by_vid.get(&e.header.vdi_id).copied(),
            ))
        })
        .await?;
    Ok(out)
}

#[cfg(test)]
mod tests;
