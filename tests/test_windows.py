"""Windows (continuous aggregates) against independent oracles.

Every comparison reads a window's view and checks it against
  (a) a plain SQL recomputation over the source table minus cep.late_events: GROUP BY
      date_bin(...) for tumbling/hopping windows (the primary oracle for those), a
      gaps-and-islands query for sessions;
  (b) tests/window_reference.py, plain Python over the non-late events (the primary oracle for
      sessions, a cross-check for the others); in the property test the non-late set itself
      comes from a Python model of the watermark rules, not from the database.
Workloads are random streams split into random statements and transactions (with rollbacks),
concurrent writers on the same keys, and hand-picked cases for is_final, late events, session
merging, incremental maintenance, bad input, drop_window and retention."""

from __future__ import annotations

import collections
import datetime as dt
import math
import random
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from window_reference import (
    NEG_INF,
    POS_INF,
    WindowSpec,
    expected_rows,
    hopping_windows,
    parse_aggregate,
    sessions,
    tumbling_window,
)

UTC = dt.timezone.utc
BASE = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)   # a multiple of one minute since the epoch
MICRO = dt.timedelta(microseconds=1)
COLS = ("id", "user_id", "region", "ival", "nval", "fval", "created_at")
REGIONS = ["north", "south", "east", "west"]


# -- stream and window plumbing ----------------------------------------------------------------

def setup_stream(conn, lateness="0 seconds", table="public.ev", stream="ev", mode="sync"):
    conn.execute(f"""
        CREATE TABLE {table} (
            id bigint PRIMARY KEY,
            user_id integer NOT NULL,
            region text,
            ival integer,
            nval numeric,
            fval float8,
            created_at timestamptz NOT NULL
        )""")
    conn.execute(
        "SELECT cep.create_stream(%s, %s::regclass, 'created_at', 'user_id', "
        "allowed_lateness => %s::interval, mode => %s)", (stream, table, lateness, mode))


def at(sec: float = 0, us: int = 0) -> dt.datetime:
    return BASE + dt.timedelta(seconds=sec, microseconds=us)


def ev(i, t, user=1, region="north", ival=1, nval=Decimal("1.5"), fval=0.25):
    """One event row in COLS order; t is a datetime or seconds after BASE."""
    if not isinstance(t, dt.datetime):
        t = at(t)
    return (i, user, region, ival, nval, fval, t)


def insert(conn_or_cur, rows, table="public.ev"):
    cur = conn_or_cur.cursor() if isinstance(conn_or_cur, psycopg.Connection) else conn_or_cur
    with cur.copy(f"COPY {table} ({', '.join(COLS)}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)


def iv(td: dt.timedelta) -> str:
    """An exact interval literal for a timedelta (whole days as a days field)."""
    if td.days > 0 and not td.seconds and not td.microseconds:
        return f"{td.days} days"
    return f"{td // MICRO} microseconds"


def advance(conn, stream="ev"):
    """cep.advance_watermark(stream) to 'infinity' (returned as text: psycopg cannot load it)."""
    return conn.execute("SELECT cep.advance_watermark(%s)::text", (stream,)).fetchone()[0]


def sec(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=s)


@dataclass
class Win:
    name: str                   # as given to cep.create_window
    stream: str
    spec: WindowSpec
    view: str                   # qualified name of the view
    retention: str | None = None


def create_window(conn, name, kind, size, slide=None, group_by=(), aggregates=("count(*)",),
                  stream="ev", retention=None, view=None) -> Win:
    args = [sql.Literal(name), sql.Literal(stream), sql.Literal(kind),
            sql.SQL("{}::interval").format(sql.Literal(iv(size)))]
    if slide is not None:
        args.append(sql.SQL("slide => {}::interval").format(sql.Literal(iv(slide))))
    args.append(sql.SQL("group_by => {}::text[]").format(sql.Literal(list(group_by))))
    args.append(sql.SQL("aggregates => {}::text[]").format(sql.Literal(list(aggregates))))
    if retention is not None:
        args.append(sql.SQL("retention => {}::interval").format(sql.Literal(retention)))
    conn.execute(sql.SQL("SELECT cep.create_window({})").format(sql.SQL(", ").join(args)))
    spec = WindowSpec(kind, size, slide, list(group_by), list(aggregates),
                      key_column="user_id")
    return Win(name, stream, spec, view or (name if "." in name else f"public.{name}"),
               retention)


def qident(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


def read_watermark(conn, stream="ev"):
    kind, wm = conn.execute(
        "SELECT CASE WHEN watermark = '-infinity' THEN -1 WHEN watermark = 'infinity' THEN 1 "
        "ELSE 0 END, CASE WHEN isfinite(watermark) THEN watermark END "
        "FROM cep.stream_stats WHERE stream = %s", (stream,)).fetchone()
    return NEG_INF if kind == -1 else POS_INF if kind == 1 else wm


def same_wm(a, b) -> bool:
    if a in (NEG_INF, POS_INF) or b in (NEG_INF, POS_INF):
        return a is b
    return a == b


def read_view(conn, view: str, types: dict | None = None):
    """(column names, rows as dicts); fills TYPES with the columns' type OIDs if given."""
    cur = conn.execute(sql.SQL("SELECT * FROM {}").format(qident(view)))
    names = [d.name for d in cur.description]
    if types is not None:
        types.update((d.name, d.type_code) for d in cur.description)
    return names, [dict(zip(names, r)) for r in cur.fetchall()]


def stream_source(conn, stream):
    return conn.execute("SELECT stream_id, source::text FROM cep.streams WHERE name = %s",
                        (stream,)).fetchone()


def load_nonlate_events(conn, stream="ev"):
    sid, source = stream_source(conn, stream)
    cur = conn.execute(sql.SQL(
        "SELECT {cols} FROM {src} AS x WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS l "
        "WHERE l.stream_id = {sid} AND l.event_id = x.id)").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, COLS)), src=sql.SQL(source),
            sid=sql.Literal(sid)))
    return [dict(zip(COLS, r)) for r in cur.fetchall()]


def sql_oracle(conn, win: Win, include_key: bool, types: dict | None = None):
    """The window recomputed by plain SQL over the source table minus cep.late_events."""
    spec = win.spec
    sid, source = stream_source(conn, win.stream)
    t, idc = sql.Identifier(spec.time_column), sql.Identifier(spec.id_column)
    gcols = list(spec.group_by)
    if include_key:
        gcols = [spec.key_column] + gcols
    g = [sql.Identifier(c) for c in gcols]
    g_sel = sql.SQL("").join(sql.SQL(", {}").format(c) for c in g)
    aggs = sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.SQL(a.sql), sql.Identifier(a.name))
                             for a in spec.parsed)
    size = sql.SQL("{}::interval").format(sql.Literal(iv(spec.size)))
    wm = sql.SQL("(SELECT s.watermark FROM cep.stream_stats AS s WHERE s.stream = {})").format(
        sql.Literal(win.stream))
    nonlate = sql.SQL(
        "SELECT x.* FROM {src} AS x WHERE NOT EXISTS (SELECT 1 FROM cep.late_events AS l "
        "WHERE l.stream_id = {sid} AND l.event_id = x.{id})").format(
            src=sql.SQL(source), sid=sql.Literal(sid), id=idc)
    epoch = sql.SQL("'1970-01-01 00:00+00'::timestamptz")
    if spec.kind in ("tumbling", "hopping"):
        if spec.kind == "tumbling":
            binned = sql.SQL(
                "SELECT date_bin({size}, e0.{t}, {epoch}) AS cep_ws, e0.* FROM e0").format(
                    size=size, t=t, epoch=epoch)
        else:
            slide = sql.SQL("{}::interval").format(sql.Literal(iv(spec.slide)))
            binned = sql.SQL(
                "SELECT s.cep_ws, e0.* FROM e0 CROSS JOIN LATERAL generate_series("
                "date_bin({slide}, e0.{t}, {epoch}), e0.{t} - {size}, -{slide}) AS s (cep_ws) "
                "WHERE s.cep_ws + {size} > e0.{t}").format(slide=slide, t=t, epoch=epoch,
                                                          size=size)
        q = sql.SQL(
            "WITH e0 AS ({nonlate}), e AS ({binned}) "
            "SELECT e.cep_ws AS window_start, e.cep_ws + {size} AS window_end{g_sel}, {aggs}, "
            "{wm} >= e.cep_ws + {size} AS is_final FROM e GROUP BY e.cep_ws{g_sel}").format(
                nonlate=nonlate, binned=binned, size=size, g_sel=g_sel, aggs=aggs, wm=wm)
    else:
        part_cols = ([spec.key_column] if spec.key_column else []) + list(spec.group_by)
        part = (sql.SQL("PARTITION BY {} ").format(
            sql.SQL(", ").join(map(sql.Identifier, part_cols))) if part_cols else sql.SQL(""))
        order = sql.SQL("ORDER BY {}, {}").format(t, idc)
        group = sql.SQL(", ").join([sql.Identifier(c) for c in part_cols]
                                   + [sql.SQL("cep_sess")])
        q = sql.SQL(
            "WITH e0 AS ({nonlate}), "
            "o AS (SELECT e0.*, e0.{t} - lag(e0.{t}) OVER ({part}{order}) > {size} AS cep_brk "
            "      FROM e0), "
            "n AS (SELECT o.*, count(*) FILTER (WHERE o.cep_brk IS NOT FALSE) "
            "      OVER ({part}{order} ROWS UNBOUNDED PRECEDING) AS cep_sess FROM o) "
            "SELECT min({t}) AS window_start, max({t}) + {size} AS window_end{g_sel}, {aggs}, "
            "{wm} > max({t}) + {size} AS is_final FROM n GROUP BY {group}").format(
                nonlate=nonlate, t=t, part=part, order=order, size=size, g_sel=g_sel,
                aggs=aggs, wm=wm, group=group)
    cur = conn.execute(q)
    names = [d.name for d in cur.description]
    if types is not None:
        types.update((d.name, d.type_code) for d in cur.description)
    return [dict(zip(names, r)) for r in cur.fetchall()]


# -- comparison --------------------------------------------------------------------------------

def _nl(v):
    return (1, "") if v is None else (0, v)


