-- Time partitions of stream tables: partition_stream, premaking and retiring partitions.
-- Invariant: partitions are epoch-aligned buckets of part_interval; a row beyond the last
-- partition is refused with a clear error by the stream's default partition instead of landing
-- there silently; a partition is retired only when wholly older than the retention, and the
-- retention is never shorter than what the stream's features still need (cep._stream_horizon).

-- How far back the stream's features still need raw events in the table. Windows keep their
-- own state, so nothing for them; rules read their trailing windows from the table.
-- Recommenders keep their state too, but the events behind it (horizon plus one expiry
-- bucket) stay, so that the state can be audited against them and a recommender re-created
-- with the same horizon starts complete.
CREATE FUNCTION cep._stream_horizon(stream_id integer)
RETURNS interval
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT greatest(cep._rule_horizon(stream_id), (
        SELECT coalesce(max(r.horizon + r.bucket), interval '0 seconds')
        FROM cep.recommenders AS r
        WHERE r.stream_id = _stream_horizon.stream_id
    ))
$fn$;

COMMENT ON FUNCTION cep._stream_horizon(integer) IS
'Internal: how far back a stream''s features still need raw events in its table; partitions '
'are never retired within it.';

-- Refuses rows routed to a stream's default partition: there is no partition for their time.
CREATE FUNCTION cep._refuse_default_partition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'no partition of % for % = %', TG_ARGV[0], TG_ARGV[1],
        to_jsonb(NEW) ->> TG_ARGV[1]
        USING ERRCODE = '23514',
        HINT = 'Run cep.run_maintenance() (it makes partitions ahead) or raise premake with '
            'cep.partition_stream.';
END
$fn$;

COMMENT ON FUNCTION cep._refuse_default_partition() IS
'Internal: BEFORE INSERT trigger of a stream''s default partition; refuses every row with a '
'clear error.';

CREATE FUNCTION cep._premake_partitions(stream_id integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
-- Creating a partition needs an exclusive lock on the table: never queue inserts behind a
-- long transaction for long (the bucket is skipped and made at the next maintenance).
SET lock_timeout = '2s'
AS $fn$
DECLARE
    p cep.partitioned_streams;
    s cep.streams;
    v_schema name;
    v_nsp oid;
    v_table name;
    v_lo timestamptz;
    v_hi timestamptz;
    v_name text;
    v_made integer := 0;
    v_bounds text;
BEGIN
    -- One maker of a stream's partitions at a time (partition_stream and run_maintenance).
    PERFORM pg_advisory_xact_lock(hashtext('pg_cep partitions'), _premake_partitions.stream_id);
    SELECT * INTO STRICT p FROM cep.partitioned_streams AS x
    WHERE x.stream_id = _premake_partitions.stream_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _premake_partitions.stream_id;
    SELECT n.nspname, n.oid, c.relname INTO STRICT v_schema, v_nsp, v_table
    FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = s.source;
    FOR v_i IN 0 .. p.premake LOOP
        v_lo := date_bin(p.part_interval, now(), '1970-01-01 00:00:00+00') + v_i * p.part_interval;
        v_hi := v_lo + p.part_interval;
        v_name := format('%s_p%s', v_table, to_char(v_lo, 'YYYYMMDD_HH24MISS'));
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_catalog.pg_class AS c
            WHERE c.relnamespace = v_nsp AND c.relname = v_name
        );
        -- Bounds as UTC wall-clock text, which reads the same for timestamp and timestamptz.
        v_bounds := format('FROM (%L) TO (%L)',
            to_char(v_lo, 'YYYY-MM-DD HH24:MI:SS.US') || CASE
                WHEN s.time_type = 'timestamp with time zone'::regtype THEN '+00' ELSE '' END,
            to_char(v_hi, 'YYYY-MM-DD HH24:MI:SS.US') || CASE
                WHEN s.time_type = 'timestamp with time zone'::regtype THEN '+00' ELSE '' END);
        BEGIN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES %s',
                v_schema, v_name, s.source, v_bounds);
            v_made := v_made + 1;
        EXCEPTION
            WHEN invalid_object_definition OR duplicate_table THEN
                -- An existing partition (made by hand, or by a concurrent call) covers it.
                NULL;
            WHEN check_violation THEN
                -- The table's own default partition holds rows of this bucket: leave it.
                RAISE WARNING 'pg_cep: partition % of % not created: its own default partition '
                    'holds rows of that range', v_name, s.source;
            WHEN lock_not_available THEN
                -- A long transaction holds the table; try again at the next maintenance.
                RAISE WARNING 'pg_cep: partition % of % not created: table busy', v_name, s.source;
        END;
    END LOOP;
    RETURN v_made;
