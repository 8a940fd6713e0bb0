"""Streams against an independent recomputation: the watermark, the late-event set and the
counters of cep.stream_stats equal what a plain Python model of design.md's rules gives for the
same statements, for random workloads split into random statements and transactions (with
rollbacks), under concurrency, and across ingest-log compaction."""

from __future__ import annotations

import datetime as dt
import math
import random
import threading

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UTC = dt.timezone.utc
BASE = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

DDL = """
CREATE TABLE public.ev (
    id bigint PRIMARY KEY,
    user_id integer NOT NULL,
    amount numeric NOT NULL,
    created_at timestamptz NOT NULL
);
"""


class Model:
    """design.md's stream rules, written independently of the SQL: the watermark is
    max(event time) - lateness over committed statements (or an advance), and an event older
    than the watermark seen by its statement is late."""

    def __init__(self, lateness: dt.timedelta):
        self.lateness = lateness
        self.watermark = None  # None = -infinity
        self.events = 0
        self.batches = 0
        self.late: set[int] = set()
        self.max_time = None
        self.keys: set[int] = set()

    def statement(self, rows):
        if not rows:
            return
        wm = self.watermark
        for rid, key, _amount, t in rows:
            if wm is not None and t < wm:
                self.late.add(rid)
            else:
                self.keys.add(key)
        self.events += len(rows)
        self.batches += 1
        top = max(r[3] for r in rows)
        self.max_time = top if self.max_time is None else max(self.max_time, top)
        cand = top - self.lateness
        self.watermark = cand if wm is None else max(wm, cand)


def setup_stream(conn, lateness="30 seconds"):
    conn.execute(DDL)
    conn.execute(
        "SELECT cep.create_stream('ev', 'public.ev', 'created_at', 'user_id', "
        "allowed_lateness => %s)", (lateness,))


def insert(cur, rows):
    with cur.copy("COPY public.ev (id, user_id, amount, created_at) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def observed(conn):
    stats = conn.execute(
        "SELECT events_total, late_events, batches_total, nullif(watermark, '-infinity'), "
        "last_event_time "
        "FROM cep.stream_stats WHERE stream = 'ev'").fetchone()
    late = {r[0] for r in conn.execute("SELECT event_id FROM cep.late_events")}
    return stats, late


def check(conn, model: Model):
    (events, late_n, batches, wm, last), late = observed(conn)
    assert late == model.late
    assert (events, late_n, batches) == (model.events, len(model.late), model.batches)
    assert wm == model.watermark
    assert last == model.max_time


def gen_workload(rng: random.Random, n: int, keys: int, jitter_s: int, late_share: float):
    """Roughly increasing event times with out-of-order jitter, ties, and some very late rows."""
    rows, t = [], BASE
    for i in range(1, n + 1):
        t = t + dt.timedelta(seconds=rng.choice([0, 0, 1, 2, 5]))
        et = t - dt.timedelta(seconds=rng.randint(0, jitter_s))
        if rng.random() < late_share:
            et = t - dt.timedelta(minutes=rng.randint(2, 30))
        rows.append((i, rng.randrange(keys), rng.randint(1, 500), et))
    return rows


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), lateness_s=st.sampled_from([0, 10, 30, 120]))
def test_random_statements_and_transactions_match_model(server, seed, lateness_s):
    rng = random.Random(seed)
    db = server.new_database()
    try:
        with server.connect(db) as conn:
            setup_stream(conn, f"{lateness_s} seconds")
            model = Model(dt.timedelta(seconds=lateness_s))
            rows = gen_workload(rng, rng.randint(1, 400), rng.randint(1, 12),
                                jitter_s=rng.choice([0, 5, 40]), late_share=0.05)
            i, force_commit = 0, False
            while i < len(rows):
                # One transaction of 1..3 statements; one in five is rolled back, after which
                # the next transaction is committed so that every row lands eventually.
                stmts, j = [], i
                for _ in range(rng.randint(1, 3)):
                    size = rng.choice([1, 2, 7, 50, 120])
                    if rows[j:j + size]:
                        stmts.append(rows[j:j + size])
                    j += size
                rollback = not force_commit and rng.random() < 0.2
                with conn.transaction(force_rollback=rollback), conn.cursor() as cur:
                    for s in stmts:
                        insert(cur, s)
                force_commit = rollback
                if not rollback:
                    for s in stmts:
                        model.statement(s)
                    i = j
                check(conn, model)
    finally:
        server.drop_database(db)


