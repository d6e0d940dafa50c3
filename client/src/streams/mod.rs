//! Sync Streams subscriptions on the client, sans-IO: which subscriptions a
//! request carries, when an unsubscribed one expires, and (in [`resolve`])
//! what a checkpoint says about each of them.
//!
//! The semantics are PowerSync's SDKs': `subscribe` stores the subscription
//! (`ps_stream_subscriptions`) with a TTL (default one day) and holds it while
//! a handle lives; a held subscription is always requested. Once the last
//! handle is gone its TTL starts: it stays in the request, and its rows stay
//! local, until `expires_at`; then it leaves the request, the next checkpoint
//! no longer lists its buckets, and their rows are removed locally.
//! `unsubscribe_all` drops it from the request at once. Times are
//! milliseconds since the Unix epoch, passed in (the clock is injected).

pub mod resolve;

use outpost_protocol::{StreamSubscription, StreamsRequest};
use std::collections::BTreeSet;
use std::time::Duration;

pub use crate::stream_key::StreamKey;
pub use resolve::{
    mark_synced, reconcile, server_view, statuses, Reconcile, ServerInfo, StreamStatus,
};

/// How long an unsubscribed stream's data stays when `subscribe` gives no TTL
/// (PowerSync's default: one day).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// Options of `subscribe`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SubscribeOptions {
    /// How long the data stays after the last handle is gone (default [`DEFAULT_TTL`]).
    pub ttl: Option<Duration>,
    /// Overrides the stream's priority (0–3) for this subscription's buckets.
    pub priority: Option<i32>,
}

impl SubscribeOptions {
    pub fn ttl(mut self, ttl: Duration) -> SubscribeOptions {
        self.ttl = Some(ttl);
        self
    }

    pub fn priority(mut self, priority: i32) -> SubscribeOptions {
        self.priority = Some(priority);
        self
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl.unwrap_or(DEFAULT_TTL).as_secs() as i64
    }
}

/// One row of `ps_stream_subscriptions`.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSubscription {
    pub id: i64,
    pub key: StreamKey,
    /// The server listed the stream in the last checkpoint.
    pub active: bool,
    /// The server reported the stream as a default one (auto-subscribed or a
    /// bucket definition).
    pub is_default: bool,
    pub priority: Option<i32>,
    /// Seconds; `None`: not subscribed by the app (a default stream tracked
    /// for its status, or after `unsubscribe_all`).
    pub ttl: Option<i64>,
    /// When the data goes if no handle holds it by then.
    pub expires_at: Option<i64>,
    /// The last time a handle held it.
    pub last_active_at: Option<i64>,
    pub last_synced_at: Option<i64>,
}

impl LocalSubscription {
    /// Subscribed by the app (as opposed to a default stream tracked for status).
    pub fn explicit(&self) -> bool {
        self.ttl.is_some()
    }

    /// Whether the request carries it: explicit, and held or not expired.
    pub fn requested(&self, held: bool, now: i64) -> bool {
        self.explicit() && (held || self.expires_at.is_some_and(|e| e > now))
    }
}

/// The rows to delete before building a request: explicit ones that expired
/// unheld, and those neither subscribed nor listed by the server (PowerSync's
/// rule, with "held" standing for its in-memory set of active handles).
pub fn outdated(rows: &[LocalSubscription], held: &BTreeSet<StreamKey>, now: i64) -> Vec<i64> {
    rows.iter()
        .filter(|r| {
            let h = held.contains(&r.key);
            if r.explicit() {
                !r.requested(h, now)
            } else {
                !r.active && !h
            }
        })
        .map(|r| r.id)
        .collect()
}

/// The subscriptions a request carries, in row order (the order of
/// subscribing), each with its priority override.
pub fn requested(
    rows: &[LocalSubscription],
    held: &BTreeSet<StreamKey>,
    now: i64,
) -> Vec<StreamSubscription> {
    rows.iter()
        .filter(|r| r.requested(held.contains(&r.key), now))
        .map(|r| StreamSubscription {
            stream: r.key.name.clone(),
            parameters: r.key.parameters(),
            override_priority: r.priority,
        })
        .collect()
}

/// The request's `streams` field: the requested subscriptions, with defaults
/// included unless `include_defaults` says otherwise. `None` (no `streams`
/// field: defaults only, as before streams existed) when nothing is
/// subscribed and the app did not ask for streams.
pub fn streams_request(
    subscriptions: Vec<StreamSubscription>,
    include_defaults: Option<bool>,
) -> Option<StreamsRequest> {
    if subscriptions.is_empty() && include_defaults.is_none() {
        return None;
    }
    Some(StreamsRequest {
        include_defaults: include_defaults.unwrap_or(true),
        subscriptions,
    })
}

