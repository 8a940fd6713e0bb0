-- Code generation for patterns: one matcher function per pattern, cep._pattern_<id>().
-- Invariant: events of a key are taken in (time, id) order once the watermark has reached
-- them (time <= watermark), so out-of-order arrivals within the allowed lateness are matched
-- in event-time order. Runs (one per start event) advance their threads in preference order
-- (Pike VM with ordered threads: the first thread to reach MATCH cuts every lower-preference
-- thread of its run); a run's match is final when no higher-preference thread is left, and
-- runs are reported in start order. The same function computes cep.find_matches (p_find:
-- every stored event, end of input, nothing written) and the live matches (state in
-- cep.pattern_state, matches in cep.matches).

-- The SQL of a stream's key as text (the empty string without a key column) and of its time
-- as timestamptz (a timestamp column holds UTC) over row alias ALIAS; and of a timestamptz
-- expression in the time column's own type, for comparisons the (key, time) index serves.
CREATE FUNCTION cep._stream_key_sql(s cep.streams, alias text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN s.key_column IS NULL THEN '''''::text'
        ELSE format('%s.%I::text', alias, s.key_column) END
$fn$;

COMMENT ON FUNCTION cep._stream_key_sql(cep.streams, text) IS
'Internal: SQL of a stream''s key as text over a row alias (the empty string without a key).';

CREATE FUNCTION cep._stream_time_sql(s cep.streams, alias text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN s.time_type = 'timestamp without time zone'::regtype
        THEN format('pg_catalog.timezone(''UTC'', %s.%I)', alias, s.time_column)
        ELSE format('%s.%I', alias, s.time_column) END
$fn$;

COMMENT ON FUNCTION cep._stream_time_sql(cep.streams, text) IS
'Internal: SQL of a stream''s event time as timestamptz over a row alias.';

CREATE FUNCTION cep._stream_raw_time_sql(s cep.streams, expr text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN s.time_type = 'timestamp without time zone'::regtype
        THEN format('pg_catalog.timezone(''UTC'', %s)', expr) ELSE expr END
$fn$;

COMMENT ON FUNCTION cep._stream_raw_time_sql(cep.streams, text) IS
'Internal: SQL of a timestamptz expression in the type of a stream''s time column.';

-- Whether an event can matter to a pattern at all, as SQL over a row alias e with the
-- stream's columns as "c:<column>"; NULL when every event can. Under relaxed contiguity an
-- event that satisfies none of the variables' conditions is removed before matching, so a key
-- whose statement brought only such events needs no turn of the matcher (its state, lock and
-- waiting events stay as they are). Undefined variables, var.col and PREV conditions (which
-- this test cannot see) and strict contiguity make every event count.
CREATE FUNCTION cep._pattern_relevance_sql(pattern_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    v_source regclass;
    v_var text;
    v_d record;
    v_or text [] := '{}'::text [];
BEGIN
    SELECT * INTO STRICT p FROM cep.patterns AS x WHERE x.pattern_id = _pattern_relevance_sql.pattern_id;
    IF p.kind <> 'pattern' OR p.contiguity <> 'relaxed' THEN
        RETURN NULL;
    END IF;
    SELECT s.source INTO STRICT v_source FROM cep.streams AS s WHERE s.stream_id = p.stream_id;
    FOREACH v_var IN ARRAY p.variables LOOP
        IF NOT p.define ? v_var THEN
            RETURN NULL;
        END IF;
        SELECT * INTO v_d FROM cep._pat_define_sql(p.define ->> v_var, v_source, p.variables, v_var);
        IF v_d.refs <> '{}' OR cardinality(v_d.prevs) > 0 THEN
            RETURN NULL;
        END IF;
        v_or := v_or || format('(%s)', v_d.sql);
    END LOOP;
    RETURN array_to_string(v_or, ' OR ');
END
$fn$;

COMMENT ON FUNCTION cep._pattern_relevance_sql(integer) IS
'Internal: SQL of "this event can matter to the pattern" (relaxed contiguity: it satisfies '
'some variable''s condition), or NULL when every event can.';

CREATE FUNCTION cep._pattern_function_sql(pattern_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    s cep.streams;
    v_prog jsonb;
    v_var text;
    v_i integer;
    v_d record;
    v_cols name [] := '{}'::name [];
    v_prevs name [] := '{}'::name [];
    v_refs jsonb := '{}'::jsonb;
    v_mask text := '0';
    v_dyn text := '';
    v_bind text := '';
    v_sel text := '';
    v_prev_sel text := '';
    v_prev_join text := '';
    v_first integer := 0;
    v_c integer;
    v_always integer := 0;
    v_template text;
    v_col name;
    v_phs text [];
    v_vals text [];
    v_lazy boolean;
    v_final text;
    -- The matcher's parameters, qualified by its name where the user's table is in scope
    -- (use_column: a column of the same name would win).
    v_fn text := format('_pattern_%s', pattern_id);
BEGIN
    SELECT * INTO STRICT p FROM cep.patterns AS x WHERE x.pattern_id = _pattern_function_sql.pattern_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = p.stream_id;
    v_prog := p.program;
    v_lazy := p.engine = 'lazy';
    v_final := cep._pattern_final_sql(p.pattern_id);

    -- Conditions: static ones (no var.col) go into the event's mask, computed in SQL; the
    -- others are evaluated per thread with its bindings b. Undefined variables match always.
    FOR v_i IN 1 .. cardinality(p.variables) LOOP
        v_var := p.variables[v_i];
        IF NOT p.define ? v_var THEN
            v_always := v_always | (1 << (v_i - 1));
            CONTINUE;
        END IF;
        SELECT * INTO v_d FROM cep._pat_define_sql(p.define ->> v_var, s.source, p.variables, v_var);
        v_cols := v_cols || v_d.cols;
        v_prevs := v_prevs || v_d.prevs;
        -- merge the columns each variable's bindings must keep
        SELECT coalesce(jsonb_object_agg(x.key, x.cols), '{}'::jsonb) INTO v_refs
        FROM (
            SELECT r.key, jsonb_agg(DISTINCT c.value) AS cols
            FROM (SELECT * FROM jsonb_each(v_refs) UNION ALL SELECT * FROM jsonb_each(v_d.refs)) AS r
            CROSS JOIN LATERAL jsonb_array_elements(r.value) AS c
            GROUP BY r.key
        ) AS x;
        IF v_d.refs = '{}' THEN
            v_mask := v_mask || format(E'\n                | CASE WHEN %s THEN %s ELSE 0 END', v_d.sql, 1 << (v_i - 1));
        ELSE
            v_always := v_always | (1 << (v_i - 1));
            v_dyn := v_dyn || format(E'\n                    WHEN %s THEN coalesce(%s, false)', v_i, v_d.sql);
        END IF;
    END LOOP;
    -- columns bound for var.col must be read too
    SELECT coalesce(array_agg(DISTINCT c), '{}') INTO v_cols
    FROM (SELECT unnest(v_cols) AS c UNION SELECT jsonb_array_elements_text(r.value)::name
          FROM jsonb_each(v_refs) AS r) AS x;
    SELECT coalesce(array_agg(DISTINCT c), '{}') INTO v_prevs FROM unnest(v_prevs) AS c;
    FOREACH v_col IN ARRAY v_cols LOOP
        v_sel := v_sel || format(', s.%I AS %I', v_col, 'c:' || v_col);
    END LOOP;
    IF cardinality(v_prevs) > 0 THEN
        FOREACH v_col IN ARRAY v_prevs LOOP
            v_prev_sel := v_prev_sel || format(', pv.%I AS %I', v_col, 'p:' || v_col);
        END LOOP;
        -- PREV(col): the previous stored, non-late event of the same key
        v_prev_join := format(
            ' LEFT JOIN LATERAL (SELECT %s FROM %s AS s2 WHERE %s AND (s2.%I, s2.%I) < (s.%I, s.%I)'
            ' AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l WHERE l.stream_id = %s AND l.event_id = s2.%I)'
            ' ORDER BY s2.%I DESC, s2.%I DESC LIMIT 1) AS pv ON true',
            (SELECT string_agg(format('s2.%I', c), ', ') FROM unnest(v_prevs) AS c),
            s.source,
            (CASE WHEN s.key_column IS NULL THEN 'true' ELSE format('s2.%I = s.%I', s.key_column, s.key_column) END)
                || cep._processed_sql(s, 's2'),
            s.time_column, s.id_column, s.time_column, s.id_column, s.stream_id, s.id_column,
            s.time_column, s.id_column);
    END IF;
    -- Bindings: for variables whose columns other conditions read, keep them per thread.
    FOR v_var IN SELECT r.key FROM jsonb_each(v_refs) AS r ORDER BY r.key LOOP
        v_i := array_position(p.variables, v_var);
        CONTINUE WHEN v_i IS NULL;
        v_bind := v_bind || format(E'\n                        WHEN %s THEN coalesce(b, ''{}'') || jsonb_build_object(%L, jsonb_build_object(%s))',
            v_i, v_var,
            (SELECT string_agg(format('%L, e.%I', c, 'c:' || c), ', ')
             FROM jsonb_array_elements_text(v_refs -> v_var) AS c));
    END LOOP;
    -- Variables that can start a match.
    FOR v_c IN SELECT jsonb_array_elements_text(v_prog -> 'start')::integer LOOP
        v_first := v_first | (1 << ((v_prog -> 'x' ->> (v_c - 1))::integer - 1));
    END LOOP;

    v_template := $t$
#variable_conflict use_column
-- Generated by pg_cep for pattern @NAME@ on stream @STREAM@; cep.create_pattern rebuilds it.
DECLARE
    c_x constant integer [] := @X@;
    c_start constant integer [] := @START@;
    c_off constant integer [] := @OFF@;
    c_len constant integer [] := @LEN@;
    c_items constant integer [] := @ITEMS@;
    c_vars constant text [] := @VARS@;
    c_first constant integer := @FIRST@;
    c_within constant interval := @WITHIN@;
    c_skip_past constant boolean := @SKIP_PAST@;
    c_cap constant integer := @CAP@;
    c_lazy constant boolean := @LAZY@;
    e record;
    st cep.pattern_state;
    v_key text;
    v_have boolean := false;
    n_run integer [];
    n_pc integer [];
    n_path text [];
    n_bind jsonb [];
    v_seen text [];
    i integer;
    v_n integer;
    v_run integer;
    v_ri integer;
    v_dead boolean;
    v_cut boolean;
    v_pc integer;
    v_var integer;
    v_ok boolean;
    v_path text;
    v_c integer;
    v_dk text;
    b jsonb;
    v_keep integer [];
    v_drafts cep.alert_draft [];
    -- the matches found, collected and reported at the end of the call
    m_key text [] := '{}'::text [];
    m_first timestamptz [] := '{}'::timestamptz [];
    m_last timestamptz [] := '{}'::timestamptz [];
    m_last_id bigint [] := '{}'::bigint [];
    m_path text [] := '{}'::text [];
    n_no integer [];
    n_st timestamptz [];
    n_sid bigint [];
    n_best text [];
    n_bend_t timestamptz [];
    n_bend_id bigint [];
    v_events bigint := 0;
    v_matches bigint := 0;
    v_drops bigint := 0;
    v_late bigint := 0;
    v_last_match timestamptz;
    v_keys text [];
    v_states cep.pattern_state [];
    v_act boolean [];
    v_fin boolean [];
    v_ki integer := 1;
    v_kdrops integer [];
    v_lo timestamptz [];
    v_tids tid [];
    v_out cep.pattern_state [] := '{}'::cep.pattern_state [];@ENGINE_VARS@
BEGIN
    IF NOT p_find THEN
@BEGIN_LIVE@
    END IF;

    -- (a live call with no key to advance has nothing more to do than to log what it did)
    IF p_find OR v_keys IS NOT NULL THEN
        -- The events of the keys that need the matcher (an event that can start a match, or open
        -- runs: act); the keys' state rows were read with the locks above (v_states, in the
        -- order of v_keys).
        IF NOT p_find THEN
            v_fin := array_fill(false, ARRAY[cardinality(v_keys)]);
        END IF;
        IF p_optimistic THEN
            -- per key, the starts dropped at the cap (see the end)
            v_kdrops := array_fill(0, ARRAY[cardinality(v_keys)]);
        END IF;
        FOR e IN
            SELECT x.*
            FROM (
                SELECT x0.*, bool_or((x0.mask & c_first) <> 0) OVER (PARTITION BY x0.k) AS starts
                FROM (SELECT x.* FROM (@EVENTS@) AS x WHERE @RELAXED@ p_find
                    UNION ALL
                    SELECT x.* FROM (@LIVE_EVENTS@) AS x WHERE @RELAXED@ NOT p_find) AS x0
            ) AS x
            WHERE p_find OR x.starts OR x.act
            ORDER BY x.k, x.t, x.id
        LOOP
            IF v_key IS DISTINCT FROM e.k THEN
                IF v_have THEN
                    @FINISH@
                END IF;
                v_key := e.k;
                v_have := true;
                IF p_find THEN
                    st := ROW(@PID@, v_key, NULL, NULL, 1, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', NULL, false, NULL)::cep.pattern_state;
                ELSE
                    -- the events come in key order, as v_keys
                    WHILE v_keys[v_ki] <> v_key LOOP
                        v_ki := v_ki + 1;
                    END LOOP;
                    v_fin[v_ki] := true;
                    st := v_states[v_ki];
                END IF;
            END IF;
            IF st.upto_t IS NOT NULL AND (e.t, e.id) <= (st.upto_t, st.upto_id) THEN
                -- Already processed, or (one of this statement's own rows) behind the key's progress
                -- (a lazy pattern counts those before it matches, for every key of the statement).
                IF e.id = ANY (p_own) AND NOT c_lazy THEN
                    INSERT INTO cep.pattern_late_events (pattern_id, event_id, event_time, partition_key)
                    VALUES (@PID@, e.id, e.t, e.k);
                    v_late := v_late + 1;
                END IF;
                CONTINUE;
            END IF;
            v_events := v_events + 1;
            st.upto_t := e.t;
            st.upto_id := e.id;

            -- A new run starts at every event that can begin a match (at most c_cap per key).
            IF (e.mask & c_first) <> 0 THEN
                IF cardinality(st.r_no) >= c_cap THEN
                    v_drops := v_drops + 1;
                    IF p_optimistic THEN
                        v_kdrops[v_ki] := v_kdrops[v_ki] + 1;
                    END IF;
                ELSE
                    st.r_no := st.r_no || st.next_no;
                    st.r_st := st.r_st || e.t;
                    st.r_sid := st.r_sid || e.id;
                    st.r_best := st.r_best || NULL::text;
                    st.r_bend_t := st.r_bend_t || NULL::timestamptz;
                    st.r_bend_id := st.r_bend_id || NULL::bigint;
                    FOREACH v_c IN ARRAY c_start LOOP
                        st.th_run := st.th_run || st.next_no;
                        st.th_pc := st.th_pc || v_c;
                        st.th_path := st.th_path || ''::text;
                        st.th_bind := st.th_bind || NULL::jsonb;
                    END LOOP;
                    st.next_no := st.next_no + 1;
                END IF;
            END IF;

            -- Step every thread of every run with this event, in preference order.
            n_run := '{}';
            n_pc := '{}';
            n_path := '{}';
            n_bind := '{}';
            i := 1;
            v_n := cardinality(st.th_pc);
            WHILE i <= v_n LOOP
                v_run := st.th_run[i];
                v_ri := array_position(st.r_no, v_run);
                v_dead := c_within IS NOT NULL AND e.t - st.r_st[v_ri] > c_within;
                v_cut := false;
                v_seen := '{}';
                WHILE i <= v_n AND st.th_run[i] = v_run LOOP
                    IF NOT v_cut AND NOT v_dead THEN
                        v_pc := st.th_pc[i];
                        v_var := c_x[v_pc];
                        b := st.th_bind[i];
                        v_ok := @DYN@;
                        IF v_ok THEN
                            v_path := st.th_path[i] || e.id || ':' || v_var || ';';
                            b := @BIND@;
                            FOR j IN c_off[v_pc] .. c_off[v_pc] + c_len[v_pc] - 1 LOOP
                                v_c := c_items[j];
                                IF v_c = 0 THEN
                                    st.r_best[v_ri] := v_path;
                                    st.r_bend_t[v_ri] := e.t;
                                    st.r_bend_id[v_ri] := e.id;
                                    v_cut := true;
                                    EXIT;
                                END IF;
                                v_dk := v_c || '|' || coalesce(b::text, '');
                                IF NOT v_dk = ANY (v_seen) THEN
                                    v_seen := v_seen || v_dk;
                                    n_run := n_run || v_run;
                                    n_pc := n_pc || v_c;
                                    n_path := n_path || v_path;
                                    n_bind := n_bind || b;
                                END IF;
                            END LOOP;
                        END IF;
                    END IF;
                    i := i + 1;
                END LOOP;
            END LOOP;
            st.th_run := n_run;
            st.th_pc := n_pc;
            st.th_path := n_path;
            st.th_bind := n_bind;
            @RESOLVE@
        END LOOP;
        IF v_have THEN
            @FINISH@
        END IF;
    END IF;

    IF NOT p_find AND v_keys IS NOT NULL THEN
        -- Keys with no event taken whose runs time out or end with the input (a lazy pattern:
        -- every key it matches now).
        FOR j IN 1 .. cardinality(v_keys) LOOP
            CONTINUE WHEN v_fin[j] OR NOT (c_lazy OR ((v_states[j]).active
                AND (p_eoi OR (v_states[j]).deadline < p_to)));
            st := v_states[j];
            v_key := st.k;
            @FINISH@
        END LOOP;
@SAVE_LIVE@
    END IF;
@REPORT@
    IF NOT p_find THEN
        IF v_events > 0 OR v_matches > 0 OR v_drops > 0 OR v_late > 0 THEN
            INSERT INTO cep.pattern_log (pattern_id, events, matches, drops, late, last_match)
            VALUES (@PID@, v_events, v_matches, v_drops, v_late, v_last_match);
        END IF;
        IF cardinality(v_drafts) > 0 THEN
            PERFORM cep._raise_alerts(@SID@, v_drafts);
        END IF;
    END IF;
    RETURN;
END
$t$;

    -- The placeholders and their values. The first four are fixed code of the engine
    -- (eager or lazy) that brings further placeholders: they are put in first.
    SELECT array_agg(x.ph ORDER BY x.o), array_agg(x.val ORDER BY x.o) INTO v_phs, v_vals
    FROM unnest(ARRAY[
        '@FINISH@',
        '@BEGIN_LIVE@',
        '@SAVE_LIVE@',
        '@ENGINE_VARS@',
        '@RESOLVE@',
        '@REPORT@',
        '@EVENTS@',
        '@LIVE_EVENTS@',
        '@RAW_COUNT@',
        '@NEXT_EVENT@',
        '@NEXT_FINAL@',
        '@OWN_EVENTS@',
        '@OWN_RELEVANT@',
        '@RELAXED@',
        '@DYN@',
        '@BIND@',
        '@X@',
        '@START@',
        '@OFF@',
        '@LEN@',
        '@ITEMS@',
        '@VARS@',
        '@FIRST@',
        '@WITHIN@',
        '@SKIP_PAST@',
        '@CAP@',
        '@LAZY@',
        '@NAME@',
        '@STREAM@',
        '@PID@',
        '@SID@'
    ], ARRAY[
        cep._pattern_finish_sql(),
        CASE WHEN v_lazy THEN cep._pattern_lazy_begin_sql() ELSE cep._pattern_eager_begin_sql() END,
        CASE WHEN v_lazy THEN cep._pattern_lazy_save_sql() ELSE cep._pattern_eager_save_sql() END,
        CASE WHEN v_lazy THEN E'\n    v_trig timestamptz [];\n    v_kept text [];\n    v_cnt integer [];'
            ELSE E'\n    v_opend timestamptz [];\n    v_pending boolean := false;\n    v_behind boolean := false;' END,
        cep._pattern_resolve_sql(),
        cep._pattern_report_sql(p, s),
        format(
            'SELECT e.*, (%s | %s) AS mask FROM (SELECT %s AS k, %s AS t, s.%I::bigint AS id, '
            'false AS act%s%s FROM %s AS s%s WHERE s.%I >= %s AND s.%I <= %s%s) AS e',
            v_mask, v_always,
            cep._stream_key_sql(s, 's'),
            cep._stream_time_sql(s, 's'),
            s.id_column, v_sel, v_prev_sel, s.source, v_prev_join,
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_from'),
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_to'),
            format(' AND (NOT %5$s.p_find OR NOT EXISTS (SELECT 1 FROM cep.late_events AS l WHERE '
                'l.stream_id = %1$s AND l.event_id = s.%2$I)) AND (NOT %5$s.p_find OR NOT EXISTS ('
                'SELECT 1 FROM cep.pattern_late_events AS pl WHERE pl.pattern_id = %3$s AND '
                'pl.event_id = s.%4$I))', s.stream_id, s.id_column, p.pattern_id, s.id_column, v_fn)
                || cep._processed_sql(s, 's')),
        format(
            'SELECT e.*, (%s | %s) AS mask FROM (SELECT %s AS k, %s AS t, s.%I::bigint AS id, '
            'kr.act%s%s FROM unnest(v_keys, v_lo, v_act) AS kr (k, lo, act) '
            'CROSS JOIN LATERAL (SELECT s.* FROM %s AS s '
            'WHERE %s AND s.%I >= %s AND s.%I <= %s OFFSET 0) AS s%s WHERE kr.lo IS NOT NULL '
            'AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l WHERE l.stream_id = %s '
            'AND l.event_id = s.%I)) AS e',
            v_mask, v_always,
            cep._stream_key_sql(s, 's'),
            cep._stream_time_sql(s, 's'),
            s.id_column, v_sel, v_prev_sel, s.source,
            (CASE WHEN s.key_column IS NULL THEN 'true'
                ELSE format('s.%I = kr.k::%s', s.key_column,
                    (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = s.source AND a.attname = s.key_column)) END)
                || cep._processed_sql(s, 's'),
            s.time_column,
            cep._stream_raw_time_sql(s, 'kr.lo'),
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_to'),
            v_prev_join, s.stream_id, s.id_column),
        -- the stored rows of key u.k from u.lo to the watermark (cep.run_maintenance's check
        -- that no session committed an event it did not read)
        format('SELECT count(*) AS n FROM %s AS s WHERE %s AND s.%I >= %s AND s.%I <= %s',
            s.source,
            (CASE WHEN s.key_column IS NULL THEN 'true'
                ELSE format('s.%I = u.k::%s', s.key_column,
                    (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = s.source AND a.attname = s.key_column)) END)
                || cep._processed_sql(s, 's'),
            s.time_column,
            cep._stream_raw_time_sql(s, 'u.lo'),
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_to')),
        format('SELECT %s FROM %s AS s WHERE %s AND s.%I > %s ORDER BY %s LIMIT 1',
            cep._stream_time_sql(s, 's'),
            s.source,
            (CASE WHEN s.key_column IS NULL THEN 'true'
                ELSE format('s.%I = u.k::%s', s.key_column,
                    (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = s.source AND a.attname = s.key_column)) END)
                || cep._processed_sql(s, 's'),
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_to'),
            -- ordered by an expression: the (key, time) index finds the rows, never a walk
            -- along the time index
            format('s.%I + interval ''0 seconds''', s.time_column)),
        -- a lazy pattern's next event that can end a match, beyond the watermark (same index)
        format('SELECT e.t FROM (SELECT %s AS t%s FROM %s AS s WHERE %s AND s.%I > %s) AS e '
            'WHERE %s ORDER BY e.t + interval ''0 seconds'' LIMIT 1',
            cep._stream_time_sql(s, 's'),
            v_sel, s.source,
            (CASE WHEN s.key_column IS NULL THEN 'true'
                ELSE format('s.%I = u.k::%s', s.key_column,
                    (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = s.source AND a.attname = s.key_column)) END)
                || cep._processed_sql(s, 's'),
            s.time_column,
            cep._stream_raw_time_sql(s, v_fn || '.p_to'),
            coalesce(v_final, 'true')),
        format('SELECT %s AS k, %s AS t, s.%I::bigint AS id%s FROM %s AS s '
            'WHERE s.%I = ANY (%s.p_own)',
            cep._stream_key_sql(s, 's'),
            cep._stream_time_sql(s, 's'),
            s.id_column, v_sel, s.source, s.id_column, v_fn),
        coalesce(cep._pattern_relevance_sql(p.pattern_id), 'true'),
        CASE WHEN p.contiguity = 'relaxed' THEN 'x.mask <> 0 AND' ELSE '' END,
        CASE WHEN v_dyn = '' THEN '(e.mask >> (v_var - 1)) & 1 = 1'
            ELSE format(E'CASE v_var%s\n                        ELSE (e.mask >> (v_var - 1)) & 1 = 1\n                    END', v_dyn) END,
        CASE WHEN v_bind = '' THEN 'b'
            ELSE format(E'CASE v_var%s\n                            ELSE b\n                        END', v_bind) END,
        quote_literal(translate((v_prog -> 'x')::text, '[]', '{}')) || '::integer []',
        quote_literal(translate((v_prog -> 'start')::text, '[]', '{}')) || '::integer []',
        quote_literal(translate((v_prog -> 'off')::text, '[]', '{}')) || '::integer []',
        quote_literal(translate((v_prog -> 'len')::text, '[]', '{}')) || '::integer []',
        quote_literal(translate((v_prog -> 'items')::text, '[]', '{}')) || '::integer []',
        quote_literal(p.variables) || '::text []',
        (v_first | 0)::text,
        coalesce(quote_literal(p.within) || '::interval', 'NULL'),
        (p.after_match = 'skip_past_last_row')::text,
        p.max_runs::text,
        v_lazy::text,
        quote_literal(p.name),
        quote_literal(s.name),
        p.pattern_id::text,
        s.stream_id::text
    ]) WITH ORDINALITY AS x (ph, val, o);
    -- The engine's fixed code first (it brings further placeholders), then every placeholder
    -- in one pass: a value is inserted once and never scanned again, so a table, column, name
    -- or condition that contains a placeholder's spelling stays as it is.
    FOR v_i IN 1 .. 4 LOOP
        v_template := replace(v_template, v_phs[v_i], v_vals[v_i]);
    END LOOP;
    SELECT string_agg(coalesce(v_vals[array_position(v_phs, m.tok[1])], m.tok[1]), ''
        ORDER BY m.o)
    INTO v_template
    FROM regexp_matches(v_template, '@[A-Z_]+@|[^@]+|@', 'g') WITH ORDINALITY AS m (tok, o);
    RETURN v_template;
