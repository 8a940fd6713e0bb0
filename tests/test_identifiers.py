"""Hostile but legal identifiers, end to end.

One database with a schema named `My "Schema"` and tables, columns, streams, windows, rules,
patterns, an absence detector, a recommender, a partitioned stream and a consumer whose names
need quoting everywhere (spaces, upper case, embedded double and single quotes, `;`, `$`, `.`,
`-`, a keyword). Every feature runs on a generated workload inserted in several statements,
and its results are checked against independent recomputations from the raw rows: window
views against GROUP BY (tumbling, hopping) and a Python sessionizer, rule hits, assessments and
blocked rows against the Python rule model (tests/rules_reference.py), live pattern matches
against cep.find_matches and the pattern rule's hits against the matches' last events, the
absence detector against a Python scan, recommendations against a Python cosine
recomputation, monitoring and cep.metrics() against table counts. Then every definition is
dropped by its hostile name, and DROP EXTENSION leaves the tables intact and insertable.
A second test uses columns, constants and names spelled like the generated code's own words
(cep_new_rows, v_watermark, p_to, @PID@ placeholders); a third dumps and restores the hostile
setup half way through its workload.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
import random
import re
import subprocess
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

import rules_reference as rr

UTC = dt.timezone.utc
SCHEMA = 'My "Schema"'
TX = "Trans Actions.2024"
OT = 'Other "T"'
CS = "Click Stream"
PT = 'Part "Tx" é'
PT += "y" * (45 - len(PT.encode()))           # the longest a partitioned table may have

S_TX = 'tx "main"'
S_OT = "other 's\""
S_CS = "clicks; x\\y"
S_PT = 'part "tx"'

W_TUMBLE = '"Tumble ""W"""'                    # parse_ident syntax: one quoted name
W_HOP = '"My ""Schema"""."Hop ""H"" 1"'        # schema-qualified
W_SESS = '"Sess; ""S"""'
P_TX = 'rise "n" fall'
P_OT = "flow 'x\""
A_OT = 'no "confirm"'
REC = 'rec "one"; --'
CONS = 'desk "1"\'s'

LOCS = ["Ber'lin", 'Os"lo', "La;gos", "Rome", None]
SELS = ["a", "b", None]
TX_KINDS = {"Amount $": "numeric", "loc;ation": "text", "select": "text"}
KEYS = ['k"0', "k'1", "k;2", "K 3", "k\\4", "k.5"]
ACTS = ["login", "browse", "browse", "pay", "confirm", "logout"]
ITEMS = [f"it'em\"{i}" for i in range(12)]
WEIGHTS = {"vi'ew": 1, "l;ike": 3, 'bu"y': 10}
GAP = dt.timedelta(minutes=2)
ABSENCE_WITHIN = dt.timedelta(minutes=5)


def qn(name: str) -> sql.Composed:
    return sql.Identifier(SCHEMA, name)


def epoch_bin(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    return t - (t - epoch) % step


def insert(conn, table: str, cols: list[str], rows: list[tuple]) -> None:
    """One multi-row INSERT statement."""
    values = sql.SQL(", ").join(
        sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in r)) for r in rows)
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
        qn(table), sql.SQL(", ").join(sql.Identifier(c) for c in cols), values))


# -- schema and definitions ------------------------------------------------------------------

def make_tables(conn) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("""
        CREATE TABLE {} (
            "Id" bigserial PRIMARY KEY,
            "user id" integer NOT NULL,
            "Created At" timestamptz NOT NULL,
            "Amount $" numeric(12, 2) NOT NULL,
            "loc;ation" text,
            "select" text,
            "Status'" text NOT NULL DEFAULT 'ok'
        )""").format(qn(TX)))
    conn.execute(sql.SQL("""
        CREATE TABLE {} (
            "Id" bigserial PRIMARY KEY,
            "Key""Col" text NOT NULL,
            "Created At" timestamptz NOT NULL,
            "Val ue" numeric NOT NULL,
            "Act'ion" text NOT NULL
        )""").format(qn(OT)))
    conn.execute(sql.SQL("""
        CREATE TABLE {} (
            "Id" bigserial PRIMARY KEY,
            "User Id" integer NOT NULL,
            "Item-Id" text NOT NULL,
            "Act""ion" text NOT NULL,
            "Created At" timestamptz NOT NULL
        )""").format(qn(CS)))
    conn.execute(sql.SQL("""
        CREATE TABLE {} (
            "Id" bigint NOT NULL,
            "user id" integer NOT NULL,
            "Amount $" numeric NOT NULL,
            "Created At" timestamptz NOT NULL,
            PRIMARY KEY ("Id", "Created At")
        ) PARTITION BY RANGE ("Created At")""").format(qn(PT)))


def regclass(table: str) -> str:
    return sql.Identifier(SCHEMA, table).as_string(None)


