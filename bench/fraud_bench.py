"""Fraud-profile part of `make bench` (issue 8; imported by bench/run_bench.py, which runs it
after the recommendations part, or alone with --fraud-only; --skip-fraud skips it).

The full fraud profile on one stream, `transactions` (the insert part's table, indexes and
statements): two windows -- per user, 5 minutes sliding every minute, count(*) and
sum(amount); globally, 1-minute tumbling count(*) -- the seed's four rules and policy
(bench/rules_bench.py: scores summed, medium 0.4, high 0.7 alerting, block at 0.9), one
pattern (three transactions over 1000 of one user within 10 minutes, `a{3}`), alerting on (rule
and pattern alerts, NOTIFY doorbell, one durable consumer queueing every alert).

Variants, each in its own database, fresh table (and stream) per measurement:
  (a) plain table;
  (p) the full profile;
  (g) the seed's per-row design: the FOR EACH ROW trigger calling the seed's
      evaluate_risk_rules() of bench/rules_bench.py (rules only: the seed had no windows or
      patterns on the insert path);
  (pf) the floor of (p) for any exact rule engine: the two windows and the pattern, and instead
      of the rules rules_bench's floor (fs) -- one state row per key of the statement rewritten,
      then the rows (p) wrote for the same events in its previous run (assessments, rule
      alerts, consumer queue, rule log, the UPDATE of blocked rows) written again, nothing read
      or evaluated (an untimed (p) run first if the workload has none yet);
and, for the breakdown ("which part of the ingest function takes the time"), on the 2-client
workloads, the stream with one feature alone: (b) nothing (stream bookkeeping and the alert
consumer), (w) the two windows, (r) the four rules and policy, (m) the pattern; plus one
untimed run of (p) per 2-client workload in a database with track_functions = 'all', whose
pg_stat_user_functions shows the time per event in the generated ingest function (bookkeeping,
windows and rules are inline SQL there) and in the functions it calls (the pattern matcher,
alerts).

Asynchronous stream (--skip-fraud-async leaves it out): the same table, data and definitions
with the stream created with mode => 'async', whose writers only check their rows and queue
one cep.stream_queue row per statement:
  (q) on every workload: the writers' throughput (events/s, ratio to (a), target 0.8) and
      statement latency, over its runs and --fraud-writer-pairs extra writer-only runs of (a)
      and (q) per repeat (the writers of both take about 0.1 s per workload, too short for two
      samples); the warm-up's queue is applied before the timed part (untimed); after
      the last writer, one session calls cep.process_stream('transactions',
      --fraud-process-rows) until it returns 0: processing events/s, and the processing
      function's µs/event (cep.stream_stats, which for an async stream measures processing);
  (qc) on the 2-client workloads: one more session calls cep.process_stream in a loop while the
      writers write: the writers' throughput, the backlog (cep.stream_stats) when the last
      writer finished, and the time until the queue is empty.

Workloads: rules_bench's "realistic" transactions (demo/workload.py at 10 per user and day,
skewed activity, ~2% fraud events in bursts: the bursts' large amounts are what the pattern
finds), for 4,800 users, i.e. 2,000 transactions per hour of event time, as 1000-row INSERT
batches and as single-row INSERTs, each from 2 and from 8 concurrent client connections
(autocommit). Every statement's latency is recorded by its client.

The bench replays hours of event time in seconds, so the statements in flight at once arrive
out of order by up to clients x statement rows / 2,000 hours of event time (4 hours for eight
1000-row batches). Each workload's allowed lateness is 1.5 times that (at least 10 minutes), so
that events do not take the late path (late events are counted and reported), and its warm-up
is the rows just before the measured ones, spanning at least the allowed lateness, spread
round robin over the clients: the measured inserts find the windows closing and the pattern
processing events at the rate they arrive.

Correctness guard after every measurement with pg_cep (a failure ends the bench with exit
code 1 after the results are written): rows stored; for rules, rules_bench's checks
(large_amount and night_time assessed exactly on the rows an independent query finds, one
assessment per event, blocked rows = blocked assessments, rule alerts = high assessments); for
the pattern and the windows, after cep.advance_watermark (untimed): every row the pattern's
variable accepts was processed by the pattern or counted late (to the stream or the pattern),
the live matches equal cep.find_matches over the stored rows (when nothing was late), the
global window counts every on-time event once and the per-user hopping window five times, and
every alert is queued for the consumer. For (q) and (qc) also: every queued event processed
exactly once (processed = inserted = counted by cep.stream_stats, queue empty); against (p) of
the same repeat (same rows; other arrival order and ids): equal windows and equal matches
(by the events' contents), when nothing was late in either run and, for the matches, nothing
late to (p)'s pattern (what depends on which statements ran concurrently -- trailing rule
metrics, a (p) writer's rows late to the pattern -- is reported side by side, not compared);
in the last repeat, (q) against (s), the untimed replay of (q)'s rows under their ids on a
synchronous stream with the same definitions, one statement at a time in (q)'s queue order:
the windows, transactions (status), risk assessments (rule names), matches, alerts, the
consumer's queue, late events, row for row.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import psycopg

import rules_bench
import workload

TARGET_P_A = 0.35                # full profile / plain table (issue 8)
TARGET_Q_A = 0.8                 # async stream, writer side / plain table
PROCESS_ROWS = 10_000            # max_rows of each cep.process_stream call (async variants)
# (a) and (q)'s writers take 0.1 s per workload: extra writer-only pairs per workload and repeat
# (about 0.6 s each) make their ratio a median of more than a couple of samples
WRITER_PAIRS = 4
# ... each over more rows than the other runs, so that a run lasts about half a second
WRITER_ROWS = 200_000
WRITER_SINGLE_ROWS = 12_000
CLIENT_COUNTS = (2, 8)
USERS = 4800                     # at rules_bench's 10 transactions per user and day:
RATE = USERS * rules_bench.REALISTIC_PER_USER_DAY / 24     # 2,000 per hour of event time
MIN_LATENESS_MIN = 10
MIN_WARM_SINGLE = 480            # warm-up single rows (at least), split over the clients
FEATURES = ("windows", "rules", "pattern")

WINDOWS_SQL = """
SELECT cep.create_window('tx_user_5m', 'transactions', 'hopping', '5 minutes', '1 minute',
    group_by => '{user_id}', aggregates => '{count(*), sum(amount)}');