END
$fn$;

COMMENT ON FUNCTION cep._pattern_function_sql(integer) IS
'Internal: the PL/pgSQL body of a pattern''s generated matcher function.';

-- Resolution after each event: report the runs at the front that have no thread left. Plain
-- PL/pgSQL over the arrays, no SQL statement per match: the matches found are collected and
-- written (or returned) together at the end of the call.
CREATE FUNCTION cep._pattern_resolve_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT $r$
        -- report finished runs in start order; a run with threads left blocks the later ones
        LOOP
            EXIT WHEN cardinality(st.r_no) = 0 OR st.r_no[1] = ANY (st.th_run);
            v_keep := NULL;
            IF st.r_best[1] IS NOT NULL THEN
                v_matches := v_matches + 1;
                m_key := m_key || v_key;
                m_first := m_first || st.r_st[1];
                m_last := m_last || st.r_bend_t[1];
                m_last_id := m_last_id || st.r_bend_id[1];
                m_path := m_path || st.r_best[1];
                IF c_skip_past THEN
                    -- the runs that start after the match's last event (the first run
                    -- starts at or before it)
                    v_keep := '{}';
                    FOR j IN 2 .. cardinality(st.r_no) LOOP
                        IF (st.r_st[j], st.r_sid[j]) > (st.r_bend_t[1], st.r_bend_id[1]) THEN
                            v_keep := v_keep || j;
                        END IF;
                    END LOOP;
                END IF;
            END IF;
            IF v_keep IS NULL THEN
                -- only the first run goes, and it has no thread left (see EXIT above)
                st.r_no := st.r_no[2:cardinality(st.r_no)];
                st.r_st := st.r_st[2:cardinality(st.r_st)];
                st.r_sid := st.r_sid[2:cardinality(st.r_sid)];
                st.r_best := st.r_best[2:cardinality(st.r_best)];
                st.r_bend_t := st.r_bend_t[2:cardinality(st.r_bend_t)];
                st.r_bend_id := st.r_bend_id[2:cardinality(st.r_bend_id)];
                CONTINUE;
            END IF;
            -- keep the runs listed in v_keep, and their threads
            n_run := '{}';
            n_pc := '{}';
            n_path := '{}';
            n_bind := '{}';
            FOR j IN 1 .. cardinality(st.th_run) LOOP
                IF array_position(st.r_no, st.th_run[j]) = ANY (v_keep) THEN
                    n_run := n_run || st.th_run[j];
                    n_pc := n_pc || st.th_pc[j];
                    n_path := n_path || st.th_path[j];
                    n_bind := n_bind || st.th_bind[j];
                END IF;
            END LOOP;
            st.th_run := n_run;
            st.th_pc := n_pc;
            st.th_path := n_path;
            st.th_bind := n_bind;
            n_no := '{}';
            n_st := '{}';
            n_sid := '{}';
            n_best := '{}';
            n_bend_t := '{}';
            n_bend_id := '{}';
            FOR j IN 1 .. cardinality(v_keep) LOOP
                n_no := n_no || st.r_no[v_keep[j]];
                n_st := n_st || st.r_st[v_keep[j]];
                n_sid := n_sid || st.r_sid[v_keep[j]];
                n_best := n_best || st.r_best[v_keep[j]];
                n_bend_t := n_bend_t || st.r_bend_t[v_keep[j]];
                n_bend_id := n_bend_id || st.r_bend_id[v_keep[j]];
            END LOOP;
            st.r_no := n_no;
            st.r_st := n_st;
            st.r_sid := n_sid;
            st.r_best := n_best;
            st.r_bend_t := n_bend_t;
            st.r_bend_id := n_bend_id;
        END LOOP;$r$
