-- Alerts: the durable record of everything pg_cep detected. NOTIFY is only a doorbell; this
-- table is the source of truth. Rows are inserted by the ingest path (via cep._raise_alerts)
-- and never updated; txid records the producing transaction so consumers can cut batches by
-- snapshot and never skip an alert whose transaction commits after a higher alert_id.

CREATE TABLE cep.alerts (
    alert_id bigint GENERATED ALWAYS AS IDENTITY,
    source_kind text NOT NULL,
    source_name text NOT NULL,
    stream text,
    partition_key text,
    event_id bigint,
    severity text NOT NULL DEFAULT 'high',
    score float8,
    message text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT alerts_pkey PRIMARY KEY (alert_id),
    CONSTRAINT alerts_source_kind_check CHECK (
        source_kind IN ('rule', 'pattern', 'window', 'absence')
    ),
    CONSTRAINT alerts_severity_check CHECK (
        severity IN ('info', 'low', 'medium', 'high', 'critical')
    ),
    CONSTRAINT alerts_score_check CHECK (
        score IS NULL OR (score >= 0 AND score < 'Infinity'::float8)
    )
);

CREATE INDEX alerts_created_at_idx ON cep.alerts (created_at);
CREATE INDEX alerts_stream_idx ON cep.alerts (stream, created_at);

COMMENT ON TABLE cep.alerts IS
'Durable alerts raised by rules, patterns, windows and absence detection. NOTIFY on channel '
'cep_alerts (or the stream''s channel) only signals that new rows exist.';

-- The row type the ingest path fills to raise alerts as a set.
CREATE TYPE cep.alert_draft AS (
    source_kind text,
    source_name text,
    stream text,
    partition_key text,
    event_id bigint,
    severity text,
    score float8,
    message text,
    details jsonb
);

COMMENT ON TYPE cep.alert_draft IS
'An alert before insertion: what cep._raise_alerts takes, one element per alert.';
