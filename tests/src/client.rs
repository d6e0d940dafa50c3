//! Helpers for tests that drive `outpost_client::Database`s against a relay:
//! a runtime, and waits on sync status and live queries — bounded by [`WAIT`],
//! never fixed sleeps.

use outpost_client::{Database, SyncStatus};
use serde_json::{Map, Value};
use std::time::Duration;

/// The longest any wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Rows as `Database::query` and live queries return them.
pub type Rows = Vec<Map<String, Value>>;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until the database's sync status satisfies `pred`. `finished` tells,
/// for the failure message, whether the sync task has ended.
pub fn wait_status(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    what: &str,
    finished: impl Fn() -> bool,
    mut pred: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut rx = db.status();
    let got = rt.block_on(async {
        tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()))
    });
    match got {
        Ok(Ok(s)) => s,
        _ => panic!(
            "timed out waiting for {what}; status {:?}, sync task finished: {}",
            *db.status().borrow(),
            finished()
        ),
    }
}

/// Runs `sql` as a live query until `pred` holds for its rows; returns them.
pub fn wait_rows(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    sql: &str,
    what: &str,
    mut pred: impl FnMut(&Rows) -> bool,
) -> Rows {
    let mut w = db.watch(sql, &[]).unwrap();
    let mut last = Rows::new();
    let r = rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                let rows = w.next().await.unwrap();
                if pred(&rows) {
                    return rows;
                }
                last = rows;
            }
        })
        .await
    });
    r.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: last rows {last:?}; status {:?}",
            *db.status().borrow()
        )
    })
}
