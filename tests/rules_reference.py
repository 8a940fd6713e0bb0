"""An independent reference for pg_cep risk rules (design.md, "Rules and risk scoring"), in plain
Python and without the database.

The model replays what a stream's table sees: INSERT statements (each a list of rows), rule
changes between statements and the risk policy, and returns for every statement the rows that
cep.risk_assessments, cep.alerts and cep.rule_stats must show. The contract it implements:

- Active rules (enforce and shadow) are evaluated against every event of every statement.
- Leaves are two-valued: a NULL never makes a leaf true, and {"not": c} negates the result.
  * field comparison: = != < <= > >= in not_in against a typed constant;
  * trailing metric of the same key (count, count(field), count_distinct, sum, avg, min, max)
    over the window set W(e, w): the key's rows stored before the statement with
    e.t - w < t <= e.t (whatever their ids), plus the statement's rows of the key with
    e.t - w < t and (t, id) <= (e.t, e.id). count/count_distinct of nothing is 0; sum, avg,
    min and max of nothing are NULL (never true); avg op v is sum op v * count;
  * changed: e.f is not NULL and some row of W(e, w) has a non-NULL f different from e.f;
  * time_of_day: the local time of e.t in the rule's zone, from inclusive, to exclusive,
    wrapping midnight when from > to;
  * zscore: over the history H(e) (non-NULL f of the key's rows stored before the statement,
    all times, plus the statement's rows of the key before e in (t, id) order) with n, s, ss
    its count, sum and sum of squares, fires iff e.f is not NULL, n >= min_samples and
    (n x - s)^2 (n - 1) > z^2 n (n ss - s^2), in exact rational arithmetic;
  * all / any / not.
- Scores combine exactly in decimal (Decimal(repr(float)) of each float8 score): sum, max or
  noisy_or = 1 - prod(1 - s), 0 when nothing fired. The total is over the fired enforced rules;
  shadow_score is over every fired rule. level: high if total >= high, medium if >= medium,
  else low. blocked: block_action set, some enforced rule fired and total >= block (with
  log_all and block 0, an event that fired nothing is assessed, not blocked).
- An assessment row exists for an event iff some rule (enforce or shadow) fired, or log_all.
  An alert exists for an assessed event iff some enforced rule fired and level >= alert_level.
- Blocked rows get the block action applied after the statement's assessment, so later
  statements read the updated values.
- rule_stats: evaluations = events ingested while the rule was active, hits = events it fired on.
"""

from __future__ import annotations

import copy
import functools
import datetime as dt
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc

LEVELS = ("low", "medium", "high")
_UNIT = {
    "microsecond": dt.timedelta(microseconds=1), "millisecond": dt.timedelta(milliseconds=1),
    "second": dt.timedelta(seconds=1), "sec": dt.timedelta(seconds=1),
    "minute": dt.timedelta(minutes=1), "min": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1),
}
_WINDOW_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", re.IGNORECASE)
_TOD_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?$")


# -- parsing ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def parse_window(text: str) -> dt.timedelta:
    """'90 seconds', '5 minutes', '1 hour 30 minutes', ... as a timedelta (a day = 86400 s)."""
    pos, total = 0, dt.timedelta(0)
    while pos < len(text):
        m = _WINDOW_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad window {text!r}")
        word = m.group(2).lower()
        unit = _UNIT.get(word) or _UNIT[word[:-1] if word.endswith("s") else word]
        total += unit * float(Decimal(m.group(1))) if "." in m.group(1) else unit * int(m.group(1))
        pos = m.end()
    if total <= dt.timedelta(0):
        raise ValueError(f"bad window {text!r}")
    return total


def parse_tod(text: str) -> dt.time:
    m = _TOD_RE.match(text)
    if not m:
        raise ValueError(f"bad time of day {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def loads(text: str) -> Any:
    """A condition's JSON with every number as an exact Decimal."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def dumps(obj: Any) -> str:
    """JSON text of a condition built from dicts, lists, str, int and Decimal (exact numbers)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, bool) or obj is None:
        return json.dumps(obj)
    if isinstance(obj, (int, Decimal)):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)
    return json.dumps(obj)


def dec_of_float(x: float) -> Decimal:
    """The exact decimal a float8 score stands for: its shortest round-trip representation."""
    return Decimal(repr(float(x)))


# -- rows and rules --------------------------------------------------------------------------

