-- Scale-out over logical replication: slicing a stream's table by key into publications (on the
-- ingest server) and attaching a subscribed slice as a stream (on a worker).
-- Invariant: every row with a key lands in exactly one slice (a built-in immutable hash of the
-- key, modulo the slice count), and a worker queues each row replication brings exactly once:
-- its only trigger that replication fires is one row trigger enabled as REPLICA, which fires
-- for the initial copy and for every applied insert alike.

-- The hash function of a key type for a publication row filter: built-in, immutable (row
-- filters admit only built-in functions and types); NULL for a type with no such hash.
CREATE FUNCTION cep._slice_hash_function(type regtype)
RETURNS regproc
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE type
        WHEN 'smallint'::regtype THEN 'pg_catalog.hashint2'::regproc
        WHEN 'integer'::regtype THEN 'pg_catalog.hashint4'::regproc
        WHEN 'bigint'::regtype THEN 'pg_catalog.hashint8'::regproc
        -- (varchar is text to functions: a binary-compatible cast)
        WHEN 'text'::regtype THEN 'pg_catalog.hashtext'::regproc
        WHEN 'character varying'::regtype THEN 'pg_catalog.hashtext'::regproc
        WHEN 'character'::regtype THEN 'pg_catalog.hashbpchar'::regproc
        WHEN 'uuid'::regtype THEN 'pg_catalog.uuid_hash'::regproc
    END
$fn$;

COMMENT ON FUNCTION cep._slice_hash_function(regtype) IS
'Internal: the built-in hash function of key type TYPE for a publication row filter; NULL '
'when the type has none.';

CREATE FUNCTION cep.create_slice_publications(
    source regclass,
    key_column name,
    slices integer,
    prefix text DEFAULT NULL
)
RETURNS TABLE (slice integer, publication name, row_filter text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_rel record;
    v_att record;
    v_hash regproc;
    v_prefix text;
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'key_column must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF slices IS NULL OR slices NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'slices must be between 1 and 1024, got %', coalesce(slices::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    SELECT c.relkind, c.relispartition, c.relname INTO v_rel
    FROM pg_catalog.pg_class AS c WHERE c.oid = source;
    IF v_rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'source % is not a table', source USING ERRCODE = '42809';
    END IF;
    IF v_rel.relispartition THEN
        RAISE EXCEPTION 'source % is a partition', source
            USING ERRCODE = '42809', HINT = 'Slice the partitioned table instead.';
    END IF;
    SELECT a.atttypid::regtype AS type, a.attnotnull INTO v_att
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = source AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key_column "%" does not exist in %', key_column, source
            USING ERRCODE = '42703';
    END IF;
    v_hash := cep._slice_hash_function(v_att.type);
    IF v_hash IS NULL THEN
        RAISE EXCEPTION 'key_column "%" has type %, which slices cannot hash', key_column, v_att.type
            USING ERRCODE = '42804',
            HINT = 'Slice by a smallint, integer, bigint, text, varchar, char or uuid column '
                '(row filters admit built-in types only, so no domain).';
    END IF;
    IF NOT v_att.attnotnull THEN
        RAISE EXCEPTION 'key_column "%" of % must be NOT NULL', key_column, source
            USING ERRCODE = '22023',
            DETAIL = 'A row with a NULL key matches no slice''s row filter and would reach no worker.',
            HINT = format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', source, key_column);
    END IF;
    v_prefix := coalesce(prefix, v_rel.relname || '_slice');
    IF v_prefix = '' OR v_prefix ~ '[[:cntrl:]]'
        OR octet_length(format('%s_%s_of_%s', v_prefix, slices - 1, slices)) > 63 THEN
        RAISE EXCEPTION 'invalid prefix %: publication names "<prefix>_<slice>_of_<slices>" must '
            'be 1 to 63 bytes without control characters', quote_literal(v_prefix)
            USING ERRCODE = '42622';
    END IF;
    FOR v_slice IN 0 .. slices - 1 LOOP
        slice := v_slice;
        publication := format('%s_%s_of_%s', v_prefix, slice, slices);
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication AS p WHERE p.pubname = publication) THEN
            RAISE EXCEPTION 'publication "%" already exists', publication USING ERRCODE = '42710';
        END IF;
        -- (hash & 2^31-1) is never negative, so the remainder names one slice per key
        EXECUTE format(
            'CREATE PUBLICATION %I FOR TABLE %s WHERE ((((%s(%I) OPERATOR(pg_catalog.&) 2147483647) '
            'OPERATOR(pg_catalog.%%) %s) OPERATOR(pg_catalog.=) %s)) '
            'WITH (publish = %L, publish_via_partition_root = %L)',
            publication, source, v_hash, key_column, slices, v_slice, 'insert',
            CASE WHEN v_rel.relkind = 'p' THEN 'true' ELSE 'false' END);
        SELECT t.rowfilter INTO row_filter
        FROM pg_catalog.pg_publication_tables AS t
        WHERE t.pubname = publication;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION cep.create_slice_publications(regclass, name, integer, text) IS
