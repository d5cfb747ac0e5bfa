//! The commands, each following its dog counterpart step by step.

use super::dog::{cname, report_transport, report_vdi_read_failure, snap_sel, Ctx};
use super::progress::{Progress, Shared};
use super::{
    errln, option_parse_size, out, Cmd, Exit, Invocation, Sub, EXIT_EXISTS, EXIT_FAILURE,
    EXIT_MISSING, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, R, VDI_LOCK_CMDS,
};
use crate::client::{CreateOptions, DeleteOptions, Error, Inode, OpenOptions, Step, Volume};
use crate::dogfmt::{self, ClusterInfoOpts, ClusterStatus, NodeSpace, Tz};
use crate::proto::attr::SD_ATTR_OBJ_SIZE;
use crate::proto::bytes::{get_u16, get_u32, put_u32};
use crate::proto::header::{ClusterArgs, NodeRsp, VdiArgs, VdiRsp};
use crate::proto::node::{lock_state, EpochLog, VdiState, CLUSTER_INFO_SIZE, VDI_STATE_SIZE};
use crate::proto::{
    cluster_flags, flags, oid, op, ReqHeader, SdRes, SD_MAX_NODES, SD_MAX_VDI_ATTR_VALUE_LEN,
    SD_MAX_VDI_SIZE, VDI_BITMAP_SIZE,
};
use std::io::{Read, Write};

pub async fn dispatch(ctx: &mut Ctx, inv: &Invocation) -> R<i32> {
    check_names(inv)?;
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
        Cmd::VdiTree => super::tree::vdi_tree(ctx).await,
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

/// Refuses VDI names and attribute keys dog would cut to 255 bytes.
fn check_names(inv: &Invocation) -> R<()> {
    let (first, second) = match inv.sc.cmd {
        Cmd::VdiLock => (None, Some("VDI name")),
        Cmd::VdiClone => (Some("VDI name"), Some("VDI name")),
        Cmd::VdiSetattr | Cmd::VdiGetattr => (Some("VDI name"), Some("Attribute key")),
        Cmd::VdiCreate
        | Cmd::VdiSnapshot
        | Cmd::VdiDelete
        | Cmd::VdiResize
        | Cmd::VdiRead
        | Cmd::VdiWrite => (Some("VDI name"), None),
        _ => (None, None),
    };
    for (i, what) in [first, second].into_iter().enumerate() {
        if let (Some(what), Some(arg)) = (what, inv.rest.get(i)) {
            super::check_len(what, arg)?;
        }
    }
    Ok(())
}

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
    let progress = Shared::new();
    let opts = CreateOptions {
        copies: d.copies,
        copy_policy: d.copy_policy,
        block_size_shift: (d.block_size_shift != 0).then_some(d.block_size_shift),
        hyper: d.store_policy == 1,
        prealloc: d.prealloc,
        progress: Some(progress.func("preallocate")),
    };
    let vid = match ctx.client.create_vdi(name, size, &opts).await {
        Ok(v) => v,
        Err(e) => {
            progress.abort();
            return Ok(match (step_of(&e), e.root()) {
                (Some((Step::ClusterInfo, _)), root) => match root.result() {
                    None => {
                        report_transport(root);
                        errln("Fail to execute request: SD_OP_CLUSTER_INFO");
                        EXIT_FAILURE
                    }
                    Some(SdRes::WAIT_FOR_FORMAT) => {
                        errln(&format!(
                            "Failed to create VDI {name}: {}",
                            SdRes::WAIT_FOR_FORMAT.message()
                        ));
                        EXIT_FAILURE
                    }
                    Some(r) => {
                        errln(&r.message());
                        EXIT_FAILURE
                    }
                },
                (None, Error::TooLarge { max, hyper, .. }) => {
                    if *hyper {
                        errln("VDI size is too large");
                    } else {
                        errln(&format!(
                            "VDI size is larger than {} bytes, please use '-y' to create a hyper volume with size up to {} bytes or use '-z' to create larger object size volume",
                            dogfmt::size_str(*max, ctx.raw),
                            dogfmt::size_str(SD_MAX_VDI_SIZE, ctx.raw)
                        ));
                    }
                    EXIT_USAGE
                }
                (Some((Step::NewVdi, _)), root) => report_new_vdi(name, root),
                (Some((Step::ReadInode, oid)), root) => {
                    report_object_error(root, oid, false);
                    errln("Failed to read a newly created VDI object");
                    EXIT_FAILURE
                }
                (Some((_, oid)), root) => {
                    report_object_error(root, oid, true);
                    EXIT_FAILURE
                }
                (None, root) => report_other(root),
            });
        }
    };
    if ctx.verbose {
        if ctx.raw {
            out(&format!("{vid:x}\n"));
        } else {
            out(&format!("VDI ID of newly created VDI: {vid:x}\n"));
        }
    }
    Ok(EXIT_SUCCESS)
}

