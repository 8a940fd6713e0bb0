-- Window catalog: one row per continuous aggregate (cep.create_window). Each window owns a
-- generated state table cep.window_<id> (not an extension member, so pg_dump keeps it) and
-- the user-facing view; the stream's ingest function upserts the state set-based per batch.

CREATE TABLE cep.windows (
    window_id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    stream_id integer NOT NULL,
    kind text NOT NULL,
    size interval NOT NULL,
    slide interval,
    group_by name[] NOT NULL DEFAULT '{}',
    aggregates jsonb NOT NULL,
    retention interval NOT NULL,
    view regclass NOT NULL,
    state_table name NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT windows_pkey PRIMARY KEY (window_id),
    CONSTRAINT windows_name_key UNIQUE (name),
    CONSTRAINT windows_kind_check CHECK (kind IN ('tumbling', 'hopping', 'session')),
    CONSTRAINT windows_size_check CHECK (size > '0 seconds'),
    CONSTRAINT windows_slide_check CHECK (
        (kind = 'hopping' AND slide > '0 seconds' AND slide <= size)
        OR (kind <> 'hopping' AND slide IS NULL)
    ),
    CONSTRAINT windows_retention_check CHECK (retention >= '0 seconds')
);

CREATE INDEX windows_stream_idx ON cep.windows (stream_id);

COMMENT ON TABLE cep.windows IS
'Continuous aggregates over streams (cep.create_window): kind, size, slide, group_by, the '
'parsed aggregates, retention, the view that shows them and the state table behind it.';
