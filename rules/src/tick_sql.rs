//! The statement at the heart of a tick, and the capture trigger functions.
//!
//! A tick must read the capture queue and the source tables in **one**
//! snapshot: in READ COMMITTED every statement takes a new snapshot, so a tick
//! spread over several statements could see a writer's changed rows without
//! its queue entries (or the reverse) and publish half a transaction. All reads
//! of user tables therefore happen in this single statement, whose
//! data-modifying CTEs park the results in `outpost.work_*` tables. The rest of
//! the tick only touches tables that the tick lock protects.
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
    if !data.is_empty() {
        s.push_str(",\n_wr AS (INSERT INTO outpost.work_rows (bucket, object_type, object_id, subkey, relid, pk, data)\n  SELECT ");
        if may_duplicate {
            s.push_str("DISTINCT ON (bucket, object_type, object_id, subkey) ");
        }
        s.push_str("bucket, object_type, object_id, subkey, relid, pk, data FROM (\n    ");
        s.push_str(&data.join("\n    UNION ALL "));
        s.push_str("\n  ) _r)");
    }
    if !params.is_empty() {
        s.push_str(",\n_wp AS (INSERT INTO outpost.work_params (query_id, relid, pk, lookup, bucket)\n  SELECT DISTINCT query_id, relid, pk, lookup, bucket FROM (\n    ");
        s.push_str(&params.join("\n    UNION ALL "));
        s.push_str("\n  ) _p)");
    }
    s.push_str("\nSELECT count(*) FROM _changes");
    s
}

/// Name of the capture trigger function for a table.
pub fn capture_function_name(t: &CaptureTable) -> String {
    format!("outpost.\"capture_{}\"", t.oid)
}

/// One statement-level trigger function per table: it writes only
/// (table, key) rows, set-based from the transition tables, so the writer's
/// cost stays close to a plain write; the tick does the fan-out later. It runs
/// as the extension owner (SECURITY DEFINER, pinned search_path): nobody else
/// may write to `outpost.changes`, so the queue holds only keys of rows that
/// a writer really changed, and no role without write access to a synced
/// table can queue anything or make a tick fail. The user switch costs a few
/// percent of a single-row insert (measured in `make bench`).
pub fn capture_function_sql(t: &CaptureTable) -> String {
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

/// The triggers that call [`capture_function_sql`] on a table.
pub fn capture_triggers_sql(t: &CaptureTable) -> Vec<String> {
    let f = capture_function_name(t);
    let tbl = &t.qualified;
    // Dropped first: a restored dump brings these triggers along. The
    // function is closed to PUBLIC (a trigger fires without EXECUTE; only
    // creating one needs it), so nobody can attach it to another table.
    vec![
        format!("REVOKE ALL ON FUNCTION {f}() FROM PUBLIC"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_ins ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_upd ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_del ON {tbl}"),
        format!("DROP TRIGGER IF EXISTS outpost_capture_trunc ON {tbl}"),
        format!("CREATE TRIGGER outpost_capture_ins AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_upd AFTER UPDATE ON {tbl} REFERENCING OLD TABLE AS outpost_old NEW TABLE AS outpost_new FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_del AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS outpost_old FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
        format!("CREATE TRIGGER outpost_capture_trunc AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE FUNCTION {f}()"),
    ]
}
