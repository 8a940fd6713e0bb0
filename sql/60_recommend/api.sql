-- Recommender definition API: create_recommender, drop_recommender.
-- Invariant: a recommender exists iff its catalog row and its section of the stream's ingest
-- function exist, and then its state equals the fold of the stream's counted events since
-- horizon_start; each call creates (with backfill) or removes all of it in one transaction.

CREATE FUNCTION cep._recommender_id(recommender text)
RETURNS integer
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
BEGIN
    SELECT r.recommender_id INTO v_id FROM cep.recommenders AS r WHERE r.name = recommender;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'recommender % does not exist',
            coalesce(pg_catalog.quote_ident(recommender), 'NULL')
            USING ERRCODE = '42704', HINT = 'See SELECT name FROM cep.recommenders.';
    END IF;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep._recommender_id(text) IS
'Internal: the id of a recommender by name; raises 42704 when there is none.';

CREATE FUNCTION cep.create_recommender(
    name text,
    stream text,
    user_column name,
    item_column name,
    action_column name,
    weights jsonb DEFAULT '{"view": 1, "like": 3, "share": 5, "purchase": 10}',
    horizon interval DEFAULT '7 days',
    unknown_action text DEFAULT 'ignore',
    max_fanout integer DEFAULT 1000,
    bucket interval DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    v_stream_id integer := cep._stream_id(stream);
    s cep.streams;
    v_arg text;
    v_col name;
    v_action record;
    v_watermark timestamptz;
    v_start timestamptz := '-infinity'::timestamptz;
    v_id integer;
    v_backfill text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = v_stream_id;
    IF NOT pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = s.source),
        'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to define recommenders on stream "%"',
            s.source, stream USING ERRCODE = '42501';
    END IF;

    IF name IS NULL OR octet_length(name) NOT BETWEEN 1 AND 63 OR name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid recommender name %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '22023',
            HINT = 'A name is 1 to 63 bytes without control characters.';
    END IF;
    IF EXISTS (SELECT 1 FROM cep.recommenders AS x WHERE x.name = create_recommender.name) THEN
        RAISE EXCEPTION 'recommender "%" already exists', name USING ERRCODE = '42710';
    END IF;

    FOR v_arg, v_col IN
        SELECT a.arg, a.col FROM (VALUES
            (1, 'user_column', user_column), (2, 'item_column', item_column),
            (3, 'action_column', action_column)
        ) AS a (o, arg, col)
        ORDER BY a.o
    LOOP
        IF v_col IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', v_arg USING ERRCODE = '22023';
        END IF;
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = s.source AND a.attname = v_col AND a.attnum > 0
                AND NOT a.attisdropped
        ) THEN
            RAISE EXCEPTION '% "%" does not exist in %', v_arg, v_col, s.source
                USING ERRCODE = '42703';
        END IF;
    END LOOP;

    IF weights IS NULL OR jsonb_typeof(weights) <> 'object' THEN
        RAISE EXCEPTION 'weights must be a JSON object of action names and weights, got %',
            coalesce(weights::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'For example {"view": 1, "purchase": 10}.';
    END IF;
    IF weights = '{}'::jsonb THEN
        RAISE EXCEPTION 'weights must name at least one action' USING ERRCODE = '22023';
    END IF;
    FOR v_action IN SELECT w.key, w.value FROM jsonb_each(weights) AS w ORDER BY w.key LOOP
        IF (CASE WHEN jsonb_typeof(v_action.value) = 'number'
            THEN (v_action.value #>> '{}')::numeric < 0 ELSE true END)
        THEN
            RAISE EXCEPTION 'weights: the weight of action % must be a non-negative number, got %',
                quote_literal(v_action.key), v_action.value
                USING ERRCODE = '22023';
        END IF;
    END LOOP;

    IF horizon IS NULL OR horizon <= '0 seconds' THEN
        RAISE EXCEPTION 'horizon must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF extract(month FROM horizon) <> 0 OR extract(year FROM horizon) <> 0 THEN
        RAISE EXCEPTION 'horizon must not contain months or years' USING ERRCODE = '22023';
    END IF;
    IF unknown_action IS NULL OR unknown_action NOT IN ('ignore', 'error') THEN
        RAISE EXCEPTION 'invalid unknown_action %', coalesce(quote_literal(unknown_action), 'NULL')
            USING ERRCODE = '22023', HINT = 'unknown_action is ignore (weight 0) or error.';
    END IF;
    IF max_fanout IS NULL OR max_fanout NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'max_fanout must be between 1 and 1000000, got %',
            coalesce(max_fanout::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    -- Days are not always 24 hours in a time zone: keep fixed-length intervals in seconds.
    horizon := make_interval(secs => extract(epoch FROM horizon));
    IF bucket IS NULL THEN
        bucket := least(interval '1 hour', make_interval(secs => extract(epoch FROM horizon) / 10));
    ELSIF bucket <= '0 seconds' OR bucket > horizon
        OR extract(month FROM bucket) <> 0 OR extract(year FROM bucket) <> 0 THEN
        RAISE EXCEPTION 'bucket must be a positive interval no longer than the horizon (%), got %',
            horizon, bucket USING ERRCODE = '22023';
    END IF;
    bucket := make_interval(secs => extract(epoch FROM bucket));

    -- No insert may commit between the backfill below and the new ingest function.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);

    -- The state starts with the events of the current horizon.
    v_watermark := cep._watermark(v_stream_id);
    IF isfinite(v_watermark) THEN
        v_start := date_bin(bucket, v_watermark - horizon, '1970-01-01 00:00:00+00');
    ELSIF v_watermark = 'infinity' THEN
        v_start := 'infinity'::timestamptz;
    END IF;

    INSERT INTO cep.recommenders (
        name, stream_id, user_column, item_column, action_column, weights, horizon, bucket,
        unknown_action, max_fanout, horizon_start
    ) VALUES (
        name, v_stream_id, user_column, item_column, action_column, weights, horizon, bucket,
        unknown_action, max_fanout, v_start
    ) RETURNING recommender_id INTO v_id;

    PERFORM cep._regenerate_stream(v_stream_id);

    -- Backfill: the events already in the table (all but the late ones) since horizon_start go
    -- through the same section of code as a batch would.
    v_backfill := cep._bind_rows(cep._recommender_section(v_id), format(
        '(SELECT src.* FROM %s AS src WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS le '
        'WHERE le.stream_id = %s AND le.event_id = src.%I::bigint))',
        s.source, s.stream_id, s.id_column));
    EXECUTE format('DO %L', format(E'#variable_conflict use_variable\n'
        'DECLARE v_watermark timestamptz := %L; BEGIN ', v_start)
        || v_backfill || ' END');
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_recommender(
    text, text, name, name, name, jsonb, interval, text, integer, interval
) IS
'Create recommender NAME over STREAM: each event of USER_COLUMN on ITEM_COLUMN weighs '
'WEIGHTS->ACTION_COLUMN (default view 1, like 3, share 5, purchase 10; users and items are '
'taken in their text form). Maintains on ingest, exactly, the user-item weights of the events '
'within HORIZON (default 7 days) of the stream''s watermark and the item-item cosine '
'similarity; cep.run_maintenance() expires older events per BUCKET (default 1 hour or '
'horizon / 10). UNKNOWN_ACTION: ignore (weight 0) or error. MAX_FANOUT caps the items of '
'one user in the horizon (events on further items are not counted, see '
'cep.recommender_stats). Backfilled from the events already in the table. Returns the id.';

CREATE FUNCTION cep._drop_recommender_state(recommender_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM cep.recommender_pairs AS p
    WHERE p.recommender_id = _drop_recommender_state.recommender_id;
    DELETE FROM cep.recommender_weights AS w
    WHERE w.recommender_id = _drop_recommender_state.recommender_id;
    DELETE FROM cep.recommender_users AS u
    WHERE u.recommender_id = _drop_recommender_state.recommender_id;
    DELETE FROM cep.recommender_log AS l
    WHERE l.recommender_id = _drop_recommender_state.recommender_id;
    DELETE FROM cep.recommender_items AS i
    WHERE i.recommender_id = _drop_recommender_state.recommender_id;
END
$fn$;

COMMENT ON FUNCTION cep._drop_recommender_state(integer) IS
'Internal: delete a recommender''s state (the catalog row stays to the caller).';

CREATE FUNCTION cep.drop_recommender(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r cep.recommenders;
    v_source regclass;
BEGIN
    SELECT * INTO STRICT r FROM cep.recommenders AS x
    WHERE x.recommender_id = cep._recommender_id(drop_recommender.name);
    -- Batches in flight finish first, so that none writes state after it is deleted.
    SELECT s.source INTO STRICT v_source FROM cep.streams AS s WHERE s.stream_id = r.stream_id;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = v_source) THEN
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', v_source);
    END IF;
    DELETE FROM cep.recommenders AS x WHERE x.recommender_id = r.recommender_id;
    PERFORM cep._regenerate_stream(r.stream_id);
    PERFORM cep._drop_recommender_state(r.recommender_id);
END
$fn$;

COMMENT ON FUNCTION cep.drop_recommender(text) IS
'Remove recommender NAME: its section of the stream''s ingest function and its state.';
