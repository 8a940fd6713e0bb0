#!/usr/bin/env python3
"""`make demo`: pg_cep end to end on a throwaway cluster, in about a minute.

Starts a private PostgreSQL 15 cluster (never the system one), installs pg_cep, registers
application tables as streams -- card `transactions` (the fraud use case), a `clickstream` of
a shop and the `payments` of its purchases -- and streams a generated, seeded workload into
them from concurrent clients (one per stream) with COPY and multi-row INSERTs. Then it prints
what pg_cep's monitoring shows: stream_stats, the dashboard, the timeline, late events and
alerts, plus the ingest throughput observed, and what the features found (windows,
recommendations, patterns, risk rules).

Each section is one function; features (windows, recommendations, later patterns and rules)
add their definitions to `define_streams` and their output to a `section_*` function.

    .venv/bin/python demo/run_demo.py [--events N] [--seed S] [--rate R] [--keep]
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from pgcep_cli import (heading, human_rate, print_query, print_table,  # noqa: E402
                       server_version, subheading, throwaway_cluster)

DBNAME = "demo"
ALLOWED_LATENESS = "30 seconds"
LATENESS_US = 30 * workload.US

CLUSTER_SETTINGS = {
    # Durable like production (fsync on); commits do not wait for the WAL flush.
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
    "timezone": "UTC",
}

TABLES_SQL = """
CREATE TABLE transactions (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL,
    amount numeric(12,2) NOT NULL,
    location text,
    status text DEFAULT 'ok',
    created_at timestamptz NOT NULL
);
CREATE INDEX ON transactions (user_id, created_at);

CREATE TABLE clickstream (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL,
    item_id int NOT NULL,
    action text NOT NULL CHECK (action IN ('view', 'like', 'share', 'purchase')),
    created_at timestamptz NOT NULL
);
CREATE INDEX ON clickstream (user_id, created_at);
"""

STREAMS_SQL = f"""
SELECT cep.create_stream('transactions', 'transactions', 'created_at',
                         key_column => 'user_id', allowed_lateness => '{ALLOWED_LATENESS}');
SELECT cep.create_stream('clickstream', 'clickstream', 'created_at',
                         key_column => 'user_id', allowed_lateness => '{ALLOWED_LATENESS}');
"""

# The seed's windowed statistics as continuous aggregates, maintained on ingest.
WINDOWS_SQL = """
SELECT cep.create_window('tx_per_minute', 'transactions', 'tumbling', '1 minute',
    aggregates => '{count(*) AS transactions, sum(amount) AS total_amount,
                    avg(amount) AS avg_amount, count(distinct user_id) AS unique_users}');
SELECT cep.create_window('tx_user_5min', 'transactions', 'hopping', '5 minutes', '1 minute',
    group_by => '{user_id}',
    aggregates => '{count(*) AS transactions, sum(amount) AS total, max(amount) AS largest}');
SELECT cep.create_window('tx_global_5min', 'transactions', 'hopping', '5 minutes', '1 minute',
    aggregates => '{count(*) AS transactions, sum(amount) AS total,
                    count(distinct user_id) AS users}');
SELECT cep.create_window('click_sessions', 'clickstream', 'session', '30 minutes',
    aggregates => '{count(*) AS actions, min(item_id) AS first_item, max(created_at) AS last_at}');
"""

# The seed's four risk rules, as rows of cep.rules, and the seed's policy: sum of scores,
# medium >= 0.4, high >= 0.7 (alerts), blocked at >= 0.9.
RULES_SQL = """
INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES
  ('transactions', 'high_frequency', 'threshold',
   '{"metric": "count", "window": "1 hour", "op": ">", "value": 10}', 0.8),
  ('transactions', 'large_amount', 'threshold',
   '{"field": "amount", "op": ">", "value": 10000}', 0.6),
  ('transactions', 'night_time', 'pattern',
   '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}', 0.4),
  ('transactions', 'location_change', 'pattern',
   '{"changed": "location", "window": "5 minutes"}', 0.7);
SELECT cep.set_risk_policy('transactions', 'sum', medium => 0.4, high => 0.7, block => 0.9,
                           block_action => '{"set": {"status": "blocked"}}');
"""

# The seed's real-time recommendations: item-to-item cosine similarity over 7 days of
# user-item weights (view 1, like 3, share 5, purchase 10), maintained on ingest.
RECOMMENDER_SQL = """
SELECT cep.create_recommender('shop', 'clickstream', 'user_id', 'item_id', 'action',
    weights => '{"view": 1, "like": 3, "share": 5, "purchase": 10}', horizon => '7 days');