SELECT cep.create_window('tx_global_1m', 'transactions', 'tumbling', '1 minute');
"""
PATTERN_SQL = ("SELECT cep.create_pattern('burst3', 'transactions', 'a{3}', "
               "'{\"a\": \"amount > 1000\"}', within => '10 minutes')")
CONSUMER = "fraud_desk"
CLEAN_SQL = rules_bench.CEP_CLEAN_SQL + ", cep.matches"


@dataclass(frozen=True)
class FVariant:
    key: str
    name: str
    database: str
    kind: str                            # plain | cep | seed
    features: tuple = ()
    mode: str = "sync"                   # the stream's mode (cep.create_stream mode =>)
    processor: bool = False              # async: cep.process_stream runs alongside the writers


PLAIN = FVariant("a", "(a) plain table", "fraud_plain", "plain")
FULL = FVariant("p", "(p) full fraud profile", "fraud_full", "cep", FEATURES)
SEED = FVariant("g", "(g) seed's per-row rule trigger", "fraud_seed", "seed")
# What the profile cannot go below with any rule engine that computes the trailing windows
# exactly: its windows and pattern, and instead of the rules rules_bench's cheapest such floor
# (fs) -- one state row per key of the statement rewritten (which locks it), then the rows (p)
# wrote for the same events in its previous run written again; nothing read or evaluated.
FLOOR = FVariant("pf", "(pf) windows + pattern + rules' floor", "fraud_floor", "cep",
                 ("windows", "pattern", "floor"))
MAIN_VARIANTS = [PLAIN, FULL, SEED, FLOOR]
DECISIONS: dict = {}                     # workload key -> the rows (p) wrote, by event
# The full profile on an asynchronous stream: (q) the writers only queue, cep.process_stream
# applies the queue after they finish (timed separately); (qc) one session runs
# cep.process_stream in a loop while the writers write.
ASYNC = FVariant("q", "(q) full profile, async stream", "fraud_async", "cep", FEATURES, "async")
ASYNC_LIVE = FVariant("qc", "(qc) async, processor alongside", "fraud_async", "cep", FEATURES,
                      "async", True)
ASYNC_VARIANTS = [ASYNC, ASYNC_LIVE]
# Untimed reference for (q)'s guard: the full profile on a synchronous stream, fed (q)'s rows
# (same ids) one statement at a time in (q)'s queue order, i.e. the order cep.process_stream
# applied them.
REPLAY = FVariant("s", "(s) sync, (q)'s statements replayed serially", "fraud_replay", "cep",
                  FEATURES)
# One extra, untimed run of the full profile with track_functions = 'all' (its own database):
# time per event in each function the ingest function calls (pg_stat_user_functions).
PROFILED = FVariant("p*", "(p) with track_functions", "fraud_profiled", "cep", FEATURES)
PARTS = [
    FVariant("b", "(b) stream + consumer only", "fraud_parts", "cep"),
    FVariant("w", "(w) + 2 windows only", "fraud_parts", "cep", ("windows",)),
    FVariant("r", "(r) + 4 rules only", "fraud_parts", "cep", ("rules",)),
    FVariant("m", "(m) + pattern only", "fraud_parts", "cep", ("pattern",)),
]


@dataclass
class FWorkload:
    key: str
    title: str
    sql: str
    items: list
    rows: int
    warmup: list
    clients: int
    batch: bool
    warm_rows: int
    lateness_min: int
    facts: dict | None = None


@dataclass
class FMeasurement:
    seconds: float
    events: int
    latencies: list
    extra: dict

    @property
    def eps(self) -> float:
        return self.events / self.seconds


# -- arguments --------------------------------------------------------------------------------

def add_arguments(p, exclusive_group) -> None:
    p.add_argument("--fraud-rows", type=int, default=40_000,
                   help="fraud part: rows of the batch workloads (default 40000)")
    p.add_argument("--fraud-single-rows", type=int, default=3_000,
                   help="fraud part: rows of the single-row workloads (default 3000)")
    p.add_argument("--fraud-repeat", type=int, default=2,
                   help="fraud part: measurements per variant and workload (default 2)")
    p.add_argument("--fraud-process-rows", type=int, default=PROCESS_ROWS,
                   help="fraud part, async variant: max_rows of each cep.process_stream call "
                        f"(default {PROCESS_ROWS})")
    p.add_argument("--fraud-writer-rows", type=int, default=WRITER_ROWS,
                   help="fraud profile: rows of each writer-side run of (a) and (q) in "
                        f"1000-row batches (default {WRITER_ROWS})")
    p.add_argument("--fraud-writer-single-rows", type=int, default=WRITER_SINGLE_ROWS,
                   help="fraud profile: rows of each writer-side run of (a) and (q) as "
                        f"single-row INSERTs (default {WRITER_SINGLE_ROWS})")
    p.add_argument("--fraud-writer-pairs", type=int, default=WRITER_PAIRS,
                   help="fraud part, async variant: extra writer-side measurements of (a) and "
                        f"(q) per workload and repeat (default {WRITER_PAIRS})")
    p.add_argument("--skip-fraud-async", action="store_true",
                   help="fraud part: skip the async stream variants (q), (qc)")
    exclusive_group.add_argument("--fraud-only", action="store_true",
                                 help="run only the fraud profile part")
    p.add_argument("--skip-fraud", action="store_true", help="skip the fraud profile part")


def check_args(p, args) -> None:
    if args.fraud_only and args.skip_fraud:
        p.error("--fraud-only and --skip-fraud exclude each other")
    if (args.fraud_rows < 1000 * max(CLIENT_COUNTS) or args.fraud_single_rows < 500
            or args.fraud_repeat < 1 or args.fraud_process_rows < 1
            or args.fraud_writer_pairs < 0 or args.fraud_writer_rows < 1000 * max(CLIENT_COUNTS)
            or args.fraud_writer_single_rows < 500):
        p.error(f"need --fraud-rows >= {1000 * max(CLIENT_COUNTS)}, --fraud-single-rows >= "
                "500, --fraud-repeat >= 1, --fraud-process-rows >= 1, --fraud-writer-pairs >= 0, "
                f"--fraud-writer-rows >= {1000 * max(CLIENT_COUNTS)}, "
                "--fraud-writer-single-rows >= 500")


# -- data -------------------------------------------------------------------------------------

def _slice(ev: workload.EventBatch, lo: int, hi: int) -> workload.EventBatch:
    return workload.EventBatch(table=ev.table, columns=ev.columns,
                               data={k: v[lo:hi] for k, v in ev.data.items()},
                               created_at_us=ev.created_at_us[lo:hi], facts=ev.facts)


def transactions(n: int, seed: int, end_us: int) -> workload.EventBatch:
    """rules_bench's realistic transactions (demo/workload.py, 10 per user and day, ~2% fraud
    events in bursts), for a fixed USERS: RATE transactions per hour of event time."""
    return workload.transactions(n, seed, end_us, span_hours=n / RATE, n_users=USERS,
                                 late_fraction=0.0)


def lateness_minutes(clients: int, statement_rows: int) -> int:
    """The replay's reordering: the statements in flight span clients x statement_rows / RATE
    hours of event time; allowed lateness 1.5 times that, at least MIN_LATENESS_MIN."""
    return max(MIN_LATENESS_MIN, int(np.ceil(1.5 * clients * statement_rows / RATE * 60)))


def prepare_workloads(args, base, rows: int | None = None,
                      single_rows: int | None = None) -> list[FWorkload]:
    """Per client count: the same measured rows (ROWS and SINGLE_ROWS, by default
    --fraud-rows and --fraud-single-rows), and a warm-up of the rows just before them
    that spans at least the allowed lateness (so the measured inserts find a stream in steady
    state: windows closing and the pattern processing events at the rate they arrive)."""
    rows = args.fraud_rows if rows is None else rows
    single_rows = args.fraud_single_rows if single_rows is None else single_rows
    end = int(time.time() * workload.US) - 5 * workload.US
    rows_per_batch = base.BATCH_ROWS
    out = []

    def warm_count(c: int, statement_rows: int, minimum: int) -> int:
        need = int(np.ceil(lateness_minutes(c, statement_rows) / 60 * RATE / statement_rows))
        return -(-max(need, minimum) // c) * c
    warm_b = {c: warm_count(c, rows_per_batch, c) for c in CLIENT_COUNTS}
    n_warm = max(warm_b.values()) * rows_per_batch
    ev = transactions(rows + n_warm, args.seed + 300, end)
    warm, meas = _slice(ev, 0, n_warm), _slice(ev, n_warm, len(ev))
    items, warm_items = (base.batch_items(meas, rows_per_batch),
                         base.batch_items(warm, rows_per_batch))
    facts = rules_bench.describe(meas)
    for c in CLIENT_COUNTS:
        w = warm_items[len(warm_items) - warm_b[c]:]
        out.append(FWorkload(f"batch_{c}", f"1000-row batches, {c} clients", base.BATCH_SQL,
                             items, len(meas), w, c, True, len(w) * rows_per_batch,
                             lateness_minutes(c, rows_per_batch), facts))
    warm_s = {c: warm_count(c, 1, MIN_WARM_SINGLE) for c in CLIENT_COUNTS}
    n_warm = max(warm_s.values())
    ev = transactions(single_rows + n_warm, args.seed + 301, end)
    warm, meas = _slice(ev, 0, n_warm), _slice(ev, n_warm, len(ev))
    rows, warm_rows = meas.value_rows(), warm.value_rows()
    facts = rules_bench.describe(meas)
    for c in CLIENT_COUNTS:
        w = warm_rows[len(warm_rows) - warm_s[c]:]
        out.append(FWorkload(f"single_{c}", f"single-row INSERTs, {c} clients",
                             base.SINGLE_SQL, rows, len(meas), w, c, False, len(w),
                             lateness_minutes(c, 1), facts))
    return out


# -- setup ------------------------------------------------------------------------------------

def setup_databases(cluster, base, with_async: bool = True) -> None:
    everything = MAIN_VARIANTS + PARTS + [PROFILED] + (ASYNC_VARIANTS + [REPLAY]
                                                       if with_async else [])
    for db in dict.fromkeys(v.database for v in everything):
        cluster.create_database(db)
        kinds = {v.kind for v in everything if v.database == db}
        with cluster.connect(db) as conn:
            if db == PROFILED.database:
                conn.execute(f"ALTER DATABASE {db} SET track_functions = 'all'")
            conn.execute("SET client_min_messages = warning")
            if "cep" in kinds:
                conn.execute("CREATE EXTENSION pg_cep")
                conn.execute("SELECT cep.create_consumer(%s)", (CONSUMER,))
            if "seed" in kinds:
                conn.execute(base.TABLE_SQL)       # the seed's function refers to the table
                conn.execute(rules_bench.SEED_FUNCTIONS_SQL)


def _prepare(admin, v: FVariant, wl: FWorkload, base) -> None:
    admin.execute("SET client_min_messages = warning")
    if v.kind == "cep":
        admin.execute("SELECT cep.drop_stream(name) FROM cep.streams")
        admin.execute(CLEAN_SQL)
    admin.execute(base.TABLE_SQL)
    if v.kind == "cep":
        admin.execute("SELECT cep.create_stream('transactions', 'transactions', 'created_at', "
                      f"key_column => 'user_id', allowed_lateness => "
                      f"'{wl.lateness_min} minutes', mode => '{v.mode}')")
        if "windows" in v.features:
            admin.execute(WINDOWS_SQL)
        if "rules" in v.features:
            admin.execute(rules_bench.SEED_RULES_SQL)
            admin.execute(rules_bench.POLICY_SQL)
        if "pattern" in v.features:
            admin.execute(PATTERN_SQL)
        if "floor" in v.features:
            rules_bench.install_floor(admin, DECISIONS[wl.key], "state")
    if v.kind == "seed":
        admin.execute(rules_bench.SEED_SETUP_SQL)
    admin.execute("CHECKPOINT")


# -- measurement ------------------------------------------------------------------------------

def _client(dsn: str, wl: FWorkload, shared: dict, warmed, go, warm: list, done: list,
            latencies: list, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            for params in warm:
                cur.execute(wl.sql, params)
            warmed.wait()
            go.wait()
            lock, items = shared["lock"], shared["items"]
            clock = time.perf_counter
            mine = []
            while True:
                with lock:
                    i = shared["next"]
                    shared["next"] = i + 1
                if i >= len(items):
                    break
                t = clock()
                cur.execute(wl.sql, items[i])
                mine.append(clock() - t)
            done.append(clock())
            latencies.extend(mine)
    except BaseException as exc:
        errors.append(exc)
        warmed.abort()
        go.abort()


def _processor(dsn: str, max_rows: int, go, writers_done: threading.Event, out: dict,
               errors: list) -> None:
    """(qc): cep.process_stream in a loop from one session while the writers write, until the
    queue is empty after the last writer finished."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            go.wait()
            clock = time.perf_counter
            events = calls = 0
            busy = 0.0
            while True:
                # an empty queue after every writer committed stays empty
                last = writers_done.is_set()
                t = clock()
                n = cur.execute(PROCESS_SQL, (max_rows,)).fetchone()[0]
                calls += 1
                if n:
                    events += n
                    busy += clock() - t
                elif last:
                    break
                else:
                    time.sleep(0.002)
            out.update(events=events, calls=calls, busy=busy, finished=clock())
    except BaseException as exc:
        errors.append(exc)
        go.abort()


