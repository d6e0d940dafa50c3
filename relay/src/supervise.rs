//! Background tasks (ticker, listener) that must not die silently: a task
//! that panics or returns before shutdown is logged, counted in
//! `outpost_relay_task_restarts_total{task}` and started again after a
//! backoff (200 ms, doubling to 10 s).

use crate::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs what `make` builds until `stop` turns true, restarting it whenever
/// it ends before that.
pub async fn supervise<F, Fut>(
    name: &'static str,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        let ended = tokio::spawn(make()).await;
        if *stop.borrow() {
            return;
        }
        match ended {
            Err(e) if e.is_panic() => {
                tracing::error!(
                    task = name,
                    ?backoff,
                    "background task panicked; restarting"
                )
            }
            _ => tracing::warn!(task = name, ?backoff, "background task ended; restarting"),
        }
        metrics.task_restarted(name);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    #[tokio::test(start_paused = true)]
    async fn panicking_tasks_are_restarted_and_counted_until_stop() {
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let (running_tx, mut running) = watch::channel(0u32);
        let running_tx = Arc::new(running_tx);
        let s = starts.clone();
        let stop_for_task = stop_rx.clone();
        let task = tokio::spawn(supervise("test", metrics.clone(), stop_rx, move || {
            let n = s.fetch_add(1, SeqCst) + 1;
            let running_tx = running_tx.clone();
            let mut stop = stop_for_task.clone();
            async move {
                if n <= 2 {
                    panic!("start {n} fails");
                }
                running_tx.send_replace(n);
                crate::stopped(&mut stop).await;
            }
        }));
        running.wait_for(|n| *n == 3).await.unwrap();
        assert_eq!(starts.load(SeqCst), 3);
        assert!(metrics
            .render()
            .contains("outpost_relay_task_restarts_total{task=\"test\"} 2"));
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(starts.load(SeqCst), 3, "not restarted after stop");
    }
}