@dataclass
class Rule:
    rule_id: int
    name: str
    condition: Any              # parsed with loads(): numbers are Decimal
    score: float
    mode: str = "enforce"
    active: bool = True
    version: int = 1
    kind: str = "threshold"

    @property
    def score_dec(self) -> Decimal:
        return dec_of_float(self.score)


@dataclass
class Policy:
    combine: str = "sum"
    medium: float = 0.4
    high: float = 0.7
    block: float = 0.9
    block_action: Mapping[str, Any] | None = None   # {"set": {column: value}}
    alert_level: str = "high"
    log_all: bool = False


def combine(scores: Sequence[Decimal], how: str) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 200
        if not scores:
            return Decimal(0)
        if how == "sum":
            return sum(scores, Decimal(0))
        if how == "max":
            return max(scores)
        if how == "noisy_or":
            p = Decimal(1)
            for s in scores:
                p *= (1 - s)
            return 1 - p
    raise ValueError(how)


def level_of(total: Decimal, policy: Policy) -> str:
    if total >= dec_of_float(policy.high):
        return "high"
    if total >= dec_of_float(policy.medium):
        return "medium"
    return "low"


class Evaluator:
    """Evaluates conditions for one event. kinds maps each column a rule may read to
    'numeric' (numeric and integer columns), 'float' (float8) or 'text'."""

    def __init__(self, kinds: Mapping[str, str], key: str = "user_id", time: str = "created_at",
                 ident: str = "id"):
        self.kinds = dict(kinds)
        self.key, self.time, self.ident = key, time, ident
        self.true_leaves: Counter = Counter()    # leaf kind -> times it held (for coverage)

    # values -------------------------------------------------------------------------------
    def exact(self, f: str, v):
        """A column value as the exact number metrics and z-scores compute with (float8 values
        through their shortest decimal representation), or the value itself for text."""
        if v is None:
            return None
        kind = self.kinds[f]
        if kind == "numeric":
            return Decimal(v)
        if kind == "float":
            return Decimal(repr(float(v)))
        return v

    def comparable(self, f: str, v):
        """A column value as a field comparison sees it (float8 compares as float8)."""
        if v is None:
            return None
        kind = self.kinds[f]
        if kind == "numeric":
            return Decimal(v)
        if kind == "float":
            return float(v)
        return v

    def constant(self, f: str, c):
        kind = self.kinds[f]
        if kind == "numeric":
            return Decimal(c)
        if kind == "float":
            return float(Decimal(c))
        return c

    # the condition language -----------------------------------------------------------------
    def fires(self, cond, e: Mapping[str, Any], window_rows: Sequence[Mapping[str, Any]],
              history_rows: Sequence[Mapping[str, Any]]) -> bool:
        """Whether cond holds for event e. window_rows: the key's rows eligible for trailing
        windows (stored before the statement with t <= e.t, plus the statement's rows up to e
        in (t, id) order, e included); history_rows: the z-score history (e excluded)."""
        if "all" in cond:
            return all(self.fires(c, e, window_rows, history_rows) for c in cond["all"])
        if "any" in cond:
            return any(self.fires(c, e, window_rows, history_rows) for c in cond["any"])
        if "not" in cond:
            return not self.fires(cond["not"], e, window_rows, history_rows)
        held = self._leaf(cond, e, window_rows, history_rows)
        if held:
            self.true_leaves[next(k for k in ("metric", "changed", "time_of_day", "anomaly",
                                              "field") if k in cond)] += 1
        return held

    def _leaf(self, cond, e, window_rows, history_rows) -> bool:
        if "metric" in cond:
            return self._metric(cond, e, window_rows)
        if "changed" in cond:
            f = cond["changed"]
            x = self.comparable(f, e[f])
            if x is None:
                return False
            return any(self.comparable(f, r[f]) is not None and self.comparable(f, r[f]) != x
                       for r in self._in_window(e, window_rows, cond["window"]))
        if "time_of_day" in cond:
            tod = cond["time_of_day"]
            lo, hi = parse_tod(tod["from"]), parse_tod(tod["to"])
            local = e[self.time].astimezone(ZoneInfo(tod.get("timezone", "UTC"))).time()
            return (lo <= local < hi) if lo < hi else (local >= lo or local < hi)
        if "anomaly" in cond:
            return self._zscore(cond, e, history_rows)
        if "field" in cond:
            f, op = cond["field"], cond["op"]
            x = self.comparable(f, e[f])
            if x is None:
                return False
            if op in ("in", "not_in"):
                inside = any(x == self.constant(f, c) for c in cond["value"])
                return inside if op == "in" else not inside
            return compare(x, op, self.constant(f, cond["value"]))
        raise ValueError(f"unknown condition {cond!r}")

    def _in_window(self, e, rows, window: str):
        lo = e[self.time] - parse_window(window)
        return [r for r in rows if r[self.time] > lo]

    def _metric(self, cond, e, rows) -> bool:
        with localcontext() as ctx:
            ctx.prec = 200                      # sums stay exact
            return self._metric_exact(cond, e, rows)

    def _metric_exact(self, cond, e, rows) -> bool:
        fn, f = cond["metric"], cond.get("field")
        w = self._in_window(e, rows, cond["window"])
        op, v = cond["op"], Decimal(cond["value"])
        if fn == "count":
            n = len(w) if f is None else sum(1 for r in w if r[f] is not None)
            return compare(Decimal(n), op, v)
        vals = [self.exact(f, r[f]) for r in w if r[f] is not None]
        if fn == "count_distinct":
            return compare(Decimal(len(set(vals))), op, v)
        if not vals:
            return False
        if fn == "sum":
            return compare(sum(vals, Decimal(0)), op, v)
        if fn == "min":
            return compare(min(vals), op, v)
        if fn == "max":
            return compare(max(vals), op, v)
        if fn == "avg":
            return compare(Fraction(sum(vals, Decimal(0))), op, Fraction(v) * len(vals))
        raise ValueError(fn)

    def _zscore(self, cond, e, history) -> bool:
        f = cond["field"]
        x = self.exact(f, e[f])
        if x is None:
            return False
        vals = [Fraction(self.exact(f, r[f])) for r in history if r[f] is not None]
        n = len(vals)
        if n < int(cond.get("min_samples", 20)):
            return False
        s = sum(vals, Fraction(0))
        ss = sum((v * v for v in vals), Fraction(0))
        z = Fraction(cond["threshold"])
        x = Fraction(x)
        return (n * x - s) ** 2 * (n - 1) > z * z * n * (n * ss - s * s)


