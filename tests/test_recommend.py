"""Recommenders against an independent recomputation from the raw events.

The oracle reads the stream's table (minus cep.late_events, and only events since the
recommender's horizon_start), builds the user-item weight matrix with the recommender's
weights, and computes with numpy what the seed's batch algorithm computes: item-item cosine
similarity over that matrix, score(i) = sum over the user's items j of w(user, j) * cos(i, j)
for items the user does not have, top n, ties by item id. The maintained dot products are also
compared exactly (Decimal) with the matrix, so any drift after many expiry cycles shows.
Workloads are seeded random streams split into random statements (COPY, multi-row and
single-row INSERTs) and transactions, with late events, expiry, the fan-out cap and concurrent
writers; plus bad input, key types, backfill and dropping."""

from __future__ import annotations

import collections
import datetime as dt
import json
import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import psycopg
import pytest
from psycopg import sql

UTC = dt.timezone.utc
BASE = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT_WEIGHTS = {"view": 1, "like": 3, "share": 5, "purchase": 10}
ACTIONS = ["view", "view", "view", "like", "share", "purchase", "bogus"]
TOL = 1e-9


# -- plumbing ----------------------------------------------------------------------------------

def setup_stream(conn, lateness="0 seconds", user_type="integer", item_type="text",
                 table="public.clicks", stream="clicks"):
    conn.execute(f"""
        CREATE TABLE {table} (
            id bigint PRIMARY KEY,
            user_id {user_type},
            item_id {item_type},
            action text,
            created_at timestamptz NOT NULL
        )""")
    conn.execute("SELECT cep.create_stream(%s, %s::regclass, 'created_at', "
                 "allowed_lateness => %s::interval)", (stream, table, lateness))


def create_recommender(conn, name="rec", stream="clicks", **kw):
    args = [sql.Literal(name), sql.Literal(stream), sql.Literal("user_id"),
            sql.Literal("item_id"), sql.Literal("action")]
    for k, v in kw.items():
        if k == "weights":
            v = json.dumps(v)
        args.append(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v)))
    return conn.execute(sql.SQL("SELECT cep.create_recommender({})").format(
        sql.SQL(", ").join(args))).fetchone()[0]


def at(sec: float) -> dt.datetime:
    return BASE + dt.timedelta(seconds=sec)


def insert(conn, rows, how="copy", table="public.clicks"):
    """Rows (id, user, item, action, t) in one statement: COPY or a multi-row INSERT."""
    if how == "copy":
        with conn.cursor().copy(
                f"COPY {table} (id, user_id, item_id, action, created_at) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    else:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, user_id, item_id, action, created_at) VALUES {}").format(
                sql.SQL(table), sql.SQL(", ").join(
                    sql.SQL("({}, {}, {}, {}, {})").format(*map(sql.Literal, r)) for r in rows)))


def random_events(rng: random.Random, n: int, users: int, items: int, start_id: int = 1,
                  t0: float = 0.0, step: float = 1.0, jitter: float = 0.0,
                  actions=ACTIONS):
    """n events with times drifting forward by ~step seconds, some of them out of order."""
    out, t = [], t0
    for k in range(n):
        t += rng.random() * 2 * step
        ts = t - rng.random() * jitter if jitter and rng.random() < 0.2 else t
        # A few hot users and items, so that pairs are shared and weights repeat.
        u = int(rng.triangular(0, users, 0)) if rng.random() < 0.5 else rng.randrange(users)
        i = int(rng.triangular(0, items, 0)) if rng.random() < 0.5 else rng.randrange(items)
        out.append((start_id + k, u, f"item{i}", rng.choice(actions), at(ts)))
    return out


def split(rng: random.Random, rows, max_size=40):
    """Random statement splits: mostly batches, some single rows."""
    k, parts = 0, []
    while k < len(rows):
        size = 1 if rng.random() < 0.25 else rng.randint(2, max_size)
        parts.append(rows[k:k + size])
        k += size
    return parts


def feed(conn, rng: random.Random, rows, max_size=40):
    for part in split(rng, rows, max_size):
        insert(conn, part, how=rng.choice(["copy", "insert"]))


def maintain(conn):
    return dict(conn.execute("SELECT task, items FROM cep.run_maintenance()").fetchall())


# -- the oracle -------------------------------------------------------------------------------

