-- 02_tick.sql — the tick: runs the compiled one-snapshot statement (which
-- also diffs its rows against bucket_rows, allocates op ids and appends the
-- ops with their running totals), updates the existing bucket_rows entries
-- and the parameter lookups, publishes a checkpoint and NOTIFYs it.

-- The one place op ids are allocated from. Every allocator (the tick, rules
-- activation — deploy_rules, define_bucket, drop_bucket, redeploy, ALTER
-- TABLE on a synced table — and compaction's defragmentation) calls this
-- first and allocates above what it returns. It takes the tick lock (held to
-- the end of the transaction) and refuses any isolation level but READ
-- COMMITTED: in REPEATABLE READ or SERIALIZABLE the snapshot predates the
-- lock wait, misses the previous tick's commit, and op ids at or below a
-- published checkpoint would be handed out again.
CREATE FUNCTION outpost._op_id_base() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
        RAISE EXCEPTION 'outpost: op ids are allocated only in READ COMMITTED, not % (tick, rules deploys and changes, ALTER TABLE of a synced table, compaction)',
            pg_catalog.current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Run it in its own transaction with the default isolation level (READ COMMITTED).';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(outpost._lock_key());
    RETURN (SELECT coalesce(max(c.op_id), 0) FROM outpost.checkpoints c);
END
$$;

-- Defence in depth for the capture queue: sets aside every queued key (of a
-- key row or a batch) the tick cannot read (values that do not convert to the table's primary key
-- types), recording table and key in outpost.problems, so that one bad row
-- never halts every user's sync. Only the capture triggers and the extension
-- owner can queue keys; this runs only after a tick statement failed.
-- Returns the number of keys set aside.
CREATE FUNCTION outpost._quarantine_keys() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel   record;
    k     record;
    n     bigint := 0;
BEGIN
    -- Keys are judged one by one: a batch of keys (kind 'b', the capture
    -- trigger's usual form) becomes one queue row per key first, in one
    -- statement (one snapshot: a batch committed meanwhile is either moved
    -- whole or left for the next tick). A batch whose pk is not an array
    -- holds no key and goes.
    WITH b AS (DELETE FROM outpost.changes q WHERE q.kind = 'b' RETURNING q.relid, q.pk)
    INSERT INTO outpost.changes (relid, pk, kind)
    SELECT b.relid, e.pk, 'k'
      FROM b CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(
               CASE WHEN pg_catalog.jsonb_typeof(b.pk) OPERATOR(pg_catalog.=) 'array' THEN b.pk END) e(pk);
    FOR rel IN
        SELECT c.oid AS relid, pg_catalog.format('%I.%I', ns.nspname, c.relname) AS qualified,
               (SELECT pg_catalog.string_agg(pg_catalog.format('(q.pk ->> %s)::%s', x.i - 1,
                                                               pg_catalog.format_type(a.atttypid, a.atttypmod)),
                                             ', ' ORDER BY x.i)
                  FROM pg_catalog.pg_index i,
                       LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS x(attnum, i),
                       pg_catalog.pg_attribute a
                 WHERE i.indrelid = c.oid AND i.indisprimary
                   AND a.attrelid = c.oid AND a.attnum = x.attnum) AS casts
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
         WHERE c.oid IN (SELECT q.relid FROM outpost.changes q WHERE q.kind = 'k')
    LOOP
        CONTINUE WHEN rel.casts IS NULL;
        BEGIN
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.max(pg_catalog.length(ROW(%s)::pg_catalog.text)) FROM outpost.changes q WHERE q.relid = $1 AND q.kind = ''k''',
                rel.casts) USING rel.relid;
            CONTINUE;  -- every key of this table converts
        EXCEPTION WHEN OTHERS THEN
            NULL;      -- some do not: find them one by one
        END;
        FOR k IN SELECT q.ctid AS id, q.pk FROM outpost.changes q
                  WHERE q.relid = rel.relid AND q.kind = 'k'
        LOOP
            BEGIN
                EXECUTE pg_catalog.format('SELECT ROW(%s)::pg_catalog.text FROM (SELECT $1 AS pk) q', rel.casts)
                    USING k.pk;
            EXCEPTION WHEN OTHERS THEN
                DELETE FROM outpost.changes q WHERE q.ctid = k.id;
                INSERT INTO outpost.problems (kind, message, table_name, key)
                VALUES ('quarantine',
                        pg_catalog.format('queued key %s of %s set aside: %s', k.pk, rel.qualified, SQLERRM),
                        rel.qualified, k.pk);
                n := n + 1;
            END;
        END LOOP;
    END LOOP;
    IF n > 0 THEN
        RAISE WARNING 'outpost: % queued key(s) could not be read and were set aside (see outpost.problems)', n;
    END IF;
    RETURN n;
END
$$;

-- The tick's error when the compiled statement fails: most likely the schema
-- changed under the rules; say so briefly instead of echoing the statement.
CREATE FUNCTION outpost._raise_tick_error(message text, code text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'outpost.tick: the compiled sync rules failed: %', message
        USING ERRCODE = code,
              DETAIL = coalesce((SELECT pg_catalog.string_agg(p.message, '; ') FROM outpost.problems p
                                  WHERE p.kind = 'schema'),
                                'no schema problem recorded'),
              HINT = 'Fix the table or redeploy the rules (outpost.deploy_rules).';
END
$$;

-- Brings the bucket_rows entries that outpost.work_ops names by ctid
-- (`existed`) up to date: changed rows get their new op id and fingerprint,
-- removed ones are deleted. Caller holds
-- the tick lock.
--
-- Existing rows are found by the ctid the op's statement read them at: every
-- writer of bucket_rows holds the tick lock, and the caller has held it since
-- that read. Sequential scans are off so that both statements are a scan of
-- work_ops with one TID probe per op, whatever the statistics of either table
-- say: no ANALYZE is needed to keep them linear (the ANALYZEs of work_ops and
-- bucket_rows this replaced were ~5% of a 100k-row update tick), and a tick's
-- cost follows its ops, not the size of bucket_rows (a hash join read all of
-- it). With statistics of bucket_rows taken while it was nearly empty (pages
-- kept), the planner had joined work_ops to it as a scan of work_ops per row
-- of bucket_rows: minutes for 30k ops.
CREATE FUNCTION outpost._update_bucket_rows() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
SET enable_seqscan = off AS $$
BEGIN
    -- Changed rows are updated in place (HOT where the page has room),
    -- removed ones deleted.
    UPDATE outpost.bucket_rows b SET op_id = w.op_id, fingerprint = w.fingerprint
      FROM outpost.work_ops w
     WHERE w.op = 'PUT' AND w.existed AND b.ctid = w.old_ctid;
    DELETE FROM outpost.bucket_rows b
     USING outpost.work_ops w
     WHERE w.op = 'REMOVE' AND b.ctid = w.old_ctid;
END
$$;

-- Appends the ops in outpost.work_ops to the op log and brings bucket_rows,
-- bucket_state and the superseded list up to date (compaction's
-- defragmentation; the tick's statement does all but the bucket_rows
-- update itself). Caller holds the tick lock.
CREATE FUNCTION outpost._apply_work_ops() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
BEGIN
    PERFORM outpost._update_bucket_rows();
    INSERT INTO outpost.bucket_rows (src_key, op_id, fingerprint, bucket, object_type, object_id, subkey)
    SELECT outpost._src_key(relid, pk), op_id, fingerprint, bucket, object_type, object_id, subkey
      FROM outpost.work_ops WHERE op = 'PUT' AND NOT existed;
    INSERT INTO outpost.ops (bucket, op_id, op, object_type, object_id, subkey, data, checksum)
    SELECT bucket, op_id, op, object_type, object_id, subkey, data, checksum FROM outpost.work_ops;
    INSERT INTO outpost.bucket_state AS s (bucket, def, checksum, op_count, last_op_id, live_rows)
    SELECT bucket, split_part(bucket, '[', 1), sum(checksum) % 4294967296, count(*), max(op_id),
           sum(CASE WHEN op = 'REMOVE' THEN -1 WHEN existed THEN 0 ELSE 1 END)
      FROM outpost.work_ops GROUP BY bucket
    ON CONFLICT (bucket) DO UPDATE
       SET checksum = (s.checksum + excluded.checksum) % 4294967296,
           op_count = s.op_count + excluded.op_count,
           last_op_id = excluded.last_op_id,
           live_rows = s.live_rows + excluded.live_rows;
    INSERT INTO outpost.superseded (bucket, op_id, by_op)
    SELECT bucket, old_op_id, op_id FROM outpost.work_ops WHERE old_op_id IS NOT NULL;
END
$$;

-- Whether the capture queue is empty; if so, moves every queued write
-- checkpoint request to work_write_checkpoints, for the checkpoint the caller
-- publishes next (it holds the tick lock). Both in one statement, one
-- snapshot, which is what makes it safe: a request's writes committed before
-- the request did (the client asks after its upload was answered), so a
-- snapshot that sees the request sees them too, and with the queue empty in
-- it they were consumed by a tick that committed before it — their ops are
-- at or below the last checkpoint, which the caller's next checkpoint
-- follows. A request whose writes are still queued (or that sees its own
-- uncommitted ones) finds the queue not empty and waits for the tick
-- statement, which moves requests in the snapshot it reads the queue in.
CREATE FUNCTION outpost._take_write_checkpoints_if_idle() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    idle boolean;
BEGIN
    WITH i AS MATERIALIZED (SELECT NOT EXISTS (SELECT FROM outpost.changes) AS v),
    r AS (DELETE FROM outpost.write_checkpoint_requests q WHERE (SELECT i.v FROM i)
          RETURNING q.user_id, q.client_id, q.seq),
    w AS (INSERT INTO outpost.work_write_checkpoints (user_id, client_id, seq)
          SELECT r.user_id, r.client_id, pg_catalog.max(r.seq) FROM r GROUP BY r.user_id, r.client_id)
    SELECT i.v INTO idle FROM i;
    RETURN idle;
END
$$;

-- Publishes checkpoint last_cp + max(n_ops, 1) with the write checkpoints in
-- work_write_checkpoints, when there is anything to publish (ops, changed
-- parameter lookups or write checkpoints), and NOTIFYs it; returns the
-- latest checkpoint. Caller holds the tick lock and empties the work table.
CREATE FUNCTION outpost._publish_checkpoint(last_cp bigint, n_ops bigint, params_changed boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cp bigint;
BEGIN
    IF n_ops > 0 OR params_changed OR EXISTS (SELECT FROM outpost.work_write_checkpoints) THEN
        cp := last_cp + greatest(n_ops, 1);
        INSERT INTO outpost.checkpoints (op_id, ops, params_changed) VALUES (cp, n_ops, params_changed);
        INSERT INTO outpost.write_checkpoints AS w (user_id, client_id, seq, checkpoint)
        SELECT x.user_id, x.client_id, x.seq, cp FROM outpost.work_write_checkpoints x
        ON CONFLICT (user_id, client_id) DO UPDATE
           SET seq = greatest(w.seq, excluded.seq), checkpoint = excluded.checkpoint;
        PERFORM pg_catalog.pg_notify('outpost_checkpoint', cp::text);
        RETURN cp;
    END IF;
    RETURN last_cp;
END
$$;

-- Queues a write checkpoint request (request_write_checkpoint,
-- request_checkpoint) and publishes it at once, with a checkpoint of its
-- own, when that is safe and cheap: nothing is queued for a tick (see
-- _take_write_checkpoints_if_idle) and no tick is running (the tick lock is
-- free; it is then held to the end of the caller's transaction, as by
-- outpost.tick(): the relay's request is a transaction of its own).
-- Otherwise the request waits for the next tick, which the NOTIFY wakes. It
-- saves the request's tick: the official client asks for a write checkpoint
-- after its upload was answered, when the upload's own tick has mostly run
-- already, so the write checkpoint used to wait for a second tick in series
-- (CONTRIBUTING.md, "PowerSync's own client").
CREATE FUNCTION outpost._queue_write_checkpoint(user_id text, client_id text, seq bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO outpost.write_checkpoint_requests (user_id, client_id, seq)
    VALUES (_queue_write_checkpoint.user_id, _queue_write_checkpoint.client_id,
            _queue_write_checkpoint.seq);
    -- _op_id_base refuses other isolation levels; there the request simply
    -- waits for a tick. The queue is looked at only under the tick lock.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) 'read committed'
       AND pg_catalog.pg_try_advisory_xact_lock(outpost._lock_key()) THEN
        IF outpost._take_write_checkpoints_if_idle() THEN
            PERFORM outpost._publish_checkpoint(outpost._op_id_base(), 0, false);
            DELETE FROM outpost.work_write_checkpoints;
            RETURN;
        END IF;
    END IF;
    PERFORM pg_catalog.pg_notify('outpost_changes', '');
END
$$;

-- The body of a tick; the caller holds the tick lock (outpost._op_id_base).
CREATE FUNCTION outpost._tick_locked() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET work_mem = '64MB' SET jit = off AS $$
DECLARE
    stmt           text;
    last_cp        bigint;
    n_ops          bigint;
    n_old          bigint;
    params_changed boolean;
    cp             bigint;
    n_changes      bigint;
    retry          boolean := false;
    small          boolean;
    hashagg        text := pg_catalog.current_setting('enable_hashagg');
    hashjoin       text := pg_catalog.current_setting('enable_hashjoin');
    mergejoin      text := pg_catalog.current_setting('enable_mergejoin');
    bitmapscan     text := pg_catalog.current_setting('enable_bitmapscan');
BEGIN
    SELECT r.tick_sql INTO stmt FROM outpost.rules r WHERE r.active;
    IF stmt IS NULL THEN
        stmt := outpost._empty_tick_sql();
    END IF;
    -- The caller holds the tick lock, so nothing allocates op ids meanwhile.
    last_cp := outpost._op_id_base();
    -- One statement, one snapshot: every read of user tables happens here,
    -- and so do the diff against bucket_rows and the writes of its ops (the
    -- op log, new bucket_rows, running totals, superseded ops); the ops on
    -- existing bucket_rows entries wait in work_ops. When it fails, keys
    -- nobody can read are set aside and it runs once more.
    --
    -- With nothing queued it has nothing to read, and planning it is most
    -- of a tick: the trailing tick after every wake-up (and the idle
    -- fallback) is then one small statement instead of ~3 ms of CPU
    -- competing with the write that woke it, and so is a tick for write
    -- checkpoint requests alone (they are taken in that statement's
    -- snapshot). A commit after this look wakes a later tick (its NOTIFY, or
    -- the ticker's trailing tick), as one after the statement's snapshot
    -- would.
    IF outpost._take_write_checkpoints_if_idle() THEN
        n_changes := 0;
        n_ops := 0;
        n_old := 0;
    ELSE
        -- A small tick (a few queued keys or batches, no truncation or
        -- deploy, no joined table whose one changed row can stand for a
        -- whole bucket's rows) runs without hash aggregates and hash joins.
        -- The planner sizes their tables from estimates that follow
        -- bucket_rows (the branches of _keys over it), not from the few
        -- keys there are: each tick allocated, zeroed and walked hash tables
        -- of ~a million buckets, ~40% of a one-row tick's backend CPU with
        -- 1M rows in the bucket (CONTRIBUTING.md, "Commit -> client
        -- latency"). Sorts of a few rows cost nothing. A burst queued after
        -- this look only gets the slower plan for one tick.
        small := coalesce((SELECT pg_catalog.count(*) <= 32 AND pg_catalog.bool_and(q.kind IN ('k', 'b'))
                             FROM (SELECT q.kind FROM outpost.changes q LIMIT 33) q), true)
                 AND NOT EXISTS (SELECT FROM outpost.bucket_defs d,
                                             pg_catalog.jsonb_array_elements(d.compiled -> 'data_queries') dq
                                  WHERE dq ? 'joined');
        -- A big one gets the plan its size wants, which the planner,
        -- estimating the keys from the queue's statistics (a few keys),
        -- does not pick: the diff's full join as a hash join on row_key
        -- rather than a merge join that sorted both sides (and compared the
        -- four texts of every matched pair), and each key's bucket_rows probe
        -- as a plain index scan rather than a bitmap per key. Both were ~3%
        -- and ~8% of the backend CPU of a 100k-row update / insert tick.
        IF small THEN
            PERFORM pg_catalog.set_config('enable_hashagg', 'off', true),
                    pg_catalog.set_config('enable_hashjoin', 'off', true);
        ELSE
            PERFORM pg_catalog.set_config('enable_mergejoin', 'off', true),
                    pg_catalog.set_config('enable_bitmapscan', 'off', true);
        END IF;
        -- A small tick runs the statement from a plan this connection keeps
        -- (planning it was half of a one-row tick's CPU; pg_ext/src/tick_plan.rs);
        -- a big one plans it for its size.
        BEGIN
            IF small THEN
                SELECT k.r[1], k.r[2], k.r[3] INTO n_changes, n_ops, n_old
                  FROM outpost._tick_kept(stmt, last_cp) AS k(r);
            ELSE
                EXECUTE stmt INTO n_changes, n_ops, n_old USING last_cp;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF outpost._quarantine_keys() = 0 THEN
                PERFORM outpost._raise_tick_error(SQLERRM, SQLSTATE);
            END IF;
            retry := true;
        END;
        IF retry THEN
            BEGIN
                EXECUTE stmt INTO n_changes, n_ops, n_old USING last_cp;
            EXCEPTION WHEN OTHERS THEN
                PERFORM outpost._raise_tick_error(SQLERRM, SQLSTATE);
            END;
        END IF;
        IF small THEN
            PERFORM pg_catalog.set_config('enable_hashagg', hashagg, true),
                    pg_catalog.set_config('enable_hashjoin', hashjoin, true);
        ELSE
            PERFORM pg_catalog.set_config('enable_mergejoin', mergejoin, true),
                    pg_catalog.set_config('enable_bitmapscan', bitmapscan, true);
        END IF;
    END IF;

    -- Big ticks get real statistics so the joins below plan as hash joins.
    IF n_changes > 5000 THEN
        ANALYZE outpost.work_keys, outpost.work_params;
    END IF;

    IF n_old > 0 THEN
        PERFORM outpost._update_bucket_rows();
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

    cp := outpost._publish_checkpoint(last_cp, n_ops, params_changed);

    -- TRUNCATE leaves no dead rows to scan but rewrites catalog entries, so
    -- it is reserved for big ticks.
    IF n_changes > 5000 OR n_old > 5000 THEN
        TRUNCATE outpost.work_keys, outpost.work_params,
                 outpost.work_write_checkpoints, outpost.work_ops, outpost.work_old_params;
    ELSE
        DELETE FROM outpost.work_keys;
        DELETE FROM outpost.work_params;
        DELETE FROM outpost.work_write_checkpoints;
        DELETE FROM outpost.work_ops;
        DELETE FROM outpost.work_old_params;
    END IF;
    RETURN cp;
END
$$;

CREATE FUNCTION outpost.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The lock (and the isolation check) before the one-snapshot statement.
    PERFORM outpost._op_id_base();
    RETURN outpost._tick_locked();
END
$$;

-- Definer: the relay's role reads the latest checkpoint without any
-- privilege on outpost's tables.
CREATE FUNCTION outpost.checkpoint() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(max(c.op_id), 0) FROM outpost.checkpoints c
$$;
