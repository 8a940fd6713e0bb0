"""Shared helpers of `make demo` and `make bench`: throwaway clusters that are always cleaned
up, and psql-like aligned tables for plain-text reports.

Imported by demo/run_demo.py and bench/run_bench.py (both put this directory on sys.path).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import os
import signal
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgharness import Cluster  # noqa: E402


# -- clusters ---------------------------------------------------------------------------------

def _raise_interrupt(signum, frame):  # pragma: no cover - signal path
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def throwaway_cluster(settings: dict[str, str] | None = None, keep: bool = False,
                      label: str = "cluster", dbname: str = "postgres") -> Iterator[Cluster]:
    """Start a throwaway cluster and destroy it on exit, also on errors, Ctrl-C and SIGTERM.

    With keep=True the cluster is left running after a *successful* run (and still destroyed
    when the run failed or was interrupted).
    """
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_hup = signal.signal(signal.SIGHUP, _raise_interrupt)
    cluster = Cluster(settings=settings)
    ok = False
    try:
        cluster.init().start()
        yield cluster
        ok = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        if keep and ok:
            print(f"\n{label} left running (--keep).")
            print(f"  connect: psql \"{cluster.dsn(dbname)}\"")
            print(f"  stop and remove: {ROOT / 'tests' / 'bin' / 'pg_ctl'} stop -D "
                  f"{cluster.datadir} -m fast && rm -rf {cluster.base}")
        else:
            cluster.destroy()


def server_version(conn) -> str:
    return conn.execute("SELECT current_setting('server_version')").fetchone()[0]


# -- output -----------------------------------------------------------------------------------

def heading(title: str) -> None:
    print()
    print(title)
    print("=" * len(title))


def subheading(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def fmt_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, dt.datetime):
        s = v.isoformat(sep=" ", timespec="milliseconds" if v.microsecond else "seconds")
        return s.replace("+00:00", "+00")
    if isinstance(v, dt.timedelta):
        total = v.total_seconds()
        sign = "-" if total < 0 else ""
        total = abs(total)
        days, rem = divmod(total, 86400)
        h, rem = divmod(rem, 3600)
        m, s = divmod(rem, 60)
        core = f"{int(h):02d}:{int(m):02d}:{s:06.3f}"
        return f"{sign}{int(days)} days {core}" if days else f"{sign}{core}"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:,.2f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 0.01 and v else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v}"
    if isinstance(v, decimal.Decimal):
        return f"{v}"
    return str(v)


def _is_numeric(v) -> bool:
    return isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)


def print_table(columns: Sequence[str], rows: Iterable[Sequence], indent: str = "",
                empty: str | None = None) -> None:
    """Print rows like psql's aligned format: header, rule, right-aligned numbers."""
    rows = [list(r) for r in rows]
    if not rows and empty is not None:
        print(f"{indent}{empty}")
        return
    cells = [[fmt_value(v) for v in r] for r in rows]
    widths = [len(c) for c in columns]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    numeric = [bool(rows) and all(_is_numeric(r[i]) or r[i] is None for r in rows)
               and any(_is_numeric(r[i]) for r in rows) for i in range(len(columns))]
    print(indent + " " + " | ".join(c.center(w) for c, w in zip(columns, widths)))
    print(indent + "-" + "-+-".join("-" * w for w in widths) + "-")
    for r in cells:
        print(indent + " " + " | ".join(
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(f"{indent}({len(rows)} row{'s' if len(rows) != 1 else ''})")


def print_query(conn, sql: str, params=None, indent: str = "", empty: str | None = None,
                expanded: bool = False) -> list[tuple]:
    """Run a query and print its result as an aligned table (or psql's \\x expanded form)."""
    cur = conn.execute(sql, params)
    columns = [d.name for d in cur.description]
    rows = cur.fetchall()
    if expanded and rows:
        width = max(len(c) for c in columns)
        for n, r in enumerate(rows, 1):
            print(f"{indent}-[ RECORD {n} ]" + "-" * max(0, width - 8))
            for c, v in zip(columns, r):
                print(f"{indent}{c.ljust(width)} | {fmt_value(v)}")
    else:
        print_table(columns, rows, indent=indent, empty=empty)
    return rows


def human_rate(n: float) -> str:
    return f"{n:,.0f}"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
