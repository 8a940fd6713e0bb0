"""Scale-out over logical replication (issue 9): slice publications on the ingest server,
replica streams on workers, mergeable window partials, alerts imported into one hub.

The fast tests run on the session cluster (a replicated row is an insert under
session_replication_role = replica, which is what the apply worker does). The slow tests start
three clusters (ingest + two workers, loopback only, wal_level = logical), stream a generated
workload through real publications and subscriptions (initial copy and live changes), and
check that matches, assessments, alerts and windows equal a one-server run of the same
statements; one of them stops a worker while events keep coming."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 2, 21, 30, tzinfo=UTC)

TX = """
CREATE TABLE public.tx (
    id bigint PRIMARY KEY, user_id integer NOT NULL, amount numeric(12, 2) NOT NULL,
    location text NOT NULL, created_at timestamptz NOT NULL);
"""

# The seed's four rules, a pattern, windows by key and global ones (one grouped by a column
# that is not the key): what every server of a test defines on its stream "tx".
FEATURES = """
SELECT cep.create_window('tx_user', 'tx', 'tumbling', '10 minutes', group_by => '{user_id}',
    aggregates => '{count(*), sum(amount), max(amount), count(distinct location)}');
SELECT cep.create_window('tx_all', 'tx', 'hopping', '15 minutes', '5 minutes',
    aggregates => '{count(*), sum(amount), avg(amount), min(amount), max(amount),
                    count(distinct location), count(distinct user_id) AS users}');
SELECT cep.create_window('tx_loc', 'tx', 'tumbling', '10 minutes', group_by => '{location}',
    aggregates => '{count(*), avg(amount), min(created_at), count(distinct user_id)}');
INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES
  ('tx', 'high_frequency', 'threshold',
   '{"metric": "count", "window": "1 hour", "op": ">", "value": 10}', 0.8),
  ('tx', 'large_amount', 'threshold', '{"field": "amount", "op": ">", "value": 10000}', 0.6),
  ('tx', 'night_time', 'pattern',
   '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}', 0.4),
  ('tx', 'location_change', 'pattern', '{"changed": "location", "window": "5 minutes"}', 0.7);
SELECT cep.set_risk_policy('tx', 'sum', medium => 0.4, high => 0.7, block => 0.9);
SELECT cep.create_pattern('small_small_big', 'tx', 's s+ b',
    '{"s": "amount < 100", "b": "amount > 800"}', within => '20 minutes');
