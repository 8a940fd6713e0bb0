-- Periodic duties, run by cep.run_maintenance() from any scheduler.
-- Invariant: idempotent and safe from several sessions at once (one transaction-scoped
-- advisory lock; a second caller skips instead of waiting), and never changes a figure that
-- the monitoring views report: compaction preserves sums, maxima and sketches.

-- Compacted ingest-log rows keep their key sketch as a bitmap (see cep.dashboard).
CREATE FUNCTION cep._sketch_bits(positions smallint[])
RETURNS bit(4096)
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT string_agg(CASE WHEN p.position IS NULL THEN '0' ELSE '1' END, '' ORDER BY i.i)::bit(4096)
    FROM generate_series(0, 4095) AS i (i)
    LEFT JOIN (SELECT DISTINCT x.position FROM unnest(positions) AS x (position)) AS p
        ON p.position = i.i
$fn$;

COMMENT ON FUNCTION cep._sketch_bits(smallint[]) IS
'Internal: a key sketch''s positions (0 to 4095) as a bitmap: bit i is set when position i is '
'in the array.';

CREATE FUNCTION cep.run_maintenance()
RETURNS TABLE (task text, items bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_n bigint;
    v_rows bigint;
    v_window record;
    v_table name;
    v_lo timestamptz;
    v_hi timestamptz;
    v_now timestamptz := clock_timestamp();
    v_stats_retention interval := cep._setting('stats_retention')::interval;
    v_orphans integer [];
    v_m bigint;
    v_keys_s integer [];
    v_keys_k text [];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pg_cep run_maintenance')) THEN
        task := 'skipped: another session is running maintenance';
        items := 0;
        RETURN NEXT;
        RETURN;
    END IF;

    -- Streams whose table was dropped: reported, and left out of every task below (their
    -- windows, matches and alerts stay until cep.drop_stream).
    SELECT coalesce(array_agg(s.stream_id), '{}') INTO v_orphans
    FROM cep.streams AS s
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = s.source);
    task := 'orphaned_streams';
    items := cardinality(v_orphans);
    RETURN NEXT;

    -- Queued statements of asynchronous streams, up to 100000 events per stream per call (a
    -- stream another session is processing is skipped).
    SELECT coalesce(sum(p.events), 0) INTO v_n
    FROM cep.streams AS s
    CROSS JOIN LATERAL cep._process_queue(s.stream_id, 100000, false) AS p
    WHERE s.mode = 'async' AND s.stream_id <> ALL (v_orphans);
    task := 'process_streams';
    items := v_n;
    RETURN NEXT;

    -- Fold ingest-log rows older than the previous minute into one row per stream and minute.
    WITH moved AS (
        DELETE FROM cep.stream_log AS l
        WHERE NOT l.compacted
            AND l.logged_at < date_trunc('minute', v_now) - interval '1 minute'
        RETURNING l.*
    ), sketches AS (
        SELECT m.stream_id, date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00') AS minute,
            array_agg(DISTINCT p.position ORDER BY p.position) AS key_sketch
        FROM moved AS m
        CROSS JOIN LATERAL unnest(m.key_sketch) AS p (position)
        GROUP BY 1, 2
    ), ins AS (
        INSERT INTO cep.stream_log (
            stream_id, logged_at, batches, events, late_events, min_event_time,
            max_event_time, watermark, ingest_micros, max_batch_micros, key_bits, compacted
        )
        SELECT g.stream_id, g.minute, g.batches, g.events, g.late_events, g.min_event_time,
            g.max_event_time, g.watermark, g.ingest_micros, g.max_batch_micros,
            cep._sketch_bits(k.key_sketch), true
        FROM (
            SELECT m.stream_id,
                date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00') AS minute,
                sum(m.batches) AS batches, sum(m.events) AS events,
                sum(m.late_events) AS late_events, min(m.min_event_time) AS min_event_time,
                max(m.max_event_time) AS max_event_time, max(m.watermark) AS watermark,
                sum(m.ingest_micros) AS ingest_micros, max(m.max_batch_micros) AS max_batch_micros
            FROM moved AS m
            GROUP BY 1, 2
        ) AS g
        LEFT JOIN sketches AS k ON k.stream_id = g.stream_id AND k.minute = g.minute
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM moved;
    task := 'compact_stream_log';
    items := v_n;
    RETURN NEXT;

    -- Past the statistics retention, keep only one archive row per stream (totals, watermark).
    IF EXISTS (
        SELECT 1 FROM cep.stream_log AS l
        WHERE l.logged_at < v_now - v_stats_retention AND l.logged_at > '-infinity'
    ) THEN
        WITH moved AS (
            DELETE FROM cep.stream_log AS l
            WHERE l.logged_at < v_now - v_stats_retention
            RETURNING l.*
        ), ins AS (
            INSERT INTO cep.stream_log (
                stream_id, logged_at, batches, events, late_events, min_event_time,
                max_event_time, watermark, ingest_micros, max_batch_micros, compacted
            )
            SELECT m.stream_id, '-infinity', sum(m.batches), sum(m.events), sum(m.late_events),
                min(m.min_event_time), max(m.max_event_time), max(m.watermark),
                sum(m.ingest_micros), max(m.max_batch_micros), true
            FROM moved AS m
            GROUP BY m.stream_id
            RETURNING 1
        )
        SELECT count(*) INTO v_n FROM moved;
    ELSE
        v_n := 0;
    END IF;
    task := 'archive_stream_log';
    items := v_n;
    RETURN NEXT;

    DELETE FROM cep.late_events AS l
    WHERE l.arrived_at < v_now - cep._setting('late_event_retention')::interval;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_late_events';
    items := v_n;
    RETURN NEXT;

    -- Alerts past alert_retention that no consumer still has pending; at most 50000 per call
    -- so that one call stays short.
    DELETE FROM cep.alerts AS a
    WHERE a.alert_id IN (
        SELECT o.alert_id
        FROM cep.alerts AS o
        WHERE o.created_at < v_now - cep._setting('alert_retention')::interval
            AND NOT EXISTS (SELECT 1 FROM cep.consumer_pending AS p WHERE p.alert_id = o.alert_id)
        ORDER BY o.created_at
        LIMIT 50000
    );
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_alerts';
    items := v_n;
    RETURN NEXT;

    -- Windows that ended more than their retention before the watermark.
    v_n := 0;
    FOR v_window IN
        SELECT w.*, cep._watermark(w.stream_id) AS watermark
        FROM cep.windows AS w
        ORDER BY w.window_id
    LOOP
        CONTINUE WHEN NOT isfinite(v_window.watermark - v_window.retention);
        IF v_window.kind = 'session' THEN
            EXECUTE format(
                'DELETE FROM cep.%I AS t WHERE t.last_event + %L::interval < $1',
                v_window.state_table, v_window.size)
            USING v_window.watermark - v_window.retention;
        ELSE
            -- Windows that ended before the cutoff are hidden from the view, and the panes
            -- that only they contain are deleted (a pane that a later window shares stays).
            UPDATE cep.windows AS x
            SET purged_before = v_window.watermark - v_window.retention
            WHERE x.window_id = v_window.window_id
                AND x.purged_before < v_window.watermark - v_window.retention;
            EXECUTE format('DELETE FROM cep.%I AS t WHERE t.pane_start < $1',
                v_window.state_table || '_panes')
            USING date_bin(coalesce(v_window.slide, v_window.size),
                v_window.watermark - v_window.retention - v_window.size - interval '1 microsecond',
                '1970-01-01 00:00:00+00') + coalesce(v_window.slide, v_window.size);
        END IF;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_n := v_n + v_rows;
        FOR v_table IN
            SELECT c.relname FROM pg_catalog.pg_class AS c
            WHERE c.relnamespace = 'cep'::regnamespace AND c.relkind = 'r'
                AND c.relname LIKE v_window.state_table || '\_a\_%'
        LOOP
            IF v_window.kind = 'session' THEN
                EXECUTE format(
                    'DELETE FROM cep.%1$I AS d WHERE NOT EXISTS '
                    '(SELECT 1 FROM cep.%2$I AS t WHERE t.session_id = d.session_id)',
                    v_table, v_window.state_table);
            ELSE
                EXECUTE format('DELETE FROM cep.%I AS t WHERE t.window_start + %L::interval < $1',
                    v_table, v_window.size)
                USING v_window.watermark - v_window.retention;
            END IF;
        END LOOP;
        IF v_window.kind = 'session' THEN
            EXECUTE format(
                'DELETE FROM cep.%1$I AS k WHERE NOT EXISTS '
                '(SELECT 1 FROM cep.%2$I AS t WHERE t.sk = k.sk)',
                v_window.state_table || '_keys', v_window.state_table);
        END IF;
    END LOOP;
    task := 'purge_windows';
    items := v_n;
    RETURN NEXT;

    -- Tumbling and hopping windows: merge the partial rows of closed panes (each batch
    -- appends its own), up to 1000 panes per window and call.
    v_n := 0;
    FOR v_window IN
        SELECT w.*, cep._watermark(w.stream_id) AS watermark
        FROM cep.windows AS w
        WHERE w.kind <> 'session'
        ORDER BY w.window_id
    LOOP
        EXECUTE format('SELECT min(t.pane_start) FROM cep.%I AS t WHERE t.pane_start >= $1',
            v_window.state_table || '_panes')
        INTO v_lo
        USING v_window.compacted_until;
        -- (panes that start before the pane of the watermark are closed)
        v_hi := least(v_lo + 1000 * v_window.pane, CASE WHEN isfinite(v_window.watermark)
            THEN date_bin(v_window.pane, v_window.watermark, '1970-01-01 00:00:00+00')
            ELSE v_window.watermark END);
        CONTINUE WHEN v_lo IS NULL OR v_hi <= v_lo;
        EXECUTE cep._window_compact_sql(v_window.window_id) INTO v_rows USING v_lo, v_hi;
        v_n := v_n + v_rows;
        UPDATE cep.windows AS x SET compacted_until = v_hi WHERE x.window_id = v_window.window_id;
    END LOOP;
    task := 'compact_windows';
    items := v_n;
    RETURN NEXT;

    -- Recommenders: weights of whole buckets older than the horizon (relative to the stream's
    -- watermark) leave the state with exactly their contributions; the cap log is compacted.
    SELECT coalesce(sum(cep._expire_recommender(r.recommender_id)), 0) INTO v_n
    FROM (SELECT x.recommender_id FROM cep.recommenders AS x ORDER BY x.recommender_id) AS r;
    WITH moved AS (
        DELETE FROM cep.recommender_log AS l
        WHERE l.logged_at < v_now - interval '1 minute'
        RETURNING l.*
    )
    INSERT INTO cep.recommender_log (recommender_id, logged_at, capped_events)
    SELECT m.recommender_id, max(m.logged_at), sum(m.capped_events)
    FROM moved AS m
    GROUP BY m.recommender_id;
    task := 'expire_recommenders';
    items := v_n;
    RETURN NEXT;

    -- Time partitions: make them ahead, retire the ones past retention.
    SELECT coalesce(sum(cep._premake_partitions(ps.stream_id)), 0) INTO v_n
    FROM cep.partitioned_streams AS ps
    WHERE ps.stream_id <> ALL (v_orphans);
    task := 'premake_partitions';
    items := v_n;
    RETURN NEXT;
    SELECT coalesce(sum(cep._retire_partitions(ps.stream_id)), 0) INTO v_n
    FROM cep.partitioned_streams AS ps
    WHERE ps.stream_id <> ALL (v_orphans);
    task := 'retire_partitions';
    items := v_n;
    RETURN NEXT;

    -- Rules: counters folded per minute (and past stats_retention into one archive row per
    -- rule set), idle key locks and assessments past assessment_retention purged.
    v_n := cep._fold_rule_log(date_trunc('minute', v_now) - interval '1 minute', false)
        + cep._fold_rule_log(v_now - v_stats_retention, true);
    task := 'compact_rule_log';
    items := v_n;
    RETURN NEXT;
    -- (each stream's bound computed once, not once per key)
    DELETE FROM cep.rule_keys AS k
    WHERE (k.stream_id, k.k) IN (
        SELECT o.stream_id, o.k
        FROM (
            SELECT s.stream_id,
                cep._watermark(s.stream_id) - cep._rule_horizon(s.stream_id) - interval '1 hour'
                    AS bound
            FROM cep.streams AS s
            WHERE EXISTS (SELECT 1 FROM cep.rule_keys AS x WHERE x.stream_id = s.stream_id)
            OFFSET 0    -- (kept a subquery: not pulled up into a per-key join condition)
        ) AS b
        JOIN cep.rule_keys AS o ON o.stream_id = b.stream_id AND o.last_seen < b.bound
        LIMIT 50000
    );
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_rule_keys';
    items := v_n;
    RETURN NEXT;
    DELETE FROM cep.risk_assessments AS a
    WHERE a.assessment_id IN (
        SELECT o.assessment_id
        FROM cep.risk_assessments AS o
        WHERE o.assessed_at < v_now - cep._setting('assessment_retention')::interval
        LIMIT 50000
    );
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_risk_assessments';
    items := v_n;
    RETURN NEXT;

    -- Buckets of trailing metrics older than twice their window (32 widths) plus the lateness
    -- behind the watermark: the floor moves first, so that metrics of older (late) events read
    -- raw rows there; at most 100000 buckets per call, skipping those a writer holds.
    UPDATE cep.rule_bucket_series AS f
    SET floor = pg_catalog.date_bin(f.width,
        cep._watermark(f.stream_id) - 64 * f.width - st.allowed_lateness, '2000-01-01 00:00:00+00')
    FROM cep.streams AS st
    WHERE st.stream_id = f.stream_id AND pg_catalog.isfinite(cep._watermark(f.stream_id))
        AND pg_catalog.date_bin(f.width,
            cep._watermark(f.stream_id) - 64 * f.width - st.allowed_lateness,
            '2000-01-01 00:00:00+00') > f.floor;
    DELETE FROM cep.rule_buckets AS b
    WHERE (b.series_id, b.k, b.b) IN (
        SELECT o.series_id, o.k, o.b
        FROM cep.rule_buckets AS o
        JOIN cep.rule_bucket_series AS f ON f.series_id = o.series_id
        WHERE o.b < f.floor
        LIMIT 100000
        FOR UPDATE OF o SKIP LOCKED
    );
    GET DIAGNOSTICS v_n = ROW_COUNT;
    task := 'purge_rule_buckets';
    items := v_n;
    RETURN NEXT;

    -- Wall-clock streams: the watermark follows the clock, so that absence deadlines and
    -- pattern timeouts fire without new events.
    SELECT count(cep.advance_watermark(s.name, v_now - s.allowed_lateness)) INTO v_n
    FROM cep.streams AS s
    WHERE s.wall_clock AND cep._watermark(s.stream_id) < v_now - s.allowed_lateness
        AND s.stream_id <> ALL (v_orphans);
    task := 'wall_clock_watermarks';
    items := v_n;
    RETURN NEXT;

    -- Patterns and absence detectors: keys whose events waited for the watermark, runs that
    -- timed out and absence deadlines that passed, at the current watermark (writers only
    -- advance their own keys; lazy patterns leave keys a session holds to the next call).
    SELECT count(cep._patterns_advance(x.stream_id, x.w, x.w, NULL, skip_busy => true)) INTO v_n
    FROM (
        SELECT DISTINCT p.stream_id, cep._watermark(p.stream_id) AS w
        FROM cep.patterns AS p
        WHERE p.stream_id <> ALL (v_orphans)
    ) AS x
    WHERE isfinite(x.w);
    task := 'advance_patterns';
    items := v_n;
    RETURN NEXT;

    -- Patterns: counters folded per minute; state rows of keys without open runs and without
    -- events waiting for the watermark (pending_t) dropped an hour past the watermark (they
    -- only remember how far the key was processed). A row a writer holds is skipped, and a
    -- row is locked before it is deleted, so the conditions hold for its latest version (a
    -- writer that committed meanwhile may have opened runs or left events waiting).
    WITH moved AS (
        DELETE FROM cep.pattern_log AS l
        WHERE l.logged_at < date_trunc('minute', v_now) - interval '1 minute'
            AND l.logged_at <> date_bin('1 minute', l.logged_at, '1970-01-01 00:00:00+00')
        RETURNING l.*
    ), ins AS (
        INSERT INTO cep.pattern_log (pattern_id, logged_at, events, matches, drops, late, last_match)
        SELECT m.pattern_id, date_bin('1 minute', m.logged_at, '1970-01-01 00:00:00+00'),
            sum(m.events), sum(m.matches), sum(m.drops), sum(m.late), max(m.last_match)
        FROM moved AS m
        GROUP BY 1, 2
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM moved;
    task := 'compact_pattern_log';
    items := v_n;
    RETURN NEXT;
    DELETE FROM cep.pattern_state AS x
    WHERE (x.pattern_id, x.k) IN (
        SELECT o.pattern_id, o.k
        FROM cep.pattern_state AS o
        JOIN cep.patterns AS p ON p.pattern_id = o.pattern_id
        -- each stream's horizon computed once (OFFSET 0), not once per row
        JOIN (
            SELECT s.stream_id, cep._watermark(s.stream_id) - s.allowed_lateness - interval '1 hour' AS h
            FROM cep.streams AS s
            OFFSET 0
        ) AS s ON s.stream_id = p.stream_id
        WHERE NOT o.active AND o.pending_t IS NULL AND p.engine = 'eager' AND o.upto_t < s.h
        LIMIT 50000
        FOR UPDATE OF o SKIP LOCKED
    );
    GET DIAGNOSTICS v_n = ROW_COUNT;
    -- Lazy patterns: under the key's row of cep.pattern_keys (the lock of their writers and
    -- matchers; skipped while a session holds it), idle state rows of keys whose every lazy
    -- pattern matched the key more than an hour before the watermark, and the key rows left
    -- without state (also those of keys no lazy pattern ever matched, an hour after the event
    -- that made the row).
    SELECT array_agg(o.stream_id), array_agg(o.k) INTO v_keys_s, v_keys_k
    FROM (
        SELECT o.stream_id, o.k
        FROM cep.pattern_keys AS o
        JOIN (
            SELECT s.stream_id, cep._watermark(s.stream_id) - s.allowed_lateness - interval '1 hour' AS h
            FROM cep.streams AS s
            WHERE s.stream_id <> ALL (v_orphans)
            OFFSET 0
        ) AS s ON s.stream_id = o.stream_id
        WHERE coalesce(o.upto_t, o.seen_t) < s.h
        LIMIT 50000
        FOR UPDATE OF o SKIP LOCKED
    ) AS o;
    IF v_keys_k IS NOT NULL THEN
        DELETE FROM cep.pattern_state AS x
        USING unnest(v_keys_s, v_keys_k) AS u (stream_id, k), cep.patterns AS p
        WHERE p.stream_id = u.stream_id AND p.engine = 'lazy' AND x.pattern_id = p.pattern_id
            AND x.k = u.k AND NOT x.active AND x.pending_t IS NULL;
        GET DIAGNOSTICS v_m = ROW_COUNT;
        v_n := v_n + v_m;
        DELETE FROM cep.pattern_keys AS x
        USING unnest(v_keys_s, v_keys_k) AS u (stream_id, k)
        WHERE x.stream_id = u.stream_id AND x.k = u.k
            AND NOT EXISTS (
                SELECT 1 FROM cep.pattern_state AS o
                JOIN cep.patterns AS p ON p.pattern_id = o.pattern_id
                WHERE p.stream_id = u.stream_id AND p.engine = 'lazy' AND o.k = u.k
            );
    END IF;
    task := 'purge_pattern_state';
    items := v_n;
    RETURN NEXT;

    -- One row per consumer for delivery counters older than a minute.
    WITH moved AS (
        DELETE FROM cep.consumer_log AS l
        WHERE l.logged_at < v_now - interval '1 minute'
        RETURNING l.*
    ), ins AS (
        INSERT INTO cep.consumer_log (consumer_id, logged_at, delivered, redelivered, acked)
        SELECT m.consumer_id, max(m.logged_at), sum(m.delivered), sum(m.redelivered),
            sum(m.acked)
        FROM moved AS m
        GROUP BY m.consumer_id
        RETURNING 1
    )
    SELECT count(*) INTO v_n FROM moved;
    task := 'compact_consumer_log';
    items := v_n;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION cep.run_maintenance() IS
'Run every periodic duty once and report what was done, one row per task: processing of the '
'queued statements of asynchronous streams (up to 100000 events per stream), compaction of the '
'ingest log, archiving past stats_retention, purging late events past late_event_retention, '
'purging alerts past alert_retention that every consumer acknowledged, purging windows past '
'their retention, expiring recommender weights older than their horizon, making partitions '
'ahead and retiring old ones (cep.partition_stream), compaction of the rule and consumer '
'logs, purging idle rule key locks, buckets of trailing rule metrics and risk assessments past '
'assessment_retention, advancing '
'patterns and absence detectors whose keys wait for the watermark. '
'Idempotent; a concurrent second call skips. Schedule it every minute (pg_cron or any '
'scheduler).';
