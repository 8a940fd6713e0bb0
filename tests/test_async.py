"""Asynchronous streams: the writer only queues (one row per statement), cep.process_stream
applies the queue through the same generated code, and every derived result (windows, rules,
alerts, patterns, recommendations, late events, counters) equals the synchronous stream's over
the same statements. Also: snapshot-cut batches under concurrency, mode switches, maintenance,
monitoring, bad input, and a crash during processing."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 2, 21, 30, tzinfo=UTC)

TX_DDL = """
CREATE TABLE public.tx (
    id bigint PRIMARY KEY, user_id integer NOT NULL, amount numeric(12, 2) NOT NULL,
    location text, status text DEFAULT 'ok', created_at timestamptz NOT NULL);
CREATE INDEX ON public.tx (user_id, created_at);
CREATE TABLE public.clicks (
    id bigint PRIMARY KEY, user_id integer NOT NULL, item_id integer NOT NULL,
    action text NOT NULL, created_at timestamptz NOT NULL);
"""

FEATURES = """
SELECT cep.create_window('tx_user', 'tx', 'tumbling', '10 minutes', group_by => '{user_id}',
    aggregates => '{count(*), sum(amount), max(amount), count(distinct location)}');
SELECT cep.create_window('tx_all', 'tx', 'hopping', '15 minutes', '5 minutes',
    aggregates => '{count(*), avg(amount)}');
SELECT cep.create_window('tx_sessions', 'tx', 'session', '3 minutes', aggregates => '{count(*)}');
INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES
  ('tx', 'high_frequency', 'threshold',
   '{"metric": "count", "window": "1 hour", "op": ">", "value": 10}', 0.8),
  ('tx', 'large_amount', 'threshold', '{"field": "amount", "op": ">", "value": 900}', 0.6),
  ('tx', 'night_time', 'pattern',
   '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}', 0.4),
  ('tx', 'location_change', 'pattern', '{"changed": "location", "window": "5 minutes"}', 0.7),
  ('tx', 'spend_burst', 'threshold',
   '{"metric": "sum", "field": "amount", "window": "10 minutes", "op": ">=", "value": 2500}', 0.3);
SELECT cep.set_risk_policy('tx', 'sum', medium => 0.4, high => 0.7, block => 0.9,
    block_action => '{"set": {"status": "blocked"}}');
SELECT cep.create_pattern('small_small_big', 'tx', 's s+ b',
    '{"s": "amount < 100", "b": "amount > 800"}', within => '20 minutes');
SELECT cep.create_pattern('hop', 'tx', 'x y',
    '{"x": "true", "y": "location <> x.location"}', contiguity => 'strict');
SELECT cep.create_recommender('shop', 'clicks', 'user_id', 'item_id', 'action',
    weights => '{"view": 1, "like": 3, "share": 5, "purchase": 10}', horizon => '7 days');
SELECT cep.create_pattern('view_buy', 'clicks', 'v+ p',
    '{"v": "action = ''view''", "p": "action = ''purchase''"}', within => '30 minutes');
