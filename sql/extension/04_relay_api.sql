-- 04_relay_api.sql — what the relay calls: the client schema, a user's
-- buckets, a stream's starting state, pages of ops, the changes since a
-- checkpoint (shared by a relay's streams) and write checkpoints.

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
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Checkpoint requests: what the relay's `POST /sync/checkpoint-request`
-- runs (PowerSync's "requests" checkpoint mode). The client supplies an id
-- that only grows per (user, client); the stored value is the maximum of
-- every id supplied and of the counter `request_write_checkpoint` advances
-- (both modes share one sequence per client, so a client may switch).
--
-- outpost.request_checkpoint(user_id, client_id, request_id) stores
-- greatest(stored, request_id) and returns it. When request_id is (again) the
-- stored value, it is queued like a write checkpoint: the next tick publishes
-- it with the checkpoint that includes everything committed before, and the
-- user's stream carries it in `write_checkpoint`. A stale id (below the
-- stored one) changes nothing; the caller learns the stored value instead.
-- A retry of the current id queues it again, so an idle database still ticks
-- and the acknowledgement reaches the stream.

CREATE FUNCTION outpost.request_checkpoint(user_id text, client_id text, request_id bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s bigint;
BEGIN
    IF request_id IS NULL OR request_id < 1 THEN
        RAISE EXCEPTION 'checkpoint request id must be between 1 and 9223372036854775807'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outpost.write_checkpoint_counters AS c (user_id, client_id, seq)
    VALUES (request_checkpoint.user_id, request_checkpoint.client_id, request_id)
    ON CONFLICT ON CONSTRAINT write_checkpoint_counters_pkey
       DO UPDATE SET seq = greatest(c.seq, excluded.seq)
    RETURNING c.seq INTO s;
    IF s = request_id THEN
        INSERT INTO outpost.write_checkpoint_requests (user_id, client_id, seq)
        VALUES (request_checkpoint.user_id, request_checkpoint.client_id, s);
        PERFORM pg_catalog.pg_notify('outpost_changes', '');
    END IF;
    RETURN s;
END
$$;
REVOKE EXECUTE ON FUNCTION outpost.request_checkpoint(text, text, bigint) FROM PUBLIC;
