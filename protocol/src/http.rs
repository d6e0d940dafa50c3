//! JSON bodies of the non-streaming endpoints.

use crate::lines::OpId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"data": …}`: how PowerSync wraps plain JSON responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataEnvelope<T> {
    pub data: T,
}

/// `GET /write-checkpoint2.json` → `{"data":{"write_checkpoint":"n"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteCheckpoint {
    pub write_checkpoint: OpId,
}

/// The body of `POST /sync/checkpoint-request`: a client-chosen id that
/// only grows per client; PowerSync clients send it as a string (an int64
/// may exceed what a JSON number holds exactly), a number is accepted too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    #[serde(default)]
    pub client_id: Option<String>,
    pub checkpoint_request_id: OpId,
}

/// `POST /sync/checkpoint-request` → `{"data":{"checkpoint_request_id":"n"}}`:
/// the id stored after the request (larger than the one sent when that was stale).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRequestAck {
    pub checkpoint_request_id: OpId,
}

/// `{"error":{"code":…,"status":…,"description":…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub status: u16,
    pub description: String,
}

impl ErrorBody {
    pub fn new(code: &str, status: u16, description: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                status,
                description: description.into(),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CrudOp {
    Put,
    Patch,
    Delete,
}

/// One client write, as queued in the client's `ps_crud` and uploaded to `POST /crud`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrudEntry {
    pub op: CrudOp,
    #[serde(rename = "type")]
    pub table: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<i64>,
}

/// The body of `POST /crud`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrudBatch {
    pub batch: Vec<CrudEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_checkpoint_shape() {
        let body = DataEnvelope {
            data: WriteCheckpoint {
                write_checkpoint: OpId(3),
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"data":{"write_checkpoint":"3"}}"#
        );
    }

    #[test]
    fn checkpoint_request_shapes() {
        let r: CheckpointRequest = serde_json::from_str(
            r#"{"client_id":"c1","checkpoint_request_id":"9007199254740993","x":1}"#,
        )
        .unwrap();
        assert_eq!(r.checkpoint_request_id, OpId(9_007_199_254_740_993));
        assert_eq!(r.client_id.as_deref(), Some("c1"));
        let r: CheckpointRequest = serde_json::from_str(r#"{"checkpoint_request_id":3}"#).unwrap();
        assert_eq!((r.checkpoint_request_id, r.client_id), (OpId(3), None));
        let ack = DataEnvelope {
            data: CheckpointRequestAck {
                checkpoint_request_id: OpId(5),
            },
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"data":{"checkpoint_request_id":"5"}}"#
        );
    }

    #[test]
    fn crud_entry_shape() {
        let e: CrudEntry =
            serde_json::from_str(r#"{"op":"PATCH","type":"todos","id":"t1","data":{"done":1}}"#)
                .unwrap();
        assert_eq!(e.op, CrudOp::Patch);
        assert_eq!(e.table, "todos");
    }
}
