-- DEFINE conditions of patterns: SQL boolean expressions over the stream's columns, with
-- PREV(col) (the previous event of the key) and var.col (the last event bound to var).
-- Invariant: an expression is tokenized and accepted only if it is one parenthesizable
-- expression: balanced brackets, no ';', no comments, no dollar quotes, no escape strings and
-- no parameters, so that embedding it as "(expr)" in generated code cannot change the code
-- around it. Column references are rewritten to the matcher's row e ("c:col", "p:col");
-- var.col to the thread's bindings b. It runs with the stream owner's rights, like a trigger
-- the owner could write.

CREATE FUNCTION cep._pat_define_sql(
    expr text, source regclass, vars text[], var text,
    OUT sql text, OUT cols name[], OUT prevs name[], OUT refs jsonb
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_rest text := expr;
    v_m text [];
    v_tok text [] := '{}'::text [];
    v_kind text [] := '{}'::text [];
    v_i integer := 1;
    v_depth integer := 0;
    v_out text [] := '{}'::text [];
    v_col name;
    v_typ text;
    v_t text;
    v_low text;
BEGIN
    cols := '{}';
    prevs := '{}';
    refs := '{}';
    IF expr IS NULL OR btrim(expr) = '' THEN
        RAISE EXCEPTION 'DEFINE %: the condition is empty', var USING ERRCODE = '42601';
    END IF;
    IF octet_length(expr) > 10000 THEN
        RAISE EXCEPTION 'DEFINE %: the condition is longer than 10000 bytes', var
            USING ERRCODE = '54000';
    END IF;
    -- tokens
    LOOP
        v_rest := ltrim(v_rest, E' \t\r\n');
        EXIT WHEN v_rest = '';
        IF v_rest ~ '^(--|/\*)' THEN
            RAISE EXCEPTION 'DEFINE %: comments are not allowed in conditions', var
                USING ERRCODE = '42601';
        END IF;
        v_m := regexp_match(v_rest, '^(''(?:[^'']|'''')*'')');
        IF v_m IS NOT NULL THEN
            v_tok := v_tok || v_m[1];
            v_kind := v_kind || 'str'::text;
        ELSE
            v_m := regexp_match(v_rest, '^("(?:[^"]|"")+")');
            IF v_m IS NOT NULL THEN
                v_tok := v_tok || v_m[1];
                v_kind := v_kind || 'qid'::text;
            ELSE
                v_m := regexp_match(v_rest,
                    '^([A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|::|[(),.\[\]:]|[-+*/<>=~!@#%^&|`?]+)');
                IF v_m IS NULL THEN
                    RAISE EXCEPTION 'DEFINE %: unexpected character % in the condition', var,
                        quote_literal(left(v_rest, 1))
                        USING ERRCODE = '42601',
                        HINT = 'Conditions are one SQL expression: no ";", "$", comments or '
                            'escape strings.';
                END IF;
                IF v_m[1] ~ '^[A-Za-z_]' AND substr(v_rest, length(v_m[1]) + 1, 1) IN ('''', '"', '&') THEN
                    RAISE EXCEPTION 'DEFINE %: prefixed strings such as E''...'' or U&''...'' are not allowed',
                        var USING ERRCODE = '42601';
                END IF;
                IF v_m[1] ~ '(--|/\*)' THEN
                    RAISE EXCEPTION 'DEFINE %: comments are not allowed in conditions', var
                        USING ERRCODE = '42601';
                END IF;
                v_tok := v_tok || v_m[1];
                v_kind := v_kind || CASE
                    WHEN v_m[1] ~ '^[A-Za-z_]' THEN 'id'
                    WHEN v_m[1] ~ '^[0-9.]' AND v_m[1] <> '.' THEN 'num'
                    ELSE 'op' END;
            END IF;
        END IF;
        IF v_tok[cardinality(v_tok)] IN ('(', '[') THEN
            v_depth := v_depth + 1;
        ELSIF v_tok[cardinality(v_tok)] IN (')', ']') THEN
            v_depth := v_depth - 1;
            IF v_depth < 0 THEN
                RAISE EXCEPTION 'DEFINE %: unbalanced parentheses in the condition', var
                    USING ERRCODE = '42601';
            END IF;
        END IF;
        v_rest := substr(v_rest, length(v_m[1]) + 1);
    END LOOP;
    IF v_depth <> 0 THEN
        RAISE EXCEPTION 'DEFINE %: unbalanced parentheses in the condition', var
            USING ERRCODE = '42601';
    END IF;

    -- rewrite column references, PREV(col) and var.col
    WHILE v_i <= cardinality(v_tok) LOOP
        v_t := v_tok[v_i];
        v_low := CASE v_kind[v_i] WHEN 'id' THEN lower(v_t)
            WHEN 'qid' THEN replace(substr(v_t, 2, length(v_t) - 2), '""', '"') END;
        IF v_kind[v_i] = 'id' AND v_low = 'prev' AND v_tok[v_i + 1] IS NOT DISTINCT FROM '(' THEN
            v_col := CASE v_kind[v_i + 2] WHEN 'id' THEN lower(v_tok[v_i + 2])
                WHEN 'qid' THEN replace(substr(v_tok[v_i + 2], 2, length(v_tok[v_i + 2]) - 2), '""', '"') END;
            IF v_col IS NULL OR v_tok[v_i + 3] IS DISTINCT FROM ')' OR NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = source AND a.attname = v_col AND a.attnum > 0 AND NOT a.attisdropped
            ) THEN
                RAISE EXCEPTION 'DEFINE %: PREV() takes one column of %', var, source
                    USING ERRCODE = '42703';
            END IF;
            prevs := prevs || v_col;
            v_out := v_out || format('e.%I', 'p:' || v_col);
            v_i := v_i + 4;
            CONTINUE;
        END IF;
        IF v_kind[v_i] = 'id' AND v_low = ANY (vars) AND v_tok[v_i + 1] IS NOT DISTINCT FROM '.'
            AND (v_i = 1 OR v_tok[v_i - 1] <> '.') THEN
            v_col := CASE v_kind[v_i + 2] WHEN 'id' THEN lower(v_tok[v_i + 2])
                WHEN 'qid' THEN replace(substr(v_tok[v_i + 2], 2, length(v_tok[v_i + 2]) - 2), '""', '"') END;
            SELECT format_type(a.atttypid, NULL) INTO v_typ
            FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = source AND a.attname = v_col AND a.attnum > 0 AND NOT a.attisdropped;
            IF v_typ IS NULL THEN
                RAISE EXCEPTION 'DEFINE %: %.% is not a column of %', var, v_low,
                    coalesce(v_tok[v_i + 2], ''), source USING ERRCODE = '42703';
            END IF;
            refs := jsonb_set(refs, ARRAY[v_low],
                coalesce(refs -> v_low, '[]') || CASE WHEN coalesce(refs -> v_low, '[]') ? v_col
                    THEN '[]'::jsonb ELSE to_jsonb(v_col::text) END);
            cols := cols || v_col;
            v_out := v_out || format('(b -> %L ->> %L)::%s', v_low, v_col, v_typ);
            v_i := v_i + 3;
            CONTINUE;
        END IF;
        IF v_kind[v_i] IN ('id', 'qid')
            AND (v_i = 1 OR v_tok[v_i - 1] <> '.')
            AND v_tok[v_i + 1] IS DISTINCT FROM '('
            AND v_tok[v_i + 1] IS DISTINCT FROM '.'
            AND EXISTS (
                SELECT 1 FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = source AND a.attname = v_low AND a.attnum > 0 AND NOT a.attisdropped
            ) THEN
            cols := cols || v_low::name;
            v_out := v_out || format('e.%I', 'c:' || v_low);
        ELSE
            v_out := v_out || v_t;
        END IF;
        v_i := v_i + 1;
    END LOOP;
    sql := '(' || array_to_string(v_out, ' ') || ')';
    SELECT coalesce(array_agg(DISTINCT c), '{}') INTO cols FROM unnest(cols) AS c;
    SELECT coalesce(array_agg(DISTINCT c), '{}') INTO prevs FROM unnest(prevs) AS c;
END
$fn$;

COMMENT ON FUNCTION cep._pat_define_sql(text, regclass, text[], text) IS
'Internal: check that a DEFINE condition is one SQL expression and rewrite its column '
'references (e."c:col"), PREV(col) (e."p:col") and var.col (bindings b) for the matcher.';

-- The FROM list that gives a rewritten condition its row e (and bindings b), for checks.
CREATE FUNCTION cep._pat_row_sql(source regclass, cols name[], prevs name[])
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('(SELECT %s) AS e, (SELECT NULL::jsonb AS b) AS z',
        coalesce(string_agg(x.item, ', ' ORDER BY x.o), '1 AS one'))
    FROM (
        SELECT format('NULL::%s AS %I', format_type(a.atttypid, a.atttypmod), 'c:' || c) AS item, 1 AS o
        FROM unnest(cols) AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = source AND a.attname = c
        UNION ALL
        SELECT format('NULL::%s AS %I', format_type(a.atttypid, a.atttypmod), 'p:' || c), 2
        FROM unnest(prevs) AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = source AND a.attname = c
    ) AS x
$fn$;

COMMENT ON FUNCTION cep._pat_row_sql(regclass, name[], name[]) IS
'Internal: a one-row FROM list with the columns a rewritten DEFINE condition reads.';

-- Check a rewritten condition: it must be a boolean expression over the stream.
CREATE FUNCTION cep._pat_check_define(source regclass, var text, sql text, cols name[], prevs name[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_name text := 'cep_pattern_check_' || pg_backend_pid();
BEGIN
    /*
     * The condition is SQL by design (the stream owner's own, run with the owner's rights);
     * cep._pat_define_sql has already made sure it is one parenthesized expression.
     * @plpgsql_check_options: security_warnings = false
     */
    -- CASE WHEN insists on a boolean condition; PREPARE parses and plans without running it.
    BEGIN
        EXECUTE format('PREPARE %I AS SELECT CASE WHEN %s THEN 1 END FROM %s', v_name, sql,
            cep._pat_row_sql(source, cols, prevs));
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'DEFINE %: not a valid boolean condition over %: %', var, source, SQLERRM
            USING ERRCODE = CASE WHEN SQLSTATE LIKE '42%' THEN SQLSTATE ELSE '42601' END;
    END;
    EXECUTE format('DEALLOCATE %I', v_name);
END
$fn$;

COMMENT ON FUNCTION cep._pat_check_define(regclass, text, text, name[], name[]) IS
'Internal: prepare (not run) a rewritten DEFINE condition over the stream''s columns and '
'require a boolean result; errors name the variable.';
