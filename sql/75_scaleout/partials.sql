-- Windows across servers: cep.window_partials exports a window's state as mergeable partial
-- aggregates (one JSON document per server), cep.merge_window_partials combines the documents
-- of several servers into the window's rows.
-- Invariant: merging the documents of servers that each saw a part of the events gives the
-- rows one server would have computed over all of them (count, sum and the sum and count of
-- avg add up, min and max combine, count(distinct) unions the distinct values themselves);
-- a window is final only when it is final on every server.

CREATE FUNCTION cep.window_partials(name text, since timestamptz DEFAULT '-infinity')
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    w cep.windows;
    s cep.streams;
    v_col name;
    v_i integer := 0;
    v_group text := '';
    v_same_group text := '';
    v_parts text [] := '{}'::text [];
    v_agg jsonb;
    v_rows jsonb;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF since IS NULL THEN
        RAISE EXCEPTION 'since must be a time or ''-infinity''' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO w FROM cep.windows AS x WHERE x.name = window_partials.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'window "%" does not exist', name
            USING ERRCODE = '42704', HINT = 'See SELECT name FROM cep.windows.';
    END IF;
    IF w.kind = 'session' THEN
        RAISE EXCEPTION 'window "%" is a session window: its sessions are per key', name
            USING ERRCODE = '22023',
            HINT = 'A worker holds whole sessions of its keys: UNION ALL the workers'' views.';
    END IF;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = w.stream_id;

    FOREACH v_col IN ARRAY w.group_by LOOP
        v_i := v_i + 1;
        v_group := v_group || format(' || pg_catalog.jsonb_build_object(%L, s.g_%s)', v_col, v_i);
        v_same_group := v_same_group || format(' AND d.g_%1$s IS NOT DISTINCT FROM s.g_%1$s', v_i);
    END LOOP;
    FOR v_agg IN SELECT a.value FROM jsonb_array_elements(w.aggregates) AS a LOOP
        v_parts := v_parts || CASE v_agg->>'fn'
            WHEN 'avg' THEN format('pg_catalog.jsonb_build_array(s.%I, s.%I)',
                v_agg->>'state', (v_agg->>'state') || '_n')
            WHEN 'count_distinct' THEN format(
                '(SELECT coalesce(pg_catalog.jsonb_agg(d.v ORDER BY d.v), ''[]'') FROM cep.%I AS d '
                'WHERE d.window_start = s.window_start%s)',
                w.state_table || '_' || (v_agg->>'state'), v_same_group)
            ELSE format('pg_catalog.to_jsonb(s.%I)', v_agg->>'state')
        END;
    END LOOP;
    EXECUTE format(
        'SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('
        '''window_start'', s.window_start, ''window_end'', s.window_end, '
        '''group'', ''{}''::jsonb%s, ''partials'', pg_catalog.jsonb_build_array(%s)) '
        'ORDER BY s.window_start, s.window_end), ''[]'') '
        'FROM cep.%I AS s WHERE s.window_end > $1',
        v_group, array_to_string(v_parts, ', '), w.state_table)
    INTO v_rows
    USING since;
    RETURN jsonb_build_object(
        'format', 'pg_cep window partials 1',
        'window', w.name,
        'stream', s.name,
        'kind', w.kind,
        'size', w.size,
        'slide', w.slide,
        'group_by', to_jsonb(w.group_by),
        'aggregates', (
            SELECT jsonb_agg(a.value - 'state' ORDER BY a.n)
            FROM jsonb_array_elements(w.aggregates) WITH ORDINALITY AS a (value, n)
        ),
        'watermark', cep._watermark(s.stream_id),
        'rows', v_rows
    );
END
$fn$;

COMMENT ON FUNCTION cep.window_partials(text, timestamptz) IS
'This server''s state of tumbling or hopping window NAME (its windows ending after SINCE) as one '
'JSON document of mergeable partial aggregates: per window and group, count and sum as they '
'are, avg as [sum, count], min and max, count(distinct) as the array of distinct values; with '
'the window''s definition and the stream''s watermark. cep.merge_window_partials combines the '
'documents of several servers.';

