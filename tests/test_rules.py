"""Risk rules: validation (SQLSTATE and JSON path of every refused condition), strings only
ever literals, versions and concurrent changes, policies (sum/max/noisy_or, levels, shadow
mode, block action, alert level), permissions, serial-order equivalence for concurrent writers
of one key, rule_stats, maintenance, drop_stream and dump of the catalog.

The semantics of conditions are checked against an independent reference in
tests/test_rules_property.py; the figures here are derived in the test from the inserted rows."""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal

import psycopg
import pytest

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

SEED_RULES = [
    ("burst", "threshold", '{"metric": "count", "window": "1 hour", "op": ">", "value": 10}', 0.8),
    ("large", "threshold", '{"field": "amount", "op": ">", "value": 10000}', 0.6),
    ("night", "pattern",
     '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}', 0.4),
    ("hop", "pattern", '{"changed": "location", "window": "5 minutes"}', 0.7),
]


def setup(conn, lateness="0 seconds"):
    conn.execute("""
        CREATE TABLE public.tx (
            id bigserial PRIMARY KEY,
            user_id integer NOT NULL,
            amount numeric(12, 2),
            location text,
            status varchar(8) NOT NULL DEFAULT 'ok',
            payload jsonb,
            created_at timestamptz NOT NULL
        )""")
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', "
                 "allowed_lateness => %s::interval)", (lateness,))


def add_rule(conn, name, condition, score, kind="threshold", mode="enforce", stream="tx"):
    return conn.execute(
        "INSERT INTO cep.rules (stream, name, kind, condition, risk_score, mode) "
        "VALUES (%s, %s, %s, %s::jsonb, %s, %s) RETURNING rule_id",
        (stream, name, kind, condition, score, mode)).fetchone()[0]


def tx(conn, rows):
    """Insert (user, amount, location, minutes after BASE) rows in one statement."""
    conn.execute(
        "INSERT INTO public.tx (user_id, amount, location, created_at) "
        "SELECT u, a, l, %s::timestamptz + m * interval '1 minute' "
        "FROM unnest(%s::int[], %s::numeric[], %s::text[], %s::float8[]) AS x (u, a, l, m)",
        (BASE, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
         [r[3] for r in rows]))


def assessments(conn):
    return conn.execute(
        "SELECT event_id, total_score, level, triggered_rules, rule_versions, shadow_rules, "
        "shadow_score, blocked FROM cep.risk_assessments ORDER BY event_id").fetchall()


# -- validation --------------------------------------------------------------------------------

BAD = [
    ('[1, 2]', "22023", "$: a condition must be a JSON object"),
    ('{"field": "amount", "op": "=>", "value": 1}', "22023", "$.op: unknown operator"),
    ('{"field": "nope", "op": ">", "value": 1}', "42703", "$.field: column nope does not exist"),
    ('{"field": "amount; DROP TABLE public.tx", "op": ">", "value": 1}', "42703", "$.field"),
    ('{"field": "amount", "op": ">", "value": "10000"}', "42804",
     "$.value: must be a JSON number"),
    ('{"field": "location", "op": "=", "value": 5}', "42804", "$.value: must be a JSON string"),
    ('{"field": "created_at", "op": ">", "value": "next tuesday-ish"}', "42804",
     "$.value: 'next tuesday-ish' is not a valid timestamp with time zone"),
    ('{"field": "payload", "op": "=", "value": "x"}', "42804", "rules cannot compare"),
    ('{"field": "amount", "op": "in", "value": []}', "22023", "$.value: operator in needs"),
    ('{"field": "amount", "op": "in", "value": [1, "2"]}', "42804", "$.value[1]"),
    ('{"field": "amount", "op": ">", "value": 1, "unit": "EUR"}', "22023",
     "$.unit: unknown key 'unit'"),
    ('{"all": [{"field": "amount", "op": ">", "value": 1}, {"bogus": 1}]}', "22023",
     "$.all[1]: unknown condition with keys 'bogus'"),
    ('{"all": []}', "22023", "$.all: must be an array of 1 to 100 conditions"),
    ('{"any": [{"not": {"field": "amount", "op": "<", "value": "x"}}]}', "42804",
     "$.any[0].not.value"),
    ('{"metric": "median", "field": "amount", "window": "1 hour", "op": ">", "value": 1}',
     "22023", "$.metric: unknown metric"),
    ('{"metric": "sum", "field": "location", "window": "1 hour", "op": ">", "value": 1}',
     "42804", "$.field: column location has type text"),
    ('{"metric": "count", "window": "-1 hour", "op": ">", "value": 1}', "22023",
     "$.window: \"-1 hour\" must be a positive interval"),
    ('{"metric": "count", "window": "soon", "op": ">", "value": 1}', "22023",
     "$.window: 'soon' is not an interval"),
    ('{"metric": "count", "window": 3600, "op": ">", "value": 1}', "22023", "$.window"),
    ('{"metric": "count", "window": "400 days", "op": ">", "value": 1}', "22023", "$.window"),
    ('{"metric": "count", "window": "1 hour", "op": ">", "value": "10"}', "42804", "$.value"),
    ('{"metric": "avg", "window": "1 hour", "op": ">", "value": 1}', "22023",
     "$.field: metric avg needs a field"),
    ('{"changed": "nope", "window": "5 minutes"}', "42703", "$.changed"),
    ('{"time_of_day": {"from": "25:00", "to": "06:00"}}', "22023", "$.time_of_day.from"),
    ('{"time_of_day": {"from": "22:00", "to": "22:00"}}', "22023", "empty range"),
    ('{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "Mars/Olympus"}}', "22023",
     "$.time_of_day.timezone: unknown time zone"),
    ('{"anomaly": "iqr", "field": "amount", "threshold": 3}', "22023", "$.anomaly"),
    ('{"anomaly": "zscore", "field": "amount", "threshold": -1}', "22023", "$.threshold"),
    ('{"anomaly": "zscore", "field": "amount", "threshold": 3, "min_samples": 1.5}', "22023",
     "$.min_samples"),
    ('{"anomaly": "zscore", "field": "location", "threshold": 3}', "42804", "$.field"),
    ('{"pattern": "no_such_pattern"}', "42704", "$.pattern: unknown pattern"),
    ('{"not": ' * 20 + '{"field": "amount", "op": ">", "value": 1}' + '}' * 20, "22023",
     "at most 16 levels deep"),
    ('{"any": [' + ", ".join(['{"field": "amount", "op": ">", "value": 1}'] * 101) + ']}',
     "22023", "$.any: must be an array of 1 to 100 conditions"),
]


