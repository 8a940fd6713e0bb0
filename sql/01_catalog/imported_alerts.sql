-- Alerts imported from other servers (the workers of a scale-out setup) into this server's
-- cep.alerts by cep.import_alerts: one row per imported alert, keyed by where it came from,
-- so an alert a worker's consumer delivers twice (a lost acknowledgement) is stored once.

CREATE TABLE cep.imported_alerts (
    origin text NOT NULL,
    origin_alert_id bigint NOT NULL,
    alert_id bigint NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imported_alerts_pkey PRIMARY KEY (origin, origin_alert_id),
    CONSTRAINT imported_alerts_origin_check CHECK (
        octet_length(origin) BETWEEN 1 AND 63 AND origin !~ '[[:cntrl:]]'
    )
);

CREATE INDEX imported_alerts_imported_at_idx ON cep.imported_alerts (imported_at);

COMMENT ON TABLE cep.imported_alerts IS
'Alerts imported by cep.import_alerts: origin (the worker''s name), the alert id there and the '
'alert id here. Kept while the imported alert exists here (and at least alert_retention).';