def define_everything(conn, t0: dt.datetime) -> dict[str, rr.Rule]:
    ex = conn.execute
    ex("SELECT cep.create_consumer(%s)", (CONS,))
    ex("SELECT cep.create_stream(%s, %s::regclass, 'Created At', 'user id')",
       (S_TX, regclass(TX)))
    ex("SELECT cep.create_stream(%s, %s::regclass, 'Created At', 'Key\"Col', mode => 'async')",
       (S_OT, regclass(OT)))
    ex("SELECT cep.create_stream(%s, %s::regclass, 'Created At', 'User Id')",
       (S_CS, regclass(CS)))
    ex("SELECT cep.create_stream(%s, %s::regclass, 'Created At', 'user id', 'Id', "
       "max_future_skew => '3 days')", (S_PT, regclass(PT)))
    ex("SELECT cep.partition_stream(%s, '1 day', premake => 3, retention => '30 days')", (S_PT,))

    ex("SELECT cep.create_window(%s, %s, 'tumbling', '1 minute', group_by => %s, "
       "aggregates => %s)",
       (W_TUMBLE, S_TX, ["user id"],
        ['count(*)', 'sum("Amount $")', 'avg("Amount $") AS "A""vg"', 'min("Amount $")',
         'max("Amount $")', 'count(distinct "loc;ation")', 'count("select")']))
    ex("SELECT cep.create_window(%s, %s, 'hopping', '5 minutes', '1 minute', group_by => %s, "
       "aggregates => %s)",
       (W_HOP, S_TX, ["select"], ['count(*) AS "N ""all"""', 'sum("Amount $") AS "Tot;al"']))
    ex("SELECT cep.create_window(%s, %s, 'session', '2 minutes', "
       "aggregates => %s)", (W_SESS, S_OT, ['count(*)', 'sum("Val ue") AS "s""um"']))

    ex("SELECT cep.create_pattern(%s, %s, 'a b{2}', %s, contiguity => 'strict')",
       (P_TX, S_TX, json.dumps({
           "a": '"Amount $" > 600 AND "loc;ation" IS DISTINCT FROM \'x;y\'',
           "b": '"Amount $" < PREV("Amount $") AND "Amount $" < a."Amount $"'})))
    ex("SELECT cep.create_pattern(%s, %s, 'l b* p', %s, within => '10 minutes')",
       (P_OT, S_OT, json.dumps({
           "l": "\"Act'ion\" = 'login'",
           "b": "\"Act'ion\" = 'browse'",
           "p": "\"Act'ion\" = 'pay' AND \"Val ue\" > l.\"Val ue\""})))
    ex("SELECT cep.create_absence(%s, %s, %s, %s, %s)",
       (A_OT, S_OT, "\"Act'ion\" = 'pay'", "\"Act'ion\" = 'confirm'", ABSENCE_WITHIN))
    ex("SELECT cep.create_recommender(%s, %s, 'User Id', 'Item-Id', 'Act\"ion', weights => %s)",
       (REC, S_CS, json.dumps(WEIGHTS)))

    tod_from = (t0 + dt.timedelta(minutes=25)).strftime("%H:%M")
    tod_to = (t0 + dt.timedelta(minutes=45)).strftime("%H:%M")
    conditions = {
        'big "amt"': {"field": "Amount $", "op": ">", "value": 900},
        "loc 'in'": {"field": "loc;ation", "op": "in", "value": ["Ber'lin", 'Os"lo']},
        "count; 10m": {"metric": "count", "window": "10 minutes", "op": ">", "value": 6},
        "count sel": {"metric": "count", "field": "select", "window": "30 seconds",
                      "op": ">=", "value": 2},
        "sum $": {"metric": "sum", "field": "Amount $", "window": "10 minutes", "op": ">",
                  "value": 3000},
        "avg $": {"metric": "avg", "field": "Amount $", "window": "5 minutes", "op": ">",
                  "value": 600},
        "min $": {"metric": "min", "field": "Amount $", "window": "30 minutes", "op": "<",
                  "value": 20},
        "max $": {"metric": "max", "field": "Amount $", "window": "2 minutes", "op": ">=",
                  "value": 950},
        "distinct loc": {"metric": "count_distinct", "field": "loc;ation",
                         "window": "20 minutes", "op": ">=", "value": 3},
        "changed loc": {"changed": "loc;ation", "window": "3 minutes"},
        "night\"ish": {"time_of_day": {"from": tod_from, "to": tod_to, "timezone": "UTC"}},
        "z $": {"anomaly": "zscore", "field": "Amount $", "threshold": 1.5, "min_samples": 8},
        "all/not": {"all": [{"field": "select", "op": "=", "value": "a"},
                            {"not": {"field": "Amount $", "op": "<", "value": 100}}]},
        "any": {"any": [{"field": "select", "op": "not_in", "value": ["a", "b"]},
                        {"field": "Amount $", "op": "<=", "value": 15}]},
    }
    scores = [0.6, 0.1, 0.3, 0.05, 0.2, 0.1, 0.05, 0.05, 0.2, 0.3, 0.1, 0.4, 0.1, 0.05]
    rules = {}
    for (name, cond), score in zip(conditions.items(), scores):
        rid = ex("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) "
                 "VALUES (%s, %s, 'threshold', %s, %s) RETURNING rule_id",
                 (S_TX, name, json.dumps(cond), score)).fetchone()[0]
        rules[name] = rr.Rule(rid, name, rr.loads(json.dumps(cond)), score)
    # The pattern reference is a shadow rule: the model does not evaluate patterns.
    ex("INSERT INTO cep.rules (stream, name, kind, condition, risk_score, mode) "
       "VALUES (%s, 'pat \"ref\"', 'pattern', %s, 0.5, 'shadow')",
       (S_TX, json.dumps({"pattern": P_TX})))
    ex("SELECT cep.set_risk_policy(%s, 'sum', block => 0.9, block_action => %s)",
       (S_TX, json.dumps({"set": {"Status'": "blocked"}})))
    return rules


# -- workload --------------------------------------------------------------------------------

def tx_statements(rng, t0, n_stmt=6, per=90):
    """Statements of (id, user, time, amount, location, select), disjoint increasing time
    ranges (nothing late), rows shuffled within a statement."""
    out, next_id = [], 1
    for k in range(n_stmt):
        lo = t0 + dt.timedelta(minutes=10 * k)
        rows = []
        for _ in range(per):
            t = lo + dt.timedelta(microseconds=rng.randrange(600_000_000))
            amount = Decimal(rng.choice([rng.randint(1, 3000), rng.randint(1, 99900)])) / 100
            if rng.random() < 0.05:
                amount = Decimal(rng.randint(95000, 120000)) / 100
            rows.append((next_id, rng.randint(1, 8), t, amount, rng.choice(LOCS),
                         rng.choice(SELS)))
            next_id += 1
        rng.shuffle(rows)
        out.append(rows)
    return out


