//! The statement at the heart of a tick, and the capture trigger functions.
//!
//! A tick must read the capture queue and the source tables in **one**
//! snapshot: in READ COMMITTED every statement takes a new snapshot, so a tick
//! spread over several statements could see a writer's changed rows without
//! its queue entries (or the reverse) and publish half a transaction. All reads
//! of user tables therefore happen in this single statement. Its
//! data-modifying CTEs park the keys of tables that parameter queries read
//! (`work_keys`) and the parameter lookups (`work_params`) in
//! `outpost.work_*` tables, diff the keys' rows against
//! `bucket_rows`, and write the resulting ops with their ids straight to the
//! op log, the new rows to `bucket_rows`, the running totals and the
//! superseded list; only the changes to existing `bucket_rows` entries wait in
//! `work_ops` (their ctid, new op id and fingerprint) for the step after it.
//! The rest of the tick only touches tables that the tick lock protects.
//! The statement takes the last checkpoint as `$1` and returns the number of
//! queue entries (a batch counting its keys), of ops, and of ops on existing
//! rows (`work_ops`).
//!
//! Queue entries (`outpost.changes.kind`): `k` a row key changed, `b` a batch
//! of changed keys (a jsonb array of keys; the capture trigger writes most
//! keys this way, one queue row per ~2 kB of keys; `_changes` unnests them
//! into `k` entries, so nothing after it sees batches), `t` the table
//! was truncated (re-check every row it had), `f` re-evaluate the whole table
//! for one bucket definition (`def`; a rules deploy). Keys queued by `f` carry
//! their definition, so only that definition's queries and old rows take part.
//! So do the keys a join produces (a changed list → its todos): they carry
//! the definition whose data query joins, and a definition that does not read
//! the joined table neither re-evaluates those rows nor loses them.

use crate::compile::sqlgen::{keys_of, KEYS_CTE};
use crate::compile::{CaptureTable, CompiledRules, ParamQuery};
use crate::quote_literal;

