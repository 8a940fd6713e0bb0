"""cep.partition_stream and the partition tasks of cep.run_maintenance(), against the contract:
epoch-aligned partitions of a fixed-length interval named after their UTC lower bound, made from
now's bucket through `premake` buckets ahead, each indexed on (key, time); a refusing default
partition so that an event beyond the last partition fails clearly (23514) instead of landing
silently; retention by drop or detach; idempotent and concurrency-safe maintenance; bad input
refused with nothing created. Expected partitions are computed in Python from the database's
clock, never from the SQL under test."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import psycopg
import pytest

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

TX_DDL = """
CREATE TABLE public.tx (
    id bigint NOT NULL,
    user_id integer NOT NULL,
    amount numeric NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
"""

NO_PARTITION = re.compile(r'no partition of ("?public"?\.)?"?tx"? for "?created_at"?')


# --- helpers -------------------------------------------------------------------------------

def db_now(conn) -> dt.datetime:
    """The database's wall clock, in UTC."""
    return conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(UTC)


def bucket(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """date_bin(step, t, '1970-01-01 00:00+00'), computed independently."""
    return t - (t - EPOCH) % step


def settle(conn, step: dt.timedelta = HOUR, margin_s: float = 20.0) -> dt.datetime:
    """Wait until the database clock is not within margin_s of the next bucket boundary, so that
    "now's bucket" cannot change between the call under test and the checks. Returns the
    bucket of now."""
    now = db_now(conn)
    left = (bucket(now, step) + step - now).total_seconds()
    if left < margin_s:
        time.sleep(left + 1.0)
        now = db_now(conn)
    return bucket(now, step)


def part_name(table: str, lo: dt.datetime) -> str:
    lo = lo.astimezone(UTC) if lo.tzinfo else lo
    return f"{table}_p{lo:%Y%m%d}_{lo:%H%M%S}"


def expected_parts(table: str, b: dt.datetime, first: int, last: int,
                   step: dt.timedelta = HOUR, naive: bool = False) -> dict:
    """{name: (lower, upper)} for buckets b + first*step .. b + last*step; naive = bounds of a
    timestamp-without-time-zone column (UTC wall clock)."""
    out = {}
    for i in range(first, last + 1):
        lo = b + i * step
        hi = lo + step
        if naive:
            out[part_name(table, lo)] = (lo.replace(tzinfo=None), hi.replace(tzinfo=None))
        else:
            out[part_name(table, lo)] = (lo, hi)
    return out


def partitions(conn, table: str = "public.tx", bound_type: str = "timestamptz"):
    """(range partitions {name: (lower, upper)}, [names of default partitions]) of TABLE's
    direct children, read from pg_partition_tree and pg_get_expr(relpartbound)."""
    rows = conn.execute(
        f"""SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT',
                   m[1]::{bound_type}, m[2]::{bound_type}, n.nspname
            FROM pg_partition_tree(%s::regclass) AS t
            JOIN pg_class AS c ON c.oid = t.relid
            JOIN pg_namespace AS n ON n.oid = c.relnamespace
            LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                $$FROM \\('([^']*)'\\) TO \\('([^']*)'\\)$$) AS m ON true
            WHERE t.level = 1""", (table,)).fetchall()
    schema = table.split(".")[0] if "." in table else "public"
    for r in rows:
        assert r[4] == schema, f"partition {r[0]} is in schema {r[4]}, not {schema}"
    ranges = {r[0]: (r[2], r[3]) for r in rows if not r[1]}
    defaults = sorted(r[0] for r in rows if r[1])
    return ranges, defaults


def index_keys(conn, table: str = "public.tx") -> dict[str, set[tuple[str, ...]]]:
    """{partition: {key columns of each of its indexes}}."""
    rows = conn.execute(
        """SELECT c.relname, i.indexrelid,
                  array_agg(a.attname::text ORDER BY k.ord)
           FROM pg_partition_tree(%s::regclass) AS t
           JOIN pg_class AS c ON c.oid = t.relid
           JOIN pg_index AS i ON i.indrelid = c.oid
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, ord)
           JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = k.attnum
           WHERE t.level = 1 AND k.ord <= i.indnkeyatts
           GROUP BY 1, 2""", (table,)).fetchall()
    out: dict[str, set[tuple[str, ...]]] = {}
    for name, _idx, cols in rows:
        out.setdefault(name, set()).add(tuple(cols))
    return out


def stats(conn, stream: str = "tx"):
    return conn.execute(
        "SELECT events_total, batches_total, late_events, watermark, last_event_time "
        "FROM cep.stream_stats WHERE stream = %s", (stream,)).fetchone()


def maintenance(conn) -> dict[str, int]:
    report = dict(conn.execute("SELECT task, items FROM cep.run_maintenance()").fetchall())
    assert not any(k.startswith("skipped") for k in report), report
    return report


def setup_tx(conn, premake: int | None = None, **kw) -> int | None:
    conn.execute(TX_DDL)
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', 'id')")
    if premake is None:
        return None
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = "SELECT cep.partition_stream('tx', '1 hour', premake => %(premake)s" + \
        (", " + args if args else "") + ")"
    return conn.execute(sql, {"premake": premake, **kw}).fetchone()[0]


def insert(conn, rows, table: str = "public.tx"):
    """One multi-row INSERT statement (one batch of the stream)."""
    conn.execute(f"INSERT INTO {table} (id, user_id, amount, created_at) VALUES "
                 + ", ".join(["(%s, %s, %s, %s)"] * len(rows)), [v for r in rows for v in r])


def count(conn, table: str = "public.tx") -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def exists(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def assert_refused(exc, table_re=NO_PARTITION):
    err = exc.value
    assert err.sqlstate == "23514", (err.sqlstate, str(err))
    assert table_re.search(err.diag.message_primary or ""), err.diag.message_primary
    hint = err.diag.message_hint or ""
    assert "run_maintenance" in hint and "premake" in hint, hint


# --- happy path ----------------------------------------------------------------------------

@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_partition_stream_creates_aligned_indexed_partitions(conn, tz):
    conn.execute(f"SET TimeZone = '{tz}'")  # names and bounds must not depend on it
    conn.execute(TX_DDL)
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', 'id')")
    b = settle(conn)
    made = conn.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 3)").fetchone()[0]
    assert bucket(db_now(conn), HOUR) == b

    want = expected_parts("tx", b, 0, 3)
    ranges, defaults = partitions(conn)
    assert ranges == want
    assert made == 4
    assert defaults == ["tx_cep_default"]
    assert conn.execute("SELECT count(*) FROM cep.partitioned_streams").fetchone()[0] == 1

    keys = index_keys(conn)
    for name in want:
        assert ("user_id", "created_at") in keys.get(name, set()), (name, keys.get(name))

    # Events now and two hours ahead land in their partitions and are counted by the stream.
    now = db_now(conn)
    insert(conn, [(1, 7, 10, now), (2, 8, 20, now + 2 * HOUR)])
    assert count(conn) == 2
    assert count(conn, f"public.{part_name('tx', b)}") == 1
    assert count(conn, f"public.{part_name('tx', b + 2 * HOUR)}") == 1
    # The last instant of the last partition is still inside.
    insert(conn, [(3, 7, 1, b + 4 * HOUR - dt.timedelta(microseconds=1))])
    before = stats(conn)
    assert before[0] == 3 and before[1] == 2

    # Beyond the last partition: refused clearly, nothing applied anywhere.
    bad = [
        [(10, 7, 1, now + 10 * HOUR)],
        [(11, 7, 1, b + 4 * HOUR)],                         # first instant past the last one
        [(12, 7, 1, now), (13, 7, 1, now + 10 * HOUR)],     # one bad row fails the statement
    ]
    for rows in bad:
        with pytest.raises(psycopg.Error) as exc:
            insert(conn, rows)
        assert_refused(exc)
    with pytest.raises(psycopg.Error) as exc:
        with conn.cursor().copy(
                "COPY public.tx (id, user_id, amount, created_at) FROM STDIN") as cp:
            cp.write_row((14, 7, 1, now + 10 * HOUR))
    assert_refused(exc)
    # An UPDATE moving a row past the last partition is routed to the default one: refused too.
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("UPDATE public.tx SET created_at = created_at + interval '10 hours' "
                     "WHERE id = 1")
    assert_refused(exc)

    assert count(conn) == 3
    assert count(conn, "public.tx_cep_default") == 0
    assert stats(conn) == before
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 0


def test_timestamp_without_time_zone_in_other_schema(conn):
    """A timestamp column is read as UTC wall clock whatever the session's TimeZone; partitions
    are created in the table's schema."""
    conn.execute("SET TimeZone = 'America/Los_Angeles'")
    conn.execute("CREATE SCHEMA ledger")
    conn.execute("""
        CREATE TABLE ledger.tx (
            id bigint NOT NULL, user_id integer NOT NULL, amount numeric NOT NULL,
            created_at timestamp NOT NULL, PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)""")
    conn.execute("SELECT cep.create_stream('ltx', 'ledger.tx', 'created_at', 'user_id', 'id')")
    b = settle(conn)
    made = conn.execute("SELECT cep.partition_stream('ltx', '1 hour', premake => 2)").fetchone()[0]
    assert bucket(db_now(conn), HOUR) == b

    want = expected_parts("tx", b, 0, 2, naive=True)
    ranges, defaults = partitions(conn, "ledger.tx", "timestamp")
    assert ranges == want and made == 3
    assert defaults == ["tx_cep_default"]
    keys = index_keys(conn, "ledger.tx")
    for name in want:
        assert ("user_id", "created_at") in keys.get(name, set()), (name, keys.get(name))

    now = db_now(conn).replace(tzinfo=None)  # UTC wall clock
    insert(conn, [(1, 1, 1, now), (2, 1, 1, now + 2 * HOUR)], "ledger.tx")
    assert count(conn, "ledger.tx") == 2
    assert count(conn, f"ledger.{part_name('tx', b)}") == 1
    before = stats(conn, "ltx")
    assert before[0] == 2
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, [(3, 1, 1, now + 10 * HOUR)], "ledger.tx")
    assert_refused(exc, re.compile(r'no partition of ("?ledger"?\.)?"?tx"? for "?created_at"?'))
    assert count(conn, "ledger.tx") == 2 and stats(conn, "ltx") == before


def test_quoted_names(conn):
    """Mixed-case table, key and time column names that need quoting."""
    conn.execute("""
        CREATE TABLE public."Tx" (
            id bigint NOT NULL, "User Id" integer NOT NULL, "Created At" timestamptz NOT NULL,
            PRIMARY KEY (id, "Created At")
        ) PARTITION BY RANGE ("Created At")""")
    conn.execute("""SELECT cep.create_stream('q', 'public."Tx"', 'Created At', 'User Id', 'id')""")
    b = settle(conn)
    made = conn.execute("SELECT cep.partition_stream('q', '1 hour', premake => 1)").fetchone()[0]
    assert made == 2
    want = expected_parts("Tx", b, 0, 1)
    ranges, defaults = partitions(conn, 'public."Tx"')
    assert ranges == want and defaults == ["Tx_cep_default"]
    keys = index_keys(conn, 'public."Tx"')
    for name in want:
        assert ("User Id", "Created At") in keys.get(name, set()), (name, keys.get(name))
    now = db_now(conn)
    conn.execute("""INSERT INTO public."Tx" VALUES (1, 1, %s)""", (now,))
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("""INSERT INTO public."Tx" VALUES (2, 1, %s)""", (now + 10 * HOUR,))
    assert_refused(exc, re.compile(r'no partition of ("?public"?\.)?"?Tx"? for "?Created At"?'))
    assert count(conn, 'public."Tx"') == 1 and stats(conn, "q")[0] == 1
    assert bucket(db_now(conn), HOUR) == b


# --- idempotence, premake ------------------------------------------------------------------

def test_maintenance_is_idempotent_and_premake_can_be_raised(conn):
    b = settle(conn)
    assert setup_tx(conn, premake=3) == 4
    want = expected_parts("tx", b, 0, 3)

    first = maintenance(conn)
    second = maintenance(conn)
    assert first["premake_partitions"] == 0 and second["premake_partitions"] == 0
    assert first["retire_partitions"] == 0 and second["retire_partitions"] == 0
    assert partitions(conn)[0] == want

    # Calling partition_stream again with the same settings creates nothing.
    assert conn.execute(
        "SELECT cep.partition_stream('tx', '1 hour', premake => 3)").fetchone()[0] == 0

    # Raising premake: the call creates what is missing, maintenance then has nothing to do.
    made = conn.execute(
        "SELECT cep.partition_stream('tx', '1 hour', premake => 6)").fetchone()[0]
    assert made == 3
    assert maintenance(conn)["premake_partitions"] == 0
    want = expected_parts("tx", b, 0, 6)
    assert partitions(conn)[0] == want
    assert conn.execute("SELECT count(*) FROM cep.partitioned_streams").fetchone()[0] == 1

    # Partitions that went missing are made again by maintenance (with their index), once.
    for i in (5, 6):
        conn.execute(f"DROP TABLE public.{part_name('tx', b + i * HOUR)}")
    assert maintenance(conn)["premake_partitions"] == 2
    assert maintenance(conn)["premake_partitions"] == 0
    assert partitions(conn)[0] == want
    keys = index_keys(conn)
    for name in want:
        assert ("user_id", "created_at") in keys.get(name, set()), name
    assert bucket(db_now(conn), HOUR) == b


def test_existing_partitions_are_respected(conn):
    """User partitions (even unaligned, several buckets wide) are kept; no overlapping partition
    is created; a gap left between them is refused like any instant without a partition."""
    b = settle(conn)
    setup_tx(conn)

    def iso(t):
        return t.isoformat()

    conn.execute(f"CREATE TABLE public.tx_mine_a PARTITION OF public.tx "
                 f"FOR VALUES FROM ('{iso(b + HOUR)}') TO ('{iso(b + 3 * HOUR)}')")
    conn.execute(f"CREATE TABLE public.tx_mine_b PARTITION OF public.tx "
                 f"FOR VALUES FROM ('{iso(b + 4.5 * HOUR)}') TO ('{iso(b + 6 * HOUR)}')")
    made = conn.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 5)").fetchone()[0]
    assert made == 2
    want = expected_parts("tx", b, 0, 0) | expected_parts("tx", b, 3, 3)
    want["tx_mine_a"] = (b + HOUR, b + 3 * HOUR)
    want["tx_mine_b"] = (b + 4.5 * HOUR, b + 6 * HOUR)
    assert partitions(conn)[0] == want
    assert maintenance(conn)["premake_partitions"] == 0
    assert partitions(conn)[0] == want

    insert(conn, [(1, 1, 1, b + 2 * HOUR), (2, 1, 1, b + 4.75 * HOUR)])
    assert count(conn, "public.tx_mine_a") == 1 and count(conn, "public.tx_mine_b") == 1
    with pytest.raises(psycopg.Error) as exc:
        insert(conn, [(3, 1, 1, b + 4.25 * HOUR)])
    assert_refused(exc)
    assert count(conn) == 2
    assert bucket(db_now(conn), HOUR) == b


