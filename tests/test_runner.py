"""The pgcep migration runner: both install paths give the same catalog and pass the pgTAP
suite as a non-superuser; concurrent runners serialize; a killed runner leaves nothing half
applied; foreign schemas and mixed paths are refused; uninstall is clean; upgrade chains are
the shortest ones."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psycopg
import pytest

from catalog import catalog_snapshot, diff_snapshots
from pgcep.runner import LOCK_KEY
from pgcep.scripts import Scripts, parse_script_names, upgrade_path
from pgharness import ROOT
from pgtap_run import pgtap_files, run_pg_prove

VERSION = Scripts.discover(ROOT).default_version
BUILT = ROOT / "build" / f"pg_cep--{VERSION}.sql"
# Versions of synthetic script trees, above any real version.
NEXT, NEXT2 = "90.2.0", "90.3.0"
_names = itertools.count(1)


# -- helpers -------------------------------------------------------------------------------

def pgcep(*args: str, dsn: str, root: Path | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args, dsn, root), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def spawn(*args: str, dsn: str, root: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(_command(args, dsn, root), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _command(args: tuple[str, ...], dsn: str, root: Path | None) -> list[str]:
    extra = ["--root", str(root)] if root else []
    return [sys.executable, "-m", "pgcep", *args, "--dsn", dsn, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"pgcep failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0, f"pgcep should have refused:\n{result.stdout}"
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def status(dsn: str, root: Path | None = None) -> dict[str, str]:
    out = ok(pgcep("status", dsn=dsn, root=root))
    return dict(line.split(": ", 1) for line in out.splitlines())


def schemas(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT nspname FROM pg_catalog.pg_namespace"
                        " WHERE nspname IN ('cep', 'pgcep')").fetchall()
    return {r[0] for r in rows}


def migrations(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT version FROM pgcep.migrations ORDER BY applied_at").fetchall()]


def extension_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cep'").fetchone()
    return row[0] if row else None


def wait_for_lock_waiter(conn: psycopg.Connection, key: int, count: int = 1,
                         timeout: float = 30) -> list[int]:
    """Backend pids waiting for the advisory lock KEY, once COUNT of them are waiting."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND ((classid::bigint << 32) | objid::bigint) = %s AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_catalog.pg_database"
            "                 WHERE datname = pg_catalog.current_database())",
            (key,)).fetchall()]
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"only {len(pids)} runner(s) waiting on lock {key}"
        time.sleep(0.05)


def wait_for_backend_exit(conn: psycopg.Connection, pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s",
                       (pid,)).fetchone():
        assert time.monotonic() < deadline, f"backend {pid} is still running"
        time.sleep(0.05)


def kill_mid_step(server, db: str, key: int, args: tuple[str, ...], dsn: str,
                  root: Path) -> None:
    """Start a runner whose script stops on advisory lock KEY (held here), SIGKILL it there,
    then let its backend run into the closed connection and end."""
    with server.connect(db) as blocker:
        blocker.execute("SELECT pg_catalog.pg_advisory_lock(%s::bigint)", (key,))
        proc = spawn(*args, dsn=dsn, root=root)
        try:
            (backend,) = wait_for_lock_waiter(blocker, key)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        blocker.execute("SELECT pg_catalog.pg_advisory_unlock(%s::bigint)", (key,))
        wait_for_backend_exit(blocker, backend)


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def installer(server) -> Callable[..., str]:
    """Factory of login roles without superuser that have CREATE on the given databases, as
    on a managed server. Dropped after the test's databases (see fresh_db)."""
    made: list[str] = []

    def make(*dbs: str) -> str:
        role = f"pgcep_runner_{os.getpid()}_{next(_names)}"
        with server.connect() as su:
            su.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
            for db in dbs:
                su.execute(f'GRANT CREATE ON DATABASE "{db}" TO "{role}"')
        made.append(role)
        return role

    yield make
    with server.connect() as su:
        for role in made:
            su.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def fresh_db(server, installer) -> Callable[[], str]:
    """Factory of empty databases (from template0), dropped at the end of the test, before
    the roles that own objects in them."""
    made: list[str] = []

    def make() -> str:
        made.append(server.new_database(template="template0", prefix="runner"))
        return made[-1]

    yield make
    for name in made:
        server.drop_database(name)


