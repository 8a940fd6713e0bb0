-- Monitoring of streams: cep.stream_stats, cep.dashboard, cep.timeline.
-- Invariant: these read only pg_cep's own bookkeeping (cep.stream_log, cep.alerts), never the
-- event tables, so they stay cheap however large the streams grow.

CREATE VIEW cep.stream_stats AS
SELECT
    s.name AS stream,
    coalesce(a.events, 0)::bigint AS events_total,
    coalesce(a.events_last_minute, 0)::bigint AS events_last_minute,
    round(coalesce(a.events_last_minute, 0) / 60.0, 3) AS events_per_second,
    a.last_event_time,
    coalesce(a.watermark, '-infinity') AS watermark,
    clock_timestamp() - a.last_event_time AS lag,
    coalesce(a.late_events, 0)::bigint AS late_events,
    coalesce(a.batches, 0)::bigint AS batches_total,
    round(a.ingest_micros::numeric / nullif(a.events, 0), 2) AS ingest_micros_per_event,
    round(a.ingest_micros::numeric / nullif(a.batches, 0), 2) AS ingest_micros_per_batch,
    a.last_ingest_at,
    s.allowed_lateness,
    q.ingest_micros_p50,
    q.ingest_micros_p99,
    q.ingest_micros_per_event_p50,
    q.ingest_micros_per_event_p99,
    s.mode,
    coalesce(b.statements, 0)::bigint AS backlog_statements,
    coalesce(b.events, 0)::bigint AS backlog_events,
    clock_timestamp() - b.oldest AS processing_lag
FROM cep.streams AS s
LEFT JOIN LATERAL (
    SELECT
        sum(l.events) AS events,
        sum(l.events) FILTER (WHERE l.logged_at >= clock_timestamp() - interval '1 minute')
            AS events_last_minute,
        max(l.max_event_time) AS last_event_time,
        max(l.watermark) AS watermark,
        sum(l.late_events) AS late_events,
        sum(l.batches) AS batches,
        sum(l.ingest_micros) AS ingest_micros,
        max(l.logged_at) FILTER (WHERE l.events > 0) AS last_ingest_at
    FROM cep.stream_log AS l
    WHERE l.stream_id = s.stream_id
) AS a ON TRUE
LEFT JOIN LATERAL (
    -- Percentiles over the statements of the last five minutes (not yet compacted).
    SELECT
        percentile_cont(0.5) WITHIN GROUP (ORDER BY l.ingest_micros) AS ingest_micros_p50,
        percentile_cont(0.99) WITHIN GROUP (ORDER BY l.ingest_micros) AS ingest_micros_p99,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY l.ingest_micros::float8 / l.events)
            AS ingest_micros_per_event_p50,
        percentile_cont(0.99) WITHIN GROUP (ORDER BY l.ingest_micros::float8 / l.events)
            AS ingest_micros_per_event_p99
    FROM cep.stream_log AS l
    WHERE
        l.stream_id = s.stream_id AND NOT l.compacted AND l.events > 0
        AND l.logged_at >= clock_timestamp() - interval '5 minutes'
) AS q ON TRUE
LEFT JOIN LATERAL (
    -- Asynchronous streams: the statements waiting for cep.process_stream.
    SELECT
        count(*) AS statements,
        sum(w.events) AS events,
        min(w.queued_at) AS oldest
    FROM cep.stream_queue AS w
    WHERE w.stream_id = s.stream_id
) AS b ON TRUE;

COMMENT ON VIEW cep.stream_stats IS
'One row per stream: events_total, events_last_minute, events_per_second (last minute), '
'last_event_time, watermark, lag (wall clock minus the newest event time), late_events, '
'batches_total, the ingest time per event and per batch in microseconds, and the p50/p99 of '
'the ingest time per statement and per event over the statements of the last five minutes; '
'for asynchronous streams (mode) the backlog waiting for cep.process_stream (statements, '
'events) and processing_lag, the age of the oldest waiting statement (NULL when none waits). '
'Ingest figures of an asynchronous stream measure its processing.';

