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