def _same(a, b, approx: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if approx:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def diff_rows(actual, expected, ident_cols, value_cols, avg_cols, label, limit=8):
    """Human-readable differences between two row lists (empty when they agree)."""
    def key(r):
        return tuple(_nl(r[c]) for c in ident_cols)

    def group(rows):
        d = collections.defaultdict(list)
        for r in rows:
            d[key(r)].append(r)
        for lst in d.values():
            lst.sort(key=lambda r: tuple(_nl(None if c in avg_cols else r[c]) for c in value_cols))
        return d

    a, e = group(actual), group(expected)
    out = []
    for k in sorted(set(a) | set(e)):
        ra, re_ = a.get(k, []), e.get(k, [])
        for x, y in zip(ra, re_):
            bad = [c for c in value_cols if not _same(x[c], y[c], c in avg_cols)]
            if bad:
                out.append(f"{label}: {_show(x, ident_cols)}: " + ", ".join(
                    f"{c}={x[c]!r} expected {y[c]!r}" for c in bad))
        for x in ra[len(re_):]:
            out.append(f"{label}: unexpected row {_show(x, ident_cols + value_cols)}")
        for y in re_[len(ra):]:
            out.append(f"{label}: missing row {_show(y, ident_cols + value_cols)}")
    if len(out) > limit:
        out = out[:limit] + [f"{label}: ... {len(out) - limit} more differences"]
    return out


def _show(r, cols):
    def fmt(v):
        return v.isoformat() if isinstance(v, dt.datetime) else repr(v)
    return "{" + ", ".join(f"{c}={fmt(r[c])}" for c in cols) + "}"


def view_columns(win: Win, names) -> tuple[list[str], bool]:
    """The expected column list of the view and whether the session key column is shown."""
    spec = win.spec
    include_key = (spec.kind == "session" and spec.key_column not in spec.group_by
                   and spec.key_column in names)
    base = ["window_start", "window_end", *spec.group_by, *spec.output_names, "is_final"]
    return base, include_key


def check_window(conn, win: Win, events=None, watermark=None, oracle=True):
    """Compare the view with the SQL recomputation and the Python reference; returns rows."""
    spec = win.spec
    vtypes: dict = {}
    names, actual = read_view(conn, win.view, vtypes)
    expected_cols, include_key = view_columns(win, names)
    shown = [n for n in names if not (include_key and n == spec.key_column)]
    assert shown == expected_cols, f"{win.name}: view columns {names}"
    wm_db = read_watermark(conn, win.stream)
    if watermark is not None:
        assert same_wm(wm_db, watermark), f"watermark {wm_db} but model says {watermark}"
    ident = (["window_start"] + ([spec.key_column] if include_key else [])
             + list(spec.group_by) + ["window_end"])
    values = spec.output_names + ["is_final"]
    avgs = {a.name for a in spec.parsed if a.func == "avg"}
    problems = []
    if oracle:
        otypes: dict = {}
        ora = sql_oracle(conn, win, include_key, otypes)
        # Result types are those of PostgreSQL's own aggregates (README).
        problems += [f"{win.name}: column {c} has type oid {vtypes[c]}, GROUP BY gives "
                     f"{otypes[c]}" for c in otypes if vtypes.get(c) != otypes[c]]
        problems += diff_rows(actual, ora, ident, values, avgs, f"{win.name} vs SQL oracle")
    if events is None:
        events = load_nonlate_events(conn, win.stream)
    ref = expected_rows(events, spec, wm_db, include_key=include_key)
    problems += diff_rows(actual, ref, ident, values, avgs, f"{win.name} vs Python reference")
    if oracle and problems:
        problems += diff_rows(ora, ref, ident, values, avgs, "ORACLES DISAGREE (test bug)")
    assert not problems, "\n".join(problems)
    return actual


def check_all(conn, wins, events=None, watermark=None):
    return {w.name: check_window(conn, w, events, watermark) for w in wins}


class Model:
    """design.md's watermark rules, independent of the SQL: an event is late when its time is
    older than the watermark its statement saw (committed statements plus the earlier
    statements of its own transaction); after a statement the watermark is
    max(watermark, max(event time in it) - lateness)."""

    def __init__(self, lateness: dt.timedelta):
        self.lateness = lateness
        self.watermark = NEG_INF
        self.events: list[dict] = []
        self.late: set[int] = set()

    def snapshot(self):
        return (self.watermark, len(self.events), set(self.late))

    def restore(self, snap):
        self.watermark, n, self.late = snap
        del self.events[n:]

    def statement(self, rows):
        if not rows:
            return
        wm = self.watermark
        for r in rows:
            d = dict(zip(COLS, r))
            if wm is POS_INF or (wm is not NEG_INF and d["created_at"] < wm):
                self.late.add(d["id"])
            else:
                self.events.append(d)
        if wm is not POS_INF:
            cand = max(r[-1] for r in rows) - self.lateness
            if wm is NEG_INF or cand > wm:
                self.watermark = cand

    def advance(self):
        self.watermark = POS_INF


def late_ids(conn, stream="ev"):
    return {r[0] for r in conn.execute(
        "SELECT l.event_id FROM cep.late_events AS l JOIN cep.streams AS s USING (stream_id) "
        "WHERE s.name = %s", (stream,))}


def srt(rows):
    """Rows in a canonical order (a view has none of its own)."""
    return sorted(rows, key=lambda r: tuple(_nl(r[k]) for k in sorted(r)))


def plain(aggs):
    """The aggregates without count(distinct ...): hand-picked tests about something else
    keep it off their session windows, which test_session_count_distinct covers."""
    return [a for a in aggs if "distinct" not in a.lower()]


def row_of(rows, start, end, **group):
    got = [r for r in rows if r["window_start"] == start and r["window_end"] == end
           and all(r[k] == v for k, v in group.items())]
    assert len(got) == 1, f"expected one row [{start}, {end}) {group}, got {got}"
    return got[0]


# -- the reference's own checks (no database) --------------------------------------------------

def test_reference_tumbling_hand_example():
    spec = WindowSpec("tumbling", sec(60), group_by=["region"],
                      aggregates=["count(*)", "sum(ival)", "avg(nval)", "count(distinct user_id)",
                                  "max(fval) AS top"], key_column="user_id")
    evs = [dict(zip(COLS, ev(1, 0, user=1, ival=2, nval=Decimal("1"), fval=1.0))),
           dict(zip(COLS, ev(2, 59.999999, user=2, ival=3, nval=Decimal("2"), fval=3.5))),
           dict(zip(COLS, ev(3, 60, user=2, ival=5, nval=Decimal("4"), fval=-1.0))),
           dict(zip(COLS, ev(4, 30, user=1, region="south", ival=7, nval=None, fval=2.0)))]
    rows = expected_rows(evs, spec, at(60))
    assert rows == [
        {"window_start": at(0), "window_end": at(60), "region": "north", "count": 2,
         "sum_ival": 5, "avg_nval": Decimal("1.5"), "count_distinct_user_id": 2, "top": 3.5,
         "is_final": True},
        {"window_start": at(0), "window_end": at(60), "region": "south", "count": 1,
         "sum_ival": 7, "avg_nval": None, "count_distinct_user_id": 1, "top": 2.0,
         "is_final": True},
        {"window_start": at(60), "window_end": at(120), "region": "north", "count": 1,
         "sum_ival": 5, "avg_nval": Decimal("4"), "count_distinct_user_id": 1, "top": -1.0,
         "is_final": False},
    ]
    # Epoch alignment: 7-second windows; 2024-03-01 12:00:00 UTC is 1709294400 s = 7 * 244184914
    # + 2, so the window holding BASE starts 2 s before it.
    assert tumbling_window(BASE, sec(7)) == (at(-2), at(5))
    assert tumbling_window(at(5), sec(7)) == (at(5), at(12))


def test_reference_hopping_hand_example():
    # size 60 s, slide 25 s: starts are the multiples of 25 s since the epoch (1709294400 =
    # 25 * 68371776, so BASE is one); t lies in the windows starting at s, t - 60 < s <= t.
    assert hopping_windows(at(10), sec(60), sec(25)) == [
        (at(-25), at(35)), (at(0), at(60))]
    assert hopping_windows(at(0), sec(60), sec(25)) == [
        (at(-50), at(10)), (at(-25), at(35)), (at(0), at(60))]
    # Slide equal to size is tumbling.
    assert hopping_windows(at(59), sec(60), sec(60)) == [(at(0), at(60))]
    assert hopping_windows(at(60), sec(60), sec(60)) == [(at(60), at(120))]
    spec = WindowSpec("hopping", sec(60), sec(30), aggregates=["count(*)", "min(ival)"])
    evs = [dict(zip(COLS, ev(1, 10, ival=4))), dict(zip(COLS, ev(2, 40, ival=-2)))]
    rows = expected_rows(evs, spec, at(60))
    assert [(r["window_start"], r["window_end"], r["count"], r["min_ival"], r["is_final"])
            for r in rows] == [
        (at(-30), at(30), 1, 4, True),
        (at(0), at(60), 2, -2, True),
        (at(30), at(90), 1, -2, False),
    ]


def test_reference_session_hand_example():
    gap = sec(10)
    evs = [dict(zip(COLS, e)) for e in [
        ev(1, 0), ev(2, 20), ev(3, 10),                    # bridged by the exact gap: one
        ev(4, 100, user=2), ev(5, 110.000001, user=2),     # gap + 1 us: two sessions
        ev(6, 300, user=3), ev(7, 295, user=3),            # extended backwards
    ]]
    assert [len(s) for s in sessions([e for e in evs if e["user_id"] == 1], gap,
                                     "created_at", "id")] == [3]
    spec = WindowSpec("session", gap, aggregates=["count(*)", "max(id)"], key_column="user_id")
    rows = expected_rows(evs, spec, at(110), include_key=True)
    assert [(r["user_id"], r["window_start"], r["window_end"], r["count"], r["is_final"])
            for r in rows] == [
        (1, at(0), at(30), 3, True),
        (2, at(100), at(110), 1, False),        # watermark == window_end: not yet final
        (2, at(110, 1), at(120, 1), 1, False),
        (3, at(295), at(310), 2, False),
    ]
    assert expected_rows(evs, spec, POS_INF)[1]["is_final"]


def test_reference_aggregate_parsing():
    assert parse_aggregate("count(*)").name == "count"
    assert parse_aggregate("count(ival)").name == "count_ival"
    assert parse_aggregate("COUNT( DISTINCT ival )").name == "count_distinct_ival"
    assert parse_aggregate("sum(nval) AS total").name == "total"
    for bad in ["median(x)", "sum(x", "sum(*)", "avg(distinct x)", "sum(x) + 1", ""]:
        with pytest.raises(ValueError):
            parse_aggregate(bad)


# -- random workloads --------------------------------------------------------------------------

AGG_POOL = ["count(ival)", "sum(ival)", "sum(nval)", "sum(fval)", "avg(ival)", "avg(nval)",
            "avg(fval)", "min(ival)", "max(ival)", "min(nval)", "max(nval)", "min(fval)",
            "max(fval)", "sum(nval) AS total_n", "count(distinct region)"]
DISTINCT_POOL = ["count(distinct ival)", "count(distinct user_id)", "count(distinct nval)"]


def random_aggregates(rng):
    return (["count(*)"] + rng.sample(AGG_POOL, rng.randint(2, 6))
            + rng.sample(DISTINCT_POOL, rng.randint(1, 2)))


def random_windows(conn, rng, retention="100 years"):
    size = sec(rng.choice([1, 5, 7, 10, 30, 60, 90, 300]))
    h_size = rng.choice([10, 30, 60, 120, 300])
    h_slide = rng.choice([h_size, h_size / 2, h_size / 3, h_size / 4, 7, 13, 2.5, 45])
    if not 0 < h_slide <= h_size or h_size / h_slide > 24:
        h_slide = h_size / 2
    h_slide = dt.timedelta(microseconds=round(h_slide * 1_000_000))
    gap = sec(rng.choice([1, 5, 10, 30, 120]))
    group = lambda: rng.choice([[], ["region"]])  # noqa: E731
    return [
        create_window(conn, "w_tumble", "tumbling", size, group_by=group(),
                      aggregates=random_aggregates(rng), retention=retention),
        create_window(conn, "w_hop", "hopping", sec(h_size), h_slide, group_by=group(),
                      aggregates=random_aggregates(rng), retention=retention),
        create_window(conn, "w_sess", "session", gap, group_by=group(),
                      aggregates=random_aggregates(rng), retention=retention),
    ]


def gen_events(rng, n, n_keys, lateness_s, late_share, first_id=1):
    """Roughly increasing times with ties, out-of-order events within the lateness, a few
    far-late ones and the odd +-1 microsecond to sit right next to window boundaries."""
    rows = []
    t = BASE + dt.timedelta(seconds=rng.randint(0, 59))
    regions = rng.sample(REGIONS, rng.randint(1, 4))
    for i in range(first_id, first_id + n):
        t += sec(rng.choice([0, 0, 1, 1, 2, 3, 5, 10, 30]))
        et = t
        if lateness_s and rng.random() < 0.4:
            et = t - sec(rng.randint(0, lateness_s))
        if rng.random() < late_share:
            et = t - sec(lateness_s + rng.randint(1, 300))
        if rng.random() < 0.05:
            et += dt.timedelta(microseconds=rng.choice([1, -1]))
        rows.append((i, rng.randrange(n_keys), rng.choice(regions), rng.randint(-20, 300),
                     Decimal(rng.randint(-1000, 50000)).scaleb(-2), rng.randint(-400, 4000) / 4,
                     et))
    return rows


@pytest.mark.parametrize("mode", ["sync", "async"])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_workloads_match_oracles(server, mode, seed):
    """MODE 'async': the same statements are queued, and cep.process_stream applies them in
    random pieces at random moments (inside transactions and savepoints too); before every
    check the queue is drained, and the results must equal the same oracles."""
    rng = random.Random(seed)
    lateness_s = rng.choice([0, 5, 30])

    def settle(conn, everything=True):
        if mode == "async":
            while conn.execute("SELECT cep.process_stream('ev', %s)",
                               (1_000_000 if everything else rng.choice([1, 3, 50]),)
                               ).fetchone()[0] and not everything and rng.random() < 0.5:
                pass

    db = server.new_database()
    try:
        with server.connect(db) as conn:
            setup_stream(conn, f"{lateness_s} seconds", mode=mode)
            wins = random_windows(conn, rng)
            model = Model(sec(lateness_s))
            rows = gen_events(rng, rng.randint(20, 220), rng.randint(1, 5), lateness_s, 0.05)
            i, force_commit = 0, False
            while i < len(rows):
                stmts, j = [], i
                for _ in range(rng.randint(1, 3)):
                    size = rng.choice([1, 2, 3, 7, 20, 60])
                    if rows[j:j + size]:
                        stmts.append(rows[j:j + size])
                    j += size
                rollback = not force_commit and rng.random() < 0.2
                snap = model.snapshot()
                with conn.transaction(force_rollback=rollback), conn.cursor() as cur:
                    for s in stmts:
                        if rng.random() < 0.15:
                            # A statement undone by ROLLBACK TO SAVEPOINT (its rows are dropped
                            # from the workload).
                            sp = model.snapshot()
                            with conn.transaction(force_rollback=True):
                                insert(cur, s)
                                model.statement(s)
                                if rng.random() < 0.5:
                                    settle(conn)
                                    check_all(conn, wins, model.events, model.watermark)
                            model.restore(sp)
                        else:
                            insert(cur, s)
                            model.statement(s)
                        if rng.random() < 0.2:
                            settle(conn, everything=False)
                    if rng.random() < 0.3:  # the transaction sees its own uncommitted windows
                        settle(conn)
                        check_all(conn, wins, model.events, model.watermark)
                force_commit = rollback
                if rollback:
                    model.restore(snap)
                else:
                    i = j
                settle(conn)
                assert late_ids(conn) == model.late
                check_all(conn, wins, model.events, model.watermark)
            # End of stream: everything becomes final; maintenance purges nothing within
            # retention '100 years'; events after the end are late and change nothing.
            advance(conn)
            model.advance()
            before = check_all(conn, wins, model.events, model.watermark)
            assert all(r["is_final"] for rows_ in before.values() for r in rows_)
            conn.execute("SELECT * FROM cep.run_maintenance()")
            check_all(conn, wins, model.events, model.watermark)
            tail = gen_events(rng, 3, 2, 0, 0, first_id=len(rows) + 1)
            insert(conn, tail)
            model.statement(tail)
            settle(conn)
            assert late_ids(conn) == model.late
            after = check_all(conn, wins, model.events, model.watermark)
            assert {k: srt(v) for k, v in after.items()} == {k: srt(v) for k, v in before.items()}
    finally:
        server.drop_database(db)


# -- concurrency -------------------------------------------------------------------------------

def _run_writers(server, dbname, wins, n_threads, per_thread, mixed, seed):
    """Writer threads on the same keys plus a reader that checks consistent snapshots.
    mixed=False: every statement is its own transaction; mixed=True: autocommit statements and
    transactions of 1-3 statements, one in five rolled back. Returns (retries, details)."""
    retries: collections.Counter = collections.Counter()
    details: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    writers_done = threading.Event()
    reader_checks = []

    def worker(w: int):
        rng = random.Random(seed + w)
        try:
            with server.connect(dbname, autocommit=False) as c:
                # A deadlock costs deadlock_timeout before one side is cancelled: keep it short.
                c.execute("SET deadlock_timeout = '50ms'")
                c.commit()
                for j in range(per_thread):
                    stmts = []
                    for s in range(rng.randint(1, 3)):
                        stmts.append([
                            (seed * 1_000_000 + w * 100_000 + j * 100 + s * 10 + k,
                             rng.randrange(3), rng.choice(["north", "south"]),
                             rng.randint(0, 100), Decimal(rng.randint(0, 9999)).scaleb(-2),
                             rng.randint(0, 400) / 4,
                             BASE + sec(seed + j * 2 + rng.randint(-25, 3)))
                            for k in range(rng.randint(1, 5))])
                    autocommit = not mixed or rng.random() < 0.3
                    rollback = not autocommit and rng.random() < 0.2
                    c.autocommit = autocommit
                    for unit in (stmts if autocommit else [stmts]):
                        while True:
                            try:
                                if autocommit:
                                    insert(c, unit)
                                else:
                                    for s in unit:
                                        insert(c, s)
                                    c.rollback() if rollback else c.commit()
                                break
                            except (psycopg.errors.SerializationFailure,
                                    psycopg.errors.DeadlockDetected) as e:
                                if not autocommit:
                                    c.rollback()
                                with lock:
                                    retries[e.sqlstate] += 1
                                    if len(details) < 2:
                                        details.append(f"{e.diag.message_detail} "
                                                       f"{(e.diag.context or '')[:300]}")
                    c.autocommit = False
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader():
        """Every snapshot taken while writers run shows views equal to the recomputation."""
        try:
            with server.connect(dbname, autocommit=False) as c:
                while not writers_done.is_set():
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    for w in wins:
                        check_window(c, w)
                    c.commit()
                    reader_checks.append(1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_threads)]
    rt = threading.Thread(target=reader)
    for t in threads:
        t.start()
    rt.start()
    for t in threads:
        t.join()
    writers_done.set()
    rt.join()
    assert not errors, errors
    assert reader_checks, "the reader never completed a consistent check"
    return retries, details