@pytest.mark.parametrize("condition,sqlstate,fragment", BAD)
def test_bad_conditions_are_refused_with_their_path(conn, condition, sqlstate, fragment):
    setup(conn)
    with pytest.raises(psycopg.Error) as info:
        add_rule(conn, "bad_rule", condition, 0.5)
    assert info.value.sqlstate == sqlstate, info.value
    msg = info.value.diag.message_primary
    assert "rule bad_rule" in msg and fragment in msg, msg
    # nothing half-created: no rule, no version, no rule set, ingest code untouched
    assert conn.execute("SELECT count(*) FROM cep.rules").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cep.rule_versions").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cep.rule_sets").fetchone()[0] == 0


def test_bad_updates_and_other_fields_are_refused(conn):
    setup(conn)
    rid = add_rule(conn, "large", SEED_RULES[1][2], 0.6)
    for stmt, sqlstate in [
        ("UPDATE cep.rules SET condition = '{\"field\": \"amount\"}' WHERE rule_id = %s", "22023"),
        ("UPDATE cep.rules SET risk_score = 1.5 WHERE rule_id = %s", "22023"),
        ("UPDATE cep.rules SET risk_score = 'NaN' WHERE rule_id = %s", "22023"),
        ("UPDATE cep.rules SET mode = 'loud' WHERE rule_id = %s", "23514"),
        ("UPDATE cep.rules SET kind = 'magic' WHERE rule_id = %s", "23514"),
        ("UPDATE cep.rules SET stream = 'nope' WHERE rule_id = %s", "42704"),
        ("UPDATE cep.rules SET rule_id = rule_id + 100 WHERE rule_id = %s", "0A000"),
    ]:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(stmt, (rid,))
        assert info.value.sqlstate == sqlstate, (stmt, info.value)
    row = conn.execute("SELECT version, condition->>'op' FROM cep.rules").fetchone()
    assert row == (1, ">")
    with pytest.raises(psycopg.Error) as info:
        add_rule(conn, "x", SEED_RULES[1][2], 0.5, stream="nope")
    assert info.value.sqlstate == "42704"


def test_strings_are_only_literals(conn):
    setup(conn)
    evil = "x'); DROP TABLE public.tx; --"
    add_rule(conn, "evil", json.dumps({"field": "location", "op": "=", "value": evil}), 0.9)
    compiled = conn.execute("SELECT compiled FROM cep.rule_sql").fetchone()[0]
    assert "'x''); DROP TABLE public.tx; --'::text" in compiled
    tx(conn, [(1, 5, evil, 0), (1, 5, "Berlin", 1)])
    fired = conn.execute("SELECT event_id FROM cep.risk_assessments").fetchall()
    assert fired == [(1,)]
    assert conn.execute("SELECT count(*) FROM public.tx").fetchone()[0] == 2


