-- 03_deploy.sql — rules in and out: validation, activation (capture
-- installation, re-evaluation of changed definitions, removal of dropped
-- ones), redeploy after a restore, one-bucket-at-a-time SQL API, the rules as
-- YAML and the `buckets` view.

-- Raises with bucket, query and problem when Postgres rejects a compiled query.
CREATE FUNCTION outpost._check_plan(plan jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk jsonb;
BEGIN
    FOR chk IN SELECT * FROM jsonb_array_elements(plan -> 'checks') LOOP
        BEGIN
            EXECUTE chk ->> 'sql' USING '{}'::jsonb, '{}'::jsonb, '{}'::jsonb;
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning AS $$
DECLARE
    plan         jsonb;
    new_defs     jsonb;  -- {name: compiled definition}
    new_ver      bigint;
    rel          record;
    stmt         text;
    removed_defs text[];
    changed_defs text[];
    gone         text[];
BEGIN
    -- Lock and isolation check first: everything below ends in a tick.
    PERFORM outpost._op_id_base();
    plan := outpost._plan(new_sources, catalog);
    PERFORM outpost._check_plan(plan);

    -- No temporary tables: a definer function must not use names the calling
    -- session could have created first.
    new_defs := (SELECT coalesce(pg_catalog.jsonb_object_agg(b -> 'source' ->> 'name', b), '{}'::pg_catalog.jsonb)
                   FROM pg_catalog.jsonb_array_elements(plan -> 'buckets') b);

    -- Re-evaluate each added or changed definition over the tables its old and
    -- new versions read; other definitions are not touched.
    INSERT INTO outpost.changes (relid, pk, kind, def)
    SELECT DISTINCT relid, NULL::pg_catalog.jsonb, 'f', changed.name
      FROM (SELECT d.name, d.compiled AS c FROM outpost.bucket_defs d
             WHERE new_defs ? d.name AND (new_defs -> d.name) IS DISTINCT FROM d.compiled
            UNION ALL
            SELECT n.key, n.value FROM pg_catalog.jsonb_each(new_defs) n
              LEFT JOIN outpost.bucket_defs d ON d.name = n.key
             WHERE d.compiled IS DISTINCT FROM n.value) changed,
           LATERAL (SELECT (q ->> 'relid')::pg_catalog.oid AS relid FROM pg_catalog.jsonb_array_elements(changed.c -> 'data_queries') q
                    UNION ALL
                    SELECT (q ->> 'relid')::pg_catalog.oid FROM pg_catalog.jsonb_array_elements(changed.c -> 'parameter_queries') q
                     WHERE q ->> 'kind' = 'table') r;

    -- Removed definitions: their buckets disappear. Every statement goes
    -- through the removed buckets' keys, so the cost follows what is removed.
    removed_defs := ARRAY(SELECT d.name FROM outpost.bucket_defs d WHERE NOT new_defs ? d.name);
    IF pg_catalog.cardinality(removed_defs) > 0 THEN
        gone := ARRAY(SELECT s.bucket FROM outpost.bucket_state s WHERE s.def = ANY (removed_defs));
        DELETE FROM outpost.ops o WHERE o.bucket = ANY (gone);
        -- A scan of bucket_rows: a bucket's rows have no index of their own.
        DELETE FROM outpost.bucket_rows r WHERE r.bucket = ANY (gone);
        DELETE FROM outpost.superseded x WHERE x.bucket = ANY (gone);
        DELETE FROM outpost.compacted x WHERE x.bucket = ANY (gone);
        DELETE FROM outpost.bucket_state s WHERE s.bucket = ANY (gone);
    END IF;
    -- Lookups of changed and removed definitions are rebuilt by the re-evaluation.
    changed_defs := ARRAY(SELECT d.name FROM outpost.bucket_defs d
                           WHERE new_defs ? d.name AND (new_defs -> d.name) IS DISTINCT FROM d.compiled);
    DELETE FROM outpost.param_rows p
     WHERE pg_catalog.split_part(p.query_id, '#', 1) = ANY (removed_defs || changed_defs);

    -- Capture: drop it where a table left the rules, install it where one joined.
    FOR rel IN SELECT c.relid, c.qualified FROM outpost.captured_tables c
                WHERE c.relid NOT IN (SELECT (t ->> 'oid')::pg_catalog.oid FROM pg_catalog.jsonb_array_elements(plan -> 'tables') t)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = rel.relid) THEN
            FOREACH stmt IN ARRAY ARRAY['outpost_capture_ins', 'outpost_capture_upd',
                                        'outpost_capture_del', 'outpost_capture_trunc'] LOOP
                EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', stmt, rel.relid::pg_catalog.regclass);
            END LOOP;
        END IF;
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS outpost.%I()', 'capture_' || rel.relid);
        DELETE FROM outpost.captured_tables WHERE relid = rel.relid;
    END LOOP;
    FOR rel IN SELECT t AS plan_table FROM pg_catalog.jsonb_array_elements(plan -> 'tables') t
                WHERE (t ->> 'oid')::pg_catalog.oid NOT IN (SELECT relid FROM outpost.captured_tables)
    LOOP
        EXECUTE rel.plan_table ->> 'function_sql';
        FOR stmt IN SELECT pg_catalog.jsonb_array_elements_text(rel.plan_table -> 'triggers_sql') LOOP
            EXECUTE stmt;
        END LOOP;
        INSERT INTO outpost.captured_tables (relid, qualified)
        VALUES ((rel.plan_table ->> 'oid')::pg_catalog.oid, rel.plan_table ->> 'qualified');
    END LOOP;

    -- Capture functions no trigger uses any more (e.g. brought by a restored dump).
    FOR stmt IN SELECT p.proname FROM pg_catalog.pg_proc p
                 WHERE p.pronamespace = 'outpost'::pg_catalog.regnamespace AND p.proname LIKE 'capture\_%'
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION outpost.%I()', stmt);
    END LOOP;

    SELECT coalesce(max(version), 0) + 1 INTO new_ver FROM outpost.rules;
    UPDATE outpost.rules SET active = false WHERE active;
    INSERT INTO outpost.rules (version, sources, tick_sql, active)
    VALUES (new_ver, new_sources, plan ->> 'tick_sql', true);
    DELETE FROM outpost.bucket_defs;
    INSERT INTO outpost.bucket_defs (name, priority, param_names, source, compiled, version)
    SELECT n.key, (n.value -> 'source' ->> 'priority')::pg_catalog.int4,
           ARRAY(SELECT pg_catalog.jsonb_array_elements_text(n.value -> 'param_names')),
           n.value -> 'source', n.value, new_ver
      FROM pg_catalog.jsonb_each(new_defs) n;

    DELETE FROM outpost.problems WHERE kind = 'schema';
    PERFORM outpost._tick_locked();
    RETURN new_ver;
