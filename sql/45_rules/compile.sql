-- The rule condition language: validation and compilation to SQL.
-- Invariant: a condition reaches SQL only through cep._rule_compile, which walks the JSON
-- through an allow-list of node shapes, checks every field against the stream's table and
-- every constant against the field's type, and emits identifiers with %I and constants with
-- %L. Strings in a condition are therefore only ever literals. Errors name the rule and the
-- JSON path of the problem (SQLSTATE 22023, 42703 for unknown fields, 42804 for types).
-- The compiled expression reads one assessed event as row alias x: x.t (event time, UTC),
-- x."c:<column>" (the event's columns) and one column per trailing metric (cep._rule_col).

CREATE FUNCTION cep._rule_fail(rule text, path text, message text, errcode text DEFAULT '22023')
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = format('pg_cep: rule %s: %s: %s', coalesce(quote_ident(rule), '(unnamed)'),
            path, message),
        ERRCODE = errcode,
        HINT = 'See the README section "Risk rules" for the condition language.';
END
$fn$;

COMMENT ON FUNCTION cep._rule_fail(text, text, text, text) IS
'Internal: raise a rule validation error naming the rule and the JSON path of the problem.';

-- The type of a field of the stream's table and how rules may use it.
CREATE FUNCTION cep._rule_field(
    source regclass, field jsonb, rule text, path text, OUT col name, OUT typ text,
    OUT kind text
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_base regtype;
    v_cat char;
BEGIN
    IF field IS NULL OR jsonb_typeof(field) <> 'string' THEN
        PERFORM cep._rule_fail(rule, path, 'must be a column name (a JSON string)');
    END IF;
    col := field #>> '{}';
    SELECT (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)::regtype
    INTO v_base
    FROM pg_catalog.pg_attribute AS a
    JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_base IS NULL THEN
        PERFORM cep._rule_fail(rule, path,
            format('column %s does not exist in %s', quote_ident(col), source), '42703');
    END IF;
    SELECT t.typcategory INTO v_cat FROM pg_catalog.pg_type AS t WHERE t.oid = v_base;
    typ := format_type(v_base, NULL);
    kind := CASE
        WHEN v_base IN ('real'::regtype, 'double precision'::regtype) THEN 'float'
        WHEN v_cat = 'N' THEN 'numeric'
        WHEN v_cat = 'S' THEN 'text'
        WHEN v_cat = 'B' THEN 'boolean'
        WHEN v_cat IN ('D', 'T', 'I') OR v_base = 'uuid'::regtype THEN 'typed'
    END;
    IF kind IS NULL THEN
        PERFORM cep._rule_fail(rule, path,
            format('column %s has type %s, which rules cannot compare', quote_ident(col), typ),
            '42804');
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._rule_field(regclass, jsonb, text, text) IS
'Internal: resolve a field of a rule against the stream''s table: its base type and how '
'constants must be written for it (number, string, boolean, or string in the type''s syntax).';

-- A constant for a field, checked against the field's type and returned as SQL text (%L).
CREATE FUNCTION cep._rule_constant(
    value jsonb, typ text, kind text, rule text, path text
)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_json text := CASE kind
        WHEN 'numeric' THEN 'number' WHEN 'float' THEN 'number'
        WHEN 'boolean' THEN 'boolean' ELSE 'string' END;
    v_cast text := CASE kind
        WHEN 'numeric' THEN 'pg_catalog.numeric' WHEN 'float' THEN 'pg_catalog.float8'
        ELSE typ END;
    v_text text;
    v_type regtype := typ::regtype;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) <> v_json THEN
        PERFORM cep._rule_fail(rule, path, format('must be a JSON %s for a column of type %s, not %s',
            v_json, typ, coalesce(jsonb_typeof(value), 'missing')), '42804');
    END IF;
    v_text := value #>> '{}';
    IF kind = 'typed' THEN
        BEGIN
            EXECUTE format('SELECT %L::%s', v_text, v_type);
        EXCEPTION WHEN data_exception OR syntax_error_or_access_rule_violation THEN
            PERFORM cep._rule_fail(rule, path,
                format('%s is not a valid %s', quote_literal(v_text), typ), '42804');
        END;
    END IF;
    IF kind = 'float' AND abs(v_text::numeric) > 1e300 THEN
        PERFORM cep._rule_fail(rule, path, 'is out of range for a double precision column');
    END IF;
    RETURN format('%L::%s', v_text, v_cast);
END
$fn$;

COMMENT ON FUNCTION cep._rule_constant(jsonb, text, text, text, text) IS
'Internal: a rule constant checked against its field''s type, as a SQL literal with a cast.';

-- A window of a metric or change condition: a positive interval of at most 366 days, kept in
-- seconds (a day is 86400 seconds whatever the time zone).
CREATE FUNCTION cep._rule_window(value jsonb, rule text, path text)
RETURNS numeric
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_secs numeric;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) <> 'string' THEN
        PERFORM cep._rule_fail(rule, path, 'must be an interval written as a JSON string, '
            'e.g. "1 hour"');
    END IF;
    BEGIN
        v_secs := extract(epoch FROM (value #>> '{}')::interval);
    EXCEPTION WHEN data_exception OR syntax_error_or_access_rule_violation THEN
        PERFORM cep._rule_fail(rule, path,
            format('%s is not an interval', quote_literal(value #>> '{}')));
    END;
    IF v_secs <= 0 OR v_secs > 366 * 86400 THEN
        PERFORM cep._rule_fail(rule, path,
            format('%s must be a positive interval of at most 366 days', value));
    END IF;
    RETURN v_secs;
END
$fn$;

COMMENT ON FUNCTION cep._rule_window(jsonb, text, text) IS
'Internal: validate a rule window (a positive interval up to 366 days) and return its seconds.';

-- The column name under which the assessment query carries one trailing metric.
CREATE FUNCTION cep._rule_col(kind text, fn text, field name, secs numeric)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT 'm_' || substr(md5(concat_ws('/', kind, fn, field, secs::text)), 1, 20)
$fn$;

COMMENT ON FUNCTION cep._rule_col(text, text, name, numeric) IS
'Internal: the name of the column carrying a trailing metric, change or history in the '
'assessment query.';

CREATE FUNCTION cep._rule_check_keys(node jsonb, allowed text[], rule text, path text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_key text;
BEGIN
    SELECT k INTO v_key FROM jsonb_object_keys(node) AS k WHERE k <> ALL (allowed) ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        PERFORM cep._rule_fail(rule, path || '.' || v_key,
            format('unknown key %s here (allowed: %s)', quote_literal(v_key),
                array_to_string(allowed, ', ')));
    END IF;
END
$fn$;

COMMENT ON FUNCTION cep._rule_check_keys(jsonb, text[], text, text) IS
'Internal: refuse keys of a rule condition node outside its allow-list.';

CREATE FUNCTION cep._rule_op(op jsonb, allowed text[], rule text, path text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF op IS NULL OR jsonb_typeof(op) <> 'string' OR NOT (op #>> '{}') = ANY (allowed) THEN
        PERFORM cep._rule_fail(rule, path, format('unknown operator %s (expected one of %s)',
            coalesce(op::text, 'missing'), array_to_string(allowed, ' ')));
    END IF;
    RETURN CASE op #>> '{}' WHEN '!=' THEN '<>' ELSE op #>> '{}' END;
END
$fn$;

COMMENT ON FUNCTION cep._rule_op(jsonb, text[], text, text) IS
'Internal: validate a comparison operator of a rule and return it in SQL.';

-- Validate a condition node and compile it to a SQL boolean expression over row alias x.
-- NULL comparisons are false (two-valued logic: {"not": c} is true when c is false).
CREATE FUNCTION cep._rule_compile(
    stream_id integer, node jsonb, rule text DEFAULT NULL, path text DEFAULT '$',
    depth integer DEFAULT 0
)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_source regclass;
    v_f record;
    v_op text;
    v_parts text [] := '{}'::text [];
    v_item jsonb;
    v_i integer := 0;
    v_secs numeric;
    v_fn text;
    v_list text;
    v_tod jsonb;
    v_from time;
    v_to time;
    v_tz text;
    v_thr numeric;
    v_min numeric;
    v_col text;
    v_cmp constant text [] := ARRAY['=', '!=', '<', '<=', '>', '>='];
BEGIN
    SELECT s.source INTO v_source FROM cep.streams AS s WHERE s.stream_id = _rule_compile.stream_id;
    IF depth = 0 THEN
        IF node IS NULL OR jsonb_typeof(node) <> 'object' THEN
            PERFORM cep._rule_fail(rule, path, 'a condition must be a JSON object');
        END IF;
        IF octet_length(node::text) > 65536 THEN
            PERFORM cep._rule_fail(rule, path, 'the condition is larger than 64 kB');
        END IF;
        IF (SELECT count(*) FROM jsonb_path_query(node, 'strict $.**') AS q) > 2000 THEN
            PERFORM cep._rule_fail(rule, path, 'the condition has more than 2000 JSON items');
        END IF;
    END IF;
    IF depth > 16 THEN
        PERFORM cep._rule_fail(rule, path, 'conditions nest at most 16 levels deep');
    END IF;
    IF node IS NULL OR jsonb_typeof(node) <> 'object' THEN
        PERFORM cep._rule_fail(rule, path, 'must be a condition (a JSON object)');
    END IF;

    IF node ? 'all' OR node ? 'any' THEN
        v_op := CASE WHEN node ? 'all' THEN 'all' ELSE 'any' END;
        PERFORM cep._rule_check_keys(node, ARRAY[v_op], rule, path);
        IF jsonb_typeof(node -> v_op) <> 'array' OR jsonb_array_length(node -> v_op) = 0
            OR jsonb_array_length(node -> v_op) > 100 THEN
            PERFORM cep._rule_fail(rule, path || '.' || v_op,
                'must be an array of 1 to 100 conditions');
        END IF;
        FOR v_item IN SELECT e FROM jsonb_array_elements(node -> v_op) AS e LOOP
            v_parts := v_parts || cep._rule_compile(stream_id, v_item, rule,
                format('%s.%s[%s]', path, v_op, v_i), depth + 1);
            v_i := v_i + 1;
        END LOOP;
        RETURN '(' || array_to_string(v_parts, CASE v_op WHEN 'all' THEN ' AND ' ELSE ' OR ' END)
            || ')';
    ELSIF node ? 'not' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['not'], rule, path);
        RETURN format('(NOT %s)',
            cep._rule_compile(stream_id, node -> 'not', rule, path || '.not', depth + 1));
    ELSIF node ? 'metric' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['metric', 'field', 'window', 'op', 'value'],
            rule, path);
        IF jsonb_typeof(node -> 'metric') <> 'string' OR NOT (node ->> 'metric') = ANY (
            ARRAY['count', 'sum', 'avg', 'min', 'max', 'count_distinct']) THEN
            PERFORM cep._rule_fail(rule, path || '.metric', format(
                'unknown metric %s (expected count, sum, avg, min, max or count_distinct)',
                node -> 'metric'));
        END IF;
        v_fn := node ->> 'metric';
        IF node ? 'field' THEN
            v_f := cep._rule_field(v_source, node -> 'field', rule, path || '.field');
            IF v_fn IN ('sum', 'avg', 'min', 'max') AND v_f.kind NOT IN ('numeric', 'float') THEN
                PERFORM cep._rule_fail(rule, path || '.field', format(
                    'column %s has type %s; metric %s needs a numeric column',
                    quote_ident(v_f.col), v_f.typ, v_fn), '42804');
            END IF;
        ELSIF v_fn <> 'count' THEN
            PERFORM cep._rule_fail(rule, path || '.field', format('metric %s needs a field', v_fn));
        END IF;
        v_secs := cep._rule_window(node -> 'window', rule, path || '.window');
        v_op := cep._rule_op(node -> 'op', v_cmp, rule, path || '.op');
        IF jsonb_typeof(node -> 'value') IS DISTINCT FROM 'number' THEN
            PERFORM cep._rule_fail(rule, path || '.value', format(
                'must be a JSON number for metric %s, not %s', v_fn,
                coalesce(jsonb_typeof(node -> 'value'), 'missing')), '42804');
        END IF;
        v_col := cep._rule_col('metric', v_fn, (node ->> 'field')::name, v_secs);
        IF v_fn = 'avg' THEN
            -- avg op v as sum op v * count: exact, no rounded division
            RETURN format('coalesce(x.%1$I > 0 AND x.%2$I %3$s %4$L::pg_catalog.numeric * x.%1$I, false)',
                v_col || '_n', v_col || '_s', v_op, node ->> 'value');
        END IF;
        RETURN format('coalesce(x.%I %s %L::pg_catalog.numeric, false)',
            v_col, v_op, node ->> 'value');
    ELSIF node ? 'changed' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['changed', 'window'], rule, path);
        v_f := cep._rule_field(v_source, node -> 'changed', rule, path || '.changed');
        v_secs := cep._rule_window(node -> 'window', rule, path || '.window');
        RETURN format('coalesce(x.%I, false)', cep._rule_col('changed', NULL, v_f.col, v_secs));
    ELSIF node ? 'anomaly' THEN
        PERFORM cep._rule_check_keys(node,
            ARRAY['anomaly', 'field', 'threshold', 'min_samples'], rule, path);
        IF node -> 'anomaly' IS DISTINCT FROM '"zscore"' THEN
            PERFORM cep._rule_fail(rule, path || '.anomaly', format(
                'unknown anomaly test %s (expected "zscore")', node -> 'anomaly'));
        END IF;
        v_f := cep._rule_field(v_source, node -> 'field', rule, path || '.field');
        IF v_f.kind NOT IN ('numeric', 'float') THEN
            PERFORM cep._rule_fail(rule, path || '.field', format(
                'column %s has type %s; a z-score needs a numeric column',
                quote_ident(v_f.col), v_f.typ), '42804');
        END IF;
        IF jsonb_typeof(node -> 'threshold') IS DISTINCT FROM 'number'
            OR (node ->> 'threshold')::numeric <= 0 OR (node ->> 'threshold')::numeric > 1e6 THEN
            PERFORM cep._rule_fail(rule, path || '.threshold',
                'must be a number greater than 0 and at most 1000000');
        END IF;
        v_thr := (node ->> 'threshold')::numeric;
        v_min := coalesce((node ->> 'min_samples')::numeric, 20);
        IF node ? 'min_samples' AND (jsonb_typeof(node -> 'min_samples') <> 'number'
            OR v_min <> trunc(v_min) OR v_min < 2 OR v_min > 1e9) THEN
            PERFORM cep._rule_fail(rule, path || '.min_samples',
                'must be an integer from 2 to 1000000000');
        END IF;
        -- |x - mean| > threshold * sd (sample sd), in exact numeric arithmetic:
        -- (n x - s)^2 (n - 1) > threshold^2 n (n ss - s^2), over the n prior non-NULL values.
        v_col := cep._rule_col('zscore', NULL, v_f.col, NULL);
        RETURN format(
            'coalesce(x.%1$I >= %2$s AND (x.%1$I * %7$s - x.%4$I) '
            '* (x.%1$I * %7$s - x.%4$I) * (x.%1$I - 1) '
            '> %5$L::pg_catalog.numeric * %5$L::pg_catalog.numeric * x.%1$I '
            '* (x.%1$I * x.%6$I - x.%4$I * x.%4$I), false)',
            v_col || '_n', v_min, 'c:' || v_f.col, v_col || '_s', v_thr, v_col || '_ss',
            CASE WHEN v_f.kind = 'float'
                THEN format('x.%I::pg_catalog.text::pg_catalog.numeric', 'c:' || v_f.col)
                ELSE format('x.%I::pg_catalog.numeric', 'c:' || v_f.col) END);
    ELSIF node ? 'time_of_day' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['time_of_day'], rule, path);
        v_tod := node -> 'time_of_day';
        IF jsonb_typeof(v_tod) IS DISTINCT FROM 'object' THEN
            PERFORM cep._rule_fail(rule, path || '.time_of_day',
                'must be an object {"from": "HH:MM", "to": "HH:MM", "timezone": "..."}');
        END IF;
        PERFORM cep._rule_check_keys(v_tod, ARRAY['from', 'to', 'timezone'], rule,
            path || '.time_of_day');
        FOREACH v_op IN ARRAY ARRAY['from', 'to'] LOOP
            IF jsonb_typeof(v_tod -> v_op) IS DISTINCT FROM 'string'
                OR (v_tod ->> v_op) !~ '^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$' THEN
                PERFORM cep._rule_fail(rule, format('%s.time_of_day.%s', path, v_op),
                    'must be a time of day written "HH:MM" or "HH:MM:SS" (00:00 to 23:59:59)');
            END IF;
        END LOOP;
        v_from := (v_tod ->> 'from')::time;
        v_to := (v_tod ->> 'to')::time;
        IF v_from = v_to THEN
            PERFORM cep._rule_fail(rule, path || '.time_of_day',
                '"from" and "to" are equal, which would be an empty range');
        END IF;
        v_tz := coalesce(v_tod ->> 'timezone', 'UTC');
        IF jsonb_typeof(coalesce(v_tod -> 'timezone', '"UTC"')) <> 'string'
            OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names AS z WHERE z.name = v_tz) THEN
            PERFORM cep._rule_fail(rule, path || '.time_of_day.timezone', format(
                'unknown time zone %s (use a name from pg_timezone_names)',
                v_tod -> 'timezone'));
        END IF;
        RETURN format(
            '(pg_catalog.timezone(%L, x.t)::pg_catalog.time %s %L::pg_catalog.time %s '
            'pg_catalog.timezone(%L, x.t)::pg_catalog.time < %L::pg_catalog.time)',
            v_tz, '>=', v_from, CASE WHEN v_from < v_to THEN 'AND' ELSE 'OR' END, v_tz, v_to);
    ELSIF node ? 'pattern' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['pattern'], rule, path);
        SELECT p.pattern_id INTO v_i FROM cep.patterns AS p
        WHERE p.name = node ->> 'pattern' AND p.stream_id = _rule_compile.stream_id;
        IF v_i IS NULL THEN
            PERFORM cep._rule_fail(rule, path || '.pattern', format(
                'unknown pattern %s: pattern references need a pattern created with '
                'cep.create_pattern on this stream', node -> 'pattern'), '42704');
        END IF;
        -- a match of the pattern, final by now, whose last event is this event
        RETURN format('EXISTS (SELECT 1 FROM cep.matches AS pm WHERE pm.pattern_id = %s '
            'AND pm.last_event_id = x.id AND pm.partition_key IS NOT DISTINCT FROM x.k)', v_i);
    ELSIF node ? 'field' THEN
        PERFORM cep._rule_check_keys(node, ARRAY['field', 'op', 'value'], rule, path);
        v_f := cep._rule_field(v_source, node -> 'field', rule, path || '.field');
        IF v_f.kind = 'boolean' THEN
            v_op := cep._rule_op(node -> 'op', ARRAY['=', '!='], rule, path || '.op');
        ELSE
            v_op := cep._rule_op(node -> 'op', v_cmp || ARRAY['in', 'not_in'], rule, path || '.op');
        END IF;
        IF v_op IN ('in', 'not_in') THEN
            IF jsonb_typeof(node -> 'value') IS DISTINCT FROM 'array'
                OR jsonb_array_length(node -> 'value') NOT BETWEEN 1 AND 10000 THEN
                PERFORM cep._rule_fail(rule, path || '.value',
                    format('operator %s needs an array of 1 to 10000 values', v_op));
            END IF;
            v_list := '';
            v_i := 0;
            FOR v_item IN SELECT e FROM jsonb_array_elements(node -> 'value') AS e LOOP
                v_list := v_list || CASE WHEN v_i > 0 THEN ', ' ELSE '' END
                    || cep._rule_constant(v_item, v_f.typ, v_f.kind, rule,
                        format('%s.value[%s]', path, v_i));
                v_i := v_i + 1;
            END LOOP;
            RETURN format('coalesce(x.%I %s (%s), false)', 'c:' || v_f.col,
                CASE v_op WHEN 'in' THEN 'IN' ELSE 'NOT IN' END, v_list);
        END IF;
        RETURN format('coalesce(x.%I %s %s, false)', 'c:' || v_f.col, v_op,
            cep._rule_constant(node -> 'value', v_f.typ, v_f.kind, rule, path || '.value'));
    END IF;
    PERFORM cep._rule_fail(rule, path, format(
        'unknown condition with keys %s (expected one of field, metric, changed, anomaly, '
        'time_of_day, pattern, all, any, not)',
        (SELECT coalesce(string_agg(quote_literal(k), ', ' ORDER BY k), 'none')
            FROM jsonb_object_keys(node) AS k)));
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION cep._rule_compile(integer, jsonb, text, text, integer) IS
'Internal: validate a rule condition against its stream and compile it to a SQL boolean '
'expression (identifiers via %I, constants via %L); errors name the JSON path.';

-- The trailing metrics, changes and histories a condition reads, one row per distinct need.
CREATE FUNCTION cep._rule_needs(condition jsonb)
RETURNS TABLE (kind text, fn text, field name, secs numeric, col text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT DISTINCT n.kind, n.fn, n.field, n.secs, cep._rule_col(n.kind, n.fn, n.field, n.secs)
    FROM (
        SELECT CASE
                WHEN q ? 'metric' THEN 'metric'
                WHEN q ? 'changed' THEN 'changed'
                ELSE 'zscore'
            END AS kind,
            q ->> 'metric' AS fn,
            coalesce(q ->> 'field', q ->> 'changed')::name AS field,
            CASE WHEN q ? 'window'
                THEN extract(epoch FROM (q ->> 'window')::interval) END AS secs
        FROM jsonb_path_query(condition, 'strict $.**') AS q
        WHERE jsonb_typeof(q) = 'object'
            AND (q ? 'metric' OR q ? 'changed' OR (q ? 'anomaly' AND q ? 'field'))
    ) AS n
$fn$;

COMMENT ON FUNCTION cep._rule_needs(jsonb) IS
'Internal: the trailing metrics, field changes and per-key histories a validated condition '
'reads, each with the column name the assessment query gives it.';

-- Trailing metrics over windows of at least 64 seconds, other than count_distinct, read time
-- buckets of 1/32 of the window (microsecond-rounded) between their raw ends.
CREATE FUNCTION cep._rule_bucket_width(fn text, secs numeric)
RETURNS interval
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN fn IN ('count', 'sum', 'avg', 'min', 'max') AND secs >= 64
        THEN make_interval(secs => round(secs / 32, 6)) END
$fn$;

COMMENT ON FUNCTION cep._rule_bucket_width(text, numeric) IS
'Internal: the bucket width a trailing metric FN over a window of SECS seconds reads (NULL: '
'it reads raw rows only).';
