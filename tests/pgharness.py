"""Throwaway PostgreSQL clusters for tests, the demo and the benchmarks.

A cluster lives in its own temporary directory, listens only on a Unix socket in that
directory (and optionally 127.0.0.1), and is started through tests/bin/pg_ctl, which drops
root privileges with a user namespace. The system cluster is never used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_CTL = str(ROOT / "tests" / "bin" / "pg_ctl")


def pg_bindir() -> str:
    return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """libpq access to a running server at host (a socket directory or address) and port."""

    host: str
    port: int
    user: str

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={user or self.user}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True,
                user: str | None = None, **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname, user), autocommit=autocommit, **kw)

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                   PGDATABASE=dbname)
        return env


class Cluster(Endpoint):
    """One throwaway cluster: initdb, start, stop (fast or immediate), connect."""

    def __init__(self, base: str | None = None, port: int | None = None,
                 settings: dict[str, str] | None = None, tcp: bool = False):
        self.base = Path(base or tempfile.mkdtemp(prefix="pgcep-"))
        self.datadir = self.base / "data"
        self.sockdir = str(self.base)
        self.host = self.sockdir
        self.port = port or free_port()
        self.user = "postgres"
        self.tcp = tcp
        self.settings = {
            "max_connections": "60",
            "shared_buffers": "128MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_locks_per_transaction": "128",
            "lc_messages": "C",
        }
        self.settings.update(settings or {})
        self.logfile = self.base / "postgresql.log"

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> "Cluster":
        subprocess.run(
            [PG_CTL, "initdb", "-D", str(self.datadir), "-s",
             "-o", f"-U {self.user} -A trust --no-sync -E UTF8 --locale=C"],
            check=True, stdout=subprocess.DEVNULL)
        with open(self.datadir / "postgresql.conf", "a") as conf:
            for k, v in self.settings.items():
                conf.write(f"{k} = '{v}'\n")
        return self

    def start(self) -> "Cluster":
        listen = "127.0.0.1" if self.tcp else ""
        opts = f"-p {self.port} -k {self.sockdir} -c listen_addresses='{listen}'"
        subprocess.run(
            [PG_CTL, "start", "-D", str(self.datadir), "-w", "-t", "60", "-s",
             "-l", str(self.logfile), "-o", opts],
            check=True, stdout=subprocess.DEVNULL)
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([PG_CTL, "stop", "-D", str(self.datadir), "-m", mode, "-w", "-s"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.init().start()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- access ----------------------------------------------------------------------------
    def psql(self, sql: str, dbname: str = "postgres", check: bool = True) -> str:
        res = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            env=self.env(dbname), capture_output=True, text=True, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr}")
        return res.stdout

    def create_database(self, name: str, template: str = "template0") -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_cluster(**kw):
    cluster = Cluster(**kw)
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()
