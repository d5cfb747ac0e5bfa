//! dog's request helpers (`update_node_list`, `find_vdi_name`,
//! `parse_vdi`, ...) over [`Client`], with dog's stderr messages; the
//! requests themselves are the client's, which sends dog's bytes.

use super::{errln, Exit, EXIT_FAILURE, EXIT_SYSFAIL, R};
use crate::client::list::live_vids;
use crate::client::{Client, Error, Options, ScanOptions, ScanStage, SheepAddr, SnapSel, VdiEntry};
use crate::proto::inode;
use crate::proto::node::SdNode;
use crate::proto::SdRes;
use futures::StreamExt;
use std::collections::HashMap;

/// dog's message when the inode of a VDI or snapshot cannot be read.
pub(crate) fn report_vdi_read_failure(name: &str, snapid: u32, tag: &str) {
    if snapid != 0 {
        errln(&format!(
            "Failed to read a snapshot {name}:{}",
            snapid as i32
        ));
    } else if !tag.is_empty() {
        errln(&format!("Failed to read a snapshot {name}:{tag}"));
    } else {
        errln(&format!("Failed to read a vdi {name}"));
    }
}

/// C's `strerror`.
pub(crate) fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static
            // (or thread-local) string, valid until the next call.
            let p = unsafe { libc::strerror(n) };
            if p.is_null() {
                return e.to_string();
            }
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
        None => match e.kind() {
            // What a blocking connect() with SO_SNDTIMEO (as dog sets) reports.
            std::io::ErrorKind::TimedOut => "Operation now in progress".into(),
            _ => e.to_string(),
        },
    }
}

/// One sheepctl invocation: where to talk to, global options, and what
/// dog's node-list preamble learned.
pub struct Ctx {
    pub client: Client,
    pub raw: bool,
    pub verbose: bool,
    /// After `update_node_list`: nodes in dog's order, the epoch, zones.
    pub nodes: Vec<SdNode>,
    pub epoch: u32,
    pub zones: usize,
    node_clients: HashMap<SheepAddr, Client>,
}

impl Ctx {
    pub fn new(addr: SheepAddr, opts: Options) -> Ctx {
        Ctx {
            client: Client::new(addr, opts),
            raw: false,
            verbose: false,
            nodes: Vec::new(),
            epoch: 0,
            zones: 0,
            node_clients: HashMap::new(),
        }
    }

    /// The client for per-node requests (STAT_SHEEP, CLUSTER_INFO in
    /// format): the main connection when the node is the one we talk to
    /// (dog caches connections by address the same way).
    pub(crate) fn node_client(&mut self, n: &SdNode) -> Client {
        let c = crate::dogfmt::node_client(&self.client, &n.nid, self.nodes.len());
        if c.addr() == self.client.addr() {
            return c;
        }
        self.node_clients.entry(c.addr()).or_insert(c).clone()
    }

    /// `update_node_list`: GET_NODE_LIST, then STAT_CLUSTER(48) for the epoch.
    pub(crate) async fn update_node_list(&mut self) -> R<()> {
        let fail = || {
            errln("Failed to get node list");
            Exit(EXIT_SYSFAIL)
        };
        let nodes = match self.client.node_list().await {
            Ok(n) => n,
            Err(e) => {
                match e.result() {
                    Some(r) => errln(&format!("Failed to update node list: {}", r.message())),
                    None => report_transport(&e),
                }
                return Err(fail());
            }
        };
        if nodes.is_empty() {
            errln("There are no active sheep daemons");
            return Err(Exit(EXIT_FAILURE));
        }
        self.nodes = crate::dogfmt::sort_nodes(&nodes);
        let mut zones: Vec<u32> = Vec::new();
        for n in &self.nodes {
            if !zones.contains(&n.zone) {
                zones.push(n.zone);
            }
        }
        self.zones = zones.len();
        match self.client.stat_cluster(0, 1).await {
            Ok((_, epoch, _)) => self.epoch = epoch,
            Err(e) => {
                report_transport(&e);
                return Err(fail());
            }
        }
        Ok(())
    }

    /// `find_vdi_name`: GET_VDI_INFO with name + tag (512 bytes). A
    /// transport failure prints dog's lines and is EIO.
    pub(crate) async fn find_vdi_name(
        &self,
        name: &str,
        snapid: u32,
        tag: &str,
    ) -> Result<u32, SdRes> {
        match self.client.vdi_lookup(name, &snap_sel(snapid, tag)).await {
            Ok(id) => Ok(id.vid),
            Err(e) => Err(e.result().unwrap_or_else(|| {
                report_transport(&e);
                SdRes::EIO
            })),
        }
    }

