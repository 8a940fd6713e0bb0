#!/usr/bin/env python3
"""Recommender part of `make bench` (imported by bench/run_bench.py, or run on its own).

Data: a generated clickstream (demo/workload.py: browsing sessions of users with log-normal
activity, each mostly in two favourite clusters of 20 related items, 15% elsewhere; actions
view/like/share/purchase) -- by default 1,000,000 events over 50,000 users and 5,000 items,
spread over the last 48 hours, loaded in 1000-row INSERT ... SELECT FROM unnest(...) batches
(rendered before timing), autocommit, from --rec-clients connections.

  (a) plain        -- the table alone (primary key and (user_id, created_at) index);
  (r) recommender  -- the same table as a stream with one recommender
                      (cep.create_recommender('clicks', ...), default weights, 7-day horizon);
  (f) floor        -- the least any exact item-item model maintained on ingest must write: the
                      same table with a statement trigger that keeps w(u, i) and every
                      co-occurring pair's dot product in two bare tables (numeric, primary keys
                      only, no item numbering, horizon buckets, float images, second index,
                      fan-out cap or monitoring), the users of the batch locked first; checked to
                      hold the same number of pairs and the same sum of dot products as (r).
                      It runs before (r), so that the queries read the recommender's state as
                      its own load left it in memory, not after another 1M-event load.

Reported: events/s of all three, r/a (target >= 0.3) and f/a, pg_cep's time per event, the state's size,
then the latency of cep.recommend(recommender, user, 10) for --rec-queries users drawn like
the events (active users are asked more often) and of cep.similar_items(recommender, item, 10),
one query at a time from one connection: p50 / p95 (target < 20 ms) / p99 / max, measured by
the client (round trip included). Before timing the queries, every recommendation of a sample of
users is checked against a recomputation in SQL from the user-item weights.

    .venv/bin/python bench/recommend_bench.py [--rec-events N] [--rec-users U] [--rec-items I]
                                               [--rec-clients C] [--rec-queries Q] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))

import workload  # noqa: E402
from pgcep_cli import (cpu_count, heading, print_table, server_version,  # noqa: E402
                       subheading, throwaway_cluster)

DATABASE = "bench_recommend"
BATCH_ROWS = 1000
TARGET_RATIO = 0.3           # r/a, from the issue
TARGET_P95_MS = 20.0         # cep.recommend p95, from the issue
SPAN_HOURS = 48.0

TABLE_SQL = """
DROP TABLE IF EXISTS clicks;
CREATE TABLE clicks (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL,
    item_id int NOT NULL,
    action text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX clicks_user_time_idx ON clicks (user_id, created_at);
"""
INSERT_SQL = ("INSERT INTO clicks (user_id, item_id, action, created_at) "
              "SELECT * FROM unnest(%s::int[], %s::int[], %s::text[], %s::timestamptz[])")
RECOMMENDER_SQL = """
SELECT cep.create_stream('clicks', 'clicks', 'created_at', key_column => 'user_id',
                         allowed_lateness => '1 hour');
SELECT cep.create_recommender('clicks', 'clicks', 'user_id', 'item_id', 'action');
"""
# Variant (f): the floor of exact pair maintenance on ingest (see the docstring).
FLOOR_SQL = """
CREATE TABLE floor_users (u int PRIMARY KEY);
CREATE TABLE floor_w (u int, i int, w numeric NOT NULL, PRIMARY KEY (u, i));
CREATE TABLE floor_p (a int, b int, dot numeric NOT NULL, PRIMARY KEY (a, b));
CREATE FUNCTION floor_rec() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- the batch's users, locked in order (a statement of its own: the next one's snapshot
    -- then sees what the sessions that held them committed)
    INSERT INTO floor_users AS x (u)
    SELECT DISTINCT n.user_id FROM new_rows AS n ORDER BY 1
    ON CONFLICT (u) DO UPDATE SET u = EXCLUDED.u;
    WITH d AS (
        SELECT n.user_id AS u, n.item_id AS i,
            sum(CASE n.action WHEN 'view' THEN 1 WHEN 'like' THEN 3 WHEN 'share' THEN 5
                WHEN 'purchase' THEN 10 ELSE 0 END)::numeric AS dw
        FROM new_rows AS n
        GROUP BY 1, 2
    ), c AS (
        SELECT d.u, d.i, coalesce(w.w, 0) AS w0, coalesce(w.w, 0) + d.dw AS w1
        FROM d LEFT JOIN floor_w AS w ON w.u = d.u AND w.i = d.i
        WHERE d.dw <> 0
    ), upd AS (
        INSERT INTO floor_w AS w (u, i, w)
        SELECT c.u, c.i, c.w1 FROM c ORDER BY 1, 2
        ON CONFLICT (u, i) DO UPDATE SET w = EXCLUDED.w
    ), allw AS (
        SELECT w.u, w.i, w.w AS w0, w.w AS w1
        FROM floor_w AS w
        WHERE w.u IN (SELECT c.u FROM c)
            AND NOT EXISTS (SELECT 1 FROM c WHERE c.u = w.u AND c.i = w.i)
        UNION ALL
        SELECT c.u, c.i, c.w0, c.w1 FROM c
    ), deltas AS (
        SELECT x.i AS a, y.i AS b, sum(x.w1 * y.w1 - x.w0 * y.w0) AS dd
        FROM allw AS x
        JOIN allw AS y ON y.u = x.u AND x.i <= y.i
        WHERE EXISTS (SELECT 1 FROM c WHERE c.u = x.u AND (c.i = x.i OR c.i = y.i))
        GROUP BY 1, 2
    )
    INSERT INTO floor_p AS p (a, b, dot)
    SELECT deltas.a, deltas.b, deltas.dd FROM deltas WHERE deltas.dd <> 0 ORDER BY 1, 2
    ON CONFLICT (a, b) DO UPDATE SET dot = p.dot + EXCLUDED.dot;
    RETURN NULL;
