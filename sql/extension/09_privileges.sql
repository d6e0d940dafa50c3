-- 09_privileges.sql — who may use what in schema `outpost`. Runs last, after
-- every object exists. docs/security.md explains the model.
--
-- Deny by default: the extension shares its database with roles the
-- operator does not trust, so PUBLIC may do nothing here — not even look
-- up names in the schema. Each role then gets exactly what it needs:
-- - writers of synced tables: nothing. The capture trigger (outpost._capture,
--   in C) inserts the queue's heap tuples itself, without SQL or privilege
--   checks, and queues only keys of rows the writer really changed; nobody
--   else can write to outpost.changes.
-- - table owners running ALTER/DROP TABLE: nothing. The event triggers run
--   as the extension owner with a pinned search_path; the caller's schema
--   list is passed as data only.
-- - the relay's role: `SELECT outpost.grant_relay('role')`.
-- - the `/crud` write role: `SELECT outpost.grant_crud('role')`.
-- outpost._capture is closed by the REVOKE below like every other routine.
-- tests/tests/security.rs checks every object against one allow-list.
REVOKE ALL ON SCHEMA outpost FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA outpost FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA outpost FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA outpost FROM PUBLIC;

-- What a relay needs: streams (sync_checkpoint, bucket_ops, changes_since,
-- client_schema, checkpoint), write checkpoints, ticks and compaction (the
-- procedure runs as the relay and calls its definer steps). Calling
-- sync_checkpoint means claiming any user's identity: grant it to the
-- relay's role only.
CREATE FUNCTION outpost.grant_relay(role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA outpost TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION outpost.tick(), outpost.compact(), outpost.checkpoint(),
        outpost.client_schema(), outpost.sync_checkpoint(jsonb, jsonb, text),
        outpost.sync_checkpoint(jsonb, jsonb, text, jsonb),
        outpost.bucket_ops(text[], bigint[], bigint, int), outpost.changes_since(bigint),
        outpost.request_write_checkpoint(text, text), outpost.request_checkpoint(text, text, bigint),
        outpost._compact_begin(), outpost._compact_step(bigint, int), outpost._defrag_candidates(),
        outpost._defragment_step(text[], bigint, int, tid), outpost._compact_finish(bigint),
        outpost._setting(text, text) TO %I', role);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE outpost.compact_online(bigint) TO %I', role);
END
$$;

-- What the role named by the relay's OUTPOST_WRITE_ROLE needs for `/crud`:
-- apply_crud runs as that role (its grants and RLS decide what lands) and
-- asks a definer function which synced table an entry names.
CREATE FUNCTION outpost.grant_crud(role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA outpost TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION outpost.apply_crud(jsonb), outpost._crud_target(jsonb),
        outpost._crud_default(jsonb, regclass) TO %I', role);
END
$$;
REVOKE ALL ON FUNCTION outpost.grant_relay(name), outpost.grant_crud(name) FROM PUBLIC;
