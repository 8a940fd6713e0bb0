-- Reading recommendations: cep.recommend, cep.similar_items, cep.user_recommendations.
-- Invariant: computed on read from the maintained weights and dot products, so results are
-- always those of the committed state: score(i) = sum over the user's items j of
-- w(user, j) * cos(i, j), cos(i, j) = dot(i, j) / (|i| |j|); ties ranked by item id (bytewise).
-- The cost is one index-only row per (user's item, co-occurring item), summed in float8 by one
-- hash aggregate; item ids are compared as text only for the top n and their ties.

CREATE FUNCTION cep.recommend(recommender text, user_id text, n integer DEFAULT 10)
RETURNS TABLE (item_id text, score float8, rank integer, because_of text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- A few thousand index probes: starting parallel workers costs more than it saves.
SET max_parallel_workers_per_gather = 0
AS $fn$
DECLARE
    v_id integer;
    v_mine bigint;
    v_items float8;
    v_pairs float8;
    v_all_norms boolean;
BEGIN
    -- Looked up here rather than by cep._recommender_id: readers may call this function.
    SELECT r.recommender_id INTO v_id FROM cep.recommenders AS r
    WHERE r.name = recommend.recommender;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'recommender % does not exist',
            coalesce(quote_ident(recommender), 'NULL')
            USING ERRCODE = '42704', HINT = 'See SELECT name FROM cep.recommenders.';
    END IF;
    IF n IS NULL OR n <= 0 THEN
        RAISE EXCEPTION 'n must be a positive integer, got %', coalesce(n::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- The candidates' norms: one probe each, or one scan of all the norms into a hash table
    -- when the candidates are likely more than 1/20 of the items (the user's items times the
    -- mean number of neighbours of an item, from the planner's statistics: a plan choice only,
    -- which SET cep.recommend_norms = probe or scan overrides).
    v_all_norms := CASE current_setting('cep.recommend_norms', true)
        WHEN 'probe' THEN false WHEN 'scan' THEN true END;
    IF v_all_norms IS NULL THEN
        SELECT count(DISTINCT w.item_no) INTO v_mine
        FROM cep.recommender_weights AS w
        WHERE w.recommender_id = v_id AND w.user_id = recommend.user_id;
        SELECT c.reltuples INTO v_items FROM pg_catalog.pg_class AS c
        WHERE c.oid = 'cep.recommender_pairs_norm_idx'::regclass;
        SELECT c.reltuples INTO v_pairs FROM pg_catalog.pg_class AS c
        WHERE c.oid = 'cep.recommender_pairs'::regclass;
        v_all_norms := v_items <= 0 OR v_mine * 2 * v_pairs / v_items >= v_items / 20;
    END IF;
    RETURN QUERY
    WITH mine AS (
        SELECT w.item_no AS j, sum(w.weight)::float8 AS w
        FROM cep.recommender_weights AS w
        WHERE w.recommender_id = v_id AND w.user_id = recommend.user_id
        GROUP BY w.item_no
    ), mj AS (
        -- w(user, j) / |j| for each of the user's items j
        SELECT m.j, m.w / sqrt(p.dot_float) AS wn
        FROM mine AS m
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = m.j AND p.item_b = m.j
    ), sc AS (
        -- every item i sharing a user with one of the user's items j: the sum over j of
        -- w(user, j) / |j| * dot(i, j), read from the two covering indexes
        SELECT nb.i, sum(nb.c) AS s
        FROM (
            SELECT p.item_b AS i, mj.wn * p.dot_float AS c
            FROM mj
            INNER JOIN cep.recommender_pairs AS p
                ON p.recommender_id = v_id AND p.item_a = mj.j AND p.item_b > mj.j
            UNION ALL
            SELECT p.item_a, mj.wn * p.dot_float
            FROM mj
            INNER JOIN cep.recommender_pairs AS p
                ON p.recommender_id = v_id AND p.item_b = mj.j AND p.item_a < mj.j
        ) AS nb
        GROUP BY nb.i
    ), best AS (
        -- the n best scores and every candidate tied with the last of them; the branch not
        -- chosen by v_all_norms is skipped by its one-time filter
        SELECT sc.i, sc.s / sqrt(q.dot_float) AS score
        FROM sc
        INNER JOIN cep.recommender_pairs AS q
            ON q.recommender_id = v_id AND q.item_a = sc.i AND q.item_b = q.item_a
        WHERE NOT v_all_norms AND NOT EXISTS (SELECT 1 FROM mine WHERE mine.j = sc.i)
        UNION ALL
        SELECT sc.i, sc.s / sqrt(q.dot_float)
        FROM sc
        INNER JOIN (
            SELECT q.item_a, q.dot_float
            FROM cep.recommender_pairs AS q
            WHERE q.recommender_id = v_id AND q.item_b = q.item_a
            -- never parameterized by the candidate: one scan of the norm index
            OFFSET 0
        ) AS q ON q.item_a = sc.i
        WHERE v_all_norms AND NOT EXISTS (SELECT 1 FROM mine WHERE mine.j = sc.i)
        ORDER BY 2 DESC
        FETCH FIRST recommend.n ROWS WITH TIES
    ), ranked AS (
        SELECT x.i, it.item_id, x.score
        FROM best AS x
        INNER JOIN cep.recommender_items AS it ON it.item_no = x.i
        ORDER BY x.score DESC, it.item_id
        LIMIT recommend.n
    ), why AS (
        -- the user's item with the largest term of each chosen score
        SELECT DISTINCT ON (x.i) x.i, ij.item_id AS j
        FROM ranked AS x
        CROSS JOIN mj
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = least(x.i, mj.j)
            AND p.item_b = greatest(x.i, mj.j)
        INNER JOIN cep.recommender_items AS ij ON ij.item_no = mj.j
        ORDER BY x.i, mj.wn * p.dot_float DESC, ij.item_id
    )
    SELECT x.item_id::text, x.score,
        (row_number() OVER (ORDER BY x.score DESC, x.item_id))::integer,
        why.j::text
    FROM ranked AS x
    INNER JOIN why ON x.i = why.i
    ORDER BY 3;
END
$fn$;

COMMENT ON FUNCTION cep.recommend(text, text, integer) IS
'The top N items for USER_ID (its text form) from RECOMMENDER: items the user has no weight '
'on within the horizon, scored by the sum over the user''s items j of w(user, j) * cos(item, '
'j), highest first, ties by item id (bytewise); only items sharing a user with one of the '
'user''s items (score > 0) are returned. because_of is the user''s item contributing most to '
'the score. Unknown user: no rows; unknown recommender: 42704; N <= 0: 22023.';

CREATE TYPE cep.similar_item AS (
    item_id text,
    similarity float8,
    rank integer
);

COMMENT ON TYPE cep.similar_item IS
'A row of cep.similar_items: an item, its cosine similarity and its rank.';

CREATE FUNCTION cep.similar_items(recommender text, item_id text, n integer DEFAULT 10)
RETURNS SETOF cep.similar_item
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET max_parallel_workers_per_gather = 0
AS $fn$
DECLARE
    v_id integer;
    v_items float8;
    v_pairs float8;
    v_all_norms boolean;
BEGIN
    -- Looked up here rather than by cep._recommender_id: readers may call this function.
    SELECT r.recommender_id INTO v_id FROM cep.recommenders AS r
    WHERE r.name = similar_items.recommender;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'recommender % does not exist',
            coalesce(quote_ident(recommender), 'NULL')
            USING ERRCODE = '42704', HINT = 'See SELECT name FROM cep.recommenders.';
    END IF;
    IF n IS NULL OR n <= 0 THEN
        RAISE EXCEPTION 'n must be a positive integer, got %', coalesce(n::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- The neighbours' norms: probes, or one scan of the norm index when an item's mean number
    -- of neighbours is at least 1/20 of the items (as in cep.recommend).
    v_all_norms := CASE current_setting('cep.recommend_norms', true)
        WHEN 'probe' THEN false WHEN 'scan' THEN true END;
    IF v_all_norms IS NULL THEN
        SELECT c.reltuples INTO v_items FROM pg_catalog.pg_class AS c
        WHERE c.oid = 'cep.recommender_pairs_norm_idx'::regclass;
        SELECT c.reltuples INTO v_pairs FROM pg_catalog.pg_class AS c
        WHERE c.oid = 'cep.recommender_pairs'::regclass;
        v_all_norms := v_items <= 0 OR 2 * v_pairs / v_items >= v_items / 20;
    END IF;
    RETURN QUERY
    WITH me AS (
        SELECT it.item_no AS j, p.dot_float AS norm2
        FROM cep.recommender_items AS it
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = it.item_no AND p.item_b = it.item_no
        WHERE it.recommender_id = v_id AND it.item_id = similar_items.item_id
    ), nb AS (
        SELECT p.item_b AS i, p.dot_float AS dot
        FROM me
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = me.j AND p.item_b > me.j
        UNION ALL
        SELECT p.item_a, p.dot_float
        FROM me
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_b = me.j AND p.item_a < me.j
    ), best AS (
        SELECT nb.i, nb.dot / sqrt(me.norm2 * q.dot_float) AS similarity
        FROM nb
        CROSS JOIN me
        INNER JOIN cep.recommender_pairs AS q
            ON q.recommender_id = v_id AND q.item_a = nb.i AND q.item_b = q.item_a
        WHERE NOT v_all_norms
        UNION ALL
        SELECT nb.i, nb.dot / sqrt(me.norm2 * q.dot_float)
        FROM nb
        CROSS JOIN me
        INNER JOIN (
            SELECT q.item_a, q.dot_float
            FROM cep.recommender_pairs AS q
            WHERE q.recommender_id = v_id AND q.item_b = q.item_a
            OFFSET 0
        ) AS q ON q.item_a = nb.i
        WHERE v_all_norms
        ORDER BY 2 DESC
        FETCH FIRST similar_items.n ROWS WITH TIES
    ), ranked AS (
        SELECT it.item_id, x.similarity
        FROM best AS x
        INNER JOIN cep.recommender_items AS it ON it.item_no = x.i
        ORDER BY x.similarity DESC, it.item_id
        LIMIT similar_items.n
    )
    SELECT x.item_id::text, x.similarity,
        (row_number() OVER (ORDER BY x.similarity DESC, x.item_id))::integer
    FROM ranked AS x
    ORDER BY 3;
END
$fn$;

COMMENT ON FUNCTION cep.similar_items(text, text, integer) IS
'The N items most similar to ITEM_ID (its text form) in RECOMMENDER by cosine similarity of '
'their user weights within the horizon, highest first, ties by item id (bytewise); only items '
'sharing a user with it (similarity > 0). Unknown item: no rows; unknown recommender: 42704; '
'N <= 0: 22023.';

CREATE VIEW cep.user_recommendations AS
SELECT
    r.name AS recommender,
    u.user_id,
    x.item_id,
    x.score,
    x.rank,
    x.because_of
FROM cep.recommenders AS r
INNER JOIN cep.recommender_users AS u ON r.recommender_id = u.recommender_id
CROSS JOIN LATERAL cep.recommend(r.name, u.user_id, 10) AS x;

COMMENT ON VIEW cep.user_recommendations IS
'The top 10 recommendations of every user of every recommender (the seed''s '
'user_recommendations), computed on read by cep.recommend, so always exact and current; '
'filter by recommender and user_id (only the users asked for are computed).';
