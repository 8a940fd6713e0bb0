"""Patterns while cep.run_maintenance() runs: its purge of idle pattern state must not lose a
key's waiting events or race a writer of the key (on the eager and on the lazy engine).

The purge drops the state row of a key with no open run an hour of event time past the
watermark. A key that comes back after such a gap has a purgeable row while its new events
wait for the watermark (pending_t); a writer may also be about to take the row while the purge
deletes it. Each case here lost events of a strict pattern (cep.matches missed or shifted a
match that cep.find_matches finds): one serial, two with two sessions in a fixed order, and a
writer thread racing a maintenance loop over a stream whose keys pause for hours.

Also: under relaxed contiguity a statement whose events of a key satisfy no variable leaves
that key's pattern state alone, so it never waits for a session holding the key; on the lazy
engine, statements whose events cannot end a match never wait for each other either, and
cep.run_maintenance never waits for a writer."""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import time
from collections import Counter

import psycopg
import pytest

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HOUR = 3600
DEFINES = {"a": "sym = 'a'", "b": "sym = 'b'", "c": "sym = 'c'"}
INSERT_SQL = ("INSERT INTO public.ev (k, sym, ts) SELECT * FROM unnest("
              "%s::int[], %s::text[], %s::timestamptz[])")


def setup(conn, patterns):
    """Stream ev (key k, allowed lateness 30 s) with patterns {name: pattern} (strict, eager)
    or {name: (pattern, within)} (relaxed; lazy where the engine can)."""
    conn.execute("CREATE TABLE public.ev (id bigserial PRIMARY KEY, k int NOT NULL, sym text, "
                 "ts timestamptz NOT NULL)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 'ts', 'k', "
                 "allowed_lateness => '30 seconds')")
    for name, pat in patterns.items():
        pat, within = pat if isinstance(pat, tuple) else (pat, None)
        conn.execute("SELECT cep.create_pattern(%s, 'ev', %s, %s::jsonb, within => %s, "
                     "contiguity => %s)",
                     (name, pat, psycopg.types.json.Jsonb(
                         {v: c for v, c in DEFINES.items() if v in re.findall(r"\w+", pat)}),
                      within, "relaxed" if within else "strict"))


def put(conn, rows):
    """One statement: rows of (key, symbol, seconds after BASE)."""
    conn.execute(INSERT_SQL, ([r[0] for r in rows], [r[1] for r in rows],
                              [BASE + dt.timedelta(seconds=r[2]) for r in rows]))


def maintain(conn):
    """cep.run_maintenance(); the number of pattern state rows it purged."""
    return dict(conn.execute("SELECT task, items FROM cep.run_maintenance()").fetchall()).get(
        "purge_pattern_state", 0)


def matches(conn, name):
    """(live, find_matches) of a pattern as multisets of event id lists."""
    live = Counter(tuple(r[0]) for r in conn.execute(
        "SELECT event_ids FROM cep.matches WHERE pattern = %s", (name,)))
    batch = Counter(tuple(r[0]) for r in conn.execute(
        "SELECT event_ids FROM cep.find_matches(%s)", (name,)))
    return live, batch


def ids(conn, k):
    return [r[0] for r in conn.execute("SELECT id FROM public.ev WHERE k = %s ORDER BY ts, id",
                                       (k,))]


# `a a a` strict on the eager engine, relaxed within 10 minutes on the lazy one (b satisfies
# no variable there): the same matches below.
AAA = ["a a a", ("a a a", "10 minutes")]

# Key 1's events after three idle hours, beyond the watermark: they wait for it (pending_t).
COMEBACK = [(1, "a", 3 * HOUR + 10), (1, "a", 3 * HOUR + 11), (1, "a", 3 * HOUR + 12)]


