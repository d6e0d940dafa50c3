-- Checkpoint requests: what the relay's `POST /sync/checkpoint-request`
-- runs (PowerSync's "requests" checkpoint mode). The client supplies an id
-- that only grows per (user, client); the stored value is the maximum of
-- every id supplied and of the counter `request_write_checkpoint` advances
-- (both modes share one sequence per client, so a client may switch).
--
-- outpost.request_checkpoint(user_id, client_id, request_id) stores
-- greatest(stored, request_id) and returns it. When request_id is (again) the
-- stored value, it is queued like a write checkpoint: the next tick publishes
-- it with the checkpoint that includes everything committed before, and the
-- user's stream carries it in `write_checkpoint`. A stale id (below the
-- stored one) changes nothing; the caller learns the stored value instead.
-- A retry of the current id queues it again, so an idle database still ticks
-- and the acknowledgement reaches the stream.

CREATE FUNCTION outpost.request_checkpoint(user_id text, client_id text, request_id bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, outpost, pg_temp AS $$
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
        INSERT INTO outpost.write_checkpoint_requests (user_id, client_id, seq)
        VALUES (request_checkpoint.user_id, request_checkpoint.client_id, s);
        PERFORM pg_notify('outpost_changes', '');
    END IF;
    RETURN s;
END
$$;
REVOKE EXECUTE ON FUNCTION outpost.request_checkpoint(text, text, bigint) FROM PUBLIC;
