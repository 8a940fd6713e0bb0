"""Alerts and the NOTIFY doorbell: alerts are rows first; the doorbell rings at most once per
channel per transaction with an id-only payload, can be switched off at three levels, stays
silent on rollback, and can never make the producing statement fail."""

from __future__ import annotations

import pytest
import psycopg

SETUP = """
CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer, t timestamptz);
SELECT cep.create_stream('ev', 'public.ev', 't', 'k');
CREATE TABLE public.ev2 (id bigint PRIMARY KEY, k integer, t timestamptz);
SELECT cep.create_stream('ev2', 'public.ev2', 't', 'k', notify_channel => 'fraud_alerts');
CREATE TABLE public.quiet (id bigint PRIMARY KEY, k integer, t timestamptz);
SELECT cep.create_stream('quiet', 'public.quiet', 't', 'k', notify => false);
"""

RAISE = """
SELECT cep._raise_alerts(
    (SELECT stream_id FROM cep.streams WHERE name = %(stream)s),
    (SELECT array_agg(ROW('rule', 'big_amount', %(stream)s, (g %% 7)::text, g, 'high', 0.5,
                          'amount over limit', jsonb_build_object('n', g))::cep.alert_draft)
     FROM generate_series(1, %(n)s) AS g))
"""


@pytest.fixture
def listener(server, dbname):
    with server.connect(dbname) as c:
        c.execute("LISTEN cep_alerts")
        c.execute("LISTEN fraud_alerts")
        yield c


def drain(listener, timeout=0.5):
    return [(n.channel, n.payload) for n in listener.notifies(timeout=timeout)]


@pytest.fixture
def producer(conn):
    conn.execute(SETUP)
    return conn


def raise_alerts(conn, stream="ev", n=3):
    return conn.execute(RAISE, {"stream": stream, "n": n}).fetchone()[0]


def test_one_doorbell_per_channel_per_transaction(producer, listener):
    with producer.transaction():
        assert raise_alerts(producer, n=3) == 3
        assert raise_alerts(producer, n=5) == 5
        raise_alerts(producer, stream="ev2", n=2)
        raise_alerts(producer, stream="ev2", n=2)
    got = drain(listener)
    first_ev = producer.execute(
        "SELECT min(alert_id) FROM cep.alerts WHERE stream = 'ev'").fetchone()[0]
    first_ev2 = producer.execute(
        "SELECT min(alert_id) FROM cep.alerts WHERE stream = 'ev2'").fetchone()[0]
    assert sorted(got) == sorted([("cep_alerts", str(first_ev)), ("fraud_alerts", str(first_ev2))])
    assert producer.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 12
    # A new transaction rings again.
    raise_alerts(producer, n=1)
    assert [c for c, _ in drain(listener)] == ["cep_alerts"]


def test_alert_rows_carry_what_was_raised(producer):
    raise_alerts(producer, n=4)
    rows = producer.execute(
        "SELECT source_kind, source_name, stream, partition_key, event_id, severity, score, "
        "details->>'n', txid = pg_current_xact_id() FROM cep.alerts ORDER BY alert_id").fetchall()
    assert [r[4] for r in rows] == [1, 2, 3, 4]
    assert all(r[:3] == ("rule", "big_amount", "ev") and r[5] == "high" and r[6] == 0.5
               for r in rows)
    assert [r[3] for r in rows] == ["1", "2", "3", "4"]
    assert [r[7] for r in rows] == ["1", "2", "3", "4"]


def test_rollback_leaves_no_alert_and_no_doorbell(producer, listener):
    with producer.transaction(force_rollback=True):
        raise_alerts(producer, n=3)
    assert drain(listener) == []
    assert producer.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 0


@pytest.mark.parametrize("how", ["session", "global", "stream", "queue"])
def test_doorbell_can_be_switched_off(producer, listener, how):
    stream = "ev"
    if how == "session":
        producer.execute("SET cep.notify = off")
    elif how == "global":
        producer.execute("INSERT INTO cep.settings VALUES ('notify', 'off')")
    elif how == "stream":
        stream = "quiet"
    else:  # a queue considered full: skip rather than risk failing the commit
        producer.execute("INSERT INTO cep.settings VALUES ('notify_max_queue_usage', '0')")
    assert raise_alerts(producer, stream=stream, n=2) == 2
    assert drain(listener) == []
    assert producer.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 2


def test_doorbell_never_raises(producer):
    # An empty channel name makes pg_notify fail; the doorbell swallows it and says so.
    assert producer.execute("SELECT cep._ring_doorbell('', 1)").fetchone()[0] is False
    assert producer.execute("SELECT cep._ring_doorbell(NULL, 1)").fetchone()[0] is False
    assert producer.execute("SELECT cep._ring_doorbell('cep_alerts', 1)").fetchone()[0] is True


def test_many_alerts_one_small_notification(producer, listener):
    assert raise_alerts(producer, n=100_000) == 100_000
    got = drain(listener, timeout=2)
    assert len(got) == 1 and len(got[0][1]) < 20


def test_alert_constraints(producer):
    sid = producer.execute("SELECT stream_id FROM cep.streams WHERE name = 'ev'").fetchone()[0]
    for bad in ["ROW('nope', 'x', 'ev', NULL, NULL, 'high', NULL, 'm', NULL)",
                "ROW('rule', 'x', 'ev', NULL, NULL, 'severe', NULL, 'm', NULL)",
                "ROW('rule', 'x', 'ev', NULL, NULL, 'high', 'NaN', 'm', NULL)",
                "ROW('rule', 'x', 'ev', NULL, NULL, 'high', -1, 'm', NULL)"]:
        with pytest.raises(psycopg.errors.CheckViolation):
            producer.execute(f"SELECT cep._raise_alerts(%s, ARRAY[{bad}::cep.alert_draft])", (sid,))