PROCESS_SQL = "SELECT cep.process_stream('transactions', %s)"
BACKLOG_SQL = ("SELECT backlog_statements, backlog_events, "
               "coalesce(extract(epoch FROM processing_lag), 0)::float8 "
               "FROM cep.stream_stats WHERE stream = 'transactions'")


def process_queue(conn, max_rows: int) -> tuple[int, int, float]:
    """cep.process_stream(stream, max_rows) calls until one returns 0 (nobody else processes
    this stream): events processed, calls, seconds."""
    events = calls = 0
    t = time.perf_counter()
    while True:
        n = conn.execute(PROCESS_SQL, (max_rows,)).fetchone()[0]
        calls += 1
        if not n:
            break
        events += n
    return events, calls, time.perf_counter() - t


def queued_statements(conn, columns) -> tuple[list[list[int]], dict[int, tuple]]:
    """The queued statements' event ids in queue order (the order cep.process_stream applies
    them once every writer has committed) and their rows as stored (before processing, which
    may block some): what the replay (s) inserts."""
    order = [ids for (ids,) in conn.execute(
        "SELECT array_agg(g.id ORDER BY g.id) FROM cep.stream_queue AS q "
        "CROSS JOIN LATERAL unnest(q.ids) AS r (span) "
        "CROSS JOIN LATERAL generate_series(lower(r.span), upper(r.span) - 1) AS g (id) "
        "GROUP BY q.seq ORDER BY q.seq")]
    rows = {r[0]: r for r in conn.execute(
        f"SELECT t.id, {', '.join('t.' + c for c in columns)} FROM transactions AS t "
        "WHERE t.id IN (SELECT g.id FROM cep.stream_queue AS q "
        "CROSS JOIN LATERAL unnest(q.ids) AS r (span) "
        "CROSS JOIN LATERAL generate_series(lower(r.span), upper(r.span) - 1) AS g (id))")}
    return order, rows


def measure(cluster, v: FVariant, wl: FWorkload, base, reset_stats: bool = False,
            process_rows: int = PROCESS_ROWS, replay: bool = False,
            writer_only: bool = False, compare: bool = True) -> FMeasurement:
    """One measurement of V on WL; for (q) with REPLAY, the guard against the replay (s); with
    WRITER_ONLY, an async stream's writers alone (nothing processed, no guard: the queue goes
    with the stream at the next measurement); COMPARE: the digest of (p), (q), (qc) for
    compare_with_sync."""
    if "floor" in v.features and wl.key not in DECISIONS:
        measure(cluster, FULL, wl, base, compare=False)        # (p), untimed: its rows
    dsn = cluster.dsn(v.database)
    is_async = v.mode == "async"
    replay = replay and is_async and not v.processor and not writer_only
    with cluster.connect(v.database) as admin:
        _prepare(admin, v, wl, base)
        if reset_stats:
            admin.execute("SELECT pg_stat_reset()")
        shared = {"lock": threading.Lock(), "items": wl.items, "next": 0}
        parties = wl.clients + 1 + (1 if v.processor else 0)
        warmed = threading.Barrier(wl.clients + 1)
        go = threading.Barrier(parties)
        done: list[float] = []
        latencies: list[float] = []
        errors: list[BaseException] = []
        # round robin: the warm-up statements in flight are neighbours in event time, as later
        threads = [threading.Thread(
            target=_client, daemon=True,
            args=(dsn, wl, shared, warmed, go, wl.warmup[i::wl.clients], done, latencies,
                  errors)) for i in range(wl.clients)]
        for th in threads:
            th.start()
        writers_done = threading.Event()
        proc_out: dict = {}
        processor = None
        if v.processor:
            processor = threading.Thread(
                target=_processor, daemon=True,
                args=(dsn, process_rows, go, writers_done, proc_out, errors))
            processor.start()
        before = None
        warm_max = 0
        replay_order: list = []
        replay_rows: dict = {}
        try:
            warmed.wait()
            warm_max = admin.execute(
                "SELECT coalesce(max(id), 0) FROM transactions").fetchone()[0]
            if is_async and not writer_only:
                # the warm-up's queue is applied before the timed part (untimed): the measured
                # statements find the same state as the synchronous stream's
                if replay:
                    replay_order, replay_rows = queued_statements(admin, base.COLUMNS)
                process_queue(admin, process_rows)
            if v.kind == "cep":
                before = base.stream_counters(admin)
            go.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        writers_done.set()
        if errors:
            raise RuntimeError(f"{v.name}, {wl.title}: {errors[0]}") from errors[0]
        m = FMeasurement(max(done) - t0, wl.rows, latencies, {})
        if is_async:
            # the backlog when the last writer finished
            st, ev, lag = admin.execute(BACKLOG_SQL).fetchone()
            m.extra.update(backlog_statements=st, backlog_events=ev, backlog_lag_seconds=lag)
        stored = admin.execute("SELECT count(*) FROM transactions").fetchone()[0]
        if stored != wl.rows + wl.warm_rows:
            raise RuntimeError(f"{v.name}, {wl.title}: {stored} rows stored, expected "
                               f"{wl.rows + wl.warm_rows}")
        if writer_only:
            return m
        if is_async and v.processor:
            processor.join()
            if errors:
                raise RuntimeError(f"{v.name}, {wl.title}: {errors[0]}") from errors[0]
            end = proc_out["finished"]
            m.extra.update(processed_events=proc_out["events"], process_calls=proc_out["calls"],
                           process_seconds=end - t0, process_busy_seconds=proc_out["busy"],
                           drain_seconds=max(0.0, end - max(done)))
        elif is_async:
            if replay:
                order, rows = queued_statements(admin, base.COLUMNS)
                replay_order += order
                replay_rows.update(rows)
            events, calls, seconds = process_queue(admin, process_rows)
            m.extra.update(processed_events=events, process_calls=calls,
                           process_seconds=seconds)
        if is_async:
            m.extra["process_events_per_second"] = m.extra["processed_events"] / max(
                1e-9, m.extra["process_seconds"])
        if v.kind == "cep":
            after = base.stream_counters(admin)
            m.extra["ingest_micros_per_event"] = ((after[1] - before[1])
                                                  / max(1, after[0] - before[0]))
            m.extra["late_events"] = after[2] - before[2]
            checks = {}
            if is_async:
                left = admin.execute(BACKLOG_SQL).fetchone()[1]
                _ok(checks, "async: every queued event processed once, queue empty",
                    m.extra["processed_events"] == wl.rows == after[0] - before[0]
                    and left == 0,
                    f"{m.extra['processed_events']} processed, {after[0] - before[0]} logged, "
                    f"{wl.rows} inserted, {left} still queued")
            if v.key == "p":
                DECISIONS[wl.key] = rules_bench.capture_decisions(admin)
            m.extra.update(check_cep(admin, v, warm_max, stored))
            if "floor" in v.features:
                want = rules_bench.floor_expected(DECISIONS[wl.key])
                got = m.extra.pop("floor_rows")
                _ok(checks, "floor: (p)'s assessments, blocks and rule alerts written again",
                    got == want, f"{got} (assessments, blocked, rule alerts); (p) wrote {want}")
            m.extra["checks"] = {**checks, **m.extra["checks"]}
            if compare and v.key in ("p", "q", "qc"):
                m.extra["digest"] = digest(admin, CONTENT_DIGEST, outputs=True)
        if replay:
            ok, detail = check_replay(cluster, wl, base, admin, replay_order, replay_rows)
            _ok(m.extra["checks"], "async = sync (last repeat): (q) equals (s), (q)'s "
                "statements replayed serially in queue order", ok, detail)
    return m


