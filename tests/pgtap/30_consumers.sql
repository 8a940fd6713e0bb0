-- Alert consumers: error contracts, queueing at raise time, poll/ack bookkeeping.
BEGIN;
SELECT plan(14);

CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer, t timestamptz);
SELECT cep.create_stream('ev', 'public.ev', 't', 'k');

SELECT throws_ok(
    $$SELECT cep.create_consumer(NULL)$$, '22023', 'invalid consumer name NULL',
    'NULL consumer name'
);
SELECT throws_ok(
    $$SELECT cep.create_consumer('c', redelivery_timeout => '-1 second')$$, '22023',
    'redelivery_timeout must be a positive interval', 'negative redelivery timeout'
);
SELECT throws_ok(
    $$SELECT cep.poll_alerts('nope')$$, '42704', 'consumer "nope" does not exist',
    'unknown consumer'
);
SELECT isnt(cep.create_consumer('c'), NULL, 'create_consumer returns its id');
SELECT throws_ok(
    $$SELECT cep.create_consumer('c')$$, '42710', 'consumer "c" already exists',
    'duplicate consumer'
);
SELECT throws_ok(
    $$SELECT cep.poll_alerts('c', 0)$$, '22023', 'max_alerts must be between 1 and 100000, got 0',
    'max_alerts out of range'
);
SELECT throws_ok(
    $$SELECT cep.ack_alerts('c', NULL)$$, '22023', 'alert_ids must not be NULL', 'NULL ids'
);

SELECT is(
    cep._raise_alerts(
        (
            SELECT stream_id FROM cep.streams
            WHERE name = 'ev'
        ),
        ARRAY[
            row('rule', 'r1', 'ev', '1', 1, 'high', 0.5, 'a', NULL)::cep.alert_draft,
            row('pattern', 'p1', 'ev', '2', 2, 'medium', NULL, 'b', '{"x": 1}')::cep.alert_draft
        ]
    ),
    2, 'two alerts raised'
);
SELECT is(
    (SELECT count(*) FROM cep.consumer_pending), 2::bigint,
    'each alert is queued for the consumer in the raising transaction'
);
SELECT results_eq(
    $$SELECT source_name, details FROM cep.poll_alerts('c', 10)$$,
    $$VALUES ('r1', '{}'::jsonb), ('p1', '{"x": 1}'::jsonb)$$,
    'poll returns the alerts in alert_id order'
);
SELECT is_empty($$SELECT * FROM cep.poll_alerts('c', 10)$$, 'delivered alerts are in flight');
SELECT is(
    cep.ack_alerts('c', array(SELECT alert_id FROM cep.alerts)), 2, 'ack counts acknowledged'
);
SELECT results_eq(
    $$SELECT pending, in_flight, delivered, redelivered, acked FROM cep.consumer_stats$$,
    $$VALUES (0::bigint, 0::bigint, 2::bigint, 0::bigint, 2::bigint)$$,
    'consumer_stats counts deliveries and acknowledgements'
);
SELECT lives_ok($$SELECT cep.drop_consumer('c')$$, 'drop_consumer');

SELECT * FROM finish();
ROLLBACK;
