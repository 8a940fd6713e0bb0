"""Monitoring figures against the workload that produced them: ingest-time percentiles against
numpy over the per-statement log, cep.metrics() against the views it exports (and a parser of
the Prometheus text format), cep.window_stats against the window views."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest

UTC = dt.timezone.utc

SETUP = """
CREATE TABLE public.ev (id bigint PRIMARY KEY, k text, v numeric, t timestamptz NOT NULL);
SELECT cep.create_stream('ev "quoted"', 'public.ev', 't', 'k', allowed_lateness => '10 seconds');
"""

SAMPLE = re.compile(r'^([a-z_]+)(?:\{([a-z_]+)="((?:[^"\\]|\\.)*)"\})? (-?[0-9.e+]+)$')


def parse_prometheus(text: str) -> dict:
    """name -> {label value or None: float}; checks HELP/TYPE lines precede each family."""
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
        name, _label, value, number = m.groups()
        assert name in declared, f"{name} has no # TYPE line before it"
        key = None if value is None else value.replace('\\"', '"').replace("\\\\", "\\")
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
