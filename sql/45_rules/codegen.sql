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

-- The trailing windows a rule set reads (metrics and changes), one row per distinct need: w
-- numbers the distinct window widths (1 = narrowest); a metric that dense keys read from time
-- buckets has the bucket series and a group number grp (one per series and width).
CREATE FUNCTION cep._rule_window_needs(rule_set_id integer)
RETURNS TABLE (
    kind text, fn text, field name, secs numeric, col text, w integer, series_id integer,
    width interval, grp integer
)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT n.kind, n.fn, n.field, n.secs, n.col,
        dense_rank() OVER (ORDER BY n.secs)::integer,
        f.series_id, f.width,
        CASE WHEN f.series_id IS NOT NULL
            THEN dense_rank() OVER (ORDER BY f.series_id IS NULL, f.series_id, n.secs)::integer END
    FROM (
        SELECT DISTINCT n.*, rs.stream_id
        FROM cep.rule_sets AS rs
        CROSS JOIN LATERAL unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        CROSS JOIN LATERAL cep._rule_needs(v.condition) AS n
        WHERE rs.rule_set_id = _rule_window_needs.rule_set_id AND n.kind IN ('metric', 'changed')
    ) AS n
    LEFT JOIN cep.rule_bucket_series AS f
        ON f.stream_id = n.stream_id AND f.field = coalesce(n.field, '')
        AND f.width = cep._rule_bucket_width(n.fn, n.secs)
    ORDER BY n.secs, n.col
$fn$;

COMMENT ON FUNCTION cep._rule_window_needs(integer) IS
'Internal: the trailing windows (metrics and changes) a rule set reads, with their width number '
'and, for metrics dense keys read from time buckets, the bucket series and group.';

