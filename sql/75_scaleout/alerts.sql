-- Alerts across servers: a collector polls each worker's consumer (cep.poll_alerts), hands the
-- alerts to cep.import_alerts on the hub, and acknowledges them on the worker once that has
-- committed.
-- Invariant: an alert of a worker is stored in the hub's cep.alerts once, however often the
-- worker delivers it (cep.imported_alerts remembers it), so the hub's own consumers get the
-- usual guarantees over the alerts of every worker.

CREATE FUNCTION cep.import_alerts(origin text, alerts jsonb)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_count integer;
    v_streams text [];
BEGIN
    IF origin IS NULL OR octet_length(origin) NOT BETWEEN 1 AND 63 OR origin ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid origin %', coalesce(quote_literal(origin), 'NULL')
            USING ERRCODE = '22023',
            HINT = 'origin names the worker: 1 to 63 bytes without control characters.';
    END IF;
    IF alerts IS NULL OR jsonb_typeof(alerts) <> 'array' THEN
        RAISE EXCEPTION 'alerts must be a JSON array of cep.alerts rows'
            USING ERRCODE = '22023',
            HINT = 'On the worker: SELECT coalesce(jsonb_agg(a), ''[]'') '
                'FROM cep.poll_alerts(consumer) AS a.';
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(alerts) AS e (a)
        WHERE jsonb_typeof(e.a) IS DISTINCT FROM 'object'
            OR jsonb_typeof(e.a->'alert_id') IS DISTINCT FROM 'number'
    ) THEN
        RAISE EXCEPTION 'alerts must be a JSON array of cep.alerts rows, each with its alert_id'
            USING ERRCODE = '22023';
    END IF;

    -- Old marks of alerts that are gone here (retention) are dropped; a mark stays at least
    -- alert_retention and as long as its alert.
    DELETE FROM cep.imported_alerts AS i
    WHERE i.imported_at < now() - cep._setting('alert_retention')::interval
        AND NOT EXISTS (SELECT 1 FROM cep.alerts AS a WHERE a.alert_id = i.alert_id);

    -- The mark decides: a concurrent import of the same alert waits for this one and skips it.
    WITH src AS (
        SELECT DISTINCT ON (a.alert_id) a.*
        FROM jsonb_populate_recordset(NULL::cep.alerts, alerts) AS a
        ORDER BY a.alert_id
    ), marked AS (
        INSERT INTO cep.imported_alerts (origin, origin_alert_id, alert_id)
        SELECT import_alerts.origin, src.alert_id, nextval('cep.alerts_alert_id_seq'::regclass)
        FROM src
        ORDER BY src.alert_id
        ON CONFLICT ON CONSTRAINT imported_alerts_pkey DO NOTHING
        RETURNING imported_alerts.origin_alert_id, imported_alerts.alert_id
    ), ins AS (
        INSERT INTO cep.alerts (
            alert_id, source_kind, source_name, stream, partition_key, event_id,
            severity, score, message, details, created_at
        ) OVERRIDING SYSTEM VALUE
        SELECT m.alert_id, src.source_kind, src.source_name, src.stream, src.partition_key,
            src.event_id, coalesce(src.severity, 'high'), src.score, src.message,
            coalesce(src.details, '{}'), coalesce(src.created_at, now())
        FROM marked AS m
        JOIN src ON src.alert_id = m.origin_alert_id
        RETURNING cep.alerts.alert_id, cep.alerts.stream
    ), queued AS (
        INSERT INTO cep.consumer_pending (consumer_id, alert_id)
        SELECT c.consumer_id, ins.alert_id
        FROM ins CROSS JOIN cep.consumers AS c
    )
    SELECT min(ins.alert_id), count(*), array_agg(DISTINCT ins.stream)
    INTO v_first, v_count, v_streams
    FROM ins;

    IF v_count > 0 THEN
        -- the doorbell of each stream of that name here, else the default channel
        PERFORM cep._ring_doorbell(c.channel, v_first)
        FROM (
            SELECT DISTINCT coalesce(s.notify_channel, 'cep_alerts') AS channel
            FROM unnest(v_streams) AS u (stream)
            LEFT JOIN cep.streams AS s ON s.name = u.stream
            WHERE coalesce(s.notify, TRUE)
        ) AS c;
    END IF;
    RETURN v_count;
END
$fn$;

COMMENT ON FUNCTION cep.import_alerts(text, jsonb) IS
'On the hub of a scale-out setup: store ALERTS (a JSON array of cep.alerts rows, as a worker''s '
'cep.poll_alerts returns them) from worker ORIGIN in this server''s cep.alerts, with new ids '
'and their original created_at, queued for this server''s consumers; alerts of ORIGIN imported '
'before are skipped, so a redelivery stores nothing twice. Acknowledge them on the worker '
'after this commits. Returns the number of alerts stored.';