# -- semantics of the seed's rules, policies, shadow mode ---------------------------------------

def test_seed_rules_scores_levels_alerts_and_blocking(conn):
    setup(conn)
    ids = {n: add_rule(conn, n, c, s, kind=k) for n, k, c, s in SEED_RULES}
    conn.execute("SELECT cep.set_risk_policy('tx', block_action => "
                 "'{\"set\": {\"status\": \"blocked\"}}')")
    tx(conn, [(1, 50, "Berlin", m) for m in range(0, 55, 5)])   # 11 in an hour: burst on the 11th
    tx(conn, [(2, 15000, "Oslo", 0)])                           # large
    tx(conn, [(3, 20, "Rome", 11 * 60 + 30)])                   # 23:30 night
    tx(conn, [(4, 20, "Rome", 0), (4, 20, "Lyon", 3)])          # location change in 3 minutes
    tx(conn, [(5, 15000, "Rome", 11 * 60 + 30)])                # large at night: 1.0, blocked
    rows = {r[0]: r for r in assessments(conn)}
    want = {
        11: (0.8, "high", [ids["burst"]]),
        12: (0.6, "medium", [ids["large"]]),
        13: (0.4, "medium", [ids["night"]]),
        15: (0.7, "high", [ids["hop"]]),
        16: (1.0, "high", sorted([ids["large"], ids["night"]])),
    }
    assert sorted(rows) == sorted(want)
    for eid, (score, level, fired) in want.items():
        assert rows[eid][1] == pytest.approx(score, abs=1e-12)
        assert rows[eid][2] == level and rows[eid][3] == fired and rows[eid][4] == [1] * len(fired)
        assert rows[eid][7] == (score >= 0.9)
    assert conn.execute("SELECT array_agg(id ORDER BY id) FROM public.tx "
                        "WHERE status = 'blocked'").fetchone()[0] == [16]
    alerts = conn.execute(
        "SELECT event_id, severity, score, details FROM cep.alerts ORDER BY event_id").fetchall()
    assert [(a[0], a[1]) for a in alerts] == [(11, "high"), (15, "high"), (16, "critical")]
    details = alerts[2][3]
    assert [(r["name"], r["score"], r["version"]) for r in details["rules"]] == [
        ("large", 0.6, 1), ("night", 0.4, 1)]
    assert details["blocked"] is True and details["total_score"] == 1
    stats = {r[0]: r[1:] for r in conn.execute(
        "SELECT rule_name, evaluations, hits FROM cep.rule_stats")}
    assert stats == {"burst": (16, 1), "large": (16, 2), "night": (16, 2), "hop": (16, 1)}


@pytest.mark.parametrize("combine,expected", [
    ("sum", Decimal("0.6") + Decimal("0.4") + Decimal("0.3")),
    ("max", Decimal("0.6")),
    ("noisy_or", 1 - (1 - Decimal("0.6")) * (1 - Decimal("0.4")) * (1 - Decimal("0.3"))),
])
def test_combinations_and_shadow_rules(conn, combine, expected):
    setup(conn)
    a = add_rule(conn, "a", '{"field": "amount", "op": ">=", "value": 100}', 0.6)
    b = add_rule(conn, "b", '{"field": "location", "op": "in", "value": ["Oslo", "Rome"]}', 0.4)
    c = add_rule(conn, "c", '{"field": "amount", "op": "<", "value": 1000}', 0.3)
    s = add_rule(conn, "s", '{"field": "location", "op": "!=", "value": "Lyon"}', 0.9,
                 mode="shadow")
    conn.execute("SELECT cep.set_risk_policy('tx', %s, medium => 0.5, high => 0.95, "
                 "block => 0.99, block_action => '{\"set\": {\"status\": \"held\"}}', "
                 "alert_level => 'medium')", (combine,))
    tx(conn, [(1, 500, "Oslo", 0), (2, 5, "Lyon", 0), (3, 5000, None, 0)])
    rows = assessments(conn)
    total = float(expected)
    level = "high" if expected >= Decimal("0.95") else "medium" if expected >= Decimal("0.5") else "low"
    assert rows[0][1] == pytest.approx(total, abs=1e-12) and rows[0][2] == level
    assert rows[0][3] == [a, b, c] and rows[0][5] == [s]
    all_scores = [Decimal("0.6"), Decimal("0.4"), Decimal("0.3"), Decimal("0.9")]
    shadow = {"sum": sum(all_scores), "max": max(all_scores),
              "noisy_or": 1 - (1 - all_scores[0]) * (1 - all_scores[1]) * (1 - all_scores[2])
              * (1 - all_scores[3])}[combine]
    assert rows[0][6] == pytest.approx(float(shadow), abs=1e-12)
    # event 2: only c (0.3) fires; the shadow rule does not (location Lyon)
    assert rows[1][3] == [c] and rows[1][5] == [] and rows[1][2] == "low"
    # event 3: NULL location: b and s never fire on NULL; a fires
    assert rows[2][3] == [a] and rows[2][5] == []
    # the shadow rule alone never alerts or blocks; alerts from medium up
    assert conn.execute("SELECT count(*) FROM public.tx WHERE status = 'held'").fetchone()[0] == (
        1 if expected >= Decimal("0.99") else 0)
    alerted = [r[0] for r in conn.execute("SELECT event_id FROM cep.alerts ORDER BY 1")]
    assert alerted == [1] + ([3] if Decimal("0.6") >= Decimal("0.5") else [])