def test_concurrent_writers_on_the_same_keys(server, dbname):
    with server.connect(dbname) as conn:
        setup_stream(conn, "20 seconds")
        aggs = ["count(*)", "sum(ival)", "sum(nval)", "avg(fval)", "min(ival)", "max(nval)",
                "count(distinct user_id)"]
        wins = [
            create_window(conn, "c_tumble", "tumbling", sec(30), group_by=["region"],
                          aggregates=aggs),
            create_window(conn, "c_hop", "hopping", sec(60), sec(20), aggregates=aggs),
            create_window(conn, "c_sess", "session", sec(4), group_by=["region"],
                          aggregates=plain(aggs)),
        ]
    # Phase 1, single-statement transactions only: within one statement the windows take
    # their row locks in one global order (window, then key), so there is no deadlock to
    # retry. Phase 2 mixes in transactions of several statements on the same keys, which can
    # deadlock as with any row locks; they are retried and counted.
    retries, details = _run_writers(server, dbname, wins, 6, 20, mixed=False, seed=1)
    assert not retries, f"single-statement writers failed: {dict(retries)}\n" + \
        "\n".join(details)
    with server.connect(dbname) as conn:
        check_all(conn, wins)
    retries, details = _run_writers(server, dbname, wins, 6, 20, mixed=True, seed=500)
    if retries:
        warnings.warn(f"multi-statement window writers needed retries: {dict(retries)}")
    with server.connect(dbname) as conn:
        n, late = conn.execute(
            "SELECT (SELECT count(*) FROM public.ev), (SELECT count(*) FROM cep.late_events)"
        ).fetchone()
        assert n > 300 and late > 0   # the writers' late events are excluded, not applied
        check_all(conn, wins)
        advance(conn)
        final = check_all(conn, wins)
        assert all(r["is_final"] for rows in final.values() for r in rows)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_strict_isolation_writers_succeed_or_retry(server, dbname, isolation):
    """A writer at REPEATABLE READ or SERIALIZABLE whose snapshot predates a concurrent
    commit on the same key either fails with 40001 or produces the merged result; it never
    commits state computed from its stale snapshot. Then random writers at that level, retried
    on 40001/40P01, leave views equal to the recomputation."""
    aggs = ["count(*)", "sum(ival)", "count(distinct ival)"]
    with server.connect(dbname) as conn:
        # A stream with only a session window (any other window would make T2 fail on its own
        # state first) and one with all three kinds for the random writers.
        setup_stream(conn, "1 hour")
        sess = create_window(conn, "iso_s", "session", sec(10), aggregates=aggs)
        # The keys exist before both writers (their anchor rows are committed).
        insert(conn, [ev(1, 0, user=1), ev(2, 0, user=2), ev(3, 0, user=3)])
        setup_stream(conn, "1 hour", table="public.ev2", stream="ev2")
        wins = [create_window(conn, "iso_s2", "session", sec(10), aggregates=aggs,
                              stream="ev2"),
                create_window(conn, "iso_t", "tumbling", sec(60), group_by=["region"],
                              aggregates=aggs, stream="ev2"),
                create_window(conn, "iso_h", "hopping", sec(60), sec(20), aggregates=aggs,
                              stream="ev2")]
    outcomes, stale = [], []
    # Within the gap after, within the gap before, and more than the gap apart.
    for k, (t1_at, t2_at) in enumerate([(100, 105), (205, 200), (300, 320)]):
        with server.connect(dbname, autocommit=False) as t2:
            t2.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            t2.execute("SELECT 1")                 # T2's snapshot is taken here
            # T1 commits after it, at the same level (PostgreSQL's SERIALIZABLE guarantees
            # hold only among SERIALIZABLE transactions).
            with server.connect(dbname, autocommit=False) as t1:
                t1.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                insert(t1, [ev(10 + k, t1_at, user=1 + k, ival=2)])
                t1.commit()
            try:
                insert(t2, [ev(20 + k, t2_at, user=1 + k, ival=3)])
                t2.commit()
                outcomes.append("committed")
            except psycopg.errors.SerializationFailure:
                t2.rollback()
                outcomes.append("40001")
        with server.connect(dbname) as conn:
            try:
                check_window(conn, sess)
            except AssertionError as e:
                stale.append(f"T1 at {t1_at}s, T2 at {t2_at}s (user {1 + k}): "
                             f"T2 {outcomes[-1]}:\n{e}")

    done, retries = [], collections.Counter()

    def worker(w: int):
        rng = random.Random(w)
        with server.connect(dbname, autocommit=False) as c:
            c.execute("SET deadlock_timeout = '50ms'")
            c.commit()
            for j in range(15):
                rows = [(1000 + w * 100 + j * 5 + k, rng.randrange(2), rng.choice(REGIONS[:2]),
                         rng.randint(0, 5), Decimal(1), 0.5, BASE + sec(400 + j * 3 + k))
                        for k in range(rng.randint(1, 3))]
                while True:
                    try:
                        c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                        insert(c, rows, table="public.ev2")
                        c.commit()
                        done.append(j)
                        break
                    except (psycopg.errors.SerializationFailure,
                            psycopg.errors.DeadlockDetected) as e:
                        c.rollback()
                        retries[e.sqlstate] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 60
    with server.connect(dbname) as conn:
        check_all(conn, wins)
    assert not stale, "\n".join(stale)


