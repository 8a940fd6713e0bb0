-- 0.2.0: streams whose watermark cep.run_maintenance() moves with the clock.
ALTER TABLE cep.streams ADD COLUMN wall_clock boolean NOT NULL DEFAULT FALSE;

-- 0.2.0: asynchronous streams (processed after commit by cep.process_stream).
ALTER TABLE cep.streams ADD COLUMN mode text NOT NULL DEFAULT 'sync';
ALTER TABLE cep.streams ADD CONSTRAINT streams_mode_check CHECK (mode IN ('sync', 'async'));

-- 0.2.0: replica streams (rows arriving by logical replication, see cep.attach_replica_stream).
ALTER TABLE cep.streams ADD COLUMN replica_batch text;
ALTER TABLE cep.streams ADD CONSTRAINT streams_replica_check CHECK (
    replica_batch IS NULL OR (mode = 'async' AND replica_batch IN ('transaction', 'merged'))
);

-- create_stream gained the mode argument; the replaced 10_streams/api.sql creates the new one.
DROP FUNCTION cep.create_stream(text, regclass, name, name, name, interval, interval, boolean, text);

-- cep._regenerate_stream gained a parameter (healing, with a default): the one-argument
-- function of 0.1.0 goes, so that calls resolve to the new one.
DROP FUNCTION cep._regenerate_stream(integer);

-- 0.2.0: compacted ingest-log rows keep their key sketch as a bitmap.
ALTER TABLE cep.stream_log ADD COLUMN key_bits bit(4096);
COMMENT ON TABLE cep.stream_log IS
'Append-only ingest log: one row per ingested statement with its counts, event-time range, '
'watermark candidate, ingest time and a key sketch (the distinct values of '
'hashtext(key) & 4095 among its on-time events); compacted to one row per minute by '
'cep.run_maintenance(), whose rows keep the sketch as a bitmap (key_bits). The watermark of a '
'stream is max(watermark) over its rows.';

-- 0.2.0: the stream catalog is analyzed by autovacuum after any change (see 01_catalog).
ALTER TABLE cep.streams SET (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);
