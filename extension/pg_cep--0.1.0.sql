-- pg_cep 0.1.0: built from sql/manifest.txt; do not edit, edit the sources.
\echo Use "CREATE EXTENSION pg_cep" to load this file. \quit

-- source: sql/00_install/guard.sql
-- Install guard: refuses to install into a `cep` schema that someone else controls.
-- CREATE EXTENSION reuses an existing schema of the control file's name; a schema owned by
-- another role, or writable by others, could hold planted objects, so installation stops.
-- The whole script runs with a fixed search_path; every object it creates is qualified.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $guard$
DECLARE
    v_owner oid;
    v_writers text;
BEGIN
    SELECT n.nspowner INTO v_owner
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname OPERATOR(pg_catalog.=) 'cep';

    IF v_owner IS NOT NULL AND v_owner OPERATOR(pg_catalog.<>) (
        SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
    ) THEN
        RAISE EXCEPTION 'schema "cep" already exists and is owned by role "%"',
            pg_catalog.pg_get_userbyid(v_owner)
            USING ERRCODE = '42501',
            HINT = 'Drop or rename that schema, or install pg_cep as its owner.';
    END IF;

    SELECT pg_catalog.string_agg(
        CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END, ', ')
    INTO v_writers
    FROM pg_catalog.pg_namespace AS n,
        LATERAL pg_catalog.aclexplode(n.nspacl) AS a
    WHERE n.nspname OPERATOR(pg_catalog.=) 'cep'
        AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
        AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner;

    IF v_writers IS NOT NULL THEN
        RAISE EXCEPTION 'schema "cep" already exists and is writable by %', v_writers
            USING ERRCODE = '42501',
            HINT = 'Revoke CREATE on schema cep from other roles before installing pg_cep.';
    END IF;
END
$guard$;

-- source: sql/01_catalog/streams.sql
-- Stream catalog and stream bookkeeping.
-- cep.streams holds one row per registered table and is only written by definition functions.
-- Ingest never updates a shared row: every statement appends to cep.stream_log (watermark
-- candidate, counters, timing), which readers sum and cep.run_maintenance() compacts.

CREATE TABLE cep.streams (
    stream_id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    source regclass NOT NULL,
    time_column name NOT NULL,
    time_type regtype NOT NULL,
    key_column name,
    id_column name NOT NULL,
    allowed_lateness interval NOT NULL DEFAULT '0 seconds',
    max_future_skew interval NOT NULL DEFAULT '1 day',
    checked_columns name[] NOT NULL DEFAULT '{}',
    notify boolean NOT NULL DEFAULT TRUE,
    notify_channel text NOT NULL DEFAULT 'cep_alerts',
    owner regrole NOT NULL DEFAULT current_user::regrole,
    ingest_function name NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT streams_pkey PRIMARY KEY (stream_id),
    CONSTRAINT streams_name_key UNIQUE (name),
    CONSTRAINT streams_source_key UNIQUE (source),
    CONSTRAINT streams_name_check CHECK (
        octet_length(name) BETWEEN 1 AND 63 AND name !~ '[[:cntrl:]]'
    ),
    CONSTRAINT streams_time_type_check CHECK (
        time_type IN ('timestamp with time zone'::regtype, 'timestamp without time zone'::regtype)
    ),
    CONSTRAINT streams_lateness_check CHECK (
        allowed_lateness >= '0 seconds' AND allowed_lateness < '100 years'
    ),
    CONSTRAINT streams_skew_check CHECK (max_future_skew >= '0 seconds'),
    CONSTRAINT streams_channel_check CHECK (octet_length(notify_channel) BETWEEN 1 AND 63)
);

COMMENT ON TABLE cep.streams IS
'Registered event streams: one row per source table (see cep.create_stream).';

-- One row per ingested statement (or per cep.advance_watermark call); compacted per minute.
CREATE TABLE cep.stream_log (
    stream_id integer NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    batches bigint NOT NULL DEFAULT 1,
    events bigint NOT NULL DEFAULT 0,
    late_events bigint NOT NULL DEFAULT 0,
    min_event_time timestamptz,
    max_event_time timestamptz,
    watermark timestamptz NOT NULL,
    ingest_micros bigint NOT NULL DEFAULT 0,
    max_batch_micros bigint NOT NULL DEFAULT 0,
    key_sketch smallint[],
    compacted boolean NOT NULL DEFAULT FALSE,
    CONSTRAINT stream_log_counts_check CHECK (events >= 0 AND late_events >= 0 AND batches >= 0)
);

CREATE INDEX stream_log_watermark_idx ON cep.stream_log (stream_id, watermark DESC);
-- The ingest path's only lookup is the top of stream_log_watermark_idx; time-range reads by
-- the monitoring views use a BRIN index, which costs almost nothing to maintain on append.
CREATE INDEX stream_log_logged_at_idx ON cep.stream_log USING brin (logged_at);

COMMENT ON TABLE cep.stream_log IS
'Append-only ingest log: one row per ingested statement with its counts, event-time range, '
'watermark candidate, ingest time and a key sketch (the distinct values of '
'hashtext(key) & 4095 among its on-time events); compacted to one row per minute by '
'cep.run_maintenance(). The watermark of a stream is max(watermark) over its rows.';

