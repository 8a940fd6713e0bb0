-- Recommender catalog and state (cep.create_recommender): item-to-item cosine similarity over a
-- horizon of user-item weights. Invariant: for every recommender, recommender_weights holds
-- the summed action weights of exactly the counted events with time >= horizon_start, per
-- (user, item, time bucket), and recommender_pairs holds, for items a <= b, the exact numeric
-- dot product of their user columns (the diagonal a = b is the squared norm), no zero rows;
-- both key items by the number recommender_items gave them (never changed or reused).

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

-- Items are numbered (an integer never reused) so that the state's keys are small and fixed-size:
-- the read path hashes and compares numbers, not strings. Rows are only ever added (by the
-- batch that first counts an item), never updated, so writers take no lock on them; an item
-- keeps its row after its last weight expired (dropped with the recommender).
CREATE TABLE cep.recommender_items (
    item_no integer GENERATED ALWAYS AS IDENTITY,
    recommender_id integer NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    CONSTRAINT recommender_items_pkey PRIMARY KEY (item_no),
    CONSTRAINT recommender_items_item_key UNIQUE (recommender_id, item_id)
);

COMMENT ON TABLE cep.recommender_items IS
'Items of a recommender (their text form) and the numbers that stand for them in '
'recommender_weights and recommender_pairs; one row per item ever seen by the recommender '
'(kept after its weights expired, so that a number never changes meaning).';

-- Weights per time bucket, so that expiry subtracts exactly what the expired events added.
CREATE TABLE cep.recommender_weights (
    recommender_id integer NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    item_no integer NOT NULL,
    bucket timestamptz NOT NULL,
    weight numeric NOT NULL,
    CONSTRAINT recommender_weights_pkey PRIMARY KEY (recommender_id, user_id, item_no, bucket),
    CONSTRAINT recommender_weights_weight_check CHECK (weight > 0)
);

-- Expiry reads by bucket; rows arrive roughly in time order, so BRIN costs almost nothing.
CREATE INDEX recommender_weights_bucket_idx ON cep.recommender_weights USING brin (bucket);

COMMENT ON TABLE cep.recommender_weights IS
'User-item weights of a recommender: the sum of the action weights of a user''s counted '
'events on an item (recommender_items.item_no) within one time bucket (date_bin(bucket, '
'time, epoch)); w(user, item) is the sum over the buckets.';

-- dot is the exact state; dot_float is its float8 image for the read path, carried in both
-- indexes so that cep.recommend reads a user's items' neighbours by index-only range scans
-- (every update is therefore a non-HOT update: the price of reads that never touch the heap
-- where the visibility map is current, hence autovacuum at 2% dead rows rather than 20%);
-- free space on each page keeps the new version of a row on its page.
CREATE TABLE cep.recommender_pairs (
    recommender_id integer NOT NULL,
    item_a integer NOT NULL,
    item_b integer NOT NULL,
    dot numeric NOT NULL,
    dot_float float8 GENERATED ALWAYS AS (dot::float8) STORED,
    CONSTRAINT recommender_pairs_pkey PRIMARY KEY (recommender_id, item_a, item_b)
    INCLUDE (dot_float),
    CONSTRAINT recommender_pairs_order_check CHECK (item_a <= item_b),
    CONSTRAINT recommender_pairs_dot_check CHECK (dot >= 0)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02);

-- Unique like the primary key, although that adds nothing to integrity: the uniqueness check
-- of each insertion marks the entries of dead versions, which are then removed before a page
-- splits, so the index does not bloat with the non-HOT updates (measured: 20% smaller state).
CREATE UNIQUE INDEX recommender_pairs_b_idx ON cep.recommender_pairs (recommender_id, item_b, item_a)
INCLUDE (dot_float);

-- The squared norms alone, for the candidates of a recommendation (one hash join).
CREATE INDEX recommender_pairs_norm_idx ON cep.recommender_pairs (recommender_id, item_a)
INCLUDE (dot_float) WHERE item_a = item_b;

COMMENT ON TABLE cep.recommender_pairs IS
'Item-item dot products of a recommender: sum over users of w(user, item_a) * w(user, item_b) '
'for item numbers item_a <= item_b; the row item_a = item_b holds the squared norm of the '
'item. Only co-occurring pairs have a row. cosine(a, b) = dot / sqrt(norm2(a) * norm2(b)); '
'dot_float = dot::float8 is what the read path uses.';

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