"""

LATENESS = "2 minutes"


def gen_events(rng: random.Random, n: int, users: int = 160, first_id: int = 1) -> list[tuple]:
    """Transactions in time order with disorder of up to 60 s (within the 2-minute lateness, so
    no event is late on any server), a few busy users, large amounts, location changes."""
    out, t = [], BASE
    for i in range(first_id, first_id + n):
        t += dt.timedelta(seconds=rng.choice([0, 1, 2, 3]))
        et = t - dt.timedelta(seconds=rng.randint(0, 60) if rng.random() < 0.3 else 0)
        user = rng.randrange(8) if rng.random() < 0.25 else rng.randrange(users)
        amount = Decimal(rng.choice([rng.randint(1, 99)] * 3 + [rng.randint(100, 700),
                                    rng.randint(801, 1500), rng.randint(10001, 20000)]))
        loc = rng.choice(["nyc", "nyc", "nyc", "sf", "ldn"])
        out.append((i, user, amount.quantize(Decimal("0.01")), loc, et))
    return out


def statements(rng: random.Random, rows: list[tuple]):
    i = 0
    while i < len(rows):
        size = rng.choice([1, 1, 2, 5, 17, 60, 150])
        yield rows[i:i + size]
        i += size


def insert(conn, rows):
    conn.execute(
        "INSERT INTO public.tx (id, user_id, amount, location, created_at) "
        "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::numeric[], %s::text[], "
        "%s::timestamptz[])", [list(c) for c in zip(*rows)])


# -- fast tests on the session cluster ---------------------------------------------------------

KEY_TYPES = [("integer", "g"), ("bigint", "g * 7919"), ("smallint", "g % 300"),
             ("text", "'user ' || g"), ("varchar(20)", "'u' || g"), ("char(6)", "'c' || g"),
             ("uuid", "md5(g::text)::uuid")]


@pytest.mark.parametrize("key_type, key_expr", KEY_TYPES)
def test_slices_hold_every_key_exactly_once(conn, key_type, key_expr):
    conn.execute(f"CREATE TABLE public.ev (id bigint PRIMARY KEY, k {key_type} NOT NULL, "
                 "t timestamptz NOT NULL)")
    conn.execute(f"INSERT INTO public.ev SELECT g, {key_expr}, now() "
                 "FROM generate_series(1, 3000) AS g")
    pubs = conn.execute(
        "SELECT * FROM cep.create_slice_publications('public.ev', 'k', 3)").fetchall()
    assert [(s, p) for s, p, _ in pubs] == [(i, f"ev_slice_{i}_of_3") for i in range(3)]
    # insert-only publications of the table, with the row filter that was returned
    for slice_, pub, filt in pubs:
        row = conn.execute(
            "SELECT p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, t.rowfilter "
            "FROM pg_publication AS p JOIN pg_publication_tables AS t ON t.pubname = p.pubname "
            "WHERE p.pubname = %s AND t.tablename = 'ev'", (pub,)).fetchone()
        assert row == (True, False, False, False, filt)
    counts = [conn.execute(f"SELECT count(*), count(DISTINCT k) FROM public.ev WHERE {f}")
              .fetchone() for _, _, f in pubs]
    assert sum(c[0] for c in counts) == 3000
    assert sum(c[1] for c in counts) == conn.execute(
        "SELECT count(DISTINCT k) FROM public.ev").fetchone()[0]
    assert all(c[0] > 600 for c in counts), counts      # the hash spreads the keys
    # every row is in exactly one slice
    assert conn.execute(
        "SELECT count(*) FROM public.ev WHERE (" + ")::int + (".join(f for _, _, f in pubs)
        + ")::int <> 1").fetchone()[0] == 0


def test_slice_publication_errors(conn):
    conn.execute(TX)
    conn.execute("CREATE TABLE public.loose (id bigint, k integer)")
    conn.execute("CREATE DOMAIN public.dom_key AS integer")
    conn.execute("CREATE TABLE public.domk (id bigint, k public.dom_key NOT NULL)")
    conn.execute("CREATE VIEW public.v AS SELECT * FROM public.tx")
    conn.execute("CREATE TABLE public.parted (id bigint, k integer NOT NULL, t timestamptz) "
                 "PARTITION BY RANGE (t)")
    conn.execute("CREATE TABLE public.parted_1 PARTITION OF public.parted "
                 "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
    conn.execute("CREATE PUBLICATION tx_slice_2_of_3 FOR TABLE public.tx")
    cases = [
        ("'public.tx', 'user_id', 0", "22023", "slices must be between 1 and 1024"),
        ("'public.tx', 'user_id', NULL", "22023", "slices must be between 1 and 1024"),
        ("'public.tx', 'user_id', 5000", "22023", "slices must be between 1 and 1024"),
        ("'public.tx', NULL, 2", "22023", "key_column must not be NULL"),
        ("NULL, 'user_id', 2", "22023", "source must not be NULL"),
        ("'public.tx', 'nope', 2", "42703", 'key_column "nope" does not exist in public.tx'),
        ("'public.tx', 'amount', 2", "42804", 'key_column "amount" has type numeric'),
        ("'public.domk', 'k', 2", "42804", 'key_column "k" has type public.dom_key'),
        ("'public.loose', 'k', 2", "22023", 'key_column "k" of public.loose must be NOT NULL'),
        ("'public.v', 'user_id', 2", "42809", "source public.v is not a table"),
        ("'public.parted_1', 'k', 2", "42809", "source public.parted_1 is a partition"),
        ("'public.tx', 'user_id', 2, ''", "42622", "invalid prefix"),
        ("'public.tx', 'user_id', 2, repeat('x', 60)", "42622", "invalid prefix"),
        ("'public.tx', 'user_id', 3", "42710", 'publication "tx_slice_2_of_3" already exists'),
    ]
    for args, state, msg in cases:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"SELECT * FROM cep.create_slice_publications({args})")
        assert exc.value.sqlstate == state, args
        assert msg in str(exc.value), (args, str(exc.value))
    # nothing half-made: slices 0 and 1 of the failed call are gone with it
    assert [r[0] for r in conn.execute("SELECT pubname FROM pg_publication")] == [
        "tx_slice_2_of_3"]
    # a partitioned table is published through its root, with its own row filter
    got = conn.execute("SELECT * FROM cep.create_slice_publications('public.parted', 'k', 2, "
                       "'p')").fetchall()
    assert [g[1] for g in got] == ["p_0_of_2", "p_1_of_2"]
    assert conn.execute("SELECT bool_and(pubviaroot) FROM pg_publication "
                        "WHERE pubname LIKE 'p\\_%'").fetchone()[0]


def replicate(conn, rows):
    """Insert ROWS the way the apply worker applies one remote transaction: one by one, as
    session_replication_role = replica, in one transaction."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for r in rows:
            insert(conn, [r])


def queue(conn):
    return conn.execute("SELECT ids::text, events FROM cep.stream_queue ORDER BY seq").fetchall()


