-- Code generation for recommenders: the section of the stream's ingest function that folds a
-- batch's on-time events into user-item weights and item-item dot products.
-- Invariant: a weight change of user u on item i, old -> new, adds new_i * new_j - old_i * old_j
-- to the pair (i, j) for every item j of u (and new_i^2 - old_i^2 to the diagonal), so the
-- pairs stay the exact dot products; users are locked in key order before their old weights
-- are read, and pairs are upserted in (item_a, item_b) order, so concurrent batches serialize
-- per user and never deadlock on pairs. Items are numbered (recommender_items) before the
-- batch is folded; the state is keyed by those numbers.

-- The SQL text of an event's weight over row alias n: the action's weight, or NULL for an
-- action the weights do not name (and for a NULL action).
CREATE FUNCTION cep._recommender_weight_expr(recommender_id integer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('(CASE (n.%I)::text %s END)', r.action_column,
        string_agg(format('WHEN %L THEN %L::numeric', w.key, w.value #>> '{}'), ' '
            ORDER BY w.key))
    FROM cep.recommenders AS r
    CROSS JOIN LATERAL jsonb_each(r.weights) AS w
    WHERE r.recommender_id = _recommender_weight_expr.recommender_id
    GROUP BY r.action_column
$fn$;

COMMENT ON FUNCTION cep._recommender_weight_expr(integer) IS
'Internal: SQL text of the weight of an event over row alias n (NULL for unknown actions).';

CREATE FUNCTION cep._recommender_section(recommender_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r cep.recommenders;
    v_t text;
    v_w text;
    v_on_time text;
    v_check text := '';
BEGIN
    SELECT * INTO STRICT r FROM cep.recommenders AS x
    WHERE x.recommender_id = _recommender_section.recommender_id;
    v_t := cep._time_expr(r.stream_id);
    v_w := cep._recommender_weight_expr(r.recommender_id);
    -- The events a recommender counts: on time, with a user and an item.
    v_on_time := format('%s >= v_watermark AND n.%I IS NOT NULL AND n.%I IS NOT NULL',
        v_t, r.user_column, r.item_column);

    IF r.unknown_action = 'error' THEN
        v_check := format($c$
    -- recommender %1$s: refuse the statement when an event's action has no weight
    DECLARE
        v_action text;
        v_event bigint;
    BEGIN
        SELECT (n.%2$I)::text, (n.%3$I)::bigint INTO v_action, v_event
        FROM cep_new_rows AS n
        WHERE %4$s AND %5$s IS NULL
        ORDER BY 2
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pg_cep: recommender %%: unknown action %%', %6$L,
                coalesce(pg_catalog.quote_literal(v_action), 'NULL')
                USING ERRCODE = '22023',
                DETAIL = pg_catalog.format('event id %%s, column %%s', v_event, %7$L),
                HINT = 'Add the action to the weights or create the recommender with '
                    'unknown_action => ''ignore''.';
        END IF;
    END;
$c$,
            r.recommender_id, r.action_column,
            (SELECT s.id_column FROM cep.streams AS s WHERE s.stream_id = r.stream_id),
            v_on_time, v_w, r.name, r.action_column);
    END IF;

    RETURN v_check || format($s$
    -- recommender %1$s: lock the batch's users in key order (an update, not a bare lock, so
    -- that REPEATABLE READ writers of one user conflict with 40001)
    INSERT INTO cep.recommender_users AS x (recommender_id, user_id)
    SELECT DISTINCT %1$s, (n.%2$I)::text COLLATE "C"
    FROM cep_new_rows AS n
    WHERE %4$s AND %5$s > 0
    ORDER BY 2
    ON CONFLICT (recommender_id, user_id) DO UPDATE SET user_id = EXCLUDED.user_id;
    -- recommender %1$s: number the batch's new items (only the new ones draw a number)
    INSERT INTO cep.recommender_items (recommender_id, item_id)
    SELECT %1$s, b.i
    FROM (
        SELECT DISTINCT (n.%3$I)::text COLLATE "C" AS i
        FROM cep_new_rows AS n
        WHERE %4$s AND %5$s > 0
    ) AS b
    WHERE NOT EXISTS (
        SELECT 1 FROM cep.recommender_items AS x
        WHERE x.recommender_id = %1$s AND x.item_id = b.i
    )
    ORDER BY 2
    ON CONFLICT (recommender_id, item_id) DO NOTHING;
    -- recommender %1$s: weights per (user, item, bucket), then the pairs they change
    WITH b AS (
        SELECT (n.%2$I)::text COLLATE "C" AS u, it.item_no AS i, it.item_id AS iid,
            pg_catalog.date_bin(%6$L::interval, %7$s, '1970-01-01 00:00:00+00') AS bk,
            sum(%5$s) AS w, count(*) AS events
        FROM cep_new_rows AS n
        INNER JOIN cep.recommender_items AS it
            ON it.recommender_id = %1$s AND it.item_id = (n.%3$I)::text COLLATE "C"
        WHERE %4$s AND %5$s > 0
        GROUP BY 1, 2, 3, 4
    ), bi AS (
        SELECT b.u, b.i, b.iid, sum(b.w) AS w, sum(b.events) AS events
        FROM b
        GROUP BY b.u, b.i, b.iid
    ), cur AS (
        -- the users' weights before this batch (their rows are locked above), read user by
        -- user through the primary key whatever the statistics say
        SELECT bu.u, x.item_no AS i, sum(x.weight) AS w
        FROM (SELECT DISTINCT bi.u FROM bi) AS bu
        CROSS JOIN LATERAL (
            SELECT y.item_no, y.weight
            FROM cep.recommender_weights AS y
            WHERE y.recommender_id = %1$s AND y.user_id = bu.u
        ) AS x
        GROUP BY bu.u, x.item_no
    ), fresh AS (
        SELECT bi.u, bi.i, bi.events,
            pg_catalog.row_number() OVER (PARTITION BY bi.u ORDER BY bi.iid) AS nth
        FROM bi
        WHERE NOT EXISTS (SELECT 1 FROM cur AS c WHERE c.u = bi.u AND c.i = bi.i)
    ), refused AS (
        -- the fan-out cap: a user keeps at most %8$s items in the horizon; new items beyond
        -- it (in item order) are not counted
        SELECT f.u, f.i, f.events
        FROM fresh AS f
        LEFT JOIN (SELECT c.u, count(*) AS n FROM cur AS c GROUP BY c.u) AS k ON k.u = f.u
        WHERE f.nth + coalesce(k.n, 0) > %8$s
    ), ch AS (
        SELECT bi.u, bi.i, coalesce(c.w, 0) AS old, coalesce(c.w, 0) + bi.w AS new
        FROM bi
        LEFT JOIN cur AS c ON c.u = bi.u AND c.i = bi.i
        WHERE NOT EXISTS (SELECT 1 FROM refused AS f WHERE f.u = bi.u AND f.i = bi.i)
    ), ins AS (
        INSERT INTO cep.recommender_weights AS x (recommender_id, user_id, item_no, bucket, weight)
        SELECT %1$s, b.u, b.i, b.bk, b.w
        FROM b
        WHERE NOT EXISTS (SELECT 1 FROM refused AS f WHERE f.u = b.u AND f.i = b.i)
        ORDER BY b.u, b.i, b.bk
        ON CONFLICT (recommender_id, user_id, item_no, bucket)
        DO UPDATE SET weight = x.weight + EXCLUDED.weight
    ), capped AS (
        INSERT INTO cep.recommender_log (recommender_id, capped_events)
        SELECT %1$s, sum(f.events)
        FROM refused AS f
        HAVING count(*) > 0
    )
    INSERT INTO cep.recommender_pairs AS p (recommender_id, item_a, item_b, dot)
    SELECT %1$s, d.a, d.b, sum(d.delta)
    FROM (
        SELECT least(x.i, y.i) AS a, greatest(x.i, y.i) AS b,
            x.new * y.new - x.old * y.old AS delta
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
    ORDER BY d.a, d.b
    ON CONFLICT (recommender_id, item_a, item_b) DO UPDATE SET dot = p.dot + EXCLUDED.dot;
$s$,
        r.recommender_id, r.user_column, r.item_column, v_on_time, v_w, r.bucket, v_t,
        r.max_fanout);
END
$fn$;

COMMENT ON FUNCTION cep._recommender_section(integer) IS
'Internal: the section of the stream''s generated ingest function that folds a batch''s '
'on-time events into one recommender''s weights and item pairs.';