def test_rollback_leaves_no_trace(conn):
    setup_stream(conn)
    with pytest.raises(psycopg.errors.QueryCanceled):
        with conn.transaction():
            insert(conn.cursor(), [(1, 1, 1, BASE), (2, 1, 1, BASE - dt.timedelta(hours=1))])
            raise psycopg.errors.QueryCanceled("abort on purpose")
    n = conn.execute("SELECT (SELECT count(*) FROM cep.stream_log) + "
                     "(SELECT count(*) FROM cep.late_events) + "
                     "(SELECT count(*) FROM public.ev)").fetchone()[0]
    assert n == 0
    assert conn.execute("SELECT watermark = '-infinity' FROM cep.stream_stats").fetchone()[0]


def test_bad_event_fails_whole_statement_and_keeps_watermark(conn):
    setup_stream(conn)
    insert(conn.cursor(), [(1, 1, 10, BASE)])
    before = observed(conn)
    bad_rows = [
        [(2, 1, 10, BASE + dt.timedelta(seconds=1)), (3, 1, float("nan"), BASE)],
        [(4, 1, 10, BASE), (5, 1, 10, dt.datetime(9999, 1, 1, tzinfo=UTC))],
    ]
    for rows in bad_rows:
        with pytest.raises(psycopg.DataError) as exc:
            with conn.transaction():
                insert(conn.cursor(), rows)
        assert "pg_cep: stream ev" in str(exc.value)
    with pytest.raises(psycopg.DataError):
        conn.execute("INSERT INTO public.ev VALUES (6, 1, 'Infinity', now())")
    assert observed(conn) == before
    assert conn.execute("SELECT count(*) FROM public.ev").fetchone()[0] == 1


def test_session_timezone_does_not_change_results(server):
    """The same instants written under different session TimeZones (as literals with and
    without offsets converted by the client) give identical watermark and late set."""
    results = []
    for tz in ["UTC", "Asia/Kolkata", "America/Los_Angeles"]:
        db = server.new_database()
        try:
            with server.connect(db) as conn:
                setup_stream(conn, "1 minute")
                conn.execute(f"SET TimeZone = '{tz}'")
                rows = gen_workload(random.Random(7), 200, 5, 20, 0.1)
                for lo in range(0, len(rows), 37):
                    insert(conn.cursor(), rows[lo:lo + 37])
                conn.execute("SET TimeZone = 'UTC'")
                results.append(observed(conn))
        finally:
            server.drop_database(db)
    assert results[0] == results[1] == results[2]
    assert results[0][0][1] > 0  # the workload did contain late events


def test_concurrent_sessions_keep_exact_counters(server, dbname):
    with server.connect(dbname) as conn:
        setup_stream(conn, "1 hour")
    n_threads, per_thread = 8, 40
    errors: list[BaseException] = []

    def worker(w: int):
        try:
            with server.connect(dbname, autocommit=False) as c:
                rng = random.Random(w)
                for j in range(per_thread):
                    rid = w * 10_000 + j
                    # Every session writes the same few keys.
                    rows = [(rid * 10 + k, k % 3, 1, BASE + dt.timedelta(seconds=rng.randint(0, 600)))
                            for k in range(rng.randint(1, 5))]
                    insert(c.cursor(), rows)
                    if rng.random() < 0.2:
                        c.rollback()
                    else:
                        c.commit()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with server.connect(dbname) as conn:
        committed, statements = conn.execute(
            "SELECT count(*), count(DISTINCT id / 10) FROM public.ev").fetchone()
        (events, late_n, batches, wm, last), late = observed(conn)
        assert events == committed and batches == statements
        assert late_n == 0 == len(late)  # lateness of one hour covers the 10-minute spread
        assert last == conn.execute("SELECT max(created_at) FROM public.ev").fetchone()[0]
        assert wm == last - dt.timedelta(hours=1)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_strict_isolation_levels_succeed_or_retry(server, dbname, isolation):
    with server.connect(dbname) as conn:
        setup_stream(conn, "1 hour")
    done = []
    retries = []

    def worker(w: int):
        with server.connect(dbname, autocommit=False) as c:
            for j in range(25):
                while True:
                    try:
                        c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                        rid = w * 1000 + j
                        insert(c.cursor(), [(rid, j % 4, 1, BASE + dt.timedelta(seconds=j))])
                        c.commit()
                        done.append(rid)
                        break
                    except psycopg.errors.SerializationFailure:
                        c.rollback()
                        retries.append(rid)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with server.connect(dbname) as conn:
        (events, _late_n, batches, _wm, _last), _late = observed(conn)
        assert events == batches == len(done) == 100


