//! Process metrics, exposed at `GET /metrics` in the OpenMetrics text format
//! by `prometheus-client`. Names are part of the operator's interface (the
//! README's monitoring table): counters are registered without `_total`,
//! which the encoder appends.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A gauge of seconds.
type Seconds = Gauge<f64, AtomicU64>;

pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub streams_open: Gauge,
    pub streams_total: Counter,
    /// Streams closed because their client took no line for the send timeout.
    pub streams_stalled: Counter,
    pub ops_sent: Counter,
    pub bytes_sent: Counter,
    pub lines_sent: Counter,
    /// Bytes of `/sync/stream` bodies as sent (after compression).
    pub wire_bytes_sent: Counter,
    pub checkpoint_latest: Gauge,
    checkpoint_lag: Histogram,
    checkpoint_lag_max: Seconds,
    pub ticks: Counter,
    pub tick_errors: Counter,
    /// Stream starts that waited for the freshness barrier, and those that gave up.
    pub freshness_waits: Counter,
    pub freshness_timeouts: Counter,
    tick_duration: Histogram,
    tick_duration_last: Seconds,
    /// Time a stream waited for its client to take a line (backpressure).
    stream_send: Histogram,
    /// Shared `Changes` reads (one per process per checkpoint, ideally).
    pub changes_queries: Counter,
    /// Stream advances derived from shared `Changes` (no per-stream query).
    pub states_shared: Counter,
    /// Per-stream `sync_checkpoint` calls (stream starts and fallbacks).
    pub sync_checkpoints: Counter,
    /// Pages of ops asked for by streams advancing, and those that were read.
    pub ops_pages: Counter,
    pub ops_queries: Counter,
    /// Certificate reloads on SIGHUP, and those that failed.
    pub tls_reloads: Counter,
    pub tls_reload_errors: Counter,
    /// Background tasks restarted after a panic or an early end, by task.
    task_restarts: Family<Vec<(String, String)>, Counter>,
    /// Hot standbys (see [`crate::replica`]): time from a checkpoint announced
    /// by the primary to it being visible on the standby streams read from.
    replica_wait: Histogram,
    /// Per standby: how far behind the primary's checkpoints it is.
    replica_lag: Family<Vec<(String, String)>, Seconds>,
    /// Per standby: 1 while it serves reads.
    replica_in_rotation: Family<Vec<(String, String)>, Gauge>,
    /// Standbys taken out of rotation, by standby and reason (down, lagging).
    replica_removed: Family<Vec<(String, String)>, Counter>,
    /// Reads that went to the primary although standbys are configured.
    pub replica_fallback_reads: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_rejected: Counter::default(),
            streams_open: Gauge::default(),
            streams_total: Counter::default(),
            streams_stalled: Counter::default(),
            ops_sent: Counter::default(),
            bytes_sent: Counter::default(),
            lines_sent: Counter::default(),
            wire_bytes_sent: Counter::default(),
            checkpoint_latest: Gauge::default(),
            // 0.5 ms .. 16 s
            checkpoint_lag: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            checkpoint_lag_max: Seconds::default(),
            ticks: Counter::default(),
            tick_errors: Counter::default(),
            freshness_waits: Counter::default(),
            freshness_timeouts: Counter::default(),
            // 1 ms .. 16 s
            tick_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            tick_duration_last: Seconds::default(),
            // 0.1 ms .. 26 s
            stream_send: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            changes_queries: Counter::default(),
            states_shared: Counter::default(),
            sync_checkpoints: Counter::default(),
            ops_pages: Counter::default(),
            ops_queries: Counter::default(),
            tls_reloads: Counter::default(),
            tls_reload_errors: Counter::default(),
            task_restarts: Family::default(),
            // 0.1 ms .. 26 s
            replica_wait: Histogram::new(exponential_buckets(0.0001, 2.0, 19)),
            replica_lag: Family::default(),
            replica_in_rotation: Family::default(),
            replica_removed: Family::default(),
            replica_fallback_reads: Counter::default(),
            registry: Registry::default(),
        };
        m.registered()
    }
}

