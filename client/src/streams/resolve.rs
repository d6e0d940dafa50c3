//! What a checkpoint says about each subscription: which streams the server
//! listed (and whether as defaults), the errors of each subscription, and
//! which buckets each brought, with their priorities; then the local rows'
//! bookkeeping (PowerSync's reconciliation: listed streams are active, a
//! default stream gets a row of its own for its status, rows neither
//! subscribed nor listed go) and the per-stream status the app sees.

use super::{LocalSubscription, StreamKey};
use crate::progress::Progress;
use outpost_protocol::{BucketReason, Checkpoint, StreamsRequest};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What the server said about one subscription (or default stream).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerInfo {
    pub is_default: bool,
    pub errors: Vec<String>,
    pub buckets: u32,
    /// The highest priority (lowest number) among its buckets.
    pub priority: Option<i32>,
    /// The lowest priority among its buckets: a partial checkpoint of this
    /// priority or below completes it.
    pub last_priority: Option<i32>,
}

/// Per subscription key, what checkpoint `cp` (answering `request`) says;
/// plus the names of the streams it listed.
pub fn server_view(
    request: Option<&StreamsRequest>,
    cp: &Checkpoint,
) -> (BTreeMap<StreamKey, ServerInfo>, BTreeSet<String>) {
    let mut view: BTreeMap<StreamKey, ServerInfo> = BTreeMap::new();
    let streams = cp.streams.as_deref().unwrap_or_default();
    let subs: Vec<StreamKey> = request
        .map(|r| r.subscriptions.iter().map(StreamKey::of).collect())
        .unwrap_or_default();
    for key in &subs {
        view.entry(key.clone()).or_default();
    }
    let listed = streams.iter().map(|s| s.name.clone()).collect();
    for s in streams {
        let default_key = StreamKey::new(&s.name, None);
        if s.is_default {
            view.entry(default_key.clone()).or_default().is_default = true;
        }
        for k in &subs {
            if k.name == s.name {
                view.entry(k.clone()).or_default().is_default = s.is_default;
            }
        }
        for e in &s.errors {
            let key = match &e.subscription {
                Value::Number(n) => n.as_u64().and_then(|i| subs.get(i as usize)).cloned(),
                _ => Some(default_key.clone()),
            };
            if let Some(key) = key {
                view.entry(key).or_default().errors.push(e.message.clone());
            }
        }
    }
    for b in &cp.buckets {
        let mut keys: BTreeSet<StreamKey> = BTreeSet::new();
        for reason in b.subscriptions.iter().flatten() {
            match reason {
                BucketReason::Sub(i) => keys.extend(subs.get(*i as usize).cloned()),
                BucketReason::Default(k) => keys.extend(
                    streams
                        .get(*k as usize)
                        .map(|s| StreamKey::new(&s.name, None)),
                ),
            }
        }
        let p = b.priority_or_default();
        for key in keys {
            let info = view.entry(key).or_default();
            info.buckets += 1;
            info.priority = Some(info.priority.map_or(p, |q| q.min(p)));
            info.last_priority = Some(info.last_priority.map_or(p, |q| q.max(p)));
        }
    }
    (view, listed)
}

/// Changes to the local rows after a checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reconcile {
    /// `(id, active, is_default)` for every row that stays.
    pub updates: Vec<(i64, bool, bool)>,
    /// Default streams the server listed that have no row yet.
    pub create_defaults: Vec<StreamKey>,
    pub delete: Vec<i64>,
}

pub fn reconcile(
    rows: &[LocalSubscription],
    view: &BTreeMap<StreamKey, ServerInfo>,
    listed: &BTreeSet<String>,
) -> Reconcile {
    let mut out = Reconcile::default();
    let defaults: BTreeMap<&str, bool> = view
        .iter()
        .map(|(k, v)| (k.name.as_str(), v.is_default))
        .collect();
    for r in rows {
        let active = listed.contains(&r.key.name);
        if !active && !r.explicit() {
            out.delete.push(r.id);
            continue;
        }
        let is_default = active && defaults.get(r.key.name.as_str()).copied().unwrap_or(false);
        out.updates.push((r.id, active, is_default));
    }
    for (k, v) in view {
        if v.is_default && k.params == "null" && !rows.iter().any(|r| &r.key == k) {
            out.create_defaults.push(k.clone());
        }
    }
    out
}

