//! [`StreamKey`]: a Sync Streams subscription's identity (the stream and its
//! parameters as canonical JSON), shared by the sync machine's per-stream
//! progress and the subscription bookkeeping in [`crate::streams`].

use outpost_protocol::StreamSubscription;
use serde_json::{Map, Value};

/// A subscription's identity: the stream and its parameters as canonical JSON
/// text (object keys sorted; `null` for none), so the same parameters written
/// in another order are the same subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub name: String,
    pub params: String,
}

impl StreamKey {
    /// `parameters` null (or None) means "no parameters".
    pub fn new(name: &str, parameters: Option<&Value>) -> StreamKey {
        let params = match parameters {
            None | Some(Value::Null) => "null".to_string(),
            Some(v) => canonical(v).to_string(),
        };
        StreamKey {
            name: name.to_string(),
            params,
        }
    }

    /// The key of a subscription as a request carries it.
    pub fn of(s: &StreamSubscription) -> StreamKey {
        StreamKey::new(&s.stream, s.parameters.as_ref())
    }

    pub fn parameters(&self) -> Option<Value> {
        match self.params.as_str() {
            "null" => None,
            p => serde_json::from_str(p).ok(),
        }
    }
}

/// `v` with every object's keys in sorted order (whatever map type serde_json uses).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&o[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
