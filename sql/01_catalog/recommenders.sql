-- Recommender catalog and state (cep.create_recommender): item-to-item cosine similarity over a
-- horizon of user-item weights. Invariant: for every recommender, recommender_weights holds
-- the summed action weights of exactly the counted events with time >= horizon_start, per
-- (user, item, time bucket), and recommender_pairs holds, for items a <= b, the exact numeric
-- dot product of their user columns (the diagonal a = b is the squared norm), no zero rows.

CREATE TABLE cep.recommenders (
    recommender_id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    stream_id integer NOT NULL,
    user_column name NOT NULL,
    item_column name NOT NULL,
    action_column name NOT NULL,
    weights jsonb NOT NULL,
    horizon interval NOT NULL,
    bucket interval NOT NULL,
    unknown_action text NOT NULL DEFAULT 'ignore',
    max_fanout integer NOT NULL,
    horizon_start timestamptz NOT NULL DEFAULT '-infinity',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recommenders_pkey PRIMARY KEY (recommender_id),
    CONSTRAINT recommenders_name_key UNIQUE (name),
    CONSTRAINT recommenders_name_check CHECK (
        octet_length(name) BETWEEN 1 AND 63 AND name !~ '[[:cntrl:]]'
    ),
    CONSTRAINT recommenders_weights_check CHECK (jsonb_typeof(weights) = 'object'),
    CONSTRAINT recommenders_horizon_check CHECK (horizon > '0 seconds'),
    CONSTRAINT recommenders_bucket_check CHECK (bucket > '0 seconds' AND bucket <= horizon),
    CONSTRAINT recommenders_unknown_action_check CHECK (unknown_action IN ('ignore', 'error')),
    CONSTRAINT recommenders_max_fanout_check CHECK (max_fanout BETWEEN 1 AND 1000000)
);

CREATE INDEX recommenders_stream_idx ON cep.recommenders (stream_id);

COMMENT ON TABLE cep.recommenders IS
'Recommenders over streams (cep.create_recommender): the user, item and action columns, the '
'action weights, the horizon and its expiry bucket, the unknown-action policy, the fan-out '
'cap, and horizon_start: the state covers the counted events with time >= horizon_start.';

-- One anchor row per (recommender, user): every batch and every expiry that changes a user's
-- weights first locks the user's row, in key order, so the old weights it reads are final.
CREATE TABLE cep.recommender_users (
    recommender_id integer NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    CONSTRAINT recommender_users_pkey PRIMARY KEY (recommender_id, user_id)
);

COMMENT ON TABLE cep.recommender_users IS
'Users with weights in a recommender''s horizon (one row per user; locked to serialize the '
'changes of one user''s weights).';

-- Weights per time bucket, so that expiry subtracts exactly what the expired events added.
CREATE TABLE cep.recommender_weights (
    recommender_id integer NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    bucket timestamptz NOT NULL,
    weight numeric NOT NULL,
    CONSTRAINT recommender_weights_pkey PRIMARY KEY (recommender_id, user_id, item_id, bucket),
    CONSTRAINT recommender_weights_weight_check CHECK (weight > 0)
);

-- Expiry reads by bucket; rows arrive roughly in time order, so BRIN costs almost nothing.
CREATE INDEX recommender_weights_bucket_idx ON cep.recommender_weights USING brin (bucket);

COMMENT ON TABLE cep.recommender_weights IS
'User-item weights of a recommender: the sum of the action weights of a user''s counted '
'events on an item within one time bucket (date_bin(bucket, time, epoch)); w(user, item) is '
'the sum over the buckets.';

CREATE TABLE cep.recommender_pairs (
    recommender_id integer NOT NULL,
    item_a text COLLATE "C" NOT NULL,
    item_b text COLLATE "C" NOT NULL,
    dot numeric NOT NULL,
    CONSTRAINT recommender_pairs_pkey PRIMARY KEY (recommender_id, item_a, item_b),
    CONSTRAINT recommender_pairs_order_check CHECK (item_a <= item_b),
    CONSTRAINT recommender_pairs_dot_check CHECK (dot >= 0)
) WITH (fillfactor = 80);

CREATE INDEX recommender_pairs_b_idx ON cep.recommender_pairs (recommender_id, item_b, item_a);

COMMENT ON TABLE cep.recommender_pairs IS
'Item-item dot products of a recommender: sum over users of w(user, item_a) * w(user, item_b) '
'for item_a <= item_b; the row item_a = item_b holds the squared norm of the item. Only '
'co-occurring pairs have a row. cosine(a, b) = dot / sqrt(norm2(a) * norm2(b)).';

-- Appended only when a batch hits the fan-out cap (never a row updated by every batch).
CREATE TABLE cep.recommender_log (
    recommender_id integer NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    capped_events bigint NOT NULL DEFAULT 0,
    CONSTRAINT recommender_log_capped_check CHECK (capped_events >= 0)
);

CREATE INDEX recommender_log_recommender_idx ON cep.recommender_log (recommender_id);

COMMENT ON TABLE cep.recommender_log IS
'Events a recommender did not count because their user already had max_fanout items in the '
'horizon (one row per batch that hit the cap; summed by cep.recommender_stats, compacted by '
'cep.run_maintenance()).';