def test_shadow_only_event_is_logged_without_alert(conn):
    setup(conn)
    s = add_rule(conn, "s", '{"field": "amount", "op": ">", "value": 0}', 1.0, mode="shadow")
    conn.execute("SELECT cep.set_risk_policy('tx', block_action => "
                 "'{\"set\": {\"status\": \"blocked\"}}', alert_level => 'low')")
    tx(conn, [(1, 10, "Oslo", 0)])
    row = assessments(conn)[0]
    assert row[3] == [] and row[5] == [s] and row[6] == 1.0 and row[7] is False
    assert conn.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 0
    assert conn.execute("SELECT status FROM public.tx").fetchone()[0] == "ok"


def test_policy_validation(conn):
    setup(conn)
    for args, sqlstate in [
        ("'nope'", "42704"),
        ("'tx', 'avg'", "22023"),
        ("'tx', medium => 0.8, high => 0.7", "22023"),
        ("'tx', block => 'Infinity'", "22023"),
        ("'tx', alert_level => 'loud'", "22023"),
        ("'tx', block_action => '{\"delete\": true}'", "22023"),
        ("'tx', block_action => '{\"set\": {}}'", "22023"),
        ("'tx', block_action => '{\"set\": {\"nope\": 1}}'", "42703"),
        ("'tx', block_action => '{\"set\": {\"created_at\": \"2020-01-01\"}}'", "22023"),
        ("'tx', block_action => '{\"set\": {\"status\": \"far too long\"}}'", "42804"),
        ("'tx', block_action => '{\"set\": {\"amount\": \"lots\"}}'", "42804"),
        ("'tx', block_action => '{\"set\": {\"status\": [1]}}'", "22023"),
    ]:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"SELECT cep.set_risk_policy({args})")
        assert info.value.sqlstate == sqlstate, (args, info.value)
    assert conn.execute("SELECT count(*) FROM cep.risk_policies").fetchone()[0] == 0


# -- versions and concurrent changes -------------------------------------------------------------

def test_versions_are_recorded_and_kept(conn):
    setup(conn)
    rid = add_rule(conn, "large", '{"field": "amount", "op": ">", "value": 100}', 0.5)
    tx(conn, [(1, 150, "a", 0)])
    conn.execute("UPDATE cep.rules SET condition = '{\"field\": \"amount\", \"op\": \">\", "
                 "\"value\": 200}' WHERE rule_id = %s", (rid,))
    conn.execute("UPDATE cep.rules SET description = 'only a comment' WHERE rule_id = %s", (rid,))
    tx(conn, [(1, 150, "a", 1), (1, 250, "a", 2)])
    conn.execute("UPDATE cep.rules SET risk_score = 0.7 WHERE rule_id = %s", (rid,))
    tx(conn, [(1, 250, "a", 3)])
    rows = conn.execute("SELECT event_id, rule_versions, total_score FROM cep.risk_assessments "
                        "ORDER BY event_id").fetchall()
    assert rows == [(1, [1], 0.5), (3, [2], 0.5), (4, [3], 0.7)]
    versions = conn.execute("SELECT version, condition->>'value', risk_score FROM "
                            "cep.rule_versions ORDER BY version").fetchall()
    assert versions == [(1, "100", 0.5), (2, "200", 0.5), (3, "200", 0.7)]
    conn.execute("DELETE FROM cep.rules")
    tx(conn, [(1, 250, "a", 4)])
    assert conn.execute("SELECT count(*) FROM cep.risk_assessments").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM cep.rule_versions").fetchone()[0] == 3


