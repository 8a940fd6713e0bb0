-- The queue of an asynchronous stream: one row per INSERT/COPY statement, written by the
-- statement's trigger in the writer's transaction, holding the statement's event ids as a
-- multirange (contiguous ids collapse into one range). cep.process_stream takes the rows its
-- snapshot sees, in queue order, and deletes each one in the transaction that applies it:
-- a statement whose transaction commits after a later-numbered one is simply taken by a later
-- call, so no statement is skipped or processed twice, whatever the commit order.

CREATE TABLE cep.stream_queue (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    stream_id integer NOT NULL,
    ids int8multirange NOT NULL,
    events integer NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT stream_queue_pkey PRIMARY KEY (seq),
    CONSTRAINT stream_queue_events_check CHECK (events > 0)
);

CREATE INDEX stream_queue_stream_idx ON cep.stream_queue (stream_id, seq);
-- The entries committed after a processing session looked at the queue (cep._unprocessed).
CREATE INDEX stream_queue_txid_idx ON cep.stream_queue (stream_id, txid);

COMMENT ON TABLE cep.stream_queue IS
'Statements of asynchronous streams waiting for cep.process_stream: event ids (a multirange), '
'number of events, time queued and the writer''s transaction (a replica stream queues one row '
'per replicated row; the rows of one transaction form one batch).';