$fn$;

COMMENT ON FUNCTION cep._pattern_resolve_sql() IS
'Internal: generated code that reports a key''s finished runs in start order (collecting the '
'matches) and applies the after-match skip.';

-- The end of a call: the matches collected, as rows of cep.find_matches or written to
-- cep.matches with their alerts, in the order they were found.
CREATE FUNCTION cep._pattern_report_sql(p cep.patterns, s cep.streams)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format($r$
    IF cardinality(m_key) > 0 THEN
        IF p_find THEN
            RETURN QUERY
            SELECT m.k, m.f, m.l, z.ids, z.cls
            FROM unnest(m_key, m_first, m_last, m_path) WITH ORDINALITY AS m (k, f, l, path, o)
            CROSS JOIN LATERAL (
                -- the path: "id:variable;" per event
                SELECT array_agg(split_part(u.p, ':', 1)::bigint ORDER BY u.o) AS ids,
                    array_agg(c_vars[split_part(u.p, ':', 2)::integer] ORDER BY u.o) AS cls
                FROM unnest(string_to_array(rtrim(m.path, ';'), ';')) WITH ORDINALITY AS u (p, o)
            ) AS z
            ORDER BY m.o;
        ELSE
            WITH ins AS (
                INSERT INTO cep.matches (pattern, pattern_id, stream, partition_key, first_time,
                    last_time, event_ids, classifiers, last_event_id)
                SELECT %1$L, %2$s, %3$L, m.k, m.f, m.l, z.ids, z.cls, m.lid
                FROM unnest(m_key, m_first, m_last, m_last_id, m_path)
                    WITH ORDINALITY AS m (k, f, l, lid, path, o)
                CROSS JOIN LATERAL (
                    SELECT array_agg(split_part(u.p, ':', 1)::bigint ORDER BY u.o) AS ids,
                        array_agg(c_vars[split_part(u.p, ':', 2)::integer] ORDER BY u.o) AS cls
                    FROM unnest(string_to_array(rtrim(m.path, ';'), ';')) WITH ORDINALITY AS u (p, o)
                ) AS z
                ORDER BY m.o
                RETURNING *
            )
            SELECT array_agg(ROW('pattern', %1$L, %3$L, i.partition_key, i.last_event_id, 'high',
                    NULL, pg_catalog.format('pattern %%s matched for key %%s: %%s events from %%s to %%s',
                        %1$L, i.partition_key, cardinality(i.event_ids), i.first_time, i.last_time),
                    pg_catalog.jsonb_build_object('event_ids', i.event_ids,
                        'classifiers', i.classifiers, 'first_time', i.first_time,
                        'last_time', i.last_time))::cep.alert_draft ORDER BY i.match_id),
                max(i.last_time)
            INTO v_drafts, v_last_match
            FROM ins AS i;
        END IF;
    END IF;$r$,
        p.name, p.pattern_id, s.name)