def test_concurrent_rule_changes_use_one_version_per_statement(conn, connect):
    setup(conn)
    rid = add_rule(conn, "thr", '{"field": "amount", "op": ">", "value": 0}', 0.5)
    conn.execute("SELECT cep.set_risk_policy('tx', log_all => true)")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(user):
        try:
            with connect() as w:
                i = 0
                while not stop.is_set():
                    w.execute(
                        "INSERT INTO public.tx (user_id, amount, location, created_at) "
                        "SELECT %s, g, 'x', %s FROM generate_series(1, 100) AS g",
                        (user, BASE + dt.timedelta(seconds=i)))
                    i += 1
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(u,)) for u in (1, 2)]
    for t in threads:
        t.start()
    changer = connect()
    for v in range(1, 30):
        changer.execute("UPDATE cep.rules SET condition = jsonb_set(condition, '{value}', "
                        "to_jsonb(%s)) WHERE rule_id = %s", (v * 3 % 100, rid))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    # Each statement's rows were assessed under one rule set, whose version of the rule gives
    # the threshold; every row fired exactly when its amount is above that threshold.
    bad = conn.execute("""
        SELECT count(*)
        FROM cep.risk_assessments AS a
        JOIN public.tx AS t ON t.id = a.event_id
        JOIN cep.rule_sets AS rs ON rs.rule_set_id = a.rule_set_id
        JOIN cep.rule_versions AS v ON v.rule_id = rs.rule_ids[1] AND v.version = rs.versions[1]
        WHERE (t.amount > (v.condition->>'value')::numeric) <> (cardinality(a.triggered_rules) = 1)
        """).fetchone()[0]
    assert bad == 0
    per_statement = conn.execute("""
        SELECT count(*) FROM (
            SELECT t.xmin::text AS x, count(DISTINCT a.rule_set_id) AS sets
            FROM public.tx AS t JOIN cep.risk_assessments AS a ON a.event_id = t.id
            GROUP BY 1
        ) AS x WHERE x.sets <> 1""").fetchone()[0]
    assert per_statement == 0
    assert conn.execute("SELECT count(*) FROM public.tx").fetchone()[0] == conn.execute(
        "SELECT count(*) FROM cep.risk_assessments").fetchone()[0]
    assert conn.execute("SELECT count(DISTINCT rule_set_id) FROM cep.risk_assessments"
                        ).fetchone()[0] > 1


def test_concurrent_writers_of_one_key_see_a_serial_order(conn, connect):
    """Rules count > 0 .. count > N-1 reveal each event's trailing count; under any serial
    order the counts of N events of one key at one time are exactly 1..N (each sees every
    event committed before it)."""
    setup(conn)
    n_per, sessions = 12, 3
    total = n_per * sessions
    conn.execute(
        "INSERT INTO cep.rules (stream, name, condition, risk_score) "
        "SELECT 'tx', 'c' || i, jsonb_build_object('metric', 'count', 'window', '1 day', "
        "'op', '>', 'value', i), 0.01 FROM generate_series(0, %s) AS i", (total - 1,))
    barrier = threading.Barrier(sessions)
    errors: list[BaseException] = []

    def writer(s):
        try:
            with connect() as w:
                barrier.wait()
                for i in range(n_per):
                    w.execute("INSERT INTO public.tx (user_id, amount, location, created_at) "
                              "VALUES (7, 1, 'x', %s)", (BASE,))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = sorted(r[0] for r in conn.execute(
        "SELECT cardinality(triggered_rules) FROM cep.risk_assessments"))
    assert counts == list(range(1, total + 1))


# -- permissions -------------------------------------------------------------------------------

