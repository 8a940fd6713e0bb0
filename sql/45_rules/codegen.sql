-- Code generation for risk rules: the set-based assessment of a statement's events.
-- Invariant: the rules compiled into a stream's ingest code are exactly one row of
-- cep.rule_sets (rule ids and versions, conditions read from cep.rule_versions), so every
-- statement is assessed under one version of every rule, recorded with each assessment.
-- Trailing metrics of an event e of key k over window w count the key's events with time in
-- (e.t - w, e.t] that were stored before the statement, plus the statement's own events of k
-- up to e in (time, id) order; z-score histories count every earlier event of the key.

-- A numeric field as exact numeric: float columns through their shortest exact text form
-- (float8::numeric would round to 15 digits), other numeric types directly.
CREATE FUNCTION cep._rule_num(source regclass, field name, expr text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN t.typcategory = 'N' AND b.oid IN ('real'::regtype, 'double precision'::regtype)
            THEN expr || '::pg_catalog.text::pg_catalog.numeric'
            ELSE expr || '::pg_catalog.numeric' END
    FROM pg_catalog.pg_attribute AS a
    JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_type AS b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE a.attrelid = source AND a.attname = field
$fn$;

COMMENT ON FUNCTION cep._rule_num(regclass, name, text) IS
'Internal: SQL that reads a numeric field exactly as numeric (floats via their shortest exact '
'text, which extra_float_digits = 1 pins).';

-- The latest rule set of a stream (NULL when no rule is active).
CREATE FUNCTION cep._rule_set(stream_id integer)
RETURNS cep.rule_sets
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.*
    FROM cep.rule_sets AS r
    WHERE r.stream_id = _rule_set.stream_id
    ORDER BY r.rule_set_id DESC
    LIMIT 1
$fn$;

COMMENT ON FUNCTION cep._rule_set(integer) IS
'Internal: the rule set currently compiled into a stream''s ingest code.';

-- The assessment query of a rule set, up to and including the CTE "fired" (id, k, t, pos):
-- pos lists the positions (1-based, in rule set order) of the rules whose condition holds.
-- batch is the FROM item of the statement's rows as alias n (the transition table, or one
-- event from JSON for cep.evaluate_rules).
CREATE FUNCTION cep._rule_assess_sql(rule_set_id integer, batch text, batch_in_table boolean)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rs cep.rule_sets;
    s cep.streams;
    v_cols name [];
    v_col name;
    v_ev text;
    v_conds text := '';
    v_need record;
    v_wmax numeric;
    v_win_cols text := '';
    v_self_cols text := '';
    v_mx text := '';
    v_hist_cols text := '';
    v_hist_from text := '';
    v_key_pred text;
    v_sql text;
    v_i integer := 0;
    v_rule record;
    v_traw_w text;
    v_indexed integer [] := '{}'::integer [];
    v_groups text := '';
    v_x text;
    v_arr text;
    v_le text;
    v_lt text;
    v_width interval;
    v_fin text := '';
    v_joins text := '';
    v_nb integer := 0;
    v_tie text;
    v_val text;
    v_raw_col text;
    v_sid integer;
    v_gjoins text := '';
    v_cold_w text := '';
