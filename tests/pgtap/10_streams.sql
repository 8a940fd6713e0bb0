-- Streams: registration, validation of definitions, the generated trigger, rejection of bad
-- events with their SQLSTATEs, late events, watermark, drop.
BEGIN;
SELECT plan(44);

CREATE TABLE public.tx (
    id bigserial PRIMARY KEY,
    user_id integer,
    amount numeric,
    score float8,
    note text,
    created_at timestamptz
);
CREATE TABLE public.parted (
    id bigint NOT NULL,
    k text,
    t timestamptz NOT NULL
) PARTITION BY RANGE (t);
CREATE TABLE public.parted_a PARTITION OF public.parted
FOR VALUES FROM ('2020-01-01') TO ('2100-01-01');
CREATE TABLE public.nopk (eid integer, t timestamp, v real);
CREATE VIEW public.a_view AS SELECT 1 AS x;

-- Definition errors: SQLSTATE and message, nothing created.
SELECT throws_ok(
    $$SELECT cep.create_stream(NULL, 'public.tx', 'created_at')$$,
    '22023', 'invalid stream name NULL', 'NULL name is refused'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('', 'public.tx', 'created_at')$$,
    '22023', NULL, 'empty name is refused'
);
SELECT throws_ok(
    $$SELECT cep.create_stream(repeat('x', 64), 'public.tx', 'created_at')$$,
    '22023', NULL, 'a 64-byte name is refused'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.a_view', 'x')$$,
    '42809', 'source public.a_view is not a table', 'a view is not a table'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.parted_a', 't', id_column => 'id')$$,
    '42809', 'source public.parted_a is a partition', 'a partition is refused'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'no_such')$$,
    '42703', 'time_column "no_such" does not exist in public.tx', 'unknown time column'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'note')$$,
    '42804', 'time_column "note" has type text, expected timestamptz or timestamp',
    'time column of the wrong type'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'created_at', 'nope')$$,
    '42703', 'key_column "nope" does not exist in public.tx', 'unknown key column'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'created_at', id_column => 'note')$$,
    '42804', 'id_column "note" has type text, expected smallint, integer or bigint',
    'id column of the wrong type'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.nopk', 't')$$,
    '22023', 'id_column must be given: public.nopk has no single-column primary key',
    'no id column and no single-column primary key'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'created_at', allowed_lateness => '-1 second')$$,
    '22023', NULL, 'negative lateness'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('s', 'public.tx', 'created_at', max_future_skew => NULL)$$,
    '22023', NULL, 'NULL skew'
);
SELECT is((SELECT count(*) FROM cep.streams), 0::bigint, 'failed definitions left no stream');
SELECT is(
    (
        SELECT count(*) FROM pg_catalog.pg_trigger
        WHERE tgrelid = 'public.tx'::regclass
    ),
    0::bigint, 'failed definitions left no trigger'
);

-- Registration.
SELECT isnt(
    cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', allowed_lateness => '10 minutes'),
    NULL, 'create_stream returns the stream id'
);
SELECT is(
    (
        SELECT id_column::text || ',' || array_to_string(checked_columns, ',') FROM cep.streams
        WHERE name = 'tx'
    ),
    'id,amount,score', 'id column from the primary key; numeric columns are checked'
);
SELECT is(
    (
        SELECT count(*) FROM pg_catalog.pg_trigger AS t
        WHERE t.tgrelid = 'public.tx'::regclass AND t.tgname = 'cep_stream_ingest'
            AND t.tgnewtable = 'cep_new_rows' AND (t.tgtype & 1) = 0
    ),
    1::bigint, 'one statement-level trigger with a transition table'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('tx', 'public.nopk', 't', id_column => 'eid')$$,
    '42710', 'stream "tx" already exists', 'duplicate stream name'
);
SELECT throws_ok(
    $$SELECT cep.create_stream('tx2', 'public.tx', 'created_at')$$,
    '42710', 'table public.tx is already registered as stream "tx"', 'a table is one stream'
);
SELECT lives_ok(
    $$SELECT cep.create_stream('parted', 'public.parted', 't', 'k', 'id')$$,
    'a range-partitioned table with an explicit id column'
);
SELECT lives_ok(
    $$SELECT cep.create_stream('nopk', 'public.nopk', 't', NULL, 'eid')$$,
    'a table without key, with a timestamp-without-time-zone column'
);

-- Ingest and watermark.
SELECT is(
    cep.advance_watermark('tx', '2024-01-01 00:00+00'), '2024-01-01 00:00+00'::timestamptz,
    'advance_watermark moves the watermark forward'
);
SELECT is(
    cep.advance_watermark('tx', '2023-01-01 00:00+00'), '2024-01-01 00:00+00'::timestamptz,
    'advance_watermark never moves it back'
);
INSERT INTO public.tx (user_id, amount, created_at)
SELECT
    g % 3 AS user_id,
    g AS amount,
    '2024-01-01 12:00+00'::timestamptz + g * interval '1 minute' AS created_at