-- Events that arrived older than the watermark: they stay in the source table but do not
-- change closed results; kept here so they can be audited and excluded by recomputations.
CREATE TABLE cep.late_events (
    stream_id integer NOT NULL,
    event_id bigint NOT NULL,
    event_time timestamptz NOT NULL,
    partition_key text,
    watermark timestamptz NOT NULL,
    arrived_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX late_events_stream_idx ON cep.late_events (stream_id, event_id);
CREATE INDEX late_events_arrived_idx ON cep.late_events (arrived_at);

COMMENT ON TABLE cep.late_events IS
'Events that arrived with an event time older than their stream''s watermark. They remain in '
'the source table and are excluded from windows and patterns.';

-- Global settings as name/value rows; a missing row means the documented default, so the
-- table starts empty and is dumped whole by pg_dump.
CREATE TABLE cep.settings (
    name text NOT NULL,
    value text NOT NULL,
    CONSTRAINT settings_pkey PRIMARY KEY (name),
    CONSTRAINT settings_value_check CHECK (
        CASE name
            WHEN 'notify' THEN value IN ('on', 'off')
            WHEN 'notify_max_queue_usage' THEN value ~ '^(0(\.[0-9]+)?|1(\.0+)?)$'
            WHEN 'stats_retention' THEN value ~ '^[0-9]+ (seconds|minutes|hours|days)$'
            WHEN 'late_event_retention' THEN value ~ '^[0-9]+ (seconds|minutes|hours|days)$'
            ELSE FALSE
        END
    )
);

COMMENT ON TABLE cep.settings IS
'Global pg_cep settings as name/value rows (notify on|off, notify_max_queue_usage 0..1, '
'stats_retention, late_event_retention); a missing row means the default.';

-- source: sql/01_catalog/alerts.sql
-- Alerts: the durable record of everything pg_cep detected. NOTIFY is only a doorbell; this
-- table is the source of truth. Rows are inserted by the ingest path (via cep._raise_alerts)
-- and never updated; txid records the producing transaction so consumers can cut batches by
-- snapshot and never skip an alert whose transaction commits after a higher alert_id.

CREATE TABLE cep.alerts (
    alert_id bigint GENERATED ALWAYS AS IDENTITY,
    source_kind text NOT NULL,
    source_name text NOT NULL,
    stream text,
    partition_key text,
    event_id bigint,
    severity text NOT NULL DEFAULT 'high',
    score float8,
    message text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT alerts_pkey PRIMARY KEY (alert_id),
    CONSTRAINT alerts_source_kind_check CHECK (
        source_kind IN ('rule', 'pattern', 'window', 'absence')
    ),
    CONSTRAINT alerts_severity_check CHECK (
        severity IN ('info', 'low', 'medium', 'high', 'critical')
    ),
    CONSTRAINT alerts_score_check CHECK (
        score IS NULL OR (score >= 0 AND score < 'Infinity'::float8)
    )
);

CREATE INDEX alerts_created_at_idx ON cep.alerts (created_at);
CREATE INDEX alerts_stream_idx ON cep.alerts (stream, created_at);

COMMENT ON TABLE cep.alerts IS
'Durable alerts raised by rules, patterns, windows and absence detection. NOTIFY on channel '
'cep_alerts (or the stream''s channel) only signals that new rows exist.';

-- The row type the ingest path fills to raise alerts as a set.
CREATE TYPE cep.alert_draft AS (
    source_kind text,
    source_name text,
    stream text,
    partition_key text,
    event_id bigint,
    severity text,
    score float8,
    message text,
    details jsonb
);

COMMENT ON TYPE cep.alert_draft IS
'An alert before insertion: what cep._raise_alerts takes, one element per alert.';

-- source: sql/20_alerts/raise.sql
-- Raising alerts and ringing the NOTIFY doorbell.
-- Invariant: the alert rows are written in the caller's transaction; the doorbell is rung at
-- most once per channel per transaction, carries only an alert id, and can never make the
-- caller's statement fail (disabled, queue nearly full, or any NOTIFY error: it stays silent).

CREATE FUNCTION cep._setting(setting text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(
        (SELECT s.value FROM cep.settings AS s WHERE s.name = setting),
        CASE setting
            WHEN 'notify' THEN 'on'
            WHEN 'notify_max_queue_usage' THEN '0.5'
            WHEN 'stats_retention' THEN '7 days'
            WHEN 'late_event_retention' THEN '7 days'
        END
    )
$fn$;

COMMENT ON FUNCTION cep._setting(text) IS
'Internal: the value of a global setting from cep.settings, or its default.';

CREATE FUNCTION cep._ring_doorbell(channel text, alert_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_rung text := coalesce(current_setting('cep.doorbells_rung', true), '');
    v_mark text := '/' || md5(channel) || '/';
BEGIN
    IF channel IS NULL
        OR coalesce(current_setting('cep.notify', true), '') IN ('off', 'false', '0')
        OR cep._setting('notify') = 'off'
        OR strpos(v_rung, v_mark) > 0 THEN
        RETURN false;
    END IF;
    IF pg_notification_queue_usage() >= cep._setting('notify_max_queue_usage')::float8 THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_notify(channel, alert_id::text);
    EXCEPTION WHEN OTHERS THEN
        RETURN false;
    END;
    PERFORM set_config('cep.doorbells_rung', v_rung || v_mark, true);
    RETURN true;
END
$fn$;

COMMENT ON FUNCTION cep._ring_doorbell(text, bigint) IS
'Internal: NOTIFY channel with an alert id as payload, at most once per channel per '
'transaction; never raises. Switched off by SET cep.notify = off (session) or the notify '
'setting (global).';

CREATE FUNCTION cep._raise_alerts(stream_id integer, drafts cep.alert_draft[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_count integer;
    v_notify boolean;
    v_channel text;
BEGIN
    WITH ins AS (
        INSERT INTO cep.alerts (
            source_kind, source_name, stream, partition_key, event_id,
            severity, score, message, details
        )
        SELECT d.source_kind, d.source_name, d.stream, d.partition_key, d.event_id,
            coalesce(d.severity, 'high'), d.score, d.message, coalesce(d.details, '{}')
        FROM unnest(drafts) AS d
        RETURNING alert_id
    )
    SELECT min(ins.alert_id), count(*) INTO v_first, v_count FROM ins;

    IF v_count > 0 THEN
        SELECT s.notify, s.notify_channel INTO v_notify, v_channel
        FROM cep.streams AS s WHERE s.stream_id = _raise_alerts.stream_id;
        IF coalesce(v_notify, true) THEN
            PERFORM cep._ring_doorbell(coalesce(v_channel, 'cep_alerts'), v_first);
        END IF;
    END IF;
    RETURN v_count;
END
$fn$;

COMMENT ON FUNCTION cep._raise_alerts(integer, cep.alert_draft[]) IS
'Internal: insert a set of alerts for a stream in one statement and ring its doorbell.';

-- source: sql/10_streams/codegen.sql
-- Code generation for the per-stream ingest function.
-- Invariant: every stream has exactly one generated trigger function, cep._ingest_<id>(),
-- rebuilt from the catalog whenever a definition on the stream changes. The function sees the
-- statement's rows as one set (the transition table cep_new_rows): it validates them, splits
-- off late events, runs each feature section set-based, and appends one cep.stream_log row.
-- Identifiers and literals reach the generated text only through format('%I') and format('%L').

CREATE FUNCTION cep._compile_ingest(stream_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_time_expr text;
    v_key_expr text;
    v_cols text := '';
    v_bad_case text;
    v_bad_any text;
    v_col name;
    v_sections text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS st WHERE st.stream_id = _compile_ingest.stream_id;
    v_sections := cep._feature_sections(s.stream_id);

    IF s.time_type = 'timestamp without time zone'::regtype THEN
        -- A column without time zone holds UTC wall-clock time, whatever the session TimeZone.
        v_time_expr := format('pg_catalog.timezone(''UTC'', n.%I)', s.time_column);
    ELSE
        v_time_expr := format('n.%I', s.time_column);
    END IF;
    v_key_expr := CASE WHEN s.key_column IS NULL THEN 'NULL::text'
        ELSE format('n.%I::text', s.key_column) END;

    -- Reasons an event is refused, checked in this order; the first match names the problem.
    v_bad_case := format(
        'WHEN e.t IS NULL THEN %L ', format('23502:time column %I is NULL', s.time_column));
    IF s.key_column IS NOT NULL THEN
        v_bad_case := v_bad_case || format(
            'WHEN e.k IS NULL THEN %L ', format('23502:key column %I is NULL', s.key_column));
    END IF;
    v_bad_case := v_bad_case
        || format('WHEN e.id IS NULL THEN %L ', format('23502:id column %I is NULL', s.id_column))
        || format('WHEN NOT pg_catalog.isfinite(e.t) THEN %L ',
            format('22008:time column %I is infinite', s.time_column))
        || format('WHEN e.t > v_limit THEN %L ',
            format('22008:time column %I is more than %s ahead of now()',
                s.time_column, s.max_future_skew));
    v_bad_any := 'e.t IS NULL OR e.id IS NULL OR NOT pg_catalog.isfinite(e.t) OR e.t > v_limit';
    IF s.key_column IS NOT NULL THEN
        v_bad_any := v_bad_any || ' OR e.k IS NULL';
    END IF;
    FOREACH v_col IN ARRAY s.checked_columns LOOP
        v_cols := v_cols || format(', n.%I', v_col);
        v_bad_case := v_bad_case || format(
            'WHEN e.%I IN (''NaN'', ''Infinity'', ''-Infinity'') THEN %L ',
            v_col, format('22003:column %I is NaN or infinite', v_col));
        v_bad_any := v_bad_any || format(' OR e.%I IN (''NaN'', ''Infinity'', ''-Infinity'')', v_col);
    END LOOP;

    RETURN format($body$
-- Generated by pg_cep for stream %2$s; do not edit: cep._regenerate_stream(%2$s) rebuilds it.
DECLARE
    v_started timestamptz := pg_catalog.clock_timestamp();
    v_limit timestamptz := pg_catalog.now() + %3$L::interval;
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
BEGIN
    SELECT coalesce(w.watermark, '-infinity'),
        count(*),
        count(*) FILTER (WHERE e.t < coalesce(w.watermark, '-infinity')),
        count(*) FILTER (WHERE %4$s),
        min(e.t) FILTER (WHERE e.t >= coalesce(w.watermark, '-infinity')),
        max(e.t),
        array_agg(DISTINCT (pg_catalog.hashtext(e.k) & 4095)::smallint)
            FILTER (WHERE e.t >= coalesce(w.watermark, '-infinity') AND e.k IS NOT NULL)
    INTO v_watermark, v_events, v_late, v_bad, v_min, v_max, v_sketch
    FROM (SELECT %5$s AS t, %6$s AS k, n.%7$I::bigint AS id%8$s FROM cep_new_rows AS n) AS e
    LEFT JOIN (
        -- ORDER BY + LIMIT on the (stream_id, watermark DESC) index, and enable_seqscan off
        -- on this function: the cached plan stays an index probe however the table grew.
        SELECT l.watermark FROM cep.stream_log AS l
        WHERE l.stream_id = %2$s
        ORDER BY l.watermark DESC
        LIMIT 1
    ) AS w ON true
    GROUP BY w.watermark;

    IF v_events IS NULL THEN
        RETURN NULL;
    END IF;

    IF v_bad > 0 THEN
        SELECT CASE %9$s END, e.id INTO v_reason, v_bad_id
        FROM (SELECT %5$s AS t, %6$s AS k, n.%7$I::bigint AS id%8$s FROM cep_new_rows AS n) AS e
        WHERE %4$s
        LIMIT 1;
        RAISE EXCEPTION 'pg_cep: stream %%: %%', %1$L, pg_catalog.substr(v_reason, 7)
            USING ERRCODE = pg_catalog.substr(v_reason, 1, 5),
            DETAIL = pg_catalog.format('%%s of %%s rows refused; first event id %%s',
                v_bad, v_events, coalesce(v_bad_id::text, 'NULL')),
            HINT = 'The whole statement was rolled back; fix or drop the offending rows.';
    END IF;

    IF v_late > 0 THEN
        INSERT INTO cep.late_events (stream_id, event_id, event_time, partition_key, watermark)
        SELECT %2$s, e.id, e.t, e.k, v_watermark
        FROM (SELECT %5$s AS t, %6$s AS k, n.%7$I::bigint AS id FROM cep_new_rows AS n) AS e
        WHERE e.t < v_watermark;
    END IF;

%10$s%12$s    RETURN NULL;
END
$body$,
        s.name,                      -- 1
        s.stream_id,                 -- 2
        s.max_future_skew,           -- 3
        v_bad_any,                   -- 4
        v_time_expr,                 -- 5
        v_key_expr,                  -- 6
        s.id_column,                 -- 7
        v_cols,                      -- 8
        v_bad_case,                  -- 9
        v_sections,                  -- 10
        s.allowed_lateness,          -- 11
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
$log$, s.stream_id, s.allowed_lateness)  -- 12
    );
END
$fn$;

COMMENT ON FUNCTION cep._compile_ingest(integer) IS
'Internal: the PL/pgSQL body of a stream''s generated ingest function, built from the catalog.';

CREATE FUNCTION cep._feature_sections(stream_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- Windows, patterns, rules and recommenders add their set-based sections here; each
    -- section reads the batch's non-late rows (e.t >= v_watermark) from cep_new_rows.
    SELECT format('    -- stream %s: no windows, patterns, rules or recommenders defined', stream_id)
$fn$;

COMMENT ON FUNCTION cep._feature_sections(integer) IS
'Internal: the feature sections (windows, patterns, rules, recommenders) of a stream''s '
'generated ingest function.';

CREATE FUNCTION cep._regenerate_stream(stream_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_function name;
    v_ddl text;
BEGIN
    SELECT s.ingest_function INTO STRICT v_function
    FROM cep.streams AS s WHERE s.stream_id = _regenerate_stream.stream_id;
    v_ddl := format(
        'CREATE OR REPLACE FUNCTION cep.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
        'SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS %L',
        v_function, cep._compile_ingest(stream_id));
    BEGIN
        EXECUTE v_ddl;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        -- Inside ALTER EXTENSION UPDATE a script may only replace the extension's own
        -- members; generated functions are deliberately not members (pg_dump must dump
        -- them), so lend membership for the replacement and take it back.
        EXECUTE format('ALTER EXTENSION pg_cep ADD FUNCTION cep.%I()', v_function);
        EXECUTE v_ddl;
        EXECUTE format('ALTER EXTENSION pg_cep DROP FUNCTION cep.%I()', v_function);
    END;
    EXECUTE format('REVOKE ALL ON FUNCTION cep.%I() FROM PUBLIC', v_function);
    EXECUTE format('COMMENT ON FUNCTION cep.%I() IS %L', v_function,
        format('Generated ingest function of pg_cep stream %s.', stream_id));
END
$fn$;

COMMENT ON FUNCTION cep._regenerate_stream(integer) IS
'Internal: rebuild a stream''s generated ingest function from the catalog.';

-- source: sql/10_streams/api.sql
-- Stream definition API: create_stream, drop_stream, advance_watermark.
-- Invariant: a stream exists iff its cep.streams row, its generated function and its single
-- AFTER INSERT FOR EACH STATEMENT trigger exist; each function creates or removes all of them
-- in one transaction, so a failed call leaves nothing half-made.

CREATE FUNCTION cep._stream_id(stream text)
RETURNS integer
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
BEGIN
    IF stream IS NULL THEN
        RAISE EXCEPTION 'stream must not be NULL' USING ERRCODE = '22023';
    END IF;
    SELECT s.stream_id INTO v_id FROM cep.streams AS s WHERE s.name = stream;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'stream "%" does not exist', stream
            USING ERRCODE = '42704', HINT = 'See SELECT name FROM cep.streams.';
    END IF;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep._stream_id(text) IS
'Internal: the id of a stream by name; raises 42704 when there is none.';

CREATE FUNCTION cep._watermark(stream_id integer)
RETURNS timestamptz
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(max(l.watermark), '-infinity')
    FROM cep.stream_log AS l
    WHERE l.stream_id = _watermark.stream_id
$fn$;

COMMENT ON FUNCTION cep._watermark(integer) IS
'Internal: a stream''s watermark, max(event time seen) - allowed_lateness, or the time given '
'to cep.advance_watermark if later; -infinity before the first event.';

CREATE FUNCTION cep.create_stream(
    name text,
    source regclass,
    time_column name,
    key_column name DEFAULT NULL,
    id_column name DEFAULT NULL,
    allowed_lateness interval DEFAULT '0 seconds',
    max_future_skew interval DEFAULT '1 day',
    notify boolean DEFAULT TRUE,
    notify_channel text DEFAULT 'cep_alerts'
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_rel record;
    v_time_type regtype;
    v_id_column name := id_column;
    v_id_type regtype;
    v_checked name [];
    v_stream_id integer;
BEGIN
    IF name IS NULL OR octet_length(name) NOT BETWEEN 1 AND 63 OR name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid stream name %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '22023',
            HINT = 'name must be 1 to 63 bytes without control characters.';
    END IF;
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF time_column IS NULL THEN
        RAISE EXCEPTION 'time_column must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF allowed_lateness IS NULL OR allowed_lateness < '0 seconds'
        OR allowed_lateness >= '100 years' THEN
        RAISE EXCEPTION 'allowed_lateness must be an interval from 0 to 100 years, got %',
            coalesce(allowed_lateness::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF max_future_skew IS NULL OR max_future_skew < '0 seconds' THEN
        RAISE EXCEPTION 'max_future_skew must be a non-negative interval, got %',
            coalesce(max_future_skew::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF notify IS NULL OR notify_channel IS NULL OR octet_length(notify_channel) NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'notify and notify_channel (1 to 63 bytes) must not be NULL'
            USING ERRCODE = '22023';
    END IF;

    SELECT c.oid, c.relkind, c.relispartition, c.relowner INTO v_rel
    FROM pg_catalog.pg_class AS c WHERE c.oid = source;
    IF v_rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'source % is not a table', source USING ERRCODE = '42809';
    END IF;
    IF v_rel.relispartition THEN
        RAISE EXCEPTION 'source % is a partition', source
            USING ERRCODE = '42809', HINT = 'Register the partitioned table instead.';
    END IF;
    IF NOT pg_has_role(v_rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table % to make it a stream', source
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM cep.streams AS s WHERE s.name = create_stream.name) THEN
        RAISE EXCEPTION 'stream "%" already exists', name USING ERRCODE = '42710';
    END IF;
    IF EXISTS (SELECT 1 FROM cep.streams AS s WHERE s.source = create_stream.source) THEN
        RAISE EXCEPTION 'table % is already registered as stream "%"', source,
            (SELECT s.name FROM cep.streams AS s WHERE s.source = create_stream.source)
            USING ERRCODE = '42710';
    END IF;

    SELECT a.atttypid::regtype INTO v_time_type
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = source AND a.attname = time_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_time_type IS NULL THEN
        RAISE EXCEPTION 'time_column "%" does not exist in %', time_column, source
            USING ERRCODE = '42703';
    END IF;
    IF v_time_type NOT IN ('timestamp with time zone'::regtype,
                           'timestamp without time zone'::regtype) THEN
        RAISE EXCEPTION 'time_column "%" has type %, expected timestamptz or timestamp',
            time_column, v_time_type USING ERRCODE = '42804';
    END IF;

    IF key_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = source AND a.attname = key_column AND a.attnum > 0
            AND NOT a.attisdropped
    ) THEN
        RAISE EXCEPTION 'key_column "%" does not exist in %', key_column, source
            USING ERRCODE = '42703';
    END IF;

    IF v_id_column IS NULL THEN
        SELECT a.attname INTO v_id_column
        FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_attribute AS a
            ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = source AND i.indisprimary AND i.indnatts = 1;
        IF v_id_column IS NULL THEN
            RAISE EXCEPTION 'id_column must be given: % has no single-column primary key', source
                USING ERRCODE = '22023';
        END IF;
    END IF;
    SELECT a.atttypid::regtype INTO v_id_type
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = source AND a.attname = v_id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_id_type IS NULL THEN
        RAISE EXCEPTION 'id_column "%" does not exist in %', v_id_column, source
            USING ERRCODE = '42703';
    END IF;
    IF v_id_type NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
        RAISE EXCEPTION 'id_column "%" has type %, expected smallint, integer or bigint',
            v_id_column, v_id_type USING ERRCODE = '42804';
    END IF;

    -- Every floating-point or numeric column is checked for NaN and infinities on ingest.
    SELECT coalesce(array_agg(a.attname ORDER BY a.attnum), '{}') INTO v_checked
    FROM pg_catalog.pg_attribute AS a
    JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = source AND a.attnum > 0 AND NOT a.attisdropped
        AND (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)
            IN ('real'::regtype, 'double precision'::regtype, 'numeric'::regtype);

    INSERT INTO cep.streams (
        name, source, time_column, time_type, key_column, id_column, allowed_lateness,
        max_future_skew, checked_columns, notify, notify_channel, ingest_function
    ) VALUES (
        name, source, time_column, v_time_type, key_column, v_id_column, allowed_lateness,
        max_future_skew, v_checked, notify, notify_channel, 'pending'
    ) RETURNING stream_id INTO v_stream_id;
    UPDATE cep.streams AS s SET ingest_function = format('_ingest_%s', v_stream_id)
    WHERE s.stream_id = v_stream_id;

    PERFORM cep._regenerate_stream(v_stream_id);
    EXECUTE format(
        'CREATE TRIGGER cep_stream_ingest AFTER INSERT ON %s REFERENCING NEW TABLE AS cep_new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION cep.%I()',
        source, format('_ingest_%s', v_stream_id));

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = source AND i.indisunique AND i.indnatts = 1 AND a.attname = v_id_column
    ) THEN
        RAISE NOTICE 'pg_cep: id_column "%" of % has no unique index; event ids must be unique',
            v_id_column, source;
    END IF;
    RETURN v_stream_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_stream(text, regclass, name, name, name, interval, interval, boolean, text) IS
'Register an existing (plain or range-partitioned) table as event stream NAME: events are '
'ordered by (time_column, id_column) per key_column; an AFTER INSERT statement trigger '
'processes every INSERT or COPY as one set. Rows with a NULL time, key or id, an infinite '
'time, a time more than max_future_skew ahead of now(), or NaN/Infinity in a numeric column '
'make the whole statement fail. Returns the stream id.';

CREATE FUNCTION cep.drop_stream(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
BEGIN
    SELECT * INTO s FROM cep.streams AS st WHERE st.stream_id = cep._stream_id(drop_stream.name);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = s.source) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS cep_stream_ingest ON %s', s.source);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS cep.%I()', s.ingest_function);
    DELETE FROM cep.late_events AS l WHERE l.stream_id = s.stream_id;
    DELETE FROM cep.stream_log AS l WHERE l.stream_id = s.stream_id;
    DELETE FROM cep.streams AS st WHERE st.stream_id = s.stream_id;
END
$fn$;

COMMENT ON FUNCTION cep.drop_stream(text) IS
'Remove stream NAME: its trigger, generated function, bookkeeping and every derived object. '
'The source table and its rows are untouched; alerts already raised are kept.';

CREATE FUNCTION cep.advance_watermark(stream text, to_time timestamptz DEFAULT 'infinity')
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._stream_id(stream);
BEGIN
    IF to_time IS NULL OR to_time = '-infinity' THEN
        RAISE EXCEPTION 'to_time must be a time or ''infinity'', got %',
            coalesce(to_time::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF to_time > cep._watermark(v_id) THEN
        INSERT INTO cep.stream_log (stream_id, batches, events, watermark)
        VALUES (v_id, 0, 0, to_time);
    END IF;
    RETURN cep._watermark(v_id);
END
$fn$;

COMMENT ON FUNCTION cep.advance_watermark(text, timestamptz) IS
'Declare that no event of STREAM older than TO_TIME will arrive: the watermark moves to TO_TIME '
'if that is later (closing windows, finalizing matches, firing absence timeouts). ''infinity'' '
'means end of stream. Returns the watermark.';

-- source: sql/70_maintenance/run_maintenance.sql
-- Periodic duties, run by cep.run_maintenance() from any scheduler.
-- Invariant: idempotent and safe from several sessions at once (one transaction-scoped
-- advisory lock; a second caller skips instead of waiting), and never changes a figure that
-- the monitoring views report: compaction preserves sums, maxima and sketches.

CREATE FUNCTION cep.run_maintenance()
RETURNS TABLE (task text, items bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_n bigint;
    v_now timestamptz := clock_timestamp();
    v_stats_retention interval := cep._setting('stats_retention')::interval;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pg_cep run_maintenance')) THEN
        task := 'skipped: another session is running maintenance';
        items := 0;
        RETURN NEXT;
        RETURN;
    END IF;

    -- Fold ingest-log rows older than the previous minute into one row per stream and minute.
    WITH moved AS (
        DELETE FROM cep.stream_log AS l
        WHERE NOT l.compacted
            AND l.logged_at < date_trunc('minute', v_now) - interval '1 minute'
        RETURNING l.*
    ), sketches AS (
        SELECT m.stream_id, date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00') AS minute,
            array_agg(DISTINCT p.position ORDER BY p.position) AS key_sketch
        FROM moved AS m
        CROSS JOIN LATERAL unnest(m.key_sketch) AS p (position)
        GROUP BY 1, 2
    ), ins AS (
        INSERT INTO cep.stream_log (
            stream_id, logged_at, batches, events, late_events, min_event_time,
            max_event_time, watermark, ingest_micros, max_batch_micros, key_sketch, compacted
        )
        SELECT g.stream_id, g.minute, g.batches, g.events, g.late_events, g.min_event_time,
            g.max_event_time, g.watermark, g.ingest_micros, g.max_batch_micros, k.key_sketch, true
        FROM (
            SELECT m.stream_id,
                date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00') AS minute,
                sum(m.batches) AS batches, sum(m.events) AS events,
                sum(m.late_events) AS late_events, min(m.min_event_time) AS min_event_time,
                max(m.max_event_time) AS max_event_time, max(m.watermark) AS watermark,
                sum(m.ingest_micros) AS ingest_micros, max(m.max_batch_micros) AS max_batch_micros
            FROM moved AS m
            GROUP BY 1, 2
        ) AS g
        LEFT JOIN sketches AS k ON k.stream_id = g.stream_id AND k.minute = g.minute
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM moved;
    task := 'compact_stream_log';
    items := v_n;
    RETURN NEXT;

    -- Past the statistics retention, keep only one archive row per stream (totals, watermark).
    IF EXISTS (
        SELECT 1 FROM cep.stream_log AS l
        WHERE l.logged_at < v_now - v_stats_retention AND l.logged_at > '-infinity'
    ) THEN
        WITH moved AS (
            DELETE FROM cep.stream_log AS l
            WHERE l.logged_at < v_now - v_stats_retention
            RETURNING l.*
        ), ins AS (
            INSERT INTO cep.stream_log (
                stream_id, logged_at, batches, events, late_events, min_event_time,
                max_event_time, watermark, ingest_micros, max_batch_micros, compacted
            )
            SELECT m.stream_id, '-infinity', sum(m.batches), sum(m.events), sum(m.late_events),
                min(m.min_event_time), max(m.max_event_time), max(m.watermark),
                sum(m.ingest_micros), max(m.max_batch_micros), true
            FROM moved AS m
            GROUP BY m.stream_id
            RETURNING 1
        )
        SELECT count(*) INTO v_n FROM moved;
    ELSE
        v_n := 0;
    END IF;
    task := 'archive_stream_log';
    items := v_n;
    RETURN NEXT;

    DELETE FROM cep.late_events AS l
    WHERE l.arrived_at < v_now - cep._setting('late_event_retention')::interval;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_late_events';
    items := v_n;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION cep.run_maintenance() IS
'Run every periodic duty once and report what was done, one row per task: compaction of the '
'ingest log, archiving past stats_retention, purging late events past late_event_retention. '
'Idempotent; a concurrent second call skips. Schedule it every minute (pg_cron or any '
'scheduler).';

-- source: sql/80_monitoring/stream_stats.sql
-- Monitoring of streams: cep.stream_stats, cep.dashboard, cep.timeline.
-- Invariant: these read only pg_cep's own bookkeeping (cep.stream_log, cep.alerts), never the
-- event tables, so they stay cheap however large the streams grow.

-- Linear-counting estimate of distinct keys from the number of distinct positions that
-- hashtext(key) & 4095 took (within a few percent below ~10k keys; saturates near 30k, where it
-- reports the saturation bound).
CREATE FUNCTION cep._sketch_estimate(positions bigint)
RETURNS bigint
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE
        WHEN positions IS NULL OR positions <= 0 THEN 0
        WHEN positions >= 4096 THEN round(4096 * ln(4096::float8))::bigint
        ELSE round(-4096 * ln((4096 - positions)::float8 / 4096))::bigint
    END
$fn$;

COMMENT ON FUNCTION cep._sketch_estimate(bigint) IS
'Internal: estimated number of distinct keys behind a key sketch with POSITIONS distinct '
'positions out of 4096 (linear counting).';

CREATE VIEW cep.stream_stats AS
SELECT
    s.name AS stream,
    coalesce(a.events, 0)::bigint AS events_total,
    coalesce(a.events_last_minute, 0)::bigint AS events_last_minute,
    round(coalesce(a.events_last_minute, 0) / 60.0, 3) AS events_per_second,
    a.last_event_time,
    coalesce(a.watermark, '-infinity') AS watermark,
    clock_timestamp() - a.last_event_time AS lag,
    coalesce(a.late_events, 0)::bigint AS late_events,
    coalesce(a.batches, 0)::bigint AS batches_total,
    round(a.ingest_micros::numeric / nullif(a.events, 0), 2) AS ingest_micros_per_event,
    round(a.ingest_micros::numeric / nullif(a.batches, 0), 2) AS ingest_micros_per_batch,
    a.last_ingest_at,
    s.allowed_lateness
FROM cep.streams AS s
LEFT JOIN LATERAL (
    SELECT
        sum(l.events) AS events,
        sum(l.events) FILTER (WHERE l.logged_at >= clock_timestamp() - interval '1 minute')
            AS events_last_minute,
        max(l.max_event_time) AS last_event_time,
        max(l.watermark) AS watermark,
        sum(l.late_events) AS late_events,
        sum(l.batches) AS batches,
        sum(l.ingest_micros) AS ingest_micros,
        max(l.logged_at) FILTER (WHERE l.events > 0) AS last_ingest_at
    FROM cep.stream_log AS l
    WHERE l.stream_id = s.stream_id
) AS a ON TRUE;

COMMENT ON VIEW cep.stream_stats IS
'One row per stream: events_total, events_last_minute, events_per_second (last minute), '
'last_event_time, watermark, lag (wall clock minus the newest event time), late_events, '
'batches_total and the ingest time per event and per batch in microseconds.';

CREATE VIEW cep.dashboard AS
WITH recent AS (
    SELECT
        l.stream_id,
        sum(l.events) AS events,
        sum(l.events) FILTER (WHERE l.logged_at >= clock_timestamp() - interval '1 minute')
            AS events_last_minute,
        sum(l.batches) AS batches,
        sum(l.ingest_micros) AS ingest_micros
    FROM cep.stream_log AS l
    WHERE l.logged_at >= clock_timestamp() - interval '1 hour'
    GROUP BY l.stream_id
),

keys AS (
    SELECT
        l.stream_id,
        count(DISTINCT p.position) AS positions
    FROM cep.stream_log AS l
    CROSS JOIN LATERAL unnest(l.key_sketch) AS p (position)
    WHERE l.logged_at >= clock_timestamp() - interval '1 hour'
    GROUP BY l.stream_id
)

SELECT
    (SELECT count(*) FROM cep.streams) AS streams,
    coalesce(sum(r.events), 0)::bigint AS events_last_hour,
    round(coalesce(sum(r.events_last_minute), 0) / 60.0, 3) AS events_per_second,
    round(sum(r.ingest_micros)::numeric / nullif(sum(r.batches), 0) / 1000.0, 3)
        AS avg_ingest_latency_ms,
    coalesce(sum(cep._sketch_estimate(k.positions)), 0)::bigint AS active_keys,
    (
        SELECT count(*) FROM cep.alerts AS al
        WHERE al.created_at >= clock_timestamp() - interval '1 hour'
    ) AS alerts_last_hour
FROM recent AS r
LEFT JOIN keys AS k ON r.stream_id = k.stream_id;

COMMENT ON VIEW cep.dashboard IS
'One row for a psql dashboard: streams, events_last_hour, events_per_second (last minute), '
'avg_ingest_latency_ms (ingest function time per statement, last hour), active_keys '
'(estimated distinct keys seen in the last hour) and alerts_last_hour.';

CREATE FUNCTION cep.timeline(
    stream text,
    bucket interval DEFAULT '1 minute',
    span interval DEFAULT '1 hour'
)
RETURNS TABLE (
    bucket_start timestamptz,
    events bigint,
    late_events bigint,
    batches bigint,
    events_per_second numeric,
    ingest_micros_per_event numeric,
    alerts bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._stream_id(stream);
    v_from timestamptz;
BEGIN
    IF bucket IS NULL OR bucket <= '0 seconds' THEN
        RAISE EXCEPTION 'bucket must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF span IS NULL OR span <= '0 seconds' THEN
        RAISE EXCEPTION 'span must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF extract(epoch FROM span) / extract(epoch FROM bucket) > 10000 THEN
        RAISE EXCEPTION 'span / bucket must be at most 10000 buckets' USING ERRCODE = '22023';
    END IF;
    v_from := date_bin(bucket, clock_timestamp() - span, '1970-01-01 00:00:00+00');
    RETURN QUERY
    WITH b AS (
        SELECT g AS bucket_start
        FROM generate_series(v_from, clock_timestamp(), bucket) AS g
    ), l AS (
        SELECT date_bin(bucket, sl.logged_at, '1970-01-01 00:00:00+00') AS bucket_start,
            sum(sl.events) AS events, sum(sl.late_events) AS late_events,
            sum(sl.batches) AS batches, sum(sl.ingest_micros) AS ingest_micros
        FROM cep.stream_log AS sl
        WHERE sl.stream_id = v_id AND sl.logged_at >= v_from
        GROUP BY 1
    ), a AS (
        SELECT date_bin(bucket, al.created_at, '1970-01-01 00:00:00+00') AS bucket_start,
            count(*) AS alerts
        FROM cep.alerts AS al
        WHERE al.stream = timeline.stream AND al.created_at >= v_from
        GROUP BY 1
    )
    SELECT b.bucket_start,
        coalesce(l.events, 0)::bigint,
        coalesce(l.late_events, 0)::bigint,
        coalesce(l.batches, 0)::bigint,
        round(coalesce(l.events, 0) / extract(epoch FROM bucket), 3),
        round(l.ingest_micros::numeric / nullif(l.events, 0), 2),
        coalesce(a.alerts, 0)::bigint
    FROM b
    LEFT JOIN l ON l.bucket_start = b.bucket_start
    LEFT JOIN a ON a.bucket_start = b.bucket_start
    ORDER BY b.bucket_start;
END
$fn$;

COMMENT ON FUNCTION cep.timeline(text, interval, interval) IS
'Per-bucket activity of STREAM over the last SPAN (buckets aligned to the Unix epoch): events, '
'late events, statements, events per second, ingest time per event and alerts raised. '
'Runs as the extension owner so that readers need no access to the bookkeeping tables.';

-- source: sql/90_security/privileges.sql
-- Privileges and dump behaviour of the installed objects.
-- Invariant: internal functions (named _*) and SECURITY DEFINER functions are not executable
-- by PUBLIC; catalog and state
-- tables are marked for pg_dump so their rows survive dump and restore. Roles are never
-- created here: README.md gives the grant recipe for admin, writer and reader roles.

DO $privileges$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace OPERATOR(pg_catalog.=) 'cep'::regnamespace
            AND (p.proname OPERATOR(pg_catalog.~~) '\_%' OR p.prosecdef)
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$privileges$;

-- The migration runner applies this script outside CREATE EXTENSION, where
-- pg_extension_config_dump is not allowed; it sets pgcep.script_install to say so.
DO $dump$
BEGIN
    IF pg_catalog.current_setting('pgcep.script_install', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_extension_config_dump('cep.streams', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.streams_stream_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.stream_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.late_events', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.settings', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.alerts', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.alerts_alert_id_seq', '');
    END IF;
END
$dump$;
