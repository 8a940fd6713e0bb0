"""Isolation specs (tests/isolation/specs/*.spec) run with pg_isolation_regress from
postgresql-client-15 against the session cluster; each expected output was checked by hand."""

import subprocess
import tempfile
from pathlib import Path

import pytest

ISO_DIR = Path(__file__).resolve().parent / "isolation"
SPECS = sorted(p.stem for p in (ISO_DIR / "specs").glob("*.spec"))


def pg_isolation_regress() -> str:
    pkglib = subprocess.check_output(["pg_config", "--pkglibdir"], text=True).strip()
    return f"{pkglib}/pgxs/src/test/isolation/pg_isolation_regress"


@pytest.mark.parametrize("spec", SPECS)
def test_isolation_spec(server, spec):
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run(
            [pg_isolation_regress(), f"--host={server.host}", f"--port={server.port}",
             f"--user={server.user}", f"--dbname=iso_{spec}", "--load-extension=pg_cep",
             f"--inputdir={ISO_DIR}", f"--outputdir={out}", spec],
            capture_output=True, text=True, timeout=300, check=False)
        diffs = Path(out, "regression.diffs")
        detail = diffs.read_text() if diffs.exists() else ""
        assert res.returncode == 0, res.stdout + res.stderr + detail
