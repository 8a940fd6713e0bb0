-- Prometheus-style text export of pg_cep's monitoring figures: cep.metrics().
-- Invariant: built only from the monitoring views, so it is as cheap as they are; like them it
-- reads catalog, state and log tables, never the event tables.

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
SET jit = off
AS $fn$
    -- Each view is read once: a CTE referenced several times is materialized (only the columns
    -- used are listed, so the rest of a view is not computed).
    WITH st AS (
        SELECT
            x.stream,
            x.events_total,
            x.late_events,
            x.batches_total,
            x.events_per_second,
            x.watermark,
            x.lag,
            x.ingest_micros_per_event
        FROM cep.stream_stats AS x
    ), d AS (
        SELECT
            x.alerts_last_hour,
            x.active_keys,
            x.notify_queue_usage
        FROM cep.dashboard AS x
    ), c AS (
        SELECT
            x.consumer,
            x.pending,
            x.oldest_pending_age
        FROM cep.consumer_stats AS x
    ), r AS (
        SELECT
            x.recommender,
            x.users,
            x.capped_events
        FROM cep.recommender_stats AS x
    ), ru AS (
        SELECT
            x.evaluations,
            x.hits,
            'stream=' || cep._prom_label(x.stream) || ',rule=' || cep._prom_label(x.rule_name)
            AS labels
        FROM cep.rule_stats AS x
    ), pa AS (
        SELECT
            x.events,
            x.matches,
            x.active_runs,
            x.drops,
            x.late_events,
            'stream=' || cep._prom_label(x.stream) || ',pattern=' || cep._prom_label(x.pattern)
            AS labels
        FROM cep.pattern_stats AS x
    ), m (name, kind, help, labels, value, ord) AS (
        SELECT 'pg_cep_events_total', 'counter', 'Events ingested by a stream.',
            'stream=' || cep._prom_label(st.stream), st.events_total::float8, 1
        FROM st
        UNION ALL
        SELECT 'pg_cep_late_events_total', 'counter', 'Events that arrived older than the watermark.',
            'stream=' || cep._prom_label(st.stream), st.late_events::float8, 2
        FROM st
        UNION ALL
        SELECT 'pg_cep_batches_total', 'counter', 'Statements (batches) ingested by a stream.',
            'stream=' || cep._prom_label(st.stream), st.batches_total::float8, 3
        FROM st
        UNION ALL
        SELECT 'pg_cep_events_per_second', 'gauge', 'Events per second over the last minute.',
            'stream=' || cep._prom_label(st.stream), st.events_per_second::float8, 4
        FROM st
        UNION ALL
        SELECT 'pg_cep_watermark_seconds', 'gauge', 'Watermark of a stream (Unix time).',
            'stream=' || cep._prom_label(st.stream), extract(epoch FROM st.watermark)::float8, 5
        FROM st WHERE isfinite(st.watermark)
        UNION ALL
        SELECT 'pg_cep_lag_seconds', 'gauge', 'Wall clock minus the newest event time.',
            'stream=' || cep._prom_label(st.stream), extract(epoch FROM st.lag)::float8, 6
        FROM st WHERE st.lag IS NOT NULL
        UNION ALL
        SELECT 'pg_cep_ingest_micros_per_event', 'gauge', 'Mean ingest time per event.',
            'stream=' || cep._prom_label(st.stream), st.ingest_micros_per_event::float8, 7
        FROM st WHERE st.ingest_micros_per_event IS NOT NULL
        UNION ALL
        SELECT 'pg_cep_alerts_last_hour', 'gauge', 'Alerts raised in the last hour.', '',
            d.alerts_last_hour::float8, 8
        FROM d
        UNION ALL
        SELECT 'pg_cep_active_keys', 'gauge', 'Estimated distinct keys seen in the last hour.', '',
            d.active_keys::float8, 9
        FROM d
        UNION ALL
        SELECT 'pg_cep_notify_queue_usage', 'gauge', 'Fraction of the NOTIFY queue in use.', '',
            d.notify_queue_usage, 10
        FROM d
        UNION ALL
        SELECT 'pg_cep_consumer_pending', 'gauge', 'Alerts pending for a consumer.',
            'consumer=' || cep._prom_label(c.consumer), c.pending::float8, 11
        FROM c
        UNION ALL
        SELECT 'pg_cep_consumer_oldest_pending_seconds', 'gauge',
            'Age of the oldest alert pending for a consumer.',
            'consumer=' || cep._prom_label(c.consumer),
            coalesce(extract(epoch FROM c.oldest_pending_age)::float8, 0), 12
        FROM c
        UNION ALL
        SELECT 'pg_cep_window_open', 'gauge', 'Windows not yet final.',
            'window=' || cep._prom_label(w."window"), w.open_windows::float8, 13
        FROM cep.window_stats AS w
        UNION ALL
        SELECT 'pg_cep_recommender_users', 'gauge', 'Users with weights in a recommender''s horizon.',
            'recommender=' || cep._prom_label(r.recommender), r.users::float8, 14
        FROM r
        UNION ALL
        SELECT 'pg_cep_recommender_capped_events_total', 'counter',
            'Events a recommender did not count because of its fan-out cap.',
            'recommender=' || cep._prom_label(r.recommender), r.capped_events::float8, 15
        FROM r
        UNION ALL
        SELECT 'pg_cep_rule_evaluations_total', 'counter',
            'Events a rule was evaluated on (all its versions).',
            ru.labels, ru.evaluations::float8, 16
        FROM ru
        UNION ALL
        SELECT 'pg_cep_rule_hits_total', 'counter', 'Events a rule fired on.',
            ru.labels, ru.hits::float8, 17
        FROM ru
        UNION ALL
        SELECT 'pg_cep_pattern_events_total', 'counter', 'Events a pattern''s matcher processed.',
            pa.labels, pa.events::float8, 18
        FROM pa
        UNION ALL
        SELECT 'pg_cep_pattern_matches_total', 'counter', 'Matches of a pattern.',
            pa.labels, pa.matches::float8, 19
        FROM pa
        UNION ALL
        SELECT 'pg_cep_pattern_active_runs', 'gauge',
            'Open partial runs of a pattern (open starts of an absence detector).',
            pa.labels, pa.active_runs::float8, 20
        FROM pa
        UNION ALL
        SELECT 'pg_cep_pattern_drops_total', 'counter', 'Partial runs dropped at the max_runs cap.',
            pa.labels, pa.drops::float8, 21
        FROM pa
        UNION ALL
        SELECT 'pg_cep_pattern_late_events_total', 'counter',
            'Events a pattern skipped as late.',
            pa.labels, pa.late_events::float8, 22
        FROM pa
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
'queue; pending alerts per consumer; open windows; users and capped events per recommender; '
'evaluations and hits per rule; events, matches, active runs, drops and late events per '
'pattern), for a scraper or an exporter''s custom query. Reads only catalog, state and log '
'tables, never the event tables. Runs as the extension owner; grant EXECUTE to the monitoring '
'role.';