$fn$;

COMMENT ON FUNCTION cep._pattern_report_sql(cep.patterns, cep.streams) IS
'Internal: generated code that returns (cep.find_matches) or writes the matches a call found, '
'with one alert each.';

-- Finishing a key: runs end with the input or time out; report; keep the state to save.
CREATE FUNCTION cep._pattern_finish_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT $f$
            IF p_eoi THEN
                st.th_run := '{}';
                st.th_pc := '{}';
                st.th_path := '{}';
                st.th_bind := '{}';
            ELSIF c_within IS NOT NULL AND cardinality(st.th_run) > 0
                -- runs are kept in start order: when the oldest is still open, all are
                AND st.r_st[1] + c_within < p_to THEN
                -- runs whose window closed before the watermark can take no further event
                n_run := '{}';
                n_pc := '{}';
                n_path := '{}';
                n_bind := '{}';
                FOR j IN 1 .. cardinality(st.th_run) LOOP
                    IF st.r_st[array_position(st.r_no, st.th_run[j])] + c_within >= p_to THEN
                        n_run := n_run || st.th_run[j];
                        n_pc := n_pc || st.th_pc[j];
                        n_path := n_path || st.th_path[j];
                        n_bind := n_bind || st.th_bind[j];
                    END IF;
                END LOOP;
                IF cardinality(n_run) < cardinality(st.th_run) AND NOT p_find
                    AND (st.upto_t IS NULL OR (st.upto_t, st.upto_id) < (p_to, -1::bigint)) THEN
                    -- runs ended on the assumption that no event before the watermark is to
                    -- come: one that still arrives (a concurrent writer's, late in serial
                    -- order) must count as late, not extend or start runs behind them
                    st.upto_t := p_to;
                    st.upto_id := -1;
                END IF;
                st.th_run := n_run;
                st.th_pc := n_pc;
                st.th_path := n_path;
                st.th_bind := n_bind;
            END IF;
            @RESOLVE@
            IF NOT p_find THEN
                -- saved by one statement for every key (see "One write per key")
                v_out := v_out || st;
            END IF;$f$
