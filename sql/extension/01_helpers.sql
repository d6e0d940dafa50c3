-- 01_helpers.sql — small functions the other files build on: value
-- conversion for SQLite clients, array elements for `IN`, the 64-bit keys of
-- bucket_rows, the tick lock's key, settings, and the catalog snapshot the
-- rules compiler validates against.

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
