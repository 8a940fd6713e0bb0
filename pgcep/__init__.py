"""pgcep: the migration runner of the pg_cep PostgreSQL extension."""

from .runner import Runner, RunnerError, State, connect
from .scripts import Scripts, ScriptError, parse_script_names, upgrade_path

__all__ = ["Runner", "RunnerError", "ScriptError", "Scripts", "State", "connect",
           "parse_script_names", "upgrade_path"]