"""


def gen_tx(rng: random.Random, n: int, first_id: int = 1) -> list[tuple]:
    """Transactions over 12 users in time order with disorder within 4 minutes (the lateness
    is 2 minutes: some events are late), a few bursts, large amounts and location changes."""
    out, t = [], BASE
    for i in range(first_id, first_id + n):
        t += dt.timedelta(seconds=rng.choice([1, 5, 20, 60]))
        et = t - dt.timedelta(seconds=rng.randint(0, 240) if rng.random() < 0.2 else 0)
        amount = Decimal(rng.choice([rng.randint(1, 99), rng.randint(100, 700),
                                     rng.randint(801, 1500)])).quantize(Decimal("0.01"))
        out.append((i, rng.randrange(12), amount, rng.choice(["nyc", "nyc", "sf", "ldn"]), et))
    return out


def gen_clicks(rng: random.Random, n: int, first_id: int = 1) -> list[tuple]:
    out, t = [], BASE
    for i in range(first_id, first_id + n):
        t += dt.timedelta(seconds=rng.choice([1, 3, 30]))
        user = rng.randrange(40)
        item = (user % 5) * 10 + rng.randrange(12)
        out.append((i, user, item, rng.choice(["view"] * 6 + ["like", "share", "purchase"]), t))
    return out


def insert_tx(cur, rows, table="public.tx"):
    cur.execute(f"INSERT INTO {table} (id, user_id, amount, location, created_at) "
                "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::numeric[], %s::text[], "
                "%s::timestamptz[])", [list(c) for c in zip(*rows)])


def insert_clicks(cur, rows, table="public.clicks"):
    with cur.copy(f"COPY {table} (id, user_id, item_id, action, created_at) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def statements(rng, rows):
    i = 0
    while i < len(rows):
        size = rng.choice([1, 1, 2, 5, 17, 60])
        yield rows[i:i + size]
        i += size


def process(conn, stream, max_rows):
    """cep.process_stream on STREAM if it is asynchronous (now)."""
    conn.execute("SELECT cep.process_stream(name, %s) FROM cep.streams "
                 "WHERE name = %s AND mode = 'async'", (max_rows, stream))


RENAME_AWAY = ("CREATE SCHEMA IF NOT EXISTS moved; ALTER TABLE public.tx RENAME TO tx_moved; "
               "ALTER TABLE public.clicks SET SCHEMA moved")
RENAME_BACK = "ALTER TABLE public.tx_moved RENAME TO tx; ALTER TABLE moved.clicks SET SCHEMA public"


def run_workload(conn, mode: str, seed: int, switch: bool = False, rename: bool = False):
    """The full profile on two streams; MODE 'async' processes in random pieces at random
    moments; SWITCH also flips the transaction stream's mode a few times on the way; RENAME
    renames the transaction table and moves the click table to another schema for the middle
    third of the statements (the generated code names them)."""
    rng = random.Random(seed)
    conn.execute(TX_DDL)
    for name, table in (("tx", "public.tx"), ("clicks", "public.clicks")):
        conn.execute("SELECT cep.create_stream(%s, %s::regclass, 'created_at', 'user_id', "
                     "allowed_lateness => '2 minutes', mode => %s)", (name, table, mode))
    conn.execute(FEATURES)
    tx = list(statements(rng, gen_tx(rng, 1500)))
    clicks = list(statements(rng, gen_clicks(rng, 1200)))
    prng = random.Random(seed + 1)        # the processing schedule only, not the data
    names = {"tx": "public.tx", "clicks": "public.clicks"}
    with conn.cursor() as cur:
        for j in range(max(len(tx), len(clicks))):
            if rename and j == len(tx) // 3:
                conn.execute(RENAME_AWAY)
                names = {"tx": "public.tx_moved", "clicks": "moved.clicks"}
            if rename and j == 2 * len(tx) // 3:
                conn.execute(RENAME_BACK)
                names = {"tx": "public.tx", "clicks": "public.clicks"}
            with conn.transaction():
                if j < len(tx):
                    insert_tx(cur, tx[j], names["tx"])
                if j < len(clicks):
                    insert_clicks(cur, clicks[j], names["clicks"])
                if mode == "async" and prng.random() < 0.1:
                    process(conn, "tx", prng.choice([1, 50]))
            if mode == "async" and prng.random() < 0.3:
                for s in ("tx", "clicks"):
                    process(conn, s, prng.choice([1, 10, 200, 100000]))
            if switch and prng.random() < 0.03:
                cur_mode = conn.execute(
                    "SELECT mode FROM cep.streams WHERE name = 'tx'").fetchone()[0]
                conn.execute("SELECT cep.set_stream_mode('tx', %s)",
                             ("sync" if cur_mode == "async" else "async",))
            if j == len(tx) // 2:
                # a rule change half way: statements queued before it use the old version
                conn.execute("UPDATE cep.rules SET risk_score = 0.35 WHERE name = 'night_time'")
    for s in ("tx", "clicks"):
        process(conn, s, 1000000)
    assert conn.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 0


VOLATILE = {"alert_id", "created_at", "txid", "assessment_id", "assessed_at", "match_id",
            "detected_at", "arrived_at", "logged_at"}


def snapshot(conn) -> dict[str, list[str]]:
    """Every derived result, as sorted JSON texts without ids and wall-clock times."""
    out = {}
    for rel in ("tx_user", "tx_all", "tx_sessions", "cep.alerts", "cep.risk_assessments",
                "cep.matches", "cep.late_events", "cep.pattern_late_events",
                "cep.recommender_weights", "cep.recommender_pairs", "cep.user_recommendations",
                "public.tx"):
        q = sql.SQL("SELECT (to_jsonb(x) - %s::text[])::text FROM {} AS x").format(
            sql.SQL(rel))
        if rel == "cep.user_recommendations":
            # (float8 scores are sums whose order may differ in the last bits: README)
            q = sql.SQL("SELECT (to_jsonb(x) - %s::text[] || jsonb_build_object('score', "
                        "round(x.score::numeric, 6)))::text FROM {} AS x").format(sql.SQL(rel))
        out[rel] = sorted(r[0] for r in conn.execute(q, (sorted(VOLATILE),)))
    out["stats"] = [repr(r) for r in conn.execute(
        "SELECT stream, events_total, late_events, watermark FROM cep.stream_stats ORDER BY 1")]
    out["recommend"] = [repr(r) for r in conn.execute(
        "SELECT u, r.item_id, round(r.score::numeric, 6), r.rank, r.because_of "
        "FROM generate_series(0, 39) AS u, cep.recommend('shop', u::text, 5) AS r "
        "ORDER BY u, r.rank")]
    return out


def diff(rel, a, b):
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"{rel}: {len(a)} vs {len(b)} rows; only sync {only_a[:3]}; only async {only_b[:3]}"


def test_async_equals_sync_on_the_full_profile(server):
    """Windows, rules (with a rule change), blocking, patterns, recommendations, alerts and late
    events: the asynchronous run equals the synchronous one, row for row."""
    results = {}
    for mode in ("sync", "async"):
        db = server.new_database()
        try:
            with server.connect(db) as conn:
                run_workload(conn, mode, seed=7)
                results[mode] = snapshot(conn)
        finally:
            server.drop_database(db)
    sync, asyn = results["sync"], results["async"]
    # the workload is not vacuous
    assert len(sync["cep.alerts"]) > 20 and len(sync["cep.matches"]) > 20
    assert len(sync["cep.late_events"]) > 5 and len(sync["recommend"]) > 50
    assert any('"status": "blocked"' in r for r in sync["public.tx"])
    for rel in sync:
        assert asyn[rel] == sync[rel], diff(rel, sync[rel], asyn[rel])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_renamed_tables_keep_working(server, mode):
    """Renaming a stream's table, or moving it to another schema, and back, while events keep
    coming: the first statement (or queued statement, or matcher call) after each rename has
    the stream's code rebuilt, and every result equals the run without renames."""
    results = {}
    for rename in (False, True):
        db = server.new_database()
        try:
            with server.connect(db) as conn:
                run_workload(conn, mode, seed=5, rename=rename)
                results[rename] = snapshot(conn)
                if rename:
                    # the rebuilt code names the tables by their final names; no processing
                    # function is left behind for the synchronous streams
                    src = conn.execute(
                        "SELECT string_agg(prosrc, ' ') FROM pg_proc "
                        "WHERE pronamespace = 'cep'::regnamespace "
                        "AND proname ~ '^_(ingest|process|pattern)_[0-9]+$'").fetchone()[0]
                    assert "tx_moved" not in src and "moved.clicks" not in src
                    assert conn.execute(
                        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace "
                        "AND proname ~ '^_process_[0-9]+$'").fetchone()[0] == (
                        2 if mode == "async" else 0)
        finally:
            server.drop_database(db)
    assert len(results[False]["cep.alerts"]) > 20 and len(results[False]["cep.matches"]) > 20
    for rel in results[False]:
        assert results[True][rel] == results[False][rel], diff(
            rel, results[False][rel], results[True][rel])


