-- 05_compaction.sql — online compaction: superseded ops become MOVEs, leading
-- MOVE/REMOVE runs fold into one CLEAR, mostly-history buckets are re-PUT
-- (defragmented), and old checkpoints expire.
--
-- The work is cut into bounded steps. Moving and folding never take the tick
-- lock: they only rewrite ops at or below a published checkpoint, which ticks
-- never touch. A defragmentation step allocates op ids, so it takes the tick
-- lock (outpost._op_id_base) for at most `outpost.defrag_batch` re-PUT rows.
-- `CALL outpost.compact_online()` commits after every step, so a tick waits
-- at most one defragmentation step; `outpost.compact()` runs the same steps
-- in the caller's one transaction, so ticks wait from its first
-- defragmentation step until it commits. Steps of concurrent compactions
-- serialize on a second advisory lock (the tick lock's key + 1).

-- One step: up to `batch` superseded ops (superseded by ops at or below
-- `upto`) become MOVEs, then the leading MOVE/REMOVE run of each bucket they
-- touched folds into one CLEAR. Checksums at every later checkpoint are
-- unchanged: a MOVE keeps its op's checksum, a CLEAR carries the sum of what
-- it replaces. `moved` = 0 when nothing was left.
CREATE FUNCTION outpost._compact_step(upto bigint, batch int, OUT moved bigint, OUT removed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    touched   text[];
    b         text;
    first_put bigint;
    run       record;
BEGIN
    PERFORM pg_advisory_xact_lock(outpost._lock_key() + 1);
    removed := 0;
    WITH s AS (
        DELETE FROM outpost.superseded x
         WHERE x.ctid = ANY (ARRAY(SELECT y.ctid FROM outpost.superseded y
                                    WHERE y.by_op <= upto LIMIT batch))
        RETURNING x.bucket, x.op_id, x.by_op
    ), m AS (
        UPDATE outpost.ops o
           SET op = 'MOVE', object_type = NULL, object_id = NULL, subkey = NULL, data = NULL,
               target_op = s.by_op
          FROM s
         WHERE o.bucket = s.bucket AND o.op_id = s.op_id AND o.op IN ('PUT', 'REMOVE')
        RETURNING o.bucket
    )
    SELECT (SELECT count(*) FROM s), ARRAY(SELECT DISTINCT m.bucket FROM m ORDER BY 1)
      INTO moved, touched;

    FOREACH b IN ARRAY touched LOOP
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
END
$$;

-- Buckets whose ops are mostly history: their live rows are fewer than
-- outpost.defrag_ratio of their ops, and they have at least
-- outpost.defrag_min_ops ops.
CREATE FUNCTION outpost._defrag_candidates() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(
        SELECT s.bucket
          FROM outpost.bucket_state s LEFT JOIN outpost.compacted c ON c.bucket = s.bucket
         WHERE s.op_count - coalesce(c.removed, 0) >= outpost._setting('outpost.defrag_min_ops', '1000')::bigint
           AND s.live_rows < outpost._setting('outpost.defrag_ratio', '0.2')::float8 * (s.op_count - coalesce(c.removed, 0))
         ORDER BY s.bucket)
$$;

-- One defragmentation step: re-PUTs up to `batch` live rows of `buckets`
-- whose current op is at or below `since` (rows re-PUT by an earlier step, or
-- changed by a tick since, are above it), so that a later step folds their
-- history into one CLEAR and a fresh client downloads about the live rows
-- alone. Allocates op ids: holds the tick lock to the end of its
-- transaction. `ops`: the ops written. `last`: where the next step's scan
-- resumes, NULL when this one reached the end of `bucket_rows` (the pass is
-- done).
--
-- A bucket's rows have no index of their own (an index written by every
-- tick for the sake of this step cost a tenth of a bulk tick), so the step
-- finds them by a scan of `bucket_rows`, and two things keep that scan off
-- the ticks' path: it runs before the tick lock is taken (ticks only wait
-- for the re-PUT of rows found by their ctid), and each step resumes where
-- the previous one stopped (`ctid > after`, a TID range scan, in physical
-- order), so a pass reads the table once rather than once per step. Rows a
-- resumed scan cannot meet again are safe to miss: a row moves only when it
-- is updated, and every update gives it an op above `since`. A row found
-- before the lock and changed by a tick before it was taken no longer
-- passes `op_id <= since` under the statement's newer snapshot.
CREATE FUNCTION outpost._defragment_step(buckets text[], since bigint, batch int, after tid,
                                         OUT ops bigint, OUT last tid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off SET synchronize_seqscans = off AS $$
DECLARE
    last_cp bigint;
    found   tid[];
BEGIN
    PERFORM pg_advisory_xact_lock(outpost._lock_key() + 1);
    SELECT array_agg(f.ctid), max(f.ctid) INTO found, last
      FROM (SELECT r.ctid FROM outpost.bucket_rows r
             WHERE r.ctid > after AND r.bucket = ANY (buckets) AND r.op_id <= since
             LIMIT batch) f;
    found := coalesce(found, '{}');
    -- Rows come in physical order (a TID range scan, never a parallel plan
    -- under a writing statement), so the largest is where this scan stopped;
    -- fewer than `batch` means it reached the end.
    IF cardinality(found) < batch THEN
        last := NULL;
    END IF;
    ops := 0;
    IF cardinality(found) = 0 THEN
        RETURN;
    END IF;
    last_cp := outpost._op_id_base();
    INSERT INTO outpost.work_ops (op_id, bucket, op, object_type, object_id, subkey, data,
                                  checksum, fingerprint, existed, old_op_id, old_ctid)
    SELECT last_cp + row_number() OVER (), r.bucket, 'PUT', r.object_type, r.object_id,
           r.subkey, o.data, o.checksum, r.fingerprint, true, r.op_id, r.old_ctid
      FROM (SELECT r.*, r.ctid AS old_ctid FROM outpost.bucket_rows r
             WHERE r.ctid = ANY (found) AND r.bucket = ANY (buckets) AND r.op_id <= since) r
      JOIN outpost.ops o ON o.bucket = r.bucket AND o.op_id = r.op_id;
    GET DIAGNOSTICS ops = ROW_COUNT;
    IF ops > 0 THEN
        PERFORM outpost._apply_work_ops();
        INSERT INTO outpost.checkpoints (op_id, ops) VALUES (last_cp + ops, ops);
        PERFORM pg_notify('outpost_checkpoint', (last_cp + ops)::text);
        DELETE FROM outpost.work_ops;
    END IF;
END
$$;

-- Retention (old checkpoints — the latest always stays — and idle write
-- checkpoints) and the compaction log. Returns `removed`.
CREATE FUNCTION outpost._compact_finish(removed bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval := outpost._setting('outpost.retention', '7 days')::interval;
BEGIN
    PERFORM pg_advisory_xact_lock(outpost._lock_key() + 1);
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

-- Whether no other compaction is running (then this transaction holds the
-- compaction lock until it ends).
CREATE FUNCTION outpost._compact_begin() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'outpost compaction must run in READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    RETURN pg_try_advisory_xact_lock(outpost._lock_key() + 1);
END
$$;

-- Compacts the op log online in the caller's transaction; returns the number
-- of ops removed. A second concurrent call returns 0 at once.
CREATE FUNCTION outpost.compact() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed  bigint := 0;
    step     record;
    upto     bigint;
    buckets  text[];
    since    bigint;
BEGIN
    IF NOT outpost._compact_begin() THEN
        RETURN 0;
    END IF;
    FOR pass IN 1 .. 2 LOOP
        upto := outpost.checkpoint();
        LOOP
            SELECT * INTO step FROM outpost._compact_step(upto, 10000);
            removed := removed + step.removed;
            EXIT WHEN step.moved = 0;
        END LOOP;
        EXIT WHEN pass = 2;
        buckets := outpost._defrag_candidates();
        EXIT WHEN cardinality(buckets) = 0;
        since := outpost.checkpoint();
        PERFORM outpost._defragment_step(buckets, since, 2147483647, '(0,0)');
    END LOOP;
    RETURN outpost._compact_finish(removed);
END
$$;

-- The same work as compact(), committing after every step: ticks wait at
-- most one defragmentation step (outpost.defrag_batch rows, default 2000).
-- Runs as the caller (a procedure that commits cannot be SECURITY DEFINER);
-- every step it calls is. Must be CALLed outside a transaction block.
CREATE PROCEDURE outpost.compact_online(INOUT removed bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    step    record;
    upto    bigint;
    buckets text[];
    since   bigint;
    batch   int;
    after   tid;
BEGIN
    removed := 0;
    IF NOT outpost._compact_begin() THEN
        RETURN;
    END IF;
    COMMIT;
    FOR pass IN 1 .. 2 LOOP
        upto := outpost.checkpoint();
        LOOP
            SELECT * INTO step FROM outpost._compact_step(upto, 10000);
            removed := removed OPERATOR(pg_catalog.+) step.removed;
            COMMIT;
            EXIT WHEN step.moved OPERATOR(pg_catalog.=) 0;
        END LOOP;
        EXIT WHEN pass OPERATOR(pg_catalog.=) 2;
        buckets := outpost._defrag_candidates();
        EXIT WHEN pg_catalog.cardinality(buckets) OPERATOR(pg_catalog.=) 0;
        since := outpost.checkpoint();
        batch := outpost._setting('outpost.defrag_batch', '2000')::pg_catalog.int4;
        after := '(0,0)';
        WHILE after IS NOT NULL LOOP
            SELECT d.last INTO after FROM outpost._defragment_step(buckets, since, batch, after) d;
            COMMIT;
        END LOOP;
        COMMIT;
    END LOOP;
    removed := outpost._compact_finish(removed);
END
$$;
