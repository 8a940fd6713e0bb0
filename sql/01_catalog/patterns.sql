-- Pattern catalog and state. A pattern (cep.create_pattern) is compiled once into a program
-- (a preference-ordered NFA whose epsilon closures are precomputed) and a generated matcher
-- function cep._pattern_<id>() that the stream's ingest code calls when the watermark
-- advances. Per-key partial runs live in cep.pattern_state; final matches in cep.matches.

CREATE TABLE cep.patterns (
    pattern_id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    stream_id integer NOT NULL,
    kind text NOT NULL DEFAULT 'pattern',
    pattern text,
    define jsonb NOT NULL DEFAULT '{}',
    within interval,
    contiguity text NOT NULL DEFAULT 'relaxed',
    after_match text NOT NULL DEFAULT 'skip_past_last_row',
    max_runs integer NOT NULL DEFAULT 100,
    engine text NOT NULL DEFAULT 'eager',
    variables text[] NOT NULL DEFAULT '{}',
    program jsonb,
    matcher name,
    start_condition text,
    expected_condition text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT patterns_pkey PRIMARY KEY (pattern_id),
    CONSTRAINT patterns_name_key UNIQUE (name),
    CONSTRAINT patterns_name_check CHECK (
        octet_length(name) BETWEEN 1 AND 63 AND name !~ '[[:cntrl:]]'
    ),
    CONSTRAINT patterns_kind_check CHECK (kind IN ('pattern', 'absence')),
    CONSTRAINT patterns_contiguity_check CHECK (contiguity IN ('strict', 'relaxed')),
    CONSTRAINT patterns_after_match_check CHECK (
        after_match IN ('skip_past_last_row', 'skip_to_next_row')
    ),
    CONSTRAINT patterns_within_check CHECK (within IS NULL OR within > '0 seconds'),
    CONSTRAINT patterns_max_runs_check CHECK (max_runs BETWEEN 1 AND 100000),
    CONSTRAINT patterns_engine_check CHECK (engine IN ('eager', 'lazy'))
) WITH (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);

CREATE INDEX patterns_stream_idx ON cep.patterns (stream_id);

COMMENT ON TABLE cep.patterns IS
'Event patterns (cep.create_pattern) and absence detectors (cep.create_absence) on streams: '
'their definition, the compiled program, the engine that runs it (eager: every event is '
'matched once the watermark reaches it; lazy: a key is matched when an event that can end a '
'match arrives) and the generated matcher function.';

-- Partial runs of one key of one pattern: the runs (by start event) with their threads
-- (program counter, bound events as "id:variable;" text, bindings of variables whose columns
-- conditions read), the best match found so far, the last processed event, and the time of
-- the first event still waiting for the watermark (pending_t; for a lazy pattern the first
-- event that can end a match, or the watermark at which an undecided match is looked at
-- again); deadline: when the oldest run with threads times out.
CREATE TABLE cep.pattern_state (
    pattern_id integer NOT NULL,
    k text NOT NULL,
    upto_t timestamptz,
    upto_id bigint,
    next_no integer NOT NULL DEFAULT 1,
    r_no integer[] NOT NULL DEFAULT '{}',
    r_st timestamptz[] NOT NULL DEFAULT '{}',
    r_sid bigint[] NOT NULL DEFAULT '{}',
    r_best text[] NOT NULL DEFAULT '{}',
    r_bend_t timestamptz[] NOT NULL DEFAULT '{}',
    r_bend_id bigint[] NOT NULL DEFAULT '{}',
    th_run integer[] NOT NULL DEFAULT '{}',
    th_pc integer[] NOT NULL DEFAULT '{}',
    th_path text[] NOT NULL DEFAULT '{}',
    th_bind jsonb[] NOT NULL DEFAULT '{}',
    deadline timestamptz,
    active boolean NOT NULL DEFAULT FALSE,
    pending_t timestamptz,
    CONSTRAINT pattern_state_pkey PRIMARY KEY (pattern_id, k)
);

CREATE INDEX pattern_state_active_idx ON cep.pattern_state (pattern_id, deadline) WHERE active;
CREATE INDEX pattern_state_pending_idx ON cep.pattern_state (pattern_id, pending_t)
WHERE pending_t IS NOT NULL;