@pytest.fixture(scope="module")
def reference_snapshot(server) -> dict:
    """The catalog of the session template, installed by CREATE EXTENSION as superuser."""
    with server.connect("cep_template") as conn:
        return catalog_snapshot(conn)


def synthetic_tree(tmp_path: Path, default_version: str,
                   scripts: dict[str, str]) -> Path:
    """A source tree for --root: the real control file with another default_version, the
    built script frozen as VERSION, and the given extra scripts (name -> SQL body)."""
    root = tmp_path / "tree"
    (root / "control").mkdir(parents=True)
    (root / "extension").mkdir()
    control = (ROOT / "control" / "pg_cep.control").read_text()
    (root / "control" / "pg_cep.control").write_text(
        control.replace(f"default_version = '{VERSION}'", f"default_version = '{default_version}'"))
    shutil.copy(BUILT, root / "extension" / f"pg_cep--{VERSION}.sql")
    echo = '\\echo Use "CREATE EXTENSION pg_cep" to load this file. \\quit\n'
    for name, body in scripts.items():
        path = root / "extension" / name
        path.write_text(body if name == f"pg_cep--{VERSION}.sql" else echo + body)
    return root


# -- 1. script path, non-superuser, pgTAP suite ----------------------------------------------

SMOKE_TAP = """
BEGIN;
SELECT plan(4);
SELECT has_schema('cep');
SELECT has_table('cep'::name, 'streams'::name);
SELECT has_function('cep', 'create_stream');
SELECT is((SELECT count(*)::int FROM cep.settings), 0, 'cep.settings starts empty');
SELECT * FROM finish();
ROLLBACK;
"""


def test_script_install_as_non_superuser_passes_pgtap(server, fresh_db, installer, tmp_path):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    out = ok(pgcep("install", "--mode", "script", dsn=dsn))
    assert f"installed {VERSION} (script path)" in out
    st = status(dsn)
    assert (st["installed"], st["path"], st["pending"]) == (VERSION, "script", "none")

    with server.connect(db) as su:
        assert extension_version(su) is None
        assert migrations(su) == [VERSION]
        owners = su.execute("SELECT nspname, pg_catalog.pg_get_userbyid(nspowner)"
                            " FROM pg_catalog.pg_namespace WHERE nspname IN ('cep', 'pgcep')"
                            " ORDER BY 1").fetchall()
        assert owners == [("cep", role), ("pgcep", role)]
        su.execute("CREATE EXTENSION pgtap")

    files = pgtap_files()
    if not files:  # no suite written yet: still prove pgTAP runs against this install
        (tmp_path / "smoke.sql").write_text(SMOKE_TAP)
        files = [tmp_path / "smoke.sql"]
    result = run_pg_prove(server.env(db), files)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "All tests successful" in report and "Result: PASS" in report, report


# -- 2. extension path gives the same catalog --------------------------------------------------

