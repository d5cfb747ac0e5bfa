//! The commands, each following its dog counterpart step by step.

use super::dog::{
    cname, name_tag, report_transport, report_vdi_read_failure, Ctx, InodeMap, NodeWrite,
};
use super::{
    errln, option_parse_size, out, Cmd, Exit, Invocation, Sub, EXIT_EXISTS, EXIT_FAILURE,
    EXIT_MISSING, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, R, VDI_LOCK_CMDS,
};
use crate::client::{Inode, OpenOptions, SnapSel, Volume};
use crate::dogfmt::{self, ClusterInfoOpts, ClusterStatus, NodeSpace, Tz};
use crate::proto::attr::SD_ATTR_OBJ_SIZE;
use crate::proto::bytes::{get_u16, get_u32, get_u64, put_u32, put_u64};
use crate::proto::header::{ClusterArgs, NodeRsp, VdiArgs, VdiRsp};
use crate::proto::inode::{
    self, InodeHeader, BTREE_NODE_SIZE, SD_INODE_HEADER_SIZE, SD_INODE_SIZE,
};
use crate::proto::node::{lock_state, EpochLog, VdiState, CLUSTER_INFO_SIZE, VDI_STATE_SIZE};
use crate::proto::{
    cluster_flags, flags, oid, op, ReqHeader, SdRes, OLD_MAX_DATA_OBJS, SD_MAX_NODES,
    SD_MAX_VDI_ATTR_VALUE_LEN, SD_MAX_VDI_SIZE, VDI_BITMAP_SIZE,
};
use std::io::{Read, Write};

pub async fn dispatch(ctx: &mut Ctx, inv: &Invocation) -> R<i32> {
    match inv.sc.cmd {
        Cmd::ClusterInfo => cluster_info(ctx, inv).await,
        Cmd::ClusterFormat => cluster_format(ctx, inv).await,
        Cmd::ClusterShutdown => cluster_shutdown(ctx).await,
        Cmd::NodeList => {
            out(&dogfmt::render_node_list(&ctx.nodes, ctx.raw));
            Ok(EXIT_SUCCESS)
        }
        Cmd::NodeInfo => node_info(ctx).await,
        Cmd::VdiList => vdi_list(ctx, inv).await,
        Cmd::VdiCreate => vdi_create(ctx, inv).await,
        Cmd::VdiSnapshot => vdi_snapshot(ctx, inv).await,
        Cmd::VdiClone => vdi_clone(ctx, inv).await,
        Cmd::VdiDelete => vdi_delete(ctx, inv).await,
        Cmd::VdiResize => vdi_resize(ctx, inv).await,
        Cmd::VdiRead => vdi_read(ctx, inv).await,
        Cmd::VdiWrite => vdi_write(ctx, inv).await,
        Cmd::VdiSetattr => vdi_setattr(ctx, inv).await,
        Cmd::VdiGetattr => vdi_getattr(ctx, inv).await,
        Cmd::VdiLock | Cmd::VdiLockList | Cmd::VdiLockUnlock => vdi_lock(ctx, inv).await,
    }
}

// ------------------------------------------------------------------ helpers

/// dog's `confirm`: prompt on stdout, go on only if stdin starts with "yes".
fn confirm(msg: &str) -> R<()> {
    out(msg);
    let _ = std::io::stdout().flush();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    // fgets into an 8-byte buffer: up to 7 bytes or a newline.
    while line.len() < 7 {
        match stdin.read(&mut b) {
            Ok(1) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            _ => break,
        }
    }
    if line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"yes") {
        Ok(())
    } else {
        Err(Exit(EXIT_SUCCESS))
    }
}

fn is_stdout_console() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

fn screen_width() -> i32 {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return 80;
    }
    ws.ws_col as i32
}

/// dog's `show_progress` (only on a terminal).
fn show_progress(done: u64, total: u64, raw: bool) {
    if !is_stdout_console() {
        return;
    }
    let w = screen_width();
    if w <= 0 {
        return;
    }
    let w = w as usize;
    let bar = w.saturating_sub(30);
    let mut s = format!("{:5.1} % [", done as f64 / total as f64 * 100.0);
    for i in 0..bar {
        let lo = total as u128 * i as u128 / bar as u128;
        let hi = total as u128 * (i as u128 + 1) / bar as u128;
        if hi <= done as u128 {
            s.push('=');
        } else if lo <= done as u128 && (done as u128) < hi {
            s.push('>');
        } else {
            s.push(' ');
        }
    }
    s.push_str(&format!(
        "] {} / {}",
        dogfmt::size_str(done, raw),
        dogfmt::size_str(total, raw)
    ));
    s.truncate(w.saturating_sub(1));
    while s.len() < w {
        s.push(' ');
    }
    s.truncate(w);
    out(&format!("\r{s}"));
    if done == total {
        out("\n");
    }
    let _ = std::io::stdout().flush();
}

/// `send_light_req`: a header-only request whose failure prints dog's line.
async fn send_light_req(
    ctx: &Ctx,
    c: &crate::client::Client,
    opcode: u8,
) -> Option<crate::client::Response> {
    let rsp = ctx.exec_on(c, ReqHeader::for_op(opcode), None).await?;
    if rsp.result() != SdRes::SUCCESS {
        errln(&format!("Response's result: {}", rsp.result().message()));
        return None;
    }
    Some(rsp)
}

/// Writes the B-tree nodes an inode update needs (dog ignores their results).
async fn node_writes(ctx: &Ctx, h: &InodeHeader, writes: Vec<NodeWrite>) {
    for w in writes {
        let _ = ctx
            .write_object(
                w.oid,
                0,
                &w.data,
                w.offset,
                0,
                h.nr_copies,
                h.copy_policy,
                w.create,
                false,
            )
            .await;
    }
}

