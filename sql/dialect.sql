-- Helpers of the rules dialect (rules/src/dialect.rs): the two conversions
-- that must turn bad input into NULL instead of raising, so that one row with
-- malformed JSON or a malformed date cannot make a tick fail. Both are pure
-- and stay executable by PUBLIC like the other pure helpers.

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
