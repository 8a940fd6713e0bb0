-- Pattern language: tokens, parser (SQL:2016 row pattern syntax), and compilation into a
-- preference-ordered NFA program.
-- Invariant: a pattern is accepted only if it parses completely, cannot match an empty
-- sequence and quantifies no sub-pattern that can; the program's instructions are
-- CHAR v (consume an event satisfying variable v), SPLIT x y (try x, then y), JMP x and MATCH,
-- and the epsilon closure of every position is precomputed in preference order.

CREATE FUNCTION cep._pat_fail(pattern text, pos integer, message text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF pos IS NULL THEN
        RAISE EXCEPTION USING
            MESSAGE = format('invalid pattern %s: %s', quote_literal(coalesce(pattern, '')), message),
            ERRCODE = '42601';
    END IF;
    RAISE EXCEPTION USING
        MESSAGE = format('invalid pattern %s: %s', quote_literal(coalesce(pattern, '')), message),
        DETAIL = format('at token %s', pos),
        ERRCODE = '42601';
END
$fn$;

COMMENT ON FUNCTION cep._pat_fail(text, integer, text) IS
'Internal: raise a pattern syntax error (42601) naming the pattern and the token.';

-- Tokens: identifiers (lower case), ( ) | , * + ? and {n}, {n,}, {n,m}, {,m} as one token.
CREATE FUNCTION cep._pat_tokens(pattern text)
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_tokens text [] := '{}'::text [];
    v_m text [];
    v_rest text := coalesce(pattern, '');
BEGIN
    LOOP
        v_rest := ltrim(v_rest, E' \t\r\n');
        EXIT WHEN v_rest = '';
        v_m := regexp_match(v_rest,
            '^([A-Za-z_][A-Za-z0-9_]*|[()|,*+?]|\{\s*[0-9]*\s*(,\s*[0-9]*\s*)?\})');
        IF v_m IS NULL THEN
            PERFORM cep._pat_fail(pattern, cardinality(v_tokens) + 1,
                format('unexpected character %s', quote_literal(left(v_rest, 1))));
        END IF;
        v_tokens := v_tokens || CASE WHEN v_m[1] ~ '^[A-Za-z_]' THEN lower(v_m[1])
            ELSE regexp_replace(v_m[1], '\s', '', 'g') END;
        v_rest := substr(v_rest, length(v_m[1]) + 1);
    END LOOP;
    IF cardinality(v_tokens) = 0 THEN
        PERFORM cep._pat_fail(pattern, NULL, 'the pattern is empty');
    END IF;
    IF cardinality(v_tokens) > 1000 THEN
        PERFORM cep._pat_fail(pattern, NULL, 'more than 1000 tokens');
    END IF;
    RETURN v_tokens;
END
$fn$;

COMMENT ON FUNCTION cep._pat_tokens(text) IS
'Internal: split a row pattern into tokens (identifiers lower-cased, quantifier braces whole).';

-- alt := seq ('|' seq)*
CREATE FUNCTION cep._pat_alt(pattern text, tokens text[], INOUT pos integer, OUT node jsonb)
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_items jsonb := '[]'::jsonb;
    v_seq jsonb;
BEGIN
    LOOP
        SELECT s.pos, s.node INTO pos, v_seq FROM cep._pat_seq(pattern, tokens, pos) AS s;
        v_items := v_items || jsonb_build_array(v_seq);
        EXIT WHEN pos > cardinality(tokens) OR tokens[pos] <> '|';
        pos := pos + 1;
    END LOOP;
    node := CASE WHEN jsonb_array_length(v_items) = 1 THEN v_items -> 0
        ELSE jsonb_build_object('t', 'a', 'i', v_items) END;
END
$fn$;

COMMENT ON FUNCTION cep._pat_alt(text, text[], integer) IS
'Internal: parse an alternation of the row pattern grammar.';

-- seq := quant+ ; quant := atom quantifier? ; atom := var | ( alt ) | PERMUTE ( alt, ... )
CREATE FUNCTION cep._pat_seq(pattern text, tokens text[], INOUT pos integer, OUT node jsonb)
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_items jsonb := '[]'::jsonb;
    v_atom jsonb;
    v_tok text;
    v_args jsonb;
    v_arg jsonb;
    v_m text [];
    v_min integer;
    v_max integer;
    v_n integer;
BEGIN
    LOOP
        EXIT WHEN pos > cardinality(tokens) OR tokens[pos] IN (')', '|', ',');
        v_tok := tokens[pos];
        IF v_tok = 'permute' AND tokens[pos + 1] IS NOT DISTINCT FROM '(' THEN
            pos := pos + 2;
            v_args := '[]';
            LOOP
                SELECT s.pos, s.node INTO pos, v_arg FROM cep._pat_alt(pattern, tokens, pos) AS s;
                v_args := v_args || jsonb_build_array(v_arg);
                IF pos > cardinality(tokens) THEN
                    PERFORM cep._pat_fail(pattern, pos, 'PERMUTE( is not closed');
                END IF;
                EXIT WHEN tokens[pos] = ')';
                IF tokens[pos] <> ',' THEN
                    PERFORM cep._pat_fail(pattern, pos, format('unexpected %s in PERMUTE', tokens[pos]));
                END IF;
                pos := pos + 1;
            END LOOP;
            pos := pos + 1;
            v_n := jsonb_array_length(v_args);
            IF v_n > 5 THEN
                PERFORM cep._pat_fail(pattern, pos, 'PERMUTE takes at most 5 items');
            END IF;
            -- All orders, in lexicographic order of the items' positions.
            WITH RECURSIVE perm (p) AS (
                SELECT ARRAY[i] FROM generate_series(0, v_n - 1) AS i
                UNION ALL
                SELECT perm.p || i FROM perm, generate_series(0, v_n - 1) AS i
                WHERE NOT i = ANY (perm.p)
            )
            SELECT CASE WHEN count(*) = 1 THEN (array_agg(x.seq))[1]
                    ELSE jsonb_build_object('t', 'a', 'i', jsonb_agg(x.seq ORDER BY x.p)) END
            INTO v_atom
            FROM (
                SELECT perm.p, jsonb_build_object('t', 's', 'i',
                    (SELECT jsonb_agg(v_args -> e ORDER BY o) FROM unnest(perm.p) WITH ORDINALITY AS u (e, o))) AS seq
                FROM perm
                WHERE cardinality(perm.p) = v_n
            ) AS x;
        ELSIF v_tok = '(' THEN
            IF tokens[pos + 1] IS NOT DISTINCT FROM ')' THEN
                PERFORM cep._pat_fail(pattern, pos, 'empty group ()');
            END IF;
            SELECT s.pos, s.node INTO pos, v_atom FROM cep._pat_alt(pattern, tokens, pos + 1) AS s;
            IF pos > cardinality(tokens) OR tokens[pos] <> ')' THEN
                PERFORM cep._pat_fail(pattern, pos, 'unbalanced parentheses: ( is not closed');
            END IF;
            pos := pos + 1;
        ELSIF v_tok ~ '^[a-z_]' THEN
            v_atom := jsonb_build_object('t', 'v', 'v', v_tok);
            pos := pos + 1;
        ELSE
            PERFORM cep._pat_fail(pattern, pos, format('unexpected %s', quote_literal(v_tok)));
        END IF;

        -- quantifier
        IF pos <= cardinality(tokens) AND tokens[pos] ~ '^([*+?]|\{)' THEN
            v_tok := tokens[pos];
            IF v_tok = '*' THEN
                v_min := 0; v_max := NULL;
            ELSIF v_tok = '+' THEN
                v_min := 1; v_max := NULL;
            ELSIF v_tok = '?' THEN
                v_min := 0; v_max := 1;
            ELSE
                v_m := regexp_match(v_tok, '^\{([0-9]*)(,?)([0-9]*)\}$');
                IF v_m[1] = '' AND v_m[2] = '' THEN
                    PERFORM cep._pat_fail(pattern, pos, 'empty quantifier {}');
                END IF;
                IF length(v_m[1]) > 4 OR length(v_m[3]) > 4 THEN
                    PERFORM cep._pat_fail(pattern, pos, format('quantifier %s is too large (at most {1000})', v_tok));
                END IF;
                v_min := coalesce(nullif(v_m[1], '')::integer, 0);
                v_max := CASE WHEN v_m[2] = '' THEN v_min ELSE nullif(v_m[3], '')::integer END;
                IF v_max IS NOT NULL AND v_max < v_min THEN
                    PERFORM cep._pat_fail(pattern, pos, format('quantifier %s has its maximum below its minimum', v_tok));
                END IF;
                IF v_max = 0 THEN
                    PERFORM cep._pat_fail(pattern, pos, format('quantifier %s matches nothing', v_tok));
                END IF;
            END IF;
            pos := pos + 1;
            v_atom := jsonb_build_object('t', 'r', 'min', v_min, 'max', v_max,
                'g', NOT (pos <= cardinality(tokens) AND tokens[pos] = '?'), 'i', v_atom);
            IF pos <= cardinality(tokens) AND tokens[pos] = '?' THEN
                pos := pos + 1;
            END IF;
            IF pos <= cardinality(tokens) AND tokens[pos] ~ '^([*+?]|\{)' THEN
                PERFORM cep._pat_fail(pattern, pos, 'two quantifiers in a row; use a group');
            END IF;
            IF cep._pat_nullable(v_atom -> 'i') THEN
                PERFORM cep._pat_fail(pattern, pos - 1,
                    'a quantifier is applied to a sub-pattern that can match an empty sequence');
            END IF;
        END IF;
        v_items := v_items || jsonb_build_array(v_atom);
    END LOOP;
    IF jsonb_array_length(v_items) = 0 THEN
        PERFORM cep._pat_fail(pattern, pos, CASE
            WHEN pos > cardinality(tokens) THEN 'the pattern ends where a variable was expected'
            ELSE format('a variable or group was expected before %s', quote_literal(tokens[pos])) END);
    END IF;
    node := CASE WHEN jsonb_array_length(v_items) = 1 THEN v_items -> 0
        ELSE jsonb_build_object('t', 's', 'i', v_items) END;
END
$fn$;

COMMENT ON FUNCTION cep._pat_seq(text, text[], integer) IS
'Internal: parse a concatenation of quantified atoms (variables, groups, PERMUTE).';

CREATE FUNCTION cep._pat_nullable(node jsonb)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_item jsonb;
BEGIN
    CASE node ->> 't'
        WHEN 'v' THEN
            RETURN false;
        WHEN 'r' THEN
            RETURN (node ->> 'min')::integer = 0 OR cep._pat_nullable(node -> 'i');
        WHEN 's' THEN
            FOR v_item IN SELECT e FROM jsonb_array_elements(node -> 'i') AS e LOOP
                IF NOT cep._pat_nullable(v_item) THEN
                    RETURN false;
                END IF;
            END LOOP;
            RETURN true;
        ELSE
            FOR v_item IN SELECT e FROM jsonb_array_elements(node -> 'i') AS e LOOP
                IF cep._pat_nullable(v_item) THEN
                    RETURN true;
                END IF;
            END LOOP;
            RETURN false;
    END CASE;
END
$fn$;

COMMENT ON FUNCTION cep._pat_nullable(jsonb) IS
'Internal: whether a pattern AST node can match an empty sequence.';

-- Emit program instructions for an AST node (1 CHAR v, 2 SPLIT x y, 3 JMP x, 4 MATCH).
CREATE FUNCTION cep._pat_emit(
    node jsonb, vars text[], INOUT ops integer[], INOUT xs integer[], INOUT ys integer[]
)
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_item jsonb;
    v_n integer;
    v_i integer;
    v_split integer;
    v_jmps integer [] := '{}'::integer [];
    v_min integer;
    v_max integer;
    v_greedy boolean;
    v_end integer;
BEGIN
    IF cardinality(ops) > 5000 THEN
        RAISE EXCEPTION 'the pattern compiles to more than 5000 instructions'
            USING ERRCODE = '54000', HINT = 'Use smaller bounded quantifiers.';
    END IF;
    CASE node ->> 't'
        WHEN 'v' THEN
            ops := ops || 1;
            xs := xs || array_position(vars, node ->> 'v');
            ys := ys || 0;
        WHEN 's' THEN
            FOR v_item IN SELECT e FROM jsonb_array_elements(node -> 'i') AS e LOOP
                SELECT e.ops, e.xs, e.ys INTO ops, xs, ys FROM cep._pat_emit(v_item, vars, ops, xs, ys) AS e;
            END LOOP;
        WHEN 'a' THEN
            v_n := jsonb_array_length(node -> 'i');
            FOR v_i IN 0 .. v_n - 1 LOOP
                IF v_i < v_n - 1 THEN
                    ops := ops || 2;
                    xs := xs || (cardinality(ops) + 1);
                    ys := ys || 0;
                    v_split := cardinality(ops);
                END IF;
                SELECT e.ops, e.xs, e.ys INTO ops, xs, ys
                FROM cep._pat_emit(node -> 'i' -> v_i, vars, ops, xs, ys) AS e;
                IF v_i < v_n - 1 THEN
                    ops := ops || 3;
                    xs := xs || 0;
                    ys := ys || 0;
                    v_jmps := v_jmps || cardinality(ops);
                    ys[v_split] := cardinality(ops) + 1;
                END IF;
            END LOOP;
            FOREACH v_i IN ARRAY v_jmps LOOP
                xs[v_i] := cardinality(ops) + 1;
            END LOOP;
        ELSE
            v_min := (node ->> 'min')::integer;
            v_max := (node ->> 'max')::integer;
            v_greedy := (node ->> 'g')::boolean;
            FOR v_i IN 1 .. v_min LOOP
                SELECT e.ops, e.xs, e.ys INTO ops, xs, ys FROM cep._pat_emit(node -> 'i', vars, ops, xs, ys) AS e;
            END LOOP;
            IF v_max IS NULL THEN
                -- L: SPLIT body, exit (greedy) or exit, body (reluctant); body; JMP L; exit
                ops := ops || 2;
                xs := xs || 0;
                ys := ys || 0;
                v_split := cardinality(ops);
                SELECT e.ops, e.xs, e.ys INTO ops, xs, ys FROM cep._pat_emit(node -> 'i', vars, ops, xs, ys) AS e;
                ops := ops || 3;
                xs := xs || v_split;
                ys := ys || 0;
                IF v_greedy THEN
                    xs[v_split] := v_split + 1;
                    ys[v_split] := cardinality(ops) + 1;
                ELSE
                    xs[v_split] := cardinality(ops) + 1;
                    ys[v_split] := v_split + 1;
                END IF;
            ELSIF v_max > v_min THEN
                -- nested optional copies: SPLIT body, end; body; SPLIT body, end; body; ... end
                v_jmps := '{}'::integer [];
                FOR v_i IN 1 .. v_max - v_min LOOP
                    ops := ops || 2;
                    xs := xs || 0;
                    ys := ys || 0;
                    v_jmps := v_jmps || cardinality(ops);
                    SELECT e.ops, e.xs, e.ys INTO ops, xs, ys FROM cep._pat_emit(node -> 'i', vars, ops, xs, ys) AS e;
                END LOOP;
                v_end := cardinality(ops) + 1;
                FOREACH v_i IN ARRAY v_jmps LOOP
                    IF v_greedy THEN
                        xs[v_i] := v_i + 1;
                        ys[v_i] := v_end;
                    ELSE
                        xs[v_i] := v_end;
                        ys[v_i] := v_i + 1;
                    END IF;
                END LOOP;
            END IF;
    END CASE;
END
$fn$;

COMMENT ON FUNCTION cep._pat_emit(jsonb, text[], integer[], integer[], integer[]) IS
'Internal: append the NFA instructions of a pattern AST node to a program.';

-- The epsilon closure of a program position, in preference order: the CHAR positions a
-- thread at pc can wait at, and 0 for MATCH.
CREATE FUNCTION cep._pat_closure(ops integer[], xs integer[], ys integer[], pc integer)
RETURNS integer[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_out integer [] := '{}'::integer [];
    v_seen integer [] := '{}'::integer [];
    v_stack integer [] := ARRAY[pc];
    v_pc integer;
BEGIN
    WHILE cardinality(v_stack) > 0 LOOP
        v_pc := v_stack[cardinality(v_stack)];
        v_stack := v_stack[1:cardinality(v_stack) - 1];
        CONTINUE WHEN v_pc = ANY (v_seen);
        v_seen := v_seen || v_pc;
        CASE ops[v_pc]
            WHEN 1 THEN v_out := v_out || v_pc;
            WHEN 2 THEN v_stack := v_stack || ys[v_pc] || xs[v_pc];  -- x on top: tried first
            WHEN 3 THEN v_stack := v_stack || xs[v_pc];
            ELSE
                IF NOT 0 = ANY (v_out) THEN
                    v_out := v_out || 0;
                END IF;
        END CASE;
    END LOOP;
    RETURN v_out;
END
$fn$;

COMMENT ON FUNCTION cep._pat_closure(integer[], integer[], integer[], integer) IS
'Internal: the epsilon closure of a program position in preference order (0 = MATCH).';

-- Parse and compile: the variables (in order of appearance) and the program with its
-- closures: start = closure(1); follow of a CHAR at pc = closure(pc + 1), as flat arrays.
CREATE FUNCTION cep._pat_compile(pattern text, OUT variables text[], OUT program jsonb)
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_tokens text [] := cep._pat_tokens(pattern);
    v_pos integer;
    v_ast jsonb;
    v_ops integer [] := '{}'::integer [];
    v_xs integer [] := '{}'::integer [];
    v_ys integer [] := '{}'::integer [];
    v_start integer [];
    v_off integer [] := '{}'::integer [];
    v_len integer [] := '{}'::integer [];
    v_items integer [] := '{}'::integer [];
    v_c integer [];
BEGIN
    SELECT a.pos, a.node INTO v_pos, v_ast FROM cep._pat_alt(pattern, v_tokens, 1) AS a;
    IF v_pos <= cardinality(v_tokens) THEN
        PERFORM cep._pat_fail(pattern, v_pos, CASE v_tokens[v_pos]
            WHEN ')' THEN 'unbalanced parentheses: ) without ('
            ELSE format('unexpected %s', quote_literal(v_tokens[v_pos])) END);
    END IF;
    IF cep._pat_nullable(v_ast) THEN
        PERFORM cep._pat_fail(pattern, NULL, 'the pattern can match an empty sequence');
    END IF;
    SELECT array_agg(v ORDER BY first_pos) INTO variables
    FROM (
        SELECT t AS v, min(o) AS first_pos
        FROM unnest(v_tokens) WITH ORDINALITY AS u (t, o)
        WHERE t ~ '^[a-z_]' AND NOT (t = 'permute' AND v_tokens[o + 1] IS NOT DISTINCT FROM '(')
        GROUP BY t
    ) AS x;
    IF cardinality(variables) > 30 THEN
        PERFORM cep._pat_fail(pattern, NULL, 'at most 30 variables');
    END IF;
    SELECT e.ops, e.xs, e.ys INTO v_ops, v_xs, v_ys FROM cep._pat_emit(v_ast, variables, v_ops, v_xs, v_ys) AS e;
    v_ops := v_ops || 4;
    v_xs := v_xs || 0;
    v_ys := v_ys || 0;
    v_start := cep._pat_closure(v_ops, v_xs, v_ys, 1);
    FOR v_pc IN 1 .. cardinality(v_ops) LOOP
        v_c := CASE WHEN v_ops[v_pc] = 1 THEN cep._pat_closure(v_ops, v_xs, v_ys, v_pc + 1)
            ELSE '{}'::integer [] END;
        v_off := v_off || (cardinality(v_items) + 1);
        v_len := v_len || cardinality(v_c);
        v_items := v_items || v_c;
    END LOOP;
    program := jsonb_build_object('ast', v_ast, 'op', v_ops, 'x', v_xs, 'y', v_ys,
        'start', v_start, 'off', v_off, 'len', v_len, 'items', v_items);
END
$fn$;

COMMENT ON FUNCTION cep._pat_compile(text) IS
'Internal: parse a row pattern and compile it into a preference-ordered NFA program with '
'precomputed closures; raises 42601 naming the problem.';
