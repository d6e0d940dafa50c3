//! Freshness at connect: the first checkpoint a stream completes includes
//! every transaction that committed before the relay received its request.
//!
//! One barrier per relay, shared by every stream. With this relay driving
//! ticks ([`Freshness::Ticks`]), each tick takes a generation number as it
//! starts; a request notes the generation of the latest tick started when it
//! arrives and waits until a later one has finished successfully. A tick
//! that starts after the request reads every transaction committed before it
//! (`outpost.tick()` runs in READ COMMITTED after taking its lock), so its
//! checkpoint covers them. Any number of requests arriving together wait for
//! the same tick, and their wake-ups coalesce in the ticker: 10,000 connects
//! cost one or two ticks, not 10,000.
//!
//! Without ticks of its own ([`Freshness::Announced`]) the relay cannot tell
//! when the process that ticks has read a commit: a request waits for the
//! next checkpoint announced after it arrived, at most a bound. That covers
//! a commit the ticking process picks up within the bound; an idle database
//! announces nothing, so every connect then waits the whole bound (set it
//! to 0 to skip the wait).
//!
//! A barrier that is not reached in time (ticks failing, database down) is
//! given up: the stream starts from the latest checkpoint and the timeout is
//! counted in `outpost_relay_freshness_timeouts_total`.

use crate::listener::Announced;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The tick-generation barrier of a relay that drives ticks.
pub struct Ticks {
    /// Generation of the latest tick started (0: none yet).
    started: AtomicU64,
    /// Generation and checkpoint of the latest tick that finished successfully.
    done: watch::Sender<(u64, u64)>,
    /// The ticker's wake-up, so a waiting request need not wait for a fallback tick.
    wake: Arc<Notify>,
}

impl Ticks {
    pub fn new(wake: Arc<Notify>) -> Ticks {
        Ticks {
            started: AtomicU64::new(0),
            done: watch::channel((0, 0)).0,
            wake,
        }
    }

    /// Called by the ticker right before it calls `outpost.tick()`.
    pub fn starting(&self) -> u64 {
        self.started.fetch_add(1, SeqCst) + 1
    }

    /// Called by the ticker when tick `generation` succeeded with `checkpoint`.
    pub fn finished(&self, generation: u64, checkpoint: u64) {
        self.done.send_if_modified(|g| {
            let newer = generation > g.0;
            if newer {
                *g = (generation, checkpoint.max(g.1));
            }
            newer
        });
    }
}

/// What a request must wait for, noted when it arrives.
pub enum Mark {
    /// A successful tick of at least this generation, and its checkpoint
    /// announced to the streams.
    Tick(u64),
    /// Any checkpoint announced after the receiver's current one.
    Announcement(watch::Receiver<Announced>),
}

#[derive(Clone)]
pub enum Freshness {
    Ticks {
        ticks: Arc<Ticks>,
        wait: Duration,
        /// What streams are told of. With hot standbys it trails the ticks
        /// until the standby streams read from has replayed them.
        announced: watch::Receiver<Announced>,
    },
    Announced {
        checkpoints: watch::Receiver<Announced>,
        wait: Duration,
    },
}

impl Freshness {
    /// Notes what a request arriving now must wait for.
    pub fn arrived(&self) -> Mark {
        match self {
            Freshness::Ticks { ticks, .. } => {
                let want = ticks.started.load(SeqCst) + 1;
                ticks.wake.notify_one();
                Mark::Tick(want)
            }
            Freshness::Announced { checkpoints, .. } => {
                let mut rx = checkpoints.clone();
                rx.borrow_and_update();
                Mark::Announcement(rx)
            }
        }
    }

