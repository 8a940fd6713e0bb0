-- The public API surface of pg_cep: names pinned, every object documented, internals private.
BEGIN;
SELECT plan(12);

SELECT has_schema('cep');
-- Installed by CREATE EXTENSION or by the pgcep runner's script path (no pg_extension row).
SELECT ok(
    EXISTS (
        SELECT 1 FROM pg_catalog.pg_extension
        WHERE extname = 'pg_cep'
    )
    OR pg_catalog.to_regclass('pgcep.migrations') IS NOT NULL,
    'pg_cep is installed'
);

SELECT functions_are(
    'cep',
    ARRAY[
        'create_stream', 'drop_stream', 'advance_watermark', 'run_maintenance', 'timeline',
        'create_consumer', 'drop_consumer', 'poll_alerts', 'ack_alerts',
        'create_window', 'drop_window', 'partition_stream', 'metrics',
        'create_recommender', 'drop_recommender', 'recommend', 'similar_items',
        '_stream_id', '_watermark', '_setting', '_valid_setting', '_ring_doorbell',
        '_raise_alerts', '_consumer_id', '_time_expr', '_parse_aggregates', '_window_ddl',
        '_window_section', '_drop_window_objects', '_window_stats', '_window_compact_sql', '_window_stats_sql', '_window_pane_columns', '_stream_horizon',
        '_refuse_default_partition', '_premake_partitions', '_retire_partitions', '_prom_label',
        '_compile_ingest', '_feature_sections', '_tie_to_extension', '_with_guard', '_regenerate_stream', '_stream_renamed', '_sketch_bits',
        'set_risk_policy', 'evaluate_rules',
        '_rule_fail', '_rule_field', '_rule_constant', '_rule_window', '_rule_col',
        '_rule_check_keys', '_rule_op', '_rule_compile', '_rule_needs', '_rule_set',
        '_rule_assess_sql', '_rule_section', '_product_step', '_product', '_rules_prepare',
        '_rules_changed', '_rules_before', '_rules_after', '_rule_horizon', '_fold_rule_log', '_rule_num',
        'create_pattern', 'create_absence', 'drop_pattern', 'find_matches', 'set_wall_clock',
        '_pat_fail', '_pat_tokens', '_pat_alt', '_pat_seq', '_pat_nullable', '_pat_emit',
        '_pat_closure', '_pat_compile', '_pat_define_sql', '_pat_row_sql', '_pat_check_define',
        '_pattern_function_sql', '_pattern_relevance_sql', '_pattern_resolve_sql', '_pattern_finish_sql',
        '_pattern_prepare_stream', '_pattern_install', '_patterns_advance', '_absence_follow_sql',
        '_absence_rows_sql', '_pattern_section', '_pattern_check_args', '_drop_pattern_objects',
        '_pattern_final_vars', '_pattern_final_sql', '_pattern_lock_keys', '_pattern_eager_begin_sql',
        '_pattern_eager_save_sql', '_pattern_lazy_begin_sql', '_pattern_lazy_save_sql',
        '_pattern_report_sql',
        '_stream_key_sql', '_stream_time_sql', '_stream_raw_time_sql',
        '_recommender_id', '_recommender_weight_expr', '_recommender_section',
        '_drop_recommender_state', '_expire_recommender',
        'process_stream', 'set_stream_mode', '_process_queue', '_unprocessed', '_compile_checks',
        '_batch_sql', '_reject_sql', '_compile_enqueue', '_queued_rows_sql', '_bind_rows', '_processed_sql',
        '_rule_bucket_width', '_rule_bucket_value', '_rule_bucket_sql', '_rule_set_series',
        '_rule_window_needs', '_rule_add_sql', '_rule_hot_sql',
        'create_slice_publications', 'attach_replica_stream', 'window_partials',
        'merge_window_partials', 'import_alerts', '_slice_hash_function', '_apply_queued'
    ],
    'cep has exactly the functions of the API contract and its internals'
);