'On the ingest server: create SLICES insert-only publications of table SOURCE, named '
'<prefix>_<slice>_of_<slices> (prefix defaults to <table>_slice), each with a row filter that '
'keeps the rows whose KEY_COLUMN hashes to that slice (hashint2/4/8, hashtext, hashbpchar or '
'uuid_hash of the key, & 2147483647, modulo SLICES). Every key lands in exactly one slice. '
'Returns each slice, its publication and its row filter.';

CREATE FUNCTION cep.attach_replica_stream(
    name text,
    source regclass,
    time_column name,
    key_column name,
    id_column name DEFAULT NULL,
    allowed_lateness interval DEFAULT '0 seconds',
    max_future_skew interval DEFAULT '1 day',
    notify boolean DEFAULT TRUE,
    notify_channel text DEFAULT 'cep_alerts',
    queue_existing boolean DEFAULT TRUE,
    batch text DEFAULT 'transaction'
)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
    s cep.streams;
    v_rows bigint;
    v_null_ids bigint;
    v_ids int8multirange;
BEGIN
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'key_column must not be NULL'
            USING ERRCODE = '22023',
            HINT = 'A replica stream is keyed by the column its publications slice by.';
    END IF;
    IF batch IS NULL OR batch NOT IN ('transaction', 'merged') THEN
        RAISE EXCEPTION 'batch must be ''transaction'' or ''merged'', got %',
            coalesce(quote_literal(batch), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF queue_existing IS NULL THEN
        RAISE EXCEPTION 'queue_existing must be true or false' USING ERRCODE = '22023';
    END IF;
    IF queue_existing AND current_setting('transaction_isolation') <> 'read committed' THEN
        -- an older snapshot could miss rows that commit before the trigger exists
        RAISE EXCEPTION 'cep.attach_replica_stream with queue_existing must run at READ COMMITTED'
            USING ERRCODE = '25000';
    END IF;
    v_id := cep.create_stream(name, source, time_column, key_column, id_column,
        allowed_lateness, max_future_skew, notify, notify_channel, 'async');
    -- Keep the apply worker out until this commits: the rows already there are queued below,
    -- the rows that come later fire the trigger, and no row does both.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', source);
    UPDATE cep.streams AS x SET replica_batch = batch WHERE x.stream_id = v_id;
    SELECT * INTO STRICT s FROM cep.streams AS x WHERE x.stream_id = v_id;
    PERFORM cep._regenerate_stream(v_id);
    EXECUTE format('CREATE TRIGGER cep_replica_ingest AFTER INSERT ON %s FOR EACH ROW '
        'EXECUTE FUNCTION cep.%I()', source, format('_replica_%s', v_id));
    PERFORM cep._tie_to_extension(NULL, 'cep_replica_ingest', source);
    -- The apply worker runs with session_replication_role = replica: it fires this trigger
    -- and not the statement trigger, which keeps serving inserts made on the worker itself.
    EXECUTE format('ALTER TABLE %s ENABLE REPLICA TRIGGER cep_replica_ingest', source);
    IF queue_existing THEN
        EXECUTE format(
            'SELECT count(*), count(*) FILTER (WHERE x.%I IS NULL), '
            'pg_catalog.range_agg(pg_catalog.int8range(x.%I::bigint, x.%I::bigint, ''[]'')) '
            'FROM %s AS x',
            s.id_column, s.id_column, s.id_column, source)
        INTO v_rows, v_null_ids, v_ids;
        IF v_null_ids > 0 THEN
            RAISE EXCEPTION 'pg_cep: stream %: id column % is NULL', s.name, quote_ident(s.id_column)
                USING ERRCODE = '23502',
                DETAIL = format('%s of the %s rows already in %s have no id', v_null_ids, v_rows,
                    source),
                HINT = 'Fix or delete those rows, or pass queue_existing => false.';
        END IF;
        IF v_rows > 0 THEN
            -- like one COPY of them: processing checks them as it checks any statement
            INSERT INTO cep.stream_queue (stream_id, ids, events) VALUES (v_id, v_ids, v_rows);
        END IF;
    END IF;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION cep.attach_replica_stream(
    text, regclass, name, name, name, interval, interval, boolean, text, boolean, text
) IS
'On a worker: register table SOURCE, the subscriber side of one or more slice publications, as '
'asynchronous stream NAME keyed by KEY_COLUMN (the column the slices hash), with a row trigger '
'enabled as REPLICA that checks and queues every row logical replication brings (initial copy '
'and applied inserts alike); cep.process_stream applies the queue. BATCH ''transaction'': the '
'rows of one replicated transaction are one batch (as the statement that inserted them was on '
'the ingest server, if it committed alone); ''merged'': all the rows one call takes, up to '
'max_rows, are one batch. Rows already in the table are queued as one statement '
'(queue_existing => false leaves them out). Inserts made on the worker itself go through the '
'usual statement trigger. Call it before CREATE SUBSCRIPTION; define windows, rules and '
'patterns as on any stream. Returns the stream id.';