def test_own_default_partition_is_left_alone(conn):
    b = settle(conn)
    conn.execute(TX_DDL)
    conn.execute("CREATE TABLE public.tx_def PARTITION OF public.tx DEFAULT")
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', 'id')")
    made = conn.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 1)").fetchone()[0]
    assert made == 2
    ranges, defaults = partitions(conn)
    assert ranges == expected_parts("tx", b, 0, 1) and defaults == ["tx_def"]
    assert not exists(conn, "public.tx_cep_default")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.tx_def'::regclass "
                        "AND NOT tgisinternal").fetchone()[0] == 0
    insert(conn, [(1, 1, 1, db_now(conn) + 10 * HOUR)])  # the user's default takes it
    assert count(conn, "public.tx_def") == 1
    assert maintenance(conn)["premake_partitions"] == 0
    assert bucket(db_now(conn), HOUR) == b


# --- retention -----------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["drop", "detach"])
def test_retention_retires_old_partitions(conn, action):
    b = settle(conn)
    setup_tx(conn, premake=2)
    old = {  # upper bound <= now() - 1 day: retired
        "tx_old_3d": (b - 72 * HOUR, b - 71 * HOUR),
        "tx_old_edge": (b - 25 * HOUR, b - 24 * HOUR),
    }
    kept = {  # upper bound > now() - 1 day: kept
        "tx_keep_edge": (b - 24 * HOUR, b - 23 * HOUR),
        "tx_keep_2h": (b - 2 * HOUR, b - HOUR),
    }
    for name, (lo, hi) in (old | kept).items():
        conn.execute(f"CREATE TABLE public.{name} PARTITION OF public.tx "
                     f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")
    rows, rid = [], 0
    for lo, _hi in sorted((old | kept).values()) + [(b, None)]:
        for k in range(2):
            rid += 1
            rows.append((rid, k, rid, lo + dt.timedelta(minutes=10 * k)))
    insert(conn, rows)
    assert count(conn) == 10
    current = expected_parts("tx", b, 0, 2)
    assert partitions(conn)[0] == current | old | kept

    made = conn.execute(
        "SELECT cep.partition_stream('tx', '1 hour', premake => 2, retention => '1 day', "
        "retention_action => %s)", (action,)).fetchone()[0]
    assert made == 0
    still_old = set(partitions(conn)[0]) & set(old)
    report = maintenance(conn)
    assert report["retire_partitions"] == len(still_old)
    assert report["premake_partitions"] == 0
    ranges, defaults = partitions(conn)
    assert ranges == current | kept
    assert defaults == ["tx_cep_default"]
    # Rows of kept partitions are intact.
    assert sorted(r[0] for r in conn.execute("SELECT id FROM public.tx")) == \
        [r[0] for r in rows if r[3] >= b - 24 * HOUR]
    for name in kept:
        assert count(conn, f"public.{name}") == 2

    for name in old:
        if action == "drop":
            assert not exists(conn, f"public.{name}"), name
        else:
            kind, is_part = conn.execute(
                "SELECT relkind, relispartition FROM pg_class WHERE oid = %s::regclass",
                (f"public.{name}",)).fetchone()
            assert (kind, is_part) == ("r", False), name
            assert count(conn, f"public.{name}") == 2

    again = maintenance(conn)
    assert again["retire_partitions"] == 0 and again["premake_partitions"] == 0
    assert partitions(conn)[0] == current | kept
    assert bucket(db_now(conn), HOUR) == b


def test_retention_equal_to_interval_is_accepted(conn):
    b = settle(conn)
    setup_tx(conn, premake=0, retention="1 hour")
    lo, hi = (b - 2 * HOUR).isoformat(), (b - HOUR).isoformat()
    conn.execute(f"CREATE TABLE public.tx_prev PARTITION OF public.tx "
                 f"FOR VALUES FROM ('{lo}') TO ('{hi}')")
    # upper bound b - 1h <= now() - 1h: retired; now's bucket is kept.
    assert maintenance(conn)["retire_partitions"] == 1
    assert partitions(conn)[0] == expected_parts("tx", b, 0, 0)
    assert bucket(db_now(conn), HOUR) == b


# --- concurrency ---------------------------------------------------------------------------

def _make_work(conn, b):
    """Remove two premade partitions and add one past retention: maintenance has 2 + 1 to do."""
    for i in (2, 3):
        conn.execute(f"DROP TABLE IF EXISTS public.{part_name('tx', b + i * HOUR)}")
    conn.execute(f"CREATE TABLE public.tx_ancient PARTITION OF public.tx FOR VALUES "
                 f"FROM ('{(b - 50 * HOUR).isoformat()}') TO ('{(b - 49 * HOUR).isoformat()}')")


def _sum(reports, task):
    return sum(r.get(task, 0) for r in reports)


def test_concurrent_maintenance_equals_one_call(server, dbname, connect):
    conn = connect()
    b = settle(conn, margin_s=30)
    setup_tx(conn, premake=3, retention="1 day")
    want = expected_parts("tx", b, 0, 3)

    # Two sessions released together, a few rounds.
    for _round in range(3):
        _make_work(conn, b)
        barrier = threading.Barrier(2)
        reports, errors = [], []

        def worker():
            try:
                with server.connect(dbname) as c:
                    barrier.wait(10)
                    reports.append(dict(c.execute(
                        "SELECT task, items FROM cep.run_maintenance()").fetchall()))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert len(reports) == 2
        assert _sum(reports, "premake_partitions") == 2, reports
        assert _sum(reports, "retire_partitions") == 1, reports
        assert partitions(conn)[0] == want
        assert not exists(conn, "public.tx_ancient")

    # One session inside an open transaction that ran maintenance; the other one at that moment.
    _make_work(conn, b)
    holder = connect(autocommit=False)
    first = dict(holder.execute("SELECT task, items FROM cep.run_maintenance()").fetchall())
    result, errors = [], []

    def other():
        try:
            with server.connect(dbname) as c:
                c.execute("SET statement_timeout = '20s'")
                result.append(dict(c.execute(
                    "SELECT task, items FROM cep.run_maintenance()").fetchall()))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(3)
    holder.commit()
    t.join(30)
    assert not t.is_alive()
    assert not errors, errors
    reports = [first] + result
    assert _sum(reports, "premake_partitions") == 2, reports
    assert _sum(reports, "retire_partitions") == 1, reports
    assert partitions(conn)[0] == want
    assert maintenance(conn)["premake_partitions"] == 0
    assert bucket(db_now(conn), HOUR) == b


# --- drop_stream ---------------------------------------------------------------------------

def test_drop_stream_keeps_partitions_and_rows(conn):
    b = settle(conn)
    setup_tx(conn, premake=2)
    now = db_now(conn)
    insert(conn, [(1, 1, 1, now), (2, 1, 1, now + HOUR)])
    conn.execute("SELECT cep.drop_stream('tx')")
    assert conn.execute("SELECT count(*) FROM cep.partitioned_streams").fetchone()[0] == 0
    ranges, defaults = partitions(conn)
    assert ranges == expected_parts("tx", b, 0, 2)
    assert count(conn) == 2
    # No trigger of pg_cep is left on the table or its partitions.
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger AS g "
        "WHERE (g.tgrelid = 'public.tx'::regclass OR g.tgrelid IN ("
        "    SELECT inhrelid FROM pg_inherits WHERE inhparent = 'public.tx'::regclass)) "
        "AND NOT g.tgisinternal").fetchone()[0] == 0
    # The contract keeps the default partition (minus its trigger); dropping the empty one is
    # accepted too. Either way an event past the last partition no longer hits pg_cep.
    assert defaults in ([], ["tx_cep_default"])
    if defaults:
        insert(conn, [(3, 1, 1, now + 10 * HOUR)])
        assert count(conn) == 3 and count(conn, "public.tx_cep_default") == 1
    else:
        with pytest.raises(psycopg.errors.CheckViolation) as exc:
            insert(conn, [(3, 1, 1, now + 10 * HOUR)])
        assert "pg_cep" not in str(exc.value) and "run_maintenance" not in str(exc.value)
    report = maintenance(conn)
    assert report["premake_partitions"] == 0 and report["retire_partitions"] == 0
    assert bucket(db_now(conn), HOUR) == b