@pytest.mark.parametrize("seed", [11, 12])
def test_mode_switches_on_the_way_change_nothing(server, seed):
    results = {}
    for mode, switch in (("sync", False), ("async", True)):
        db = server.new_database()
        try:
            with server.connect(db) as conn:
                run_workload(conn, mode, seed=seed, switch=switch)
                results[mode] = snapshot(conn)
        finally:
            server.drop_database(db)
    for rel in results["sync"]:
        assert results["async"][rel] == results["sync"][rel], diff(
            rel, results["sync"][rel], results["async"][rel])


def setup_small(conn, mode="async"):
    conn.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer NOT NULL, "
                 "t timestamptz NOT NULL, v float8)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k', mode => %s)", (mode,))
    conn.execute("SELECT cep.create_window('ev_sum', 'ev', 'tumbling', '1 hour', "
                 "aggregates => '{count(*) AS n, sum(v) AS total}')")


def ins(conn, ids, t0=BASE, k=1):
    conn.execute("INSERT INTO public.ev SELECT g, %s, %s::timestamptz + g * interval '1 second', g "
                 "FROM unnest(%s::bigint[]) AS g", (k, t0, list(ids)))


def test_writer_queues_one_row_per_statement(conn):
    setup_small(conn)
    ins(conn, range(1, 501))
    ins(conn, [1000])
    ins(conn, [])                                    # no rows: nothing queued
    with conn.cursor() as cur, cur.copy("COPY public.ev FROM STDIN") as cp:
        for i in (2000, 2001, 2003):
            cp.write_row((i, 2, BASE + dt.timedelta(seconds=i), 1.0))
    rows = conn.execute("SELECT ids::text, events FROM cep.stream_queue ORDER BY seq").fetchall()
    assert rows == [("{[1,501)}", 500), ("{[1000,1001)}", 1), ("{[2000,2002),[2003,2004)}", 3)]
    # nothing is processed yet: no window row, no counters
    assert conn.execute("SELECT count(*) FROM ev_sum").fetchone()[0] == 0
    st = conn.execute("SELECT mode, events_total, backlog_statements, backlog_events, "
                      "processing_lag IS NOT NULL FROM cep.stream_stats").fetchone()
    assert st == ("async", 0, 3, 504, True)
    # max_rows bounds a call by whole statements (but takes at least one)
    assert conn.execute("SELECT cep.process_stream('ev', 10)").fetchone()[0] == 500
    assert conn.execute("SELECT cep.process_stream('ev', 2)").fetchone()[0] == 1
    assert conn.execute("SELECT cep.process_stream('ev')").fetchone()[0] == 3
    assert conn.execute("SELECT cep.process_stream('ev')").fetchone()[0] == 0
    st = conn.execute("SELECT events_total, backlog_statements, backlog_events, processing_lag "
                      "FROM cep.stream_stats").fetchone()
    assert st == (504, 0, 0, None)
    got = conn.execute("SELECT sum(n), sum(total) FROM ev_sum").fetchone()
    assert got == conn.execute("SELECT count(*), sum(v) FROM public.ev").fetchone()