# -- hand-picked cases -------------------------------------------------------------------------

def test_is_final_flips_exactly_when_the_watermark_passes(conn):
    setup_stream(conn, "10 seconds")
    aggs = ["count(*)", "sum(ival)"]
    wt = create_window(conn, "wt", "tumbling", sec(60), aggregates=aggs)
    wh = create_window(conn, "wh", "hopping", sec(60), sec(30), aggregates=aggs)
    ws = create_window(conn, "ws", "session", sec(30), aggregates=aggs)
    wins = [wt, wh, ws]

    insert(conn, [ev(1, 5, user=1)])                       # watermark 11:59:55
    v = check_all(conn, wins)
    assert not row_of(v["wt"], at(0), at(60))["is_final"]
    assert not row_of(v["wh"], at(-30), at(30))["is_final"]
    assert not row_of(v["ws"], at(5), at(35))["is_final"]

    insert(conn, [ev(2, 40, user=2)])                       # watermark 12:00:30
    v = check_all(conn, wins)
    assert row_of(v["wh"], at(-30), at(30))["is_final"]     # watermark == window_end
    assert not row_of(v["wh"], at(0), at(60))["is_final"]

    insert(conn, [ev(3, 45, user=2)])                       # watermark 12:00:35
    v = check_all(conn, wins)
    assert not row_of(v["ws"], at(5), at(35))["is_final"]   # session: needs watermark > end
    # ... because an event exactly gap after the last one is not late and still joins:
    insert(conn, [ev(4, 35, user=1)])
    v = check_all(conn, wins)
    assert row_of(v["ws"], at(5), at(65))["count"] == 2

    insert(conn, [ev(5, 69.999999, user=2)])               # watermark 12:00:59.999999
    v = check_all(conn, wins)
    assert not row_of(v["wt"], at(0), at(60))["is_final"]
    insert(conn, [ev(6, 70, user=2)])                       # watermark 12:01:00
    v = check_all(conn, wins)
    assert row_of(v["wt"], at(0), at(60))["is_final"]
    assert row_of(v["wh"], at(0), at(60))["is_final"]
    assert not row_of(v["wh"], at(30), at(90))["is_final"]

    insert(conn, [ev(7, 75, user=2)])                       # watermark 12:01:05 == user 1's end
    v = check_all(conn, wins)
    assert not row_of(v["ws"], at(5), at(65))["is_final"]
    insert(conn, [ev(8, at(75, 1), user=2)])               # watermark 12:01:05.000001
    v = check_all(conn, wins)
    assert row_of(v["ws"], at(5), at(65))["is_final"]
    assert not any(r["is_final"] for r in v["ws"] if r["window_start"] == at(40))

    assert advance(conn) == "infinity"
    v = check_all(conn, wins, watermark=POS_INF)
    assert all(r["is_final"] for rows in v.values() for r in rows)


def test_a_window_seen_final_never_changes_for_serializable_sessions(server, dbname):
    """design.md principles 4 and 5 with SERIALIZABLE writers and readers: a transaction that
    inserted an on-time event and commits after another one moved the watermark past its window
    cannot change a window that a reader has already seen final (in no serial order is the
    window first final with one event and then final with two): it fails with 40001."""
    with server.connect(dbname) as conn:
        setup_stream(conn, "0 seconds")
        wt = create_window(conn, "fin", "tumbling", sec(60), aggregates=["count(*)"])
        insert(conn, [ev(1, 0)])
    opts = "-c default_transaction_isolation=serializable"
    with server.connect(dbname, autocommit=False, options=opts) as t2, \
            server.connect(dbname, options=opts) as t1, \
            server.connect(dbname, autocommit=False, options=opts) as reader:
        insert(t2, [ev(2, 30)])                  # on time: the watermark is 12:00:00
        insert(t1, [ev(3, 300, user=2)])         # commits; the watermark moves to 12:05:00
        seen = row_of(check_window(reader, wt), at(0), at(60))
        assert seen["is_final"] and seen["count"] == 1
        reader.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            t2.commit()
        now = row_of(check_window(t1, wt), at(0), at(60))
        assert now == seen, f"a final window changed from {seen} to {now}"


def test_read_committed_writer_with_an_older_watermark_still_counts(server, dbname):
    """README: under READ COMMITTED, lateness is judged against the watermark the statement
    saw; an event that was on time then is counted even if another session has meanwhile
    moved the watermark past its window (is_final is what committed transactions produced).
    The view still equals the GROUP BY over the non-late events."""
    with server.connect(dbname) as conn:
        setup_stream(conn, "0 seconds")
        wt = create_window(conn, "fin", "tumbling", sec(60), aggregates=["count(*)"])
        insert(conn, [ev(1, 0)])
    with server.connect(dbname, autocommit=False) as t2, server.connect(dbname) as t1:
        insert(t2, [ev(2, 30)])
        insert(t1, [ev(3, 300, user=2)])
        seen = row_of(check_window(t1, wt), at(0), at(60))
        assert seen["is_final"] and seen["count"] == 1
        t2.commit()
        now = row_of(check_window(t1, wt), at(0), at(60))
        assert now["is_final"] and now["count"] == 2
        assert late_ids(t1) == set()


def test_late_events_leave_closed_windows_untouched(conn):
    setup_stream(conn, "30 seconds")
    aggs = ["count(*)", "sum(nval)", "max(ival)", "count(distinct user_id)"]
    wins = [create_window(conn, "lt", "tumbling", sec(60), group_by=["region"], aggregates=aggs),
            create_window(conn, "lh", "hopping", sec(60), sec(20), aggregates=aggs),
            create_window(conn, "ls", "session", sec(15), aggregates=plain(aggs))]
    insert(conn, [ev(1, 10, ival=5), ev(2, 50, user=2, ival=6), ev(3, 80, ival=7)])
    insert(conn, [ev(4, 165, user=3, ival=8)])              # watermark 12:02:15
    before = check_all(conn, wins)
    assert row_of(before["lt"], at(0), at(60), region="north")["is_final"]

    # Two late events (one into a closed window, one into a still-open window: late is late)
    # and one exactly at the watermark (not late), in one statement.
    insert(conn, [ev(10, 20, user=1, ival=100), ev(11, at(134, 999999), user=3, ival=100),
                  ev(12, 135, user=3, ival=9)])
    assert late_ids(conn) == {10, 11}
    after = check_all(conn, wins)
    assert row_of(after["lt"], at(0), at(60), region="north") == \
        row_of(before["lt"], at(0), at(60), region="north")
    assert row_of(after["lt"], at(120), at(180), region="north")["count"] == 2
    # Every window without the on-time event 12 is unchanged.
    for w in wins:
        def untouched(r):
            if w.spec.kind == "session":
                return r["window_end"] < at(135)
            return not r["window_start"] <= at(135) < r["window_end"]
        assert srt(r for r in after[w.name] if untouched(r)) == \
            srt(r for r in before[w.name] if untouched(r)), w.name
    stats = {r[0]: r[1] for r in conn.execute(
        "SELECT \"window\", late_events FROM cep.window_stats")}
    assert stats["lt"] == 2, stats
    assert conn.execute("SELECT count(*) FROM public.ev").fetchone()[0] == 7  # kept in storage


