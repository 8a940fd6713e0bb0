-- Asynchronous streams: cep.process_stream, cep.set_stream_mode.
-- Invariant: a queued statement is applied by the stream's generated processing function (the
-- synchronous ingest body over the statement's rows) and deleted from cep.stream_queue in the
-- same transaction; one session at a time processes a stream (a transaction-scoped advisory
-- lock on the stream id), so statements are applied once each, in the order the processing
-- session's snapshot first sees them, which is their commit order. A replica stream queues
-- one entry per replicated row; the rows of one transaction (or, if so chosen, all the rows
-- taken by one call) are applied together, as one batch.

-- While a queued statement is applied, the rows of the statements queued after it are already
-- in the table; readers of stored rows (trailing rule metrics, pattern matchers) leave them out
-- through these settings, so the result is the one the synchronous stream would give: the ids
-- the processing session found queued (less those it applied since), and the ids of entries
-- committed after it looked (each statement of the processing function sees the rows of
-- transactions that committed since it started, and they are not processed either).
CREATE FUNCTION cep._unprocessed(stream_id integer)
RETURNS int8multirange
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE
        WHEN c.rest IS NULL THEN coalesce(
            (SELECT range_agg(q.ids) FROM cep.stream_queue AS q
                WHERE q.stream_id = _unprocessed.stream_id),
            '{}'::int8multirange)
        ELSE c.rest::int8multirange + coalesce(
            (SELECT range_agg(q.ids) FROM cep.stream_queue AS q
                WHERE q.stream_id = _unprocessed.stream_id
                    AND q.txid >= pg_snapshot_xmin(c.snap::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(q.txid, c.snap::pg_snapshot)),
            '{}'::int8multirange)
    END
    FROM (
        SELECT
            nullif(current_setting(format('cep.unprocessed_%s', _unprocessed.stream_id), true), '')
                AS rest,
            nullif(current_setting(
                format('cep.unprocessed_snapshot_%s', _unprocessed.stream_id), true), '') AS snap
    ) AS c
$fn$;

COMMENT ON FUNCTION cep._unprocessed(integer) IS
'Internal: event ids of an asynchronous stream that are stored but not processed yet.';

-- The condition that leaves out a stream's unprocessed rows, for generated readers of stored
-- rows (alias ALIAS); empty for a synchronous stream, whose stored rows are all processed.
CREATE FUNCTION cep._processed_sql(s cep.streams, alias text, id_column name DEFAULT NULL)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN s.mode = 'async' THEN format(
        ' AND NOT %s.%I::bigint OPERATOR(pg_catalog.<@) (SELECT cep._unprocessed(%s))',
        alias, coalesce(_processed_sql.id_column, s.id_column), s.stream_id) ELSE '' END
$fn$;

COMMENT ON FUNCTION cep._processed_sql(cep.streams, text, name) IS
'Internal: for an asynchronous stream, SQL text " AND NOT <alias>.<id> <@ unprocessed ids" '
'(the id column named ID_COLUMN, by default the stream''s); empty for a synchronous stream.';

-- One batch of a replica stream: the queue entries SEQS, deleted and applied together; REST is
-- what stays unprocessed (hidden from readers of stored rows) after them, returned updated.
CREATE FUNCTION cep._apply_queued(stream_id integer, seqs bigint[], rest int8multirange)
RETURNS int8multirange
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_ids int8multirange;
BEGIN
    WITH gone AS (
        DELETE FROM cep.stream_queue AS x
        WHERE x.seq = ANY (seqs)
        RETURNING x.ids
    )
    SELECT range_agg(gone.ids) INTO v_ids FROM gone;
    rest := rest - coalesce(v_ids, '{}');
    PERFORM set_config(format('cep.unprocessed_%s', stream_id), rest::text, true);
    EXECUTE format('SELECT cep.%I($1)', format('_process_%s', stream_id))
    USING ARRAY(
        SELECT g.id
        FROM unnest(v_ids) AS r (span)
        CROSS JOIN LATERAL generate_series(lower(r.span), upper(r.span) - 1) AS g (id)
    );
    RETURN rest;
END
$fn$;

COMMENT ON FUNCTION cep._apply_queued(integer, bigint[], int8multirange) IS
'Internal: delete the queue entries SEQS of an asynchronous stream and apply their events as '
'one batch, hiding the still unprocessed REST from readers of stored rows; returns REST less '
'the applied events.';

CREATE FUNCTION cep._process_queue(stream_id integer, max_rows bigint, wait boolean)
RETURNS TABLE (statements bigint, events bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_process text := format('cep.%I($1)', format('_process_%s', stream_id));
    v_setting text := format('cep.unprocessed_%s', stream_id);
    v_rest int8multirange;
    v_batch text;
    v_seqs bigint [] := '{}'::bigint [];
    v_n bigint := 0;
    v_txid xid8;
    v_snapshot pg_snapshot;
    q record;
BEGIN
    statements := 0;
    events := 0;
    IF wait THEN
        PERFORM pg_advisory_xact_lock(hashtext('pg_cep process_stream'), stream_id);
    ELSIF NOT pg_try_advisory_xact_lock(hashtext('pg_cep process_stream'), stream_id) THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- what is queued now, and the snapshot that saw it: what commits later stays hidden too
    SELECT coalesce(range_agg(x.ids), '{}'), pg_current_snapshot() INTO v_rest, v_snapshot
    FROM cep.stream_queue AS x
    WHERE x.stream_id = _process_queue.stream_id;
    PERFORM set_config(format('cep.unprocessed_snapshot_%s', stream_id), v_snapshot::text, true);
    SELECT s.replica_batch INTO v_batch FROM cep.streams AS s WHERE s.stream_id = _process_queue.stream_id;
    IF v_batch IS NOT NULL THEN
        -- A replica stream queues one entry per replicated row. Batches: the consecutive
        -- entries of one writer transaction ('transaction': a replicated transaction is applied
        -- as its statements would have been on one server, when they commit one by one), or
        -- all entries taken ('merged'). Entries of a transaction that does not fit in MAX_ROWS
        -- any more wait for the next call; the first batch is taken whole.
        FOR q IN
            SELECT x.seq, x.events, x.txid
            FROM cep.stream_queue AS x
            WHERE x.stream_id = _process_queue.stream_id
            ORDER BY x.seq
        LOOP
            IF v_n > 0 AND v_batch = 'transaction' AND q.txid <> v_txid THEN
                v_rest := cep._apply_queued(stream_id, v_seqs, v_rest);
                statements := statements + cardinality(v_seqs);
                events := events + v_n;
                v_seqs := '{}'::bigint [];
                v_n := 0;
            END IF;
            IF max_rows IS NOT NULL AND events + v_n + q.events > max_rows
                AND (events > 0 OR (v_batch = 'merged' AND v_n > 0)) THEN
                IF v_batch = 'transaction' THEN
                    v_n := 0;
                END IF;
                EXIT;
            END IF;
            v_txid := q.txid;
            v_seqs := v_seqs || q.seq;
            v_n := v_n + q.events;
        END LOOP;
        IF v_n > 0 THEN
            v_rest := cep._apply_queued(stream_id, v_seqs, v_rest);
            statements := statements + cardinality(v_seqs);
            events := events + v_n;
        END IF;
        PERFORM set_config(v_setting, '', true);
        PERFORM set_config(format('cep.unprocessed_snapshot_%s', stream_id), '', true);
        RETURN NEXT;
        RETURN;
    END IF;
    FOR q IN
        SELECT x.seq, x.ids, x.events
        FROM cep.stream_queue AS x
        WHERE x.stream_id = _process_queue.stream_id
        ORDER BY x.seq
    LOOP
        EXIT WHEN max_rows IS NOT NULL AND events > 0 AND events + q.events > max_rows;
        DELETE FROM cep.stream_queue AS x WHERE x.seq = q.seq;
        v_rest := v_rest - q.ids;
        PERFORM set_config(v_setting, v_rest::text, true);
        EXECUTE format('SELECT %s', v_process)
        USING ARRAY(
            SELECT g.id
            FROM unnest(q.ids) AS r (span)
            CROSS JOIN LATERAL generate_series(lower(r.span), upper(r.span) - 1) AS g (id)
        );
        statements := statements + 1;
        events := events + q.events;
    END LOOP;
    PERFORM set_config(v_setting, '', true);
    PERFORM set_config(format('cep.unprocessed_snapshot_%s', stream_id), '', true);
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION cep._process_queue(integer, bigint, boolean) IS
'Internal: apply the queued statements of an asynchronous stream, in queue order, up to '
'MAX_ROWS events (at least one statement; NULL = all), one batch per statement; for a replica '
'stream, one batch per transaction or (batch ''merged'') one for all entries taken. WAIT for a '
'concurrent processing session or return (0, 0) at once.';

CREATE FUNCTION cep.process_stream(stream text, max_rows bigint DEFAULT 100000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.stream_id = cep._stream_id(stream);
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be a positive number, got %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF s.mode <> 'async' THEN
        RAISE EXCEPTION 'stream "%" is synchronous: its events are processed on insert', s.name
            USING ERRCODE = '55000',
            HINT = 'cep.set_stream_mode(stream, ''async'') makes it asynchronous.';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may process it', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    RETURN (SELECT p.events FROM cep._process_queue(s.stream_id, max_rows, false) AS p);
END
$fn$;

COMMENT ON FUNCTION cep.process_stream(text, bigint) IS
'Apply the queued statements of asynchronous STREAM through its generated code (windows, '
'patterns, rules, alerts, recommendations), in commit order, up to MAX_ROWS events per call '
'(at least one statement), each deleted from the queue in this transaction. Returns the number '
'of events processed; 0 when the queue is empty or another session is processing the stream. '
'Call it from any scheduler; cep.run_maintenance() calls it too.';

CREATE FUNCTION cep.set_stream_mode(stream text, mode text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s cep.streams;
BEGIN
    SELECT * INTO s FROM cep.streams AS x WHERE x.stream_id = cep._stream_id(stream);
    IF mode IS NULL OR mode NOT IN ('sync', 'async') THEN
        RAISE EXCEPTION 'mode must be ''sync'' or ''async'', got %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF NOT pg_has_role(current_user, s.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'only the owner of stream % (%) may change it', s.name, s.owner
            USING ERRCODE = '42501';
    END IF;
    IF s.mode = set_stream_mode.mode THEN
        RETURN;
    END IF;
    IF s.replica_batch IS NOT NULL THEN
        -- its replicated rows reach it through the row trigger, which only queues
        RAISE EXCEPTION 'stream "%" is a replica stream: it stays asynchronous', s.name
            USING ERRCODE = '55000',
            HINT = 'Process it with cep.process_stream (or cep.run_maintenance()).';
    END IF;
    -- Writers wait until the switch commits; the statements they queued before are applied
    -- first, so no statement is processed by both paths or by neither.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', s.source);
    IF s.mode = 'async' THEN
        PERFORM cep._process_queue(s.stream_id, NULL, true);
    END IF;
    UPDATE cep.streams AS x SET mode = set_stream_mode.mode WHERE x.stream_id = s.stream_id;
    -- pattern matchers read stored rows: rebuilt to see (or no longer see) the queue
    PERFORM cep._pattern_install(p.pattern_id)
    FROM cep.patterns AS p WHERE p.stream_id = s.stream_id AND p.kind <> 'absence';
    PERFORM cep._regenerate_stream(s.stream_id);
END
$fn$;

COMMENT ON FUNCTION cep.set_stream_mode(text, text) IS
'Switch STREAM between ''sync'' (processed in the inserting transaction) and ''async'' (queued, '
'processed by cep.process_stream). Waits for running inserts; switching to sync first applies '
'every queued statement.';