CREATE FUNCTION cep.merge_window_partials(partials jsonb[])
RETURNS TABLE (
    window_start timestamptz,
    window_end timestamptz,
    group_values jsonb,
    aggregates jsonb,
    is_final boolean
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    v_doc jsonb;
    v_def jsonb;
    v_n integer := 0;
    v_agg jsonb;
    v_i integer := 0;
    v_type regtype;
    v_state regtype;
    v_expr text;
    v_out text := '';
    v_watermark timestamptz;
BEGIN
    IF partials IS NULL OR cardinality(partials) = 0 THEN
        RAISE EXCEPTION 'partials must hold at least one document of cep.window_partials'
            USING ERRCODE = '22023';
    END IF;
    FOREACH v_doc IN ARRAY partials LOOP
        v_n := v_n + 1;
        IF v_doc IS NULL OR jsonb_typeof(v_doc) <> 'object'
            OR v_doc->>'format' IS DISTINCT FROM 'pg_cep window partials 1'
            OR jsonb_typeof(v_doc->'rows') IS DISTINCT FROM 'array'
            OR jsonb_typeof(v_doc->'aggregates') IS DISTINCT FROM 'array'
            OR jsonb_typeof(v_doc->'watermark') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'partials[%] is not a document of cep.window_partials', v_n
                USING ERRCODE = '22023';
        END IF;
        IF v_def IS NULL THEN
            v_def := v_doc - 'rows' - 'watermark' - 'window' - 'stream';
        ELSIF v_def IS DISTINCT FROM v_doc - 'rows' - 'watermark' - 'window' - 'stream' THEN
            RAISE EXCEPTION 'partials[%] is of another window definition than partials[1]', v_n
                USING ERRCODE = '22023',
                DETAIL = format('%s versus %s', v_doc - 'rows' - 'watermark', v_def);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_def->'aggregates') NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'partials: a window has 1 to 64 aggregates' USING ERRCODE = '22023';
    END IF;
    -- A window is final once every server's watermark passed its end.
    v_watermark := (SELECT min((d.doc->>'watermark')::timestamptz) FROM unnest(partials) AS d (doc));

    FOR v_agg IN SELECT a.value FROM jsonb_array_elements(v_def->'aggregates') AS a LOOP
        v_type := to_regtype(v_agg->>'type');
        v_state := to_regtype(v_agg->>'state_type');
        IF v_agg->>'alias' IS NULL OR v_state IS NULL
            OR (v_type IS NULL AND v_agg->>'fn' IN ('min', 'max', 'count_distinct')) THEN
            RAISE EXCEPTION 'partials: aggregate % is not one of cep.window_partials', v_agg
                USING ERRCODE = '22023';
        END IF;
        -- Types reach the SQL text as regtype (quoted by its output function), the output name
        -- as a literal, positions as integers.
        v_expr := CASE v_agg->>'fn'
            WHEN 'count' THEN format('pg_catalog.sum((r.p ->> %s)::pg_catalog.int8)::pg_catalog.int8', v_i)
            WHEN 'sum' THEN format('pg_catalog.sum((r.p ->> %s)::%s)::%2$s', v_i, v_state)
            WHEN 'avg' THEN format(
                '(pg_catalog.sum((r.p -> %1$s ->> 0)::%2$s)::%2$s '
                '/ NULLIF(pg_catalog.sum((r.p -> %1$s ->> 1)::pg_catalog.int8)::pg_catalog.int8, 0))::%2$s',
                v_i, v_state)
            WHEN 'min' THEN format(
                '(pg_catalog.array_agg((r.p ->> %s)::%s ORDER BY (r.p ->> %1$s)::%2$s NULLS LAST))[1]',
                v_i, v_type)
            WHEN 'max' THEN format(
                '(pg_catalog.array_agg((r.p ->> %s)::%s ORDER BY (r.p ->> %1$s)::%2$s DESC NULLS LAST))[1]',
                v_i, v_type)
            WHEN 'count_distinct' THEN format(
                '(SELECT pg_catalog.count(DISTINCT (e.v #>> ''{}'')::%s) '
                'FROM pg_catalog.jsonb_array_elements(pg_catalog.jsonb_agg(r.p -> %s)) AS a (arr) '
                'CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(a.arr) AS e (v))',
                v_type, v_i)
        END;
        IF v_expr IS NULL THEN
            RAISE EXCEPTION 'partials: unknown aggregate function %', quote_literal(v_agg->>'fn')
                USING ERRCODE = '22023';
        END IF;
        v_out := v_out || format(' || pg_catalog.jsonb_build_object(%L, %s)', v_agg->>'alias', v_expr);
        v_i := v_i + 1;
    END LOOP;

    FOR window_start, window_end, group_values, aggregates IN EXECUTE format(
        'SELECT r.window_start, r.window_end, r.group_values, ''{}''::jsonb%s AS aggregates '
        'FROM ('
        '    SELECT (x.item ->> ''window_start'')::timestamptz AS window_start, '
        '        (x.item ->> ''window_end'')::timestamptz AS window_end, '
        '        x.item -> ''group'' AS group_values, x.item -> ''partials'' AS p '
        '    FROM unnest($1) AS d (doc) '
        '    CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(d.doc -> ''rows'') AS x (item)'
        ') AS r '
        'GROUP BY r.window_start, r.window_end, r.group_values '
        'ORDER BY r.window_start, r.window_end, r.group_values',
        v_out)
    USING partials
    LOOP
        is_final := window_end <= v_watermark;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep.merge_window_partials(jsonb[]) IS
'Combine documents of cep.window_partials from several servers (one element each, all of the '
'same window definition) into the window''s rows: window_start, window_end, the group values '
'and the aggregates as JSON objects keyed by column name, and is_final (the window ended '
'before every server''s watermark). Exact for counts, integer and numeric sums and averages, '
'min, max and count(distinct); float sums may differ from one server''s in the last digits '
'(another order of addition).';
