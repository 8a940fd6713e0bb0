"""Every pgTAP file under tests/pgtap, run with pg_prove in a fresh database per file."""

import pytest

from pgtap_run import pgtap_files, run_pg_prove


@pytest.mark.parametrize("path", pgtap_files(), ids=lambda p: p.name)
def test_pgtap_file(server, dbname, path):
    res = run_pg_prove(server.env(dbname), [path])
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Result: PASS" in out, out
