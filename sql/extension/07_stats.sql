-- 07_stats.sql — the `outpost.stats` view: counts, checkpoint, rules
-- version and problems, for operators and alerts.

CREATE VIEW outpost.stats AS
SELECT (SELECT count(*) FROM outpost.bucket_defs) AS bucket_definitions,
       (SELECT count(*) FROM outpost.bucket_state) AS buckets,
       (SELECT count(*) FROM outpost.ops) AS ops,
       (SELECT count(*) FROM outpost.bucket_rows) AS rows,
       (SELECT coalesce(sum(CASE WHEN kind = 'b' AND jsonb_typeof(pk) = 'array' THEN jsonb_array_length(pk) ELSE 1 END), 0)::bigint
          FROM outpost.changes) AS pending_changes,
       outpost.checkpoint() AS checkpoint,
       (SELECT max(created_at) FROM outpost.checkpoints) AS last_checkpoint_at,
       (SELECT version FROM outpost.rules WHERE active) AS rules_version,
       (SELECT count(*) FROM outpost.captured_tables) AS captured_tables,
       (SELECT count(*) FROM outpost.superseded) AS superseded_ops,
       (SELECT max(finished_at) FROM outpost.compactions) AS last_compaction_at,
       (SELECT coalesce(array_agg(p.message ORDER BY p.at), '{}') FROM outpost.problems p) AS problems,
       (SELECT coalesce(array_agg(c.qualified ORDER BY c.qualified), '{}')
          FROM outpost.captured_tables c
         WHERE NOT EXISTS (SELECT 1 FROM pg_class p WHERE p.oid = c.relid)) AS missing_tables;
