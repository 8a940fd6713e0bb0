-- Privileges and dump behaviour of the installed objects.
-- Invariant: internal functions (named _*) and SECURITY DEFINER functions are not executable
-- by PUBLIC; catalog and state
-- tables are marked for pg_dump so their rows survive dump and restore. Roles are never
-- created here: README.md gives the grant recipe for admin, writer and reader roles.

DO $privileges$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace OPERATOR(pg_catalog.=) 'cep'::regnamespace
            AND (p.proname OPERATOR(pg_catalog.~~) '\_%' OR p.prosecdef)
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$privileges$;

-- The migration runner applies this script outside CREATE EXTENSION, where
-- pg_extension_config_dump is not allowed; it sets pgcep.script_install to say so.
DO $dump$
BEGIN
    IF pg_catalog.current_setting('pgcep.script_install', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_extension_config_dump('cep.streams', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.streams_stream_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.stream_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.late_events', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.settings', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.alerts', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.alerts_alert_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.consumers', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.consumers_consumer_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.consumer_pending', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.consumer_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.windows', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.windows_window_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.partitioned_streams', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rules', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rules_rule_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_versions', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_sets', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_sets_rule_set_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.risk_policies', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.risk_assessments', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.risk_assessments_assessment_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_keys', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_history', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_history_fields', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.patterns', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.patterns_pattern_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.pattern_state', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.pattern_keys', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.pattern_late_events', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.matches', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.matches_match_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.pattern_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.absence_pending', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommenders', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommenders_recommender_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_users', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_items', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_items_item_no_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_weights', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_pairs', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.recommender_log', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.stream_queue', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_bucket_series', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_bucket_series_series_id_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_bucket_keys', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.rule_buckets', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.stream_queue_seq_seq', '');
        PERFORM pg_catalog.pg_extension_config_dump('cep.imported_alerts', '');
    END IF;
END
$dump$;