@dataclass
class Oracle:
    users: list[str]
    items: list[str]
    w: dict = field(default_factory=dict)       # (user, item) -> Decimal weight > 0
    x: np.ndarray | None = None                 # users x items, float64
    cos: np.ndarray | None = None

    @classmethod
    def from_weights(cls, w: dict) -> "Oracle":
        users = sorted({u for u, _ in w})
        items = sorted({i for _, i in w})
        o = cls(users, items, dict(w))
        ui = {u: k for k, u in enumerate(users)}
        ii = {i: k for k, i in enumerate(items)}
        o.x = np.zeros((len(users), len(items)))
        for (u, i), v in w.items():
            o.x[ui[u], ii[i]] = float(v)
        if items:
            norms = np.sqrt((o.x ** 2).sum(axis=0))
            o.cos = (o.x.T @ o.x) / np.outer(norms, norms)
        o.ui, o.ii = ui, ii
        return o

    def dots(self) -> dict:
        """Exact dot products (a <= b) of the item columns, from the Decimal weights."""
        by_user = collections.defaultdict(dict)
        for (u, i), v in self.w.items():
            by_user[u][i] = v
        d = collections.Counter()
        for its in by_user.values():
            for a, va in its.items():
                for b, vb in its.items():
                    if a <= b:
                        d[(a, b)] += va * vb
        return dict(d)

    def scores(self, user: str) -> dict:
        if user not in self.ui:
            return {}
        row = self.x[self.ui[user]]
        s = row @ self.cos
        return {i: float(s[k]) for i, k in self.ii.items() if row[k] == 0 and s[k] > 0}

    def contributions(self, user: str, item: str) -> dict:
        row = self.x[self.ui[user]]
        k = self.ii[item]
        return {j: row[self.ii[j]] * self.cos[k, self.ii[j]]
                for j in self.items if row[self.ii[j]] > 0}

    def similar(self, item: str) -> dict:
        if item not in self.ii:
            return {}
        k = self.ii[item]
        return {j: float(self.cos[k, m]) for j, m in self.ii.items()
                if m != k and self.cos[k, m] > 0}


def rec_info(conn, name="rec"):
    r = conn.execute(
        "SELECT r.weights, r.horizon_start::text, s.source::text, s.stream_id, r.user_column, "
        "r.item_column, r.action_column FROM cep.recommenders AS r "
        "JOIN cep.streams AS s USING (stream_id) WHERE r.name = %s", (name,)).fetchone()
    return dict(zip(["weights", "horizon_start", "source", "stream_id", "user", "item",
                     "action"], r))


def counted_events(conn, name="rec"):
    """The raw events a recommender counts: not late, since horizon_start, user and item set."""
    info = rec_info(conn, name)
    cur = conn.execute(sql.SQL(
        "SELECT x.id, x.{u}::text, x.{i}::text, x.{a}::text, x.created_at FROM {src} AS x "
        "WHERE x.created_at >= %s::timestamptz AND x.{u} IS NOT NULL AND x.{i} IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM cep.late_events AS l WHERE l.stream_id = %s "
        "AND l.event_id = x.id) ORDER BY x.id").format(
            u=sql.Identifier(info["user"]), i=sql.Identifier(info["item"]),
            a=sql.Identifier(info["action"]), src=sql.SQL(info["source"])),
        (info["horizon_start"], info["stream_id"]))
    return info, cur.fetchall()


def oracle_from_db(conn, name="rec") -> Oracle:
    info, rows = counted_events(conn, name)
    weights = {k: Decimal(str(v)) for k, v in info["weights"].items()}
    w = collections.Counter()
    for _, u, i, a, _t in rows:
        w[(u, i)] += weights.get(a, Decimal(0))
    return Oracle.from_weights({k: v for k, v in w.items() if v > 0})


