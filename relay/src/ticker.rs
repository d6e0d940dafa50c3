//! Drives `outpost.tick()`. Bursts of change notifications coalesce: a
//! `Notify` holds at most one permit, so while a tick runs any number of
//! wake-ups leave exactly one more tick pending. The extension serializes
//! ticks itself, so several relays ticking the same database is safe.

use crate::listener::{publish, Announced};
use crate::metrics::Metrics;
use crate::store::Store;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Notify};

pub struct Ticker {
    pub store: Arc<dyn Store>,
    pub wake: Arc<Notify>,
    pub checkpoints: watch::Sender<Announced>,
    pub metrics: Arc<Metrics>,
}

impl Ticker {
    /// Ticks once at start, then once per wake-up, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.wake.notify_one();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            let started = Instant::now();
            let result = self.store.tick().await;
            self.metrics.observe_tick(started.elapsed(), result.is_ok());
            match result {
                // The NOTIFY will say the same; publishing now saves a round trip.
                Ok(c) => {
                    publish(&self.checkpoints, &self.metrics, c.0);
                }
                Err(e) => tracing::warn!(error = %e, "outpost.tick() failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeStore;
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::sync::Semaphore;

    async fn settle() {
        // Single-threaded runtime: yielding runs every task that can make progress.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bursts_coalesce_to_one_in_flight_plus_one_pending() {
        let gate = Arc::new(Semaphore::new(0));
        let store = Arc::new(FakeStore {
            tick_gate: Some(gate.clone()),
            ..FakeStore::default()
        });
        store.put("b[]", "x");
        let wake = Arc::new(Notify::new());
        let (cp_tx, cp_rx) = watch::channel(Announced::initial());
        let (stop_tx, stop_rx) = watch::channel(false);
        let ticker = Ticker {
            store: store.clone(),
            wake: wake.clone(),
            checkpoints: cp_tx,
            metrics: Arc::new(Metrics::default()),
        };
        let task = tokio::spawn(ticker.run(stop_rx));
        settle().await;
        // The startup tick is in flight, held at the gate. A burst arrives.
        for _ in 0..10 {
            wake.notify_one();
        }
        gate.add_permits(100);
        settle().await;
        assert_eq!(
            store.ticks.load(SeqCst),
            2,
            "startup tick + one for the whole burst"
        );
        assert_eq!(cp_rx.borrow().checkpoint, 1, "tick result is published");

        wake.notify_one();
        settle().await;
        assert_eq!(store.ticks.load(SeqCst), 3);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