def test_only_the_stream_owner_changes_its_rules(server, dbname, conn):
    setup(conn)
    role = f"cep_rules_other_{dbname}"[:60]
    conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        conn.execute(f'GRANT USAGE ON SCHEMA cep TO "{role}"; '
                     f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA cep TO "{role}"; '
                     f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cep TO "{role}"')
        add_rule(conn, "large", SEED_RULES[1][2], 0.6)
        with server.connect(dbname, user=role) as other:
            with pytest.raises(psycopg.Error) as info:
                add_rule(other, "mine", SEED_RULES[1][2], 0.6)
            assert info.value.sqlstate == "42501"
            with pytest.raises(psycopg.Error) as info:
                other.execute("UPDATE cep.rules SET risk_score = 0.1")
            assert info.value.sqlstate == "42501"
            with pytest.raises(psycopg.Error) as info:
                other.execute("SELECT cep.set_risk_policy('tx', 'max')")
            assert info.value.sqlstate == "42501"
        assert conn.execute("SELECT risk_score FROM cep.rules").fetchone()[0] == 0.6
    finally:
        conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


# -- operations --------------------------------------------------------------------------------

def test_late_events_are_assessed_and_metrics_read_the_table(conn):
    setup(conn)
    add_rule(conn, "burst", '{"metric": "count", "window": "10 minutes", "op": ">=", "value": 3}',
             0.8)
    tx(conn, [(1, 1, "a", 100)])
    tx(conn, [(1, 1, "a", 0), (1, 1, "a", 1)])  # late (behind the watermark), 3rd in window? no
    tx(conn, [(1, 1, "a", 2)])                   # late: window (−8, 2] holds events at 0, 1, 2
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 3
    assert [r[0] for r in assessments(conn)] == [4]


def test_evaluate_rules_and_rule_sql(conn):
    setup(conn)
    for n, k, c, s in SEED_RULES:
        add_rule(conn, n, c, s, kind=k)
    tx(conn, [(1, 10, "Oslo", m) for m in range(10)])
    before = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("public.tx", "cep.risk_assessments", "cep.alerts", "cep.rule_log")]
    got = conn.execute(
        "SELECT rule_name, triggered FROM cep.evaluate_rules('tx', %s::jsonb) ORDER BY rule_id",
        ('{"user_id": 1, "amount": 20000, "location": "Rome", '
         '"created_at": "2026-03-02T12:10:30Z"}',)).fetchall()
    assert got == [("burst", True), ("large", True), ("night", False), ("hop", True)]
    after = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
             for t in ("public.tx", "cep.risk_assessments", "cep.alerts", "cep.rule_log")]
    assert before == after
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM cep.evaluate_rules('tx', '{\"amount\": 1}')")
    assert info.value.sqlstate == "22023"
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM cep.evaluate_rules('nope', '{}')")
    assert info.value.sqlstate == "42704"
    sqls = dict(conn.execute("SELECT rule_name, compiled FROM cep.rule_sql").fetchall())
    assert sqls["large"] == "coalesce(x.\"c:amount\" > '10000'::pg_catalog.numeric, false)"
    assert "'Europe" not in sqls["night"] and "'UTC'" in sqls["night"]


def test_rule_stats_survive_compaction_and_drop_stream_cleans_up(conn):
    setup(conn)
    add_rule(conn, "large", SEED_RULES[1][2], 0.6)
    add_rule(conn, "z", '{"anomaly": "zscore", "field": "amount", "threshold": 2, '
             '"min_samples": 3}', 0.5)
    for i in range(5):
        tx(conn, [(1, 20000 if i == 3 else 10, "a", i), (2, 5, "b", i)])
    before = conn.execute("SELECT rule_name, evaluations, hits, last_hit FROM cep.rule_stats "
                          "ORDER BY 1").fetchall()
    conn.execute("UPDATE cep.rule_log SET logged_at = logged_at - interval '10 days'")
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["compact_rule_log"] > 0
    after = conn.execute("SELECT rule_name, evaluations, hits, last_hit FROM cep.rule_stats "
                         "ORDER BY 1").fetchall()
    assert after == [(r[0], r[1], r[2], r[3] - dt.timedelta(days=10)) for r in before]
    assert [r[1:3] for r in after] == [(10, 1), (10, 1)]
    assert conn.execute("SELECT count(*) FROM cep.rule_log").fetchone()[0] == 1
    conn.execute("SELECT cep.drop_stream('tx')")
    for t in ("rules", "rule_sets", "rule_keys", "rule_history", "rule_history_fields",
              "rule_log", "risk_policies"):
        assert conn.execute(f"SELECT count(*) FROM cep.{t}").fetchone()[0] == 0, t
    assert conn.execute("SELECT count(*) FROM cep.rule_versions").fetchone()[0] == 2


