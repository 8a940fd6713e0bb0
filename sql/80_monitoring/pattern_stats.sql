-- Monitoring of patterns: cep.pattern_stats.
-- Invariant: reads the pattern catalog, state and log, never the event tables.

CREATE VIEW cep.pattern_stats AS
SELECT
    p.pattern_id,
    p.name AS pattern,
    s.name AS stream,
    p.kind,
    p.engine,
    coalesce(st.active_runs, 0)::bigint AS active_runs,
    coalesce(st.keys_with_runs, 0)::bigint AS keys_with_runs,
    coalesce(l.events, 0)::bigint AS events,
    coalesce(l.matches, 0)::bigint AS matches,
    coalesce(l.drops, 0)::bigint AS drops,
    coalesce(l.late, 0)::bigint AS late_events,
    l.last_match
FROM cep.patterns AS p
INNER JOIN cep.streams AS s ON p.stream_id = s.stream_id
LEFT JOIN LATERAL (
    SELECT
        sum(q.runs) AS active_runs,
        sum(q.keys) AS keys_with_runs
    FROM (
        SELECT
            sum(cardinality(x.r_no)) AS runs,
            count(*) AS keys
        FROM cep.pattern_state AS x
        WHERE x.pattern_id = p.pattern_id AND x.active AND p.kind = 'pattern'
        UNION ALL
        SELECT
            count(*) AS runs,
            count(DISTINCT a.k) AS keys
        FROM cep.absence_pending AS a
        WHERE a.pattern_id = p.pattern_id AND p.kind = 'absence'
    ) AS q
) AS st ON TRUE
LEFT JOIN LATERAL (
    SELECT
        sum(x.events) AS events,
        sum(x.matches) AS matches,
        sum(x.drops) AS drops,
        sum(x.late) AS late,
        max(x.last_match) AS last_match
    FROM cep.pattern_log AS x
    WHERE x.pattern_id = p.pattern_id
) AS l ON TRUE;

COMMENT ON VIEW cep.pattern_stats IS
'Per pattern or absence detector: the engine (eager or lazy, see cep.create_pattern), open '
'partial runs (and keys holding them; for absences the '
'starts waiting for their deadline), events processed, matches, runs dropped at the max_runs '
'cap, events skipped as late, and the event time of the last match.';
