-- Window definition API: create_window, drop_window.
-- Invariant: a window exists iff its catalog row, state table(s), view and section of the
-- stream's ingest function exist; each call creates or removes all of them in one
-- transaction (any error leaves nothing), and rebuilds the stream's ingest function.

CREATE FUNCTION cep.create_window(
    name text,
    stream text,
    kind text,
    size interval,
    slide interval DEFAULT NULL,
    group_by text[] DEFAULT '{}',
    aggregates text[] DEFAULT '{count(*)}',
    retention interval DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    v_stream_id integer := cep._stream_id(stream);
    s cep.streams;
    v_parts text [];
    v_schema name;
    v_view name;
    v_group name [] := '{}'::name [];
    v_col text;
    v_aggs jsonb;
    v_id integer;
    v_ddl text;
    v_backfill text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = v_stream_id;
    IF NOT pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = s.source),
        'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to define windows on stream "%"', s.source,
            stream USING ERRCODE = '42501';
    END IF;

    IF name IS NULL OR name = '' THEN
        RAISE EXCEPTION 'invalid window name %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        v_parts := parse_ident(name);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'invalid window name %: %', quote_literal(name), SQLERRM
            USING ERRCODE = '22023';
    END;
    -- Checked on the text: assigned to a name, a longer part would be silently truncated.
    IF EXISTS (SELECT 1 FROM unnest(v_parts) AS p (part) WHERE octet_length(p.part) > 63) THEN
        RAISE EXCEPTION 'window name % is longer than 63 bytes', quote_literal(name)
            USING ERRCODE = '42622';
    END IF;
    IF cardinality(v_parts) = 1 THEN
        SELECT n.nspname INTO v_schema FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.oid = s.source;
        v_view := v_parts[1];
    ELSIF cardinality(v_parts) = 2 THEN
        v_schema := v_parts[1];
        v_view := v_parts[2];
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace AS n WHERE n.nspname = v_schema) THEN
            RAISE EXCEPTION 'schema "%" of window % does not exist', v_schema, quote_literal(name)
                USING ERRCODE = '3F000';
        END IF;
    ELSE
        RAISE EXCEPTION 'invalid window name %: at most schema.name', quote_literal(name)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM cep.windows AS x WHERE x.name = create_window.name) THEN
        RAISE EXCEPTION 'window "%" already exists', name USING ERRCODE = '42710';
    END IF;
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = v_schema AND c.relname = v_view
    ) THEN
        RAISE EXCEPTION 'relation "%.%" already exists', v_schema, v_view
            USING ERRCODE = '42P07', HINT = 'Choose another window name.';
    END IF;

    IF kind IS NULL OR kind NOT IN ('tumbling', 'hopping', 'session') THEN
        RAISE EXCEPTION 'invalid window kind %', coalesce(quote_literal(kind), 'NULL')
            USING ERRCODE = '22023', HINT = 'kind is tumbling, hopping or session.';
    END IF;
    IF size IS NULL OR size <= '0 seconds' THEN
        RAISE EXCEPTION 'size must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF extract(month FROM size) <> 0 OR extract(year FROM size) <> 0 THEN
        RAISE EXCEPTION 'size must not contain months or years (windows are aligned by date_bin)'
            USING ERRCODE = '22023';
    END IF;
    IF kind = 'hopping' THEN
        IF slide IS NULL OR slide <= '0 seconds' THEN
            RAISE EXCEPTION 'slide must be a positive interval for hopping windows'
                USING ERRCODE = '22023';
        END IF;
        IF extract(month FROM slide) <> 0 OR extract(year FROM slide) <> 0 THEN
            RAISE EXCEPTION 'slide must not contain months or years' USING ERRCODE = '22023';
        END IF;
        IF slide > size THEN
            RAISE EXCEPTION 'slide (%) must not be larger than size (%)', slide, size
                USING ERRCODE = '22023';
        END IF;
        IF extract(epoch FROM size) / extract(epoch FROM slide) > 1000 THEN
            RAISE EXCEPTION 'size / slide must be at most 1000 (each event falls in that many windows)'
                USING ERRCODE = '22023';
        END IF;
    ELSIF slide IS NOT NULL THEN
        RAISE EXCEPTION 'slide is only for hopping windows' USING ERRCODE = '22023';
    END IF;
    IF kind = 'session' AND s.key_column IS NULL THEN
        RAISE EXCEPTION 'session windows need a stream with a key column' USING ERRCODE = '22023';
    END IF;
    IF retention IS NOT NULL AND retention < '0 seconds' THEN
        RAISE EXCEPTION 'retention must not be negative' USING ERRCODE = '22023';
    END IF;

    IF group_by IS NULL OR array_position(group_by, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'group_by must not be or contain NULL' USING ERRCODE = '22023';
    END IF;
    FOREACH v_col IN ARRAY group_by LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = s.source AND a.attname = v_col AND a.attnum > 0
                AND NOT a.attisdropped
        ) THEN
            RAISE EXCEPTION 'group_by column "%" does not exist in %', v_col, s.source
                USING ERRCODE = '42703';
        END IF;
        IF v_col = ANY (v_group) THEN
            RAISE EXCEPTION 'group_by column "%" is listed twice', v_col USING ERRCODE = '42701';
        END IF;
        IF v_col IN ('window_start', 'window_end', 'is_final') THEN
            RAISE EXCEPTION 'group_by column "%" clashes with a window column', v_col
                USING ERRCODE = '42701';
        END IF;
        v_group := v_group || v_col::name;
    END LOOP;
    v_aggs := cep._parse_aggregates(
        s.source, aggregates,
        ARRAY['window_start', 'window_end', 'is_final']::name [] || v_group
        || CASE WHEN kind = 'session' AND NOT s.key_column = ANY (v_group)
            THEN ARRAY[s.key_column] ELSE '{}'::name [] END);

    -- Days are not always 24 hours in a time zone: keep fixed-length intervals in seconds.
    size := make_interval(secs => extract(epoch FROM size));
    slide := make_interval(secs => extract(epoch FROM slide));
    retention := make_interval(secs => extract(epoch FROM coalesce(retention, size * 10)));

    -- No insert may commit between the backfill below and the new ingest function.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);

    INSERT INTO cep.windows (
        name, stream_id, kind, size, slide, group_by, aggregates, retention, view, state_table,
        pane
    ) VALUES (
        name, v_stream_id, kind, size, slide, v_group, v_aggs,
        retention, 'pg_catalog.pg_class'::regclass, 'pending',
        -- panes: the greatest common divisor of size and slide (in microseconds), so that
        -- every window is a whole number of panes
        CASE kind WHEN 'session' THEN NULL WHEN 'tumbling' THEN size
            ELSE gcd((extract(epoch FROM size) * 1000000)::bigint,
                (extract(epoch FROM slide) * 1000000)::bigint) * interval '1 microsecond' END
    ) RETURNING window_id INTO v_id;
    UPDATE cep.windows AS x SET state_table = format('window_%s', v_id)
    WHERE x.window_id = v_id;

    FOREACH v_ddl IN ARRAY cep._window_ddl(v_id, format('%I.%I', v_schema, v_view)) LOOP
        EXECUTE v_ddl;
    END LOOP;
    UPDATE cep.windows AS x
    SET view = format('%I.%I', v_schema, v_view)::regclass
    WHERE x.window_id = v_id;
    EXECUTE format('COMMENT ON VIEW %I.%I IS %L', v_schema, v_view,
        format('pg_cep %s window %s over stream %s, size %s%s; maintained on ingest.',
            kind, name, stream, size, CASE WHEN slide IS NULL THEN '' ELSE ', slide ' || slide END));

    PERFORM cep._regenerate_stream(v_stream_id);

    -- Backfill: the events already in the table (all but the late ones) go through the same
    -- section of code as a batch would.
    v_backfill := cep._bind_rows(cep._window_section(v_id), format(
        '(SELECT src.* FROM %s AS src WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS le '
        'WHERE le.stream_id = %s AND le.event_id = src.%I::bigint))',
        s.source, s.stream_id, s.id_column));
    EXECUTE format('DO %L',
        E'#variable_conflict use_variable\nDECLARE v_watermark timestamptz := ''-infinity''; BEGIN '
        || v_backfill || ' END');
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_window(text, text, text, interval, interval, text[], text[], interval) IS
'Create a continuous aggregate over STREAM: kind tumbling (size), hopping (size, slide <= size) '
'or session (size = inactivity gap, per key), grouped by GROUP_BY columns, with AGGREGATES '
'count(*), count(col), count(distinct col), sum, avg, min, max (optionally AS alias). It '
'creates view NAME (in the source table''s schema unless qualified) with window_start, '
'window_end, the group columns (and the key column for sessions), the aggregates and '
'is_final, maintained on ingest and backfilled from the events already in the table; '
'windows older than the watermark minus RETENTION (default 10 x size) are purged by '
'cep.run_maintenance(). Returns the window id.';

