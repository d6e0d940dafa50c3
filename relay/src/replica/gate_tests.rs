//! The gate and the routed store over in-memory stores: a primary and a
//! standby whose checkpoints the tests move by hand. Real time (the gate
//! measures lag with `Instant`), bounded waits.

use super::*;
use crate::listener::{publish, Announced};
use crate::metrics::Metrics;
use crate::testing::FakeStore;
use outpost_protocol::OpId;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tokio::sync::watch;

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn announces_only_what_the_standby_shows_and_falls_back_when_it_fails_or_lags() {
    let primary = Arc::new(FakeStore::default());
    let standby = Arc::new(FakeStore::default());
    primary.shared_changes.store(true, SeqCst);
    standby.shared_changes.store(true, SeqCst);
    for i in 0..3 {
        primary.put("b[]", &i.to_string());
    }
    for i in 0..2 {
        standby.put("b[]", &i.to_string());
    }
    let replicas = Arc::new(Replicas::from_stores(vec![(
        "s1".into(),
        "host=s1".into(),
        standby.clone() as Arc<dyn Store>,
    )]));
    let metrics = Arc::new(Metrics::default());
    let (primary_tx, primary_rx) = watch::channel(Announced::initial());
    let (cp_tx, cp_rx) = watch::channel(Announced::initial());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Gate {
        replicas: replicas.clone(),
        primary: primary_rx,
        published: cp_tx,
        metrics: metrics.clone(),
        max_lag: Duration::from_millis(300),
    };
    let task = tokio::spawn(gate.run(stop_rx));
    let store = RoutedStore::new(primary.clone(), replicas.clone(), metrics.clone());
    publish(&primary_tx, &metrics, 3);

    // The standby shows 2: streams hear of 2, not 3, and read there.
    until("checkpoint 2 announced", || cp_rx.borrow().checkpoint == 2).await;
    assert_eq!(replicas.target(), Some(0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(cp_rx.borrow().checkpoint, 2, "3 is not on the standby yet");
    let st = store
        .sync_checkpoint(&json!({"sub": "u1"}), &json!({}), "", &Value::Null)
        .await
        .unwrap();
    assert_eq!(st.checkpoint, OpId(2));
    assert_eq!(standby.sync_checkpoint_calls.load(SeqCst), 1);
    assert_eq!(primary.sync_checkpoint_calls.load(SeqCst), 0);
    let names = vec!["b[]".to_string()];
    store
        .bucket_ops(&names, &[OpId(0)], OpId(2), 10)
        .await
        .unwrap();
    assert_eq!(standby.bucket_ops_calls.load(SeqCst), 1);
    // Ops up to a checkpoint the standby is not known to show: the primary.
    store
        .bucket_ops(&names, &[OpId(0)], OpId(3), 10)
        .await
        .unwrap();
    assert_eq!(primary.bucket_ops_calls.load(SeqCst), 1);
    assert_eq!(metrics.replica_fallback_reads.get(), 1);
    // Writes never go to the standby.
    store.tick().await.unwrap();
    store.request_write_checkpoint("u1", "").await.unwrap();
    assert_eq!(
        (primary.ticks.load(SeqCst), standby.ticks.load(SeqCst)),
        (1, 0)
    );

    // Replayed: announced.
    standby.put("b[]", "2");
    until("checkpoint 3 announced", || cp_rx.borrow().checkpoint == 3).await;

    // The standby fails: reads fall back at once, the gate takes it out, and
    // the primary's checkpoints are announced directly.
    standby.fail.store(true, SeqCst);
    let st = store
        .sync_checkpoint(&json!({"sub": "u1"}), &json!({}), "", &Value::Null)
        .await
        .unwrap();
    assert_eq!(st.checkpoint, OpId(3));
    assert_eq!(metrics.replica_fallback_reads.get(), 2);
    until("the standby out of rotation", || {
        replicas.target().is_none()
    })
    .await;
    assert!(metrics
        .render()
        .contains("outpost_relay_replica_removed_total{replica=\"s1\",reason=\"down\"} 1"));
    primary.put("b[]", "3");
    publish(&primary_tx, &metrics, 4);
    until("checkpoint 4 announced from the primary", || {
        cp_rx.borrow().checkpoint == 4
    })
    .await;

    // Back, but behind: reads stay on the primary until it shows 4.
    standby.fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(replicas.target(), None);
    standby.put("b[]", "3");
    until("reads back on the standby", || replicas.target() == Some(0)).await;

    // Lagging past the bound: out of rotation, reads and announcements move on.
    primary.put("b[]", "4");
    publish(&primary_tx, &metrics, 5);
    until("the lagging standby out of rotation", || {
        replicas.target().is_none()
    })
    .await;
    until("checkpoint 5 announced", || cp_rx.borrow().checkpoint == 5).await;
    assert!(metrics
        .render()
        .contains("outpost_relay_replica_removed_total{replica=\"s1\",reason=\"lagging\"} 1"));
    assert!(metrics
        .render()
        .contains("outpost_relay_replica_wait_seconds_count"));

    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
