-- 00_schema.sql — every table, index and sequence of schema `outpost`: the
-- rules catalog, the capture queue, the op log with its running totals and
-- membership, parameter lookups, checkpoints, write checkpoints, the tick's
-- unlogged scratch tables and the problems log. No functions live here.
--
-- Pipeline: capture triggers append (table, key) to outpost.changes →
-- outpost.tick() reads committed changes and the rows they point at in ONE
-- statement (one snapshot; generated from the rules by the Rust compiler)
-- that also diffs them against outpost.bucket_rows, and appends PUT/REMOVE
-- ops with consecutive op ids to outpost.ops → publishes checkpoint N (the last op
-- id) and NOTIFYs outpost_checkpoint.
--
-- Invariant: checkpoint N contains every op with op_id <= N, forever. Ticks
-- are serialized by an advisory transaction lock, op ids are allocated inside
-- the tick (not from a sequence taken by writers), and the checkpoint row is
-- written in the same transaction as its ops.

-- ---------------------------------------------------------------- catalog --

CREATE TABLE outpost.rules (
    version     bigint PRIMARY KEY,
    sources     jsonb NOT NULL,
    tick_sql    text NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX rules_one_active ON outpost.rules (active) WHERE active;

CREATE TABLE outpost.bucket_defs (
    name        text PRIMARY KEY,
    priority    int NOT NULL,
    param_names text[] NOT NULL,
    source      jsonb NOT NULL,
    compiled    jsonb NOT NULL,
    version     bigint NOT NULL
);

-- pg_dump keeps the rules (outpost.redeploy() rebuilds everything else from
-- them and the source tables) and the write-checkpoint counters (clients
-- compare against them; they must not restart at 1).
SELECT pg_catalog.pg_extension_config_dump('outpost.rules', '');

CREATE TABLE outpost.captured_tables (
    relid     oid PRIMARY KEY,
    qualified text NOT NULL
);

-- ---------------------------------------------------------------- capture --

-- kind: 'k' a row key changed, 'b' a batch of changed keys (pk is a jsonb
-- array of keys: the capture trigger's usual form, one row per ~2 kB of keys,
-- unnested by the tick), 't' table truncated, 'f' re-evaluate the whole
-- table for bucket definition `def` (a deploy).
-- Written by the capture trigger with simple_heap_insert (pg_ext/src/capture.rs):
-- it must keep these four columns in this order and have no index or trigger.
CREATE TABLE outpost.changes (
    relid oid NOT NULL,
    pk    jsonb,
    kind  "char" NOT NULL,
    def   text
);

CREATE TABLE outpost.write_checkpoint_counters (
    user_id   text NOT NULL,
    client_id text NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
SELECT pg_catalog.pg_extension_config_dump('outpost.write_checkpoint_counters', '');

CREATE TABLE outpost.write_checkpoint_requests (
    user_id   text NOT NULL,
    client_id text NOT NULL,
    seq       bigint NOT NULL
);

-- ----------------------------------------------------------------- op log --

-- Fixed-width columns first: after a text, each bigint would start at the
-- next multiple of 8 (~8 bytes of padding per row).
CREATE TABLE outpost.ops (
    op_id       bigint NOT NULL,
    checksum    bigint NOT NULL,
    -- MOVE/CLEAR: the op that superseded what this op replaced. A client
    -- streaming checkpoint C that receives an op with target_op > C must not
    -- complete C (its rows would be wrong although checksums match).
    target_op   bigint,
    bucket      text NOT NULL,
    op          text NOT NULL,
    object_type text,
    object_id   text,
    subkey      text,
    data        text,
    PRIMARY KEY (bucket, op_id)
);

-- Ops superseded by a later op of the same row in the same bucket, written by
-- the tick that superseded them; outpost.compact() turns them into MOVEs.
CREATE TABLE outpost.superseded (
    op_id  bigint NOT NULL,
    by_op  bigint NOT NULL,
    bucket text NOT NULL
);

-- Ops removed per bucket by compaction (bucket_state.op_count counts ops ever
-- written; the difference is what a client downloads).
CREATE TABLE outpost.compacted (
    bucket  text PRIMARY KEY,
    removed bigint NOT NULL
);

-- The current PUT of every row in every bucket: what the next tick diffs
-- against. One index: src_key = outpost._src_key(relid, pk) of the source
-- row (int8 btrees insert far faster than indexes on the texts and jsonb
-- they stand for; every lookup also compares subkey, so a hash collision
-- costs a row comparison, never a wrong answer). The source row's table and
-- key are not stored again: subkey is `<relid>:<pk as jsonb text>`
-- (rules/src/compile/data.rs), and the few readers that need them (a
-- TRUNCATE's keys, a deploy's) take them from it. A bucket's rows have no
-- index of their own: the tick finds them through their keys, and a deploy,
-- a removed definition and compaction's defragmentation (which need a
-- bucket's rows without knowing their keys) scan the table; bucket_state.live_rows
-- counts them. The tick matches a key's rows by (bucket, object_type,
-- object_id, subkey) in a hash join and updates or deletes them by the ctid
-- it read them at. Fixed-width columns first: no alignment padding.
CREATE TABLE outpost.bucket_rows (
    src_key     bigint NOT NULL,
    op_id       bigint NOT NULL,
    fingerprint bigint NOT NULL,
    bucket      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    subkey      text NOT NULL
) WITH (fillfactor = 80);  -- room for HOT updates: a changed row rewrites no index
CREATE INDEX bucket_rows_source ON outpost.bucket_rows (src_key);

-- Running totals, kept current by every tick so a checkpoint costs O(buckets).
CREATE TABLE outpost.bucket_state (
    bucket     text PRIMARY KEY,
    def        text NOT NULL,
    checksum   bigint NOT NULL DEFAULT 0,
    op_count   bigint NOT NULL DEFAULT 0,
    last_op_id bigint NOT NULL DEFAULT 0,
    -- Live rows (its bucket_rows entries): what compaction's
    -- defragmentation compares the op count with.
    live_rows  bigint NOT NULL DEFAULT 0
);
CREATE INDEX bucket_state_def ON outpost.bucket_state (def);
CREATE INDEX bucket_state_last_op ON outpost.bucket_state (last_op_id);

-- Materialized parameter lookups: which bucket a request value maps to.
CREATE TABLE outpost.param_rows (
    query_id text NOT NULL,
    relid    oid NOT NULL,
    pk       jsonb NOT NULL,
    lookup   jsonb NOT NULL,
    bucket   text NOT NULL
);
CREATE INDEX param_rows_lookup ON outpost.param_rows (query_id, lookup);
CREATE INDEX param_rows_def ON outpost.param_rows (split_part(query_id, '#', 1));
CREATE INDEX param_rows_source ON outpost.param_rows (relid, pk);

CREATE TABLE outpost.compactions (
    finished_at timestamptz NOT NULL,
    removed     bigint NOT NULL,
    checkpoint  bigint NOT NULL
);

CREATE TABLE outpost.checkpoints (
    op_id      bigint PRIMARY KEY,
    ops        bigint NOT NULL,
    -- Parameter lookups changed: some users' bucket sets may differ.
    params_changed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Dumped so that op ids continue above what clients already hold after a
-- restore (retention keeps this table small).
SELECT pg_catalog.pg_extension_config_dump('outpost.checkpoints', '');

CREATE TABLE outpost.write_checkpoints (
    user_id    text NOT NULL,
    client_id  text NOT NULL,
    seq        bigint NOT NULL,
    checkpoint bigint NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX write_checkpoints_checkpoint ON outpost.write_checkpoints (checkpoint);

-- Scratch space of the tick (only ever touched under the tick lock, emptied
-- before it commits). Unlogged: its content never outlives a transaction.
-- def: NULL when every definition re-evaluates the key, else the one that does.
CREATE UNLOGGED TABLE outpost.work_keys (relid oid NOT NULL, pk jsonb NOT NULL, def text);
CREATE UNLOGGED TABLE outpost.work_params (
    query_id text, relid oid, pk jsonb, lookup jsonb, bucket text
);
CREATE UNLOGGED TABLE outpost.work_old_params (
    query_id text, relid oid, pk jsonb, lookup jsonb, bucket text
);
CREATE UNLOGGED TABLE outpost.work_write_checkpoints (user_id text, client_id text, seq bigint);
-- The tick fills only op_id, op, fingerprint, existed and old_ctid, for ops
-- on existing bucket_rows entries (its statement writes everything else
-- itself); compaction's defragmentation fills every column.
CREATE UNLOGGED TABLE outpost.work_ops (
    op_id bigint, bucket text, op text, object_type text, object_id text, subkey text,
    data text, checksum bigint, relid oid, pk jsonb, fingerprint bigint, existed boolean,
    old_op_id bigint,
    -- Where the row's current bucket_rows entry is (existed): read in the
    -- tick's statement and used in the same transaction under the tick lock,
    -- so nothing can have moved it.
    old_ctid tid
);

CREATE UNLOGGED SEQUENCE outpost.notify_clock;

-- Problems sync cannot fix by itself: kind 'schema' (a schema change broke
-- the rules; one row, replaced by the next), kind 'quarantine' (a queued key
-- the tick could not read, with its table and key, set aside so that ticks
-- go on).
CREATE TABLE outpost.problems (
    kind       text NOT NULL,
    message    text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    table_name text,
    key        jsonb
);