END
$$;
CREATE TRIGGER floor_rec AFTER INSERT ON clicks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION floor_rec();
"""

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

# Every recommendation of a user recomputed in SQL from the weights table alone (cosine from
# scratch), for the correctness check before the latency runs.
CHECK_SQL = """
WITH w AS (
    SELECT x.user_id, i.item_id, sum(x.weight)::float8 AS w FROM cep.recommender_weights AS x
    JOIN cep.recommender_items AS i USING (item_no)
    GROUP BY 1, 2
), mine AS (SELECT item_id, w FROM w WHERE user_id = %(u)s),
norm AS (SELECT item_id, sqrt(sum(w * w)) AS n FROM w GROUP BY 1),
cand AS (
    SELECT o.item_id AS i, m.item_id AS j, sum(o.w * x.w) AS dot
    FROM mine AS m
    JOIN w AS x ON x.item_id = m.item_id
    JOIN w AS o ON o.user_id = x.user_id AND o.item_id NOT IN (SELECT item_id FROM mine)
    GROUP BY 1, 2
)
SELECT c.i, sum(m.w * c.dot / (ni.n * nj.n)) AS score
FROM cand AS c
JOIN mine AS m ON m.item_id = c.j
JOIN norm AS ni ON ni.item_id = c.i
JOIN norm AS nj ON nj.item_id = c.j
GROUP BY c.i
ORDER BY 2 DESC, c.i::text COLLATE "C"
LIMIT 10
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rec-events", type=int, default=1_000_000,
                   help="clickstream events of the recommender bench (default 1000000)")
    p.add_argument("--rec-users", type=int, default=50_000, help="users (default 50000)")
    p.add_argument("--rec-items", type=int, default=5_000, help="items (default 5000)")
    p.add_argument("--rec-clients", type=int, default=2,
                   help="concurrent loading connections (default 2, as the insert part)")
    p.add_argument("--rec-queries", type=int, default=1000,
                   help="cep.recommend and cep.similar_items calls timed (default 1000 each)")


def prepare(args) -> dict:
    now_us = int(time.time() * workload.US)
    ev = workload.clickstream(args.rec_events, args.seed + 7, now_us, span_hours=SPAN_HOURS,
                              n_users=args.rec_users, n_items=args.rec_items, cluster_size=20,
                              late_fraction=0.0, table="clicks")
    cols = ev.text_columns()
    quote = [False, False, True, True]
    batches = []
    for lo in range(0, len(ev), BATCH_ROWS):
        batches.append(tuple(
            "{" + ",".join(f'"{v}"' if q else v for v in c[lo:lo + BATCH_ROWS]) + "}"
            for c, q in zip(cols, quote)))
    return {"events": ev, "batches": batches}


