-- Parsing and validation of window aggregates ("sum(amount) AS total") against the stream's
-- table. Invariant: only the allow-listed functions over existing columns get through, and
-- every output name is a valid, unique column name; nothing here builds SQL from user text.

CREATE FUNCTION cep._parse_aggregates(source regclass, aggregates text[], reserved name[])
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_item text;
    v_m text [];
    v_fn text;
    v_distinct boolean;
    v_col name;
    v_alias text;
    v_type regtype;
    v_base regtype;
    v_result jsonb := '[]'::jsonb;
    v_names name [] := reserved;
    v_i integer := 0;
    v_numeric regtype [] := ARRAY[
        'smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision'
    ]::regtype [];
BEGIN
    IF aggregates IS NULL OR cardinality(aggregates) = 0 THEN
        RAISE EXCEPTION 'aggregates must name at least one aggregate' USING ERRCODE = '22023';
    END IF;
    IF cardinality(aggregates) > 64 THEN
        RAISE EXCEPTION 'at most 64 aggregates per window' USING ERRCODE = '22023';
    END IF;
    FOREACH v_item IN ARRAY aggregates LOOP
        v_m := regexp_match(
            coalesce(v_item, ''),
            '^\s*(count|sum|avg|min|max)\s*\(\s*(distinct\s+)?(\*|[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")\s*\)'
            '\s*(?:as\s+([A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+"))?\s*$',
            'i');
        IF v_m IS NULL THEN
            RAISE EXCEPTION 'invalid aggregate %', coalesce(quote_literal(v_item), 'NULL')
                USING ERRCODE = '22023',
                HINT = 'Use count(*), count(col), count(distinct col), sum(col), avg(col), '
                    'min(col) or max(col), optionally followed by AS alias.';
        END IF;
        v_fn := lower(v_m[1]);
        v_distinct := v_m[2] IS NOT NULL;
        v_col := CASE
            WHEN v_m[3] = '*' THEN NULL
            WHEN v_m[3] LIKE '"%' THEN replace(substr(v_m[3], 2, length(v_m[3]) - 2), '""', '"')
            ELSE lower(v_m[3])
        END;
        IF v_m[3] = '*' AND (v_fn <> 'count' OR v_distinct) THEN
            RAISE EXCEPTION 'invalid aggregate %: only count(*) takes *', quote_literal(v_item)
                USING ERRCODE = '22023';
        END IF;
        IF v_distinct AND v_fn <> 'count' THEN
            RAISE EXCEPTION 'invalid aggregate %: distinct is supported for count only',
                quote_literal(v_item) USING ERRCODE = '22023';
        END IF;
        v_type := NULL;
        IF v_col IS NOT NULL THEN
            SELECT a.atttypid::regtype,
                (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)::regtype
            INTO v_type, v_base
            FROM pg_catalog.pg_attribute AS a
            JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
            WHERE a.attrelid = source AND a.attname = v_col AND a.attnum > 0
                AND NOT a.attisdropped;
            IF v_type IS NULL THEN
                RAISE EXCEPTION 'aggregate %: column "%" does not exist in %',
                    quote_literal(v_item), v_col, source USING ERRCODE = '42703';
            END IF;
            IF v_fn IN ('sum', 'avg') AND NOT v_base = ANY (v_numeric) THEN
                RAISE EXCEPTION 'aggregate %: column "%" has type %, which % cannot take',
                    quote_literal(v_item), v_col, v_type, v_fn USING ERRCODE = '42804';
            END IF;
            IF v_fn IN ('min', 'max') AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_opclass AS o
                JOIN pg_catalog.pg_am AS am ON am.oid = o.opcmethod
                WHERE am.amname = 'btree' AND o.opcdefault AND o.opcintype = v_base
            ) THEN
                RAISE EXCEPTION 'aggregate %: column "%" has type %, which has no ordering',
                    quote_literal(v_item), v_col, v_type USING ERRCODE = '42804';
            END IF;
        END IF;
        v_alias := CASE
            WHEN v_m[4] LIKE '"%' THEN replace(substr(v_m[4], 2, length(v_m[4]) - 2), '""', '"')
            WHEN v_m[4] IS NOT NULL THEN lower(v_m[4])
            WHEN v_col IS NULL THEN 'count'
            WHEN v_distinct THEN 'count_distinct_' || v_col
            ELSE v_fn || '_' || v_col
        END;
        IF octet_length(v_alias) > 63 THEN
            RAISE EXCEPTION 'aggregate %: output name "%" is longer than 63 bytes',
                quote_literal(v_item), v_alias USING ERRCODE = '42622';
        END IF;
        IF v_alias = ANY (v_names) THEN
            RAISE EXCEPTION 'aggregate %: output column "%" is already used', quote_literal(v_item),
                v_alias USING ERRCODE = '42701', HINT = 'Give it another name with AS.';
        END IF;
        v_names := v_names || v_alias::name;
        v_result := v_result || jsonb_build_object(
            'fn', CASE WHEN v_distinct THEN 'count_distinct' ELSE v_fn END,
            'col', v_col,
            'alias', v_alias,
            'type', v_type::text,
            -- The type of the aggregate's state and result, as PostgreSQL's own aggregate has.
            'state_type', CASE
                WHEN v_fn = 'count' THEN 'bigint'
                WHEN v_fn IN ('min', 'max') THEN v_type::text
                WHEN v_base IN ('smallint'::regtype, 'integer'::regtype) AND v_fn = 'sum' THEN 'bigint'
                WHEN v_base IN ('real'::regtype, 'double precision'::regtype) AND v_fn = 'avg'
                    THEN 'double precision'
                WHEN v_base = 'real'::regtype THEN 'real'
                WHEN v_base = 'double precision'::regtype THEN 'double precision'
                ELSE 'numeric'
            END,
            'state', 'a_' || v_i
        );
        v_i := v_i + 1;
    END LOOP;
    RETURN v_result;
END
$fn$;

COMMENT ON FUNCTION cep._parse_aggregates(regclass, text[], name[]) IS
'Internal: parse and validate window aggregate texts against a table; returns one JSON '
'object per aggregate (fn, col, alias, type, state_type, state column).';