def test_drop_stream_keeps_rows_that_bypassed_the_trigger(conn):
    """Triggers do not fire under session_replication_role = replica (logical replication
    apply, restores with disabled triggers): such rows land in the default partition, and
    drop_stream must not throw them away ("the partitions and their rows stay")."""
    setup_tx(conn, premake=1)
    now = db_now(conn)
    conn.execute("SET session_replication_role = replica")
    insert(conn, [(1, 1, 1, now + 10 * HOUR)])
    conn.execute("RESET session_replication_role")
    assert count(conn, "public.tx_cep_default") == 1
    conn.execute("SELECT cep.drop_stream('tx')")
    assert count(conn) == 1


# --- concurrency with partition_stream ----------------------------------------------------

def test_partition_stream_and_maintenance_at_once(server, dbname, connect):
    """An administrator's partition_stream in an open transaction and a scheduled
    run_maintenance that needs the same partitions: the latter must not fail."""
    conn = connect()
    b = settle(conn, margin_s=30)
    setup_tx(conn, premake=3)
    for i in (2, 3):
        conn.execute(f"DROP TABLE public.{part_name('tx', b + i * HOUR)}")
    admin = connect(autocommit=False)
    made = admin.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 3)").fetchone()[0]
    assert made == 2
    result, errors = [], []

    def cron():
        try:
            with server.connect(dbname) as c:
                c.execute("SET statement_timeout = '20s'")
                result.append(dict(c.execute(
                    "SELECT task, items FROM cep.run_maintenance()").fetchall()))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=cron)
    t.start()
    t.join(2)
    admin.commit()
    t.join(30)
    assert not t.is_alive()
    assert not errors, errors
    assert partitions(conn)[0] == expected_parts("tx", b, 0, 3)
    assert maintenance(conn)["premake_partitions"] == 0
    assert bucket(db_now(conn), HOUR) == b