# -- correctness guard ------------------------------------------------------------------------

def _ok(checks: dict, name: str, ok: bool, detail: str) -> None:
    checks[name] = "ok" if ok else f"FAILED: {detail}"


def check_cep(conn, v: FVariant, warm_max: int, stored: int) -> dict:
    """Untimed, after the measured inserts (see the module docstring)."""
    out: dict = {"checks": {}}
    c = out["checks"]
    if "rules" in v.features:
        r = rules_bench.check_cep(conn, SimpleNamespace(kind="seed_rules"), {}, warm_max)
        c.update(r.pop("checks"))
        out.update({k: r[k] for k in ("assessments", "alerts", "blocked", "rule_hits")})
    if "floor" in v.features:
        total, alerts, blocked_t = conn.execute(
            "SELECT count(*), "
            "(SELECT count(*) FROM cep.alerts WHERE source_kind = 'rule'), "
            "(SELECT count(*) FROM transactions WHERE status = 'blocked') "
            "FROM cep.risk_assessments").fetchone()
        out.update(assessments=total, blocked=blocked_t)
        out["floor_rows"] = (total, blocked_t, alerts)
    late = conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0]
    conn.execute("SELECT cep.advance_watermark('transactions')")
    if "pattern" in v.features:
        # every event the pattern's variable accepts: processed, or counted late (a writer
        # whose keys another writer advanced past its uncommitted rows counts all of those
        # rows late to the pattern, also those no variable accepts: only the accepted ones are
        # counted here)
        events, plate, a_plate, a_rows, a_late = conn.execute(
            "SELECT p.events, p.late_events, (SELECT count(*) FROM cep.pattern_late_events AS l "
            "JOIN transactions AS t ON t.id = l.event_id WHERE l.pattern_id = p.pattern_id AND "
            "t.amount > 1000), (SELECT count(*) FROM transactions WHERE "
            "amount > 1000), (SELECT count(*) FROM cep.late_events AS l JOIN transactions AS t "
            "ON t.id = l.event_id WHERE t.amount > 1000) "
            "FROM cep.pattern_stats AS p WHERE p.pattern = 'burst3'").fetchone()
        out["pattern_late"] = plate
        _ok(c, "pattern: every event with amount > 1000 processed or counted late",
            events + a_plate + a_late == a_rows,
            f"{a_rows} such rows: {events} processed, {a_plate} late to the pattern ({plate} "
            f"rows in all), {a_late} late to the stream, "
            f"{a_rows - events - a_plate - a_late} unaccounted")
        live = conn.execute(
            "SELECT partition_key, event_ids FROM cep.matches WHERE pattern = 'burst3' "
            "ORDER BY 1, 2").fetchall()
        out["matches"] = len(live)
        if late == 0 and out["pattern_late"] == 0:
            batch = conn.execute(
                "SELECT partition_key, event_ids FROM cep.find_matches('burst3') "
                "ORDER BY 1, 2").fetchall()
            _ok(c, "pattern: live matches = find_matches", live == batch,
                f"{len(live)} live, {len(batch)} from find_matches")
        else:
            c["pattern: live matches = find_matches"] = (
                f"skipped ({late} late events, {out['pattern_late']} late to the pattern)")
    if "windows" in v.features:
        g, u = conn.execute(
            "SELECT (SELECT coalesce(sum(count), 0) FROM tx_global_1m), "
            "(SELECT coalesce(sum(count), 0) FROM tx_user_5m)").fetchone()
        _ok(c, "windows: global 1m counts each event once, per-user 5m/1m five times",
            g == stored - late and u == 5 * (stored - late),
            f"global {g}, per user {u}, {stored} stored, {late} late")
    alerts, queued = conn.execute(
        "SELECT (SELECT count(*) FROM cep.alerts), (SELECT count(*) FROM cep.consumer_pending)"
    ).fetchone()
    out["alerts_total"] = alerts
    _ok(c, "every alert queued for the consumer", alerts == queued,
        f"{alerts} alerts, {queued} queued")
    return out


# Derived results as text rows, hashed in sorted order by digest(): STRICT row for row with
# event ids (the replay (s) stores (q)'s rows under their ids), rule ids as names (each database
# numbers its rules); CONTENT without ids, for another run over the same data, whose rows are
# numbered in that run's arrival order (the windows hold no ids).
WINDOW_DIGEST = {
    "window tx_user_5m": "SELECT w::text FROM tx_user_5m AS w",
    "window tx_global_1m": "SELECT w::text FROM tx_global_1m AS w",
}
STRICT_DIGEST = {
    **WINDOW_DIGEST,
    "transactions": "SELECT t::text FROM transactions AS t",
    "cep.risk_assessments": (
        "SELECT concat_ws('|', a.event_id, a.partition_key, a.event_time, a.total_score, "
        "a.level, a.blocked, a.rule_versions, a.shadow_score, (SELECT array_agg(r.name "
        "ORDER BY u.o) FROM unnest(a.triggered_rules) WITH ORDINALITY AS u (id, o) "
        "JOIN cep.rules AS r ON r.rule_id = u.id)) FROM cep.risk_assessments AS a"),
    "cep.matches": (
        "SELECT concat_ws('|', m.pattern, m.partition_key, m.first_time, m.last_time, "
        "m.event_ids, m.classifiers, m.last_event_id) FROM cep.matches AS m"),
    "cep.alerts": (
        "SELECT concat_ws('|', x.source_kind, x.source_name, x.partition_key, x.event_id, "
        "x.severity, x.score, x.message, x.details - '{rules,rule_set_id}'::text[], "
        "(SELECT array_agg(r ->> 'name' ORDER BY o) FROM jsonb_array_elements(x.details -> "
        "'rules') WITH ORDINALITY AS e (r, o))) FROM cep.alerts AS x"),
    "cep.consumer_pending (count)": "SELECT count(*)::text FROM cep.consumer_pending",
    "cep.late_events": (
        "SELECT concat_ws('|', l.event_id, l.event_time, l.partition_key, l.watermark) "
        "FROM cep.late_events AS l"),
    "cep.pattern_late_events": (
        "SELECT concat_ws('|', l.event_id, l.event_time, l.partition_key) "
        "FROM cep.pattern_late_events AS l"),
}
CONTENT_DIGEST = {
    **WINDOW_DIGEST,
    "matches (event contents)": (
        "SELECT concat_ws('|', m.pattern, m.partition_key, m.first_time, m.last_time, "
        "m.classifiers, (SELECT array_agg(concat_ws(' ', t.created_at, t.amount) ORDER BY u.o) "
        "FROM unnest(m.event_ids) WITH ORDINALITY AS u (id, o) JOIN transactions AS t "
        "ON t.id = u.id)) FROM cep.matches AS m"),
}


