-- 05_compaction.sql — online compaction: superseded ops become MOVEs, leading
-- MOVE/REMOVE runs fold into one CLEAR, mostly-history buckets are re-PUT
-- (defragmented), and old checkpoints expire.

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