def test_session_merging_exact_gap_and_bridges(conn):
    setup_stream(conn, "2 hours")
    ws = create_window(conn, "ws", "session", sec(10), aggregates=["count(*)", "min(id)"])
    wr = create_window(conn, "wr", "session", sec(10), group_by=["region"],
                       aggregates=["count(*)", "min(id)"])

    def o(u, s, us=0):
        return at(u * 100 + s, us)

    insert(conn, [
        ev(1, o(1, 0), user=1), ev(2, o(1, 20), user=1),
        ev(3, o(2, 0), user=2), ev(4, o(2, 10, 1), user=2),
        ev(5, o(3, 30), user=3),
        ev(6, o(4, 0), user=4), ev(7, o(4, 21, 1), user=4),
        ev(8, o(5, 20), user=5), ev(9, o(5, 0), user=5), ev(10, o(5, 10), user=5),
        ev(11, o(6, 0), user=6), ev(12, o(6, 20), user=6), ev(13, o(6, 40), user=6),
        ev(14, o(7, 0), user=7, region="north"), ev(15, o(7, 5), user=7, region="south"),
    ])

    def spans(rows):
        return sorted((r["window_start"], r["window_end"], r["count"]) for r in rows)

    v = check_window(conn, ws)
    assert spans(v) == sorted([
        (o(1, 0), o(1, 10), 1), (o(1, 20), o(1, 30), 1),
        (o(2, 0), o(2, 10), 1), (o(2, 10, 1), o(2, 20, 1), 1),   # gap + 1 us: two sessions
        (o(3, 30), o(3, 40), 1),
        (o(4, 0), o(4, 10), 1), (o(4, 21, 1), o(4, 31, 1), 1),
        (o(5, 0), o(5, 30), 3),                                   # out of order in one COPY
        (o(6, 0), o(6, 10), 1), (o(6, 20), o(6, 30), 1), (o(6, 40), o(6, 50), 1),
        (o(7, 0), o(7, 15), 2),
    ])
    assert spans(check_window(conn, wr)) == sorted(
        [s for s in spans(v) if s[0] not in (o(7, 0),)]
        + [(o(7, 0), o(7, 10), 1), (o(7, 5), o(7, 15), 1)])

    insert(conn, [ev(20, o(1, 10), user=1)])                  # exact gap on both sides: bridge
    insert(conn, [ev(21, o(3, 25), user=3)])                  # extends a session backwards
    insert(conn, [ev(22, o(4, 10), user=4)])                  # joins the first, not the second
    insert(conn, [ev(23, o(6, 30), user=6), ev(24, o(6, 10), user=6)])  # three into one
    v = check_window(conn, ws)
    assert spans(v) == sorted([
        (o(1, 0), o(1, 30), 3),
        (o(2, 0), o(2, 10), 1), (o(2, 10, 1), o(2, 20, 1), 1),
        (o(3, 25), o(3, 40), 2),
        (o(4, 0), o(4, 20), 2), (o(4, 21, 1), o(4, 31, 1), 1),
        (o(5, 0), o(5, 30), 3),
        (o(6, 0), o(6, 50), 5),
        (o(7, 0), o(7, 15), 2),
    ])
    assert min(r["min_id"] for r in v if r["window_start"] == o(6, 0)) == 11
    check_window(conn, wr)
    advance(conn)
    assert all(r["is_final"] for r in check_window(conn, ws) + check_window(conn, wr))


def test_session_count_distinct_survives_merges(conn):
    """count(distinct) of a session that absorbs others counts each value once."""
    setup_stream(conn, "1 hour")
    ws = create_window(conn, "sd", "session", sec(10), group_by=["region"],
                       aggregates=["count(*)", "count(distinct ival)", "count(distinct nval)"])
    # 1.0, 1.00 and 1 are one numeric value, as for count(DISTINCT nval) in SQL.
    insert(conn, [ev(1, 0, ival=1, nval=Decimal("1.0")), ev(2, 20, ival=1, nval=Decimal("1.00")),
                  ev(3, 40, ival=2, nval=Decimal("1")), ev(4, 5, user=2, ival=9,
                                                            nval=Decimal("7"))])
    v = check_window(conn, ws)
    insert(conn, [ev(5, 10, ival=2, nval=Decimal("2")),
                  ev(6, 30, ival=3, nval=Decimal("1.000"))])    # bridges 0..40 into one
    v = check_window(conn, ws)
    row = row_of([r for r in v if r.get("user_id", 1) == 1], at(0), at(50), region="north")
    assert (row["count"], row["count_distinct_ival"], row["count_distinct_nval"]) == (5, 3, 2)


def _relations(conn):
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.oid::regclass::text, c.relkind::text FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
        "AND n.nspname NOT LIKE 'pg\\_temp%%' AND n.nspname NOT LIKE 'pg\\_toast%%'")}


def _state_relations(conn, view, created, source):
    """Tables behind the view, found without knowing their names: relations that
    create_window created, plus tables the view's rules depend on (transitively), minus the
    extension's own catalog tables and the source table."""
    deps = {r[0] for r in conn.execute("""
        WITH RECURSIVE d (oid) AS (
            SELECT %s::regclass::oid
          UNION
            SELECT dep.refobjid FROM d
            JOIN pg_rewrite AS r ON r.ev_class = d.oid
            JOIN pg_depend AS dep ON dep.classid = 'pg_rewrite'::regclass
                AND dep.objid = r.oid AND dep.refclassid = 'pg_class'::regclass
            WHERE dep.refobjid <> d.oid
        )
        SELECT c.oid::regclass::text FROM d JOIN pg_class AS c ON c.oid = d.oid
        WHERE c.relkind IN ('r', 'p', 'm')""", (view,))}
    members = {r[0] for r in conn.execute(
        "SELECT objid::regclass::text FROM pg_depend WHERE classid = 'pg_class'::regclass "
        "AND refclassid = 'pg_extension'::regclass AND deptype = 'e' "
        "AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_cep')")}
    return sorted((deps | {r for r, k in created.items() if k in ("r", "p", "m")})
                  - members - {source})


def _tuples(conn, rels):
    return {(rel, r[0], r[1]) for rel in rels for r in conn.execute(
        sql.SQL("SELECT ctid::text, xmin::text FROM {}").format(sql.SQL(rel)))}


def test_incremental_batch_touches_only_its_windows(conn):
    setup_stream(conn, "2 hours")
    rng = random.Random(5)
    rows = [(i, rng.randrange(40), rng.choice(["north", "south", "east"]), rng.randint(0, 50),
             Decimal(rng.randint(0, 999)), 0.5, at(i))
            for i in range(1, 3001)]   # one event per second over 50 minutes
    t_new = at(25 * 60 + 30, 250000)   # minute 25, by a user with no event within 2 s
    user = min(set(range(40)) - {r[1] for r in rows if abs(r[-1] - t_new) < sec(2)})
    aggs = ["count(*)", "sum(nval)", "avg(ival)", "count(distinct ival)"]
    rel0 = _relations(conn)
    wins = [create_window(conn, "it", "tumbling", sec(60), group_by=["region"],
                          aggregates=aggs)]
    rel1 = _relations(conn)
    wins.append(create_window(conn, "ih", "hopping", sec(300), sec(60), aggregates=aggs))
    wins.append(create_window(conn, "is_", "session", sec(0.5), aggregates=plain(aggs)))
    rel2 = _relations(conn)
    for lo in range(0, len(rows), 300):
        insert(conn, rows[lo:lo + 300])
    before = check_all(conn, wins)
    created = {k: v for k, v in rel2.items() if k not in rel0}
    state = set()
    for w in wins:
        state |= set(_state_relations(conn, w.view, created, "ev"))
    state -= {w.view for w in wins}
    tuples_before = _tuples(conn, state)

    # Rows of the source table read by the insert: the difference of the transaction's
    # counters (which also hold not-yet-flushed counts of earlier transactions) around it.
    reads = ("SELECT pg_stat_get_xact_tuples_returned('public.ev'::regclass) "
             "+ pg_stat_get_xact_tuples_fetched('public.ev'::regclass)")
    with conn.transaction():
        read0 = conn.execute(reads).fetchone()[0]
        insert(conn, [(5000, user, "north", 17, Decimal(3), 0.5, t_new)])
        read = conn.execute(reads).fetchone()[0] - read0
    assert read < 1000, f"a one-event insert read {read} rows of the 3000-row source table"

    after = check_all(conn, wins)
    for w in wins:
        def holds(r):
            if w.spec.group_by and r["region"] != "north":
                return False
            if w.spec.kind == "session":
                return r["window_start"] <= t_new <= r["window_end"] - w.spec.size
            return r["window_start"] <= t_new < r["window_end"]
        changed_b = [r for r in before[w.name] if holds(r)]
        assert srt(r for r in after[w.name] if not holds(r)) == \
            srt(r for r in before[w.name] if not holds(r)), f"{w.name}: other windows changed"
        n_windows = {"tumbling": 1, "hopping": 5, "session": 1}[w.spec.kind]
        assert len([r for r in after[w.name] if holds(r)]) == n_windows, w.name
        assert sum(r["count"] for r in after[w.name] if holds(r)) == \
            sum(r["count"] for r in changed_b) + n_windows, w.name
    if state:
        tuples_after = _tuples(conn, state)
        new = tuples_after - tuples_before
        assert len(tuples_before) > 300
        assert len(new) <= 40, (
            f"one event rewrote {len(new)} of {len(tuples_before)} state tuples in {state}")
    else:
        warnings.warn("no state relation found behind the window views; "
                      f"relations created: {created}, after the first window: "
                      f"{sorted(set(rel1) - set(rel0))}")


def _snapshot(conn, stream="ev"):
    rels = _relations(conn)
    procs = sorted(conn.execute(
        "SELECT p.oid::regprocedure::text, md5(p.prosrc) FROM pg_proc AS p "
        "WHERE p.pronamespace = 'cep'::regnamespace").fetchall())
    triggers = sorted(conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
    ).fetchall())
    counts = {}
    for rel, kind in rels.items():
        if kind == "r" and rel.startswith("cep."):
            counts[rel] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(rel))).fetchone()[0]
    ws = sorted(map(str, conn.execute("SELECT * FROM cep.window_stats").fetchall()))
    fn = conn.execute(
        "SELECT pg_get_functiondef(('cep.' || quote_ident(ingest_function) || '()')"
        "::regprocedure) FROM cep.streams WHERE name = %s", (stream,)).fetchone()[0]
    return {"relations": rels, "procs": procs, "triggers": triggers, "counts": counts,
            "window_stats": ws, "ingest_function": fn}