def digest(conn, queries: dict, outputs: bool = False) -> dict:
    """Per result: [rows, md5 of the rows' texts in sorted order]; with OUTPUTS also the
    assessments per level, the alerts per kind and the late events (for the report)."""
    out = {}
    for name, q in queries.items():
        n, h = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(d.x, E'\\n' ORDER BY d.x), '')) "
            f"FROM ({q}) AS d (x)").fetchone()
        out[name] = [n, h]
    if outputs:
        out["levels"] = dict(conn.execute(
            "SELECT level || CASE WHEN blocked THEN ' (blocked)' ELSE '' END, count(*) "
            "FROM cep.risk_assessments GROUP BY 1 ORDER BY 1").fetchall())
        out["alerts"] = dict(conn.execute(
            "SELECT source_kind, count(*) FROM cep.alerts GROUP BY 1 ORDER BY 1").fetchall())
        out["late"], out["pattern_late"] = conn.execute(
            "SELECT (SELECT count(*) FROM cep.late_events), "
            "(SELECT count(*) FROM cep.pattern_late_events)").fetchone()
    return out


REPLAY_SQL = ("INSERT INTO transactions (id, {cols}) SELECT * FROM unnest(%s::bigint[], "
              "%s::int[], %s::numeric[], %s::text[], %s::text[], %s::timestamptz[])")


def check_replay(cluster, wl: FWorkload, base, conn, order: list, rows: dict
                 ) -> tuple[bool, str]:
    """(q)'s guard: the same definitions on a synchronous stream (database of (s)), fed (q)'s
    rows with their ids one statement at a time in (q)'s queue order, then
    cep.advance_watermark as check_cep does: every derived result equal, row for row."""
    sql = REPLAY_SQL.format(cols=base.COLS)
    with cluster.connect(REPLAY.database) as rconn:
        _prepare(rconn, REPLAY, wl, base)
        cur = rconn.cursor()
        for ids in order:
            cur.execute(sql, [list(c) for c in zip(*(rows[i] for i in ids))])
        rconn.execute("SELECT cep.advance_watermark('transactions')")
        want = digest(rconn, STRICT_DIGEST)
    got = digest(conn, STRICT_DIGEST)
    bad = [f"{k}: {got[k][0]} rows vs {want[k][0]}" + (" (same count, rows differ)"
                                                     if got[k][0] == want[k][0] else "")
           for k in STRICT_DIGEST if got[k] != want[k]]
    return not bad, "; ".join(bad)


def compare_with_sync(q: FMeasurement, p: FMeasurement) -> None:
    """(q) or (qc) against (p) of the same repeat (same rows, another arrival order and other
    ids): the results that do not depend on which statements ran concurrently must be equal,
    when nothing was late in either run (late events are left out of windows and patterns): the
    windows, and the matches when (p) also had no event late to the pattern (a (p) writer whose
    keys another writer advanced past its uncommitted rows counts them late to the pattern; the
    async stream applies its statements one at a time). Assessments (an event gets one when a
    rule fires), levels and alerts are reported side by side, not compared: a synchronous
    writer's trailing rule metrics (high_frequency, location_change) do not see the rows of the
    statements running concurrently, the async stream's see every statement queued earlier;
    the stateless rules are checked against independent counts in both runs."""
    c = q.extra.setdefault("checks", {})
    dq, dp = q.extra.get("digest"), p.extra.get("digest")
    if not dq or not dp:
        return
    late = f"{dp['late']} events late in (p), {dq['late']} here"
    name = "async vs (p): windows equal"
    if dq["late"] or dp["late"]:
        c[name] = f"skipped ({late})"
    else:
        bad = [k for k in WINDOW_DIGEST if dq[k] != dp[k]]
        _ok(c, name, not bad, "; ".join(f"{k}: {dq[k][0]} rows vs {dp[k][0]}" for k in bad))
    name = "async vs (p): matches equal"
    k = "matches (event contents)"
    if dq["late"] or dp["late"] or dp["pattern_late"]:
        c[name] = (f"skipped ({late}, {dp['pattern_late']} late to the pattern in (p); "
                   f"{dq[k][0]} matches here, {dp[k][0]} in (p))")
    else:
        _ok(c, name, dq[k] == dp[k], f"{dq[k][0]} matches vs {dp[k][0]}")


# -- driver -----------------------------------------------------------------------------------

def _failed(m: FMeasurement) -> list[str]:
    return [f"{k}: {x}" for k, x in m.extra.get("checks", {}).items()
            if x != "ok" and not x.startswith("skipped")]


def _note(m: FMeasurement) -> str:
    note = ""
    if "process_events_per_second" in m.extra:
        # asynchronous: the events/s before are the writers'; here the processing
        x = m.extra
        if "drain_seconds" in x:
            note += (f"  backlog {x['backlog_events']:,} events at the writers' end, drained in "
                     f"{x['drain_seconds']:.2f} s; processed {x['process_events_per_second']:,.0f}"
                     f" events/s over {x['process_seconds']:.2f} s")
        else:
            note += (f"  processing {x['process_events_per_second']:,.0f} events/s "
                     f"({x['process_seconds']:.2f} s, {x['process_calls']} calls)")
        note += f", {x['ingest_micros_per_event']:.2f} µs/event"
    elif "ingest_micros_per_event" in m.extra:
        note += f"  pg_cep {m.extra['ingest_micros_per_event']:.2f} µs/event"
    if m.extra.get("late_events"):
        note += f"  {m.extra['late_events']} late"
    failed = _failed(m)
    if failed:
        note += "  CHECK FAILED: " + "; ".join(failed)
    return note