@pytest.mark.parametrize("batch, calls", [
    # (max_rows, events applied, batches): a transaction is never split, the first is whole
    ("transaction", [(5, 7, 1), (12, 5, 1), (10, 10, 1), (3, 3, 3), (None, 12, 12)]),
    # whole entries up to max_rows (at least one), all in one batch
    ("merged", [(5, 5, 1), (12, 12, 1), (1, 1, 1), (4, 4, 1), (None, 15, 1)]),
])
def test_replica_stream_queues_each_replicated_row_once(conn, batch, calls):
    conn.execute(TX)
    rng = random.Random(3)
    rows = gen_events(rng, 40)
    insert(conn, rows[:3])                     # already there when the stream is attached
    assert conn.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', "
                        "'user_id', allowed_lateness => %s, batch => %s)",
                        (LATENESS, batch)).fetchone()[0] == 1
    assert queue(conn) == [("{[1,4)}", 3)]
    conn.execute("SELECT cep.create_window('tx_n', 'tx', 'tumbling', '1 hour', "
                 "aggregates => '{count(*), sum(amount)}')")
    # (creating the window applied the queued rows first, then backfilled: each counted once)
    assert queue(conn) == []
    trig = conn.execute("SELECT tgname, tgenabled, tgtype & 1 = 1 FROM pg_trigger "
                        "WHERE tgrelid = 'public.tx'::regclass ORDER BY 1").fetchall()
    assert trig == [("cep_replica_ingest", "R", True), ("cep_stream_ingest", "O", False)]
    replicate(conn, rows[3:10])                # a replicated transaction: one entry per row
    insert(conn, rows[10:15])                  # inserted on the worker: one entry per statement
    replicate(conn, rows[15:25])
    for r in rows[25:40]:                      # single-row transactions
        replicate(conn, [r])
    q = queue(conn)
    assert [e for _, e in q] == [1] * 7 + [5] + [1] * 25
    assert q[7][0] == "{[11,16)}"
    assert conn.execute("SELECT count(DISTINCT txid) FROM cep.stream_queue").fetchone()[0] == 18
    done = 3
    for max_rows, applied, batches in calls:
        before = conn.execute("SELECT sum(batches) FROM cep.stream_log").fetchone()[0]
        assert conn.execute("SELECT cep.process_stream('tx', %s)",
                            (max_rows or 1000,)).fetchone()[0] == applied, max_rows
        done += applied
        assert conn.execute("SELECT sum(batches), sum(events) FROM cep.stream_log").fetchone(
        ) == (before + batches, done), max_rows
    assert queue(conn) == []
    st = conn.execute("SELECT events_total, late_events, mode FROM cep.stream_stats").fetchone()
    assert st == (40, 0, "async")
    assert conn.execute("SELECT sum(count), sum(sum_amount) FROM tx_n").fetchone() == (
        40, sum(r[2] for r in rows))
    # the stream stays asynchronous
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cep.set_stream_mode('tx', 'sync')")
    assert exc.value.sqlstate == "55000" and "replica stream" in str(exc.value)
    conn.execute("SELECT cep.set_stream_mode('tx', 'async')")      # no change: fine
    # drop_stream removes both triggers and every generated function
    conn.execute("SELECT cep.drop_stream('tx')")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.tx'::regclass"
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ "
                        "'^_(ingest|process|replica)_[0-9]+$'").fetchone()[0] == 0


def test_transaction_batches_equal_the_one_server_statements(conn):
    """Replicated transactions applied in any schedule give what the statements gave on one
    server (here: a synchronous stream on another table with the same definitions)."""
    rng = random.Random(11)
    rows = gen_events(rng, 1500)
    stmts = list(statements(rng, rows))
    conn.execute(TX)
    conn.execute(TX.replace("public.tx", "public.rep"))
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', "
                 "allowed_lateness => %s)", (LATENESS,))
    conn.execute("SELECT cep.attach_replica_stream('rep', 'public.rep', 'created_at', "
                 "'user_id', allowed_lateness => %s)", (LATENESS,))
    conn.execute(FEATURES)
    conn.execute(FEATURES.replace("'tx'", "'rep'").replace("'tx_", "'rep_").replace(
        "('tx'", "('rep'").replace("small_small_big", "rep_ssb").replace(
        "'high_frequency'", "'r1'").replace("'large_amount'", "'r2'").replace(
        "'night_time'", "'r3'").replace("'location_change'", "'r4'"))
    for s in stmts:
        insert(conn, s)
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("INSERT INTO public.rep SELECT * FROM public.tx WHERE id = ANY(%s)",
                         ([r[0] for r in s],))
        if rng.random() < 0.2:
            conn.execute("SELECT cep.process_stream('rep', %s)", (rng.choice([1, 50, 400]),))
    conn.execute("SELECT cep.process_stream('rep', 100000)")
    for st in ("tx", "rep"):
        conn.execute("SELECT cep.advance_watermark(%s)", (st,))

    def rel(q, stream):
        return sorted(r[0] for r in conn.execute(q, (stream,)))

    ra = ("SELECT (to_jsonb(a) - %s::text[])::text FROM cep.risk_assessments AS a "
          "WHERE a.stream = %%s" % "'{assessment_id, assessed_at, stream, rule_set_id, "
          "triggered_rules, shadow_score, rule_versions}'")
    assert rel(ra, "tx") == rel(ra, "rep") and len(rel(ra, "tx")) > 500
    m = ("SELECT jsonb_build_array(m.partition_key, m.first_time, m.last_time, m.event_ids, "
         "m.classifiers)::text FROM cep.matches AS m WHERE m.pattern = %s")
    assert rel(m, "small_small_big") == rel(m, "rep_ssb") and len(rel(m, "rep_ssb")) > 20
    for w, group in (("user", ["user_id"]), ("all", []), ("loc", ["location"])):
        assert view_rows(conn, f"tx_{w}", group) == view_rows(conn, f"rep_{w}", group), w