COMMENT ON TABLE cep.pattern_state IS
'Internal: per pattern and key, the open partial runs (threads of the compiled program) and '
'the last processed event; for an eager pattern also the lock that serializes concurrent '
'sessions on a key (lazy patterns lock cep.pattern_keys).';

-- The key lock of a stream's lazy patterns: a statement with events that some lazy pattern can
-- use holds its keys' rows FOR KEY SHARE (statements never wait for each other here), one that
-- matches a key (or cep.run_maintenance, cep.advance_watermark) FOR UPDATE, so matching a key
-- waits for every session with uncommitted events of the key and the other way round. upto:
-- the furthest event any lazy pattern matched the key to (an event of the key at or before it
-- that commits later is late for those patterns); seen_t: event time when the row was made.
CREATE TABLE cep.pattern_keys (
    stream_id integer NOT NULL,
    k text NOT NULL,
    seen_t timestamptz NOT NULL,
    upto_t timestamptz,
    upto_id bigint,
    CONSTRAINT pattern_keys_pkey PRIMARY KEY (stream_id, k)
);

COMMENT ON TABLE cep.pattern_keys IS
'Internal: per stream and key, the row lazy patterns lock (FOR KEY SHARE to write events, FOR '
'UPDATE to match) and the furthest event they matched the key to.';

-- Events the pattern engine could not take in event-time order (an event of the key after it
-- was already processed, e.g. from a transaction that committed behind another''s watermark).
CREATE TABLE cep.pattern_late_events (
    pattern_id integer NOT NULL,
    event_id bigint NOT NULL,
    event_time timestamptz NOT NULL,
    partition_key text,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX pattern_late_events_idx ON cep.pattern_late_events (pattern_id, event_id);

COMMENT ON TABLE cep.pattern_late_events IS
'Events a pattern skipped because its key had already been processed past them; excluded by '
'cep.find_matches too.';

CREATE TABLE cep.matches (
    match_id bigint GENERATED ALWAYS AS IDENTITY,
    pattern text NOT NULL,
    pattern_id integer NOT NULL,
    stream text NOT NULL,
    partition_key text,
    first_time timestamptz NOT NULL,
    last_time timestamptz NOT NULL,
    event_ids bigint[] NOT NULL,
    classifiers text[] NOT NULL,
    last_event_id bigint NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT matches_pkey PRIMARY KEY (match_id)
);

CREATE INDEX matches_pattern_idx ON cep.matches (pattern_id, partition_key, first_time);
CREATE INDEX matches_last_event_idx ON cep.matches (pattern_id, last_event_id);

COMMENT ON TABLE cep.matches IS
'Final matches of patterns and absence detectors: the key, the time span, the events in order '
'and the variable each was bound to (classifiers). Written once, when final.';

-- Append-only counters, one row per call of a pattern's matcher that did something.
CREATE TABLE cep.pattern_log (
    pattern_id integer NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    events bigint NOT NULL DEFAULT 0,
    matches bigint NOT NULL DEFAULT 0,
    drops bigint NOT NULL DEFAULT 0,
    late bigint NOT NULL DEFAULT 0,
    last_match timestamptz
);

CREATE INDEX pattern_log_idx ON cep.pattern_log (pattern_id, logged_at);

COMMENT ON TABLE cep.pattern_log IS
'Append-only pattern counters (events processed, matches, runs dropped at the cap, late '
'events), summed by cep.pattern_stats and compacted by cep.run_maintenance().';

-- Open starts of absence detectors: an event that satisfied the start condition and whose
-- deadline (its time + within) the watermark has not yet passed.
CREATE TABLE cep.absence_pending (
    pattern_id integer NOT NULL,
    k text NOT NULL,
    event_id bigint NOT NULL,
    start_time timestamptz NOT NULL,
    deadline timestamptz NOT NULL,
    CONSTRAINT absence_pending_pkey PRIMARY KEY (pattern_id, event_id)
);

CREATE INDEX absence_pending_deadline_idx ON cep.absence_pending (pattern_id, deadline);

COMMENT ON TABLE cep.absence_pending IS
'Internal: starts of absence detectors waiting for their deadline (or for the expected event).';