def run(cluster, args, base) -> dict:
    """Set up, measure (variants interleaved, order rotated per repeat) and return raw
    results for summarize()."""
    t_start = time.perf_counter()
    workloads = prepare_workloads(args, base)
    with_async = not args.skip_fraud_async
    setup_databases(cluster, base, with_async)
    # Breakdown and the async processor alongside the writers on the 2-client workloads only
    # (that is where the per-feature cost is least blurred by waiting, and the processor
    # competes least for the CPUs), the full profile, (q), (a) and (g) everywhere.
    main = MAIN_VARIANTS + ([ASYNC] if with_async else [])
    two = ([ASYNC_LIVE] if with_async else []) + PARTS
    plan = {wl.key: main + (two if wl.clients == CLIENT_COUNTS[0] else []) for wl in workloads}
    results = {wl.key: {v.key: [] for v in plan[wl.key]} for wl in workloads}
    pairs = args.fraud_writer_pairs if with_async else 0
    # The writer-side pairs insert more rows than the other runs (nothing is processed or
    # checked there), so that each run lasts long enough to be timed.
    writer_wl = ({w.key: w for w in prepare_workloads(args, base, args.fraud_writer_rows,
                                                       args.fraud_writer_single_rows)}
                 if pairs else {})
    for wl in workloads:
        results[wl.key].update({"a_w": [], "q_w": []})      # writer-side pairs
    width = max(len(v.name) for v in main + two)
    t = time.perf_counter()
    warm = MAIN_VARIANTS + ([ASYNC] if with_async else [])
    for v in warm:                             # untimed: WAL segments, caches, plans
        measure(cluster, v, workloads[0], base, process_rows=args.fraud_process_rows,
                compare=False)
    print(f"  warm-up round ({workloads[0].title}, {', '.join(v.name[:3] for v in warm)}, "
          f"untimed): {time.perf_counter() - t:.0f} s", flush=True)
    for r in range(args.fraud_repeat):
        for wl in workloads:
            vs = plan[wl.key]
            for v in vs[r % len(vs):] + vs[:r % len(vs)]:
                # (q)'s replay guard (untimed, as long again as processing) in the last repeat
                m = measure(cluster, v, wl, base, process_rows=args.fraud_process_rows,
                            replay=r == args.fraud_repeat - 1, compare=with_async)
                results[wl.key][v.key].append(m)
                print(f"  run {r + 1}/{args.fraud_repeat}  {wl.title:<28} {v.name:<{width}} "
                      f"{m.eps:>9,.0f} events/s  ({m.seconds:5.2f} s){_note(m)}", flush=True)
            # writer side: (a) and (q)'s writers alone, alternating which goes first
            got = []
            for i in range(pairs):
                for v in ([PLAIN, ASYNC] if (r + i) % 2 == 0 else [ASYNC, PLAIN]):
                    m = measure(cluster, v, writer_wl[wl.key], base, writer_only=True)
                    results[wl.key][f"{v.key}_w"].append(m)
                got.append(results[wl.key]["q_w"][-1].eps / results[wl.key]["a_w"][-1].eps)
            if got:
                print(f"  run {r + 1}/{args.fraud_repeat}  {wl.title:<28} {pairs} writer-side "
                      f"pairs, (q)/(a): {' '.join(f'{x:.2f}' for x in got)}", flush=True)
            for k in ("q", "qc"):
                if k in results[wl.key]:
                    m = results[wl.key][k][-1]
                    compare_with_sync(m, results[wl.key]["p"][-1])
                    failed = [f for f in _failed(m) if f.startswith("async vs (p)")]
                    if failed:
                        print(f"  run {r + 1}/{args.fraud_repeat}  {wl.title:<28} ({k}) vs (p): "
                              "CHECK FAILED: " + "; ".join(failed), flush=True)
    profiles = {}
    for wl in workloads:
        if wl.clients != CLIENT_COUNTS[0]:
            continue
        m = measure(cluster, PROFILED, wl, base, reset_stats=True)
        print(f"  profile run ({wl.title}, {PROFILED.name}, untimed): {m.eps:,.0f} events/s",
              flush=True)
        profiles[wl.key] = function_profile(cluster, m, wl)
    return {"workloads": workloads, "plan": plan, "results": results, "profiles": profiles,
            "seconds": time.perf_counter() - t_start}


def function_profile(cluster, m: FMeasurement, wl: FWorkload) -> dict:
    """Per function the profiled run called after the setup (statistics reset): calls and
    self/total µs per event, warm-up and measured events together (the guard's queries after
    the inserts are included: cep.advance_watermark and what it calls)."""
    time.sleep(1.0)                       # backends flush their statistics when they exit
    with cluster.connect(PROFILED.database) as conn:
        ingest, pattern = conn.execute(
            "SELECT 'cep.' || s.ingest_function, (SELECT 'cep._pattern_' || p.pattern_id "
            "FROM cep.patterns AS p) FROM cep.streams AS s").fetchone()
        rows = conn.execute(
            "SELECT f.schemaname || '.' || f.funcname, f.calls, f.self_time, f.total_time "
            "FROM pg_stat_user_functions AS f ORDER BY f.self_time DESC").fetchall()
    events = wl.rows + wl.warm_rows
    roles = {ingest: "generated ingest function (stream bookkeeping, windows, rules inline)",
             pattern: "generated matcher of pattern burst3",
             "cep._patterns_advance": "pattern section: calls the stream's matchers",
             "cep._raise_alerts": "alerts: rows, consumer queue",
             "cep._ring_doorbell": "alerts: NOTIFY"}
    out = []
    for name, calls, self_ms, total_ms in rows:
        out.append({"function": name, "role": roles.get(name, ""), "calls": calls,
                    "self_micros_per_event": round(1000 * self_ms / events, 3),
                    "total_micros_per_event": round(1000 * total_ms / events, 3)})
    return {"workload": wl.title, "events": events, "functions": out,
            "ingest_micros_per_event": round(m.extra["ingest_micros_per_event"], 3),
            "events_per_second": round(m.eps, 1)}


# -- summary ----------------------------------------------------------------------------------