@pytest.mark.parametrize("bad, state", [
    ("(1, 1, NULL, 1)", "23502"),
    ("(1, 1, 'infinity', 1)", "22008"),
    ("(1, 1, now() + interval '3 days', 1)", "22008"),
    ("(1, 1, now(), 'NaN')", "22003"),
])
def test_bad_rows_are_refused_by_the_writer(conn, bad, state):
    """The checks run in the writer's statement in both modes: nothing queued, nothing kept."""
    setup_small(conn)
    conn.execute("ALTER TABLE public.ev ALTER COLUMN t DROP NOT NULL")
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(f"INSERT INTO public.ev VALUES (2, 1, now(), 1), {bad}")
    assert exc.value.sqlstate == state
    assert conn.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM public.ev").fetchone()[0] == 0


def test_api_errors(conn, connect):
    setup_small(conn, mode="sync")
    cases = [
        ("SELECT cep.process_stream('ev')", "55000"),
        ("SELECT cep.process_stream('nope')", "42704"),
        ("SELECT cep.set_stream_mode('ev', 'later')", "22023"),
        ("SELECT cep.set_stream_mode('ev', NULL)", "22023"),
        ("SELECT cep.create_stream('x', 'public.ev', 't', mode => 'fast')", "22023"),
    ]
    conn.execute("SELECT cep.set_stream_mode('ev', 'async')")
    cases += [("SELECT cep.process_stream('ev', 0)", "22023"),
              ("SELECT cep.process_stream('ev', NULL)", "22023")]
    for q, state in cases[2:]:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(q)
        assert exc.value.sqlstate == state, q
    conn.execute("SELECT cep.set_stream_mode('ev', 'sync')")
    for q, state in cases[:2]:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(q)
        assert exc.value.sqlstate == state, q
    # only the stream's owner processes it or changes its mode
    conn.execute("SELECT cep.set_stream_mode('ev', 'async')")
    conn.execute("CREATE ROLE async_stranger LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA cep TO async_stranger")
    try:
        with connect(user="async_stranger") as other:
            for q in ("SELECT cep.process_stream('ev')", "SELECT cep.set_stream_mode('ev', 'sync')"):
                with pytest.raises(psycopg.Error) as exc:
                    other.execute(q)
                assert exc.value.sqlstate == "42501", q
    finally:
        conn.execute("DROP OWNED BY async_stranger")
        conn.execute("DROP ROLE async_stranger")