-- The laterals hm<grp> of the assessment's x, one per bucket group (series and width), for the
-- events of keys dense in the series only: the stored rows' raw ends (t - w, lo) and [hi, t],
-- and the buckets [lo, hi) in between (lo is at least the series' purge floor and the key's
-- floor: raw rows stand in for buckets that are not there). The statement's own rows are left
-- out (the buckets do not have them yet either); they are added from ev.
CREATE FUNCTION cep._rule_hot_sql(rule_set_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rs cep.rule_sets;
    s cep.streams;
    v_grp record;
    v_x text;
    v_aggs text;
    v_lats text := '';
    v_keyeq text;
    v_proc text;
BEGIN
    SELECT * INTO STRICT rs FROM cep.rule_sets AS r WHERE r.rule_set_id = _rule_hot_sql.rule_set_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = rs.stream_id;
    v_keyeq := CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s.%I = e.kraw', s.key_column) END;
    v_proc := cep._processed_sql(s, 's');
    FOR v_grp IN
        SELECT n.grp, n.series_id, n.width, n.secs, coalesce(n.field, '') AS field,
            bool_or(n.fn IN ('sum', 'avg')) AS sm, bool_or(n.fn = 'min') AS mn,
            bool_or(n.fn = 'max') AS mx
        FROM cep._rule_window_needs(rs.rule_set_id) AS n
        WHERE n.grp IS NOT NULL
        GROUP BY 1, 2, 3, 4, 5
        ORDER BY 1
    LOOP
        v_x := cep._rule_bucket_value(s.source, v_grp.field,
            CASE WHEN v_grp.field = '' THEN NULL ELSE format('s.%I', v_grp.field) END);
        v_aggs := concat_ws(', ', format('count(%s) AS c', v_x),
            CASE WHEN v_grp.sm THEN format('sum(%s) AS s', v_x) END,
            CASE WHEN v_grp.mn THEN format('min(%s) AS mn', v_x) END,
            CASE WHEN v_grp.mx THEN format('max(%s) AS mx', v_x) END);
        v_lats := v_lats || format($g$
        LEFT JOIN LATERAL (
            SELECT %14$s
            FROM (
                SELECT least(greatest(
                        pg_catalog.date_bin(%1$L::interval, e.t - make_interval(secs => %2$s),
                            '2000-01-01 00:00:00+00') + %1$L::interval,
                        (SELECT f.floor FROM cep.rule_bucket_series AS f WHERE f.series_id = %3$s),
                        coalesce(e.%5$I, 'infinity')),
                        pg_catalog.date_bin(%1$L::interval, e.t, '2000-01-01 00:00:00+00')) AS lo,
                    pg_catalog.date_bin(%1$L::interval, e.t, '2000-01-01 00:00:00+00') AS hi
            ) AS g
            CROSS JOIN LATERAL (
                SELECT %6$s
                FROM %7$s AS s
                WHERE %8$s AND s.%9$I > e.traw - make_interval(secs => %2$s)
                    AND s.%9$I < %10$s%12$s
                    AND s.%13$I::bigint NOT IN (SELECT x.id FROM ev AS x)
                UNION ALL
                SELECT %6$s
                FROM %7$s AS s
                WHERE %8$s AND s.%9$I >= %11$s AND s.%9$I <= e.traw%12$s
                    AND s.%13$I::bigint NOT IN (SELECT x.id FROM ev AS x)
                UNION ALL
                SELECT %15$s
                FROM cep.rule_buckets AS bk
                WHERE bk.series_id = %3$s AND bk.k = e.k AND bk.b >= g.lo AND bk.b < g.hi
            ) AS u
            HAVING e.%5$I IS NOT NULL
        ) AS hm%4$s ON true$g$,
            v_grp.width, v_grp.secs, v_grp.series_id, v_grp.grp, 'f:' || v_grp.series_id,
            v_aggs, s.source, v_keyeq, s.time_column,
            cep._stream_raw_time_sql(s, 'g.lo'),
            cep._stream_raw_time_sql(s, 'g.hi'),
            v_proc, s.id_column,
            concat_ws(', ', 'sum(u.c) AS c',
                CASE WHEN v_grp.sm THEN 'sum(u.s) AS s' END,
                CASE WHEN v_grp.mn THEN 'min(u.mn) AS mn' END,
                CASE WHEN v_grp.mx THEN 'max(u.mx) AS mx' END),
            concat_ws(', ', 'sum(bk.n)',
                CASE WHEN v_grp.sm THEN 'sum(bk.s)' END,
                CASE WHEN v_grp.mn THEN 'min(bk.mn)' END,
                CASE WHEN v_grp.mx THEN 'max(bk.mx)' END));
    END LOOP;

    RETURN v_lats;
END
$fn$;

COMMENT ON FUNCTION cep._rule_hot_sql(integer) IS
'Internal: the laterals of the assessment that read a dense key''s long windows from its time '
'buckets and the raw rows at their two ends (stored rows only).';

-- SQL of the sum of two numerics of which either may be NULL (NULL only when both are).
CREATE FUNCTION cep._rule_add_sql(a text, b text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('CASE WHEN %1$s IS NULL THEN %2$s WHEN %2$s IS NULL THEN %1$s ELSE %1$s + %2$s END',
        a, b)
$fn$;

COMMENT ON FUNCTION cep._rule_add_sql(text, text) IS
'Internal: SQL of a + b where a NULL operand counts as absent (NULL when both are).';

-- The assessment query of a rule set, up to and including the CTE "fired" (id, k, t, traw,
-- pos): pos lists the positions (1-based, in rule set order) of the rules whose condition
-- holds. batch is the FROM item of the statement's rows as alias n: the transition table
-- (whose rows are in the table already), or one event from JSON for cep.evaluate_rules.
--
-- Trailing windows are read once per key and statement, not once per event. The key's stored
-- rows (those of the table that are not the statement's) over the union of its events'
-- windows become arrays in time order, the statement's events of the key arrays in (time, id)
-- order; an event's window is then two slices found by binary search (width_bucket): the
-- stored rows with time in (t - w, t], and the statement's rows of the key from t - w up to
-- the event itself (its rank). A count is arithmetic on the positions; sums, minimums,
-- maximums, counts of a field, distinct counts and changes aggregate the slices in memory.
-- The stored rows come from one index scan over all the statement's keys when the statement
-- spans less than the widest window (the common case), else from one range scan per key and
-- cluster of its events (events further apart than the window start a new cluster). Keys that
-- are dense in a bucket series (cep.rule_buckets) read their long windows from the buckets
-- (per event: the buckets between the window's two raw ends) and raw rows only as far back as
-- the other conditions need.
CREATE FUNCTION cep._rule_assess_sql(
    rule_set_id integer, batch text, small boolean DEFAULT FALSE
)
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
    v_i integer := 0;
    v_rule record;
    v_indexed integer [] := '{}'::integer [];
    v_groups text := '';
    v_x text;
    v_arr text;
    v_le text;
    v_lt text;
    v_need record;
    v_sql text;
    v_hist_cols text := '';
    v_hist_from text := '';
    v_hist_win text := '';
    v_wmax numeric;
    v_wraw numeric;
    v_fields name [];
    v_key text;
    v_keyeq text;
    v_proc text;
    v_kf_cols text := '';
    v_kf_from text := '';
    v_hot text := '';
    v_eo_cols text;
    v_in_cols text;
    v_s_arrays text;
    v_a_arrays text;
    v_read text := '';
    v_pos text;
    v_lats text := '';
    v_fin text := '';
    v_aggs text;
    v_unnest_a text;
    v_unnest_s text;
    v_names text;
    v_w record;
    v_f record;
    v_grp record;
    v_a text;
    v_s text;
    v_arrval text;
    v_hotval text;
    v_num text;
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

    -- ev: the statement's events (kraw: the key in its column's type, '' without a key)
    v_ev := format('SELECT %s AS t, %s AS k, n.%I::bigint AS id, %s AS kraw, n.%I AS traw',
        cep._time_expr(s.stream_id),
        CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I::text', s.key_column) END,
        s.id_column,
        CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I', s.key_column) END,
        s.time_column);
    FOREACH v_col IN ARRAY v_cols LOOP
        v_ev := v_ev || format(', n.%I AS %I', v_col, 'c:' || v_col);
    END LOOP;
    v_sql := format(E'WITH ev AS (\n        %s FROM %s\n    )', v_ev, batch);

    -- z-score histories: the key's stored history plus the statement's earlier events of it
    FOR v_need IN
        SELECT DISTINCT n.*
        FROM unnest(rs.rule_ids, rs.versions) AS u (rule_id, version)
        JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
        CROSS JOIN LATERAL cep._rule_needs(v.condition) AS n
        WHERE n.kind = 'zscore'
        ORDER BY n.col
    LOOP
        v_hist_cols := v_hist_cols || format($h$,
            coalesce(h%1$s.n, 0) + count(e.%2$I) OVER w_prior AS %3$I,
            coalesce(h%1$s.s, 0) + coalesce(sum(%6$s) OVER w_prior, 0) AS %4$I,
            coalesce(h%1$s.ss, 0) + coalesce(sum(%6$s * %6$s) OVER w_prior, 0) AS %5$I$h$,
            v_need.col, 'c:' || v_need.field, v_need.col || '_n', v_need.col || '_s',
            v_need.col || '_ss',
            cep._rule_num(s.source, v_need.field, format('e.%I', 'c:' || v_need.field)));
        v_hist_from := v_hist_from || format(
            E'\n        LEFT JOIN cep.rule_history AS h%1$s ON h%1$s.stream_id = %2$s '
            'AND h%1$s.field = %3$L AND h%1$s.k = e.k',
            v_need.col, s.stream_id, v_need.field);
        v_hist_win := E'\n        WINDOW w_prior AS (PARTITION BY e.k ORDER BY e.traw, e.id '
            'ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)';
    END LOOP;

    SELECT max(n.secs), max(n.secs) FILTER (WHERE n.series_id IS NULL),
        coalesce(array_agg(DISTINCT n.field ORDER BY n.field) FILTER (WHERE n.field IS NOT NULL), '{}')
    INTO v_wmax, v_wraw, v_fields
    FROM cep._rule_window_needs(rs.rule_set_id) AS n;

    IF v_wmax IS NULL THEN
        -- no trailing window: the events and their histories only
        RETURN v_sql || format($x$, x AS (
        SELECT e.*%1$s
        FROM ev AS e%2$s%3$s
    ), fired AS (
        SELECT x.id, x.k, x.t, x.traw,
            pg_catalog.array_remove(ARRAY[%4$s
            ]::integer [], NULL)%5$s AS pos
        FROM x
    )$x$, v_hist_cols, v_hist_from, v_hist_win, v_conds, v_groups);
    END IF;

    v_key := CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('s.%I', s.key_column) END;
    v_keyeq := CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s.%I = e.kraw', s.key_column) END;
    v_proc := cep._processed_sql(s, 's');
    -- per bucket series: the key's floor there (NULL: the key is not dense in that series, or
    -- its events spell the key in more than one way); looked up once per key
    FOR v_grp IN
        SELECT DISTINCT n.series_id FROM cep._rule_window_needs(rs.rule_set_id) AS n
        WHERE n.series_id IS NOT NULL ORDER BY 1
    LOOP
        v_kf_cols := v_kf_cols || format(', CASE WHEN g.k1 = g.k2 THEN kf%1$s.floor END AS %2$I',
            v_grp.series_id, 'f:' || v_grp.series_id);
        v_kf_from := v_kf_from || format(E'\n            LEFT JOIN cep.rule_bucket_keys AS kf%1$s '
            'ON kf%1$s.series_id = %1$s AND kf%1$s.k = g.k1', v_grp.series_id);
        v_hot := v_hot || CASE WHEN v_hot = '' THEN '' ELSE ' AND ' END
            || format('k.%I IS NOT NULL', 'f:' || v_grp.series_id);
    END LOOP;
    IF v_hot = '' THEN
        v_hot := 'false';
    END IF;
    IF small THEN
        -- Few events (a statement of one row, typically) of keys that are dense in no bucket
        -- series (the caller sends others to the general form): per event, one scan of the
        -- key's rows over its widest window, the statement's rows included up to the event in
        -- (time, id) order (they are in the table). Its plan is much smaller than the arrays'.
        v_aggs := '';
        FOR v_need IN SELECT * FROM cep._rule_window_needs(rs.rule_set_id) AS n ORDER BY n.w, n.col LOOP
            v_x := format('s.%I > e.traw - make_interval(secs => %s)', s.time_column, v_need.secs);
            v_num := CASE WHEN v_need.field IS NOT NULL
                THEN cep._rule_num(s.source, v_need.field, format('s.%I', v_need.field)) END;
            v_aggs := v_aggs || CASE WHEN v_aggs = '' THEN '' ELSE E',\n                ' END || CASE
                WHEN v_need.kind = 'changed' THEN format('coalesce(bool_or(s.%I <> e.%I) FILTER (WHERE %s), false)',
                    v_need.field, 'c:' || v_need.field, v_x)
                WHEN v_need.fn = 'count_distinct' THEN format('count(DISTINCT s.%I) FILTER (WHERE %s)',
                    v_need.field, v_x)
                WHEN v_need.fn = 'count' AND v_need.field IS NULL THEN format('count(*) FILTER (WHERE %s)', v_x)
                WHEN v_need.fn = 'count' THEN format('count(s.%I) FILTER (WHERE %s)', v_need.field, v_x)
                WHEN v_need.fn = 'avg' THEN format('sum(%1$s) FILTER (WHERE %2$s) AS %3$I, '
                    'count(s.%4$I) FILTER (WHERE %2$s)', v_num, v_x, v_need.col || '_s', v_need.field)
                ELSE format('%s(%s) FILTER (WHERE %s)', v_need.fn, v_num, v_x) END
                || format(' AS %I', v_need.col || CASE WHEN v_need.fn = 'avg' THEN '_n' ELSE '' END);
        END LOOP;
        -- per series: the key's count over the series' window (it becomes dense at 64)
        FOR v_grp IN
            SELECT DISTINCT ON (n.series_id) n.series_id, n.secs
            FROM cep._rule_window_needs(rs.rule_set_id) AS n
            WHERE n.series_id IS NOT NULL
            ORDER BY n.series_id, n.grp
        LOOP
            v_aggs := v_aggs || format(E',\n                count(*) FILTER (WHERE s.%I > e.traw - make_interval(secs => %s)) AS %I',
                s.time_column, v_grp.secs, 'd:' || v_grp.series_id);
        END LOOP;
        RETURN v_sql || format($x$, x AS (
        SELECT e.*, a.*%1$s
        FROM ev AS e
        CROSS JOIN LATERAL (
            SELECT %2$s
            FROM %3$s AS s
            WHERE %4$s AND s.%5$I > e.traw - make_interval(secs => %6$s) AND s.%5$I <= e.traw%7$s
                AND NOT (s.%5$I = e.traw AND s.%8$I::bigint > e.id
                    AND s.%8$I::bigint IN (SELECT x.id FROM ev AS x))
        ) AS a%9$s%10$s
    ), fired AS (
        SELECT x.id, x.k, x.t, x.traw,
            pg_catalog.array_remove(ARRAY[%11$s
            ]::integer [], NULL)%12$s AS pos%13$s
        FROM x
    )$x$,
            v_hist_cols, v_aggs, s.source, v_keyeq, s.time_column, v_wmax, v_proc, s.id_column,
            v_hist_from, v_hist_win, v_conds, v_groups,
            (SELECT coalesce(string_agg(format(', x.%I', 'd:' || n.series_id), '' ORDER BY n.series_id), '')
                FROM (SELECT DISTINCT n.series_id FROM cep._rule_window_needs(rs.rule_set_id) AS n
                    WHERE n.series_id IS NOT NULL) AS n));
    END IF;

    -- the arrays of the statement's events (s:) and of the stored rows (a:), per key, and the
    -- columns of an event carried to x
    v_s_arrays := ', array_agg(e.traw) AS "s:t"';
    v_a_arrays := ', array_agg(o.traw) AS "a:t"';
    v_eo_cols := 'e.t, e.k, e.id, e.kraw, e.traw';
    v_in_cols := ', sq."s:t", a."a:t"';
    FOREACH v_col IN ARRAY v_cols LOOP
        v_eo_cols := v_eo_cols || format(', e.%I', 'c:' || v_col);
    END LOOP;
    v_eo_cols := v_eo_cols || ', e."e:r"' || (
        SELECT coalesce(string_agg(format(', e.%I', 'f:' || n.series_id), '' ORDER BY n.series_id), '')
        FROM (SELECT DISTINCT n.series_id FROM cep._rule_window_needs(rs.rule_set_id) AS n
            WHERE n.series_id IS NOT NULL) AS n);
    FOREACH v_col IN ARRAY v_fields LOOP
        v_s_arrays := v_s_arrays || format(', array_agg(e.%I) AS %I', 'c:' || v_col, 's:c:' || v_col);
        v_a_arrays := v_a_arrays || format(', array_agg(o.%I) AS %I', 'c:' || v_col, 'a:c:' || v_col);
        v_read := v_read || format(', s.%I AS %I', v_col, 'c:' || v_col);
        v_in_cols := v_in_cols || format(', sq.%I, a.%I', 's:c:' || v_col, 'a:c:' || v_col);
    END LOOP;

    v_sql := v_sql || format($w$, sk AS (
        -- per key: its events as arrays in (time, id) order (the order of the sorted input),
        -- the key's floor in each bucket series, whether it reads its long windows from
        -- buckets (dense in every series), and the range of its stored rows that its windows
        -- read (w, and rd: whether it reads any, as keys dense in every series and no other
        -- need do not)
        SELECT k.*, k.w IS NOT NULL AS rd
        FROM (
            SELECT k.*, CASE WHEN %3$s THEN %14$s ELSE make_interval(secs => %10$s) END AS w,
                %3$s AS hot
            FROM (
                SELECT g.*%1$s
                FROM (
                    SELECT e.kraw, min(e.k) AS k1, max(e.k) AS k2, min(e.traw) AS lo,
                        max(e.traw) AS hi, array_agg(e.id) AS "s:id"%4$s
                    FROM (SELECT e.* FROM ev AS e ORDER BY e.kraw, e.traw, e.id) AS e
                    GROUP BY e.kraw
                ) AS g%2$s
            ) AS k
        ) AS k
    ), sp AS (
        -- the range the statement's keys read, apart for the keys that read buckets
        SELECT min(k.lo - k.w) FILTER (WHERE k.rd AND NOT k.hot) AS lo,
            max(k.hi) FILTER (WHERE k.rd AND NOT k.hot) AS hi,
            min(k.lo - k.w) FILTER (WHERE k.rd AND k.hot) AS hlo,
            max(k.hi) FILTER (WHERE k.rd AND k.hot) AS hhi
        FROM sk AS k
    ), so AS (
        -- stored rows of the statement's keys over their events' windows: one index scan over
        -- all keys when that range is short (at most twice the window), else one per key and
        -- cluster of its events
        SELECT %5$s AS kraw, s.%6$I AS traw, s.%7$I::bigint AS id%8$s
        FROM %9$s AS s
        WHERE (SELECT p.hi - p.lo <= make_interval(secs => 2 * %10$s) FROM sp AS p)%11$s
            AND s.%6$I > (SELECT p.lo FROM sp AS p)
            AND s.%6$I <= (SELECT p.hi FROM sp AS p)%12$s%13$s
        UNION ALL
        SELECT o.*
        FROM (
            SELECT c.kraw, min(c.traw) - c.w AS lo, max(c.traw) AS hi
            FROM (
                SELECT g.kraw, g.traw, g.w, count(*) FILTER (WHERE g.gap) OVER (
                    PARTITION BY g.kraw ORDER BY g.traw, g.id ROWS UNBOUNDED PRECEDING) AS c
                FROM (
                    SELECT e.kraw, e.traw, e.id, k.w,
                        e.traw - pg_catalog.lag(e.traw) OVER (
                            PARTITION BY e.kraw ORDER BY e.traw, e.id) > k.w AS gap
                    FROM ev AS e
                    JOIN (
                        SELECT k.* FROM sk AS k, sp AS p
                        WHERE k.rd AND CASE WHEN k.hot THEN p.hhi - p.hlo > 2 * k.w
                            ELSE p.hi - p.lo > 2 * k.w END
                    ) AS k ON k.kraw = e.kraw
                ) AS g
            ) AS c
            GROUP BY c.kraw, c.c, c.w
        ) AS r
        CROSS JOIN LATERAL (
            SELECT %5$s AS kraw, s.%6$I AS traw, s.%7$I::bigint AS id%8$s
            FROM %9$s AS s
            WHERE %15$s AND s.%6$I > r.lo AND s.%6$I <= r.hi%12$s
            OFFSET 0
        ) AS o
        WHERE (SELECT p.hi - p.lo > make_interval(secs => 2 * %10$s) OR p.hhi - p.hlo > 2 * %14$s
            FROM sp AS p)
    ), sa AS (
        -- per key: its stored rows (not the statement's) as arrays in time order. (NOT IN:
        -- a hashed subplan, whatever the planner thinks ev holds. An asynchronous stream's ev
        -- reads id = ANY (p_ids), estimated at 10 rows, and NOT EXISTS became a nested loop
        -- over the whole batch for every stored row: ~0.2 s per 1000-row statement.)
        SELECT o.kraw%16$s
        FROM (
            SELECT o.* FROM so AS o
            WHERE o.id IS NULL OR o.id NOT IN (SELECT x.id FROM ev AS x)
            ORDER BY o.kraw, o.traw, o.id
        ) AS o
        GROUP BY o.kraw
    )$w$,
        v_kf_cols,                                                    -- 1
        v_kf_from,                                                    -- 2
        v_hot,                                                        -- 3
        v_s_arrays,                                                   -- 4
        v_key,                                                        -- 5
        s.time_column,                                                -- 6
        s.id_column,                                                  -- 7
        v_read,                                                       -- 8
        s.source,                                                     -- 9
        v_wmax,                                                       -- 10
        CASE WHEN s.key_column IS NULL THEN ''
            ELSE format(E'\n            AND s.%I = ANY (ARRAY(SELECT k.kraw FROM sk AS k WHERE k.rd AND NOT k.hot))',
                s.key_column) END,                                    -- 11
        v_proc,                                                       -- 12
        CASE WHEN v_wraw IS NULL OR v_hot = 'false' THEN '' ELSE format($h$
        UNION ALL
        SELECT %1$s AS kraw, s.%2$I AS traw, s.%3$I::bigint AS id%4$s
        FROM %5$s AS s
        WHERE (SELECT p.hhi - p.hlo <= make_interval(secs => 2 * %6$s) FROM sp AS p)%7$s
            AND s.%2$I > (SELECT p.hlo FROM sp AS p)
            AND s.%2$I <= (SELECT p.hhi FROM sp AS p)%8$s$h$,
            v_key, s.time_column, s.id_column, v_read, s.source, v_wraw,
            CASE WHEN s.key_column IS NULL THEN ''
                ELSE format(E'\n            AND s.%I = ANY (ARRAY(SELECT k.kraw FROM sk AS k WHERE k.rd AND k.hot))',
                    s.key_column) END,
            v_proc) END,                                              -- 13
        CASE WHEN v_wraw IS NULL THEN 'NULL::interval'
            ELSE format('make_interval(secs => %s)', v_wraw) END,     -- 14
        CASE WHEN s.key_column IS NULL THEN 'true'
            ELSE format('s.%I = r.kraw', s.key_column) END,           -- 15
        v_a_arrays,                                                   -- 16
        NULL, NULL);                                                  -- (17, 18: unused)

    -- Per event: the slice bounds of every window width (ah, a<w>, s<w>: computed once, in the
    -- subquery), the aggregates of each width's slices (wa: stored rows, ws: the statement's
    -- rows), and per bucket group the raw ends and buckets of dense keys (hm).
    v_pos := 'coalesce(pg_catalog.width_bucket(e.traw, a."a:t"), 0) AS ah';
    FOR v_w IN
        SELECT n.w, min(n.secs) AS secs FROM cep._rule_window_needs(rs.rule_set_id) AS n
        GROUP BY n.w ORDER BY n.w
    LOOP
        v_pos := v_pos || format(
            E',\n                coalesce(pg_catalog.width_bucket(e.traw - make_interval(secs => %2$s), a."a:t"), 0) AS a%1$s,\n                pg_catalog.width_bucket(e.traw - make_interval(secs => %2$s), sq."s:t") AS s%1$s',
            v_w.w, v_w.secs);
        -- aggregates of fields over this width's slices
        v_aggs := '';
        v_unnest_a := '';
        v_unnest_s := '';
        v_names := '';
        FOR v_f IN
            SELECT n.field,
                bool_or(n.fn IN ('count', 'avg')) AS n,
                bool_or(n.fn IN ('sum', 'avg')) AS sm,
                bool_or(n.fn = 'min') AS mn,
                bool_or(n.fn = 'max') AS mx
            FROM cep._rule_window_needs(rs.rule_set_id) AS n
            WHERE n.w = v_w.w AND n.kind = 'metric' AND n.field IS NOT NULL
                AND n.fn IN ('count', 'sum', 'avg', 'min', 'max')
            GROUP BY n.field
            ORDER BY n.field
        LOOP
            v_num := cep._rule_num(s.source, v_f.field, format('u.%I', v_f.field));
            v_aggs := v_aggs || CASE WHEN v_aggs = '' THEN '' ELSE ', ' END || concat_ws(', ',
                CASE WHEN v_f.n THEN format('count(u.%I) AS %I', v_f.field, 'n:' || v_f.field) END,
                CASE WHEN v_f.sm THEN format('sum(%s) AS %I', v_num, 's:' || v_f.field) END,
                CASE WHEN v_f.mn THEN format('min(%s) AS %I', v_num, 'mn:' || v_f.field) END,
                CASE WHEN v_f.mx THEN format('max(%s) AS %I', v_num, 'mx:' || v_f.field) END);
            v_unnest_a := v_unnest_a || CASE WHEN v_unnest_a = '' THEN '' ELSE ', ' END
                || format('e.%I[e.a%s + 1:e.ah]', 'a:c:' || v_f.field, v_w.w);
            v_unnest_s := v_unnest_s || CASE WHEN v_unnest_s = '' THEN '' ELSE ', ' END
                || format('e.%I[e.s%s + 1:e."e:r"]', 's:c:' || v_f.field, v_w.w);
            v_names := v_names || CASE WHEN v_names = '' THEN '' ELSE ', ' END
                || format('%I', v_f.field);
        END LOOP;
        IF v_aggs <> '' THEN
            v_lats := v_lats || format($l$
        CROSS JOIN LATERAL (
            SELECT %1$s FROM unnest(%2$s) AS u (%4$s)
        ) AS wa%5$s
        CROSS JOIN LATERAL (
            SELECT %1$s FROM unnest(%3$s) AS u (%4$s)
        ) AS ws%5$s$l$, v_aggs, v_unnest_a, v_unnest_s, v_names, v_w.w);
        END IF;
    END LOOP;

    v_lats := v_lats || cep._rule_hot_sql(rs.rule_set_id);

    -- the value of every need, from the arrays or, for a key dense in its series, the buckets
    FOR v_need IN SELECT * FROM cep._rule_window_needs(rs.rule_set_id) AS n ORDER BY n.w, n.col LOOP
        IF v_need.field IS NOT NULL THEN
            v_a := format('e.%I[e.a%s + 1:e.ah]', 'a:c:' || v_need.field, v_need.w);
            v_s := format('e.%I[e.s%s + 1:e."e:r"]', 's:c:' || v_need.field, v_need.w);
        END IF;
        IF v_need.kind = 'changed' THEN
            v_fin := v_fin || format(E',\n            coalesce(e.%1$I <> ANY (%2$s), false) '
                'OR coalesce(e.%1$I <> ANY (%3$s), false) AS %4$I',
                'c:' || v_need.field, v_a, v_s, v_need.col);
            CONTINUE;
        END IF;
        IF v_need.fn = 'count_distinct' THEN
            v_fin := v_fin || format(
                E',\n            (SELECT count(DISTINCT u.v) FROM unnest(%s || %s) AS u (v)) AS %I',
                v_a, v_s, v_need.col);
            CONTINUE;
        END IF;
        -- arrays (v_arrval) and buckets (v_hotval) of count, sum, min, max; avg is sum and count
        FOREACH v_col IN ARRAY CASE WHEN v_need.fn = 'avg' THEN ARRAY['sum', 'count']::name []
            ELSE ARRAY[v_need.fn]::name [] END
        LOOP
            IF v_col = 'count' AND v_need.field IS NULL THEN
                v_arrval := format('(e.ah - e.a%1$s) + (e."e:r" - e.s%1$s)', v_need.w);
                v_hotval := format('hm%s.c::bigint + (e."e:r" - e.s%s)', v_need.grp, v_need.w);
            ELSIF v_col = 'count' THEN
                v_arrval := format('wa%1$s.%2$I + ws%1$s.%2$I', v_need.w, 'n:' || v_need.field);
                v_hotval := format('hm%s.c::bigint + ws%s.%I', v_need.grp, v_need.w, 'n:' || v_need.field);
            ELSIF v_col = 'sum' THEN
                v_arrval := cep._rule_add_sql(format('wa%s.%I', v_need.w, 's:' || v_need.field),
                    format('ws%s.%I', v_need.w, 's:' || v_need.field));
                v_hotval := cep._rule_add_sql(format('hm%s.s', v_need.grp),
                    format('ws%s.%I', v_need.w, 's:' || v_need.field));
            ELSE
                v_x := CASE v_col WHEN 'min' THEN 'mn' ELSE 'mx' END;
                v_arrval := format('%s(wa%s.%I, ws%s.%I)',
                    CASE v_col WHEN 'min' THEN 'least' ELSE 'greatest' END,
                    v_need.w, v_x || ':' || v_need.field, v_need.w, v_x || ':' || v_need.field);
                v_hotval := format('%s(hm%s.%s, ws%s.%I)',
                    CASE v_col WHEN 'min' THEN 'least' ELSE 'greatest' END,
                    v_need.grp, v_x, v_need.w, v_x || ':' || v_need.field);
            END IF;
            v_fin := v_fin || format(E',\n            %s AS %I',
                CASE WHEN v_need.grp IS NULL THEN v_arrval
                    ELSE format('CASE WHEN e.%I IS NULL THEN %s ELSE %s END',
                        'f:' || v_need.series_id, v_arrval, v_hotval) END,
                v_need.col || CASE WHEN v_need.fn <> 'avg' THEN ''
                    WHEN v_col = 'sum' THEN '_s' ELSE '_n' END);
        END LOOP;
    END LOOP;
    -- per series: the key's count over the series' window, while it is not dense there (it
    -- becomes dense at 64, see cep._rule_bucket_sql)
    FOR v_grp IN
        SELECT DISTINCT ON (n.series_id) n.series_id, n.w
        FROM cep._rule_window_needs(rs.rule_set_id) AS n
        WHERE n.series_id IS NOT NULL
        ORDER BY n.series_id, n.grp
    LOOP
        v_fin := v_fin || format(
            E',\n            CASE WHEN e.%1$I IS NULL THEN (e.ah - e.a%2$s) + (e."e:r" - e.s%2$s) END AS %3$I',
            'f:' || v_grp.series_id, v_grp.w, 'd:' || v_grp.series_id);
    END LOOP;

    RETURN v_sql || format($x$, x AS (
        SELECT %1$s%2$s%3$s
        FROM (
            -- (e:r, the event's rank in (time, id) order among the statement's events of its
            -- key: those of earlier times, and its place among those of its time, ids ascending)
            SELECT e.*%4$s%11$s,
                r.lt + pg_catalog.width_bucket(e.id, sq."s:id"[r.lt + 1:r.le]) AS "e:r",
                %5$s
            FROM ev AS e
            JOIN sk AS sq ON sq.kraw = e.kraw
            LEFT JOIN sa AS a ON a.kraw = e.kraw
            CROSS JOIN LATERAL (
                SELECT pg_catalog.width_bucket(e.traw - '1 microsecond'::interval, sq."s:t") AS lt,
                    pg_catalog.width_bucket(e.traw, sq."s:t") AS le
            ) AS r
            OFFSET 0
        ) AS e%6$s%7$s%8$s
        -- (not merged into fired: rules that share a metric would each compute it)
        OFFSET 0
    ), fired AS (
        SELECT x.id, x.k, x.t, x.traw,
            pg_catalog.array_remove(ARRAY[%9$s
            ]::integer [], NULL)%10$s AS pos%12$s
        FROM x
    )$x$, v_eo_cols, v_fin, v_hist_cols, v_in_cols, v_pos, v_lats, v_hist_from, v_hist_win,
        v_conds, v_groups,
        (SELECT coalesce(string_agg(format(', sq.%I', 'f:' || n.series_id), '' ORDER BY n.series_id), '')
            FROM (SELECT DISTINCT n.series_id FROM cep._rule_window_needs(rs.rule_set_id) AS n
                WHERE n.series_id IS NOT NULL) AS n),
        (SELECT coalesce(string_agg(format(', x.%I, x.%I', 'd:' || n.series_id, 'f:' || n.series_id),
                '' ORDER BY n.series_id), '')
            FROM (SELECT DISTINCT n.series_id FROM cep._rule_window_needs(rs.rule_set_id) AS n
                WHERE n.series_id IS NOT NULL) AS n));
END
$fn$;

COMMENT ON FUNCTION cep._rule_assess_sql(integer, text, boolean) IS
'Internal: the SQL that evaluates a rule set over a set of events (CTEs ev, ..., x, fired); '
'shared by the ingest code (the events are in the table) and cep.evaluate_rules (they are not).';

-- The rules section of a stream's ingest function. When a rule reads history: the statement's
-- keys locked in key order, before their history is read. Then one
-- statement assesses the events and writes the assessments, the alerts with their deliveries,
-- the z-score histories and the counters; everything that depends only on the set of fired
-- rules (scores, level, arrays, alert details) is computed once per distinct set. What is
-- rarely needed runs as a statement of its own, only when needed (its plan costs nothing
-- otherwise): the block action, the upkeep of the bucket series, the doorbell. A statement of
-- at most 8 events of keys dense in no bucket series is assessed by the small form (one scan
-- per event), larger ones by the arrays form (one read per key).
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
    v_combine text;
    v_level text;
    v_block text := '';
    v_alert_cond text;
    v_stateful boolean;
    v_windows boolean;
    v_series integer [];
    v_sid integer;
    v_tail text;
    v_last text;
    v_into text := '';
    v_vars text := '';
    v_dense text := '';
    v_split boolean;
    v_hot_cond text := '';
    v_main text;
    v_k text;
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

    -- Per-rule constants, in rule set order (literals of the generated code).
    SELECT coalesce(array_agg(v.name ORDER BY u.ord), '{}') AS names,
        coalesce(array_agg(v.risk_score::text::numeric ORDER BY u.ord), '{}') AS scores,
        coalesce(array_agg(v.mode = 'enforce' ORDER BY u.ord), '{}') AS enforce,
        -- each rule's entry in an alert's details
        coalesce(array_agg(jsonb_build_object('rule_id', u.rule_id, 'name', v.name, 'kind', v.kind,
            'score', v.risk_score::text::numeric::float8, 'version', u.version)
            ORDER BY u.ord), '{}') AS objs,
        coalesce(bool_or(n.kind IS NOT NULL), false) AS stateful
    INTO v_meta
    FROM unnest(rs.rule_ids, rs.versions) WITH ORDINALITY AS u (rule_id, version, ord)
    JOIN cep.rule_versions AS v ON v.rule_id = u.rule_id AND v.version = u.version
    LEFT JOIN LATERAL (SELECT n.kind FROM cep._rule_needs(v.condition) AS n LIMIT 1) AS n ON true;
    v_stateful := v_meta.stateful;
    v_windows := EXISTS (SELECT 1 FROM cep._rule_window_needs(rs.rule_set_id));
    SELECT coalesce(array_agg(f.series_id ORDER BY f.series_id), '{}') INTO v_series
    FROM cep._rule_set_series(rs.rule_set_id) AS f;
    v_k := CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I::text', s.key_column) END;

    v_combine := CASE p.combine
        WHEN 'sum' THEN 'sum(%1$s)'
        WHEN 'max' THEN 'max(%1$s)'
        ELSE '1 - cep._product(1 - %1$s)'
    END;
    v_combine := format(v_combine, format('(%L::jsonb -> (q.p - 1))::numeric', to_jsonb(v_meta.scores)));
    v_level := format(
        'CASE WHEN a.total >= %1$L::numeric THEN ''high'' WHEN a.total >= %2$L::numeric '
        'THEN ''medium'' ELSE ''low'' END',
        p.high::text::numeric, p.medium::text::numeric);
    v_alert_cond := CASE p.alert_level
        WHEN 'none' THEN 'false'
        WHEN 'low' THEN 'true'
        WHEN 'medium' THEN 'l.level IN (''medium'', ''high'')'
        ELSE 'l.level = ''high''' END || ' AND cardinality(a.rules) > 0';

    -- per bucket series: the keys that became dense in it (64 events within its window)
    FOREACH v_sid IN ARRAY v_series LOOP
        v_vars := v_vars || format(E'\n        %I text [];', 'v_rule_dense_' || v_sid);
        v_into := v_into || format(', %I', 'v_rule_dense_' || v_sid);
        v_dense := v_dense || format(E',\n        (SELECT array_agg(DISTINCT f.k) FROM fired AS f WHERE f.%I >= 64)',
            'd:' || v_sid);
        v_hot_cond := v_hot_cond || format(' OR %I IS NOT NULL', 'v_rule_dense_' || v_sid);
    END LOOP;

    IF v_stateful THEN
        v_lock := format($l$
    -- rules: lock the statement's keys in key order before reading their history (ON CONFLICT
    -- locks the row even when its WHERE leaves it unchanged; last_seen moves hourly at most)%4$s
    INSERT INTO cep.rule_keys AS kk (stream_id, k, last_seen)
    SELECT %1$s, e.k, max(e.t)
    FROM (SELECT %2$s AS k, %3$s AS t FROM cep_new_rows AS n) AS e
    GROUP BY e.k
    ORDER BY e.k
    ON CONFLICT (stream_id, k) DO UPDATE SET last_seen = EXCLUDED.last_seen
    WHERE kk.last_seen < EXCLUDED.last_seen - interval '1 hour'%5$s;
$l$,
            s.stream_id, v_k, cep._time_expr(s.stream_id),
            -- (a small statement: whether one of its keys is dense, in the same statement; the
            -- assessment is exact either way, the small form only slower for a dense key)
            CASE WHEN cardinality(v_series) = 0 OR NOT v_windows THEN ''
                ELSE E'\n    WITH u AS (' END,
            CASE WHEN cardinality(v_series) = 0 OR NOT v_windows THEN ''
                ELSE format(E'\n    )\n    SELECT CASE WHEN v_events <= 8 THEN EXISTS ('
                    'SELECT 1 FROM cep.rule_bucket_keys AS b WHERE b.series_id = ANY (%L::integer []) '
                    'AND b.k IN (SELECT %s FROM cep_new_rows AS n)) END INTO v_rule_hot',
                    v_series, v_k) END);
    END IF;

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
        -- the block action on the blocked events' rows (later statements read the new values)
        UPDATE %1$s AS n SET %2$s WHERE n.%3$I = ANY (v_rule_blocked);
    END IF;$b$,
            s.source, v_block, s.id_column);
    END IF;

    -- the statement after the assessment: what follows from it, once per distinct set of
    -- fired rules, and the writes
    v_tail := format($t$, fs AS (
        SELECT f.pos, count(*) AS n FROM fired AS f WHERE %2$s GROUP BY f.pos
    ), sets AS (
        -- what follows from a set of fired rules, once per distinct set (the rules' names,
        -- scores and entries are elements of jsonb arrays, reached directly: a subscript of an
        -- array of a variable-length type walks the array)
        SELECT z.pos, a.*, l.level, l.blocked,
            CASE WHEN l.blocked THEN 'critical' ELSE l.level END AS severity,
            a.total::float8 AS score,
            %3$s AS alert,
            l.level || ' risk ' || round(a.total::float8::numeric, 4) || ' for key ' AS mpre,
            ': ' || a.names AS msuf,
            pg_catalog.jsonb_build_object(
                'rules', a.objs, 'total_score', a.total::float8, 'level', l.level,
                'blocked', l.blocked, 'rule_set_id', %1$s, 'shadow_rules', a.srules) AS details
        FROM fs AS z
        CROSS JOIN LATERAL (
            SELECT coalesce(%4$s FILTER (WHERE (%5$L::boolean [])[q.p]), 0) AS total,
                coalesce(%4$s, 0) AS total_all,
                coalesce(array_agg((%6$L::bigint [])[q.p] ORDER BY q.p)
                    FILTER (WHERE (%5$L::boolean [])[q.p]), '{}') AS rules,
                coalesce(array_agg((%7$L::integer [])[q.p] ORDER BY q.p)
                    FILTER (WHERE (%5$L::boolean [])[q.p]), '{}') AS versions,
                coalesce(array_agg((%6$L::bigint [])[q.p] ORDER BY q.p)
                    FILTER (WHERE NOT (%5$L::boolean [])[q.p]), '{}') AS srules,
                coalesce(array_agg((%7$L::integer [])[q.p] ORDER BY q.p)
                    FILTER (WHERE NOT (%5$L::boolean [])[q.p]), '{}') AS sversions,
                coalesce(string_agg(%8$L::jsonb ->> (q.p - 1), ', ' ORDER BY q.p)
                    FILTER (WHERE (%5$L::boolean [])[q.p]), '') AS names,
                coalesce(jsonb_agg(%9$L::jsonb -> (q.p - 1) ORDER BY q.p)
                    FILTER (WHERE (%5$L::boolean [])[q.p]), '[]') AS objs
            FROM unnest(z.pos) AS q (p)
        ) AS a
        CROSS JOIN LATERAL (
            SELECT %10$s AS level, %11$s AS blocked
        ) AS l
    ), scored AS (
        SELECT f.id, f.k, f.t, c.*
        FROM fired AS f
        JOIN sets AS c ON c.pos = f.pos
        WHERE %2$s
    ), ins AS (
        INSERT INTO cep.risk_assessments (
            event_id, stream, partition_key, event_time, total_score, level, triggered_rules,
            rule_versions, shadow_rules, shadow_versions, shadow_score, blocked, rule_set_id
        )
        SELECT c.id, %12$L, c.k, c.t, c.score, c.level, c.rules, c.versions, c.srules,
            c.sversions, c.total_all::float8, c.blocked, %1$s
        FROM scored AS c
        ORDER BY c.t, c.id
    ), al AS (
        INSERT INTO cep.alerts (
            source_kind, source_name, stream, partition_key, event_id, severity, score, message,
            details
        )
        SELECT 'rule', %13$L, %12$L, c.k, c.id, c.severity, c.score,
            c.mpre || c.k || ', event ' || c.id || c.msuf, c.details
        FROM scored AS c
        WHERE c.alert
        ORDER BY c.t, c.id
        RETURNING alert_id
    ), delivery AS (
        -- a pending delivery of every alert to every consumer, as cep._raise_alerts does
        INSERT INTO cep.consumer_pending (consumer_id, alert_id)
        SELECT cs.consumer_id, al.alert_id FROM al CROSS JOIN cep.consumers AS cs
    ), lg AS (
        INSERT INTO cep.rule_log (stream_id, rule_set_id, events, hit_rules, hit_counts)
        SELECT %14$s, %1$s, v_events,
            coalesce(array_agg((%6$L::bigint [])[h.p] ORDER BY h.p), '{}'),
            coalesce(array_agg(h.n ORDER BY h.p), '{}')
        FROM (SELECT q.p, sum(z.n)::bigint AS n FROM fs AS z, unnest(z.pos) AS q (p) GROUP BY q.p) AS h
    )%15$s$t$,
        rs.rule_set_id,                                   -- 1
        CASE WHEN p.log_all THEN 'true' ELSE 'cardinality(f.pos) > 0' END,  -- 2
        v_alert_cond,                                     -- 3
        v_combine,                                        -- 4
        v_meta.enforce,                                   -- 5
        rs.rule_ids,                                      -- 6
        rs.versions,                                      -- 7
        to_jsonb(v_meta.names),                           -- 8
        to_jsonb(v_meta.objs),                            -- 9
        v_level,                                          -- 10
        CASE WHEN p.block_action IS NOT NULL
            THEN format('a.total >= %L::numeric AND cardinality(a.rules) > 0', p.block::text::numeric)
            ELSE 'false' END,                             -- 11
        s.name,                                           -- 12
        'risk_policy:' || s.name,                         -- 13
        s.stream_id,                                      -- 14
        v_hist);                                          -- 15
    -- its last statement: the first alert, the blocked events, the keys that became dense
    v_last := format(E'\n    SELECT min(al.alert_id)%s%s',
        CASE WHEN p.block_action IS NOT NULL
            THEN E',\n        (SELECT array_agg(c.id) FROM scored AS c WHERE c.blocked)' ELSE '' END,
        v_dense);
    v_into := CASE WHEN p.block_action IS NOT NULL THEN ', v_rule_blocked' ELSE '' END || v_into;

    -- (the general form also tells whether one of its events is of a dense key)
    v_main := cep._rule_assess_sql(rs.rule_set_id, 'cep_new_rows AS n') || v_tail || v_last
        || CASE WHEN cardinality(v_series) = 0 THEN '' ELSE format(E',\n        (SELECT bool_or(%s) FROM fired AS f)',
            (SELECT string_agg(format('f.%I IS NOT NULL', 'f:' || i), ' OR ' ORDER BY i)
                FROM unnest(v_series) AS i)) END
        || format(E'\n    INTO v_rule_alert%s%s\n    FROM al;', v_into,
            CASE WHEN cardinality(v_series) = 0 THEN '' ELSE ', v_rule_hot' END);
    -- (z-score histories grow in the writing statement, from every event: one statement then)
    v_split := v_windows AND NOT coalesce(p.log_all, false) AND v_hist = '';
    IF v_split THEN
        -- The small form (a few events, e.g. single-row INSERTs) in two statements: the first
        -- assesses and keeps the events that fired a rule in arrays, the second, only when
        -- one did, writes what follows. The writes' plan is large, and its executor start
        -- alone (every CTE and expression initialized) cost more than the rest of a one-row
        -- assessment; most events fire nothing. Without fired events, the rule log row only.
        v_main := format(E'IF v_events <= 8%s THEN\n    %s\n    IF v_rule_ids IS NULL THEN\n    %s\n    ELSE\n    %s\n    END IF;\n    ELSE\n    %s\n    END IF;',
            CASE WHEN cardinality(v_series) = 0 THEN '' ELSE ' AND NOT v_rule_hot' END,
            cep._rule_assess_sql(rs.rule_set_id, 'cep_new_rows AS n', true)
                || E'\n    SELECT array_agg(f.id) FILTER (WHERE cardinality(f.pos) > 0),'
                || E'\n        array_agg(f.k) FILTER (WHERE cardinality(f.pos) > 0),'
                || E'\n        array_agg(f.t) FILTER (WHERE cardinality(f.pos) > 0),'
                || E'\n        array_agg(f.pos::text) FILTER (WHERE cardinality(f.pos) > 0)'
                || v_dense
                -- (whether one of its keys is dense now, seen after the lock: its rows go into
                -- the buckets)
                || CASE WHEN cardinality(v_series) = 0 THEN '' ELSE format(
                    E',\n        EXISTS (SELECT 1 FROM cep.rule_bucket_keys AS b '
                    'WHERE b.series_id = ANY (%L::integer []) AND b.k IN (SELECT e.k FROM ev AS e))',
                    v_series) END
                || format(E'\n    INTO v_rule_ids, v_rule_ks, v_rule_ts, v_rule_pos%s%s\n    FROM fired AS f;',
                    (SELECT coalesce(string_agg(format(', %I', 'v_rule_dense_' || i), '' ORDER BY i), '')
                        FROM unnest(v_series) AS i),
                    CASE WHEN cardinality(v_series) = 0 THEN '' ELSE ', v_rule_hot' END),
            format('INSERT INTO cep.rule_log (stream_id, rule_set_id, events, hit_rules, hit_counts) '
                'VALUES (%s, %s, v_events, ''{}'', ''{}'');', s.stream_id, rs.rule_set_id),
            E'WITH fired AS (\n        SELECT u.id, u.k, u.t, u.pos::integer [] AS pos\n'
                || E'        FROM unnest(v_rule_ids, v_rule_ks, v_rule_ts, v_rule_pos) AS u (id, k, t, pos)\n    )'
                || v_tail
                || format(E'\n    SELECT min(al.alert_id)%s\n    INTO v_rule_alert%s\n    FROM al;',
                    CASE WHEN p.block_action IS NOT NULL
                        THEN E',\n        (SELECT array_agg(c.id) FROM scored AS c WHERE c.blocked)' ELSE '' END,
                    CASE WHEN p.block_action IS NOT NULL THEN ', v_rule_blocked' ELSE '' END),
            v_main);
    ELSIF v_windows THEN
        v_main := format(E'IF v_events <= 8%s THEN\n    %s\n    ELSE\n    %s\n    END IF;',
            CASE WHEN cardinality(v_series) = 0 THEN '' ELSE ' AND NOT v_rule_hot' END,
            cep._rule_assess_sql(rs.rule_set_id, 'cep_new_rows AS n', true) || v_tail || v_last
                -- (whether one of its keys is dense now, seen after the lock: its rows go into
                -- the buckets)
                || CASE WHEN cardinality(v_series) = 0 THEN '' ELSE format(
                    E',\n        EXISTS (SELECT 1 FROM cep.rule_bucket_keys AS b '
                    'WHERE b.series_id = ANY (%L::integer []) AND b.k IN (SELECT e.k FROM ev AS e))',
                    v_series) END
                || format(E'\n    INTO v_rule_alert%s%s\n    FROM al;', v_into,
                    CASE WHEN cardinality(v_series) = 0 THEN '' ELSE ', v_rule_hot' END),
            v_main);
    END IF;

    RETURN format($r$
    -- rules: rule set %1$s (rules %2$s, versions %3$s)
    DECLARE
        v_rule_alert bigint;%4$s
    BEGIN%5$s
    -- rules: assess the statement's events, write what follows from it
    %6$s%7$s%8$s
    IF v_rule_alert IS NOT NULL THEN
        -- the stream's doorbell (cep._raise_alerts rings it the same way)
        PERFORM cep._ring_doorbell(x.notify_channel, v_rule_alert)
        FROM cep.streams AS x
        WHERE x.stream_id = %9$s AND x.notify;
    END IF;
    END;
$r$,
        rs.rule_set_id,                                   -- 1
        array_to_string(rs.rule_ids, ','),                -- 2
        array_to_string(rs.versions, ','),                -- 3
        CASE WHEN p.block_action IS NOT NULL THEN E'\n        v_rule_blocked bigint [];' ELSE '' END
            || CASE WHEN v_split
                THEN E'\n        v_rule_ids bigint [];\n        v_rule_ks text [];'
                    || E'\n        v_rule_ts timestamptz [];\n        v_rule_pos text [];'
                ELSE '' END
            || CASE WHEN cardinality(v_series) > 0
                THEN E'\n        v_rule_hot boolean := false;' ELSE '' END
            || v_vars,                                    -- 4
        v_lock,                                           -- 5
        v_main,                                           -- 6
        v_block,                                          -- 7
        CASE WHEN cardinality(v_series) = 0 THEN '' ELSE format($k$
    IF v_rule_hot%1$s THEN
        -- rules: keep the bucket series (the statement's rows of dense keys, keys that became
        -- dense)
        %2$s
    END IF;$k$, v_hot_cond, cep._rule_bucket_sql(rs.rule_set_id)) END,  -- 8
        s.stream_id);                                     -- 9
