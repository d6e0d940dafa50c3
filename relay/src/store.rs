//! Everything the relay asks the database, behind one trait so the HTTP and
//! streaming logic can be tested with an in-memory store. The Postgres
//! implementation calls only the SQL API of the extension (docs/sql-api.md).

use crate::Error;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use outpost_protocol::{BucketChecksum, Checksum, OpId, OpType, OplogEntry};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// A user's view at one checkpoint: the result of `outpost.sync_checkpoint`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CheckpointState {
    pub checkpoint: OpId,
    #[serde(default)]
    pub write_checkpoint: Option<OpId>,
    #[serde(default)]
    pub buckets: Vec<BucketChecksum>,
    /// The active rules version in the same snapshot, when the store can
    /// tell; a state without it is never advanced by [`Changes`].
    #[serde(default)]
    pub rules_version: Option<i64>,
}

/// What changed after checkpoint `since`, read in ONE snapshot (at
/// `checkpoint`): shared by every stream at `since`, so that a new checkpoint
/// costs one query per process instead of one per connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub since: OpId,
    pub checkpoint: OpId,
    pub rules_version: Option<i64>,
    /// True when no request's bucket set can have changed in
    /// `(since, checkpoint]` other than by a new rules version: every
    /// parameter query is static (reads only the token and client
    /// parameters), or the extension recorded that no parameter lookup changed.
    pub membership_fixed: bool,
    /// True when `membership_fixed` will stay false for every range under
    /// this rules version (parameter queries read tables and the extension
    /// does not record lookup changes): asking again is pointless.
    pub never_fixed: bool,
    /// Every bucket with an op in `(since, checkpoint]`: checksum and count at `checkpoint`.
    pub buckets: HashMap<String, (Checksum, u64)>,
    /// Write checkpoints published in `(since, checkpoint]`: (user, client) → seq.
    pub write_checkpoints: HashMap<(String, String), OpId>,
}

/// One row of `outpost.bucket_ops`.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRow {
    pub bucket: String,
    pub entry: OplogEntry,
    /// MOVE/CLEAR from compaction: the op that superseded what it replaced.
    /// A checkpoint below it must not be completed (its rows would be wrong).
    pub target_op: Option<OpId>,
}

pub trait Store: Send + Sync + 'static {
    /// `outpost.sync_checkpoint(claims, params, client_id)`.
    fn sync_checkpoint<'a>(
        &'a self,
        claims: &'a Value,
        params: &'a Value,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<CheckpointState, Error>>;

    /// `outpost.bucket_ops(buckets, afters, checkpoint, max_ops)`: ops with
    /// `afters[i] < op_id <= checkpoint`, ordered by bucket (as given) then op_id.
    fn bucket_ops<'a>(
        &'a self,
        buckets: &'a [String],
        afters: &'a [OpId],
        checkpoint: OpId,
        max_ops: u32,
    ) -> BoxFuture<'a, Result<Vec<OpRow>, Error>>;

    /// [`Changes`] after `since`, or `None` when the database cannot say
    /// (callers then ask `sync_checkpoint` per stream).
    fn changes_since(&self, since: OpId) -> BoxFuture<'_, Result<Option<Changes>, Error>> {
        let _ = since;
        Box::pin(async { Ok(None) })
    }

    /// `outpost.request_write_checkpoint(user_id, client_id)`.
    fn request_write_checkpoint<'a>(
        &'a self,
        user_id: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<OpId, Error>>;

    /// `outpost.tick()`: returns the latest checkpoint.
    fn tick(&self) -> BoxFuture<'_, Result<OpId, Error>>;

    /// `outpost.compact()`: ops removed (0 when another compaction runs).
    fn compact(&self) -> BoxFuture<'_, Result<i64, Error>>;

    /// `outpost.checkpoint()`: the latest published checkpoint.
    fn checkpoint(&self) -> BoxFuture<'_, Result<OpId, Error>>;

    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// `outpost.client_schema()`: `{"tables": [...]}` from the active rules.
    fn client_schema(&self) -> BoxFuture<'_, Result<Value, Error>>;

    /// Applies `entries` in ONE transaction as `role` with the user's
    /// `claims` (see `routes::crud`): all of them, or none and the first
    /// entry that failed. `Err` is a fault of ours (database down, bad role).
    fn apply_crud<'a>(
        &'a self,
        role: &'a str,
        claims: &'a Value,
        entries: &'a [Value],
    ) -> BoxFuture<'a, Result<CrudOutcome, Error>>;
}