def test_indexed_threshold_rules_equal_direct_evaluation(conn):
    """Many one-comparison rules on a numeric field are evaluated by binary search over their
    sorted thresholds; the fired sets equal a direct evaluation of every comparison."""
    import random
    rnd = random.Random(7)
    setup(conn)
    conn.execute("ALTER TABLE public.tx ADD COLUMN f float8")
    ops = {">": lambda x, v: x > v, ">=": lambda x, v: x >= v, "<": lambda x, v: x < v,
           "<=": lambda x, v: x <= v, "=": lambda x, v: x == v}
    rules = []
    for i in range(120):
        field = rnd.choice(["amount", "f"])
        op = rnd.choice(list(ops))
        value = rnd.choice([0, 10, 10, 25.5, 50, 99.99, 100, -3]) if i % 3 else rnd.randint(0, 100)
        rules.append((f"r{i:03d}", field, op, value))
    conn.execute(
        "INSERT INTO cep.rules (stream, name, condition, risk_score) "
        "SELECT 'tx', n, jsonb_build_object('field', f, 'op', o, 'value', v), 0.001 "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::numeric[]) AS x (n, f, o, v)",
        ([r[0] for r in rules], [r[1] for r in rules], [r[2] for r in rules],
         [Decimal(str(r[3])) for r in rules]))
    conn.execute("SELECT cep.set_risk_policy('tx', log_all => true)")
    code = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = '_ingest_1'").fetchone()[0]
    assert "width_bucket" in code
    values = [None, -3, 0, 10, 25.5, 50, 99.99, 100, 100.01, 7, 1000]
    rows = [(rnd.choice(values), rnd.choice(values)) for _ in range(300)]
    conn.execute(
        "INSERT INTO public.tx (user_id, amount, f, created_at) "
        "SELECT 1, a, f, %s FROM unnest(%s::numeric[], %s::float8[]) AS x (a, f)",
        (BASE, [None if r[0] is None else Decimal(str(r[0])) for r in rows],
         [None if r[1] is None else float(r[1]) for r in rows]))
    ids = {name: rid for name, rid in conn.execute("SELECT name, rule_id FROM cep.rules")}
    got = conn.execute("SELECT t.amount, t.f, a.triggered_rules FROM cep.risk_assessments AS a "
                       "JOIN public.tx AS t ON t.id = a.event_id ORDER BY t.id").fetchall()
    assert len(got) == len(rows)
    for amount, f, fired in got:
        x = {"amount": amount, "f": f}
        want = sorted(ids[n] for n, field, op, v in rules
                      if x[field] is not None and ops[op](Decimal(str(x[field])), Decimal(str(v))))
        assert fired == want, (amount, f)


def test_serializable_writers_of_one_key_get_40001(conn, connect):
    """Under SERIALIZABLE the second of two overlapping writers of a key cannot commit a
    trailing count that ignores the first one's row (README "Isolation levels")."""
    setup(conn)
    conn.execute(
        "INSERT INTO cep.rules (stream, name, condition, risk_score) "
        "SELECT 'tx', 'c' || i, jsonb_build_object('metric', 'count', 'window', '1 day', "
        "'op', '>', 'value', i), 0.01 FROM generate_series(0, 5) AS i")
    tx(conn, [(7, 1, "a", 0)])
    a, b = connect(autocommit=False), connect(autocommit=False)
    for c in (a, b):
        c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        c.execute("SELECT 1")
    tx(a, [(7, 1, "a", 1)])
    outcome = {}

    def second():
        try:
            tx(b, [(7, 1, "a", 2)])
            b.commit()
            outcome["b"] = "committed"
        except psycopg.Error as exc:
            outcome["b"] = exc.sqlstate
            b.rollback()

    t = threading.Thread(target=second)
    t.start()
    t.join(0.5)
    a.commit()
    t.join(10)
    assert outcome == {"b": "40001"}
    counts = [r[0] for r in conn.execute(
        "SELECT cardinality(triggered_rules) FROM cep.risk_assessments ORDER BY event_id")]
    assert counts == [1, 2]


METRIC_CASES = [  # (metric, field, window, thresholds)
    ("count", None, "5 minutes", [5, 12, 30]),
    ("sum", "amount", "10 minutes", [500, 2000, 6000]),
    ("min", "amount", "2 minutes", [5, 20, 60]),
    ("max", "amount", "1 hour", [60, 90, 99]),
    ("avg", "amount", "3 minutes", [30, 50, 70]),
    ("count", "location", "20 minutes", [10, 40, 80]),
]