def test_switching_to_sync_applies_the_queue_first(conn):
    setup_small(conn)
    ins(conn, range(1, 11))
    conn.execute("SELECT cep.set_stream_mode('ev', 'sync')")
    assert conn.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 0
    ins(conn, range(11, 21))                          # applied on insert now
    assert conn.execute("SELECT sum(n) FROM ev_sum").fetchone()[0] == 20
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ '^_process_[0-9]+$'"
                        ).fetchone()[0] == 0


def test_new_window_on_a_backlog_counts_each_row_once(conn):
    """A definition made while statements wait: they are applied first (under the old
    definitions), then the new window is backfilled from the table."""
    setup_small(conn)
    ins(conn, range(1, 101))
    ins(conn, range(101, 151), k=2)
    conn.execute("SELECT cep.create_window('ev_by_k', 'ev', 'tumbling', '1 hour', "
                 "group_by => '{k}', aggregates => '{count(*) AS n}')")
    assert conn.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 0
    ins(conn, range(151, 161), k=2)
    conn.execute("SELECT cep.process_stream('ev')")
    got = dict(conn.execute("SELECT k, sum(n) FROM ev_by_k GROUP BY k").fetchall())
    assert got == dict(conn.execute("SELECT k, count(*) FROM public.ev GROUP BY k").fetchall())
    assert conn.execute("SELECT sum(n) FROM ev_sum").fetchone()[0] == 160


def test_maintenance_and_advance_watermark_process_the_queue(conn):
    setup_small(conn)
    ins(conn, range(1, 51))
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["process_streams"] == 50
    ins(conn, range(51, 61))
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert conn.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 0
    rows = conn.execute("SELECT n, is_final FROM ev_sum").fetchall()
    assert sum(r[0] for r in rows) == 60 and all(r[1] for r in rows)