/// One subscription's status, as the app sees it (PowerSync's
/// `SyncStreamStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub parameters: Option<Value>,
    /// A default stream (auto-subscribed, or a bucket definition).
    pub is_default: bool,
    /// Subscribed by the app (a default stream may be too).
    pub explicit: bool,
    /// The server listed the stream in the last checkpoint.
    pub active: bool,
    /// A live handle holds it (it never expires meanwhile).
    pub held: bool,
    pub ttl_secs: Option<i64>,
    /// When its data goes unless subscribed again (ms since the epoch; none while held).
    pub expires_at: Option<i64>,
    /// What the server reported as wrong with this subscription (unknown
    /// stream, missing or bad parameter): it brings no data meanwhile.
    pub errors: Vec<String>,
    /// Buckets the last checkpoint included for it, and their highest priority.
    pub buckets: u32,
    pub priority: Option<i32>,
    pub has_synced: bool,
    /// ms since the epoch.
    pub last_synced_at: Option<i64>,
    /// While a checkpoint downloads: the ops of this subscription's buckets
    /// received out of those it adds (PowerSync's
    /// `SyncStreamStatus.progress`); none otherwise.
    pub progress: Option<Progress>,
}

impl StreamStatus {
    pub fn is(&self, key: &StreamKey) -> bool {
        self.name == key.name && StreamKey::new(&self.name, self.parameters.as_ref()) == *key
    }
}

/// The status of every local row, in row order, with the download progress
/// of those `progress` has.
pub fn statuses(
    rows: &[LocalSubscription],
    held: &BTreeSet<StreamKey>,
    view: &BTreeMap<StreamKey, ServerInfo>,
    progress: &BTreeMap<StreamKey, Progress>,
) -> Vec<StreamStatus> {
    rows.iter()
        .map(|r| {
            let info = view.get(&r.key).cloned().unwrap_or_default();
            let h = held.contains(&r.key);
            StreamStatus {
                name: r.key.name.clone(),
                parameters: r.key.parameters(),
                is_default: r.is_default || info.is_default,
                explicit: r.explicit(),
                active: r.active,
                held: h,
                ttl_secs: r.ttl,
                expires_at: if h { None } else { r.expires_at },
                errors: info.errors,
                buckets: info.buckets,
                priority: info.priority,
                has_synced: r.last_synced_at.is_some(),
                last_synced_at: r.last_synced_at,
                progress: progress.get(&r.key).copied(),
            }
        })
        .collect()
}