def test_compaction_preserves_every_figure(conn):
    setup_stream(conn, "10 seconds")
    rows = gen_workload(random.Random(3), 500, 20, 30, 0.05)
    for lo in range(0, len(rows), 13):
        insert(conn.cursor(), rows[lo:lo + 13])
    conn.execute("SELECT cep.advance_watermark('ev', %s)", (BASE + dt.timedelta(hours=5),))
    before = observed(conn)
    keys_before = conn.execute("SELECT active_keys FROM cep.dashboard").fetchone()[0]
    n_before = conn.execute("SELECT count(*) FROM cep.stream_log").fetchone()[0]
    # Age the log as if it had been written over the last half hour, then compact.
    conn.execute("UPDATE cep.stream_log SET logged_at = logged_at - "
                 "(random() * 30 + 3) * interval '1 minute'")
    report = dict(conn.execute("SELECT task, items FROM cep.run_maintenance()").fetchall())
    assert report["compact_stream_log"] == n_before
    n_after = conn.execute("SELECT count(*) FROM cep.stream_log").fetchone()[0]
    assert n_after < n_before and n_after <= 31
    assert observed(conn) == before
    assert conn.execute("SELECT active_keys FROM cep.dashboard").fetchone()[0] == keys_before
    # Idempotent: a second run has nothing left to do and changes nothing.
    report = dict(conn.execute("SELECT task, items FROM cep.run_maintenance()").fetchall())
    assert report["compact_stream_log"] == 0 and observed(conn) == before


def test_stats_and_dashboard_match_the_workload(conn):
    setup_stream(conn, "30 seconds")
    rng = random.Random(11)
    model = Model(dt.timedelta(seconds=30))
    rows = gen_workload(rng, 3000, 700, 10, 0.02)
    for lo in range(0, len(rows), 250):
        insert(conn.cursor(), rows[lo:lo + 250])
        model.statement(rows[lo:lo + 250])
    check(conn, model)
    events_last_hour, eps, active_keys, latency = conn.execute(
        "SELECT events_last_hour, events_per_second, active_keys, avg_ingest_latency_ms "
        "FROM cep.dashboard").fetchone()
    assert events_last_hour == 3000
    assert float(eps) == pytest.approx(3000 / 60, abs=0.01)
    # Linear counting over 4096 bits: within 3% of the true distinct count at this size.
    assert abs(active_keys - len(model.keys)) <= 0.03 * len(model.keys)
    assert latency is not None and latency > 0
    tl = conn.execute("SELECT sum(events), sum(late_events), sum(batches) "
                      "FROM cep.timeline('ev', '1 minute', '10 minutes')").fetchone()
    assert tl == (3000, len(model.late), 12)
    assert conn.execute("SELECT ingest_micros_per_event > 0 FROM cep.stream_stats").fetchone()[0]


