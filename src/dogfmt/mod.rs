//! dog's output formats, byte for byte (reference §8), shared by `sheepctl`
//! and sheepfs's state files. Each command has an async "gather and render"
//! function over a [`Client`], a pure renderer tested against fixed rows, and
//! a JSON twin for sheepfs's `*.json` files.
//!
//! (Stub: signatures are fixed; bodies are being written.)

use crate::client::{Client, Result, VdiEntry};

/// dog's `strnumber`: `4.0 MB`, `10 GB`, `16 PB`.
pub fn human_size(bytes: u64) -> String {
    let _ = bytes;
    todo!()
}

/// `dog vdi list [-r] [NAME]`.
pub fn render_vdi_list(entries: &[VdiEntry], raw: bool, name: Option<&str>) -> String {
    let _ = (entries, raw, name);
    todo!()
}

pub async fn vdi_list(client: &Client, raw: bool, name: Option<&str>) -> Result<String> {
    let _ = (client, raw, name);
    todo!()
}
pub async fn vdi_list_json(client: &Client) -> Result<String> {
    let _ = client;
    todo!()
}
/// `dog cluster info [-r] [-v]`.
pub async fn cluster_info(client: &Client, raw: bool, verbose: bool) -> Result<String> {
    let _ = (client, raw, verbose);
    todo!()
}
pub async fn cluster_info_json(client: &Client) -> Result<String> {
    let _ = client;
    todo!()
}
/// `dog node list [-r]`.
pub async fn node_list(client: &Client, raw: bool) -> Result<String> {
    let _ = (client, raw);
    todo!()
}
pub async fn node_list_json(client: &Client) -> Result<String> {
    let _ = client;
    todo!()
}
/// `dog node info [-r]`.
pub async fn node_info(client: &Client, raw: bool) -> Result<String> {
    let _ = (client, raw);
    todo!()
}
pub async fn node_info_json(client: &Client) -> Result<String> {
    let _ = client;
    todo!()
}
/// `dog vdi lock list`.
pub async fn vdi_lock_list(client: &Client) -> Result<String> {
    let _ = client;
    todo!()
}
