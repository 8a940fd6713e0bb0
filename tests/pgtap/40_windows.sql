-- Windows: definition error contracts (SQLSTATE, message, nothing created) and the shape of
-- the views.
BEGIN;
SELECT plan(26);

CREATE TABLE public.tx (
    id bigserial PRIMARY KEY,
    user_id integer NOT NULL,
    amount numeric,
    note text,
    created_at timestamptz NOT NULL
);
CREATE TABLE public.nokey (id bigint PRIMARY KEY, t timestamptz);
SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id');
SELECT cep.create_stream('nokey', 'public.nokey', 't');
CREATE TABLE public.taken (x integer);

SELECT throws_ok(
    $$SELECT cep.create_window('w', 'nope', 'tumbling', '1 minute')$$,
    '42704', 'stream "nope" does not exist', 'unknown stream'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'sliding', '1 minute')$$,
    '22023', 'invalid window kind ''sliding''', 'unknown kind'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '0 seconds')$$,
    '22023', 'size must be a positive interval', 'zero size'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '-1 minute')$$,
    '22023', 'size must be a positive interval', 'negative size'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 month')$$,
    '22023', 'size must not contain months or years (windows are aligned by date_bin)',
    'month-long size'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'hopping', '1 minute', '2 minutes')$$,
    '22023', 'slide (00:02:00) must not be larger than size (00:01:00)', 'slide > size'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'hopping', '1 minute')$$,
    '22023', 'slide must be a positive interval for hopping windows', 'hopping without slide'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute', '1 minute')$$,
    '22023', 'slide is only for hopping windows', 'slide on a tumbling window'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'nokey', 'session', '1 minute')$$,
    '22023', 'session windows need a stream with a key column', 'session without key'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute', group_by => '{nope}')$$,
    '42703', 'group_by column "nope" does not exist in public.tx', 'unknown group column'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute', aggregates => '{sum(nope)}')$$,
    '42703', 'aggregate ''sum(nope)'': column "nope" does not exist in public.tx',
    'unknown aggregate column'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute', aggregates => '{sum(note)}')$$,
    '42804', 'aggregate ''sum(note)'': column "note" has type text, which sum cannot take',
    'sum over text'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute', aggregates => '{median(amount)}')$$,
    '22023', 'invalid aggregate ''median(amount)''', 'unknown aggregate function'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute',
        aggregates => '{"sum(amount); DROP TABLE public.tx"}')$$,
    '22023', NULL, 'SQL in an aggregate is only ever text to parse'
);
SELECT throws_ok(
    $$SELECT cep.create_window('w', 'tx', 'tumbling', '1 minute',
        aggregates => '{sum(amount), sum(amount)}')$$,
    '42701', NULL, 'duplicate output column'
);
SELECT throws_ok(
    $$SELECT cep.create_window('taken', 'tx', 'tumbling', '1 minute')$$,
    '42P07', 'relation "public.taken" already exists', 'name collision with a relation'
);
SELECT is((SELECT count(*) FROM cep.windows), 0::bigint, 'failed definitions left no window');
SELECT is(
    (
        SELECT count(*) FROM pg_catalog.pg_class
        WHERE relnamespace = 'cep'::regnamespace AND relname ~ '^window_[0-9]'
    ),
    0::bigint, 'failed definitions left no state table'
);

SELECT isnt(
    cep.create_window(
        'public.tx_minutes', 'tx', 'tumbling', '1 minute',
        group_by => '{user_id}', aggregates => '{count(*), sum(amount) AS total, avg(amount)}'
    ),
    NULL, 'create_window returns its id'
);
SELECT throws_ok(
    $$SELECT cep.create_window('public.tx_minutes', 'tx', 'tumbling', '1 minute')$$,
    '42710', 'window "public.tx_minutes" already exists', 'duplicate window name'
);
SELECT columns_are(
    'public', 'tx_minutes',
    ARRAY['window_start', 'window_end', 'user_id', 'count', 'total', 'avg_amount', 'is_final']
);
SELECT lives_ok(
    $$SELECT cep.create_window('tx_sessions', 'tx', 'session', '5 minutes')$$,
    'a session window'
);
SELECT columns_are(
    'public', 'tx_sessions',
    ARRAY['window_start', 'window_end', 'user_id', 'count', 'is_final']
);
INSERT INTO public.tx (user_id, amount, created_at) VALUES (1, 10, '2024-01-01 00:00:30+00');
SELECT results_eq(
    $$SELECT window_start, user_id, count, total, is_final FROM public.tx_minutes$$,
    $$VALUES ('2024-01-01 00:00+00'::timestamptz, 1, 1::bigint, 10::numeric, false)$$,
    'an insert lands in its window'
);
SELECT lives_ok($$SELECT cep.drop_window('public.tx_minutes')$$, 'drop_window');
SELECT hasnt_view('public', 'tx_minutes', 'the view is gone');

SELECT * FROM finish();
ROLLBACK;
