-- Rules API: the triggers of cep.rules (validate, version, recompile), cep.set_risk_policy and
-- cep.evaluate_rules. A rule change rebuilds the stream's ingest function in the changing
-- transaction; other sessions switch to it at their next statement after the commit.

-- The per-key histories a stream's active rules need, built from the stored rows when missing.
CREATE FUNCTION cep._rules_prepare(stream_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
AS $fn$
DECLARE
    s cep.streams;
    v_field name;
    v_locked boolean := false;
BEGIN
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = _rules_prepare.stream_id;
    -- A history no active rule reads stops being maintained: forget it, so that a rule that
    -- needs it again rebuilds it from the table.
    DELETE FROM cep.rule_history_fields AS f
    WHERE f.stream_id = s.stream_id
        AND NOT EXISTS (
            SELECT 1 FROM cep.rules AS r CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
            WHERE r.stream = s.name AND r.active AND n.kind = 'zscore' AND n.field = f.field
        );
    DELETE FROM cep.rule_history AS h
    WHERE h.stream_id = s.stream_id
        AND NOT EXISTS (SELECT 1 FROM cep.rule_history_fields AS f
            WHERE f.stream_id = h.stream_id AND f.field = h.field);
    FOR v_field IN
        SELECT DISTINCT n.field
        FROM cep.rules AS r
        CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
        WHERE r.stream = s.name AND r.active AND n.kind = 'zscore'
            AND NOT EXISTS (
                SELECT 1 FROM cep.rule_history_fields AS f
                WHERE f.stream_id = s.stream_id AND f.field = n.field
            )
        ORDER BY n.field
    LOOP
        IF NOT v_locked THEN
            -- No insert may slip between the backfill and the new ingest code.
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);
            v_locked := true;
        END IF;
        -- A stream without a key keeps one history under the empty key.
        EXECUTE format(
            'INSERT INTO cep.rule_history (stream_id, field, k, n, s, ss) '
            'SELECT %s, %L, %s, count(t.%I), coalesce(sum(t.%I%s), 0), '
            'coalesce(sum(t.%I%s * t.%I%s), 0) FROM %s AS t GROUP BY 3 '
            'ON CONFLICT (stream_id, field, k) DO UPDATE SET n = EXCLUDED.n, '
            's = EXCLUDED.s, ss = EXCLUDED.ss',
            s.stream_id, v_field,
            CASE WHEN s.key_column IS NULL THEN quote_literal('')
                ELSE format('t.%I::text', s.key_column) END,
            v_field,
            v_field, CASE WHEN cep._rule_num(s.source, v_field, '') LIKE '%text%'
                THEN '::text::numeric' ELSE '::numeric' END,
            v_field, CASE WHEN cep._rule_num(s.source, v_field, '') LIKE '%text%'
                THEN '::text::numeric' ELSE '::numeric' END,
            v_field, CASE WHEN cep._rule_num(s.source, v_field, '') LIKE '%text%'
                THEN '::text::numeric' ELSE '::numeric' END,
            s.source);
        INSERT INTO cep.rule_history_fields (stream_id, field) VALUES (s.stream_id, v_field);
    END LOOP;

    -- Bucket series of trailing metrics: forgotten when no active rule reads them, made
    -- (empty: keys get buckets when they become dense) when a rule needs one that is missing.
    DELETE FROM cep.rule_bucket_series AS f
    WHERE f.stream_id = s.stream_id
        AND NOT EXISTS (
            SELECT 1 FROM cep.rules AS r CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
            WHERE r.stream = s.name AND r.active AND n.kind = 'metric'
                AND coalesce(n.field, '') = f.field
                AND cep._rule_bucket_width(n.fn, n.secs) = f.width
        );
    DELETE FROM cep.rule_bucket_keys AS k
    WHERE NOT EXISTS (SELECT 1 FROM cep.rule_bucket_series AS f WHERE f.series_id = k.series_id);
    DELETE FROM cep.rule_buckets AS b
    WHERE NOT EXISTS (SELECT 1 FROM cep.rule_bucket_series AS f WHERE f.series_id = b.series_id);
    INSERT INTO cep.rule_bucket_series (stream_id, field, width)
    SELECT DISTINCT s.stream_id, coalesce(n.field, '')::name, cep._rule_bucket_width(n.fn, n.secs)
    FROM cep.rules AS r
    CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
    WHERE r.stream = s.name AND r.active AND n.kind = 'metric'
        AND cep._rule_bucket_width(n.fn, n.secs) IS NOT NULL
    ON CONFLICT ON CONSTRAINT rule_bucket_series_key DO NOTHING;

    -- Trailing metrics read the key's recent rows: make sure an index on (key, time) exists.
    IF s.key_column IS NOT NULL AND EXISTS (
        SELECT 1 FROM cep.rules AS r CROSS JOIN LATERAL cep._rule_needs(r.condition) AS n
        WHERE r.stream = s.name AND r.active AND n.kind IN ('metric', 'changed')
    ) AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = s.source AND i.indnkeyatts >= 2 AND i.indpred IS NULL
            AND i.indexprs IS NULL
            AND i.indkey[0] = (SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = s.source AND a.attname = s.key_column)
            AND i.indkey[1] = (SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = s.source AND a.attname = s.time_column)
    ) THEN
        RAISE NOTICE 'pg_cep: creating an index on %(%, %) for the trailing metrics of rules',
            s.source, s.key_column, s.time_column;
        EXECUTE format('CREATE INDEX ON %s (%I, %I)', s.source, s.key_column, s.time_column);
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._rules_prepare(integer) IS
'Internal: build what a stream''s active rules read (per-key histories from the stored rows, '
'bucket series of trailing metrics, an index on (key, time)) before their code is compiled.';