def test_extension_install_matches_script_install(server, fresh_db, installer,
                                                  reference_snapshot):
    script_db, extension_db = fresh_db(), fresh_db()
    role = installer(script_db, extension_db)
    ok(pgcep("install", "--mode", "script", dsn=server.dsn(script_db, user=role)))
    out = ok(pgcep("install", dsn=server.dsn(extension_db, user=role)))
    assert f"installed {VERSION} (extension path)" in out
    assert status(server.dsn(extension_db, user=role))["path"] == "extension"

    with server.connect(script_db) as a, server.connect(extension_db) as b:
        assert extension_version(b) == VERSION and schemas(b) == {"cep"}
        by_script, by_extension = catalog_snapshot(a), catalog_snapshot(b)
        assert by_script["relations"] and by_script["functions"] and by_script["types"]
        assert diff_snapshots(by_script, by_extension, ("script", "extension")) == []
        assert diff_snapshots(by_extension, reference_snapshot,
                              ("extension", "superuser install")) == []
        # The comparison sees privileges: one extra grant is one reported difference.
        a.execute("GRANT SELECT ON cep.alerts TO PUBLIC")
        changed = diff_snapshots(by_script, catalog_snapshot(a), ("before", "after"))
        assert len(changed) == 1 and changed[0].startswith("relations.alerts.acl"), changed


# -- 3. concurrent runners -------------------------------------------------------------------

