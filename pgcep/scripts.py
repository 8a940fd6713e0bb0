"""The versioned SQL scripts of pg_cep and the upgrade graph between them (no database here).

Full scripts are `extension/pg_cep--X.Y.Z.sql` (frozen releases) plus the development
version's script built by `make` into `build/pg_cep--<default_version>.sql`; upgrade scripts
are `extension/pg_cep--A--B.sql`, and `build/pg_cep--A--<default_version>.sql` for upgrades into
the development version. Version names follow CREATE EXTENSION's rules: any string
without `--`, compared as opaque names.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

EXTENSION = "pg_cep"

Step = tuple[str, str]  # (from_version, to_version)


class ScriptError(Exception):
    """A version or script that cannot be found or read."""


def version_key(version: str) -> tuple:
    """Sort key: numeric parts numerically, so 0.10.0 sorts after 0.9.0."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"[.\-_]", version))


def parse_script_names(names: Iterable[str]) -> tuple[set[str], set[Step]]:
    """Split file names into full-script versions and upgrade steps, reading them the way
    PostgreSQL does (`pg_cep--V.sql`, `pg_cep--A--B.sql`); other names are ignored."""
    prefix, suffix = f"{EXTENSION}--", ".sql"
    full: set[str] = set()
    steps: set[Step] = set()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        parts = name[len(prefix):-len(suffix)].split("--")
        if len(parts) == 1 and parts[0]:
            full.add(parts[0])
        elif len(parts) == 2 and all(parts):
            steps.add((parts[0], parts[1]))
    return full, steps


def upgrade_path(steps: Iterable[Step], start: str, target: str) -> list[Step] | None:
    """Shortest chain of upgrade steps from START to TARGET ([] when equal, None when there is
    none). Ties are broken by trying lower target versions first, so the answer is stable."""
    if start == target:
        return []
    graph: dict[str, list[str]] = {}
    for a, b in steps:
        graph.setdefault(a, []).append(b)
    for nexts in graph.values():
        nexts.sort(key=version_key)
    previous: dict[str, str] = {start: start}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for there in graph.get(here, []):
            if there in previous:
                continue
            previous[there] = here
            if there == target:
                chain: list[Step] = []
                while there != start:
                    chain.append((previous[there], there))
                    there = previous[there]
                return chain[::-1]
            queue.append(there)
    return None


def read_default_version(root: Path) -> str:
    control = root / "control" / f"{EXTENSION}.control"
    try:
        text = control.read_text()
    except OSError as exc:
        raise ScriptError(f"cannot read {control}: {exc.strerror}") from exc
    m = re.search(r"^\s*default_version\s*=\s*'([^']+)'", text, re.MULTILINE)
    if not m:
        raise ScriptError(f"{control} has no default_version")
    return m[1]


def read_requires(root: Path) -> list[str]:
    """Extensions named by `requires` in the control file."""
    text = (root / "control" / f"{EXTENSION}.control").read_text()
    m = re.search(r"^\s*requires\s*=\s*'([^']*)'", text, re.MULTILINE)
    return [r.strip() for r in m[1].split(",") if r.strip()] if m else []


@dataclass
class Scripts:
    """The scripts available in one source tree."""

    root: Path
    default_version: str
    full: dict[str, Path] = field(default_factory=dict)
    steps: dict[Step, Path] = field(default_factory=dict)

    @classmethod
    def discover(cls, root: Path) -> "Scripts":
        found = cls(root=root, default_version=read_default_version(root))
        ext_dir = root / "extension"
        files = {p.name: p for p in ext_dir.glob(f"{EXTENSION}--*.sql")} if ext_dir.is_dir() else {}
        full, steps = parse_script_names(files)
        for version in full:
            found.full[version] = files[f"{EXTENSION}--{version}.sql"]
        for a, b in steps:
            found.steps[(a, b)] = files[f"{EXTENSION}--{a}--{b}.sql"]
        # The built script is what `make install` ships for the development version, so it
        # wins over a frozen copy of the same version.
        built = root / "build" / f"{EXTENSION}--{found.default_version}.sql"
        if built.is_file():
            found.full[found.default_version] = built
        # Upgrade scripts into the development version are built by `make` too.
        built_dir = root / "build"
        if built_dir.is_dir():
            _, built_steps = parse_script_names(p.name for p in built_dir.glob(f"{EXTENSION}--*.sql"))
            for a, b in built_steps:
                if b == found.default_version:
                    found.steps[(a, b)] = built_dir / f"{EXTENSION}--{a}--{b}.sql"
        return found

    def versions(self) -> list[str]:
        """Every version named by some script."""
        names = set(self.full) | {v for step in self.steps for v in step}
        return sorted(names, key=version_key)

    def path(self, start: str, target: str) -> list[Step] | None:
        return upgrade_path(self.steps, start, target)

    def install_plan(self, target: str) -> tuple[str, list[Step]]:
        """The full script to run and the upgrades after it to reach TARGET, choosing like
        CREATE EXTENSION: the target's own script, else the shortest chain from any full one."""
        if target in self.full:
            return target, []
        if target not in self.versions():
            raise ScriptError(self.unknown_version(target))
        best: tuple[str, list[Step]] | None = None
        for base in sorted(self.full, key=version_key, reverse=True):
            chain = self.path(base, target)
            if chain is not None and (best is None or len(chain) < len(best[1])):
                best = (base, chain)
        if best is None:
            raise ScriptError(f"no installation script or upgrade path leads to version {target}")
        return best

    def unknown_version(self, version: str) -> str:
        known = ", ".join(self.versions()) or "none"
        hint = ""
        if version == self.default_version and version not in self.full:
            hint = f" (build/{EXTENSION}--{version}.sql is missing: run `make`)"
        return f"unknown version {version}{hint}; versions with scripts: {known}"

    def script_for(self, step: Step | str) -> Path:
        return self.full[step] if isinstance(step, str) else self.steps[step]

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def load_script(path: Path, schema: str) -> str:
    """The script as CREATE EXTENSION would run it: psql-only `\\echo` lines dropped and
    @extschema@ replaced by the target schema."""
    lines = path.read_text().splitlines(keepends=True)
    body = "".join(line for line in lines if not line.startswith("\\echo"))
    return body.replace("@extschema@", schema)
