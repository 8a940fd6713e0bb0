#!/usr/bin/env python3
"""Pattern engine part of `make bench` (imported by bench/run_bench.py, or run on its own).

Data: a generated clickstream of --pattern-users users (default 10,000) who alternate
browsing sessions and idle gaps (log-normal activity): a session is `login`, 1 +
geometric(mean 5) browsing events (view 65%, search 25%, cart 10%), in 25% of the sessions
`cart` and `purchase`, in half of them `logout`, 1-60 s between events (mean 20 s), on a
handful of related items; the next session of a user starts after the previous one ended plus
an idle gap. The stream is taken in steady state (past a burn-in) and in time order at ~100
events per second of event time, so a 1000-row batch spans ~10 s and interleaves the keys of
~1000 concurrent sessions (100k events: ~8,300 of the 10,000 users, ~14,000 sessions, 15
minutes); allowed_lateness 30 seconds, so matching happens during ingest (events are matched
once the watermark, 30 s behind the newest event, reaches them). The default is 300,000 events
(50 minutes of event time): with 100,000, a load with one pattern lasts about half a second and
no maintenance call falls inside it, so the lazy engine's matching is all left to the final
cep.advance_watermark and the ratio flatters it.

Ingest, 1000-row INSERT ... SELECT FROM unnest(...) batches, autocommit, 2 concurrent clients
(warm-up first, fresh database per measurement, variants interleaved with the order rotating
every repeat, medians over --pattern-repeat repeats; (a) and (b) take well under a second, so
each of their measurements is the median of 3 loads), on the same table definition and
indexes (primary key, (user_id, created_at), (created_at) -- the last is the index
cep.create_pattern would create), same data:

  (a)   plain table;
  (b)   the table as a pg_cep stream, no patterns;
  (p1)  the stream with `login browse+ purchase` (relaxed, within 30 minutes);
  (p5), (p20) -- the stream with 5 and 20 active patterns (sequences, PERMUTE, within, strict
        contiguity, quantifiers, PREV, var.col, skip_to_next_row; listed in the report).

The patterns run on the engine cep.create_pattern picks (lazy where it can, eager otherwise;
--pattern-engine eager runs them all eager, for comparison).

A writer advances only its own keys, so the events that wait for the watermark are advanced
by cep.run_maintenance(): during the loads into the stream ((b) and the pattern variants) a
third connection calls it every --pattern-maintenance seconds (default 1; 0: never), inside
the timed wall time. The final cep.advance_watermark('clicks') (end of input) is timed apart
and reported, with the throughput including it and the share of the matches found before it.

Reported: events/s, ratio to (a) (target for (p1) >= 0.4), µs/event above (b), pg_cep's own
time per event (cep.stream_stats.ingest_micros_per_event) and each matcher function's share
(pg_stat_user_functions, track_functions = 'pl' in every variant's database).

Correctness guard, after every run with patterns (a failure ends the bench with exit code 1
after the results are written): cep.advance_watermark('clicks') ends the input, then the live
matches in cep.matches equal cep.find_matches (as multisets of event_ids arrays) -- for
`checkout` in every run, for every pattern in the last repeat; `checkout` also equals an
independent reference computed in Python from the generated events (per user, the symbols
L/B/P of login/view|search/purchase, other actions skipped by relaxed contiguity, `LB+P`
leftmost non-overlapping, last - first <= 30 minutes), compared as (user, first time, last
time, number of events).

History: --find-events events (default 1,000,000; same generator, the same 10,000 users) are
loaded with COPY into the stream without patterns, then the pattern is created with
backfill => false and `cep.find_matches('checkout')` is timed (target under a minute), and
checked against the Python reference.

    .venv/bin/python bench/patterns_bench.py [--pattern-events N] [--pattern-users U]
        [--pattern-repeat R] [--pattern-counts 1,5,20] [--pattern-maintenance S]
        [--pattern-engine auto|eager] [--find-events N] [--seed S]

(or as part of bench/run_bench.py; --patterns-only there runs just this part and writes
bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))

import workload  # noqa: E402
from pgcep_cli import (cpu_count, heading, print_table, server_version,  # noqa: E402
                       subheading, throwaway_cluster)

US = workload.US
BATCH_ROWS = 1000
CLIENTS = 2
ALLOWED_LATENESS = "30 seconds"
EVENTS_PER_SECOND = 100          # event-time density of the clickstream
WITHIN_US = 30 * 60 * US         # checkout's within
TARGET_RATIO = 0.4               # (p1)/(a), from the issue
TARGET_FIND_SECONDS = 60.0       # find_matches over 1M events, from the issue
DATABASE = "bench_patterns"
TEMPLATE = "bench_patterns_template"
FIND_DATABASE = "bench_patterns_history"
WARMUP_BATCHES = 2               # per client, before timing
CHEAP_RUNS = 3                   # loads per repeat of (a) and (b), the median is kept

# Run on its own, the same cluster settings as bench/run_bench.py.
CLUSTER_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "min_wal_size": "2GB",
    "checkpoint_timeout": "30min",
    "timezone": "UTC",
}

TABLE_SQL = """
CREATE TABLE clicks (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL,
    item_id int NOT NULL,
    action text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX clicks_user_time_idx ON clicks (user_id, created_at);
CREATE INDEX clicks_time_idx ON clicks (created_at);
"""
STREAM_SQL = (f"SELECT cep.create_stream('clicks', 'clicks', 'created_at', key_column => "
              f"'user_id', allowed_lateness => '{ALLOWED_LATENESS}')")
COLUMNS = ["user_id", "item_id", "action", "created_at"]
INSERT_SQL = ("INSERT INTO clicks (user_id, item_id, action, created_at) "
              "SELECT * FROM unnest(%s::int[], %s::int[], %s::text[], %s::timestamptz[])")

BROWSE = "action IN ('view', 'search')"
# The first is the pattern of the issue; (p5) takes the first 5, (p20) all of them.
PATTERNS = [
    dict(name="checkout", pattern="login browse+ purchase", within="30 minutes",
         define={"login": "action = 'login'", "browse": BROWSE,
                 "purchase": "action = 'purchase'"}),
    dict(name="search_cart_buy", pattern="PERMUTE(search, cart) purchase",
         within="20 minutes",
         define={"search": "action = 'search'", "cart": "action = 'cart'",
                 "purchase": "action = 'purchase'"}),
    dict(name="three_views", pattern="v v v", contiguity="strict",
         define={"v": "action = 'view'"}),
    dict(name="abandoned_cart", pattern="cart logout", within="10 minutes",
         define={"cart": "action = 'cart'", "logout": "action = 'logout'"}),
    dict(name="bounce", pattern="login view? logout", contiguity="strict",
         define={"login": "action = 'login'", "view": "action = 'view'",
                 "logout": "action = 'logout'"}),
    dict(name="search_to_buy", pattern="search view* purchase", within="15 minutes",
         define={"search": "action = 'search'", "view": "action = 'view'",
                 "purchase": "action = 'purchase'"}),
    dict(name="rapid_views", pattern="v{4,}", contiguity="strict",
         define={"v": "action = 'view' AND created_at - PREV(created_at) "
                      "< interval '10 seconds'"}),
    dict(name="browse_then_cart", pattern="(view | search){3} cart", within="10 minutes",
         define={"view": "action = 'view'", "search": "action = 'search'",
                 "cart": "action = 'cart'"}),
    dict(name="quick_checkout", pattern="login browse+? cart purchase", within="5 minutes",
         define={"login": "action = 'login'", "browse": BROWSE, "cart": "action = 'cart'",
                 "purchase": "action = 'purchase'"}),
    dict(name="carted_viewed_item", pattern="v c", within="10 minutes",
         define={"v": "action = 'view'", "c": "action = 'cart' AND item_id = v.item_id"}),
    dict(name="big_basket", pattern="cart{2,} purchase", within="30 minutes",
         define={"cart": "action = 'cart'", "purchase": "action = 'purchase'"}),
    dict(name="relogin", pattern="logout login", within="10 minutes",
         define={"logout": "action = 'logout'", "login": "action = 'login'"}),
    dict(name="explore", pattern="PERMUTE(view, search, cart)", within="10 minutes",
         define={"view": "action = 'view'", "search": "action = 'search'",
                 "cart": "action = 'cart'"}),
    dict(name="repeat_purchase", pattern="purchase purchase", within="1 hour",
         define={"purchase": "action = 'purchase'"}),
    dict(name="searches_then_buy", pattern="search{2,4} purchase", within="20 minutes",
         define={"search": "action = 'search'", "purchase": "action = 'purchase'"}),
    dict(name="views_then_leave", pattern="view+ logout", contiguity="strict",
         define={"view": "action = 'view'", "logout": "action = 'logout'"}),
    dict(name="short_session", pattern="login (view | search){1,5} logout",
         within="15 minutes",
         define={"login": "action = 'login'", "view": "action = 'view'",
                 "search": "action = 'search'", "logout": "action = 'logout'"}),
    dict(name="cart_view_buy", pattern="PERMUTE(cart, view) purchase", contiguity="strict",
         define={"cart": "action = 'cart'", "view": "action = 'view'",
                 "purchase": "action = 'purchase'"}),
    dict(name="login_buy_fast", pattern="login cart? purchase", within="3 minutes",
         define={"login": "action = 'login'", "cart": "action = 'cart'",
                 "purchase": "action = 'purchase'"}),
    dict(name="search_then_cart", pattern="search cart", within="5 minutes",
         after_match="skip_to_next_row",
         define={"search": "action = 'search'", "cart": "action = 'cart'"}),
]

# Live matches against cep.find_matches, as multisets of event_ids arrays.
GUARD_BATCH_SQL = ("CREATE TEMP TABLE guard_batch ON COMMIT DROP AS "
                   "SELECT event_ids FROM cep.find_matches(%(p)s)")
GUARD_SQL = """
SELECT (SELECT count(*) FROM cep.matches WHERE pattern = %(p)s),
       (SELECT count(*) FROM guard_batch),
       (SELECT count(*) FROM (SELECT event_ids FROM cep.matches WHERE pattern = %(p)s
                              EXCEPT ALL SELECT event_ids FROM guard_batch) AS x),
       (SELECT count(*) FROM (SELECT event_ids FROM guard_batch
                              EXCEPT ALL SELECT event_ids FROM cep.matches
                              WHERE pattern = %(p)s) AS x)
"""


def add_arguments(p: argparse.ArgumentParser, exclusive_group=None) -> None:
    """The patterns part's options; with bench/run_bench.py's exclusive group of the parts
    also --patterns-only (in the group) and --skip-patterns."""
    if exclusive_group is not None:
        exclusive_group.add_argument("--patterns-only", action="store_true",
                                     help="run only the patterns part")
        p.add_argument("--skip-patterns", action="store_true",
                       help="skip the patterns part")
    p.add_argument("--pattern-events", type=int, default=300_000,
                   help="patterns part: clickstream events of each ingest run "
                        "(default 300000: loads of a few seconds, so that the maintenance "
                        "calls that match lazy keys fall inside the timed load)")
    p.add_argument("--pattern-users", type=int, default=10_000,
                   help="patterns part: users of the clickstream (default 10000)")
    p.add_argument("--pattern-repeat", type=int, default=2,
                   help="patterns part: measurements per variant (default 2)")
    p.add_argument("--pattern-counts", default="1,5,20",
                   help=f"patterns part: numbers of active patterns, 1..{len(PATTERNS)} "
                        "(default 1,5,20)")
    p.add_argument("--pattern-engine", choices=["auto", "eager"], default="auto",
                   help="patterns part: the engine of the patterns (auto, the default: lazy "
                        "where possible; eager: every pattern eager, to compare)")
    p.add_argument("--pattern-maintenance", type=float, default=1.0,
                   help="patterns part: seconds between cep.run_maintenance() calls from a "
                        "third connection during the loads into the stream (it advances the "
                        "keys whose events wait for the watermark; default 1, 0: none)")
    p.add_argument("--find-events", type=int, default=1_000_000,
                   help="patterns part: stored events cep.find_matches runs over "
                        "(default 1000000; 0 skips)")


def check_args(p: argparse.ArgumentParser, args) -> None:
    if getattr(args, "patterns_only", False) and getattr(args, "skip_patterns", False):
        p.error("--patterns-only and --skip-patterns exclude each other")
    try:
        counts = [int(x) for x in args.pattern_counts.split(",")]
    except ValueError:
        counts = []
    if not counts or counts != sorted(set(counts)) or counts[0] < 1 \
            or counts[-1] > len(PATTERNS):
        p.error(f"--pattern-counts: increasing integers in 1..{len(PATTERNS)}, "
                "comma-separated")
    if 1 not in counts:
        p.error("--pattern-counts must include 1 (the login browse+ purchase target)")
    args.pattern_count_list = counts
    if args.pattern_events < BATCH_ROWS * CLIENTS * 4 or args.pattern_users < 10 \
            or args.pattern_repeat < 1:
        p.error(f"need --pattern-events >= {BATCH_ROWS * CLIENTS * 4}, --pattern-users >= 10, "
                "--pattern-repeat >= 1")
    if args.pattern_maintenance < 0:
        p.error("--pattern-maintenance: seconds >= 0")
    if args.find_events and args.find_events < 10_000:
        p.error("--find-events: 0 (skip) or at least 10000")


def pattern_sql(p: dict) -> tuple[str, dict]:
    opts = ("within", "contiguity", "after_match", "backfill", "engine")
    named = "".join(f", {k} => %({k})s" for k in opts if k in p)
    params = {"name": p["name"], "pattern": p["pattern"], "define": json.dumps(p["define"]),
              **{k: p[k] for k in opts if k in p}}
    return ("SELECT cep.create_pattern(%(name)s, 'clicks', %(pattern)s, %(define)s::jsonb"
            + named + ")"), params


def describe_pattern(p: dict) -> str:
    opts = [p.get("contiguity", "relaxed")]
    if "within" in p:
        opts.append(f"within {p['within']}")
    if "after_match" in p:
        opts.append(p["after_match"])
    return f"{p['pattern']}  ({', '.join(opts)})"


# -- data -------------------------------------------------------------------------------------

def clickstream(n: int, n_users: int, seed: int, end_us: int,
                rate: float = EVENTS_PER_SECOND) -> workload.EventBatch:
    """The first n events (see the module docstring) of n_users users who each alternate
    sessions and idle gaps, in time order, ending before end_us: a stationary stream of about
    `rate` events per second of event time."""
    rng = np.random.default_rng(seed)
    mean_browse = 5
    mean_len = 1 + mean_browse + 2 * 0.25 + 0.5
    span = n / rate * US                                  # expected event-time span
    activity = rng.lognormal(0.0, 0.5, size=n_users)
    activity /= activity.mean()
    cycle = mean_len / (rate / n_users * activity) * US   # session + idle gap, per user
    idle_mean = np.maximum(60 * US, cycle - mean_len * 20 * US)
    burn = float(np.median(cycle))          # events before this are dropped: steady state
    margin = 1.3
    while True:
        per_user = np.ceil(margin * (burn + span) / cycle).astype(np.int64) + 1
        n_s = int(per_user.sum())
        s_user = np.repeat(np.arange(n_users), per_user)
        n_browse = rng.geometric(1.0 / mean_browse, size=n_s)
        buys = rng.random(n_s) < 0.25
        logout = rng.random(n_s) < 0.5
        lens = 1 + n_browse + 2 * buys + logout
        if lens.sum() >= (n + burn / US * rate) * margin:
            break
        margin *= 1.5                                     # pragma: no cover - tiny n
    total = int(lens.sum())
    sess = np.repeat(np.arange(n_s), lens)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(total) - first[sess]
    b = n_browse[sess]
    browse = np.array(["view", "search", "cart"], dtype=object)[
        rng.choice(3, size=total, p=[0.65, 0.25, 0.10])]
    action = np.where(pos == 0, "login",
             np.where(pos <= b, browse,
             np.where(buys[sess] & (pos == b + 1), "cart",
             np.where(buys[sess] & (pos == b + 2), "purchase", "logout")))).astype(object)
    # items: each session looks at a handful of related items
    s_items = 1000 + rng.integers(0, 400, size=(n_s, 1)) * 10 + rng.integers(0, 10, (n_s, 5))
    item = s_items[sess, rng.integers(0, 5, size=total)]
    gap = np.clip(rng.exponential(20 * US, size=total), US, 60 * US).astype(np.int64)
    gap[pos == 0] = 0
    csum = np.cumsum(gap)
    offset = csum - csum[first][sess]
    dur = offset[first + lens - 1]
    # session starts: the first one within the user's cycle, then each after the previous
    # one's end plus an idle gap
    u_first = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    step = np.concatenate([[0], dur[:-1]]) + rng.exponential(idle_mean[s_user]).astype(np.int64)
    step[u_first] = (rng.random(n_users) * cycle).astype(np.int64)
    cs = np.cumsum(step)
    s_start = cs - (cs[u_first] - step[u_first])[s_user]
    t = s_start[sess] + offset
    o = np.argsort(t, kind="stable")
    o = o[np.searchsorted(t[o], burn):][:n]
    if len(o) < n:
        raise RuntimeError("clickstream: not enough events generated")  # pragma: no cover
    t = t[o] - t[o][-1] + end_us - 1
    user = (s_user[sess][o] + 1).astype(np.int64)
    action, item = action[o], item[o]
    facts = {"events": len(t), "users": int(len(np.unique(user))),
             "sessions": int((action == "login").sum()),
             "purchases": int((action == "purchase").sum()),
             "event-time span": f"{(t[-1] - t[0]) / US / 60:.0f} min"}
    return workload.EventBatch(
        table="clicks", columns=COLUMNS,
        data={"user_id": user, "item_id": item.astype(np.int64), "action": action},
        created_at_us=t, facts=facts)


def render_batches(ev: workload.EventBatch, size: int) -> list:
    cols = ev.text_columns()
    quote = [False, False, True, True]
    return [tuple("{" + ",".join(f'"{v}"' if q else v for v in c[lo:lo + size]) + "}"
                  for c, q in zip(cols, quote)) for lo in range(0, len(ev), size)]


def reference_checkout(ev: workload.EventBatch) -> Counter:
    """`login browse+ purchase`, relaxed, within 30 minutes, skip past last row, over the
    generated events: Counter of (user, first_us, last_us, events)."""
    sym = {"login": "L", "view": "B", "search": "B", "purchase": "P"}
    per_user: dict[int, list] = defaultdict(list)
    for u, a, t in zip(ev.data["user_id"].tolist(), ev.data["action"].tolist(),
                       ev.created_at_us.tolist()):
        s = sym.get(a)
        if s:                       # actions no variable accepts are skipped (relaxed)
            per_user[u].append((t, s))
    out: Counter = Counter()
    rx = re.compile("LB+P")
    for u, evs in per_user.items():
        evs.sort()
        text = "".join(s for _, s in evs)
        for m in rx.finditer(text):
            t0, t1 = evs[m.start()][0], evs[m.end() - 1][0]
            if t1 - t0 <= WITHIN_US:
                out[(str(u), t0, t1, m.end() - m.start())] += 1
    return out


def _us(ts: dt.datetime) -> int:
    return (ts - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def matches_counter(rows) -> Counter:
    return Counter((k, _us(a), _us(b), n) for k, a, b, n in rows)


def prepare(args) -> dict:
    now_us = int(time.time() * US)
    ev = clickstream(args.pattern_events, args.pattern_users, args.seed + 11, now_us - 5 * US)
    warm_n = WARMUP_BATCHES * CLIENTS * BATCH_ROWS
    # Warm-up events lie two hours before the measured ones: no run reaches across.
    warm = clickstream(warm_n, args.pattern_users, args.seed + 12,
                       int(ev.created_at_us[0]) - 2 * 3600 * US)
    return {"events": ev, "batches": render_batches(ev, BATCH_ROWS),
            "maintenance": args.pattern_maintenance,
            "engine": args.pattern_engine,
            "warmup": render_batches(warm, BATCH_ROWS), "warm_events": warm,
            "reference": reference_checkout(_concat(warm, ev))}


def _concat(a: workload.EventBatch, b: workload.EventBatch) -> workload.EventBatch:
    return workload.EventBatch(
        table=a.table, columns=a.columns,
        data={k: np.concatenate([a.data[k], b.data[k]]) for k in a.data},
        created_at_us=np.concatenate([a.created_at_us, b.created_at_us]))


# -- measurement ------------------------------------------------------------------------------

def variants(counts: list[int]) -> list[tuple[str, str, int]]:
    """(key, name, patterns): -1 plain table, 0 stream without patterns."""
    out = [("a", "(a) plain table", -1), ("b", "(b) stream, no patterns", 0)]
    for n in counts:
        out.append((f"p{n}", "(p1) stream + login browse+ purchase" if n == 1
                    else f"(p{n}) stream + {n} patterns", n))
    return out


def _load(dsn: str, batches: list, warmup: list, clients: int,
          maintenance: float = 0.0) -> tuple[float, int]:
    """Wall seconds of the timed batches (and of the cep.run_maintenance() calls made every
    `maintenance` seconds meanwhile from another connection), and the number of such calls."""
    shared = {"next": 0, "lock": threading.Lock(), "calls": 0}
    errors: list[BaseException] = []
    go = threading.Barrier(clients + 1 + (1 if maintenance else 0))
    per = len(warmup) // clients
    finished = threading.Event()

    def maintainer():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                go.wait()
                while not finished.wait(maintenance):
                    conn.execute("SELECT * FROM cep.run_maintenance()").fetchall()
                    shared["calls"] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            go.abort()

    def client(i: int):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                cur = conn.cursor()
                for params in warmup[i * per:(i + 1) * per]:
                    cur.execute(INSERT_SQL, params)
                go.wait()
                while True:
                    with shared["lock"]:
                        k = shared["next"]
                        shared["next"] = k + 1
                    if k >= len(batches):
                        return
                    cur.execute(INSERT_SQL, batches[k])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            go.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    helper = threading.Thread(target=maintainer, daemon=True) if maintenance else None
    for t in threads + ([helper] if helper else []):
        t.start()
    try:
        go.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    finished.set()
    if helper:
        helper.join()               # a call in progress is part of the load
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, shared["calls"]


def _fresh_database(cluster) -> str:
    with cluster.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}" TEMPLATE "{TEMPLATE}"')
        # per-function timings for "where the time goes" (a clock read per function call)
        conn.execute(f'ALTER DATABASE "{DATABASE}" SET track_functions = \'pl\'')
    return cluster.dsn(DATABASE)


def measure(cluster, key: str, n_patterns: int, data: dict, guard_all: bool = True) -> dict:
    dsn = _fresh_database(cluster)
    n = len(data["events"])
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SET client_min_messages = warning")
        admin.execute(TABLE_SQL)
        if n_patterns >= 0:
            admin.execute(STREAM_SQL)
        for p in PATTERNS[:max(0, n_patterns)]:
            admin.execute(*pattern_sql({**p, "engine": data["engine"]}))
        admin.execute("CHECKPOINT")
        if n_patterns >= 0:
            before = admin.execute("SELECT events_total, coalesce(ingest_micros_per_event, 0) "
                                   "FROM cep.stream_stats").fetchone()
        secs, calls = _load(dsn, data["batches"], data["warmup"], CLIENTS,
                            data["maintenance"] if n_patterns >= 0 else 0.0)
        out = {"seconds": secs, "events_per_second": n / secs, "maintenance_calls": calls}
        stored = admin.execute("SELECT count(*) FROM clicks").fetchone()[0]
        expected = n + len(data["warmup"]) // CLIENTS * CLIENTS * BATCH_ROWS
        if stored != expected:
            raise RuntimeError(f"{key}: {stored} rows stored, expected {expected}")
        if n_patterns < 0:
            return out
        events, per_event, late = admin.execute(
            "SELECT events_total, coalesce(ingest_micros_per_event, 0), late_events "
            "FROM cep.stream_stats").fetchone()
        b_events, b_per = int(before[0]), float(before[1])
        out["ingest_micros_per_event"] = ((int(events) * float(per_event) - b_events * b_per)
                                          / max(1, int(events) - b_events))
        out["late_events"] = int(late)
        if n_patterns == 0:
            return out
        # Where the time went: the matcher functions (the clients have disconnected, so their
        # function statistics are flushed).
        time.sleep(0.3)
        admin.execute("SELECT pg_stat_clear_snapshot()")
        out["matcher_ms"] = {name: float(ms) for name, ms in admin.execute(
            "SELECT p.name, f.self_time FROM pg_stat_user_functions AS f "
            "JOIN cep.patterns AS p ON p.matcher = f.funcname "
            "WHERE f.schemaname = 'cep'").fetchall()}
        out["in_stream_ms"] = {r[0]: float(r[1]) for r in admin.execute(
            "SELECT funcname, total_time FROM pg_stat_user_functions "
            "WHERE schemaname = 'cep' AND funcname LIKE '\\_ingest\\_%'").fetchall()}
        # what ingest left for the end of input: open runs, and events still waiting for their
        # key to be advanced (a writer advances only its own keys; in production
        # cep.run_maintenance() advances the others)
        out["open_runs_before_end"], out["matches_before_end"] = admin.execute(
            "SELECT (SELECT coalesce(sum(active_runs), 0) FROM cep.pattern_stats), "
            "(SELECT count(*) FROM cep.matches)").fetchone()
        t = time.perf_counter()
        admin.execute("SELECT cep.advance_watermark('clicks')")
        out["advance_watermark_seconds"] = time.perf_counter() - t
        out["stats"] = {r[0]: {"events": r[1], "matches": r[2], "drops": r[3],
                               "late_events": r[4], "active_runs": r[5], "engine": r[6]}
                        for r in admin.execute(
                            "SELECT pattern, events, matches, drops, late_events, active_runs, "
                            "engine FROM cep.pattern_stats ORDER BY pattern_id").fetchall()}
        out["guard"] = guard(admin, PATTERNS[:n_patterns if guard_all else 1],
                             data["reference"], out["late_events"])
    return out


def guard(conn, patterns: list[dict], reference: Counter, late: int) -> dict:
    res = {}
    for p in patterns:
        t = time.perf_counter()
        with conn.transaction():
            conn.execute(GUARD_BATCH_SQL, {"p": p["name"]})
            live, batch, live_only, batch_only = conn.execute(
                GUARD_SQL, {"p": p["name"]}).fetchone()
        r = {"live": live, "find_matches": batch, "live_only": live_only,
             "find_only": batch_only, "find_seconds": time.perf_counter() - t,
             "ok": live_only == 0 and batch_only == 0}
        if p["name"] == "checkout":
            if late:
                r["reference"] = f"skipped ({late} late events)"
            else:
                got = matches_counter(conn.execute(
                    "SELECT partition_key, first_time, last_time, cardinality(event_ids) "
                    "FROM cep.matches WHERE pattern = 'checkout'").fetchall())
                r["reference"] = sum(reference.values())
                r["reference_ok"] = got == reference
                r["ok"] = r["ok"] and r["reference_ok"]
        res[p["name"]] = r
    return res


def find_history(cluster, args) -> dict:
    """--find-events events loaded with COPY, then cep.find_matches('checkout') timed."""
    t0 = time.perf_counter()
    ev = clickstream(args.find_events, args.pattern_users, args.seed + 13,
                     int(time.time() * US) - 5 * US)
    lines = ev.copy_lines()
    reference = reference_checkout(ev)
    prep = time.perf_counter() - t0
    cluster.create_database(FIND_DATABASE, template=TEMPLATE)
    out: dict = {"events": len(ev), "users": ev.facts["users"], "prepare_seconds": prep}
    with psycopg.connect(cluster.dsn(FIND_DATABASE), autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute(TABLE_SQL)
        conn.execute(STREAM_SQL)
        t = time.perf_counter()
        with conn.cursor() as cur:
            for lo in range(0, len(lines), 100_000):
                with cur.copy(f"COPY clicks ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                    cp.write(("\n".join(lines[lo:lo + 100_000]) + "\n").encode())
        conn.execute("VACUUM ANALYZE clicks")
        out["load_seconds"] = time.perf_counter() - t
        out["late_events"] = conn.execute(
            "SELECT late_events FROM cep.stream_stats").fetchone()[0]
        # the stored events are not matched now (backfill => false): find_matches does it
        conn.execute(*pattern_sql({**PATTERNS[0], "backfill": False}))
        t = time.perf_counter()
        rows = conn.execute(
            "SELECT partition_key, first_time, last_time, cardinality(event_ids) "
            "FROM cep.find_matches('checkout')").fetchall()
        out["find_seconds"] = time.perf_counter() - t
        out["matches"] = len(rows)
        out["events_per_second"] = len(ev) / out["find_seconds"]
        out["reference"] = sum(reference.values())
        out["reference_ok"] = (out["late_events"] == 0
                               and matches_counter(rows) == reference)
    cluster.drop_database(FIND_DATABASE)
    out["total_seconds"] = time.perf_counter() - t0
    return out


def run(cluster, args, data: dict) -> dict:
    with cluster.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0')
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION pg_cep")
    vs = variants(args.pattern_count_list)
    raw: dict = {k: [] for k, _, _ in vs}
    t = time.perf_counter()
    # One untimed round of the cheap variants first: creates the WAL segments later runs
    # recycle, fills caches (every run also warms its client connections up).
    for key, _, n_pat in vs[:2]:
        measure(cluster, key, n_pat, data)
    print(f"  warm-up round ((a), (b), untimed): {time.perf_counter() - t:.0f} s", flush=True)
    for r in range(args.pattern_repeat):
        order = vs[r % len(vs):] + vs[:r % len(vs)]
        last = r == args.pattern_repeat - 1
        for key, name, n_pat in order:
            if n_pat <= 0:
                # (a) and (b) take well under a second: the median of CHEAP_RUNS loads
                ms = [measure(cluster, key, n_pat, data) for _ in range(CHEAP_RUNS)]
                m = sorted(ms, key=lambda x: x["events_per_second"])[CHEAP_RUNS // 2]
            else:
                # every pattern is checked in the last repeat, checkout in every one
                m = measure(cluster, key, n_pat, data, guard_all=last)
            raw[key].append(m)
            note = ""
            if "ingest_micros_per_event" in m:
                note = f"  pg_cep {m['ingest_micros_per_event']:7.1f} µs/event"
            if "guard" in m:
                bad = [p for p, g in m["guard"].items() if not g["ok"]]
                note += (f"  advance_watermark {m['advance_watermark_seconds']:.1f} s, "
                         f"live = find_matches: {'NO ' + ', '.join(bad) if bad else 'yes'}")
                if "reference_ok" in m["guard"].get("checkout", {}):
                    note += (" (= reference)" if m["guard"]["checkout"]["reference_ok"]
                             else " (checkout != reference)")
            print(f"  run {r + 1}/{args.pattern_repeat}  {name:<38} "
                  f"{m['events_per_second']:>10,.0f} events/s ({m['seconds']:6.2f} s){note}",
                  flush=True)
    out = {"raw": raw}
    if args.find_events:
        print(f"  cep.find_matches over {args.find_events:,} stored events ...", flush=True)
        out["find"] = find_history(cluster, args)
        f = out["find"]
        print(f"  loaded in {f['load_seconds']:.0f} s; find_matches('checkout') "
              f"{f['find_seconds']:.1f} s, {f['matches']:,} matches "
              f"(reference {f['reference']:,}: {'equal' if f['reference_ok'] else 'DIFFERENT'})",
              flush=True)
    with cluster.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
    return out


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def summarize(raw: dict, args, data: dict) -> dict:
    vs = variants(args.pattern_count_list)
    runs = raw["raw"]
    n = len(data["events"])
    processed = n + len(data["warmup"]) // CLIENTS * CLIENTS * BATCH_ROWS
    eps = {k: _med(m["events_per_second"] for m in runs[k]) for k, _, _ in vs}
    per = {}
    for key, name, n_pat in vs:
        ms = runs[key]
        e = {"variant": name, "patterns": max(0, n_pat),
             "runs_events_per_second": [round(m["events_per_second"], 1) for m in ms],
             "median_events_per_second": round(eps[key], 1),
             "ratio_to_plain": _r(eps[key] / eps["a"]),
             "paired_ratio_to_plain": _r(_med(x["events_per_second"] / y["events_per_second"]
                                              for x, y in zip(ms, runs["a"]))),
             "client_micros_per_event": _r(1e6 / eps[key], 2)}
        if n_pat >= 0:
            e["maintenance_calls"] = _med(m["maintenance_calls"] for m in ms)
            e["ingest_micros_per_event"] = _r(_med(m["ingest_micros_per_event"] for m in ms), 2)
            e["late_events"] = max(m["late_events"] for m in ms)
            e["micros_per_event_above_stream"] = _r(1e6 / eps[key] - 1e6 / eps["b"], 2)
        if n_pat > 0:
            e["ingest_micros_per_event_above_stream"] = _r(
                e["ingest_micros_per_event"] - per["b"]["ingest_micros_per_event"], 2)
            e["advance_watermark_seconds"] = _r(_med(m["advance_watermark_seconds"]
                                                     for m in ms), 2)
            e["median_events_per_second_incl_end"] = round(_med(
                n / (m["seconds"] + m["advance_watermark_seconds"]) for m in ms), 1)
            e["matches_during_ingest_share"] = _r(_med(
                m["matches_before_end"] / max(1, sum(x["matches"] for x in m["stats"].values()))
                for m in ms))
            e["matcher_micros_per_event"] = {
                p: _r(_med(m["matcher_ms"].get(p) for m in ms) * 1000 / processed, 2)
                for p in ms[0]["matcher_ms"]}
            e["pattern_stats"] = ms[-1]["stats"]
            e["guard"] = [m["guard"] for m in ms]
            e["guard_ok"] = all(g["ok"] for m in ms for g in m["guard"].values())
            e["checkout_reference"] = ms[-1]["guard"]["checkout"].get("reference")
        per[key] = e
    p1 = per["p1"]
    out = {
        "events": n, "warmup_events": processed - n, "users": args.pattern_users,
        "facts": data["events"].facts, "batch_rows": BATCH_ROWS, "clients": CLIENTS,
        "allowed_lateness": ALLOWED_LATENESS, "maintenance_interval": data["maintenance"],
        "engine": data["engine"],
        "events_per_second_of_event_time":
            EVENTS_PER_SECOND, "repeat": args.pattern_repeat,
        "patterns": [{"name": p["name"], "pattern": p["pattern"], "define": p["define"],
                      **{k: p[k] for k in ("within", "contiguity", "after_match") if k in p}}
                     for p in PATTERNS[:max(args.pattern_count_list)]],
        "variants": per,
        "ratio_p1_plain": p1["ratio_to_plain"],
        "paired_ratio_p1_plain": p1["paired_ratio_to_plain"],
        "target_ratio": TARGET_RATIO,
        "target_ratio_met": p1["ratio_to_plain"] >= TARGET_RATIO,
        "guard_ok": all(e.get("guard_ok", True) for e in per.values()),
    }
    if "find" in raw:
        f = raw["find"]
        out["find_matches"] = {**{k: (_r(v, 3) if isinstance(v, float) else v)
                                  for k, v in f.items()},
                               "target_seconds": TARGET_FIND_SECONDS,
                               "target_met": f["find_seconds"] < TARGET_FIND_SECONDS}
    out["verified"] = out["guard_ok"] and out.get("find_matches", {}).get("reference_ok", True)
    return out


def print_report(s: dict) -> None:
    heading("Patterns")
    f = s["facts"]
    print(f"Clickstream: {s['events']:,} events ({f['users']:,} users, {f['sessions']:,} "
          f"sessions, {f['purchases']:,} purchases, {f['event-time span']} of event time at "
          f"{s['events_per_second_of_event_time']} events/s)\nin {s['batch_rows']}-row INSERT "
          f"batches from {s['clients']} clients, after {s['warmup_events']:,} warm-up events; "
          f"allowed_lateness {s['allowed_lateness']}; engine {s['engine']}; median of "
          f"{s['repeat']} run(s), fresh "
          "database per run.\nIndexes in every variant: primary key, (user_id, created_at), "
          "(created_at).")
    if s["maintenance_interval"]:
        print(f"During the loads into the stream, a third connection calls "
              f"cep.run_maintenance() every {s['maintenance_interval']:g} s (it advances the "
              "keys whose events wait for\nthe watermark: a writer advances only its own keys); "
              "its time is in the wall time.")
    rows = []
    for k, e in s["variants"].items():
        target = verdict = ""
        if k == "p1":
            target = f">= {s['target_ratio']}"
            verdict = "met" if s["target_ratio_met"] else "NOT met"
        rows.append((e["variant"], round(e["median_events_per_second"]), e["ratio_to_plain"],
                     e["paired_ratio_to_plain"], target, verdict,
                     e.get("micros_per_event_above_stream"), e.get("ingest_micros_per_event"),
                     e.get("late_events"),
                     " ".join(f"{x:,.0f}" for x in e["runs_events_per_second"])))
    print_table(["variant", "events/s", "ratio to (a)", "paired", "target", "",
                 "µs/event above (b)", "pg_cep µs/event", "late", "all runs (events/s)"], rows)
    print("µs/event above (b): client-observed wall time per event minus that of the stream "
          "without patterns\n(2 clients, so about half the time a single session spends); "
          "pg_cep µs/event: time inside pg_cep's\nstatement trigger per event, from "
          "cep.stream_stats.ingest_micros_per_event (includes waits for the other client's\n"
          "locks on the same keys).")

    if s["variants"]["b"]["late_events"]:
        print(f"(b) counted {s['variants']['b']['late_events']} late events in a run: its "
              "inserts take milliseconds, so a client stalled by the OS for a few\nms falls "
              "more than 30 s of event time behind the other (with patterns, the clients "
              "wait for each other's\nkeys instead).")

    counts = [e for e in s["variants"].values() if e["patterns"] > 0]
    subheading("Throughput with the number of active patterns")
    b = s["variants"]["b"]
    print_table(["active patterns", "events/s", "ratio to (a)", "µs/event above (b)",
                 "per pattern", "pg_cep µs/event", "advance_watermark s",
                 "events/s incl. it", "matches", "found during ingest"],
                [(0, round(b["median_events_per_second"]), b["ratio_to_plain"], 0.0, None,
                  b["ingest_micros_per_event"], None, None, None, None)]
                + [(e["patterns"], round(e["median_events_per_second"]), e["ratio_to_plain"],
                    e["micros_per_event_above_stream"],
                    round(e["micros_per_event_above_stream"] / e["patterns"], 2),
                    e["ingest_micros_per_event"], e["advance_watermark_seconds"],
                    round(e["median_events_per_second_incl_end"]),
                    sum(x["matches"] for x in e["pattern_stats"].values()),
                    f"{e['matches_during_ingest_share']:.0%}") for e in counts])
    print("advance_watermark s: the final cep.advance_watermark('clicks') (end of input: the "
          "events of the last 30 s,\nthe open runs, and keys whose events wait for the "
          "watermark -- a writer advances only its own keys;\nin production "
          "cep.run_maintenance() advances the others); not in events/s, but in 'events/s "
          "incl. it'.\nfound during ingest: the share of the matches final before that call "
          "(median over the runs).")

    big = counts[-1]
    subheading(f"Where the time goes in ({'p' + str(big['patterns'])}): each pattern's "
               "matcher, µs per event (pg_stat_user_functions)")
    by_name = {p["name"]: p for p in s["patterns"]}
    rows = []
    for name, us in big["matcher_micros_per_event"].items():
        st = big["pattern_stats"].get(name, {})
        p = by_name[name]
        rows.append((name, describe_pattern(p), st.get("engine"), us, st.get("events"),
                     st.get("matches"), st.get("drops")))
    rows.sort(key=lambda r: -(r[3] or 0))
    print_table(["pattern", "pattern (contiguity, options)", "engine", "matcher µs/event",
                 "events", "matches", "drops"], rows)
    total = sum(r[3] or 0 for r in rows)
    who = ("the writers' and cep.run_maintenance()'s calls" if s["maintenance_interval"]
           else "the writers' calls")
    print(f"Matchers together: {total:.1f} µs per event, summed over {who} (pg_cep's\n"
          "statement trigger, writers only: "
          f"{big['ingest_micros_per_event']:.1f} µs/event; (b) alone: "
          f"{s['variants']['b']['ingest_micros_per_event']:.1f} µs/event).\nAn eager pattern's "
          "matcher locks its keys' state rows until commit, and consecutive batches share\nmost "
          "keys, so with eager patterns the two clients mostly run one at a time; a lazy "
          "pattern's writers\nshare their keys' locks and only a statement that matches a key "
          "waits (README, Patterns: Engines).")

    subheading("Correctness guard: live matches after cep.advance_watermark = cep.find_matches")
    rows = []
    for e in counts:
        g = e["guard"][-1]            # the last repeat checks every pattern
        bad = sum(1 for m in e["guard"] for x in m.values() if not x["ok"])
        rows.append((e["variant"], len(g), sum(x["live"] for x in g.values()),
                     sum(x["find_matches"] for x in g.values()),
                     round(sum(x["find_seconds"] for x in g.values()), 1),
                     e["checkout_reference"], "ok" if e["guard_ok"] else f"FAILED ({bad})"))
    print_table(["variant", "patterns", "live matches", "find_matches", "find_matches s",
                 "checkout reference", "all runs"], rows)
    print("checkout reference: the number of login browse+ purchase matches computed in "
          "Python from the generated events\n(compared as (user, first time, last time, "
          "events) with the live matches).")
    fm = s.get("find_matches")
    if fm:
        subheading(f"cep.find_matches('checkout') over {fm['events']:,} stored events")
        print(f"{fm['users']:,} users; loaded with COPY in {fm['load_seconds']:.0f} s into the "
              "stream without patterns, then the pattern created with backfill => false.")
        print(f"find_matches: {fm['find_seconds']:.1f} s = {fm['events_per_second']:,.0f} "
              f"events/s, {fm['matches']:,} matches; target < {TARGET_FIND_SECONDS:.0f} s: "
              f"{'met' if fm['target_met'] else 'NOT met'}; equal to the Python reference "
              f"({fm['reference']:,}): {'yes' if fm['reference_ok'] else 'NO'}.")
    print(f"\n(p1)/(a) = {s['ratio_p1_plain']:.3f} (target >= {TARGET_RATIO}: "
          f"{'met' if s['target_ratio_met'] else 'NOT met'}); correctness guard: "
          f"{'passed' if s['verified'] else 'FAILED'}.")


def parameters(args) -> dict:
    return {"pattern_events": args.pattern_events, "pattern_users": args.pattern_users,
            "pattern_repeat": args.pattern_repeat, "pattern_counts": args.pattern_count_list,
            "pattern_maintenance": args.pattern_maintenance,
            "pattern_engine": args.pattern_engine,
            "find_events": args.find_events, "seed": args.seed}


def add_to_json(path: Path, summary: dict, args) -> None:
    """Add this part's results (and parameters) to bench/run_bench.py's latest.json."""
    doc = json.loads(path.read_text())
    doc["patterns"] = summary
    doc.setdefault("parameters", {}).update(parameters(args))
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main_only(args, base) -> int:
    """--patterns-only of bench/run_bench.py: this part alone."""
    data = prepare(args)
    return base.part_alone(
        args, "patterns", lambda cluster: summarize(run(cluster, args, data), args, data),
        print_report, lambda path, summary: add_to_json(path, summary, args), "Patterns")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--seed", type=int, default=42, help="RNG seed (default 42)")
    args = p.parse_args(argv)
    check_args(p, args)
    t0 = time.perf_counter()
    heading("pg_cep pattern engine benchmark")
    data = prepare(args)
    print(f"Data generated and rendered in {time.perf_counter() - t0:.0f} s.")
    with throwaway_cluster(CLUSTER_SETTINGS, label="Bench cluster") as cluster:
        with cluster.connect() as conn:
            print(f"PostgreSQL {server_version(conn)} on {cpu_count()} CPU(s).")
        subheading("Runs")
        raw = run(cluster, args, data)
    result = summarize(raw, args, data)
    print_report(result)
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    if not result["verified"]:
        print("Pattern correctness guard failed: exit code 1.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