/// Loads the depth-2 leaf a lookup of `idx` needs (dog reads it DIRECT).
async fn load_leaf(ctx: &Ctx, m: &mut InodeMap, idx: u32) {
    if let Some(loid) = m.missing_leaf(idx) {
        match ctx.read_object(loid, BTREE_NODE_SIZE as u32, 0, true).await {
            Ok(b) => m.add_leaf(loid, &b),
            Err(_) => {
                errln(&format!("read oid {loid} fail"));
                m.add_leaf(loid, &[]);
            }
        }
    }
}

/// dog's allocation of data object `idx` of `vid` (create -P, clone): the
/// object (CREATE_AND_WRITE, DIRECT) with `data`, then its map entry.
/// Err when a step failed (already reported).
async fn alloc_data_obj(
    ctx: &Ctx,
    m: &mut InodeMap,
    vid: u32,
    idx: u32,
    data: &[u8],
    (copies, policy): (u8, u8),
) -> Result<(), SdRes> {
    ctx.write_object(
        oid::vid_to_data_oid(vid, idx),
        0,
        data,
        0,
        0,
        copies,
        policy,
        true,
        true,
    )
    .await?;
    load_leaf(ctx, m, idx).await;
    let w = m.set(idx, vid);
    node_writes(ctx, &m.header, w).await;
    write_vid(ctx, m, idx, vid, 0, true).await
}

/// `sd_inode_write_vid`: persists data_vdi_id[idx] (flat) or the B-tree
/// root and btree_counter (hyper).
async fn write_vid(
    ctx: &Ctx,
    m: &InodeMap,
    idx: u32,
    vid: u32,
    fl: u16,
    direct: bool,
) -> Result<(), SdRes> {
    let h = &m.header;
    let ioid = oid::vid_to_vdi_oid(vid);
    if !m.is_hyper() {
        return ctx
            .write_object(
                ioid,
                0,
                &vid.to_le_bytes(),
                inode::data_vdi_id_offset(idx),
                fl,
                h.nr_copies,
                h.copy_policy,
                false,
                direct,
            )
            .await;
    }
    let root = m.root_bytes();
    ctx.write_object(
        ioid,
        0,
        &root,
        0,
        fl,
        h.nr_copies,
        h.copy_policy,
        false,
        false,
    )
    .await?;
    let counter = &m.buf[inode::BTREE_COUNTER_OFFSET..inode::BTREE_COUNTER_OFFSET + 4];
    ctx.write_object(
        ioid,
        0,
        counter,
        inode::BTREE_COUNTER_OFFSET as u64,
        fl,
        h.nr_copies,
        h.copy_policy,
        false,
        false,
    )
    .await
}

/// Whole-inode reads (12.5 MB) are zero-extended so offsets stay in range.
fn full_inode(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() < SD_INODE_SIZE {
        b.resize(SD_INODE_SIZE, 0);
    }
    b
}

// ------------------------------------------------------------------ cluster

async fn cluster_info(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let stride = |n: u32| 48u32.wrapping_add(n.wrapping_mul(80));
    let mut nodes_nr = ctx.nodes.len() as u32;
    let rsp = loop {
        let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
        h.data_length = ctx.epoch.wrapping_mul(stride(nodes_nr));
        h.args = ClusterArgs {
            nodes_nr,
            ..Default::default()
        }
        .encode();
        let Some(rsp) = ctx.exec(h, None).await else {
            return Ok(EXIT_SYSFAIL);
        };
        if rsp.result() == SdRes::BUFFER_SMALL && nodes_nr < 2 * SD_MAX_NODES as u32 {
            nodes_nr = nodes_nr.max(1) * 2;
            continue;
        }
        break rsp;
    };
    let st = stride(nodes_nr) as usize;
    let nr_logs = rsp.hdr.data_length as usize / st;
    let logs: Vec<EpochLog> = (0..nr_logs)
        .filter_map(|i| rsp.data.get(i * st..(i + 1) * st))
        .filter_map(|c| EpochLog::decode(c, nodes_nr as usize))
        .collect();
    let status = ClusterStatus {
        result: rsp.result(),
        has_data: rsp.hdr.data_length > 0,
        logs,
    };
    out(&dogfmt::render_cluster_info(
        &status,
        ClusterInfoOpts {
            raw: ctx.raw,
            verbose: ctx.verbose,
            diff: inv.data.diff,
            tz: Tz::Local,
        },
    ));
    Ok(EXIT_SUCCESS)
}

const FORMAT_PRINT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not empty.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

async fn cluster_format(ctx: &mut Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    for n in ctx.nodes.clone() {
        let c = ctx.node_client(&n);
        let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
        h.data_length = CLUSTER_INFO_SIZE as u32;
        let Some(mut rsp) = ctx.exec_on(&c, h, None).await else {
            errln("Fail to execute request");
            return Ok(EXIT_FAILURE);
        };
        if rsp.result() != SdRes::SUCCESS {
            errln(&rsp.result().message());
            return Ok(EXIT_FAILURE);
        }
        rsp.data.resize(CLUSTER_INFO_SIZE, 0);
        let cflags = get_u16(&rsp.data, 16);
        if n.nr_vnodes != 0 {
            let auto = cflags & cluster_flags::AUTO_VNODES != 0;
            if auto && d.fixed_vnodes {
                errln("Can not apply the option of '-V', because there are vnode strategy of sheep is auto in the cluster");
                return Ok(EXIT_FAILURE);
            } else if !auto && !d.fixed_vnodes {
                errln("Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster");
                return Ok(EXIT_FAILURE);
            }
        }
    }
    if d.copies as usize > ctx.zones {
        confirm(&format!(
            "Number of copies ({}) is larger than number of zones ({}).\nAre you sure you want to continue? [yes/no]: ",
            d.copies, ctx.zones
        ))?;
    }
    let mut h = ReqHeader::for_op(op::READ_VDIS);
    h.data_length = VDI_BITMAP_SIZE as u32;
    let Some(rsp) = ctx.exec(h, None).await else {
        return Ok(EXIT_SYSFAIL);
    };
    if rsp.result() != SdRes::SUCCESS {
        errln(&rsp.result().message());
        return Ok(EXIT_FAILURE);
    }
    if rsp.data.iter().any(|&b| b != 0) && !d.force {
        confirm(FORMAT_PRINT)?;
    }
    let store = if d.store.is_empty() {
        "plain"
    } else {
        d.store.as_str()
    };
    let mut cf = 0u16;
    if d.strict {
        cf |= cluster_flags::STRICT;
    }
    if d.use_lock {
        cf |= cluster_flags::USE_LOCK;
    }
    if d.recycle_vid {
        cf |= cluster_flags::RECYCLE_VID;
    }
    if !d.fixed_vnodes {
        cf |= cluster_flags::AUTO_VNODES;
    }
    if d.avoid_diskfull {
        cf |= cluster_flags::AVOID_DISKFULL;
    }
    let mut h = ReqHeader::for_op(op::MAKE_FS);
    h.args = ClusterArgs {
        ctime: crate::proto::sd_time_now(),
        copies: d.copies,
        copy_policy: d.copy_policy,
        flags: cf,
        block_size_shift: d.block_size_shift,
        ..Default::default()
    }
    .encode();
    let mut payload = store.as_bytes().to_vec();
    payload.push(0);
    out(&format!("using backend {store} store\n"));
    let Some(rsp) = ctx.exec(h, Some(payload)).await else {
        return Ok(EXIT_SYSFAIL);
    };
    if rsp.result() != SdRes::SUCCESS {
        errln(&format!("Format failed: {}", rsp.result().message()));
        if rsp.result() == SdRes::NO_STORE {
            return Ok(list_store(ctx).await);
        }
        return Ok(EXIT_SYSFAIL);
    }
    Ok(EXIT_SUCCESS)
}

