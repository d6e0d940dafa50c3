-- 06_schema_changes.sql — DDL on synced tables: the event triggers that
-- recompile the rules after ALTER TABLE and report a dropped table, and the
-- problems they record.

CREATE FUNCTION outpost._active_sources() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.sources FROM outpost.rules r WHERE r.active
$$;

CREATE FUNCTION outpost._record_problem(kind text, message text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM outpost.problems p WHERE p.kind = _record_problem.kind;
    INSERT INTO outpost.problems (kind, message) VALUES (_record_problem.kind, _record_problem.message);
$$;

CREATE FUNCTION outpost._clear_problem(kind text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM outpost.problems p WHERE p.kind = _clear_problem.kind;
$$;

-- After ALTER TABLE on a synced table the rules are compiled again against the
-- new catalog: an added column reaches `SELECT *` buckets, a type change is
-- re-evaluated. When the rules no longer compile (a referenced column dropped
-- or renamed, a table renamed) the DDL still succeeds, the problem is recorded
-- in outpost.problems (and outpost.stats) and raised as a WARNING; ticks then
-- fail with the same message until the rules or the table are fixed — sync
-- stops rather than stream wrong rows. In REPEATABLE READ or SERIALIZABLE the
-- ALTER TABLE fails instead (op ids cannot be allocated there).
--
-- The trigger runs in the session of whoever ran the DDL (a table owner the
-- extension does not trust). Its function body is a single call with every
-- name qualified, made as the extension owner, that passes the caller's
-- schema list as data (bare table names in the rules resolve through it);
-- everything else runs with a pinned search_path, so no function or operator
-- the caller defined can run with the extension owner's rights.
CREATE FUNCTION outpost._on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM outpost._on_alter_table_in(pg_catalog.current_schemas(true));
END
$$;

CREATE FUNCTION outpost._on_alter_table_in(schemas name[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    PERFORM outpost._op_id_base();
    BEGIN
        PERFORM outpost._apply(sources, outpost._catalog(schemas));
        PERFORM outpost._clear_problem('schema');
    EXCEPTION WHEN OTHERS THEN
        PERFORM outpost._record_problem('schema', SQLERRM);
        RAISE WARNING 'outpost: the sync rules no longer match the schema: %', SQLERRM
            USING HINT = 'Sync is stopped until the table or the rules are fixed (outpost.deploy_rules).';
    END;
END
$$;

CREATE FUNCTION outpost._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