/// When the request must be rebuilt because an unheld subscription expires:
/// the earliest `expires_at` after `now`.
pub fn next_expiry(
    rows: &[LocalSubscription],
    held: &BTreeSet<StreamKey>,
    now: i64,
) -> Option<i64> {
    rows.iter()
        .filter(|r| r.explicit() && !held.contains(&r.key))
        .filter_map(|r| r.expires_at)
        .filter(|e| *e > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn row(
        id: i64,
        name: &str,
        params: Value,
        ttl: Option<i64>,
        expires: Option<i64>,
    ) -> LocalSubscription {
        LocalSubscription {
            id,
            key: StreamKey::new(name, Some(&params)),
            active: false,
            is_default: false,
            priority: None,
            ttl,
            expires_at: expires,
            last_active_at: None,
            last_synced_at: None,
        }
    }

    #[test]
    fn keys_are_canonical() {
        let a = StreamKey::new("s", Some(&json!({"b": 1, "a": {"y": 2, "x": 1}})));
        let b = StreamKey::new("s", Some(&json!({"a": {"x": 1, "y": 2}, "b": 1})));
        assert_eq!(a, b);
        assert_eq!(a.params, r#"{"a":{"x":1,"y":2},"b":1}"#);
        assert_eq!(
            StreamKey::new("s", None),
            StreamKey::new("s", Some(&Value::Null))
        );
        assert_eq!(StreamKey::new("s", None).parameters(), None);
        assert_eq!(a.parameters(), Some(json!({"a": {"x": 1, "y": 2}, "b": 1})));
        assert_eq!(SubscribeOptions::default().ttl_secs(), 86_400);
    }

    #[test]
    fn ttl_expiry_with_an_injected_clock() {
        let rows = vec![
            row(1, "held", json!({"k": 1}), Some(0), Some(1_000)),
            row(2, "lingering", json!({"k": 2}), Some(60), Some(61_000)),
            row(3, "gone", json!(null), Some(0), Some(1_000)),
            row(4, "default", json!(null), None, None),
        ];
        let held = BTreeSet::from([rows[0].key.clone()]);
        // At t=1s: the held one stays whatever its expiry, the TTL'd one is
        // still in, the ttl-0 one expired at its release.
        let now = 1_000;
        let names =
            |subs: Vec<StreamSubscription>| subs.into_iter().map(|s| s.stream).collect::<Vec<_>>();
        assert_eq!(names(requested(&rows, &held, now)), ["held", "lingering"]);
        assert_eq!(outdated(&rows, &held, now), vec![3, 4]);
        assert_eq!(next_expiry(&rows, &held, now), Some(61_000));
        // Just before and at the TTL's end.
        assert_eq!(
            names(requested(&rows, &held, 60_999)),
            ["held", "lingering"]
        );
        assert_eq!(names(requested(&rows, &held, 61_000)), ["held"]);
        assert_eq!(next_expiry(&rows, &held, 61_000), None);
        // Released, the first one expires too; a default row the server still
        // lists is kept.
        let mut rows = rows;
        rows[3].active = true;
        assert_eq!(outdated(&rows, &BTreeSet::new(), 61_000), vec![1, 2, 3]);
        assert!(requested(&rows, &BTreeSet::new(), 61_000).is_empty());
    }

    #[test]
    fn request_bodies() {
        let mut rows = vec![
            row(1, "list_todos", json!({"list_id": "a"}), Some(10), Some(50)),
            row(2, "my_lists", json!(null), Some(10), Some(50)),
        ];
        rows[0].priority = Some(1);
        let subs = requested(&rows, &BTreeSet::new(), 0);
        assert_eq!(
            serde_json::to_value(streams_request(subs, None)).unwrap(),
            json!({"include_defaults": true, "subscriptions": [
                {"stream": "list_todos", "parameters": {"list_id": "a"}, "override_priority": 1},
                {"stream": "my_lists", "parameters": null, "override_priority": null}]})
        );
        assert_eq!(streams_request(vec![], None), None);
        assert_eq!(
            streams_request(vec![], Some(false)),
            Some(StreamsRequest {
                include_defaults: false,
                subscriptions: vec![]
            })
        );
    }
}