def compare(a, op: str, b) -> bool:
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise ValueError(op)


# -- the stream ------------------------------------------------------------------------------

@dataclass
class Assessment:
    event_id: int
    partition_key: str
    event_time: dt.datetime
    total: Decimal
    level: str
    triggered_rules: list[int]
    rule_versions: list[int]
    shadow_rules: list[int]
    shadow_versions: list[int]
    shadow_total: Decimal
    blocked: bool
    fired: list[int] = field(default_factory=list)   # every fired rule id (enforce + shadow)

    @property
    def total_score(self) -> float:
        return float(self.total)

    @property
    def shadow_score(self) -> float:
        return float(self.shadow_total)

    def as_row(self) -> dict:
        return {
            "event_id": self.event_id, "partition_key": self.partition_key,
            "event_time": self.event_time, "total_score": self.total_score, "level": self.level,
            "triggered_rules": self.triggered_rules, "rule_versions": self.rule_versions,
            "shadow_rules": self.shadow_rules, "shadow_versions": self.shadow_versions,
            "shadow_score": self.shadow_score, "blocked": self.blocked,
        }


@dataclass
class Alert:
    event_id: int
    partition_key: str
    score: float
    level: str
    blocked: bool
    rules: list[dict]           # {"rule_id", "name", "score", "version"} in rule id order


