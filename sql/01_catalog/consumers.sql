-- Durable alert consumers. Raising an alert also queues it for every consumer
-- (cep.consumer_pending) in the producer's transaction, so a consumer sees exactly the alerts
-- that committed, whatever order their transactions commit in. Acknowledgement deletes the
-- pending row; delivery counters are appended to cep.consumer_log.

CREATE TABLE cep.consumers (
    consumer_id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    redelivery_timeout interval NOT NULL DEFAULT '1 minute',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT consumers_pkey PRIMARY KEY (consumer_id),
    CONSTRAINT consumers_name_key UNIQUE (name),
    CONSTRAINT consumers_name_check CHECK (
        octet_length(name) BETWEEN 1 AND 63 AND name !~ '[[:cntrl:]]'
    ),
    CONSTRAINT consumers_timeout_check CHECK (redelivery_timeout > '0 seconds')
) WITH (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);

COMMENT ON TABLE cep.consumers IS
'Durable alert consumers (cep.create_consumer): name and redelivery timeout.';

CREATE TABLE cep.consumer_pending (
    consumer_id integer NOT NULL,
    alert_id bigint NOT NULL,
    delivered_at timestamptz,
    deliveries integer NOT NULL DEFAULT 0,
    CONSTRAINT consumer_pending_pkey PRIMARY KEY (consumer_id, alert_id)
);

CREATE INDEX consumer_pending_alert_idx ON cep.consumer_pending (alert_id);

COMMENT ON TABLE cep.consumer_pending IS
'Alerts queued for a consumer and not yet acknowledged; delivered_at and deliveries record '
'the deliveries so far.';

CREATE TABLE cep.consumer_log (
    consumer_id integer NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered bigint NOT NULL DEFAULT 0,
    redelivered bigint NOT NULL DEFAULT 0,
    acked bigint NOT NULL DEFAULT 0
);

CREATE INDEX consumer_log_consumer_idx ON cep.consumer_log (consumer_id, logged_at);

COMMENT ON TABLE cep.consumer_log IS
'Append-only delivery counters, one row per poll or ack call (summed by cep.consumer_stats, '
'compacted by cep.run_maintenance()), so that workers sharing a consumer never update one row.';
