-- 0.2.0: streams whose watermark cep.run_maintenance() moves with the clock.
ALTER TABLE cep.streams ADD COLUMN wall_clock boolean NOT NULL DEFAULT FALSE;

-- 0.2.0: asynchronous streams (processed after commit by cep.process_stream).
ALTER TABLE cep.streams ADD COLUMN mode text NOT NULL DEFAULT 'sync';
ALTER TABLE cep.streams ADD CONSTRAINT streams_mode_check CHECK (mode IN ('sync', 'async'));

-- create_stream gained the mode argument; the replaced 10_streams/api.sql creates the new one.
DROP FUNCTION cep.create_stream(text, regclass, name, name, name, interval, interval, boolean, text);