    /// Waits until `mark` is reached, within the bound. `false`: given up.
    pub async fn reached(&self, mark: Mark, metrics: &Metrics) -> bool {
        let (wait, reached) = match (self, mark) {
            (
                Freshness::Ticks {
                    ticks,
                    wait,
                    announced,
                },
                Mark::Tick(want),
            ) => {
                let mut rx = ticks.done.subscribe();
                let mut announced = announced.clone();
                let reached = tokio::time::timeout(*wait, async {
                    let cp = rx.wait_for(|g| g.0 >= want).await.ok()?.1;
                    announced.wait_for(|a| a.checkpoint >= cp).await.ok()
                })
                .await
                .is_ok_and(|r| r.is_some());
                (*wait, reached)
            }
            (Freshness::Announced { wait, .. }, Mark::Announcement(mut rx)) => {
                if wait.is_zero() {
                    return true;
                }
                let reached = tokio::time::timeout(*wait, rx.changed())
                    .await
                    .is_ok_and(|r| r.is_ok());
                (*wait, reached)
            }
            _ => unreachable!("a mark is only waited for on the barrier that made it"),
        };
        metrics.freshness_waits.inc();
        if !reached && !wait.is_zero() {
            metrics.freshness_timeouts.inc();
            tracing::warn!(
                ?wait,
                "no fresh checkpoint in time; the stream starts from the latest one"
            );
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn waits_for_a_tick_that_started_after_the_request() {
        let wake = Arc::new(Notify::new());
        let ticks = Arc::new(Ticks::new(wake.clone()));
        let (_announce, announced) = watch::channel(Announced::initial());
        let fresh = Arc::new(Freshness::Ticks {
            ticks: ticks.clone(),
            wait: Duration::from_secs(5),
            announced,
        });
        let metrics = Arc::new(Metrics::default());
        // A tick is in flight when the request arrives: it does not count.
        let in_flight = ticks.starting();
        let mark = fresh.arrived();
        let waiter = {
            let (fresh, metrics) = (fresh.clone(), metrics.clone());
            tokio::spawn(async move { fresh.reached(mark, &metrics).await })
        };
        ticks.finished(in_flight, 0);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a tick that began earlier is not enough"
        );
        // The request woke the ticker.
        tokio::time::timeout(Duration::from_millis(1), wake.notified())
            .await
            .expect("the request wakes the ticker");
        let next = ticks.starting();
        ticks.finished(next, 0);
        assert!(waiter.await.unwrap());
        assert_eq!(metrics.freshness_timeouts.get(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn with_standbys_waits_until_the_ticks_checkpoint_is_announced() {
        let ticks = Arc::new(Ticks::new(Arc::new(Notify::new())));
        let (announce, announced) = watch::channel(Announced::initial());
        let fresh = Arc::new(Freshness::Ticks {
            ticks: ticks.clone(),
            wait: Duration::from_secs(5),
            announced,
        });
        let metrics = Arc::new(Metrics::default());
        let mark = fresh.arrived();
        let waiter = {
            let (fresh, metrics) = (fresh.clone(), metrics.clone());
            tokio::spawn(async move { fresh.reached(mark, &metrics).await })
        };
        let g = ticks.starting();
        ticks.finished(g, 42);
        crate::listener::publish(&announce, &Metrics::default(), 41);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the standby has not replayed the tick's checkpoint"
        );
        crate::listener::publish(&announce, &Metrics::default(), 42);
        assert!(waiter.await.unwrap());
        assert_eq!(metrics.freshness_timeouts.get(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn gives_up_after_the_bound() {
        let ticks = Arc::new(Ticks::new(Arc::new(Notify::new())));
        let (_announce, announced) = watch::channel(Announced::initial());
        let fresh = Freshness::Ticks {
            ticks: ticks.clone(),
            wait: Duration::from_secs(5),
            announced,
        };
        let metrics = Metrics::default();
        let mark = fresh.arrived();
        assert!(!fresh.reached(mark, &metrics).await);
        assert_eq!(metrics.freshness_timeouts.get(), 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn without_ticks_waits_for_the_next_announcement() {
        let (tx, rx) = watch::channel(Announced::initial());
        crate::listener::publish(&tx, &Metrics::default(), 3);
        let fresh = Arc::new(Freshness::Announced {
            checkpoints: rx,
            wait: Duration::from_secs(1),
        });
        let metrics = Arc::new(Metrics::default());
        // An announcement from before the request does not count.
        let mark = fresh.arrived();
        let waiter = {
            let (fresh, metrics) = (fresh.clone(), metrics.clone());
            tokio::spawn(async move { fresh.reached(mark, &metrics).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        crate::listener::publish(&tx, &Metrics::default(), 4);
        assert!(waiter.await.unwrap());
        // Nothing announced: the bound.
        let mark = fresh.arrived();
        assert!(!fresh.reached(mark, &metrics).await);
        assert_eq!(metrics.freshness_timeouts.get(), 1);
    }
}
