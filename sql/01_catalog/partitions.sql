-- Time partitioning settings of streams whose tables are range-partitioned on their time
-- column (cep.partition_stream); cep.run_maintenance() creates and retires partitions from them.

CREATE TABLE cep.partitioned_streams (
    stream_id integer NOT NULL,
    part_interval interval NOT NULL,
    premake integer NOT NULL,
    retention interval,
    retention_action text NOT NULL DEFAULT 'drop',
    default_partition regclass,
    CONSTRAINT partitioned_streams_pkey PRIMARY KEY (stream_id),
    CONSTRAINT partitioned_streams_interval_check CHECK (part_interval > '0 seconds'),
    CONSTRAINT partitioned_streams_premake_check CHECK (premake BETWEEN 0 AND 1000),
    CONSTRAINT partitioned_streams_retention_check CHECK (
        retention IS NULL OR retention >= part_interval
    ),
    CONSTRAINT partitioned_streams_action_check CHECK (retention_action IN ('drop', 'detach'))
);

COMMENT ON TABLE cep.partitioned_streams IS
'Partitioning of streams (cep.partition_stream): partition interval, partitions made ahead, '
'retention and whether retired partitions are dropped or detached.';