def check_state(conn, o: Oracle, name="rec"):
    """The maintained state equals the oracle exactly: weights, users and dot products."""
    rid = conn.execute("SELECT recommender_id FROM cep.recommenders WHERE name = %s",
                       (name,)).fetchone()[0]
    names = dict(conn.execute(
        "SELECT item_no, item_id FROM cep.recommender_items WHERE recommender_id = %s", (rid,)))
    got_w = collections.Counter()
    for u, i, v in conn.execute(
            "SELECT user_id, item_no, sum(weight) FROM cep.recommender_weights "
            "WHERE recommender_id = %s GROUP BY 1, 2", (rid,)):
        got_w[(u, names[i])] += v
    assert dict(got_w) == o.w
    got_users = {r[0] for r in conn.execute(
        "SELECT user_id FROM cep.recommender_users WHERE recommender_id = %s", (rid,))}
    assert got_users == set(o.users)
    got_d = {}
    for a, b, v, f in conn.execute(
            "SELECT item_a, item_b, dot, dot_float FROM cep.recommender_pairs "
            "WHERE recommender_id = %s", (rid,)):
        # pairs are keyed by item number (a <= b); the oracle orders by item id
        key = tuple(sorted((names[a], names[b])))
        assert key not in got_d
        assert f == float(v)                # the read path's image of the exact dot
        got_d[key] = v
    assert got_d == o.dots()


def check_ranked(got, expected: dict, n: int, label: str):
    """GOT (item, value, rank, ...) is the top N of EXPECTED {item: value} to 1e-9: values per
    rank and per item, ordered by value then item id, nothing better left out."""
    ranked = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
    assert len(got) == min(n, len(ranked)), label
    assert [g[2] for g in got] == list(range(1, len(got) + 1)), label
    assert len({g[0] for g in got}) == len(got), label
    for g, (_, v) in zip(got, ranked):
        assert abs(g[1] - v) <= TOL, (label, g, v)
        assert g[0] in expected and abs(g[1] - expected[g[0]]) <= TOL, (label, g)
    for a, b in zip(got, got[1:]):
        assert a[1] > b[1] or (a[1] == b[1] and a[0] < b[0]), (label, a, b)
    if got:
        floor = got[-1][1]
        chosen = {g[0] for g in got}
        assert not [i for i, v in expected.items() if v > floor + TOL and i not in chosen], label


def check_recommendations(conn, o: Oracle, name="rec", n=5, extra_users=("nobody",)):
    for u in list(o.users) + list(extra_users):
        got = conn.execute("SELECT item_id, score, rank, because_of FROM cep.recommend(%s, %s, %s)",
                           (name, u, n)).fetchall()
        check_ranked(got, o.scores(u), n, f"recommend {u}")
        # Both ways of reading the candidates' norms give the same rows.
        for plan in ("probe", "scan"):
            conn.execute("SELECT set_config('cep.recommend_norms', %s, false)", (plan,))
            assert conn.execute(
                "SELECT item_id, score, rank, because_of FROM cep.recommend(%s, %s, %s)",
                (name, u, n)).fetchall() == got, (u, plan)
        conn.execute("RESET cep.recommend_norms")
        for item, _score, _rank, because in got:
            c = o.contributions(u, item)
            assert because in c and c[because] >= max(c.values()) - TOL, (u, item, because, c)
            best = [j for j, v in c.items() if v >= max(c.values()) - TOL]
            if len(best) == 1:
                assert because == best[0]
    for i in list(o.items) + ["no-such-item"]:
        got = conn.execute("SELECT item_id, similarity, rank FROM cep.similar_items(%s, %s, %s)",
                           (name, i, n)).fetchall()
        check_ranked(got, o.similar(i), n, f"similar {i}")
        for plan in ("probe", "scan"):
            conn.execute("SELECT set_config('cep.recommend_norms', %s, false)", (plan,))
            assert conn.execute(
                "SELECT item_id, similarity, rank FROM cep.similar_items(%s, %s, %s)",
                (name, i, n)).fetchall() == got, (i, plan)
        conn.execute("RESET cep.recommend_norms")


def check_all(conn, name="rec", n=5) -> Oracle:
    o = oracle_from_db(conn, name)
    check_state(conn, o, name)
    check_recommendations(conn, o, name, n)
    return o


# -- the oracle itself ------------------------------------------------------------------------

def test_oracle_on_a_hand_example():
    w = {("1", "a"): Decimal(1), ("1", "b"): Decimal(3), ("2", "a"): Decimal(10),
         ("2", "c"): Decimal(1), ("3", "b"): Decimal(5), ("3", "c"): Decimal(1)}
    o = Oracle.from_weights(w)
    assert o.dots() == {("a", "a"): 101, ("a", "b"): 3, ("a", "c"): 10, ("b", "b"): 34,
                        ("b", "c"): 5, ("c", "c"): 2}
    cos_ac = 10 / (101 ** 0.5 * 2 ** 0.5)
    cos_bc = 5 / (34 ** 0.5 * 2 ** 0.5)
    assert o.scores("1") == pytest.approx({"c": 1 * cos_ac + 3 * cos_bc})
    assert o.similar("c") == pytest.approx({"a": cos_ac, "b": cos_bc})


