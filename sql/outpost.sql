-- Outpost extension: schema, capture, tick, and the functions the relay calls.
--
-- Pipeline: capture triggers append (table, key) to outpost.changes →
-- outpost.tick() reads committed changes and the rows they point at in ONE
-- statement (one snapshot; generated from the rules by the Rust compiler),
-- diffs the result against outpost.bucket_rows, and appends PUT/REMOVE ops
-- with consecutive op ids to outpost.ops → publishes checkpoint N (the last op
-- id) and NOTIFYs outpost_checkpoint.
--
-- Invariant: checkpoint N contains every op with op_id <= N, forever. Ticks
-- are serialized by an advisory transaction lock, op ids are allocated inside
-- the tick (not from a sequence taken by writers), and the checkpoint row is
-- written in the same transaction as its ops.

-- ---------------------------------------------------------------- catalog --

CREATE TABLE outpost.rules (
    version     bigint PRIMARY KEY,
    sources     jsonb NOT NULL,
    tick_sql    text NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX rules_one_active ON outpost.rules (active) WHERE active;

CREATE TABLE outpost.bucket_defs (
    name        text PRIMARY KEY,
    priority    int NOT NULL,
    param_names text[] NOT NULL,
    source      jsonb NOT NULL,
    compiled    jsonb NOT NULL,
    version     bigint NOT NULL
);

-- pg_dump keeps the rules (outpost.redeploy() rebuilds everything else from
-- them and the source tables) and the write-checkpoint counters (clients
-- compare against them; they must not restart at 1).
SELECT pg_catalog.pg_extension_config_dump('outpost.rules', '');

CREATE TABLE outpost.captured_tables (
    relid     oid PRIMARY KEY,
    qualified text NOT NULL
);

-- ---------------------------------------------------------------- capture --

-- kind: 'k' a row key changed, 't' table truncated, 'f' re-evaluate the whole
-- table for bucket definition `def` (a deploy).
CREATE TABLE outpost.changes (
    relid oid NOT NULL,
    pk    jsonb,
    kind  "char" NOT NULL,
    def   text
);

CREATE TABLE outpost.write_checkpoint_counters (
    user_id   text NOT NULL,
    client_id text NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
SELECT pg_catalog.pg_extension_config_dump('outpost.write_checkpoint_counters', '');

CREATE TABLE outpost.write_checkpoint_requests (
    user_id   text NOT NULL,
    client_id text NOT NULL,
    seq       bigint NOT NULL
);

-- ----------------------------------------------------------------- op log --

CREATE TABLE outpost.ops (
    bucket      text NOT NULL,
    op_id       bigint NOT NULL,
    op          text NOT NULL,
    object_type text,
    object_id   text,
    subkey      text,
    data        text,
    checksum    bigint NOT NULL,
    -- MOVE/CLEAR: the op that superseded what this op replaced. A client
    -- streaming checkpoint C that receives an op with target_op > C must not
    -- complete C (its rows would be wrong although checksums match).
    target_op   bigint,
    PRIMARY KEY (bucket, op_id)
);

-- Ops superseded by a later op of the same row in the same bucket, written by
-- the tick that superseded them; outpost.compact() turns them into MOVEs.
CREATE TABLE outpost.superseded (
    bucket text NOT NULL,
    op_id  bigint NOT NULL,
    by_op  bigint NOT NULL
);

-- Ops removed per bucket by compaction (bucket_state.op_count counts ops ever
-- written; the difference is what a client downloads).
CREATE TABLE outpost.compacted (
    bucket  text PRIMARY KEY,
    removed bigint NOT NULL
);

-- The current PUT of every row in every bucket: what the next tick diffs against.
-- Lookups go through 64-bit hashes (int8 btrees insert far faster than
-- indexes on the texts and jsonb they stand for); every lookup also compares
-- the real columns, so a hash collision costs a row comparison, never a
-- wrong answer. row_key = outpost._row_key(bucket, object_type, object_id,
-- subkey), src_key = outpost._src_key(relid, pk).
CREATE TABLE outpost.bucket_rows (
    row_key     bigint NOT NULL,
    src_key     bigint NOT NULL,
    bucket      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    subkey      text NOT NULL,
    relid       oid NOT NULL,
    pk          jsonb NOT NULL,
    op_id       bigint NOT NULL,
    fingerprint bigint NOT NULL
) WITH (fillfactor = 80);  -- room for HOT updates: a changed row rewrites no index
CREATE INDEX bucket_rows_row ON outpost.bucket_rows (row_key);
CREATE INDEX bucket_rows_source ON outpost.bucket_rows (src_key);
CREATE INDEX bucket_rows_bucket ON outpost.bucket_rows (hashtext(bucket));

-- Running totals, kept current by every tick so a checkpoint costs O(buckets).
CREATE TABLE outpost.bucket_state (
    bucket     text PRIMARY KEY,
    def        text NOT NULL,
    checksum   bigint NOT NULL DEFAULT 0,
    op_count   bigint NOT NULL DEFAULT 0,
    last_op_id bigint NOT NULL DEFAULT 0
);
CREATE INDEX bucket_state_def ON outpost.bucket_state (def);
CREATE INDEX bucket_state_last_op ON outpost.bucket_state (last_op_id);

-- Materialized parameter lookups: which bucket a request value maps to.
CREATE TABLE outpost.param_rows (
    query_id text NOT NULL,
    relid    oid NOT NULL,
    pk       jsonb NOT NULL,
    lookup   jsonb NOT NULL,
    bucket   text NOT NULL
);
CREATE INDEX param_rows_lookup ON outpost.param_rows (query_id, lookup);
CREATE INDEX param_rows_def ON outpost.param_rows (split_part(query_id, '#', 1));
CREATE INDEX param_rows_source ON outpost.param_rows (relid, pk);

CREATE TABLE outpost.compactions (
    finished_at timestamptz NOT NULL,
    removed     bigint NOT NULL,
    checkpoint  bigint NOT NULL
);

CREATE TABLE outpost.checkpoints (
    op_id      bigint PRIMARY KEY,
    ops        bigint NOT NULL,
    -- Parameter lookups changed: some users' bucket sets may differ.
    params_changed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Dumped so that op ids continue above what clients already hold after a
-- restore (retention keeps this table small).
SELECT pg_catalog.pg_extension_config_dump('outpost.checkpoints', '');

CREATE TABLE outpost.write_checkpoints (
    user_id    text NOT NULL,
    client_id  text NOT NULL,
    seq        bigint NOT NULL,
    checkpoint bigint NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX write_checkpoints_checkpoint ON outpost.write_checkpoints (checkpoint);

-- Scratch space of the tick (only ever touched under the tick lock, emptied
-- before it commits). Unlogged: its content never outlives a transaction.
-- def: NULL when every definition re-evaluates the key, else the one that does.
CREATE UNLOGGED TABLE outpost.work_keys (relid oid NOT NULL, pk jsonb NOT NULL, def text);
CREATE UNLOGGED TABLE outpost.work_rows (
    bucket text, object_type text, object_id text, subkey text, relid oid, pk jsonb, data text
);
CREATE UNLOGGED TABLE outpost.work_params (
    query_id text, relid oid, pk jsonb, lookup jsonb, bucket text
);
CREATE UNLOGGED TABLE outpost.work_old_params (
    query_id text, relid oid, pk jsonb, lookup jsonb, bucket text
);
CREATE UNLOGGED TABLE outpost.work_write_checkpoints (user_id text, client_id text, seq bigint);
CREATE UNLOGGED TABLE outpost.work_ops (
    op_id bigint, row_key bigint, bucket text, op text, object_type text, object_id text, subkey text,
    data text, checksum bigint, relid oid, pk jsonb, fingerprint bigint, existed boolean,
    old_op_id bigint
);

-- Capture runs with the writer's privileges: anyone who can write a synced
-- table can queue keys for re-evaluation (and read nothing).
CREATE UNLOGGED SEQUENCE outpost.notify_clock;
GRANT USAGE ON SCHEMA outpost TO PUBLIC;
GRANT INSERT ON outpost.changes TO PUBLIC;
GRANT SELECT, UPDATE ON SEQUENCE outpost.notify_clock TO PUBLIC;

-- ---------------------------------------------------------------- helpers --

-- A value of unknown type as a SQLite client stores it (see compile.rs).
CREATE FUNCTION outpost._sqlite_value(v jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
               WHEN 'boolean' THEN to_jsonb((v #>> '{}')::boolean::int)
               WHEN 'object' THEN to_jsonb(v::text)
               WHEN 'array' THEN to_jsonb(v::text)
               ELSE v
           END
$$;

-- Elements of an array value for `IN`: a JSON array, a JSON array stored as
-- text (how SQLite-shaped data keeps arrays), or a single value.
CREATE FUNCTION outpost._elements(v jsonb) RETURNS SETOF jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT e FROM jsonb_array_elements(
        CASE
            WHEN jsonb_typeof(v) = 'array' THEN v
            WHEN jsonb_typeof(v) = 'string' AND left(v #>> '{}', 1) = '[' THEN (v #>> '{}')::jsonb
            WHEN v IS NULL OR jsonb_typeof(v) = 'null' THEN '[]'::jsonb
            ELSE jsonb_build_array(v)
        END) AS e
$$;

CREATE FUNCTION outpost._row_key(bucket text, object_type text, object_id text, subkey text)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(bucket || chr(1) || object_type || chr(1) || object_id || chr(1) || subkey, 0)
$$;

CREATE FUNCTION outpost._src_key(relid oid, pk jsonb)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(pk::text, relid::bigint)
$$;

CREATE FUNCTION outpost._lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 7303137001::bigint $$;

-- The tables rules may read: every user table, by `schema.name` and, when
-- visible on the search path, by bare name.
CREATE FUNCTION outpost._catalog() RETURNS jsonb
LANGUAGE sql STABLE AS $$
WITH t AS (
    SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS name,
           pg_table_is_visible(c.oid) AS visible,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname,
                                      'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')
              FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
           (SELECT coalesce(jsonb_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum)), '[]')
              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = c.oid AND i.indisprimary) AS primary_key
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'outpost', 'pg_toast')
       AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
)
SELECT jsonb_build_object('tables', coalesce(jsonb_object_agg(key, obj), '{}'::jsonb))
  FROM (SELECT schema || '.' || name AS key, to_jsonb(t) - 'visible' AS obj FROM t
        UNION ALL
        SELECT name, to_jsonb(t) - 'visible' FROM t WHERE visible) x
$$;

-- ------------------------------------------------------------------- tick --

-- Appends the ops in outpost.work_ops to the op log and brings bucket_rows,
-- bucket_state and the superseded list up to date. Caller holds the tick lock.
CREATE FUNCTION outpost._apply_work_ops(n_ops bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp SET jit = off AS $$
BEGIN
    IF n_ops > 5000 THEN
        ANALYZE outpost.work_ops;
    END IF;
    -- Changed rows are updated in place (HOT: no index touched), new ones
    -- inserted, removed ones deleted.
    UPDATE outpost.bucket_rows b SET op_id = w.op_id, fingerprint = w.fingerprint
      FROM outpost.work_ops w
     WHERE w.op = 'PUT' AND w.existed
       AND b.row_key = w.row_key AND b.bucket = w.bucket AND b.object_type = w.object_type
       AND b.object_id = w.object_id AND b.subkey = w.subkey;
    DELETE FROM outpost.bucket_rows b
     USING outpost.work_ops w
     WHERE w.op = 'REMOVE'
       AND b.row_key = w.row_key AND b.bucket = w.bucket AND b.object_type = w.object_type
       AND b.object_id = w.object_id AND b.subkey = w.subkey;
    INSERT INTO outpost.bucket_rows (row_key, src_key, bucket, object_type, object_id, subkey, relid, pk, op_id, fingerprint)
    SELECT row_key, outpost._src_key(relid, pk), bucket, object_type, object_id, subkey, relid, pk, op_id, fingerprint
      FROM outpost.work_ops WHERE op = 'PUT' AND NOT existed;
    INSERT INTO outpost.ops (bucket, op_id, op, object_type, object_id, subkey, data, checksum)
    SELECT bucket, op_id, op, object_type, object_id, subkey, data, checksum FROM outpost.work_ops;
    INSERT INTO outpost.bucket_state AS s (bucket, def, checksum, op_count, last_op_id)
    SELECT bucket, split_part(bucket, '[', 1), sum(checksum) % 4294967296, count(*), max(op_id)
      FROM outpost.work_ops GROUP BY bucket
    ON CONFLICT (bucket) DO UPDATE
       SET checksum = (s.checksum + excluded.checksum) % 4294967296,
           op_count = s.op_count + excluded.op_count,
           last_op_id = excluded.last_op_id;
    INSERT INTO outpost.superseded (bucket, op_id, by_op)
    SELECT bucket, old_op_id, op_id FROM outpost.work_ops WHERE old_op_id IS NOT NULL;
END
$$;

-- The body of a tick; the caller holds the tick lock.
CREATE FUNCTION outpost._tick_locked() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp SET work_mem = '64MB' SET jit = off AS $$
DECLARE
    stmt           text;
    last_cp        bigint;
    n_ops          bigint;
    n_wc           bigint;
    params_changed boolean;
    cp             bigint;
    n_changes      bigint;
BEGIN
    SELECT r.tick_sql INTO stmt FROM outpost.rules r WHERE r.active;
    IF stmt IS NULL THEN
        stmt := outpost._empty_tick_sql();
    END IF;
    -- One statement, one snapshot: every read of user tables happens here.
    BEGIN
        EXECUTE stmt INTO n_changes;
    EXCEPTION WHEN OTHERS THEN
        -- Most likely the schema changed under the rules; say so briefly
        -- instead of echoing the generated statement.
        RAISE EXCEPTION 'outpost.tick: the compiled sync rules failed: %', SQLERRM
            USING ERRCODE = SQLSTATE,
                  DETAIL = coalesce((SELECT string_agg(p.message, '; ') FROM outpost.problems p),
                                    'no schema problem recorded'),
                  HINT = 'Fix the table or redeploy the rules (outpost.deploy_rules).';
    END;

    SELECT coalesce(max(op_id), 0) INTO last_cp FROM outpost.checkpoints;

    -- Big ticks get real statistics so the joins below plan as hash joins.
    IF n_changes > 5000 THEN
        ANALYZE outpost.work_keys, outpost.work_rows, outpost.work_params;
    END IF;

    -- Diff against the current rows. Lookups into the big tables are driven by
    -- the (small) work tables through index scans; OFFSET 0 keeps the planner
    -- from turning them into scans of the whole op state.
    INSERT INTO outpost.work_ops (op_id, row_key, bucket, op, object_type, object_id, subkey, data,
                                  checksum, relid, pk, fingerprint, existed, old_op_id)
    SELECT last_cp + row_number() OVER (),
           d.row_key, d.bucket, d.op, d.object_type, d.object_id, d.subkey, d.data,
           outpost._op_checksum(d.op, d.object_type, d.object_id, d.subkey, d.data),
           d.relid, d.pk, d.fp, d.existed, d.old_op_id
      FROM (
        SELECT n.row_key, n.bucket, n.object_type, n.object_id, n.subkey, 'PUT' AS op, n.data,
               n.relid, n.pk, n.fp, o.fingerprint IS NOT NULL AS existed, o.op_id AS old_op_id
          FROM (SELECT w.*, outpost._fingerprint(w.data) AS fp,
                       outpost._row_key(w.bucket, w.object_type, w.object_id, w.subkey) AS row_key
                  FROM outpost.work_rows w) n
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
                  FROM outpost.work_keys GROUP BY relid, pk) k
         CROSS JOIN LATERAL (
              SELECT * FROM outpost.bucket_rows b
               WHERE b.src_key = outpost._src_key(k.relid, k.pk) AND b.pk = k.pk AND b.relid = k.relid
              OFFSET 0) b
         WHERE (k.all_defs OR split_part(b.bucket, '[', 1) = ANY (k.defs))
           AND NOT EXISTS (
              SELECT 1 FROM outpost.work_rows n
               WHERE n.bucket = b.bucket AND n.object_type = b.object_type
                 AND n.object_id = b.object_id AND n.subkey = b.subkey)
      ) d;
    GET DIAGNOSTICS n_ops = ROW_COUNT;

    IF n_ops > 0 THEN
        PERFORM outpost._apply_work_ops(n_ops);
    END IF;

    -- Parameter lookups of the touched rows: replace, and note whether any changed.
    -- Only tables read by parameter queries can have lookups.
    INSERT INTO outpost.work_old_params
    SELECT p.query_id, p.relid, p.pk, p.lookup, p.bucket
      FROM (SELECT relid, pk, bool_or(def IS NULL) AS all_defs, array_agg(def) AS defs
              FROM outpost.work_keys
             WHERE relid IN (SELECT (q ->> 'relid')::oid
                               FROM outpost.bucket_defs d,
                                    jsonb_array_elements(d.compiled -> 'parameter_queries') q
                              WHERE q ->> 'kind' = 'table')
             GROUP BY relid, pk) k
     CROSS JOIN LATERAL (
          SELECT * FROM outpost.param_rows p WHERE p.relid = k.relid AND p.pk = k.pk OFFSET 0) p
     WHERE k.all_defs OR split_part(p.query_id, '#', 1) = ANY (k.defs);
    SELECT EXISTS (
        (SELECT * FROM outpost.work_old_params
         EXCEPT SELECT query_id, relid, pk, lookup, bucket FROM outpost.work_params)
        UNION ALL
        (SELECT query_id, relid, pk, lookup, bucket FROM outpost.work_params
         EXCEPT SELECT * FROM outpost.work_old_params)
    ) INTO params_changed;
    IF params_changed THEN
        DELETE FROM outpost.param_rows p USING outpost.work_old_params o
         WHERE p.relid = o.relid AND p.pk = o.pk AND p.query_id = o.query_id;
        INSERT INTO outpost.param_rows (query_id, relid, pk, lookup, bucket)
        SELECT query_id, relid, pk, lookup, bucket FROM outpost.work_params;
    END IF;

    SELECT count(*) INTO n_wc FROM outpost.work_write_checkpoints;

    IF n_ops > 0 OR params_changed OR n_wc > 0 THEN
        cp := last_cp + greatest(n_ops, 1);
        INSERT INTO outpost.checkpoints (op_id, ops, params_changed) VALUES (cp, n_ops, params_changed);
        INSERT INTO outpost.write_checkpoints AS w (user_id, client_id, seq, checkpoint)
        SELECT user_id, client_id, seq, cp FROM outpost.work_write_checkpoints
        ON CONFLICT (user_id, client_id) DO UPDATE
           SET seq = greatest(w.seq, excluded.seq), checkpoint = excluded.checkpoint;
        PERFORM pg_notify('outpost_checkpoint', cp::text);
    ELSE
        cp := last_cp;
    END IF;

    -- TRUNCATE leaves no dead rows to scan but rewrites catalog entries, so
    -- it is reserved for big ticks.
    IF n_changes > 5000 OR n_ops > 5000 THEN
        TRUNCATE outpost.work_keys, outpost.work_rows, outpost.work_params,
                 outpost.work_write_checkpoints, outpost.work_ops, outpost.work_old_params;
    ELSE
        DELETE FROM outpost.work_keys;
        DELETE FROM outpost.work_rows;
        DELETE FROM outpost.work_params;
        DELETE FROM outpost.work_write_checkpoints;
        DELETE FROM outpost.work_ops;
        DELETE FROM outpost.work_old_params;
    END IF;
    RETURN cp;
END
$$;

CREATE FUNCTION outpost.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
BEGIN
    -- In REPEATABLE READ the snapshot would predate the lock wait and miss the
    -- previous tick's commit (its ops would be diffed twice).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'outpost.tick() must run in READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it in its own transaction with the default isolation level.';
    END IF;
    PERFORM pg_advisory_xact_lock(outpost._lock_key());
    RETURN outpost._tick_locked();
END
$$;

CREATE FUNCTION outpost.checkpoint() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(max(op_id), 0) FROM outpost.checkpoints
$$;

-- ------------------------------------------------------------------ rules --

-- Raises with bucket, query and problem when Postgres rejects a compiled query.
CREATE FUNCTION outpost._check_plan(plan jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    chk jsonb;
BEGIN
    FOR chk IN SELECT * FROM jsonb_array_elements(plan -> 'checks') LOOP
        BEGIN
            EXECUTE chk ->> 'sql' USING '{}'::jsonb, '{}'::jsonb;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION '%: %', chk ->> 'location', SQLERRM
                USING ERRCODE = 'invalid_parameter_value';
        END;
    END LOOP;
END
$$;

-- Activates a set of bucket sources: capture, materialization, one new version.
-- Buckets whose compiled definition did not change keep their ops; changed
-- ones are re-evaluated in place (the tick emits only the differences).
CREATE FUNCTION outpost._apply(new_sources jsonb, catalog jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp
SET client_min_messages = warning AS $$
DECLARE
    plan         jsonb;
    new_ver      bigint;
    rel          record;
    stmt         text;
    removed_defs text[];
    changed_defs text[];
BEGIN
    plan := outpost._plan(new_sources, catalog);
    PERFORM outpost._check_plan(plan);
    PERFORM pg_advisory_xact_lock(outpost._lock_key());

    CREATE TEMP TABLE IF NOT EXISTS _outpost_new_defs (name text, compiled jsonb) ON COMMIT DROP;
    DELETE FROM _outpost_new_defs;
    INSERT INTO _outpost_new_defs
    SELECT b -> 'source' ->> 'name', b FROM jsonb_array_elements(plan -> 'buckets') b;

    -- Re-evaluate each added or changed definition over the tables its old and
    -- new versions read; other definitions are not touched.
    INSERT INTO outpost.changes (relid, pk, kind, def)
    SELECT DISTINCT relid, NULL::jsonb, 'f', changed.name
      FROM (SELECT d.name, d.compiled AS c FROM outpost.bucket_defs d
              JOIN _outpost_new_defs n ON n.name = d.name
             WHERE n.compiled IS DISTINCT FROM d.compiled
            UNION ALL
            SELECT n.name, n.compiled FROM _outpost_new_defs n
              LEFT JOIN outpost.bucket_defs d ON d.name = n.name
             WHERE d.compiled IS DISTINCT FROM n.compiled) changed,
           LATERAL (SELECT (q ->> 'relid')::oid AS relid FROM jsonb_array_elements(changed.c -> 'data_queries') q
                    UNION ALL
                    SELECT (q ->> 'relid')::oid FROM jsonb_array_elements(changed.c -> 'parameter_queries') q
                     WHERE q ->> 'kind' = 'table') r;

    -- Removed definitions: their buckets disappear. Every statement goes
    -- through the removed buckets' keys, so the cost follows what is removed.
    removed_defs := ARRAY(SELECT d.name FROM outpost.bucket_defs d
                           WHERE d.name NOT IN (SELECT name FROM _outpost_new_defs));
    IF cardinality(removed_defs) > 0 THEN
        CREATE TEMP TABLE IF NOT EXISTS _outpost_gone (bucket text) ON COMMIT DROP;
        DELETE FROM _outpost_gone;
        INSERT INTO _outpost_gone SELECT s.bucket FROM outpost.bucket_state s WHERE s.def = ANY (removed_defs);
        DELETE FROM outpost.ops o USING _outpost_gone g WHERE o.bucket = g.bucket;
        DELETE FROM outpost.bucket_rows r USING _outpost_gone g
         WHERE hashtext(r.bucket) = hashtext(g.bucket) AND r.bucket = g.bucket;
        DELETE FROM outpost.superseded x USING _outpost_gone g WHERE x.bucket = g.bucket;
        DELETE FROM outpost.compacted x USING _outpost_gone g WHERE x.bucket = g.bucket;
        DELETE FROM outpost.bucket_state s USING _outpost_gone g WHERE s.bucket = g.bucket;
    END IF;
    -- Lookups of changed and removed definitions are rebuilt by the re-evaluation.
    changed_defs := ARRAY(SELECT d.name FROM outpost.bucket_defs d
                            JOIN _outpost_new_defs n ON n.name = d.name
                           WHERE n.compiled IS DISTINCT FROM d.compiled);
    DELETE FROM outpost.param_rows p
     WHERE split_part(p.query_id, '#', 1) = ANY (removed_defs || changed_defs);

    -- Capture: drop it where a table left the rules, install it where one joined.
    FOR rel IN SELECT c.relid, c.qualified FROM outpost.captured_tables c
                WHERE c.relid NOT IN (SELECT (t ->> 'oid')::oid FROM jsonb_array_elements(plan -> 'tables') t)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = rel.relid) THEN
            FOREACH stmt IN ARRAY ARRAY['outpost_capture_ins', 'outpost_capture_upd',
                                        'outpost_capture_del', 'outpost_capture_trunc'] LOOP
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', stmt, rel.relid::regclass);
            END LOOP;
        END IF;
        EXECUTE format('DROP FUNCTION IF EXISTS outpost.%I()', 'capture_' || rel.relid);
        DELETE FROM outpost.captured_tables WHERE relid = rel.relid;
    END LOOP;
    FOR rel IN SELECT t AS plan_table FROM jsonb_array_elements(plan -> 'tables') t
                WHERE (t ->> 'oid')::oid NOT IN (SELECT relid FROM outpost.captured_tables)
    LOOP
        EXECUTE rel.plan_table ->> 'function_sql';
        FOR stmt IN SELECT jsonb_array_elements_text(rel.plan_table -> 'triggers_sql') LOOP
            EXECUTE stmt;
        END LOOP;
        INSERT INTO outpost.captured_tables (relid, qualified)
        VALUES ((rel.plan_table ->> 'oid')::oid, rel.plan_table ->> 'qualified');
    END LOOP;

    -- Capture functions no trigger uses any more (e.g. brought by a restored dump).
    FOR stmt IN SELECT p.proname FROM pg_proc p
                 WHERE p.pronamespace = 'outpost'::regnamespace AND p.proname LIKE 'capture\_%'
                   AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid)
    LOOP
        EXECUTE format('DROP FUNCTION outpost.%I()', stmt);
    END LOOP;

    SELECT coalesce(max(version), 0) + 1 INTO new_ver FROM outpost.rules;
    UPDATE outpost.rules SET active = false WHERE active;
    INSERT INTO outpost.rules (version, sources, tick_sql, active)
    VALUES (new_ver, new_sources, plan ->> 'tick_sql', true);
    DELETE FROM outpost.bucket_defs;
    INSERT INTO outpost.bucket_defs (name, priority, param_names, source, compiled, version)
    SELECT n.name, (n.compiled -> 'source' ->> 'priority')::int,
           ARRAY(SELECT jsonb_array_elements_text(n.compiled -> 'param_names')),
           n.compiled -> 'source', n.compiled, new_ver
      FROM _outpost_new_defs n;
    DROP TABLE _outpost_new_defs;

    DELETE FROM outpost.problems WHERE kind = 'schema';
    PERFORM outpost._tick_locked();
    RETURN new_ver;
END
$$;

-- Re-applies the active rules against the current catalog: after restoring a
-- dump (which keeps outpost.rules but not the op log) this rebuilds buckets,
-- capture and lookups from the source tables.
CREATE FUNCTION outpost.redeploy() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    sources jsonb := outpost._active_sources();
BEGIN
    IF sources IS NULL THEN
        RAISE EXCEPTION 'no rules have been deployed' USING ERRCODE = 'undefined_object';
    END IF;
    RETURN outpost._apply(sources, outpost._catalog());
END
$$;

CREATE FUNCTION outpost.deploy_rules(rules text) RETURNS bigint
LANGUAGE sql AS $$
    -- The catalog is read here, with the caller's search_path, so bare table
    -- names resolve the way the caller sees them.
    SELECT outpost._apply(outpost._parse_yaml(rules), outpost._catalog())
$$;

CREATE FUNCTION outpost.validate_rules(rules text)
RETURNS TABLE (level text, message text, location text)
LANGUAGE plpgsql AS $$
DECLARE
    res jsonb;
    chk jsonb;
BEGIN
    res := outpost._validate_yaml(rules, outpost._catalog());
    RETURN QUERY SELECT p ->> 'level', p ->> 'message', p ->> 'location'
                   FROM jsonb_array_elements(res -> 'problems') p;
    IF res -> 'plan' IS NOT NULL AND jsonb_typeof(res -> 'plan') = 'object' THEN
        FOR chk IN SELECT * FROM jsonb_array_elements(res -> 'plan' -> 'checks') LOOP
            BEGIN
                EXECUTE chk ->> 'sql' USING '{}'::jsonb, '{}'::jsonb;
            EXCEPTION WHEN OTHERS THEN
                level := 'error';
                message := SQLERRM;
                location := chk ->> 'location';
                RETURN NEXT;
            END;
        END LOOP;
    END IF;
END
$$;

-- Rules as SQL, one bucket at a time (for migration tools). Same validation
-- and catalog as deploy_rules; transactional like any DDL.
CREATE FUNCTION outpost.define_bucket(name text, parameters text[], data text[], priority int DEFAULT 3)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._apply(
        (SELECT coalesce(jsonb_agg(x.s ORDER BY x.s ->> 'name'), '[]'::jsonb)
           FROM (SELECT d.source AS s FROM outpost.bucket_defs d WHERE d.name <> define_bucket.name
                 UNION ALL
                 SELECT jsonb_build_object(
                            'name', define_bucket.name,
                            'parameters', to_jsonb(coalesce(define_bucket.parameters, '{}'::text[])),
                            'data', to_jsonb(coalesce(define_bucket.data, '{}'::text[])),
                            'priority', define_bucket.priority)) x),
        outpost._catalog())
$$;

CREATE FUNCTION outpost.drop_bucket(name text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outpost.bucket_defs d WHERE d.name = drop_bucket.name) THEN
        RAISE EXCEPTION 'bucket "%" is not defined', drop_bucket.name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN outpost._apply(
        (SELECT coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb)
           FROM outpost.bucket_defs d WHERE d.name <> drop_bucket.name),
        outpost._catalog());
END
$$;

CREATE FUNCTION outpost.rules_yaml() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT outpost._to_yaml(coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb))
      FROM outpost.bucket_defs d
$$;

CREATE VIEW outpost.buckets AS
SELECT d.name,
       d.priority,
       d.param_names AS parameter_names,
       ARRAY(SELECT jsonb_array_elements_text(d.source -> 'parameters')) AS parameters,
       ARRAY(SELECT jsonb_array_elements_text(d.source -> 'data')) AS data,
       d.version
  FROM outpost.bucket_defs d;

-- ------------------------------------------------------- relay interface --

-- The client schema (PowerSync's schema JSON) the active rules produce:
-- one table per output type, its columns with SQLite types, `id` implied.
-- Columns a type gets from several queries are merged.
CREATE FUNCTION outpost.client_schema() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH cols AS (
        SELECT q ->> 'object_type' AS tbl, c ->> 'name' AS name, c ->> 'sqlite_type' AS type, ord
          FROM outpost.bucket_defs d,
               jsonb_array_elements(d.compiled -> 'data_queries') q,
               jsonb_array_elements(q -> 'columns') WITH ORDINALITY AS c(c, ord)
    ), merged AS (
        SELECT tbl, name, min(type) AS type, min(ord) AS ord FROM cols WHERE name <> 'id'
         GROUP BY tbl, name
    )
    SELECT jsonb_build_object('tables', coalesce(jsonb_agg(t ORDER BY t ->> 'name'), '[]'::jsonb))
      FROM (SELECT jsonb_build_object('name', tbl,
                                      'columns', jsonb_agg(jsonb_build_object('name', name, 'type', type)
                                                           ORDER BY ord, name)) AS t
              FROM merged GROUP BY tbl) x
$$;

-- The buckets a request may read: static parameter queries evaluate request
-- values; table ones look them up in the lookups the ticks materialized.
CREATE FUNCTION outpost.user_buckets(claims jsonb, params jsonb)
RETURNS TABLE (bucket text, priority int)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
DECLARE
    q record;
BEGIN
    FOR q IN SELECT d.priority AS prio, pq
               FROM outpost.bucket_defs d, jsonb_array_elements(d.compiled -> 'parameter_queries') pq
    LOOP
        -- Request values come from the client (parameters) or the token; one
        -- that fails to evaluate (e.g. a non-number cast to int) grants that
        -- query's buckets nothing instead of failing the whole request.
        BEGIN
            IF q.pq ->> 'kind' = 'static' THEN
                RETURN QUERY EXECUTE format('SELECT s.bucket::text, %s::int FROM (%s) s', q.prio, q.pq ->> 'sql')
                    USING claims, coalesce(params, '{}'::jsonb);
            ELSE
                RETURN QUERY EXECUTE
                    'SELECT DISTINCT p.bucket, $3::int FROM outpost.param_rows p WHERE p.query_id = $4 AND p.lookup IN ('
                    || (q.pq ->> 'lookup_sql') || ')'
                    USING claims, coalesce(params, '{}'::jsonb), q.prio, q.pq ->> 'id';
            END IF;
        EXCEPTION WHEN data_exception THEN
            RAISE WARNING 'outpost: parameter query % skipped for this request: %', q.pq ->> 'id', SQLERRM;
        END;
    END LOOP;
END
$$;

-- Everything a stream needs to start or diff, from one snapshot.
CREATE FUNCTION outpost.sync_checkpoint(claims jsonb, params jsonb, client_id text)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
    WITH b AS (
        SELECT u.bucket, min(u.priority) AS priority FROM outpost.user_buckets(claims, params) u
         GROUP BY u.bucket
    )
    SELECT jsonb_build_object(
        'checkpoint', outpost.checkpoint(),
        'rules_version', (SELECT r.version FROM outpost.rules r WHERE r.active),
        'write_checkpoint', (SELECT w.seq FROM outpost.write_checkpoints w
                              WHERE w.user_id = claims ->> 'sub' AND w.client_id = sync_checkpoint.client_id),
        'buckets', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'bucket', b.bucket,
                       'checksum', coalesce(s.checksum, 0),
                       'count', coalesce(s.op_count, 0) - coalesce(x.removed, 0),
                       'priority', b.priority) ORDER BY b.priority, b.bucket)
              FROM b LEFT JOIN outpost.bucket_state s ON s.bucket = b.bucket
                     LEFT JOIN outpost.compacted x ON x.bucket = b.bucket), '[]'::jsonb))
