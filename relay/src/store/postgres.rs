//! [`PgStore`]: the [`Store`] over a pool of connections to the database
//! with the extension. It calls only the extension's SQL API (docs/sql-api.md).

use super::crud_errors::classify_crud_error;
use super::types::{Changes, CheckpointState, CrudOutcome, CrudRejection, OpRow, ReplicaStatus};
use super::Store;
use crate::Error;
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use outpost_protocol::{Checksum, OpId, OpType, OplogEntry};
use serde_json::Value;

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The Postgres store: a pool of connections to the database with the extension.
pub struct PgStore {
    pool: Pool,
}

/// One shared read per checkpoint (see `outpost.changes_since` in sql/extension/04_relay_api.sql).
const CHANGES_SQL: &str = "SELECT checkpoint, rules_version, bucket_sets_stable, buckets::text, \
                                  write_checkpoints::text FROM outpost.changes_since($1)";

impl PgStore {
    /// Builds the pool; connections are opened lazily, so this does not fail
    /// when Postgres is down (the relay starts and reports via /health).
    pub fn new(database_url: &str, pool_size: usize) -> Result<PgStore, Error> {
        Ok(PgStore {
            pool: crate::db::pool(database_url, pool_size)?,
        })
    }
}

fn op_id(v: i64) -> Result<OpId, Error> {
    u64::try_from(v)
        .map(OpId)
        .map_err(|_| Error::Decode(format!("negative op id {v}")))
}

