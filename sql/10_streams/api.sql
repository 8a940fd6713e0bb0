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
    notify_channel text DEFAULT 'cep_alerts',
    mode text DEFAULT 'sync'
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
    IF mode IS NULL OR mode NOT IN ('sync', 'async') THEN
        RAISE EXCEPTION 'mode must be ''sync'' or ''async'', got %', coalesce(quote_literal(mode), 'NULL')
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
        max_future_skew, checked_columns, notify, notify_channel, ingest_function, mode
    ) VALUES (
        name, source, time_column, v_time_type, key_column, v_id_column, allowed_lateness,
        max_future_skew, v_checked, notify, notify_channel, 'pending', create_stream.mode
    ) RETURNING stream_id INTO v_stream_id;
    UPDATE cep.streams AS s SET ingest_function = format('_ingest_%s', v_stream_id)
    WHERE s.stream_id = v_stream_id;

    PERFORM cep._regenerate_stream(v_stream_id);
    EXECUTE format(
        'CREATE TRIGGER cep_stream_ingest AFTER INSERT ON %s REFERENCING NEW TABLE AS cep_new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION cep.%I()',
        source, format('_ingest_%s', v_stream_id));
    PERFORM cep._tie_to_extension(NULL, 'cep_stream_ingest', source);

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

COMMENT ON FUNCTION cep.create_stream(text, regclass, name, name, name, interval, interval, boolean, text, text) IS
'Register an existing (plain or range-partitioned) table as event stream NAME: events are '
'ordered by (time_column, id_column) per key_column; an AFTER INSERT statement trigger '
'processes every INSERT or COPY as one set, in the writer''s transaction (mode ''sync'') or, '
'with mode ''async'', queues the statement''s event ids for cep.process_stream. Rows with a '
'NULL time, key or id, an infinite time, a time more than max_future_skew ahead of now(), or '
'NaN/Infinity in a numeric column make the whole statement fail in both modes. Returns the '
'stream id.';

CREATE FUNCTION cep.drop_stream(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_default regclass;
    v_empty boolean;
BEGIN
    SELECT * INTO s FROM cep.streams AS st WHERE st.stream_id = cep._stream_id(drop_stream.name);
    -- Rules go first (without a rule set left, deleting them recompiles nothing); assessments
    -- and rule versions stay, like alerts.
    DELETE FROM cep.rule_sets AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.rules AS r WHERE r.stream = s.name;
    DELETE FROM cep.risk_policies AS p WHERE p.stream_id = s.stream_id;
    DELETE FROM cep.rule_keys AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.rule_history AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.rule_history_fields AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.rule_buckets AS r
    WHERE r.series_id IN (SELECT f.series_id FROM cep.rule_bucket_series AS f WHERE f.stream_id = s.stream_id);
    DELETE FROM cep.rule_bucket_keys AS r
    WHERE r.series_id IN (SELECT f.series_id FROM cep.rule_bucket_series AS f WHERE f.stream_id = s.stream_id);
    DELETE FROM cep.rule_bucket_series AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.rule_log AS r WHERE r.stream_id = s.stream_id;
    PERFORM cep._drop_pattern_objects(p.pattern_id)
    FROM cep.patterns AS p WHERE p.stream_id = s.stream_id;
    -- The refusing default partition pg_cep added goes if empty (rows can reach it when
    -- triggers are off, e.g. session_replication_role = replica): partitions and rows stay.
    DELETE FROM cep.partitioned_streams AS ps WHERE ps.stream_id = s.stream_id
    RETURNING ps.default_partition INTO v_default;
    IF v_default IS NOT NULL
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = v_default) THEN
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', v_default) INTO v_empty;
        IF v_empty THEN
            EXECUTE format('DROP TABLE %s', v_default);
        ELSE
            EXECUTE format('DROP TRIGGER IF EXISTS cep_refuse_rows ON %s', v_default);
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = s.source) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS cep_stream_ingest ON %s', s.source);
        EXECUTE format('DROP TRIGGER IF EXISTS cep_replica_ingest ON %s', s.source);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS cep.%I()', s.ingest_function);
    EXECUTE format('DROP FUNCTION IF EXISTS cep.%I(bigint [])', format('_process_%s', s.stream_id));
    EXECUTE format('DROP FUNCTION IF EXISTS cep.%I()', format('_replica_%s', s.stream_id));
    DELETE FROM cep.stream_queue AS q WHERE q.stream_id = s.stream_id;
    PERFORM cep._drop_window_objects(w.window_id)
    FROM cep.windows AS w WHERE w.stream_id = s.stream_id;
    DELETE FROM cep.windows AS w WHERE w.stream_id = s.stream_id;
    PERFORM cep._drop_recommender_state(r.recommender_id)
    FROM cep.recommenders AS r WHERE r.stream_id = s.stream_id;
    DELETE FROM cep.recommenders AS r WHERE r.stream_id = s.stream_id;
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
    v_old timestamptz;
BEGIN
    IF to_time IS NULL OR to_time = '-infinity' THEN
        RAISE EXCEPTION 'to_time must be a time or ''infinity'', got %',
            coalesce(to_time::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    -- An asynchronous stream's queued statements arrived before this declaration.
    PERFORM cep._process_queue(v_id, NULL, true)
    FROM cep.streams AS x WHERE x.stream_id = v_id AND x.mode = 'async';
    v_old := cep._watermark(v_id);
    IF to_time > v_old THEN
        INSERT INTO cep.stream_log (stream_id, batches, events, watermark)
        VALUES (v_id, 0, 0, to_time);
        -- patterns take the events the watermark now reaches ('infinity' ends the input)
        PERFORM cep._patterns_advance(v_id, v_old, to_time, NULL);
    END IF;
    RETURN cep._watermark(v_id);
END
$fn$;

COMMENT ON FUNCTION cep.advance_watermark(text, timestamptz) IS
'Declare that no event of STREAM older than TO_TIME will arrive: the watermark moves to TO_TIME '
'if that is later (closing windows, finalizing matches, firing absence timeouts). ''infinity'' '
'means end of stream. Returns the watermark.';

CREATE FUNCTION cep.set_wall_clock(stream text, enabled boolean DEFAULT TRUE)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.stream_id = cep._stream_id(stream);
    IF enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must be true or false' USING ERRCODE = '22023';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may change it', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    UPDATE cep.streams AS x SET wall_clock = enabled WHERE x.stream_id = s.stream_id;
END
$fn$;

COMMENT ON FUNCTION cep.set_wall_clock(text, boolean) IS
'Let cep.run_maintenance() move the stream''s watermark with the clock (now() - '
'allowed_lateness), for streams whose time column is the insertion time: absence deadlines and '
'pattern timeouts then fire without new events.';
