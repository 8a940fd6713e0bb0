-- Code generation for windows: the state, the view, and the section of the stream's ingest
-- function that folds a batch into the state.
-- Invariant: a batch touches only the windows its on-time events fall into. Tumbling and
-- hopping windows append one partial aggregate per (pane, group) of the batch to
-- cep.window_<id>_panes -- no row is updated or locked, so writers never wait for each other
-- there, and an event costs one pane row however many hopping windows it falls in -- and
-- cep.window_<id> merges the panes of each window when read; session state is merged per
-- session key after locking that key's anchor row, so concurrent merges serialize per key.

-- The pane columns of a tumbling or hopping window's aggregates (count(distinct) keeps its
-- values apart): their definitions, their names, and how the panes of one window (or several
-- rows of one pane) merge, over row alias ALIAS.
CREATE FUNCTION cep._window_pane_columns(
    aggregates jsonb, alias text, OUT defs text, OUT cols text, OUT merged text
)
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT
        coalesce(string_agg(format(', %I %s', c.col, c.type), '' ORDER BY a.n, c.o), ''),
        coalesce(string_agg(format(', %I', c.col), '' ORDER BY a.n, c.o), ''),
        coalesce(string_agg(format(', %s(%s.%I)%s AS %I', c.merge, alias, c.col, c.conv, c.col),
            '' ORDER BY a.n, c.o), '')
    FROM jsonb_array_elements(aggregates) WITH ORDINALITY AS a (agg, n)
    CROSS JOIN LATERAL (
        VALUES
            (1, a.agg->>'state',
                CASE a.agg->>'fn' WHEN 'count' THEN 'bigint NOT NULL' ELSE a.agg->>'state_type' END,
                CASE WHEN a.agg->>'fn' IN ('min', 'max') THEN a.agg->>'fn' ELSE 'sum' END,
                CASE WHEN a.agg->>'fn' IN ('min', 'max') THEN ''
                    ELSE '::' || (a.agg->>'state_type') END),
            (2, (a.agg->>'state') || '_n', 'bigint NOT NULL', 'sum', '::bigint')
    ) AS c (o, col, type, merge, conv)
    WHERE a.agg->>'fn' <> 'count_distinct' AND (c.o = 1 OR a.agg->>'fn' = 'avg')
$fn$;

COMMENT ON FUNCTION cep._window_pane_columns(jsonb, text) IS
'Internal: the pane columns of a tumbling or hopping window''s aggregates as column '
'definitions, as a list of names, and as the expressions over row alias ALIAS that merge '
'several rows into one.';

