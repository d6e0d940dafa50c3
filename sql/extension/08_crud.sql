-- 08_crud.sql — client writes (`POST /crud`): entry checks, the default
-- PUT/PATCH/DELETE and per-table write handlers.
--
-- Client writes: what the relay's `POST /crud` runs for each entry of an
-- uploaded batch, inside ONE transaction, after `SET LOCAL ROLE <write role>`
-- and `set_config('request.jwt.claims' / 'request.jwt.claim.sub', …, true)`.
--
-- An entry is PowerSync's CRUD entry: {"op": "PUT"|"PATCH"|"DELETE",
-- "type": <table>, "id": <text>, "data": {column: value, …}}.
--
-- outpost.apply_crud(entry) is SECURITY INVOKER: the write role's privileges
-- and the table's RLS policies decide what lands. It only accepts tables that
-- the active rules sync under their own name (a data query's object_type is
-- the table's name), and columns that exist. Every statement is built with
-- format('%I') / the table's regclass, and values are bound as one jsonb
-- parameter and converted by jsonb_populate_record (Postgres' input
-- functions), never concatenated.
--
-- Default semantics (the server applies entries in upload order; the last
-- write wins, per column for PATCH):
-- - PUT: upsert by id of the given columns (columns not given keep their
--   value on update and get their default on insert);
-- - PATCH: update the given columns of the row with that id; a row that does
--   not exist is a no-op (it was deleted: the delete wins);
-- - DELETE: delete by id; deleting a missing row is a no-op (idempotent, so a
--   client may safely re-upload a batch whose response it lost).
-- A PATCH or DELETE of a row that RLS hides from the write role is a no-op
-- too, exactly like one of a missing row (no existence probe past RLS). A row
-- that fails a policy's WITH CHECK raises insufficient_privilege (42501).
--
-- Privileges: the write role needs `SELECT outpost.grant_crud('role')`
-- (USAGE on the schema, EXECUTE on apply_crud and the entry check).
--
-- outpost.set_write_handler(table, handler) replaces the default for one
-- table: `handler(entry jsonb)` receives the entry and does the write itself
-- (merge rules, validation, writing elsewhere). It runs as the write role; a
-- RAISE EXCEPTION in it rejects the entry and rolls back the whole batch, and
-- its message reaches the client.
--
-- Errors (SQLSTATE → what the relay answers): 22023/22xxx and 42703 → 400
-- (bad entry: unknown op, table, column, malformed id or value); 42501 → 403;
-- P0001 (a handler's RAISE EXCEPTION) and 23xxx (constraints) → 422.
--
-- The handler is kept as its quoted, qualified name, not as regproc:
-- pg_upgrade refuses clusters with reg* columns other than regclass/regtype/
-- regrole in user tables (function OIDs are not kept across a major upgrade).
-- Table OIDs are kept, so relid stays an oid.
CREATE TABLE outpost.write_handlers (
    relid   oid PRIMARY KEY,
    handler text NOT NULL
);

-- Registers `handler(entry jsonb)` for `tbl`; NULL removes it.
CREATE FUNCTION outpost.set_write_handler(tbl regclass, handler regproc) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF handler IS NULL THEN
        DELETE FROM outpost.write_handlers WHERE relid = tbl;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_proc p
                    WHERE p.oid = handler AND p.pronargs = 1
                      AND p.proargtypes[0] = 'jsonb'::regtype AND p.prokind = 'f') THEN
        RAISE EXCEPTION 'write handler % must be a function taking one jsonb argument', handler
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outpost.write_handlers
    SELECT tbl, format('%I.%I', ns.nspname, p.proname)
      FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
     WHERE p.oid = handler
        ON CONFLICT (relid) DO UPDATE SET handler = EXCLUDED.handler;
END
$$;

-- Checks an entry's shape and finds its table: one that some data query of
-- the active rules syncs as object_type = its own name, and the table's
-- handler (a qualified function name) if one is registered. Definer: the
-- write role need not read outpost's catalog.
CREATE FUNCTION outpost._crud_target(entry jsonb, OUT relid oid, OUT handler text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ text;
    id  jsonb;
    n   int;
BEGIN
    IF entry IS NULL OR jsonb_typeof(entry) <> 'object' THEN
        RAISE EXCEPTION 'entry must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF entry ->> 'op' IS NULL OR entry ->> 'op' NOT IN ('PUT', 'PATCH', 'DELETE') THEN
        RAISE EXCEPTION 'unknown op %, expected PUT, PATCH or DELETE', coalesce(entry ->> 'op', 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    typ := entry ->> 'type';
    IF typ IS NULL OR jsonb_typeof(entry -> 'type') <> 'string' THEN
        RAISE EXCEPTION 'type must be a table name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    id := entry -> 'id';
    IF id IS NULL OR jsonb_typeof(id) NOT IN ('string', 'number') OR id #>> '{}' = '' THEN
        RAISE EXCEPTION 'id must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF entry ? 'data' AND jsonb_typeof(entry -> 'data') NOT IN ('object', 'null') THEN
        RAISE EXCEPTION 'data must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT count(DISTINCT c.oid), min(c.oid) INTO n, relid
      FROM outpost.bucket_defs d,
           jsonb_array_elements(d.compiled -> 'data_queries') q,
           pg_class c
     WHERE q ->> 'object_type' = typ
       AND c.oid = (q ->> 'relid')::oid
       AND c.relname = typ;
    IF n > 1 THEN
        RAISE EXCEPTION 'table "%" is ambiguous (several synced tables have that name)', typ
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF n = 0 THEN
        RAISE EXCEPTION 'table "%" is not synced', typ USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A handler that was dropped since (or renamed) no longer applies.
    SELECT h.handler INTO handler
      FROM outpost.write_handlers h
     WHERE h.relid = _crud_target.relid
       AND to_regprocedure(h.handler || '(jsonb)') IS NOT NULL;
END
$$;

-- No SET search_path here: a handler runs with the caller's settings.
-- Every name is qualified, since the body runs with the caller's search_path.
CREATE FUNCTION outpost.apply_crud(entry jsonb) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    target record;
BEGIN
    SELECT * INTO target FROM outpost._crud_target(entry);
    IF target.handler IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT %s($1)', target.handler) USING entry;
    ELSE
        PERFORM outpost._crud_default(entry, target.relid::pg_catalog.regclass);
    END IF;
END
$$;

-- The default write of a checked entry (see the top of this file).
CREATE FUNCTION outpost._crud_default(entry jsonb, rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op      text := entry ->> 'op';
    typ     text := entry ->> 'type';
    id      jsonb := entry -> 'id';
    data    jsonb := coalesce(nullif(entry -> 'data', 'null'::jsonb), '{}'::jsonb);
    cols    text[];
    bad     text;
    rec     jsonb;
    stmt    text;
BEGIN
    -- Columns: every given one must exist and be writable; `id` is the entry's.
    data := data - 'id';
    SELECT array_agg(k ORDER BY k) INTO cols FROM jsonb_object_keys(data) k;
    cols := coalesce(cols, '{}');
    SELECT string_agg(format('%I', k), ', ') INTO bad
      FROM unnest(cols || '{id}'::text[]) k
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = k AND a.attnum > 0
                          AND NOT a.attisdropped AND a.attgenerated = '');
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'table "%" has no writable column %', typ, bad
            USING ERRCODE = 'undefined_column';
    END IF;
    rec := data || jsonb_build_object('id', id);

    IF op = 'PUT' THEN
        stmt := format('INSERT INTO %s AS t (%s) SELECT %s FROM jsonb_populate_record(NULL::%s, $1) r ON CONFLICT (id) DO ',
                       rel,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest('{id}'::text[] || cols) k),
                       (SELECT string_agg(format('r.%I', k), ', ') FROM unnest('{id}'::text[] || cols) k),
                       rel);
        IF cardinality(cols) = 0 THEN
            stmt := stmt || 'NOTHING';
        ELSE
            stmt := stmt || 'UPDATE SET ' ||
                    (SELECT string_agg(format('%I = EXCLUDED.%I', k, k), ', ') FROM unnest(cols) k);
        END IF;
        EXECUTE stmt USING rec;
        RETURN;
    END IF;

    IF op = 'PATCH' THEN
        IF cardinality(cols) = 0 THEN
            RETURN;
        END IF;
        stmt := format('UPDATE %s AS t SET %s FROM jsonb_populate_record(NULL::%s, $1) r WHERE t.id = r.id',
                       rel,
                       (SELECT string_agg(format('%I = r.%I', k, k), ', ') FROM unnest(cols) k),
                       rel);
    ELSE
        stmt := format('DELETE FROM %s AS t USING jsonb_populate_record(NULL::%s, $1) r WHERE t.id = r.id',
                       rel, rel);
    END IF;
    -- A row the write role cannot see (RLS) is treated like a missing one: no
    -- error, nothing written. Telling the two apart would need a look past
    -- RLS, which would let any user probe for rows they may not read.
    EXECUTE stmt USING rec;
END
$$;