/// The step and object of an admin error.
fn step_of(e: &Error) -> Option<(Step, u64)> {
    match e {
        Error::At { step, oid, .. } => Some((*step, *oid)),
        _ => None,
    }
}

/// The result dog's helpers return for a failed request: sheep's answer,
/// or EIO after the transport lines dog prints.
fn sd_result(e: &Error) -> SdRes {
    match e.root() {
        root if root.result().is_some() => root.result().unwrap_or(SdRes::EIO),
        // Refused before sending (e.g. an invalid name): say why.
        Error::Invalid(msg) => {
            errln(msg);
            SdRes::INVALID_PARMS
        }
        root => {
            report_transport(root);
            SdRes::EIO
        }
    }
}

/// A failure without a step: its own message.
fn report_other(e: &Error) -> i32 {
    errln(&e.to_string());
    EXIT_FAILURE
}

/// dog's `do_vdi_create` failure lines and exit status.
fn report_new_vdi(name: &str, e: &Error) -> i32 {
    match e.result() {
        Some(r) => {
            errln(&format!("Failed to create VDI {name}: {}", r.message()));
            EXIT_FAILURE
        }
        None if matches!(e, Error::Invalid(_)) => report_other(e),
        None => {
            report_transport(e);
            EXIT_SYSFAIL
        }
    }
}

/// dog's `open_vdi` failure line.
fn report_open(e: &Error, name: &str, snapid: u32, tag: &str) -> i32 {
    let r = sd_result(e);
    errln(&format!(
        "Failed to open VDI {name} (snapshot id: {} snapshot tag: {tag}): {}",
        snapid as i32,
        r.message()
    ));
    EXIT_FAILURE
}

/// dog's `read_vdi_obj` failure lines: the lookup or the inode read.
fn report_read_vdi_obj(e: &Error, oid: u64, name: &str, snapid: u32, tag: &str) -> i32 {
    if oid == 0 {
        return report_open(e, name, snapid, tag);
    }
    report_object_error(e.root(), oid, false);
    report_vdi_read_failure(name, snapid, tag);
    EXIT_FAILURE
}

// ------------------------------------------------------------------ snapshot / clone

