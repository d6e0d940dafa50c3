//! The statement at the heart of a tick, and the capture trigger functions.
//!
//! A tick must read the capture queue and the source tables in **one**
//! snapshot: in READ COMMITTED every statement takes a new snapshot, so a tick
//! spread over several statements could see a writer's changed rows without
//! its queue entries (or the reverse) and publish half a transaction. All reads
//! of user tables therefore happen in this single statement, whose
//! data-modifying CTEs park the results in `outpost.work_*` tables: the keys
//! (`work_keys`), the parameter lookups (`work_params`) and, diffed against
//! `bucket_rows` in the same statement, the ops with their ids (`work_ops`).
//! The rest of the tick only touches tables that the tick lock protects.
//! The statement takes the last checkpoint as `$1` and returns the number of
//! queue entries and of ops.
//!
//! Queue entries (`outpost.changes.kind`): `k` a row key changed, `t` the table
//! was truncated (re-check every row it had), `f` re-evaluate the whole table
//! for one bucket definition (`def`; a rules deploy). Keys queued by `f` carry
//! their definition, so only that definition's queries and old rows take part.

use crate::compile::{CaptureTable, CompiledRules, ParamQuery};

pub fn tick_statement(rules: &CompiledRules) -> String {
    let mut data = Vec::new();
    let mut params = Vec::new();
    let mut may_duplicate = false;
    for b in &rules.buckets {
        let mut seen = std::collections::BTreeSet::new();
        for q in &b.data_queries {
            // Two queries of one bucket over one table can emit the same row.
            may_duplicate |= q.may_duplicate || !seen.insert((q.relid, q.object_type.clone()));
            data.push(q.sql_keyed.clone());
            data.push(q.sql_full.clone());
        }
        for q in &b.parameter_queries {
            if let ParamQuery::Table {
                sql_keyed,
                sql_full,
                ..
            } = q
            {
                params.push(sql_keyed.clone());
                params.push(sql_full.clone());
            }
        }
    }
    let mut s = String::from(
        "WITH _changes AS (DELETE FROM outpost.changes RETURNING relid, pk, kind, def),
_full AS MATERIALIZED (SELECT DISTINCT relid, def FROM _changes WHERE kind = 'f'),
_trunc AS MATERIALIZED (SELECT DISTINCT relid FROM _changes WHERE kind = 't'),
_keys AS MATERIALIZED (
  SELECT relid, pk, NULL::text AS def FROM _changes WHERE kind = 'k'
  UNION SELECT b.relid, b.pk, NULL FROM outpost.bucket_rows b WHERE b.relid IN (SELECT relid FROM _trunc)
  UNION SELECT p.relid, p.pk, NULL FROM outpost.param_rows p WHERE p.relid IN (SELECT relid FROM _trunc)
  UNION SELECT b.relid, b.pk, f.def FROM _full f
          JOIN outpost.bucket_state s ON s.def = f.def
          CROSS JOIN LATERAL (SELECT r.relid, r.pk FROM outpost.bucket_rows r
                               WHERE hashtext(r.bucket) = hashtext(s.bucket) AND r.bucket = s.bucket
                                 AND r.relid = f.relid OFFSET 0) b
  UNION SELECT p.relid, p.pk, f.def FROM _full f
          JOIN outpost.param_rows p ON p.relid = f.relid AND split_part(p.query_id, '#', 1) = f.def),
_wk AS (INSERT INTO outpost.work_keys (relid, pk, def) SELECT relid, pk, def FROM _keys),
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
    s.push_str("\nSELECT (SELECT count(*) FROM _changes), (SELECT count(*) FROM _wo)");
    s
}

/// The diff, inside the one-snapshot statement: every new row whose
/// fingerprint differs from its current PUT becomes a PUT, every current row
/// of a changed key that no longer comes out becomes a REMOVE; op ids follow
/// `$1` (the last checkpoint; the caller holds the tick lock). Lookups into
/// the big `bucket_rows` are driven by the (small) change set through index
/// scans; OFFSET 0 keeps the planner from turning them into scans of the
/// whole op state.
const DIFF_CTE: &str = ",
_d AS (
  SELECT n.row_key, n.bucket, n.object_type, n.object_id, n.subkey, 'PUT' AS op, n.data,
         n.relid, n.pk, n.fp, o.fingerprint IS NOT NULL AS existed, o.op_id AS old_op_id
    FROM _n n
    LEFT JOIN LATERAL (
        SELECT b.fingerprint, b.op_id FROM outpost.bucket_rows b
         WHERE b.row_key = n.row_key AND b.bucket = n.bucket AND b.object_type = n.object_type
           AND b.object_id = n.object_id AND b.subkey = n.subkey
        OFFSET 0) o ON true
   WHERE o.fingerprint IS DISTINCT FROM n.fp
  UNION ALL
  SELECT b.row_key, b.bucket, b.object_type, b.object_id, b.subkey, 'REMOVE', NULL, b.relid, b.pk,
         NULL, true, b.op_id
    FROM (SELECT relid, pk, bool_or(def IS NULL) AS all_defs, array_agg(def) AS defs
            FROM _keys GROUP BY relid, pk) k
   CROSS JOIN LATERAL (
        SELECT * FROM outpost.bucket_rows b
         WHERE b.src_key = outpost._src_key(k.relid, k.pk) AND b.pk = k.pk AND b.relid = k.relid
        OFFSET 0) b
   WHERE (k.all_defs OR split_part(b.bucket, '[', 1) = ANY (k.defs))
     AND NOT EXISTS (
        SELECT 1 FROM _n n
         WHERE n.bucket = b.bucket AND n.object_type = b.object_type
           AND n.object_id = b.object_id AND n.subkey = b.subkey)),
_wo AS (INSERT INTO outpost.work_ops (op_id, row_key, bucket, op, object_type, object_id, subkey, data,
                                      checksum, relid, pk, fingerprint, existed, old_op_id)
  SELECT $1 + row_number() OVER (),
         d.row_key, d.bucket, d.op, d.object_type, d.object_id, d.subkey, d.data,
         outpost._op_checksum(d.op, d.object_type, d.object_id, d.subkey, d.data),
         d.relid, d.pk, d.fp, d.existed, d.old_op_id
    FROM _d d
  RETURNING 1)";

/// Name of the capture trigger function for a table.
pub fn capture_function_name(t: &CaptureTable) -> String {
    format!("outpost.\"capture_{}\"", t.oid)
}

/// Capture for a table, the writer's side of the pipeline. Plain tables use
/// `outpost._capture()` (pg_ext/src/capture.rs): a row-level trigger in C that
/// appends one `(table, key)` row per changed row to the queue, with no SQL on
/// the writer's path; the tick does the fan-out later. Measured in `make
/// bench` (CONTRIBUTING.md has the profile): transition tables spill whole
/// rows to disk past `work_mem`, and the queue's `INSERT … SELECT` costs an
/// executor round per row, which together made a bulk insert 1.5–1.9x slower.
///
/// Partitioned tables keep a statement-level PL/pgSQL function per table with
/// transition tables (a row trigger on a partitioned table fires on each
/// partition, under the partition's oid): it runs as the extension owner
/// (SECURITY DEFINER, pinned search_path). Either way nobody else may write
/// to `outpost.changes`, so the queue holds only keys of rows that a writer
/// really changed, and no role without write access to a synced table can
/// queue anything or make a tick fail.
///
/// For a plain table this returns a statement that drops a per-table function
/// left from an older deploy (its triggers are replaced right after).
pub fn capture_function_sql(t: &CaptureTable, row_level: bool) -> String {
    if row_level {
        return format!("DROP FUNCTION IF EXISTS {}()", capture_function_name(t));
    }
    let new_keys = t.pk_json.clone();
    format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  now_ms bigint;
BEGIN
  -- TG_RELID, not a constant: a dump restored into another database (new
  -- table oids) keeps capturing correctly.
  IF TG_OP = 'INSERT' THEN
    INSERT INTO outpost.changes (relid, pk, kind) SELECT TG_RELID, {new_keys}, 'k' FROM outpost_new r;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO outpost.changes (relid, pk, kind)
      SELECT TG_RELID, {new_keys}, 'k' FROM outpost_new r
      UNION SELECT TG_RELID, {new_keys}, 'k' FROM outpost_old r;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO outpost.changes (relid, pk, kind) SELECT TG_RELID, {new_keys}, 'k' FROM outpost_old r;
  ELSE
    INSERT INTO outpost.changes (relid, pk, kind) VALUES (TG_RELID, NULL, 't');
  END IF;
  -- NOTIFY serializes committing transactions (a cluster-wide lock held
  -- through the commit's WAL flush), so writers wake the ticker at most once
  -- per 5 ms. A wake-up lost to a rollback costs at most the ticker's
  -- fallback interval.
  now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
  IF now_ms - (SELECT last_value FROM outpost.notify_clock) >= 5 THEN
    PERFORM setval('outpost.notify_clock', now_ms);
    PERFORM pg_notify('outpost_changes', '');
  END IF;
  RETURN NULL;
END
$fn$",
        name = capture_function_name(t),
    )
}

/// The capture triggers of a table (same names either way, so a redeploy or
/// a drop finds them).
pub fn capture_triggers_sql(t: &CaptureTable, row_level: bool) -> Vec<String> {
    let tbl = &t.qualified;
    // Dropped first: a restored dump brings these triggers along. The
    // functions are closed to PUBLIC (a trigger fires without EXECUTE; only
    // creating one needs it), so nobody can attach them to another table.
    let mut v = vec![
        format!("DROP TRIGGER IF EXISTS outpost_capture_ins ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_upd ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_del ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_trunc ON {tbl}"),
    ];
    if row_level {
        let f = "outpost._capture()";
        v.extend([
            format!("CREATE TRIGGER outpost_capture_ins AFTER INSERT ON {tbl} FOR EACH ROW EXECUTE FUNCTION {f}"),
            format!("CREATE TRIGGER outpost_capture_upd AFTER UPDATE ON {tbl} FOR EACH ROW EXECUTE FUNCTION {f}"),
            format!("CREATE TRIGGER outpost_capture_del AFTER DELETE ON {tbl} FOR EACH ROW EXECUTE FUNCTION {f}"),
            format!("CREATE TRIGGER outpost_capture_trunc AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE FUNCTION {f}"),
        ]);
        return v;
    }
    let f = capture_function_name(t);
    v.insert(0, format!("REVOKE ALL ON FUNCTION {f}() FROM PUBLIC"));
    v.extend([
        format!("CREATE TRIGGER outpost_capture_ins AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_upd AFTER UPDATE ON {tbl} REFERENCING OLD TABLE AS outpost_old NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_del AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS outpost_old FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_trunc AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
    ]);
    v
}