# -- exactness --------------------------------------------------------------------------------

def test_hand_example_and_because_of(conn):
    setup_stream(conn)
    create_recommender(conn)
    insert(conn, [(1, 1, "a", "view", at(0)), (2, 1, "b", "like", at(1)),
                  (3, 2, "a", "purchase", at(2)), (4, 2, "c", "view", at(3)),
                  (5, 3, "b", "share", at(4)), (6, 3, "c", "view", at(5))])
    got = conn.execute("SELECT * FROM cep.recommend('rec', '1')").fetchall()
    cos_ac = 10 / (101 ** 0.5 * 2 ** 0.5)
    cos_bc = 5 / (34 ** 0.5 * 2 ** 0.5)
    assert len(got) == 1 and got[0][0] == "c" and got[0][2] == 1
    assert abs(got[0][1] - (cos_ac + 3 * cos_bc)) < TOL
    # w(1, b) * cos(b, c) = 3 * 0.606 beats w(1, a) * cos(a, c) = 0.704
    assert got[0][3] == "b"
    assert conn.execute("SELECT * FROM cep.user_recommendations WHERE recommender = 'rec' "
                        "AND user_id = '1'").fetchall() == [("rec", "1") + got[0]]
    assert conn.execute("SELECT count(*) FROM cep.user_recommendations").fetchone()[0] == 3
    check_all(conn)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_streams_match_numpy(conn, seed):
    rng = random.Random(seed)
    setup_stream(conn, lateness="5 seconds")
    create_recommender(conn)
    rows = random_events(rng, 500, users=30, items=25, jitter=30)
    half = len(rows) // 2
    feed(conn, rng, rows[:half])
    check_all(conn)
    # Several statements per transaction, one transaction rolled back.
    with conn.transaction():
        feed(conn, rng, rows[half:half + 100])
    try:
        with conn.transaction():
            feed(conn, rng, random_events(rng, 50, 30, 25, start_id=10_000, t0=400))
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    feed(conn, rng, rows[half + 100:])
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] > 0
    o = check_all(conn)
    assert len(o.users) > 20 and len(o.items) > 20
    # n larger than any candidate list; unknown user; the view.
    check_recommendations(conn, o, n=100)
    assert conn.execute("SELECT count(*) FROM cep.recommend('rec', 'nobody')").fetchone()[0] == 0


def test_same_result_whatever_the_batch_split(server, dbname, connect):
    rows = random_events(random.Random(7), 400, users=20, items=15)
    results = []
    for k, sizes in enumerate([[400], [1] * 400, None]):
        c = connect()
        table, stream = f"public.clicks{k}", f"clicks{k}"
        setup_stream(c, table=table, stream=stream)
        create_recommender(c, name=f"rec{k}", stream=stream)
        if sizes is None:
            for part in split(random.Random(k), rows, 100):
                insert(c, part, table=table)
        else:
            pos = 0
            for s in sizes:
                insert(c, rows[pos:pos + s], how="insert" if s == 1 else "copy", table=table)
                pos += s
        results.append((
            c.execute("SELECT least(a.item_id, b.item_id), greatest(a.item_id, b.item_id), p.dot "
                      "FROM cep.recommender_pairs AS p "
                      "JOIN cep.recommenders AS r USING (recommender_id) "
                      "JOIN cep.recommender_items AS a ON a.item_no = p.item_a "
                      "JOIN cep.recommender_items AS b ON b.item_no = p.item_b "
                      "WHERE r.name = %s ORDER BY 1, 2", (f"rec{k}",)).fetchall(),
            [c.execute("SELECT * FROM cep.recommend(%s, %s)", (f"rec{k}", str(u))).fetchall()
             for u in range(20)]))
        check_all(c, f"rec{k}")
    # The exact state is identical; scores are float8 sums whose order follows the item
    # numbers, which depend on the batches: equal to the last bits only.
    for pairs, recs in results[1:]:
        assert pairs == results[0][0]
        for got, want in zip(recs, results[0][1]):
            assert [(g[0], g[2], g[3]) for g in got] == [(w[0], w[2], w[3]) for w in want]
            assert all(abs(g[1] - w[1]) <= 1e-12 * abs(w[1]) for g, w in zip(got, want))