CREATE VIEW cep.dashboard AS
WITH recent AS (
    SELECT
        l.stream_id,
        sum(l.events) AS events,
        sum(l.events) FILTER (WHERE l.logged_at >= clock_timestamp() - interval '1 minute')
            AS events_last_minute,
        sum(l.batches) AS batches,
        sum(l.ingest_micros) AS ingest_micros
    FROM cep.stream_log AS l
    WHERE l.logged_at >= clock_timestamp() - interval '1 hour'
    GROUP BY l.stream_id
),

bits AS (
    SELECT
        l.stream_id,
        bit_or(l.key_bits) AS bits
    FROM cep.stream_log AS l
    WHERE l.logged_at >= clock_timestamp() - interval '1 hour' AND l.key_bits IS NOT NULL
    GROUP BY l.stream_id
),

-- How much of the hash space the estimate reads. The newest (not yet compacted) rows carry one
-- array of sketch positions per statement, sorted; when they hold more than
-- dashboard_sketch_positions positions in all (default 65536: a fast load before maintenance
-- compacted it, or hundreds of big statements a second), only the positions below a slice of
-- the 4096 are read (at least 128), and the estimate is scaled up: each position stands for
-- 1/4096 of the hash space, so the keys hashed below the slice are a uniform sample.
slices AS (
    SELECT
        r.stream_id,
        CASE
            WHEN n.positions <= m.most THEN 4096
            ELSE greatest(128, floor(4096 * m.most::float8 / n.positions))::integer
        END AS slice
    FROM recent AS r
    CROSS JOIN
        LATERAL (
            SELECT coalesce(sum(cardinality(u.key_sketch)), 0) AS positions
            FROM cep.stream_log AS u
            WHERE
                u.stream_id = r.stream_id AND u.key_bits IS NULL
                AND u.logged_at >= clock_timestamp() - interval '1 hour'
        ) AS n
    CROSS JOIN (
        SELECT coalesce((
            SELECT x.value::bigint FROM cep.settings AS x
            WHERE x.name = 'dashboard_sketch_positions'
        ), 65536) AS most
    ) AS m
),

-- The positions of the key sketch seen in the hour, below the slice: the bitmaps of compacted
-- rows ORed, plus the positions of the newest rows' arrays that are not in them. (Written out
-- here, not calling internal functions: readers of the view run its functions with their own
-- rights.)
keys AS (
    SELECT
        r.stream_id,
        sl.slice,
        coalesce(bit_count(substring(b.bits FROM 1 FOR sl.slice)), 0) + (
            SELECT count(*)
            FROM (
                -- (hashed, not sorted: the newest rows can hold many positions; a slice of a
                -- sorted array by binary search)
                SELECT p.position
                FROM cep.stream_log AS u
                CROSS JOIN
                    LATERAL unnest(CASE
                        WHEN sl.slice = 4096 THEN u.key_sketch
                        ELSE u.key_sketch[1:width_bucket((sl.slice - 1)::smallint, u.key_sketch)]
                    END) AS p (position)
                WHERE
                    u.stream_id = r.stream_id AND u.key_bits IS NULL
                    AND u.logged_at >= clock_timestamp() - interval '1 hour'
                    AND (b.bits IS NULL OR get_bit(b.bits, p.position) = 0)
                GROUP BY p.position
            ) AS d
        ) AS positions
    FROM recent AS r
    INNER JOIN slices AS sl ON r.stream_id = sl.stream_id
    LEFT JOIN bits AS b ON r.stream_id = b.stream_id
)