"""

# Patterns on the clickstream (matched on ingest, in event-time order per user, once the
# watermark reaches the events). The clickstream has no login action: a session starts with a
# user's first event after 30 minutes without one (PREV(created_at): the user's previous event).
PATTERNS_SQL = """
SELECT cep.create_pattern('browse_to_buy', 'clickstream', 'login browse+ purchase',
    '{"login":
        "PREV(created_at) IS NULL OR created_at - PREV(created_at) > interval ''30 minutes''",
      "browse": "action IN (''view'', ''like'', ''share'')",
      "purchase": "action = ''purchase''"}',
    within => '30 minutes');
SELECT cep.create_pattern('liked_shared_bought', 'clickstream', 'PERMUTE(liked, shared) bought',
    '{"liked": "action = ''like''", "shared": "action = ''share''",
      "bought": "action = ''purchase''"}',
    within => '30 minutes');
"""

# Payments of the clickstream's purchases, one order each: a payment a few seconds after the
# purchase, then (usually) a confirmation; the absence detector reports payments that no
# confirmation of the same order followed within 10 minutes.
PAYMENTS_SQL = f"""
CREATE TABLE payments (
    id bigserial PRIMARY KEY,
    order_id int NOT NULL,
    user_id int NOT NULL,
    kind text NOT NULL CHECK (kind IN ('payment', 'confirmation')),
    amount numeric(12,2) NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX ON payments (order_id, created_at);
-- asynchronous: the writer only queues each statement; cep.process_stream applies it later
SELECT cep.create_stream('payments', 'payments', 'created_at',
                         key_column => 'order_id', allowed_lateness => '{ALLOWED_LATENESS}',
                         mode => 'async');
SELECT cep.create_absence('payment_unconfirmed', 'payments', 'kind = ''payment''',
                          'kind = ''confirmation''', '10 minutes');
"""


def payments(clicks: workload.EventBatch, seed: int) -> workload.EventBatch:
    """One order per purchase of the clickstream that is at least 45 minutes old: a payment
    2-30 s after it; a confirmation 3 s - 8 min after the payment for 97% of the orders, 12-40
    minutes after it for 1%, none for 2%. In time order."""
    rng = np.random.default_rng(seed + 3)
    buy = clicks.data["action"] == "purchase"
    t_buy = clicks.created_at_us[buy]
    users = clicks.data["user_id"][buy]
    old = t_buy < clicks.created_at_us.max() - 45 * 60 * workload.US
    t_buy, users = t_buy[old], users[old]
    o = np.argsort(t_buy, kind="stable")
    t_buy, users = t_buy[o], users[o]
    n = len(t_buy)
    order = np.arange(1, n + 1)
    t_pay = t_buy + rng.integers(2, 30, size=n) * workload.US
    outcome = rng.choice(3, size=n, p=[0.97, 0.01, 0.02])   # confirmed / late / never
    delay = np.where(outcome == 0,
                     np.clip(rng.exponential(40.0, size=n), 3, 480),
                     rng.uniform(12 * 60, 40 * 60, size=n))
    t_conf = t_pay + (delay * workload.US).astype(np.int64)
    conf = outcome != 2
    amount = np.round(np.maximum(1.0, rng.lognormal(np.log(45.0), 0.8, size=n)), 2)
    t = np.concatenate([t_pay, t_conf[conf]])
    kind = np.array(["payment"] * n + ["confirmation"] * int(conf.sum()), dtype=object)
    s = np.argsort(t, kind="stable")
    facts = {
        "orders (purchases at least 45 min old)": n,
        "confirmed within 10 minutes": int((outcome == 0).sum()),
        "confirmed after 12-40 minutes": int((outcome == 1).sum()),
        "never confirmed": int((outcome == 2).sum()),
        "expected absences": int((outcome != 0).sum()),
    }
    return workload.EventBatch(
        table="payments", columns=["order_id", "user_id", "kind", "amount", "created_at"],
        data={"order_id": np.concatenate([order, order[conf]])[s],
              "user_id": np.concatenate([users, users[conf]])[s],
              "kind": kind[s], "amount": np.concatenate([amount, amount[conf]])[s]},
        created_at_us=t[s], facts=facts)


# -- ingest -----------------------------------------------------------------------------------

@dataclass
class Feed:
    """One stream's pre-rendered statements and, after the run, what was observed."""
    events: workload.EventBatch
    plan: list[tuple[str, int, int]]
    payloads: list = field(default_factory=list)
    sent: int = 0
    copies: int = 0
    inserts: int = 0
    started: float = 0.0
    finished: float = 0.0
    error: BaseException | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def plan_batches(n: int, copy_rows: int = 2000, insert_rows: int = 500):
    """Three COPY batches, then two multi-row INSERTs, repeated: (kind, lo, hi) row ranges."""
    cycle = [("copy", copy_rows)] * 3 + [("insert", insert_rows)] * 2
    plan, lo, k = [], 0, 0
    while lo < n:
        kind, size = cycle[k % len(cycle)]
        plan.append((kind, lo, min(n, lo + size)))
        lo += size
        k += 1
    return plan


def prepare_feed(ev: workload.EventBatch) -> Feed:
    """Render every statement's data before anything is timed."""
    feed = Feed(events=ev, plan=plan_batches(len(ev)))
    cols = ", ".join(ev.columns)
    lines = ev.copy_lines()
    rows = ev.value_rows()
    one = "(" + ", ".join(["%s"] * len(ev.columns)) + ")"
    for kind, lo, hi in feed.plan:
        if kind == "copy":
            data = ("\n".join(lines[lo:hi]) + "\n").encode()
            feed.payloads.append((f"COPY {ev.table} ({cols}) FROM STDIN", data))
        else:
            sql = f"INSERT INTO {ev.table} ({cols}) VALUES " + ", ".join([one] * (hi - lo))
            feed.payloads.append((sql, [v for r in rows[lo:hi] for v in r]))
    return feed


def _produce(dsn: str, feed: Feed, start: threading.Barrier, rate: float) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            start.wait()
            feed.started = time.perf_counter()
            for (kind, lo, hi), (sql, payload) in zip(feed.plan, feed.payloads):
                if kind == "copy":
                    with cur.copy(sql) as copy:
                        copy.write(payload)
                    feed.copies += 1
                else:
                    cur.execute(sql, payload, prepare=False)
                    feed.inserts += 1
                feed.sent = hi
                if rate:  # paced replay: sleep until this many events are due
                    ahead = hi / rate - (time.perf_counter() - feed.started)
                    if ahead > 0:
                        time.sleep(ahead)
            feed.finished = time.perf_counter()
    except BaseException as exc:  # reported by the main thread
        feed.error = exc
        feed.finished = time.perf_counter()
        start.abort()  # a client that fails before the start must not leave the others waiting


def run_feeds(dsn: str, feeds: list[Feed], rate: float = 0.0) -> float:
    """Stream all feeds concurrently, one client connection each; returns wall seconds."""
    start = threading.Barrier(len(feeds) + 1)
    total = sum(len(f.events) for f in feeds)
    threads = [threading.Thread(target=_produce, name=f"feed-{f.events.table}", daemon=True,
                                args=(dsn, f, start, rate * len(f.events) / total))
               for f in feeds]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    last = t0
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.2)
        if time.perf_counter() - last >= 3 and any(t.is_alive() for t in threads):
            last = time.perf_counter()
            print("  ... " + "   ".join(
                f"{f.events.table} {f.sent:,}/{len(f.events):,}" for f in feeds), flush=True)
    failed = sorted((f for f in feeds if f.error is not None),
                    key=lambda f: isinstance(f.error, threading.BrokenBarrierError))
    if failed:
        f = failed[0]
        raise RuntimeError(f"ingest into {f.events.table} failed: {f.error}") from f.error
    return max(f.finished for f in feeds) - t0


