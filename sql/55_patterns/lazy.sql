-- The lazy pattern engine: which events can end a match, and the key lock of lazy patterns.
-- Invariant: a lazy pattern matches a key only while it holds the key's cep.pattern_keys row
-- FOR UPDATE, and every statement with events some lazy pattern can use holds their keys' rows
-- at least FOR KEY SHARE until it commits; both take their rows in one pass in key order (rows
-- of new keys made first, also in key order), so no statement is matched without the other's
-- events, and statements that each take their rows this way never deadlock.

-- The variables (positions in the pattern's variable list) with which a match can end: those
-- of CHAR instructions whose follow set contains MATCH.
CREATE FUNCTION cep._pattern_final_vars(program jsonb)
RETURNS integer[]
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(array_agg(DISTINCT (program -> 'x' ->> (pc - 1))::integer), '{}')
    FROM generate_series(1, jsonb_array_length(program -> 'op')) AS pc
    WHERE (program -> 'op' ->> (pc - 1))::integer = 1
        AND EXISTS (
            SELECT 1
            FROM generate_series(0, (program -> 'len' ->> (pc - 1))::integer - 1) AS j
            WHERE (program -> 'items' ->> ((program -> 'off' ->> (pc - 1))::integer + j - 1))::integer = 0
        )
$fn$;

COMMENT ON FUNCTION cep._pattern_final_vars(jsonb) IS
'Internal: the positions of the variables a match of a compiled pattern can end with.';

-- "This event can end a match", as SQL over a row e with the stream's columns as "c:<column>",
-- or NULL when a variable a match can end with has no condition or one that reads PREV or
-- another variable's columns (then no test over the event alone can tell).
CREATE FUNCTION cep._pattern_final_sql(pattern_id integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p cep.patterns;
    v_source regclass;
    v_i integer;
    v_d record;
    v_or text [] := '{}'::text [];
BEGIN
    SELECT * INTO STRICT p FROM cep.patterns AS x WHERE x.pattern_id = _pattern_final_sql.pattern_id;
    SELECT s.source INTO STRICT v_source FROM cep.streams AS s WHERE s.stream_id = p.stream_id;
    FOREACH v_i IN ARRAY cep._pattern_final_vars(p.program) LOOP
        IF NOT p.define ? p.variables[v_i] THEN
            RETURN NULL;
        END IF;
        SELECT * INTO v_d FROM cep._pat_define_sql(p.define ->> p.variables[v_i], v_source,
            p.variables, p.variables[v_i]);
        IF v_d.refs <> '{}' OR cardinality(v_d.prevs) > 0 THEN
            RETURN NULL;
        END IF;
        v_or := v_or || format('(%s)', v_d.sql);
    END LOOP;
    RETURN array_to_string(v_or, ' OR ');
END
$fn$;

COMMENT ON FUNCTION cep._pattern_final_sql(integer) IS
'Internal: SQL of "this event can end a match of the pattern" over its own columns, or NULL '
'when the conditions of the variables a match can end with do not tell it from the event alone.';

-- Lock the rows of keys KEYS (sorted, distinct) of a stream's lazy patterns: FOR UPDATE where
-- PROC (the caller matches the key), FOR KEY SHARE elsewhere; rows of keys without one are
-- made first (event time SEEN). True when some key's first event MN that a lazy pattern can
-- use is at or before the furthest point a lazy pattern matched the key to: those events may
-- be late for it (a session that committed while this one waited matched the key past them).
CREATE FUNCTION cep._pattern_lock_keys(
    stream_id integer, keys text[], proc boolean[], mn timestamptz[], seen timestamptz
)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_keys text [] := keys;
    v_proc boolean [] := proc;
    v_mn timestamptz [] := mn;
    v_behind boolean := false;
    v_b boolean;
BEGIN
    LOOP
        -- rows of keys seen for the first time, in key order: a session making the same row
        -- is waited for (its row is the lock until it commits)
        INSERT INTO cep.pattern_keys AS pk (stream_id, k, seen_t)
        SELECT _pattern_lock_keys.stream_id, u.k, seen
        FROM unnest(v_keys) AS u (k)
        WHERE NOT EXISTS (
            -- OFFSET 0: one index probe per key, never a join with every key's row
            SELECT 1 FROM cep.pattern_keys AS x
            WHERE x.stream_id = _pattern_lock_keys.stream_id AND x.k = u.k
            OFFSET 0
        )
        ORDER BY u.k
        ON CONFLICT ON CONSTRAINT pattern_keys_pkey DO NOTHING;
        -- every row, in key order (the nested loop takes them in the order of the sorted keys),
        -- each in its mode; a writer that matches none of its keys (the usual case) takes all
        -- of them FOR KEY SHARE, with one probe per key
        IF NOT true = ANY (v_proc) THEN
            SELECT coalesce(bool_or(x.mn <= b.upto_t), false),
                array_agg(x.k) FILTER (WHERE b.k IS NULL),
                array_agg(false) FILTER (WHERE b.k IS NULL),
                array_agg(x.mn) FILTER (WHERE b.k IS NULL)
            INTO v_b, v_keys, v_proc, v_mn
            FROM (
                SELECT u.k, u.mn
                FROM unnest(v_keys, v_mn) AS u (k, mn)
                ORDER BY u.k
                OFFSET 0
            ) AS x
            LEFT JOIN LATERAL (
                SELECT pk.k, pk.upto_t FROM cep.pattern_keys AS pk
                WHERE pk.stream_id = _pattern_lock_keys.stream_id AND pk.k = x.k
                FOR KEY SHARE
            ) AS b ON true;
            v_behind := v_behind OR v_b;
            EXIT WHEN v_keys IS NULL;
            CONTINUE;
        END IF;
        SELECT coalesce(bool_or(x.mn <= coalesce(a.upto_t, b.upto_t)), false),
            array_agg(x.k) FILTER (WHERE a.k IS NULL AND b.k IS NULL),
            array_agg(x.proc) FILTER (WHERE a.k IS NULL AND b.k IS NULL),
            array_agg(x.mn) FILTER (WHERE a.k IS NULL AND b.k IS NULL)
        INTO v_b, v_keys, v_proc, v_mn
        FROM (
            SELECT u.k, u.proc, u.mn
            FROM unnest(v_keys, v_proc, v_mn) AS u (k, proc, mn)
            ORDER BY u.k
            OFFSET 0
        ) AS x
        LEFT JOIN LATERAL (
            SELECT pk.k, pk.upto_t FROM cep.pattern_keys AS pk
            WHERE pk.stream_id = _pattern_lock_keys.stream_id AND pk.k = x.k AND x.proc
            FOR UPDATE
        ) AS a ON true
        LEFT JOIN LATERAL (
            SELECT pk.k, pk.upto_t FROM cep.pattern_keys AS pk
            WHERE pk.stream_id = _pattern_lock_keys.stream_id AND pk.k = x.k AND NOT x.proc
            FOR KEY SHARE
        ) AS b ON true;
        v_behind := v_behind OR v_b;
        -- a row cep.run_maintenance purged after the first step (it skips rows a session
        -- holds, and this one waited for its commit): made again
        EXIT WHEN v_keys IS NULL;
    END LOOP;
    RETURN v_behind;
END
$fn$;

COMMENT ON FUNCTION cep._pattern_lock_keys(integer, text[], boolean[], timestamptz[], timestamptz) IS
'Internal: take the lazy-pattern key rows of a stream in key order (FOR UPDATE to match a key, '
'FOR KEY SHARE to write its events), making missing ones; true when some key may have events '
'another session already matched past.';
