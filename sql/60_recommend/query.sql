-- Reading recommendations: cep.recommend, cep.similar_items, cep.user_recommendations.
-- Invariant: computed on read from the maintained weights and dot products, so results are
-- always those of the committed state: score(i) = sum over the user's items j of
-- w(user, j) * cos(i, j), cos(i, j) = dot(i, j) / (|i| |j|); ties ranked by item id (bytewise).
-- Only the top n are sorted; the cost is one index row per (user's item, co-occurring item).

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
    RETURN QUERY
    WITH mine AS (
        SELECT w.item_id AS j, sum(w.weight) AS w
        FROM cep.recommender_weights AS w
        WHERE w.recommender_id = v_id AND w.user_id = recommend.user_id
        GROUP BY w.item_id
    ), mj AS (
        -- w(user, j) / |j| for each of the user's items j
        SELECT m.j, m.w::float8 / sqrt(p.dot::float8) AS wn
        FROM mine AS m
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = m.j AND p.item_b = m.j
    ), nb AS MATERIALIZED (
        -- every item i sharing a user with j, with w(user, j) / |j| * dot(i, j)
        SELECT p.item_b AS i, mj.j, mj.wn * p.dot::float8 AS c
        FROM mj
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = mj.j AND p.item_b > mj.j
        UNION ALL
        SELECT p.item_a, mj.j, mj.wn * p.dot::float8
        FROM mj
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_b = mj.j AND p.item_a < mj.j
    ), ranked AS (
        SELECT sc.i, sc.s / sqrt(p.dot::float8) AS score
        FROM (SELECT nb.i, sum(nb.c) AS s FROM nb GROUP BY nb.i) AS sc
        INNER JOIN cep.recommender_pairs AS p
            ON p.recommender_id = v_id AND p.item_a = sc.i AND p.item_b = sc.i
        WHERE NOT EXISTS (SELECT 1 FROM mine WHERE mine.j = sc.i)
        ORDER BY 2 DESC, sc.i
        LIMIT n
    ), why AS (
        -- the user's item with the largest term of each chosen score
        SELECT DISTINCT ON (nb.i) nb.i, nb.j
        FROM nb
        WHERE nb.i IN (SELECT ranked.i FROM ranked)
        ORDER BY nb.i, nb.c DESC, nb.j
    )
    SELECT x.i::text, x.score,
        (row_number() OVER (ORDER BY x.score DESC, x.i))::integer,
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
    RETURN QUERY
    WITH me AS (
        SELECT p.dot::float8 AS norm2
        FROM cep.recommender_pairs AS p
        WHERE p.recommender_id = v_id AND p.item_a = similar_items.item_id
            AND p.item_b = similar_items.item_id
    ), nb AS (
        SELECT p.item_b AS i, p.dot::float8 AS dot
        FROM cep.recommender_pairs AS p
        WHERE p.recommender_id = v_id AND p.item_a = similar_items.item_id
            AND p.item_b > similar_items.item_id
        UNION ALL
        SELECT p.item_a, p.dot::float8
        FROM cep.recommender_pairs AS p
        WHERE p.recommender_id = v_id AND p.item_b = similar_items.item_id
            AND p.item_a < similar_items.item_id
    ), ranked AS (
        SELECT nb.i, nb.dot / sqrt(me.norm2 * q.dot::float8) AS similarity
        FROM nb
        CROSS JOIN me
        JOIN cep.recommender_pairs AS q
            ON q.recommender_id = v_id AND q.item_a = nb.i AND q.item_b = nb.i
        ORDER BY 2 DESC, nb.i
        LIMIT n
    )
    SELECT x.i::text, x.similarity,
        (row_number() OVER (ORDER BY x.similarity DESC, x.i))::integer
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
