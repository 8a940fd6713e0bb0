-- Recommenders: definition and query error contracts (SQLSTATE, message, nothing created),
-- the shape of the results and the seed's weights on a hand example.
BEGIN;
SELECT plan(32);

CREATE TABLE public.clicks (
    id bigserial PRIMARY KEY,
    user_id integer NOT NULL,
    item_id integer,
    action text,
    created_at timestamptz NOT NULL
);
SELECT cep.create_stream('clicks', 'public.clicks', 'created_at', 'user_id');

SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'nope', 'user_id', 'item_id', 'action')$$,
    '42704', 'stream "nope" does not exist', 'unknown stream'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'nope', 'item_id', 'action')$$,
    '42703', 'user_column "nope" does not exist in public.clicks', 'unknown user column'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'nope', 'action')$$,
    '42703', 'item_column "nope" does not exist in public.clicks', 'unknown item column'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'nope')$$,
    '42703', 'action_column "nope" does not exist in public.clicks', 'unknown action column'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('', 'clicks', 'user_id', 'item_id', 'action')$$,
    '22023', 'invalid recommender name ''''', 'empty name'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        '{"view": "one"}')$$,
    '22023', 'weights: the weight of action ''view'' must be a non-negative number, got "one"',
    'non-numeric weight'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        '{"view": 1, "dislike": -3}')$$,
    '22023',
    'weights: the weight of action ''dislike'' must be a non-negative number, got -3',
    'negative weight'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        '"view"')$$,
    '22023', 'weights must be a JSON object of action names and weights, got "view"',
    'weights not an object'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action', '{}')$$,
    '22023', 'weights must name at least one action', 'no weights'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        horizon => '0 seconds')$$,
    '22023', 'horizon must be a positive interval', 'zero horizon'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        horizon => '1 mon')$$,
    '22023', 'horizon must not contain months or years', 'horizon in months'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        unknown_action => 'drop')$$,
    '22023', 'invalid unknown_action ''drop''', 'unknown unknown_action'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        max_fanout => 0)$$,
    '22023', 'max_fanout must be between 1 and 1000000, got 0', 'zero fan-out'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action',
        horizon => '1 hour', bucket => '2 hours')$$,
    '22023', 'bucket must be a positive interval no longer than the horizon (01:00:00), got 02:00:00',
    'bucket longer than the horizon'
);
SELECT is((SELECT count(*) FROM cep.recommenders), 0::bigint, 'failed definitions left nothing');

SELECT isnt(
    cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action'),
    NULL, 'create_recommender returns its id'
);
SELECT results_eq(
    $$SELECT weights, horizon, bucket, unknown_action, max_fanout FROM cep.recommenders$$,
    $$VALUES ('{"view": 1, "like": 3, "share": 5, "purchase": 10}'::jsonb, '168:00:00'::interval,
        '01:00:00'::interval, 'ignore', 1000)$$,
    'the seed''s weights, a 7-day horizon and hourly expiry by default'
);
SELECT throws_ok(
    $$SELECT cep.create_recommender('r', 'clicks', 'user_id', 'item_id', 'action')$$,
    '42710', 'recommender "r" already exists', 'duplicate recommender'
);

-- The seed's example: user 1 viewed 101, liked 102, bought 103; others overlap.
INSERT INTO public.clicks (user_id, item_id, action, created_at) VALUES
(1, 101, 'view', '2024-01-01 00:00+00'),
(1, 102, 'like', '2024-01-01 00:01+00'),
(1, 103, 'purchase', '2024-01-01 00:02+00'),
(2, 103, 'purchase', '2024-01-01 00:03+00'),
(2, 104, 'view', '2024-01-01 00:04+00'),
(3, 102, 'share', '2024-01-01 00:05+00'),
(3, 105, 'like', '2024-01-01 00:06+00'),
(3, 104, 'dance', '2024-01-01 00:07+00');
SELECT results_eq(
    $$SELECT item_id, rank, because_of FROM cep.recommend('r', '1')$$,
    $$VALUES ('104', 1, '103'), ('105', 2, '102')$$,
    'recommend: unseen items ranked, with the item behind each'
);
SELECT is(
    (
        SELECT round(score::numeric, 9) FROM cep.recommend('r', '1')
        WHERE item_id = '104'
    ),
    round((10 * 10 / sqrt(200 * 1))::numeric, 9),
    'score = sum of w(user, j) * cos(i, j): only 103 shares a user with 104'
);
SELECT results_eq(
    $$SELECT item_id, rank FROM cep.similar_items('r', '102')$$,
    $$VALUES ('105', 1), ('101', 2), ('103', 3)$$,
    'similar_items ranked by cosine'
);
SELECT is_empty($$SELECT * FROM cep.recommend('r', '42')$$, 'unknown user: no rows');
SELECT is_empty($$SELECT * FROM cep.similar_items('r', '999')$$, 'unknown item: no rows');
SELECT results_eq(
    $$SELECT item_id FROM cep.recommend('r', '1', 1)$$,
    $$VALUES ('104')$$,
    'n limits the list'
);
SELECT throws_ok(
    $$SELECT * FROM cep.recommend('nope', '1')$$,
    '42704', 'recommender nope does not exist', 'recommend: unknown recommender'
);
SELECT throws_ok(
    $$SELECT * FROM cep.recommend('r', '1', 0)$$,
    '22023', 'n must be a positive integer, got 0', 'recommend: n = 0'
);
SELECT throws_ok(
    $$SELECT * FROM cep.similar_items('r', '101', -5)$$,
    '22023', 'n must be a positive integer, got -5', 'similar_items: n < 0'
);
SELECT columns_are(
    'cep', 'user_recommendations',
    ARRAY['recommender', 'user_id', 'item_id', 'score', 'rank', 'because_of']
);
SELECT results_eq(
    $$SELECT user_id, item_id, rank FROM cep.user_recommendations
      WHERE recommender = 'r' AND user_id = '2'$$,
    $$SELECT '2'::text COLLATE "C", item_id, rank FROM cep.recommend('r', '2')$$,
    'the view is cep.recommend per user'
);
SELECT throws_ok(
    $$SELECT cep.drop_recommender('nope')$$,
    '42704', 'recommender nope does not exist', 'drop: unknown recommender'
);
SELECT lives_ok($$SELECT cep.drop_recommender('r')$$, 'drop_recommender');
SELECT is(
    (SELECT count(*) FROM cep.recommender_pairs) + (SELECT count(*) FROM cep.recommender_weights)
    + (SELECT count(*) FROM cep.recommender_users),
    0::bigint, 'its state is gone'
);

SELECT * FROM finish();
ROLLBACK;
