"""Monitoring figures against the workload that produced them: ingest-time percentiles against
numpy over the per-statement log, cep.metrics() against the views it exports (and a parser of
the Prometheus text format), cep.window_stats against the window views, cep.rule_stats and
cep.pattern_stats (and their metrics() lines) against counts derived in Python from the rows
each test inserted, unchanged by cep.run_maintenance()'s compaction, and none of them reading
the event table."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import pytest

UTC = dt.timezone.utc

SETUP = """
CREATE TABLE public.ev (id bigint PRIMARY KEY, k text, v numeric, t timestamptz NOT NULL);
SELECT cep.create_stream('ev "quoted"', 'public.ev', 't', 'k', allowed_lateness => '10 seconds');
"""

SAMPLE = re.compile(r'^([a-z_]+)(?:\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)+)\})? (-?[0-9.e+]+)$')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_prometheus(text: str, label_names: dict | None = None) -> dict:
    """name -> {labels: float}, labels being None (no label), the value of the only label, or
    the tuple of label values in their order (label_names, if given, collects name -> the
    tuple of label names); checks HELP/TYPE lines precede each family and the syntax."""
    out: dict[str, dict] = {}
    declared = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge")
            declared.add(name)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, number = m.groups()
        assert name in declared, f"{name} has no # TYPE line before it"
        key = None
        if labels is not None:
            pairs = LABEL.findall(labels)
            assert ",".join(f'{k}="{v}"' for k, v, _ in pairs) == labels, line
            values = tuple(_unescape(v) for _, v, _ in pairs)
            key = values[0] if len(values) == 1 else values
            if label_names is not None:
                names = tuple(k for k, _, _ in pairs)
                assert label_names.setdefault(name, names) == names, line
        assert key not in out.get(name, {}), f"duplicate sample {line!r}"
        out.setdefault(name, {})[key] = float(number)
    return out


@pytest.fixture
def loaded(conn):
    conn.execute(SETUP)
    base = dt.datetime.now(UTC) - dt.timedelta(minutes=30)
    for b in range(40):
        n = (b % 7) * 30 + 1
        conn.execute(
            "INSERT INTO public.ev SELECT %s * 1000 + g, (g %% 13)::text, g, "
            "%s::timestamptz + g * interval '1 millisecond' FROM generate_series(1, %s) AS g",
            (b, base + dt.timedelta(seconds=b), n))
    conn.execute("INSERT INTO public.ev VALUES (999999, 'x', 1, %s)", (base,))  # late
    conn.execute("SELECT cep.create_consumer('desk')")
    conn.execute("SELECT cep._raise_alerts(1, ARRAY[ROW('rule','r','ev','1',1,'high',0.5,'m',"
                 "NULL)::cep.alert_draft, ROW('rule','r','ev','2',2,'high',0.5,'m',NULL)::cep.alert_draft])")
    return conn


def test_ingest_percentiles_match_numpy(loaded):
    rows = loaded.execute(
        "SELECT ingest_micros, events FROM cep.stream_log WHERE events > 0 AND NOT compacted"
    ).fetchall()
    micros = np.array([r[0] for r in rows], dtype=float)
    per_event = np.array([r[0] / r[1] for r in rows], dtype=float)
    got = loaded.execute(
        "SELECT ingest_micros_p50, ingest_micros_p99, ingest_micros_per_event_p50, "
        "ingest_micros_per_event_p99 FROM cep.stream_stats").fetchone()
    want = (np.percentile(micros, 50), np.percentile(micros, 99),
            np.percentile(per_event, 50), np.percentile(per_event, 99))
    assert got == pytest.approx(want, rel=1e-9)
    assert len(rows) == 41


def test_metrics_export_equals_the_views(loaded):
    text = loaded.execute("SELECT cep.metrics()").fetchone()[0]
    m = parse_prometheus(text)
    st = loaded.execute(
        "SELECT stream, events_total, late_events, batches_total, extract(epoch FROM watermark), "
        "ingest_micros_per_event FROM cep.stream_stats").fetchone()
    stream = st[0]
    assert stream == 'ev "quoted"'
    assert m["pg_cep_events_total"][stream] == st[1] == 40 * 0 + sum(
        (b % 7) * 30 + 1 for b in range(40)) + 1
    assert m["pg_cep_late_events_total"][stream] == st[2] == 1
    assert m["pg_cep_batches_total"][stream] == st[3] == 41
    assert m["pg_cep_watermark_seconds"][stream] == pytest.approx(float(st[4]))
    assert m["pg_cep_ingest_micros_per_event"][stream] == pytest.approx(float(st[5]))
    assert m["pg_cep_alerts_last_hour"][None] == 2
    assert m["pg_cep_consumer_pending"]["desk"] == 2
    assert m["pg_cep_notify_queue_usage"][None] == 0
    assert m["pg_cep_active_keys"][None] == loaded.execute(
        "SELECT active_keys FROM cep.dashboard").fetchone()[0] == 13


def test_window_stats_match_the_window_views(loaded):
    loaded.execute("SELECT cep.create_window('ev_10s', 'ev \"quoted\"', 'tumbling', '10 seconds', "
                   "group_by => '{k}')")
    loaded.execute("SELECT cep.create_window('ev_sessions', 'ev \"quoted\"', 'session', '2 seconds')")
    stats = {r[0]: r[1:] for r in loaded.execute(
        "SELECT \"window\", open_windows, state_rows, last_closed_end, late_events "
        "FROM cep.window_stats")}
    for name, view in [("ev_10s", "public.ev_10s"), ("ev_sessions", "public.ev_sessions")]:
        open_n, total, last_closed = loaded.execute(
            f"SELECT count(*) FILTER (WHERE NOT is_final), count(*), "
            f"max(window_end) FILTER (WHERE is_final) FROM {view}").fetchone()
        assert stats[name] == (open_n, total, last_closed, 1)
        assert total > 0 and open_n > 0
    assert stats["ev_10s"][2] is not None          # some 10-second windows are closed
    assert stats["ev_sessions"][2] is None         # each key's session is still open
    text = loaded.execute("SELECT cep.metrics()").fetchone()[0]
    assert parse_prometheus(text)["pg_cep_window_open"]["ev_10s"] == stats["ev_10s"][0]


# -- rules and patterns -----------------------------------------------------------------------
# One stream of card transactions, lateness 0, explicit ids. The workload (random, seeded) is
# a list of statements; between statements rules are added, changed and switched off. Every
# expected figure below is computed from these rows by the definitions in design.md (rules:
# evaluated on every event of a statement while active; trailing metrics over the key's stored
# rows in (t - window, t], current event included; patterns: per key over the non-late events
# in (time, id) order, relaxed contiguity skips events no variable accepts).

RP_STREAM = 'tx "main"'
RP_BASE = dt.datetime(2026, 5, 1, 21, 15, tzinfo=UTC)      # crosses 22:00 UTC (night rule)
RP_WITHIN = dt.timedelta(minutes=10)
RP_BURST_WINDOW = dt.timedelta(minutes=10)
RP_RULES = {
    # name: (kind, condition, score, predicate over (row, rows stored so far))
    "large": ("threshold", '{"field": "amount", "op": ">", "value": 1000}', 0.6),
    "night": ("pattern", '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}',
              0.4),
    "burst": ("threshold", '{"metric": "count", "window": "10 minutes", "op": ">", "value": 3}',
              0.8),
    "small\\\"odd": ("threshold", '{"field": "amount", "op": "<", "value": 50}', 0.1),
}
# Rule changes before statement i: (i, SQL, parameters, rules active from statement i on)
RP_STEPS = {
    0: ("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) "
        "SELECT %s, n, k, c::jsonb, s FROM unnest(%s::text[], %s::text[], %s::text[], "
        "%s::float8[]) AS x (n, k, c, s)", "initial"),
    12: ("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) "
         "VALUES (%s, %s, %s, %s::jsonb, %s)", "add"),
    18: ("UPDATE cep.rules SET risk_score = 0.45 WHERE name = 'night'", "version"),
    27: ("UPDATE cep.rules SET active = false WHERE name = 'large'", "off"),
}


def test_window_stats_state_rows_of_a_big_state(conn):
    # While the pane table's heap is at most 8 MB its rows are counted; above, state_rows is
    # the statistics system's live-row count, checked here against a count of the table.
    conn.execute(SETUP)
    conn.execute("SELECT cep.create_window('big', 'ev \"quoted\"', 'tumbling', '10 minutes', "
                 "group_by => '{k}')")
    panes = "cep." + conn.execute(
        "SELECT state_table || '_panes' FROM cep.windows WHERE name = 'big'").fetchone()[0]

    def state_rows():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT state_rows FROM cep.window_stats WHERE \"window\" = 'big'").fetchone()[0]

    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for lo, n in ((0, 60000), (60000, 60000), (120000, 60000)):
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute(
            "INSERT INTO public.ev (id, k, v, t) SELECT i, 'k' || i, 1, %s "
            "FROM generate_series(%s, %s) AS i", (start, lo + 1, lo + n))
        conn.execute("SELECT pg_stat_force_next_flush()")   # (reported when it ends)
        want, size = conn.execute(
            f"SELECT count(*), pg_relation_size('{panes}') FROM {panes}").fetchone()
        assert want == lo + n
        assert state_rows() == want
    assert size > 8 * 1024 * 1024                       # (the statistics were read)
    # rows merged away by the compaction are dead until vacuum: not counted either way
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute(f"DELETE FROM {panes} WHERE g_1 > 'k5'")
    conn.execute("SELECT pg_stat_force_next_flush()")
    want = conn.execute(f"SELECT count(*) FROM {panes}").fetchone()[0]
    assert 0 < want < 180000 and state_rows() == want


def rp_workload(seed: int = 8):
    """Statements of (id, user, amount, location, time) rows: 36 in event-time order with
    random sizes, two of them followed by a statement of late rows (older than the watermark),
    then user 999's event at a new maximum time and, in a second statement, one at the same
    time with a lower id (behind the key's progress in (time, id) order, though not behind the
    watermark: late to the patterns only)."""
    import random
    rnd = random.Random(seed)
    sizes = [rnd.choice([1, 1, 2, 5, 17, 40, 60]) for _ in range(36)]
    span_ms = 2 * 3600 * 1000
    times = sorted(rnd.sample(range(span_ms), sum(sizes)))
    next_id = 1000
    used_ms = set(times)
    statements, pos = [], 0
    for i, n in enumerate(sizes):
        rows = []
        for ms in times[pos:pos + n]:
            rows.append((next_id, rnd.randint(1, 25),
                         round(math.exp(rnd.gauss(math.log(300), 1.2)), 2),
                         rnd.choice(["Oslo", "Rome", "Lyon"]), ms))
            next_id += 1
        pos += n
        statements.append(rows)
        if i in (14, 25):                          # late rows: before the current watermark
            late = []
            for _ in range(7):
                ms = rnd.randrange(0, times[pos - 1])
                while ms in used_ms:
                    ms = rnd.randrange(0, times[pos - 1])
                used_ms.add(ms)
                late.append((next_id, rnd.randint(1, 25), rnd.choice([2000.0, 3000.0, 20.0]),
                             "Oslo", ms))
                next_id += 1
            statements.append(late)
    top = times[-1] + 1000
    statements.append([(next_id, 999, 5000.0, "Oslo", top)])
    statements.append([(1, 999, 5000.0, "Oslo", top)])
    return [[(i, u, a, loc, RP_BASE + dt.timedelta(milliseconds=ms)) for i, u, a, loc, ms in st]
            for st in statements]


def rp_insert(conn, rows):
    conn.execute(
        'INSERT INTO public.tx (id, user_id, amount, location, created_at) SELECT * FROM '
        'unnest(%s::bigint[], %s::int[], %s::numeric[], %s::text[], %s::timestamptz[])',
        tuple(list(c) for c in zip(*rows)))


@pytest.fixture
def rules_patterns(conn):
    """The workload, run, then one cep.run_maintenance() (the scheduled duty that times out the
    runs of keys without new events: a writer advances only its own keys): returns (conn,
    statements, facts) with the statements each rule was active for and the clock interval of
    every statement."""
    conn.execute("CREATE TABLE public.tx (id bigint PRIMARY KEY, user_id int NOT NULL, "
                 "amount numeric(12, 2) NOT NULL, location text, created_at timestamptz NOT NULL)")
    conn.execute("SELECT cep.create_stream(%s, 'public.tx', 'created_at', 'user_id')",
                 (RP_STREAM,))
    conn.execute("SELECT cep.create_pattern('burst3', %s, 'a{3}', '{\"a\": \"amount > 1000\"}', "
                 "within => '10 minutes')", (RP_STREAM,))
    conn.execute("SELECT cep.create_pattern('capped', %s, 'a{3}', '{\"a\": \"amount > 1000\"}', "
                 "max_runs => 1)", (RP_STREAM,))
    statements = rp_workload()
    first = ["large", "night", "burst"]
    active = {}                     # rule -> set of statement indexes it was active for
    live = set()
    clocks = []
    for i, rows in enumerate(statements):
        if i in RP_STEPS:
            sql, what = RP_STEPS[i]
            if what == "initial":
                conn.execute(sql, (RP_STREAM, first, [RP_RULES[n][0] for n in first],
                                   [RP_RULES[n][1] for n in first],
                                   [RP_RULES[n][2] for n in first]))
                live |= set(first)
            elif what == "add":
                conn.execute(sql, (RP_STREAM, "small\\\"odd", *RP_RULES["small\\\"odd"]))
                live.add("small\\\"odd")
            elif what == "off":
                conn.execute(sql)
                live.discard("large")
            else:
                conn.execute(sql)
        for n in live:
            active.setdefault(n, set()).add(i)
        before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        rp_insert(conn, rows)
        clocks.append((before, conn.execute("SELECT clock_timestamp()").fetchone()[0]))
    conn.execute("SELECT * FROM cep.run_maintenance()").fetchall()
    return conn, statements, {"active": active, "clocks": clocks}


def rp_expected_rules(statements, facts):
    """rule -> (evaluations, hits, index of the last statement with a hit or None)."""
    stored: dict[int, list] = {}
    fired = {n: [] for n in RP_RULES}
    for i, rows in enumerate(statements):
        for r in rows:
            stored.setdefault(r[1], []).append(r[4])
        for r in rows:
            t = r[4]
            count = sum(1 for x in stored[r[1]] if t - RP_BURST_WINDOW < x <= t)
            hit = {"large": r[2] > 1000, "night": t.hour >= 22 or t.hour < 6,
                   "burst": count > 3, "small\\\"odd": r[2] < 50}
            for n, ok in hit.items():
                if i in facts["active"].get(n, ()) and ok:
                    fired[n].append(i)
    out = {}
    for n in RP_RULES:
        evals = sum(len(statements[i]) for i in facts["active"].get(n, ()))
        out[n] = (evals, len(fired[n]), max(fired[n]) if fired[n] else None)
    return out


def rp_expected_patterns(statements):
    """pattern -> dict of events, matches, active_runs, keys_with_runs, drops, late_events,
    last_match, for burst3 (a{3} within 10 minutes) and capped (a{3}, one run at a time)."""
    watermark = dt.datetime.min.replace(tzinfo=UTC)
    per_key: dict[int, list] = {}
    late_to_patterns = 0
    progress: dict[int, tuple] = {}
    for rows in statements:
        mark = watermark
        for r in rows:
            if r[4] < mark:
                continue                          # late to the stream: no pattern sees it
            watermark = max(watermark, r[4])
            if r[2] > 1000:                       # relaxed: only events variable a accepts
                if r[1] in progress and (r[4], r[0]) <= progress[r[1]]:
                    late_to_patterns += 1
                    continue
                per_key.setdefault(r[1], []).append(r[4])
                progress[r[1]] = (r[4], r[0])
    out = {}
    # burst3: the earliest start whose third event is within 10 minutes; skip past the match.
    # Open runs at the end (after maintenance advanced every key to the final watermark):
    # starts after the last match with fewer than three events, not yet timed out by the
    # watermark (first time + within >= watermark).
    m = runs = keys = 0
    last = None
    for ts in per_key.values():
        i = 0
        while i + 2 < len(ts):
            if ts[i + 2] - ts[i] <= RP_WITHIN:
                m += 1
                last = max(last or ts[i + 2], ts[i + 2])
                i += 3
            else:
                i += 1
        open_runs = sum(1 for t in ts[i:] if t + RP_WITHIN >= watermark)
        runs += open_runs
        keys += open_runs > 0
    events = sum(len(ts) for ts in per_key.values())
    out["burst3"] = dict(events=events, matches=m, active_runs=runs, keys_with_runs=keys,
                         drops=0, late_events=late_to_patterns, last_match=last)
    # capped: one run at a time and no time limit, so every third a-event of a key completes a
    # match; every other one finds the run slot taken and is dropped (a start refused at the
    # cap), including the one completing the match; the key's n % 3 trailing events form the
    # open run.
    m = sum(len(ts) // 3 for ts in per_key.values())
    drops = sum(2 * (len(ts) // 3) + max(0, len(ts) % 3 - 1) for ts in per_key.values())
    runs = sum(1 for ts in per_key.values() if len(ts) % 3)
    last = max((ts[3 * (len(ts) // 3) - 1] for ts in per_key.values() if len(ts) >= 3),
               default=None)
    out["capped"] = dict(events=events, matches=m, active_runs=runs, keys_with_runs=runs,
                         drops=drops, late_events=late_to_patterns, last_match=last)
    return out


RULE_STATS_SQL = ("SELECT rule_name, stream, evaluations, hits, hit_rate, last_hit "
                  "FROM cep.rule_stats ORDER BY rule_name")
PATTERN_STATS_SQL = ("SELECT pattern, stream, events, matches, active_runs, keys_with_runs, "
                     "drops, late_events, last_match FROM cep.pattern_stats ORDER BY pattern")
PATTERN_FIGURES = ("events", "matches", "active_runs", "keys_with_runs", "drops", "late_events",
                   "last_match")


def rp_check_metrics(conn, rule_rows, pattern_rows):
    names: dict = {}
    m = parse_prometheus(conn.execute("SELECT cep.metrics()").fetchone()[0], names)
    for fam, col in (("pg_cep_rule_evaluations_total", 2), ("pg_cep_rule_hits_total", 3)):
        assert names[fam] == ("stream", "rule")
        assert m[fam] == {(r[1], r[0]): r[col] for r in rule_rows}
    for fam, col in (("pg_cep_pattern_events_total", 2), ("pg_cep_pattern_matches_total", 3),
                     ("pg_cep_pattern_active_runs", 4), ("pg_cep_pattern_drops_total", 6),
                     ("pg_cep_pattern_late_events_total", 7)):
        assert names[fam] == ("stream", "pattern")
        assert m[fam] == {(p[1], p[0]): p[col] for p in pattern_rows}
    return m


def test_rule_and_pattern_stats_match_the_workload(rules_patterns):
    conn, statements, facts = rules_patterns
    want = rp_expected_rules(statements, facts)
    rows = conn.execute(RULE_STATS_SQL).fetchall()
    assert [r[0] for r in rows] == sorted(RP_RULES)
    for name, stream, evals, hits, rate, last_hit in rows:
        w_evals, w_hits, w_last = want[name]
        assert stream == RP_STREAM
        assert (evals, hits) == (w_evals, w_hits), name
        assert 0 < hits < evals, name                  # the workload exercises every rule
        assert rate == round(hits / evals, 6), name
        lo, hi = facts["clocks"][w_last]
        assert lo <= last_hit <= hi, (name, w_last, last_hit)
    # 'large' was switched off, 'small' added later, 'night' has two versions: their
    # evaluations cover exactly the statements they were active for.
    assert want["large"][0] < want["burst"][0] and want["small\\\"odd"][0] < want["burst"][0]
    assert want["night"][0] == want["burst"][0] == sum(len(s) for s in statements)
    assert conn.execute("SELECT max(version) FROM cep.rules WHERE name = 'night'"
                        ).fetchone()[0] == 2

    pats = conn.execute(PATTERN_STATS_SQL).fetchall()
    expected = rp_expected_patterns(statements)
    for p in pats:
        assert p[1] == RP_STREAM
        assert dict(zip(PATTERN_FIGURES, p[2:])) == expected[p[0]], p[0]
    # the workload exercises every figure
    assert all(expected[n][f] for n in expected for f in PATTERN_FIGURES if f != "drops")
    assert expected["capped"]["drops"] > 0 and expected["burst3"]["late_events"] == 1
    late = sum(len(s) for s in statements) - conn.execute(
        "SELECT count(*) FROM public.tx AS t WHERE NOT EXISTS (SELECT 1 FROM cep.late_events "
        "AS l WHERE l.event_id = t.id)").fetchone()[0]
    assert late == 14 == conn.execute("SELECT late_events FROM cep.stream_stats").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM cep.matches WHERE pattern = 'burst3'"
                        ).fetchone()[0] == expected["burst3"]["matches"]

    rp_check_metrics(conn, rows, pats)


def test_monitoring_reads_no_event_table(rules_patterns):
    """The backend's scan counters of the event table do not move while the monitoring views
    and cep.metrics() are read (they also hold the counts not yet flushed from earlier
    transactions, hence the difference inside one transaction). A sanity query does move them."""
    conn, _, _ = rules_patterns
    scans_sql = ("SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables "
                 "WHERE relid = 'public.tx'::regclass")
    with conn.transaction():
        before = conn.execute(scans_sql).fetchone()[0]
        for sql in ("SELECT cep.metrics()", RULE_STATS_SQL, PATTERN_STATS_SQL,
                    "SELECT * FROM cep.stream_stats", "SELECT * FROM cep.window_stats",
                    "SELECT * FROM cep.consumer_stats", "SELECT * FROM cep.dashboard"):
            conn.execute(sql).fetchall()
        after = conn.execute(scans_sql).fetchone()[0]
        conn.execute("SELECT count(*) FROM public.tx").fetchone()
        sanity = conn.execute(scans_sql).fetchone()[0]
    assert after == before
    assert sanity > after


def test_compaction_keeps_rule_and_pattern_figures(rules_patterns):
    conn, statements, facts = rules_patterns
    rules0 = conn.execute(RULE_STATS_SQL).fetchall()
    pats0 = conn.execute(PATTERN_STATS_SQL).fetchall()
    stream0 = conn.execute("SELECT events_total, late_events, batches_total "
                           "FROM cep.stream_stats").fetchone()
    metrics0 = rp_check_metrics(conn, rules0, pats0)
    logs0 = [conn.execute(f"SELECT count(*) FROM cep.{t}").fetchone()[0]
             for t in ("rule_log", "pattern_log")]
    # An hour old: folded per minute; then 30 days old: rule counters archived (past the
    # default stats_retention of 7 days). Maintenance runs twice each time (idempotent).
    shifted = dt.timedelta(0)
    for shift, table_counts in ((dt.timedelta(hours=1), True), (dt.timedelta(days=30), False)):
        # (time passes: log times move back, and so do the last-hit times of compacted rows)
        conn.execute("UPDATE cep.rule_log SET logged_at = logged_at - %(s)s, hit_last = "
                     "array(SELECT x - %(s)s FROM unnest(hit_last) WITH ORDINALITY AS u (x, o) "
                     "ORDER BY o) WHERE logged_at > '-infinity'", {"s": shift})
        for t in ("pattern_log", "stream_log"):
            conn.execute(f"UPDATE cep.{t} SET logged_at = logged_at - %s "
                         "WHERE logged_at > '-infinity'", (shift,))
        shifted += shift
        done = [dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
                for _ in range(2)]
        if table_counts:
            assert done[0]["compact_rule_log"] > 0 and done[0]["compact_pattern_log"] > 0
        assert done[1]["compact_rule_log"] == done[1]["compact_pattern_log"] == 0
        rules = conn.execute(RULE_STATS_SQL).fetchall()
        assert rules == [r[:5] + (r[5] - shifted,) for r in rules0]
        pats = conn.execute(PATTERN_STATS_SQL).fetchall()
        assert pats == pats0
        assert conn.execute("SELECT events_total, late_events, batches_total "
                            "FROM cep.stream_stats").fetchone() == stream0
        m = rp_check_metrics(conn, rules, pats)
        for fam in metrics0:
            if fam.startswith(("pg_cep_rule_", "pg_cep_pattern_")):
                assert m[fam] == metrics0[fam], fam
    logs = [conn.execute(f"SELECT count(*) FROM cep.{t}").fetchone()[0]
            for t in ("rule_log", "pattern_log")]
    assert logs[0] < logs0[0] and logs[1] < logs0[1], (logs0, logs)
    # the rule counters are now one archive row per rule set
    assert conn.execute("SELECT count(*) = count(DISTINCT rule_set_id) AND bool_and(logged_at = "
                        "'-infinity') FROM cep.rule_log").fetchone()[0]
    # and the figures are still those of the workload
    want = rp_expected_rules(statements, facts)
    assert {r[0]: r[2:4] for r in rules} == {n: w[:2] for n, w in want.items()}


def test_pattern_last_match_is_the_latest_match_of_a_statement(conn):
    """One statement completes a match for key 1 at 12:10 and one for key 2 at 12:02; key 2 is
    processed after key 1. last_match is the event time of the latest match: 12:10."""
    conn.execute("CREATE TABLE public.tx (id bigserial PRIMARY KEY, user_id int NOT NULL, "
                 "amount numeric NOT NULL, created_at timestamptz NOT NULL)")
    conn.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id')")
    conn.execute("SELECT cep.create_pattern('p', 'tx', 'a{3}', '{\"a\": \"amount > 1000\"}')")
    base = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    rows = [(1, base + dt.timedelta(minutes=m)) for m in (8, 9, 10)] + \
        [(2, base + dt.timedelta(minutes=m)) for m in (0, 1, 2)]
    conn.execute("INSERT INTO public.tx (user_id, amount, created_at) SELECT u, 5000, t "
                 "FROM unnest(%s::int[], %s::timestamptz[]) AS x (u, t)",
                 ([r[0] for r in rows], [r[1] for r in rows]))
    assert conn.execute("SELECT matches, last_match FROM cep.pattern_stats").fetchone() == (
        2, base + dt.timedelta(minutes=10))
