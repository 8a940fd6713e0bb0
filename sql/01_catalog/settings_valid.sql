-- Validation of global settings: the names pg_cep knows and the values each accepts. The CHECK
-- of cep.settings calls it, so that a new setting needs only a new version of this function.
CREATE FUNCTION cep._valid_setting(setting text, value text)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE setting
        WHEN 'notify' THEN value IN ('on', 'off')
        WHEN 'notify_max_queue_usage' THEN value ~ '^(0(\.[0-9]+)?|1(\.0+)?)$'
        WHEN 'stats_retention' THEN value ~ '^[1-9][0-9]* (seconds|minutes|hours|days)$'
        WHEN 'late_event_retention' THEN value ~ '^[1-9][0-9]* (seconds|minutes|hours|days)$'
        WHEN 'alert_retention' THEN value ~ '^[1-9][0-9]* (seconds|minutes|hours|days)$'
        WHEN 'assessment_retention' THEN value ~ '^[1-9][0-9]* (seconds|minutes|hours|days)$'
        WHEN 'dashboard_sketch_positions' THEN value ~ '^[1-9][0-9]{0,17}$'
        ELSE false
    END
$fn$;

COMMENT ON FUNCTION cep._valid_setting(text, text) IS
'Internal: whether VALUE is valid for SETTING: notify on|off; notify_max_queue_usage 0..1; '
'stats_retention, late_event_retention, alert_retention, assessment_retention as '
'''N seconds|minutes|hours|days''; dashboard_sketch_positions a positive integer.';
