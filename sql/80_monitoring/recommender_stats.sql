-- Monitoring of recommenders: cep.recommender_stats.
-- Invariant: reads only recommender state and catalog, never the event tables.

CREATE VIEW cep.recommender_stats AS
SELECT
    r.name AS recommender,
    s.name AS stream,
    r.horizon,
    r.horizon_start,
    r.max_fanout,
    (
        SELECT count(*) FROM cep.recommender_users AS u
        WHERE u.recommender_id = r.recommender_id
    ) AS users,
    (
        SELECT count(*) FROM cep.recommender_pairs AS p
        WHERE p.recommender_id = r.recommender_id AND p.item_a = p.item_b
    ) AS items,
    (
        SELECT count(*) FROM cep.recommender_pairs AS p
        WHERE p.recommender_id = r.recommender_id AND p.item_a < p.item_b
    ) AS item_pairs,
    (
        SELECT count(*) FROM cep.recommender_weights AS w
        WHERE w.recommender_id = r.recommender_id
    ) AS weight_rows,
    (
        SELECT coalesce(sum(l.capped_events), 0) FROM cep.recommender_log AS l
        WHERE l.recommender_id = r.recommender_id
    )::bigint AS capped_events
FROM cep.recommenders AS r
INNER JOIN cep.streams AS s ON r.stream_id = s.stream_id;

COMMENT ON VIEW cep.recommender_stats IS
'One row per recommender: stream, horizon, horizon_start (the state covers the counted events '
'since then), the fan-out cap, users and items in the horizon, co-occurring item pairs, '
'(user, item, bucket) weight rows, and capped_events: events not counted because their user '
'already had max_fanout items in the horizon (the only approximation).';
