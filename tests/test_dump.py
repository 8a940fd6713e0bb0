"""pg_dump and restore keep a working pg_cep: catalog rows, bookkeeping, alerts and the
generated ingest functions and triggers (which are deliberately not extension members) come
back, and ingest continues where it stopped."""

import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_dump_and_restore_keeps_streams_working(server, dbname):
    with server.connect(dbname) as c:
        c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k int, v numeric, t timestamptz)")
        c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k', "
                  "allowed_lateness => '1 minute')")
        c.execute("INSERT INTO public.ev SELECT g, g % 5, g, now() - interval '1 hour' "
                  "+ g * interval '1 second' FROM generate_series(1, 300) g")
        c.execute("INSERT INTO public.ev VALUES (1000, 1, 1, now() - interval '3 hours')")
        c.execute("INSERT INTO cep.settings VALUES ('notify', 'off')")
        c.execute("SELECT cep._raise_alerts(1, ARRAY[ROW('rule','r','ev','1',1,'high',0.5,'m',"
                  "NULL)::cep.alert_draft])")
        before = c.execute("SELECT events_total, late_events, batches_total, watermark "
                           "FROM cep.stream_stats").fetchone()
    restored = server.new_database(template="template0", prefix="restored")
    try:
        env = server.env(dbname)
        dump = subprocess.run(["pg_dump", "-Fc", dbname], env=env, capture_output=True,
                              check=True).stdout
        res = subprocess.run(["pg_restore", "--exit-on-error", "-d", restored], input=dump,
                             env=server.env(restored), capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        with server.connect(restored) as c:
            assert c.execute("SELECT events_total, late_events, batches_total, watermark "
                             "FROM cep.stream_stats").fetchone() == before
            assert c.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 1
            assert c.execute("SELECT value FROM cep.settings").fetchone()[0] == "off"
            c.execute("INSERT INTO public.ev SELECT g, g % 5, g, now() FROM "
                      "generate_series(2000, 2009) g")
            assert c.execute("SELECT events_total, batches_total FROM cep.stream_stats"
                             ).fetchone() == (before[0] + 10, before[2] + 1)
            # The sequences continued: new streams and alerts get fresh ids.
            c.execute("CREATE TABLE public.ev2 (id bigint PRIMARY KEY, k int, t timestamptz)")
            assert c.execute("SELECT cep.create_stream('ev2', 'public.ev2', 't', 'k')"
                             ).fetchone()[0] == 2
            c.execute("SELECT cep._raise_alerts(2, ARRAY[ROW('rule','r','ev2','1',1,'high',0.5,"
                      "'m',NULL)::cep.alert_draft])")
            assert c.execute("SELECT max(alert_id) FROM cep.alerts").fetchone()[0] == 2
    finally:
        server.drop_database(restored)


def test_dump_and_restore_keeps_rules_and_patterns(server, dbname):
    """Rules (with their versions), a risk policy, z-score histories, patterns with open runs
    and their generated matchers survive dump and restore; the restored database continues
    exactly where the original does."""
    setup = """
        CREATE TABLE public.tx (id bigint PRIMARY KEY, k int NOT NULL, amount numeric,
                                sym text, t timestamptz NOT NULL);
        SELECT cep.create_stream('tx', 'public.tx', 't', 'k');
        INSERT INTO cep.rules (stream, name, condition, risk_score) VALUES
          ('tx', 'big', '{"field": "amount", "op": ">", "value": 100}', 0.5),
          ('tx', 'burst', '{"metric": "count", "window": "1 hour", "op": ">=", "value": 3}', 0.4),
          ('tx', 'odd', '{"anomaly": "zscore", "field": "amount", "threshold": 2,
                          "min_samples": 3}', 0.3);
        UPDATE cep.rules SET risk_score = 0.6 WHERE name = 'big';
        SELECT cep.set_risk_policy('tx', 'noisy_or', log_all => true);
        SELECT cep.create_pattern('abc', 'tx', 'a b+ c',
            '{"a": "sym = ''a''", "b": "sym = ''b''", "c": "sym = ''c''"}');
    """
    more = ("INSERT INTO public.tx SELECT g, 1, g * 10, (ARRAY['b', 'b', 'c', 'a'])[g %% 4 + 1], "
            "'2026-01-01 10:00'::timestamptz + g * interval '1 minute' "
            "FROM generate_series(%s::int, %s::int) g")
    with server.connect(dbname) as c:
        c.execute(setup)
        c.execute(more, (1, 9))            # leaves a run of abc open (…, a, b, b at the end)
        assert c.execute("SELECT sum(cardinality(r_no)) FROM cep.pattern_state").fetchone()[0] > 0
    restored = server.new_database(template="template0", prefix="restored")
    try:
        dump = subprocess.run(["pg_dump", "-Fc", dbname], env=server.env(dbname),
                              capture_output=True, check=True).stdout
        res = subprocess.run(["pg_restore", "--exit-on-error", "-d", restored], input=dump,
                             env=server.env(restored), capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        results = []
        for db in (dbname, restored):
            with server.connect(db) as c:
                c.execute(more, (10, 20))
                c.execute("SELECT cep.advance_watermark('tx')")
                results.append((
                    c.execute("SELECT name, version, risk_score FROM cep.rules "
                              "ORDER BY name").fetchall(),
                    c.execute("SELECT count(*) FROM cep.rule_versions").fetchone()[0],
                    c.execute("SELECT event_id, total_score, triggered_rules, rule_versions "
                              "FROM cep.risk_assessments ORDER BY event_id").fetchall(),
                    c.execute("SELECT event_ids, classifiers FROM cep.matches "
                              "ORDER BY match_id").fetchall(),
                    c.execute("SELECT rule_name, evaluations, hits FROM cep.rule_stats "
                              "ORDER BY 1").fetchall()))
        assert results[0] == results[1]
        assert results[0][1] == 4 and len(results[0][3]) >= 2
    finally:
        server.drop_database(restored)