def test_expiry_is_exact_over_many_cycles(conn):
    rng = random.Random(11)
    setup_stream(conn, lateness="3 seconds")
    create_recommender(conn, horizon="10 minutes", bucket="1 minute")
    assert conn.execute("SELECT bucket, horizon FROM cep.recommenders").fetchone() == (
        dt.timedelta(minutes=1), dt.timedelta(minutes=10))
    rows = random_events(rng, 2400, users=25, items=20, step=1.5, jitter=10)
    expired_total = 0
    for k in range(0, len(rows), 200):
        feed(conn, rng, rows[k:k + 200], max_size=30)
        check_all(conn)                     # before expiry: everything since horizon_start
        expired_total += maintain(conn)["expire_recommenders"]
        start, wm = conn.execute(
            "SELECT r.horizon_start, s.watermark FROM cep.recommenders AS r, cep.stream_stats AS s"
        ).fetchone()
        assert wm - dt.timedelta(minutes=11) < start <= wm - dt.timedelta(minutes=10)
        assert start.second == 0 and start.microsecond == 0
        check_all(conn)                     # after expiry
    assert expired_total > 0
    # Idempotent: a second run finds nothing to expire.
    assert maintain(conn)["expire_recommenders"] == 0
    # End of stream: everything expires, no pair, weight or user is left.
    conn.execute("SELECT cep.advance_watermark('clicks')")
    assert maintain(conn)["expire_recommenders"] > 0
    assert conn.execute(
        "SELECT users, items, item_pairs, weight_rows FROM cep.recommender_stats"
    ).fetchone() == (0, 0, 0, 0)
    check_all(conn)


def test_expiry_keeps_what_an_event_in_the_same_bucket_added(conn):
    setup_stream(conn)
    create_recommender(conn, horizon="1 hour", bucket="10 minutes")
    insert(conn, [(1, 1, "a", "view", at(0)), (2, 1, "b", "view", at(0)),
                  (3, 1, "a", "like", at(650)), (4, 2, "a", "view", at(650))])
    insert(conn, [(5, 3, "z", "view", at(3600 + 700))])   # watermark 1h past event 3's bucket
    maintain(conn)
    # The bucket [0, 10 min) expired (events 1, 2); [10 min, 20 min) has not.
    assert conn.execute("SELECT horizon_start FROM cep.recommenders").fetchone()[0] == at(600)
    o = check_all(conn)
    assert o.w == {("1", "a"): 3, ("2", "a"): 1, ("3", "z"): 1}


def test_backfill_equals_live_ingest(conn):
    rng = random.Random(5)
    setup_stream(conn, lateness="5 seconds")
    rows = random_events(rng, 600, users=20, items=15, jitter=20)
    feed(conn, rng, rows[:400])
    create_recommender(conn, name="late_comer")
    create_recommender(conn, name="horizon", horizon="2 minutes", bucket="10 seconds")
    start = conn.execute("SELECT horizon_start FROM cep.recommenders WHERE name = 'horizon'"
                         ).fetchone()[0]
    assert start > at(0)                    # only the current horizon was backfilled
    feed(conn, rng, rows[400:])
    check_all(conn, "late_comer")
    check_all(conn, "horizon")


def test_fanout_cap_counts_and_model(conn):
    setup_stream(conn)
    create_recommender(conn, max_fanout=3)
    batches = [
        [(1, 1, "a", "view", at(1)), (2, 1, "b", "view", at(1))],
        # user 1 has 2 items: of c, d, e (item order) only c fits; d and e are not counted
        [(3, 1, "e", "view", at(2)), (4, 1, "d", "like", at(2)), (5, 1, "c", "view", at(2)),
         (6, 1, "d", "view", at(2)), (7, 1, "a", "purchase", at(2)), (8, 2, "d", "view", at(2))],
        [(9, 1, "e", "share", at(3)), (10, 2, "a", "view", at(3))],
    ]
    for b in batches:
        insert(conn, b)
    assert conn.execute("SELECT capped_events FROM cep.recommender_stats").fetchone()[0] == 4
    metrics = conn.execute("SELECT cep.metrics()").fetchone()[0].splitlines()
    assert 'pg_cep_recommender_capped_events_total{recommender="rec"} 4' in metrics
    assert 'pg_cep_recommender_users{recommender="rec"} 2' in metrics
    w = {("1", "a"): Decimal(11), ("1", "b"): Decimal(1), ("1", "c"): Decimal(1),
         ("2", "d"): Decimal(1), ("2", "a"): Decimal(1)}
    o = Oracle.from_weights(w)
    check_state(conn, o)
    check_recommendations(conn, o)
    # After maintenance the log is compacted, the count stays.
    maintain(conn)
    assert conn.execute("SELECT capped_events FROM cep.recommender_stats").fetchone()[0] == 4