def test_single_row_statements_give_the_same_figures(conn):
    """One-row statements take their figures from the row, not from the aggregate of larger
    statements: counters, late events, watermark, the key sketch behind active_keys and the
    timeline, against the model, row by row and with late rows among them."""
    setup_stream(conn, "30 seconds")
    rng = random.Random(12)
    model = Model(dt.timedelta(seconds=30))
    rows = gen_workload(rng, 600, 400, 10, 0.05)
    cur = conn.cursor()
    for r in rows:
        cur.execute("INSERT INTO public.ev (id, user_id, amount, created_at) "
                    "VALUES (%s, %s, %s, %s)", r)
        model.statement([r])
    check(conn, model)
    assert model.late, "the workload has late rows"
    events_last_hour, active_keys = conn.execute(
        "SELECT events_last_hour, active_keys FROM cep.dashboard").fetchone()
    assert events_last_hour == 600
    assert abs(active_keys - len(model.keys)) <= 0.03 * len(model.keys)
    tl = conn.execute("SELECT sum(events), sum(late_events), sum(batches) "
                      "FROM cep.timeline('ev', '1 minute', '10 minutes')").fetchone()
    assert tl == (600, len(model.late), 600)


@pytest.mark.parametrize("most", [None, "4000", "100"])
def test_dashboard_active_keys_from_a_slice_of_many_sketches(conn, most):
    # Many uncompacted statements: above dashboard_sketch_positions positions in all, the
    # dashboard reads only the sketch positions below a slice and scales up. The expected value
    # is recomputed from the raw events: each statement's distinct positions (hashtext of the
    # key's text & 4095), the slice from their total, the distinct positions below it.
    setup_stream(conn, "1 hour")
    if most is not None:
        conn.execute("INSERT INTO cep.settings (name, value) VALUES "
                      "('dashboard_sketch_positions', %s)", (most,))
    rng = random.Random(7)
    now = dt.datetime.now(dt.timezone.utc)
    cur, ident, keys = conn.cursor(), 0, set()
    statements = []
    for _ in range(30):
        rows = []
        for _ in range(200):
            ident += 1
            k = rng.randrange(5000)
            keys.add(k)
            rows.append((ident, k, 1, now - dt.timedelta(seconds=rng.randrange(600))))
        insert(cur, rows)
        statements.append([r[1] for r in rows])
    pos = conn.execute(
        "SELECT array_agg(hashtext(k::text) & 4095 ORDER BY o) FROM unnest(%s::int[]) "
        "WITH ORDINALITY AS u (k, o)", ([k for st_ in statements for k in st_],)).fetchone()[0]
    per_statement = [set(pos[i * 200:(i + 1) * 200]) for i in range(len(statements))]
    total = sum(len(p) for p in per_statement)
    limit = 65536 if most is None else int(most)
    slice_ = 4096 if total <= limit else max(128, int(4096 * limit / total))
    seen = {p for ps in per_statement for p in ps if p < slice_}
    if len(seen) >= slice_:
        want = round(4096 * math.log(slice_))
    else:
        want = round(-4096 * math.log((slice_ - len(seen)) / slice_))
    got = conn.execute("SELECT active_keys FROM cep.dashboard").fetchone()[0]
    assert got == want
    # (~5,800 positions in all: the whole space by default, a slice of it under 4000, the
    # smallest slice under 100)
    if most is None:
        assert slice_ == 4096
    elif most == "4000":
        assert 128 < slice_ < 4096
    else:
        assert slice_ == 128
    # a sample of the hash space, so an estimate of the true count
    assert abs(got - len(keys)) <= (0.05 if slice_ == 4096 else 0.2) * len(keys)
    # compacted, the rows keep the whole sketch as bitmaps: no slice
    conn.execute("UPDATE cep.stream_log SET logged_at = logged_at - interval '3 minutes'")
    conn.execute("SELECT cep.run_maintenance()")
    allpos = {p for ps in per_statement for p in ps}
    assert conn.execute("SELECT active_keys FROM cep.dashboard").fetchone()[0] == round(
        -4096 * math.log((4096 - len(allpos)) / 4096))


def test_dashboard_sketch_positions_setting_is_checked(conn):
    for bad in ("0", "-5", "many", "1.5"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO cep.settings (name, value) VALUES "
                         "('dashboard_sketch_positions', %s)", (bad,))
        conn.rollback()


