-- Raising alerts and ringing the NOTIFY doorbell.
-- Invariant: the alert rows, and their pending deliveries to every consumer, are written in
-- the caller's transaction; the doorbell is rung at
-- most once per channel per transaction, carries only an alert id, and can never make the
-- caller's statement fail (disabled, queue nearly full, or any NOTIFY error: it stays silent).

CREATE FUNCTION cep._setting(setting text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(
        (SELECT s.value FROM cep.settings AS s WHERE s.name = setting),
        CASE setting
            WHEN 'notify' THEN 'on'
            WHEN 'notify_max_queue_usage' THEN '0.5'
            WHEN 'stats_retention' THEN '7 days'
            WHEN 'late_event_retention' THEN '7 days'
            WHEN 'alert_retention' THEN '30 days'
            WHEN 'assessment_retention' THEN '30 days'
        END
    )
$fn$;

COMMENT ON FUNCTION cep._setting(text) IS
'Internal: the value of a global setting from cep.settings, or its default.';

CREATE FUNCTION cep._ring_doorbell(channel text, alert_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_rung text := coalesce(current_setting('cep.doorbells_rung', true), '');
    v_mark text := '/' || md5(channel) || '/';
    v_notify text;
    v_max_usage text;
BEGIN
    -- cheapest checks first: most calls in a transaction find the bell already rung
    IF channel IS NULL OR strpos(v_rung, v_mark) > 0
        OR coalesce(current_setting('cep.notify', true), '') IN ('off', 'false', '0')
        -- pg_notify's own argument errors cannot happen past this (no subtransaction needed)
        OR octet_length(channel) NOT BETWEEN 1 AND 63 OR alert_id IS NULL THEN
        RETURN false;
    END IF;
    SELECT max(st.value) FILTER (WHERE st.name = 'notify'),
        max(st.value) FILTER (WHERE st.name = 'notify_max_queue_usage')
    INTO v_notify, v_max_usage
    FROM cep.settings AS st
    WHERE st.name IN ('notify', 'notify_max_queue_usage');
    -- (the default is cep._setting's, written out: calling that function, which is planned on
    -- every call, would cost more than the rest of the doorbell)
    IF v_notify = 'off'
        OR pg_notification_queue_usage() >= coalesce(v_max_usage, '0.5')::float8 THEN
        RETURN false;
    END IF;
    PERFORM pg_notify(channel, alert_id::text);
    PERFORM set_config('cep.doorbells_rung', v_rung || v_mark, true);
    RETURN true;
END
$fn$;

COMMENT ON FUNCTION cep._ring_doorbell(text, bigint) IS
'Internal: NOTIFY channel with an alert id as payload, at most once per channel per '
'transaction; never raises. Switched off by SET cep.notify = off (session) or the notify '
'setting (global).';

CREATE FUNCTION cep._raise_alerts(stream_id integer, drafts cep.alert_draft[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_first bigint;
    v_count integer;
    v_notify boolean;
    v_channel text;
BEGIN
    -- The alerts, and one pending delivery per consumer, in the producer's transaction.
    WITH ins AS (
        INSERT INTO cep.alerts (
            source_kind, source_name, stream, partition_key, event_id,
            severity, score, message, details
        )
        SELECT d.source_kind, d.source_name, d.stream, d.partition_key, d.event_id,
            coalesce(d.severity, 'high'), d.score, d.message, coalesce(d.details, '{}')
        FROM unnest(drafts) AS d
        RETURNING alert_id
    ), queued AS (
        INSERT INTO cep.consumer_pending (consumer_id, alert_id)
        SELECT c.consumer_id, ins.alert_id
        FROM ins CROSS JOIN cep.consumers AS c
    )
    SELECT min(ins.alert_id), count(*) INTO v_first, v_count FROM ins;

    IF v_count > 0 THEN
        SELECT s.notify, s.notify_channel INTO v_notify, v_channel
        FROM cep.streams AS s WHERE s.stream_id = _raise_alerts.stream_id;
        IF coalesce(v_notify, true) THEN
            PERFORM cep._ring_doorbell(coalesce(v_channel, 'cep_alerts'), v_first);
        END IF;
    END IF;
    RETURN v_count;
END
$fn$;

COMMENT ON FUNCTION cep._raise_alerts(integer, cep.alert_draft[]) IS
'Internal: insert a set of alerts for a stream in one statement, queue each for every '
'consumer, and ring the stream''s doorbell.';
