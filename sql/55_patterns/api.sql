-- Patterns API: cep.create_pattern, cep.create_absence, cep.drop_pattern, cep.find_matches,
-- and the pattern section of a stream's ingest function.

CREATE FUNCTION cep._pattern_prepare_stream(s cep.streams, absence boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_cols name [];
BEGIN
    -- Matchers read a key's events from where its runs stand: an index led by (key, time).
    -- Absence detectors (and keyless streams) read the events between two watermarks: an
    -- index led by the time column. (find_matches reads a time range: a scan, or this index.)
    v_cols := CASE WHEN absence OR s.key_column IS NULL THEN ARRAY[s.time_column]
        ELSE ARRAY[s.key_column, s.time_column] END;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = s.source AND i.indpred IS NULL AND i.indexprs IS NULL
            AND i.indnkeyatts >= cardinality(v_cols)
            AND (
                SELECT bool_and(i.indkey[c.n - 1] = a.attnum)
                FROM unnest(v_cols) WITH ORDINALITY AS c (col, n)
                INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = s.source AND c.col = a.attname
            )
    ) THEN
        RAISE NOTICE 'pg_cep: creating an index on %(%) for %', s.source,
            array_to_string(v_cols, ', '), CASE WHEN absence THEN 'absence detectors' ELSE 'patterns' END;
        EXECUTE format('CREATE INDEX ON %s (%s)', s.source,
            (SELECT string_agg(format('%I', c), ', ' ORDER BY n) FROM unnest(v_cols) WITH ORDINALITY AS u (c, n)));
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._pattern_prepare_stream(cep.streams, boolean) IS
'Internal: make sure a stream''s table has the index its patterns (led by key and time) or '
'absence detectors (led by time) read through.';

