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
    fn crud_entry_shape() {
        let e: CrudEntry =
            serde_json::from_str(r#"{"op":"PATCH","type":"todos","id":"t1","data":{"done":1}}"#)
                .unwrap();
        assert_eq!(e.op, CrudOp::Patch);
        assert_eq!(e.table, "todos");
    }
}
