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
-- values; table ones look them up in the lookups the ticks materialized
-- (`bucket_sql`, when some bucket parameters are request values, adds them
-- to the lookup row's; NULL, which an edition-3 stream gives for a NULL request value, is no bucket).
CREATE FUNCTION outpost.user_buckets(claims jsonb, params jsonb)
RETURNS TABLE (bucket text, priority int)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
BEGIN
    -- Sync Streams: only auto_subscribe ones, without subscription
    -- parameters ($3); subscriptions are resolved by outpost._stream_requests.
    -- Lookups of nested subqueries give values, not buckets.
    FOR q IN SELECT d.priority AS prio, pq
               FROM outpost.bucket_defs d, jsonb_array_elements(d.compiled -> 'parameter_queries') pq
              WHERE (NOT d.source ? 'stream' OR (d.source -> 'stream' ->> 'auto_subscribe')::boolean)
                AND NOT coalesce((pq ->> 'lookup_only')::boolean, false)
    LOOP
        -- Request values come from the client (parameters) or the token; one
        -- that fails to evaluate (e.g. a non-number cast to int) grants that
        -- query's buckets nothing instead of failing the whole request.
        BEGIN
            IF q.pq ->> 'kind' = 'static' THEN
                RETURN QUERY EXECUTE format('SELECT s.bucket::text, %s::int FROM (%s) s', q.prio, q.pq ->> 'sql')
                    USING claims, coalesce(params, '{}'::jsonb), '{}'::jsonb;
            ELSE
                RETURN QUERY EXECUTE format(
                    'SELECT DISTINCT b.bucket, $4::int FROM (SELECT %s AS bucket FROM outpost.param_rows p '
                    'WHERE p.query_id = $5 AND p.lookup IN (%s)) b WHERE b.bucket IS NOT NULL',
                    coalesce(q.pq ->> 'bucket_sql', 'p.bucket'), q.pq ->> 'lookup_sql')
                    USING claims, coalesce(params, '{}'::jsonb), '{}'::jsonb, q.prio, q.pq ->> 'id';
            END IF;
        EXCEPTION WHEN data_exception THEN
            RAISE WARNING 'outpost: parameter query % skipped for this request: %', q.pq ->> 'id', SQLERRM;
        END;
    END LOOP;
END
$$;

-- The bucket ids one definition's parameter queries give a request: `sub`
-- is a Sync Stream subscription's parameters ($3 of a stream's queries).
-- A request value that fails to evaluate raises data_exception to the caller.
CREATE FUNCTION outpost._def_buckets(def text, claims jsonb, params jsonb, sub jsonb)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parts text[];
BEGIN
    -- Lookups of nested subqueries give values to the other queries, not buckets.
    parts := ARRAY(
        SELECT CASE WHEN pq ->> 'kind' = 'static'
                    THEN format('SELECT s.bucket::text FROM (%s) s', pq ->> 'sql')
                    ELSE format('SELECT %s FROM outpost.param_rows p WHERE p.query_id = %L AND p.lookup IN (%s)',
                                coalesce(pq ->> 'bucket_sql', 'p.bucket'), pq ->> 'id', pq ->> 'lookup_sql') END
          FROM outpost.bucket_defs d, jsonb_array_elements(d.compiled -> 'parameter_queries') pq
         WHERE d.name = def AND NOT coalesce((pq ->> 'lookup_only')::boolean, false));
    IF cardinality(parts) = 0 THEN
        RETURN;
    END IF;
    -- One statement, each bucket once (several parameter queries may give it).
    RETURN QUERY EXECUTE 'SELECT DISTINCT b FROM (' || array_to_string(parts, ' UNION ALL ') || ') x(b) WHERE b IS NOT NULL'
        USING claims, params, sub;
END
$$;

