"""Crash safety: an immediate shutdown (and a killed backend) during a multi-client load loses
nothing that PostgreSQL kept: after restart the stream's bookkeeping equals a recomputation
from the rows that survived in the event table."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import psycopg
import pytest

pytestmark = pytest.mark.slow

DDL = """
CREATE EXTENSION pg_cep;
CREATE TABLE public.ev (id bigserial PRIMARY KEY, user_id integer NOT NULL,
                        amount numeric NOT NULL, created_at timestamptz NOT NULL);
SELECT cep.create_stream('ev', 'public.ev', 'created_at', 'user_id',
                         allowed_lateness => '5 seconds');
"""

INSERT = """
INSERT INTO public.ev (user_id, amount, created_at)
SELECT (random() * 50)::int, (random() * 1000)::numeric(10, 2),
       now() - interval '1 hour' + (%s + g) * interval '1 millisecond'
           - (random() * 20) * interval '1 second'
FROM generate_series(1, %s) AS g
"""


def load(dsn: str, stop: threading.Event, seed: int, counter: list):
    rng = random.Random(seed)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            offset = 0
            while not stop.is_set():
                n = rng.choice([1, 10, 200])
                offset += n
                c.execute(INSERT, (offset, n))
                counter.append(n)
    except psycopg.Error:
        pass  # the server went away under us: expected


def consistent(conn):
    rows, maxt = conn.execute("SELECT count(*), max(created_at) FROM public.ev").fetchone()
    stats = conn.execute(
        "SELECT events_total, late_events, watermark FROM cep.stream_stats").fetchone()
    late_ok = conn.execute(
        "SELECT count(*) FROM cep.late_events AS l LEFT JOIN public.ev AS e ON e.id = l.event_id "
        "WHERE e.id IS NULL").fetchone()[0]
    assert stats[0] == rows
    assert late_ok == 0
    assert stats[1] == conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0]
    if rows:
        assert stats[2] == conn.execute(
            "SELECT %s::timestamptz - interval '5 seconds'", (maxt,)).fetchone()[0]
    return rows


def test_immediate_shutdown_during_load(cluster_factory):
    cluster = cluster_factory(settings={"fsync": "on", "synchronous_commit": "on"})
    with cluster.connect() as c:
        c.execute(DDL)
    stop, counter = threading.Event(), []
    threads = [threading.Thread(target=load, args=(cluster.dsn(), stop, s, counter))
               for s in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    cluster.stop("immediate")
    stop.set()
    for t in threads:
        t.join()
    cluster.start()
    with cluster.connect() as c:
        rows = consistent(c)
    # Every acknowledged commit survived; at most the in-flight statements are extra.
    assert rows > 0 and sum(counter) <= rows <= sum(counter) + 4 * 200


def test_killed_backend_during_load(cluster_factory):
    cluster = cluster_factory()
    with cluster.connect() as c:
        c.execute(DDL)
    stop, counter = threading.Event(), []
    threads = [threading.Thread(target=load, args=(cluster.dsn(), stop, s, counter))
               for s in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with cluster.connect() as c:
        pids = [r[0] for r in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%INSERT INTO public.ev%' "
            "AND pid <> pg_backend_pid()")]
    assert pids
    os.kill(pids[0], signal.SIGKILL)  # the postmaster restarts every backend (crash recovery)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    for _ in range(60):
        try:
            with cluster.connect() as c:
                consistent(c)
                break
        except psycopg.OperationalError:
            time.sleep(0.5)
    else:
        pytest.fail("server did not come back after the killed backend")
