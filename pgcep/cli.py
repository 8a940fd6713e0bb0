"""Command line: pgcep install|upgrade|status|uninstall --dsn DSN [--version V] [--mode M]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from .runner import Runner, RunnerError, connect, describe_error
from .scripts import Scripts, ScriptError

# The source tree holding control/, extension/ and build/: the parent of this package.
DEFAULT_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pgcep", description="Install, upgrade, inspect or remove pg_cep in a database.")
    parser.add_argument("command", choices=["install", "upgrade", "status", "uninstall"])
    parser.add_argument("--dsn", required=True, help="libpq connection string or URI")
    parser.add_argument("--version", help="target version (default: the control file's)")
    parser.add_argument("--mode", choices=["auto", "extension", "script"], default="auto",
                        help="extension: CREATE/ALTER EXTENSION; script: apply the scripts "
                             "directly; auto: extension when the server has the files")
    parser.add_argument("--cascade", action="store_true",
                        help="uninstall: also drop objects outside cep that depend on it")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="source tree with control/, extension/ and build/")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    scripts = Scripts.discover(args.root)
    target = args.version or scripts.default_version
    with connect(args.dsn) as conn:
        runner = Runner(conn, scripts, args.mode)
        if args.command == "install":
            runner.migrate(target, install=True)
        elif args.command == "upgrade":
            runner.migrate(target, install=False)
        elif args.command == "status":
            runner.status(target)
        else:
            runner.uninstall(args.cascade)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (RunnerError, ScriptError) as exc:
        print(f"pgcep: error: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"pgcep: {args.command} failed, nothing was changed by the failing step:\n"
              f"{describe_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