-- What a request subscribes to, with Sync Streams, as PowerSync resolves it:
-- `streams` is the request's {include_defaults, subscriptions: [{stream,
-- parameters, override_priority}]}. Returns {"streams": [{name, is_default,
-- errors}], "requests": [{def, k, reason, params, prio}]}: legacy bucket
-- definitions and auto_subscribe streams are default streams (left out with
-- include_defaults false) evaluated with reason {"default": k}; each
-- subscription i evaluates its stream's definitions with its parameters,
-- reason {"sub": i} and priority override_priority or the stream's. A
-- subscription that names no stream, passes parameters that are not an
-- object or lacks a parameter the stream reads is reported in its stream's
-- errors; the rest of the request syncs. Cheap: it reads only the catalog.
CREATE FUNCTION outpost._stream_requests(streams jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    include_defaults boolean := coalesce(
        CASE WHEN jsonb_typeof(streams -> 'include_defaults') = 'boolean'
             THEN (streams ->> 'include_defaults')::boolean END, true);
    subs jsonb := CASE WHEN jsonb_typeof(streams -> 'subscriptions') = 'array'
                       THEN streams -> 'subscriptions' ELSE '[]'::jsonb END;
    list jsonb := '[]'::jsonb;
    requests jsonb := '[]'::jsonb;
    d record;
    sub jsonb;
    i int;
    k int;
    sname text;
    sparams jsonb;
    prio int;
    key text;
    errs jsonb;
BEGIN
    IF include_defaults THEN
        FOR d IN SELECT b.name, b.priority,
                        coalesce(b.source -> 'stream' ->> 'name', b.name) AS stream
                   FROM outpost.bucket_defs b
                  WHERE NOT b.source ? 'stream'
                     OR ((b.source -> 'stream' ->> 'auto_subscribe')::boolean
                         -- A parameterless subscription of an auto_subscribe
                         -- stream stands for its default.
                         AND NOT EXISTS (
                             SELECT 1 FROM jsonb_array_elements(subs) x
                              WHERE x ->> 'stream' = b.source -> 'stream' ->> 'name'
                                AND coalesce(x -> 'parameters', 'null'::jsonb) IN ('null'::jsonb, '{}'::jsonb)))
                  ORDER BY NOT b.source ? 'stream' DESC, b.name
        LOOP
            k := (SELECT min(e.ord - 1) FROM jsonb_array_elements(list) WITH ORDINALITY e(v, ord)
                   WHERE e.v ->> 'name' = d.stream);
            IF k IS NULL THEN
                list := list || jsonb_build_array(jsonb_build_object(
                    'name', d.stream, 'is_default', true, 'errors', '[]'::jsonb));
                k := jsonb_array_length(list) - 1;
            END IF;
            requests := requests || jsonb_build_array(jsonb_build_object(
                'def', d.name, 'k', k, 'reason', jsonb_build_object('default', k),
                'params', '{}'::jsonb, 'prio', d.priority));
        END LOOP;
    END IF;

    FOR i IN 0 .. jsonb_array_length(subs) - 1 LOOP
        sub := subs -> i;
        sname := CASE WHEN jsonb_typeof(sub -> 'stream') = 'string' THEN sub ->> 'stream' END;
        sparams := sub -> 'parameters';
        k := (SELECT min(e.ord - 1) FROM jsonb_array_elements(list) WITH ORDINALITY e(v, ord)
               WHERE e.v ->> 'name' = coalesce(sname, ''));
        IF k IS NULL THEN
            -- An auto_subscribe stream subscribed without parameters is still a default one.
            list := list || jsonb_build_array(jsonb_build_object(
                'name', coalesce(sname, ''),
                'is_default', include_defaults AND coalesce((
                    SELECT bool_or((b.source -> 'stream' ->> 'auto_subscribe')::boolean)
                      FROM outpost.bucket_defs b WHERE b.source -> 'stream' ->> 'name' = sname), false),
                'errors', '[]'::jsonb));
            k := jsonb_array_length(list) - 1;
        END IF;
        errs := '[]'::jsonb;
        IF NOT EXISTS (SELECT 1 FROM outpost.bucket_defs b WHERE b.source -> 'stream' ->> 'name' = sname) THEN
            errs := errs || jsonb_build_array(format('unknown stream "%s"', coalesce(sname, '')));
        ELSIF sparams IS NOT NULL AND jsonb_typeof(sparams) NOT IN ('object', 'null') THEN
            errs := errs || jsonb_build_array('subscription parameters must be a JSON object');
        ELSE
            sparams := CASE WHEN jsonb_typeof(sparams) = 'object' THEN sparams ELSE '{}'::jsonb END;
            FOR key IN SELECT DISTINCT jsonb_array_elements_text(b.source -> 'stream' -> 'subscription_keys')
                         FROM outpost.bucket_defs b WHERE b.source -> 'stream' ->> 'name' = sname
                        ORDER BY 1
            LOOP
                IF NOT sparams ? key OR sparams -> key = 'null'::jsonb THEN
                    errs := errs || jsonb_build_array(format('missing subscription parameter "%s"', key));
                END IF;
            END LOOP;
            prio := CASE WHEN jsonb_typeof(sub -> 'override_priority') = 'number'
                         THEN least(greatest((sub ->> 'override_priority')::numeric, 0), 3)::int END;
            requests := requests || coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'def', b.name, 'k', k, 'reason', jsonb_build_object('sub', i),
                           'params', sparams, 'prio', coalesce(prio, b.priority)) ORDER BY b.name)
                  FROM outpost.bucket_defs b WHERE b.source -> 'stream' ->> 'name' = sname), '[]'::jsonb);
        END IF;
        IF jsonb_array_length(errs) > 0 THEN
            list := jsonb_set(list, ARRAY[k::text, 'errors'], (list -> k -> 'errors')
                || (SELECT jsonb_agg(jsonb_build_object('subscription', i, 'message', m))
                      FROM jsonb_array_elements_text(errs) m));
        END IF;
    END LOOP;
    RETURN jsonb_build_object('streams', list, 'requests', requests);
