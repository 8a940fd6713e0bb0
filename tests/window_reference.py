"""An independent reference for pg_cep windows (design.md, "Windows (continuous aggregates)"),
in plain Python and without the database.

Given the stream's non-late events, a window definition and the watermark, `expected_rows`
returns the rows the window's view must show, sorted by window_start, group values and
window_end:

- tumbling: [start, start + size) with start = the epoch-aligned multiple of size at or below
  t (what date_bin(size, t, '1970-01-01 00:00+00') gives), computed on integer microseconds;
- hopping: one window [s, s + size) for every multiple s of slide since the epoch with
  s <= t < s + size;
- session: per key (the stream's key column plus the group_by columns) events ordered by
  (time, id); a new session starts when an event comes more than the gap after the previous
  one (exactly the gap joins); window_start = first event time, window_end = last time + gap;
- aggregates are those of a plain GROUP BY: NULLs are ignored by count(col), sum, avg, min,
  max and count(distinct col); a group whose values are all NULL has a NULL sum/avg/min/max;
- is_final: watermark >= window_end (tumbling, hopping), watermark > window_end (session).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any, Iterable, Mapping, Sequence

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MICRO = dt.timedelta(microseconds=1)


class _Infinity:
    """A watermark of -infinity (nothing seen yet) or +infinity (end of stream)."""

    def __init__(self, sign: int):
        self.sign = sign

    def __repr__(self) -> str:
        return "POS_INF" if self.sign > 0 else "NEG_INF"


NEG_INF = _Infinity(-1)
POS_INF = _Infinity(+1)


def wm_ge(watermark, t: dt.datetime) -> bool:
    """watermark >= t, for a watermark that may be NEG_INF/None or POS_INF."""
    if watermark is None or watermark is NEG_INF:
        return False
    if watermark is POS_INF:
        return True
    return watermark >= t


def wm_gt(watermark, t: dt.datetime) -> bool:
    """watermark > t, for a watermark that may be NEG_INF/None or POS_INF."""
    if watermark is None or watermark is NEG_INF:
        return False
    if watermark is POS_INF:
        return True
    return watermark > t


# -- aggregates ------------------------------------------------------------------------------

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_AGG_RE = re.compile(
    rf"""^\s*(?P<func>count|sum|avg|min|max)\s*\(\s*
         (?:(?P<star>\*)|(?P<distinct>distinct\s+)?(?P<col>{_IDENT}))
         \s*\)\s*(?:as\s+(?P<alias>{_IDENT}))?\s*$""",
    re.IGNORECASE | re.VERBOSE)


@dataclass(frozen=True)
class Aggregate:
    func: str            # count | sum | avg | min | max
    column: str | None   # None for count(*)
    distinct: bool
    name: str            # output column

    @property
    def sql(self) -> str:
        """The aggregate as SQL text (identifiers double-quoted)."""
        if self.column is None:
            return "count(*)"
        col = '"' + self.column.replace('"', '""') + '"'
        return f"{self.func}({'DISTINCT ' if self.distinct else ''}{col})"


def parse_aggregate(text: str) -> Aggregate:
    """'sum(amount) AS total' -> Aggregate('sum', 'amount', False, 'total'). Default names:
    count, count_<col>, sum_<col>, avg_<col>, min_<col>, max_<col>, count_distinct_<col>."""
    m = _AGG_RE.match(text)
    if not m:
        raise ValueError(f"malformed aggregate {text!r}")
    func = m["func"].lower()
    if m["star"] and func != "count":
        raise ValueError(f"only count takes *: {text!r}")
    if m["distinct"] and func != "count":
        raise ValueError(f"only count takes distinct: {text!r}")
    col = m["col"].lower() if m["col"] else None
    distinct = bool(m["distinct"])
    if m["alias"]:
        name = m["alias"].lower()
    elif col is None:
        name = "count"
    elif distinct:
        name = f"count_distinct_{col}"
    else:
        name = f"{func}_{col}"
    return Aggregate(func, col, distinct, name)


def _exact_sum(values: list):
    if any(isinstance(v, float) for v in values):
        return math.fsum(values)  # the exactly rounded sum: order-independent
    return sum(values[1:], values[0])


def aggregate(agg: Aggregate, events: Sequence[Mapping[str, Any]]):
    """The value of one aggregate over the events of one window (plain SQL semantics)."""
    if agg.column is None:
        return len(events)
    values = [e[agg.column] for e in events if e[agg.column] is not None]
    if agg.func == "count":
        return len(set(values)) if agg.distinct else len(values)
    if not values:
        return None
    if agg.func == "sum":
        return _exact_sum(values)
    if agg.func == "min":
        return min(values)
    if agg.func == "max":
        return max(values)
    if agg.func == "avg":
        total = _exact_sum(values)
        if isinstance(total, float):
            return total / len(values)
        with localcontext() as ctx:
            ctx.prec = 60
            return Decimal(total) / Decimal(len(values))
    raise ValueError(agg.func)


# -- windows ---------------------------------------------------------------------------------

@dataclass
class WindowSpec:
    kind: str                                   # tumbling | hopping | session
    size: dt.timedelta                          # window size, or the session gap
    slide: dt.timedelta | None = None           # hopping only
    group_by: Sequence[str] = ()
    aggregates: Sequence[str] = ("count(*)",)
    time_column: str = "created_at"
    key_column: str | None = None               # the stream's key column (sessions)
    id_column: str = "id"
    parsed: list[Aggregate] = field(init=False)

    def __post_init__(self):
        if self.kind not in ("tumbling", "hopping", "session"):
            raise ValueError(self.kind)
        if self.size <= dt.timedelta(0):
            raise ValueError("size must be positive")
        if self.kind == "hopping":
            if self.slide is None or not dt.timedelta(0) < self.slide <= self.size:
                raise ValueError("hopping needs 0 < slide <= size")
        elif self.slide is not None:
            raise ValueError("slide is for hopping windows only")
        self.group_by = list(self.group_by)
        self.aggregates = list(self.aggregates)
        self.parsed = [parse_aggregate(a) for a in self.aggregates]

    @property
    def output_names(self) -> list[str]:
        return [a.name for a in self.parsed]


def _us(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return (t - EPOCH) // MICRO


def _at(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def tumbling_window(t: dt.datetime, size: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    size_us = size // MICRO
    tu = _us(t)
    start = tu - tu % size_us   # Python's % is non-negative for a positive divisor
    return _at(start), _at(start + size_us)


def hopping_windows(t: dt.datetime, size: dt.timedelta, slide: dt.timedelta
                    ) -> list[tuple[dt.datetime, dt.datetime]]:
    size_us, slide_us = size // MICRO, slide // MICRO
    tu = _us(t)
    start = tu - tu % slide_us
    out = []
    while start > tu - size_us:      # start <= t < start + size
        out.append((_at(start), _at(start + size_us)))
        start -= slide_us
    return sorted(out)


def sessions(events: Iterable[Mapping[str, Any]], gap: dt.timedelta, time_column: str,
             id_column: str) -> list[list[Mapping[str, Any]]]:
    """Split the events of ONE key into sessions by the gap rule."""
    ordered = sorted(events, key=lambda e: (e[time_column], e[id_column]))
    out: list[list[Mapping[str, Any]]] = []
    for e in ordered:
        if out and e[time_column] - out[-1][-1][time_column] <= gap:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _null_last(v):
    """Sort key for group values: NULLs after everything (PostgreSQL's ASC default)."""
    return (1, "") if v is None else (0, v)


def expected_rows(events: Iterable[Mapping[str, Any]], spec: WindowSpec, watermark,
                  include_key: bool = False) -> list[dict[str, Any]]:
    """The rows of the window's view: dicts with window_start, window_end, the group_by
    columns (and, with include_key, the stream's key column for a session window), the
    aggregate output columns and is_final; sorted by window_start, group values (key
    first when included), window_end."""
    # Times in UTC: Python subtracts datetimes sharing a tzinfo as wall-clock times, which
    # is wrong across a DST change.
    events = [{**e, spec.time_column: e[spec.time_column].astimezone(UTC)} for e in events]
    gcols = list(spec.group_by)
    if include_key and spec.key_column and spec.key_column not in gcols:
        gcols = [spec.key_column] + gcols
    buckets: dict[tuple, list] = {}
    if spec.kind in ("tumbling", "hopping"):
        for e in events:
            t = e[spec.time_column]
            wins = ([tumbling_window(t, spec.size)] if spec.kind == "tumbling"
                    else hopping_windows(t, spec.size, spec.slide))
            g = tuple(e[c] for c in gcols)
            for ws, we in wins:
                buckets.setdefault((ws, we, g), []).append(e)
    else:
        by_key: dict[tuple, list] = {}
        for e in events:
            k = ((e[spec.key_column],) if spec.key_column else ()) \
                + tuple(e[c] for c in spec.group_by)
            by_key.setdefault(k, []).append(e)
        for k, evs in by_key.items():
            for sess in sessions(evs, spec.size, spec.time_column, spec.id_column):
                ws = sess[0][spec.time_column]
                we = sess[-1][spec.time_column] + spec.size
                g = tuple(sess[0][c] for c in gcols)
                # Two keys differing only in a column not shown could collide: keep them apart.
                buckets[(ws, we, g, k)] = sess
    rows = []
    for bkey, evs in buckets.items():
        ws, we, g = bkey[0], bkey[1], bkey[2]
        row: dict[str, Any] = {"window_start": ws, "window_end": we}
        row.update(zip(gcols, g))
        for agg in spec.parsed:
            row[agg.name] = aggregate(agg, evs)
        row["is_final"] = (wm_gt(watermark, we) if spec.kind == "session"
                           else wm_ge(watermark, we))
        rows.append(row)
    rows.sort(key=lambda r: (r["window_start"], tuple(_null_last(r[c]) for c in gcols),
                             r["window_end"]))
    return rows
