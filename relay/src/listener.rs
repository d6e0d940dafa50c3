//! The relay's one LISTEN connection. Checkpoint notifications are fanned out
//! to every stream through a `watch` channel, so a new checkpoint costs one
//! notification per process rather than a query per connection per poll.
//! Change notifications wake the ticker.

use crate::metrics::Metrics;
use crate::store::Store;
use futures_util::StreamExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;

/// The latest checkpoint this process knows of, and when it learned of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub checkpoint: u64,
    pub at: Instant,
}

impl Announced {
    pub fn initial() -> Announced {
        Announced {
            checkpoint: 0,
            at: Instant::now(),
        }
    }
}

/// Publishes `checkpoint` if it is newer than what the channel holds;
/// notifications can arrive out of order or twice (tick results and NOTIFY).
pub fn publish(tx: &watch::Sender<Announced>, metrics: &Metrics, checkpoint: u64) -> bool {
    let changed = tx.send_if_modified(|a| {
        if checkpoint > a.checkpoint {
            *a = Announced {
                checkpoint,
                at: Instant::now(),
            };
            true
        } else {
            false
        }
    });
    if changed {
        metrics.checkpoint_latest.fetch_max(checkpoint, Relaxed);
    }
    changed
}

pub struct Listener {
    pub database_url: String,
    pub checkpoints: watch::Sender<Announced>,
    /// Woken on `outpost_changes`; `None` when this relay does not drive ticks.
    pub tick_wake: Option<Arc<Notify>>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl Listener {
    /// Runs until `shutdown` turns true, reconnecting with backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                r = self.listen_once() => match r {
                    Ok(()) => tracing::warn!("LISTEN connection closed; reconnecting"),
                    Err(e) => tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; reconnecting"),
                },
                _ = crate::stopped(&mut shutdown) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn listen_once(&self) -> Result<(), crate::Error> {
        let (client, mut connection) = crate::pg_tls::PgConnect::parse(&self.database_url)?
            .connect()
            .await?;
        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
        // The connection must be polled for notifications to arrive at all.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if ntx.send(n).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection error");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute("LISTEN outpost_changes; LISTEN outpost_checkpoint")
            .await?;
        tracing::info!("listening for outpost_changes and outpost_checkpoint");
        // Whatever happened while we were not listening: catch up once.
        if let Some(w) = &self.tick_wake {
            w.notify_one();
        }
        match self.store.checkpoint().await {
            Ok(c) => {
                publish(&self.checkpoints, &self.metrics, c.0);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read outpost.checkpoint()"),
        }
        while let Some(n) = nrx.recv().await {
            match n.channel() {
                "outpost_changes" => {
                    if let Some(w) = &self.tick_wake {
                        w.notify_one();
                    }
                }
                "outpost_checkpoint" => match n.payload().trim().parse::<u64>() {
                    Ok(c) => {
                        publish(&self.checkpoints, &self.metrics, c);
                    }
                    Err(_) => {
                        tracing::warn!(payload = n.payload(), "bad outpost_checkpoint payload")
                    }
                },
                _ => {}
            }
        }
        driver.abort();
        drop(client);
        Ok(())
    }
}
