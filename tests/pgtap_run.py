"""Run pgTAP files with pg_prove against a database (used by test_pgtap and the runner tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

PGTAP_DIR = Path(__file__).resolve().parent / "pgtap"


def pgtap_files() -> list[Path]:
    return sorted(PGTAP_DIR.glob("*.sql"))


def run_pg_prove(env: dict[str, str], files: list[Path] | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """Run pg_prove over FILES (default: every tests/pgtap/*.sql) with the libpq settings in ENV
    (PGHOST, PGPORT, PGUSER, PGDATABASE). The database must have the pgtap extension."""
    files = files or pgtap_files()
    return subprocess.run(
        ["pg_prove", "--verbose", "--failures", "--psql-bin", "psql",
         *[str(f) for f in files]],
        env=env, capture_output=True, text=True, timeout=timeout, check=False)