pub fn tick_statement(rules: &CompiledRules) -> String {
    let mut data = Vec::new();
    let mut params = Vec::new();
    let mut may_duplicate = false;
    // Tables read by table parameter queries: only their keys go to
    // `work_keys`, for the tick's lookup step (02_tick.sql).
    let mut param_relids: Vec<u32> = Vec::new();
    // (joining definition, key query): one key set per definition that joins.
    let mut joins: Vec<(&str, &str)> = Vec::new();
    for b in &rules.buckets {
        let mut seen = std::collections::BTreeSet::new();
        for q in &b.data_queries {
            // Two queries of one bucket over one table can emit the same row.
            may_duplicate |= q.may_duplicate || !seen.insert((q.relid, q.object_type.clone()));
            data.push(only_with_keys(&q.sql_keyed, q.relid, &b.source.name));
            data.push(q.sql_full.clone());
            for j in &q.joined {
                let key = (b.source.name.as_str(), j.keys_sql.as_str());
                if !joins.contains(&key) {
                    joins.push(key);
                }
            }
        }
        for q in &b.parameter_queries {
            if let ParamQuery::Table {
                relid,
                sql_keyed,
                sql_full,
                ..
            } = q
            {
                params.push(only_with_keys(sql_keyed, *relid, &b.source.name));
                if !param_relids.contains(relid) {
                    param_relids.push(*relid);
                }
                params.push(sql_full.clone());
            }
        }
    }
    // The keys of a truncated table's or a redeployed definition's current
    // rows come from their subkeys (`<relid>:<pk>`; bucket_rows keeps no other
    // copy of them), by a scan of bucket_rows that runs only when some queue
    // entry asks for it (the EXISTS is a one-time filter: after a big
    // removal, the scan's first visible row can be a whole table away).
    let mut s = String::from(
        "WITH _queue AS (DELETE FROM outpost.changes RETURNING relid, pk, kind, def),
_changes AS (
  SELECT relid, pk, kind, def FROM _queue WHERE kind <> 'b'
  UNION ALL SELECT q.relid, e.pk, 'k', NULL FROM _queue q
          CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(q.pk) = 'array' THEN q.pk END) e(pk)
         WHERE q.kind = 'b'),
_full AS MATERIALIZED (SELECT DISTINCT relid, def FROM _changes WHERE kind = 'f'),
_trunc AS MATERIALIZED (SELECT DISTINCT relid FROM _changes WHERE kind = 't'),
_keys AS MATERIALIZED (
  SELECT relid, pk, NULL::text AS def FROM _changes WHERE kind = 'k'
  UNION ALL SELECT b.relid, b.pk, NULL
          FROM (SELECT split_part(b.subkey, ':', 1)::oid AS relid,
                       substr(b.subkey, strpos(b.subkey, ':') + 1)::jsonb AS pk FROM outpost.bucket_rows b) b
         WHERE EXISTS (SELECT FROM _trunc) AND b.relid IN (SELECT relid FROM _trunc)
  UNION ALL SELECT p.relid, p.pk, NULL FROM outpost.param_rows p WHERE p.relid IN (SELECT relid FROM _trunc)
  UNION ALL SELECT b.relid, b.pk, f.def FROM _full f
          JOIN (SELECT split_part(b.subkey, ':', 1)::oid AS relid,
                       substr(b.subkey, strpos(b.subkey, ':') + 1)::jsonb AS pk, split_part(b.bucket, '[', 1) AS def
                  FROM outpost.bucket_rows b) b ON b.relid = f.relid AND b.def = f.def
         WHERE EXISTS (SELECT FROM _full)
  UNION ALL SELECT p.relid, p.pk, f.def FROM _full f
          JOIN outpost.param_rows p ON p.relid = f.relid AND split_part(p.query_id, '#', 1) = f.def",
    );
    // Rows whose data reads a joined table's changed row (compile/joined.rs),
    // tagged with the definition that joins: only its queries re-evaluate
    // them, and only its current rows of them can become REMOVEs.
    for (def, j) in &joins {
        s.push_str("\n  UNION ALL SELECT _j.relid, _j.pk, ");
        s.push_str(&quote_literal(def));
        s.push_str(" FROM (");
        s.push_str(j);
        s.push_str(") _j");
    }
    s.push(')');
    if !param_relids.is_empty() {
        let ids: Vec<String> = param_relids.iter().map(u32::to_string).collect();
        s.push_str(&format!(
            ",\n_wk AS (INSERT INTO outpost.work_keys (relid, pk, def) SELECT relid, pk, def FROM _keys WHERE relid IN ({}))",
            ids.join(", ")
        ));
    }
    s.push_str(
        ",
_wcr AS (DELETE FROM outpost.write_checkpoint_requests RETURNING user_id, client_id, seq),
_wc AS (INSERT INTO outpost.work_write_checkpoints (user_id, client_id, seq)
  SELECT user_id, client_id, max(seq) FROM _wcr GROUP BY user_id, client_id)",
    );
    // The rows the changed keys produce now, keyed for the diff.
    s.push_str(",\n_n AS MATERIALIZED (\n  SELECT r.*, outpost._fingerprint(r.data) AS fp,\n         outpost._row_key(r.bucket, r.object_type, r.object_id, r.subkey) AS row_key\n    FROM (");
    if data.is_empty() {
        s.push_str("SELECT NULL::text AS bucket, NULL::text AS object_type, NULL::text AS object_id, NULL::text AS subkey, NULL::oid AS relid, NULL::jsonb AS pk, NULL::text AS data WHERE false");
    } else {
        s.push_str("SELECT ");
        if may_duplicate {
            s.push_str("DISTINCT ON (bucket, object_type, object_id, subkey) ");
        }
        s.push_str("bucket, object_type, object_id, subkey, relid, pk, data FROM (\n    ");
        s.push_str(&data.join("\n    UNION ALL "));
        s.push_str("\n  ) _r");
    }
    s.push_str(") r)");
    s.push_str(DIFF_CTE);
    if !params.is_empty() {
        s.push_str(",\n_wp AS (INSERT INTO outpost.work_params (query_id, relid, pk, lookup, bucket)\n  SELECT DISTINCT query_id, relid, pk, lookup, bucket FROM (\n    ");
        s.push_str(&params.join("\n    UNION ALL "));
        s.push_str("\n  ) _p)");
    }
    s.push_str(
        "\nSELECT (SELECT count(*) FROM _changes), (SELECT count(*) FROM _o),\n       (SELECT count(*) FROM _o WHERE existed)",
    );
    s
}

/// A keyed query, evaluated only when some key of its table changed: the
/// uncorrelated EXISTS becomes a one-time filter, so a table without changed
/// keys costs one look at the key set instead of a semi join against it
/// (which the planner, estimating the key set from an empty queue, ran as a
/// rescan of every key per row of the table).
fn only_with_keys(sql: &str, relid: u32, def: &str) -> String {
    format!(
        "SELECT * FROM ({sql}) _q WHERE EXISTS (SELECT 1 FROM {KEYS_CTE} k WHERE k.relid = {relid} AND {})",
        keys_of(def)
    )
}