END
$$;

-- The public entry points below read the caller's schema list
-- (current_schemas(true)) as data, so bare table names in rules resolve the
-- way the caller sees them, and hand it to functions that run with a pinned
-- search_path.
CREATE FUNCTION outpost._redeploy(schemas name[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sources jsonb := outpost._active_sources();
BEGIN
    IF sources IS NULL THEN
        RAISE EXCEPTION 'no rules have been deployed' USING ERRCODE = 'undefined_object';
    END IF;
    RETURN outpost._apply(sources, outpost._catalog(schemas));
END
$$;

-- Re-applies the active rules against the current catalog: after restoring a
-- dump (which keeps outpost.rules but not the op log) this rebuilds buckets,
-- capture and lookups from the source tables.
CREATE FUNCTION outpost.redeploy() RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._redeploy(pg_catalog.current_schemas(true))
$$;

CREATE FUNCTION outpost.deploy_rules(rules text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._apply(outpost._parse_yaml(rules), outpost._catalog(pg_catalog.current_schemas(true)))
$$;

CREATE FUNCTION outpost._validate(rules text, schemas name[])
RETURNS TABLE (level text, message text, location text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    res jsonb;
    chk jsonb;
BEGIN
    res := outpost._validate_yaml(rules, outpost._catalog(schemas));
    RETURN QUERY SELECT p ->> 'level', p ->> 'message', p ->> 'location'
                   FROM jsonb_array_elements(res -> 'problems') p;
    IF res -> 'plan' IS NOT NULL AND jsonb_typeof(res -> 'plan') = 'object' THEN
        FOR chk IN SELECT * FROM jsonb_array_elements(res -> 'plan' -> 'checks') LOOP
            BEGIN
                EXECUTE chk ->> 'sql' USING '{}'::jsonb, '{}'::jsonb, '{}'::jsonb;
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

CREATE FUNCTION outpost.validate_rules(rules text)
RETURNS TABLE (level text, message text, location text)
LANGUAGE sql AS $$
    SELECT * FROM outpost._validate(rules, pg_catalog.current_schemas(true))
$$;

-- The new bucket takes the active rules' `config:` (edition and options),
-- the one rules_yaml() writes, as if it had been in the deployed document.
CREATE FUNCTION outpost._define_bucket(name text, parameters text[], data text[], priority int, schemas name[])
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT outpost._apply(
        (SELECT coalesce(jsonb_agg(x.s ORDER BY x.s ->> 'name'), '[]'::jsonb)
           FROM (SELECT d.source AS s FROM outpost.bucket_defs d WHERE d.name <> _define_bucket.name
                 UNION ALL
                 SELECT outpost._sql_bucket(
                            _define_bucket.name,
                            coalesce(_define_bucket.parameters, '{}'::text[]),
                            coalesce(_define_bucket.data, '{}'::text[]),
                            _define_bucket.priority,
                            (SELECT coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb)
                               FROM outpost.bucket_defs d))) x),
        outpost._catalog(schemas))
$$;

-- Rules as SQL, one bucket at a time (for migration tools). Same validation
-- and catalog as deploy_rules; transactional like any DDL.
CREATE FUNCTION outpost.define_bucket(name text, parameters text[], data text[], priority int DEFAULT 3)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._define_bucket(name, parameters, data, priority, pg_catalog.current_schemas(true))
$$;

CREATE FUNCTION outpost._drop_bucket(name text, schemas name[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outpost.bucket_defs d
                    WHERE d.name = _drop_bucket.name AND NOT d.source ? 'stream') THEN
        RAISE EXCEPTION 'bucket "%" is not defined', _drop_bucket.name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN outpost._apply(
        (SELECT coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb)
           FROM outpost.bucket_defs d WHERE d.name <> _drop_bucket.name),
        outpost._catalog(schemas));
END
$$;

CREATE FUNCTION outpost.drop_bucket(name text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._drop_bucket(name, pg_catalog.current_schemas(true))
$$;

-- Sync Streams as SQL, one stream at a time: the stream's queries replace
-- whatever it had (its other definitions' buckets are not touched).
CREATE FUNCTION outpost._define_stream(name text, queries text[], auto_subscribe boolean,
                                       priority int, schemas name[])
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT outpost._apply(
        (SELECT coalesce(jsonb_agg(x.s ORDER BY x.s ->> 'name'), '[]'::jsonb)
           FROM (SELECT d.source AS s FROM outpost.bucket_defs d
                  WHERE d.source -> 'stream' ->> 'name' IS DISTINCT FROM _define_stream.name
                 UNION ALL
                 SELECT e FROM jsonb_array_elements(outpost._stream_sources(
                     _define_stream.name, coalesce(_define_stream.queries, '{}'::text[]),
                     coalesce(_define_stream.auto_subscribe, false),
                     coalesce(_define_stream.priority, 3))) e) x),
        outpost._catalog(schemas))
$$;

CREATE FUNCTION outpost.define_stream(name text, queries text[], auto_subscribe boolean DEFAULT false,
                                      priority int DEFAULT 3)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._define_stream(name, queries, auto_subscribe, priority, pg_catalog.current_schemas(true))
$$;

CREATE FUNCTION outpost._drop_stream(name text, schemas name[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outpost.bucket_defs d
                    WHERE d.source -> 'stream' ->> 'name' = _drop_stream.name) THEN
        RAISE EXCEPTION 'stream "%" is not defined', _drop_stream.name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN outpost._apply(
        (SELECT coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb)
           FROM outpost.bucket_defs d
          WHERE d.source -> 'stream' ->> 'name' IS DISTINCT FROM _drop_stream.name),
        outpost._catalog(schemas));
END
$$;

CREATE FUNCTION outpost.drop_stream(name text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT outpost._drop_stream(name, pg_catalog.current_schemas(true))
$$;

CREATE FUNCTION outpost.rules_yaml() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT outpost._to_yaml(coalesce(jsonb_agg(d.source ORDER BY d.name), '[]'::jsonb))
      FROM outpost.bucket_defs d
$$;

CREATE VIEW outpost.buckets AS
SELECT d.name,
       d.priority,
       d.param_names AS parameter_names,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(d.source -> 'parameters')) AS parameters,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(d.source -> 'data')) AS data,
       d.version
  FROM outpost.bucket_defs d
 WHERE NOT d.source ? 'stream';

-- The active Sync Streams, one row per stream (its queries as written).
CREATE VIEW outpost.streams AS
SELECT d.source -> 'stream' ->> 'name' AS name,
       d.priority,
       (d.source -> 'stream' ->> 'auto_subscribe')::boolean AS auto_subscribe,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(d.source -> 'stream' -> 'queries')) AS queries,
       d.version
  FROM outpost.bucket_defs d
 WHERE d.source ? 'stream' AND (d.source -> 'stream' ->> 'variant')::int = 0;