$fn$;

COMMENT ON FUNCTION cep._pattern_finish_sql() IS
'Internal: generated code that ends a key''s turn: input end or timeouts, reporting, saving.';

-- The eager engine's start of a live call: lock the keys, note waiting events and late ones.
CREATE FUNCTION cep._pattern_eager_begin_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT $f$
        -- The keys to advance: those of this statement's on-time events (p_keys), those with
        -- events waiting for the watermark (pending_t), and those whose runs time out or end
        -- with the input. Their state rows are locked in key order (a key first seen gets
        -- one): a session advancing one of these keys makes this one wait for its commit, and
        -- the statements below then see its events and runs (READ COMMITTED).
        -- A writer advances only its own keys, so that sessions writing different keys never
        -- wait for each other's commit (design principle 5). Keys whose events wait for the
        -- watermark or whose runs time out are advanced by cep.advance_watermark and
        -- cep.run_maintenance (p_keys NULL), which wait for every key they need.
        IF p_keys IS NOT NULL THEN
            v_keys := p_keys;
        ELSE
            SELECT array_agg(DISTINCT y.k ORDER BY y.k) INTO v_keys
            FROM (
                SELECT ps.k FROM cep.pattern_state AS ps
                WHERE ps.pattern_id = @PID@ AND ps.pending_t <= p_to
                UNION
                SELECT ps.k FROM cep.pattern_state AS ps
                WHERE ps.pattern_id = @PID@ AND ps.active AND (p_eoi OR ps.deadline < p_to)
            ) AS y;
        END IF;
        IF v_keys IS NULL THEN
            RETURN;
        END IF;
        IF p_keys IS NULL THEN
            -- lock the keys in key order (one index probe each, never a scan of every key's
            -- state); per key, the earliest event to take: its first event still waiting for
            -- the watermark
            WITH l AS (
                SELECT x.k, x.pending_t, x.ctid, x.st
                FROM unnest(v_keys) AS u (k)
                CROSS JOIN LATERAL (
                    SELECT ps.k, ps.pending_t, ps.ctid, ps AS st FROM cep.pattern_state AS ps
                    WHERE ps.pattern_id = @PID@ AND ps.k = u.k
                    FOR NO KEY UPDATE
                ) AS x
            )
            SELECT array_agg(l.k ORDER BY l.k),
                array_agg(CASE WHEN l.pending_t <= p_to THEN l.pending_t END ORDER BY l.k),
                array_agg(l.pending_t ORDER BY l.k),
                array_agg(l.ctid ORDER BY l.k),
                coalesce(bool_or(l.pending_t IS NOT NULL), false),
                array_agg(l.st ORDER BY l.k), array_agg((l.st).active ORDER BY l.k)
            INTO v_keys, v_lo, v_opend, v_tids, v_pending, v_states, v_act
            FROM l;
        ELSE
            -- This statement's keys: each row created if missing and locked in one step, in
            -- key order (ON CONFLICT locks the row its WHERE leaves unchanged). A row that
            -- cep.run_maintenance purges meanwhile is waited for and created again: a separate
            -- existence check and lock would find it gone and skip the key's events.
            -- In the same step, the key's first event waiting for the watermark (pending_t)
            -- takes this statement's first waiting event when that is earlier, unless the
            -- key's waiting events are reached now (then it is set after matching).
            INSERT INTO cep.pattern_state AS ps (pattern_id, k, pending_t)
            SELECT @PID@, u.k, u.nx FROM unnest(p_keys, p_nx) AS u (k, nx)
            ORDER BY u.k
            ON CONFLICT (pattern_id, k) DO UPDATE SET pending_t = excluded.pending_t
            WHERE excluded.pending_t IS NOT NULL
                AND (ps.pending_t IS NULL OR (ps.pending_t > p_to AND excluded.pending_t < ps.pending_t));
            -- The rows are locked now, so this statement reads their committed state. Per
            -- key, the earliest event to take: this statement's first on-time event of the
            -- key or the key's first event still waiting for the watermark.
            SELECT array_agg(u.k ORDER BY u.k),
                array_agg(least(u.lo, CASE WHEN x.pending_t <= p_to THEN x.pending_t END) ORDER BY u.k),
                array_agg(x.pending_t ORDER BY u.k),
                array_agg(x.ctid ORDER BY u.k),
                coalesce(bool_or(x.pending_t IS NOT NULL), false),
                coalesce(bool_or(u.nx IS NOT NULL AND (u.nx, 0) <= (x.upto_t, x.upto_id)), false),
                array_agg(x.st ORDER BY u.k), array_agg((x.st).active ORDER BY u.k)
            INTO v_keys, v_lo, v_opend, v_tids, v_pending, v_behind, v_states, v_act
            FROM unnest(p_keys, p_lo, p_nx) AS u (k, lo, nx)
            CROSS JOIN LATERAL (
                SELECT ps.pending_t, ps.upto_t, ps.upto_id, ps.ctid, ps AS st FROM cep.pattern_state AS ps
                WHERE ps.pattern_id = @PID@ AND ps.k = u.k
                OFFSET 0
            ) AS x;
        END IF;
        IF v_behind THEN
            -- This statement's events beyond the watermark that another session (which
            -- committed while this one waited for the key) already processed past: late
            -- (under relaxed contiguity, those that can take part in a match).
            INSERT INTO cep.pattern_late_events (pattern_id, event_id, event_time, partition_key)
            SELECT @PID@, e.id, e.t, e.k
            FROM (@OWN_EVENTS@) AS e
            JOIN cep.pattern_state AS ps ON ps.pattern_id = @PID@ AND ps.k = e.k
            WHERE e.t > p_to AND (e.t, e.id) <= (ps.upto_t, ps.upto_id) AND (@OWN_RELEVANT@);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_late := v_late + v_n;
        END IF;$f$