/// The result of a `/crud` batch.
#[derive(Clone, Debug, PartialEq)]
pub enum CrudOutcome {
    /// Every entry applied; the transaction committed.
    Applied(usize),
    /// Entry `index` was refused; the transaction rolled back.
    Rejected(CrudRejection),
}

#[derive(Clone, Debug, PartialEq)]
pub struct CrudRejection {
    pub index: usize,
    pub kind: RejectKind,
    /// Text the client may see (never a raw internal error).
    pub message: String,
}

/// Why an entry was refused; decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// Malformed entry: unknown op, table or column, bad id or value (400).
    Invalid,
    /// The write role or an RLS policy does not allow it (403).
    Denied,
    /// A write handler or a constraint refused the data (422).
    Refused,
}

/// Classifies a database error raised by one entry. `None`: not the
/// client's doing (the batch fails with 500).
pub fn classify_crud_error(e: &tokio_postgres::Error) -> Option<(RejectKind, String)> {
    let db = e.as_db_error()?;
    let code = db.code().code();
    Some(match code {
        // Our own validation (22023), bad values (class 22), unknown columns.
        c if c.starts_with("22") || c == "42703" => (RejectKind::Invalid, db.message().to_string()),
        "42501" => (
            RejectKind::Denied,
            "permission denied by row-level security or privileges".to_string(),
        ),
        // A write handler's RAISE EXCEPTION: its message is meant for the client.
        "P0001" => (RejectKind::Refused, db.message().to_string()),
        c if c.starts_with("23") => (
            RejectKind::Refused,
            format!(
                "{} (SQLSTATE {c})",
                match c {
                    "23505" => "duplicate key",
                    "23503" => "foreign key violation",
                    "23502" => "a required column is null",
                    "23514" => "check constraint violation",
                    _ => "integrity constraint violation",
                }
            ),
        ),
        _ => return None,
    })
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The Postgres store: a pool of connections to the database with the extension.
pub struct PgStore {
    pool: Pool,
}

/// One shared read per checkpoint (see `outpost.changes_since` in sql/outpost.sql).
const CHANGES_SQL: &str = "SELECT checkpoint, rules_version, bucket_sets_stable, buckets::text, \
                                  write_checkpoints::text FROM outpost.changes_since($1)";

impl PgStore {
    /// Builds the pool; connections are opened lazily, so this does not fail
    /// when Postgres is down (the relay starts and reports via /health).
    pub fn new(database_url: &str, pool_size: usize) -> Result<PgStore, Error> {
        let pg = tokio_postgres::Config::from_str(database_url)
            .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?;
        let mgr = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Config(format!("cannot build pool: {e}")))?;
        Ok(PgStore { pool })
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
    ) -> BoxFuture<'a, Result<CheckpointState, Error>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            // The result carries the rules version of its snapshot, which lets
            // [`Changes`] advance this state.
            let stmt = client
                .prepare_cached(
                    "SELECT outpost.sync_checkpoint($1::text::jsonb, $2::text::jsonb, $3)::text",
                )
                .await?;
            let row = client
                .query_one(
                    &stmt,
                    &[&claims.to_string(), &params.to_string(), &client_id],
                )
                .await?;
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
                never_fixed: false,
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
            rows.into_iter()
                .map(|r| {
                    let checksum: i64 = r.get(7);
                    let checksum = u32::try_from(checksum).map_err(|_| {
                        Error::Decode(format!("checksum {checksum} out of u32 range"))
                    })?;
                    Ok(OpRow {
                        bucket: r.get(0),
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