BAD_INPUT = [
    # (description, SQL arguments of cep.create_window, accepted SQLSTATEs)
    ("unknown stream", "'b', 'nope', 'tumbling', '1 minute'", {"42704"}),
    ("unknown kind", "'b', 'ev', 'bogus', '1 minute'", {"22023"}),
    ("kind NULL", "'b', 'ev', NULL, '1 minute'", {"22023", "22004"}),
    ("unknown group_by column", "'b', 'ev', 'tumbling', '1 minute', group_by => '{nope}'",
     {"42703"}),
    ("unknown aggregate column", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => '{count(*), sum(nope)}'", {"42703"}),
    ("unknown count(distinct) column", "'b', 'ev', 'session', '1 minute', "
     "aggregates => '{count(distinct nope)}'", {"42703"}),
    ("sum over text", "'b', 'ev', 'tumbling', '1 minute', aggregates => '{sum(region)}'",
     {"42804"}),
    ("avg over timestamptz", "'b', 'ev', 'hopping', '1 minute', '30 seconds', "
     "aggregates => '{avg(created_at)}'", {"42804"}),
    ("unknown aggregate function", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => '{median(ival)}'", {"22023"}),
    ("malformed aggregate: unclosed", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['sum(ival']", {"22023"}),
    ("malformed aggregate: expression", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['sum(ival) + 1']", {"22023"}),
    ("malformed aggregate: injection", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['sum(ival)) FROM pg_class --']", {"22023"}),
    ("malformed aggregate: two statements", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['count(*); DROP TABLE public.ev']", {"22023"}),
    ("malformed aggregate: dangling AS", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['count(*) AS']", {"22023"}),
    ("malformed aggregate: sum(*)", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['sum(*)']", {"22023"}),
    ("malformed aggregate: empty", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['']", {"22023"}),
    ("aggregate NULL", "'b', 'ev', 'tumbling', '1 minute', aggregates => ARRAY[NULL]::text[]",
     {"22023", "22004"}),
    ("duplicate output column", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => '{sum(ival), sum(ival)}'", {"42701", "22023"}),
    ("alias collides with window_start", "'b', 'ev', 'tumbling', '1 minute', "
     "aggregates => ARRAY['count(*) AS window_start']", {"42701", "22023"}),
    ("slide > size", "'b', 'ev', 'hopping', '1 minute', '2 minutes'", {"22023"}),
    ("slide for tumbling", "'b', 'ev', 'tumbling', '1 minute', '30 seconds'", {"22023"}),
    ("slide for session", "'b', 'ev', 'session', '1 minute', '30 seconds'", {"22023"}),
    ("no slide for hopping", "'b', 'ev', 'hopping', '1 minute'", {"22023"}),
    ("zero size", "'b', 'ev', 'tumbling', '0 seconds'", {"22023"}),
    ("negative size", "'b', 'ev', 'session', '-1 minute'", {"22023"}),
    ("size NULL", "'b', 'ev', 'tumbling', NULL", {"22023", "22004"}),
    ("zero slide", "'b', 'ev', 'hopping', '1 minute', '0 seconds'", {"22023"}),
    ("negative slide", "'b', 'ev', 'hopping', '1 minute', '-10 seconds'", {"22023"}),
    ("size with months", "'b', 'ev', 'tumbling', '1 month'", {"22023"}),
    ("size of months and days", "'b', 'ev', 'hopping', '1 mon 1 day', '1 day'", {"22023"}),
    ("slide with months", "'b', 'ev', 'hopping', '1 year', '1 month'", {"22023"}),
    ("name of an existing table", "'taken', 'ev', 'tumbling', '1 minute'", {"42P07"}),
    ("name of the source table", "'ev', 'ev', 'tumbling', '1 minute'", {"42P07"}),
    ("qualified name of an existing sequence", "'public.taken_seq', 'ev', 'tumbling', "
     "'1 minute'", {"42P07"}),
    ("name of an existing window", "'w_ok', 'ev', 'session', '5 minutes'", {"42710"}),
    ("name NULL", "NULL, 'ev', 'tumbling', '1 minute'", {"22023", "22004"}),
    ("name empty", "'', 'ev', 'tumbling', '1 minute'", {"22023", "42602"}),
    ("stream NULL", "'b', NULL, 'tumbling', '1 minute'", {"22023", "22004", "42704"}),
]


def test_bad_input_raises_and_creates_nothing(conn):
    setup_stream(conn)
    conn.execute("CREATE TABLE public.taken (x int); CREATE SEQUENCE public.taken_seq")
    ok = create_window(conn, "w_ok", "tumbling", sec(60))
    insert(conn, [ev(1, 0), ev(2, 61)])
    failures = []
    for desc, args, codes in BAD_INPUT:
        before = _snapshot(conn)
        try:
            conn.execute(f"SELECT cep.create_window({args})")
        except psycopg.Error as e:
            if e.sqlstate not in codes:
                failures.append(f"{desc}: SQLSTATE {e.sqlstate} ({e.diag.message_primary}), "
                                f"expected {sorted(codes)}")
        else:
            failures.append(f"{desc}: no error")
            name = conn.execute("SELECT \"window\" FROM cep.window_stats "
                                "WHERE \"window\" NOT IN ('w_ok')").fetchall()
            for (n,) in name:
                conn.execute("SELECT cep.drop_window(%s)", (n,))
            continue
        after = _snapshot(conn)
        for k in before:
            if before[k] != after[k]:
                failures.append(f"{desc}: {k} changed")
    assert not failures, "\n".join(failures)
    # The failures left nothing that blocks a correct definition with the same name (its
    # contents over earlier events are test_window_created_over_existing_events' business).
    insert(conn, [ev(3, 62)])
    check_window(conn, ok)
    create_window(conn, "b", "hopping", sec(60), sec(30), aggregates=["count(*)", "sum(ival)"])
    assert read_view(conn, "public.b")[0] == ["window_start", "window_end", "count", "sum_ival",
                                               "is_final"]


def test_duplicate_window_name_in_another_schema_or_kind(conn):
    setup_stream(conn)
    conn.execute("CREATE SCHEMA other")
    create_window(conn, "dup", "tumbling", sec(60))
    for args in ["'dup', 'ev', 'session', '1 minute'", "'public.dup', 'ev', 'tumbling', '1 min'"]:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"SELECT cep.create_window({args})")
        assert exc.value.sqlstate in ("42710", "42P07"), exc.value


def test_drop_window_removes_view_and_stats_and_streaming_continues(conn):
    setup_stream(conn, "5 seconds")
    fn_before = _snapshot(conn)["ingest_function"]
    rels_before = _relations(conn)
    keep = create_window(conn, "keep", "tumbling", sec(10),
                         aggregates=["count(*)", "sum(ival)"])
    rels_keep = _relations(conn)
    gone = create_window(conn, "gone", "session", sec(5), group_by=["region"],
                         aggregates=["count(*)", "max(user_id)"])
    insert(conn, [ev(i, i * 2, user=i % 3) for i in range(1, 30)])
    check_all(conn, [keep, gone])
    conn.execute("SELECT cep.drop_window('gone')")
    assert conn.execute("SELECT to_regclass('public.gone')").fetchone()[0] is None
    assert [r[0] for r in conn.execute("SELECT \"window\" FROM cep.window_stats")] == ["keep"]
    assert _relations(conn) == rels_keep, "drop_window left relations behind"
    insert(conn, [ev(i, i * 2, user=i % 3) for i in range(30, 60)])
    check_window(conn, keep)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cep.drop_window('gone')")
    assert exc.value.sqlstate in ("42704", "42P01"), exc.value
    # The name can be used again, and the new window sees the existing events.
    create_window(conn, "gone", "tumbling", sec(30), aggregates=["count(*)"])
    assert read_view(conn, "public.gone")[0] == ["window_start", "window_end", "count",
                                                  "is_final"]
    check_window(conn, keep)
    conn.execute("SELECT cep.drop_window('gone'); SELECT cep.drop_window('keep')")
    assert _relations(conn) == rels_before
    assert _snapshot(conn)["ingest_function"] == fn_before
    insert(conn, [ev(100, 200)])
    assert conn.execute("SELECT count(*) FROM cep.window_stats").fetchone()[0] == 0


def test_drop_stream_drops_its_windows(conn):
    setup_stream(conn)
    rels_before = _relations(conn)
    create_window(conn, "a", "tumbling", sec(10))
    create_window(conn, "b", "session", sec(10), group_by=["region"])
    insert(conn, [ev(1, 1)])
    conn.execute("SELECT cep.drop_stream('ev')")
    assert _relations(conn) == rels_before
    assert conn.execute("SELECT count(*) FROM cep.window_stats").fetchone()[0] == 0
    insert(conn, [ev(2, 2)])  # the table is an ordinary table again


def test_view_columns_placement_and_defaults(conn):
    conn.execute("CREATE SCHEMA app; CREATE SCHEMA reports")
    setup_stream(conn, table="app.ev2", stream="ev2")
    aggs = ["count(*)", "count(ival)", "sum(nval) AS total", "avg(fval)", "min(ival)",
            "max(ival)", "count(distinct region)"]
    w1 = create_window(conn, "w1", "tumbling", sec(60), group_by=["region"], aggregates=aggs,
                       stream="ev2", view="app.w1")
    w2 = create_window(conn, "reports.w2", "hopping", sec(60), sec(15), aggregates=aggs,
                       stream="ev2")
    w3 = create_window(conn, "w3", "session", sec(60), aggregates=plain(aggs), stream="ev2",
                       view="app.w3")
    assert conn.execute("SELECT to_regclass('public.w1')").fetchone()[0] is None
    cols = ["window_start", "window_end", "region", "count", "count_ival", "total", "avg_fval",
            "min_ival", "max_ival", "count_distinct_region", "is_final"]
    names, _ = read_view(conn, "app.w1")
    assert names == cols
    names, _ = read_view(conn, "reports.w2")
    assert names == [c for c in cols if c != "region"]
    insert(conn, [ev(1, 0, ival=None, fval=None), ev(2, 10, region="south", ival=3),
                  ev(3, 20, user=2, nval=None)], table="app.ev2")
    check_all(conn, [w1, w2, w3])
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'app.w1'::regclass AND attnum > 0").fetchall())
    assert types["window_start"] == types["window_end"] == "timestamp with time zone"
    assert types["is_final"] == "boolean" and types["region"] == "text"


def test_window_created_over_existing_events(conn):
    setup_stream(conn, "10 seconds")
    rng = random.Random(21)
    rows = gen_events(rng, 300, 4, 10, 0.05)
    for lo in range(0, len(rows), 25):
        insert(conn, rows[lo:lo + 25])
    assert late_ids(conn), "the workload should contain late events"
    aggs = ["count(*)", "sum(nval)", "avg(ival)", "min(fval)", "count(distinct user_id)"]
    wins = [create_window(conn, "bt", "tumbling", sec(30), group_by=["region"], aggregates=aggs),
            create_window(conn, "bh", "hopping", sec(60), sec(25), aggregates=aggs),
            create_window(conn, "bs", "session", sec(10), aggregates=plain(aggs))]
    check_all(conn, wins)
    more = gen_events(rng, 100, 4, 10, 0.05, first_id=1000)
    for lo in range(0, len(more), 10):
        insert(conn, more[lo:lo + 10])
    check_all(conn, wins)


def test_nulls_in_values_and_group_column(conn):
    setup_stream(conn, "1 minute")
    aggs = ["count(*)", "count(ival)", "sum(ival)", "avg(nval)", "min(fval)", "max(nval)",
            "count(distinct ival)"]
    wins = [create_window(conn, "nt", "tumbling", sec(60), group_by=["region"], aggregates=aggs),
            create_window(conn, "nh", "hopping", sec(60), sec(30), group_by=["region"],
                          aggregates=aggs),
            create_window(conn, "ns", "session", sec(20), group_by=["region"],
                          aggregates=plain(aggs))]
    wins += [create_window(conn, "n2", "hopping", sec(20), sec(5), group_by=["region", "user_id"],
                           aggregates=aggs),
             create_window(conn, "nk", "session", sec(2), group_by=["user_id", "region"],
                           aggregates=plain(aggs))]
    insert(conn, [ev(1, 0, region=None, ival=None, nval=None, fval=None),
                  ev(2, 5, region=None, ival=3),
                  ev(3, 6, region="north", ival=None, nval=None, fval=None)])
    insert(conn, [ev(4, 7, region=None, ival=3, nval=None)])
    insert(conn, [ev(5, 8, region="north", ival=None, nval=None, fval=None)])
    v = check_all(conn, wins)
    north = row_of(v["nt"], at(0), at(60), region="north")
    assert (north["count"], north["count_ival"], north["sum_ival"], north["avg_nval"]) == \
        (2, 0, None, None)
    null = row_of(v["nt"], at(0), at(60), region=None)
    assert (null["count"], null["count_distinct_ival"]) == (3, 1)


def test_timezone_of_sessions_does_not_matter(server, dbname):
    """Epoch alignment is in UTC and a window or gap of '1 day' is 24 hours, whatever the
    TimeZone of the writing or the reading session (2024-03-10 is a DST change in New York,
    where that day has 23 hours)."""
    day = dt.datetime(2024, 3, 10, 0, 0, tzinfo=UTC)
    with server.connect(dbname) as conn:
        setup_stream(conn, "2 days")
        aggs = ["count(*)", "sum(ival)"]
        wins = [create_window(conn, "d1", "tumbling", dt.timedelta(days=1), aggregates=aggs),
                create_window(conn, "d1h", "hopping", dt.timedelta(days=1),
                              dt.timedelta(hours=12), aggregates=aggs),
                create_window(conn, "h1", "hopping", dt.timedelta(hours=1), sec(1800),
                              aggregates=aggs),
                create_window(conn, "s1", "session", dt.timedelta(days=1), aggregates=aggs)]
    rows = [(i, 1 + i % 2, "north", i, Decimal(1), 1.0, day + dt.timedelta(minutes=37 * i))
            for i in range(1, 60)]
    # User 3: 23.5 hours apart across the DST change, within a gap of 24 hours.
    rows += [(100, 3, "north", 1, Decimal(1), 1.0, day + dt.timedelta(hours=1)),
             (101, 3, "north", 1, Decimal(1), 1.0, day + dt.timedelta(hours=24, minutes=30))]
    rows.sort(key=lambda r: r[-1])
    # New York writes everything of the DST day (UTC), Kolkata the rest.
    for tz, part in [("America/New_York", [r for r in rows if r[-1] < day + sec(86400)]),
                     ("Asia/Kolkata", [r for r in rows if r[-1] >= day + sec(86400)])]:
        with server.connect(dbname) as conn:
            conn.execute(f"SET TimeZone = '{tz}'")
            for lo in range(0, len(part), 7):
                insert(conn, part[lo:lo + 7])
    results = {}
    for tz in ["UTC", "America/New_York", "Asia/Kolkata"]:
        with server.connect(dbname) as conn:
            conn.execute(f"SET TimeZone = '{tz}'")
            if tz == "UTC":
                check_all(conn, wins)
            results[tz] = {w.name: srt(read_view(conn, w.view)[1]) for w in wins}
            for r in results[tz]["d1"]:
                assert r["window_end"].astimezone(UTC) - r["window_start"].astimezone(UTC) \
                    == dt.timedelta(hours=24), (tz, r)
                assert r["window_start"].astimezone(UTC).time() == dt.time(0, 0), (tz, r)
    assert results["America/New_York"] == results["UTC"]
    assert results["Asia/Kolkata"] == results["UTC"]


def test_aggregate_text_is_case_and_space_tolerant(conn):
    """Not spelled out by the contract; what a PostgreSQL user would expect."""
    setup_stream(conn)
    w = create_window(conn, "ci", "tumbling", sec(60),
                      aggregates=["COUNT(*)", " sum( ival ) ", "Count(Distinct user_id) as D"])
    names, _ = read_view(conn, "public.ci")
    assert names == ["window_start", "window_end", "count", "sum_ival", "d", "is_final"]
    insert(conn, [ev(1, 1), ev(2, 2, user=2)])
    check_window(conn, w)


def test_window_stats_shape_and_counts(conn):
    setup_stream(conn, "0 seconds")
    wins = [create_window(conn, "st", "tumbling", sec(10)),
            create_window(conn, "sh", "hopping", sec(20), sec(10)),
            create_window(conn, "ss", "session", sec(10))]
    cur = conn.execute("SELECT * FROM cep.window_stats ORDER BY \"window\"")
    names = [d.name for d in cur.description]
    for c in ["window", "stream", "kind", "open_windows", "state_rows", "last_closed_end",
              "late_events"]:
        assert c in names, names
    stats = {d["window"]: d for d in (dict(zip(names, r)) for r in cur.fetchall())}
    assert set(stats) == {"st", "sh", "ss"}
    assert {(s["stream"], s["kind"]) for s in stats.values()} == \
        {("ev", "tumbling"), ("ev", "hopping"), ("ev", "session")}
    insert(conn, [ev(i, i * 3, user=i % 2) for i in range(1, 20)])
    insert(conn, [ev(100, 1)])   # late
    v = check_all(conn, wins)
    stats = {r[0]: r[1:] for r in conn.execute(
        "SELECT \"window\", open_windows, state_rows, late_events FROM cep.window_stats")}
    for w in wins:
        open_windows, state_rows, late = stats[w.name]
        assert open_windows == sum(not r["is_final"] for r in v[w.name]), (w.name, stats)
        assert state_rows >= 0 and late == 1, (w.name, stats)
    advance(conn)
    v = check_all(conn, wins)
    for r in conn.execute("SELECT \"window\", open_windows, last_closed_end "
                          "FROM cep.window_stats"):
        assert r[1] == 0, r
        assert r[2] == max(x["window_end"] for x in v[r[0]]), r


def test_retention_purges_only_windows_past_it(conn):
    setup_stream(conn, "0 seconds")
    aggs = ["count(*)", "sum(ival)"]
    short = create_window(conn, "short", "tumbling", sec(60), aggregates=aggs,
                          retention="5 minutes")
    short_s = create_window(conn, "short_s", "session", sec(30), aggregates=aggs,
                            retention="5 minutes")
    keep = create_window(conn, "keep", "hopping", sec(60), sec(30), aggregates=aggs,
                         retention="100 years")
    insert(conn, [ev(i, i * 20, user=i % 2) for i in range(1, 91)])   # 30 minutes
    before = check_all(conn, [short, short_s, keep])
    wm = read_watermark(conn)
    conn.execute("SELECT * FROM cep.run_maintenance()")
    check_window(conn, keep)
    for w in (short, short_s):
        after = read_view(conn, w.view)[1]
        horizon = wm - dt.timedelta(minutes=5)
        must = [r for r in before[w.name] if r["window_end"] >= horizon]
        assert srt(r for r in after if r["window_end"] >= horizon) == srt(must), w.name
        assert all(r in before[w.name] for r in after), w.name
        assert len(after) < len(before[w.name]), f"{w.name}: nothing was purged"
    # Ingest continues correctly into the open windows.
    insert(conn, [ev(200, 90 * 20 + 5, user=1), ev(201, 90 * 20 + 40, user=0)])
    for w in (short, short_s):
        after = read_view(conn, w.view)[1]
        ref = expected_rows(load_nonlate_events(conn), w.spec, read_watermark(conn),
                            include_key=w.spec.kind == "session")
        horizon = wm - dt.timedelta(minutes=5)
        assert srt(r for r in after if r["window_end"] >= horizon) == \
            srt(r for r in ref if r["window_end"] >= horizon), w.name


def test_hopping_retention_never_shows_a_partly_purged_window(conn):
    """Hopping windows share panes: purging keeps a pane that a later window still needs, and
    the windows that ended before the horizon disappear whole, never with some panes gone."""
    setup_stream(conn, "0 seconds")
    aggs = ["count(*)", "sum(ival)", "min(nval)", "max(fval)", "avg(ival)",
            "count(distinct region)"]
    hop = create_window(conn, "hop_short", "hopping", sec(60), sec(20), group_by=["user_id"],
                        aggregates=aggs, retention="5 minutes")
    odd = create_window(conn, "hop_odd", "hopping", sec(50), sec(20), aggregates=aggs,
                        retention="7 minutes")     # panes of 10 s: gcd(50, 20)
    insert(conn, [ev(i, i * 7, user=i % 3, region=REGIONS[i % 4], ival=i,
                     nval=Decimal(i) / 7, fval=i / 3) for i in range(1, 260)])   # 30 minutes
    before = check_all(conn, [hop, odd])
    wm = read_watermark(conn)
    items = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert items["purge_windows"] > 0
    for w, keep in ((hop, 5), (odd, 7)):
        horizon = wm - dt.timedelta(minutes=keep)
        after = read_view(conn, w.view)[1]
        # exactly the windows that end at or after the horizon, each one whole
        assert srt(after) == srt(r for r in before[w.name] if r["window_end"] >= horizon), \
            w.name
        assert len(after) < len(before[w.name]), f"{w.name}: nothing was purged"
    # the windows still open keep growing correctly
    insert(conn, [ev(900, 259 * 7 + 3, user=1, ival=5), ev(901, 259 * 7 + 30, user=2)])
    for w, keep in ((hop, 5), (odd, 7)):
        horizon = wm - dt.timedelta(minutes=keep)
        after = read_view(conn, w.view)[1]
        ref = expected_rows(load_nonlate_events(conn), w.spec, read_watermark(conn))
        ident = ["window_start"] + list(w.spec.group_by) + ["window_end"]
        problems = diff_rows([r for r in after if r["window_end"] >= horizon],
                             [r for r in ref if r["window_end"] >= horizon], ident,
                             w.spec.output_names + ["is_final"],
                             {a.name for a in w.spec.parsed if a.func == "avg"}, w.name)
        assert not problems, "\n".join(problems)


def test_compaction_merges_partials_of_closed_panes(server, dbname):
    """Each statement appends its own partial row per pane and group; cep.run_maintenance()
    merges those of closed panes (and only those), with the views unchanged, also while
    writers keep appending."""
    with server.connect(dbname) as conn:
        setup_stream(conn, "10 seconds")
        aggs = ["count(*)", "sum(ival)", "sum(nval)", "avg(fval)", "min(region)", "max(nval)",
                "count(nval)", "count(distinct user_id)"]
        wins = [create_window(conn, "g_tumble", "tumbling", sec(30), aggregates=aggs),
                create_window(conn, "r_hop", "hopping", sec(60), sec(15), group_by=["region"],
                              aggregates=aggs)]
        rng = random.Random(7)
        rows = [ev(i, i * 0.5, user=rng.randint(1, 5), region=rng.choice(REGIONS + [None]),
                   ival=rng.choice([None, rng.randint(-9, 9)]),
                   nval=rng.choice([None, Decimal(rng.randint(-999, 999)) / 100]),
                   fval=rng.choice([None, rng.random()])) for i in range(1, 301)]
        for i in range(0, 300, 3):              # many statements into the same panes
            insert(conn, rows[i:i + 3])
        before = check_all(conn, wins)
        panes = {w.name: f"cep.window_{conn.execute('SELECT window_id FROM cep.windows WHERE name = %s', (w.name,)).fetchone()[0]}_panes"
                 for w in wins}

        def extra_rows(name):
            """Rows beyond one per (pane, group), of closed and of open panes."""
            grp = "g_1" if name == "r_hop" else "NULL::text"
            return conn.execute(
                f"SELECT coalesce(sum(n - 1) FILTER (WHERE closed), 0), "
                f"coalesce(sum(n - 1) FILTER (WHERE NOT closed), 0) FROM ("
                f"SELECT p.pane_start + w.pane <= s.watermark AS closed, count(*) AS n "
                f"FROM {panes[name]} AS p, cep.windows AS w, cep.stream_stats AS s "
                f"WHERE w.name = %s GROUP BY 1, p.pane_start, {grp}) AS x", (name,)).fetchone()

        extra = {w.name: extra_rows(w.name) for w in wins}
        assert all(c > 0 and o > 0 for c, o in extra.values()), extra
        items = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
        assert items["compact_windows"] == sum(c for c, _ in extra.values())
        for w in wins:
            closed, still_open = extra_rows(w.name)
            assert closed == 0 and still_open == extra[w.name][1], (w.name, closed, still_open)
        after = check_all(conn, wins)
        for w in wins:       # (float sums may differ in the last bits: merged in another order)
            problems = diff_rows(after[w.name], before[w.name],
                                 ["window_start"] + list(w.spec.group_by) + ["window_end"],
                                 w.spec.output_names + ["is_final"],
                                 {a.name for a in w.spec.parsed if a.func == "avg"}, w.name)
            assert not problems, "\n".join(problems)
        # idempotent: nothing left to merge in the panes already compacted
        items = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
        assert items["compact_windows"] == 0

    # Writers append while maintenance compacts, again and again: the views stay exact.
    stop = threading.Event()
    errors: list = []

    def writer(k):
        try:
            with server.connect(dbname) as c:
                for j in range(60):
                    base = 1000 + k * 1000 + j * 5
                    insert(c, [ev(base + m, 150 + k * 0.3 + j * 0.5 + m * 0.1,
                                  user=(base + m) % 5, region=REGIONS[m % 4], ival=m)
                               for m in range(5)])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def maintainer():
        try:
            with server.connect(dbname) as c:
                while not stop.is_set():
                    c.execute("SELECT * FROM cep.run_maintenance()")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    m = threading.Thread(target=maintainer)
    m.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    m.join()
    assert not errors, errors
    with server.connect(dbname) as conn:
        conn.execute("SELECT * FROM cep.run_maintenance()")
        check_all(conn, wins)
        advance(conn)
        conn.execute("SELECT * FROM cep.run_maintenance()")
        final = check_all(conn, wins)
        assert all(r["is_final"] for rs in final.values() for r in rs)
        for w in wins:
            assert extra_rows(w.name) == (0, 0), w.name


def test_other_aggregate_column_types(conn):
    """min/max over text and timestamptz columns, sum/avg over integer, numeric and float8."""
    setup_stream(conn, "1 minute")
    aggs = ["min(region)", "max(region)", "min(created_at) AS first_at",
            "max(created_at) AS last_at", "count(distinct region)", "sum(fval)", "avg(ival)"]
    wins = [create_window(conn, "tt", "tumbling", sec(30), aggregates=aggs),
            create_window(conn, "th", "hopping", sec(30), sec(10), aggregates=aggs),
            create_window(conn, "ts", "session", sec(5), aggregates=aggs)]
    insert(conn, [ev(1, 1, region="west"), ev(2, 2, region="east", user=2),
                  ev(3, 29.999999, region="north"), ev(4, 30, region="south", user=2)])
    insert(conn, [ev(5, 3, region="alpha"), ev(6, 31, region="zulu", user=3)])
    v = check_all(conn, wins)
    r = row_of(v["tt"], at(0), at(30))
    assert (r["min_region"], r["max_region"], r["first_at"], r["last_at"]) == \
        ("alpha", "west", at(1), at(29.999999))


def test_timestamp_without_time_zone_stream(server, dbname):
    """A time column without time zone holds UTC wall-clock time, whatever the TimeZone of
    the writing or reading session."""
    with server.connect(dbname) as conn:
        conn.execute("CREATE TABLE public.nev (id bigint PRIMARY KEY, user_id integer NOT NULL, "
                     "region text, ival integer, nval numeric, fval float8, "
                     "created_at timestamp NOT NULL)")
        conn.execute("SELECT cep.create_stream('nev', 'public.nev', 'created_at', 'user_id', "
                     "allowed_lateness => '1 minute')")
        aggs = ["count(*)", "sum(ival)", "max(nval)"]
        wins = [create_window(conn, "nt", "tumbling", sec(7), aggregates=aggs, stream="nev"),
                create_window(conn, "nh", "hopping", dt.timedelta(hours=1), sec(1800),
                              aggregates=aggs, stream="nev"),
                create_window(conn, "ns", "session", sec(3), aggregates=aggs, stream="nev")]
    rng = random.Random(3)
    rows = [r[:-1] + (r[-1].replace(tzinfo=None),) for r in gen_events(rng, 120, 3, 60, 0.0)]
    with server.connect(dbname) as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        for lo in range(0, len(rows), 17):
            insert(conn, rows[lo:lo + 17], table="public.nev")
    events = [dict(zip(COLS, r[:-1] + (r[-1].replace(tzinfo=UTC),))) for r in rows]
    for tz in ["UTC", "America/New_York"]:
        with server.connect(dbname) as conn:
            conn.execute(f"SET TimeZone = '{tz}'")
            late = late_ids(conn, "nev")
            for w in wins:
                # Python reference only: the SQL oracle would bin the naive column in the
                # session's TimeZone.
                check_window(conn, w, [e for e in events if e["id"] not in late], oracle=False)


def test_create_window_rolled_back_leaves_nothing(conn):
    setup_stream(conn)
    before = _snapshot(conn)
    with pytest.raises(psycopg.errors.QueryCanceled):
        with conn.transaction():
            create_window(conn, "rb", "session", sec(10),
                          aggregates=["count(*)", "count(distinct ival)"])
            insert(conn, [ev(1, 1)])
            raise psycopg.errors.QueryCanceled("abort on purpose")
    assert _snapshot(conn) == before
    insert(conn, [ev(1, 1)])


def test_create_window_while_writers_run(server, dbname):
    """Events committed around the creation of a window are counted exactly once: whether the
    writing transaction began before, during or after create_window."""
    with server.connect(dbname) as conn:
        setup_stream(conn, "1 hour")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w):
        rng = random.Random(w)
        try:
            with server.connect(dbname, autocommit=False) as c:
                j = 0
                while not stop.is_set() or j < 20:
                    j += 1
                    insert(c, [(w * 100_000 + j * 10 + k, rng.randrange(4), "north", 1,
                                Decimal(1), 0.5, BASE + sec(rng.randint(0, 300)))
                               for k in range(rng.randint(1, 4))])
                    time.sleep(rng.random() * 0.01)
                    c.commit()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with server.connect(dbname) as conn:
        wins = [create_window(conn, "cw_t", "tumbling", sec(30),
                              aggregates=["count(*)", "sum(ival)"]),
                create_window(conn, "cw_s", "session", sec(10),
                              aggregates=["count(*)", "sum(ival)"])]
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    with server.connect(dbname) as conn:
        check_all(conn, wins)


def test_dump_and_restore_keeps_windows_working(server, dbname):
    """State tables, views and the catalog rows come back; ingest continues into them."""
    aggs = ["count(*)", "sum(nval)", "avg(ival)", "count(distinct user_id)"]
    with server.connect(dbname) as conn:
        setup_stream(conn, "30 seconds")
        wins = [create_window(conn, "dt", "tumbling", sec(30), group_by=["region"],
                              aggregates=aggs),
                create_window(conn, "dh", "hopping", sec(60), sec(20), aggregates=aggs),
                create_window(conn, "ds", "session", sec(10), aggregates=aggs)]
        rows = gen_events(random.Random(8), 200, 4, 30, 0.05)
        for lo in range(0, 150, 15):
            insert(conn, rows[lo:lo + 15])
        before = {k: srt(v) for k, v in check_all(conn, wins).items()}
    restored = server.new_database(template="template0", prefix="restored")
    try:
        dump = subprocess.run(["pg_dump", "-Fc", dbname], env=server.env(dbname),
                              capture_output=True, check=True).stdout
        res = subprocess.run(["pg_restore", "--exit-on-error", "-d", restored], input=dump,
                             env=server.env(restored), capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        with server.connect(restored) as conn:
            after = {w.name: srt(read_view(conn, w.view)[1]) for w in wins}
            assert after == before
            for lo in range(150, 200, 10):
                insert(conn, rows[lo:lo + 10])
            check_all(conn, wins)
            conn.execute("SELECT cep.drop_window('dh')")
            insert(conn, [ev(10_000, rows[-1][-1], user=1)])
            check_all(conn, [wins[0], wins[2]])
    finally:
        server.drop_database(restored)