# --- bad input -----------------------------------------------------------------------------

def _snapshot(conn):
    rels = conn.execute(
        "SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    ).fetchone()[0]
    trig = conn.execute("SELECT count(*) FROM pg_trigger").fetchone()[0]
    settings = conn.execute("SELECT count(*) FROM cep.partitioned_streams").fetchone()[0]
    return rels, trig, settings


def test_bad_input_is_refused_and_creates_nothing(conn):
    setup_tx(conn)
    conn.execute("CREATE TABLE public.plain (id bigint PRIMARY KEY, user_id int, t timestamptz)")
    conn.execute("CREATE TABLE public.listed (id bigint, user_id int, t timestamptz) "
                 "PARTITION BY LIST (t)")
    conn.execute("CREATE TABLE public.by_id (id bigint, user_id int, t timestamptz) "
                 "PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE public.two_cols (id bigint, user_id int, t timestamptz) "
                 "PARTITION BY RANGE (t, id)")
    for table in ["plain", "listed", "by_id", "two_cols"]:
        conn.execute(f"SELECT cep.create_stream('s_{table}', 'public.{table}', 't', 'user_id', "
                     "'id')")
    assert conn.execute("SELECT count(*) FROM cep.partitioned_streams").fetchone()[0] == 0
    before = _snapshot(conn)

    cases = [
        ("SELECT cep.partition_stream('s_plain', '1 hour')", "42P16", "plain"),
        ("SELECT cep.partition_stream('s_listed', '1 hour')", "42P16", "listed"),
        ("SELECT cep.partition_stream('s_by_id', '1 hour')", "42P16", "by_id"),
        ("SELECT cep.partition_stream('s_two_cols', '1 hour')", "42P16", "two_cols"),
        ("SELECT cep.partition_stream('tx', '1 hour', premake => -1)", "22023", None),
        ("SELECT cep.partition_stream('tx', '0 seconds')", "22023", None),
        ("SELECT cep.partition_stream('tx', '-1 hour')", "22023", None),
        ("SELECT cep.partition_stream('tx', NULL)", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 month')", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 mon 2 days')", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 year')", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 day', retention => '23 hours')", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 hour', retention => '59 minutes')", "22023", None),
        ("SELECT cep.partition_stream('tx', '1 hour', retention => '1 day', "
         "retention_action => 'archive')", "22023", None),
        ("SELECT cep.partition_stream('nope', '1 hour')", "42704", None),
    ]
    for sql, state, table in cases:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(sql)
        assert exc.value.sqlstate == state, (sql, exc.value.sqlstate, str(exc.value))
        if table:
            assert table in (exc.value.diag.message_primary or ""), (sql, str(exc.value))
        assert _snapshot(conn) == before, sql

    # A failed call on an already partitioned stream leaves its settings as they were.
    b = settle(conn)
    assert conn.execute(
        "SELECT cep.partition_stream('tx', '1 hour', premake => 1)").fetchone()[0] == 2
    mid = _snapshot(conn)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 5, "
                     "retention => '1 day', retention_action => 'archive')")
    assert exc.value.sqlstate == "22023"
    assert _snapshot(conn) == mid
    assert maintenance(conn)["premake_partitions"] == 0
    assert partitions(conn)[0] == expected_parts("tx", b, 0, 1)
    assert bucket(db_now(conn), HOUR) == b