@pytest.mark.parametrize("bad, state", [
    ("(900, 1, 'NaN', 'x', now())", "22003"),
    ("(900, 1, 5, 'x', 'infinity')", "22008"),
    ("(900, 1, 5, 'x', now() + interval '3 days')", "22008"),
])
def test_replicated_bad_row_is_refused(conn, bad, state):
    """The apply worker gets the writer's error (the subscription stops at that transaction
    until it is fixed or skipped): nothing is queued or kept."""
    conn.execute(TX)
    conn.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', 'user_id')")
    with pytest.raises(psycopg.Error) as exc, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(f"INSERT INTO public.tx VALUES {bad}")
    assert exc.value.sqlstate == state
    assert queue(conn) == []
    assert conn.execute("SELECT count(*) FROM public.tx").fetchone()[0] == 0


def test_rows_replicated_while_a_batch_is_applied_stay_unprocessed(server, dbname, conn):
    """The apply worker commits a row while the worker applies a batch: the later statements
    of the processing function see it, and it counts for nothing until it is processed."""
    conn.execute(TX)
    conn.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', 'user_id')")
    conn.execute("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES "
                 "('tx', 'two', 'threshold', '{\"metric\": \"count\", \"window\": "
                 "\"1 hour\", \"op\": \">=\", \"value\": 2}', 0.8)")
    conn.execute("SELECT cep.create_pattern('slow', 'tx', 'a', "
                 "'{\"a\": \"pg_sleep(0.5) IS NOT NULL AND amount > 0\"}')")
    replicate(conn, [(1, 7, Decimal(5), "nyc", BASE)])
    t = threading.Thread(target=lambda: server.connect(dbname).execute(
        "SELECT cep.process_stream('tx')"))
    t.start()
    deadline = time.monotonic() + 10
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND wait_event = 'PgSleep'", (dbname,)).fetchone()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    replicate(conn, [(2, 7, Decimal(5), "nyc", BASE - dt.timedelta(minutes=1))])
    t.join()
    assert [e for _, e in queue(conn)] == [1]
    conn.execute("SELECT cep.process_stream('tx')")
    assert conn.execute("SELECT count(*) FROM cep.risk_assessments").fetchone()[0] == 0
    assert conn.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 2


def test_partitioned_replica_stream(conn):
    """A partitioned worker table: the row trigger is cloned to every partition, those made
    later included, enabled as REPLICA like the parent's."""
    conn.execute("CREATE TABLE public.pt (id bigint NOT NULL, k integer NOT NULL, "
                 "t timestamptz NOT NULL, PRIMARY KEY (id, t)) PARTITION BY RANGE (t)")
    conn.execute("CREATE TABLE public.pt_1 PARTITION OF public.pt "
                 "FOR VALUES FROM ('2026-01-01') TO ('2026-06-01')")
    conn.execute("SELECT cep.attach_replica_stream('pt', 'public.pt', 't', 'k', 'id')")
    conn.execute("SELECT cep.create_window('pt_n', 'pt', 'tumbling', '1 day', "
                 "aggregates => '{count(*)}')")
    conn.execute("CREATE TABLE public.pt_2 PARTITION OF public.pt "
                 "FOR VALUES FROM ('2026-06-01') TO ('2027-01-01')")
    assert conn.execute(
        "SELECT array_agg(tgrelid::regclass::text || ':' || tgenabled::text ORDER BY 1) "
        "FROM pg_trigger WHERE tgname = 'cep_replica_ingest'").fetchone()[0] == [
        "pt:R", "pt_1:R", "pt_2:R"]
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for i, t in enumerate(["2026-03-01", "2026-07-01", "2026-07-02"], start=1):
            conn.execute("INSERT INTO public.pt VALUES (%s, 1, %s)", (i, t))
    assert [e for _, e in queue(conn)] == [1, 1, 1]
    assert conn.execute("SELECT cep.process_stream('pt')").fetchone()[0] == 3
    assert conn.execute("SELECT sum(count) FROM pt_n").fetchone()[0] == 3


def test_attach_replica_stream_errors(conn):
    conn.execute(TX)
    cases = [
        ("'tx', 'public.tx', 'created_at', NULL", "22023", "key_column must not be NULL"),
        ("'tx', 'public.tx', 'created_at', 'user_id', queue_existing => NULL", "22023",
         "queue_existing"),
        ("'tx', 'public.tx', 'nope', 'user_id'", "42703", 'time_column "nope" does not exist'),
        ("'tx', 'public.tx', 'created_at', 'nope'", "42703", 'key_column "nope" does not exist'),
    ]
    for args, state, msg in cases:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"SELECT cep.attach_replica_stream({args})")
        assert exc.value.sqlstate == state, args
        assert msg in str(exc.value), (args, str(exc.value))
    with pytest.raises(psycopg.Error) as exc, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', "
                     "'user_id')")
    assert exc.value.sqlstate == "25000"
    # nothing half-made
    assert conn.execute("SELECT count(*) FROM cep.streams").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.tx'::regclass"
                        ).fetchone()[0] == 0
    # queue_existing => false leaves the rows already there out
    insert(conn, gen_events(random.Random(1), 5))
    conn.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', 'user_id', "
                 "queue_existing => false)")
    assert queue(conn) == []


def view_rows(conn, view, group_by):
    """A window view as merge_window_partials rows: (start, end, group json, aggregates json,
    is_final), as texts."""
    cols = ["window_start", "window_end", "is_final", *group_by]
    g = ", ".join(f"'{c}', v.{c}" for c in group_by)
    return sorted(conn.execute(
        f"SELECT v.window_start::text, v.window_end::text, jsonb_build_object({g})::text, "
        f"(to_jsonb(v) - %s::text[])::text, v.is_final FROM {view} AS v", (cols,)).fetchall())


