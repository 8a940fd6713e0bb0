-- Code generation for the per-stream ingest function.
-- Invariant: every stream has exactly one generated trigger function, cep._ingest_<id>(),
-- rebuilt from the catalog whenever a definition on the stream changes. The function sees the
-- statement's rows as one set (the transition table cep_new_rows): it validates them, splits
-- off late events, runs each feature section set-based, and appends one cep.stream_log row.
-- Identifiers and literals reach the generated text only through format('%I') and format('%L').

-- The expression for a stream's event time in UTC, over transition-table alias n.
CREATE FUNCTION cep._time_expr(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE
        WHEN s.time_type = 'timestamp without time zone'::regtype
            THEN format('pg_catalog.timezone(''UTC'', n.%I)', s.time_column)
        ELSE format('n.%I', s.time_column)
    END
    FROM cep.streams AS s
    WHERE s.stream_id = _time_expr.stream_id
$fn$;

COMMENT ON FUNCTION cep._time_expr(integer) IS
'Internal: SQL text of a stream''s event time as timestamptz over the row alias n.';

-- The checks every inserted row must pass, as CASE branches naming the first problem
-- ('SQLSTATE:message') and as one condition that any problem makes true, over the batch alias e;
-- and the checked numeric columns as a select list over n.
CREATE FUNCTION cep._compile_checks(
    stream_id integer, OUT bad_case text, OUT bad_any text, OUT cols text
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_col name;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS st WHERE st.stream_id = _compile_checks.stream_id;
    cols := '';
    -- Reasons an event is refused, checked in this order; the first match names the problem.
    bad_case := format(
        'WHEN e.t IS NULL THEN %L ', format('23502:time column %I is NULL', s.time_column));
    IF s.key_column IS NOT NULL THEN
        bad_case := bad_case || format(
            'WHEN e.k IS NULL THEN %L ', format('23502:key column %I is NULL', s.key_column));
    END IF;
    bad_case := bad_case
        || format('WHEN e.id IS NULL THEN %L ', format('23502:id column %I is NULL', s.id_column))
        || format('WHEN NOT pg_catalog.isfinite(e.t) THEN %L ',
            format('22008:time column %I is infinite', s.time_column))
        || format('WHEN e.t > v_limit THEN %L ',
            format('22008:time column %I is more than %s ahead of now()',
                s.time_column, s.max_future_skew));
    bad_any := 'e.t IS NULL OR e.id IS NULL OR NOT pg_catalog.isfinite(e.t) OR e.t > v_limit';
    IF s.key_column IS NOT NULL THEN
        bad_any := bad_any || ' OR e.k IS NULL';
    END IF;
    FOREACH v_col IN ARRAY s.checked_columns LOOP
        cols := cols || format(', n.%I', v_col);
        bad_case := bad_case || format(
            'WHEN e.%I IN (''NaN'', ''Infinity'', ''-Infinity'') THEN %L ',
            v_col, format('22003:column %I is NaN or infinite', v_col));
        bad_any := bad_any || format(' OR e.%I IN (''NaN'', ''Infinity'', ''-Infinity'')', v_col);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._compile_checks(integer) IS
'Internal: the row checks of a stream''s generated ingest code (CASE branches naming the '
'first problem, one condition for any problem) and its checked numeric columns.';

-- The batch of a stream as (t, k, id, checked columns) over the rows relation n.
CREATE FUNCTION cep._batch_sql(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('(SELECT %s AS t, %s AS k, n.%I::bigint AS id%s FROM cep_new_rows AS n)',
        cep._time_expr(s.stream_id),
        CASE WHEN s.key_column IS NULL THEN 'NULL::text' ELSE format('n.%I::text', s.key_column) END,
        s.id_column, (cep._compile_checks(s.stream_id)).cols)
    FROM cep.streams AS s
    WHERE s.stream_id = _batch_sql.stream_id
$fn$;

COMMENT ON FUNCTION cep._batch_sql(integer) IS
'Internal: SQL of a stream''s batch as (t, k, id, checked columns) over cep_new_rows.';

-- The statement-rejection block shared by the synchronous and the asynchronous writer path.
CREATE FUNCTION cep._reject_sql(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format($r$
    IF v_bad > 0 THEN
        SELECT CASE %2$s END, e.id INTO v_reason, v_bad_id
        FROM %4$s AS e
        WHERE %3$s
        LIMIT 1;
        RAISE EXCEPTION 'pg_cep: stream %%: %%', %1$L, pg_catalog.substr(v_reason, 7)
            USING ERRCODE = pg_catalog.substr(v_reason, 1, 5),
            DETAIL = pg_catalog.format('%%s of %%s rows refused; first event id %%s',
                v_bad, v_events, coalesce(v_bad_id::text, 'NULL')),
            HINT = 'The whole statement was rolled back; fix or drop the offending rows.';
    END IF;
$r$, s.name, c.bad_case, c.bad_any, cep._batch_sql(s.stream_id))
    FROM cep.streams AS s
    CROSS JOIN LATERAL cep._compile_checks(s.stream_id) AS c
    WHERE s.stream_id = _reject_sql.stream_id
$fn$;

COMMENT ON FUNCTION cep._reject_sql(integer) IS
'Internal: the generated block that refuses a statement with a bad row, naming the problem.';

CREATE FUNCTION cep._compile_ingest(stream_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_sections text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS st WHERE st.stream_id = _compile_ingest.stream_id;
    v_sections := cep._feature_sections(s.stream_id);

    -- use_variable: the generated code names every column of the user's table qualified
    -- (n.col, s.col), so an unqualified name is always one of its variables, even when the
    -- table has a column of the same name.
    RETURN format($body$#variable_conflict use_variable
-- Generated by pg_cep for stream %1$s; do not edit: cep._regenerate_stream(%1$s) rebuilds it.
DECLARE
    v_started timestamptz := pg_catalog.clock_timestamp();
    v_limit timestamptz := pg_catalog.now() + %2$L::interval;
    v_watermark timestamptz;
    v_events bigint;
    v_late bigint;
    v_bad bigint;
    v_min timestamptz;
    v_max timestamptz;
    v_sketch smallint [];
    v_reason text;
    v_bad_id bigint;
    v_micros bigint;
    v_one_key text;
    v_one_bad boolean;
BEGIN
    SELECT count(*) INTO v_events FROM %7$s AS e;
    IF v_events = 1 THEN
        -- (one row, as from a single-row INSERT: the same figures without the aggregate,
        -- whose executor start cost more than everything else here)
        SELECT w.watermark, e.t, e.k, %3$s
        INTO v_watermark, v_max, v_one_key, v_one_bad
        FROM %7$s AS e
        CROSS JOIN %8$s AS w;
        v_late := CASE WHEN v_max < v_watermark THEN 1 ELSE 0 END;
        v_bad := CASE WHEN v_one_bad THEN 1 ELSE 0 END;
        v_min := CASE WHEN v_max >= v_watermark THEN v_max END;
        v_sketch := CASE WHEN v_max >= v_watermark AND v_one_key IS NOT NULL
            THEN ARRAY[(pg_catalog.hashtext(v_one_key) & 4095)::smallint] END;
    ELSIF v_events > 1 THEN
    -- (one aggregate over the batch, no grouping: the watermark is a one-row relation)
    SELECT max(w.watermark),
        count(*),
        count(*) FILTER (WHERE e.t < w.watermark),
        count(*) FILTER (WHERE %3$s),
        min(e.t) FILTER (WHERE e.t >= w.watermark),
        max(e.t),
        array_agg(DISTINCT (pg_catalog.hashtext(e.k) & 4095)::smallint)
            FILTER (WHERE e.t >= w.watermark AND e.k IS NOT NULL)
    INTO v_watermark, v_events, v_late, v_bad, v_min, v_max, v_sketch
    FROM %7$s AS e
    CROSS JOIN %8$s AS w;
    END IF;

    IF v_events = 0 THEN
        RETURN NULL;
    END IF;

%4$s
    IF v_late > 0 THEN
        INSERT INTO cep.late_events (stream_id, event_id, event_time, partition_key, watermark)
        SELECT %1$s, e.id, e.t, e.k, v_watermark
        FROM %7$s AS e
        WHERE e.t < v_watermark;
    END IF;

%5$s%6$s    RETURN NULL;
END
$body$,
        s.stream_id,                 -- 1
        s.max_future_skew,           -- 2
        (cep._compile_checks(s.stream_id)).bad_any,  -- 3
        cep._reject_sql(s.stream_id),  -- 4
        v_sections,                  -- 5
        format($log$
    v_micros := (extract(epoch FROM pg_catalog.clock_timestamp() - v_started) * 1000000)::bigint;
    INSERT INTO cep.stream_log (
        stream_id, events, late_events, min_event_time, max_event_time, watermark,
        ingest_micros, max_batch_micros, key_sketch
    ) VALUES (
        %1$s, v_events, v_late, v_min, v_max,
        greatest(v_watermark, v_max - %2$L::interval),
        v_micros, v_micros, v_sketch
    );
$log$, s.stream_id, s.allowed_lateness),  -- 6
        -- 7: the batch as (t, k, id, checked columns), read by every statement above
        cep._batch_sql(s.stream_id),
        -- 8: the stream's watermark as a one-row relation: ORDER BY + LIMIT on the (stream_id,
        -- watermark DESC) index, and enable_seqscan off on the generated function, so that the
        -- cached plan stays an index probe however the table grew
        format($w$(
        SELECT coalesce((
            SELECT l.watermark FROM cep.stream_log AS l
            WHERE l.stream_id = %1$s
            ORDER BY l.watermark DESC
            LIMIT 1
        ), '-infinity') AS watermark
    )$w$, s.stream_id)
    );
END
$fn$;

COMMENT ON FUNCTION cep._compile_ingest(integer) IS
'Internal: the PL/pgSQL body of a stream''s generated ingest function, built from the catalog.';

-- The writer-side body of an asynchronous stream: the same checks refuse a bad statement, and
-- the statement's event ids go to cep.stream_queue as one row; the generated processing
-- function cep._process_<id>(ids) later runs the body above over those rows.
CREATE FUNCTION cep._compile_enqueue(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- (use_variable: as in cep._compile_ingest)
    SELECT format($body$#variable_conflict use_variable
-- Generated by pg_cep for asynchronous stream %1$s; do not edit.
DECLARE
    v_limit timestamptz := pg_catalog.now() + %2$L::interval;
    v_events bigint;
    v_bad bigint;
    v_ids pg_catalog.int8multirange;
    v_lo bigint;
    v_hi bigint;
    v_reason text;
    v_bad_id bigint;
BEGIN
    SELECT count(*), count(*) FILTER (WHERE %3$s), min(e.id), max(e.id)
    INTO v_events, v_bad, v_lo, v_hi
    FROM %5$s AS e;

    IF v_events = 0 THEN
        RETURN NULL;
    END IF;
%4$s
    -- contiguous ids (%6$s) are one range; others are collected range by range
    IF %7$s THEN
        v_ids := pg_catalog.int8multirange(pg_catalog.int8range(v_lo, v_hi, '[]'));
    ELSE
        SELECT pg_catalog.range_agg(pg_catalog.int8range(e.id, e.id, '[]')) INTO v_ids
        FROM %5$s AS e;
    END IF;
    INSERT INTO cep.stream_queue (stream_id, ids, events) VALUES (%1$s, v_ids, v_events);
    RETURN NULL;
END
$body$,
        s.stream_id, s.max_future_skew, (cep._compile_checks(s.stream_id)).bad_any,
        cep._reject_sql(s.stream_id),
        -- (the batch as _batch_sql has it, but the key as it is: the checks only ask whether
        -- it is NULL, and its text form would cost a conversion per row)
        format('(SELECT %s AS t, %s AS k, n.%I::bigint AS id%s FROM cep_new_rows AS n)',
            cep._time_expr(s.stream_id),
            CASE WHEN s.key_column IS NULL THEN 'NULL::text' ELSE format('n.%I', s.key_column) END,
            s.id_column, (cep._compile_checks(s.stream_id)).cols),
        CASE WHEN u.uniq THEN 'the id column is unique: max - min + 1 = count says so'
            ELSE 'the id column has no unique index: only a single row is known to be' END,
        CASE WHEN u.uniq THEN 'v_hi - v_lo + 1 = v_events' ELSE 'v_events = 1' END)
    FROM cep.streams AS s
    CROSS JOIN LATERAL (
        SELECT EXISTS (
            SELECT 1 FROM pg_catalog.pg_index AS i
            JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = s.source AND i.indisunique AND i.indnatts = 1
                AND i.indpred IS NULL AND a.attname = s.id_column
        ) AS uniq
    ) AS u
    WHERE s.stream_id = _compile_enqueue.stream_id
$fn$;

COMMENT ON FUNCTION cep._compile_enqueue(integer) IS
'Internal: the PL/pgSQL body of an asynchronous stream''s trigger function: refuse bad rows, '
'queue the statement''s event ids.';

-- The rows of one queued statement, standing in for the transition table in cep._process_<id>.
CREATE FUNCTION cep._queued_rows_sql(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('(SELECT src.* FROM %s AS src WHERE src.%I = ANY (p_ids))', s.source, s.id_column)
    FROM cep.streams AS s
    WHERE s.stream_id = _queued_rows_sql.stream_id
$fn$;

COMMENT ON FUNCTION cep._queued_rows_sql(integer) IS
'Internal: SQL of the source rows of one queued statement (ids p_ids) of an asynchronous stream.';

-- Generated sections read a statement's rows as "FROM cep_new_rows" (the transition table).
-- To run them over other rows, only those references are swapped: the code is split into
-- comments, string literals, quoted identifiers and words, so a column, a constant or a
-- DEFINE condition that happens to spell cep_new_rows is never touched.
CREATE FUNCTION cep._bind_rows(code text, rows_sql text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(string_agg(CASE
        WHEN m.tok[1] ~* '^from\s+cep_new_rows$' THEN 'FROM ' || rows_sql
        ELSE m.tok[1] END, '' ORDER BY m.o), '')
    FROM regexp_matches(code,
        '--[^\n]*|''(?:[^'']|'''')*''|"(?:[^"]|"")*"|[Ff][Rr][Oo][Mm]\s+cep_new_rows(?![A-Za-z0-9_$])'
        '|[A-Za-z_][A-Za-z0-9_$]*|[^-''"A-Za-z_]+|-', 'g') WITH ORDINALITY AS m (tok, o)
$fn$;

COMMENT ON FUNCTION cep._bind_rows(text, text) IS
'Internal: generated code with its references FROM cep_new_rows made to read ROWS_SQL instead; '
'literals, quoted identifiers and comments are left as they are.';

CREATE FUNCTION cep._feature_sections(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Each feature adds its set-based sections here: windows read the batch's on-time rows
    -- (time >= v_watermark), patterns advance to the new watermark (before rules, which can
    -- refer to matches ending at an event), rules assess every row of the batch, and
    -- recommenders fold the batch's on-time rows into their weights.
    SELECT coalesce(
        nullif(concat(
            (
                SELECT string_agg(cep._window_section(w.window_id), '' ORDER BY w.window_id)
                FROM cep.windows AS w
                WHERE w.stream_id = _feature_sections.stream_id
            ),
            cep._pattern_section(_feature_sections.stream_id),
            cep._rule_section(_feature_sections.stream_id),
            (
                SELECT string_agg(cep._recommender_section(r.recommender_id), ''
                    ORDER BY r.recommender_id)
                FROM cep.recommenders AS r
                WHERE r.stream_id = _feature_sections.stream_id
            )
        ), ''),
        format('    -- stream %s: no windows, patterns, rules or recommenders defined',
            _feature_sections.stream_id)
    )
$fn$;

COMMENT ON FUNCTION cep._feature_sections(integer) IS
'Internal: the feature sections (windows, patterns, rules, recommenders) of a stream''s '
'generated ingest function.';

-- Objects pg_cep creates at run time (generated functions, the triggers on the user's tables)
-- are not members of the extension (pg_dump must dump them), so they are tied to it with an
-- automatic dependency instead: DROP EXTENSION pg_cep removes them too, and the user's tables
-- are not left with triggers that call into a dropped extension.
CREATE FUNCTION cep._tie_to_extension(
    fn regprocedure, tg_name name DEFAULT NULL, tg_table regclass DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_sql text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cep') THEN
        RETURN;  -- (installed by the pgcep runner's script path: its uninstall drops them)
    END IF;
    IF fn IS NOT NULL THEN
        v_sql := format('ALTER FUNCTION %s DEPENDS ON EXTENSION pg_cep', fn);
        EXECUTE v_sql;
    END IF;
    IF tg_name IS NOT NULL THEN
        v_sql := format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION pg_cep', tg_name, tg_table);
        EXECUTE v_sql;
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._tie_to_extension(regprocedure, name, regclass) IS
'Internal: mark a generated function, and/or a trigger pg_cep put on a user table, as dependent '
'on the extension, so that DROP EXTENSION pg_cep drops them too.';

-- A generated body with GUARD as the first statements of its outermost block (generated
-- bodies open that block with BEGIN alone on a line at column 0; nested blocks are indented).
CREATE FUNCTION cep._with_guard(code text, guard text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT regexp_replace(code, E'\nBEGIN\n', E'\nBEGIN' || guard || E'\n')
$fn$;

COMMENT ON FUNCTION cep._with_guard(text, text) IS
'Internal: generated code with GUARD put first in its outermost block.';

CREATE FUNCTION cep._regenerate_stream(stream_id integer, healing boolean DEFAULT FALSE)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_process name := format('_process_%s', stream_id);
    v_replica name := format('_replica_%s', stream_id);
    v_name name;
    v_args text;
    v_ddl text;
    v_comment text;
    -- (jit = off: JIT would compile these short statements for far longer than they run;
    -- generic plans: planning the larger statements, e.g. a rule set's assessment, costs
    -- more than running them, and their shape does not depend on the parameters)
    v_sets constant text := ' SET enable_seqscan = off SET TimeZone = ''UTC'' SET jit = off '
        'SET extra_float_digits = 1 SET plan_cache_mode = force_generic_plan';
    v_relname name;
    v_nspname name;
    v_guard text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _regenerate_stream.stream_id;
    SELECT c.relname, n.nspname INTO v_relname, v_nspname
    FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
    WHERE c.oid = s.source;
    IF v_relname IS NULL THEN
        RAISE EXCEPTION 'pg_cep: the table of stream "%" was dropped', s.name
            USING ERRCODE = '42P01',
            HINT = format('Remove the stream with SELECT cep.drop_stream(%L).', s.name);
    END IF;
    -- (healing, from cep._stream_renamed: the old code names a table that is gone, so the
    -- queue is not applied with it first, and a synchronous stream gets a processing function)
    IF s.mode = 'async' AND NOT healing
        AND to_regprocedure(format('cep.%I(bigint [])', v_process)) IS NOT NULL THEN
        -- Statements queued before this change are applied with the definitions they were
        -- queued under (a synchronous stream would have applied them already); callers that
        -- backfill from the table (new windows, recommenders) hold a lock that keeps writers
        -- out, so the backfill then covers exactly the processed rows.
        PERFORM cep._process_queue(s.stream_id, NULL, true);
    END IF;
    FOREACH v_name IN ARRAY ARRAY[s.ingest_function, v_process, v_replica] LOOP
        IF v_name = s.ingest_function THEN
            v_args := '';
            -- The generated code names the table: after a rename (of the table or its
            -- schema) the first statement finds out, has the code rebuilt and its rows
            -- applied by the rebuilt code (the asynchronous writer side names no table).
            v_guard := format($g$
    IF TG_TABLE_NAME <> %L OR TG_TABLE_SCHEMA <> %L THEN
        PERFORM cep._stream_renamed(%s, ARRAY(SELECT n.%I::bigint FROM cep_new_rows AS n));
        RETURN NULL;
    END IF;$g$, v_relname, v_nspname, s.stream_id, s.id_column);
            v_ddl := format(
                'CREATE OR REPLACE FUNCTION cep.%I() RETURNS trigger LANGUAGE plpgsql '
                'SECURITY DEFINER SET search_path = pg_catalog, pg_temp%s AS %L',
                v_name,
                -- (the writer side of an asynchronous stream depends on no other setting)
                CASE s.mode WHEN 'async' THEN '' ELSE v_sets END,
                CASE s.mode WHEN 'async' THEN cep._compile_enqueue(s.stream_id)
                    ELSE cep._with_guard(cep._compile_ingest(s.stream_id), v_guard) END);
            v_comment := CASE s.mode WHEN 'async'
                THEN format('Generated ingest function of pg_cep asynchronous stream %s: checks '
                    'and queues each statement.', stream_id)
                ELSE format('Generated ingest function of pg_cep stream %s.', stream_id) END;
        ELSIF v_name = v_process AND (s.mode = 'async' OR healing) THEN
            v_args := 'bigint []';
            v_guard := format($g$
    IF %s::pg_catalog.oid::pg_catalog.regclass::text <> %L THEN
        RETURN cep._stream_renamed(%s, p_ids);
    END IF;$g$, s.source::oid, s.source::text, s.stream_id);
            v_ddl := format(
                'CREATE OR REPLACE FUNCTION cep.%I(p_ids bigint []) RETURNS integer '
                'LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp%s AS %L',
                v_name, v_sets,
                cep._with_guard(cep._bind_rows(cep._compile_ingest(s.stream_id),
                    cep._queued_rows_sql(s.stream_id)), v_guard));
            v_comment := format('Generated processing function of pg_cep asynchronous stream '
                '%s: applies one queued statement.', stream_id);
        ELSIF v_name = v_replica AND s.replica_batch IS NOT NULL THEN
            -- The row trigger of a replica stream (enabled as REPLICA, so only the logical
            -- replication apply worker fires it): the writer-side body over the one new row.
            v_args := '';
            v_ddl := format(
                'CREATE OR REPLACE FUNCTION cep.%I() RETURNS trigger LANGUAGE plpgsql '
                'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                v_name,
                cep._bind_rows(cep._compile_enqueue(s.stream_id), '(SELECT NEW.*)'));
            v_comment := format('Generated row trigger function of pg_cep replica stream %s: '
                'checks and queues each replicated row.', stream_id);
        ELSIF v_name = v_process THEN
            IF to_regprocedure(format('cep.%I(bigint [])', v_name)) IS NOT NULL THEN
                EXECUTE format('DROP FUNCTION cep.%I(bigint [])', v_name);
            END IF;
            CONTINUE;
        ELSE
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE v_ddl;
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            -- Inside ALTER EXTENSION UPDATE a script may only replace the extension's own
            -- members; generated functions are deliberately not members (pg_dump must dump
            -- them), so lend membership for the replacement and take it back.
            EXECUTE format('ALTER EXTENSION pg_cep ADD FUNCTION cep.%I(%s)', v_name, v_args);
            EXECUTE v_ddl;
            EXECUTE format('ALTER EXTENSION pg_cep DROP FUNCTION cep.%I(%s)', v_name, v_args);
        END;
        EXECUTE format('REVOKE ALL ON FUNCTION cep.%I(%s) FROM PUBLIC', v_name, v_args);
        EXECUTE format('COMMENT ON FUNCTION cep.%I(%s) IS %L', v_name, v_args, v_comment);
        PERFORM cep._tie_to_extension(format('cep.%I(%s)', v_name, v_args)::regprocedure);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._regenerate_stream(integer, boolean) IS
'Internal: rebuild a stream''s generated ingest function (and, for an asynchronous stream, '
'its processing function; for a replica stream, its row trigger function) from the catalog; '
'HEALING (after a rename): without applying the queue first, with a processing function '
'for a synchronous stream too.';

-- A stream's table (or its schema) was renamed after its code was generated: rebuild the
-- code (ingest and processing functions, pattern matchers) under the new name, and apply the
-- rows IDS (the statement that found out, or a queued one) with the rebuilt code.
CREATE FUNCTION cep._stream_renamed(stream_id integer, ids bigint[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_process constant name := format('_process_%s', stream_id);
    v_sql text;
    v_n integer;
BEGIN
    -- one session rebuilds at a time (a second one rebuilds again, harmlessly)
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _stream_renamed.stream_id
    FOR UPDATE;
    PERFORM cep._regenerate_stream(stream_id, true);
    PERFORM cep._pattern_install(p.pattern_id)
    FROM cep.patterns AS p
    WHERE p.stream_id = _stream_renamed.stream_id AND p.kind = 'pattern'
    ORDER BY p.pattern_id;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    v_sql := format('SELECT cep.%I($1)', v_process);
    EXECUTE v_sql INTO v_n USING ids;
    IF s.mode = 'sync' THEN
        -- (a synchronous stream keeps no processing function)
        v_sql := format('DROP FUNCTION cep.%I(bigint [])', v_process);
        EXECUTE v_sql;
    END IF;
    RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION cep._stream_renamed(integer, bigint[]) IS
'Internal: rebuild the generated code of a stream whose table or schema was renamed, and apply '
'the rows IDS with it.';
