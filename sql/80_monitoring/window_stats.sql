-- Monitoring of windows: cep.window_stats.
-- Invariant: reads only window state tables and stream bookkeeping, never the event tables;
-- for tumbling and hopping windows only the panes near the watermark, through their index.

CREATE FUNCTION cep._window_stats()
RETURNS TABLE (
    window_name text,
    stream text,
    kind text,
    open_windows bigint,
    state_rows bigint,
    last_closed_end timestamptz,
    late_events bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
-- Its searches near the watermark are index range scans. Right after a bulk load or backfill
-- the pane tables have no statistics yet, and the planner, which then guesses a third of the
-- table for a range, chose parallel scans of the whole table (0.33 s over 9.6 million
-- backfilled pane rows, instead of ~1 ms).
SET enable_seqscan = off
SET max_parallel_workers_per_gather = 0
AS $fn$
DECLARE
    w record;
BEGIN
    FOR w IN
        SELECT x.*, s.name AS stream_name, cep._watermark(s.stream_id) AS watermark,
            (SELECT coalesce(sum(l.late_events), 0) FROM cep.stream_log AS l
                WHERE l.stream_id = s.stream_id)::bigint AS late
        FROM cep.windows AS x
        JOIN cep.streams AS s ON s.stream_id = x.stream_id
        ORDER BY x.window_id
    LOOP
        IF w.kind = 'session' THEN
            EXECUTE format(
                'SELECT count(*) FILTER (WHERE NOT (t.last_event + %1$L::interval < $1)), '
                'count(*), max(t.last_event + %1$L::interval) '
                'FILTER (WHERE t.last_event + %1$L::interval < $1) FROM cep.%2$I AS t',
                w.size, w.state_table)
            INTO open_windows, state_rows, last_closed_end
            USING w.watermark;
        ELSE
            -- (from the panes near the watermark, see cep._window_stats_sql)
            EXECUTE cep._window_stats_sql(w.window_id)
            INTO open_windows, state_rows, last_closed_end
            USING w.watermark, w.purged_before;
        END IF;
        window_name := w.name;
        stream := w.stream_name;
        kind := w.kind;
        late_events := w.late;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._window_stats() IS
'Internal: the rows of cep.window_stats (reads each window''s state table).';

CREATE VIEW cep.window_stats AS
SELECT
    ws.window_name AS "window",
    ws.stream,
    ws.kind,
    ws.open_windows,
    ws.state_rows,
    ws.last_closed_end,
    ws.late_events
FROM cep._window_stats() AS ws;

COMMENT ON VIEW cep.window_stats IS
'One row per window: stream, kind, open (not final) windows, state rows, end of the newest '
'closed window, and late events of the stream (counted, not applied).';