$fn$;

COMMENT ON FUNCTION cep._pattern_eager_begin_sql() IS
'Internal: generated code that starts a live call of an eager pattern''s matcher: the keys to '
'advance, locked, with their waiting events.';

-- The eager engine's end of a live call: one write per key.
CREATE FUNCTION cep._pattern_eager_save_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT $f$
        -- One write per key: the new state of every key advanced above, and the first event
        -- still waiting for the watermark (pending_t) of every key whose waiting events the
        -- watermark reached.
        IF cardinality(v_out) > 0 OR v_pending THEN
            UPDATE cep.pattern_state AS ps
            SET upto_t = CASE WHEN b.has THEN b.upto_t ELSE ps.upto_t END,
                upto_id = CASE WHEN b.has THEN b.upto_id ELSE ps.upto_id END,
                next_no = CASE WHEN b.has THEN b.next_no ELSE ps.next_no END,
                r_no = CASE WHEN b.has THEN b.r_no ELSE ps.r_no END,
                r_st = CASE WHEN b.has THEN b.r_st ELSE ps.r_st END,
                r_sid = CASE WHEN b.has THEN b.r_sid ELSE ps.r_sid END,
                r_best = CASE WHEN b.has THEN b.r_best ELSE ps.r_best END,
                r_bend_t = CASE WHEN b.has THEN b.r_bend_t ELSE ps.r_bend_t END,
                r_bend_id = CASE WHEN b.has THEN b.r_bend_id ELSE ps.r_bend_id END,
                th_run = CASE WHEN b.has THEN b.th_run ELSE ps.th_run END,
                th_pc = CASE WHEN b.has THEN b.th_pc ELSE ps.th_pc END,
                th_path = CASE WHEN b.has THEN b.th_path ELSE ps.th_path END,
                th_bind = CASE WHEN b.has THEN b.th_bind ELSE ps.th_bind END,
                deadline = CASE WHEN NOT b.has THEN ps.deadline WHEN c_within IS NOT NULL THEN (
                    SELECT min(b.r_st[array_position(b.r_no, u.t)]) + c_within
                    FROM unnest(b.th_run) AS u (t)) END,
                active = CASE WHEN b.has THEN cardinality(b.r_no) > 0 ELSE ps.active END,
                pending_t = b.pending_t
            FROM (
                SELECT u.k, u.tid, w.k IS NOT NULL AS has,
                    w.upto_t, w.upto_id, w.next_no, w.r_no, w.r_st, w.r_sid, w.r_best, w.r_bend_t,
                    w.r_bend_id, w.th_run, w.th_pc, w.th_path, w.th_bind,
                    -- events beyond the watermark wait: the key remembers its first one (a
                    -- writer's own waiting events are in pending_t since it locked the key)
                    CASE
                        WHEN u.op IS NULL OR u.op > p_to THEN u.op
                        -- taken from pending_t: the next waiting event may be an older arrival
                        ELSE (@NEXT_EVENT@)
                    END AS pending_t
                FROM unnest(v_keys, v_opend, v_tids) AS u (k, op, tid)
                LEFT JOIN unnest(v_out) AS w ON w.k = u.k
                WHERE w.k IS NOT NULL OR u.op <= p_to
                -- OFFSET 0: the next waiting event is looked up once per key
                OFFSET 0
            ) AS b
            -- the rows are locked, so their tuple ids are still theirs: one probe per key
            WHERE ps.ctid = b.tid AND (b.has OR ps.pending_t IS DISTINCT FROM b.pending_t);
        END IF;$f$
$fn$;

COMMENT ON FUNCTION cep._pattern_eager_save_sql() IS
'Internal: generated code that saves the advanced keys of an eager pattern, one write per key.';

-- The lazy engine's start of a live call. The caller holds the keys' cep.pattern_keys rows:
-- FOR UPDATE where the key is matched now, FOR KEY SHARE for the others.
CREATE FUNCTION cep._pattern_lazy_begin_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT $f$
        -- Lazy engine: a key is matched only when the watermark reaches an event that can end
        -- a match (or a match found is not final yet); the caller holds the keys' rows of
        -- cep.pattern_keys, FOR UPDATE for the keys matched now, so no other session has
        -- uncommitted events of them.
        IF p_own IS NOT NULL THEN
            -- a writer: p_keys are the keys of its events that can end a match of this pattern
            -- (every key of its events that some lazy pattern can use when p_own is given);
            -- p_lo the first such event of the key that the watermark reaches (the key is
            -- matched now), p_nx the first it does not reach yet (the caller noted it)
            IF cardinality(p_own) > 0 THEN
                -- Its events at or before the event a key was matched to by a session that
                -- committed while this one waited: late for this pattern (they were late in
                -- serial order too).
                INSERT INTO cep.pattern_late_events (pattern_id, event_id, event_time, partition_key)
                SELECT @PID@, e.id, e.t, e.k
                FROM (@OWN_EVENTS@) AS e
                JOIN cep.pattern_state AS ps ON ps.pattern_id = @PID@ AND ps.k = e.k
                WHERE e.t >= p_from AND (e.t, e.id) <= (ps.upto_t, ps.upto_id) AND (@OWN_RELEVANT@);
                GET DIAGNOSTICS v_n = ROW_COUNT;
                v_late := v_late + v_n;
            END IF;
        END IF;
        -- The keys matched now: a writer's keys with p_lo, every key given otherwise
        -- (cep.advance_watermark, cep.run_maintenance, the backfill of cep.create_pattern).
        SELECT array_agg(u.k ORDER BY u.k), array_agg(u.lo ORDER BY u.k) INTO v_keys, v_trig
        FROM unnest(p_keys, p_lo) AS u (k, lo)
        WHERE p_own IS NULL OR u.lo IS NOT NULL;
        IF v_keys IS NOT NULL THEN
            INSERT INTO cep.pattern_state (pattern_id, k)
            SELECT @PID@, u.k FROM unnest(v_keys) AS u (k)
            ORDER BY u.k
            ON CONFLICT (pattern_id, k) DO NOTHING;
            -- Per key, c: the first event that can end a match that the watermark reaches (or
            -- the watermark at which a match not final yet is looked at again). A run that
            -- starts before c - within cannot reach c, and no event before c can end a match:
            -- matching reads from c - within, or after the last event matched when that is
            -- later. (Open runs that time out before c then miss the events in between, but
            -- they could only end at an event that ends a match: they time out with the match
            -- they have.) Without c nothing is read: runs that time out end (see the end of a
            -- key's turn). A key matched reads its events even when none can start a match
            -- (act), so that its progress (upto) passes every event that can end a match it
            -- consumed: one that commits later before them is late.
            SELECT array_agg(y.k ORDER BY y.k), array_agg(y.lo ORDER BY y.k),
                array_agg(y.tid ORDER BY y.k), array_agg(y.st ORDER BY y.k),
                array_agg(y.lo IS NOT NULL ORDER BY y.k)
            INTO v_keys, v_lo, v_tids, v_states, v_act
            FROM (
                SELECT u.k, x.tid, x.st, greatest(x.upto_t, z.c - c_within) AS lo
                FROM unnest(v_keys, v_trig) AS u (k, tr)
                CROSS JOIN LATERAL (
                    -- one index probe per key (the key rows lock these rows too)
                    SELECT ps.upto_t, ps.pending_t, ps.ctid AS tid, ps AS st
                    FROM cep.pattern_state AS ps
                    WHERE ps.pattern_id = @PID@ AND ps.k = u.k
                    OFFSET 0
                ) AS x
                CROSS JOIN LATERAL (
                    SELECT least(CASE WHEN x.pending_t <= p_to THEN x.pending_t END, u.tr) AS c
                ) AS z
            ) AS y;
            IF p_optimistic THEN
                -- cep.run_maintenance: per key, the stored rows in the range it reads, counted
                -- again at the end (a key whose count changed got an event meanwhile)
                SELECT array_agg(c.n ORDER BY u.o) INTO v_cnt
                FROM unnest(v_keys, v_lo) WITH ORDINALITY AS u (k, lo, o)
                CROSS JOIN LATERAL (@RAW_COUNT@) AS c;
            END IF;
        END IF;$f$
$fn$;

COMMENT ON FUNCTION cep._pattern_lazy_begin_sql() IS
'Internal: generated code that starts a live call of a lazy pattern''s matcher: late events, '
'events that can end a match registered, and the keys matched now with where to read from.';

-- The lazy engine's end of a live call: one write per key matched, and the key rows' progress.
CREATE FUNCTION cep._pattern_lazy_save_sql()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $f$
    SELECT $s$
        IF p_optimistic AND cardinality(v_out) > 0 THEN
            -- cep.run_maintenance matched these keys without their locks, so that no writer
            -- waits for its matching: it keeps the turns of the keys it can lock now (no session
            -- holds them) whose events it read are still all there are (no session committed
            -- one since) and whose state did not change (see the tuple ids below); the others
            -- stay due for its next call
            SELECT array_agg(u.k ORDER BY u.k), array_agg(u.lo ORDER BY u.k),
                array_agg(u.n ORDER BY u.k), array_agg(u.d ORDER BY u.k), array_agg(u.tid ORDER BY u.k)
            INTO v_keys, v_lo, v_cnt, v_kdrops, v_tids
            FROM unnest(v_keys, v_lo, v_cnt, v_kdrops, v_tids) AS u (k, lo, n, d, tid)
            CROSS JOIN LATERAL (
                SELECT pk.k FROM cep.pattern_keys AS pk
                WHERE pk.stream_id = @SID@ AND pk.k = u.k
                FOR UPDATE SKIP LOCKED
            ) AS x;
            SELECT array_agg(u.k ORDER BY u.k), array_agg(u.tid ORDER BY u.k), coalesce(sum(u.d), 0)
            INTO v_keys, v_tids, v_drops
            FROM unnest(v_keys, v_lo, v_cnt, v_kdrops, v_tids) AS u (k, lo, n, d, tid)
            CROSS JOIN LATERAL (@RAW_COUNT@) AS c
            WHERE c.n = u.n;
        END IF;
        -- One write per key matched: its runs, and pending_t: its first event beyond the
        -- watermark that can end a match, or the watermark itself while a match found is not
        -- final (a later event may still decide it: the next cep.run_maintenance() or
        -- cep.advance_watermark looks at the key again).
        IF cardinality(v_keys) > 0 THEN
            WITH upd AS (
            UPDATE cep.pattern_state AS ps
            SET upto_t = b.upto_t,
                upto_id = b.upto_id,
                next_no = b.next_no,
                r_no = b.r_no,
                r_st = b.r_st,
                r_sid = b.r_sid,
                r_best = b.r_best,
                r_bend_t = b.r_bend_t,
                r_bend_id = b.r_bend_id,
                th_run = b.th_run,
                th_pc = b.th_pc,
                th_path = b.th_path,
                th_bind = b.th_bind,
                deadline = (SELECT min(b.r_st[array_position(b.r_no, u.t)]) + c_within
                    FROM unnest(b.th_run) AS u (t)),
                active = cardinality(b.r_no) > 0,
                pending_t = least(b.nf, CASE WHEN b.undecided THEN p_to END)
            FROM (
                SELECT w.*, u.tid, (@NEXT_FINAL@) AS nf,
                    EXISTS (SELECT 1 FROM unnest(w.r_best) AS r (m) WHERE r.m IS NOT NULL) AS undecided
                FROM unnest(v_keys, v_tids) AS u (k, tid)
                JOIN unnest(v_out) AS w ON w.k = u.k
                -- OFFSET 0: the next event is looked up once per key
                OFFSET 0
            ) AS b
            -- the key rows are locked, so these rows keep their tuple ids (one probe per key);
            -- a row another session changed since it was read has a new one (and cep.
            -- run_maintenance leaves that key)
            WHERE ps.ctid = b.tid
            RETURNING ps.k
            )
            SELECT array_agg(upd.k) INTO v_kept FROM upd;
            -- the key row remembers the furthest event a lazy pattern matched the key to
            UPDATE cep.pattern_keys AS pk
            SET upto_t = w.upto_t, upto_id = w.upto_id
            FROM unnest(v_out) AS w
            WHERE pk.stream_id = @SID@ AND pk.k = w.k AND w.upto_t IS NOT NULL
                AND w.k = ANY (v_kept)
                AND (pk.upto_t IS NULL OR (pk.upto_t, pk.upto_id) < (w.upto_t, w.upto_id));
        END IF;
        IF p_optimistic THEN
            -- only the matches of the turns kept
            SELECT coalesce(array_agg(m.k ORDER BY m.o), '{}'), coalesce(array_agg(m.f ORDER BY m.o), '{}'),
                coalesce(array_agg(m.l ORDER BY m.o), '{}'), coalesce(array_agg(m.lid ORDER BY m.o), '{}'),
                coalesce(array_agg(m.path ORDER BY m.o), '{}')
            INTO m_key, m_first, m_last, m_last_id, m_path
            FROM unnest(m_key, m_first, m_last, m_last_id, m_path)
                WITH ORDINALITY AS m (k, f, l, lid, path, o)
            WHERE m.k = ANY (v_kept);
            v_matches := cardinality(m_key);
        END IF;$s$
$f$;

COMMENT ON FUNCTION cep._pattern_lazy_save_sql() IS
'Internal: generated code that saves the keys a lazy pattern matched and their progress.';