def test_writers_and_processors_concurrently(server, dbname):
    """Four writers (some transactions rolled back, commit order unlike queue order) and two
    processing sessions at once: every committed row is applied exactly once."""
    with server.connect(dbname) as c:
        setup_small(c)
    stop = threading.Event()
    errors: list[BaseException] = []
    overlaps = []

    def writer(w):
        rng = random.Random(w)
        try:
            with server.connect(dbname, autocommit=False) as c:
                for j in range(60):
                    ids = [w * 100000 + j * 10 + x for x in range(rng.randint(1, 9))]
                    ins(c, ids, k=w)
                    if rng.random() < 0.3:
                        time.sleep(0.005)      # commit later than statements queued after it
                    c.rollback() if rng.random() < 0.15 else c.commit()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def processor():
        try:
            with server.connect(dbname) as c:
                while not stop.is_set():
                    n = c.execute("SELECT cep.process_stream('ev', 25)").fetchone()[0]
                    overlaps.append(n)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ws = [threading.Thread(target=writer, args=(w,)) for w in range(1, 5)]
    ps = [threading.Thread(target=processor) for _ in range(2)]
    for t in ps + ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in ps:
        t.join()
    assert not errors, errors
    with server.connect(dbname) as c:
        c.execute("SELECT cep.process_stream('ev', 1000000)")
        rows = c.execute("SELECT count(*) FROM public.ev").fetchone()[0]
        assert rows > 100
        assert c.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == rows
        assert c.execute("SELECT sum(n), sum(total) FROM ev_sum").fetchone() == c.execute(
            "SELECT count(*), sum(v) FROM public.ev WHERE id NOT IN "
            "(SELECT event_id FROM cep.late_events)").fetchone()
        assert c.execute("SELECT sum(events) FROM cep.stream_log").fetchone()[0] == rows
    assert sum(overlaps) > 0


def in_sleep(server, dbname, timeout=10.0):
    """Wait until a session of DBNAME sleeps in pg_sleep (inside a pattern condition)."""
    deadline = time.monotonic() + timeout
    with server.connect(dbname) as c:
        while not c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND wait_event = 'PgSleep'", (dbname,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the processing session never slept"
            time.sleep(0.02)


def test_rows_committed_while_a_batch_is_applied_stay_unprocessed(server, dbname):
    """A writer commits while cep.process_stream applies a statement: the later statements of
    the processing function see its row, which is not processed yet and must count for
    nothing (a rule metric of the same key here; it did, before the snapshot was kept)."""
    with server.connect(dbname) as c:
        c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer NOT NULL, "
                  "v numeric NOT NULL, t timestamptz NOT NULL)")
        c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k', mode => 'async')")
        c.execute("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES "
                  "('ev', 'two', 'threshold', '{\"metric\": \"count\", \"window\": "
                  "\"1 hour\", \"op\": \">=\", \"value\": 2}', 0.8)")
        # patterns run before rules in the processing function: this one takes its time
        c.execute("SELECT cep.create_pattern('slow', 'ev', 'a', "
                  "'{\"a\": \"pg_sleep(0.5) IS NOT NULL AND v > 0\"}')")
        c.execute("INSERT INTO public.ev VALUES (1, 1, 5, %s)", (BASE,))
        t = threading.Thread(target=lambda: server.connect(dbname).execute(
            "SELECT cep.process_stream('ev')"))
        t.start()
        in_sleep(server, dbname)
        # earlier event time: on one server it would never count for event 1
        c.execute("INSERT INTO public.ev VALUES (2, 1, 5, %s)", (BASE - dt.timedelta(minutes=1),))
        t.join()
        assert c.execute("SELECT count(*) FROM cep.stream_queue").fetchone()[0] == 1
        c.execute("SELECT cep.process_stream('ev')")
        assert c.execute("SELECT count(*) FROM cep.risk_assessments").fetchone()[0] == 0
        assert c.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 2


