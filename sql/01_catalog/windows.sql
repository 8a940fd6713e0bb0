-- Window catalog: one row per continuous aggregate (cep.create_window). Each window owns
-- generated state (not extension members, so pg_dump keeps them) and the user-facing view.
-- Tumbling and hopping windows keep partial aggregates per pane (the gcd of size and slide)
-- in cep.window_<id>_panes, appended per batch by the stream's ingest function and merged by
-- the view cep.window_<id>; session windows keep their sessions in the table cep.window_<id>.

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
    -- tumbling and hopping: the width of the panes their state is kept in; windows ending
    -- before purged_before are purged (and hidden from the view, which may still hold panes
    -- that later windows share); panes before compacted_until were merged by maintenance
    pane interval,
    purged_before timestamptz NOT NULL DEFAULT '-infinity',
    compacted_until timestamptz NOT NULL DEFAULT '-infinity',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT windows_pkey PRIMARY KEY (window_id),
    CONSTRAINT windows_name_key UNIQUE (name),
    CONSTRAINT windows_kind_check CHECK (kind IN ('tumbling', 'hopping', 'session')),
    CONSTRAINT windows_size_check CHECK (size > '0 seconds'),
    CONSTRAINT windows_slide_check CHECK (
        (kind = 'hopping' AND slide > '0 seconds' AND slide <= size)
        OR (kind <> 'hopping' AND slide IS NULL)
    ),
    CONSTRAINT windows_retention_check CHECK (retention >= '0 seconds'),
    CONSTRAINT windows_pane_check CHECK ((kind = 'session') = (pane IS NULL))
) WITH (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);

CREATE INDEX windows_stream_idx ON cep.windows (stream_id);

COMMENT ON TABLE cep.windows IS
'Continuous aggregates over streams (cep.create_window): kind, size, slide, group_by, the '
'parsed aggregates, retention, the view that shows them and the state table behind it.';
