-- Stream catalog and stream bookkeeping.
-- cep.streams holds one row per registered table and is only written by definition functions.
-- Ingest never updates a shared row: every statement appends to cep.stream_log (watermark
-- candidate, counters, timing), which readers sum and cep.run_maintenance() compacts.

-- (analyzed by autovacuum after any change: the monitoring views join it to the logs, and a
-- never-analyzed small table is taken for hundreds of rows, which made the planner JIT-compile
-- them; the other catalogs the views start from do the same)
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
    wall_clock boolean NOT NULL DEFAULT FALSE,
    mode text NOT NULL DEFAULT 'sync',
    replica_batch text,
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
    CONSTRAINT streams_channel_check CHECK (octet_length(notify_channel) BETWEEN 1 AND 63),
    CONSTRAINT streams_mode_check CHECK (mode IN ('sync', 'async')),
    CONSTRAINT streams_replica_check CHECK (
        replica_batch IS NULL OR (mode = 'async' AND replica_batch IN ('transaction', 'merged'))
    )
) WITH (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);

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
    -- compacted rows: the key sketch as a bitmap (bit i set = position i seen), which the
    -- dashboard ORs over an hour's rows instead of counting the distinct array elements
    key_bits bit(4096),
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
'cep.run_maintenance(), whose rows keep the sketch as a bitmap (key_bits). The watermark of a '
'stream is max(watermark) over its rows.';

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
    CONSTRAINT settings_value_check CHECK (cep._valid_setting(name, value))
);

COMMENT ON TABLE cep.settings IS
'Global pg_cep settings as name/value rows; a missing row means the default. See '
'cep._valid_setting for the names and their values.';