FROM generate_series(1, 30) AS g;
SELECT is(
    (
        SELECT watermark FROM cep.stream_stats
        WHERE stream = 'tx'
    ),
    '2024-01-01 12:20+00'::timestamptz, 'watermark = max event time - allowed lateness'
);
INSERT INTO public.tx (user_id, amount, created_at) VALUES
(1, 5, '2024-01-01 12:19+00'),
(1, 6, '2024-01-01 12:20+00'),
(2, 7, '2024-01-01 12:25+00');
SELECT is(
    (
        SELECT array_agg(t.amount ORDER BY t.amount) FROM public.tx AS t
        INNER JOIN cep.late_events AS l ON t.id = l.event_id
    ),
    ARRAY[5]::numeric[], 'only the event older than the watermark is late'
);
SELECT results_eq(
    $$SELECT events_total, late_events, batches_total FROM cep.stream_stats WHERE stream = 'tx'$$,
    $$VALUES (33::bigint, 1::bigint, 2::bigint)$$,
    'counters count every event, late ones too, and the statements'
);
SELECT is(
    (SELECT count(*) FROM public.tx), 33::bigint, 'late events stay in the source table'
);
COPY public.tx (user_id, amount, created_at) FROM stdin;
1	1.5	2024-01-01 13:00:00+00
2	2.5	2024-01-01 13:01:00+00
\.
SELECT is(
    (
        SELECT events_total FROM cep.stream_stats
        WHERE stream = 'tx'
    ), 35::bigint,
    'COPY goes through the stream trigger'
);

-- Bad events: the whole statement fails, nothing is applied.
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 1, now()), (1, 1, NULL)$$,
    '23502', 'pg_cep: stream tx: time column created_at is NULL', 'NULL time'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (NULL, 1, now())$$,
    '23502', 'pg_cep: stream tx: key column user_id is NULL', 'NULL key'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 'NaN', now())$$,
    '22003', 'pg_cep: stream tx: column amount is NaN or infinite', 'NaN numeric'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, score, created_at) VALUES (1, '-Infinity', now())$$,
    '22003', 'pg_cep: stream tx: column score is NaN or infinite', '-Infinity float8'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 1, 'infinity')$$,
    '22008', 'pg_cep: stream tx: time column created_at is infinite', 'infinite time'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 1, '-infinity')$$,
    '22008', 'pg_cep: stream tx: time column created_at is infinite', '-infinite time'
);
SELECT throws_ok(
    $$INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 1, now() + interval '2 days')$$,
    '22008', 'pg_cep: stream tx: time column created_at is more than 1 day ahead of now()',
    'far-future time'
);
SELECT results_eq(
    $$SELECT events_total, watermark FROM cep.stream_stats WHERE stream = 'tx'$$,
    $$VALUES (35::bigint, '2024-01-01 12:51+00'::timestamptz)$$,
    'refused statements changed neither counters nor watermark'
);

-- timestamp without time zone is read as UTC whatever the session TimeZone.
SET LOCAL TimeZone = 'America/New_York';
INSERT INTO public.nopk VALUES (1, '2024-06-01 10:00', 1.0);
RESET TimeZone;
SELECT is(
    (
        SELECT last_event_time FROM cep.stream_stats
        WHERE stream = 'nopk'
    ),
    '2024-06-01 10:00+00'::timestamptz, 'timestamp columns are UTC'
);
SELECT throws_ok(
    $$INSERT INTO public.nopk VALUES (2, '2024-06-01 10:00', 'NaN')$$,
    '22003', NULL, 'NaN real is refused'
);

INSERT INTO public.parted VALUES (1, 'a', '2024-01-01 00:00+00'), (2, 'b', '2024-01-01 00:01+00');
SELECT is(
    (
        SELECT events_total FROM cep.stream_stats
        WHERE stream = 'parted'
    ), 2::bigint,
    'inserts into a partitioned table reach its stream'
);

SELECT throws_ok(
    $$SELECT cep.advance_watermark('no_such')$$, '42704', 'stream "no_such" does not exist',
    'unknown stream'
);
SELECT throws_ok(
    $$SELECT cep.advance_watermark('tx', NULL)$$, '22023', NULL, 'NULL watermark'
);

-- Drop.
SELECT lives_ok($$SELECT cep.drop_stream('tx')$$, 'drop_stream');
SELECT is(
    (
        SELECT count(*) FROM pg_catalog.pg_trigger
        WHERE tgrelid = 'public.tx'::regclass
    ),
    0::bigint, 'drop_stream removed the trigger'
);
SELECT ok(
    NOT EXISTS (
        SELECT 1 FROM cep.stream_log AS l
        WHERE NOT EXISTS (
                SELECT 1 FROM cep.streams AS s
                WHERE s.stream_id = l.stream_id
            )
    )
    AND (
        SELECT count(*) FROM pg_catalog.pg_proc
        WHERE pronamespace = 'cep'::regnamespace AND proname ~ '^_ingest_[0-9]+$'
    ) = 2,
    'drop_stream removed its bookkeeping and generated function'
);

SELECT * FROM finish();
ROLLBACK;