-- Create (or replace) a pattern's generated matcher function.
CREATE FUNCTION cep._pattern_install(pattern_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_fn name := format('_pattern_%s', pattern_id);
    v_ddl text;
    v_guard text;
BEGIN
    -- The matcher names the stream's table: after a rename it has the stream's code rebuilt
    -- (itself included, see cep._stream_renamed) and hands the call to the rebuilt one.
    SELECT format($g$
    IF %s::pg_catalog.oid::pg_catalog.regclass::text <> %L THEN
        PERFORM cep._stream_renamed(%s, NULL);
        RETURN QUERY EXECUTE %L USING p_from, p_to, p_eoi, p_find, p_own, p_keys, p_lo, p_nx,
            p_optimistic;
        RETURN;
    END IF;$g$, s.source::oid, s.source::text, s.stream_id,
        format('SELECT * FROM cep.%I($1, $2, $3, $4, $5, $6, $7, $8, $9)', v_fn))
    INTO STRICT v_guard
    FROM cep.patterns AS p JOIN cep.streams AS s ON p.stream_id = s.stream_id
    WHERE p.pattern_id = _pattern_install.pattern_id;
    -- force_custom_plan: the best plans of the matcher's statements depend on the batch
    -- (generic plans would scan every key's state)
    v_ddl := format(
        'CREATE OR REPLACE FUNCTION cep.%I(p_from timestamptz, p_to timestamptz, p_eoi boolean, '
        'p_find boolean, p_own bigint [], p_keys text [], p_lo timestamptz [], p_nx timestamptz [], '
        'p_optimistic boolean DEFAULT false) '
        'RETURNS TABLE (partition_key text, first_time timestamptz, '
        'last_time timestamptz, event_ids bigint [], classifiers text []) LANGUAGE plpgsql '
        'SET search_path = pg_catalog, pg_temp SET TimeZone = ''UTC'' SET jit = off '
        'SET plan_cache_mode = force_custom_plan AS %L',
        v_fn, cep._with_guard(cep._pattern_function_sql(pattern_id), v_guard));
    BEGIN
        EXECUTE v_ddl;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        -- inside ALTER EXTENSION UPDATE (see cep._regenerate_stream)
        EXECUTE format('ALTER EXTENSION pg_cep ADD FUNCTION cep.%I(timestamptz, timestamptz, '
            'boolean, boolean, bigint [], text [], timestamptz [], timestamptz [], boolean)', v_fn);
        EXECUTE v_ddl;
        EXECUTE format('ALTER EXTENSION pg_cep DROP FUNCTION cep.%I(timestamptz, timestamptz, '
            'boolean, boolean, bigint [], text [], timestamptz [], timestamptz [], boolean)', v_fn);
    END;
    EXECUTE format('REVOKE ALL ON FUNCTION cep.%I(timestamptz, timestamptz, boolean, boolean, '
        'bigint [], text [], timestamptz [], timestamptz [], boolean) FROM PUBLIC', v_fn);
    EXECUTE format('COMMENT ON FUNCTION cep.%I(timestamptz, timestamptz, boolean, boolean, '
        'bigint [], text [], timestamptz [], timestamptz [], boolean) IS %L', v_fn, format('Generated matcher of pg_cep pattern %s.', pattern_id));
    PERFORM cep._tie_to_extension(format('cep.%I(timestamptz, timestamptz, boolean, boolean, '
        'bigint [], text [], timestamptz [], timestamptz [], boolean)', v_fn)::regprocedure);
    UPDATE cep.patterns AS p SET matcher = v_fn WHERE p.pattern_id = _pattern_install.pattern_id;
END
$fn$;

COMMENT ON FUNCTION cep._pattern_install(integer) IS
'Internal: (re)create the generated matcher function of a pattern.';

-- Advance a stream's patterns and absence detectors from watermark p_from to p_to.
CREATE FUNCTION cep._patterns_advance(
    stream_id integer, p_from timestamptz, p_to timestamptz, p_own bigint[],
    p_keys text[] DEFAULT NULL, p_lo timestamptz[] DEFAULT NULL, p_nx timestamptz[] DEFAULT NULL,
    p_rel bigint[] DEFAULT NULL, p_rel_ids integer[] DEFAULT NULL, skip_busy boolean DEFAULT FALSE
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    s cep.streams;
    v_eoi boolean := p_to = 'infinity';
    v_drafts cep.alert_draft [];
    v_bit integer;
    v_keys text [];
    v_lo timestamptz [];
    v_nx timestamptz [];
    v_due record;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _patterns_advance.stream_id;
    IF p_keys IS NULL THEN
        -- Lazy patterns: the keys whose first event that can end a match the watermark reaches
        -- (or whose match found waits for a decision), whose runs time out, or (end of input)
        -- that have any state, locked FOR UPDATE in one pass in key order; then each pattern
        -- matches its keys. (A writer's statement runs its lazy patterns itself, see
        -- cep._pattern_section.)
        SELECT array_agg(DISTINCT d.k ORDER BY d.k) INTO v_keys
        FROM cep.patterns AS x
        CROSS JOIN LATERAL (
            SELECT ps.k FROM cep.pattern_state AS ps
            WHERE ps.pattern_id = x.pattern_id AND ps.pending_t <= p_to
            UNION ALL
            SELECT ps.k FROM cep.pattern_state AS ps
            WHERE ps.pattern_id = x.pattern_id AND ps.active AND (v_eoi OR ps.deadline < p_to)
        ) AS d
        WHERE x.stream_id = s.stream_id AND x.engine = 'lazy';
        -- (cep.run_maintenance, skip_busy: the matchers match the keys without their locks
        -- and keep the results of those they can lock at the end, see p_optimistic)
        IF v_keys IS NOT NULL AND NOT skip_busy THEN
            PERFORM cep._pattern_lock_keys(s.stream_id, v_keys,
                array_fill(true, ARRAY[cardinality(v_keys)]), NULL,
                CASE WHEN isfinite(p_from) THEN p_from ELSE now() END);
        END IF;
        IF v_keys IS NOT NULL THEN
            FOR v_due IN
                SELECT x.matcher, array_agg(DISTINCT d.k ORDER BY d.k) AS keys
                FROM cep.patterns AS x
                CROSS JOIN LATERAL (
                    SELECT ps.k FROM cep.pattern_state AS ps
                    WHERE ps.pattern_id = x.pattern_id AND ps.pending_t <= p_to
                    UNION ALL
                    SELECT ps.k FROM cep.pattern_state AS ps
                    WHERE ps.pattern_id = x.pattern_id AND ps.active AND (v_eoi OR ps.deadline < p_to)
                ) AS d
                WHERE x.stream_id = s.stream_id AND x.engine = 'lazy'
                    AND d.k IN (SELECT u.k FROM unnest(v_keys) AS u (k))
                GROUP BY x.pattern_id, x.matcher
                ORDER BY x.pattern_id
            LOOP
                EXECUTE format('SELECT count(*) FROM cep.%I($1, $2, $3, false, NULL, $4, NULL, NULL, $5)',
                    v_due.matcher)
                USING p_from, p_to, v_eoi, v_due.keys, skip_busy;
            END LOOP;
        END IF;
    END IF;
    FOR p IN SELECT x.* FROM cep.patterns AS x WHERE x.stream_id = s.stream_id ORDER BY x.pattern_id LOOP
        CONTINUE WHEN p.engine = 'lazy';
        IF p.kind = 'pattern' THEN
            v_keys := p_keys;
            v_lo := p_lo;
            v_nx := p_nx;
            -- a writer's keys that brought events this pattern can use (bit v_bit of p_rel;
            -- a pattern without a bit takes every key)
            v_bit := array_position(p_rel_ids, p.pattern_id) - 1;
            IF p_keys IS NOT NULL AND v_bit IS NOT NULL THEN
                SELECT coalesce(array_agg(u.k ORDER BY u.o), '{}'), array_agg(u.lo ORDER BY u.o),
                    array_agg(u.nx ORDER BY u.o)
                INTO v_keys, v_lo, v_nx
                FROM unnest(p_keys, p_lo, p_nx, p_rel) WITH ORDINALITY AS u (k, lo, nx, rel, o)
                WHERE (u.rel >> v_bit) & 1 = 1;
                CONTINUE WHEN cardinality(v_keys) = 0;
            END IF;
            EXECUTE format('SELECT count(*) FROM cep.%I($1, $2, $3, false, $4, $5, $6, $7)', p.matcher)
            USING p_from, p_to, v_eoi, p_own, v_keys, v_lo, v_nx;
        ELSE
            -- absence: starts whose deadline the watermark passed, with no expected event of
            -- the key after them within the interval (late events do not count)
            EXECUTE format($q$
                WITH due AS (
                    DELETE FROM cep.absence_pending AS a
                    WHERE (a.pattern_id, a.event_id) IN (
                        SELECT x.pattern_id, x.event_id FROM cep.absence_pending AS x
                        WHERE x.pattern_id = %1$s AND (x.deadline < $1 OR $2)
                        FOR UPDATE%9$s
                    )
                    RETURNING a.*
                ), missed AS (
                    SELECT d.* FROM due AS d
                    WHERE NOT EXISTS (
                        SELECT 1 FROM (%2$s) AS e
                        WHERE %3$s AND (e.t, e.id) > (d.start_time, d.event_id) AND e.t <= d.deadline
                            AND %4$s
                            AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l
                                WHERE l.stream_id = %5$s AND l.event_id = e.id)
                    )
                ), ins AS (
                    INSERT INTO cep.matches (pattern, pattern_id, stream, partition_key, first_time,
                        last_time, event_ids, classifiers, last_event_id)
                    SELECT %6$L, %1$s, %7$L, m.k, m.start_time, m.start_time, ARRAY[m.event_id],
                        ARRAY['start'], m.event_id
                    FROM missed AS m
                    ORDER BY m.k, m.start_time, m.event_id
                    RETURNING *
                )
                SELECT array_agg(ROW('absence', %6$L, %7$L, i.partition_key, i.last_event_id, 'high',
                    NULL, pg_catalog.format('%%s: no expected event for key %%s within %%s of event %%s',
                        %6$L, i.partition_key, %8$L, i.last_event_id),
                    pg_catalog.jsonb_build_object('event_ids', i.event_ids, 'start_time', i.first_time,
                        'deadline', i.first_time + %8$L::interval))::cep.alert_draft ORDER BY i.match_id)
                FROM ins AS i$q$,
                p.pattern_id,
                cep._absence_rows_sql(s, p),
                cep._absence_follow_sql(s, 'd.k', 'd.start_time', 'd.deadline')
                || cep._processed_sql(s, 'e', 'id'),
                (SELECT d.sql FROM cep._pat_define_sql(p.expected_condition, s.source, '{}', 'expected') AS d),
                s.stream_id, p.name, s.name, p.within,
                -- a writer skips starts another transaction is firing (never waits for it)
                CASE WHEN p_own IS NOT NULL THEN ' SKIP LOCKED' ELSE '' END)
            INTO v_drafts USING p_to, v_eoi;
            IF v_drafts IS NOT NULL THEN
                INSERT INTO cep.pattern_log (pattern_id, matches, last_match)
                VALUES (p.pattern_id, cardinality(v_drafts),
                    (SELECT max((d.details ->> 'start_time')::timestamptz) FROM unnest(v_drafts) AS d));
                PERFORM cep._raise_alerts(s.stream_id, v_drafts);
            END IF;
        END IF;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._patterns_advance(
    integer, timestamptz, timestamptz, bigint[], text[], timestamptz[], timestamptz[], bigint[],
    integer[], boolean
) IS
'Internal: run a stream''s pattern matchers over the events the watermark reached and fire '
'the absence detectors whose deadline it passed (skip_busy: lazy patterns leave the keys '
'another session holds).';

-- The condition on rows e that a later event of key KEY between START and DEADLINE (UTC
-- times) meets, written so that the (key, time) index serves it.
CREATE FUNCTION cep._absence_follow_sql(s cep.streams, key text, start text, deadline text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN s.key_column IS NULL THEN 'true'
            ELSE format('e.kraw = (%s)::%s', key, format_type(a.atttypid, NULL)) END
        || format(' AND e.traw >= %s AND e.traw <= %s',
            cep._stream_raw_time_sql(s, start), cep._stream_raw_time_sql(s, deadline))
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = s.source AND a.attname = coalesce(s.key_column, s.time_column)
$fn$;

COMMENT ON FUNCTION cep._absence_follow_sql(cep.streams, text, text, text) IS
'Internal: index-friendly condition for "an event of this key between these times".';

-- The stream's rows as e(k, t, id, "c:col"...) for absence conditions.
CREATE FUNCTION cep._absence_rows_sql(s cep.streams, p cep.patterns)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('SELECT %s AS k, %s AS kraw, s.%I AS traw, %s AS t, s.%I::bigint AS id%s FROM %s AS s',
        cep._stream_key_sql(s, 's'),
        CASE WHEN s.key_column IS NULL THEN 'NULL::text' ELSE format('s.%I', s.key_column) END,
        s.time_column,
        cep._stream_time_sql(s, 's'),
        s.id_column,
        (SELECT coalesce(string_agg(format(', s.%I AS %I', a.attname, 'c:' || a.attname), ''
            ORDER BY a.attnum), '')
         FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = s.source AND a.attnum > 0 AND NOT a.attisdropped),
        s.source)
    WHERE p.pattern_id IS NOT NULL
$fn$;

COMMENT ON FUNCTION cep._absence_rows_sql(cep.streams, cep.patterns) IS
'Internal: a stream''s rows with key (as text and raw), time (UTC and raw), id and every '
'column as "c:<column>".';

-- The pattern section of a stream's ingest function.
CREATE FUNCTION cep._pattern_section(stream_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    p cep.patterns;
    v_names text;
    v_absence text := '';
    v_rows text;
    v_rel text;
    v_ids integer [] := '{}'::integer [];
    v_bits text [] := '{}'::text [];
    v_eager boolean := false;
    v_lz_rel text [] := '{}'::text [];
    v_lz_proc text [] := '{}'::text [];
    v_lz_decl text := '';
    v_lz_cols text := '';
    v_lz_arrays text := '';
    v_lz_into text := '';
    v_lz_calls text := '';
    v_lz_names text;
    v_lazy boolean;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _pattern_section.stream_id;
    SELECT string_agg(x.name, ', ' ORDER BY x.pattern_id),
        string_agg(x.name, ', ' ORDER BY x.pattern_id) FILTER (WHERE x.engine = 'lazy')
    INTO v_names, v_lz_names
    FROM cep.patterns AS x WHERE x.stream_id = s.stream_id;
    IF v_names IS NULL THEN
        RETURN '';
    END IF;
    FOR p IN SELECT x.* FROM cep.patterns AS x WHERE x.stream_id = s.stream_id ORDER BY x.pattern_id LOOP
        IF p.kind = 'absence' THEN
            v_eager := true;
            v_absence := v_absence || format($a$
    INSERT INTO cep.absence_pending (pattern_id, k, event_id, start_time, deadline)
    SELECT %1$s, e.k, e.id, e.t, e.t + %2$L::interval
    FROM (%3$s) AS e
    WHERE e.t >= v_watermark AND %4$s
    ON CONFLICT DO NOTHING;
$a$,
                p.pattern_id, p.within,
                -- (the rows SQL ends with its FROM clause: only that is swapped)
                left(cep._absence_rows_sql(s, p), -length(format(' FROM %s AS s', s.source)))
                    || ' FROM cep_new_rows AS s',
                (SELECT d.sql FROM cep._pat_define_sql(p.start_condition, s.source, '{}', 'start') AS d));
            CONTINUE;
        END IF;
        v_rel := cep._pattern_relevance_sql(p.pattern_id);
        IF p.engine = 'eager' THEN
            v_eager := true;
            -- eager patterns that some events cannot matter to (relaxed contiguity): a bit each
            IF v_rel IS NOT NULL AND cardinality(v_ids) < 63 THEN
                v_bits := v_bits || format('CASE WHEN %s THEN %s::bigint ELSE 0 END', v_rel,
                    1::bigint << cardinality(v_ids));
                v_ids := v_ids || p.pattern_id;
            END IF;
            CONTINUE;
        END IF;
        -- lazy: whether an event can matter to it (every event unless relaxed contiguity and
        -- conditions over the event alone say otherwise); per key, the first event that can
        -- end a match that the new watermark reaches (the key is matched now) and the first
        -- one it does not reach yet
        v_lz_rel := v_lz_rel || CASE WHEN v_rel IS NULL THEN 'true' ELSE format('(%s)', v_rel) END;
        v_lz_proc := v_lz_proc || format('b.lo_%s IS NOT NULL', p.pattern_id);
        v_lz_decl := v_lz_decl || format(
            E'\n            l_k_%1$s text [];\n            l_lo_%1$s timestamptz [];'
            || E'\n            l_nx_%1$s timestamptz [];\n            l_m_%1$s boolean;',
            p.pattern_id);
        v_lz_cols := v_lz_cols || format(
            E',\n                    min(e.t) FILTER (WHERE e.t <= p_to AND (%1$s)) AS lo_%2$s,'
            || E'\n                    min(e.t) FILTER (WHERE e.t > p_to AND (%1$s)) AS nx_%2$s',
            cep._pattern_final_sql(p.pattern_id), p.pattern_id);
        v_lz_arrays := v_lz_arrays || format(
            E',\n                array_agg(b.k) FILTER (WHERE b.lo_%1$s IS NOT NULL OR b.nx_%1$s IS NOT NULL),'
            || E'\n                array_agg(b.lo_%1$s) FILTER (WHERE b.lo_%1$s IS NOT NULL OR b.nx_%1$s IS NOT NULL),'
            || E'\n                array_agg(b.nx_%1$s) FILTER (WHERE b.lo_%1$s IS NOT NULL OR b.nx_%1$s IS NOT NULL),'
            || E'\n                coalesce(bool_or(b.lo_%1$s IS NOT NULL), false)',
            p.pattern_id);
        v_lz_into := v_lz_into || format(', l_k_%1$s, l_lo_%1$s, l_nx_%1$s, l_m_%1$s', p.pattern_id);
        -- the pattern's matcher, given its keys with an event that can end a match (every key
        -- of the statement when some may have late events)
        v_lz_calls := v_lz_calls || format($c$
                IF l_k_%2$s IS NOT NULL THEN
                    -- its events that can end a match and wait for the watermark: the key
                    -- remembers the first (pending_t), and is matched once the watermark
                    -- reaches it (cep.run_maintenance, cep.advance_watermark or the key's
                    -- next such event)
                    INSERT INTO cep.pattern_state AS ps (pattern_id, k, pending_t)
                    SELECT %2$s, u.k, u.nx FROM unnest(l_k_%2$s, l_lo_%2$s, l_nx_%2$s) AS u (k, lo, nx)
                    WHERE u.lo IS NULL AND u.nx IS NOT NULL
                    ORDER BY u.k
                    ON CONFLICT (pattern_id, k) DO UPDATE SET pending_t = excluded.pending_t
                    WHERE ps.pending_t IS NULL OR excluded.pending_t < ps.pending_t;
                END IF;
                IF l_m_%2$s OR cardinality(l_own) > 0 THEN
                    IF cardinality(l_own) > 0 THEN
                        SELECT array_agg(u.k ORDER BY u.k), array_agg(x.lo ORDER BY u.k),
                            array_agg(x.nx ORDER BY u.k)
                        INTO l_k_%2$s, l_lo_%2$s, l_nx_%2$s
                        FROM unnest(l_keys) AS u (k)
                        LEFT JOIN unnest(l_k_%2$s, l_lo_%2$s, l_nx_%2$s) AS x (k, lo, nx) ON x.k = u.k;
                    END IF;
                    -- the keys it matches now (its events that can end a match and that the
                    -- watermark reaches), and late events
                    PERFORM count(*) FROM cep.%1$I(v_watermark, p_to, false, false, l_own,
                        l_k_%2$s, l_lo_%2$s, l_nx_%2$s);
                END IF;$c$,
            format('_pattern_%s', p.pattern_id), p.pattern_id);
    END LOOP;
    -- the statement's rows with the key, the time and every column as "c:<column>"
    v_rows := format('(SELECT %s AS k, %s AS t%s FROM cep_new_rows AS n)',
        CASE WHEN s.key_column IS NULL THEN '''''::text' ELSE format('n.%I::text', s.key_column) END,
        cep._time_expr(s.stream_id),
        (SELECT coalesce(string_agg(format(', n.%I AS %I', a.attname, 'c:' || a.attname), ''
            ORDER BY a.attnum), '')
         FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = s.source AND a.attnum > 0 AND NOT a.attisdropped));
    v_lazy := cardinality(v_lz_rel) > 0;
    RETURN format($p$
    -- patterns and absence detectors (%1$s): register absence starts, then advance every
    -- matcher over the events the watermark now reaches
%2$s    IF v_events > v_late THEN
        DECLARE
            p_to timestamptz := greatest(v_watermark, v_max - %3$L::interval);%4$s
        BEGIN
            -- per key of the on-time events: %5$s
            SELECT %6$s
            INTO %7$s
            FROM (
                SELECT e.k%8$s
                FROM %9$s AS e
                WHERE e.t >= v_watermark%11$s
                GROUP BY e.k
            ) AS b;%10$s
        END;
    END IF;
$p$,
        v_names,
        v_absence,
        s.allowed_lateness,
        CASE WHEN v_eager THEN '
            p_keys text [];
            p_lo timestamptz [];
            p_nx timestamptz [];
            p_rel bigint [];' ELSE '' END
        || CASE WHEN v_lazy THEN '
            l_keys text [];
            l_proc boolean [];
            l_mn timestamptz [];
            l_own bigint [] := ''{}''::bigint [];' || v_lz_decl ELSE '' END,
        concat_ws(E';\n            -- ',
            CASE WHEN v_eager THEN 'the first one the new watermark reaches, the first one it '
                || E'does not\n            -- reach yet, and the eager patterns (bits, see p_rel_ids of '
                || E'cep._patterns_advance)\n            -- some of them can matter to' END,
            CASE WHEN v_lazy THEN 'whether some lazy pattern can use one of them (lz) and the '
                || E'first such\n            -- event (mn)' END),
        concat_ws(E',\n                ',
            CASE WHEN v_eager THEN 'array_agg(b.k ORDER BY b.k), array_agg(b.lo ORDER BY b.k), '
                || E'\n                array_agg(b.nx ORDER BY b.k), array_agg(b.rel ORDER BY b.k)' END,
            -- (the lazy arrays in the order of the rows; they are sorted where it matters)
            CASE WHEN v_lazy THEN format('array_agg(b.k) FILTER (WHERE b.lz),'
                || E'\n                array_agg(%s) FILTER (WHERE b.lz),'
                || E'\n                array_agg(b.mn) FILTER (WHERE b.lz)%s',
                array_to_string(v_lz_proc, ' OR '), v_lz_arrays) END),
        concat_ws(', ',
            CASE WHEN v_eager THEN 'p_keys, p_lo, p_nx, p_rel' END,
            CASE WHEN v_lazy THEN 'l_keys, l_proc, l_mn' || v_lz_into END),
        CASE WHEN v_eager THEN format(E',\n                    min(e.t) FILTER (WHERE e.t <= p_to) AS lo,'
            || E'\n                    min(e.t) FILTER (WHERE e.t > p_to) AS nx,'
            || E'\n                    %s AS rel',
            CASE WHEN cardinality(v_bits) = 0 THEN 'NULL::bigint'
                ELSE format(E'bit_or(\n                        %s)',
                    array_to_string(v_bits, E'\n                        | ')) END) ELSE '' END
        || CASE WHEN v_lazy AND v_eager THEN format(E',\n                    bool_or(%1$s) AS lz,'
            || E'\n                    min(e.t) FILTER (WHERE %1$s) AS mn%2$s',
            array_to_string(v_lz_rel, ' OR '), v_lz_cols)
            -- only lazy patterns: only the events they can use
            WHEN v_lazy THEN format(E',\n                    true AS lz,\n                    min(e.t) AS mn%s',
                v_lz_cols) ELSE '' END,
        v_rows,
        CASE WHEN v_lazy THEN format($l$
            IF l_keys IS NOT NULL THEN
                -- lazy patterns (%1$s): the keys' rows of cep.pattern_keys, FOR UPDATE where
                -- one of them matches the key now, FOR KEY SHARE elsewhere; this statement's
                -- events are looked at for lateness only when a session matched some key past
                -- one of them while this one waited
                IF cep._pattern_lock_keys(%2$s, l_keys, l_proc, l_mn, v_max) THEN
                    l_own := ARRAY(SELECT n.%3$I::bigint FROM cep_new_rows AS n);
                END IF;%4$s
            END IF;$l$, v_lz_names, s.stream_id, s.id_column, v_lz_calls) ELSE '' END
        || CASE WHEN v_eager THEN format($e$
            PERFORM cep._patterns_advance(%s, v_watermark, p_to,
                ARRAY(SELECT n.%I::bigint FROM cep_new_rows AS n), p_keys, p_lo, p_nx, p_rel,
                %L::integer []);$e$, s.stream_id, s.id_column, v_ids::text) ELSE '' END,
        CASE WHEN v_lazy AND NOT v_eager AND NOT 'true' = ANY (v_lz_rel)
            THEN format(' AND (%s)', array_to_string(v_lz_rel, ' OR ')) ELSE '' END);
END
$fn$;

COMMENT ON FUNCTION cep._pattern_section(integer) IS
'Internal: the patterns section of a stream''s ingest function.';

CREATE FUNCTION cep._pattern_check_args(
    name text, stream text, within interval, OUT s cep.streams
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF name IS NULL OR octet_length(name) NOT BETWEEN 1 AND 63 OR name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'name must be 1 to 63 bytes without control characters'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM cep.patterns AS p WHERE p.name = _pattern_check_args.name) THEN
        RAISE EXCEPTION 'pattern % already exists', quote_literal(name) USING ERRCODE = '42710';
    END IF;
    SELECT * INTO s FROM cep.streams AS x WHERE x.name = _pattern_check_args.stream;
    IF s.stream_id IS NULL THEN
        RAISE EXCEPTION 'stream % does not exist', coalesce(quote_literal(stream), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may define patterns on it', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    IF within IS NOT NULL AND (within <= '0 seconds' OR NOT isfinite(now() + within)) THEN
        RAISE EXCEPTION 'within must be a positive interval, not %', within USING ERRCODE = '22023';
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._pattern_check_args(text, text, interval) IS
'Internal: common argument checks of cep.create_pattern and cep.create_absence.';

CREATE FUNCTION cep.create_pattern(
    name text,
    stream text,
    pattern text,
    define jsonb,
    within interval DEFAULT NULL,
    contiguity text DEFAULT 'relaxed',
    after_match text DEFAULT 'skip_past_last_row',
    max_runs integer DEFAULT 100,
    backfill boolean DEFAULT TRUE,
    engine text DEFAULT 'auto'
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_engine text;
    v_vars text [];
    v_prog jsonb;
    v_key text;
    v_def jsonb := '{}'::jsonb;
    v_d record;
    v_id integer;
    v_keys text [];
    v_los timestamptz [];
BEGIN
    s := cep._pattern_check_args(name, stream, within);
    IF contiguity IS NULL OR contiguity NOT IN ('strict', 'relaxed') THEN
        RAISE EXCEPTION 'contiguity must be strict or relaxed, not %',
            coalesce(quote_literal(contiguity), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF after_match IS NULL OR after_match NOT IN ('skip_past_last_row', 'skip_to_next_row') THEN
        RAISE EXCEPTION 'after_match must be skip_past_last_row or skip_to_next_row, not %',
            coalesce(quote_literal(after_match), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF max_runs IS NULL OR max_runs NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_runs must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    IF engine IS NULL OR engine NOT IN ('auto', 'eager', 'lazy') THEN
        RAISE EXCEPTION 'engine must be auto, eager or lazy, not %',
            coalesce(quote_literal(engine), 'NULL') USING ERRCODE = '22023';
    END IF;
    SELECT c.variables, c.program INTO v_vars, v_prog FROM cep._pat_compile(pattern) AS c;
    IF define IS NULL OR jsonb_typeof(define) <> 'object' THEN
        RAISE EXCEPTION 'define must be a JSON object {"variable": "condition", ...}'
            USING ERRCODE = '22023';
    END IF;
    FOR v_key IN SELECT k FROM jsonb_object_keys(define) AS k ORDER BY k LOOP
        IF NOT lower(v_key) = ANY (v_vars) THEN
            RAISE EXCEPTION 'DEFINE %: unknown variable (the pattern uses %)', v_key,
                array_to_string(v_vars, ', ') USING ERRCODE = '42703';
        END IF;
        IF jsonb_typeof(define -> v_key) <> 'string' THEN
            RAISE EXCEPTION 'DEFINE %: the condition must be a JSON string of SQL', v_key
                USING ERRCODE = '22023';
        END IF;
        IF v_def ? lower(v_key) THEN
            RAISE EXCEPTION 'DEFINE %: defined twice', v_key USING ERRCODE = '42710';
        END IF;
        v_def := v_def || jsonb_build_object(lower(v_key), define -> v_key);
    END LOOP;
    FOR v_key IN SELECT k FROM jsonb_object_keys(v_def) AS k ORDER BY k LOOP
        SELECT * INTO v_d FROM cep._pat_define_sql(v_def ->> v_key, s.source, v_vars, v_key);
        PERFORM cep._pat_check_define(s.source, v_key, v_d.sql, v_d.cols, v_d.prevs);
    END LOOP;

    INSERT INTO cep.patterns (name, stream_id, kind, pattern, define, within, contiguity,
        after_match, max_runs, variables, program)
    VALUES (name, s.stream_id, 'pattern', pattern, v_def,
        make_interval(secs => extract(epoch FROM within)), contiguity, after_match, max_runs,
        v_vars, v_prog)
    RETURNING pattern_id INTO v_id;
    -- The lazy engine matches a key only when an event that can end a match arrives: it needs
    -- within (how far back a match can start) and conditions over the event alone for the
    -- variables a match can end with.
    v_engine := CASE WHEN within IS NOT NULL AND cep._pattern_final_sql(v_id) IS NOT NULL
        THEN 'lazy' ELSE 'eager' END;
    IF engine = 'lazy' AND v_engine = 'eager' THEN
        RAISE EXCEPTION 'engine lazy needs within and, for every variable a match can end with '
            '(%), a condition over the event''s own columns (no PREV, no var.col)',
            (SELECT string_agg(v_vars[i], ', ' ORDER BY i) FROM unnest(cep._pattern_final_vars(v_prog)) AS i)
            USING ERRCODE = '22023';
    END IF;
    UPDATE cep.patterns AS x SET engine = CASE WHEN create_pattern.engine = 'eager' THEN 'eager' ELSE v_engine END
    WHERE x.pattern_id = v_id;
    PERFORM cep._pattern_install(v_id);
    PERFORM cep._pattern_prepare_stream(s, false);

    -- Past events: taken up to the current watermark, under a lock that keeps inserts out
    -- until the new ingest code is in place.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);
    IF backfill THEN
        EXECUTE format('SELECT array_agg(x.k ORDER BY x.k), array_agg(x.lo ORDER BY x.k) '
            'FROM (SELECT %s AS k, min(%s) AS lo FROM %s AS s GROUP BY 1) AS x',
            cep._stream_key_sql(s, 's'),
            cep._stream_time_sql(s, 's'),
            s.source)
        INTO v_keys, v_los;
        IF v_keys IS NOT NULL
            AND (SELECT x.engine FROM cep.patterns AS x WHERE x.pattern_id = v_id) = 'lazy' THEN
            -- a lazy pattern matches a key under its key row (FOR UPDATE)
            PERFORM cep._pattern_lock_keys(s.stream_id, v_keys,
                array_fill(true, ARRAY[cardinality(v_keys)]), NULL, cep._watermark(s.stream_id));
        END IF;
        -- every key with stored events, from its first one
        EXECUTE format('SELECT count(*) FROM cep.%I($1, $2, false, false, NULL, $3, $4, NULL)',
            format('_pattern_%s', v_id))
        USING '-infinity'::timestamptz, cep._watermark(s.stream_id), v_keys, v_los;
    END IF;
    PERFORM cep._regenerate_stream(s.stream_id);
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_pattern(text, text, text, jsonb, interval, text, text, integer, boolean, text) IS
'Define a MATCH_RECOGNIZE-style pattern on a stream: pattern syntax (concatenation, |, ( ), '
'* + ? {n} {n,} {n,m} {,m} and reluctant forms, PERMUTE), DEFINE conditions (SQL over the '
'columns, PREV(col), var.col), within, contiguity (strict | relaxed), after_match '
'(skip_past_last_row | skip_to_next_row), max_runs per key. Events are matched per key in '
'(time, id) order once the watermark reaches them; final matches go to cep.matches with an '
'alert. backfill: also match the stored events up to the current watermark. engine: lazy '
'(match a key only when an event that can end a match arrives; needs within and conditions '
'over the event alone for the variables a match ends with), eager (every event as the '
'watermark reaches it) or auto (lazy where possible).';

CREATE FUNCTION cep.create_absence(
    name text,
    stream text,
    start_condition text,
    expected_condition text,
    within interval
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_d record;
    v_id integer;
BEGIN
    s := cep._pattern_check_args(name, stream, within);
    IF within IS NULL THEN
        RAISE EXCEPTION 'within must be a positive interval' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_d FROM cep._pat_define_sql(start_condition, s.source, '{}', 'start_condition');
    PERFORM cep._pat_check_define(s.source, 'start_condition', v_d.sql, v_d.cols, v_d.prevs);
    IF cardinality(v_d.prevs) > 0 THEN
        RAISE EXCEPTION 'start_condition: PREV() is not available in absence conditions'
            USING ERRCODE = '0A000';
    END IF;
    SELECT * INTO v_d FROM cep._pat_define_sql(expected_condition, s.source, '{}', 'expected_condition');
    PERFORM cep._pat_check_define(s.source, 'expected_condition', v_d.sql, v_d.cols, v_d.prevs);
    IF cardinality(v_d.prevs) > 0 THEN
        RAISE EXCEPTION 'expected_condition: PREV() is not available in absence conditions'
            USING ERRCODE = '0A000';
    END IF;
    INSERT INTO cep.patterns (name, stream_id, kind, within, start_condition, expected_condition)
    VALUES (name, s.stream_id, 'absence', make_interval(secs => extract(epoch FROM within)),
        start_condition, expected_condition)
    RETURNING pattern_id INTO v_id;
    PERFORM cep._pattern_prepare_stream(s, true);
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);
    -- Stored starts not yet past their deadline wait like new ones.
    EXECUTE format(
        'INSERT INTO cep.absence_pending (pattern_id, k, event_id, start_time, deadline) '
        'SELECT %s, e.k, e.id, e.t, e.t + %L::interval FROM (%s) AS e '
        'WHERE %s AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l WHERE l.stream_id = %s '
        'AND l.event_id = e.id) ON CONFLICT DO NOTHING',
        v_id, within, cep._absence_rows_sql(s, (SELECT x FROM cep.patterns AS x WHERE x.pattern_id = v_id)),
        (SELECT d.sql FROM cep._pat_define_sql(start_condition, s.source, '{}', 'start') AS d),
        s.stream_id);
    PERFORM cep._patterns_advance(s.stream_id, '-infinity', cep._watermark(s.stream_id), NULL);
    PERFORM cep._regenerate_stream(s.stream_id);
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_absence(text, text, text, text, interval) IS
'Detect "A not followed by B within T" per key: a match (and alert) for each event satisfying '
'start_condition with no later event of its key satisfying expected_condition within the '
'interval, found when the watermark (or cep.run_maintenance() for wall-clock streams) passes '
'the deadline. Conditions are SQL boolean expressions over the stream''s columns.';

CREATE FUNCTION cep.drop_pattern(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    s cep.streams;
BEGIN
    SELECT * INTO p FROM cep.patterns AS x WHERE x.name = drop_pattern.name;
    IF p.pattern_id IS NULL THEN
        RAISE EXCEPTION 'pattern % does not exist', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = p.stream_id;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may drop its patterns', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (
        SELECT 1 FROM cep.rules AS r
        WHERE r.stream = s.name
            AND jsonb_path_exists(r.condition, 'strict $.**.pattern ? (@ == $n)',
                jsonb_build_object('n', p.name))
    ) THEN
        RAISE EXCEPTION 'pattern % is referenced by rules of stream %', quote_literal(p.name), s.name
            USING ERRCODE = '2BP01', HINT = 'Change or delete those rules first.';
    END IF;
    PERFORM cep._drop_pattern_objects(p.pattern_id);
    PERFORM cep._regenerate_stream(s.stream_id);
END
$fn$;

COMMENT ON FUNCTION cep.drop_pattern(text) IS
'Remove a pattern or absence detector, its state and matcher; matches already found stay in '
'cep.matches.';

CREATE FUNCTION cep._drop_pattern_objects(pattern_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_stream integer;
BEGIN
    EXECUTE format('DROP FUNCTION IF EXISTS cep.%I(timestamptz, timestamptz, boolean, boolean, bigint [], text [], timestamptz [], timestamptz [], boolean)',
        format('_pattern_%s', pattern_id));
    DELETE FROM cep.pattern_state AS x WHERE x.pattern_id = _drop_pattern_objects.pattern_id;
    DELETE FROM cep.absence_pending AS x WHERE x.pattern_id = _drop_pattern_objects.pattern_id;
    DELETE FROM cep.pattern_log AS x WHERE x.pattern_id = _drop_pattern_objects.pattern_id;
    DELETE FROM cep.pattern_late_events AS x WHERE x.pattern_id = _drop_pattern_objects.pattern_id;
    DELETE FROM cep.patterns AS x WHERE x.pattern_id = _drop_pattern_objects.pattern_id
    RETURNING x.stream_id INTO v_stream;
    -- the key rows of a stream's lazy patterns go with the last of them
    DELETE FROM cep.pattern_keys AS x
    WHERE x.stream_id = v_stream
        AND NOT EXISTS (
            SELECT 1 FROM cep.patterns AS y WHERE y.stream_id = v_stream AND y.engine = 'lazy'
        );
END
$fn$;

COMMENT ON FUNCTION cep._drop_pattern_objects(integer) IS
'Internal: drop a pattern''s matcher function, state and catalog row.';

CREATE FUNCTION cep.find_matches(
    pattern text,
    from_time timestamptz DEFAULT '-infinity',
    to_time timestamptz DEFAULT 'infinity'
)
RETURNS TABLE (
    partition_key text,
    first_time timestamptz,
    last_time timestamptz,
    event_ids bigint[],
    classifiers text[]
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    s cep.streams;
BEGIN
    SELECT * INTO p FROM cep.patterns AS x WHERE x.name = find_matches.pattern;
    IF p.pattern_id IS NULL THEN
        RAISE EXCEPTION 'pattern % does not exist', coalesce(quote_literal(pattern), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    IF from_time IS NULL OR to_time IS NULL OR from_time > to_time THEN
        RAISE EXCEPTION 'from_time and to_time must be times with from_time <= to_time'
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = p.stream_id;
    IF p.kind = 'pattern' THEN
        FOR partition_key, first_time, last_time, event_ids, classifiers IN
            EXECUTE format('SELECT * FROM cep.%I($1, $2, true, true, NULL, NULL, NULL, NULL)', p.matcher)
            USING from_time, to_time
        LOOP
            RETURN NEXT;
        END LOOP;
    ELSE
        FOR partition_key, first_time, last_time, event_ids, classifiers IN EXECUTE format($q$
            SELECT a.k, a.t, a.t, ARRAY[a.id], ARRAY['start']::text []
            FROM (SELECT e.* FROM (%1$s) AS e WHERE %2$s) AS a
            WHERE a.t >= $1 AND a.t <= $2
                AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l
                    WHERE l.stream_id = %3$s AND l.event_id = a.id)
                AND NOT EXISTS (
                    SELECT 1 FROM (%1$s) AS e
                    WHERE %4$s AND (e.t, e.id) > (a.t, a.id) AND e.t <= $2 AND %5$s
                        AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l
                            WHERE l.stream_id = %3$s AND l.event_id = e.id))
            ORDER BY a.k, a.t, a.id$q$,
            cep._absence_rows_sql(s, p),
            (SELECT d.sql FROM cep._pat_define_sql(p.start_condition, s.source, '{}', 'start') AS d)
            || cep._processed_sql(s, 'e', 'id'),
            s.stream_id,
            cep._absence_follow_sql(s, 'a.k', 'a.t', format('a.t + %L::interval', p.within))
            || cep._processed_sql(s, 'e', 'id'),
            (SELECT d.sql FROM cep._pat_define_sql(p.expected_condition, s.source, '{}', 'expected') AS d))
        USING from_time, to_time
        LOOP
            RETURN NEXT;
        END LOOP;
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep.find_matches(text, timestamptz, timestamptz) IS
'Run a pattern (or absence detector) over the stored, non-late events with time in '
'[from_time, to_time], as if they were the whole input, writing nothing: the same matches the '
'live engine writes to cep.matches for the same events.';