def merged_rows(conn, docs_sql):
    return sorted(conn.execute(
        "SELECT window_start::text, window_end::text, group_values::text, aggregates::text, "
        f"is_final FROM cep.merge_window_partials({docs_sql})").fetchall())


def test_window_partials_merge_to_the_one_server_window(conn):
    """Two streams each holding the events of some keys, one holding all of them: merging the
    two halves' partials gives the whole stream's window rows, every aggregate kind."""
    aggs = ("'{count(*), count(f), sum(amount), sum(n), sum(f), avg(amount), avg(n), min(amount),"
            " max(f), min(created_at), max(location), count(distinct location), "
            "count(distinct n) AS ns}'")
    rng = random.Random(5)
    rows = [(i, u, a, loc, t, rng.choice([None, 1, 2, 3]), rng.choice([None, 0.5, 0.25, 2.0]))
            for (i, u, a, loc, t) in gen_events(rng, 600)]
    for name in ("whole", "half_a", "half_b"):
        conn.execute(f"CREATE TABLE public.{name} (id bigint PRIMARY KEY, user_id integer NOT NULL,"
                     " amount numeric(12, 2), location text, created_at timestamptz NOT NULL,"
                     " n integer, f float8)")
        conn.execute(f"SELECT cep.create_stream('{name}', 'public.{name}', 'created_at', "
                     f"'user_id', allowed_lateness => '2 minutes')")
        for kind, extra in (("hop", "'hopping', '15 minutes', '5 minutes'"),
                            ("loc", "'tumbling', '10 minutes', group_by => '{location, n}'")):
            conn.execute(f"SELECT cep.create_window('{name}_{kind}', '{name}', {extra}, "
                         f"aggregates => {aggs})")
        conn.execute(f"SELECT cep.create_window('{name}_s', '{name}', 'session', '5 minutes')")
    for stmt in statements(rng, rows):
        for name, part in (("whole", stmt), ("half_a", [r for r in stmt if r[1] % 3 == 0]),
                           ("half_b", [r for r in stmt if r[1] % 3 != 0])):
            if part:
                conn.execute(f"INSERT INTO public.{name} SELECT * FROM unnest(%s::bigint[], "
                             "%s::int[], %s::numeric[], %s::text[], %s::timestamptz[], %s::int[],"
                             " %s::float8[])", [list(c) for c in zip(*part)])
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 0
    for kind, group_by in (("hop", []), ("loc", ["location", "n"])):
        whole = view_rows(conn, f"whole_{kind}", group_by)
        assert len(whole) >= 5
        # one server's own document merges to its view
        assert merged_rows(conn, f"ARRAY[cep.window_partials('whole_{kind}')]") == whole
        got = merged_rows(conn, f"ARRAY[cep.window_partials('half_a_{kind}'), "
                                f"cep.window_partials('half_b_{kind}')]")
        assert [r[:3] + (r[4],) for r in got] == [r[:3] + (r[4],) for r in whole]
        # float sums may differ in the last digits (another order of addition); all else exact
        for g, w in zip(got, whole):
            ga, wa = json.loads(g[3]), json.loads(w[3])
            for k in ga:
                if k == "sum_f":
                    assert ga[k] == pytest.approx(wa[k], rel=1e-12)
                else:
                    assert ga[k] == wa[k], k
        # the halves differ from the whole: the merge did the work
        assert view_rows(conn, f"half_a_{kind}", group_by) != whole
    # finality: a window is final once it is final on every server
    conn.execute("SELECT cep.advance_watermark('half_a')")
    got = merged_rows(conn, "ARRAY[cep.window_partials('half_a_hop'), "
                            "cep.window_partials('half_b_hop')]")
    assert not all(r[4] for r in got) and any(r[4] for r in got)
    conn.execute("SELECT cep.advance_watermark('half_b')")
    got = merged_rows(conn, "ARRAY[cep.window_partials('half_a_hop'), "
                            "cep.window_partials('half_b_hop')]")
    assert all(r[4] for r in got)
    # since: only the windows that end after it
    last = conn.execute("SELECT max(window_end) - interval '10 minutes' FROM whole_hop"
                        ).fetchone()[0]
    doc = conn.execute("SELECT cep.window_partials('whole_hop', %s)", (last,)).fetchone()[0]
    assert [r["window_end"] for r in doc["rows"]] == [
        r[0].isoformat() for r in conn.execute(
            "SELECT window_end FROM whole_hop WHERE window_end > %s ORDER BY window_start",
            (last,))]