END
$fn$;

COMMENT ON FUNCTION cep._rule_section(integer) IS
'Internal: the rules section of a stream''s ingest function: key locks, one statement with the '
'assessment, risk_assessments rows, alerts and deliveries, history updates and counters, and '
'when needed the block action and the upkeep of bucket series.';

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

-- The value a bucket series aggregates, over the column COL (SQL; NULL for field ''): 1 per
-- row for field '', the exact numeric value of a numeric field, and 1 per non-NULL value of any
-- other field.
CREATE FUNCTION cep._rule_bucket_value(source regclass, field name, col text)
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
        RETURN cep._rule_num(source, field, col);
    END IF;
    RETURN format('CASE WHEN %s IS NULL THEN NULL ELSE 1::pg_catalog.numeric END', col);
END
$fn$;

COMMENT ON FUNCTION cep._rule_bucket_value(regclass, name, text) IS
'Internal: SQL of the value a bucket series of FIELD aggregates over the column COL.';

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

-- The statement of the rules section that keeps a rule set's bucket series, run when the
-- statement has events of keys dense in a series (their rows go into its buckets) or keys that
-- became dense (64 events within the series' window at one of their events, found by the
-- assessment: arrays v_rule_dense_<series>); those get a floor inside that window and their
-- buckets from it, built from the stored rows (the statement's included).
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
    v_kcast text;
    v_last integer;
    v_main text;
BEGIN
    SELECT * INTO STRICT rs FROM cep.rule_sets AS r WHERE r.rule_set_id = _rule_bucket_sql.rule_set_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = rs.stream_id;
    v_k := cep._stream_key_sql(s, 'n');
    v_kcast := CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s.%I = h.k::%s', s.key_column,
        (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = s.source AND a.attname = s.key_column)) END;
    FOR v_series IN SELECT * FROM cep._rule_set_series(rs.rule_set_id) LOOP
        IF v_main IS NOT NULL THEN
            v_sql := v_sql || format(E', bb%s AS (\n        %s\n    )', v_last, v_main);
        END IF;
        v_sql := v_sql || CASE WHEN v_sql = '' THEN 'WITH ' ELSE E', ' END || format($b$bu%1$s AS (
        -- bucket series %1$s (%2$L, width %3$s): the statement's rows of keys dense before it
        INSERT INTO cep.rule_buckets AS o (series_id, k, b, n, s, mn, mx)
        SELECT %1$s, y.k, y.b, count(y.v), sum(y.v), min(y.v), max(y.v)
        FROM (
            SELECT %4$s AS k, pg_catalog.date_bin(%3$L::interval, %5$s, '2000-01-01 00:00:00+00') AS b,
                %6$s AS v
            FROM cep_new_rows AS n
        ) AS y
        JOIN cep.rule_bucket_keys AS kf ON kf.series_id = %1$s AND kf.k = y.k AND y.b >= kf.floor
        GROUP BY y.k, y.b
        ORDER BY y.k, y.b
        ON CONFLICT (series_id, k, b) DO UPDATE
        SET n = o.n + EXCLUDED.n,
            s = CASE WHEN o.s IS NULL THEN EXCLUDED.s WHEN EXCLUDED.s IS NULL THEN o.s
                ELSE o.s + EXCLUDED.s END,
            mn = least(o.mn, EXCLUDED.mn),
            mx = greatest(o.mx, EXCLUDED.mx)
    ), bn%1$s AS (
        -- bucket series %1$s: keys that became dense
        INSERT INTO cep.rule_bucket_keys AS kk (series_id, k, floor)
        SELECT %1$s, c.k,
            pg_catalog.date_bin(%3$L::interval, c.t - 32 * %3$L::interval, '2000-01-01 00:00:00+00')
            + %3$L::interval
        FROM (SELECT %4$s AS k, max(%5$s) AS t FROM cep_new_rows AS n GROUP BY 1) AS c
        WHERE c.k = ANY (%7$I)
        ORDER BY c.k
        ON CONFLICT (series_id, k) DO NOTHING
        RETURNING kk.k, kk.floor
    )$b$,
            v_series.series_id, v_series.field, v_series.width,
            v_k, cep._time_expr(s.stream_id),
            cep._rule_bucket_value(s.source, v_series.field,
                CASE WHEN v_series.field = '' THEN NULL ELSE format('n.%I', v_series.field) END),
            'v_rule_dense_' || v_series.series_id);
        -- bucket series: the buckets of the keys that became dense, from the stored rows (the
        -- statement's included)
        v_last := v_series.series_id;
        v_main := format($m$INSERT INTO cep.rule_buckets AS o (series_id, k, b, n, s, mn, mx)
        SELECT %1$s, h.k, pg_catalog.date_bin(%3$L::interval, %8$s, '2000-01-01 00:00:00+00'),
            count(%9$s), sum(%9$s), min(%9$s), max(%9$s)
        FROM bn%1$s AS h
        JOIN %10$s AS s ON %11$s AND s.%12$I >= %13$s%14$s
        GROUP BY 2, 3
        ORDER BY 2, 3
        ON CONFLICT (series_id, k, b) DO UPDATE
        SET n = EXCLUDED.n, s = EXCLUDED.s, mn = EXCLUDED.mn, mx = EXCLUDED.mx$m$,
            v_series.series_id, NULL, v_series.width, NULL, NULL, NULL, NULL,
            cep._stream_time_sql(s, 's'),
            cep._rule_bucket_value(s.source, v_series.field,
                CASE WHEN v_series.field = '' THEN NULL ELSE format('s.%I', v_series.field) END),
            s.source,
            v_kcast,
            s.time_column,
            cep._stream_raw_time_sql(s, 'h.floor'),
            cep._processed_sql(s, 's'));
    END LOOP;
    IF v_main IS NULL THEN
        RETURN '';
    END IF;
    -- (the statement itself is the buckets' insert of the last series; the rest its CTEs)
    RETURN v_sql || E'\n    ' || v_main || ';';
END
$fn$;

COMMENT ON FUNCTION cep._rule_bucket_sql(integer) IS
'Internal: the statement of the rules section that keeps the bucket series of its rule set.';
