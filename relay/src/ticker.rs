//! Drives `outpost.tick()`. Bursts of change notifications coalesce: a
//! `Notify` holds at most one permit, so while a tick runs any number of
//! wake-ups leave exactly one more tick pending. The extension serializes
//! ticks itself, so several relays ticking the same database is safe.
//!
//! Capture triggers wake at most once per 5 ms (NOTIFY serializes commits),
//! so a commit right after a wake-up may send none, and the tick that wake-up
//! caused may start before that commit. Hence a trailing tick shortly after
//! every wake-up, and a fallback tick when nothing woke the ticker for a
//! while (a commit delayed past the trailing tick, a lost notification).
//!
//! Compaction is scheduled here too: once `compact_every` op ids were
//! allocated since the last compaction it started, the ticker starts
//! `CALL outpost.compact_online()` on its own task (one at a time; ticks go on meanwhile).

use crate::freshness::Ticks;
use crate::listener::{publish, Announced};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Ticker {
    pub store: Arc<dyn Store>,
    pub wake: Arc<Notify>,
    pub checkpoints: watch::Sender<Announced>,
    pub metrics: Arc<Metrics>,
    /// One more tick this long after a wake-up (`None`: none).
    pub trailing: Option<Duration>,
    /// A tick when nothing happened for this long.
    pub fallback: Duration,
    /// Compact after this many op ids (`None`: never).
    pub compact_every: Option<u64>,
    /// Told of every successful tick (for `/health`).
    pub liveness: Arc<Liveness>,
    /// Generations of ticks started and finished, for the freshness barrier.
    pub ticks: Arc<Ticks>,
}

/// Clears the "compaction running" flag when the compaction task ends,
/// panics included, so that a failed compaction never stops later ones.
struct Compacting(Arc<AtomicBool>);

impl Drop for Compacting {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

/// Defaults for [`Ticker::trailing`] and [`Ticker::fallback`].
pub const TRAILING: Duration = Duration::from_millis(10);
pub const FALLBACK: Duration = Duration::from_secs(1);

impl Ticker {
    /// Ticks once at start, then once per wake-up, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.wake.notify_one();
        let mut trailing_at: Option<tokio::time::Instant> = None;
        let compacting = Arc::new(AtomicBool::new(false));
        let mut compacted_at: Option<u64> = None;
        loop {
            let fallback = tokio::time::sleep(self.fallback);
            let trailing = tokio::time::sleep_until(
                trailing_at.unwrap_or_else(|| tokio::time::Instant::now() + self.fallback),
            );
            tokio::select! {
                _ = self.wake.notified() => {
                    trailing_at = self.trailing.map(|t| tokio::time::Instant::now() + t);
                }
                _ = trailing, if trailing_at.is_some() => trailing_at = None,
                _ = fallback => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            let generation = self.ticks.starting();
            let started = Instant::now();
            let result = self.store.tick().await;
            self.metrics.observe_tick(started.elapsed(), result.is_ok());
            match result {
                // The NOTIFY will say the same; publishing now saves a round trip.
                Ok(c) => {
                    self.liveness.tick_ok();
                    publish(&self.checkpoints, &self.metrics, c.0);
                    self.ticks.finished(generation, c.0);
                    let since = *compacted_at.get_or_insert(c.0);
                    if let Some(every) = self.compact_every {
                        if c.0.saturating_sub(since) >= every && !compacting.swap(true, SeqCst) {
                            compacted_at = Some(c.0);
                            let store = self.store.clone();
                            let flag = Compacting(compacting.clone());
                            tokio::spawn(async move {
                                let _running = flag;
                                match store.compact().await {
                                    Ok(n) => {
                                        tracing::info!(removed = n, "outpost.compact_online() done")
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "outpost.compact_online() failed")
                                    }
                                }
                            });
                        }
                    }
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
    use tokio::sync::Semaphore;

    /// A ticker on `store` with the given timing; the tests vary nothing else.
    fn ticker(
        store: &Arc<FakeStore>,
        wake: &Arc<Notify>,
        checkpoints: watch::Sender<Announced>,
        trailing: Option<Duration>,
        fallback: Duration,
        compact_every: Option<u64>,
    ) -> Ticker {
        Ticker {
            store: store.clone(),
            wake: wake.clone(),
            checkpoints,
            metrics: Arc::new(Metrics::default()),
            trailing,
            fallback,
            compact_every,
            liveness: Arc::new(Liveness::new(true)),
            ticks: Arc::new(Ticks::new(wake.clone())),
        }
    }

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
        let ticker = ticker(&store, &wake, cp_tx, None, Duration::from_secs(3600), None);
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

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn trailing_tick_after_a_wake_up_and_fallback_when_idle() {
        let store = Arc::new(FakeStore::default());
        let wake = Arc::new(Notify::new());
        let (cp_tx, _cp_rx) = watch::channel(Announced::initial());
        let (stop_tx, stop_rx) = watch::channel(false);
        let ticker = ticker(
            &store,
            &wake,
            cp_tx,
            Some(Duration::from_millis(10)),
            Duration::from_secs(1),
            None,
        );
        let task = tokio::spawn(ticker.run(stop_rx));
        settle().await;
        // The startup tick (a wake-up), then its trailing tick 10 ms later.
        assert_eq!(store.ticks.load(SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.ticks.load(SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(store.ticks.load(SeqCst), 2, "trailing tick");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.ticks.load(SeqCst), 2, "nothing until the fallback");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.ticks.load(SeqCst), 3, "fallback tick after 1 s idle");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn compaction_starts_after_enough_op_ids() {
        let store = Arc::new(FakeStore::default());
        let wake = Arc::new(Notify::new());
        let (cp_tx, _cp_rx) = watch::channel(Announced::initial());
        let (stop_tx, stop_rx) = watch::channel(false);
        let ticker = ticker(
            &store,
            &wake,
            cp_tx,
            None,
            Duration::from_secs(3600),
            Some(3),
        );
        let task = tokio::spawn(ticker.run(stop_rx));
        settle().await;
        for (puts, want) in [(2, 0), (1, 1), (1, 1), (3, 2)] {
            for _ in 0..puts {
                store.put("b[]", "x");
            }
            wake.notify_one();
            settle().await;
            assert_eq!(
                store.compactions.load(SeqCst),
                want,
                "after {puts} more ops"
            );
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
