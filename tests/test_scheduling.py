"""cep.run_maintenance() scheduled with pg_cron (Debian postgresql-15-cron, preloaded in a
private cluster) runs, succeeds, and does its work: here it makes the partitions that a
raised premake asks for and compacts the ingest log."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow


def test_pg_cron_runs_maintenance(cluster_factory):
    cluster = cluster_factory(settings={"shared_preload_libraries": "pg_cron",
                                        "cron.database_name": "postgres",
                                        # run jobs in background workers: no libpq connection
                                        "cron.use_background_workers": "on"})
    with cluster.connect() as c:
        c.execute("CREATE EXTENSION pg_cep")
        c.execute("CREATE EXTENSION pg_cron")
        c.execute("""
            CREATE TABLE public.tx (id bigint NOT NULL, user_id int NOT NULL,
                                    created_at timestamptz NOT NULL, PRIMARY KEY (id, created_at))
            PARTITION BY RANGE (created_at)""")
        c.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id', 'id')")
        assert c.execute("SELECT cep.partition_stream('tx', '1 hour', premake => 1)").fetchone()[0] == 2
        c.execute("INSERT INTO public.tx VALUES (1, 1, now())")
        # Raise premake in the catalog only: the scheduled maintenance must make the rest.
        c.execute("UPDATE cep.partitioned_streams SET premake = 4")
        c.execute("UPDATE cep.stream_log SET logged_at = logged_at - interval '10 minutes'")
        # pg_cron 1.4 schedules by the minute: the first run comes within 60 seconds.
        job = c.execute("SELECT cron.schedule('pg_cep maintenance', '* * * * *', "
                        "'SELECT cep.run_maintenance()')").fetchone()[0]
        deadline = time.time() + 90
        while True:
            runs = c.execute("SELECT status, return_message FROM cron.job_run_details "
                             "WHERE jobid = %s ORDER BY runid", (job,)).fetchall()
            parts = c.execute("SELECT count(*) FROM pg_inherits "
                              "WHERE inhparent = 'public.tx'::regclass").fetchone()[0]
            # 6 = default + the current hour + 4 ahead; 7 when an hour began during the test
            if any(r[0] == "succeeded" for r in runs) and parts in (6, 7):
                break
            assert time.time() < deadline, f"pg_cron runs: {runs}, partitions: {parts}"
            time.sleep(0.5)
        assert all(r[0] in ("succeeded", "running", "starting") for r in runs), runs
        assert c.execute("SELECT bool_and(compacted) FROM cep.stream_log").fetchone()[0]
        # the partitions made by the scheduled run take rows 4 hours ahead (the default
        # partition pg_cep adds refuses rows)
        c.execute("INSERT INTO public.tx VALUES (2, 1, now() + interval '4 hours')")
        c.execute("SELECT cron.unschedule(%s)", (job,))