def test_bucketed_metrics_are_exact_across_the_purge_floor(conn):
    """Dense keys, metrics over windows of 2 minutes to 1 hour (read from time buckets of 1/32
    of the window between raw ends), maintenance moving the purge floor of the buckets, and
    events arriving far below it: every rule fires exactly when the raw recomputation over the
    table says so (several thresholds per metric expose any wrong value)."""
    import random
    rng = random.Random(5)
    conn.execute("CREATE TABLE public.dense (id bigint PRIMARY KEY, user_id integer NOT NULL, "
                 "amount numeric, location text, created_at timestamptz NOT NULL)")
    conn.execute("CREATE INDEX ON public.dense (user_id, created_at)")
    conn.execute("SELECT cep.create_stream('dense', 'public.dense', 'created_at', 'user_id', "
                 "allowed_lateness => '30 seconds')")
    conn.execute("SELECT cep.set_risk_policy('dense', 'max', log_all => true)")
    rules = {}
    for fn, field, window, limits in METRIC_CASES:
        for lim in limits:
            cond = {"metric": fn, "window": window, "op": "<" if fn == "min" else ">", "value": lim}
            if field:
                cond["field"] = field
            rid = conn.execute(
                "INSERT INTO cep.rules (stream, name, condition, risk_score) "
                "VALUES ('dense', %s, %s::jsonb, 0.5) RETURNING rule_id",
                (f"{fn}_{field}_{lim}", json.dumps(cond))).fetchone()[0]
            rules[rid] = (fn, field, window, lim)
    assert conn.execute("SELECT count(*) FROM cep.rule_bucket_series").fetchone()[0] == 6
    base = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    t, next_id = base, 1
    starts = []                     # first id of each statement: ids grow with arrival
    for stmt in range(220):
        starts.append(next_id)
        rows = []
        for _ in range(rng.choice([1, 3, 10, 40])):
            t += dt.timedelta(seconds=rng.choice([0, 1, 2, 5]))
            et = t
            if rng.random() < 0.05:       # late, often far below the buckets' purge floor
                et = t - dt.timedelta(minutes=rng.choice([1, 20, 90, 300]))
            rows.append((next_id, rng.randrange(3),
                         None if rng.random() < 0.1 else Decimal(rng.randint(1, 100)),
                         None if rng.random() < 0.1 else rng.choice(["a", "b"]), et))
            next_id += 1
        conn.execute("INSERT INTO public.dense SELECT * FROM unnest(%s::bigint[], %s::int[], "
                     "%s::numeric[], %s::text[], %s::timestamptz[])",
                     [list(c) for c in zip(*rows)])
        if stmt % 20 == 19:
            conn.execute("SELECT * FROM cep.run_maintenance()")
    purged = conn.execute("SELECT count(*) FROM cep.rule_bucket_series "
                          "WHERE floor > '-infinity'").fetchone()[0]
    assert purged == 6
    # keys became dense (64 events within a window) in the series of the longer windows, and
    # read buckets there; the others stayed on raw rows
    dense = dict(conn.execute(
        "SELECT f.width, count(k.k) FROM cep.rule_bucket_series AS f "
        "LEFT JOIN cep.rule_bucket_keys AS k USING (series_id) GROUP BY 1").fetchall())
    assert dense[dt.timedelta(minutes=60) / 32] == 3 and sum(dense.values()) < 6 * 3, dense
    assert conn.execute("SELECT count(*) FROM cep.rule_buckets").fetchone()[0] > 100
    got = {r[0]: set(r[1]) for r in conn.execute(
        "SELECT event_id, triggered_rules FROM cep.risk_assessments WHERE stream = 'dense'")}
    assert len(got) == next_id - 1
    # a metric counts the rows stored before the event's statement and the statement's own
    # rows up to the event in (time, id) order
    conn.execute("CREATE TABLE public.stmt_of (id bigint PRIMARY KEY, first_id bigint, "
                 "next_id bigint)")
    conn.execute("INSERT INTO public.stmt_of SELECT d.id, "
                 "(SELECT max(s) FROM unnest(%s::bigint[]) AS s WHERE s <= d.id), "
                 "coalesce((SELECT min(s) FROM unnest(%s::bigint[]) AS s WHERE s > d.id), %s) "
                 "FROM public.dense AS d", (starts, starts, next_id))
    want: dict[int, set] = {}
    for rid, (fn, field, window, lim) in rules.items():
        agg = {"count": f"count({field or '*'})", "sum": f"sum({field})",
               "min": f"min({field})", "max": f"max({field})", "avg": f"avg({field})"}[fn]
        op = "<" if fn == "min" else ">"
        for (eid,) in conn.execute(f"""
            SELECT e.id FROM public.dense AS e JOIN public.stmt_of AS st ON st.id = e.id
            WHERE (SELECT {agg} FROM public.dense AS w
                   WHERE w.user_id = e.user_id AND w.created_at > e.created_at - %s::interval
                       AND w.created_at <= e.created_at
                       AND (w.id < st.first_id OR (w.id < st.next_id
                           AND (w.created_at, w.id) <= (e.created_at, e.id)))
                  ) {op} %s""",
                                 (window, lim)):
            want.setdefault(eid, set()).add(rid)
    diff = [(e, sorted(got.get(e, set())), sorted(want.get(e, set())))
            for e in range(1, next_id) if got.get(e, set()) != want.get(e, set())]
    assert not diff, diff[:10]
    # the late ones below the floor were there, and fired rules too
    late = {r[0] for r in conn.execute("SELECT event_id FROM cep.late_events")}
    assert len(late) > 20 and any(want.get(e) for e in late)
