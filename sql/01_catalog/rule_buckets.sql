-- Time buckets of the trailing metrics of rules, for the keys that need them. A bucket series
-- (stream, field, width) keeps, per dense key and bucket, the count, exact sum, minimum and
-- maximum of the field over the key's stored events of the bucket (field '' counts rows). A
-- metric over (t - window, t] of a dense key reads raw rows only at the window's two ends (the
-- partial first bucket and the bucket of t) and the buckets in between; a key becomes dense
-- (gets a row in cep.rule_bucket_keys) when one of its windows holds 64 stored events, and its
-- buckets exist from that key's floor on. Sparse keys read their few raw rows.

CREATE TABLE cep.rule_bucket_series (
    series_id integer GENERATED ALWAYS AS IDENTITY,
    stream_id integer NOT NULL,
    field name NOT NULL,
    width interval NOT NULL,
    floor timestamptz NOT NULL DEFAULT '-infinity',
    built_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rule_bucket_series_pkey PRIMARY KEY (series_id),
    CONSTRAINT rule_bucket_series_key UNIQUE (stream_id, field, width),
    CONSTRAINT rule_bucket_series_width_check CHECK (width > '0 seconds')
);

COMMENT ON TABLE cep.rule_bucket_series IS
'Internal: the (stream, field, width) bucket series that trailing metric rules read; buckets '
'before floor have been purged (metrics read raw rows there instead).';

CREATE TABLE cep.rule_bucket_keys (
    series_id integer NOT NULL,
    k text NOT NULL,
    floor timestamptz NOT NULL,
    CONSTRAINT rule_bucket_keys_pkey PRIMARY KEY (series_id, k)
);

COMMENT ON TABLE cep.rule_bucket_keys IS
'Internal: the dense keys of a bucket series; their buckets hold every stored event from floor '
'on.';

CREATE TABLE cep.rule_buckets (
    series_id integer NOT NULL,
    k text NOT NULL,
    b timestamptz NOT NULL,
    n bigint NOT NULL,
    s numeric,
    mn numeric,
    mx numeric,
    CONSTRAINT rule_buckets_pkey PRIMARY KEY (series_id, k, b)
);

COMMENT ON TABLE cep.rule_buckets IS
'Internal: per bucket of a series and dense key, the count of non-NULL values (of rows for '
'field ''''), their exact sum, minimum and maximum.';
