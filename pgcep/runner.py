"""Install, upgrade, inspect and remove pg_cep in one database.

Two paths, never mixed in one database:
- extension: CREATE EXTENSION / ALTER EXTENSION UPDATE / DROP EXTENSION, when the server has
  the extension files;
- script: the same versioned scripts applied directly (managed servers), the installed version
  recorded in pgcep.migrations, outside the `cep` schema so both paths give the same catalog.

Every connection starts with an empty search_path and uses qualified names. Each step (an
install, or one upgrade script) is one transaction that first takes a fixed advisory lock and
then re-reads the installed version, so concurrent runners serialize and never repeat work.
The script path re-creates CREATE EXTENSION's protections: schema ownership checks, the
extension's search_path, no transaction control inside a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import psycopg
from psycopg import sql

from .scripts import EXTENSION, Scripts, Step, load_script, read_requires, version_key

SCHEMA = "cep"
LEDGER_SCHEMA = "pgcep"
# pg_advisory_xact_lock key shared by every runner: "pg_cep" in ASCII.
LOCK_KEY = int.from_bytes(b"pg_cep", "big")

InstallPath = Literal["extension", "script", "none"]
Mode = Literal["auto", "extension", "script"]


class RunnerError(Exception):
    """A refusal or failure to report to the user as one clear message."""


@dataclass(frozen=True)
class State:
    version: str | None
    path: InstallPath


def connect(dsn: str) -> psycopg.Connection:
    """Open a connection whose first statement empties search_path."""
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise RunnerError(f"cannot connect to the database: {str(exc).strip()}") from exc
    conn.execute("SET search_path = ''")
    return conn


def describe_error(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = f"{diag.sqlstate or 'ERROR'}: {diag.message_primary or str(exc).strip()}"
    if diag.message_detail:
        text += f"\nDETAIL: {diag.message_detail}"
    if diag.message_hint:
        text += f"\nHINT: {diag.message_hint}"
    return text


class Runner:
    def __init__(self, conn: psycopg.Connection, scripts: Scripts, mode: Mode = "auto",
                 say: Callable[[str], None] = print):
        self.conn = conn
        self.scripts = scripts
        self.mode = mode
        self.say = say

    # -- reading the database --------------------------------------------------------------
    # Catalog state is read with plain queries on the catalogs (fresh MVCC snapshot per
    # statement) rather than to_regclass() and friends, whose caches may not yet show what a
    # runner that held the lock before us committed.

    def _one(self, query: str, params: tuple = ()) -> tuple | None:
        return self.conn.execute(query, params).fetchone()

    def _ledger_rows(self) -> bool:
        """Whether pgcep.migrations exists and records some version."""
        exists = self._one(
            "SELECT 1 FROM pg_catalog.pg_class AS c"
            " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = 'migrations'", (LEDGER_SCHEMA,))
        return bool(exists and self._one("SELECT 1 FROM pgcep.migrations LIMIT 1"))

    def read_state(self) -> State:
        row = self._one("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = %s",
                        (EXTENSION,))
        ext_version = row[0] if row else None
        script_version = None
        if self._ledger_rows():
            # Steps are serialized by the lock and stamped with clock_timestamp().
            row = self._one("SELECT version FROM pgcep.migrations"
                            " ORDER BY applied_at DESC, version DESC LIMIT 1")
            script_version = row[0] if row else None
        if ext_version and script_version:
            raise RunnerError(
                f"pg_cep is recorded both as an extension ({ext_version}) and in "
                f"pgcep.migrations ({script_version}); repair this by hand")
        if ext_version:
            return State(ext_version, "extension")
        if script_version:
            return State(script_version, "script")
        return State(None, "none")

    def server_versions(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT version FROM pg_catalog.pg_available_extension_versions WHERE name = %s",
            (EXTENSION,)).fetchall()
        return sorted((r[0] for r in rows), key=version_key)

    def server_has(self, version: str) -> bool:
        return self._one(
            "SELECT 1 FROM pg_catalog.pg_available_extension_versions"
            " WHERE name = %s AND version = %s", (EXTENSION, version)) is not None

    def server_path(self, start: str, target: str) -> list[Step] | None:
        """The upgrade chain the server's extension files give, as ALTER EXTENSION finds it."""
        if start == target:
            return []
        row = self._one(
            "SELECT path FROM pg_catalog.pg_extension_update_paths(%s)"
            " WHERE source = %s AND target = %s", (EXTENSION, start, target))
        if not row or row[0] is None:
            return None
        hops = row[0].split("--")
        return list(zip(hops, hops[1:]))

    # -- choosing the path -----------------------------------------------------------------
    def choose_path(self, state: State, target: str) -> Literal["extension", "script"]:
        if state.path != "none":
            if self.mode not in ("auto", state.path):
                raise RunnerError(
                    f"pg_cep {state.version} was installed through the {state.path} path; "
                    f"refusing to use the {self.mode} path on the same database")
            return state.path
        if self.mode != "auto":
            return self.mode
        return "extension" if self.server_has(target) else "script"

    def check_target(self, path: str, target: str) -> None:
        if path == "script" and target not in self.scripts.versions():
            raise RunnerError(self.scripts.unknown_version(target))
        if path == "extension" and not self.server_has(target):
            known = ", ".join(self.server_versions()) or "none"
            raise RunnerError(
                f"unknown version {target} for CREATE/ALTER EXTENSION: the server's pg_cep "
                f"extension files provide: {known} (run `make install`, or use --mode script)")

    # -- steps -----------------------------------------------------------------------------
    def _lock(self) -> None:
        self.conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s::pg_catalog.int8)",
                          (LOCK_KEY,))

    def migrate(self, target: str, install: bool) -> None:
        """Apply steps, one transaction each, until TARGET is installed."""
        applied = 0
        path = "none"
        while True:
            with self.conn.transaction():
                self._lock()
                state = self.read_state()
                if applied == 0:
                    self._check_start(state, target, install)
                path = self.choose_path(state, target)
                if state.version == target:
                    break
                self.check_target(path, target)
                if path == "extension":
                    self._extension_step(state, target)
                else:
                    self._script_step(state, target)
            # A script may have changed search_path for the session; put it back.
            self.conn.execute("SET search_path = ''")
            applied += 1
        if applied:
            verb = "installed" if install else "upgraded to"
            self.say(f"pg_cep {verb} {target} ({path} path)")
        elif install:
            self.say(f"pg_cep {target} is already installed ({path} path)")
        else:
            self.say(f"pg_cep is already at {target} ({path} path)")

    def _check_start(self, state: State, target: str, install: bool) -> None:
        if install and state.path != "none" and state.version != target:
            raise RunnerError(
                f"pg_cep {state.version} is already installed ({state.path} path); "
                f"use `pgcep upgrade` to move to {target}")
        if not install and state.path == "none":
            raise RunnerError("pg_cep is not installed; use `pgcep install`")

    def _extension_step(self, state: State, target: str) -> None:
        self._require_script_free()
        if state.version is None:
            self._check_schema(SCHEMA, missing="ok")
            self.conn.execute(sql.SQL("CREATE EXTENSION pg_cep VERSION {}").format(
                sql.Literal(target)))
            return
        chain = self.server_path(state.version, target)
        if not chain:
            raise RunnerError(
                f"no upgrade path from {state.version} to {target} in the server's "
                "extension files")
        self.conn.execute(sql.SQL("ALTER EXTENSION pg_cep UPDATE TO {}").format(
            sql.Literal(chain[0][1])))

    def _script_step(self, state: State, target: str) -> None:
        self._require_extension_free()
        if state.version is None:
            base, _ = self.scripts.install_plan(target)  # later steps take the chain after it
            self._require_extensions()
            self._check_schema(SCHEMA, missing="create")
            self._check_schema(LEDGER_SCHEMA, missing="create")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS pgcep.migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),"
                " path text)")
            self._run_script(base, base)
            return
        chain = self.scripts.path(state.version, target)
        if not chain:
            raise RunnerError(f"no upgrade path from {state.version} to {target} among the "
                              f"scripts in {self.scripts.root / 'extension'}")
        self._check_schema(SCHEMA)
        self._check_schema(LEDGER_SCHEMA)
        self._run_script(chain[0], chain[0][1])

    def _run_script(self, step: Step | str, version: str) -> None:
        """Run one script in the current transaction the way CREATE EXTENSION (PostgreSQL 15)
        does, then record VERSION in pgcep.migrations."""
        script = self.scripts.script_for(step)
        text = load_script(script, SCHEMA)
        # CREATE EXTENSION's settings for the script: search_path = the target schema, the
        # required extensions' schemas except pg_catalog (always searched first anyway), then
        # pg_temp; function bodies unchecked; client messages at least WARNING.
        schemas = [s for s in dict.fromkeys([SCHEMA, *self._required_schemas()])
                   if s != "pg_catalog"]
        search_path = ", ".join([*(sql.Identifier(s).as_string(self.conn) for s in schemas),
                                 "pg_temp"])
        self.conn.execute(
            "SELECT pg_catalog.set_config('search_path', %s, true),"
            " pg_catalog.set_config('check_function_bodies', 'off', true),"
            " pg_catalog.set_config('pgcep.script_install', 'on', true),"
            " CASE WHEN pg_catalog.current_setting('client_min_messages')"
            "  IN ('debug5', 'debug4', 'debug3', 'debug2', 'debug1', 'log', 'notice')"
            " THEN pg_catalog.set_config('client_min_messages', 'warning', true) END",
            (search_path,))
        # No parameters: psycopg sends the script with the simple query protocol, so it may
        # hold many statements, and % signs in it are left alone.
        self.conn.execute(text)
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise RunnerError(f"{self.scripts.relative(script)} ended the transaction; "
                              "scripts must not contain transaction control")
        self.conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        self.conn.execute(
            "INSERT INTO pgcep.migrations (version, applied_at, path)"
            " VALUES (%s, pg_catalog.clock_timestamp(), %s)"
            " ON CONFLICT (version) DO UPDATE"
            " SET applied_at = excluded.applied_at, path = excluded.path",
            (version, self.scripts.relative(script)))

    # -- protections -----------------------------------------------------------------------
    def _check_schema(self, name: str,
                      missing: Literal["create", "ok", "error"] = "error") -> None:
        """Refuse a schema owned by another role or writable by others (what the install
        script's guard checks); when it is missing, create it (owned by us), accept that, or
        refuse, as MISSING says."""
        row = self._one(
            "SELECT pg_catalog.pg_get_userbyid(n.nspowner),"
            " n.nspowner = (SELECT r.oid FROM pg_catalog.pg_roles AS r"
            "               WHERE r.rolname = CURRENT_USER),"
            " (SELECT pg_catalog.string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC'"
            "         ELSE pg_catalog.pg_get_userbyid(a.grantee) END, ', ')"
            "  FROM pg_catalog.aclexplode(n.nspacl) AS a"
            "  WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner)"
            " FROM pg_catalog.pg_namespace AS n WHERE n.nspname = %s", (name,))
        if row is None:
            if missing == "error":
                raise RunnerError(f'schema "{name}" is missing')
            if missing == "create":
                self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            return
        owner, owned, writers = row
        if not owned:
            raise RunnerError(
                f'schema "{name}" already exists and is owned by role "{owner}", not by the '
                f'connecting role; drop or rename it, or run pgcep as "{owner}"')
        if writers:
            raise RunnerError(f'schema "{name}" already exists and is writable by {writers}; '
                              "revoke CREATE on it first")

    def _require_extensions(self) -> None:
        for name in read_requires(self.scripts.root):
            if not self._one("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s",
                             (name,)):
                raise RunnerError(f'pg_cep requires extension "{name}", which is not installed')

    def _required_schemas(self) -> list[str]:
        """Schemas of the required extensions: CREATE EXTENSION appends them to search_path."""
        names = read_requires(self.scripts.root)
        rows = self.conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_extension AS e"
            " JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace"
            " WHERE e.extname = ANY(%s) ORDER BY pg_catalog.array_position(%s, e.extname)",
            (names, names)).fetchall()
        return [r[0] for r in rows]

    def _require_extension_free(self) -> None:
        if self._one("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s", (EXTENSION,)):
            raise RunnerError("pg_cep is installed as an extension; refusing the script path")

    def _require_script_free(self) -> None:
        if self._ledger_rows():
            raise RunnerError("pg_cep is installed through the script path "
                              "(pgcep.migrations); refusing CREATE/ALTER EXTENSION")

    def outside_dependents(self) -> list[str]:
        """Objects outside `cep` that depend on objects inside it (what DROP would cascade
        to), excluding members of the pg_cep extension itself. Only direct dependents are
        needed: anything further depends on one of them or on another `cep` object."""
        rows = self.conn.execute(
            "SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)"
            " FROM pg_catalog.pg_depend AS d"
            " CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) AS r"
            " CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) AS o"
            " CROSS JOIN LATERAL pg_catalog.pg_identify_object_as_address("
            "  d.classid, d.objid, d.objsubid) AS a"
            " WHERE d.deptype IN ('n', 'a')"
            "  AND d.refclassid = ANY (ARRAY['pg_catalog.pg_class', 'pg_catalog.pg_proc',"
            "   'pg_catalog.pg_type', 'pg_catalog.pg_operator', 'pg_catalog.pg_collation',"
            "   'pg_catalog.pg_conversion', 'pg_catalog.pg_opclass', 'pg_catalog.pg_opfamily',"
            "   'pg_catalog.pg_ts_config', 'pg_catalog.pg_ts_dict']::pg_catalog.regclass[])"
            "  AND r.schema = %s"
            # Column defaults, rules, triggers and policies have no schema of their own;
            # their address starts with their table's schema.
            "  AND COALESCE(o.schema, a.object_names[1]) IS DISTINCT FROM %s"
            "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS m"
            "   JOIN pg_catalog.pg_extension AS e ON e.oid = m.refobjid"
            "   WHERE m.classid = d.classid AND m.objid = d.objid AND m.deptype = 'e'"
            "    AND m.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass"
            "    AND e.extname = %s)"
            " ORDER BY 1", (SCHEMA, SCHEMA, EXTENSION)).fetchall()
        return [r[0] for r in rows]

    # -- uninstall -------------------------------------------------------------------------
    def uninstall(self, cascade: bool) -> None:
        with self.conn.transaction():
            self._lock()
            state = self.read_state()
            if state.path == "none":
                self.say("pg_cep is not installed; nothing to do")
                return
            self.choose_path(state, state.version or "")
            self._check_schema(SCHEMA, missing="ok")
            dependents = self.outside_dependents()
            if dependents and not cascade:
                shown = "\n  ".join(dependents[:20])
                more = f"\n  ... and {len(dependents) - 20} more" if len(dependents) > 20 else ""
                raise RunnerError("objects outside schema cep depend on pg_cep:\n  "
                                  f"{shown}{more}\nuse --cascade to drop them too")
            drop = "CASCADE" if cascade else "RESTRICT"
            if state.path == "extension":
                self.conn.execute(f"DROP EXTENSION pg_cep {drop}")
            # Objects pg_cep created at run time (per-stream functions) live in cep without
            # being extension members; nothing outside depends on them (checked above).
            self.conn.execute("DROP SCHEMA IF EXISTS cep CASCADE")
            self.conn.execute("DROP SCHEMA IF EXISTS pgcep CASCADE")
        self.say(f"pg_cep {state.version} uninstalled ({state.path} path)")

    # -- status ----------------------------------------------------------------------------
    def status(self, target: str) -> None:
        state = self.read_state()
        server = self.server_versions()
        if target not in self.scripts.versions() and target not in server:
            raise RunnerError(self.scripts.unknown_version(target))
        self.say(f"installed: {state.version or 'none'}")
        self.say(f"path: {state.path}")
        self.say(f"target: {target}")
        self.say("script versions: " + (", ".join(self.scripts.versions()) or "none"))
        self.say("server extension versions: " + (", ".join(server) or "none"))
        if state.version is None:
            path = self.choose_path(state, target)
            self.say(f"pending: install {target} ({path} path)")
            return
        if state.path == "extension":
            chain = self.server_path(state.version, target)
        else:
            chain = self.scripts.path(state.version, target)
        if chain is None:
            self.say(f"pending: no upgrade path from {state.version} to {target}")
        elif not chain:
            self.say("pending: none")
        else:
            self.say("pending: " + " -> ".join([chain[0][0], *(b for _, b in chain)]))