-- Recompile the rules of the named streams: new rule set, rebuilt ingest function.
CREATE FUNCTION cep._rules_changed(streams text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_old cep.rule_sets;
    v_ids bigint [];
    v_versions integer [];
BEGIN
    FOR s IN
        SELECT x.* FROM cep.streams AS x WHERE x.name = ANY (streams) ORDER BY x.stream_id
        FOR UPDATE
    LOOP
        SELECT coalesce(array_agg(r.rule_id ORDER BY r.rule_id), '{}'),
            coalesce(array_agg(r.version ORDER BY r.rule_id), '{}')
        INTO v_ids, v_versions
        FROM cep.rules AS r
        WHERE r.stream = s.name AND r.active;
        v_old := cep._rule_set(s.stream_id);
        IF v_old.rule_set_id IS NULL AND cardinality(v_ids) = 0 AND NOT EXISTS (
            SELECT 1 FROM cep.risk_policies AS p WHERE p.stream_id = s.stream_id AND p.log_all
        ) THEN
            CONTINUE;
        END IF;
        -- The compiled rule set already is these versions (e.g. pg_restore loading cep.rules
        -- after cep.rule_sets, with the restored ingest function): nothing to do.
        CONTINUE WHEN v_old.rule_set_id IS NOT NULL AND v_old.rule_ids = v_ids
            AND v_old.versions = v_versions;
        PERFORM cep._rules_prepare(s.stream_id);
        INSERT INTO cep.rule_sets (stream_id, rule_ids, versions)
        VALUES (s.stream_id, v_ids, v_versions);
        PERFORM cep._regenerate_stream(s.stream_id);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep._rules_changed(text[]) IS
'Internal: after a change of rules or policy, register the streams'' new rule sets and rebuild '
'their ingest functions (stream rows locked, so concurrent changes queue).';

CREATE FUNCTION cep._rules_before()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.name = NEW.stream;
    IF s.stream_id IS NULL THEN
        RAISE EXCEPTION 'pg_cep: rule %: stream % does not exist', quote_ident(NEW.name),
            coalesce(quote_literal(NEW.stream), 'NULL')
            USING ERRCODE = '42704', HINT = 'Register the table with cep.create_stream first.';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'pg_cep: rule %: only the owner of stream % (%) may change its rules',
            quote_ident(NEW.name), s.name, s.owner
            USING ERRCODE = '42501',
            DETAIL = 'Rules are compiled into the stream''s ingest code, which runs as its owner.';
    END IF;
    IF NEW.risk_score IS NULL OR NOT (NEW.risk_score >= 0 AND NEW.risk_score <= 1) THEN
        RAISE EXCEPTION 'pg_cep: rule %: risk_score must be between 0 and 1, not %',
            quote_ident(NEW.name), coalesce(NEW.risk_score::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- Validates the whole condition; the error names the JSON path of the problem.
    PERFORM cep._rule_compile(s.stream_id, NEW.condition, NEW.name);
    IF TG_OP = 'INSERT' THEN
        NEW.version := coalesce(NEW.version, 1);
        NEW.created_at := coalesce(NEW.created_at, now());
        NEW.updated_at := coalesce(NEW.updated_at, NEW.created_at);
    ELSE
        IF NEW.rule_id <> OLD.rule_id THEN
            RAISE EXCEPTION 'pg_cep: rule %: rule_id cannot change', quote_ident(OLD.name)
                USING ERRCODE = '0A000';
        END IF;
        IF (NEW.stream, NEW.name, NEW.kind, NEW.condition, NEW.risk_score, NEW.active, NEW.mode)
            IS DISTINCT FROM
            (OLD.stream, OLD.name, OLD.kind, OLD.condition, OLD.risk_score, OLD.active, OLD.mode)
        THEN
            NEW.version := OLD.version + 1;
            NEW.updated_at := now();
        ELSE
            NEW.version := OLD.version;
        END IF;
        NEW.created_at := OLD.created_at;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION cep._rules_before() IS
'Internal: BEFORE INSERT/UPDATE trigger of cep.rules: checks the stream, the caller''s right to '
'change its rules, the score and the condition; numbers versions.';

CREATE FUNCTION cep._rules_after()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_streams text [];
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO cep.rule_versions (
            rule_id, version, stream, name, kind, condition, risk_score, active, mode, valid_from
        )
        SELECT n.rule_id, n.version, n.stream, n.name, n.kind, n.condition, n.risk_score,
            n.active, n.mode, n.updated_at
        FROM cep_new AS n
        ORDER BY n.rule_id
        ON CONFLICT (rule_id, version) DO NOTHING;
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT n.stream) INTO v_streams FROM cep_new AS n;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT x.stream) INTO v_streams
        FROM (SELECT n.stream FROM cep_new AS n UNION SELECT o.stream FROM cep_old AS o) AS x;
    ELSE
        SELECT array_agg(DISTINCT o.stream) INTO v_streams FROM cep_old AS o;
    END IF;
    IF v_streams IS NOT NULL THEN
        PERFORM cep._rules_changed(v_streams);
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION cep._rules_after() IS
'Internal: AFTER statement triggers of cep.rules: archive new versions in cep.rule_versions and '
'recompile the streams whose rules changed.';