def test_window_partials_errors(conn):
    conn.execute(TX)
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id')")
    conn.execute("SELECT cep.create_window('w1', 'tx', 'tumbling', '1 hour')")
    conn.execute("SELECT cep.create_window('w2', 'tx', 'tumbling', '2 hours')")
    conn.execute("SELECT cep.create_window('ws', 'tx', 'session', '5 minutes')")
    cases = [
        ("SELECT cep.window_partials('nope')", "42704", 'window "nope" does not exist'),
        ("SELECT cep.window_partials(NULL)", "22023", "name must not be NULL"),
        ("SELECT cep.window_partials('w1', NULL)", "22023", "since"),
        ("SELECT cep.window_partials('ws')", "22023", "session window"),
        ("SELECT * FROM cep.merge_window_partials(NULL)", "22023", "at least one document"),
        ("SELECT * FROM cep.merge_window_partials('{}')", "22023", "at least one document"),
        ("SELECT * FROM cep.merge_window_partials(ARRAY['{\"rows\": []}'::jsonb])", "22023",
         "partials[1] is not a document of cep.window_partials"),
        ("SELECT * FROM cep.merge_window_partials(ARRAY[cep.window_partials('w1'), "
         "cep.window_partials('w2')])", "22023", "partials[2] is of another window definition"),
        ("SELECT * FROM cep.merge_window_partials(ARRAY[jsonb_set(cep.window_partials('w1'), "
         "'{aggregates,0,fn}', '\"median\"')])", "22023", "unknown aggregate function 'median'"),
        ("SELECT * FROM cep.merge_window_partials(ARRAY[jsonb_set(cep.window_partials('w1'), "
         "'{aggregates,0,state_type}', '\"no_such_type\"')])", "22023", "is not one of"),
    ]
    for q, state, msg in cases:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(q)
        assert exc.value.sqlstate == state, q
        assert msg in str(exc.value), (q, str(exc.value))


def alert_json(conn, n, first_id=1, stream="tx"):
    return json.dumps([{
        "alert_id": first_id + i, "source_kind": "rule", "source_name": "risk", "stream": stream,
        "partition_key": str(i % 3), "event_id": 100 + i, "severity": "high", "score": 0.8,
        "message": f"alert {i}", "details": {"i": i}, "created_at": "2026-03-02T21:30:00+00:00",
        "txid": "1234"} for i in range(n)])


def test_import_alerts_stores_each_worker_alert_once(conn, connect):
    conn.execute("SELECT cep.create_consumer('app')")
    assert conn.execute("SELECT cep.import_alerts('w1', %s::jsonb)",
                        (alert_json(conn, 5),)).fetchone()[0] == 5
    # a redelivery (the acknowledgement was lost) and a batch that overlaps it
    assert conn.execute("SELECT cep.import_alerts('w1', %s::jsonb)",
                        (alert_json(conn, 5),)).fetchone()[0] == 0
    assert conn.execute("SELECT cep.import_alerts('w1', %s::jsonb)",
                        (alert_json(conn, 4, first_id=4),)).fetchone()[0] == 2
    # the same ids from another worker are other alerts
    assert conn.execute("SELECT cep.import_alerts('w2', %s::jsonb)",
                        (alert_json(conn, 3),)).fetchone()[0] == 3
    assert conn.execute("SELECT cep.import_alerts('w2', '[]')").fetchone()[0] == 0
    rows = conn.execute("SELECT i.origin, i.origin_alert_id, a.message, a.details, "
                        "a.created_at = '2026-03-02 21:30+00' FROM cep.imported_alerts AS i "
                        "JOIN cep.alerts AS a USING (alert_id) ORDER BY 1, 2").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("w1", i) for i in range(1, 8)] + [
        ("w2", i) for i in range(1, 4)]
    assert rows[0][2:] == ("alert 0", {"i": 0}, True)
    # the hub's consumers get each once
    got = [r[0] for r in conn.execute("SELECT alert_id FROM cep.poll_alerts('app', 100)")]
    assert len(got) == 10 == len(set(got))
    # two collectors importing the same alerts at once: stored once
    other = connect(autocommit=False)
    other.execute("SELECT cep.import_alerts('w3', %s::jsonb)", (alert_json(conn, 3),))
    res = []
    t = threading.Thread(target=lambda: res.append(conn.execute(
        "SELECT cep.import_alerts('w3', %s::jsonb)", (alert_json(conn, 3),)).fetchone()[0]))
    t.start()
    time.sleep(0.3)
    other.commit()
    t.join()
    assert res == [0]
    assert conn.execute("SELECT count(*) FROM cep.imported_alerts WHERE origin = 'w3'"
                        ).fetchone()[0] == 3
    for bad, state in (("NULL, '[]'", "22023"), ("'', '[]'", "22023"),
                       ("'w1', NULL", "22023"), ("'w1', '{}'", "22023"),
                       ("'w1', '[{\"message\": \"x\"}]'", "22023"), ("'w1', '[1]'", "22023")):
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"SELECT cep.import_alerts({bad})")
        assert exc.value.sqlstate == state, bad


# -- three clusters: ingest + two workers over logical replication ----------------------------

REPLICATION = {
    "wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
    "max_logical_replication_workers": "6", "max_worker_processes": "16",
}
VOLATILE = ["alert_id", "created_at", "txid", "assessment_id", "assessed_at", "match_id",
            "detected_at", "arrived_at", "logged_at"]

# The collector of the README, run on the hub as written.
COLLECT = (Path(__file__).resolve().parent.parent / "docs" / "collect_alerts.sql").read_text()


def tcp_dsn(cluster, db):
    return f"host=127.0.0.1 port={cluster.port} dbname={db} user=postgres"


