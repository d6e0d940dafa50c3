//! `POST /sync/stream`: the request body and the NDJSON lines the server sends.

use crate::checksum::{signed, Checksum};
use crate::streams::{BucketReason, StreamDescription, StreamsRequest};
use crate::ProtocolError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// An op id: u64 on our side, a decimal string on the wire (numbers are accepted too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for OpId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<OpId, ProtocolError> {
        s.parse::<u64>()
            .map(OpId)
            .map_err(|_| ProtocolError::OpId(s.to_string()))
    }
}

impl Serialize for OpId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Read without building a `serde_json::Value` (a million op ids per large
/// sync: the owned string of each was an allocation).
impl<'de> Deserialize<'de> for OpId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OpId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = OpId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an op id (a decimal string or a number)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OpId, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<OpId, E> {
                Ok(OpId(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<OpId, E> {
                u64::try_from(n)
                    .map(OpId)
                    .map_err(|_| E::custom(format!("invalid op id {n}")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<OpId, E> {
                Err(E::custom(format!("invalid op id {n}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a client stands in one bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketRequest {
    pub name: String,
    pub after: OpId,
}

/// The body of `POST /sync/stream`. Unknown fields (app_metadata, ...) are tolerated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    #[serde(default)]
    pub buckets: Vec<BucketRequest>,
    #[serde(default)]
    pub include_checksum: bool,
    #[serde(default)]
    pub raw_data: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Sync Streams subscriptions (absent: defaults only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamsRequest>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketChecksum {
    pub bucket: String,
    #[serde(with = "signed")]
    pub checksum: Checksum,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Why the bucket is in (Sync Streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<BucketReason>>,
}

impl BucketChecksum {
    /// PowerSync's default priority when none is given.
    pub fn priority_or_default(&self) -> i32 {
        self.priority.unwrap_or(3)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub last_op_id: OpId,
    #[serde(default)]
    pub write_checkpoint: Option<OpId>,
    pub buckets: Vec<BucketChecksum>,
    /// The streams this checkpoint resolved (Sync Streams), with errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<StreamDescription>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDiff {
    pub last_op_id: OpId,
    #[serde(default)]
    pub write_checkpoint: Option<OpId>,
    #[serde(default)]
    pub updated_buckets: Vec<BucketChecksum>,
    #[serde(default)]
    pub removed_buckets: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OpType {
    Put,
    Remove,
    Move,
    Clear,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OplogEntry {
    pub op_id: OpId,
    pub op: OpType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subkey: Option<String>,
    pub checksum: Checksum,
    /// The row as JSON text. Servers that ignore `raw_data` send an object instead;
    /// it is turned back into text so the rest of the client sees one shape.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "data_as_text"
    )]
    pub data: Option<String>,
}

/// The common shape (a string) is taken as it comes, without a
/// `serde_json::Value` in between; an object is turned back into text.
fn data_as_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("row data (a JSON string or a value)")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_string()))
        }
        fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(Some(s))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Ok(Some(b.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
            Ok(Some(Value::from(n).to_string()))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
            Ok(Some(v.to_string()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(a))?;
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataLine {
    pub bucket: String,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<OpId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<OpId>,
    pub data: Vec<OplogEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointComplete {
    pub last_op_id: OpId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialCheckpointComplete {
    pub last_op_id: OpId,
    pub priority: i32,
}

/// One line of the stream. Serialized as a one-key object (`{"checkpoint":{…}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncLine {
    Checkpoint(Checkpoint),
    CheckpointDiff(CheckpointDiff),
    Data(DataLine),
    CheckpointComplete(CheckpointComplete),
    PartialCheckpointComplete(PartialCheckpointComplete),
    TokenExpiresIn(i64),
}

impl SyncLine {
    /// Decodes one NDJSON line. Lines with a key this version does not know are
    /// skipped (`Ok(None)`), as the protocol asks; anything else malformed is an error.
    pub fn parse(line: &str) -> Result<Option<SyncLine>, ProtocolError> {
        let v: Value = serde_json::from_str(line)?;
        let obj = match &v {
            Value::Object(o) if o.len() == 1 => o,
            _ => return Err(ProtocolError::Shape(truncate(line))),
        };
        let key = obj.keys().next().map(String::as_str).unwrap_or_default();
        const KNOWN: [&str; 6] = [
            "checkpoint",
            "checkpoint_diff",
            "data",
            "checkpoint_complete",
            "partial_checkpoint_complete",
            "token_expires_in",
        ];
        if !KNOWN.contains(&key) {
            return Ok(None);
        }
        Ok(Some(serde_json::from_value(v)?))
    }

    /// The line as NDJSON (with the trailing newline).
    pub fn to_ndjson(&self) -> String {
        let mut s = serde_json::to_string(self).expect("sync lines always serialize");
        s.push('\n');
        s
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reference_lines() {
        let cp = SyncLine::parse(
            r#"{"checkpoint":{"last_op_id":"120","write_checkpoint":"7","buckets":[{"bucket":"by_user[\"u1\"]","checksum":-1234,"count":42,"priority":3,"subscriptions":[{"default":0}]}],"streams":[]}}"#,
        )
        .unwrap()
        .unwrap();
        let SyncLine::Checkpoint(cp) = cp else {
            panic!("not a checkpoint")
        };
        assert_eq!(cp.last_op_id, OpId(120));
        assert_eq!(cp.write_checkpoint, Some(OpId(7)));
        assert_eq!(cp.buckets[0].checksum, Checksum((-1234i32) as u32));

        let data = SyncLine::parse(
            r#"{"data":{"bucket":"b[]","has_more":false,"after":"0","next_after":"120","data":[
            {"op_id":"101","op":"PUT","object_type":"todos","object_id":"t1","subkey":"s","checksum":3735928559,"data":"{\"id\":\"t1\"}"},
            {"op_id":"102","op":"REMOVE","object_type":"todos","object_id":"t2","subkey":"s2","checksum":17},
            {"op_id":"90","op":"MOVE","checksum":5},{"op_id":"80","op":"CLEAR","checksum":99}]}}"#
                .replace('\n', "")
                .as_str(),
        )
        .unwrap()
        .unwrap();
        let SyncLine::Data(d) = data else {
            panic!("not data")
        };
        assert_eq!(d.data.len(), 4);
        assert_eq!(d.data[0].data.as_deref(), Some(r#"{"id":"t1"}"#));
        assert_eq!(d.data[2].op, OpType::Move);
    }

    #[test]
    fn unknown_keys_are_skipped_and_garbage_is_an_error() {
        assert_eq!(SyncLine::parse(r#"{"future_line":{}}"#).unwrap(), None);
        assert!(SyncLine::parse("{not json").is_err());
        assert!(SyncLine::parse(r#"{"a":1,"b":2}"#).is_err());
        assert!(SyncLine::parse(r#"{"checkpoint":{"last_op_id":"x","buckets":[]}}"#).is_err());
    }

    #[test]
    fn round_trip_and_wire_shape() {
        let line = SyncLine::CheckpointComplete(CheckpointComplete {
            last_op_id: OpId(5),
        });
        assert_eq!(
            line.to_ndjson(),
            "{\"checkpoint_complete\":{\"last_op_id\":\"5\"}}\n"
        );
        assert_eq!(
            SyncLine::TokenExpiresIn(30).to_ndjson(),
            "{\"token_expires_in\":30}\n"
        );
        let back = SyncLine::parse(line.to_ndjson().trim_end())
            .unwrap()
            .unwrap();
        assert_eq!(back, line);
    }

    #[test]
    fn request_tolerates_unknown_fields() {
        let r: SyncRequest = serde_json::from_str(
            r#"{"buckets":[{"name":"b[]","after":"12"}],"include_checksum":true,"raw_data":true,"binary_data":true,"client_id":"c","parameters":{},"streams":{"include_defaults":true,"subscriptions":[]},"app_metadata":{}}"#,
        )
        .unwrap();
        assert_eq!(r.buckets[0].after, OpId(12));
        assert_eq!(r.client_id.as_deref(), Some("c"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

        /// The client's line decoder never panics: arbitrary bytes are an
        /// error or a skipped line.
        #[test]
        fn arbitrary_lines_never_panic(s in ".{0,300}") {
            let _ = SyncLine::parse(&s);
        }

        #[test]
        fn json_shaped_lines_never_panic(key in "(checkpoint|checkpoint_diff|data|checkpoint_complete|partial_checkpoint_complete|token_expires_in|[a-z]{1,8})", body in ".{0,200}") {
            let _ = SyncLine::parse(&format!("{{\"{key}\":{body}}}"));
            let _ = SyncLine::parse(&format!("{{\"{key}\":{{\"last_op_id\":{body}}}}}"));
        }
    }
}