SELECT views_are(
    'cep',
    ARRAY[
        'stream_stats', 'dashboard', 'consumer_stats', 'window_stats', 'rule_stats', 'rule_sql',
        'pattern_stats', 'user_recommendations', 'recommender_stats'
    ]
);

SELECT tables_are(
    'cep',
    ARRAY[
        'streams', 'stream_log', 'late_events', 'settings', 'alerts', 'consumers',
        'consumer_pending', 'consumer_log', 'windows', 'partitioned_streams', 'rules',
        'rule_versions', 'rule_sets', 'risk_policies', 'risk_assessments', 'rule_keys',
        'rule_history', 'rule_history_fields', 'rule_log', 'patterns', 'pattern_state', 'pattern_keys',
        'pattern_late_events', 'matches', 'pattern_log', 'absence_pending',
        'recommenders', 'recommender_users', 'recommender_items', 'recommender_weights',
        'recommender_pairs', 'recommender_log', 'stream_queue', 'imported_alerts', 'rule_bucket_series', 'rule_bucket_keys',
        'rule_buckets'
    ]
);

SELECT has_type('cep', 'alert_draft', 'alert_draft type exists');

SELECT columns_are(
    'cep', 'alerts',
    ARRAY[
        'alert_id', 'source_kind', 'source_name', 'stream', 'partition_key', 'event_id',
        'severity', 'score', 'message', 'details', 'created_at', 'txid'
    ]
);

SELECT columns_are(
    'cep', 'stream_stats',
    ARRAY[
        'stream', 'events_total', 'events_last_minute', 'events_per_second', 'last_event_time',
        'watermark', 'lag', 'late_events', 'batches_total', 'ingest_micros_per_event',
        'ingest_micros_per_batch', 'last_ingest_at', 'allowed_lateness', 'ingest_micros_p50',
        'ingest_micros_p99', 'ingest_micros_per_event_p50', 'ingest_micros_per_event_p99',
        'mode', 'backlog_statements', 'backlog_events', 'processing_lag'
    ]
);

SELECT columns_are(
    'cep', 'dashboard',
    ARRAY[
        'streams', 'events_last_hour', 'events_per_second', 'avg_ingest_latency_ms',
        'active_keys', 'alerts_last_hour', 'notify_queue_usage'
    ]
);

SELECT is_empty(
    $$
    SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'cep'::regnamespace
        AND pg_catalog.obj_description(p.oid, 'pg_proc') IS NULL
    UNION ALL
    SELECT c.oid::regclass::text FROM pg_catalog.pg_class AS c
    WHERE c.relnamespace = 'cep'::regnamespace AND c.relkind IN ('r', 'v', 'p', 'm')
        AND pg_catalog.obj_description(c.oid, 'pg_class') IS NULL
    UNION ALL
    SELECT t.oid::regtype::text FROM pg_catalog.pg_type AS t
    JOIN pg_catalog.pg_class AS c ON c.oid = t.typrelid AND c.relkind = 'c'
    WHERE t.typnamespace = 'cep'::regnamespace
        AND pg_catalog.obj_description(t.oid, 'pg_type') IS NULL
    $$,
    'every function, table, view and type in cep has a COMMENT'
);

SELECT is_empty(
    $$
    SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'cep'::regnamespace AND p.proname LIKE '\_%'
        AND (p.proacl IS NULL OR EXISTS (
            SELECT 1 FROM pg_catalog.aclexplode(p.proacl) AS a WHERE a.grantee = 0
        ))
    $$,
    'no internal function is executable by PUBLIC'
);

SELECT is_empty(
    $$
    SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
    WHERE p.pronamespace = 'cep'::regnamespace
        -- aggregates take no SET clause; their support functions are checked instead
        AND p.prokind <> 'a'
        AND (p.proconfig IS NULL
            OR NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig))
    $$,
    'every function pins search_path = pg_catalog, pg_temp'
);

SELECT * FROM finish();
ROLLBACK;