def _med(xs):
    return statistics.median(xs) if xs else None


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def summarize(raw: dict, args) -> dict:
    out: dict = {"workloads": {}, "breakdown": {}}
    verified = True
    for wl in raw["workloads"]:
        res = raw["results"][wl.key]
        per = {}
        for v in raw["plan"][wl.key]:
            runs = res[v.key]
            # (q)'s writer side: its runs and the writer-only runs of the writer-side pairs
            wr = runs + res.get("q_w", []) if v.key == "q" else runs
            lat = np.array([x for m in wr for x in m.latencies]) * 1000.0
            e = {
                "variant": v.name,
                "runs_events_per_second": [round(m.eps, 1) for m in wr],
                "median_events_per_second": round(_med([m.eps for m in wr]), 1),
                "median_wall_micros_per_event": round(_med([1e6 / m.eps for m in wr]), 3),
                "latency_ms_p50": _r(float(np.percentile(lat, 50)), 3),
                "latency_ms_p99": _r(float(np.percentile(lat, 99)), 3),
            }
            ing = [m.extra["ingest_micros_per_event"] for m in runs
                   if "ingest_micros_per_event" in m.extra]
            if ing:
                e["median_ingest_micros_per_event"] = round(_med(ing), 3)
                e["ingest_runs"] = [round(x, 3) for x in ing]
                e["late_events"] = max(m.extra.get("late_events", 0) for m in runs)
            for k in ("assessments", "alerts", "blocked", "matches", "alerts_total",
                      "pattern_late"):
                vals = [m.extra[k] for m in runs if k in m.extra]
                if vals:
                    e[k] = round(_med(vals))
            if any("rule_hits" in m.extra for m in runs):
                e["rule_hits_last_run"] = [m.extra["rule_hits"] for m in runs
                                           if "rule_hits" in m.extra][-1]
            if v.mode == "async":
                # the events/s above are the writers'; ingest µs/event: processing function
                x = [m.extra for m in runs]
                e["process_runs_events_per_second"] = [round(y["process_events_per_second"], 1)
                                                       for y in x]
                e["median_process_events_per_second"] = round(
                    _med([y["process_events_per_second"] for y in x]), 1)
                e["median_process_seconds"] = _r(_med([y["process_seconds"] for y in x]))
                e["median_processing_micros_per_event"] = e["median_ingest_micros_per_event"]
                e["process_calls"] = round(_med([y["process_calls"] for y in x]))
                e["process_max_rows"] = args.fraud_process_rows
                e["median_backlog_events"] = round(_med([y["backlog_events"] for y in x]))
                e["median_backlog_statements"] = round(
                    _med([y["backlog_statements"] for y in x]))
                e["median_backlog_lag_seconds"] = _r(_med([y["backlog_lag_seconds"]
                                                           for y in x]))
                if v.processor:
                    e["median_drain_seconds"] = _r(_med([y["drain_seconds"] for y in x]))
                    e["median_process_busy_seconds"] = _r(_med([y["process_busy_seconds"]
                                                                for y in x]))
            dg = [m.extra["digest"] for m in runs if "digest" in m.extra]
            if dg:
                e["outputs_last_run"] = {k: dg[-1][k] for k in ("levels", "alerts", "late",
                                                                 "pattern_late")}
            checks = [m.extra["checks"] for m in runs if "checks" in m.extra]
            if checks:
                bad = sorted({f"{k}: {x}" for ch in checks for k, x in ch.items()
                              if x != "ok" and not x.startswith("skipped")})
                e["checks_last_run"] = checks[-1]
                e["checks_runs"] = {k: sum(k in ch for ch in checks) for k in checks[-1]}
                e["runs"] = len(runs)
                e["failed_checks"] = bad
                verified = verified and not bad
            per[v.key] = e
        med = {k: per[k]["median_events_per_second"] for k in per}

        def paired(x, y):
            return round(_med([p.eps / q.eps for p, q in zip(res[x], res[y])]), 3)
        w = {"title": wl.title, "clients": wl.clients, "batch": wl.batch, "rows": wl.rows,
             "warm_rows": wl.warm_rows, "allowed_lateness_minutes": wl.lateness_min,
             "data": wl.facts, "variants": per,
             "ratio_p_a": round(med["p"] / med["a"], 3), "paired_ratio_p_a": paired("p", "a"),
             "ratio_p_g": round(med["p"] / med["g"], 3), "paired_ratio_p_g": paired("p", "g"),
             "ratio_g_a": round(med["g"] / med["a"], 3), "target_p_a": TARGET_P_A}
        w["target_p_a_met"] = w["ratio_p_a"] >= TARGET_P_A
        if "pf" in per:
            w["ratio_pf_a"] = round(med["pf"] / med["a"], 3)
            w["paired_ratio_pf_a"] = paired("pf", "a")
            w["ratio_pf_p"] = round(med["pf"] / med["p"], 3)
        for k in ("q", "qc"):
            if k in per:
                # async: writer side over the plain table and over the synchronous stream
                w[f"ratio_{k}_a"] = round(med[k] / med["a"], 3)
                w[f"paired_ratio_{k}_a"] = paired(k, "a")
                w[f"ratio_{k}_p"] = round(med[k] / med["p"], 3)
                w[f"paired_ratio_{k}_p"] = paired(k, "p")
        if "q" in per:
            # (q) over (a): every writer-side run of both, the pairs' ratios paired
            a_all = res["a"] + res["a_w"]
            lat = np.array([x for m in a_all for x in m.latencies]) * 1000.0
            w["writer_side"] = {
                "pairs": len(a_all),
                "a_runs_events_per_second": [round(m.eps, 1) for m in a_all],
                "a_median_events_per_second": round(_med([m.eps for m in a_all]), 1),
                "a_latency_ms_p50": _r(float(np.percentile(lat, 50)), 3),
                "a_latency_ms_p99": _r(float(np.percentile(lat, 99)), 3),
                "q_median_events_per_second": med["q"],
                "paired_ratios_q_a": [round(x.eps / y.eps, 3) for x, y in
                                      zip(res["q"] + res["q_w"], a_all)],
            }
            w["ratio_q_a"] = round(med["q"] / w["writer_side"]["a_median_events_per_second"], 3)
            w["paired_ratio_q_a"] = round(_med(w["writer_side"]["paired_ratios_q_a"]), 3)
            w["target_q_a"] = TARGET_Q_A
            w["target_q_a_met"] = w["ratio_q_a"] >= TARGET_Q_A
        out["workloads"][wl.key] = w
        if "b" in per:
            # µs/event inside the ingest function, paired per repeat with (b) of that repeat
            def above(k):
                return _r(_med([x.extra["ingest_micros_per_event"]
                                - y.extra["ingest_micros_per_event"]
                                for x, y in zip(res[k], res["b"])]))
            parts = {k: above(k) for k in ("w", "r", "m", "p")}
            total = per["p"]["median_ingest_micros_per_event"]
            out["breakdown"][wl.key] = {
                "title": wl.title,
                "ingest_micros_per_event": {k: per[k]["median_ingest_micros_per_event"]
                                            for k in ("b", "w", "r", "m", "p")},
                "above_b": parts,
                "sum_of_parts_above_b": _r(sum(parts[k] for k in ("w", "r", "m"))),
                "share_of_full": {k: _r(parts[k] / total, 3) if total else None
                                  for k in ("w", "r", "m")},
                "base_share_of_full": _r(per["b"]["median_ingest_micros_per_event"] / total, 3)
                if total else None,
                "wall_micros_per_event": {k: per[k]["median_wall_micros_per_event"]
                                          for k in ("a", "b", "w", "r", "m", "p", "g")},
            }
    out["function_profiles"] = raw["profiles"]
    out["parameters"] = {"rows": args.fraud_rows, "single_rows": args.fraud_single_rows,
                         "repeat": args.fraud_repeat, "clients": list(CLIENT_COUNTS),
                         "allowed_lateness_minutes": {wl.key: wl.lateness_min
                                                      for wl in raw["workloads"]},
                         "rate_per_hour": RATE, "users": USERS,
                         "async": not args.skip_fraud_async,
                         "process_max_rows": args.fraud_process_rows,
                         "writer_pairs": args.fraud_writer_pairs,
                         "writer_rows": args.fraud_writer_rows,
                         "writer_single_rows": args.fraud_writer_single_rows,
                         "windows": WINDOWS_SQL.strip(), "pattern": PATTERN_SQL,
                         "rules": "bench/rules_bench.py SEED_RULES_SQL, POLICY_SQL"}
    out["target_p_over_a"] = TARGET_P_A
    out["target_q_over_a"] = TARGET_Q_A
    out["verified"] = verified
    out["seconds"] = round(raw["seconds"], 1)
    return out


# -- report -----------------------------------------------------------------------------------

