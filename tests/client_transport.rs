//! The client over a custom transport: sheep-lite served in this process
//! over `tokio::io::duplex` (no socket anywhere), through the same pool,
//! fencing and reconnects as over TCP.
#![cfg(feature = "server")]

mod common;

use common::{pattern, sha};
use sheepfs::client::{
    Client, CreateOptions, Error, OpenOptions, Options, SheepAddr, SnapSel, Volume,
};
use sheepfs::server::{self, Config, Ctx};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MB: u64 = 1 << 20;

/// A client whose every connection is a duplex stream served by `ctx`; the
/// addresses the connector was called with are recorded.
fn in_process(ctx: &Arc<Ctx>, opts: Options) -> (Client, Arc<parking_lot::Mutex<Vec<String>>>) {
    let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (ctx, seen) = (ctx.clone(), calls.clone());
    let addr = SheepAddr::Unix("in-process".into());
    let client = Client::with_connector(addr, opts, move |a: &SheepAddr| {
        seen.lock().push(a.to_string());
        let stream = server::serve_duplex(&ctx);
        async move { Ok(stream) }
    });
    (client, calls)
}

fn open_store(dir: &Path) -> Arc<Ctx> {
    Ctx::open(&Config::new(dir)).expect("open the sheep-lite store")
}

async fn open(c: &Client, name: &str, snapshot: SnapSel) -> Volume {
    let opts = OpenOptions {
        snapshot,
        ..Default::default()
    };
    Volume::open(c.clone(), name, opts).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_over_duplex() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = open_store(dir.path());
    let (c, calls) = in_process(&ctx, Options::default());
    c.make_fs(0, 0, 0, 0, "plain").await.unwrap();
    let opts = CreateOptions {
        block_size_shift: Some(20),
        ..Default::default()
    };
    c.create_vdi("v", 8 * MB, &opts).await.unwrap();

    // Across object boundaries, then a snapshot and a COW overwrite.
    let v = open(&c, "v", SnapSel::Working).await;
    let old = pattern(3 * MB as usize, 7);
    v.write_at(MB / 2, &old).await.unwrap();
    assert_eq!(sha(&v.read_at(MB / 2, old.len()).await.unwrap()), sha(&old));
    c.snapshot_vdi("v", "before").await.unwrap();
    let new = pattern(MB as usize, 99);
    v.write_at(MB, &new).await.unwrap();
    let mut want = old.clone();
    want[MB as usize / 2..MB as usize / 2 + new.len()].copy_from_slice(&new);
    assert_eq!(
        sha(&v.read_at(MB / 2, want.len()).await.unwrap()),
        sha(&want)
    );
    let snap = open(&c, "v", SnapSel::Tag("before".into())).await;
    let got = snap.read_at(MB / 2, old.len()).await.unwrap();
    assert_eq!(sha(&got), sha(&old), "the snapshot keeps the old bytes");
    assert_eq!(snap.read_at(0, 16).await.unwrap(), vec![0u8; 16]);
    v.close().await.unwrap();

    // Every connection went through the connector, with the client's address.
    let seen = calls.lock().clone();
    assert!(!seen.is_empty() && seen.len() <= Options::default().connections);
    assert!(seen.iter().all(|a| a == "unix:in-process"), "{seen:?}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_through_the_connector() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = open_store(dir.path());
    let opts = Options {
        connections: 1,
        ..Default::default()
    };
    let (c, calls) = in_process(&ctx, opts);
    c.make_fs(0, 0, 0, 0, "plain").await.unwrap();
    c.create_vdi("r", 4 * MB, &CreateOptions::default())
        .await
        .unwrap();
    let v = open(&c, "r", SnapSel::Working).await;
    let data = pattern(100_000, 3);
    v.write_at(4096, &data).await.unwrap();
    assert_eq!(calls.lock().len(), 1);

    // A new address drops the open stream; the next request opens another
    // one through the connector, which is told the new address.
    c.set_addr(SheepAddr::Unix("in-process-2".into())).await;
    assert_eq!(sha(&v.read_at(4096, data.len()).await.unwrap()), sha(&data));
    let seen = calls.lock().clone();
    assert_eq!(seen, ["unix:in-process", "unix:in-process-2"]);
    assert_eq!(c.reconnects(), 0, "a replaced connection is not a failure");
    v.close().await.unwrap();
    c.close().await;
}

#[tokio::test]
async fn a_failing_connector_is_a_connect_error() {
    let opts = Options {
        retry_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let addr = SheepAddr::Unix("nowhere".into());
    let c = Client::with_connector(addr, opts, |_: &SheepAddr| async {
        Err::<tokio::io::DuplexStream, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by the test",
        ))
    });
    let e = c.node_list().await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("unix:nowhere") && msg.contains("refused by the test"),
        "{msg}"
    );
}
