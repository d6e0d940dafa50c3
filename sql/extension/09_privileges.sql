-- 09_privileges.sql — who may use what in schema `outpost`. Runs last, after
-- every object exists.

-- Capture runs with the writer's privileges: anyone who can write a synced
-- table can queue keys for re-evaluation (and read nothing).
GRANT USAGE ON SCHEMA outpost TO PUBLIC;
GRANT INSERT ON outpost.changes TO PUBLIC;
GRANT SELECT, UPDATE ON SEQUENCE outpost.notify_clock TO PUBLIC;


-- Functions execute for PUBLIC by default. Everything that reads across users
-- (sync_checkpoint, bucket_ops, …), changes rules, or touches the op log is
-- for the extension owner and the relay's role only: a database role that may
-- call sync_checkpoint could claim any user's identity. What stays public:
-- capture (it runs as the writer), apply_crud (runs as the caller, under RLS),
-- the pure helpers, checkpoint(), and what the event triggers call on behalf
-- of a table owner.
REVOKE EXECUTE ON FUNCTION
    outpost._apply_work_ops(bigint), outpost._tick_locked(), outpost.tick(),
    outpost._check_plan(jsonb), outpost._apply(jsonb, jsonb), outpost.redeploy(),
    outpost.deploy_rules(text), outpost.validate_rules(text),
    outpost.define_bucket(text, text[], text[], int), outpost.drop_bucket(text),
    outpost.rules_yaml(), outpost.client_schema(), outpost.user_buckets(jsonb, jsonb),
    outpost.sync_checkpoint(jsonb, jsonb, text),
    outpost.bucket_ops(text[], bigint[], bigint, int), outpost.changes_since(bigint),
    outpost.request_write_checkpoint(text, text), outpost._compact_pass(bigint),
    outpost._defragment(), outpost.compact(), outpost._active_sources()
FROM PUBLIC;

-- ALTER TABLE by a table owner who is not the extension owner must still be
-- able to recompile the rules: the event trigger runs with the owner's rights
-- (and the caller's search_path, for table names).
ALTER FUNCTION outpost._on_alter_table() SECURITY DEFINER;
ALTER FUNCTION outpost._on_drop() SECURITY DEFINER;

-- What a relay needs: `SELECT outpost.grant_relay('relay_role')`.
CREATE FUNCTION outpost.grant_relay(role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA outpost TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION outpost.tick(), outpost.compact(),
        outpost.client_schema(), outpost.sync_checkpoint(jsonb, jsonb, text),
        outpost.bucket_ops(text[], bigint[], bigint, int), outpost.changes_since(bigint),
        outpost.request_write_checkpoint(text, text) TO %I', role);
END
$$;
REVOKE EXECUTE ON FUNCTION outpost.grant_relay(name) FROM PUBLIC;
