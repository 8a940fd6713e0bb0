-- Monitoring of windows: cep.window_stats.
-- Invariant: reads only window state tables and stream bookkeeping, never the event tables.

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
AS $fn$
DECLARE
    w record;
    v_end text;
    v_cmp text;
BEGIN
    FOR w IN
        SELECT x.*, s.name AS stream_name, cep._watermark(s.stream_id) AS watermark,
            (SELECT coalesce(sum(l.late_events), 0) FROM cep.stream_log AS l
                WHERE l.stream_id = s.stream_id)::bigint AS late
        FROM cep.windows AS x
        JOIN cep.streams AS s ON s.stream_id = x.stream_id
        ORDER BY x.window_id
    LOOP
        v_end := CASE WHEN w.kind = 'session'
            THEN format('(t.last_event + %L::interval)', w.size) ELSE 't.window_end' END;
        v_cmp := CASE WHEN w.kind = 'session' THEN '<' ELSE '<=' END;
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE NOT (%1$s %2$s $1)), count(*), '
            'max(%1$s) FILTER (WHERE %1$s %2$s $1) FROM cep.%3$I AS t',
            v_end, v_cmp, w.state_table)
        INTO open_windows, state_rows, last_closed_end
        USING w.watermark;
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