    /// [`Ctx::find_vdi_name`] that prints dog's "Failed to open VDI" on failure.
    pub(crate) async fn open_vdi(&self, name: &str, snapid: u32, tag: &str) -> Result<u32, SdRes> {
        self.find_vdi_name(name, snapid, tag)
            .await
            .inspect_err(|r| {
                errln(&format!(
                    "Failed to open VDI {name} (snapshot id: {} snapshot tag: {tag}): {}",
                    snapid as i32,
                    r.message()
                ))
            })
    }

    /// `parse_vdi`: READ_VDIS, READ_DEL_VDIS, then per live vid the inode
    /// header (4672 bytes, DIRECT) and, when `with_map`, the used part of the
    /// data map (and B-tree leaves, for the used/shared counts): dog's
    /// requests, but many VDIs in flight at once (see `client::list`). Calls
    /// `f` in vid order for each VDI with a name, with the word at `probe`
    /// of the map read (0 if none). Prints dog's messages for failed reads.
    /// Returns dog's `ret`: -1 when a bitmap could not be fetched, else the
    /// result of the last inode read (0 = success).
    pub(crate) async fn parse_vdi<F>(&self, with_map: bool, probe: Option<usize>, mut f: F) -> i64
    where
        F: FnMut(&VdiEntry, u32),
    {
        let mut bitmaps = Vec::new();
        for deleted in [false, true] {
            match self.client.vdi_bitmap(deleted).await {
                Ok(b) => bitmaps.push(b),
                Err(e) => match e.result() {
                    Some(r) => {
                        errln(&r.message());
                        return 0;
                    }
                    None => {
                        report_transport(&e);
                        return -1;
                    }
                },
            }
        }
        let vids = live_vids(&bitmaps[0], &bitmaps[1]);
        drop(bitmaps);
        let opts = ScanOptions {
            with_map,
            probe_word: probe,
            ..Default::default()
        };
        let mut rows = std::pin::pin!(self.client.scan_vdis(vids, opts));
        let mut ret: i64 = 0;
        while let Some(item) = rows.next().await {
            match item {
                Ok(v) => {
                    ret = 0;
                    for (leaf, e) in &v.leaf_errors {
                        match e {
                            Error::Btree {
                                source: inode::BtreeError::BadDepth(d),
                                ..
                            } => errln(&format!("This B-tree not support depth {d}")),
                            e => {
                                report_read_error(*leaf, e);
                                errln(&format!("failed to read {leaf:016x}"));
                            }
                        }
                    }
                    f(&v.entry, v.probe);
                }
                Err(e) => {
                    ret = report_read_error(e.oid, &e.error).0 as i64;
                    errln(match e.stage {
                        ScanStage::Header => "Failed to read inode header",
                        ScanStage::Map => "Failed to read inode",
                    });
                }
            }
        }
        ret
    }
}

/// What `dog_read_object` prints when a read fails; the result it returns
/// (EIO for a transport failure).
pub(super) fn report_read_error(oid: u64, e: &Error) -> SdRes {
    match e.result() {
        Some(res) => {
            errln(&format!(
                "Failed to read object {oid:016x} {}",
                res.message()
            ));
            res
        }
        None => {
            report_transport(e);
            errln(&format!("Failed to read object {oid:016x}"));
            SdRes::EIO
        }
    }
}

/// dog's `-s ID` or `-s TAG` (or neither) as a selector.
pub(crate) fn snap_sel(snapid: u32, tag: &str) -> SnapSel {
    if snapid != 0 {
        SnapSel::Id(snapid)
    } else if !tag.is_empty() {
        SnapSel::Tag(tag.to_string())
    } else {
        SnapSel::Working
    }
}

/// Prints what dog prints when a request cannot be exchanged.
pub(crate) fn report_transport(e: &Error) {
    match e {
        Error::Connect { addr, source } => {
            // dog tries twice (cache revalidation, then a fresh socket).
            let msg = format!(
                "failed to connect to {}: {}",
                dog_addr(addr),
                strerror(source)
            );
            errln(&msg);
            errln(&msg);
        }
        Error::Timeout { .. } | Error::Protocol { .. } => {
            errln(&e.to_string());
            errln("failed to read a response");
        }
        // The connection broke after the request went out (EOF, reset).
        _ => errln("failed to read a response"),
    }
}

/// `[::1]:7000` -> `::1:7000`, `unix:/p` -> `/p`, as dog prints addresses.
fn dog_addr(a: &str) -> String {
    if let Some(p) = a.strip_prefix("unix:") {
        return p.to_string();
    }
    if let Some(r) = a.strip_prefix('[') {
        if let Some((h, p)) = r.split_once(']') {
            return format!("{h}{p}");
        }
    }
    a.to_string()
}
