-- Monitoring of alert consumers: cep.consumer_stats.
-- Invariant: reads only consumer bookkeeping and the pending alerts.

CREATE VIEW cep.consumer_stats AS
SELECT
    c.name AS consumer,
    coalesce(p.pending, 0) AS pending,
    coalesce(p.in_flight, 0) AS in_flight,
    clock_timestamp() - p.oldest AS oldest_pending_age,
    coalesce(l.delivered, 0)::bigint AS delivered,
    coalesce(l.redelivered, 0)::bigint AS redelivered,
    coalesce(l.acked, 0)::bigint AS acked,
    l.last_poll_at,
    c.redelivery_timeout
FROM cep.consumers AS c
-- (one pass over the pending alerts for all consumers: a subquery per consumer made the
-- planner multiply its cost by its guess of the consumers, and JIT-compile the view)
LEFT JOIN (
    SELECT
        cp.consumer_id,
        count(*) AS pending,
        count(*) FILTER (WHERE cp.delivered_at IS NOT NULL) AS in_flight,
        min(a.created_at) AS oldest
    FROM cep.consumer_pending AS cp
    INNER JOIN cep.alerts AS a ON cp.alert_id = a.alert_id
    GROUP BY cp.consumer_id
) AS p ON c.consumer_id = p.consumer_id
LEFT JOIN LATERAL (
    SELECT
        sum(cl.delivered) AS delivered,
        sum(cl.redelivered) AS redelivered,
        sum(cl.acked) AS acked,
        max(cl.logged_at) FILTER (WHERE cl.delivered > 0) AS last_poll_at
    FROM cep.consumer_log AS cl
    WHERE cl.consumer_id = c.consumer_id
) AS l ON TRUE;

COMMENT ON VIEW cep.consumer_stats IS
'One row per alert consumer: pending (queued, not acknowledged), in_flight (delivered, not '
'acknowledged), oldest_pending_age, delivered, redelivered (deliveries after the first) and '
'acked totals, last poll.';