@pytest.mark.slow
def test_one_million_row_insert_is_one_batch(conn):
    setup_stream(conn, "0 seconds")
    conn.execute(
        "INSERT INTO public.ev SELECT g, g % 100000, 1, "
        "'2024-01-01'::timestamptz + g * interval '1 millisecond' "
        "FROM generate_series(1, 1000000) AS g")
    (events, late_n, batches, wm, last), late = observed(conn)
    assert (events, late_n, batches) == (1_000_000, 0, 1) and not late
    assert wm == last == dt.datetime(2024, 1, 1, 0, 16, 40, tzinfo=UTC)


def test_large_and_deeply_nested_payloads_go_through(conn):
    """A 10 MB text value and a deeply nested jsonb document in an event row: ingest neither
    copies nor inspects them (only the time, key, id and numeric columns), windows still count."""
    conn.execute("CREATE TABLE public.fat (id bigint PRIMARY KEY, k int NOT NULL, "
                 "t timestamptz NOT NULL, body text, doc jsonb)")
    conn.execute("SELECT cep.create_stream('fat', 'public.fat', 't', 'k')")
    conn.execute("SELECT cep.create_window('fat_min', 'fat', 'tumbling', '1 minute')")
    nested = "[" * 5000 + "]" * 5000
    conn.execute("INSERT INTO public.fat VALUES (1, 1, now(), repeat('x', 10 * 1024 * 1024), %s), "
                 "(2, 1, now(), 'small', '{}')", (nested,))
    assert conn.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 2
    assert conn.execute("SELECT sum(count) FROM public.fat_min").fetchone()[0] == 2
    assert conn.execute("SELECT length(body) FROM public.fat WHERE id = 1").fetchone()[0] == 10 * 1024 * 1024


def test_a_dropped_table_does_not_stop_maintenance(conn):
    """DROP TABLE of a stream's table (sync or async, with patterns, windows, rules): the
    stream is reported as orphaned and left out of every maintenance task, the other streams
    keep being maintained, its own functions say what happened, and cep.drop_stream removes
    it."""
    for t, mode in (("gone", "sync"), ("gone_q", "async"), ("kept", "sync")):
        conn.execute(f"CREATE TABLE public.{t} (id bigserial PRIMARY KEY, k int NOT NULL, "
                     "v numeric, t timestamptz NOT NULL)")
        conn.execute("SELECT cep.create_stream(%s, %s::regclass, 't', 'k', "
                     "allowed_lateness => '1 second', mode => %s)", (t, f"public.{t}", mode))
        conn.execute("SELECT cep.create_pattern(%s, %s, 'a b', "
                     "'{\"a\": \"v > 0\", \"b\": \"v > 1\"}', within => '1 minute')",
                     (f"p_{t}", t))
    conn.execute("SELECT cep.create_window('w_gone', 'gone', 'tumbling', '1 minute', "
                 "aggregates => '{count(*)}')")
    conn.execute("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES "
                 "('gone', 'c', 'threshold', "
                 "'{\"metric\": \"count\", \"window\": \"1 hour\", \"op\": \">\", \"value\": 1}', 0.8)")
    for t in ("gone", "gone_q", "kept"):
        conn.execute(f"INSERT INTO public.{t} (k, v, t) VALUES (1, 5, now() - interval '1 minute'), "
                     "(1, 7, now() - interval '50 seconds')")
    conn.execute("DROP TABLE public.gone, public.gone_q")
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["orphaned_streams"] == 2
    # the healthy stream is still maintained: its pending match is found at the watermark
    conn.execute("INSERT INTO public.kept (k, v, t) VALUES (2, 9, now())")
    conn.execute("SELECT * FROM cep.run_maintenance()").fetchall()
    assert conn.execute("SELECT count(*) FROM cep.matches WHERE pattern = 'p_kept'"
                        ).fetchone()[0] == 1
    with pytest.raises(psycopg.errors.UndefinedTable) as exc:
        conn.execute("SELECT cep.advance_watermark('gone')")
    assert "was dropped" in str(exc.value) and "cep.drop_stream('gone')" in exc.value.diag.message_hint
    conn.execute("SELECT cep.drop_stream('gone')")
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["orphaned_streams"] == 1
    conn.execute("SELECT cep.drop_stream('gone_q')")
    assert conn.execute("SELECT array_agg(name) FROM cep.streams").fetchone()[0] == ["kept"]
