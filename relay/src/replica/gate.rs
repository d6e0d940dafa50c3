//! [`Gate`]: announces a checkpoint to the streams only once the standby
//! they read from shows it.
//!
//! `NOTIFY` is not replicated, so the relay learns of checkpoints from the
//! primary (its own ticks, and `LISTEN` there: the channel the ticker and
//! listener publish to). For each new one the gate polls the standby in
//! rotation (`outpost.checkpoint()`, which reads the checkpoint row: once it
//! is visible, the whole tick that wrote it was replayed) every millisecond
//! at first, then every 5 ms, until it shows it, and then publishes it to
//! the streams' channel. The delay is observed in
//! `outpost_relay_replica_wait_seconds`. Polling the standby is the only way
//! to wait for replay there (Postgres offers no LSN wait a client can block
//! on before 19), and a checkpoint-row poll also covers what an LSN
//! comparison would (`pg_last_wal_replay_lsn()` past the tick's commit).
//!
//! Every standby is also polled every 250 ms for health: one that does not
//! answer, or trails the primary's checkpoints by more than
//! `OUTPOST_REPLICA_MAX_LAG`, leaves the rotation (logged, counted in
//! `outpost_relay_replica_removed_total`); reads move to the next standby
//! that shows everything already announced, or to the primary. While reads
//! are on the primary and a standby is back in rotation, announcements
//! follow that standby, so that it catches up with them and reads move
//! back. A standby that stops being in recovery (promoted) is logged and
//! kept: it still has every checkpoint it showed.

use super::rotation::{choose, in_rotation, History, View};
use super::Replicas;
use crate::listener::Announced;
use crate::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Poll intervals while the standby in rotation trails the primary.
const FAST_POLL: Duration = Duration::from_millis(1);
const FAST_POLLS: u32 = 20;
const SLOW_POLL: Duration = Duration::from_millis(5);
/// Health poll of every standby.
pub const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// A poll not answered in this time counts as the standby being down.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Gate {
    pub replicas: Arc<Replicas>,
    /// Checkpoints announced by the primary (ticker, listener).
    pub primary: watch::Receiver<Announced>,
    /// Checkpoints announced to the streams.
    pub published: watch::Sender<Announced>,
    pub metrics: Arc<Metrics>,
    pub max_lag: Duration,
}

impl Gate {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let members = &self.replicas.members;
        let n = members.len();
        let mut primary = self.primary.clone();
        let mut views = vec![
            View {
                up: false,
                visible: 0,
                in_rotation: false,
            };
            n
        ];
        let mut recovering: Vec<Option<bool>> = vec![None; n];
        let mut polled: Vec<Option<Instant>> = vec![None; n];
        let mut history = History::default();
        let mut fast_polls = 0u32;
        let mut check_all = true;
        loop {
            let p = *primary.borrow_and_update();
            history.push(p);
            let published = self.published.borrow().checkpoint;
            let target = self.replicas.target();
            let lead = target.or_else(|| views.iter().position(|v| v.in_rotation));
            let behind = published < p.checkpoint;

            let now = Instant::now();
            let due: Vec<usize> = (0..n)
                .filter(|&i| {
                    check_all
                        || (behind && lead == Some(i))
                        || polled[i].is_none_or(|t| now.duration_since(t) >= HEALTH_EVERY)
                })
                .collect();
            check_all = false;
            let polls = due.iter().map(|&i| async move {
                let r = tokio::time::timeout(POLL_TIMEOUT, members[i].store.replica_status()).await;
                (i, r)
            });
            for (i, r) in futures_util::future::join_all(polls).await {
                polled[i] = Some(Instant::now());
                let m = &members[i];
                match r {
                    Ok(Ok(s)) => {
                        m.observe(s.checkpoint.0);
                        if !views[i].up {
                            tracing::info!(replica = %m.name, checkpoint = s.checkpoint.0, "standby answers");
                        }
                        views[i].up = true;
                        if recovering[i] == Some(true) && s.in_recovery == Some(false) {
                            tracing::warn!(replica = %m.name, "standby was promoted (no longer in recovery); reads continue there");
                        }
                        recovering[i] = s.in_recovery;
                    }
                    Ok(Err(e)) => {
                        if views[i].up {
                            tracing::warn!(replica = %m.name, error = %e, "standby does not answer");
                        }
                        views[i].up = false;
                    }
                    Err(_) => {
                        if views[i].up {
                            tracing::warn!(replica = %m.name, timeout = ?POLL_TIMEOUT, "standby does not answer in time");
                        }
                        views[i].up = false;
                    }
                }
            }

            let now = Instant::now();
            for (i, m) in members.iter().enumerate() {
                let v = &mut views[i];
                v.visible = m.visible();
                let lag = history.lag(v.visible, now);
                let is = in_rotation(v.in_rotation, v.up, lag, self.max_lag);
                if v.in_rotation && !is {
                    let reason = if v.up { "lagging" } else { "down" };
                    tracing::warn!(replica = %m.name, reason, ?lag, max_lag = ?self.max_lag, "standby taken out of rotation");
                    self.metrics.replica_removed(&m.name, reason);
                } else if !v.in_rotation && is {
                    tracing::info!(replica = %m.name, checkpoint = v.visible, "standby in rotation");
                }
                v.in_rotation = is;
                self.metrics.set_replica(&m.name, lag, is);
            }
            let next = choose(target, &views, published);
            if next != target {
                match next {
                    Some(i) => tracing::info!(replica = %members[i].name, "reads go to this standby"),
                    None => tracing::warn!("no standby in rotation shows every announced checkpoint; reads go to the primary"),
                }
                self.replicas.set_target(next);
            }
            // Announcements follow the standby reads go to, or the one they
            // will go to once it catches up; with none, the primary.
            let lead = next.or_else(|| views.iter().position(|v| v.in_rotation));
            let visible = match lead {
                Some(i) => members[i].visible(),
                None => p.checkpoint,
            };
            if visible > published {
                let first = history.covered(published, visible).next().map(|a| a.at);
                for a in history.covered(published, visible) {
                    self.metrics.observe_replica_wait(a.at.elapsed());
                }
                let at = first.unwrap_or_else(Instant::now);
                self.published.send_if_modified(|a| {
                    let newer = visible > a.checkpoint;
                    if newer {
                        *a = Announced {
                            checkpoint: visible,
                            at,
                        };
                    }
                    newer
                });
                self.metrics
                    .checkpoint_latest
                    .inner()
                    .fetch_max(i64::try_from(visible).unwrap_or(i64::MAX), Relaxed);
            }
            history.prune(
                views
                    .iter()
                    .map(|v| v.visible)
                    .min()
                    .unwrap_or(0)
                    .min(visible),
            );

            let behind = visible.max(published) < p.checkpoint && lead.is_some();
            if behind {
                fast_polls += 1;
                let wait = if fast_polls <= FAST_POLLS {
                    FAST_POLL
                } else {
                    SLOW_POLL
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.replicas.trouble.notified() => check_all = true,
                    _ = crate::stopped(&mut stop) => return,
                }
            } else {
                fast_polls = 0;
                let next_health = polled
                    .iter()
                    .filter_map(|t| *t)
                    .min()
                    .map_or(Duration::ZERO, |t| HEALTH_EVERY.saturating_sub(t.elapsed()));
                tokio::select! {
                    r = primary.changed() => if r.is_err() { return },
                    _ = self.replicas.trouble.notified() => check_all = true,
                    _ = tokio::time::sleep(next_health) => {}
                    _ = crate::stopped(&mut stop) => return,
                }
            }
        }
    }
}