# -- sections ---------------------------------------------------------------------------------

def section_workload(args, now_us: int) -> list[workload.EventBatch]:
    heading("1. Workload (generated, seed %d)" % args.seed)
    tx = workload.transactions(args.events, args.seed, now_us)
    clicks = workload.clickstream(max(1, args.events // 2), args.seed, now_us)
    pay = payments(clicks, args.seed)
    print("Event times cover the last 24 hours and are replayed as fast as the database "
          "takes them.\nEvents arrive in time order with a few seconds of jitter; a few are "
          "delayed by 20 min to 3 h.\nPayments (for the absence pattern) are derived from the "
          "clickstream's purchases and arrive in time order.")
    for ev in (tx, clicks, pay):
        subheading(ev.table)
        print_table(["fact", "value"], [(k, v) for k, v in ev.facts.items()])
    return [tx, clicks, pay]


def section_setup(cluster) -> psycopg.Connection:
    heading("2. Setup")
    cluster.create_database(DBNAME)
    conn = cluster.connect(DBNAME)
    conn.execute("SET client_min_messages = warning")
    conn.execute("CREATE EXTENSION pg_cep")
    conn.execute(TABLES_SQL)
    define_streams(conn)
    print(f"PostgreSQL {server_version(conn)}, throwaway cluster at {cluster.base} "
          f"(fsync on, synchronous_commit off)")
    print_query(conn, "SELECT extversion AS pg_cep_version FROM pg_extension "
                      "WHERE extname = 'pg_cep'")
    print()
    print_query(conn, """
        SELECT name AS stream, source, time_column, key_column, id_column, allowed_lateness,
               notify_channel
        FROM cep.streams ORDER BY stream_id""")
    return conn


def define_streams(conn) -> None:
    print("Registering the tables as streams:")
    print("  " + STREAMS_SQL.strip().replace("\n", "\n  "))
    conn.execute(STREAMS_SQL)
    print("Continuous aggregates (the seed's windowed statistics), maintained on ingest:")
    print("  " + WINDOWS_SQL.strip().replace("\n", "\n  "))
    conn.execute(WINDOWS_SQL)
    print("Risk rules (the seed's four, as data) and the seed's risk policy:")
    print("  " + RULES_SQL.strip().replace("\n", "\n  "))
    conn.execute(RULES_SQL)
    print("A recommender (the seed's item-to-item collaborative filtering), maintained on "
          "ingest:")
    print("  " + RECOMMENDER_SQL.strip().replace("\n", "\n  "))
    conn.execute(RECOMMENDER_SQL)
    print("Patterns on the clickstream (a session starts after 30 minutes without an event), "
          "matched on ingest:")
    print("  " + PATTERNS_SQL.strip().replace("\n", "\n  "))
    conn.execute(PATTERNS_SQL)
    print("Payments and an absence pattern (a payment with no confirmation within 10 minutes):")
    print("  " + PAYMENTS_SQL.strip().replace("\n", "\n  "))
    conn.execute(PAYMENTS_SQL)


def section_windows(conn) -> None:
    heading("Windows: the seed's statistics as continuous aggregates")
    subheading("Per minute, with growth against the previous minute (LAG over the window view)")
    print_query(conn, """
        SELECT window_start, transactions, total_amount, round(avg_amount, 2) AS avg_amount,
               unique_users,
               round(100.0 * (transactions - lag(transactions) OVER w)
                     / nullif(lag(transactions) OVER w, 0), 1) AS growth_pct,
               is_final
        FROM tx_per_minute
        WINDOW w AS (ORDER BY window_start)
        ORDER BY window_start DESC LIMIT 8""")
    subheading("Real-time: the last 5 minutes of event time, busiest users and the global total")
    print_query(conn, """
        SELECT user_id, transactions, total, largest, window_start, window_end
        FROM tx_user_5min
        WHERE window_end = (SELECT max(window_end) FROM tx_global_5min WHERE is_final)
        ORDER BY transactions DESC, total DESC, user_id LIMIT 5""")
    print_query(conn, """
        SELECT 'all users' AS scope, transactions, total, users, window_start, window_end
        FROM tx_global_5min
        WHERE window_end = (SELECT max(window_end) FROM tx_global_5min WHERE is_final)""")
    subheading("Clickstream sessions (30-minute inactivity gap)")
    print_query(conn, """
        SELECT count(*) AS sessions, round(avg(actions), 1) AS avg_actions,
               max(actions) AS longest, count(*) FILTER (WHERE is_final) AS closed
        FROM click_sessions""")
    subheading("Check: tx_per_minute against a plain GROUP BY over the non-late events")
    print_query(conn, """
        WITH truth AS (
            SELECT date_bin('1 minute', t.created_at, '1970-01-01 00:00+00') AS window_start,
                   count(*) AS transactions, sum(t.amount) AS total_amount,
                   count(DISTINCT t.user_id) AS unique_users
            FROM transactions AS t
            WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS l JOIN cep.streams AS s
                              USING (stream_id)
                              WHERE s.name = 'transactions' AND l.event_id = t.id)
            GROUP BY 1
        )
        SELECT count(*) AS minutes,
               count(*) FILTER (WHERE v.window_start IS NULL OR truth.window_start IS NULL
                   OR (v.transactions, v.total_amount, v.unique_users)
                      IS DISTINCT FROM (truth.transactions, truth.total_amount,
                                        truth.unique_users)) AS mismatches
        FROM tx_per_minute AS v FULL JOIN truth USING (window_start)""")
    subheading("cep.window_stats")
    print_query(conn, "SELECT * FROM cep.window_stats")


# Item ids are 1000 + position; the generator groups them in clusters of 20 related items.
CLUSTER_OF = "((({0})::int - 1000) / 20)"


def section_recommendations(conn) -> None:
    heading("Recommendations: item-to-item cosine similarity, maintained on ingest")
    print_query(conn, """
        SELECT recommender, stream, horizon, horizon_start::text, users, items, item_pairs,
               weight_rows, capped_events
        FROM cep.recommender_stats""")
    users = [r[0] for r in conn.execute("""
        (SELECT user_id FROM cep.recommender_weights GROUP BY user_id
         ORDER BY sum(weight) DESC, user_id COLLATE "C" LIMIT 1)
        UNION ALL
        (SELECT user_id FROM cep.recommender_weights GROUP BY user_id
         HAVING count(DISTINCT item_no) BETWEEN 4 AND 8 ORDER BY user_id COLLATE "C" LIMIT 2)
        """).fetchall()]
    for u in users:
        subheading(f"User {u}: what they did in the last 7 days, and what to show them next")
        print_query(conn, f"""
            SELECT i.item_id, {CLUSTER_OF.format('i.item_id')} AS cluster,
                   sum(w.weight) AS weight
            FROM cep.recommender_weights AS w
            JOIN cep.recommender_items AS i USING (item_no)
            WHERE w.user_id = %s
            GROUP BY i.item_id ORDER BY weight DESC, i.item_id LIMIT 6""", (u,))
        print_query(conn, f"""
            SELECT rank, item_id, {CLUSTER_OF.format('item_id')} AS cluster,
                   round(score::numeric, 3) AS score,
                   because_of, {CLUSTER_OF.format('because_of')} AS because_cluster
            FROM cep.recommend('shop', %s, 5)""", (u,))
    subheading("Items most similar to the most viewed item (cep.similar_items)")
    top = conn.execute("""
        SELECT i.item_id FROM cep.recommender_pairs AS p
        JOIN cep.recommender_items AS i ON i.item_no = p.item_a
        WHERE p.item_a = p.item_b
        ORDER BY p.dot DESC, i.item_id LIMIT 1""").fetchone()[0]
    print_query(conn, f"""
        SELECT rank, item_id, {CLUSTER_OF.format('item_id')} AS cluster,
               round(similarity::numeric, 4) AS cosine
        FROM cep.similar_items('shop', %s, 5)""", (top,))
    subheading("Check: cep.recommend against the seed's batch algorithm recomputed in SQL "
               "from the raw events")
    print_query(conn, """
        WITH w AS (
            SELECT c.user_id::text AS u, c.item_id::text AS i,
                   sum(CASE c.action WHEN 'view' THEN 1 WHEN 'like' THEN 3 WHEN 'share' THEN 5
                                     WHEN 'purchase' THEN 10 ELSE 0 END)::float8 AS w
            FROM clickstream AS c
            WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS l JOIN cep.streams AS s
                              USING (stream_id)
                              WHERE s.name = 'clickstream' AND l.event_id = c.id)
            GROUP BY 1, 2
        ), norm AS (SELECT i, sqrt(sum(w * w)) AS n FROM w GROUP BY i),
        asked AS (SELECT unnest(%s::text[]) AS u),
        truth AS (
            SELECT a.u, o.i, sum(m.w * x.w * o.w / (ni.n * nj.n)) AS score
            FROM asked AS a
            JOIN w AS m ON m.u = a.u
            JOIN w AS x ON x.i = m.i
            JOIN w AS o ON o.u = x.u
            JOIN norm AS ni ON ni.i = o.i
            JOIN norm AS nj ON nj.i = m.i
            WHERE NOT EXISTS (SELECT 1 FROM w AS mine WHERE mine.u = a.u AND mine.i = o.i)
            GROUP BY a.u, o.i
        ), top AS (
            SELECT t.*, row_number() OVER (PARTITION BY t.u
                                           ORDER BY t.score DESC, t.i COLLATE "C") AS rank
            FROM truth AS t
        )
        SELECT count(*) AS recommendations_checked,
               count(*) FILTER (WHERE r.item_id IS DISTINCT FROM t.i
                   OR abs(r.score - t.score) > 1e-9) AS mismatches
        FROM top AS t
        LEFT JOIN LATERAL cep.recommend('shop', t.u, 5) AS r ON r.rank = t.rank
        WHERE t.rank <= 5""", (users,))


def section_patterns(conn, payments_ev: workload.EventBatch) -> None:
    heading("Patterns: sequences, PERMUTE and absence, matched on ingest")
    print("A match is final once the stream's watermark has passed it; the demo's input ends "
          "here, so:")
    for stream in ("clickstream", "payments"):
        sql = f"SELECT cep.advance_watermark('{stream}')"
        t = time.perf_counter()
        conn.execute(sql)
        print(f"  {sql};   -- end of input ({time.perf_counter() - t:.1f} s)")
    subheading("Matches per pattern (cep.matches)")
    print_query(conn, """
        SELECT p.name AS pattern, p.kind, s.name AS stream,
               coalesce(p.pattern, format('%s, then no %s within %s', p.start_condition,
                                          p.expected_condition, p.within)) AS definition,
               count(m.match_id) AS matches, count(DISTINCT m.partition_key) AS keys,
               round(avg(cardinality(m.event_ids)), 1) AS avg_events,
               max(m.last_time - m.first_time) FILTER (WHERE p.kind = 'pattern') AS longest
        FROM cep.patterns AS p
        JOIN cep.streams AS s USING (stream_id)
        LEFT JOIN cep.matches AS m ON m.pattern_id = p.pattern_id
        GROUP BY p.pattern_id, s.name ORDER BY p.pattern_id""")
    for name in ("browse_to_buy", "liked_shared_bought"):
        subheading(f"Examples of {name}: each event's action and the variable it was bound to")
        print_query(conn, """
            SELECT m.partition_key AS user_id, m.first_time, m.last_time - m.first_time AS took,
                   array_to_string(m.classifiers, ' ') AS classifiers,
                   (SELECT string_agg(c.action, ' ' ORDER BY u.o)
                    FROM unnest(m.event_ids) WITH ORDINALITY AS u (id, o)
                    JOIN clickstream AS c ON c.id = u.id) AS actions
            FROM cep.matches AS m WHERE m.pattern = %s
            ORDER BY cardinality(m.event_ids) BETWEEN 4 AND 7 DESC, m.match_id LIMIT 4""",
                    (name,))
    subheading("Examples of payment_unconfirmed: the payment, and its confirmation if one came")
    print_query(conn, """
        SELECT order_id, user_id, amount, paid_at, coalesce(confirmed_after::text, 'never')
               AS confirmed_after
        FROM (
            SELECT m.partition_key AS order_id, p.user_id, p.amount, m.first_time AS paid_at,
                   c.confirmed_after,
                   row_number() OVER (PARTITION BY c.confirmed_after IS NULL
                                      ORDER BY m.match_id) AS n
            FROM cep.matches AS m
            JOIN payments AS p ON p.id = m.event_ids[1]
            CROSS JOIN LATERAL (
                SELECT min(x.created_at) - m.first_time AS confirmed_after FROM payments AS x
                WHERE x.order_id = p.order_id AND x.kind = 'confirmation') AS c
            WHERE m.pattern = 'payment_unconfirmed'
        ) AS e
        WHERE n <= 3 ORDER BY confirmed_after NULLS FIRST, paid_at""")
    f = payments_ev.facts
    print(f"Expected from the generator: {f['expected absences']} ({f['never confirmed']} never "
          f"confirmed, {f['confirmed after 12-40 minutes']} confirmed after 12-40 minutes).")
    subheading("cep.pattern_stats")
    print_query(conn, """
        SELECT pattern, stream, kind, active_runs, keys_with_runs, events, matches, drops,
               late_events, last_match
        FROM cep.pattern_stats ORDER BY pattern_id""")
    subheading("Alerts raised by the patterns")
    print_query(conn, """
        SELECT source_kind, source_name, severity, count(*) AS alerts
        FROM cep.alerts WHERE source_kind IN ('pattern', 'absence')
        GROUP BY 1, 2, 3 ORDER BY 1, 2""")
    subheading("Check: live matches (cep.matches) against cep.find_matches over the stored "
               "events")
    print_query(conn, """
        WITH live AS (
            SELECT pattern, event_ids FROM cep.matches
        ), batch AS MATERIALIZED (
            SELECT p.name AS pattern, f.event_ids
            FROM cep.patterns AS p CROSS JOIN LATERAL cep.find_matches(p.name) AS f
        )
        SELECT p.name AS pattern,
               (SELECT count(*) FROM live WHERE live.pattern = p.name) AS live_matches,
               (SELECT count(*) FROM batch WHERE batch.pattern = p.name) AS find_matches,
               (SELECT count(*) FROM (
                    (SELECT event_ids FROM live WHERE live.pattern = p.name
                     EXCEPT ALL SELECT event_ids FROM batch WHERE batch.pattern = p.name)
                    UNION ALL
                    (SELECT event_ids FROM batch WHERE batch.pattern = p.name
                     EXCEPT ALL SELECT event_ids FROM live WHERE live.pattern = p.name)
                ) AS d) AS mismatches
        FROM cep.patterns AS p ORDER BY p.pattern_id""")


def section_ingest(cluster, events: list[workload.EventBatch],
                   rate: float) -> tuple[list[Feed], float]:
    heading("3. Streaming the events")
    t = time.perf_counter()
    feeds = [prepare_feed(ev) for ev in events]
    print(f"Pre-rendered {sum(len(f.plan) for f in feeds)} statements in "
          f"{time.perf_counter() - t:.1f} s (not timed). Sending: one client per stream, "
          f"3 COPYs of 2,000 rows then 2 INSERTs of 500 rows, repeated, autocommit,")
    print(f"paced at {rate:,.0f} events/s in total." if rate else "as fast as possible.")
    wall = run_feeds(cluster.dsn(DBNAME), feeds, rate)
    total = sum(len(f.events) for f in feeds)
    print(f"Done: {total:,} events in {wall:.1f} s "
          f"= {human_rate(total / wall)} events/s over all streams.")
    return feeds, wall


def section_stream_stats(conn) -> None:
    heading("4. cep.stream_stats")
    print("SELECT * FROM cep.stream_stats;   -- shown expanded, like psql's \\x")
    print_query(conn, "SELECT * FROM cep.stream_stats ORDER BY stream", expanded=True)


def section_async(conn) -> None:
    heading("3b. The asynchronous stream: queued on insert, processed after commit")
    print("payments is an asynchronous stream: each INSERT/COPY only checked its rows and queued "
          "one row in cep.stream_queue.")
    q = ("SELECT stream, mode, events_total, backlog_statements, backlog_events, "
         "processing_lag FROM cep.stream_stats WHERE mode = 'async'")
    print_query(conn, q)
    t = time.perf_counter()
    n = 0
    while True:
        done = conn.execute("SELECT cep.process_stream('payments', 20000)").fetchone()[0]
        if not done:
            break
        n += done
    wall = time.perf_counter() - t
    print(f"SELECT cep.process_stream('payments', 20000) until it returns 0: {n:,} events "
          f"applied in {wall:.2f} s ({human_rate(n / wall) if wall else '-'} events/s), "
          "each statement exactly once, in commit order, through the same generated code.")
    print_query(conn, q)


def section_dashboard(conn) -> None:
    heading("5. cep.dashboard")
    print("SELECT * FROM cep.dashboard;")
    print_query(conn, "SELECT * FROM cep.dashboard")


def section_timeline(conn, ingest_started_wall: float, ingest_seconds: float) -> None:
    heading("6. cep.timeline (ingest activity by wall-clock bucket)")
    elapsed = time.time() - ingest_started_wall
    # About ten buckets over the ingest, in whole seconds (or minutes for long runs).
    bucket = max(1, math.ceil(ingest_seconds / 10))
    if bucket > 60:
        bucket = 60 * math.ceil(bucket / 60)
    span = int(math.ceil((elapsed + bucket) / bucket) * bucket)
    for stream in ("transactions", "clickstream"):
        unit = "second" if bucket == 1 else "seconds"
        sql = (f"SELECT * FROM cep.timeline('{stream}', bucket => '{bucket} {unit}', "
               f"span => '{span} seconds')")
        subheading(stream)
        print(sql + ";")
        print_query(conn, sql)


def section_late_events(conn, feeds: list[Feed]) -> None:
    heading("7. Late events")
    print(f"An event is late when its time is older than the stream's watermark "
          f"(newest event time - allowed lateness {ALLOWED_LATENESS}) on arrival.\n"
          f"It stays in the table, is counted, and will not change closed results.")
    expected = {f.events.table: workload.expected_late(f.events.created_at_us, f.plan,
                                                       LATENESS_US) for f in feeds}
    rows = conn.execute("""
        SELECT s.name, count(l.event_id), min(l.watermark - l.event_time),
               max(l.watermark - l.event_time)
        FROM cep.streams AS s LEFT JOIN cep.late_events AS l USING (stream_id)
        GROUP BY s.name ORDER BY s.name""").fetchall()
    print()
    print_table(["stream", "late_events", "expected (generator)", "least behind watermark",
                 "most behind watermark"],
                [(r[0], r[1], expected.get(r[0]), r[2], r[3]) for r in rows])
    subheading("Sample from cep.late_events")
    print_query(conn, """
        SELECT s.name AS stream, l.event_id, l.partition_key, l.event_time, l.watermark,
               l.watermark - l.event_time AS behind
        FROM cep.late_events AS l JOIN cep.streams AS s USING (stream_id)
        ORDER BY l.arrived_at, l.event_id LIMIT 5""")


def section_alerts(conn) -> None:
    heading("8. cep.alerts")
    total = conn.execute("SELECT count(*) FROM cep.alerts").fetchone()[0]
    print(f"{total} alert(s) in total; the newest:")
    print_query(conn, """
        SELECT alert_id, created_at, source_kind, source_name, stream, partition_key,
               severity, round(score::numeric, 2) AS score, message
        FROM cep.alerts ORDER BY created_at DESC, alert_id DESC LIMIT 10""",
                empty="(no alerts)")


def section_rules(conn) -> None:
    heading("Risk rules: assessments, levels, blocked transactions")
    subheading("Assessed events by level (events that fired at least one rule)")
    print_query(conn, """
        SELECT level, count(*) AS events, round(avg(total_score)::numeric, 2) AS avg_score,
               count(*) FILTER (WHERE blocked) AS blocked
        FROM cep.risk_assessments GROUP BY level ORDER BY min(total_score) DESC""")
    subheading("Top risky users")
    print_query(conn, """
        SELECT partition_key AS user_id, count(*) AS assessed,
               count(*) FILTER (WHERE level = 'high') AS high,
               round(max(total_score)::numeric, 2) AS max_score,
               count(*) FILTER (WHERE blocked) AS blocked
        FROM cep.risk_assessments
        GROUP BY partition_key ORDER BY high DESC, max_score DESC, assessed DESC LIMIT 8""")
    subheading("Alerts by severity (source_kind = 'rule')")
    print_query(conn, """
        SELECT severity, count(*) AS alerts FROM cep.alerts WHERE source_kind = 'rule'
        GROUP BY severity ORDER BY min(score) DESC""")
    subheading("Blocked transactions (block_action set status = 'blocked' in the same INSERT)")
    print_query(conn, """
        SELECT t.id, t.user_id, t.amount, t.location, t.created_at, a.total_score,
               (SELECT string_agg(r.name, ', ' ORDER BY r.rule_id) FROM cep.rules AS r
                WHERE r.rule_id = ANY (a.triggered_rules)) AS rules
        FROM transactions AS t
        JOIN cep.risk_assessments AS a ON a.stream = 'transactions' AND a.event_id = t.id
        WHERE t.status = 'blocked' ORDER BY a.total_score DESC, t.id LIMIT 8""")
    total_blocked = conn.execute(
        "SELECT count(*) FROM transactions WHERE status = 'blocked'").fetchone()[0]
    print(f"{total_blocked} transaction(s) blocked in total.")
    subheading("cep.rule_stats")
    print_query(conn, """
        SELECT rule_name, kind, version, risk_score, evaluations, hits, hit_rate, last_hit
        FROM cep.rule_stats ORDER BY rule_id""")
    subheading("Ad hoc: cep.evaluate_rules for a hypothetical 15,000 transaction at 23:30 UTC")
    print_query(conn, """
        SELECT * FROM cep.evaluate_rules('transactions', jsonb_build_object(
            'user_id', 1, 'amount', 15000, 'location', 'Lisbon',
            'created_at', date_trunc('day', now()) - interval '30 minutes'))""")


def section_activity(conn) -> None:
    heading("9. Cross-check in plain SQL: the user-hours behind the alerts")
    print("User-hours in transactions with the most distinct locations (the fraud bursts), "
          "next to the\nbusiest ordinary user-hours -- the rules above flagged the former "
          "as events arrived:")
    print_query(conn, """
        WITH h AS (
            SELECT user_id, date_trunc('hour', created_at) AS hour, count(*) AS transactions,
                   sum(amount) AS total_amount, count(DISTINCT location) AS locations,
                   count(*) FILTER (WHERE amount > 10000) AS over_10000,
                   count(*) FILTER (WHERE extract(hour FROM created_at) >= 22
                                       OR extract(hour FROM created_at) < 6) AS at_night
            FROM transactions GROUP BY 1, 2
        )
        (SELECT 'most locations' AS ranked_by, * FROM h
         ORDER BY locations DESC, transactions DESC, user_id LIMIT 5)
        UNION ALL
        (SELECT 'most transactions', * FROM h
         ORDER BY transactions DESC, locations DESC, user_id LIMIT 3)""")


def section_maintenance(conn) -> None:
    heading("10. cep.run_maintenance()  -- schedule it every minute")
    print_query(conn, "SELECT * FROM cep.run_maintenance()")


def section_throughput(conn, feeds: list[Feed], wall: float) -> None:
    heading("11. Ingest throughput observed")
    stats = {r[0]: r[1:] for r in conn.execute(
        "SELECT stream, ingest_micros_per_event, ingest_micros_per_batch, batches_total "
        "FROM cep.stream_stats").fetchall()}
    rows = []
    for f in feeds:
        n = len(f.events)
        per_event, per_batch, batches = stats.get(f.events.table, (None, None, None))
        rows.append((f.events.table, n, f.copies, f.inserts, round(f.seconds, 2),
                     round(n / f.seconds), per_event, per_batch))
    total = sum(len(f.events) for f in feeds)
    rows.append(("all (concurrently)", total, sum(f.copies for f in feeds),
                 sum(f.inserts for f in feeds), round(wall, 2), round(total / wall), None, None))
    print_table(["stream", "events", "COPY stmts", "INSERT stmts", "seconds", "events/s",
                 "pg_cep µs/event", "pg_cep µs/stmt"], rows)
    print("events/s is client-observed, end to end (parse, insert, indexes, pg_cep trigger, "
          "commit);\npg_cep µs/event is the time spent inside pg_cep's statement trigger, from "
          "cep.stream_stats.")


# -- main -------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000,
                   help="number of transactions (the clickstream gets half as many); "
                        "default 200000")
    p.add_argument("--seed", type=int, default=42, help="RNG seed (default 42)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="pace the replay at this many events/s over all streams "
                        "(default 0: as fast as possible)")
    p.add_argument("--keep", action="store_true",
                   help="leave the cluster running and print how to connect")
    args = p.parse_args(argv)
    if args.events < 1000:
        p.error("--events must be at least 1000")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    now_us = int(time.time() * workload.US)
    events = section_workload(args, now_us)
    with throwaway_cluster(CLUSTER_SETTINGS, keep=args.keep, label="Demo cluster",
                           dbname=DBNAME) as cluster:
        conn = section_setup(cluster)
        try:
            ingest_started = time.time()
            feeds, wall = section_ingest(cluster, events, args.rate)
            section_async(conn)
            section_stream_stats(conn)
            section_dashboard(conn)
            section_timeline(conn, ingest_started, wall)
            section_windows(conn)
            section_recommendations(conn)
            section_patterns(conn, events[2])
            section_late_events(conn, feeds)
            section_rules(conn)
            section_alerts(conn)
            section_activity(conn)
            section_maintenance(conn)
            section_throughput(conn, feeds, wall)
        finally:
            conn.close()
    print(f"\nDemo finished in {time.perf_counter() - t0:.0f} s"
          f"{'' if args.keep else '; the cluster was removed'}.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the demo cluster was removed", file=sys.stderr)
        sys.exit(130)