def ot_statements(rng, t0, n_stmt=5, per=60):
    out, next_id = [], 1
    for k in range(n_stmt):
        lo = t0 + dt.timedelta(minutes=12 * k)
        rows = []
        for _ in range(per):
            t = lo + dt.timedelta(microseconds=rng.randrange(720_000_000))
            rows.append((next_id, rng.choice(KEYS), t, Decimal(rng.randint(1, 500)),
                         rng.choice(ACTS)))
            next_id += 1
        out.append(rows)
    return out


def cs_statements(rng, t0, n_stmt=3, per=120):
    out, next_id = [], 1
    acts = list(WEIGHTS) + ["ign'ored"]
    for k in range(n_stmt):
        rows = []
        for _ in range(per):
            u = rng.randint(1, 25)
            item = ITEMS[(u % 4) * 3 + rng.randrange(3)] if rng.random() < 0.7 \
                else rng.choice(ITEMS)
            t = t0 + dt.timedelta(minutes=10 * k, microseconds=rng.randrange(600_000_000))
            rows.append((next_id, u, item, rng.choice(acts), t))
            next_id += 1
        out.append(rows)
    return out


# -- independent recomputations --------------------------------------------------------------

def sessions(rows, gap):
    """{(key, start): (end, count, sum)} of session windows per key, from raw rows."""
    by_key = collections.defaultdict(list)
    for r in rows:
        by_key[r[1]].append(r)
    out = {}
    for key, evs in by_key.items():
        evs.sort(key=lambda r: (r[2], r[0]))
        cur = None
        for r in evs:
            if cur is None or r[2] - cur[2] > gap:
                if cur is not None:
                    out[(key, cur[0])] = (cur[2] + gap, cur[3], cur[4])
                cur = [r[2], None, r[2], 0, Decimal(0)]
            cur[2] = r[2]
            cur[3] += 1
            cur[4] += r[3]
        out[(key, cur[0])] = (cur[2] + gap, cur[3], cur[4])
    return out


def absences(rows, within, start=lambda r: r[4] == "pay", expected=lambda r: r[4] == "confirm"):
    """Event ids of start events (rows (id, key, time, ...)) with no expected event of the same
    key within WITHIN after."""
    out = set()
    for r in rows:
        if not start(r):
            continue
        if not any(c[1] == r[1] and expected(c) and (c[2], c[0]) > (r[2], r[0])
                   and c[2] - r[2] <= within for c in rows):
            out.add(r[0])
    return out


def recommendations(rows, user, weights=WEIGHTS):
    """{item: score} of the seed's algorithm over all rows (all within the horizon)."""
    w = collections.defaultdict(float)
    for _, u, i, a, _t in rows:
        if weights.get(a, 0) > 0:
            w[(u, i)] += weights[a]
    by_item = collections.defaultdict(dict)
    for (u, i), v in w.items():
        by_item[i][u] = v
    norm = {i: math.sqrt(sum(v * v for v in us.values())) for i, us in by_item.items()}

    def cos(i, j):
        dot = sum(v * by_item[j].get(u, 0.0) for u, v in by_item[i].items())
        return dot / (norm[i] * norm[j])

    mine = {i: v for (u, i), v in w.items() if u == user}
    scores = {}
    for i in by_item:
        if i in mine:
            continue
        s = sum(v * cos(i, j) for j, v in mine.items())
        if s > 0:
            scores[i] = s
    return scores


PROM_LINE = re.compile(r'^([a-z_]+)(?:\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$')
PROM_LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """Prometheus text format -> {(name, frozenset(labels)): value}; fails on a bad line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = PROM_LINE.match(line)
        assert m, f"unparsable metrics line {line!r}"
        labels = frozenset(
            (k, re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), v))
            for k, v in PROM_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


GENERATED_CHECK = """
SELECT p.oid::regprocedure::text AS fn, c.line
FROM pg_catalog.pg_proc AS p
LEFT JOIN cep.streams AS s ON s.ingest_function = p.proname
LEFT JOIN cep.streams AS r ON format('_replica_%s', r.stream_id) = p.proname
CROSS JOIN LATERAL public.plpgsql_check_function(
    p.oid::regprocedure, coalesce(s.source, r.source, 0),
    newtable => CASE WHEN s.source IS NOT NULL THEN 'cep_new_rows' END,
    fatal_errors => false, extra_warnings => true, performance_warnings => false,
    security_warnings => true
) AS c(line)
WHERE p.pronamespace = 'cep'::regnamespace
    AND p.proname ~ '^_(ingest|process|pattern|replica)_[0-9]+$'
"""


def check_generated(conn, expected: int) -> None:
    """plpgsql_check finds nothing in the generated functions (EXPECTED of them)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace "
                        "AND proname ~ '^_(ingest|process|pattern|replica)_[0-9]+$'"
                        ).fetchone()[0] \
        == expected
    findings = conn.execute(GENERATED_CHECK).fetchall()
    assert findings == [], "\n".join(f"{fn}: {line}" for fn, line in findings)


# -- the test --------------------------------------------------------------------------------

