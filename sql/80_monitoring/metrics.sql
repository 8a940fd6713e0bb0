-- Prometheus-style text export of pg_cep's monitoring figures: cep.metrics().
-- Invariant: built only from the monitoring views, so it is as cheap as they are.

CREATE FUNCTION cep._prom_label(value text)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT '"' || replace(replace(replace(value, '\', '\\'), '"', '\"'), E'\n', '\n') || '"'
$fn$;

COMMENT ON FUNCTION cep._prom_label(text) IS
'Internal: a Prometheus label value, quoted and escaped.';

CREATE FUNCTION cep.metrics()
RETURNS text
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH m (name, kind, help, labels, value, ord) AS (
        SELECT 'pg_cep_events_total', 'counter', 'Events ingested by a stream.',
            'stream=' || cep._prom_label(st.stream), st.events_total::float8, 1
        FROM cep.stream_stats AS st
        UNION ALL
        SELECT 'pg_cep_late_events_total', 'counter', 'Events that arrived older than the watermark.',
            'stream=' || cep._prom_label(st.stream), st.late_events::float8, 2
        FROM cep.stream_stats AS st
        UNION ALL
        SELECT 'pg_cep_batches_total', 'counter', 'Statements (batches) ingested by a stream.',
            'stream=' || cep._prom_label(st.stream), st.batches_total::float8, 3
        FROM cep.stream_stats AS st
        UNION ALL
        SELECT 'pg_cep_events_per_second', 'gauge', 'Events per second over the last minute.',
            'stream=' || cep._prom_label(st.stream), st.events_per_second::float8, 4
        FROM cep.stream_stats AS st
        UNION ALL
        SELECT 'pg_cep_watermark_seconds', 'gauge', 'Watermark of a stream (Unix time).',
            'stream=' || cep._prom_label(st.stream), extract(epoch FROM st.watermark)::float8, 5
        FROM cep.stream_stats AS st WHERE isfinite(st.watermark)
        UNION ALL
        SELECT 'pg_cep_lag_seconds', 'gauge', 'Wall clock minus the newest event time.',
            'stream=' || cep._prom_label(st.stream), extract(epoch FROM st.lag)::float8, 6
        FROM cep.stream_stats AS st WHERE st.lag IS NOT NULL
        UNION ALL
        SELECT 'pg_cep_ingest_micros_per_event', 'gauge', 'Mean ingest time per event.',
            'stream=' || cep._prom_label(st.stream), st.ingest_micros_per_event::float8, 7
        FROM cep.stream_stats AS st WHERE st.ingest_micros_per_event IS NOT NULL
        UNION ALL
        SELECT 'pg_cep_alerts_last_hour', 'gauge', 'Alerts raised in the last hour.', '',
            d.alerts_last_hour::float8, 8
        FROM cep.dashboard AS d
        UNION ALL
        SELECT 'pg_cep_active_keys', 'gauge', 'Estimated distinct keys seen in the last hour.', '',
            d.active_keys::float8, 9
        FROM cep.dashboard AS d
        UNION ALL
        SELECT 'pg_cep_notify_queue_usage', 'gauge', 'Fraction of the NOTIFY queue in use.', '',
            d.notify_queue_usage, 10
        FROM cep.dashboard AS d
        UNION ALL
        SELECT 'pg_cep_consumer_pending', 'gauge', 'Alerts pending for a consumer.',
            'consumer=' || cep._prom_label(c.consumer), c.pending::float8, 11
        FROM cep.consumer_stats AS c
        UNION ALL
        SELECT 'pg_cep_consumer_oldest_pending_seconds', 'gauge',
            'Age of the oldest alert pending for a consumer.',
            'consumer=' || cep._prom_label(c.consumer),
            coalesce(extract(epoch FROM c.oldest_pending_age)::float8, 0), 12
        FROM cep.consumer_stats AS c
        UNION ALL
        SELECT 'pg_cep_window_open', 'gauge', 'Windows not yet final.',
            'window=' || cep._prom_label(w."window"), w.open_windows::float8, 13
        FROM cep.window_stats AS w
        UNION ALL
        SELECT 'pg_cep_recommender_users', 'gauge', 'Users with weights in a recommender''s horizon.',
            'recommender=' || cep._prom_label(r.recommender), r.users::float8, 14
        FROM cep.recommender_stats AS r
        UNION ALL
        SELECT 'pg_cep_recommender_capped_events_total', 'counter',
            'Events a recommender did not count because of its fan-out cap.',
            'recommender=' || cep._prom_label(r.recommender), r.capped_events::float8, 15
        FROM cep.recommender_stats AS r
    ), families AS (
        SELECT m.name, m.kind, m.help, m.ord,
            string_agg(
                m.name || CASE WHEN m.labels = '' THEN '' ELSE '{' || m.labels || '}' END
                || ' ' || m.value::text, E'\n' ORDER BY m.labels
            ) AS samples
        FROM m
        GROUP BY m.name, m.kind, m.help, m.ord
    )
    SELECT coalesce(string_agg(
        format(E'# HELP %s %s\n# TYPE %s %s\n%s', f.name, f.help, f.name, f.kind, f.samples),
        E'\n' ORDER BY f.ord
    ) || E'\n', '')
    FROM families AS f
$fn$;

COMMENT ON FUNCTION cep.metrics() IS
'pg_cep''s monitoring figures in the Prometheus text exposition format (events, late events, '
'batches, rate, watermark, lag and ingest time per stream; alerts, active keys and NOTIFY '
'queue; pending alerts per consumer; open windows; users and capped events per recommender), '
'for a scraper or an exporter''s custom query. Runs as the extension owner; grant EXECUTE to the monitoring role.';
