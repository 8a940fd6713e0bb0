-- Expiry of recommender state, run by cep.run_maintenance().
-- Invariant: the weights of whole buckets older than the horizon (relative to the stream's
-- watermark) are removed together with exactly their contributions to the item pairs, the same
-- delta rule as ingest with old and new swapped; pairs that reach zero and users left without
-- items are deleted, so state is bounded by the horizon and numeric sums never drift (item
-- numbers stay: see cep.recommender_items).

CREATE FUNCTION cep._expire_recommender(recommender integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $fn$
DECLARE
    r cep.recommenders;
    v_watermark timestamptz;
    v_cutoff timestamptz;
    v_users text [];
    v_rows bigint;
    v_zero_a integer [];
    v_zero_b integer [];
BEGIN
    SELECT * INTO STRICT r FROM cep.recommenders AS x
    WHERE x.recommender_id = _expire_recommender.recommender;
    v_watermark := cep._watermark(r.stream_id);
    IF v_watermark = '-infinity' THEN
        RETURN 0;
    END IF;
    -- Whole buckets only: the state keeps the events with time >= v_cutoff, which is at most
    -- one bucket older than watermark - horizon. At the end of the stream nothing remains.
    v_cutoff := CASE WHEN isfinite(v_watermark)
        THEN date_bin(r.bucket, v_watermark - r.horizon, '1970-01-01 00:00:00+00')
        ELSE 'infinity' END;

    -- Lock the users with expiring weights in key order, as ingest does.
    WITH locked AS (
        INSERT INTO cep.recommender_users AS x (recommender_id, user_id)
        SELECT DISTINCT r.recommender_id, w.user_id
        FROM cep.recommender_weights AS w
        WHERE w.recommender_id = r.recommender_id AND w.bucket < v_cutoff
        ORDER BY 2
        ON CONFLICT (recommender_id, user_id) DO UPDATE SET user_id = EXCLUDED.user_id
        RETURNING x.user_id
    )
    SELECT array_agg(l.user_id) INTO v_users FROM locked AS l;

    IF v_users IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM cep.recommender_weights AS w
            WHERE w.recommender_id = r.recommender_id AND w.user_id = ANY (v_users)
                AND w.bucket < v_cutoff
            RETURNING w.user_id, w.item_no, w.weight
        ), e AS (
            SELECT g.user_id AS u, g.item_no AS i, sum(g.weight) AS w, count(*) AS n
            FROM gone AS g
            GROUP BY g.user_id, g.item_no
        ), cur AS (
            -- the users' weights before the expiry (this statement's snapshot)
            SELECT x.user_id AS u, x.item_no AS i, sum(x.weight) AS w
            FROM cep.recommender_weights AS x
            WHERE x.recommender_id = r.recommender_id AND x.user_id = ANY (v_users)
            GROUP BY x.user_id, x.item_no
        ), ch AS (
            SELECT e.u, e.i, c.w AS old, c.w - e.w AS new
            FROM e
            JOIN cur AS c ON c.u = e.u AND c.i = e.i
        ), up AS (
            -- Every pair loses (old_i * old_j - new_i * new_j >= 0): the proposed row carries
            -- that loss, so that it passes the CHECK (dot >= 0) checked before the conflict.
            INSERT INTO cep.recommender_pairs AS p (recommender_id, item_a, item_b, dot)
            SELECT r.recommender_id, d.a, d.b, sum(d.loss)
            FROM (
                SELECT least(x.i, y.i) AS a, greatest(x.i, y.i) AS b,
                    x.old * y.old - x.new * y.new AS loss
                FROM ch AS x
                JOIN (
                    SELECT ch.u, ch.i, ch.old, ch.new, true AS changed FROM ch
                    UNION ALL
                    SELECT c.u, c.i, c.w, c.w, false
                    FROM cur AS c
                    WHERE NOT EXISTS (SELECT 1 FROM ch WHERE ch.u = c.u AND ch.i = c.i)
                ) AS y ON y.u = x.u AND (NOT y.changed OR y.i >= x.i)
            ) AS d
            GROUP BY d.a, d.b
            HAVING sum(d.loss) <> 0
            ORDER BY d.a, d.b
            ON CONFLICT (recommender_id, item_a, item_b) DO UPDATE SET dot = p.dot - EXCLUDED.dot
            RETURNING p.item_a, p.item_b, p.dot
        )
        SELECT (SELECT coalesce(sum(e.n), 0) FROM e),
            array_agg(up.item_a) FILTER (WHERE up.dot = 0),
            array_agg(up.item_b) FILTER (WHERE up.dot = 0)
        INTO v_rows, v_zero_a, v_zero_b
        FROM up;

        -- Pairs no user has any more (rows this transaction already locked).
        DELETE FROM cep.recommender_pairs AS p
        USING unnest(v_zero_a, v_zero_b) AS z (a, b)
        WHERE p.recommender_id = r.recommender_id AND p.item_a = z.a AND p.item_b = z.b
            AND p.dot = 0;
        DELETE FROM cep.recommender_users AS x
        WHERE x.recommender_id = r.recommender_id AND x.user_id = ANY (v_users)
            AND NOT EXISTS (
                SELECT 1 FROM cep.recommender_weights AS w
                WHERE w.recommender_id = r.recommender_id AND w.user_id = x.user_id
            );
    END IF;

    UPDATE cep.recommenders AS x SET horizon_start = v_cutoff
    WHERE x.recommender_id = r.recommender_id AND x.horizon_start < v_cutoff;
    RETURN coalesce(v_rows, 0);
END
$fn$;

COMMENT ON FUNCTION cep._expire_recommender(integer) IS
'Internal: remove a recommender''s weights of the buckets older than the stream''s watermark '
'minus the horizon, subtracting exactly their contributions from the item pairs; returns the '
'number of (user, item, bucket) weights removed.';
