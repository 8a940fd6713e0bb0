-- Monitoring of rules: cep.rule_stats.
-- Invariant: reads the rule catalog and the per-statement rule log, never the event tables.

CREATE VIEW cep.rule_stats AS
SELECT
    r.rule_id,
    r.name AS rule_name,
    r.stream,
    r.kind,
    r.mode,
    r.active,
    r.version,
    r.risk_score,
    coalesce(e.evaluations, 0)::bigint AS evaluations,
    coalesce(h.hits, 0)::bigint AS hits,
    CASE WHEN e.evaluations > 0
            THEN round(coalesce(h.hits, 0)::numeric / e.evaluations, 6)::float8
    END AS hit_rate,
    h.last_hit
FROM cep.rules AS r
LEFT JOIN LATERAL (
    SELECT sum(l.events) AS evaluations
    FROM cep.rule_sets AS rs
    INNER JOIN cep.rule_log AS l ON rs.rule_set_id = l.rule_set_id
    WHERE r.rule_id = any(rs.rule_ids)
) AS e ON TRUE
LEFT JOIN LATERAL (
    SELECT
        sum(x.c) AS hits,
        max(coalesce(x.last, l.logged_at)) AS last_hit
    FROM cep.rule_sets AS rs
    INNER JOIN cep.rule_log AS l ON rs.rule_set_id = l.rule_set_id
    CROSS JOIN LATERAL unnest(l.hit_rules, l.hit_counts, l.hit_last) AS x (rid, c, last)
    WHERE r.rule_id = any(rs.rule_ids) AND x.rid = r.rule_id
) AS h ON TRUE;

COMMENT ON VIEW cep.rule_stats IS
'Per rule: how many events it was evaluated on (under any of its versions), how many it fired '
'on, the hit rate and the time of its last hit (statement time). Reads only the rule log.';