/// The diff, inside the one-snapshot statement: the current rows of every
/// changed key (one index probe per key into `bucket_rows`; OFFSET 0 keeps the
/// planner from turning the probes into a scan of the whole op state; the
/// keys are grouped with their `src_key` first, so the sort the planner picks
/// for the grouping compares integers rather than jsonb — that sort had been
/// ~12% of a 100k-key tick — and each row's ctid goes along for the apply
/// step; a row is its key's when its subkey, `<relid>:<pk>`, is the key's)
/// are matched with the rows those keys produce now in one hash full join.
/// `_keys` keeps duplicates (`UNION ALL`): every reader groups or
/// deduplicates the keys itself, so a `UNION` only hashed 100k jsonb keys
/// once more. A key's definitions are collected only when it has some (most
/// keys have none, and an `array_agg` state per key is ~1 kB); every current
/// row the probe returns already passed the definition filter, so a row that
/// no longer comes out is a REMOVE without testing it again. A new
/// row whose fingerprint differs from its current one becomes a PUT, a
/// current row that no longer comes out a REMOVE (for keys queued by a deploy,
/// only in the redeployed definition's buckets); op ids follow `$1` (the
/// last checkpoint; the caller holds the tick lock). Every current row a new
/// row could replace belongs to a changed key (the row's subkey names its
/// source row), so the join sees them all. A key tagged with definitions
/// (a deploy's, a join's) brings only those definitions' current rows: no
/// other definition's query evaluates it, so the rest could only be skipped.
///
/// A deploy's (re-evaluated definitions') ops are numbered, and so written,
/// bucket by bucket: a bucket's ops then sit together in the op log's heap,
/// and a relay's 1000-op page of one bucket touches 34 buffers instead of
/// 228 when op ids followed the source rows across buckets (each of 10
/// buckets every 10th op; CONTRIBUTING.md, "Relay streaming"). Other
/// ticks keep their order: the sort key is NULL for them, so the sort finds
/// its input sorted.
///
/// The ops are written from here rather than parked in a scratch table and
/// copied by later statements: that copy (a wide heap insert, three scans
/// of it and an `ANALYZE`) was ~15% of the backend time of a 100k-row
/// insert tick and ~20% of an update tick. What needs the existing rows'
/// ctids (their update or removal) stays for the tick's next step, which
/// can still analyze `bucket_rows` before planning it (02_tick.sql).
const DIFF_CTE: &str = ",
_old AS MATERIALIZED (
  SELECT outpost._row_key(b.bucket, b.object_type, b.object_id, b.subkey) AS row_key,
         b.bucket, b.object_type, b.object_id, b.subkey, b.op_id, b.fingerprint, b.old_ctid
    FROM (SELECT src_key, subkey, bool_or(def IS NULL) AS all_defs,
                   array_agg(def) FILTER (WHERE def IS NOT NULL) AS defs
            FROM (SELECT outpost._src_key(relid, pk) AS src_key, relid::text || ':' || pk::text AS subkey, def
                    FROM _keys) _k
           GROUP BY src_key, subkey) k
   CROSS JOIN LATERAL (
        SELECT b.*, b.ctid AS old_ctid FROM outpost.bucket_rows b
         WHERE b.src_key = k.src_key AND b.subkey = k.subkey
           AND (k.all_defs OR split_part(b.bucket, '[', 1) = ANY (k.defs))
        OFFSET 0) b),
_d AS (
  SELECT coalesce(n.row_key, o.row_key) AS row_key, coalesce(n.bucket, o.bucket) AS bucket,
         coalesce(n.object_type, o.object_type) AS object_type, coalesce(n.object_id, o.object_id) AS object_id,
         coalesce(n.subkey, o.subkey) AS subkey, CASE WHEN n.bucket IS NULL THEN 'REMOVE' ELSE 'PUT' END AS op,
         n.data, n.relid, n.pk, n.fp,
         o.bucket IS NOT NULL AS existed, o.op_id AS old_op_id, o.old_ctid
    FROM _n n FULL JOIN _old o
      ON o.row_key = n.row_key AND o.bucket = n.bucket AND o.object_type = n.object_type
     AND o.object_id = n.object_id AND o.subkey = n.subkey
   WHERE n.bucket IS NULL OR o.fingerprint IS DISTINCT FROM n.fp),
