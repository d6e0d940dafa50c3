-- 01_helpers.sql — small functions the other files build on: value
-- conversion for SQLite clients, array elements for `IN`, the 64-bit keys of
-- bucket_rows, the tick lock's key, settings, and the catalog snapshot the
-- rules compiler validates against.

-- JSON text as SQLite writes it (json(), `->`): no whitespace outside
-- strings. Postgres puts a space after each ':' and ','.
CREATE FUNCTION outpost._json_min(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(t, '("(?:[^"\\]|\\.)*")|[ \t\n\r]+', '\1', 'g')
$$;

-- A value of unknown type as a SQLite client stores it (see
-- rules/src/compile/values.rs): objects and arrays as SQLite's JSON text.
CREATE FUNCTION outpost._sqlite_value(v jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
               WHEN 'boolean' THEN to_jsonb((v #>> '{}')::boolean::int)
               WHEN 'object' THEN to_jsonb(outpost._json_min(v::text))
               WHEN 'array' THEN to_jsonb(outpost._json_min(v::text))
               ELSE v
           END
$$;

-- `_sqlite_value` of a `json` value (a `->>` on a json column or text):
-- an object or array keeps the key order it was written in.
CREATE FUNCTION outpost._sqlite_json(v json) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN json_typeof(v) IN ('object', 'array') THEN to_jsonb(outpost._json_min(v::text))
                ELSE outpost._sqlite_value(v::jsonb) END
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
-- visible through `schemas` (the caller's current_schemas(true), passed as
-- data), by bare name — the first schema in the list holding a relation of
-- that name wins, as pg_table_is_visible would decide with that path. The
-- search_path here is pinned, so type names come out schema-qualified unless
-- they live in pg_catalog (the tick resolves them with the same pinned path).
CREATE FUNCTION outpost._catalog(schemas name[]) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH t AS (
    SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS name,
           NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_class c2
                 JOIN pg_catalog.pg_namespace n2 ON n2.oid = c2.relnamespace
                WHERE c2.relname OPERATOR(pg_catalog.=) c.relname
                  AND pg_catalog.array_position(schemas, n2.nspname::name)
                      OPERATOR(pg_catalog.<) pg_catalog.array_position(schemas, n.nspname::name))
           AND pg_catalog.array_position(schemas, n.nspname::name) IS NOT NULL AS visible,
           (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('name', a.attname,
                                      'type', pg_catalog.format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
           (SELECT coalesce(pg_catalog.jsonb_agg(a.attname ORDER BY pg_catalog.array_position(i.indkey::pg_catalog.int2[], a.attnum)), '[]')
              FROM pg_catalog.pg_index i
              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = c.oid AND i.indisprimary) AS primary_key
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'outpost', 'pg_toast')
       AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
)
SELECT pg_catalog.jsonb_build_object('tables', coalesce(pg_catalog.jsonb_object_agg(key, obj), '{}'::pg_catalog.jsonb))
  FROM (SELECT schema || '.' || name AS key, pg_catalog.to_jsonb(t) - 'visible' AS obj FROM t
        UNION ALL
        SELECT name, pg_catalog.to_jsonb(t) - 'visible' FROM t WHERE visible) x
$$;

-- Settings (SET outpost.… or ALTER DATABASE … SET outpost.…):
--   outpost.defrag_ratio    (default 0.2)  re-PUT a bucket's live rows when they
--                                          are fewer than this fraction of its ops
--   outpost.defrag_min_ops  (default 1000) ...and it has at least this many ops
--   outpost.defrag_batch    (default 2000) rows re-PUT per defragmentation
--                                          step of compact_online() (the
--                                          longest a tick waits for it)
--   outpost.retention       (default '7 days') keep checkpoints and write
--                                          checkpoints this long
CREATE FUNCTION outpost._setting(name text, fallback text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting(name, true), ''), fallback)
$$;

-- Helpers of the rules dialect (rules/src/dialect.rs): the two conversions
-- that must turn bad input into NULL instead of raising, so that one row with
-- malformed JSON or a malformed date cannot make a tick fail. Both are pure;
-- compiled rules run inside the extension's own functions, so they need no
-- grant to PUBLIC.

-- Text as jsonb, or NULL when it is not valid JSON (SQLite's json functions
-- read JSON text; PowerSync treats invalid text as no value).
CREATE FUNCTION outpost._json(t text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- A time string the way PowerSync reads one: ISO 8601 (a space or `T`
-- between date and time), UTC unless it names a zone; a number is a Julian
-- day. NULL when it is not a time.
CREATE FUNCTION outpost._timestamp_utc(t text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT AS $$
BEGIN
    IF t ~ '^[0-9]+(\.[0-9]*)?$' THEN
        RETURN to_timestamp((t::float8 - 2440587.5) * 86400);
    ELSIF t ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)?$' THEN
        IF t ~ '([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$' AND t ~ '[ T]' THEN
            RETURN t::timestamptz;
        END IF;
        RETURN t::timestamp AT TIME ZONE 'UTC';
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