async fn vdi_snapshot(ctx: &Ctx, inv: &Invocation) -> R<i32> {
    let d = &inv.data;
    let name = inv.rest[0].as_str();
    if d.snapshot_id != 0 {
        errln("Please specify a non-integer value for a snapshot tag name");
        return Ok(EXIT_USAGE);
    }
    let tag = d.snapshot_tag.as_str();
    let r = ctx
        .client
        .snapshot_vdi_with(name, tag, d.reduce_identical_snapshots)
        .await;
    let (vid, new_vid) = match r {
        Ok(Some(v)) => v,
        Ok(None) => {
            if ctx.verbose {
                errln(&format!(
                    "VDI {name} doesn't have its own objects, skipping creation of snapshot"
                ));
            }
            return Ok(EXIT_SUCCESS);
        }
        Err(e) => {
            let root = e.root();
            // dog returns the result code itself as the exit status here.
            let code = |write| {
                let oid = step_of(&e).map_or(0, |s| s.1);
                report_object_error(root, oid, write);
                root.result().unwrap_or(SdRes::EIO).0 as i32
            };
            return Ok(match step_of(&e) {
                Some((Step::LookupTag, 0)) if root.result() == Some(SdRes::VDI_EXIST) => {
                    errln(&format!(
                        "Failed to create snapshot for {name}, maybe snapshot id ({}) or tag ({tag}) is existed",
                        d.snapshot_id as i32
                    ));
                    EXIT_FAILURE
                }
                Some((Step::LookupTag, 0)) => {
                    let r = sd_result(&e);
                    errln(&format!(
                        "Failed to create snapshot for {name}: {}",
                        r.message()
                    ));
                    EXIT_FAILURE
                }
                Some((Step::LookupTag | Step::ReadMap, _)) => code(false),
                Some((Step::WriteInode, _)) => code(true),
                Some((Step::Lookup | Step::ReadInode, oid)) => {
                    report_read_vdi_obj(&e, oid, name, 0, "")
                }
                Some((Step::NewVdi, _)) => report_new_vdi(name, root),
                _ => report_other(root),
            });
        }
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
    let (snapid, tag) = (d.snapshot_id, d.snapshot_tag.as_str());
    let progress = Shared::new();
    let func = progress.func("clone");
    let r = ctx
        .client
        .clone_vdi_with(
            src,
            &snap_sel(snapid, tag),
            dst,
            d.prealloc,
            d.no_share,
            Some(&func),
        )
        .await;
    let new_vid = match r {
        Ok(v) => v,
        Err(e) => {
            progress.abort();
            return Ok(match step_of(&e) {
                Some((Step::Lookup | Step::ReadInode, oid)) => {
                    report_read_vdi_obj(&e, oid, src, snapid, tag)
                }
                Some((Step::Reopen, oid)) => report_read_vdi_obj(&e, oid, dst, 0, ""),
                Some((Step::NewVdi, _)) => report_new_vdi(dst, e.root()),
                Some((step, oid)) => {
                    report_object_error(e.root(), oid, step != Step::ReadData);
                    EXIT_FAILURE
                }
                None => report_other(&e),
            });
        }
    };
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
    let opts = DeleteOptions {
        batch: d.nr_batched_reclamation as u32,
        interval: std::time::Duration::from_secs(d.reclamation_interval as u64),
        max_reclaim: d.nr_max_reclaim as u64,
        dog_hyper_walk: true,
    };
    let r = ctx
        .client
        .delete_vdi_with(name, &snap_sel(snapid, tag), &opts)
        .await;
    // dog's do_vdi_delete reports problems but always exits 0.
    if let Err(e) = r {
        match step_of(&e) {
            Some((Step::Lookup, _)) => {
                report_open(&e, name, snapid, tag);
            }
            Some((Step::ReadInode, oid)) => {
                report_object_error(e.root(), oid, false);
                errln(&format!("failed to read inode object: {oid:016x}"));
            }
            Some((Step::WriteInode, oid)) => {
                report_object_error(e.root(), oid, true);
                errln(&format!(
                    "failed to update inode for discarding objects: {oid:016x}"
                ));
            }
            Some((Step::DelVdi, _)) => match e.result() {
                Some(r) => errln(&format!("Failed to delete {name}: {}", r.message())),
                None => {
                    sd_result(&e);
                }
            },
            _ => {
                report_other(&e);
            }
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
    let Err(e) = ctx.client.resize_vdi(name, new_size).await else {
        return Ok(EXIT_SUCCESS);
    };
    Ok(match (step_of(&e), e.root()) {
        (Some((Step::Lookup | Step::ReadInode, oid)), _) => {
            report_read_vdi_obj(&e, oid, name, 0, "")
        }
        (Some((Step::WriteInode, oid)), root) => {
            report_object_error(root, oid, true);
            errln("Failed to update an inode header");
            EXIT_FAILURE
        }
        (None, Error::TooLarge { max, hyper, .. }) => {
            let dot = if *hyper { "" } else { "." };
            errln(&format!(
                "New VDI size is too large{dot} This volume's max size is {max}"
            ));
            EXIT_USAGE
        }
        // Shrinking.
        (None, Error::Invalid(msg)) => {
            errln(msg);
            EXIT_USAGE
        }
        (_, root) => report_other(root),
    })
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
    let sel = snap_sel(snapid, tag);
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
    let mut progress = Progress::stderr("read", total);
    // One object piece at a time, as dog reads.
    while done < total {
        let len = (total - done).min(obj - offset);
        let buf = match vol.read_at(pos, len as usize).await {
            Ok(b) => b,
            Err(e) => {
                progress.abort();
                let idx = pos / obj;
                let doid = oid::vid_to_data_oid(inode.map.get(idx), idx as u32);
                report_object_error(&e, doid, false);
                errln("Failed to read VDI");
                return Ok(EXIT_FAILURE);
            }
        };
        if stdout.write_all(&buf).is_err() {
            progress.abort();
            errln(&format!("Failed to write to stdout: {}", last_os_error()));
            return Ok(EXIT_SYSFAIL);
        }
        offset = 0;
        pos += len;
        done += len;
        progress.update(done);
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
    let room = size - offset;
    let explicit_len = inv.rest.len() > 2;
    // Deliberately unlike dog, which writes what fits and exits 0.
    if explicit_len && total > room {
        errln(&format!(
            "Write of {total} bytes at offset {offset} goes past the end of VDI {name} ({size} bytes); nothing was written"
        ));
        return Ok(EXIT_FAILURE);
    }
    let start = offset;
    let obj = vol.object_size();
    total = total.min(room);
    let mut pos = offset;
    offset %= obj;
    let mut done = 0u64;
    let mut progress = Progress::stderr("write", total);
    // One object piece at a time: read that much of stdin, write it.
    while done < total {
        let len = (total - done).min(obj - offset);
        let mut buf = vec![0u8; len as usize];
        match xread(&mut buf) {
            Ok(n) if (n as u64) < len => {
                // Short input: write what came, then stop. (dog zero-pads
                // the piece, overwriting what follows the input.)
                buf.truncate(n);
                total = done + n as u64;
            }
            Ok(_) => {}
            Err(e) => {
                progress.abort();
                errln(&format!(
                    "Failed to read from stdin: {}",
                    super::dog::strerror(&e)
                ));
                return Ok(EXIT_SYSFAIL);
            }
        }
        if buf.is_empty() {
            break;
        }
        if let Err(e) = vol.write_at(pos, &buf).await {
            progress.abort();
            let idx = pos / obj;
            let doid = oid::vid_to_data_oid(vol.vid(), idx as u32);
            report_object_error(&e, doid, true);
            errln("Failed to write VDI");
            return Ok(EXIT_FAILURE);
        }
        offset = 0;
        pos += buf.len() as u64;
        done += buf.len() as u64;
        progress.update(done);
    }
    // Input left over at the end of the VDI: dog drops it silently.
    if !explicit_len && done == room && !stdin_at_eof() {
        errln(&format!(
            "Input is longer than VDI {name}: wrote {done} bytes from offset {start} up to its end ({size} bytes); the rest of the input was not written"
        ));
        return Ok(EXIT_FAILURE);
    }
    Ok(EXIT_SUCCESS)
}

/// True when stdin has no more bytes (or cannot be read).
fn stdin_at_eof() -> bool {
    let mut b = [0u8; 1];
    !matches!(xread(&mut b), Ok(1))
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
