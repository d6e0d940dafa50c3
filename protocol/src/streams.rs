//! Sync Streams on the wire: what a request subscribes to
//! (`streams.subscriptions`), why a checkpoint's bucket is in
//! (`subscriptions`), and the streams a checkpoint resolved, with the errors
//! of their subscriptions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The request's `streams` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamsRequest {
    /// Whether default streams (legacy bucket definitions, `auto_subscribe`
    /// streams) are synced; PowerSync's default is true.
    #[serde(default = "yes")]
    pub include_defaults: bool,
    #[serde(default)]
    pub subscriptions: Vec<StreamSubscription>,
}

fn yes() -> bool {
    true
}

impl Default for StreamsRequest {
    fn default() -> StreamsRequest {
        StreamsRequest {
            include_defaults: true,
            subscriptions: Vec::new(),
        }
    }
}

/// One subscription: a stream, its parameters and an optional priority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSubscription {
    pub stream: String,
    /// Any JSON as sent: anything but an object or null is reported as the
    /// subscription's error rather than refusing the whole request.
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub override_priority: Option<i32>,
}

/// Why a bucket is in a checkpoint: `{"default": k}` (k indexes
/// `checkpoint.streams`) or `{"sub": i}` (i indexes the request's subscriptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketReason {
    Default(u32),
    Sub(u32),
}

/// One stream a checkpoint resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamDescription {
    pub name: String,
    pub is_default: bool,
    #[serde(default)]
    pub errors: Vec<StreamError>,
}

/// A subscription's problem: `subscription` is `"default"` or the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamError {
    pub subscription: Value,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let r: StreamsRequest = serde_json::from_str(
            r#"{"include_defaults":false,"subscriptions":[{"stream":"list_todos","parameters":{"list_id":"l1"},"override_priority":null},{"stream":"x","parameters":null}]}"#,
        )
        .unwrap();
        assert!(!r.include_defaults);
        assert_eq!(
            r.subscriptions[0].parameters.as_ref().unwrap()["list_id"],
            "l1"
        );
        assert_eq!(r.subscriptions[1].parameters, None);
        let d: StreamsRequest = serde_json::from_str("{}").unwrap();
        assert!(d.include_defaults);
        assert_eq!(
            serde_json::to_string(&[BucketReason::Default(0), BucketReason::Sub(4)]).unwrap(),
            r#"[{"default":0},{"sub":4}]"#
        );
        let s: StreamDescription = serde_json::from_str(
            r#"{"name":"list_todos","is_default":false,"errors":[{"subscription":3,"message":"missing subscription parameter \"list_id\""}]}"#,
        )
        .unwrap();
        assert_eq!(s.errors[0].subscription, 3);
    }
}