def test_fanout_cap_random_against_a_model(conn):
    """With a small cap the state equals a model that admits, per statement and user, new
    items in item order while the user has fewer than max_fanout items."""
    rng = random.Random(21)
    cap = 4
    setup_stream(conn)
    create_recommender(conn, max_fanout=cap, weights={"view": 1, "buy": 2})
    state = collections.defaultdict(dict)
    refused = 0
    eid = 0
    for _ in range(60):
        part = []
        for _ in range(rng.choice([1, 5, 20])):
            eid += 1
            part.append((eid, rng.randrange(6), f"i{rng.randrange(12):02d}",
                         rng.choice(["view", "buy", "other"]), at(eid)))
        insert(conn, part, how=rng.choice(["copy", "insert"]))
        per_user = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
        for _, u, i, a, _ in part:
            wgt = {"view": 1, "buy": 2}.get(a, 0)
            if wgt:
                per_user[str(u)][i][0] += wgt
                per_user[str(u)][i][1] += 1
        for u, its in per_user.items():
            have = state[u]
            room = cap - len(have)
            for i in sorted(its):
                wgt, n = its[i]
                if i in have:
                    have[i] += wgt
                elif room > 0:
                    have[i] = wgt
                    room -= 1
                else:
                    refused += n
    assert refused > 0
    assert conn.execute("SELECT capped_events FROM cep.recommender_stats").fetchone()[0] == refused
    w = {(u, i): Decimal(v) for u, its in state.items() for i, v in its.items()}
    o = Oracle.from_weights(w)
    check_state(conn, o)
    check_recommendations(conn, o)


def test_concurrent_writers_and_maintenance(server, dbname, connect):
    conn = connect()
    setup_stream(conn, lateness="10 minutes")
    create_recommender(conn, horizon="30 minutes", bucket="1 minute")
    errors = []
    stop = threading.Event()

    def writer(k):
        try:
            c = connect()
            rng = random.Random(100 + k)
            rows = random_events(rng, 1500, users=12, items=10, start_id=1 + k * 100_000,
                                 step=1.0)
            # Single-statement writers never deadlock (users, then pairs, in key order).
            for part in split(rng, rows, 25):
                insert(c, part, how=rng.choice(["copy", "insert"]))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def maintainer():
        c = connect()
        while not stop.is_set():
            try:
                maintain(c)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    m = threading.Thread(target=maintainer)
    m.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    m.join()
    assert not errors, errors
    maintain(conn)
    o = check_all(conn)
    assert len(o.items) == 10
    assert conn.execute("SELECT horizon_start > '-infinity' FROM cep.recommenders").fetchone()[0]


# -- keys, actions, input errors ----------------------------------------------------------------

def test_key_types_are_handled_by_their_text_form(conn):
    setup_stream(conn, user_type="uuid", item_type="numeric")
    create_recommender(conn)
    u1, u2 = "6f1c4bd5-0000-4000-8000-000000000001", "6f1c4bd5-0000-4000-8000-000000000002"
    insert(conn, [(1, u1, Decimal("1.50"), "view", at(0)), (2, u1, Decimal("2"), "like", at(1)),
                  (3, u2, Decimal("1.50"), "view", at(2))])
    got = conn.execute("SELECT item_id, rank, because_of FROM cep.recommend('rec', %s)",
                       (u2,)).fetchall()
    assert got == [("2", 1, "1.50")]
    assert conn.execute("SELECT item_id FROM cep.similar_items('rec', '1.50')").fetchall() == [
        ("2",)]
    check_all(conn)