fn to_i64(id: OpId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn op_type(s: &str) -> Result<OpType, Error> {
    Ok(match s {
        "PUT" => OpType::Put,
        "REMOVE" => OpType::Remove,
        "MOVE" => OpType::Move,
        "CLEAR" => OpType::Clear,
        other => return Err(Error::Decode(format!("unknown op {other:?}"))),
    })
}

impl Store for PgStore {
    fn sync_checkpoint<'a>(
        &'a self,
        claims: &'a Value,
        params: &'a Value,
        client_id: &'a str,
        streams: &'a Value,
    ) -> BoxFuture<'a, Result<CheckpointState, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            // The result carries the rules version of its snapshot, which lets
            // [`Changes`] advance this state.
            // A request without `streams` (no Sync Streams client) takes the
            // plain path: its buckets carry no subscriptions, as before streams.
            let row = if streams.is_null() {
                let stmt = client
                    .prepare_cached(
                        "SELECT outpost.sync_checkpoint($1::text::jsonb, $2::text::jsonb, $3)::text",
                    )
                    .await?;
                client
                    .query_one(
                        &stmt,
                        &[&claims.to_string(), &params.to_string(), &client_id],
                    )
                    .await?
            } else {
                let stmt = client
                    .prepare_cached(
                        "SELECT outpost.sync_checkpoint($1::text::jsonb, $2::text::jsonb, $3, $4::text::jsonb)::text",
                    )
                    .await?;
                client
                    .query_one(
                        &stmt,
                        &[
                            &claims.to_string(),
                            &params.to_string(),
                            &client_id,
                            &streams.to_string(),
                        ],
                    )
                    .await?
            };
            let text: String = row.get(0);
            serde_json::from_str(&text).map_err(|e| Error::Decode(format!("sync_checkpoint: {e}")))
        })
    }

    fn changes_since(&self, since: OpId) -> BoxFuture<'_, Result<Option<Changes>, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(CHANGES_SQL).await?;
            let row = client.query_one(&stmt, &[&to_i64(since)]).await?;
            let buckets: String = row.get(3);
            let buckets: Vec<(String, i64, i64)> = serde_json::from_str(&buckets)
                .map_err(|e| Error::Decode(format!("changed buckets: {e}")))?;
            let wcs: String = row.get(4);
            let wcs: Vec<(String, String, i64)> = serde_json::from_str(&wcs)
                .map_err(|e| Error::Decode(format!("changed write checkpoints: {e}")))?;
            let buckets = buckets
                .into_iter()
                .map(|(b, sum, count)| {
                    let sum = u32::try_from(sum)
                        .map_err(|_| Error::Decode(format!("checksum {sum} out of u32 range")))?;
                    Ok((b, (Checksum(sum), count.max(0) as u64)))
                })
                .collect::<Result<_, Error>>()?;
            let write_checkpoints = wcs
                .into_iter()
                .map(|(u, c, seq)| Ok(((u, c), op_id(seq)?)))
                .collect::<Result<_, Error>>()?;
            Ok(Some(Changes {
                since,
                checkpoint: op_id(row.get(0))?,
                rules_version: row.get(1),
                membership_fixed: row.get(2),
                buckets,
                write_checkpoints,
            }))
        })
    }

    fn bucket_ops<'a>(
        &'a self,
        buckets: &'a [String],
        afters: &'a [OpId],
        checkpoint: OpId,
        max_ops: u32,
    ) -> BoxFuture<'a, Result<Vec<OpRow>, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT bucket, op_id, op, object_type, object_id, subkey, data, checksum, target_op \
                     FROM outpost.bucket_ops($1::text[], $2::bigint[], $3::bigint, $4::int)",
                )
                .await?;
            let afters: Vec<i64> = afters.iter().map(|a| to_i64(*a)).collect();
            let max_ops = i32::try_from(max_ops).unwrap_or(i32::MAX);
            let rows = client
                .query(&stmt, &[&buckets, &afters, &to_i64(checkpoint), &max_ops])
                .await?;
            let mut bucket: Option<std::sync::Arc<str>> = None;
            rows.into_iter()
                .map(|r| {
                    let name: &str = r.get(0);
                    let bucket = match &bucket {
                        Some(b) if **b == *name => b.clone(),
                        _ => bucket.insert(std::sync::Arc::from(name)).clone(),
                    };
                    let checksum: i64 = r.get(7);
                    let checksum = u32::try_from(checksum).map_err(|_| {
                        Error::Decode(format!("checksum {checksum} out of u32 range"))
                    })?;
                    Ok(OpRow {
                        bucket,
                        entry: OplogEntry {
                            op_id: op_id(r.get(1))?,
                            op: op_type(r.get(2))?,
                            object_type: r.get(3),
                            object_id: r.get(4),
                            subkey: r.get(5),
                            checksum: Checksum(checksum),
                            data: r.get(6),
                        },
                        target_op: r.get::<_, Option<i64>>(8).map(op_id).transpose()?,
                    })
                })
                .collect()
        })
    }

    fn request_write_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<OpId, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client
                .query_one(
                    "SELECT outpost.request_write_checkpoint($1, $2)",
                    &[&user_id, &client_id],
                )
                .await?;
            op_id(row.get(0))
        })
    }

    fn request_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
        request_id: i64,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client
                .query_one(
                    "SELECT outpost.request_checkpoint($1, $2, $3)",
                    &[&user_id, &client_id, &request_id],
                )
                .await?;
            Ok(op_id(row.get(0))?.0)
        })
    }

    fn tick(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client.query_one("SELECT outpost.tick()", &[]).await?;
            op_id(row.get(0))
        })
    }

    fn compact(&self) -> BoxFuture<'_, Result<i64, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client
                .query_one("CALL outpost.compact_online()", &[])
                .await?;
            Ok(row.get(0))
        })
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<OpId, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client.query_one("SELECT outpost.checkpoint()", &[]).await?;
            op_id(row.get(0))
        })
    }

    fn replica_status(&self) -> BoxFuture<'_, Result<ReplicaStatus, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let stmt = client
                .prepare_cached("SELECT outpost.checkpoint(), pg_is_in_recovery()")
                .await?;
            let row = client.query_one(&stmt, &[]).await?;
            Ok(ReplicaStatus {
                checkpoint: op_id(row.get(0))?,
                in_recovery: Some(row.get(1)),
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    fn client_schema(&self) -> BoxFuture<'_, Result<Value, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let row = client
                .query_one("SELECT outpost.client_schema()::text", &[])
                .await?;
            let text: String = row.get(0);
            serde_json::from_str(&text).map_err(|e| Error::Decode(format!("client_schema: {e}")))
        })
    }

    fn apply_crud<'a>(
        &'a self,
        role: &'a str,
        claims: &'a Value,
        entries: &'a [Value],
    ) -> BoxFuture<'a, Result<CrudOutcome, Error>> {
        Box::pin(async move {
            let mut client = self.pool.get().await?;
            // Dropping the transaction without commit rolls it back.
            let tx = client.transaction().await?;
            tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(role)))
                .await?;
            let sub = claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tx.execute(
                "SELECT set_config('request.jwt.claims', $1, true), \
                        set_config('request.jwt.claim.sub', $2, true)",
                &[&claims.to_string(), &sub],
            )
            .await?;
            let stmt = tx
                .prepare("SELECT outpost.apply_crud($1::text::jsonb)")
                .await?;
            for (index, entry) in entries.iter().enumerate() {
                if let Err(e) = tx.execute(&stmt, &[&entry.to_string()]).await {
                    return match classify_crud_error(&e) {
                        Some((kind, message)) => Ok(CrudOutcome::Rejected(CrudRejection {
                            index,
                            kind,
                            message,
                        })),
                        None => Err(e.into()),
                    };
                }
            }
            tx.commit().await?;
            Ok(CrudOutcome::Applied(entries.len()))
        })
    }
}