@pytest.mark.slow
def test_crash_during_processing_keeps_state_and_queue_consistent(cluster_factory):
    """An immediate shutdown while cep.process_stream works through a large backlog: after
    recovery, applied statements and the queue add up to the table exactly, and processing
    the rest gives the full result."""
    cluster = cluster_factory(settings={"fsync": "on", "synchronous_commit": "on"})
    with cluster.connect() as c:
        c.execute("CREATE EXTENSION pg_cep")
        setup_small(c)
        c.execute("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES "
                  "('ev', 'busy', 'threshold', "
                  "'{\"metric\": \"count\", \"window\": \"10 minutes\", \"op\": \">\", "
                  "\"value\": 50}', 0.9)")
        for j in range(600):
            ins(c, range(j * 100 + 1, j * 100 + 101), t0=BASE + dt.timedelta(hours=j), k=j % 7)

    def process():
        try:
            with cluster.connect() as c:
                while c.execute("SELECT cep.process_stream('ev', 500)").fetchone()[0]:
                    pass
        except psycopg.Error:
            pass                              # the server went away under us: expected

    t = threading.Thread(target=process)
    t.start()
    with cluster.connect() as c:                 # crash once some batches have committed
        for _ in range(500):
            if c.execute("SELECT coalesce(sum(events), 0) FROM cep.stream_log").fetchone()[0] >= 2000:
                break
            time.sleep(0.01)
    cluster.stop("immediate")
    t.join()
    cluster.start()
    with cluster.connect() as c:
        done = c.execute("SELECT coalesce(sum(events), 0) FROM cep.stream_log").fetchone()[0]
        queued = c.execute("SELECT coalesce(sum(events), 0) FROM cep.stream_queue").fetchone()[0]
        assert done + queued == 60000
        assert 2000 <= done < 60000, done         # the crash hit the processing half way
        assert c.execute("SELECT coalesce(sum(n), 0) FROM ev_sum").fetchone()[0] == done
        assert c.execute("SELECT count(*) FROM cep.risk_assessments").fetchone()[0] <= done
        c.execute("SELECT cep.process_stream('ev', 1000000)")
        assert c.execute("SELECT sum(n), sum(total) FROM ev_sum").fetchone() == \
            c.execute("SELECT count(*), sum(v) FROM public.ev").fetchone()
        # the rule's assessments equal a recomputation over the raw rows
        want = c.execute("""
            SELECT count(*) FROM public.ev AS e
            WHERE (SELECT count(*) FROM public.ev AS w WHERE w.k = e.k
                   AND w.t > e.t - interval '10 minutes' AND (w.t, w.id) <= (e.t, e.id)) > 50
        """).fetchone()[0]
        assert c.execute("SELECT count(*) FROM cep.risk_assessments").fetchone()[0] == want > 0


def test_absence_ignores_events_queued_after_the_deadline_passed(server):
    """A not followed by B within 10 minutes: B arrives (late) in a statement queued after the
    one whose events moved the watermark past the deadline; like the synchronous stream, the
    asynchronous one fires, whether or not B is already in the table at that moment."""
    fired = {}
    for mode in ("sync", "async"):
        db = server.new_database()
        try:
            with server.connect(db) as conn:
                conn.execute("CREATE TABLE public.pay (id bigint PRIMARY KEY, k integer NOT NULL, "
                             "kind text NOT NULL, t timestamptz NOT NULL)")
                conn.execute("SELECT cep.create_stream('pay', 'public.pay', 't', 'k', mode => %s)",
                             (mode,))
                conn.execute("SELECT cep.create_absence('unconfirmed', 'pay', 'kind = ''pay''', "
                             "'kind = ''ok''', '10 minutes')")
                for i, kind, minutes in ((1, "pay", 0), (2, "other", 20), (3, "ok", 5),
                                         (4, "pay", 30), (5, "ok", 35)):
                    conn.execute("INSERT INTO public.pay VALUES (%s, 1, %s, %s)",
                                 (i, kind, BASE + dt.timedelta(minutes=minutes)))
                conn.execute("SELECT cep.advance_watermark('pay')")
                fired[mode] = conn.execute(
                    "SELECT event_ids FROM cep.matches ORDER BY match_id").fetchall()
                late = conn.execute("SELECT event_id FROM cep.late_events").fetchall()
                assert late == [(3,)]
        finally:
            server.drop_database(db)
    assert fired["sync"] == [([1],)]
    assert fired["async"] == fired["sync"]