CREATE FUNCTION cep._window_ddl(window_id integer, view_name text)
RETURNS text[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w cep.windows;
    s cep.streams;
    v_agg jsonb;
    v_cols text := '';
    v_gcols text := '';
    v_gkey text := '';
    v_view_g text := '';
    v_view_a text := '';
    v_col name;
    v_i integer := 0;
    v_type text;
    v_ddl text [] := '{}'::text [];
    v_key_type text;
    v_wm text;
    v_distinct_counts text := '';
    v_same_group text := '';
BEGIN
    SELECT * INTO STRICT w FROM cep.windows AS x WHERE x.window_id = _window_ddl.window_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = w.stream_id;

    FOREACH v_col IN ARRAY w.group_by LOOP
        v_i := v_i + 1;
        SELECT format_type(a.atttypid, a.atttypmod) INTO STRICT v_type
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = s.source AND a.attname = v_col AND NOT a.attisdropped;
        v_gcols := v_gcols || format(', g_%s %s', v_i, v_type);
        v_gkey := v_gkey || format(', g_%s', v_i);
        v_view_g := v_view_g || format(', s.g_%s AS %I', v_i, v_col);
        v_same_group := v_same_group || format(' AND d.g_%1$s IS NOT DISTINCT FROM s.g_%1$s', v_i);
    END LOOP;

    FOR v_agg IN SELECT value FROM jsonb_array_elements(w.aggregates) LOOP
        v_cols := v_cols || format(', %I %s%s', v_agg->>'state', v_agg->>'state_type',
            CASE WHEN v_agg->>'fn' IN ('count', 'count_distinct') THEN ' NOT NULL DEFAULT 0' ELSE '' END);
        -- (count(distinct) merges by counting the window's values)
        IF v_agg->>'fn' = 'count_distinct' THEN
            v_distinct_counts := v_distinct_counts || format(
                ', (SELECT count(*) FROM cep.%1$I AS d WHERE d.window_start = x.ws%2$s) AS %3$I',
                w.state_table || '_' || (v_agg->>'state'), v_same_group, v_agg->>'state');
        END IF;
        IF v_agg->>'fn' = 'avg' THEN
            v_cols := v_cols || format(', %I bigint NOT NULL DEFAULT 0', (v_agg->>'state') || '_n');
            v_view_a := v_view_a || format(', (s.%I / NULLIF(s.%I, 0))::%s AS %I',
                v_agg->>'state', (v_agg->>'state') || '_n', v_agg->>'state_type', v_agg->>'alias');
        ELSE
            v_view_a := v_view_a || format(', s.%I AS %I', v_agg->>'state', v_agg->>'alias');
        END IF;
    END LOOP;

    v_wm := format(
        'CROSS JOIN LATERAL (SELECT coalesce(max(l.watermark), ''-infinity'') AS watermark '
        'FROM cep.stream_log AS l WHERE l.stream_id = %s) AS wm', s.stream_id);

    IF w.kind = 'session' THEN
        SELECT format_type(a.atttypid, a.atttypmod) INTO STRICT v_key_type
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = s.source AND a.attname = s.key_column AND NOT a.attisdropped;
        v_ddl := v_ddl || format(
            'CREATE TABLE cep.%1$I (session_id bigint GENERATED ALWAYS AS IDENTITY, '
            'sk text NOT NULL, k %2$s%3$s, window_start timestamptz NOT NULL, '
            'last_event timestamptz NOT NULL%4$s, CONSTRAINT %5$I PRIMARY KEY (session_id)) '
            'WITH (fillfactor = 80)',
            w.state_table, v_key_type, v_gcols, v_cols, w.state_table || '_pkey');
        -- Only sk is indexed, so extending a session (new last_event) is a HOT update.
        v_ddl := v_ddl || format('CREATE INDEX %I ON cep.%I (sk)',
            w.state_table || '_sk_idx', w.state_table);
        -- One anchor row per session key: locking it serializes merges of that key.
        v_ddl := v_ddl || format(
            'CREATE TABLE cep.%1$I (sk text NOT NULL, CONSTRAINT %2$I PRIMARY KEY (sk))',
            w.state_table || '_keys', w.state_table || '_keys_pkey');
        FOR v_agg IN SELECT value FROM jsonb_array_elements(w.aggregates)
            WHERE value->>'fn' = 'count_distinct' LOOP
            -- A session's distinct values, with the first time each was seen (to re-home them
            -- into the surviving session when sessions merge).
            v_ddl := v_ddl || format(
                'CREATE TABLE cep.%1$I (session_id bigint NOT NULL, sk text NOT NULL, '
                'v %2$s NOT NULL, t timestamptz NOT NULL, CONSTRAINT %3$I PRIMARY KEY (session_id, v))',
                w.state_table || '_' || (v_agg->>'state'), v_agg->>'type',
                w.state_table || '_' || (v_agg->>'state') || '_pkey');
            v_ddl := v_ddl || format('CREATE INDEX %I ON cep.%I (sk)',
                w.state_table || '_' || (v_agg->>'state') || '_sk_idx',
                w.state_table || '_' || (v_agg->>'state'));
        END LOOP;
        v_ddl := v_ddl || format(
            'CREATE VIEW %1$s AS SELECT s.window_start, s.last_event + %2$L::interval AS window_end%3$s%4$s%5$s, '
            '(s.last_event + %2$L::interval) < wm.watermark AS is_final FROM cep.%6$I AS s %7$s',
            view_name, w.size,
            CASE WHEN s.key_column = ANY (w.group_by) THEN '' ELSE format(', s.k AS %I', s.key_column) END,
            v_view_g, v_view_a, w.state_table, v_wm);
    ELSE
        -- Panes: partial aggregates, appended per batch (several rows per pane and group until
        -- maintenance merges them). No unique index: nothing is upserted, nothing is locked.
        v_ddl := v_ddl || format(
            'CREATE TABLE cep.%1$I (pane_start timestamptz NOT NULL%2$s%3$s)',
            w.state_table || '_panes', v_gcols, (cep._window_pane_columns(w.aggregates, 's')).defs);
        v_ddl := v_ddl || format('CREATE INDEX %I ON cep.%I (pane_start)',
            w.state_table || '_panes_start_idx', w.state_table || '_panes');
        FOR v_agg IN SELECT value FROM jsonb_array_elements(w.aggregates)
            WHERE value->>'fn' = 'count_distinct' LOOP
            -- distinct values are kept per window (they do not add up over panes)
            v_ddl := v_ddl || format(
                'CREATE TABLE cep.%1$I (window_start timestamptz NOT NULL%2$s, v %3$s NOT NULL, '
                'CONSTRAINT %4$I UNIQUE NULLS NOT DISTINCT (window_start%5$s, v))',
                w.state_table || '_' || (v_agg->>'state'), v_gcols, v_agg->>'type',
                w.state_table || '_' || (v_agg->>'state') || '_key', v_gkey);
        END LOOP;
        -- The windows: each pane belongs to the windows on the slide grid that contain it;
        -- those that ended before purged_before are gone (their panes may be partly kept for
        -- later windows), so they are hidden.
        v_ddl := v_ddl || format(
            'CREATE VIEW cep.%1$I AS SELECT x.ws AS window_start, x.ws + %2$L::interval AS window_end'
            '%3$s%4$s FROM cep.%5$I AS s CROSS JOIN LATERAL (SELECT pg_catalog.date_bin('
            '%6$L::interval, s.pane_start, ''1970-01-01 00:00:00+00'') - k.k * %6$L::interval AS ws '
            'FROM pg_catalog.generate_series(0, %7$s) AS k (k)) AS x '
            'WHERE x.ws + %2$L::interval > s.pane_start AND x.ws + %2$L::interval >= '
            '(SELECT c.purged_before FROM cep.windows AS c WHERE c.window_id = %8$s) '
            'GROUP BY x.ws%9$s',
            w.state_table, w.size, replace(v_gkey, ', g_', ', s.g_'),
            (cep._window_pane_columns(w.aggregates, 's')).merged || v_distinct_counts,
            w.state_table || '_panes', coalesce(w.slide, w.size),
            ceil(extract(epoch FROM w.size) / extract(epoch FROM coalesce(w.slide, w.size)))::integer - 1,
            w.window_id, replace(v_gkey, ', g_', ', s.g_'));
        v_ddl := v_ddl || format(
            'CREATE VIEW %1$s AS SELECT s.window_start, s.window_end%2$s%3$s, '
            's.window_end <= wm.watermark AS is_final FROM cep.%4$I AS s %5$s',
            view_name, v_view_g, v_view_a, w.state_table, v_wm);
    END IF;
    RETURN v_ddl;
END
$fn$;

COMMENT ON FUNCTION cep._window_ddl(integer, text) IS
'Internal: the DDL of a window''s state table(s) and of its view VIEW_NAME (already quoted), '
'built from the catalog.';

CREATE FUNCTION cep._window_section(window_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w cep.windows;
    s cep.streams;
    v_t text;
    v_agg jsonb;
    v_col name;
    v_i integer := 0;
    v_g_sel text := '';
    v_g_list text := '';
    v_b_g text := '';
    v_v_sel text := '';
    v_ins_cols text := '';
    v_item_event text := '';
    v_island_aggs text := '';
    v_st text;
    v_v text;
    v_expand text;
    v_n integer;
    v_sql text;
    v_distinct text := '';
    v_session_distinct text := '';
    v_pane_aggs text := '';
BEGIN
    SELECT * INTO STRICT w FROM cep.windows AS x WHERE x.window_id = _window_section.window_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = w.stream_id;
    v_t := cep._time_expr(s.stream_id);

    FOREACH v_col IN ARRAY w.group_by LOOP
        v_i := v_i + 1;
        v_g_sel := v_g_sel || format(', n.%I AS g_%s', v_col, v_i);
        v_g_list := v_g_list || format(', g_%s', v_i);
        v_b_g := v_b_g || format(', b.g_%s', v_i);
    END LOOP;

    FOR v_agg IN SELECT value FROM jsonb_array_elements(w.aggregates) LOOP
        v_st := v_agg->>'state';
        v_v := 'v_' || v_st;
        IF v_agg->>'col' IS NOT NULL THEN
            v_v_sel := v_v_sel || format(', n.%I AS %I', v_agg->>'col', v_v);
        END IF;
        v_ins_cols := v_ins_cols || format(', %I', v_st);
        CASE v_agg->>'fn'
            WHEN 'count' THEN
                v_pane_aggs := v_pane_aggs || CASE WHEN v_agg->>'col' IS NULL THEN ', count(*)'
                    ELSE format(', count(b.%I)', v_v) END;
                v_item_event := v_item_event || CASE WHEN v_agg->>'col' IS NULL THEN ', 1::bigint'
                    ELSE format(', CASE WHEN b.%I IS NULL THEN 0 ELSE 1 END::bigint', v_v) END;
                v_island_aggs := v_island_aggs || format(', sum(i.%1$I)::bigint AS %1$I', v_st);
            WHEN 'count_distinct' THEN
                v_item_event := v_item_event || ', 0::bigint';
                v_island_aggs := v_island_aggs || format(', 0::bigint AS %I', v_st);
                v_session_distinct := v_session_distinct || format($d$
    -- window %1$s: distinct %2$I per session; values of merged sessions move to the survivor
    WITH ev AS (
        SELECT s.session_id, b.sk, b.v, min(b.t) AS t
        FROM (
            SELECT jsonb_build_array(%3$s)::text AS sk, %4$s AS t, n.%2$I AS v
            FROM cep_new_rows AS n
            WHERE %4$s >= v_watermark AND n.%2$I IS NOT NULL
        ) AS b
        JOIN cep.%5$I AS s
            ON s.sk = b.sk AND b.t BETWEEN s.window_start AND s.last_event
        GROUP BY s.session_id, b.sk, b.v
    ), orphans AS (
        DELETE FROM cep.%6$I AS d
        WHERE d.sk IN (
            SELECT jsonb_build_array(%3$s)::text FROM cep_new_rows AS n
            WHERE %4$s >= v_watermark
        )
            AND NOT EXISTS (SELECT 1 FROM cep.%5$I AS s WHERE s.session_id = d.session_id)
        RETURNING d.sk, d.v, d.t
    )
    INSERT INTO cep.%6$I AS d (session_id, sk, v, t)
    SELECT x.session_id, x.sk, x.v, min(x.t)
    FROM (
        SELECT ev.session_id, ev.sk, ev.v, ev.t FROM ev
        UNION ALL
        SELECT s.session_id, o.sk, o.v, o.t
        FROM orphans AS o
        JOIN cep.%5$I AS s ON s.sk = o.sk AND o.t BETWEEN s.window_start AND s.last_event
    ) AS x
    GROUP BY x.session_id, x.sk, x.v
    ORDER BY x.session_id, x.v
    ON CONFLICT (session_id, v) DO UPDATE SET t = least(d.t, EXCLUDED.t);
    UPDATE cep.%5$I AS s
    SET %7$I = (SELECT count(*) FROM cep.%6$I AS d WHERE d.session_id = s.session_id)
    WHERE s.sk IN (
        SELECT jsonb_build_array(%3$s)::text FROM cep_new_rows AS n WHERE %4$s >= v_watermark
    )
        AND EXISTS (
            SELECT 1 FROM cep_new_rows AS n
            WHERE %4$s >= v_watermark AND jsonb_build_array(%3$s)::text = s.sk
                AND %4$s BETWEEN s.window_start AND s.last_event
        );
$d$,
                    w.window_id, v_agg->>'col',
                    format('n.%I', s.key_column)
                        || (SELECT coalesce(string_agg(format(', n.%I', g), ''), '') FROM unnest(w.group_by) AS g),
                    v_t, w.state_table, w.state_table || '_' || v_st, v_st);
                -- the window's count is the number of its values (merged when read)
                v_distinct := v_distinct || format($d$
    INSERT INTO cep.%1$I AS d (window_start%2$s, v)
    SELECT DISTINCT b.ws%3$s, b.%4$I
    FROM (%5$s) AS b
    WHERE b.%4$I IS NOT NULL
    ORDER BY 1%6$s, %7$s
    ON CONFLICT DO NOTHING;
$d$,
                    w.state_table || '_' || v_st, v_g_list, v_b_g, v_v, '%EXPAND%',
                    (SELECT coalesce(string_agg(format(', %s', g + 1), ''), '')
                        FROM generate_series(1, cardinality(w.group_by)) AS g),
                    cardinality(w.group_by) + 2);
            WHEN 'sum' THEN
                v_pane_aggs := v_pane_aggs || format(', sum(b.%I)::%s', v_v, v_agg->>'state_type');
                v_item_event := v_item_event || format(', b.%I::%s', v_v, v_agg->>'state_type');
                v_island_aggs := v_island_aggs || format(', sum(i.%1$I)::%2$s AS %1$I', v_st, v_agg->>'state_type');
            WHEN 'avg' THEN
                v_ins_cols := v_ins_cols || format(', %I', v_st || '_n');
                v_pane_aggs := v_pane_aggs || format(', sum(b.%1$I::%2$s), count(b.%1$I)', v_v, v_agg->>'state_type');
                v_item_event := v_item_event || format(
                    ', b.%1$I::%2$s, CASE WHEN b.%1$I IS NULL THEN 0 ELSE 1 END::bigint',
                    v_v, v_agg->>'state_type');
                v_island_aggs := v_island_aggs || format(
                    ', sum(i.%1$I)::%2$s AS %1$I, sum(i.%3$I)::bigint AS %3$I',
                    v_st, v_agg->>'state_type', v_st || '_n');
            WHEN 'min' THEN
                v_pane_aggs := v_pane_aggs || format(', min(b.%I)', v_v);
                v_item_event := v_item_event || format(', b.%I', v_v);
                v_island_aggs := v_island_aggs || format(', min(i.%1$I) AS %1$I', v_st);
            WHEN 'max' THEN
                v_pane_aggs := v_pane_aggs || format(', max(b.%I)', v_v);
                v_item_event := v_item_event || format(', b.%I', v_v);
                v_island_aggs := v_island_aggs || format(', max(i.%1$I) AS %1$I', v_st);
        END CASE;
    END LOOP;

    IF w.kind <> 'session' THEN
        v_n := CASE WHEN w.kind = 'tumbling' THEN 1
            ELSE ceil(extract(epoch FROM w.size) / extract(epoch FROM w.slide))::integer END;
        -- Every window [ws, ws + size) with ws on the slide grid and ws <= t < ws + size.
        v_expand := format(
            'SELECT x.ws%1$s%2$s FROM (SELECT %3$s AS t%4$s%5$s FROM cep_new_rows AS n) AS e0 '
            'CROSS JOIN LATERAL (SELECT pg_catalog.date_bin(%6$L::interval, e0.t, '
            '''1970-01-01 00:00:00+00'') - k.k * %6$L::interval AS ws '
            'FROM pg_catalog.generate_series(0, %7$s) AS k (k)) AS x '
            'WHERE e0.t >= v_watermark AND x.ws + %8$L::interval > e0.t',
            (SELECT coalesce(string_agg(format(', e0.g_%s', g), ''), '')
                FROM generate_series(1, cardinality(w.group_by)) AS g),
            (SELECT coalesce(string_agg(format(', e0.%I', 'v_' || (a->>'state')), ''), '')
                FROM jsonb_array_elements(w.aggregates) AS a WHERE a->>'col' IS NOT NULL),
            v_t, v_g_sel, v_v_sel, coalesce(w.slide, w.size), v_n - 1, w.size);
        -- The batch's partial aggregates per pane and group, appended.
        v_sql := format($s$
    -- window %1$s (%2$s %3$s, panes of %4$s): append the batch's partials
    INSERT INTO cep.%5$I (pane_start%6$s%7$s)
    SELECT b.ps%8$s%9$s
    FROM (
        SELECT pg_catalog.date_bin(%4$L::interval, %10$s, '1970-01-01 00:00:00+00') AS ps%11$s%12$s
        FROM cep_new_rows AS n
        WHERE %10$s >= v_watermark
    ) AS b
    GROUP BY b.ps%8$s;
$s$,
            w.window_id, w.kind, w.size, w.pane, w.state_table || '_panes', v_g_list,
            (cep._window_pane_columns(w.aggregates, 'b')).cols, v_b_g, v_pane_aggs, v_t, v_g_sel,
            v_v_sel);
        RETURN v_sql || replace(v_distinct, '%EXPAND%', v_expand);
    END IF;

    -- Session windows: lock the batch's session keys, then merge the batch's events with the
    -- sessions they touch (gap and islands per key) in one statement.
    v_sql := format($s$
    -- window %1$s (session, gap %2$s): lock the session keys of the batch in key order (an
    -- update, not a bare lock, so that REPEATABLE READ writers of one key conflict with 40001)
    INSERT INTO cep.%3$I AS kk (sk)
    SELECT DISTINCT jsonb_build_array(%4$s%5$s)::text
    FROM cep_new_rows AS n
    WHERE %6$s >= v_watermark
    ORDER BY 1
    ON CONFLICT (sk) DO UPDATE SET sk = EXCLUDED.sk;
    -- window %1$s: merge the batch with the sessions it extends or bridges
    WITH b AS (
        SELECT jsonb_build_array(%4$s%5$s)::text AS sk, n.%7$I AS k%8$s, %6$s AS t%9$s
        FROM cep_new_rows AS n
        WHERE %6$s >= v_watermark
    ), cand AS (
        SELECT s.*
        FROM cep.%10$I AS s
        WHERE s.sk IN (SELECT b.sk FROM b)
            AND EXISTS (
                SELECT 1 FROM b
                WHERE b.sk = s.sk AND b.t >= s.window_start - %2$L::interval
                    AND b.t <= s.last_event + %2$L::interval
            )
    ), items AS (
        SELECT c.sk, c.k%11$s, c.window_start AS lo, c.last_event AS hi, c.session_id%12$s
        FROM cand AS c
        UNION ALL
        SELECT b.sk, b.k%13$s, b.t, b.t, NULL::bigint%14$s
        FROM b
    ), flagged AS (
        SELECT i.*, CASE WHEN i.lo > max(i.hi) OVER (
                PARTITION BY i.sk ORDER BY i.lo, i.hi
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + %2$L::interval
            THEN 1 ELSE 0 END AS brk
        FROM items AS i
    ), numbered AS (
        SELECT f.*, sum(f.brk) OVER (PARTITION BY f.sk ORDER BY f.lo, f.hi
            ROWS UNBOUNDED PRECEDING) AS island
        FROM flagged AS f
    ), islands AS (
        SELECT i.sk, (array_agg(i.k))[1] AS k%15$s, min(i.lo) AS window_start,
            max(i.hi) AS last_event, min(i.session_id) AS survivor%16$s
        FROM numbered AS i
        GROUP BY i.sk, i.island
    ), upd AS (
        UPDATE cep.%10$I AS s
        SET window_start = m.window_start, last_event = m.last_event%17$s
        FROM islands AS m
        WHERE s.session_id = m.survivor
    ), del AS (
        DELETE FROM cep.%10$I AS s
        USING cand AS c
        WHERE s.session_id = c.session_id
            AND NOT EXISTS (SELECT 1 FROM islands AS m WHERE m.survivor = c.session_id)
    )
    INSERT INTO cep.%10$I (sk, k%18$s, window_start, last_event%19$s)
    SELECT m.sk, m.k%20$s, m.window_start, m.last_event%21$s
    FROM islands AS m
    WHERE m.survivor IS NULL
    ORDER BY m.sk, m.window_start;
    %22$s
$s$,
        w.window_id, w.size, w.state_table || '_keys',
        format('n.%I', s.key_column),
        (SELECT coalesce(string_agg(format(', n.%I', g), ''), '') FROM unnest(w.group_by) AS g),
        v_t, s.key_column, v_g_sel, v_v_sel, w.state_table,
        replace(v_g_list, ', g_', ', c.g_'),
        (SELECT coalesce(string_agg(format(', c.%I', col), '' ORDER BY o), '') FROM (
            SELECT a->>'state' AS col, o FROM jsonb_array_elements(w.aggregates) WITH ORDINALITY AS x (a, o)
            UNION ALL
            SELECT (a->>'state') || '_n', o + 0.5 FROM jsonb_array_elements(w.aggregates) WITH ORDINALITY AS x (a, o)
            WHERE a->>'fn' = 'avg'
        ) AS q (col, o)),
        v_b_g, v_item_event,
        (SELECT coalesce(string_agg(format(', (array_agg(i.g_%1$s))[1] AS g_%1$s', g), ''), '')
            FROM generate_series(1, cardinality(w.group_by)) AS g),
        v_island_aggs,
        (SELECT coalesce(string_agg(format(', %1$I = m.%1$I', col), ''), '') FROM (
            SELECT a->>'state' AS col FROM jsonb_array_elements(w.aggregates) AS a
            UNION ALL
            SELECT (a->>'state') || '_n' FROM jsonb_array_elements(w.aggregates) AS a
            WHERE a->>'fn' = 'avg'
        ) AS q (col)) || (SELECT coalesce(string_agg(format(', g_%1$s = m.g_%1$s', g), ''), '')
            FROM generate_series(1, cardinality(w.group_by)) AS g),
        v_g_list, v_ins_cols,
        replace(v_g_list, ', g_', ', m.g_'),
        replace(v_ins_cols, ', ', ', m.'),
        v_session_distinct);
    RETURN v_sql;
END
$fn$;

COMMENT ON FUNCTION cep._window_section(integer) IS
'Internal: the section of the stream''s generated ingest function that folds a batch''s '
'on-time events into one window''s state.';

-- Maintenance of a tumbling or hopping window's panes: the rows of panes starting in [$1, $2)
-- that share their pane and group with another row are replaced by one merged row.
CREATE FUNCTION cep._window_compact_sql(window_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- (DELETE ... RETURNING merges exactly the rows this statement removed: rows another
    -- session appends meanwhile, or that another compaction took first, are left alone)
    SELECT format($c$
    WITH moved AS (
        DELETE FROM cep.%1$I AS t
        WHERE t.pane_start >= $1 AND t.pane_start < $2
            AND t.ctid IN (
                SELECT d.ctid
                FROM (
                    SELECT u.ctid, count(*) OVER (PARTITION BY u.pane_start%2$s) AS c
                    FROM cep.%1$I AS u
                    WHERE u.pane_start >= $1 AND u.pane_start < $2
                ) AS d
                WHERE d.c > 1
            )
        RETURNING t.*
    ), ins AS (
        INSERT INTO cep.%1$I (pane_start%2$s%3$s)
        SELECT m.pane_start%4$s%5$s
        FROM moved AS m
        GROUP BY m.pane_start%4$s
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved) - (SELECT count(*) FROM ins)
$c$,
        w.state_table || '_panes', g.list, c.cols, replace(g.list, ', g_', ', m.g_'), c.merged)
    FROM cep.windows AS w
    CROSS JOIN LATERAL cep._window_pane_columns(w.aggregates, 'm') AS c
    CROSS JOIN LATERAL (
        SELECT coalesce(string_agg(format(', g_%s', i), '' ORDER BY i), '') AS list
        FROM generate_series(1, cardinality(w.group_by)) AS i
    ) AS g
    WHERE w.window_id = _window_compact_sql.window_id
$fn$;

COMMENT ON FUNCTION cep._window_compact_sql(integer) IS
'Internal: the statement that merges a tumbling or hopping window''s pane rows of the same pane '
'and group within [$1, $2), returning how many rows it removed.';

-- Monitoring of a tumbling or hopping window from its panes ($1 the watermark, $2 purged_before):
-- open windows, pane rows (counted while the pane table's heap is at most 8 MB, above that the
-- live-row count of the statistics system: a big state, or one full of rows purged or merged
-- away until vacuum, is not scanned whole on every look), end of the newest closed window. Through the index on pane_start:
-- the open windows have their panes within one size of the watermark; the newest closed window
-- is one of the newest pane's before the watermark (failing that, of an older pane's: a closed
-- window that does not contain that pane ends before it starts).
CREATE FUNCTION cep._window_stats_sql(window_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format(
        'SELECT (SELECT count(*) FROM (SELECT DISTINCT x.ws%1$s FROM cep.%2$I AS s %3$s '
        'WHERE s.pane_start > $1 - %4$L::interval AND x.ws + %4$L::interval > s.pane_start '
        'AND x.ws + %4$L::interval > $1) AS o), '
        '(SELECT CASE WHEN pg_catalog.pg_relation_size(%6$L::regclass) <= 8388608 '
        'THEN (SELECT count(*) FROM cep.%2$I) '
        'ELSE pg_catalog.pg_stat_get_live_tuples(%6$L::regclass) END), '
        'coalesce((SELECT max(x.ws + %4$L::interval) FROM (SELECT DISTINCT s.pane_start '
        'FROM cep.%2$I AS s WHERE s.pane_start < $1 AND s.pane_start > '
        '(SELECT max(u.pane_start) FROM cep.%2$I AS u WHERE u.pane_start < $1) '
        '- %4$L::interval - %5$L::interval) AS s %3$s '
        'WHERE x.ws + %4$L::interval > s.pane_start '
        'AND x.ws + %4$L::interval <= $1 AND x.ws + %4$L::interval >= $2), '
        '(SELECT max(x.ws + %4$L::interval) FROM cep.%2$I AS s %3$s '
        'WHERE s.pane_start < $1 AND x.ws + %4$L::interval > s.pane_start '
        'AND x.ws + %4$L::interval <= $1 AND x.ws + %4$L::interval >= $2))',
        (SELECT coalesce(string_agg(format(', s.g_%s', g), ''), '')
            FROM generate_series(1, cardinality(w.group_by)) AS g),
        w.state_table || '_panes',
        -- the windows on the slide grid a pane can belong to (filtered by the callers)
        format('CROSS JOIN LATERAL (SELECT pg_catalog.date_bin(%1$L::interval, '
            's.pane_start, ''1970-01-01 00:00:00+00'') - k.k * %1$L::interval AS ws '
            'FROM pg_catalog.generate_series(0, %2$s) AS k (k)) AS x',
            coalesce(w.slide, w.size),
            ceil(extract(epoch FROM w.size)
                / extract(epoch FROM coalesce(w.slide, w.size)))::integer - 1),
        w.size, coalesce(w.slide, w.size),
        format('cep.%I', w.state_table || '_panes'))
    FROM cep.windows AS w
    WHERE w.window_id = _window_stats_sql.window_id
$fn$;

COMMENT ON FUNCTION cep._window_stats_sql(integer) IS
'Internal: the query of cep.window_stats''s figures for a tumbling or hopping window, read from '
'its panes near the watermark ($1) and hiding windows purged before $2.';