def _load(dsn: str, batches: list, clients: int) -> float:
    shared = {"next": 0, "lock": threading.Lock()}
    errors: list[BaseException] = []
    go = threading.Barrier(clients + 1)

    def client():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                cur = conn.cursor()
                go.wait()
                while True:
                    with shared["lock"]:
                        i = shared["next"]
                        shared["next"] = i + 1
                    if i >= len(batches):
                        return
                    cur.execute(INSERT_SQL, batches[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            go.abort()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        go.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _percentiles(ms: list[float]) -> dict:
    a = np.array(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "calls": len(ms)}


def _load_writing(admin, dsn: str, data: dict, args, setup_sql: str, pairs: str):
    """A fresh clicks table, SETUP_SQL on it, the timed load: seconds, and the rows inserted
    or updated in the table PAIRS (the item-pair row writes)."""
    admin.execute(TABLE_SQL)
    admin.execute(setup_sql)
    admin.execute("CHECKPOINT")
    secs = _load(dsn, data["batches"], args.rec_clients)
    admin.execute("SELECT pg_stat_clear_snapshot()")
    writes = admin.execute(
        "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relid = %s::regclass",
        (pairs,)).fetchone()[0]
    return secs, writes


def run(cluster, args, data: dict) -> dict:
    cluster.create_database(DATABASE)
    dsn = cluster.dsn(DATABASE)
    n = len(data["events"])
    out: dict = {"events": n, "users": args.rec_users, "items": args.rec_items,
                 "batch_rows": BATCH_ROWS, "clients": args.rec_clients,
                 "facts": data["events"].facts}
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SET client_min_messages = warning")
        admin.execute("CREATE EXTENSION pg_cep")

        admin.execute(TABLE_SQL)
        admin.execute("CHECKPOINT")
        secs = _load(dsn, data["batches"], args.rec_clients)
        out["plain"] = {"seconds": secs, "events_per_second": n / secs}
        print(f"  (a) plain        {n / secs:>10,.0f} events/s  ({secs:6.1f} s)", flush=True)

        # (f) the floor first, in the same database (its tables are apart from pg_cep's), so
        # that the recommender's state is what the last load left in memory when it is read
        admin.execute("DROP TABLE clicks")
        secs, floor_writes = _load_writing(admin, dsn, data, args, FLOOR_SQL, "floor_p")
        pairs_f, dots_f = admin.execute(
            "SELECT count(*), sum(dot) FROM floor_p WHERE dot <> 0").fetchone()
        out["floor"] = {"seconds": secs, "events_per_second": n / secs,
                        "pair_writes_per_event": floor_writes / n, "pairs": pairs_f}
        out["floor_ratio"] = n / secs / out["plain"]["events_per_second"]
        print(f"  (f) floor        {n / secs:>10,.0f} events/s  ({secs:6.1f} s)  "
              f"{floor_writes / n:.1f} pair row writes/event", flush=True)
        admin.execute("DROP TABLE clicks, floor_users, floor_w, floor_p")
        admin.execute("DROP FUNCTION floor_rec()")

        secs, pair_writes = _load_writing(admin, dsn, data, args, RECOMMENDER_SQL,
                                          "cep.recommender_pairs")
        per_event = admin.execute(
            "SELECT ingest_micros_per_event FROM cep.stream_stats").fetchone()[0]
        out["recommender"] = {"seconds": secs, "events_per_second": n / secs,
                              "ingest_micros_per_event": float(per_event),
                              "pair_writes_per_event": pair_writes / n}
        print(f"  (r) recommender  {n / secs:>10,.0f} events/s  ({secs:6.1f} s)  "
              f"pg_cep {per_event:.1f} µs/event, {pair_writes / n:.1f} item-pair row "
              f"writes/event", flush=True)
        out["ratio"] = out["recommender"]["events_per_second"] / out["plain"]["events_per_second"]

        # (f) kept the same pairs and dot products as (r)
        pairs_r, dots_r = admin.execute(
            "SELECT count(*), sum(dot) FROM cep.recommender_pairs WHERE dot <> 0").fetchone()
        out["floor"]["same_pairs_as_r"] = pairs_f == pairs_r and dots_f == dots_r
        print(f"  (f) kept the same pairs and dot products as (r): "
              f"{out['floor']['same_pairs_as_r']}", flush=True)
        clicks_bytes = admin.execute("SELECT pg_total_relation_size('clicks')").fetchone()[0]

        admin.execute("VACUUM ANALYZE cep.recommender_weights, cep.recommender_pairs, "
                      "cep.recommender_users")
        st = admin.execute(
            "SELECT users, items, item_pairs, weight_rows, capped_events "
            "FROM cep.recommender_stats").fetchone()
        sizes = admin.execute(
            "SELECT pg_total_relation_size('cep.recommender_pairs'), "
            "pg_total_relation_size('cep.recommender_weights'), "
            "pg_total_relation_size('cep.recommender_users'), %s::bigint",
            (clicks_bytes,)).fetchone()
        out["state"] = dict(zip(["users", "items", "item_pairs", "weight_rows",
                                 "capped_events"], st))
        out["state"].update(pairs_mb=sizes[0] / 2**20, weights_mb=sizes[1] / 2**20,
                            users_mb=sizes[2] / 2**20, events_table_mb=sizes[3] / 2**20)

        # Users asked like the events (busy users more often), items likewise.
        rng = random.Random(args.seed)
        ev = data["events"]
        users = [str(u) for u in rng.sample(list(ev.data["user_id"]), args.rec_queries)]
        items = [str(i) for i in rng.sample(list(ev.data["item_id"]), args.rec_queries)]

        checked = 0
        for u in users[:20]:
            got = admin.execute("SELECT item_id, score FROM cep.recommend('clicks', %s, 10)",
                                (u,)).fetchall()
            want = admin.execute(CHECK_SQL, {"u": u}).fetchall()
            ok = len(got) == len(want) and all(
                abs(g[1] - w[1]) <= 1e-9 * max(1.0, abs(w[1])) for g, w in zip(got, want))
            if not ok:
                raise RuntimeError(f"recommend('clicks', {u}) differs from the recomputation:"
                                   f"\n{got}\n{want}")
            checked += 1
        out["checked_users"] = checked

    with psycopg.connect(dsn, autocommit=True) as conn:
        for label, q, keys in (
                ("recommend", "SELECT * FROM cep.recommend('clicks', %s, 10)", users),
                ("similar_items", "SELECT * FROM cep.similar_items('clicks', %s, 10)", items)):
            for k in keys[:50]:                                 # warm the plan cache
                conn.execute(q, (k,), prepare=True).fetchall()
            ms, rows = [], []
            for k in keys:
                t = time.perf_counter()
                rows.append(len(conn.execute(q, (k,), prepare=True).fetchall()))
                ms.append((time.perf_counter() - t) * 1000)
            out[label] = _percentiles(ms)
            out[label]["mean_rows"] = statistics.mean(rows)
            print(f"  {label:<14} p50 {out[label]['p50_ms']:.2f} ms  "
                  f"p95 {out[label]['p95_ms']:.2f} ms  p99 {out[label]['p99_ms']:.2f} ms",
                  flush=True)
    return out


def print_report(r: dict) -> None:
    heading("Recommendations")
    print(f"{r['events']:,} clickstream events, {r['users']:,} users, {r['items']:,} items "
          f"(clusters of 20), {r['batch_rows']}-row INSERT batches, {r['clients']} client(s).")
    print_table(["variant", "events/s", "seconds", "pg_cep µs/event"], [
        ("(a) plain INSERT", round(r["plain"]["events_per_second"]),
         round(r["plain"]["seconds"], 1), None),
        ("(r) one recommender", round(r["recommender"]["events_per_second"]),
         round(r["recommender"]["seconds"], 1),
         round(r["recommender"]["ingest_micros_per_event"], 1)),
        ("(f) floor: exact pairs, bare tables", round(r["floor"]["events_per_second"]),
         round(r["floor"]["seconds"], 1), None),
    ])
    print(f"f/a = {r['floor_ratio']:.3f}: the floor of any exact item-item model kept on "
          f"ingest ({r['floor']['pair_writes_per_event']:.1f} pair row writes/event; same pairs "
          f"and dot products as (r): {r['floor']['same_pairs_as_r']}).")
    print(f"r/a = {r['ratio']:.3f} (target >= {TARGET_RATIO}: "
          f"{'met' if r['ratio'] >= TARGET_RATIO else 'NOT met'}); each event wrote "
          f"{r['recommender']['pair_writes_per_event']:.1f} item-pair rows on average "
          f"(one per item its user has in the horizon).")
    s = r["state"]
    print(f"State: {s['users']:,} users, {s['items']:,} items, {s['item_pairs']:,} item pairs "
          f"({s['pairs_mb']:.0f} MB), {s['weight_rows']:,} weight rows ({s['weights_mb']:.0f} "
          f"MB); events table {s['events_table_mb']:.0f} MB; capped events "
          f"{s['capped_events']}.")
    print_table(["query", "calls", "rows (mean)", "p50 ms", "p95 ms", "p99 ms", "max ms"], [
        (k, r[k]["calls"], round(r[k]["mean_rows"], 1), round(r[k]["p50_ms"], 2),
         round(r[k]["p95_ms"], 2), round(r[k]["p99_ms"], 2), round(r[k]["max_ms"], 2))
        for k in ("recommend", "similar_items")])
    p95 = r["recommend"]["p95_ms"]
    print(f"cep.recommend p95 = {p95:.1f} ms (target < {TARGET_P95_MS:.0f} ms: "
          f"{'met' if p95 < TARGET_P95_MS else 'NOT met'}); "
          f"{r['checked_users']} users' recommendations checked against a SQL recomputation.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--seed", type=int, default=42, help="RNG seed (default 42)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    heading("pg_cep recommender benchmark")
    data = prepare(args)
    print(f"Data generated and rendered in {time.perf_counter() - t0:.0f} s.")
    with throwaway_cluster(CLUSTER_SETTINGS, label="Bench cluster") as cluster:
        with cluster.connect() as conn:
            print(f"PostgreSQL {server_version(conn)} on {cpu_count()} CPU(s).")
        subheading("Runs")
        result = run(cluster, args, data)
    print_report(result)
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
