-- 0.2.0: streams whose watermark cep.run_maintenance() moves with the clock.
ALTER TABLE cep.streams ADD COLUMN wall_clock boolean NOT NULL DEFAULT FALSE;