/// The rows an applied checkpoint (of `priority`, or complete) synced: those
/// the checkpoint answered for without errors, all of whose buckets are
/// within the priority (a subscription with no buckets is synced by a
/// complete checkpoint: it has nothing).
pub fn mark_synced(
    rows: &[LocalSubscription],
    view: &BTreeMap<StreamKey, ServerInfo>,
    priority: Option<i32>,
) -> Vec<i64> {
    rows.iter()
        .filter(|r| {
            view.get(&r.key).is_some_and(|i| {
                i.errors.is_empty()
                    && match priority {
                        None => true,
                        Some(p) => i.last_priority.is_some_and(|lp| lp <= p),
                    }
            })
        })
        .map(|r| r.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::tests::row;
    use serde_json::json;

    /// The recorded exchange of docs/streams.md: subscriptions l1, l2 (not
    /// the user's), an unknown stream, a missing parameter, l3 at priority 0.
    fn exchange() -> (StreamsRequest, Checkpoint) {
        let request: StreamsRequest =
            serde_json::from_value(json!({"include_defaults": true, "subscriptions": [
            {"stream": "list_todos", "parameters": {"list_id": "l1"}},
            {"stream": "list_todos", "parameters": {"list_id": "l2"}},
            {"stream": "nope", "parameters": null},
            {"stream": "list_todos", "parameters": {}, "override_priority": 1},
            {"stream": "list_todos", "parameters": {"list_id": "l3"}, "override_priority": 0}]}))
            .unwrap();
        let cp: Checkpoint = serde_json::from_value(json!({"last_op_id": "9", "buckets": [
            {"bucket": "list_todos|0[\"l3\"]", "checksum": 1, "count": 3, "priority": 0, "subscriptions": [{"sub": 4}]},
            {"bucket": "list_todos|0[\"l1\"]", "checksum": 1, "count": 3, "priority": 3, "subscriptions": [{"sub": 0}]},
            {"bucket": "my_lists|0[\"u1\"]", "checksum": 1, "count": 2, "priority": 3, "subscriptions": [{"default": 0}]}],
          "streams": [
            {"name": "my_lists", "is_default": true, "errors": []},
            {"name": "list_todos", "is_default": false, "errors": [{"subscription": 3, "message": "missing subscription parameter \"list_id\""}]},
            {"name": "nope", "is_default": false, "errors": [{"subscription": 2, "message": "unknown stream \"nope\""}]}]}))
        .unwrap();
        (request, cp)
    }

    #[test]
    fn a_checkpoint_resolves_each_subscription() {
        let (request, cp) = exchange();
        let (view, listed) = server_view(Some(&request), &cp);
        let get = |name: &str, p: Value| view[&StreamKey::new(name, Some(&p))].clone();
        let l1 = get("list_todos", json!({"list_id": "l1"}));
        assert_eq!((l1.buckets, l1.priority, l1.errors.len()), (1, Some(3), 0));
        let l2 = get("list_todos", json!({"list_id": "l2"}));
        assert_eq!(
            (l2.buckets, l2.errors.len()),
            (0, 0),
            "not the user's list: nothing, no error"
        );
        assert_eq!(get("nope", Value::Null).errors, ["unknown stream \"nope\""]);
        assert_eq!(
            get("list_todos", json!({})).errors,
            ["missing subscription parameter \"list_id\""]
        );
        assert_eq!(
            get("list_todos", json!({"list_id": "l3"})).priority,
            Some(0)
        );
        let mine = get("my_lists", Value::Null);
        assert!(mine.is_default);
        assert_eq!(mine.buckets, 1);
        assert_eq!(listed.len(), 3);

        // Local rows: the explicit ones, a stale default, and a stream the
        // server no longer lists that nobody subscribed.
        let mut rows: Vec<LocalSubscription> = request
            .subscriptions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                row(
                    i as i64 + 1,
                    &s.stream,
                    s.parameters.clone().unwrap_or(Value::Null),
                    Some(60),
                    Some(1),
                )
            })
            .collect();
        rows.push(row(9, "old_default", Value::Null, None, None));
        let rec = reconcile(&rows, &view, &listed);
        assert_eq!(rec.delete, vec![9]);
        assert_eq!(rec.create_defaults, vec![StreamKey::new("my_lists", None)]);
        assert!(rec
            .updates
            .iter()
            .all(|(_, active, default)| *active && !*default));

        let progress = BTreeMap::from([(
            rows[0].key.clone(),
            Progress {
                downloaded: 1,
                total: 3,
            },
        )]);
        let st = statuses(
            &rows[..5],
            &BTreeSet::from([rows[0].key.clone()]),
            &view,
            &progress,
        );
        assert_eq!(st[0].progress, progress.get(&rows[0].key).copied());
        assert_eq!(st[1].progress, None);
        assert!(st[0].held && st[0].expires_at.is_none());
        assert_eq!(st[1].expires_at, Some(1));
        assert_eq!(st[2].errors, ["unknown stream \"nope\""]);
        assert!(st[4].is(&StreamKey::new(
            "list_todos",
            Some(&json!({"list_id": "l3"}))
        )));

        // The priority-0 partial checkpoint syncs l3 alone; the complete one
        // every subscription without errors.
        assert_eq!(mark_synced(&rows, &view, Some(0)), vec![5]);
        assert_eq!(mark_synced(&rows, &view, None), vec![1, 2, 5]);
    }

    #[test]
    fn without_streams_nothing_is_listed() {
        let cp: Checkpoint = serde_json::from_value(
            json!({"last_op_id": "1", "buckets": [{"bucket": "a[]", "checksum": 0}]}),
        )
        .unwrap();
        let (view, listed) = server_view(None, &cp);
        assert!(view.is_empty() && listed.is_empty());
        let rows = vec![row(1, "s", Value::Null, Some(60), Some(5))];
        assert_eq!(
            reconcile(&rows, &view, &listed).updates,
            vec![(1, false, false)]
        );
    }
}
