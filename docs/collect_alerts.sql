-- Collector of a pg_cep scale-out hub (README "Growing past one server"): poll a worker's
-- consumer through dblink, store the alerts in this server's cep.alerts, commit, then
-- acknowledge them on the worker. A crash between the commit and the acknowledgement makes
-- the worker deliver those alerts again after the consumer's redelivery_timeout;
-- cep.import_alerts stores nothing twice. Needs CREATE EXTENSION dblink; run it with CALL,
-- outside a transaction block (it commits batch by batch).
CREATE PROCEDURE public.collect_alerts(
    origin text, conn text, consumer text DEFAULT 'hub', batch integer DEFAULT 1000
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_alerts jsonb;
BEGIN
    LOOP
        SELECT d.alerts INTO v_alerts
        FROM public.dblink(conn, format(
            'SELECT coalesce(jsonb_agg(a ORDER BY a.alert_id), ''[]'') '
            'FROM cep.poll_alerts(%L, %s) AS a', consumer, batch)) AS d (alerts jsonb);
        EXIT WHEN jsonb_array_length(v_alerts) = 0;
        PERFORM cep.import_alerts(origin, v_alerts);
        COMMIT;
        PERFORM 1 FROM public.dblink(conn, format('SELECT cep.ack_alerts(%L, %L)', consumer,
            ARRAY(SELECT (e ->> 'alert_id')::bigint FROM jsonb_array_elements(v_alerts) AS e)))
            AS d (n integer);
    END LOOP;
END
$$;
