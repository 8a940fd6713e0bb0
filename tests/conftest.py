"""Shared fixtures: one throwaway cluster per test session (pytest-postgresql, started through
tests/bin/pg_ctl so that it works as root), a template database with pg_cep, pgTAP and
plpgsql_check installed, and a fresh database per test cloned from it."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
from pytest_postgresql import factories

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgharness import PG_CTL, ROOT, Cluster, Endpoint  # noqa: E402

TEMPLATE = "cep_template"

cep_proc = factories.postgresql_proc(
    executable=PG_CTL,
    host="127.0.0.1",
    port=None,
    user="postgres",
    unixsocketdir=os.environ.get("PGCEP_SOCKET_DIR", "/tmp"),
    postgres_options=(
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=80 -c max_locks_per_transaction=128 -c lc_messages=C"
    ),
)


class Server(Endpoint):
    """The session cluster as seen by tests: DSNs, connections, databases."""

    def __init__(self, proc):
        self.proc = proc
        self.host = proc.host
        self.port = proc.port
        self.user = proc.user
        self._names = itertools.count(1)

    def new_database(self, template: str = TEMPLATE, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def server(cep_proc):
    srv = Server(cep_proc)
    with srv.connect() as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with srv.connect(TEMPLATE) as conn:
        conn.execute("CREATE EXTENSION pg_cep")
        conn.execute("CREATE EXTENSION pgtap")
    return srv


@pytest.fixture
def dbname(server):
    name = server.new_database()
    yield name
    server.drop_database(name)


@pytest.fixture
def conn(server, dbname):
    with server.connect(dbname) as c:
        yield c


@pytest.fixture
def connect(server, dbname):
    """Factory for extra connections to the test's database."""
    opened = []

    def _connect(autocommit: bool = True, user: str | None = None, **kw):
        c = server.connect(dbname, autocommit=autocommit, user=user, **kw)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


@pytest.fixture
def cluster_factory():
    """Private clusters for tests that stop, crash or reconfigure a server."""
    made: list[Cluster] = []

    def _make(**kw) -> Cluster:
        c = Cluster(**kw).init().start()
        made.append(c)
        return c

    yield _make
    for c in made:
        c.destroy()


__all__ = ["ROOT"]
