"""Durable alert consumers: every consumer sees every committed alert, in commit order, at
least once, and exactly once when it acknowledges in the polling transaction; alerts whose
transactions commit out of id order are never skipped; unacknowledged deliveries come back;
workers sharing a consumer never get the same alert concurrently; nothing is lost across an
immediate shutdown. Checked against the set of alerts actually committed."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))

from listener import run_listener  # noqa: E402

SETUP = """
CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer, t timestamptz);
SELECT cep.create_stream('ev', 'public.ev', 't', 'k');
"""


def raise_alerts(conn, n=1, tag="x"):
    """Raise N alerts through the internal set-based path; returns their ids."""
    conn.execute(
        "SELECT cep._raise_alerts(1, (SELECT array_agg(ROW('rule', %s, 'ev', g::text, g, 'high',"
        " 0.5, 'm', NULL)::cep.alert_draft) FROM generate_series(1, %s) AS g))", (tag, n))
    return [r[0] for r in conn.execute(
        "SELECT alert_id FROM cep.alerts WHERE txid = pg_current_xact_id_if_assigned() "
        "AND source_name = %s ORDER BY alert_id", (tag,))]


def poll(conn, consumer, n=100):
    return [r[0] for r in conn.execute(
        "SELECT alert_id FROM cep.poll_alerts(%s, %s)", (consumer, n))]


def ack(conn, consumer, ids):
    return conn.execute("SELECT cep.ack_alerts(%s, %s)", (consumer, ids)).fetchone()[0]


def stats(conn, consumer):
    return conn.execute(
        "SELECT pending, in_flight, delivered, redelivered, acked FROM cep.consumer_stats "
        "WHERE consumer = %s", (consumer,)).fetchone()


@pytest.fixture
def db(conn):
    conn.execute(SETUP)
    return conn


def test_poll_ack_in_order_and_only_new_alerts(db):
    with db.transaction():
        raise_alerts(db, 3, "before")
    db.execute("SELECT cep.create_consumer('late_joiner')")
    db.execute("SELECT cep.create_consumer('historian', from_start => true)")
    with db.transaction():
        ids = raise_alerts(db, 5, "after")
    assert poll(db, "late_joiner") == ids
    hist = poll(db, "historian")
    assert len(hist) == 8 and hist[-5:] == ids and hist == sorted(hist)
    assert stats(db, "late_joiner") == (5, 5, 5, 0, 0)
    with db.transaction():
        assert ack(db, "late_joiner", ids + [999999]) == 5
    assert poll(db, "late_joiner") == []
    assert stats(db, "late_joiner") == (0, 0, 5, 0, 5)
    assert stats(db, "historian")[0] == 8


def test_lower_id_committing_last_is_not_skipped(server, dbname, db):
    db.execute("SELECT cep.create_consumer('c')")
    slow = server.connect(dbname, autocommit=False)
    try:
        low = raise_alerts(slow, 2, "slow")  # ids allocated first, not committed yet
        with db.transaction():
            high = raise_alerts(db, 2, "fast")
        assert min(high) > max(low)
        with db.transaction():
            got = poll(db, "c")
            ack(db, "c", got)
        assert got == high
        slow.commit()
        with db.transaction():
            got = poll(db, "c")
            ack(db, "c", got)
        assert got == low  # delivered after the batch it committed in: commit order
    finally:
        slow.close()


def test_unacknowledged_delivery_comes_back(db):
    db.execute("SELECT cep.create_consumer('c', redelivery_timeout => '1 second')")
    with db.transaction():
        ids = raise_alerts(db, 3)
    assert poll(db, "c") == ids  # committed poll, no ack: a consumer that crashed afterwards
    assert poll(db, "c") == []   # in flight within the timeout
    time.sleep(1.2)
    assert poll(db, "c") == ids
    assert stats(db, "c")[2:4] == (6, 3)
    rows = db.execute("SELECT alert_id, deliveries FROM cep.consumer_pending ORDER BY 1").fetchall()
    assert rows == [(i, 2) for i in ids]


def test_rolled_back_poll_is_delivered_again_at_once(db):
    db.execute("SELECT cep.create_consumer('c')")
    with db.transaction():
        ids = raise_alerts(db, 4)
    with db.transaction(force_rollback=True):
        assert poll(db, "c") == ids
    assert poll(db, "c", 2) == ids[:2]


def test_workers_sharing_a_consumer_split_the_work(server, dbname, db):
    db.execute("SELECT cep.create_consumer('shared')")
    with db.transaction():
        ids = raise_alerts(db, 10)
    a = server.connect(dbname, autocommit=False)
    b = server.connect(dbname, autocommit=False)
    try:
        got_a = poll(a, "shared", 4)   # A holds its alerts in an open transaction
        got_b = poll(b, "shared", 100)
        assert got_a == ids[:4] and got_b == ids[4:]
        ack(b, "shared", got_b)
        b.commit()
        a.rollback()  # A crashed: its alerts are free again, B takes them
        got_b2 = poll(b, "shared", 100)
        ack(b, "shared", got_b2)
        b.commit()
        assert got_b2 == ids[:4]
    finally:
        a.close()
        b.close()


def test_errors(db):
    cases = [
        ("SELECT cep.poll_alerts('nope')", psycopg.errors.UndefinedObject, 'consumer "nope" does not exist'),
        ("SELECT cep.ack_alerts('nope', '{1}')", psycopg.errors.UndefinedObject, 'consumer "nope"'),
        ("SELECT cep.create_consumer(NULL)", psycopg.errors.InvalidParameterValue, "invalid consumer name"),
        ("SELECT cep.create_consumer('c', redelivery_timeout => '0')",
         psycopg.errors.InvalidParameterValue, "redelivery_timeout"),
    ]
    db.execute("SELECT cep.create_consumer('c1')")
    cases += [
        ("SELECT cep.create_consumer('c1')", psycopg.errors.DuplicateObject, 'consumer "c1" already exists'),
        ("SELECT cep.poll_alerts('c1', 0)", psycopg.errors.InvalidParameterValue, "max_alerts"),
        ("SELECT cep.ack_alerts('c1', NULL)", psycopg.errors.InvalidParameterValue, "alert_ids"),
    ]
    for sql, exc, msg in cases:
        with pytest.raises(exc) as info:
            db.execute(sql)
        assert msg in str(info.value)
    db.execute("SELECT cep.drop_consumer('c1')")
    assert db.execute("SELECT count(*) FROM cep.consumers").fetchone()[0] == 0


def test_retention_never_purges_an_unacknowledged_alert(db):
    db.execute("SELECT cep.create_consumer('a')")
    db.execute("SELECT cep.create_consumer('b')")
    with db.transaction():
        ids = raise_alerts(db, 6)
    db.execute("UPDATE cep.alerts SET created_at = now() - interval '40 days'")
    with db.transaction():
        ack(db, "a", poll(db, "a"))          # a: everything acknowledged
        ack(db, "b", poll(db, "b")[:3])      # b: first three only
    purged = dict(db.execute("SELECT * FROM cep.run_maintenance()").fetchall())["purge_alerts"]
    left = [r[0] for r in db.execute("SELECT alert_id FROM cep.alerts ORDER BY 1")]
    assert purged == 3 and left == ids[3:]
    # b acknowledges the rest later (they are in flight, so poll only brings the new one);
    # the new alert stays pending for a, so it is kept.
    with db.transaction():
        newer = raise_alerts(db, 1, "new")
    db.execute("UPDATE cep.alerts SET created_at = now() - interval '40 days'")
    with db.transaction():
        assert poll(db, "b") == newer
        assert ack(db, "b", ids[3:] + newer) == 4
    purged = dict(db.execute("SELECT * FROM cep.run_maintenance()").fetchall())["purge_alerts"]
    assert purged == 3
    assert [r[0] for r in db.execute("SELECT alert_id FROM cep.alerts")] == newer
    assert poll(db, "a") == newer


def produce(dsn, seed, stop, committed, lock):
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=False) as c:
        while not stop.is_set():
            ids = raise_alerts(c, rng.randint(1, 5), f"p{seed}")
            if rng.random() < 0.25:
                c.rollback()
                continue
            try:
                time.sleep(rng.random() * 0.003)  # let commits interleave out of id order
                c.commit()
            except psycopg.Error:
                return
            with lock:
                committed.update(ids)


def consume(dsn, consumer, stop, got, batch=50):
    with psycopg.connect(dsn, autocommit=False) as c:
        idle = 0
        while idle < 3 or not stop.is_set():
            ids = poll(c, consumer, batch)
            if ids:
                ack(c, consumer, ids)
            c.commit()
            got.extend(ids)
            idle = 0 if ids else idle + 1
            if not ids:
                time.sleep(0.02)


def test_stress_eight_producers_two_consumers_exactly_once(server, dbname, db):
    db.execute("SELECT cep.create_consumer('one')")
    db.execute("SELECT cep.create_consumer('two')")
    dsn = server.dsn(dbname)
    stop_p, stop_c = threading.Event(), threading.Event()
    committed, lock = set(), threading.Lock()
    got_one, got_two_a, got_two_b = [], [], []
    producers = [threading.Thread(target=produce, args=(dsn, s, stop_p, committed, lock))
                 for s in range(8)]
    consumers = [threading.Thread(target=consume, args=(dsn, "one", stop_c, got_one)),
                 # two workers share consumer "two"
                 threading.Thread(target=consume, args=(dsn, "two", stop_c, got_two_a)),
                 threading.Thread(target=consume, args=(dsn, "two", stop_c, got_two_b))]
    for t in producers + consumers:
        t.start()
    time.sleep(4)
    stop_p.set()
    for t in producers:
        t.join()
    stop_c.set()
    for t in consumers:
        t.join()
    all_committed = {r[0] for r in db.execute("SELECT alert_id FROM cep.alerts")}
    assert committed == all_committed and len(committed) > 200
    assert len(got_one) == len(set(got_one)) and set(got_one) == committed
    two = got_two_a + got_two_b
    assert len(two) == len(set(two)) and set(two) == committed
    assert stats(db, "one")[:2] == (0, 0) and stats(db, "two")[:2] == (0, 0)
    # The consumers did see commits out of id order and still got everything.
    out_of_order = sum(1 for x, y in zip(got_one, got_one[1:]) if y < x)
    assert out_of_order > 0


def test_listener_recipe_wakes_on_the_doorbell_and_catches_up(server, dbname, db):
    db.execute("CREATE TABLE public.handled (alert_id bigint PRIMARY KEY)")
    db.execute("SELECT cep.create_consumer('recipe')")
    with db.transaction():
        before = raise_alerts(db, 3, "while_away")  # raised before the listener runs
    stop = threading.Event()

    def handle(conn, alerts):
        conn.execute("INSERT INTO public.handled SELECT unnest(%s::bigint[])",
                     ([a["alert_id"] for a in alerts],))

    t = threading.Thread(target=run_listener, kwargs=dict(
        dsn=server.dsn(dbname), consumer="recipe", handle=handle, batch=2, idle_wait=30,
        should_stop=stop.is_set))
    t.start()
    try:
        deadline = time.time() + 10
        while db.execute("SELECT count(*) FROM public.handled").fetchone()[0] < 3:
            assert time.time() < deadline
            time.sleep(0.05)
        t0 = time.time()
        with db.transaction():
            later = raise_alerts(db, 4, "live")
        while db.execute("SELECT count(*) FROM public.handled").fetchone()[0] < 7:
            assert time.time() < deadline
            time.sleep(0.02)
        # Woken by NOTIFY, not by the 30-second idle timeout.
        assert time.time() - t0 < 5
    finally:
        stop.set()
        with db.transaction():
            raise_alerts(db, 1, "wake")  # ring once more so the loop sees stop
        t.join(timeout=40)
    handled = {r[0] for r in db.execute("SELECT alert_id FROM public.handled")}
    assert set(before) | set(later) <= handled


@pytest.mark.slow
def test_immediate_shutdown_loses_and_duplicates_nothing(cluster_factory):
    cluster = cluster_factory(settings={"fsync": "on", "synchronous_commit": "on"})
    with cluster.connect() as c:
        c.execute("CREATE EXTENSION pg_cep")
        c.execute(SETUP)
        c.execute("CREATE TABLE public.processed (alert_id bigint PRIMARY KEY)")
        c.execute("SELECT cep.create_consumer('c')")
    dsn = cluster.dsn()
    stop = threading.Event()

    def producer(seed):
        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=False) as p:
                while not stop.is_set():
                    raise_alerts(p, rng.randint(1, 4), f"p{seed}")
                    p.commit()
        except psycopg.Error:
            pass

    def consumer():
        # Exactly-once pattern: the work (insert into processed) and the ack commit together.
        try:
            with psycopg.connect(dsn, autocommit=False) as w:
                while not stop.is_set():
                    ids = poll(w, "c", 100)
                    if ids:
                        w.execute("INSERT INTO public.processed SELECT unnest(%s::bigint[])", (ids,))
                        ack(w, "c", ids)
                    w.commit()
        except psycopg.Error:
            pass

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(4)]
    threads.append(threading.Thread(target=consumer))
    for t in threads:
        t.start()
    time.sleep(3)
    cluster.stop("immediate")
    stop.set()
    for t in threads:
        t.join()
    cluster.start()
    with cluster.connect(autocommit=False) as w:
        # Resume after the restart and drain.
        while True:
            ids = poll(w, "c", 500)
            if ids:
                w.execute("INSERT INTO public.processed SELECT unnest(%s::bigint[])", (ids,))
                ack(w, "c", ids)
            w.commit()
            if not ids:
                break
        committed = {r[0] for r in w.execute("SELECT alert_id FROM cep.alerts")}
        processed = {r[0] for r in w.execute("SELECT alert_id FROM public.processed")}
        # Duplicates would have violated processed's primary key and stopped the consumer.
        assert committed == processed and len(committed) > 0


def test_killed_consumer_connection_releases_its_batch(server, dbname, db):
    """A consumer whose connection dies mid-batch (poll done, no commit) loses nothing: its
    alerts are delivered again at once to the next poll."""
    db.execute("SELECT cep.create_consumer('c')")
    with db.transaction():
        ids = raise_alerts(db, 5)
    victim = server.connect(dbname, autocommit=False)
    got = poll(victim, "c", 3)
    assert got == ids[:3]
    pid = victim.info.backend_pid
    assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    victim.close()
    deadline = time.time() + 5
    while db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
        assert time.time() < deadline
        time.sleep(0.05)
    with db.transaction():
        again = poll(db, "c", 10)
        ack(db, "c", again)
    assert again == ids
    assert stats(db, "c")[:2] == (0, 0)