def test_hostile_identifiers_end_to_end(conn):
    rng = random.Random(20240)
    ex = conn.execute
    now = ex("SELECT now()").fetchone()[0].astimezone(UTC)
    t0 = epoch_bin(now - dt.timedelta(hours=3), dt.timedelta(minutes=1))
    make_tables(conn)
    rules = define_everything(conn, t0)

    # -- workload --
    model = rr.Stream(TX_KINDS, key="user id", time="Created At", ident="Id")
    for r in rules.values():
        model.add_rule(r)
    model.policy = rr.Policy(block_action={"set": {"Status'": "blocked"}})
    tx_cols = ["Id", "user id", "Created At", "Amount $", "loc;ation", "select"]
    tx_stmts = tx_statements(rng, t0)
    for rows in tx_stmts:
        insert(conn, TX, tx_cols, rows)
        model.ingest([dict(zip(tx_cols, r)) for r in rows])
    ot_cols = ["Id", "Key\"Col", "Created At", "Val ue", "Act'ion"]
    ot_stmts = ot_statements(rng, t0)
    for k, rows in enumerate(ot_stmts):
        insert(conn, OT, ot_cols, rows)
        if k == 2:
            assert ex("SELECT cep.process_stream(%s)", (S_OT,)).fetchone()[0] == 180
    cs_cols = ["Id", "User Id", "Item-Id", "Act\"ion", "Created At"]
    cs_stmts = cs_statements(rng, now - dt.timedelta(minutes=40))
    for rows in cs_stmts:
        insert(conn, CS, cs_cols, rows)
    day = epoch_bin(now, dt.timedelta(days=1)) + dt.timedelta(days=1)
    pt_rows = [(i, rng.randint(1, 5), Decimal(rng.randint(1, 9999)) / 100,
                day + dt.timedelta(seconds=rng.randrange(43200))) for i in range(1, 61)]
    pt_rows.sort(key=lambda r: r[3])          # two statements, the second not late
    insert(conn, PT, ["Id", "user id", "Amount $", "Created At"], pt_rows[:30])
    insert(conn, PT, ["Id", "user id", "Amount $", "Created At"], pt_rows[30:])
    for table in (TX, OT, CS):
        ex(sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'Id'), 1000)").format(
            sql.Literal(regclass(table))))

    backlog = ex("SELECT backlog_events FROM cep.stream_stats WHERE stream = %s",
                 (S_OT,)).fetchone()[0]
    assert backlog == 120
    assert ex("SELECT cep.process_stream(%s)", (S_OT,)).fetchone()[0] == 120
    for s in (S_TX, S_OT, S_PT):
        ex("SELECT cep.advance_watermark(%s)", (s,))
    # Not to infinity: that would expire every recommender weight.
    ex("SELECT cep.advance_watermark(%s, %s)", (S_CS, now))
    ex("SELECT * FROM cep.run_maintenance()").fetchall()

    # -- windows = GROUP BY over the raw rows --
    got = ex(sql.SQL(
        'SELECT window_start, window_end, "user id", count, "sum_Amount $", "A""vg", '
        '"min_Amount $", "max_Amount $", "count_distinct_loc;ation", count_select, is_final '
        "FROM {} ORDER BY 1, 3").format(qn("Tumble \"W\""))).fetchall()
    want = ex(sql.SQL(
        "SELECT date_bin('1 minute', \"Created At\", '1970-01-01 00:00+00') AS ws, "
        "date_bin('1 minute', \"Created At\", '1970-01-01 00:00+00') + interval '1 minute', "
        '"user id", count(*), sum("Amount $"), avg("Amount $"), min("Amount $"), '
        'max("Amount $"), count(DISTINCT "loc;ation"), count("select"), true '
        "FROM {} GROUP BY 1, 2, 3 ORDER BY 1, 3").format(qn(TX))).fetchall()
    assert got == want and len(got) > 100
    got = ex(sql.SQL('SELECT window_start, "select", "N ""all""", "Tot;al" FROM {} '
                     'ORDER BY 1, 2 NULLS FIRST').format(qn('Hop "H" 1'))).fetchall()
    want = ex(sql.SQL(
        "SELECT ws, \"select\", count(*), sum(\"Amount $\") FROM {} "
        "CROSS JOIN LATERAL generate_series(date_bin('1 minute', \"Created At\", "
        "'1970-01-01 00:00+00') - interval '4 minutes', \"Created At\", interval '1 minute') "
        "AS ws GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST").format(qn(TX))).fetchall()
    assert got == want
    # the tumbling window's mergeable partials, merged alone, equal its view
    merged = [(ws, json.loads(g), json.loads(a, parse_float=Decimal)) for ws, g, a in ex(
        "SELECT window_start, group_values::text, aggregates::text "
        "FROM cep.merge_window_partials(ARRAY[cep.window_partials(%s)])", (W_TUMBLE,))]
    view = ex(sql.SQL('SELECT window_start, "user id", count, "sum_Amount $", "A""vg" FROM {}')
              .format(qn('Tumble "W"'))).fetchall()
    got_m = sorted((ws, g["user id"], a["count"], a["sum_Amount $"], a['A"vg'])
                   for ws, g, a in merged)
    assert got_m == sorted(view)
    # slice publications by a quoted key column: every row in exactly one slice
    pubs = ex("SELECT publication, row_filter FROM cep.create_slice_publications("
              "%s::regclass, 'user id', 3, prefix => 'pub \"tx\"')", (regclass(TX),)).fetchall()
    assert [p for p, _ in pubs] == [f'pub "tx"_{i}_of_3' for i in range(3)]
    in_slices = sum(ex(sql.SQL("SELECT count(*) FROM {} WHERE " + f).format(qn(TX))).fetchone()[0]
                    for _, f in pubs)
    assert in_slices == sum(map(len, tx_stmts))
    for p, _ in pubs:
        ex(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(p)))
    ot_rows = [r for rows in ot_stmts for r in rows]
    got = {(k, ws): (we, n, s) for ws, we, k, n, s in ex(sql.SQL(
        'SELECT window_start, window_end, "Key""Col", count, "s""um" FROM {}').format(
            qn('Sess; "S"')))}
    assert got == sessions([(r[0], r[1], r[2], r[3]) for r in ot_rows], GAP)

    # -- rules against the Python model --
    hits = collections.defaultdict(set)
    shadow_hits = set()
    got_blocked = set()
    for eid, trig, shadow, blocked in ex(
            "SELECT event_id, triggered_rules, shadow_rules, blocked "
            "FROM cep.risk_assessments WHERE stream = %s", (S_TX,)):
        for rid in trig:
            hits[rid].add(eid)
        shadow_hits.update(shadow)
        if blocked:
            got_blocked.add(eid)
    for name, r in rules.items():
        want_ids = {a.event_id for a in model.assessments.values() if r.rule_id in a.fired}
        assert hits[r.rule_id] == want_ids, name
        assert want_ids, f"rule {name} never fired: the workload does not exercise it"
    # cep.evaluate_rules reads the quoted fields of a JSON event like the model does
    last_t = max(r[2] for rows in tx_stmts for r in rows)
    probe = {"Id": 10 ** 9, "user id": 3, "Created At": last_t + dt.timedelta(seconds=1),
             "Amount $": Decimal("950"), "loc;ation": "Ber'lin", "select": "a"}
    fired_now = {rid: t for rid, t in ex(
        "SELECT rule_id, triggered FROM cep.evaluate_rules(%s, %s)",
        (S_TX, json.dumps({k: v.isoformat() if isinstance(v, dt.datetime) else
                           float(v) if isinstance(v, Decimal) else v
                           for k, v in probe.items() if k != "Id"})))}
    want_now = model.evaluate(probe, [r for r in rules.values()])
    assert {rid: fired_now[rid] for rid in want_now} == want_now and any(want_now.values())
    # and the plain field rules once more, as counts over the raw rows in SQL
    for name, where in (('big "amt"', '"Amount $" > 900'),
                        ("loc 'in'", '"loc;ation" IN (\'Ber\'\'lin\', \'Os"lo\')')):
        n = ex(sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(qn(TX))).fetchone()[0]
        assert len(hits[rules[name].rule_id]) == n, name
    assert got_blocked == model.blocked_ids() and got_blocked
    blocked_rows = {i for (i,) in ex(sql.SQL(
        "SELECT \"Id\" FROM {} WHERE \"Status'\" = 'blocked'").format(qn(TX)))}
    assert blocked_rows == got_blocked
    stats = dict(ex("SELECT rule_name, hits FROM cep.rule_stats WHERE stream = %s", (S_TX,)))
    for name, r in rules.items():
        assert stats[name] == model.hits[r.rule_id], name

    # -- patterns: live = find_matches; the pattern rule fires at the matches' last events --
    for p in (P_TX, P_OT):
        live = sorted(ex("SELECT partition_key, first_time, last_time, event_ids, classifiers "
                         "FROM cep.matches WHERE pattern = %s", (p,)).fetchall())
        batch = sorted(ex("SELECT * FROM cep.find_matches(%s)", (p,)).fetchall())
        assert live == batch and live, p
    pat_rule = ex("SELECT rule_id FROM cep.rules WHERE name = 'pat \"ref\"'").fetchone()[0]
    fired = {eid for (eid,) in ex(
        "SELECT event_id FROM cep.risk_assessments WHERE %s = ANY (shadow_rules)", (pat_rule,))}
    last = {ids[-1] for (ids,) in ex(
        "SELECT event_ids FROM cep.matches WHERE pattern = %s", (P_TX,))}
    assert fired == last
    got_abs = {ids[0] for (ids,) in ex(
        "SELECT event_ids FROM cep.matches WHERE pattern = %s", (A_OT,))}
    assert got_abs == absences(ot_rows, ABSENCE_WITHIN) and got_abs

    # -- recommender against a Python recomputation; unchanged by a no-op maintenance --
    cs_rows = [r for rows in cs_stmts for r in rows]
    users = sorted({r[1] for r in cs_rows})[:6]
    before = {}
    for u in users:
        recs = ex("SELECT item_id, score FROM cep.recommend(%s, %s, 5)", (REC, str(u))).fetchall()
        want = recommendations(cs_rows, u)
        assert recs, u
        assert len(recs) == min(5, len(want))
        for item, score in recs:
            assert abs(score - want[item]) < 1e-9
            assert not any(v > score + 1e-9 for i, v in want.items()
                           if i not in {x for x, _ in recs})
        before[u] = recs
    sim = ex("SELECT * FROM cep.similar_items(%s, %s, 3)", (REC, ITEMS[0])).fetchall()
    assert sim
    ex("SELECT * FROM cep.run_maintenance()").fetchall()
    for u in users:
        assert ex("SELECT item_id, score FROM cep.recommend(%s, %s, 5)",
                  (REC, str(u))).fetchall() == before[u]

    # -- consumer sees every alert --
    n_alerts = ex("SELECT count(*) FROM cep.alerts").fetchone()[0]
    polled = ex("SELECT alert_id FROM cep.poll_alerts(%s, 100000)", (CONS,)).fetchall()
    assert len(polled) == n_alerts > 0
    ex("SELECT cep.ack_alerts(%s, %s)", (CONS, [a for (a,) in polled]))
    assert ex("SELECT pending FROM cep.consumer_stats WHERE consumer = %s",
              (CONS,)).fetchone()[0] == 0

    # -- monitoring --
    counts = {S_TX: sum(map(len, tx_stmts)), S_OT: len(ot_rows), S_CS: len(cs_rows),
              S_PT: len(pt_rows)}
    for s, table in ((S_TX, TX), (S_OT, OT), (S_CS, CS), (S_PT, PT)):
        assert ex(sql.SQL("SELECT count(*) FROM {}").format(qn(table))).fetchone()[0] \
            == counts[s]
    assert dict(ex("SELECT stream, events_total FROM cep.stream_stats")) == counts
    assert dict(ex("SELECT stream, late_events FROM cep.stream_stats")) == dict.fromkeys(
        counts, 0)
    for s, n in counts.items():
        assert ex("SELECT sum(events) FROM cep.timeline(%s, '1 minute', '1 hour')",
                  (s,)).fetchone()[0] == n
    assert ex("SELECT streams FROM cep.dashboard").fetchone()[0] == len(counts)
    assert {w for (w,) in ex('SELECT "window" FROM cep.window_stats')} == {
        W_TUMBLE, W_HOP, W_SESS}
    pstats = dict(ex("SELECT pattern, matches FROM cep.pattern_stats"))
    for p in (P_TX, P_OT, A_OT):
        assert pstats[p] == ex("SELECT count(*) FROM cep.matches WHERE pattern = %s",
                               (p,)).fetchone()[0]
    assert [r for (r,) in ex("SELECT recommender FROM cep.recommender_stats")] == [REC]
    metrics = parse_metrics(ex("SELECT cep.metrics()").fetchone()[0])
    for s, n in counts.items():
        assert metrics[("pg_cep_events_total", frozenset({("stream", s)}))] == n
    assert ("pg_cep_consumer_pending", frozenset({("consumer", CONS)})) in metrics
    parts = {r for (r,) in ex(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (regclass(PT),))}
    assert f"{PT}_p{day:%Y%m%d}_000000" in parts and f"{PT}_cep_default" in parts

    # -- a name that cannot fit: clear errors --
    with pytest.raises(psycopg.errors.lookup("42622")):
        ex("SELECT cep.create_window(%s, %s, 'tumbling', '1 minute')",
           ('"' + 'W x ""' * 20 + '"', S_TX))
    with pytest.raises(psycopg.errors.lookup("42622")):
        ex("SELECT cep.create_window('w', %s, 'tumbling', '1 minute', aggregates => %s)",
           (S_TX, ['count(*) AS "' + 'A l""' * 20 + '"']))
    long_t = 'Long "Table" ' + "x" * 40
    ex(sql.SQL('CREATE TABLE {} ("Id" bigint, "t" timestamptz NOT NULL) '
               'PARTITION BY RANGE ("t")').format(qn(long_t)))
    ex("SELECT cep.create_stream('long', %s::regclass, 't', id_column => 'Id')",
       (regclass(long_t),))
    with pytest.raises(psycopg.errors.lookup("42622")):
        ex("SELECT cep.partition_stream('long', '1 day')")
    ex("SELECT cep.drop_stream('long')")

    # 4 ingest functions, 1 processing function, 2 matchers (absence detectors have none)
    check_generated(conn, 7)
    # no placeholder left in a matcher; with names that do not spell it, cep._bind_rows is the
    # plain replace of cep_new_rows it stands for
    assert ex("SELECT count(*) FROM pg_proc WHERE proname ~ '^_pattern_[0-9]+$' "
              "AND prosrc ~ '@[A-Z_]+@'").fetchone()[0] == 0
    assert ex("SELECT bool_and(cep._bind_rows(cep._compile_ingest(s.stream_id), 'x AS y') "
              "= replace(cep._compile_ingest(s.stream_id), 'cep_new_rows', 'x AS y')) "
              "FROM cep.streams AS s").fetchone()[0]

    # -- drop everything by its hostile name --
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):
        ex("SELECT cep.drop_pattern(%s)", (P_TX,))
    ex("DELETE FROM cep.rules WHERE stream = %s", (S_TX,))
    for p in (P_TX, P_OT, A_OT):
        ex("SELECT cep.drop_pattern(%s)", (p,))
    for w in (W_TUMBLE, W_HOP, W_SESS):
        ex("SELECT cep.drop_window(%s)", (w,))
    ex("SELECT cep.drop_recommender(%s)", (REC,))
    ex("SELECT cep.drop_consumer(%s)", (CONS,))
    for s in (S_TX, S_OT):
        ex("SELECT cep.drop_stream(%s)", (s,))
    assert ex("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace "
              "AND relkind = 'v'", (sql.Identifier(SCHEMA).as_string(None),)).fetchone()[0] == 0
    assert ex("SELECT count(*) FROM cep.streams").fetchone()[0] == 2
    ex("DROP EXTENSION pg_cep")
    assert ex("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()[0] == 0
    for s, table in ((S_TX, TX), (S_OT, OT), (S_CS, CS), (S_PT, PT)):
        assert ex(sql.SQL("SELECT count(*) FROM {}").format(qn(table))).fetchone()[0] \
            == counts[s]
    insert(conn, TX, ["user id", "Created At", "Amount $"], [(1, now, Decimal(1))])
    insert(conn, OT, ["Key\"Col", "Created At", "Val ue", "Act'ion"], [("k", now, 1, "x")])
    insert(conn, CS, ["User Id", "Item-Id", "Act\"ion", "Created At"], [(1, "i", "v", now)])
    insert(conn, PT, ["Id", "user id", "Amount $", "Created At"], [(999, 1, 1, day)])
    assert ex(sql.SQL("SELECT count(*) FROM {}").format(qn(PT))).fetchone()[0] \
        == counts[S_PT] + 1


# -- names that spell the generated code's own words -------------------------------------------

NASTY_DDL = """
CREATE TABLE public.t2 (
    id bigint PRIMARY KEY,
    k integer NOT NULL,
    created_at timestamptz NOT NULL,
    cep_new_rows numeric NOT NULL,
    v_watermark text,
    p_to text,
    p_find boolean,
    p_own bigint,
    "x FROM public.t2 AS s" text
)
"""
N_PATTERN = "p @SID@ @NAME@ '@PID@"
N_ABSENCE = "abs @STREAM@"
N_WEIGHTS = {"cep_new_rows": 2, "FROM cep_new_rows": 1, "@PID@": 5}


def test_names_that_spell_generated_code(conn):
    """Columns, constants, pattern names and conditions spelled like the transition table
    (cep_new_rows), the generated code's variables and parameters (v_watermark, p_to, p_find,
    p_own), its placeholders (@PID@, @NAME@, …) or its own FROM clause: every feature still
    gives the results of an independent recomputation, in synchronous and asynchronous mode."""
    rng = random.Random(77)
    ex = conn.execute
    now = ex("SELECT now()").fetchone()[0].astimezone(UTC)
    t0 = epoch_bin(now - dt.timedelta(hours=2), dt.timedelta(minutes=1))
    ex(NASTY_DDL)
    cols = ["id", "k", "created_at", "cep_new_rows", "v_watermark", "p_to", "p_find", "p_own",
            "x FROM public.t2 AS s"]
    first = [(i, rng.randint(1, 4), t0 + dt.timedelta(seconds=20 * i + rng.random()),
              Decimal(rng.randint(1, 50)), rng.choice(["w1", "w2", "cep_new_rows"]),
              rng.choice(list(N_WEIGHTS) + ["other"]), rng.choice([True, False]), i,
              rng.choice(["ok", "no", None])) for i in range(1, 151)]

    def insert_plain(rows):
        conn.execute(sql.SQL("INSERT INTO public.t2 ({}) VALUES {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            sql.SQL(", ").join(sql.SQL("({})").format(
                sql.SQL(", ").join(sql.Literal(v) for v in r)) for r in rows)))
    insert_plain(first[:30])                 # before any definition: backfills read them
    ex("SELECT cep.create_stream('s', 'public.t2', 'created_at', 'k')")
    ex("SELECT cep.create_window('w_t', 's', 'tumbling', '5 minutes', group_by => %s, "
       "aggregates => %s)", (["v_watermark"], ["count(*)", "sum(cep_new_rows)",
                                                "count(distinct p_to)", "max(p_own)"]))
    ex("SELECT cep.create_window('w_s', 's', 'session', '3 minutes', group_by => %s, "
       "aggregates => %s)", (["v_watermark"], ["count(*)", "sum(cep_new_rows)"]))
    ex("SELECT cep.create_recommender('r', 's', 'k', 'v_watermark', 'p_to', weights => %s)",
       (json.dumps(N_WEIGHTS),))
    conds = {
        "r_sum": {"metric": "sum", "field": "cep_new_rows", "window": "5 minutes", "op": ">",
                  "value": 60},
        "r_lit": {"field": "v_watermark", "op": "=", "value": "cep_new_rows"},
        "r_chg": {"changed": "p_to", "window": "10 minutes"},
        "r_in": {"field": "x FROM public.t2 AS s", "op": "in", "value": ["ok"]},
    }
    model = rr.Stream({"cep_new_rows": "numeric", "v_watermark": "text", "p_to": "text",
                       "x FROM public.t2 AS s": "text"}, key="k", time="created_at", ident="id")
    for name, cond in conds.items():
        rid = ex("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) "
                 "VALUES ('s', %s, 'threshold', %s, 0.5) RETURNING rule_id",
                 (name, json.dumps(cond))).fetchone()[0]
        model.add_rule(rr.Rule(rid, name, rr.loads(json.dumps(cond)), 0.5))
    ex("SELECT cep.create_pattern(%s, 's', 'a b', %s)", (N_PATTERN, json.dumps({
        "a": "p_to = 'FROM cep_new_rows' AND v_watermark <> '@PID@' AND NOT (p_find AND p_own < 0)",
        "b": "cep_new_rows > PREV(cep_new_rows) AND cep_new_rows > a.cep_new_rows"})))
    ex("SELECT cep.create_absence(%s, 's', %s, %s, '4 minutes')",
       (N_ABSENCE, "v_watermark = 'cep_new_rows'", '"x FROM public.t2 AS s" = \'ok\''))
    assert ex("SELECT name FROM cep.patterns ORDER BY pattern_id").fetchall() == [
        (N_PATTERN,), (N_ABSENCE,)]

    # the rest: synchronous statements, then asynchronous ones processed in two calls
    rest = first[30:]
    model_rows = [dict(zip(cols, r)) for r in first[:30]]
    for r in model_rows:        # stored before the rules: history for them, never assessed
        model.rows[r["id"]] = r
        model.by_key[str(r["k"])].append(r)
    for chunk in (rest[:40], rest[40:80]):
        insert_plain(chunk)
        model.ingest([dict(zip(cols, r)) for r in chunk])
    ex("SELECT cep.set_stream_mode('s', 'async')")
    for chunk in (rest[80:100], rest[100:]):
        insert_plain(chunk)
        model.ingest([dict(zip(cols, r)) for r in chunk])
    assert ex("SELECT cep.process_stream('s', 20)").fetchone()[0] == 20
    assert ex("SELECT cep.process_stream('s')").fetchone()[0] == 20
    ex("SELECT cep.advance_watermark('s', %s)", (now,))

    got = ex("SELECT window_start, v_watermark, count, sum_cep_new_rows, count_distinct_p_to, "
             "max_p_own FROM w_t ORDER BY 1, 2").fetchall()
    want = ex("SELECT date_bin('5 minutes', created_at, '1970-01-01 00:00+00'), v_watermark, "
              "count(*), sum(cep_new_rows), count(DISTINCT p_to), max(p_own) FROM public.t2 "
              "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert got == want and got
    got = {(k, wm, ws): (we, n, s) for ws, we, wm, k, n, s in ex(
        "SELECT window_start, window_end, v_watermark, k, count, sum_cep_new_rows FROM w_s")}
    want = {(k[0], k[1], ws): v for (k, ws), v in sessions(
        [(r[0], (r[1], r[4]), r[2], r[3]) for r in first], dt.timedelta(minutes=3)).items()}
    assert got == want

    for name, cond in conds.items():
        rid = next(r.rule_id for r in model.rules.values() if r.name == name)
        ids = {e for (e,) in ex("SELECT event_id FROM cep.risk_assessments "
                                "WHERE %s = ANY (triggered_rules)", (rid,))}
        want_ids = {a.event_id for a in model.assessments.values() if rid in a.fired}
        assert ids == want_ids and ids, name

    rec_rows = [(r[0], r[1], r[4], r[5], r[2]) for r in first]
    for u in range(1, 5):
        got = dict(ex("SELECT item_id, score FROM cep.recommend('r', %s)", (str(u),)))
        want = recommendations(rec_rows, u, N_WEIGHTS)
        assert got.keys() == want.keys()
        assert all(abs(got[i] - want[i]) < 1e-9 for i in want)

    ex("SELECT cep.advance_watermark('s')")
    live = sorted(ex("SELECT partition_key, first_time, last_time, event_ids, classifiers "
                     "FROM cep.matches WHERE pattern = %s", (N_PATTERN,)).fetchall())
    # (patterns start with the events inserted after them: no backfill)
    assert live == sorted(ex("SELECT * FROM cep.find_matches(%s, %s)",
                             (N_PATTERN, rest[0][2])).fetchall())
    assert live
    for _k, _f, _l, ids, _c in live:
        a, b = (dict(zip(cols, next(r for r in first if r[0] == i))) for i in ids)
        assert a["p_to"] == "FROM cep_new_rows" and b["cep_new_rows"] > a["cep_new_rows"]
    got_abs = {ids[0] for (ids,) in ex(
        "SELECT event_ids FROM cep.matches WHERE pattern = %s", (N_ABSENCE,))}
    assert got_abs == absences(first, dt.timedelta(minutes=4),
                               start=lambda r: r[4] == "cep_new_rows",
                               expected=lambda r: r[8] == "ok") and got_abs
    assert dict(ex("SELECT stream, events_total FROM cep.stream_stats")) == {"s": len(rest)}

    # a replica stream over the same kind of names: rows applied as by a subscription
    ex('CREATE TABLE public.t3 (id bigint PRIMARY KEY, k integer NOT NULL, '
       'created_at timestamptz NOT NULL, cep_new_rows numeric NOT NULL, v_watermark text)')
    ex("SELECT cep.attach_replica_stream('s3 @PID@', 'public.t3', 'created_at', 'k')")
    ex("SELECT cep.create_window('w3', 's3 @PID@', 'tumbling', '5 minutes', "
       "group_by => '{v_watermark}', aggregates => '{count(*), sum(cep_new_rows)}')")
    rep = [(r[0], r[1], r[2], r[3], r[4]) for r in first]
    with conn.transaction():
        ex("SET LOCAL session_replication_role = replica")
        for chunk in (rep[:70], rep[70:]):
            ex(sql.SQL("INSERT INTO public.t3 VALUES {}").format(sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in r))
                for r in chunk)))
    assert ex("SELECT cep.process_stream('s3 @PID@')").fetchone()[0] == len(rep)
    got = ex("SELECT window_start, v_watermark, count, sum_cep_new_rows FROM public.w3 "
             "ORDER BY 1, 2").fetchall()
    want = ex("SELECT date_bin('5 minutes', created_at, '1970-01-01 00:00+00'), v_watermark, "
              "count(*), sum(cep_new_rows) FROM public.t3 GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert got == want and got
    # ingest, processing and the pattern's matcher of s; ingest, processing and row trigger
    # of s3
    check_generated(conn, 6)


@pytest.mark.slow
def test_hostile_identifiers_survive_dump_and_restore(server, dbname):
    """pg_dump and pg_restore of the hostile setup half way through the workload: the restored
    database goes on with the other half, and its results equal the recomputations."""
    rng = random.Random(4242)
    tx_cols = ["Id", "user id", "Created At", "Amount $", "loc;ation", "select"]
    with server.connect(dbname) as c:
        now = c.execute("SELECT now()").fetchone()[0].astimezone(UTC)
        t0 = epoch_bin(now - dt.timedelta(hours=3), dt.timedelta(minutes=1))
        make_tables(c)
        rules = define_everything(c, t0)
        tx_stmts = tx_statements(rng, t0)
        for rows in tx_stmts[:3]:
            insert(c, TX, tx_cols, rows)
    restored = server.new_database(template="template0", prefix="restored")
    try:
        dump = subprocess.run(["pg_dump", "-Fc", dbname], env=server.env(dbname),
                              capture_output=True, check=True).stdout
        res = subprocess.run(["pg_restore", "--exit-on-error", "-d", restored], input=dump,
                             env=server.env(restored), capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        with server.connect(restored) as c:
            for rows in tx_stmts[3:]:
                insert(c, TX, tx_cols, rows)
            c.execute("SELECT cep.advance_watermark(%s)", (S_TX,))
            model = rr.Stream(TX_KINDS, key="user id", time="Created At", ident="Id")
            for r in rules.values():
                model.add_rule(r)
            model.policy = rr.Policy(block_action={"set": {"Status'": "blocked"}})
            for rows in tx_stmts:
                model.ingest([dict(zip(tx_cols, r)) for r in rows])
            for name, r in rules.items():
                got = {e for (e,) in c.execute(
                    "SELECT event_id FROM cep.risk_assessments WHERE %s = ANY (triggered_rules)",
                    (r.rule_id,))}
                assert got == {a.event_id for a in model.assessments.values()
                               if r.rule_id in a.fired}, name
            got = c.execute(sql.SQL('SELECT window_start, "user id", count, "sum_Amount $" '
                                    "FROM {} ORDER BY 1, 2").format(qn('Tumble "W"'))).fetchall()
            want = c.execute(sql.SQL(
                "SELECT date_bin('1 minute', \"Created At\", '1970-01-01 00:00+00'), \"user id\", "
                'count(*), sum("Amount $") FROM {} GROUP BY 1, 2 ORDER BY 1, 2').format(
                    qn(TX))).fetchall()
            assert got == want
            live = sorted(c.execute("SELECT partition_key, first_time, last_time, event_ids, "
                                    "classifiers FROM cep.matches WHERE pattern = %s",
                                    (P_TX,)).fetchall())
            assert live and live == sorted(c.execute(
                "SELECT * FROM cep.find_matches(%s)", (P_TX,)).fetchall())
            assert c.execute("SELECT events_total FROM cep.stream_stats WHERE stream = %s",
                             (S_TX,)).fetchone()[0] == sum(map(len, tx_stmts))
    finally:
        server.drop_database(restored)
