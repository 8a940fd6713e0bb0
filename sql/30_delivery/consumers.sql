-- Durable delivery of alerts: create_consumer, poll_alerts, ack_alerts, drop_consumer.
-- Invariant: every alert committed after a consumer's creation is queued for it in the
-- producer's transaction (cep._raise_alerts), so it is delivered at least once however late its
-- transaction commits, and exactly once when the consumer acknowledges in the transaction that
-- polled. Workers sharing a consumer never receive the same alert concurrently (pending rows
-- are taken FOR UPDATE SKIP LOCKED).

CREATE FUNCTION cep._consumer_id(consumer text)
RETURNS integer
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
BEGIN
    IF consumer IS NULL THEN
        RAISE EXCEPTION 'consumer must not be NULL' USING ERRCODE = '22023';
    END IF;
    SELECT c.consumer_id INTO v_id FROM cep.consumers AS c WHERE c.name = consumer;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'consumer "%" does not exist', consumer
            USING ERRCODE = '42704', HINT = 'Create it with cep.create_consumer().';
    END IF;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep._consumer_id(text) IS
'Internal: the id of a consumer by name; raises 42704 when there is none.';

CREATE FUNCTION cep.create_consumer(
    name text,
    from_start boolean DEFAULT FALSE,
    redelivery_timeout interval DEFAULT '1 minute'
)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
BEGIN
    IF name IS NULL OR octet_length(name) NOT BETWEEN 1 AND 63 OR name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid consumer name %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '22023',
            HINT = 'name must be 1 to 63 bytes without control characters.';
    END IF;
    IF from_start IS NULL THEN
        RAISE EXCEPTION 'from_start must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF redelivery_timeout IS NULL OR redelivery_timeout <= '0 seconds' THEN
        RAISE EXCEPTION 'redelivery_timeout must be a positive interval'
            USING ERRCODE = '22023';
    END IF;
    -- Wait for transactions that are raising alerts right now: they queued their alerts for
    -- the consumers they could see, so the new consumer starts after they commit.
    LOCK TABLE cep.consumer_pending IN SHARE MODE;
    IF EXISTS (SELECT 1 FROM cep.consumers AS c WHERE c.name = create_consumer.name) THEN
        RAISE EXCEPTION 'consumer "%" already exists', name USING ERRCODE = '42710';
    END IF;
    INSERT INTO cep.consumers (name, redelivery_timeout)
    VALUES (name, redelivery_timeout)
    RETURNING consumer_id INTO v_id;
    IF from_start THEN
        INSERT INTO cep.consumer_pending (consumer_id, alert_id)
        SELECT v_id, a.alert_id FROM cep.alerts AS a;
    END IF;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.create_consumer(text, boolean, interval) IS
'Create durable alert consumer NAME. It receives every alert committed after its creation '
'(from_start => true: also every alert still stored). A delivered alert that is not '
'acknowledged within redelivery_timeout is delivered again. Waits for transactions that are '
'raising alerts at that moment. Returns the consumer id.';

CREATE FUNCTION cep.drop_consumer(name text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._consumer_id(name);
BEGIN
    DELETE FROM cep.consumer_pending AS p WHERE p.consumer_id = v_id;
    DELETE FROM cep.consumer_log AS l WHERE l.consumer_id = v_id;
    DELETE FROM cep.consumers AS c WHERE c.consumer_id = v_id;
END
$fn$;

COMMENT ON FUNCTION cep.drop_consumer(text) IS
'Remove consumer NAME and its pending deliveries; alerts themselves are kept.';

CREATE FUNCTION cep.poll_alerts(consumer text, max_alerts integer DEFAULT 100)
RETURNS SETOF cep.alerts
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._consumer_id(consumer);
    v_timeout interval;
BEGIN
    IF max_alerts IS NULL OR max_alerts NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_alerts must be between 1 and 100000, got %',
            coalesce(max_alerts::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    SELECT c.redelivery_timeout INTO v_timeout FROM cep.consumers AS c WHERE c.consumer_id = v_id;

    -- Deliver: the oldest pending alerts not delivered recently, skipping those another
    -- worker holds; the counts go to the append-only consumer log in the same statement.
    RETURN QUERY
    WITH picked AS (
        SELECT p.alert_id
        FROM cep.consumer_pending AS p
        WHERE p.consumer_id = v_id
            AND (p.delivered_at IS NULL OR p.delivered_at < clock_timestamp() - v_timeout)
        ORDER BY p.alert_id
        LIMIT max_alerts
        FOR UPDATE SKIP LOCKED
    ), upd AS (
        UPDATE cep.consumer_pending AS p
        SET delivered_at = clock_timestamp(), deliveries = p.deliveries + 1
        FROM picked
        WHERE p.consumer_id = v_id AND p.alert_id = picked.alert_id
        RETURNING p.alert_id, p.deliveries
    ), logged AS (
        INSERT INTO cep.consumer_log (consumer_id, delivered, redelivered)
        SELECT v_id, count(*), count(*) FILTER (WHERE upd.deliveries > 1)
        FROM upd
        HAVING count(*) > 0
    )
    SELECT a.*
    FROM cep.alerts AS a
    JOIN upd ON a.alert_id = upd.alert_id
    ORDER BY a.alert_id;
END
$fn$;

COMMENT ON FUNCTION cep.poll_alerts(text, integer) IS
'Deliver up to MAX_ALERTS of CONSUMER''s pending alerts, oldest alert_id first: those never '
'delivered and those delivered more than its redelivery_timeout ago without acknowledgement, '
'skipping alerts another worker of the same consumer holds. An alert whose transaction '
'committed late is delivered when it commits. Acknowledge with cep.ack_alerts, in the same '
'transaction for exactly-once processing.';

CREATE FUNCTION cep.ack_alerts(consumer text, alert_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer := cep._consumer_id(consumer);
    v_n integer;
BEGIN
    IF alert_ids IS NULL THEN
        RAISE EXCEPTION 'alert_ids must not be NULL' USING ERRCODE = '22023';
    END IF;
    DELETE FROM cep.consumer_pending AS p
    WHERE p.consumer_id = v_id AND p.alert_id = ANY (alert_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        INSERT INTO cep.consumer_log (consumer_id, acked) VALUES (v_id, v_n);
    END IF;
    RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION cep.ack_alerts(text, bigint[]) IS
'Acknowledge alerts delivered to CONSUMER: they will not be delivered to it again. Returns '
'how many pending alerts were acknowledged (ids not pending for it are ignored).';