END
$$;

-- The buckets of the requests _stream_requests made: (bucket, priority,
-- reason) rows, and for a request whose values fail to evaluate (e.g. a
-- cast of a subscription parameter) a row naming its stream `k` and the
-- error instead; the other requests are evaluated all the same.
CREATE FUNCTION outpost._request_buckets(claims jsonb, params jsonb, requests jsonb)
RETURNS TABLE (bucket text, priority int, reason jsonb, k int, error jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r jsonb;
BEGIN
    params := coalesce(params, '{}'::jsonb);
    FOR r IN SELECT e FROM jsonb_array_elements(requests) e LOOP
        BEGIN
            RETURN QUERY SELECT x, (r ->> 'prio')::int, r -> 'reason', NULL::int, NULL::jsonb
                           FROM outpost._def_buckets(r ->> 'def', claims, params, r -> 'params') x;
        EXCEPTION WHEN data_exception THEN
            RETURN QUERY SELECT NULL::text, NULL::int, NULL::jsonb, (r ->> 'k')::int,
                                jsonb_build_object('subscription', coalesce(r -> 'reason' -> 'sub', '"default"'::jsonb),
                                                   'message', SQLERRM);
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
-- sync_checkpoint with the request's `streams` (Sync Streams): buckets carry
-- `subscriptions` (why they are in) and the result names the streams with
-- their errors; see outpost._stream_requests.
CREATE FUNCTION outpost.sync_checkpoint(claims jsonb, params jsonb, client_id text, streams jsonb)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH q AS MATERIALIZED (SELECT outpost._stream_requests(coalesce(streams, '{}'::jsonb)) AS v),
    r AS MATERIALIZED (
        SELECT rb.* FROM q CROSS JOIN LATERAL outpost._request_buckets(claims, params, q.v -> 'requests') rb
    ),
    -- Each (bucket, reason) once: a request is one definition for one
    -- reason, and _def_buckets gives each bucket once. One hash aggregate,
    -- as for a user with 100k buckets without streams.
    b AS (
        SELECT r.bucket, min(r.priority) AS priority, jsonb_agg(r.reason) AS subscriptions
          FROM r WHERE r.bucket IS NOT NULL GROUP BY r.bucket
    ),
    errs AS (SELECT r.k, jsonb_agg(r.error) AS errors FROM r WHERE r.error IS NOT NULL GROUP BY r.k)
    SELECT jsonb_build_object(
        'checkpoint', outpost.checkpoint(),
        'rules_version', (SELECT rv.version FROM outpost.rules rv WHERE rv.active),
        'write_checkpoint', (SELECT w.seq FROM outpost.write_checkpoints w
                              WHERE w.user_id = claims ->> 'sub' AND w.client_id = sync_checkpoint.client_id),
        'streams', (SELECT coalesce(jsonb_agg(CASE WHEN e.errors IS NULL THEN s.v
                                                   ELSE jsonb_set(s.v, '{errors}', (s.v -> 'errors') || e.errors) END
                                              ORDER BY s.ord), '[]'::jsonb)
                      FROM q CROSS JOIN LATERAL jsonb_array_elements(q.v -> 'streams') WITH ORDINALITY AS s(v, ord)
                             LEFT JOIN errs e ON e.k = s.ord - 1),
        'buckets', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'bucket', b.bucket,
                       'checksum', coalesce(st.checksum, 0),
                       'count', coalesce(st.op_count, 0) - coalesce(x.removed, 0),
                       'priority', b.priority,
                       'subscriptions', b.subscriptions) ORDER BY b.priority, b.bucket)
              FROM b LEFT JOIN outpost.bucket_state st ON st.bucket = b.bucket
                     LEFT JOIN outpost.compacted x ON x.bucket = b.bucket), '[]'::jsonb))