END
$fn$;

COMMENT ON FUNCTION cep._premake_partitions(integer) IS
'Internal: create the partitions of a stream from now''s bucket through premake buckets ahead; '
'returns how many were created.';

CREATE FUNCTION cep._retire_partitions(stream_id integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    p cep.partitioned_streams;
    s cep.streams;
    r record;
    v_upper timestamptz;
    v_cutoff timestamptz;
    v_done integer := 0;
BEGIN
    SELECT * INTO STRICT p FROM cep.partitioned_streams AS x
    WHERE x.stream_id = _retire_partitions.stream_id;
    IF p.retention IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _retire_partitions.stream_id;
    v_cutoff := now() - greatest(p.retention, cep._stream_horizon(s.stream_id));
    FOR r IN
        SELECT c.oid::regclass AS part, pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = s.source
        ORDER BY 1
    LOOP
        CONTINUE WHEN r.bound = 'DEFAULT' OR r.bound !~ 'TO \(''';
        v_upper := CASE
            WHEN s.time_type = 'timestamp with time zone'::regtype
                THEN substring(r.bound FROM 'TO \(''([^'']+)''\)')::timestamptz
            ELSE timezone('UTC', substring(r.bound FROM 'TO \(''([^'']+)''\)')::timestamp)
        END;
        CONTINUE WHEN v_upper > v_cutoff;
        IF p.retention_action = 'detach' THEN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', s.source, r.part);
        ELSE
            EXECUTE format('DROP TABLE %s', r.part);
        END IF;
        v_done := v_done + 1;
    END LOOP;
    RETURN v_done;
END
$fn$;

COMMENT ON FUNCTION cep._retire_partitions(integer) IS
'Internal: drop (or detach) the partitions of a stream that lie wholly before now() minus its '
'retention (never within the stream''s horizon); returns how many.';

CREATE FUNCTION cep.partition_stream(
    stream text,
    part_interval interval,
    premake integer DEFAULT 3,
    retention interval DEFAULT NULL,
    retention_action text DEFAULT 'drop'
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._stream_id(stream);
    s cep.streams;
    v_strategy char;
    v_keys int2vector;
    v_schema name;
    v_table name;
    v_default regclass;
    v_ours boolean := false;
    v_idx text;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = v_id;
    SELECT pt.partstrat, pt.partattrs INTO v_strategy, v_keys
    FROM pg_catalog.pg_partitioned_table AS pt WHERE pt.partrelid = s.source;
    IF v_strategy IS DISTINCT FROM 'r' OR array_length(v_keys::int2 [], 1) <> 1
        OR (SELECT a.attname FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = s.source AND a.attnum = v_keys[0]) IS DISTINCT FROM s.time_column
    THEN
        RAISE EXCEPTION 'table % is not range-partitioned on its time column "%"', s.source,
            s.time_column USING ERRCODE = '42P16',
            HINT = format('Create it with PARTITION BY RANGE (%I).', s.time_column);
    END IF;
    IF part_interval IS NULL OR part_interval < '1 second'
        OR extract(month FROM part_interval) <> 0 OR extract(year FROM part_interval) <> 0
        OR extract(epoch FROM part_interval) <> trunc(extract(epoch FROM part_interval)) THEN
        RAISE EXCEPTION 'part_interval must be whole seconds (at least 1), without months or years'
            USING ERRCODE = '22023';
    END IF;
    part_interval := make_interval(secs => extract(epoch FROM part_interval));
    IF premake IS NULL OR premake NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'premake must be between 0 and 1000, got %', coalesce(premake::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF retention IS NOT NULL AND retention < part_interval THEN
        RAISE EXCEPTION 'retention (%) must be at least part_interval (%)', retention,
            part_interval USING ERRCODE = '22023';
    END IF;
    IF retention IS NOT NULL AND retention < cep._stream_horizon(v_id) THEN
        RAISE EXCEPTION 'retention (%) is shorter than what the stream''s features need (%)',
            retention, cep._stream_horizon(v_id) USING ERRCODE = '22023';
    END IF;
    IF retention_action IS NULL OR retention_action NOT IN ('drop', 'detach') THEN
        RAISE EXCEPTION 'retention_action must be drop or detach, got %',
            coalesce(quote_literal(retention_action), 'NULL') USING ERRCODE = '22023';
    END IF;
    SELECT n.nspname, c.relname INTO STRICT v_schema, v_table
    FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = s.source;
    IF octet_length(v_table) > 63 - 18 THEN
        RAISE EXCEPTION 'table name % is too long for partition names (at most 45 bytes)',
            v_table USING ERRCODE = '42622';
    END IF;

    -- Index (key, time) on the partitioned table: every partition gets it, now and later.
    IF s.key_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = s.source AND i.indnatts >= 2
            AND i.indkey[0] = (SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = s.source AND a.attname = s.key_column)
            AND i.indkey[1] = (SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = s.source AND a.attname = s.time_column)
    ) THEN
        v_idx := format('%s_cep_key_time_idx', left(v_table, 45));
        EXECUTE format('CREATE INDEX %I ON %s (%I, %I)', v_idx, s.source, s.key_column,
            s.time_column);
    END IF;

    -- A default partition that refuses rows, unless the table has its own default partition.
    SELECT c.oid::regclass INTO v_default
    FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = s.source AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    IF v_default IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', v_schema,
            left(v_table, 45) || '_cep_default', s.source);
        v_default := format('%I.%I', v_schema, left(v_table, 45) || '_cep_default')::regclass;
        EXECUTE format(
            'CREATE TRIGGER cep_refuse_rows BEFORE INSERT ON %s FOR EACH ROW '
            'EXECUTE FUNCTION cep._refuse_default_partition(%L, %L)',
            v_default, s.source::text, s.time_column);
        PERFORM cep._tie_to_extension(NULL, 'cep_refuse_rows', v_default);
        v_ours := true;
    END IF;

    INSERT INTO cep.partitioned_streams AS ps (
        stream_id, part_interval, premake, retention, retention_action, default_partition
    ) VALUES (
        v_id, part_interval, premake, retention, retention_action,
        CASE WHEN v_ours THEN v_default END
    )
    ON CONFLICT (stream_id) DO UPDATE SET
        part_interval = EXCLUDED.part_interval, premake = EXCLUDED.premake,
        retention = EXCLUDED.retention, retention_action = EXCLUDED.retention_action,
        default_partition = coalesce(ps.default_partition, EXCLUDED.default_partition);
    RETURN cep._premake_partitions(v_id);
END
$fn$;

COMMENT ON FUNCTION cep.partition_stream(text, interval, integer, interval, text) IS
'Manage the time partitions of STREAM, whose table must be range-partitioned on its time '
'column: epoch-aligned partitions of PART_INTERVAL named <table>_pYYYYMMDD_HH24MISS from '
'now''s bucket through PREMAKE buckets ahead, an index on (key, time), a default partition '
'that refuses rows beyond the last partition with a clear error, and retirement (drop or '
'detach) of partitions wholly older than RETENTION by cep.run_maintenance(). Returns the '
'number of partitions created.';