class ScaleOut:
    """An ingest server (database ingest; database reference holds the one-server run) and
    workers (database worker), wired by slice publications and subscriptions."""

    def __init__(self, cluster_factory, workers=2):
        self.ingest = cluster_factory(settings=REPLICATION, tcp=True)
        self.workers = [cluster_factory(settings=REPLICATION, tcp=True) for _ in range(workers)]
        self.ingest.create_database("ingest")
        self.ingest.create_database("reference")
        self.hub = self.ingest.connect("ingest")
        self.ref = self.ingest.connect("reference")
        for c in (self.hub, self.ref):
            c.execute("SET TimeZone = 'UTC'")
            c.execute("CREATE EXTENSION pg_cep")
            c.execute(TX)
        self.hub.execute("CREATE EXTENSION dblink")
        self.hub.execute(COLLECT)
        self.filters = [r[2] for r in self.hub.execute(
            "SELECT * FROM cep.create_slice_publications('public.tx', 'user_id', %s)",
            (workers,))]
        self.ref.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', "
                         "allowed_lateness => %s)", (LATENESS,))
        self.ref.execute(FEATURES)
        self.wconns = []
        for w in self.workers:
            w.create_database("worker")
            c = w.connect("worker")
            c.execute("SET TimeZone = 'UTC'")
            c.execute("CREATE EXTENSION pg_cep")
            c.execute(TX)
            c.execute("SELECT cep.attach_replica_stream('tx', 'public.tx', 'created_at', "
                      "'user_id', allowed_lateness => %s)", (LATENESS,))
            c.execute(FEATURES)
            c.execute("SELECT cep.create_consumer('hub', redelivery_timeout => '1 second')")
            self.wconns.append(c)
        self.hub.execute("SELECT cep.create_consumer('app')")

    def subscribe(self):
        for i, c in enumerate(self.wconns):
            c.execute(f"CREATE SUBSCRIPTION slice_{i} CONNECTION "
                      f"'{tcp_dsn(self.ingest, 'ingest')}' PUBLICATION tx_slice_{i}_of_"
                      f"{len(self.workers)}")

    def insert(self, stmts, copied=False):
        """The same statements into the ingest table and the one-server stream; COPIED: rows
        that reach the workers by the initial copy of their subscription, one transaction,
        hence one statement on the one server."""
        for s in stmts:
            insert(self.hub, s)
            if not copied:
                insert(self.ref, s)
        if copied:
            insert(self.ref, [r for s in stmts for r in s])

    def wait(self, which=None, timeout=60.0):
        """Until every worker (or those in WHICH) holds all rows of its slice."""
        which = range(len(self.workers)) if which is None else which
        want = {i: self.hub.execute(f"SELECT count(*) FROM public.tx WHERE {self.filters[i]}"
                                    ).fetchone()[0] for i in which}
        deadline = time.monotonic() + timeout
        while True:
            have = {i: self.wconns[i].execute("SELECT count(*) FROM public.tx").fetchone()[0]
                    for i in which}
            if have == want:
                return
            assert all(have[i] <= want[i] for i in which), (have, want)
            assert time.monotonic() < deadline, f"subscriptions did not catch up: {have} {want}"
            time.sleep(0.05)

    def process(self, i, rng=None):
        """Process worker I's queue: all of it, or (with RNG) a random part in random pieces."""
        c = self.wconns[i]
        for _ in range(rng.randint(0, 4) if rng else 1000000):
            if not c.execute("SELECT cep.process_stream('tx', %s)",
                             (rng.choice([1, 40, 300, 100000]) if rng else 100000,)
                             ).fetchone()[0] and not rng:
                break

    def collect(self, i):
        self.hub.execute("CALL public.collect_alerts(%s, %s)",
                         (f"worker{i}", tcp_dsn(self.workers[i], "worker")))

    def finish(self):
        self.wait()
        for i, c in enumerate(self.wconns):
            self.process(i)
            c.execute("SELECT cep.advance_watermark('tx')")
            self.collect(i)
        self.ref.execute("SELECT cep.advance_watermark('tx')")

    def merged(self, window):
        return sorted(self.hub.execute(
            "SELECT window_start::text, window_end::text, group_values::text, aggregates::text, "
            "is_final FROM cep.merge_window_partials(ARRAY("
            "    SELECT d.doc FROM unnest(%s::text[]) WITH ORDINALITY AS c (dsn, n)"
            "    CROSS JOIN LATERAL public.dblink(c.dsn, "
            "        format('SELECT cep.window_partials(%%L)', %s::text)) AS d (doc jsonb)"
            "    ORDER BY c.n))",
            ([tcp_dsn(w, "worker") for w in self.workers], window)).fetchall())

    def check(self, final=True):
        """Every result of the workers (the hub's, for alerts and global windows) equals the
        one-server run's; FINAL: also is_final, and nothing is left to do."""
        def rows(conns, rel):
            out = []
            for c in conns:
                out += [r[0] for r in c.execute(
                    f"SELECT (to_jsonb(x) - %s::text[])::text FROM {rel} AS x", (VOLATILE,))]
            return sorted(out)

        ref = self.ref
        # (patterns take an event once the watermark passes it, which each worker's own
        # watermark does later than the one server's: matches are compared at the end)
        for rel in ("cep.matches", "cep.risk_assessments", "tx_user")[0 if final else 1:]:
            want = rows([ref], rel)
            assert rows(self.wconns, rel) == want, rel
            assert want, rel
        # each worker holds a part of the by-key results
        assert all(rows([c], "cep.risk_assessments") for c in self.wconns)
        for window, group_by in (("tx_all", []), ("tx_loc", ["location"])):
            want = view_rows(ref, window, group_by)
            got = self.merged(window)
            if not final:          # each server's watermark is its own until the end
                want, got = [r[:4] for r in want], [r[:4] for r in got]
            assert got == want, window
            assert len(want) > 10
        alerts = rows([self.hub], "cep.alerts")
        if final:
            assert alerts == rows([ref], "cep.alerts")
            assert len(alerts) > 100
            assert {r[0] for r in self.hub.execute(
                "SELECT DISTINCT source_kind FROM cep.alerts")} == {"rule", "pattern"}
        for c in [ref, *self.wconns]:
            assert c.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 0
        # each worker processed each row of its slice exactly once
        total = 0
        for c in self.wconns:
            n = c.execute("SELECT count(*) FROM public.tx").fetchone()[0]
            total += n
            assert c.execute("SELECT events_total, backlog_events FROM cep.stream_stats"
                             ).fetchone() == (n, 0)
            a, distinct = c.execute("SELECT count(*), count(DISTINCT event_id) "
                                    "FROM cep.risk_assessments").fetchone()
            assert a == distinct and 0 < a < n
        assert total == ref.execute("SELECT count(*) FROM public.tx").fetchone()[0]
        # no key on two workers
        keys = [{r[0] for r in c.execute("SELECT DISTINCT user_id FROM public.tx")}
                for c in self.wconns]
        assert not keys[0] & keys[1]
        if final:
            # the hub's consumer sees each alert of every worker once
            got = [r[0] for r in self.hub.execute(
                "SELECT alert_id FROM cep.poll_alerts('app', 100000)")]
            assert len(got) == len(set(got)) == len(alerts)