def print_report(s: dict, heading, subheading, print_table) -> None:
    p = s["parameters"]
    heading("Full fraud profile on the insert path")
    print(f"One stream: 2 windows (per user 5 min sliding 1 min: count, sum; global 1-min "
          f"count), the seed's\n4 rules and policy (alerts at high, block at 0.9), pattern "
          f"burst3 (a{{3}} within 10 minutes, a: amount\n> 1000), one consumer queueing every "
          f"alert. {p['rows']:,} rows per batch workload, {p['single_rows']:,} per single-row"
          f"\nworkload ({p['users']:,} users, {p['rate_per_hour']:,.0f} transactions per hour "
          f"of event time); median of {p['repeat']} run(s);\nvariants interleaved; fresh "
          f"table per run.")
    subheading("Throughput: (a) plain, (p) full profile, (g) seed's per-row rule trigger")
    rows = []
    for w in s["workloads"].values():
        v = w["variants"]
        rows.append((w["title"], round(v["a"]["median_events_per_second"]),
                     round(v["p"]["median_events_per_second"]),
                     round(v["g"]["median_events_per_second"]), w["ratio_p_a"],
                     w["paired_ratio_p_a"],
                     f">= {TARGET_P_A}: " + ("met" if w["target_p_a_met"] else "NOT met"),
                     w["ratio_p_g"], w["paired_ratio_p_g"],
                     v["p"].get("median_ingest_micros_per_event"),
                     w["allowed_lateness_minutes"], v["p"].get("late_events"),
                     v["p"].get("pattern_late")))
    print_table(["workload", "(a) ev/s", "(p) ev/s", "(g) ev/s", "p/a", "paired p/a", "target",
                 "p/g", "paired p/g", "(p) fn µs/event", "lateness min", "late",
                 "late to pattern"], rows)
    print("p/a, p/g: median events/s over median events/s; paired: median of the per-repeat "
          "ratios. fn µs/event:\ncep.stream_stats.ingest_micros_per_event over the timed "
          "inserts (time inside the ingest function,\nsummed over the clients, so it includes "
          "waiting for other clients' key locks). (g) runs the seed's\nrules only, per row; "
          "the seed computed its windows and statistics by batch queries. late: events\nlate to "
          "the stream (max over the runs); late to pattern: events behind their key's progress "
          "in the\npattern (median).")
    rows = [(w["title"], round(w["variants"]["pf"]["median_events_per_second"]),
             w["ratio_pf_a"], w["paired_ratio_pf_a"], w["ratio_pf_p"])
            for w in s["workloads"].values() if "ratio_pf_a" in w]
    if rows:
        print("\n(pf): the profile's windows and pattern, and instead of the rules their "
              "cheapest exact floor\n(rules_bench's (fs): one state row per key of the "
              "statement rewritten, which locks it, then the\nrows (p) wrote for the same events "
              "in its previous run written again -- assessments, rule alerts,\nblocks -- "
              "nothing read or evaluated). No exact rule engine in this profile can be faster.")
        print_table(["workload", "(pf) ev/s", "pf/a", "paired pf/a", "pf/p"], rows)

    async_on = p.get("async", False)
    if async_on:
        print_async_report(s, subheading, print_table)

    subheading("Single-row INSERT latency (ms per statement, all clients' statements)")
    rows = []
    for w in s["workloads"].values():
        if w["batch"]:
            continue
        for k, e in w["variants"].items():
            if k in ("a", "p", "g", "b", "q", "qc"):
                rows.append((w["title"] if k == "a" else "", e["variant"], e["latency_ms_p50"],
                             e["latency_ms_p99"], round(e["median_events_per_second"])))
    print_table(["workload", "variant", "p50 ms", "p99 ms", "events/s"], rows)
    if async_on:
        print("(q), (qc): the writers' statements (the async stream queues them); (q): all "
              "its writer-side runs.")
    rows = []
    shown = ("a", "p", "q") if async_on else ("a", "p")
    for w in s["workloads"].values():
        if w["batch"]:
            rows.append((w["title"], *[w["variants"][k][f"latency_ms_{x}"] for k in shown
                                       for x in ("p50", "p99")]))
    print("\n1000-row batches, ms per statement:")
    print_table(["workload", *[f"({k}) {x}" for k in shown for x in ("p50", "p99")]], rows)

    subheading("Where the time goes inside the ingest function (µs per event, 2 clients)")
    rows = []
    for b in s["breakdown"].values():
        i, a, sh = b["ingest_micros_per_event"], b["above_b"], b["share_of_full"]
        rows.append((b["title"], i["b"], a["w"], a["r"], a["m"], b["sum_of_parts_above_b"],
                     i["p"], f"{100 * (sh['w'] or 0):.0f}/{100 * (sh['r'] or 0):.0f}/"
                     f"{100 * (sh['m'] or 0):.0f}/{100 * (b['base_share_of_full'] or 0):.0f}%"))
    print_table(["workload", "stream (b)", "windows", "rules", "pattern", "sum", "all (p)",
                 "share w/r/m/b"], rows)
    print("(b): stream bookkeeping and the consumer; windows, rules, pattern: each feature "
          "alone, minus (b)\n(paired per repeat); sum: of the three; all: the full profile "
          "(p). Shares: of (p)'s time.")
    for prof in s["function_profiles"].values():
        print(f"\nFunctions of the full profile, {prof['workload']} (one run with "
              f"track_functions = 'all'; µs per event):")
        rows = [(f["function"], f["calls"], f["self_micros_per_event"],
                 f["total_micros_per_event"], f["role"])
                for f in prof["functions"][:6]]
        print_table(["function", "calls", "self µs/event", "total µs/event", "role"], rows)
    rows = []
    for b in s["breakdown"].values():
        wm = b["wall_micros_per_event"]
        rows.append((b["title"], *[wm[k] for k in ("a", "b", "w", "r", "m", "p", "g")]))
    print("\nWall time per event (µs, elapsed / events, all clients together):")
    print_table(["workload", "(a)", "(b)", "(w)", "(r)", "(m)", "(p)", "(g)"], rows)

    subheading("Output of the full profile (median per run; warm-up rows included)")
    rows = []
    for w in s["workloads"].values():
        for k in ("p", "q", "qc"):
            if k in w["variants"]:
                e = w["variants"][k]
                o = e.get("outputs_last_run") or {}
                rows.append((w["title"] if k == "p" else "", k, e.get("assessments"),
                             e.get("alerts"), e.get("blocked"), e.get("matches"),
                             e.get("alerts_total"), o.get("late"), o.get("pattern_late")))
    print_table(["workload", "variant", "assessments", "rule alerts", "blocked",
                 "burst3 matches", "alerts (all)", "late (last run)",
                 "late to pattern (last run)"], rows)
    if async_on:
        print("An event gets an assessment when a rule fires. (p)'s trailing rule metrics "
              "(high_frequency,\nlocation_change) do not see the rows of concurrently running "
              "statements, and its writers count\nrows late to the pattern when another writer "
              "advanced their keys first; the async stream applies\none statement at a time "
              "(in queue order), so these outputs may differ between (p) and (q) where\n"
              "statements overlapped. late: to the stream, in all (warm-up included).")

    subheading("Correctness guard")
    rows = []
    for w in s["workloads"].values():
        for k, e in w["variants"].items():
            for name, res in (e.get("checks_last_run") or {}).items():
                failed = [f[len(name) + 2:] for f in e["failed_checks"]
                          if f.startswith(name + ":")]
                n = e["checks_runs"][name]
                rows.append((w["title"], k, name, "; ".join(failed) if failed else
                             res if res.startswith("skipped") else "ok (every run)"
                             if n == e["runs"] else f"ok ({n} of {e['runs']} runs)"))
    print_table(["workload", "variant", "check", "result"], rows)
    if not s["verified"]:
        print("\nFRAUD PROFILE CORRECTNESS GUARD FAILED (see above).")


def print_async_report(s: dict, subheading, print_table) -> None:
    p = s["parameters"]
    subheading("Async stream: (q) writer side against (a) plain INSERT; processing afterwards")
    rows = []
    for w in s["workloads"].values():
        v = w["variants"]
        q, ws = v["q"], w["writer_side"]
        rows.append((w["title"], ws["pairs"], round(ws["a_median_events_per_second"]),
                     round(q["median_events_per_second"]), w["ratio_q_a"], w["paired_ratio_q_a"],
                     f">= {TARGET_Q_A}: " + ("met" if w["target_q_a_met"] else "NOT met"),
                     w["ratio_q_p"], q["latency_ms_p50"], q["latency_ms_p99"],
                     round(q["median_process_events_per_second"]),
                     q.get("median_ingest_micros_per_event"), q["process_calls"],
                     round(v["p"]["median_events_per_second"]), q.get("late_events")))
    print_table(["workload", "runs", "(a) ev/s", "(q) writers ev/s", "q/a", "paired q/a",
                 "target", "q/p",
                 "(q) p50 ms", "(q) p99 ms", "processing ev/s", "proc µs/event", "calls",
                 "(p) sync ev/s", "late"], rows)
    print(f"(q): the same table, data and definitions as (p) on a stream created with mode => "
          f"'async': the writers'\nstatements only check the rows and queue one row per "
          f"statement. runs: writer-side runs of each of (a)\nand (q) (the main runs and "
          f"{p['writer_pairs']} writer-only pairs per repeat, of {p.get('writer_rows', 0):,} "
          f"rows in batches and {p.get('writer_single_rows', 0):,}\nsingle rows; events/s: "
          f"their median; paired: "
          f"the median of\nthe pairs' ratios; p50, p99: over all their statements). "
          f"processing: after the last writer,\none session calls "
          f"cep.process_stream('transactions', {p['process_max_rows']:,}) until it returns 0 "
          f"(events / elapsed);\nproc µs/event: cep.stream_stats.ingest_micros_per_event "
          f"over that processing (the generated\nprocessing function). The warm-up rows are "
          f"processed before the timed part. late: measured\nevents late to the stream (max "
          f"over the runs): the async stream's watermark follows the queue order, the\norder "
          f"in which the writers' triggers ran, which with more writers than CPUs can trail "
          f"the order the\nstatements started in by more than the allowed lateness.")
    rows = []
    for w in s["workloads"].values():
        e = w["variants"].get("qc")
        if e is None:
            continue
        rows.append((w["title"], round(e["median_events_per_second"]), w["ratio_qc_a"],
                     w["paired_ratio_qc_a"], e["median_backlog_events"],
                     e["median_backlog_statements"], e["median_backlog_lag_seconds"],
                     e["median_drain_seconds"], round(e["median_process_events_per_second"]),
                     e.get("late_events")))
    if rows:
        print("\n(qc) one session runs cep.process_stream in a loop while the writers write:")
        print_table(["workload", "(qc) writers ev/s", "qc/a", "paired qc/a", "backlog events",
                     "backlog stmts", "oldest s", "drain s", "processed ev/s", "late"], rows)
        print("backlog: cep.stream_stats when the last writer finished (oldest: its "
              "processing_lag); drain: time\nfrom then until the queue was empty; processed "
              "ev/s: events / time from the start to empty.")


def add_to_json(path, summary: dict) -> None:
    import json
    doc = json.loads(path.read_text())
    doc["fraud"] = summary
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main_only(args, base) -> int:
    """--fraud-only of bench/run_bench.py: this part alone."""
    return base.part_alone(
        args, "full fraud profile", lambda cluster: summarize(run(cluster, args, base), args),
        lambda summary: print_report(summary, base.heading, base.subheading, base.print_table),
        add_to_json, "Fraud profile")