BEGIN
    SELECT * INTO STRICT rs FROM cep.rule_sets AS r WHERE r.rule_set_id = _rule_assess_sql.rule_set_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = rs.stream_id;

    -- Rules that are one comparison of a numeric field with a constant are indexed: per
    -- (field, operator), their thresholds sorted, so that width_bucket (a binary search) finds
    -- the ones that fire; the cost per event grows with the log of their number.
    FOR v_rule IN
        SELECT g.field, g.op, f.kind, g.vals, g.ords, cardinality(g.ords) AS n
        FROM (
            SELECT v.condition ->> 'field' AS field, v.condition ->> 'op' AS op,
                array_agg((v.condition ->> 'value')::numeric ORDER BY (v.condition ->> 'value')::numeric, u.ord) AS vals,
                array_agg(u.ord::integer ORDER BY (v.condition ->> 'value')::numeric, u.ord) AS ords
            FROM unnest(rs.rule_ids, rs.versions) WITH ORDINALITY AS u (rule_id, version, ord)
            JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
            WHERE (SELECT count(*) FROM jsonb_object_keys(v.condition)) = 3
                AND v.condition ?& ARRAY['field', 'op', 'value']
                AND v.condition ->> 'op' IN ('<', '<=', '>', '>=', '=')
                AND jsonb_typeof(v.condition -> 'value') = 'number'
            GROUP BY 1, 2
            HAVING count(*) >= 3
        ) AS g
        CROSS JOIN LATERAL cep._rule_field(s.source, to_jsonb(g.field), NULL, '$.field') AS f
        WHERE f.kind IN ('numeric', 'float')
        ORDER BY 1, 2
    LOOP
        v_indexed := v_indexed || v_rule.ords;
        v_x := format('x.%I', 'c:' || v_rule.field);
        v_arr := CASE v_rule.kind WHEN 'float' THEN 'pg_catalog.float8 []' ELSE 'pg_catalog.numeric []' END;
        -- le: how many thresholds are <= x; lt: how many are < x (n - those >= x)
        v_le := format('pg_catalog.width_bucket(%s, %L::%s)', v_x, v_rule.vals, v_arr);
        v_lt := format('(%s - pg_catalog.width_bucket(-%s, %L::%s))', v_rule.n, v_x,
            (SELECT array_agg(-t ORDER BY -t) FROM unnest(v_rule.vals) AS t), v_arr);
        v_groups := v_groups || format(E' || coalesce((%L::integer [])[%s:%s], \'{}\')',
            v_rule.ords,
            CASE v_rule.op WHEN '>=' THEN '1' WHEN '>' THEN '1' WHEN '<' THEN v_le || ' + 1'
                ELSE v_lt || ' + 1' END,
            CASE v_rule.op WHEN '>=' THEN v_le WHEN '>' THEN v_lt WHEN '=' THEN v_le
                ELSE v_rule.n::text END);
    END LOOP;

    -- The other conditions, compiled one by one, in rule set order.
    FOR v_rule IN
        SELECT v.condition, v.name, u.ord
        FROM unnest(rs.rule_ids, rs.versions) WITH ORDINALITY AS u (rule_id, version, ord)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        ORDER BY u.ord
    LOOP
        CONTINUE WHEN v_rule.ord = ANY (v_indexed);
        v_conds := v_conds || CASE WHEN v_i > 0 THEN ',' ELSE '' END || format(E'\n            CASE WHEN %s THEN %s END',
            cep._rule_compile(s.stream_id, v_rule.condition, v_rule.name), v_rule.ord);
        v_i := v_i + 1;
    END LOOP;
    SELECT coalesce(array_agg(DISTINCT f ORDER BY f), '{}') INTO v_cols
    FROM (
        SELECT (jsonb_path_query(v.condition, 'strict $.**.field') #>> '{}')::name AS f
        FROM unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        UNION
        SELECT (jsonb_path_query(v.condition, 'strict $.**.changed') #>> '{}')::name
        FROM unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
    ) AS c
    WHERE f IS NOT NULL;

    v_ev := format('SELECT %s AS t, %s AS k, n.%I::bigint AS id, %s AS kraw, n.%I AS traw',
        cep._time_expr(s.stream_id),
        CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I::text', s.key_column) END,
        s.id_column,
        CASE WHEN s.key_column IS NULL THEN 'NULL::text' ELSE format('n.%I', s.key_column) END,
        s.time_column);
    FOREACH v_col IN ARRAY v_cols LOOP
        v_ev := v_ev || format(', n.%I AS %I', v_col, 'c:' || v_col);
        v_win_cols := v_win_cols || format(', s.%I AS %I', v_col, 'c:' || v_col);
        v_self_cols := v_self_cols || format(', e.%I', 'c:' || v_col);
    END LOOP;
    v_ev := v_ev || ' FROM ' || batch;
    v_key_pred := CASE WHEN s.key_column IS NULL THEN 'true'
        ELSE format('s.%I = e.kraw', s.key_column) END;
    -- (asynchronous: rows queued after the statement being applied are not there yet for it)
    v_key_pred := v_key_pred || cep._processed_sql(s, 's');

    v_tie := CASE WHEN batch_in_table
        THEN format('NOT (s.%I = e.traw AND s.%I > e.id AND s.%I IN (SELECT x.id FROM ev AS x))',
            s.time_column, s.id_column, s.id_column)
        ELSE format('s.%I <> e.id', s.id_column) END;

    -- Trailing metrics and changes: the events of each assessed event's widest window, or for
    -- bucketed metrics the raw rows of the window's two ends and the buckets in between.
    FOR v_need IN
        SELECT DISTINCT n.*
        FROM unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        CROSS JOIN LATERAL cep._rule_needs(v.condition) AS n
        ORDER BY n.col
    LOOP
        v_traw_w := format('w.traw > e.traw - make_interval(secs => %s)', v_need.secs);
        CASE v_need.kind
            WHEN 'zscore' THEN
                v_hist_cols := v_hist_cols || format($h$,
            coalesce(h%1$s.n, 0) + count(e.%2$I) OVER w_prior AS %3$I,
            coalesce(h%1$s.s, 0) + coalesce(sum(%6$s) OVER w_prior, 0) AS %4$I,
            coalesce(h%1$s.ss, 0) + coalesce(sum(%6$s * %6$s) OVER w_prior, 0) AS %5$I$h$,
                    v_need.col, 'c:' || v_need.field, v_need.col || '_n', v_need.col || '_s',
                    v_need.col || '_ss',
                    cep._rule_num(s.source, v_need.field, format('e.%I', 'c:' || v_need.field)));
                v_hist_from := v_hist_from || format(
                    ' LEFT JOIN cep.rule_history AS h%1$s ON h%1$s.stream_id = %2$s '
                    'AND h%1$s.field = %3$L AND h%1$s.k = e.k',
                    v_need.col, s.stream_id, v_need.field);
            WHEN 'changed' THEN
                v_mx := v_mx || format(E',\n            bool_or(w.%1$I <> e.%1$I) FILTER (WHERE %2$s) AS %3$I',
                    'c:' || v_need.field, v_traw_w, v_need.col);
                v_fin := v_fin || format(', a.%I', v_need.col);
            WHEN 'metric' THEN
                v_width := cep._rule_bucket_width(v_need.fn, v_need.secs);
                v_sid := NULL;
                SELECT f.series_id INTO v_sid FROM cep.rule_bucket_series AS f
                WHERE f.stream_id = s.stream_id AND f.field = coalesce(v_need.field, '')
                    AND f.width = v_width;
                IF v_sid IS NULL THEN
                    v_width := NULL;  -- (no series: raw rows only)
                END IF;
            ELSE
                NULL;
        END CASE;
        IF v_need.kind = 'metric' AND v_width IS NOT NULL THEN
            -- (t - window, t] = raw rows in (t - window, lo) + buckets in [lo, hi) + raw rows
            -- in [hi, t]: hi is the start of t's bucket, lo the first bucket wholly inside the
            -- window, or the series' purge floor if later (raw rows stand in for purged buckets)
            v_nb := v_nb + 1;
            v_val := cep._rule_bucket_value(s.source, coalesce(v_need.field, ''), 's');
            v_raw_col := CASE WHEN v_need.field IS NULL THEN '1::pg_catalog.numeric'
                ELSE replace(cep._rule_bucket_value(s.source, v_need.field, 'w'),
                    format('w.%I', v_need.field), format('w.%I', 'c:' || v_need.field)) END;
            -- g: the bucket bounds, and whether the key is dense (has buckets) at all; a
            -- sparse key's whole window is read raw by the scan a below, a dense key's head
            -- by h and its middle from the buckets (m): h and m are skipped for sparse keys
            -- (the key's floor by one join over the statement's events, not a subquery per
            -- event: the planner copies a pulled-up subquery into every place that uses it)
            v_gjoins := v_gjoins || format($g$
        LEFT JOIN cep.rule_bucket_keys AS kf%4$s ON kf%4$s.series_id = %3$s AND kf%4$s.k = e.k
        CROSS JOIN LATERAL (
            SELECT kf%4$s.floor IS NOT NULL AS hot,
                least(greatest(
                    pg_catalog.date_bin(%1$L::interval, e.t - make_interval(secs => %2$s),
                        '2000-01-01 00:00:00+00') + %1$L::interval,
                    (SELECT f.floor FROM cep.rule_bucket_series AS f WHERE f.series_id = %3$s),
                    coalesce(kf%4$s.floor, 'infinity')),
                    pg_catalog.date_bin(%1$L::interval, e.t, '2000-01-01 00:00:00+00')) AS lo,
                pg_catalog.date_bin(%1$L::interval, e.t, '2000-01-01 00:00:00+00') AS hi
        ) AS g%4$s$g$,
                v_width, v_need.secs, v_sid, v_nb);
            v_cold_w := v_cold_w || format(', CASE WHEN g%s.hot THEN 0 ELSE %s END', v_nb, v_need.secs);
            -- (one lateral for both, gated by HAVING: a sparse key's event evaluates one node)
            v_joins := v_joins || format($j$
        LEFT JOIN LATERAL (
            SELECT sum(u.c) AS c, sum(u.s) AS s, min(u.mn) AS mn, max(u.mx) AS mx
            FROM (
                SELECT count(%6$s) AS c, sum(%6$s) AS s, min(%6$s) AS mn, max(%6$s) AS mx
                FROM %7$s AS s
                WHERE %8$s AND s.%9$I > e.traw - make_interval(secs => %2$s)
                    AND s.%9$I < %10$s AND %11$s
                UNION ALL
                SELECT sum(bk.n), sum(bk.s), min(bk.mn), max(bk.mx)
                FROM cep.rule_buckets AS bk
                WHERE bk.series_id = %3$s AND bk.k = e.k AND bk.b >= g%5$s.lo
                    AND bk.b < g%5$s.hi
            ) AS u
            HAVING g%5$s.hot
        ) AS hm%5$s ON true$j$,
                v_width, v_need.secs, v_sid, coalesce(v_need.field, ''), v_nb, v_val,
                s.source, v_key_pred, s.time_column,
                cep._stream_raw_time_sql(s, format('g%s.lo', v_nb)), v_tie);
            -- from the raw scan a: the tail [hi, t] (t), and a sparse key's head (t - window,
            -- lo) (h); each as count, sum, min and max
            v_mx := v_mx || (
                SELECT string_agg(format(
                    E',\n            count(%1$s) FILTER (WHERE %2$s) AS %3$I,'
                    || E'\n            sum(%1$s) FILTER (WHERE %2$s) AS %4$I,'
                    || E'\n            min(%1$s) FILTER (WHERE %2$s) AS %5$I,'
                    || E'\n            max(%1$s) FILTER (WHERE %2$s) AS %6$I',
                    v_raw_col, x.cond, v_need.col || x.p || 'c', v_need.col || x.p || 's',
                    v_need.col || x.p || 'mn', v_need.col || x.p || 'mx'), '' ORDER BY x.p DESC)
                FROM (VALUES
                    (':t', format('w.traw >= %s', cep._stream_raw_time_sql(s, format(
                        'pg_catalog.date_bin(%L::interval, e.t, ''2000-01-01 00:00:00+00'')',
                        v_width)))),
                    (':h', format('NOT g%s.hot AND w.traw > e.traw - make_interval(secs => %s) '
                        'AND w.traw < %s', v_nb, v_need.secs,
                        cep._stream_raw_time_sql(s, format('g%s.lo', v_nb))))
                ) AS x (p, cond)
            );
            v_fin := v_fin || CASE v_need.fn
                WHEN 'count' THEN format(
                    ', (coalesce(hm%1$s.c, 0) + a.%2$I + a.%4$I)::bigint AS %3$I',
                    v_nb, v_need.col || ':tc', v_need.col, v_need.col || ':hc')
                WHEN 'min' THEN format(', least(hm%1$s.mn, a.%2$I, a.%4$I) AS %3$I',
                    v_nb, v_need.col || ':tmn', v_need.col, v_need.col || ':hmn')
                WHEN 'max' THEN format(', greatest(hm%1$s.mx, a.%2$I, a.%4$I) AS %3$I',
                    v_nb, v_need.col || ':tmx', v_need.col, v_need.col || ':hmx')
                ELSE format(
                    ', CASE WHEN hm%1$s.s IS NULL AND a.%2$I IS NULL AND a.%4$I IS NULL THEN NULL '
                    'ELSE coalesce(hm%1$s.s, 0) + coalesce(a.%2$I, 0) + coalesce(a.%4$I, 0) END AS %3$I',
                    v_nb, v_need.col || ':ts', v_need.col || CASE WHEN v_need.fn = 'avg' THEN '_s' ELSE '' END,
                    v_need.col || ':hs')
                END || CASE WHEN v_need.fn = 'avg' THEN format(
                    ', (coalesce(hm%1$s.c, 0) + a.%2$I + a.%4$I)::bigint AS %3$I',
                    v_nb, v_need.col || ':tc', v_need.col || '_n', v_need.col || ':hc') ELSE '' END;
            v_wmax := greatest(v_wmax, extract(epoch FROM v_width));
            CONTINUE;
        END IF;
        CASE v_need.kind
            WHEN 'zscore' THEN
                NULL;
            WHEN 'changed' THEN
                NULL;
            ELSE
                v_fin := v_fin || CASE WHEN v_need.fn = 'avg'
                    THEN format(', a.%I, a.%I', v_need.col || '_s', v_need.col || '_n')
                    ELSE format(', a.%I', v_need.col) END;
                v_mx := v_mx || CASE v_need.fn
                    WHEN 'count' THEN CASE WHEN v_need.field IS NULL
                        THEN format(E',\n            count(*) FILTER (WHERE %s) AS %I', v_traw_w, v_need.col)
                        ELSE format(E',\n            count(w.%I) FILTER (WHERE %s) AS %I',
                            'c:' || v_need.field, v_traw_w, v_need.col) END
                    WHEN 'count_distinct' THEN format(
                        E',\n            count(DISTINCT w.%I) FILTER (WHERE %s) AS %I',
                        'c:' || v_need.field, v_traw_w, v_need.col)
                    WHEN 'avg' THEN format(
                        E',\n            sum(%5$s) FILTER (WHERE %2$s) AS %3$I,'
                        || E'\n            count(w.%1$I) FILTER (WHERE %2$s) AS %4$I',
                        'c:' || v_need.field, v_traw_w, v_need.col || '_s', v_need.col || '_n',
                        cep._rule_num(s.source, v_need.field, format('w.%I', 'c:' || v_need.field)))
                    ELSE format(E',\n            %s(%s) FILTER (WHERE %s) AS %I',
                        v_need.fn, cep._rule_num(s.source, v_need.field, format('w.%I', 'c:' || v_need.field)),
                        v_traw_w, v_need.col)
                END;
        END CASE;
        IF v_need.kind <> 'zscore' THEN
            v_wmax := greatest(v_wmax, v_need.secs);
        END IF;
    END LOOP;

    v_sql := format(E'WITH ev AS (\n        %s\n    )', v_ev);
    IF v_wmax IS NOT NULL THEN
        -- Per event, one aggregate over the key's rows of its widest window, read through the
        -- (key, time) index. The table already holds the statement's rows; of those, the ones
        -- after the event in (time, id) order can only be ties at its very time, and are left
        -- out. cep.evaluate_rules adds its one event, which is not in the table.
        v_sql := v_sql || format($w$, mx AS (
        SELECT e.id AS mid%10$s
        FROM ev AS e%12$s
        CROSS JOIN LATERAL (
            SELECT %1$s
            FROM (
                SELECT s.%2$I::bigint AS wid, s.%3$I AS traw%4$s
                FROM %5$s AS s
                WHERE %6$s AND s.%3$I > e.traw - make_interval(secs => %7$s) AND s.%3$I <= e.traw
                    AND %8$s%9$s
            ) AS w
        ) AS a%11$s
    )$w$,
            substr(v_mx, 2), s.id_column, s.time_column, v_win_cols, s.source, v_key_pred,
            CASE WHEN v_cold_w = '' THEN v_wmax::text
                ELSE format('greatest(%s%s)', v_wmax, v_cold_w) END,
            v_tie,
            CASE WHEN batch_in_table THEN ''
                ELSE format(' UNION ALL SELECT e.id, e.traw%s', v_self_cols) END,
            v_fin, v_joins, v_gjoins);
    END IF;
    v_sql := v_sql || format($x$, x AS (
        SELECT e.*%1$s%2$s
        FROM ev AS e%3$s%4$s%5$s
    ), fired AS (
        SELECT x.id, x.k, x.t, x.traw,
            pg_catalog.array_remove(ARRAY[%6$s
            ]::integer [], NULL)%7$s AS pos
        FROM x
    )$x$,
        CASE WHEN v_wmax IS NOT NULL THEN ', mx.*' ELSE '' END,
        v_hist_cols,
        CASE WHEN v_wmax IS NOT NULL THEN ' LEFT JOIN mx ON mx.mid = e.id' ELSE '' END,
        v_hist_from,
        CASE WHEN v_hist_cols <> ''
            THEN ' WINDOW w_prior AS (PARTITION BY e.k ORDER BY e.traw, e.id '
                'ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)'
            ELSE '' END,
        v_conds,
        v_groups);
    RETURN v_sql;
END
$fn$;

COMMENT ON FUNCTION cep._rule_assess_sql(integer, text, boolean) IS
'Internal: the SQL that evaluates a rule set over a set of events (CTEs ev, mx, x, fired); '
'shared by the ingest code (the events are in the table) and cep.evaluate_rules (they are not).';

-- The rules section of a stream's ingest function.
CREATE FUNCTION cep._rule_section(stream_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
AS $fn$
DECLARE
    rs cep.rule_sets;
    s cep.streams;
    p cep.risk_policies;
    v_lock text := '';
    v_hist text := '';
    v_field name;
    v_meta record;
    v_enf text;
    v_combine text;
    v_combine_all text;
    v_level text;
    v_block text := '';
    v_alert_cond text;
    v_stateful boolean;
BEGIN
    rs := cep._rule_set(stream_id);
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _rule_section.stream_id;
    SELECT * INTO p FROM cep.risk_policies AS x WHERE x.stream_id = _rule_section.stream_id;
    IF rs.rule_set_id IS NULL OR (cardinality(rs.rule_ids) = 0 AND NOT coalesce(p.log_all, false)) THEN
        RETURN '';
    END IF;
    IF p.stream_id IS NULL THEN
        p := ROW(stream_id, 'sum', 0.4, 0.7, 0.9, NULL, 'high', false, now())::cep.risk_policies;
    END IF;

    -- Per-rule constants, in rule set order.
    SELECT array_agg(v.name ORDER BY u.ord) AS names,
        array_agg(v.risk_score::text::numeric ORDER BY u.ord) AS scores,
        array_agg(v.mode = 'enforce' ORDER BY u.ord) AS enforce,
        -- each rule's entry in an alert's details, made once here rather than per alert
        array_agg(jsonb_build_object('rule_id', u.rule_id, 'name', v.name, 'kind', v.kind,
            'score', v.risk_score::text::numeric::float8, 'version', u.version)
            ORDER BY u.ord) AS objs,
        bool_or(n.kind IS NOT NULL) AS stateful
    INTO v_meta
    FROM unnest(rs.rule_ids, rs.versions) WITH ORDINALITY AS u (rule_id, version, ord)
    JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
    LEFT JOIN LATERAL (SELECT n.kind FROM cep._rule_needs(v.condition) AS n LIMIT 1) AS n ON true;
    v_stateful := coalesce(v_meta.stateful, false);

    v_combine := CASE p.combine
        WHEN 'sum' THEN 'sum(%1$s[q.p])'
        WHEN 'max' THEN 'max(%1$s[q.p])'
        ELSE '1 - cep._product(1 - %1$s[q.p])'
    END;
    v_combine_all := format(v_combine, 'r_scores');
    v_enf := 'r_enforce';
    v_level := format(
        'CASE WHEN a.total >= %1$L::numeric THEN ''high'' WHEN a.total >= %2$L::numeric '
        'THEN ''medium'' ELSE ''low'' END',
        p.high::text::numeric, p.medium::text::numeric);
    v_alert_cond := CASE p.alert_level
        WHEN 'none' THEN 'false'
        WHEN 'low' THEN 'cardinality(i.triggered_rules) > 0'
        WHEN 'medium' THEN 'i.level IN (''medium'', ''high'')'
        ELSE 'i.level = ''high''' END || ' AND cardinality(i.triggered_rules) > 0';

    IF v_stateful THEN
        v_lock := format($l$
    -- rules: lock the statement's keys in key order before reading their history (ON CONFLICT
    -- locks the row even when its WHERE leaves it unchanged; last_seen moves hourly at most)
    INSERT INTO cep.rule_keys AS kk (stream_id, k, last_seen)
    SELECT %1$s, e.k, max(e.t)
    FROM (SELECT %2$s AS k, %3$s AS t FROM cep_new_rows AS n) AS e
    GROUP BY e.k
    ORDER BY e.k
    ON CONFLICT (stream_id, k) DO UPDATE SET last_seen = EXCLUDED.last_seen
    WHERE kk.last_seen < EXCLUDED.last_seen - interval '1 hour';
$l$,
            s.stream_id,
            CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I::text', s.key_column) END,
            cep._time_expr(s.stream_id));
    END IF;
    -- Bucket series grow by the statement's rows before the assessment reads them (the key
    -- locks above serialize them per key).
    v_lock := v_lock || cep._rule_bucket_sql(rs.rule_set_id);

    -- z-score histories grow by the statement's events, in the same statement (its CTEs all
    -- read the snapshot taken before it, so the assessment sees the histories before).
    FOR v_field IN
        SELECT DISTINCT n.field
        FROM unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        CROSS JOIN LATERAL cep._rule_needs(v.condition) AS n
        WHERE n.kind = 'zscore'
        ORDER BY n.field
    LOOP
        v_hist := v_hist || format($h$, %1$I AS (
        INSERT INTO cep.rule_history AS h (stream_id, field, k, n, s, ss)
        SELECT %2$s, %3$L, e.k, count(e.%4$I), coalesce(sum(%5$s), 0),
            coalesce(sum(%5$s * %5$s), 0)
        FROM ev AS e
        GROUP BY e.k
        ORDER BY e.k
        ON CONFLICT (stream_id, field, k) DO UPDATE
        SET n = h.n + EXCLUDED.n, s = h.s + EXCLUDED.s, ss = h.ss + EXCLUDED.ss
    )$h$,
            'hist_' || v_field, s.stream_id, v_field, 'c:' || v_field,
            cep._rule_num(s.source, v_field, format('e.%I', 'c:' || v_field)));
    END LOOP;

    IF p.block_action IS NOT NULL THEN
        SELECT string_agg(format('%I = %s', a.key,
            CASE WHEN jsonb_typeof(a.value) = 'null' THEN 'NULL'
                ELSE format('%L::%s', a.value #>> '{}', format_type(t.atttypid, t.atttypmod)) END),
            ', ' ORDER BY a.key)
        INTO v_block
        FROM jsonb_each(p.block_action -> 'set') AS a
        JOIN pg_catalog.pg_attribute AS t ON t.attrelid = s.source AND t.attname = a.key;
        v_block := format($b$
    IF v_rule_blocked IS NOT NULL THEN
        UPDATE %1$s AS n SET %2$s WHERE n.%3$I = ANY (v_rule_blocked);
    END IF;$b$,
            s.source, v_block, s.id_column);
    END IF;

    RETURN format($r$
    -- rules: rule set %1$s (rules %2$s, versions %3$s)
    DECLARE
        r_ids constant bigint [] := %8$L::bigint [];
        r_versions constant integer [] := %9$L::integer [];
        r_scores constant numeric [] := %17$L::numeric [];
        r_enforce constant boolean [] := %16$L::boolean [];
        r_names constant text [] := %15$L::text [];
        r_objs constant jsonb [] := %21$L::jsonb [];
        v_rule_alerts cep.alert_draft [];
%23$s
        v_rule_hits bigint [];
        v_rule_counts bigint [];
    BEGIN%22$s
    -- rules: assess the statement's events
    %4$s, scored AS (
        SELECT f.id, f.k, f.t, f.pos, a.*, %5$s AS level
        FROM fired AS f
        CROSS JOIN LATERAL (
            SELECT coalesce(%6$s FILTER (WHERE %7$s[q.p]), 0) AS total,
                coalesce(%6$s, 0) AS total_all,
                coalesce(array_agg(r_ids[q.p] ORDER BY q.p) FILTER (WHERE %7$s[q.p]), '{}') AS rules,
                coalesce(array_agg(r_versions[q.p] ORDER BY q.p) FILTER (WHERE %7$s[q.p]), '{}') AS versions,
                coalesce(array_agg(r_ids[q.p] ORDER BY q.p) FILTER (WHERE NOT %7$s[q.p]), '{}') AS srules,
                coalesce(array_agg(r_versions[q.p] ORDER BY q.p) FILTER (WHERE NOT %7$s[q.p]), '{}') AS sversions
            FROM unnest(f.pos) AS q (p)
        ) AS a
        WHERE %10$s
    ), ins AS (
        INSERT INTO cep.risk_assessments (
            event_id, stream, partition_key, event_time, total_score, level, triggered_rules,
            rule_versions, shadow_rules, shadow_versions, shadow_score, blocked, rule_set_id
        )
        SELECT c.id, %11$L, c.k, c.t, c.total::float8, c.level, c.rules, c.versions, c.srules,
            c.sversions, c.total_all::float8, %12$s, %1$s
        FROM scored AS c
        ORDER BY c.t, c.id
        RETURNING *
    ), hits AS (
        SELECT array_agg(r_ids[h.p] ORDER BY h.p) AS rules, array_agg(h.n ORDER BY h.p) AS counts
        FROM (SELECT q.p, count(*) AS n FROM fired AS f, unnest(f.pos) AS q (p) GROUP BY q.p) AS h
    )%13$s
    SELECT (
            SELECT array_agg(ROW(
                'rule', %14$L, %11$L, i.partition_key, i.event_id,
                CASE WHEN i.blocked THEN 'critical' ELSE i.level END, i.total_score,
                pg_catalog.format('%%s risk %%s for key %%s, event %%s: %%s', i.level,
                    round(i.total_score::numeric, 4), i.partition_key, i.event_id, d.names),
                pg_catalog.jsonb_build_object(
                    'rules', d.rules, 'total_score', i.total_score, 'level', i.level,
                    'blocked', i.blocked, 'rule_set_id', i.rule_set_id, 'event_time', i.event_time,
                    'shadow_rules', i.shadow_rules)
            )::cep.alert_draft ORDER BY i.event_time, i.event_id)
            FROM ins AS i
            JOIN scored AS c ON c.id = i.event_id
            CROSS JOIN LATERAL (
                -- only the fired rules' positions: the cost does not grow with the rule set
                SELECT string_agg(r_names[q.p], ', ' ORDER BY q.p) AS names,
                    jsonb_agg(r_objs[q.p] ORDER BY q.p) AS rules
                FROM unnest(c.pos) AS q (p)
                WHERE r_enforce[q.p]
            ) AS d
            WHERE %18$s
        ),
        h.rules, h.counts%24$s
    INTO v_rule_alerts, v_rule_hits, v_rule_counts%25$s
    FROM hits AS h;
    IF v_rule_alerts IS NOT NULL THEN
        PERFORM cep._raise_alerts(%19$s, v_rule_alerts);
    END IF;%20$s
    INSERT INTO cep.rule_log (stream_id, rule_set_id, events, hit_rules, hit_counts)
    VALUES (%19$s, %1$s, v_events, coalesce(v_rule_hits, '{}'), coalesce(v_rule_counts, '{}'));
    END;
$r$,
        rs.rule_set_id,                                   -- 1
        array_to_string(rs.rule_ids, ','),                -- 2
        array_to_string(rs.versions, ','),                -- 3
        cep._rule_assess_sql(rs.rule_set_id, 'cep_new_rows AS n', true),  -- 4
        v_level,                                          -- 5
        v_combine_all,                                    -- 6
        v_enf,                                            -- 7
        rs.rule_ids,                                      -- 8
        rs.versions,                                      -- 9
        CASE WHEN p.log_all THEN 'true' ELSE 'cardinality(f.pos) > 0' END,  -- 10
        s.name,                                           -- 11
        CASE WHEN p.block_action IS NOT NULL
            THEN format('c.total >= %L::numeric AND cardinality(c.rules) > 0', p.block::text::numeric)
            ELSE 'false' END,  -- 12
        v_hist,                                           -- 13
        'risk_policy:' || s.name,                         -- 14
        v_meta.names,                                     -- 15
        v_meta.enforce,                                   -- 16
        v_meta.scores,                                    -- 17
        v_alert_cond,                                     -- 18
        s.stream_id,                                      -- 19
        v_block,                                          -- 20
        v_meta.objs,                                      -- 21
        v_lock,                                           -- 22
        CASE WHEN p.block_action IS NOT NULL
            THEN E'\n        v_rule_blocked bigint [];' ELSE '' END,  -- 23
        CASE WHEN p.block_action IS NOT NULL
            THEN E',\n        (SELECT array_agg(i.event_id) FROM ins AS i WHERE i.blocked)'
            ELSE '' END,                                  -- 24
        CASE WHEN p.block_action IS NOT NULL THEN ', v_rule_blocked' ELSE '' END);  -- 25
END
$fn$;

COMMENT ON FUNCTION cep._rule_section(integer) IS
'Internal: the rules section of a stream''s ingest function: key locks, assessment, '
'risk_assessments rows, alerts, block action, history updates and counters.';

-- Product of numerics (noisy-or combination of rule scores).
CREATE FUNCTION cep._product_step(state numeric, value numeric)
RETURNS numeric
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN value IS NULL THEN state ELSE state * value END
$fn$;

COMMENT ON FUNCTION cep._product_step(numeric, numeric) IS
'Internal: transition function of cep._product.';

CREATE AGGREGATE cep._product (numeric)(
    sfunc = cep._product_step,
    stype = numeric,
    initcond = '1'
);

COMMENT ON AGGREGATE cep._product (numeric) IS
'Internal: exact product of numerics, for the noisy-or combination 1 - prod(1 - score).';

-- The value a bucket series aggregates, over the row alias ALIAS: 1 per row for field '',
-- the exact numeric value of a numeric field, and 1 per non-NULL value of any other field.
CREATE FUNCTION cep._rule_bucket_value(source regclass, field name, alias text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF field = '' THEN
        RETURN '1::pg_catalog.numeric';
    ELSIF EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
        WHERE a.attrelid = source AND a.attname = field AND t.typcategory = 'N'
    ) THEN
        RETURN cep._rule_num(source, field, format('%s.%I', alias, field));
    END IF;
    RETURN format('CASE WHEN %s.%I IS NULL THEN NULL ELSE 1::pg_catalog.numeric END', alias, field);
END
$fn$;

COMMENT ON FUNCTION cep._rule_bucket_value(regclass, name, text) IS
'Internal: SQL of the value a bucket series of FIELD aggregates over the row alias ALIAS.';

-- The bucket series a rule set reads, with their ids.
CREATE FUNCTION cep._rule_set_series(rule_set_id integer)
RETURNS TABLE (series_id integer, field name, width interval)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT DISTINCT f.series_id, f.field, f.width
    FROM cep.rule_sets AS rs
    CROSS JOIN LATERAL unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
    JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
    CROSS JOIN LATERAL cep._rule_needs(v.condition) AS n
    JOIN cep.rule_bucket_series AS f
        ON f.stream_id = rs.stream_id AND f.field = coalesce(n.field, '')
        AND f.width = cep._rule_bucket_width(n.fn, n.secs)
    WHERE rs.rule_set_id = _rule_set_series.rule_set_id AND n.kind = 'metric'
    ORDER BY f.series_id
$fn$;

COMMENT ON FUNCTION cep._rule_set_series(integer) IS
'Internal: the bucket series (id, field, width) the trailing metrics of a rule set read.';

-- The statements of the rules section that keep a rule set's bucket series: the statement's
-- rows of dense keys go into their buckets; then the statement's keys that became dense (64
-- stored events within a window) get a floor inside that window and their buckets from it,
-- built from the stored rows (the statement's included).
CREATE FUNCTION cep._rule_bucket_sql(rule_set_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rs cep.rule_sets;
    s cep.streams;
    v_series record;
    v_sql text := '';
    v_k text;
    v_kraw text;
    v_kcast text;
BEGIN
    SELECT * INTO STRICT rs FROM cep.rule_sets AS r WHERE r.rule_set_id = _rule_bucket_sql.rule_set_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = rs.stream_id;
    v_k := cep._stream_key_sql(s, 'n');
    v_kraw := CASE WHEN s.key_column IS NULL THEN 'NULL::text' ELSE format('n.%I', s.key_column) END;
    v_kcast := CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s.%I = h.k::%s', s.key_column,
        (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = s.source AND a.attname = s.key_column)) END;
    FOR v_series IN SELECT * FROM cep._rule_set_series(rs.rule_set_id) LOOP
        v_sql := v_sql || format($b$
    -- rules: bucket series %1$s (%2$L, width %3$s): the statement's rows of dense keys
    INSERT INTO cep.rule_buckets AS o (series_id, k, b, n, s, mn, mx)
    SELECT %1$s, x.k, x.b, count(x.v), sum(x.v), min(x.v), max(x.v)
    FROM (
        SELECT %4$s AS k, pg_catalog.date_bin(%3$L::interval, %5$s, '2000-01-01 00:00:00+00') AS b,
            %6$s AS v
        FROM cep_new_rows AS n
    ) AS x
    JOIN cep.rule_bucket_keys AS kf ON kf.series_id = %1$s AND kf.k = x.k AND x.b >= kf.floor
    GROUP BY x.k, x.b
    ORDER BY x.k, x.b
    ON CONFLICT (series_id, k, b) DO UPDATE
    SET n = o.n + EXCLUDED.n,
        s = CASE WHEN o.s IS NULL THEN EXCLUDED.s WHEN EXCLUDED.s IS NULL THEN o.s
            ELSE o.s + EXCLUDED.s END,
        mn = least(o.mn, EXCLUDED.mn),
        mx = greatest(o.mx, EXCLUDED.mx);
    -- rules: bucket series %1$s: keys of the statement that became dense
    WITH hot AS (
        INSERT INTO cep.rule_bucket_keys AS kk (series_id, k, floor)
        SELECT %1$s, c.k,
            pg_catalog.date_bin(%3$L::interval, c.t - 32 * %3$L::interval, '2000-01-01 00:00:00+00')
            + %3$L::interval
        FROM (
            SELECT %4$s AS k, %7$s AS kraw, max(n.%8$I) AS traw, max(%5$s) AS t
            FROM cep_new_rows AS n
            -- (a key is looked at for about one event of 16, picked by the event's id, before
            -- anything is grouped: turning dense a little later costs nothing but raw reads,
            -- and sparse keys stay cheap)
            WHERE pg_catalog.hashint8(n.%16$I::bigint) & 15 = 0
            GROUP BY 1, 2
        ) AS c
        WHERE NOT EXISTS (
                SELECT 1 FROM cep.rule_bucket_keys AS kf WHERE kf.series_id = %1$s AND kf.k = c.k
            )
            AND (
                SELECT count(*) FROM (
                    SELECT 1 FROM %9$s AS s
                    WHERE %10$s AND s.%8$I > c.traw - 32 * %3$L::interval AND s.%8$I <= c.traw%11$s
                    LIMIT 64
                ) AS y
            ) >= 64
        ORDER BY c.k
        RETURNING kk.k, kk.floor
    )
    INSERT INTO cep.rule_buckets AS o (series_id, k, b, n, s, mn, mx)
    SELECT %1$s, h.k, pg_catalog.date_bin(%3$L::interval, %12$s, '2000-01-01 00:00:00+00'),
        count(%13$s), sum(%13$s), min(%13$s), max(%13$s)
    FROM hot AS h
    JOIN %9$s AS s ON %14$s AND s.%8$I >= %15$s%11$s
    GROUP BY 2, 3
    ORDER BY 2, 3
    ON CONFLICT (series_id, k, b) DO UPDATE
    SET n = EXCLUDED.n, s = EXCLUDED.s, mn = EXCLUDED.mn, mx = EXCLUDED.mx;
$b$,
            v_series.series_id, v_series.field, v_series.width,
            v_k, cep._time_expr(s.stream_id),
            cep._rule_bucket_value(s.source, v_series.field, 'n'),
            v_kraw, s.time_column, s.source,
            CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s.%I = c.kraw', s.key_column) END,
            cep._processed_sql(s, 's'),
            cep._stream_time_sql(s, 's'),
            cep._rule_bucket_value(s.source, v_series.field, 's'),
            v_kcast,
            cep._stream_raw_time_sql(s, 'h.floor'),
            s.id_column);
    END LOOP;
    RETURN v_sql;
END
$fn$;

COMMENT ON FUNCTION cep._rule_bucket_sql(integer) IS
'Internal: the statements of a rules section that keep the bucket series of its rule set.';
