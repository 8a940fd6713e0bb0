"""Security baseline: the documented grant recipe (docs/grants.sql) gives an admin, a writer
and a reader exactly what they need; planted look-alike functions, operators and relations in
public and pg_temp are never used; a foreign or writable pre-existing `cep` schema stops the
installation."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def roles(server, dbname):
    with server.connect(dbname) as su:
        for r in ("cep_admin", "cep_writer", "cep_reader"):
            su.execute(f"DROP ROLE IF EXISTS {r}")  # roles are cluster-wide
        su.execute("CREATE ROLE cep_admin LOGIN; CREATE ROLE cep_writer LOGIN; "
                   "CREATE ROLE cep_reader LOGIN")
        su.execute((ROOT / "docs" / "grants.sql").read_text())
        su.execute("GRANT CREATE ON SCHEMA public TO cep_admin")
    yield
    with server.connect(dbname) as su:
        su.execute("DROP OWNED BY cep_admin, cep_writer, cep_reader CASCADE")
        for r in ("cep_admin", "cep_writer", "cep_reader"):
            su.execute(f"DROP ROLE {r}")


def as_role(server, dbname, role):
    return server.connect(dbname, user=role)


def test_grant_recipe_admin_writer_reader(server, dbname, roles):
    with as_role(server, dbname, "cep_admin") as admin:
        admin.execute("CREATE TABLE public.tx (id bigserial PRIMARY KEY, user_id int, "
                      "amount numeric, created_at timestamptz)")
        admin.execute("SELECT cep.create_stream('tx', 'public.tx', 'created_at', 'user_id')")
        admin.execute("GRANT INSERT ON public.tx TO cep_writer")
        admin.execute("GRANT USAGE ON SEQUENCE public.tx_id_seq TO cep_writer")
        owner = admin.execute(
            "SELECT pg_get_userbyid(proowner), prosecdef FROM pg_proc "
            "WHERE proname = '_ingest_1'").fetchone()
        assert owner == ("cep_admin", True)
        admin.execute("CREATE TABLE public.clicks (id bigserial PRIMARY KEY, user_id int, "
                      "item_id int, action text, created_at timestamptz)")
        admin.execute("SELECT cep.create_stream('clicks', 'public.clicks', 'created_at')")
        admin.execute("SELECT cep.create_recommender('shop', 'clicks', 'user_id', 'item_id', "
                      "'action')")
        admin.execute("GRANT INSERT ON public.clicks TO cep_writer")
        admin.execute("GRANT USAGE ON SEQUENCE public.clicks_id_seq TO cep_writer")

    with as_role(server, dbname, "cep_writer") as w:
        w.execute("INSERT INTO public.tx (user_id, amount, created_at) "
                  "SELECT g % 5, g, now() FROM generate_series(1, 100) AS g")
        w.execute("INSERT INTO public.clicks (user_id, item_id, action, created_at) "
                  "SELECT g % 17, g % 13, 'view', now() FROM generate_series(1, 100) AS g")
        for stmt in [
            "UPDATE cep.stream_log SET events = 0",
            "DELETE FROM cep.alerts",
            "INSERT INTO cep.late_events VALUES (1, 1, now(), 'x', now())",
            "SELECT cep.create_stream('x', 'public.tx', 'created_at')",
            "SELECT cep._raise_alerts(1, '{}')",
            "SELECT cep._ingest_1()",
            "SELECT cep.advance_watermark('tx')",
            "SELECT * FROM cep.stream_stats",
            "SELECT cep.create_consumer('w')",
            "SELECT * FROM cep.poll_alerts('app')",
            "UPDATE cep.recommender_pairs SET dot = 1",
            "SELECT * FROM cep.recommend('shop', '1')",
            "SELECT cep._expire_recommender(1)",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                w.execute(stmt)

    with as_role(server, dbname, "cep_reader") as r:
        assert r.execute("SELECT events_total FROM cep.stream_stats WHERE stream = 'tx'"
                         ).fetchone()[0] == 100
        assert r.execute("SELECT events_last_hour FROM cep.dashboard").fetchone()[0] == 200
        # every column of the monitoring views, not only those the planner would compute
        assert r.execute("SELECT active_keys FROM cep.dashboard").fetchone()[0] > 0
        for view in ("stream_stats", "dashboard", "consumer_stats"):
            r.execute(f"SELECT * FROM cep.{view}").fetchall()
        assert r.execute("SELECT sum(events) FROM cep.timeline('tx')").fetchone()[0] == 100
        assert r.execute("SELECT count(*) FROM cep.alerts").fetchone()[0] == 0
        # A reader runs durable consumers.
        r.execute("SELECT cep.create_consumer('app')")
        assert r.execute("SELECT count(*) FROM cep.poll_alerts('app')").fetchone()[0] == 0
        assert r.execute("SELECT cep.ack_alerts('app', '{}')").fetchone()[0] == 0
        assert r.execute("SELECT pending FROM cep.consumer_stats").fetchone()[0] == 0
        # A reader asks for recommendations.
        assert r.execute("SELECT count(*) FROM cep.recommend('shop', '1', 3)").fetchone()[0] == 3
        assert r.execute("SELECT count(*) FROM cep.similar_items('shop', '1')").fetchone()[0] > 0
        assert r.execute("SELECT count(*) FROM cep.user_recommendations WHERE user_id = '2'"
                         ).fetchone()[0] > 0
        assert r.execute("SELECT users FROM cep.recommender_stats").fetchone()[0] == 17
        for stmt in [
            "DELETE FROM cep.consumer_pending",
            "UPDATE cep.consumers SET redelivery_timeout = '1 day'",
            "UPDATE cep.streams SET allowed_lateness = '1 day'",
            "INSERT INTO cep.settings VALUES ('notify', 'off')",
            "SELECT * FROM cep.stream_log",
            "SELECT cep._raise_alerts(1, '{}')",
            "SELECT cep._regenerate_stream(1)",
            "SELECT cep.drop_stream('tx')",
            "SELECT cep.run_maintenance()",
            "DELETE FROM cep.recommender_weights",
            "SELECT cep.drop_recommender('shop')",
            "SELECT cep.create_recommender('x', 'clicks', 'user_id', 'item_id', 'action')",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                r.execute(stmt)


PLANT = """
CREATE TABLE public.planted_calls (what text);
GRANT INSERT ON public.planted_calls TO PUBLIC;
CREATE FUNCTION {schema}.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('clock_timestamp'); RETURN '2000-01-01'; END$$;
CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('now'); RETURN '2000-01-01'; END$$;
CREATE FUNCTION {schema}.hashtext(text) RETURNS integer LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('hashtext'); RETURN 0; END$$;
CREATE FUNCTION {schema}.max(timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('max'); RETURN $1; END$$;
CREATE FUNCTION {schema}.coalesce_ts(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('<'); RETURN false; END$$;
CREATE OPERATOR {schema}.< (LEFTARG = timestamptz, RIGHTARG = timestamptz,
                            FUNCTION = {schema}.coalesce_ts);
CREATE FUNCTION {schema}.eq_int(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('='); RETURN true; END$$;
CREATE OPERATOR {schema}.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = {schema}.eq_int);
CREATE FUNCTION {schema}.eq_text(text, text) RETURNS boolean LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.planted_calls VALUES ('=text'); RETURN true; END$$;
CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.eq_text);
"""


@pytest.mark.parametrize("schema", ["public", "pg_temp"])
def test_planted_lookalikes_are_never_called(conn, schema):
    conn.execute(PLANT.format(schema=schema))
    # The session puts the planted objects first, before pg_catalog.
    conn.execute(f"SET search_path = {schema}, pg_catalog")
    # (The test's own SQL qualifies pg_catalog names; only pg_cep's code is under test.)
    # A temporary table with the transition table's name must not shadow it.
    conn.execute("CREATE TEMP TABLE cep_new_rows (id bigint, k integer, t timestamptz, v numeric)")
    conn.execute("INSERT INTO cep_new_rows SELECT g, 1, pg_catalog.now(), 1 FROM pg_catalog.generate_series(1, 50) g")
    conn.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer, t timestamptz, "
                 "v numeric)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k', "
                 "allowed_lateness => '1 minute')")
    conn.execute("SELECT cep.create_recommender('rec', 'ev', 'k', 'v', 'k', "
                 "'{\"0\": 1, \"1\": 3, \"2\": 5}', horizon => '1 minute')")
    conn.execute("INSERT INTO public.ev SELECT g, g OPERATOR(pg_catalog.%) 3, pg_catalog.now() OPERATOR(pg_catalog.-) (g OPERATOR(pg_catalog.*) interval '1 second'), g "
                 "FROM pg_catalog.generate_series(1, 10) g")
    conn.execute("INSERT INTO public.ev VALUES (11, 1, pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour', 1)")
    conn.execute("SELECT cep.advance_watermark('ev', pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 minute')")
    conn.execute("SELECT * FROM cep.timeline('ev')").fetchall()
    conn.execute("SELECT * FROM cep.run_maintenance()").fetchall()
    conn.execute("SELECT cep._raise_alerts(1, ARRAY[ROW('rule','r','ev','1',1,'high',0.5,'m',"
                 "NULL)::cep.alert_draft])")
    stats = conn.execute("SELECT events_total, late_events FROM cep.stream_stats").fetchone()
    dash = conn.execute("SELECT events_last_hour FROM cep.dashboard").fetchone()[0]
    conn.execute("SELECT * FROM cep.recommend('rec', '1')").fetchall()
    conn.execute("SELECT * FROM cep.similar_items('rec', '1')").fetchall()
    conn.execute("SELECT * FROM cep.user_recommendations").fetchall()
    conn.execute("SELECT * FROM cep.recommender_stats").fetchall()
    calls = conn.execute("SELECT what FROM public.planted_calls").fetchall()
    assert calls == []
    assert stats == (11, 1)
    assert dash == 11
    conn.execute("SELECT cep.drop_stream('ev')")
    assert conn.execute("SELECT what FROM public.planted_calls").fetchall() == []


def test_pre_existing_foreign_cep_schema_is_refused(server):
    db = server.new_database(template="template0")
    try:
        with server.connect(db) as su:
            su.execute("DROP ROLE IF EXISTS cep_squatter")
            su.execute("CREATE ROLE cep_squatter")
            su.execute("CREATE SCHEMA cep AUTHORIZATION cep_squatter")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                su.execute("CREATE EXTENSION pg_cep")
            assert 'schema "cep" already exists and is owned by role "cep_squatter"' in str(exc.value)
            assert su.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = "
                              "'cep'::regnamespace").fetchone()[0] == 0
            su.execute("DROP SCHEMA cep")
            # Owned by the installer but writable by others: refused too.
            su.execute("CREATE SCHEMA cep")
            su.execute("GRANT CREATE ON SCHEMA cep TO PUBLIC")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                su.execute("CREATE EXTENSION pg_cep")
            assert "writable by PUBLIC" in str(exc.value)
            su.execute("REVOKE CREATE ON SCHEMA cep FROM PUBLIC")
            su.execute("CREATE EXTENSION pg_cep")
            assert su.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cep'"
                              ).fetchone()[0]
    finally:
        server.drop_database(db)
        with server.connect() as su:
            su.execute("DROP ROLE IF EXISTS cep_squatter")


def test_generated_function_is_not_callable_by_public(conn):
    conn.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k integer, t timestamptz)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k')")
    acl = conn.execute("SELECT proacl::text, prosecdef, proconfig FROM pg_proc "
                       "WHERE proname = '_ingest_1'").fetchone()
    assert acl[0] is not None and not re.search(r"(^|[{,])=X", acl[0])
    assert acl[1] is True and acl[2][0] == "search_path=pg_catalog, pg_temp"


def test_everything_works_with_an_empty_search_path(server):
    """Every name in pg_cep is qualified: install and use it with search_path = ''."""
    db = server.new_database(template="template0")
    try:
        with server.connect(db) as c:
            c.execute("SET search_path = ''")
            c.execute("CREATE EXTENSION pg_cep")
            c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k text, v float8, "
                      "t timestamptz)")
            c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k', "
                      "allowed_lateness => '1 minute')")
            c.execute("SELECT cep.create_recommender('rec', 'ev', 'k', 'v', 'k', "
                      "'{\"1\": 1, \"2\": 2}', horizon => '5 minutes')")
            c.execute("INSERT INTO public.ev SELECT g, (g OPERATOR(pg_catalog.%) 4)::text, g, "
                      "pg_catalog.now() OPERATOR(pg_catalog.-) (g OPERATOR(pg_catalog.*) "
                      "interval '1 second') FROM pg_catalog.generate_series(1, 500) AS g")
            c.execute("SELECT cep.advance_watermark('ev')")
            assert c.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 500
            assert c.execute("SELECT events_last_hour FROM cep.dashboard").fetchone()[0] == 500
            assert c.execute("SELECT sum(events) FROM cep.timeline('ev')").fetchone()[0] == 500
            c.execute("SELECT * FROM cep.recommend('rec', '1')").fetchall()
            assert c.execute("SELECT weight_rows FROM cep.recommender_stats").fetchone()[0] == 250
            c.execute("SELECT * FROM cep.run_maintenance()").fetchall()
            assert c.execute("SELECT weight_rows FROM cep.recommender_stats").fetchone()[0] == 0
            c.execute("SELECT cep.drop_stream('ev')")
            c.execute("DROP EXTENSION pg_cep")
    finally:
        server.drop_database(db)


def test_drop_extension_takes_the_triggers_and_functions_it_made(server):
    """DROP EXTENSION (without CASCADE) removes what pg_cep generated at run time -- the ingest
    functions, pattern matchers, the triggers on the user's tables, the refusing trigger of the
    default partition -- so the user's tables keep taking inserts afterwards; a non-superuser
    owner can do all of it, and install again."""
    db = server.new_database(template="template0")
    try:
        with server.connect(db) as su:
            su.execute("DROP ROLE IF EXISTS cep_dropper")
            su.execute("CREATE ROLE cep_dropper")
            su.execute(f'GRANT CREATE ON DATABASE "{db}" TO cep_dropper')
            su.execute("GRANT CREATE ON SCHEMA public TO cep_dropper")
        with server.connect(db) as c:
            c.execute("SET ROLE cep_dropper")
            c.execute("CREATE EXTENSION pg_cep")
            c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k int, t timestamptz)")
            c.execute("CREATE TABLE public.aq (id bigint PRIMARY KEY, k int, t timestamptz)")
            c.execute("CREATE TABLE public.pt (id bigint NOT NULL, k int, t timestamptz NOT NULL) "
                      "PARTITION BY RANGE (t)")
            c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k')")
            c.execute("SELECT cep.create_pattern('p', 'ev', 'a b', "
                      "'{\"a\": \"k > 0\", \"b\": \"k > 1\"}')")
            c.execute("SELECT cep.create_stream('aq', 'public.aq', 't', 'k', mode => 'async')")
            c.execute("SELECT cep.create_stream('pt', 'public.pt', 't', 'k', 'id')")
            c.execute("SELECT cep.partition_stream('pt', '1 hour', premake => 1)")
            for t in ("ev", "aq", "pt"):
                c.execute(f"INSERT INTO public.{t} VALUES (1, 1, now())")
            generated = c.execute(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace AND "
                "proname ~ '^_(ingest|process|pattern)_[0-9]+$'").fetchone()[0]
            assert generated == 5            # three ingest, one process, one matcher
            c.execute("DROP EXTENSION pg_cep")
            assert c.execute(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace"
            ).fetchone()[0] == 0
            assert c.execute(
                "SELECT array_agg(tgname) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = 'public' "
                "AND NOT t.tgisinternal").fetchone()[0] is None
            for t in ("ev", "aq", "pt"):
                c.execute(f"INSERT INTO public.{t} VALUES (2, 2, now())")
                assert c.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0] == 2
            c.execute("CREATE EXTENSION pg_cep")
            c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k')")
            c.execute("INSERT INTO public.ev VALUES (3, 3, now())")
            assert c.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 1
    finally:
        server.drop_database(db)
        with server.connect() as su:
            su.execute("DROP ROLE IF EXISTS cep_dropper")