$$;

-- Ops of the given buckets with afters[i] < op_id <= checkpoint, bucket by
-- bucket in the given order, at most max_ops rows. One index range scan per
-- bucket, stopping as soon as the page is full: cost follows the page, not
-- the number of buckets asked for.
CREATE FUNCTION outpost.bucket_ops(buckets text[], afters bigint[], checkpoint bigint, max_ops int)
RETURNS TABLE (bucket text, op_id bigint, op text, object_type text, object_id text,
               subkey text, data text, checksum bigint, target_op bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
DECLARE
    i    int;
    remaining int := max_ops;
    n    bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(buckets, 1), 0) LOOP
        EXIT WHEN remaining <= 0;
        RETURN QUERY
            SELECT x.bucket, x.op_id, x.op, x.object_type, x.object_id, x.subkey, x.data,
                   x.checksum, x.target_op
              FROM outpost.ops x
             WHERE x.bucket = buckets[i] AND x.op_id > afters[i] AND x.op_id <= bucket_ops.checkpoint
             ORDER BY x.op_id
             LIMIT remaining;
        GET DIAGNOSTICS n = ROW_COUNT;
        remaining := remaining - n::int;
    END LOOP;
END
$$;

-- What changed after checkpoint `since`, read once per checkpoint and shared
-- by all of a relay's streams: the latest checkpoint, the rules version,
-- whether every user's bucket set is as it was (no parameter lookup changed;
-- false when `since` is older than the checkpoints kept), the changed buckets
-- as [bucket, checksum, count] and new write checkpoints as [user, client, seq].
CREATE FUNCTION outpost.changes_since(since bigint)
RETURNS TABLE (checkpoint bigint, rules_version bigint, bucket_sets_stable boolean,
               buckets jsonb, write_checkpoints jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
    SELECT outpost.checkpoint(),
           (SELECT r.version FROM outpost.rules r WHERE r.active),
           NOT EXISTS (SELECT 1 FROM outpost.checkpoints c WHERE c.op_id > since AND c.params_changed)
             AND since >= coalesce((SELECT min(c.op_id) FROM outpost.checkpoints c), 0),
           (SELECT coalesce(jsonb_agg(jsonb_build_array(s.bucket, s.checksum,
                                                        s.op_count - coalesce(x.removed, 0))), '[]')
              FROM outpost.bucket_state s LEFT JOIN outpost.compacted x ON x.bucket = s.bucket
             WHERE s.last_op_id > since),
           (SELECT coalesce(jsonb_agg(jsonb_build_array(w.user_id, w.client_id, w.seq)), '[]')
              FROM outpost.write_checkpoints w WHERE w.checkpoint > since)
$$;

CREATE FUNCTION outpost.request_write_checkpoint(user_id text, client_id text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
DECLARE
    s bigint;
BEGIN
    INSERT INTO outpost.write_checkpoint_counters AS c (user_id, client_id, seq)
    VALUES (request_write_checkpoint.user_id, request_write_checkpoint.client_id, 1)
    ON CONFLICT ON CONSTRAINT write_checkpoint_counters_pkey DO UPDATE SET seq = c.seq + 1
    RETURNING c.seq INTO s;
    INSERT INTO outpost.write_checkpoint_requests (user_id, client_id, seq)
    VALUES (request_write_checkpoint.user_id, request_write_checkpoint.client_id, s);
    PERFORM pg_notify('outpost_changes', '');
    RETURN s;
END
$$;


-- ------------------------------------------------------------- compaction --

-- Settings (SET outpost.… or ALTER DATABASE … SET outpost.…):
--   outpost.defrag_ratio    (default 0.2)  re-PUT a bucket's live rows when they
--                                          are fewer than this fraction of its ops
--   outpost.defrag_min_ops  (default 1000) ...and it has at least this many ops
--   outpost.retention       (default '7 days') keep checkpoints and write
--                                          checkpoints this long
CREATE FUNCTION outpost._setting(name text, fallback text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting(name, true), ''), fallback)
$$;

-- Replaces superseded ops by MOVEs and the leading MOVE/REMOVE run of each
-- touched bucket by one CLEAR. Checksums at every later checkpoint are
-- unchanged: a MOVE keeps its op's checksum, a CLEAR carries the sum of what
-- it replaces. Needs no tick lock: it only rewrites ops below the checkpoint
-- it reads, which ticks never touch.
CREATE FUNCTION outpost._compact_pass(upto bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp SET jit = off AS $$
DECLARE
    b         text;
    first_put bigint;
    run       record;
    removed   bigint := 0;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS _outpost_touched (bucket text PRIMARY KEY) ON COMMIT DROP;
    DELETE FROM _outpost_touched;

    -- In batches, so each statement's memory stays bounded however much
    -- history piled up since the last compaction.
    LOOP
        WITH s AS (
            DELETE FROM outpost.superseded x
             WHERE x.ctid = ANY (ARRAY(SELECT y.ctid FROM outpost.superseded y
                                        WHERE y.by_op <= upto LIMIT 10000))
            RETURNING x.bucket, x.op_id, x.by_op
        ), moved AS (
            UPDATE outpost.ops o
               SET op = 'MOVE', object_type = NULL, object_id = NULL, subkey = NULL, data = NULL,
                   target_op = s.by_op
              FROM s
             WHERE o.bucket = s.bucket AND o.op_id = s.op_id AND o.op IN ('PUT', 'REMOVE')
            RETURNING o.bucket
        )
        INSERT INTO _outpost_touched SELECT DISTINCT bucket FROM moved ON CONFLICT DO NOTHING;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM outpost.superseded y WHERE y.by_op <= upto);
    END LOOP;

    FOR b IN SELECT t.bucket FROM _outpost_touched t ORDER BY t.bucket LOOP
        SELECT min(o.op_id) INTO first_put FROM outpost.ops o
         WHERE o.bucket = b AND o.op = 'PUT';
        SELECT count(*) AS n, max(o.op_id) AS last, bool_and(o.op = 'CLEAR') AS only_clear
          INTO run
          FROM outpost.ops o
         WHERE o.bucket = b AND o.op_id <= upto AND (first_put IS NULL OR o.op_id < first_put);
        CONTINUE WHEN run.n = 0 OR (run.n = 1 AND run.only_clear);
        WITH gone AS (
            DELETE FROM outpost.ops o
             WHERE o.bucket = b AND o.op_id <= run.last
            RETURNING o.op_id, o.checksum, coalesce(o.target_op, o.op_id) AS target
        )
        INSERT INTO outpost.ops (bucket, op_id, op, checksum, target_op)
        SELECT b, max(op_id), 'CLEAR', sum(checksum) % 4294967296, max(target) FROM gone;
        INSERT INTO outpost.compacted AS c (bucket, removed) VALUES (b, run.n - 1)
        ON CONFLICT (bucket) DO UPDATE SET removed = c.removed + excluded.removed;
        removed := removed + run.n - 1;
    END LOOP;
    RETURN removed;
END
$$;

-- Re-PUTs the live rows of buckets whose ops are mostly history, so that a
-- later pass folds that history into one CLEAR and a fresh client downloads
-- about the live rows alone. Takes the tick lock (op ids are allocated).
CREATE FUNCTION outpost._defragment() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp SET jit = off AS $$
DECLARE
    ratio   float8 := outpost._setting('outpost.defrag_ratio', '0.2')::float8;
    min_ops bigint := outpost._setting('outpost.defrag_min_ops', '1000')::bigint;
    last_cp bigint;
    n_ops   bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(outpost._lock_key());
    SELECT coalesce(max(op_id), 0) INTO last_cp FROM outpost.checkpoints;
    INSERT INTO outpost.work_ops (op_id, row_key, bucket, op, object_type, object_id, subkey, data,
                                  checksum, relid, pk, fingerprint, existed, old_op_id)
    SELECT last_cp + row_number() OVER (), r.row_key, r.bucket, 'PUT', r.object_type, r.object_id,
           r.subkey, o.data, o.checksum, r.relid, r.pk, r.fingerprint, true, r.op_id
      FROM (SELECT s.bucket
              FROM outpost.bucket_state s LEFT JOIN outpost.compacted c ON c.bucket = s.bucket
             WHERE s.op_count - coalesce(c.removed, 0) >= min_ops
               AND (SELECT count(*) FROM outpost.bucket_rows r WHERE r.bucket = s.bucket)
                   < ratio * (s.op_count - coalesce(c.removed, 0))) d
      JOIN outpost.bucket_rows r ON r.bucket = d.bucket
      JOIN outpost.ops o ON o.bucket = r.bucket AND o.op_id = r.op_id;
    GET DIAGNOSTICS n_ops = ROW_COUNT;
    IF n_ops > 0 THEN
        PERFORM outpost._apply_work_ops(n_ops);
        INSERT INTO outpost.checkpoints (op_id, ops) VALUES (last_cp + n_ops, n_ops);
        PERFORM pg_notify('outpost_checkpoint', (last_cp + n_ops)::text);
        DELETE FROM outpost.work_ops;
    END IF;
    RETURN n_ops;
END
$$;

-- Compacts the op log online; returns the number of ops removed.
CREATE FUNCTION outpost.compact() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
DECLARE
    removed   bigint;
    retention interval := outpost._setting('outpost.retention', '7 days')::interval;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'outpost.compact() must run in READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- One compaction at a time; a second caller returns at once.
    IF NOT pg_try_advisory_xact_lock(outpost._lock_key() + 1) THEN
        RETURN 0;
    END IF;
    removed := outpost._compact_pass(outpost.checkpoint());
    IF outpost._defragment() > 0 THEN
        removed := removed + outpost._compact_pass(outpost.checkpoint());
    END IF;
    -- Retention: old checkpoints (the latest always stays) and idle write checkpoints.
    DELETE FROM outpost.checkpoints c
     WHERE c.created_at < now() - retention AND c.op_id < outpost.checkpoint();
    DELETE FROM outpost.write_checkpoints w
     WHERE NOT EXISTS (SELECT 1 FROM outpost.checkpoints c WHERE c.op_id = w.checkpoint)
       AND w.checkpoint < (SELECT min(op_id) FROM outpost.checkpoints);
    DELETE FROM outpost.compactions WHERE finished_at < now() - retention;
    INSERT INTO outpost.compactions (finished_at, removed, checkpoint) VALUES (now(), removed, outpost.checkpoint());
    RETURN removed;
END
$$;

-- ------------------------------------------------------------ schema changes --

-- Problems sync cannot fix by itself (schema changes that break the rules).
CREATE TABLE outpost.problems (
    kind    text NOT NULL,
    message text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION outpost._active_sources() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
    SELECT r.sources FROM outpost.rules r WHERE r.active
$$;

CREATE FUNCTION outpost._record_problem(kind text, message text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
    DELETE FROM outpost.problems p WHERE p.kind = _record_problem.kind;
    INSERT INTO outpost.problems (kind, message) VALUES (_record_problem.kind, _record_problem.message);
$$;

CREATE FUNCTION outpost._clear_problem(kind text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
    DELETE FROM outpost.problems p WHERE p.kind = _clear_problem.kind;
$$;

-- After ALTER TABLE on a synced table the rules are compiled again against the
-- new catalog: an added column reaches `SELECT *` buckets, a type change is
-- re-evaluated. When the rules no longer compile (a referenced column dropped
-- or renamed, a table renamed) the DDL still succeeds, the problem is recorded
-- in outpost.problems (and outpost.stats) and raised as a WARNING; ticks then
-- fail with the same message until the rules or the table are fixed — sync
-- stops rather than stream wrong rows. Runs with the caller's search_path so
-- bare table names resolve as they did at deploy.
CREATE FUNCTION outpost._on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    sources jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c
                    WHERE c.classid = 'pg_class'::regclass
                      AND c.objid IN (SELECT relid FROM outpost.captured_tables)) THEN
        RETURN;
    END IF;
    sources := outpost._active_sources();
    IF sources IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM outpost._apply(sources, outpost._catalog());
        PERFORM outpost._clear_problem('schema');
    EXCEPTION WHEN OTHERS THEN
        PERFORM outpost._record_problem('schema', SQLERRM);
        RAISE WARNING 'outpost: the sync rules no longer match the schema: %', SQLERRM
            USING HINT = 'Sync is stopped until the table or the rules are fixed (outpost.deploy_rules).';
    END;
END
$$;

CREATE FUNCTION outpost._on_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    gone text;
BEGIN
    SELECT string_agg(o.object_identity, ', ') INTO gone
      FROM pg_event_trigger_dropped_objects() o
     WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0
       AND o.objid IN (SELECT relid FROM outpost.captured_tables);
    IF gone IS NOT NULL THEN
        PERFORM outpost._record_problem('schema', format('synced table %s was dropped; the rules still read it', gone));
        RAISE WARNING 'outpost: synced table % was dropped; the rules still read it', gone
            USING HINT = 'Deploy rules without it (outpost.deploy_rules or outpost.drop_bucket).';
    END IF;
END
$$;

CREATE EVENT TRIGGER outpost_alter_table ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION outpost._on_alter_table();
CREATE EVENT TRIGGER outpost_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION outpost._on_drop();

-- ------------------------------------------------------------------ stats --

CREATE VIEW outpost.stats AS
SELECT (SELECT count(*) FROM outpost.bucket_defs) AS bucket_definitions,
       (SELECT count(*) FROM outpost.bucket_state) AS buckets,
       (SELECT count(*) FROM outpost.ops) AS ops,
       (SELECT count(*) FROM outpost.bucket_rows) AS rows,
       (SELECT count(*) FROM outpost.changes) AS pending_changes,
       outpost.checkpoint() AS checkpoint,
       (SELECT max(created_at) FROM outpost.checkpoints) AS last_checkpoint_at,
       (SELECT version FROM outpost.rules WHERE active) AS rules_version,
       (SELECT count(*) FROM outpost.captured_tables) AS captured_tables,
       (SELECT count(*) FROM outpost.superseded) AS superseded_ops,
       (SELECT max(finished_at) FROM outpost.compactions) AS last_compaction_at,
       (SELECT coalesce(array_agg(p.message ORDER BY p.at), '{}') FROM outpost.problems p) AS problems,
       (SELECT coalesce(array_agg(c.qualified ORDER BY c.qualified), '{}')
          FROM outpost.captured_tables c
         WHERE NOT EXISTS (SELECT 1 FROM pg_class p WHERE p.oid = c.relid)) AS missing_tables;

-- ------------------------------------------------------------- privileges --

-- Functions execute for PUBLIC by default. Everything that reads across users
-- (sync_checkpoint, bucket_ops, …), changes rules, or touches the op log is
-- for the extension owner and the relay's role only: a database role that may
-- call sync_checkpoint could claim any user's identity. What stays public:
-- capture (it runs as the writer), apply_crud (runs as the caller, under RLS),
-- the pure helpers, checkpoint(), and what the event triggers call on behalf
-- of a table owner.
REVOKE EXECUTE ON FUNCTION
    outpost._apply_work_ops(bigint), outpost._tick_locked(), outpost.tick(),
    outpost._check_plan(jsonb), outpost._apply(jsonb, jsonb), outpost.redeploy(),
    outpost.deploy_rules(text), outpost.validate_rules(text),
    outpost.define_bucket(text, text[], text[], int), outpost.drop_bucket(text),
    outpost.rules_yaml(), outpost.client_schema(), outpost.user_buckets(jsonb, jsonb),
    outpost.sync_checkpoint(jsonb, jsonb, text),
    outpost.bucket_ops(text[], bigint[], bigint, int), outpost.changes_since(bigint),
    outpost.request_write_checkpoint(text, text), outpost._compact_pass(bigint),
    outpost._defragment(), outpost.compact(), outpost._active_sources()
FROM PUBLIC;

-- ALTER TABLE by a table owner who is not the extension owner must still be
-- able to recompile the rules: the event trigger runs with the owner's rights
-- (and the caller's search_path, for table names).
ALTER FUNCTION outpost._on_alter_table() SECURITY DEFINER;
ALTER FUNCTION outpost._on_drop() SECURITY DEFINER;

-- What a relay needs: `SELECT outpost.grant_relay('relay_role')`.
CREATE FUNCTION outpost.grant_relay(role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA outpost TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION outpost.tick(), outpost.compact(),
        outpost.client_schema(), outpost.sync_checkpoint(jsonb, jsonb, text),
        outpost.bucket_ops(text[], bigint[], bigint, int), outpost.changes_since(bigint),
        outpost.request_write_checkpoint(text, text) TO %I', role);
    -- sql/checkpoint_request.sql
    EXECUTE format('GRANT EXECUTE ON FUNCTION outpost.request_checkpoint(text, text, bigint) TO %I', role);
END
$$;
REVOKE EXECUTE ON FUNCTION outpost.grant_relay(name) FROM PUBLIC;