SELECT
    (SELECT count(*) FROM cep.streams) AS streams,
    coalesce(sum(r.events), 0)::bigint AS events_last_hour,
    round(coalesce(sum(r.events_last_minute), 0) / 60.0, 3) AS events_per_second,
    round(sum(r.ingest_micros)::numeric / nullif(sum(r.batches), 0) / 1000.0, 3)
        AS avg_ingest_latency_ms,
    -- linear counting: the distinct keys behind that many of the slice's positions of
    -- hashtext(key) & 4095, times 4096 / slice (within a few percent below ~10k keys over the
    -- whole 4096; saturates near 30k; a slice of 128 to 4096 positions adds sampling error)
    coalesce(sum(CASE
        WHEN k.positions IS NULL OR k.positions <= 0 THEN 0
        WHEN k.positions >= k.slice THEN round(4096 * ln(k.slice::float8))
        ELSE round(-4096 * ln((k.slice - k.positions)::float8 / k.slice))
    END), 0)::bigint AS active_keys,
    (
        SELECT count(*) FROM cep.alerts AS al
        WHERE al.created_at >= clock_timestamp() - interval '1 hour'
    ) AS alerts_last_hour,
    pg_notification_queue_usage() AS notify_queue_usage
FROM recent AS r
LEFT JOIN keys AS k ON r.stream_id = k.stream_id;

COMMENT ON VIEW cep.dashboard IS
'One row for a psql dashboard: streams, events_last_hour, events_per_second (last minute), '
'avg_ingest_latency_ms (ingest function time per statement, last hour), active_keys '
'(estimated distinct keys seen in the last hour), alerts_last_hour and notify_queue_usage '
'(the fraction of the NOTIFY queue in use; the doorbell stays silent above '
'notify_max_queue_usage).';

CREATE FUNCTION cep.timeline(
    stream text,
    bucket interval DEFAULT '1 minute',
    span interval DEFAULT '1 hour'
)
RETURNS TABLE (
    bucket_start timestamptz,
    events bigint,
    late_events bigint,
    batches bigint,
    events_per_second numeric,
    ingest_micros_per_event numeric,
    alerts bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._stream_id(stream);
    v_from timestamptz;
BEGIN
    IF bucket IS NULL OR bucket <= '0 seconds' THEN
        RAISE EXCEPTION 'bucket must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF span IS NULL OR span <= '0 seconds' THEN
        RAISE EXCEPTION 'span must be a positive interval' USING ERRCODE = '22023';
    END IF;
    IF extract(epoch FROM span) / extract(epoch FROM bucket) > 10000 THEN
        RAISE EXCEPTION 'span / bucket must be at most 10000 buckets' USING ERRCODE = '22023';
    END IF;
    v_from := date_bin(bucket, clock_timestamp() - span, '1970-01-01 00:00:00+00');
    RETURN QUERY
    WITH b AS (
        SELECT g AS bucket_start
        FROM generate_series(v_from, clock_timestamp(), bucket) AS g
    ), l AS (
        SELECT date_bin(bucket, sl.logged_at, '1970-01-01 00:00:00+00') AS bucket_start,
            sum(sl.events) AS events, sum(sl.late_events) AS late_events,
            sum(sl.batches) AS batches, sum(sl.ingest_micros) AS ingest_micros
        FROM cep.stream_log AS sl
        WHERE sl.stream_id = v_id AND sl.logged_at >= v_from
        GROUP BY 1
    ), a AS (
        SELECT date_bin(bucket, al.created_at, '1970-01-01 00:00:00+00') AS bucket_start,
            count(*) AS alerts
        FROM cep.alerts AS al
        WHERE al.stream = timeline.stream AND al.created_at >= v_from
        GROUP BY 1
    )
    SELECT b.bucket_start,
        coalesce(l.events, 0)::bigint,
        coalesce(l.late_events, 0)::bigint,
        coalesce(l.batches, 0)::bigint,
        round(coalesce(l.events, 0) / extract(epoch FROM bucket), 3),
        round(l.ingest_micros::numeric / nullif(l.events, 0), 2),
        coalesce(a.alerts, 0)::bigint
    FROM b
    LEFT JOIN l ON l.bucket_start = b.bucket_start
    LEFT JOIN a ON a.bucket_start = b.bucket_start
    ORDER BY b.bucket_start;
END
$fn$;

COMMENT ON FUNCTION cep.timeline(text, interval, interval) IS
'Per-bucket activity of STREAM over the last SPAN (buckets aligned to the Unix epoch): events, '
'late events, statements, events per second, ingest time per event and alerts raised. '
'Runs as the extension owner so that readers need no access to the bookkeeping tables.';
