-- Periodic duties of rules, called by cep.run_maintenance().

-- How far back a stream's rules read stored rows: the widest trailing-metric window of its
-- active rules plus the allowed lateness (zero without such rules).
CREATE FUNCTION cep._rule_horizon(stream_id integer)
RETURNS interval
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(make_interval(secs => max(n.secs)) + min(s.allowed_lateness), '0 seconds')
    FROM cep.streams AS s
    JOIN cep.rules AS r ON r.stream = s.name AND r.active
    CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
    WHERE s.stream_id = _rule_horizon.stream_id AND n.secs IS NOT NULL
$fn$;

COMMENT ON FUNCTION cep._rule_horizon(integer) IS
'Internal: how far behind the watermark a stream''s active rules still read stored rows (their '
'widest trailing window plus the allowed lateness).';

-- Fold rule-log rows older than CUTOFF: per minute (archive false, uncompacted rows only) or
-- into one row per rule set at -infinity (archive true). Sums and last-hit times are kept.
CREATE FUNCTION cep._fold_rule_log(cutoff timestamptz, archive boolean)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_n bigint;
BEGIN
    WITH moved AS (
        DELETE FROM cep.rule_log AS l
        WHERE l.logged_at < cutoff
            AND l.logged_at > '-infinity'
            AND (archive OR NOT l.compacted)
        RETURNING l.*
    ), keyed AS (
        SELECT m.*,
            CASE WHEN archive THEN '-infinity'::timestamptz
                ELSE date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00') END AS bucket
        FROM moved AS m
    ), hits AS (
        SELECT k.stream_id, k.rule_set_id, k.bucket, h.r, sum(h.c) AS c,
            max(coalesce(h.last, k.logged_at)) AS last
        FROM keyed AS k
        CROSS JOIN LATERAL unnest(k.hit_rules, k.hit_counts, k.hit_last) AS h (r, c, last)
        WHERE h.r IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ), groups AS (
        SELECT k.stream_id, k.rule_set_id, k.bucket, sum(k.events) AS events
        FROM keyed AS k
        GROUP BY 1, 2, 3
    ), ins AS (
        INSERT INTO cep.rule_log (
            stream_id, rule_set_id, logged_at, events, hit_rules, hit_counts, hit_last, compacted
        )
        SELECT g.stream_id, g.rule_set_id, g.bucket, g.events,
            coalesce(array_agg(h.r ORDER BY h.r) FILTER (WHERE h.r IS NOT NULL), '{}'),
            coalesce(array_agg(h.c ORDER BY h.r) FILTER (WHERE h.r IS NOT NULL), '{}'),
            coalesce(array_agg(h.last ORDER BY h.r) FILTER (WHERE h.r IS NOT NULL), '{}'),
            true
        FROM groups AS g
        LEFT JOIN hits AS h
            ON h.stream_id = g.stream_id AND h.rule_set_id = g.rule_set_id AND h.bucket = g.bucket
        GROUP BY g.stream_id, g.rule_set_id, g.bucket, g.events
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM moved;
    RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION cep._fold_rule_log(timestamptz, boolean) IS
'Internal: compact rule-log rows older than a cutoff per minute, or into one archive row per '
'rule set, keeping sums of events and hits and each rule''s last hit time.';
