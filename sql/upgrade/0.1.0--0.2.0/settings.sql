-- 0.2.0: cep.settings is validated by cep._valid_setting (new setting alert_retention).
ALTER TABLE cep.settings
DROP CONSTRAINT settings_value_check,
ADD CONSTRAINT settings_value_check CHECK (cep._valid_setting(name, value));

COMMENT ON TABLE cep.settings IS
'Global pg_cep settings as name/value rows; a missing row means the default. See '
'cep._valid_setting for the names and their values.';
