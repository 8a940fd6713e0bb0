"""Static checks: sqlfluff over the SQL sources and tests, pgspot over the built script, and
the frozen script of the current version (once frozen) identical to the one built from sql/."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.lint


def current_version() -> str:
    text = (ROOT / "control" / "pg_cep.control").read_text()
    return re.search(r"^default_version\s*=\s*'([^']+)'", text, re.M).group(1)


def built_script() -> Path:
    path = ROOT / "build" / f"pg_cep--{current_version()}.sql"
    assert path.exists(), "run make first"
    return path


def test_sqlfluff_sources_and_tests():
    res = subprocess.run(
        [str(BIN / "sqlfluff"), "lint", "--nocolor", "sql", "tests/pgtap"],
        cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_pgspot_built_script_is_clean():
    res = subprocess.run([str(BIN / "pgspot"), str(built_script())],
                         capture_output=True, text=True)
    summary = res.stdout.strip().splitlines()[-1]
    assert "Errors: 0 Warnings: 0 Unknown: 0" in summary, res.stdout


def test_pgspot_upgrade_scripts_are_clean():
    """Upgrade scripts replace the extension's own members with CREATE OR REPLACE, which is
    how members are changed (PostgreSQL refuses to replace a non-member from a script), so
    PS002/PS007/PS015 (function, object and view) are the only findings allowed there."""
    scripts = [*(ROOT / "extension").glob("pg_cep--*--*.sql"), *(ROOT / "build").glob("pg_cep--*--*.sql")]
    assert scripts, "no upgrade script"
    for f in sorted(scripts):
        res = subprocess.run([str(BIN / "pgspot"), "--ignore", "PS002", "--ignore", "PS007", "--ignore", "PS015",
                              str(f)],
                             capture_output=True, text=True)
        assert "Errors: 0 Warnings: 0 Unknown: 0" in res.stdout, f"{f.name}: {res.stdout}"


def test_manifest_names_every_source_once():
    listed = [line.strip() for line in (ROOT / "sql" / "manifest.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    on_disk = sorted(str(p.relative_to(ROOT / "sql")) for p in (ROOT / "sql").rglob("*.sql")
                     if "upgrade" not in p.relative_to(ROOT / "sql").parts)
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)


def test_every_source_has_a_header_and_each_is_marked_in_the_build():
    script = built_script().read_text()
    for line in (ROOT / "sql" / "manifest.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        src = (ROOT / "sql" / line.strip()).read_text()
        assert src.startswith("-- "), f"{line} must open with a comment saying what it owns"
        assert f"-- source: sql/{line.strip()}" in script


def test_frozen_versions_are_not_edited():
    """A released version's script is frozen: if the current version is in extension/, the
    sources must still build exactly that script (a change needs a new version)."""
    frozen = ROOT / "extension" / f"pg_cep--{current_version()}.sql"
    if frozen.exists():
        assert frozen.read_text() == built_script().read_text(), (
            f"sql/ differs from frozen {frozen.name}: bump default_version and add an upgrade script")
    for f in (ROOT / "extension").glob("pg_cep--*.sql"):
        assert re.fullmatch(r"pg_cep--\d+\.\d+\.\d+(--\d+\.\d+\.\d+)?\.sql", f.name), f.name


def test_base_scripts_have_no_or_replace_or_if_not_exists():
    full = [f for f in (ROOT / "extension").glob("pg_cep--*.sql") if f.name.count("--") == 1]
    for f in [built_script(), *full]:
        text = f.read_text()
        # Generated code inside format() strings is runtime DDL, not part of the base script.
        outside = re.sub(r"\$(body|fn)\$.*?\$\1\$", "", text, flags=re.S)
        assert not re.search(r"CREATE\s+OR\s+REPLACE", outside, re.I), f.name
        assert not re.search(r"IF\s+NOT\s+EXISTS", outside, re.I), f.name
