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