CREATE TRIGGER rules_validate
BEFORE INSERT OR UPDATE ON cep.rules
FOR EACH ROW EXECUTE FUNCTION cep._rules_before();

CREATE TRIGGER rules_changed_insert
AFTER INSERT ON cep.rules
REFERENCING NEW TABLE AS cep_new
FOR EACH STATEMENT EXECUTE FUNCTION cep._rules_after();

CREATE TRIGGER rules_changed_update
AFTER UPDATE ON cep.rules
REFERENCING OLD TABLE AS cep_old NEW TABLE AS cep_new
FOR EACH STATEMENT EXECUTE FUNCTION cep._rules_after();

CREATE TRIGGER rules_changed_delete
AFTER DELETE ON cep.rules
REFERENCING OLD TABLE AS cep_old
FOR EACH STATEMENT EXECUTE FUNCTION cep._rules_after();

CREATE FUNCTION cep.set_risk_policy(
    stream text,
    combine text DEFAULT 'sum',
    medium float8 DEFAULT 0.4,
    high float8 DEFAULT 0.7,
    block float8 DEFAULT 0.9,
    block_action jsonb DEFAULT NULL,
    alert_level text DEFAULT 'high',
    log_all boolean DEFAULT FALSE
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
    v_set record;
    v_typ text;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.name = set_risk_policy.stream;
    IF s.stream_id IS NULL THEN
        RAISE EXCEPTION 'stream % does not exist', coalesce(quote_literal(stream), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may set its risk policy', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    IF combine IS NULL OR combine NOT IN ('sum', 'max', 'noisy_or') THEN
        RAISE EXCEPTION 'combine must be sum, max or noisy_or, not %',
            coalesce(quote_literal(combine), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF medium IS NULL OR high IS NULL OR block IS NULL
        OR NOT (medium >= 0 AND medium <= high AND high <= block AND block < 'Infinity') THEN
        RAISE EXCEPTION 'thresholds must satisfy 0 <= medium <= high <= block < infinity '
            '(medium %, high %, block %)', medium, high, block USING ERRCODE = '22023';
    END IF;
    IF alert_level IS NULL OR alert_level NOT IN ('low', 'medium', 'high', 'none') THEN
        RAISE EXCEPTION 'alert_level must be low, medium, high or none, not %',
            coalesce(quote_literal(alert_level), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF log_all IS NULL THEN
        RAISE EXCEPTION 'log_all must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF block_action IS NOT NULL THEN
        IF jsonb_typeof(block_action) <> 'object'
            OR (SELECT array_agg(k) FROM jsonb_object_keys(block_action) AS k) <> ARRAY['set']
            OR jsonb_typeof(block_action -> 'set') <> 'object'
            OR block_action -> 'set' = '{}' THEN
            RAISE EXCEPTION 'block_action must be {"set": {"column": value, ...}}, not %',
                block_action USING ERRCODE = '22023';
        END IF;
        FOR v_set IN SELECT * FROM jsonb_each(block_action -> 'set') LOOP
            SELECT format_type(a.atttypid, a.atttypmod) INTO v_typ
            FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = s.source AND a.attname = v_set.key AND a.attnum > 0
                AND NOT a.attisdropped AND a.attgenerated = '';
            IF v_typ IS NULL THEN
                RAISE EXCEPTION 'block_action: column % does not exist in %', quote_ident(v_set.key),
                    s.source USING ERRCODE = '42703';
            END IF;
            IF v_set.key IN (s.time_column, s.key_column, s.id_column) THEN
                RAISE EXCEPTION 'block_action: column % is the stream''s time, key or id column',
                    quote_ident(v_set.key) USING ERRCODE = '22023';
            END IF;
            IF jsonb_typeof(v_set.value) IN ('object', 'array') THEN
                RAISE EXCEPTION 'block_action: the value of % must be a JSON scalar', v_set.key
                    USING ERRCODE = '22023';
            END IF;
            IF jsonb_typeof(v_set.value) <> 'null' THEN
                BEGIN
                    EXECUTE format('SELECT (pg_catalog.jsonb_populate_record(NULL::%s, $1)).%I',
                        s.source, v_set.key)
                    USING jsonb_build_object(v_set.key, v_set.value);
                EXCEPTION WHEN data_exception OR syntax_error_or_access_rule_violation THEN
                    RAISE EXCEPTION 'block_action: % is not a valid % for column %',
                        v_set.value, v_typ, quote_ident(v_set.key) USING ERRCODE = '42804';
                END;
            END IF;
        END LOOP;
    END IF;
    INSERT INTO cep.risk_policies AS p (
        stream_id, combine, medium, high, block, block_action, alert_level, log_all
    )
    VALUES (s.stream_id, combine, medium, high, block, block_action, alert_level, log_all)
    ON CONFLICT (stream_id) DO UPDATE
    SET combine = EXCLUDED.combine, medium = EXCLUDED.medium, high = EXCLUDED.high,
        block = EXCLUDED.block, block_action = EXCLUDED.block_action,
        alert_level = EXCLUDED.alert_level, log_all = EXCLUDED.log_all, updated_at = now();
    PERFORM 1 FROM cep.streams AS x WHERE x.stream_id = s.stream_id FOR UPDATE;
    -- a first policy with log_all needs a (possibly empty) rule set to compile
    IF (cep._rule_set(s.stream_id)).rule_set_id IS NULL THEN
        PERFORM cep._rules_changed(ARRAY[s.name]);
    END IF;
    PERFORM cep._regenerate_stream(s.stream_id);
END
$fn$;

COMMENT ON FUNCTION cep.set_risk_policy(text, text, float8, float8, float8, jsonb, text, boolean) IS
'How a stream''s fired rules combine (sum, max, noisy_or), the medium/high/block thresholds, '
'the block_action applied to the event row ({"set": {"status": "blocked"}}), the lowest level '
'that raises an alert (or none) and whether every event is logged in cep.risk_assessments.';

CREATE FUNCTION cep.evaluate_rules(stream text, event jsonb)
RETURNS TABLE (rule_id bigint, rule_name text, risk_score float8, triggered boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET extra_float_digits = 1
AS $fn$
DECLARE
    s cep.streams;
    v_set integer;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.name = evaluate_rules.stream;
    IF s.stream_id IS NULL THEN
        RAISE EXCEPTION 'stream % does not exist', coalesce(quote_literal(stream), 'NULL')
            USING ERRCODE = '42704';
    END IF;
    IF event IS NULL OR jsonb_typeof(event) <> 'object' THEN
        RAISE EXCEPTION 'event must be a JSON object of the stream''s columns'
            USING ERRCODE = '22023';
    END IF;
    IF s.key_column IS NOT NULL AND coalesce(event ->> s.key_column, '') = '' THEN
        RAISE EXCEPTION 'event must include the key column %', quote_ident(s.key_column)
            USING ERRCODE = '22023';
    END IF;
    v_set := (cep._rule_set(s.stream_id)).rule_set_id;
    IF v_set IS NULL THEN
        RETURN;
    END IF;
    -- The event as a row of the table; a missing time means now(), a missing id one that no
    -- stored row has. Nothing is written: the query only reads.
    FOR rule_id, rule_name, risk_score, triggered IN EXECUTE cep._rule_assess_sql(v_set, format(
        '(SELECT (pg_catalog.jsonb_populate_record(NULL::%1$s, $1 || pg_catalog.jsonb_build_object('
        '%2$L, coalesce($1 -> %2$L, pg_catalog.to_jsonb(pg_catalog.now())), '
        '%3$L, coalesce($1 -> %3$L, ''-1''::jsonb)))).*) AS n',
        s.source, s.time_column, s.id_column))
        || format(
            ' SELECT u.r, v.name, v.risk_score, u.p = ANY (f.pos) '
            'FROM fired AS f, cep.rule_sets AS rs, '
            'unnest(rs.rule_ids, rs.versions) WITH ORDINALITY AS u (r, ver, p) '
            'JOIN cep.rule_versions AS v ON v.rule_id = u.r AND v.version = u.ver '
            'WHERE rs.rule_set_id = %s ORDER BY u.p', v_set)
    USING event LOOP
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep.evaluate_rules(text, jsonb) IS
'Ad hoc evaluation of a stream''s active rules (enforced and shadow) against one event given '
'as JSON, with trailing metrics over the stored rows as if the event were inserted now; '
'writes nothing.';

CREATE VIEW cep.rule_sql AS
SELECT
    r.rule_id,
    r.name AS rule_name,
    r.stream,
    r.version,
    r.active,
    r.mode,
    cep._rule_compile(s.stream_id, r.condition, r.name) AS compiled
FROM cep.rules AS r
INNER JOIN cep.streams AS s ON r.stream = s.name;

COMMENT ON VIEW cep.rule_sql IS
'The SQL each rule''s condition compiles to (a boolean expression over the assessed event x: '
'x."c:<column>" for its columns, x.t for its time, x.m_... for trailing metrics), exactly as '
'embedded in the stream''s generated ingest function.';