def idle_key(conn):
    """Key 1 matches `a a a` and goes idle (no open run); the watermark moves three hours on,
    so key 1's state row is purgeable."""
    put(conn, [(1, "a", 0), (1, "a", 1), (1, "a", 2), (1, "b", 3)])
    put(conn, [(2, "b", HOUR)])
    maintain(conn)                       # key 1 waited for the watermark: matched now
    put(conn, [(2, "b", 3 * HOUR)])


def assert_both_matches_of_key_1(conn):
    """The watermark passes COMEBACK, the input ends: key 1 matched twice, live and batch."""
    put(conn, [(2, "b", 4 * HOUR)])
    maintain(conn)
    conn.execute("SELECT cep.advance_watermark('ev')")
    k1 = ids(conn, 1)
    live, batch = matches(conn, "aaa")
    assert live == batch == Counter([tuple(k1[0:3]), tuple(k1[4:7])])


def wait_for_lock(conn, pid, done, seconds=10.0):
    """Until session pid waits for a lock (True) or done() (False)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if done():
            return False
        if conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()[0]:
            return True
        time.sleep(0.02)
    raise AssertionError(f"session {pid} neither waited for a lock nor finished")


@pytest.mark.parametrize("aaa", AAA, ids=["eager", "lazy"])
def test_purge_keeps_a_key_whose_events_wait_for_the_watermark(conn, aaa):
    """Serial: the purge must not drop a row with waiting events (pending_t), or nobody takes
    them once the watermark reaches them."""
    setup(conn, {"aaa": aaa})
    idle_key(conn)
    put(conn, COMEBACK)
    maintain(conn)
    assert_both_matches_of_key_1(conn)


@pytest.mark.parametrize("aaa", AAA, ids=["eager", "lazy"])
def test_writer_waits_for_the_purge_of_its_key_and_recreates_the_row(conn, connect, aaa):
    """The purge deletes an idle key's row; a writer of that key, started before the purge
    commits, must wait and create the row again rather than skip the key."""
    setup(conn, {"aaa": aaa})
    idle_key(conn)
    m = connect(autocommit=False)
    assert maintain(m) >= 1              # key 1's row deleted, not committed yet
    w = connect()
    writer = threading.Thread(target=put, args=(w, COMEBACK))
    writer.start()
    assert wait_for_lock(conn, w.info.backend_pid, lambda: not writer.is_alive())
    m.commit()
    writer.join(10)
    assert not writer.is_alive()
    assert_both_matches_of_key_1(conn)


@pytest.mark.parametrize("aaa", AAA, ids=["eager", "lazy"])
def test_purge_skips_a_key_a_writer_holds(conn, connect, aaa):
    """A writer holds an idle key's row, its new events waiting for the watermark; the purge
    (which saw the row idle) must not delete it once the writer commits."""
    setup(conn, {"aaa": aaa})
    idle_key(conn)
    w = connect(autocommit=False)
    put(w, COMEBACK)
    m = connect()
    maintainer = threading.Thread(target=maintain, args=(m,))
    maintainer.start()
    # the purge either waits for the writer's row (and must not delete it afterwards) or
    # skips it
    wait_for_lock(conn, m.info.backend_pid, lambda: not maintainer.is_alive())
    w.commit()
    maintainer.join(10)
    assert not maintainer.is_alive()
    assert_both_matches_of_key_1(conn)


def clickstream(seed, keys=40, hours=10):
    """Per key, short sessions of a/b/c events seconds apart, separated by idle gaps of one
    to three hours; all events in time order, as (key, symbol, seconds after BASE)."""
    rng = random.Random(seed)
    rows = []
    for k in range(1, keys + 1):
        t = rng.uniform(0, HOUR)
        while t < hours * HOUR:
            for _ in range(rng.randint(2, 8)):
                rows.append((k, rng.choice("aaabc"), round(t, 3)))
                t += rng.uniform(1, 20)
            t += rng.uniform(1.1 * HOUR, 3 * HOUR)
    return sorted(rows, key=lambda r: r[2])


def test_strict_patterns_live_equal_find_matches_under_maintenance(conn, connect):
    """One writer inserts the clickstream in time-ordered batches while another session calls
    cep.run_maintenance() in a loop; at the end of input the live matches of strict patterns
    (and of a relaxed one with within) equal cep.find_matches."""
    pats = {"aaa": "a a a", "abc": "a b? c", "ab": "a+ b", "ac": ("a c", "10 minutes"),
            "abb": ("a b+", "10 minutes"), "lazy_aaa": ("a a a", "10 minutes")}
    setup(conn, pats)
    rows = clickstream(7)
    done = threading.Event()
    purged = []
    errors = []

    def maintainer():
        try:
            with connect() as m:
                while not done.is_set():
                    purged.append(maintain(m))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    helper = threading.Thread(target=maintainer)
    helper.start()
    try:
        w = connect()
        i = 0
        rng = random.Random(1)
        while i < len(rows):
            n = rng.randint(5, 40)
            put(w, rows[i:i + n])
            i += n
            time.sleep(0.002)
    finally:
        done.set()
        helper.join(30)
    assert not errors, errors
    assert sum(purged) > 0, "the maintenance loop purged no pattern state: test too weak"
    assert dict(conn.execute("SELECT engine, count(*) FROM cep.patterns GROUP BY 1").fetchall()) \
        == {"eager": 3, "lazy": 3}
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert conn.execute("SELECT count(*) FROM cep.pattern_late_events").fetchone()[0] == 0
    for name in pats:
        live, batch = matches(conn, name)
        assert sum(batch.values()) > 10, name
        assert live == batch, (name, sorted((batch - live).elements()),
                               sorted((live - batch).elements()))


def test_relaxed_pattern_skips_keys_whose_events_satisfy_no_variable(conn, connect):
    """Relaxed contiguity, eager engine: a statement whose events of a key satisfy none of
    the variables takes no turn of the matcher for that key (no lock, no write), so it does
    not wait for a session holding the key; a statement with an event that can match still
    waits. The results are those of any serial order."""
    setup(conn, {})
    conn.execute("SELECT cep.create_pattern('ab', 'ev', 'a b', '{\"a\": \"sym = ''a''\", "
                 "\"b\": \"sym = ''b''\"}', within => '1 hour', engine => 'eager')")
    holder = connect(autocommit=False)
    put(holder, [(1, "a", 0)])                        # holds key 1's pattern state
    other = connect()
    other.execute("SET lock_timeout = '3s'")
    put(other, [(1, "c", 1), (1, "c", 2)])            # returns at once
    with pytest.raises(psycopg.errors.LockNotAvailable):
        put(other, [(1, "b", 3)])                     # waits for the holder's commit
    holder.commit()
    put(other, [(1, "b", 4), (2, "c", 100)])
    conn.execute("SELECT cep.advance_watermark('ev')")
    k1 = ids(conn, 1)                                 # a, c, c, b
    live, batch = matches(conn, "ab")
    assert live == batch == Counter([(k1[0], k1[3])])
    assert conn.execute("SELECT count(*) FROM cep.pattern_late_events").fetchone()[0] == 0


def test_lazy_pattern_writers_wait_only_where_a_key_is_matched(conn, connect):
    """Lazy engine: statements whose events of a key cannot end a match (or wait for the
    watermark) hold the key's row of cep.pattern_keys FOR KEY SHARE and do not wait for each
    other; a statement that matches the key (an event that can end a match, reached by the
    watermark) waits for them and sees their events; cep.run_maintenance never waits for a
    writer, it leaves a key a writer holds to its next call. The results are those of the
    serial order."""
    setup(conn, {"ab": ("a b", "1 hour")})            # c satisfies neither a nor b
    assert conn.execute("SELECT engine FROM cep.patterns").fetchone()[0] == "lazy"
    put(conn, [(1, "c", 0), (1, "b", 1)])             # key 1 has its row
    holder = connect(autocommit=False)
    put(holder, [(1, "a", 10)])                       # can start a match: KEY SHARE
    other = connect()
    other.execute("SET lock_timeout = '3s'")
    put(other, [(1, "a", 11), (1, "b", 12)])          # b waits for the watermark: no wait
    maint = connect()
    maint.execute("SET lock_timeout = '3s'")
    put(other, [(2, "c", 100)])                       # the watermark (70) passes key 1's b
    maintain(maint)                                   # leaves key 1: the holder has it
    assert matches(conn, "ab")[0] == Counter()
    with pytest.raises(psycopg.errors.LockNotAvailable):
        put(other, [(1, "b", 101), (2, "c", 200)])    # matches key 1: waits for the holder
    holder.commit()
    maintain(maint)                                   # now it matches key 1
    k1 = ids(conn, 1)                                 # c, b, a (holder's), a, b
    # relaxed: a a b, so the match starts at the second a
    assert matches(conn, "ab")[0] == Counter([(k1[3], k1[4])])
    conn.execute("SELECT cep.advance_watermark('ev')")
    live, batch = matches(conn, "ab")
    assert live == batch == Counter([(k1[3], k1[4])])
    assert conn.execute("SELECT count(*) FROM cep.pattern_late_events").fetchone()[0] == 0


def test_maintenance_keeps_no_lazy_turn_that_missed_an_event_committed_meanwhile(conn, connect):
    """cep.run_maintenance matches lazy keys without their locks and keeps a key's turn only
    if it can then lock the key and its events are still those it read. Here a session whose
    statement began before the watermark passed its event (so the event is on time) commits
    it while maintenance is reading the key (a DEFINE condition sleeps in that session only):
    the turn, which did not see the event, is dropped, and the next call matches the key with
    it. Strict `a b`: the event (c) breaks the match maintenance would have written."""
    sleepy = ("sym = 'a' AND (nullif(current_setting('cep_test.sleep', true), '') IS NULL "
              "OR pg_sleep(nullif(current_setting('cep_test.sleep', true), '')::float8) "
              "IS NOT NULL)")
    conn.execute("CREATE TABLE public.ev (id bigserial PRIMARY KEY, k int NOT NULL, sym text, "
                 "ts timestamptz NOT NULL)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 'ts', 'k', "
                 "allowed_lateness => '10 seconds')")
    conn.execute("SELECT cep.create_pattern('ab', 'ev', 'a b', %s::jsonb, within => '1 hour', "
                 "contiguity => 'strict', engine => 'lazy')",
                 (psycopg.types.json.Jsonb({"a": sleepy, "b": "sym = 'b'"}),))
    put(conn, [(1, "a", 30)])
    put(conn, [(1, "b", 45)])                 # waits for the watermark (35)
    writer = connect(autocommit=False)
    put(writer, [(1, "c", 40)])               # on time (watermark 35); uncommitted
    put(conn, [(2, "c", 100)])                # the watermark (90) passes b
    m = connect()
    m.execute("SET cep_test.sleep = '1'")
    maintainer = threading.Thread(target=maintain, args=(m,))
    maintainer.start()
    # maintenance reads key 1 (a, b: the c is not committed) and sleeps on the a
    deadline = time.monotonic() + 10
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND "
                           "wait_event = 'PgSleep'", (m.info.backend_pid,)).fetchone()[0]:
        assert time.monotonic() < deadline, "maintenance never read key 1"
        time.sleep(0.02)
    writer.commit()
    maintainer.join(30)
    assert not maintainer.is_alive()
    live, batch = matches(conn, "ab")
    assert live == Counter() and batch == Counter()   # a c b: no match
    m.execute("RESET cep_test.sleep")
    maintain(m)
    conn.execute("SELECT cep.advance_watermark('ev')")
    live, batch = matches(conn, "ab")
    assert live == batch == Counter()
    assert conn.execute("SELECT count(*) FROM cep.pattern_late_events").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 0
