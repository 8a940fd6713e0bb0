"""Versions are real: from every frozen version in extension/, ALTER EXTENSION pg_cep UPDATE
gives exactly the catalog of a fresh install of the current version (objects, definitions,
comments, ACLs, extension membership and pg_dump configuration), passes the pgTAP suite, and
keeps existing streams working."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalog import catalog_snapshot, diff_snapshots
from pgtap_run import run_pg_prove

ROOT = Path(__file__).resolve().parent.parent


def current_version() -> str:
    text = (ROOT / "control" / "pg_cep.control").read_text()
    return re.search(r"^default_version\s*=\s*'([^']+)'", text, re.M).group(1)


def frozen_versions() -> list[str]:
    out = []
    for f in (ROOT / "extension").glob("pg_cep--*.sql"):
        m = re.fullmatch(r"pg_cep--(\d+\.\d+\.\d+)\.sql", f.name)
        if m and m.group(1) != current_version():
            out.append(m.group(1))
    return sorted(out, key=lambda v: tuple(map(int, v.split("."))))


MEMBERSHIP = """
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
FROM pg_catalog.pg_depend AS d
JOIN pg_catalog.pg_extension AS e ON e.oid = d.refobjid
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
  AND e.extname = 'pg_cep'
ORDER BY 1
"""

CONFIG = """
SELECT coalesce(array_agg(c::regclass::text ORDER BY c::regclass::text), '{}'),
       coalesce(array_length(e.extcondition, 1), 0)
FROM pg_catalog.pg_extension AS e LEFT JOIN LATERAL unnest(e.extconfig) AS c ON true
WHERE e.extname = 'pg_cep' GROUP BY e.extcondition
"""


def describe(conn):
    return {
        "catalog": catalog_snapshot(conn),
        "members": [r[0] for r in conn.execute(MEMBERSHIP)],
        "config": conn.execute(CONFIG).fetchone(),
        "version": conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_cep'").fetchone()[0],
    }


@pytest.fixture
def fresh(server):
    db = server.new_database(template="template0")
    with server.connect(db) as c:
        c.execute("CREATE EXTENSION pg_cep")
        yield describe(c)
    server.drop_database(db)


def test_every_frozen_version_has_an_update_path(server, fresh):
    versions = frozen_versions()
    assert fresh["version"] == current_version()
    with server.connect("cep_template") as c:
        paths = {r[0]: r[1] for r in c.execute(
            "SELECT source, path FROM pg_extension_update_paths('pg_cep') WHERE target = %s",
            (current_version(),))}
        available = {r[0] for r in c.execute(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'pg_cep'")}
    assert set(versions) | {current_version()} <= available
    for v in versions:
        assert paths.get(v), f"no ALTER EXTENSION UPDATE path from {v} to {current_version()}"


@pytest.mark.parametrize("version", frozen_versions())
def test_update_from_frozen_version_equals_fresh_install(server, fresh, version):
    db = server.new_database(template="template0")
    try:
        with server.connect(db) as c:
            c.execute(f"CREATE EXTENSION pg_cep VERSION '{version}'")
            # A stream made under the old version must keep working after the update.
            c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k int, v numeric, "
                      "t timestamptz)")
            c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k')")
            c.execute("INSERT INTO public.ev SELECT g, g % 3, g, now() - interval '1 hour' "
                      "+ g * interval '1 second' FROM generate_series(1, 100) g")
            c.execute("ALTER EXTENSION pg_cep UPDATE")
            c.execute("INSERT INTO public.ev SELECT g, g % 3, g, now() - interval '1 hour' "
                      "+ g * interval '1 second' FROM generate_series(101, 150) g")
            assert c.execute("SELECT events_total, batches_total FROM cep.stream_stats"
                             ).fetchone() == (150, 2)
            with pytest.raises(Exception):
                c.execute("INSERT INTO public.ev VALUES (999, 1, 'NaN', now())")
            # ... and its trigger and function go with a later DROP EXTENSION, like new ones
            assert c.execute(
                "SELECT count(*) FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid "
                "WHERE x.extname = 'pg_cep' AND d.deptype = 'x' AND (d.objid IN (SELECT oid "
                "FROM pg_trigger WHERE tgrelid = 'public.ev'::regclass) OR d.objid = "
                "'cep._ingest_1()'::regprocedure)").fetchone()[0] == 2
            c.execute("SELECT cep.drop_stream('ev')")
            c.execute("DROP TABLE public.ev")
            c.execute("DELETE FROM cep.alerts")
            got = describe(c)
        assert got["version"] == fresh["version"]
        assert got["members"] == fresh["members"]
        assert got["config"] == fresh["config"]
        diff = diff_snapshots(fresh["catalog"], got["catalog"])
        assert not diff, "\n".join(diff)
        with server.connect(db) as c:
            c.execute("CREATE EXTENSION pgtap")
        res = run_pg_prove(server.env(db))
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        server.drop_database(db)


@pytest.mark.parametrize("version", frozen_versions())
def test_script_path_upgrade_equals_fresh_install(server, fresh, version):
    """The pgcep runner's script path (no extension files used) upgrades the same way."""
    import subprocess
    import sys

    db = server.new_database(template="template0")
    try:
        def pgcep(*args):
            res = subprocess.run([sys.executable, "-m", "pgcep", *args, "--dsn", server.dsn(db)],
                                 capture_output=True, text=True, cwd=ROOT)
            assert res.returncode == 0, res.stdout + res.stderr
            return res.stdout

        pgcep("install", "--mode", "script", "--version", version)
        with server.connect(db) as c:
            c.execute("CREATE TABLE public.ev (id bigint PRIMARY KEY, k int, t timestamptz)")
            c.execute("SELECT cep.create_stream('ev', 'public.ev', 't', 'k')")
            c.execute("INSERT INTO public.ev VALUES (1, 1, now())")
        assert f"upgraded to {current_version()}" in pgcep("upgrade")
        with server.connect(db) as c:
            c.execute("INSERT INTO public.ev VALUES (2, 1, now())")
            assert c.execute("SELECT events_total FROM cep.stream_stats").fetchone()[0] == 2
            c.execute("SELECT cep.drop_stream('ev')")
            c.execute("DROP TABLE public.ev")
            got = catalog_snapshot(c)
        diff = diff_snapshots(fresh["catalog"], got)
        assert not diff, "\n".join(diff)
    finally:
        server.drop_database(db)