@pytest.mark.slow
def test_ingest_and_two_workers_equal_one_server(cluster_factory):
    """Rows present before the subscriptions (initial copy) and streamed after (apply), worker
    queues processed in random pieces between catch-ups, alerts collected on the way (once with
    a lost acknowledgement): matches, assessments, alerts, windows by key and merged global
    windows equal the one-server run."""
    rng = random.Random(42)
    so = ScaleOut(cluster_factory)
    stmts = list(statements(rng, gen_events(rng, 5000)))
    so.insert(stmts[:len(stmts) // 4], copied=True)
    so.subscribe()
    # (rows committed before a table sync takes its snapshot come with the copy: wait for it)
    so.wait()
    rest = stmts[len(stmts) // 4:]
    assert len(rest) > 80                          # the checkpoints below are reached
    for j in range(0, len(rest), 20):
        so.insert(rest[j:j + 20])
        so.wait()
        for i in range(len(so.workers)):
            so.process(i, rng)
            if rng.random() < 0.3:
                so.collect(i)
        if j == 40:
            # a collector that stored alerts and died before acknowledging them
            c = so.wconns[0]
            so.process(0)
            polled = c.execute("SELECT coalesce(jsonb_agg(a), '[]') "
                               "FROM cep.poll_alerts('hub', 50) AS a").fetchone()[0]
            assert polled
            so.hub.execute("SELECT cep.import_alerts('worker0', %s)", (json.dumps(polled),))
            time.sleep(1.1)                          # the redelivery timeout
        if j == 60:
            # everything applied so far: the merged windows already equal the one server's
            for i in range(len(so.workers)):
                so.process(i)
            so.check(final=False)
    so.finish()
    so.check()


@pytest.mark.slow
def test_worker_down_catches_up_with_nothing_lost_or_doubled(cluster_factory):
    """A worker crashes (immediate stop) and stays down while the ingest server takes events
    and the other worker goes on; after its restart its subscription resumes where its last
    commit left it: the final results equal the one-server run's."""
    rng = random.Random(7)
    so = ScaleOut(cluster_factory)
    stmts = list(statements(rng, gen_events(rng, 4000)))
    a, b = len(stmts) * 2 // 5, len(stmts) * 4 // 5
    so.subscribe()
    so.insert(stmts[:a // 2])
    so.wait()
    so.process(1, rng)                          # leaves part of its queue for after the crash
    so.insert(stmts[a // 2:a])
    so.wconns[1].close()
    so.workers[1].stop("immediate")
    so.insert(stmts[a:b])
    so.wait(which=[0])
    so.process(0)
    so.collect(0)
    # while it is down, its slice waits in its replication slot on the ingest server (checked
    # there: once restarted, the worker may catch up before any query of ours)
    assert so.hub.execute("SELECT confirmed_flush_lsn < pg_current_wal_lsn() "
                          "FROM pg_replication_slots WHERE slot_name = 'slice_1'").fetchone()[0]
    so.workers[1].start()
    so.wconns[1] = so.workers[1].connect("worker")
    so.wconns[1].execute("SET TimeZone = 'UTC'")
    so.insert(stmts[b:])
    so.finish()
    so.check()