/// Increments a gauge while alive, so early returns and panics keep it right.
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a Gauge) -> GaugeGuard<'a> {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "outpost_relay_connections_open",
            "Open client connections.",
            self.connections_open.clone(),
        );
        r.register(
            "outpost_relay_connections_rejected",
            "Connections refused over the cap.",
            self.connections_rejected.clone(),
        );
        r.register(
            "outpost_relay_streams_open",
            "Open sync streams.",
            self.streams_open.clone(),
        );
        r.register(
            "outpost_relay_streams",
            "Sync streams started.",
            self.streams_total.clone(),
        );
        r.register(
            "outpost_relay_streams_stalled",
            "Streams closed because their client took no line for OUTPOST_SEND_TIMEOUT_SECS.",
            self.streams_stalled.clone(),
        );
        r.register(
            "outpost_relay_ops_sent",
            "Ops sent in data lines.",
            self.ops_sent.clone(),
        );
        r.register(
            "outpost_relay_lines_sent",
            "NDJSON lines sent.",
            self.lines_sent.clone(),
        );
        r.register(
            "outpost_relay_bytes_sent",
            "Bytes of NDJSON sent (before compression).",
            self.bytes_sent.clone(),
        );
        r.register(
            "outpost_relay_wire_bytes_sent",
            "Bytes of sync stream bodies as sent (after compression).",
            self.wire_bytes_sent.clone(),
        );
        r.register(
            "outpost_relay_checkpoint",
            "Latest checkpoint seen.",
            self.checkpoint_latest.clone(),
        );
        r.register(
            "outpost_relay_checkpoint_lag_seconds",
            "Delay from a checkpoint announced to its checkpoint_complete sent on a stream.",
            self.checkpoint_lag.clone(),
        );
        r.register(
            "outpost_relay_checkpoint_lag_seconds_max",
            "Largest such delay.",
            self.checkpoint_lag_max.clone(),
        );
        r.register(
            "outpost_relay_stream_send_seconds",
            "Time a stream waited for its client to take a line.",
            self.stream_send.clone(),
        );
        r.register(
            "outpost_relay_changes_queries",
            "Shared reads of what changed since a checkpoint.",
            self.changes_queries.clone(),
        );
        r.register(
            "outpost_relay_states_shared",
            "Stream advances derived from a shared read, with no query of their own.",
            self.states_shared.clone(),
        );
        r.register(
            "outpost_relay_sync_checkpoints",
            "Per-stream sync_checkpoint queries.",
            self.sync_checkpoints.clone(),
        );
        r.register(
            "outpost_relay_ops_pages",
            "Pages of ops requested by advancing streams.",
            self.ops_pages.clone(),
        );
        r.register(
            "outpost_relay_ops_queries",
            "Pages of ops read from the database (the rest were shared).",
            self.ops_queries.clone(),
        );
        r.register(
            "outpost_relay_tls_reloads",
            "TLS certificate reloads (SIGHUP).",
            self.tls_reloads.clone(),
        );
        r.register(
            "outpost_relay_tls_reload_errors",
            "TLS certificate reloads that failed (the previous certificate stays).",
            self.tls_reload_errors.clone(),
        );
        r.register(
            "outpost_relay_task_restarts",
            "Background tasks (ticker, listener) restarted after a panic or an early end.",
            self.task_restarts.clone(),
        );
        r.register(
            "outpost_relay_ticks",
            "outpost.tick() calls.",
            self.ticks.clone(),
        );
        r.register(
            "outpost_relay_tick_errors",
            "Failed outpost.tick() calls.",
            self.tick_errors.clone(),
        );
        r.register(
            "outpost_relay_freshness_waits",
            "Stream starts that waited for a checkpoint covering every commit before the request.",
            self.freshness_waits.clone(),
        );
        r.register(
            "outpost_relay_freshness_timeouts",
            "Stream starts that gave up waiting for a fresh checkpoint and started from the latest.",
            self.freshness_timeouts.clone(),
        );
        r.register(
            "outpost_relay_tick_duration_seconds",
            "Time in outpost.tick().",
            self.tick_duration.clone(),
        );
        r.register(
            "outpost_relay_tick_duration_seconds_last",
            "Duration of the last tick.",
            self.tick_duration_last.clone(),
        );
        r.register(
            "outpost_relay_replica_wait_seconds",
            "Delay from a checkpoint announced by the primary to it being visible on the standby streams read from.",
            self.replica_wait.clone(),
        );
        r.register(
            "outpost_relay_replica_lag_seconds",
            "How long the standby has been behind the primary's latest checkpoint (0: caught up).",
            self.replica_lag.clone(),
        );
        r.register(
            "outpost_relay_replica_in_rotation",
            "1 while the standby serves this relay's reads.",
            self.replica_in_rotation.clone(),
        );
        r.register(
            "outpost_relay_replica_removed",
            "Standbys taken out of rotation (reason: down, lagging).",
            self.replica_removed.clone(),
        );
        r.register(
            "outpost_relay_replica_fallback_reads",
            "Sync-path reads sent to the primary because no standby could serve them.",
            self.replica_fallback_reads.clone(),
        );
        self
    }

    pub fn observe_replica_wait(&self, d: Duration) {
        self.replica_wait.observe(d.as_secs_f64());
    }

    pub fn set_replica(&self, replica: &str, lag: Duration, in_rotation: bool) {
        let l = vec![("replica".to_string(), replica.to_string())];
        self.replica_lag.get_or_create(&l).set(lag.as_secs_f64());
        self.replica_in_rotation
            .get_or_create(&l)
            .set(i64::from(in_rotation));
    }

    pub fn replica_removed(&self, replica: &str, reason: &str) {
        self.replica_removed
            .get_or_create(&vec![
                ("replica".to_string(), replica.to_string()),
                ("reason".to_string(), reason.to_string()),
            ])
            .inc();
    }

    /// Time from a checkpoint being announced to a stream completing it.
    pub fn observe_checkpoint_lag(&self, d: Duration) {
        let secs = d.as_secs_f64();
        self.checkpoint_lag.observe(secs);
        // Non-negative floats order like their bit patterns.
        self.checkpoint_lag_max
            .inner()
            .fetch_max(secs.to_bits(), Relaxed);
    }

    pub fn observe_tick(&self, d: Duration, ok: bool) {
        self.ticks.inc();
        if !ok {
            self.tick_errors.inc();
        }
        self.tick_duration.observe(d.as_secs_f64());
        self.tick_duration_last.set(d.as_secs_f64());
    }

    pub fn task_restarted(&self, task: &str) {
        self.task_restarts
            .get_or_create(&vec![("task".to_string(), task.to_string())])
            .inc();
    }

    /// Time one line waited to be taken by its stream's client.
    pub fn observe_send(&self, d: Duration) {
        self.stream_send.observe(d.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
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
            m.ops_sent.inc_by(7);
            m.observe_tick(Duration::from_millis(1500), false);
            let text = m.render();
            assert!(text.contains("\noutpost_relay_streams_open 1\n"));
            assert!(text.contains("\noutpost_relay_ops_sent_total 7\n"));
            assert!(text.contains("\noutpost_relay_tick_duration_seconds_last 1.5\n"));
            assert!(text.contains("\noutpost_relay_tick_errors_total 1\n"));
        }
        assert!(m.render().contains("\noutpost_relay_streams_open 0\n"));
    }

    #[test]
    fn histograms_give_quantiles_and_the_lag_keeps_its_maximum() {
        let m = Metrics::default();
        for ms in [1, 2, 3, 900] {
            m.observe_checkpoint_lag(Duration::from_millis(ms));
        }
        m.observe_checkpoint_lag(Duration::from_millis(5));
        m.observe_send(Duration::from_micros(50));
        let text = m.render();
        assert!(
            text.contains("\noutpost_relay_checkpoint_lag_seconds_count 5\n"),
            "{text}"
        );
        assert!(
            text.contains("\noutpost_relay_checkpoint_lag_seconds_max 0.9\n"),
            "{text}"
        );
        // Three of five at or under 4 ms: the p50 is readable from the buckets.
        assert!(
            text.contains("outpost_relay_checkpoint_lag_seconds_bucket{le=\"0.004\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\noutpost_relay_stream_send_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE outpost_relay_tick_duration_seconds histogram"));
        for name in ["connections_open", "streams_open", "checkpoint"] {
            let family = format!("# TYPE outpost_relay_{name} gauge\n");
            assert_eq!(text.matches(&family).count(), 1, "{name}");
        }
    }
}