async fn list_store(ctx: &Ctx) -> i32 {
    let mut h = ReqHeader::for_op(op::GET_STORE_LIST);
    h.data_length = 512;
    let Some(rsp) = ctx.exec(h, None).await else {
        return EXIT_SYSFAIL;
    };
    if rsp.result() != SdRes::SUCCESS {
        errln(&format!("Restore failed: {}", rsp.result().message()));
        return EXIT_FAILURE;
    }
    let end = rsp
        .data
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(rsp.data.len());
    out(&format!(
        "Available stores:\n---------------------------------------\n{}\n",
        String::from_utf8_lossy(&rsp.data[..end])
    ));
    EXIT_SYSFAIL
}

async fn cluster_shutdown(ctx: &Ctx) -> R<i32> {
    if send_light_req(ctx, &ctx.client, op::SHUTDOWN)
        .await
        .is_none()
    {
        errln("failed to execute request");
        return Ok(EXIT_FAILURE);
    }
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ node

async fn node_info(ctx: &mut Ctx) -> R<i32> {
    if !ctx.raw {
        out(dogfmt::NODE_INFO_HEADER);
    }
    let (mut total_size, mut total_avail, mut success) = (0u64, 0u64, 0usize);
    for n in ctx.nodes.clone() {
        let c = ctx.node_client(&n);
        let rsp = ctx
            .exec_on(&c, ReqHeader::for_op(op::STAT_SHEEP), None)
            .await;
        let nr = rsp
            .as_ref()
            .map(|r| NodeRsp::decode(&r.hdr.args))
            .unwrap_or_default();
        match &rsp {
            Some(r) if r.result() == SdRes::SUCCESS => {
                out(&dogfmt::node_info_row(
                    success,
                    NodeSpace {
                        size: nr.store_size,
                        free: nr.store_free,
                    },
                    ctx.raw,
                ));
                success += 1;
            }
            Some(r) => errln(&format!("Response's result: {}", r.result().message())),
            None => {}
        }
        total_size = total_size.wrapping_add(nr.store_size);
        total_avail = total_avail.wrapping_add(nr.store_free);
    }
    if success == 0 {
        errln("Cannot get information from any nodes");
        return Ok(EXIT_SYSFAIL);
    }
    let mut total_vdi = 0u64;
    let ret = ctx
        .parse_vdi(false, None, |e, _| {
            if !e.header.is_snapshot() {
                total_vdi = total_vdi.wrapping_add(e.header.vdi_size);
            }
        })
        .await;
    if ret < 0 {
        return Ok(EXIT_SYSFAIL);
    }
    out(&dogfmt::node_info_total(
        total_size,
        total_avail,
        total_vdi,
        ctx.raw,
    ));
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ vdi list

async fn vdi_list(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let raw = ctx.raw;
    // Rows go out in large writes, not one write(2) per row (dog's stdio
    // buffers a pipe the same way).
    let mut buf = String::new();
    if !raw {
        buf.push_str(dogfmt::VDI_LIST_HEADER);
    }
    let emit = |buf: &mut String, e: &crate::client::VdiEntry| {
        buf.push_str(&dogfmt::vdi_list_row(e, raw));
        if buf.len() >= OUT_CHUNK {
            out(buf);
            buf.clear();
        }
    };
    let ret = if let Some(name) = inv.rest.first() {
        ctx.parse_vdi(true, None, |e, _| {
            if e.header.name == *name {
                emit(&mut buf, e);
            }
        })
        .await
    } else if inv.data.oid != 0 {
        let o = inv.data.oid;
        if !oid::is_data_obj(o) {
            out(&buf);
            return Ok(EXIT_FAILURE);
        }
        let idx = oid::oid_to_idx(o) as usize;
        let vid = oid::oid_to_vid(o);
        ctx.parse_vdi(true, Some(idx), |e, v| {
            if v != 0 && v == vid {
                emit(&mut buf, e);
            }
        })
        .await
    } else {
        ctx.parse_vdi(true, None, |e, _| emit(&mut buf, e)).await
    };
    out(&buf);
    Ok(if ret < 0 { EXIT_SYSFAIL } else { EXIT_SUCCESS })
}

/// Bytes of `vdi list` output gathered before a write.
const OUT_CHUNK: usize = 64 << 10;

// ------------------------------------------------------------------ vdi create

async fn vdi_create(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    let Some(size_arg) = inv.rest.get(1) else {
        errln("Please specify the VDI size");
        return Ok(EXIT_USAGE);
    };
    let Some(size) = option_parse_size(size_arg) else {
        return Ok(EXIT_USAGE);
    };
    let mut shift = d.block_size_shift;
    let object_size: u64 = if shift != 0 {
        1u64 << shift
    } else if d.store_policy == 1 {
        // Hyper volumes always use the default object size.
        shift = crate::proto::SD_DEFAULT_BLOCK_SIZE_SHIFT;
        1u64 << shift
    } else {
        let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
        h.data_length = CLUSTER_INFO_SIZE as u32;
        let Some(mut rsp) = ctx.exec(h, None).await else {
            errln("Fail to execute request: SD_OP_CLUSTER_INFO");
            return Ok(EXIT_FAILURE);
        };
        // A short reply reads as zeros (dog's buffer is zeroed), never past the end.
        rsp.data.resize(CLUSTER_INFO_SIZE, 0);
        let ctime = get_u64(&rsp.data, 8);
        if ctime == 0 {
            errln(&format!(
                "Failed to create VDI {name}: {}",
                SdRes::WAIT_FOR_FORMAT.message()
            ));
            return Ok(EXIT_FAILURE);
        }
        if rsp.result() != SdRes::SUCCESS {
            errln(&rsp.result().message());
            return Ok(EXIT_FAILURE);
        }
        // dog keeps the object size in a uint32_t.
        (1u32 << (rsp.data[21] & 31)) as u64
    };
    let old_max = object_size * OLD_MAX_DATA_OBJS;
    if size > old_max && d.store_policy == 0 {
        errln(&format!(
            "VDI size is larger than {} bytes, please use '-y' to create a hyper volume with size up to {} bytes or use '-z' to create larger object size volume",
            dogfmt::size_str(old_max, ctx.raw),
            dogfmt::size_str(SD_MAX_VDI_SIZE, ctx.raw)
        ));
        return Ok(EXIT_USAGE);
    }
    if size > SD_MAX_VDI_SIZE {
        errln("VDI size is too large");
        return Ok(EXIT_USAGE);
    }
    let vid = match ctx
        .do_vdi_create(
            name,
            size,
            0,
            false,
            d.copies,
            d.copy_policy,
            d.store_policy,
            shift,
        )
        .await
    {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if d.prealloc {
        let Ok(b) = ctx
            .read_object(oid::vid_to_vdi_oid(vid), SD_INODE_SIZE as u32, 0, true)
            .await
        else {
            errln("Failed to read a newly created VDI object");
            return Ok(EXIT_FAILURE);
        };
        let Some(mut m) = InodeMap::new(full_inode(b)) else {
            return Ok(EXIT_FAILURE);
        };
        let obj = 1u64 << (m.header.block_size_shift & 31);
        let max_idx = size.div_ceil(obj) as u32;
        let total = m.header.vdi_size;
        for idx in 0..max_idx {
            show_progress(idx as u64 * obj, total, false);
            let copies = (m.header.nr_copies, m.header.copy_policy);
            if alloc_data_obj(ctx, &mut m, vid, idx, &[], copies)
                .await
                .is_err()
            {
                return Ok(EXIT_FAILURE);
            }
        }
        show_progress(max_idx as u64 * obj, total, false);
    }
    if ctx.verbose {
        if ctx.raw {
            out(&format!("{vid:x}\n"));
        } else {
            out(&format!("VDI ID of newly created VDI: {vid:x}\n"));
        }
    }
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ snapshot / clone

async fn vdi_snapshot(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    if d.snapshot_id != 0 {
        errln("Please specify a non-integer value for a snapshot tag name");
        return Ok(EXIT_USAGE);
    }
    let (vid, hb) = match ctx.find_vdi_name(name, 0, &d.snapshot_tag).await {
        Err(SdRes::NO_TAG) => match ctx.read_vdi_obj(name, 0, "", SD_INODE_HEADER_SIZE).await {
            Ok(x) => x,
            Err(code) => return Ok(code),
        },
        Ok(vid) => {
            let b = match ctx
                .read_object(
                    oid::vid_to_vdi_oid(vid),
                    SD_INODE_HEADER_SIZE as u32,
                    0,
                    true,
                )
                .await
            {
                Ok(b) => b,
                // dog returns the result code itself as the exit status.
                Err(r) => return Ok(r.0 as i32),
            };
            let snap = InodeHeader::decode(&b).is_some_and(|h| h.is_snapshot());
            if snap {
                errln(&format!(
                    "Failed to create snapshot for {name}, maybe snapshot id ({}) or tag ({}) is existed",
                    d.snapshot_id as i32, d.snapshot_tag
                ));
                return Ok(EXIT_FAILURE);
            }
            (vid, b)
        }
        Err(r) => {
            errln(&format!(
                "Failed to create snapshot for {name}: {}",
                r.message()
            ));
            return Ok(EXIT_FAILURE);
        }
    };
    let Some(h) = InodeHeader::decode(&hb) else {
        return Ok(EXIT_FAILURE);
    };
    if h.store_policy != 0 {
        errln("creating a snapshot of hypervolume is not supported");
        return Ok(EXIT_FAILURE);
    }
    if d.reduce_identical_snapshots {
        let b = match ctx
            .read_object(oid::vid_to_vdi_oid(vid), SD_INODE_SIZE as u32, 0, true)
            .await
        {
            Ok(b) => full_inode(b),
            Err(r) => return Ok(r.0 as i32),
        };
        let own = (0..inode::SD_INODE_DATA_INDEX).any(|i| {
            let v = get_u32(&b, SD_INODE_HEADER_SIZE + 4 * i);
            v != 0 && v == vid
        });
        if !own {
            if ctx.verbose {
                errln(&format!(
                    "VDI {name} doesn't have its own objects, skipping creation of snapshot"
                ));
            }
            return Ok(EXIT_SUCCESS);
        }
    }
    if let Err(r) = ctx
        .write_object(
            oid::vid_to_vdi_oid(vid),
            0,
            &cname(&d.snapshot_tag, 256),
            inode::TAG_OFFSET as u64,
            0,
            h.nr_copies,
            h.copy_policy,
            false,
            false,
        )
        .await
    {
        return Ok(r.0 as i32);
    }
    let new_vid = match ctx
        .do_vdi_create(
            name,
            h.vdi_size,
            vid,
            true,
            h.nr_copies,
            h.copy_policy,
            h.store_policy,
            h.block_size_shift,
        )
        .await
    {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if ctx.verbose {
        if ctx.raw {
            out(&format!("{new_vid:x} {vid:x}\n"));
        } else {
            out(&format!(
                "new VID of original VDI: {new_vid:x}, VDI ID of newly created snapshot: {vid:x}\n"
            ));
        }
    }
    Ok(EXIT_SUCCESS)
}

async fn vdi_clone(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let src = inv.rest[0].as_str();
    let Some(dst) = inv.rest.get(1).map(String::as_str) else {
        errln("Destination VDI name must be specified");
        return Ok(EXIT_USAGE);
    };
    if d.snapshot_id == 0 && d.snapshot_tag.is_empty() {
        errln("Only snapshot VDIs can be cloned");
        errln("Please specify the '-s' option");
        return Ok(EXIT_USAGE);
    }
    let (mut base, b) = match ctx
        .read_vdi_obj(src, d.snapshot_id, &d.snapshot_tag, SD_INODE_SIZE)
        .await
    {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let Some(mut src_map) = InodeMap::new(full_inode(b)) else {
        return Ok(EXIT_FAILURE);
    };
    let h = src_map.header.clone();
    if d.no_share {
        base = 0;
    }
    let new_vid = match ctx
        .do_vdi_create(
            dst,
            h.vdi_size,
            base,
            false,
            h.nr_copies,
            h.copy_policy,
            h.store_policy,
            h.block_size_shift,
        )
        .await
    {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    if d.prealloc || d.no_share {
        let nb = match ctx.read_vdi_obj(dst, 0, "", SD_INODE_HEADER_SIZE).await {
            Ok((_, b)) => b,
            Err(code) => return Ok(code),
        };
        let Some(mut new_map) = InodeMap::new(nb) else {
            return Ok(EXIT_FAILURE);
        };
        let obj = 1u64 << (h.block_size_shift & 31);
        let max_idx = h.nr_objs() as u32;
        let mut buf: Vec<u8> = Vec::new();
        for idx in 0..max_idx {
            show_progress(idx as u64 * obj, h.vdi_size, false);
            load_leaf(ctx, &mut src_map, idx).await;
            let vdi_id = src_map.get(idx);
            let size = if vdi_id != 0 {
                match ctx
                    .read_object(oid::vid_to_data_oid(vdi_id, idx), obj as u32, 0, true)
                    .await
                {
                    Ok(b) => buf = b,
                    Err(_) => return Ok(EXIT_FAILURE),
                }
                obj as usize
            } else if d.no_share && !d.prealloc {
                continue;
            } else {
                0
            };
            // The data is written with the source's redundancy, as dog does.
            let data = &buf[..size.min(buf.len())];
            let copies = (h.nr_copies, h.copy_policy);
            if alloc_data_obj(ctx, &mut new_map, new_vid, idx, data, copies)
                .await
                .is_err()
            {
                return Ok(EXIT_FAILURE);
            }
        }
        show_progress(max_idx as u64 * obj, h.vdi_size, false);
    }
    if ctx.verbose {
        if ctx.raw {
            out(&format!("{new_vid:x}\n"));
        } else {
            out(&format!("VDI ID of newly created clone: {new_vid:x}\n"));
        }
    }
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ delete / resize

async fn vdi_delete(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    let (snapid, tag) = (d.snapshot_id, d.snapshot_tag.as_str());
    let batch = if d.nr_batched_reclamation == 0 {
        128
    } else {
        d.nr_batched_reclamation
    };
    // dog's do_vdi_delete reports problems but always exits 0.
    let Ok(vid) = ctx.open_vdi(name, snapid, tag).await else {
        return Ok(EXIT_SUCCESS);
    };
    let ioid = oid::vid_to_vdi_oid(vid);
    let mut b = match ctx.read_object(ioid, SD_INODE_SIZE as u32, 0, false).await {
        Ok(b) => full_inode(b),
        Err(_) => {
            errln(&format!("failed to read inode object: {ioid:016x}"));
            return Ok(EXIT_SUCCESS);
        }
    };
    let Some(h) = InodeHeader::decode(&b) else {
        return Ok(EXIT_SUCCESS);
    };
    // The map is walked as a flat array even for hyper volumes, as dog does.
    let nr_objs = h.nr_objs() as i32 as i64;
    let cap = ((SD_INODE_SIZE - SD_INODE_HEADER_SIZE) / 4) as i64;
    let entry = |b: &[u8], i: i64| -> u32 {
        if i < cap {
            get_u32(b, SD_INODE_HEADER_SIZE + 4 * i as usize)
        } else {
            0
        }
    };
    let max = d.nr_max_reclaim as i64;
    let (mut i, mut reclaimed) = (0i64, 0i64);
    while i < nr_objs {
        if max != 0 && max <= reclaimed {
            break;
        }
        while i < nr_objs && entry(&b, i) == 0 {
            i += 1;
        }
        let start = i;
        let mut filled = 0;
        while i < nr_objs && filled < batch {
            if entry(&b, i) != 0 {
                put_u32(&mut b, SD_INODE_HEADER_SIZE + 4 * i as usize, 0);
                filled += 1;
                reclaimed += 1;
            }
            i += 1;
            if max != 0 && max <= reclaimed {
                break;
            }
        }
        let from = SD_INODE_HEADER_SIZE + 4 * start.min(cap) as usize;
        let to = SD_INODE_HEADER_SIZE + 4 * i.min(cap) as usize;
        if ctx
            .write_object(
                ioid,
                0,
                &b[from..to],
                from as u64,
                0,
                h.nr_copies,
                h.copy_policy,
                false,
                true,
            )
            .await
            .is_err()
        {
            errln(&format!(
                "failed to update inode for discarding objects: {ioid:016x}"
            ));
            return Ok(EXIT_SUCCESS);
        }
        if i < nr_objs && d.reclamation_interval > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(
                d.reclamation_interval as u64,
            ))
            .await;
        }
    }
    if max != 0 {
        return Ok(EXIT_SUCCESS);
    }
    let mut hd = ReqHeader::for_op(op::DEL_VDI);
    hd.args = VdiArgs {
        snapid,
        ..Default::default()
    }
    .encode();
    if let Some(rsp) = ctx.exec(hd, Some(name_tag(name, tag))).await {
        if rsp.result() != SdRes::SUCCESS {
            errln(&format!(
                "Failed to delete {name}: {}",
                rsp.result().message()
            ));
        }
    }
    Ok(EXIT_SUCCESS)
}

async fn vdi_resize(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let name = inv.rest[0].as_str();
    let Some(arg) = inv.rest.get(1) else {
        errln("Please specify the new size for the VDI");
        return Ok(EXIT_USAGE);
    };
    let Some(new_size) = option_parse_size(arg) else {
        return Ok(EXIT_USAGE);
    };
    let (vid, mut b) = match ctx.read_vdi_obj(name, 0, "", SD_INODE_HEADER_SIZE).await {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let Some(h) = InodeHeader::decode(&b) else {
        return Ok(EXIT_FAILURE);
    };
    let object_size = (1u32 << (h.block_size_shift & 31)) as u64;
    let old_max = object_size * OLD_MAX_DATA_OBJS;
    if h.store_policy == 0 {
        if new_size > old_max {
            errln(&format!(
                "New VDI size is too large. This volume's max size is {old_max}"
            ));
            return Ok(EXIT_USAGE);
        }
    } else if new_size > SD_MAX_VDI_SIZE {
        errln(&format!(
            "New VDI size is too large This volume's max size is {SD_MAX_VDI_SIZE}"
        ));
        return Ok(EXIT_USAGE);
    }
    if new_size < h.vdi_size {
        errln("Shrinking VDIs is not implemented");
        return Ok(EXIT_USAGE);
    }
    put_u64(&mut b, 536, new_size);
    b.resize(SD_INODE_HEADER_SIZE, 0);
    if ctx
        .write_object(
            oid::vid_to_vdi_oid(vid),
            0,
            &b,
            0,
            0,
            h.nr_copies,
            h.copy_policy,
            false,
            true,
        )
        .await
        .is_err()
    {
        errln("Failed to update an inode header");
        return Ok(EXIT_FAILURE);
    }
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ read / write

/// `[OFFSET [LEN]]` as dog parses them.
fn offset_len(inv: &Invocation) -> Option<(u64, u64)> {
    let mut offset = 0u64;
    let mut total = u64::MAX;
    if let Some(o) = inv.rest.get(1) {
        offset = option_parse_size(o)?;
        if let Some(l) = inv.rest.get(2) {
            total = option_parse_size(l)?;
        }
    }
    Some((offset, total))
}

fn last_os_error() -> String {
    super::dog::strerror(&std::io::Error::last_os_error())
}

/// `read_vdi_obj` for the data commands: GET_VDI_INFO, then the whole
/// inode (one 12.5 MB READ_OBJ, DIRECT), opened as a [`Volume`] over it.
async fn open_volume(
    ctx: &Ctx,
    name: &str,
    snapid: u32,
    tag: &str,
    writeback: bool,
) -> Result<(Volume, Inode), i32> {
    let vid = ctx
        .open_vdi(name, snapid, tag)
        .await
        .map_err(|_| EXIT_FAILURE)?;
    let inode = match ctx.client.read_inode(vid, true).await {
        Ok(i) => i,
        Err(e) => {
            report_object_error(&e, oid::vid_to_vdi_oid(vid), false);
            report_vdi_read_failure(name, snapid, tag);
            return Err(EXIT_FAILURE);
        }
    };
    let sel = if snapid != 0 {
        SnapSel::Id(snapid)
    } else if !tag.is_empty() {
        SnapSel::Tag(tag.to_string())
    } else {
        SnapSel::Working
    };
    let vol = Volume::open_resolved(
        ctx.client.clone(),
        name,
        inode.clone(),
        OpenOptions {
            snapshot: sel,
            object_cache: writeback,
            // sheepctl sends dog's exact requests (checked by golden tests).
            dog_requests: true,
            ..Default::default()
        },
    );
    Ok((vol, inode))
}

/// dog's message for a failed object request of the data path.
fn report_object_error(e: &crate::client::Error, oid: u64, write: bool) {
    let what = if write { "write" } else { "read" };
    match e.result() {
        Some(r) if write => errln(&format!(
            "Failed to {what} object {oid:016x}: {}",
            r.message()
        )),
        Some(r) => errln(&format!(
            "Failed to {what} object {oid:016x} {}",
            r.message()
        )),
        None => {
            report_transport(e);
            errln(&format!("Failed to {what} object {oid:016x}"));
        }
    }
}

async fn vdi_read(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    let Some((mut offset, total)) = offset_len(inv) else {
        return Ok(EXIT_USAGE);
    };
    let (vol, inode) = match open_volume(ctx, name, d.snapshot_id, &d.snapshot_tag, false).await {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let size = vol.size();
    if size < offset {
        errln("Read offset is beyond the end of the VDI");
        return Ok(EXIT_FAILURE);
    }
    let obj = vol.object_size();
    let total = total.min(size - offset);
    let mut pos = offset;
    offset %= obj;
    let mut done = 0u64;
    let mut stdout = std::io::stdout().lock();
    // One object piece at a time, as dog reads.
    while done < total {
        let len = (total - done).min(obj - offset);
        let buf = match vol.read_at(pos, len as usize).await {
            Ok(b) => b,
            Err(e) => {
                let idx = pos / obj;
                let doid = oid::vid_to_data_oid(inode.map.get(idx), idx as u32);
                report_object_error(&e, doid, false);
                errln("Failed to read VDI");
                return Ok(EXIT_FAILURE);
            }
        };
        if stdout.write_all(&buf).is_err() {
            errln(&format!("Failed to write to stdout: {}", last_os_error()));
            return Ok(EXIT_SYSFAIL);
        }
        offset = 0;
        pos += len;
        done += len;
    }
    let _ = stdout.flush();
    Ok(EXIT_SUCCESS)
}

/// `xread`: reads until `buf` is full or EOF.
fn xread(buf: &mut [u8]) -> std::io::Result<usize> {
    let mut stdin = std::io::stdin().lock();
    let mut n = 0;
    while n < buf.len() {
        match stdin.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

async fn vdi_write(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    let Some((mut offset, mut total)) = offset_len(inv) else {
        return Ok(EXIT_USAGE);
    };
    let (vol, _) = match open_volume(ctx, name, 0, "", d.writeback).await {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let size = vol.size();
    if size < offset {
        errln("Write offset is beyond the end of the VDI");
        return Ok(EXIT_FAILURE);
    }
    let obj = vol.object_size();
    total = total.min(size - offset);
    let mut pos = offset;
    offset %= obj;
    let mut done = 0u64;
    // One object piece at a time: read that much of stdin, write it.
    while done < total {
        let len = (total - done).min(obj - offset);
        let mut buf = vec![0u8; len as usize];
        match xread(&mut buf) {
            Ok(n) if (n as u64) < len => {
                // Short input: send this (zero-padded) piece, then stop.
                total = done + len;
            }
            Ok(_) => {}
            Err(e) => {
                errln(&format!(
                    "Failed to read from stdin: {}",
                    super::dog::strerror(&e)
                ));
                return Ok(EXIT_SYSFAIL);
            }
        }
        if let Err(e) = vol.write_at(pos, &buf).await {
            let idx = pos / obj;
            let doid = oid::vid_to_data_oid(vol.vid(), idx as u32);
            report_object_error(&e, doid, true);
            errln("Failed to write VDI");
            return Ok(EXIT_FAILURE);
        }
        offset = 0;
        pos += len;
        done += len;
    }
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ attributes

/// `find_vdi_attr_oid`: GET_VDI_ATTR; Ok(attr oid) or the result.
#[allow(clippy::too_many_arguments)]
async fn find_vdi_attr_oid(
    ctx: &Ctx,
    inv: &Invocation,
    name: &str,
    key: &str,
    value: &[u8],
    create: bool,
    excl: bool,
    delete: bool,
) -> Result<u64, SdRes> {
    let d = &inv.data;
    let mut a = vec![0u8; SD_ATTR_OBJ_SIZE];
    a[0..256].copy_from_slice(&cname(name, 256));
    a[256..512].copy_from_slice(&cname(&d.snapshot_tag, 256));
    put_u32(&mut a, 520, d.snapshot_id);
    a[528..784].copy_from_slice(&cname(key, 256));
    if !value.is_empty() {
        let n = value.len().min(SD_MAX_VDI_ATTR_VALUE_LEN);
        put_u32(&mut a, 524, n as u32);
        a[784..784 + n].copy_from_slice(&value[..n]);
    }
    let mut h = ReqHeader::for_op(op::GET_VDI_ATTR);
    h.args = VdiArgs {
        snapid: d.snapshot_id,
        ..Default::default()
    }
    .encode();
    if create {
        h.flags |= flags::CMD_CREAT;
    }
    if excl {
        h.flags |= flags::CMD_EXCL;
    }
    if delete {
        h.flags |= flags::CMD_DEL;
    }
    let Some(rsp) = ctx.exec(h, Some(a)).await else {
        return Err(SdRes::EIO);
    };
    if rsp.result() != SdRes::SUCCESS {
        return Err(rsp.result());
    }
    let r = VdiRsp::decode(&rsp.hdr.args);
    Ok(oid::vid_to_attr_oid(r.vdi_id, r.attr_id))
}

async fn vdi_setattr(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    let Some(key) = inv.rest.get(1) else {
        errln("Please specify the attribute key");
        return Ok(EXIT_USAGE);
    };
    let mut value: Option<Vec<u8>> = inv.rest.get(2).map(|v| v.as_bytes().to_vec());
    if value.is_none() && !d.delete {
        let mut v = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(SD_MAX_VDI_ATTR_VALUE_LEN as u64)
            .read_to_end(&mut v);
        if let Err(e) = r {
            errln(&format!(
                "Failed to read attribute value from stdin: {}",
                super::dog::strerror(&e)
            ));
            return Ok(EXIT_SYSFAIL);
        }
        value = Some(v);
    }
    // value_len is strlen(value).
    let value = value
        .map(|v| {
            let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
            v[..end].to_vec()
        })
        .unwrap_or_default();
    match find_vdi_attr_oid(
        ctx,
        inv,
        name,
        key,
        &value,
        !d.delete,
        d.exclusive,
        d.delete,
    )
    .await
    {
        Ok(_) => Ok(EXIT_SUCCESS),
        Err(SdRes::VDI_EXIST) => {
            errln(&format!("The attribute '{key}' already exists"));
            Ok(EXIT_EXISTS)
        }
        Err(SdRes::NO_OBJ) => {
            errln(&format!("Attribute '{key}' not found"));
            Ok(EXIT_MISSING)
        }
        Err(SdRes::NO_VDI) => {
            errln("VDI not found");
            Ok(EXIT_MISSING)
        }
        Err(r) => {
            errln(&format!("Failed to set attribute: {}", r.message()));
            Ok(EXIT_FAILURE)
        }
    }
}

async fn vdi_getattr(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let name = inv.rest[0].as_str();
    let Some(key) = inv.rest.get(1) else {
        errln("Please specify the attribute key");
        return Ok(EXIT_USAGE);
    };
    let aoid = match find_vdi_attr_oid(ctx, inv, name, key, &[], false, false, false).await {
        Ok(o) => o,
        Err(SdRes::NO_OBJ) => {
            errln(&format!("Attribute '{key}' not found"));
            return Ok(EXIT_MISSING);
        }
        Err(SdRes::NO_VDI) => {
            errln("VDI not found");
            return Ok(EXIT_MISSING);
        }
        Err(r) => {
            errln(&format!("Failed to find attribute oid: {}", r.message()));
            return Ok(EXIT_MISSING);
        }
    };
    let b = match ctx
        .read_object(aoid, SD_ATTR_OBJ_SIZE as u32, 0, true)
        .await
    {
        Ok(b) => b,
        Err(r) => {
            errln(&format!("Failed to read attribute oid: {}", r.message()));
            return Ok(EXIT_SYSFAIL);
        }
    };
    let n = (get_u32(&b, 524) as usize).min(SD_MAX_VDI_ATTR_VALUE_LEN);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(&b[784..784 + n]);
    let _ = so.flush();
    Ok(EXIT_SUCCESS)
}

// ------------------------------------------------------------------ locks

/// `get_vdi_state`: one GET_VDI_COPIES of 512 states (dog ignores the result).
async fn get_vdi_state(ctx: &Ctx) -> Option<Vec<VdiState>> {
    let mut h = ReqHeader::for_op(op::GET_VDI_COPIES);
    h.data_length = (512 * VDI_STATE_SIZE) as u32;
    let rsp = ctx.exec(h, None).await?;
    let n = rsp.hdr.data_length as usize / VDI_STATE_SIZE;
    let mut v: Vec<VdiState> = rsp
        .data
        .chunks_exact(VDI_STATE_SIZE)
        .take(n)
        .filter_map(VdiState::decode)
        .collect();
    v.sort_by_key(|s| s.vid);
    Some(v)
}

fn describe_vdi(name: &str, snapid: u32, tag: &str, vid: u32) -> String {
    match (vid != 0, snapid > 0, !tag.is_empty()) {
        (true, true, _) => format!("{name} (snapid={snapid}, vid={vid:x})"),
        (true, false, true) => format!("{name} (tag={tag}, vid={vid:x})"),
        (true, false, false) => format!("{name} (vid={vid:x})"),
        (false, true, _) => format!("{name} (snapid={snapid})"),
        (false, false, true) => format!("{name} (tag={tag})"),
        (false, false, false) => name.to_string(),
    }
}

async fn vdi_lock(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let subname = inv.rest[0].as_str();
    let Some(sc) = VDI_LOCK_CMDS.iter().find(|s| s.name == subname) else {
        return Err(inv.usage(&[], EXIT_FAILURE));
    };
    let stack: [&Sub; 1] = [sc];
    if sc.flags & super::NEED_ARG != 0 && inv.rest.get(1).is_none_or(|a| a.is_empty()) {
        return Err(inv.usage(&stack, EXIT_USAGE));
    }
    let ret = match sc.cmd {
        Cmd::VdiLockList => lock_list(ctx).await,
        _ => lock_unlock(ctx, inv).await,
    };
    if ret == EXIT_USAGE {
        return Err(inv.usage(&stack, EXIT_USAGE));
    }
    Ok(ret)
}

async fn lock_list(ctx: &Ctx) -> i32 {
    let Some(states) = get_vdi_state(ctx).await else {
        errln("Failed to get VDI state");
        return EXIT_SYSFAIL;
    };
    out(dogfmt::LOCK_LIST_HEADER);
    let ret = ctx
        .parse_vdi(true, None, |e, _| {
            let st = states
                .binary_search_by_key(&e.header.vdi_id, |s| s.vid)
                .ok()
                .map(|i| &states[i]);
            out(&dogfmt::lock_list_row(&e.header, st));
        })
        .await;
    if ret != 0 {
        EXIT_SYSFAIL
    } else {
        EXIT_SUCCESS
    }
}

async fn lock_unlock(ctx: &Ctx, inv: &Invocation) -> i32 {
    let d = &inv.data;
    let Some(name) = inv.rest.get(1).map(String::as_str) else {
        errln("VDI name must be specified");
        return EXIT_USAGE;
    };
    let (snapid, tag) = (d.snapshot_id, d.snapshot_tag.as_str());
    let vid = match ctx.find_vdi_name(name, snapid, tag).await {
        Ok(v) => v,
        Err(r) => {
            errln(&format!(
                "Failed to find VDI {}: {}",
                describe_vdi(name, snapid, tag, 0),
                r.message()
            ));
            return EXIT_FAILURE;
        }
    };
    let desc = describe_vdi(name, snapid, tag, vid);
    let Some(states) = get_vdi_state(ctx).await else {
        errln("Failed to get VDI state");
        return EXIT_SYSFAIL;
    };
    let Some(found) = states.iter().find(|s| s.vid == vid) else {
        errln(&format!("Failed to find VDI state {desc}"));
        return EXIT_SYSFAIL;
    };
    let lock_type = match found.lock_state {
        lock_state::UNLOCKED => {
            errln(&format!("VDI {desc} is not locked"));
            return EXIT_FAILURE;
        }
        lock_state::LOCKED => crate::proto::LOCK_TYPE_NORMAL,
        lock_state::SHARED => crate::proto::LOCK_TYPE_SHARED,
        s => {
            errln(&format!("VDI {desc} unknown lock state ({s})"));
            return EXIT_SYSFAIL;
        }
    };
    let mut h = ReqHeader::for_op(op::RELEASE_VDI);
    h.args = VdiArgs {
        base_vdi_id: vid,
        lock_type,
        ..Default::default()
    }
    .encode();
    match ctx.exec(h, None).await {
        Some(_) => EXIT_SUCCESS,
        None => EXIT_FAILURE,
    }
}