CREATE FUNCTION cep.drop_window(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w cep.windows;
BEGIN
    SELECT * INTO w FROM cep.windows AS x WHERE x.name = drop_window.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'window "%" does not exist', name USING ERRCODE = '42704';
    END IF;
    PERFORM cep._drop_window_objects(w.window_id);
    DELETE FROM cep.windows AS x WHERE x.window_id = w.window_id;
    PERFORM cep._regenerate_stream(w.stream_id);
END
$fn$;

COMMENT ON FUNCTION cep.drop_window(text) IS
'Remove window NAME: its view, state and section of the stream''s ingest function.';

CREATE FUNCTION cep._drop_window_objects(window_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w cep.windows;
    v_table name;
BEGIN
    SELECT * INTO STRICT w FROM cep.windows AS x WHERE x.window_id = _drop_window_objects.window_id;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = w.view) THEN
        EXECUTE format('DROP VIEW %s', w.view);
    END IF;
    -- (tumbling and hopping: the view of merged panes the user's view read)
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'cep'::regnamespace AND c.relkind = 'v' AND c.relname = w.state_table
    ) THEN
        EXECUTE format('DROP VIEW cep.%I', w.state_table);
    END IF;
    FOR v_table IN
        SELECT c.relname FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'cep'::regnamespace AND c.relkind = 'r'
            AND (c.relname = w.state_table OR c.relname LIKE w.state_table || '\_%')
    LOOP
        EXECUTE format('DROP TABLE cep.%I', v_table);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._drop_window_objects(integer) IS
'Internal: drop a window''s view and state tables (the catalog row stays to the caller).';