def test_concurrent_runners_install_once(server, fresh_db, installer, reference_snapshot):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    with server.connect(db) as su:
        # Hold the runners' lock until all four are queued on it, so they really overlap.
        su.execute("SELECT pg_catalog.pg_advisory_lock(%s::bigint)", (LOCK_KEY,))
        procs = [spawn("install", "--mode", "script", dsn=dsn) for _ in range(4)]
        try:
            wait_for_lock_waiter(su, LOCK_KEY, count=4)
        finally:
            su.execute("SELECT pg_catalog.pg_advisory_unlock(%s::bigint)", (LOCK_KEY,))
        outputs = [p.communicate(timeout=60) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, f"{out}\n{err}"
        did_work = [out for out, _ in outputs if f"installed {VERSION}" in out]
        assert len(did_work) == 1, outputs
        assert migrations(su) == [VERSION]
        assert diff_snapshots(catalog_snapshot(su), reference_snapshot,
                              ("concurrent", "reference")) == []


# -- 4. a runner killed mid-step ---------------------------------------------------------------

def test_killed_runner_leaves_previous_state(server, fresh_db, installer, tmp_path):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    # The install script pauses after creating every object, the upgrade after its changes.
    root = synthetic_tree(tmp_path, NEXT, {
        f"pg_cep--{VERSION}.sql":
            BUILT.read_text() + "\nSELECT pg_catalog.pg_advisory_xact_lock(4241);\n",
        f"pg_cep--{VERSION}--{NEXT}.sql":
            "CREATE TABLE cep.upgrade_marker (id integer);\n"
            f"COMMENT ON TABLE cep.settings IS 'changed by {NEXT}';\n"
            "SELECT pg_catalog.pg_advisory_xact_lock(4242);\n",
    })
    with server.connect(db) as su:
        kill_mid_step(server, db, 4241, ("install", "--mode", "script", "--version", VERSION),
                      dsn, root)
        assert schemas(su) == set(), "a killed install left schemas behind"
        assert status(dsn, root)["installed"] == "none"
        ok(pgcep("install", "--mode", "script", "--version", VERSION, dsn=dsn, root=root))
        assert migrations(su) == [VERSION]

        before = catalog_snapshot(su)
        kill_mid_step(server, db, 4242, ("upgrade",), dsn, root)
        assert migrations(su) == [VERSION]
        assert diff_snapshots(before, catalog_snapshot(su), ("before", "after kill")) == []

        assert f"upgraded to {NEXT}" in ok(pgcep("upgrade", dsn=dsn, root=root))
        assert migrations(su) == [VERSION, NEXT]
        assert su.execute("SELECT pg_catalog.to_regclass('cep.upgrade_marker')").fetchone()[0]
        st = status(dsn, root)
        assert (st["installed"], st["pending"]) == (NEXT, "none")


# -- 5. refusals -------------------------------------------------------------------------------

def test_refuses_foreign_or_writable_schema(server, fresh_db, installer):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    with server.connect(db) as su:
        su.execute("CREATE SCHEMA cep")  # owned by the superuser, not the installing role
        for mode in ("script", "extension", "auto"):
            refused(pgcep("install", "--mode", mode, dsn=dsn),
                    'schema "cep" already exists and is owned by role "postgres"')
        assert schemas(su) == {"cep"}
        assert su.execute("SELECT count(*) FROM pg_catalog.pg_class"
                          " WHERE relnamespace = 'cep'::regnamespace").fetchone()[0] == 0
        assert extension_version(su) is None

        su.execute(f'ALTER SCHEMA cep OWNER TO "{role}"; GRANT CREATE ON SCHEMA cep TO PUBLIC')
        refused(pgcep("install", "--mode", "script", dsn=dsn),
                'schema "cep" already exists and is writable by PUBLIC')
        assert schemas(su) == {"cep"}

        su.execute("REVOKE CREATE ON SCHEMA cep FROM PUBLIC")  # now it is the role's own
        ok(pgcep("install", "--mode", "script", dsn=dsn))
        assert migrations(su) == [VERSION]


def test_refuses_mixing_paths(server, fresh_db, installer):
    script_db, extension_db = fresh_db(), fresh_db()
    role = installer(script_db, extension_db)
    script_dsn = server.dsn(script_db, user=role)
    extension_dsn = server.dsn(extension_db, user=role)
    ok(pgcep("install", "--mode", "script", dsn=script_dsn))
    ok(pgcep("install", "--mode", "extension", dsn=extension_dsn))
    for command in ("install", "upgrade", "uninstall"):
        refused(pgcep(command, "--mode", "extension", dsn=script_dsn),
                "installed through the script path; refusing to use the extension path")
        refused(pgcep(command, "--mode", "script", dsn=extension_dsn),
                "installed through the extension path; refusing to use the script path")
    with server.connect(script_db) as a, server.connect(extension_db) as b:
        assert (extension_version(a), migrations(a)) == (None, [VERSION])
        assert extension_version(b) == VERSION and schemas(b) == {"cep"}


def test_clear_errors(server, fresh_db, installer):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    refused(pgcep("status", dsn="host=/nonexistent-socket-dir port=1 dbname=x"),
            "cannot connect to the database")
    refused(pgcep("status", dsn="this is not a dsn"), "cannot connect to the database")
    refused(pgcep("install", "--version", "9.9.9", dsn=dsn), "unknown version 9.9.9")
    refused(pgcep("install", "--mode", "extension", "--version", "9.9.9", dsn=dsn),
            "unknown version 9.9.9")
    refused(pgcep("upgrade", dsn=dsn), "pg_cep is not installed")
    with server.connect(db) as su:
        assert schemas(su) == set()


# -- 6. uninstall ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["script", "extension"])
def test_uninstall_leaves_nothing(server, fresh_db, installer, mode):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    ok(pgcep("install", "--mode", mode, dsn=dsn))
    with server.connect(db, user=role) as conn:
        conn.execute("CREATE SCHEMA app; CREATE VIEW app.recent AS SELECT * FROM cep.alerts")
        refused(pgcep("uninstall", dsn=dsn), "view app.recent")
        assert "cep" in schemas(conn)
        conn.execute("DROP VIEW app.recent")
        assert f"uninstalled ({mode} path)" in ok(pgcep("uninstall", dsn=dsn))
        assert schemas(conn) == set() and extension_version(conn) is None
        assert status(dsn)["installed"] == "none"
        assert "not installed" in ok(pgcep("uninstall", dsn=dsn))
        # --cascade takes dependent objects along.
        ok(pgcep("install", "--mode", mode, dsn=dsn))
        conn.execute("CREATE VIEW app.recent AS SELECT * FROM cep.alerts")
        ok(pgcep("uninstall", "--cascade", dsn=dsn))
        assert schemas(conn) == set() and extension_version(conn) is None
        assert conn.execute("SELECT pg_catalog.to_regclass('app.recent')").fetchone()[0] is None


# -- 7. upgrades -------------------------------------------------------------------------------

def test_upgrade_at_latest_is_a_no_op(server, fresh_db, installer):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    ok(pgcep("install", "--mode", "script", dsn=dsn))
    with server.connect(db) as su:
        before = catalog_snapshot(su)
        assert f"already at {VERSION}" in ok(pgcep("upgrade", dsn=dsn))
        assert migrations(su) == [VERSION]
        assert diff_snapshots(before, catalog_snapshot(su)) == []


def test_upgrade_path_is_the_shortest_chain():
    full, steps = parse_script_names([
        "pg_cep--0.1.0.sql", "pg_cep--0.1.0--0.2.0.sql", "pg_cep--0.2.0--0.3.0.sql",
        "pg_cep--0.1.0--0.3.0.sql", "pg_cep--0.3.0--0.4.0.sql", "pg_cep.control", "README.md",
        "pg_cep--0.1.0--0.2.0--0.4.0.sql", "other--0.5.0.sql",
    ])
    assert full == {"0.1.0"}
    assert upgrade_path(steps, "0.1.0", "0.3.0") == [("0.1.0", "0.3.0")]
    assert upgrade_path(steps, "0.1.0", "0.4.0") == [("0.1.0", "0.3.0"), ("0.3.0", "0.4.0")]
    assert upgrade_path(steps, "0.2.0", "0.4.0") == [("0.2.0", "0.3.0"), ("0.3.0", "0.4.0")]
    assert upgrade_path(steps, "0.1.0", "0.1.0") == []
    assert upgrade_path(steps, "0.3.0", "0.1.0") is None
    assert upgrade_path(steps, "0.1.0", "9.9.9") is None
    # Cycles and dead ends do not trap the search.
    assert upgrade_path({("a", "b"), ("b", "a"), ("b", "c"), ("c", "d")}, "a", "d") == [
        ("a", "b"), ("b", "c"), ("c", "d")]


def test_runner_follows_the_shortest_chain(server, fresh_db, installer, tmp_path):
    db = fresh_db()
    role = installer(db)
    dsn = server.dsn(db, user=role)
    marker = "CREATE TABLE cep.step_{} (id integer);\n"
    root = synthetic_tree(tmp_path, NEXT2, {
        f"pg_cep--{VERSION}--{NEXT}.sql": marker.format("a"),
        f"pg_cep--{NEXT}--{NEXT2}.sql": marker.format("b"),
        f"pg_cep--{VERSION}--{NEXT2}.sql": marker.format("direct"),
        "pg_cep--99.9.0.sql": "SELECT 1;\n",
    })
    ok(pgcep("install", "--mode", "script", "--version", VERSION, dsn=dsn, root=root))
    assert status(dsn, root)["pending"] == f"{VERSION} -> {NEXT2}"
    refused(pgcep("upgrade", "--version", "99.9.0", dsn=dsn, root=root),
            f"no upgrade path from {VERSION} to 99.9.0")
    refused(pgcep("upgrade", "--version", "7.7.7", dsn=dsn, root=root), "unknown version 7.7.7")
    assert f"upgraded to {NEXT2}" in ok(pgcep("upgrade", dsn=dsn, root=root))
    with server.connect(db) as su:
        assert migrations(su) == [VERSION, NEXT2]
        tables = {r[0] for r in su.execute(
            "SELECT relname FROM pg_catalog.pg_class WHERE relname LIKE 'step%%'"
            " AND relnamespace = 'cep'::regnamespace").fetchall()}
        assert tables == {"step_direct"}
    # A fresh install of NEXT, which has no full script, goes through VERSION like
    # CREATE EXTENSION would.
    db2 = fresh_db()
    role2 = installer(db2)
    ok(pgcep("install", "--mode", "script", "--version", NEXT,
             dsn=server.dsn(db2, user=role2), root=root))
    with server.connect(db2) as su:
        assert migrations(su) == [VERSION, NEXT]