class Stream:
    """The model of one stream: its stored rows, rules, policy and everything derived."""

    def __init__(self, kinds: Mapping[str, str], key: str = "user_id",
                 time: str = "created_at", ident: str = "id"):
        self.ev = Evaluator(kinds, key, time, ident)
        self.key, self.time, self.ident = key, time, ident
        self.by_key: dict[str, list[dict]] = defaultdict(list)   # stored rows per key
        self.rows: dict[int, dict] = {}                           # stored rows by id
        self.rules: dict[int, Rule] = {}
        self.versions: dict[tuple[int, int], Rule] = {}           # every (rule_id, version)
        self.policy = Policy()
        self.assessments: dict[int, Assessment] = {}
        self.alerts: list[Alert] = []
        self.evaluations: Counter = Counter()
        self.hits: Counter = Counter()

    # rules -------------------------------------------------------------------------------
    def add_rule(self, rule: Rule) -> None:
        self.rules[rule.rule_id] = rule
        self.versions[(rule.rule_id, rule.version)] = copy.deepcopy(rule)

    def update_rule(self, rule_id: int, **changes) -> Rule:
        """An UPDATE of a rule: a new version when anything that matters changes."""
        r = self.rules[rule_id]
        new = copy.deepcopy(r)
        for k, v in changes.items():
            setattr(new, k, v)
        if (new.condition, new.score, new.mode, new.active, new.name, new.kind) != (
                r.condition, r.score, r.mode, r.active, r.name, r.kind):
            new.version = r.version + 1
        self.rules[rule_id] = new
        self.versions[(rule_id, new.version)] = copy.deepcopy(new)
        return new

    def delete_rule(self, rule_id: int) -> None:
        del self.rules[rule_id]

    def active_rules(self) -> list[Rule]:
        return [self.rules[i] for i in sorted(self.rules) if self.rules[i].active]

    # evaluation --------------------------------------------------------------------------
    def _sets(self, e: Mapping[str, Any], stmt_rows: Sequence[Mapping[str, Any]]):
        k = self.key_of(e)
        prior = self.by_key.get(k, [])
        te, ie = e[self.time], e[self.ident]
        mine = [b for b in stmt_rows if self.key_of(b) == k]
        window = [r for r in prior if r[self.time] <= te]
        window += [b for b in mine if (b[self.time], b[self.ident]) <= (te, ie)]
        history = list(prior)
        history += [b for b in mine if (b[self.time], b[self.ident]) < (te, ie)]
        return window, history

    def key_of(self, row: Mapping[str, Any]) -> str:
        return str(row[self.key])

    def evaluate(self, event: Mapping[str, Any], rules: Iterable[Rule] | None = None) -> dict:
        """cep.evaluate_rules: {rule_id: fired} for a hypothetical event, as if it were
        inserted now by a statement of its own. Changes nothing."""
        rules = self.active_rules() if rules is None else list(rules)
        window, history = self._sets(event, [event])
        return {r.rule_id: self.ev.fires(r.condition, event, window, history) for r in rules}

    def ingest(self, stmt_rows: Sequence[Mapping[str, Any]]) -> list[Assessment]:
        """One INSERT statement: assess every row, then store the rows (block action applied)."""
        stmt_rows = [dict(r) for r in stmt_rows]
        rules = self.active_rules()
        p = self.policy
        out: list[Assessment] = []
        for r in rules:
            self.evaluations[r.rule_id] += len(stmt_rows)
        for e in sorted(stmt_rows, key=lambda r: (r[self.time], r[self.ident])):
            window, history = self._sets(e, stmt_rows)
            fired = [r for r in rules if self.ev.fires(r.condition, e, window, history)]
            for r in fired:
                self.hits[r.rule_id] += 1
            if not fired and not p.log_all:
                continue
            enf = [r for r in fired if r.mode == "enforce"]
            sh = [r for r in fired if r.mode != "enforce"]
            total = combine([r.score_dec for r in enf], p.combine)
            a = Assessment(
                event_id=e[self.ident], partition_key=self.key_of(e), event_time=e[self.time],
                total=total, level=level_of(total, p),
                triggered_rules=[r.rule_id for r in enf], rule_versions=[r.version for r in enf],
                shadow_rules=[r.rule_id for r in sh], shadow_versions=[r.version for r in sh],
                shadow_total=combine([r.score_dec for r in fired], p.combine),
                blocked=p.block_action is not None and bool(enf)
                and total >= dec_of_float(p.block),
                fired=[r.rule_id for r in fired])
            out.append(a)
            if enf and p.alert_level != "none" and (
                    LEVELS.index(a.level) >= LEVELS.index(p.alert_level)):
                self.alerts.append(Alert(
                    a.event_id, a.partition_key, a.total_score, a.level, a.blocked,
                    [{"rule_id": r.rule_id, "name": r.name, "score": r.score,
                      "version": r.version} for r in enf]))
        blocked = {a.event_id for a in out if a.blocked}
        for e in stmt_rows:
            if e[self.ident] in blocked:
                e.update(p.block_action["set"])
            self.rows[e[self.ident]] = e
            self.by_key[self.key_of(e)].append(e)
        for a in out:
            assert a.event_id not in self.assessments, f"event {a.event_id} assessed twice"
            self.assessments[a.event_id] = a
        return out

    def blocked_ids(self) -> set[int]:
        return {i for i, a in self.assessments.items() if a.blocked}