def test_unknown_actions_ignored_or_refused(conn):
    setup_stream(conn)
    create_recommender(conn, name="lenient", weights={"view": 1, "click": 0.5, "hide": 0})
    insert(conn, [(1, 1, "a", "view", at(0)), (2, 1, "b", "bogus", at(0)),
                  (3, 1, "c", None, at(0)), (4, 1, "d", "hide", at(0)),
                  (5, 2, "a", "click", at(0)), (6, 2, "b", "click", at(0)),
                  (7, None, "a", "view", at(0)), (8, 3, None, "view", at(0))])
    o = check_all(conn, "lenient")
    assert o.w == {("1", "a"): 1, ("2", "a"): Decimal("0.5"), ("2", "b"): Decimal("0.5")}
    setup_stream(conn, table="public.clicks2", stream="clicks2")
    create_recommender(conn, name="strict", stream="clicks2", unknown_action="error")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        insert(conn, [(10, 1, "a", "view", at(1)), (12, 1, "b", "oops", at(1)),
                      (11, 1, "b", None, at(1))], table="public.clicks2")
    assert e.value.diag.message_primary == "pg_cep: recommender strict: unknown action NULL"
    assert e.value.diag.message_detail == "event id 11, column action"
    # the whole statement was refused
    assert conn.execute("SELECT count(*) FROM public.clicks2").fetchone()[0] == 0
    insert(conn, [(10, 1, "a", "view", at(1)), (11, 1, "b", "like", at(1))],
           table="public.clicks2")
    check_all(conn, "strict")
    # A strict recommender over a table with unknown actions is refused and leaves nothing.
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        create_recommender(conn, name="strict2", unknown_action="error")
    assert e.value.diag.message_primary == "pg_cep: recommender strict2: unknown action 'bogus'"
    assert conn.execute("SELECT array_agg(name ORDER BY name) FROM cep.recommenders"
                        ).fetchone()[0] == ["lenient", "strict"]
    check_all(conn, "lenient")


def test_bad_arguments_name_the_argument(conn):
    setup_stream(conn)
    create_recommender(conn)
    cases = [
        ("SELECT cep.recommend('nope', '1')", "42704", 'recommender nope does not exist'),
        ("SELECT cep.recommend('rec', '1', 0)", "22023", "n must be a positive integer, got 0"),
        ("SELECT cep.recommend('rec', '1', NULL)", "22023",
         "n must be a positive integer, got NULL"),
        ("SELECT cep.similar_items('rec', 'a', -1)", "22023",
         "n must be a positive integer, got -1"),
        ("SELECT cep.similar_items('nope', 'a')", "42704", 'recommender nope does not exist'),
        ("SELECT cep.drop_recommender('nope')", "42704", 'recommender nope does not exist'),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', "
         "'{\"view\": \"1\"}')", "22023",
         "weights: the weight of action 'view' must be a non-negative number, got \"1\""),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', "
         "'{\"view\": -1}')", "22023",
         "weights: the weight of action 'view' must be a non-negative number, got -1"),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', "
         "'[1]')", "22023",
         "weights must be a JSON object of action names and weights, got [1]"),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', '{}')",
         "22023", "weights must name at least one action"),
        ("SELECT cep.create_recommender('x', 'clicks', 'nope', 'item_id', 'action')", "42703",
         'user_column "nope" does not exist in public.clicks'),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', NULL)", "22023",
         "action_column must not be NULL"),
        ("SELECT cep.create_recommender('rec', 'clicks', 'user_id', 'item_id', 'action')",
         "42710", 'recommender "rec" already exists'),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', "
         "horizon => '1 month')", "22023", "horizon must not contain months or years"),
        ("SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action', "
         "max_fanout => 0)", "22023", "max_fanout must be between 1 and 1000000, got 0"),
    ]
    for q, state, msg in cases:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(q)
        assert (e.value.sqlstate, e.value.diag.message_primary) == (state, msg), q
    assert conn.execute("SELECT count(*) FROM cep.recommenders").fetchone()[0] == 1


# -- lifecycle ----------------------------------------------------------------------------------

