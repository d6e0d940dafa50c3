//! Process metrics as atomics, rendered in the Prometheus text format by hand
//! (a handful of series does not justify a metrics framework).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub streams_open: AtomicU64,
    pub streams_total: AtomicU64,
    pub ops_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub lines_sent: AtomicU64,
    pub checkpoint_latest: AtomicU64,
    lag_micros_sum: AtomicU64,
    lag_count: AtomicU64,
    lag_micros_max: AtomicU64,
    pub ticks: AtomicU64,
    pub tick_errors: AtomicU64,
    /// Shared `Changes` reads (one per process per checkpoint, ideally).
    pub changes_queries: AtomicU64,
    /// Stream advances derived from shared `Changes` (no per-stream query).
    pub states_shared: AtomicU64,
    /// Per-stream `sync_checkpoint` calls (stream starts and fallbacks).
    pub sync_checkpoints: AtomicU64,
    /// Pages of ops asked for by streams advancing, and those that were read.
    pub ops_pages: AtomicU64,
    pub ops_queries: AtomicU64,
    tick_micros_sum: AtomicU64,
    tick_micros_last: AtomicU64,
}

/// Decrements a gauge when dropped, so early returns and panics keep it right.
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a AtomicU64) -> GaugeGuard<'a> {
        g.fetch_add(1, Relaxed);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Time from a checkpoint being announced to a stream completing it.
    pub fn observe_checkpoint_lag(&self, d: Duration) {
        let us = d.as_micros() as u64;
        self.lag_micros_sum.fetch_add(us, Relaxed);
        self.lag_count.fetch_add(1, Relaxed);
        self.lag_micros_max.fetch_max(us, Relaxed);
    }

    pub fn observe_tick(&self, d: Duration, ok: bool) {
        let us = d.as_micros() as u64;
        self.ticks.fetch_add(1, Relaxed);
        if !ok {
            self.tick_errors.fetch_add(1, Relaxed);
        }
        self.tick_micros_sum.fetch_add(us, Relaxed);
        self.tick_micros_last.store(us, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let secs = |us: u64| us as f64 / 1e6;
        let mut series = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        series(
            "outpost_relay_connections_open",
            "gauge",
            "Open client connections.",
            g(&self.connections_open),
        );
        series(
            "outpost_relay_connections_rejected_total",
            "counter",
            "Connections refused over the cap.",
            g(&self.connections_rejected),
        );
        series(
            "outpost_relay_streams_open",
            "gauge",
            "Open sync streams.",
            g(&self.streams_open),
        );
        series(
            "outpost_relay_streams_total",
            "counter",
            "Sync streams started.",
            g(&self.streams_total),
        );
        series(
            "outpost_relay_ops_sent_total",
            "counter",
            "Ops sent in data lines.",
            g(&self.ops_sent),
        );
        series(
            "outpost_relay_lines_sent_total",
            "counter",
            "NDJSON lines sent.",
            g(&self.lines_sent),
        );
        series(
            "outpost_relay_bytes_sent_total",
            "counter",
            "Bytes of NDJSON sent.",
            g(&self.bytes_sent),
        );
        series(
            "outpost_relay_checkpoint",
            "gauge",
            "Latest checkpoint seen.",
            g(&self.checkpoint_latest),
        );
        series(
            "outpost_relay_checkpoint_lag_seconds_sum",
            "counter",
            "Sum of delays from checkpoint announced to checkpoint_complete sent.",
            secs(self.lag_micros_sum.load(Relaxed)).to_string(),
        );
        series(
            "outpost_relay_checkpoint_lag_seconds_count",
            "counter",
            "Checkpoints completed on streams after an announcement.",
            g(&self.lag_count),
        );
        series(
            "outpost_relay_checkpoint_lag_seconds_max",
            "gauge",
            "Largest such delay.",
            secs(self.lag_micros_max.load(Relaxed)).to_string(),
        );
        series(
            "outpost_relay_changes_queries_total",
            "counter",
            "Shared reads of what changed since a checkpoint.",
            g(&self.changes_queries),
        );
        series(
            "outpost_relay_states_shared_total",
            "counter",
            "Stream advances derived from a shared read, with no query of their own.",
            g(&self.states_shared),
        );
        series(
            "outpost_relay_sync_checkpoints_total",
            "counter",
            "Per-stream sync_checkpoint queries.",
            g(&self.sync_checkpoints),
        );
        series(
            "outpost_relay_ops_pages_total",
            "counter",
            "Pages of ops requested by advancing streams.",
            g(&self.ops_pages),
        );
        series(
            "outpost_relay_ops_queries_total",
            "counter",
            "Pages of ops read from the database (the rest were shared).",
            g(&self.ops_queries),
        );
        series(
            "outpost_relay_ticks_total",
            "counter",
            "outpost.tick() calls.",
            g(&self.ticks),
        );
        series(
            "outpost_relay_tick_errors_total",
            "counter",
            "Failed outpost.tick() calls.",
            g(&self.tick_errors),
        );
        series(
            "outpost_relay_tick_duration_seconds_sum",
            "counter",
            "Total time in outpost.tick().",
            secs(self.tick_micros_sum.load(Relaxed)).to_string(),
        );
        series(
            "outpost_relay_tick_duration_seconds_last",
            "gauge",
            "Duration of the last tick.",
            secs(self.tick_micros_last.load(Relaxed)).to_string(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_once_with_values() {
        let m = Metrics::default();
        {
            let _g = GaugeGuard::new(&m.streams_open);
            m.ops_sent.fetch_add(7, Relaxed);
            m.observe_tick(Duration::from_millis(1500), false);
            let text = m.render();
            assert!(text.contains("\noutpost_relay_streams_open 1\n"));
            assert!(text.contains("\noutpost_relay_ops_sent_total 7\n"));
            assert!(text.contains("\noutpost_relay_tick_duration_seconds_last 1.5\n"));
            assert!(text.contains("\noutpost_relay_tick_errors_total 1\n"));
        }
        assert!(m.render().contains("\noutpost_relay_streams_open 0\n"));
    }
}