$$;

-- Buckets in the array's order, each from `after` up to the checkpoint in
-- op_id order, at most max_ops rows in all. Measured on 1M ops in 10 buckets
-- (CONTRIBUTING.md, "relay streaming"): one plain statement (a LATERAL scan
-- per bucket) cost 2.0-2.8 ms of backend CPU per 1000-op page against
-- 1.2-1.5 ms for this loop (0.25 ms for the bare index scan; sending the
-- rows costs ~4 ms more either way), so the loop stays. What the loop did badly was buckets
-- without new ops: the arrays were subscripted per step (each RETURN QUERY
-- copied both arrays into its parameters) and every empty bucket cost a
-- planned statement, 13-25 s for a page over 20,000 buckets. Now the loop
-- reads the arrays once through unnest, and an index probe (EXISTS) skips
-- empty buckets before any statement is planned for them: 0.28 s. The
-- order is the array's by ORDER BY, not by the plan's shape: Postgres 18
-- may run the EXISTS as a right semi join, which returns the buckets in
-- the op log's order. STABLE: every statement sees the caller's snapshot.
CREATE FUNCTION outpost.bucket_ops(buckets text[], afters bigint[], checkpoint bigint, max_ops int)
RETURNS TABLE (bucket text, op_id bigint, op text, object_type text, object_id text,
               subkey text, data text, checksum bigint, target_op bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r         record;
    remaining int := max_ops;
    n         bigint;
BEGIN
    FOR r IN SELECT u.b, u.a FROM unnest(buckets, afters) WITH ORDINALITY AS u(b, a, i)
              WHERE EXISTS (SELECT FROM outpost.ops e
                             WHERE e.bucket = u.b AND e.op_id > u.a AND e.op_id <= bucket_ops.checkpoint)
              ORDER BY u.i LOOP
        EXIT WHEN remaining <= 0;
        RETURN QUERY
            SELECT x.bucket, x.op_id, x.op, x.object_type, x.object_id, x.subkey, x.data,
                   x.checksum, x.target_op
              FROM outpost.ops x
             WHERE x.bucket = r.b AND x.op_id > r.a AND x.op_id <= bucket_ops.checkpoint
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
    -- Published now when nothing is queued, else by the next tick.
    PERFORM outpost._queue_write_checkpoint(request_write_checkpoint.user_id,
                                            request_write_checkpoint.client_id, s);
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
-- stored value, it is handled like a write checkpoint: published (at once
-- when nothing is queued, else by the next tick) with a checkpoint that
-- includes everything committed before, and the
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
        PERFORM outpost._queue_write_checkpoint(request_checkpoint.user_id,
                                                request_checkpoint.client_id, s);
    END IF;
    RETURN s;
END
$$;
REVOKE EXECUTE ON FUNCTION outpost.request_checkpoint(text, text, bigint) FROM PUBLIC;