def test_drop_recommender_and_drop_stream(conn):
    setup_stream(conn)
    create_recommender(conn, name="one")
    create_recommender(conn, name="two")
    insert(conn, random_events(random.Random(3), 200, 10, 8))
    conn.execute("SELECT cep.drop_recommender('one')")
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM cep.recommender_weights), "
        "(SELECT count(DISTINCT recommender_id) FROM cep.recommender_pairs)").fetchone()
    assert counts[0] > 0 and counts[1] == 1
    fn = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = '_ingest_1'").fetchone()[0]
    assert "recommender 2:" in fn and "recommender 1:" not in fn
    insert(conn, random_events(random.Random(4), 50, 10, 8, start_id=1000, t0=500))
    check_all(conn, "two")
    conn.execute("SELECT cep.drop_stream('clicks')")
    for t in ("recommenders", "recommender_users", "recommender_weights", "recommender_pairs",
              "recommender_log", "recommender_items"):
        assert conn.execute(f"SELECT count(*) FROM cep.{t}").fetchone()[0] == 0, t
    assert conn.execute("SELECT count(*) FROM public.clicks").fetchone()[0] == 250


def test_stream_horizon_keeps_the_recommenders_events(conn):
    setup_stream(conn)
    assert conn.execute("SELECT cep._stream_horizon(1)").fetchone()[0] == dt.timedelta(0)
    create_recommender(conn, horizon="2 days")
    assert conn.execute("SELECT cep._stream_horizon(1)").fetchone()[0] == dt.timedelta(
        days=2, hours=1)


def test_repeatable_read_writers_of_one_user_succeed_or_retry(server, dbname, connect):
    conn = connect()
    setup_stream(conn)
    create_recommender(conn)
    a, b = connect(autocommit=False), connect(autocommit=False)
    for c in (a, b):
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT 1")
    insert(a, [(1, 1, "x", "view", at(0))])
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        insert(b, [(2, 1, "y", "view", at(1))])
    b.rollback()
    insert(b, [(2, 1, "y", "view", at(1))])
    b.commit()
    check_all(conn)


def test_concurrent_first_sightings_of_an_item_number_it_once(server, dbname, connect):
    """Writers of different users who both see an item for the first time: READ COMMITTED
    waits and shares the number; REPEATABLE READ gets a retryable 40001."""
    conn = connect()
    setup_stream(conn)
    create_recommender(conn)
    a, b = connect(autocommit=False), connect(autocommit=False)
    insert(a, [(1, 1, "new", "view", at(0)), (2, 1, "old", "view", at(0))])
    b_pid = b.execute("SELECT pg_backend_pid()").fetchone()[0]
    t = threading.Thread(target=lambda: insert(b, [(3, 2, "new", "like", at(1))]))
    t.start()
    for _ in range(500):                # b waits for a's uncommitted number of "new"
        if conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (b_pid,)).fetchone()[0] == "Lock":
            break
        time.sleep(0.01)
    else:
        pytest.fail("the second writer did not wait for the first one's new item")
    a.commit()
    t.join()
    b.commit()
    assert conn.execute("SELECT count(*) FROM cep.recommender_items").fetchone()[0] == 2
    for c in (a, b):
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT 1")
    insert(a, [(5, 3, "newer", "view", at(2))])
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        insert(b, [(6, 4, "newer", "view", at(3))])
    b.rollback()
    insert(b, [(6, 4, "newer", "view", at(3))])
    b.commit()
    assert conn.execute("SELECT count(*) FROM cep.recommender_items").fetchone()[0] == 3
    check_all(conn)


@pytest.mark.slow
def test_dump_and_restore_keeps_recommenders_working(server, dbname, conn):
    import subprocess
    setup_stream(conn)
    create_recommender(conn, horizon="10 minutes", bucket="1 minute")
    insert(conn, random_events(random.Random(9), 300, 12, 10))
    maintain(conn)
    before = check_all(conn)
    restored = server.new_database(template="template0", prefix="restored")
    try:
        dump = subprocess.run(["pg_dump", "-Fc", dbname], env=server.env(dbname),
                              capture_output=True, check=True).stdout
        res = subprocess.run(["pg_restore", "--exit-on-error", "-d", restored], input=dump,
                             env=server.env(restored), capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        with server.connect(restored) as c:
            assert check_all(c).w == before.w
            insert(c, random_events(random.Random(10), 100, 12, 10, start_id=1000, t0=400))
            check_all(c)
            c.execute("SELECT cep.create_recommender('second', 'clicks', 'user_id', 'item_id', "
                      "'action')")
            assert c.execute("SELECT max(recommender_id) FROM cep.recommenders").fetchone()[0] == 2
            check_all(c, "second")
    finally:
        server.drop_database(restored)