_o AS MATERIALIZED (
  SELECT $1 + row_number() OVER (ORDER BY CASE WHEN EXISTS (SELECT FROM _full) THEN d.bucket END) AS op_id,
         d.bucket, d.op, d.object_type, d.object_id, d.subkey, d.data,
         outpost._op_checksum(d.op, d.object_type, d.object_id, d.subkey, d.data) AS checksum,
         d.relid, d.pk, d.fp, d.existed, d.old_op_id, d.old_ctid
    FROM _d d),
_ops AS (INSERT INTO outpost.ops (bucket, op_id, op, object_type, object_id, subkey, data, checksum)
  SELECT bucket, op_id, op, object_type, object_id, subkey, data, checksum FROM _o),
_new AS (INSERT INTO outpost.bucket_rows (src_key, op_id, fingerprint, bucket, object_type, object_id, subkey)
  SELECT outpost._src_key(relid, pk), op_id, fp, bucket, object_type, object_id, subkey
    FROM _o WHERE op = 'PUT' AND NOT existed),
_wo AS (INSERT INTO outpost.work_ops (op_id, op, fingerprint, existed, old_ctid)
  SELECT op_id, op, fp, existed, old_ctid FROM _o WHERE existed),
_bs AS (INSERT INTO outpost.bucket_state AS s (bucket, def, checksum, op_count, last_op_id, live_rows)
  SELECT bucket, split_part(bucket, '[', 1), sum(checksum) % 4294967296, count(*), max(op_id),
         sum(CASE WHEN op = 'REMOVE' THEN -1 WHEN existed THEN 0 ELSE 1 END)
    FROM _o GROUP BY bucket
  ON CONFLICT (bucket) DO UPDATE
     SET checksum = (s.checksum + excluded.checksum) % 4294967296,
         op_count = s.op_count + excluded.op_count,
         last_op_id = excluded.last_op_id,
         live_rows = s.live_rows + excluded.live_rows),
_sup AS (INSERT INTO outpost.superseded (bucket, op_id, by_op)
  SELECT bucket, old_op_id, op_id FROM _o WHERE old_op_id IS NOT NULL)";

/// Name of the capture trigger function for a table.
pub fn capture_function_name(t: &CaptureTable) -> String {
    format!("outpost.\"capture_{}\"", t.oid)
}

/// Capture for a table, the writer's side of the pipeline: statement-level
/// AFTER triggers with transition tables calling `outpost._capture()`
/// (pg_ext/src/capture.rs), one function in C for every table. It reads the
/// changed rows' keys from the transition tables and appends `(table, key)`
/// rows to the queue with one multi-row heap insert, with no SQL, no
/// executor round per row and no user switch on the writer's path; the tick
/// does the fan-out later. Nobody but that function writes to
/// `outpost.changes`, so the queue holds only keys of rows that a writer
/// really changed, and no role without write access to a synced table can
/// queue anything or make a tick fail. Measured in `make bench`
/// (CONTRIBUTING.md has the profile).
///
/// Older deploys created one PL/pgSQL function per table; this statement
/// drops such a left-over (its triggers are replaced right after).
pub fn capture_function_sql(t: &CaptureTable) -> String {
    format!("DROP FUNCTION IF EXISTS {}()", capture_function_name(t))
}

/// The capture triggers of a table.
pub fn capture_triggers_sql(t: &CaptureTable) -> Vec<String> {
    let tbl = &t.qualified;
    // Dropped first: a restored dump brings these triggers along. The
    // function is closed to PUBLIC (a trigger fires without EXECUTE; only
    // creating one needs it), so nobody can attach it to another table.
    let f = "outpost._capture()";
    vec![
        format!("DROP TRIGGER IF EXISTS outpost_capture_ins ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_upd ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_del ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_trunc ON {tbl}"),
        format!("CREATE TRIGGER outpost_capture_ins AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}"),
        format!("CREATE TRIGGER outpost_capture_upd AFTER UPDATE ON {tbl} REFERENCING OLD TABLE AS outpost_old NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}"),
        format!("CREATE TRIGGER outpost_capture_del AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS outpost_old FOR EACH STATEMENT EXECUTE FUNCTION {f}"),
        format!("CREATE TRIGGER outpost_capture_trunc AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE FUNCTION {f}"),
    ]
}
