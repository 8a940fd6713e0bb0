"""CEP patterns (design.md, "Patterns (CEP)") against an independent reference.

tests/pattern_reference.py is a backtracking matcher written from the contract (SQL:2016 row
pattern syntax, MATCH_RECOGNIZE preference, DEFINE with PREV and var.col, within, strict and
relaxed contiguity, both after_match modes). This file

- tests the reference itself: hand-worked examples for every rule of the contract, rejection of
  invalid patterns, and random patterns over single-symbol streams cross-checked against Python's
  `re` (match spans) and the `regex` module (spans and classifiers via repeated captures), which
  share the backtracking preference order;
- drives the engine (skipped while cep.create_pattern does not exist) with random streams (2-4
  keys, ties, out-of-order arrivals within the lateness and, in some workloads, late events;
  random statement and transaction splits with rollbacks; two concurrent sessions on disjoint
  keys) and random patterns from the whole grammar with random DEFINE conditions (symbols, NULLs,
  PREV, var.col, overlapping conditions, undefined variables), within, contiguity and
  after_match, and checks that
    * at every commit, the live matches in cep.matches are a subset of the final reference
      result (a match is written once, when final, and never changes);
    * after cep.advance_watermark(stream): cep.matches for the pattern == cep.find_matches ==
      the reference over the non-late events, with one 'pattern' alert per match;
    * the late events are those of a Python model of the watermark rules (serial workloads);
    * for symbol-only DEFINEs the reference agrees with `regex` over the string of symbols;
- checks that patterns the contract rejects are rejected by the engine too;
- keeps the minimal reproductions of what the random workloads found (several conditions
  reading different columns of one variable, self references, an event committed behind
  another session's watermark, sessions on disjoint keys waiting for or deadlocking with each
  other). Events the engine skips for a pattern only (cep.pattern_late_events) while they are
  not late for the stream are reported as such.

Every failure message carries a reproduction: pattern, DEFINE, options, the events of the key
that differs, expected and actual matches.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import threading
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from pattern_reference import (
    Condition,
    Match,
    PatternError,
    compile_pattern,
    compile_program,
    conditions_from,
    find_matches,
    parse,
    regex_matches,
    to_python_regex,
    variables,
)

try:
    import regex as regex_mod   # ships with sqlfluff; keeps repeated captures (classifiers)
except ImportError:             # pragma: no cover
    regex_mod = None

UTC = dt.timezone.utc
BASE = dt.datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
COLS = ("id", "k", "ts", "sym", "val")


def sec(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=s)


def at(s: float) -> dt.datetime:
    return BASE + sec(s)


# =============================================================================================
# DEFINE conditions: one small expression model rendered both as SQL and as a Python predicate
# with SQL's three-valued logic (None = NULL; only True matches).
# =============================================================================================

class Expr:
    uses_vars = False

    def sql(self) -> str:
        raise NotImplementedError

    def ev(self, e, prev, b):
        raise NotImplementedError


@dataclass
class Col(Expr):
    name: str

    def sql(self):
        return self.name

    def ev(self, e, prev, b):
        return e[self.name]


@dataclass
class Prev(Expr):
    name: str
    spelling: str = "PREV"

    def sql(self):
        return f"{self.spelling}({self.name})"

    def ev(self, e, prev, b):
        return None if prev is None else prev[self.name]


@dataclass
class VarCol(Expr):
    var: str
    name: str
    uses_vars = True

    def sql(self):
        return f"{self.var}.{self.name}"

    def ev(self, e, prev, b):
        got = b.get(self.var.lower())
        return None if got is None else got[self.name]


@dataclass
class Lit(Expr):
    value: object

    def sql(self):
        return f"'{self.value}'" if isinstance(self.value, str) else str(self.value)

    def ev(self, e, prev, b):
        return self.value


_OPS = {"=": lambda x, y: x == y, "<>": lambda x, y: x != y, "<": lambda x, y: x < y,
        "<=": lambda x, y: x <= y, ">": lambda x, y: x > y, ">=": lambda x, y: x >= y}


def _kids_use_vars(*xs) -> bool:
    return any(x.uses_vars for x in xs)


@dataclass
class Cmp(Expr):
    op: str
    left: Expr
    right: Expr

    def __post_init__(self):
        self.uses_vars = _kids_use_vars(self.left, self.right)

    def sql(self):
        return f"{self.left.sql()} {self.op} {self.right.sql()}"

    def ev(self, e, prev, b):
        x, y = self.left.ev(e, prev, b), self.right.ev(e, prev, b)
        return None if x is None or y is None else _OPS[self.op](x, y)


@dataclass
class In(Expr):
    left: Expr
    values: tuple

    def __post_init__(self):
        self.uses_vars = self.left.uses_vars

    def sql(self):
        return f"{self.left.sql()} IN ({', '.join(Lit(v).sql() for v in self.values)})"

    def ev(self, e, prev, b):
        x = self.left.ev(e, prev, b)
        return None if x is None else x in self.values


@dataclass
class IsNull(Expr):
    arg: Expr
    negate: bool = False

    def __post_init__(self):
        self.uses_vars = self.arg.uses_vars

    def sql(self):
        return f"{self.arg.sql()} IS {'NOT ' if self.negate else ''}NULL"

    def ev(self, e, prev, b):
        return (self.arg.ev(e, prev, b) is None) != self.negate


@dataclass
class And(Expr):
    left: Expr
    right: Expr

    def __post_init__(self):
        self.uses_vars = _kids_use_vars(self.left, self.right)

    def sql(self):
        return f"({self.left.sql()} AND {self.right.sql()})"

    def ev(self, e, prev, b):
        x, y = self.left.ev(e, prev, b), self.right.ev(e, prev, b)
        if x is False or y is False:
            return False
        return None if x is None or y is None else True


@dataclass
class Or(Expr):
    left: Expr
    right: Expr

    def __post_init__(self):
        self.uses_vars = _kids_use_vars(self.left, self.right)

    def sql(self):
        return f"({self.left.sql()} OR {self.right.sql()})"

    def ev(self, e, prev, b):
        x, y = self.left.ev(e, prev, b), self.right.ev(e, prev, b)
        if x is True or y is True:
            return True
        return None if x is None or y is None else False


@dataclass
class Not(Expr):
    arg: Expr

    def __post_init__(self):
        self.uses_vars = self.arg.uses_vars

    def sql(self):
        return f"NOT ({self.arg.sql()})"

    def ev(self, e, prev, b):
        x = self.arg.ev(e, prev, b)
        return None if x is None else not x


def sym_is(*letters) -> Expr:
    return Cmp("=", Col("sym"), Lit(letters[0])) if len(letters) == 1 else \
        In(Col("sym"), tuple(letters))


def as_conditions(define: dict) -> dict:
    return {v.lower(): Condition(x.ev, x.uses_vars, x.sql()) for v, x in define.items()}


def define_json(define: dict) -> str:
    return json.dumps({v: x.sql() for v, x in define.items()})


# =============================================================================================
# Random patterns from the grammar
# =============================================================================================

QUANTS = ["*", "+", "?", "{1}", "{2}", "{1,}", "{2,}", "{1,2}", "{0,2}", "{,2}", "{2,3}",
          "{0,1}", "{1,3}"]


class PatternGen:
    """Random valid patterns over `names`: alternation, concatenation, groups, every quantifier
    (greedy and reluctant) and PERMUTE, with random letter case and spacing."""

    def __init__(self, rng: random.Random, names, max_depth=2, permute=True):
        self.rng, self.names, self.max_depth, self.permute = rng, list(names), max_depth, permute

    def name(self) -> str:
        v = self.rng.choice(self.names)
        return v.upper() if self.rng.random() < 0.2 else v

    def alt(self, depth):
        rng = self.rng
        n = 1 if rng.random() < 0.7 else rng.randint(2, 3)
        parts = [self.seq(depth) for _ in range(n)]
        sep = rng.choice([" | ", "|", " |"])
        return sep.join(p for p, _ in parts), any(nl for _, nl in parts)

    def seq(self, depth):
        n = self.rng.choice([1, 1, 2, 2, 3]) if depth < self.max_depth else self.rng.choice([1, 2])
        items = [self.item(depth) for _ in range(n)]
        return " ".join(t for t, _ in items), all(nl for _, nl in items)

    def item(self, depth):
        text, nl = self.atom(depth)
        if not nl and self.rng.random() < 0.45:
            q = self.rng.choice(QUANTS)
            lo = {"*": 0, "+": 1, "?": 0}.get(q)
            if lo is None:
                inner = q[1:-1]
                lo = int(inner.split(",")[0] or 0)
            if self.rng.random() < 0.3:
                q += "?"
            text, nl = text + q, lo == 0
        return text, nl

    def atom(self, depth):
        rng = self.rng
        r = rng.random()
        if depth >= self.max_depth or r < 0.55:
            return self.name(), False
        if self.permute and r < 0.65:
            parts = [self.alt(depth + 1) for _ in range(rng.randint(2, 3))]
            kw = rng.choice(["PERMUTE", "permute", "Permute"])
            return f"{kw}({', '.join(p for p, _ in parts)})", all(nl for _, nl in parts)
        inner, nl = self.alt(depth + 1)
        return (f"({inner})" if rng.random() < 0.7 else f"( {inner} )"), nl

    def pattern(self) -> str:
        while True:
            text, nl = self.alt(0)
            if nl:
                continue
            try:
                tree = parse(text)
            except PatternError:
                continue
            if _size(tree) <= 40:
                return text


def _size(tree) -> int:
    """Number of variable occurrences after PERMUTE expansion (keeps programs small)."""
    return len(re.findall(r"Var\(", repr(tree)))


# =============================================================================================
# Reference: hand-worked examples
# =============================================================================================

def evs(spec, key=1, start_id=1, t0=0.0, step=1.0):
    """Events from a compact spec: a string of symbols (one per event, times 0, 1, 2, ...), or
    a list of (sym, val) / (sym, val, t) tuples."""
    out = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            sym, val, t = item, None, t0 + i * step
        elif len(item) == 2:
            (sym, val), t = item, t0 + i * step
        else:
            sym, val, t = item
        out.append({"id": start_id + i, "k": key, "ts": at(t), "sym": sym, "val": val})
    return out


def ref(events, pattern, define=None, **kw):
    """Reference matches as [(ids, classifiers)] (the shape hand examples are written in)."""
    used = set(variables(parse(pattern)))       # hand examples share one DEFINE dict
    define = {v: x for v, x in (define or {}).items() if v.lower() in used}
    ms = find_matches(events, pattern, as_conditions(define), key="k", time="ts", **kw)
    return [(list(m.event_ids), "".join(c[0] if len(c) == 1 else f"[{c}]"
                                        for c in m.classifiers)) for m in ms]


SYM = {v: sym_is(v) for v in "abcxyz"}


def test_reference_greedy_reluctant_and_counted():
    e = evs("aaab")
    assert ref(e, "a+ b", SYM) == [([1, 2, 3, 4], "aaab")]
    assert ref(e, "a+", SYM) == [([1, 2, 3], "aaa")]
    assert ref(e, "a+?", SYM) == [([1], "a"), ([2], "a"), ([3], "a")]
    assert ref(e, "a*? b", SYM) == [([1, 2, 3, 4], "aaab")]
    assert ref(e, "a{2}", SYM) == [([1, 2], "aa")]
    assert ref(e, "a{2,}", SYM) == [([1, 2, 3], "aaa")]
    assert ref(e, "a{1,2}", SYM) == [([1, 2], "aa"), ([3], "a")]
    assert ref(e, "a{1,2}?", SYM) == [([1], "a"), ([2], "a"), ([3], "a")]
    assert ref(e, "a{,2} b", SYM) == [([2, 3, 4], "aab")]
    assert ref(e, "a{0,2}? b", SYM) == [([2, 3, 4], "aab")]
    assert ref(e, "a{2,3}? b", SYM) == [([1, 2, 3, 4], "aaab")]
    assert ref(e, "a? b", SYM) == [([3, 4], "ab")]
    assert ref(e, "a?? b", SYM) == [([3, 4], "ab")]
    # A greedy optional that has to give its event back, and a reluctant one that keeps it.
    x_any = {"x": sym_is("a", "b"), "y": sym_is("a", "b")}
    assert ref(evs("ab"), "x? y", x_any) == [([1, 2], "xy")]
    assert ref(evs("ab"), "x?? y", x_any) == [([1], "y"), ([2], "y")]
    assert ref(evs("ab"), "x+ y?", x_any) == [([1, 2], "xx")]
    assert ref(evs("ab"), "x+? y?", x_any) == [([1, 2], "xy")]
    assert ref(evs("ab"), "x+? y??", x_any) == [([1], "x"), ([2], "x")]


def test_reference_first_match_not_longest_and_left_alternative_first():
    assert ref(evs("ab"), "a | a b", SYM) == [([1], "a")]
    assert ref(evs("ab"), "a b | a", SYM) == [([1, 2], "ab")]
    ov = {"x": sym_is("a", "b"), "y": sym_is("b")}
    assert ref(evs("ab"), "(x | y)+", ov) == [([1, 2], "xx")]
    assert ref(evs("ab"), "(y | x)+", ov) == [([1, 2], "xy")]
    # Backtracking into an alternative: (x | x y) z over a b c prefers x then fails on z.
    e = evs("abc")
    d = {"x": sym_is("a"), "y": sym_is("b"), "z": sym_is("b", "c")}
    assert ref(e, "(x | x y) z", d) == [([1, 2], "xz")]
    assert ref(e, "(x y | x) z", d) == [([1, 2, 3], "xyz")]
    assert ref(e, "(x | x y) z z", d) == [([1, 2, 3], "xzz")]
    assert ref(e, "(x | x y) c", {**d, "c": sym_is("c")}) == [([1, 2, 3], "xyc")]


def test_reference_permute_is_ordered_alternation():
    e = evs("cab")
    assert ref(e, "PERMUTE(a, b, c)", SYM) == [([1, 2, 3], "cab")]
    assert ref(e, "permute(a,b)", SYM) == [([2, 3], "ab")]
    ov = {"x": sym_is("a", "b"), "y": sym_is("a", "b")}
    assert ref(evs("ab"), "PERMUTE(x, y)", ov) == [([1, 2], "xy")]
    assert ref(evs("ab"), "PERMUTE(y, x)", ov) == [([1, 2], "yx")]
    for p, q in [("PERMUTE(a, b, c)", "a b c | a c b | b a c | b c a | c a b | c b a"),
                 ("PERMUTE(a b, c+)", "a b c+ | c+ a b"),
                 ("x PERMUTE(a | b, c)", "x ((a | b) c | c (a | b))")]:
        assert compile_program(parse(p)) == compile_program(parse(q))
    assert parse("PERMUTE(a)") == parse("a")


def test_reference_within_prunes_paths_and_can_change_the_winner():
    e = evs([("a", None, 0), ("b", None, 5), ("b", None, 8), ("b", None, 20)])
    assert ref(e, "a b+", SYM) == [([1, 2, 3, 4], "abbb")]
    assert ref(e, "a b+", SYM, within=sec(10)) == [([1, 2, 3], "abb")]
    assert ref(e, "a b+", SYM, within=sec(8)) == [([1, 2, 3], "abb")]    # <= within
    assert ref(e, "a b+", SYM, within=sec(7.999)) == [([1, 2], "ab")]
    # No match can start at a: a later start that fits does.
    e = evs([("a", None, 0), ("a", None, 5), ("a", None, 30), ("b", None, 31)])
    assert ref(e, "a+ b", SYM, within=sec(10)) == [([3, 4], "ab")]
    # Without within the greedy x* eats the final y; with it, the preferred path is pruned and
    # a shorter, less preferred one wins.
    e = evs([("a", None, 0), ("y", None, 1), ("x", None, 2), ("y", None, 30)])
    d = {"a": sym_is("a"), "y": sym_is("y")}        # x undefined: any event
    assert ref(e, "a x* y", d) == [([1, 2, 3, 4], "axxy")]
    assert ref(e, "a x* y", d, within=sec(10)) == [([1, 2], "ay")]
    assert ref(e, "a x*? y", d) == [([1, 2], "ay")]


def test_reference_after_match_modes():
    e = evs("xyzw")
    assert ref(e, "p q", {}) == [([1, 2], "pq"), ([3, 4], "pq")]
    assert ref(e, "p q", {}, after_match="skip_to_next_row") == \
        [([1, 2], "pq"), ([2, 3], "pq"), ([3, 4], "pq")]
    assert ref(evs("aaab"), "a+ b", SYM, after_match="skip_to_next_row") == \
        [([1, 2, 3, 4], "aaab"), ([2, 3, 4], "aab"), ([3, 4], "ab")]


def test_reference_contiguity():
    e = evs("azb")
    assert ref(e, "a b", SYM, contiguity="strict") == []
    assert ref(e, "a b", SYM, contiguity="relaxed") == [([1, 3], "ab")]
    # An undefined variable satisfies every event, so relaxed skips nothing.
    assert ref(e, "a b | c", {"a": SYM["a"], "b": SYM["b"]}) == [([1], "c"), ([2], "c"),
                                                                   ([3], "c")]
    # A condition over another variable's columns keeps every event as well ...
    e = evs([("a", 1), ("z", 9), ("b", 5)])
    d = {"a": sym_is("a"), "b": Cmp(">", Col("val"), VarCol("a", "val"))}
    assert ref(e, "a b", d) == [([1, 2], "ab")]
    # ... while conditions over the event and PREV are applied before matching.
    d = {"a": sym_is("a"), "b": And(sym_is("b"), Cmp(">", Col("val"), Lit(0)))}
    assert ref(e, "a b", d) == [([1, 3], "ab")]
    # PREV sees the unfiltered sequence: b's PREV is z (9), not a (1).
    d = {"a": sym_is("a"), "b": And(sym_is("b"), Cmp(">", Col("val"), Prev("val")))}
    assert ref(e, "a b", d) == []
    d = {"a": sym_is("a"), "b": And(sym_is("b"), Cmp("<", Col("val"), Prev("val")))}
    assert ref(e, "a b", d) == [([1, 3], "ab")]
    # The filter keeps an event that satisfies any variable (here x), which then breaks a b.
    assert ref(evs("axb"), "a b | x", SYM, contiguity="relaxed") == [([2], "x")]


def test_reference_prev_and_var_columns():
    # PREV is the key's previous event (None for the first); NULL comparisons are false.
    e = evs([("a", 3), ("a", 5), ("a", None), ("a", 7), ("a", 8), ("a", 1)])
    up = {"u": Cmp(">", Col("val"), Prev("val"))}
    assert ref(e, "u+", up, contiguity="strict") == [([2], "u"), ([5], "u")]
    assert ref(e, "u+", up) == [([2, 5], "uu")]          # relaxed: 2 and 5 are all that is kept
    first = {"f": IsNull(Prev("val"))}
    assert ref(e, "f", first) == [([1], "f"), ([4], "f")]
    # var.col is the LAST event bound to var so far (not the one being tested): a rising run.
    rising = {"r": Or(IsNull(VarCol("r", "val")), Cmp(">", Col("val"), VarCol("r", "val")))}
    e = evs([("a", 1), ("a", 2), ("a", 3), ("a", 2), ("a", 5)])
    assert ref(e, "r+", rising) == [([1, 2, 3], "rrr"), ([4, 5], "rr")]
    # b compares with the last a bound: a+ b with b.val >= a.val.
    d = {"a": sym_is("a"), "b": And(sym_is("b"), Cmp(">=", Col("val"), VarCol("a", "val")))}
    e = evs([("a", 1), ("a", 6), ("b", 4), ("a", 2), ("b", 4)])
    assert ref(e, "a+ b", d) == [([4, 5], "ab")]
    assert ref(e, "a+ b", d, contiguity="strict") == [([4, 5], "ab")]
    # A variable not bound yet reads NULL; the lower-case name is what the condition sees.
    d = {"x": Cmp("<", Col("val"), VarCol("Y", "val"))}
    assert ref(evs([("a", 1), ("a", 2)]), "X Y | Y", d) == [([1], "y"), ([2], "y")]


def test_reference_keys_ties_late_and_case():
    e = [{"id": 5, "k": 2, "ts": at(0), "sym": "b"},
         {"id": 3, "k": 2, "ts": at(0), "sym": "a"},
         {"id": 1, "k": 10, "ts": at(1), "sym": "b"},
         {"id": 2, "k": 10, "ts": at(0), "sym": "a"},
         {"id": 4, "k": 10, "ts": at(0), "sym": "z"}]
    d = {"A": sym_is("a"), "b": sym_is("b")}
    ms = find_matches(e, "A B", as_conditions(d), key="k", time="ts", contiguity="strict")
    # keys in text order ('10' < '2'); within a key by (time, id)
    assert ms == [Match("2", at(0), at(0), (3, 5), ("a", "b"))]
    ms = find_matches(e, "a b", as_conditions(d), key="k", time="ts", contiguity="strict",
                      late_ids={4})
    assert [m.event_ids for m in ms] == [(2, 1), (3, 5)]
    # Late events are gone before PREV is read.
    e = evs([("a", 1), ("a", 9), ("a", 2)])
    up = {"u": Cmp(">", Col("val"), Prev("val"))}
    assert find_matches(e, "u", as_conditions(up), key="k", time="ts",
                        late_ids={2})[0].event_ids == (3,)


def test_reference_single_predicate_interface():
    """DEFINE as one predicate cond(var, event, prev_event, bindings), as the contract states
    it; `uses_vars` marks the variables whose condition reads v.col (kept by relaxed)."""
    def cond(var, e, prev, b):
        if var == "a":
            return e["sym"] == "a"
        if var == "b":      # b.val > a.val
            return None if "a" not in b or e["val"] is None else e["val"] > b["a"]["val"]
        return e["sym"] == "c"

    e = evs([("a", 1), ("z", 0), ("b", 5), ("c", 0)])

    def run(pattern, uses_vars):
        d = conditions_from(cond, ["a", "b", "c"], uses_vars=uses_vars)
        return [(m.event_ids, m.classifiers)
                for m in find_matches(e, pattern, d, key="k", time="ts")]

    # b reads a.val: relaxed keeps every event, so z sits between a and the rest
    assert run("a b? c", ["B"]) == []
    assert run("a x? b c", ["b"]) == [((1, 2, 3, 4), ("a", "x", "b", "c"))]
    # were b's condition over the event only, the filter (b tested with no bindings: NULL)
    # would drop z and the b event
    assert run("a b? c", []) == [((1, 4), ("a", "c"))]


def test_reference_rejects_invalid_patterns():
    for bad in ["", "  ", "()", "a ()", "a |", "| a", "a || b", "(a", "a)", "((a) b", "(a?)*",
                "(a* b?)+", "(a | b?){2}", "a{3,1}", "a?", "a* b?", "(a | b*)", "PERMUTE(a?, b*)",
                "a+*", "a**", "a{2}{3}", "a*??", "{2}", "a{}", "a{,}", "a b %", "a-b", "a, b",
                "PERMUTE()", "PERMUTE(a,)", "a $", "^ a"]:
        with pytest.raises(PatternError):
            parse(bad)
    with pytest.raises(PatternError, match="DEFINE"):
        compile_pattern("a b", as_conditions({"c": sym_is("c")}))
    # accepted corner cases
    for ok in ["a{0,1} b", "a{,1} b", "(a?) b", "a?? b", "PERMUTE(a, b?)", "(a | b*) c",
               "A1_x", "_a", "(a)(b)", "a(b)c", "permute (a,b)"]:
        parse(ok)


def test_reference_is_polynomial_on_nested_quantifiers():
    e = evs("a" * 60)
    assert ref(e, "(a+)+ b", SYM) == []
    assert ref(e, "(a | a a)+ b", SYM) == []
    e = evs("ab" * 150)
    d = {"a": sym_is("a"), "b": sym_is("b")}
    assert ref(e, "(a | b)* c", {**d, "c": sym_is("c")}, after_match="skip_to_next_row") == []


# =============================================================================================
# Reference against Python regular expressions over single-symbol streams
# =============================================================================================

def _regex_check(rng, pattern, names, n_events, letters_pool="abc", relaxed_pool="z"):
    letters = {v: "".join(sorted(rng.sample(letters_pool, rng.randint(1, 2)))) for v in names}
    define = {v: sym_is(*letters[v]) for v in names}
    syms = "".join(rng.choice(letters_pool + relaxed_pool) for _ in range(n_events))
    e = evs(syms)
    for contiguity in ("strict", "relaxed"):
        keep = [i for i, s in enumerate(syms)
                if contiguity == "strict" or any(s in letters[v] for v in names)]
        sub = "".join(syms[i] for i in keep)
        for after in ("skip_past_last_row", "skip_to_next_row"):
            got = find_matches(e, pattern, as_conditions(define), key="k", time="ts",
                               contiguity=contiguity, after_match=after)
            spans = regex_matches(sub, pattern, letters, after, engine=re)
            want_ids = [tuple(keep[i] + 1 for i in range(a, b)) for a, b in spans]
            ctx = (pattern, letters, syms, contiguity, after)
            assert [m.event_ids for m in got] == want_ids, ctx
            if regex_mod is not None:
                full = regex_matches(sub, pattern, letters, after, engine=regex_mod)
                assert [(m.event_ids, m.classifiers) for m in got] == \
                    [(tuple(keep[i] + 1 for i in range(a, b)), c) for a, b, c in full], ctx
            for m in got:      # each event satisfies the variable it is bound to
                for i, v in zip(m.event_ids, m.classifiers):
                    assert syms[i - 1] in letters[v], ctx


@pytest.mark.parametrize("seed", range(12))
def test_reference_agrees_with_python_regex(seed):
    rng = random.Random(seed)
    for _ in range(40):
        names = rng.sample(["a", "b", "c", "d"], rng.randint(2, 4))
        pattern = PatternGen(rng, names).pattern()
        names = variables(parse(pattern))
        _regex_check(rng, pattern, names, rng.randint(0, 24))


def test_python_regex_rendering():
    L = {"a": "a", "b": "bc", "c": ""}
    assert to_python_regex("a b+? c{2,}", L) == "[a](?:[bc])+?(?:(?!)){2,}"
    assert to_python_regex("(a | b){,3} c", L) == "(?:(?:[a]|[bc])){0,3}(?!)"
    assert to_python_regex("a", L, capture=True) == "(?P<a>[a])"


# =============================================================================================
# The engine
# =============================================================================================

def engine_present(conn) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'cep' AND p.proname = 'create_pattern')").fetchone()[0]


@pytest.fixture(scope="module")
def have_engine(server):
    with server.connect("cep_template") as c:
        if not engine_present(c):
            pytest.skip("cep.create_pattern does not exist yet")
    return True


def setup_stream(conn, lateness="0 seconds", table="public.t", stream="s", mode="sync"):
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, k integer NOT NULL, "
                 "ts timestamptz NOT NULL, sym text, val integer)")
    conn.execute("SELECT cep.create_stream(%s, %s::regclass, time_column => 'ts', "
                 "key_column => 'k', allowed_lateness => %s::interval, mode => %s)",
                 (stream, table, lateness, mode))


def process(conn, rng=None, stream="s"):
    """An asynchronous stream's queue: all of it, or (with RNG) a random piece or none."""
    if rng is None:
        conn.execute("SELECT cep.process_stream(%s, 1000000)", (stream,))
    elif rng.random() < 0.5:
        conn.execute("SELECT cep.process_stream(%s, %s)", (stream, rng.choice([1, 4, 30])))


def insert(cur, rows, how, table="public.t"):
    """One statement: COPY or a multi-row INSERT ... SELECT FROM unnest."""
    if how == "copy":
        with cur.copy(f"COPY {table} ({', '.join(COLS)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row([r[c] for c in COLS])
    else:
        cur.execute(
            f"INSERT INTO {table} ({', '.join(COLS)}) SELECT * FROM unnest("
            "%s::bigint[], %s::integer[], %s::timestamptz[], %s::text[], %s::integer[])",
            [[r[c] for r in rows] for c in COLS])


@dataclass
class Pat:
    name: str
    pattern: str
    define: dict                       # var -> Expr
    within: dt.timedelta | None = None
    contiguity: str = "relaxed"
    after_match: str = "skip_past_last_row"
    stream: str = "s"
    engine: str | None = None          # None: the engine's default choice

    def create(self, conn):
        # A generous cap on partial runs per key (where the engine has one): the reference has
        # none, and the streams here have at most a few dozen events per key.
        cap = sql.SQL(", max_runs => 10000") if _has_max_runs(conn) else sql.SQL("")
        engine = (sql.SQL(", engine => {}").format(sql.Literal(self.engine))
                  if self.engine else sql.SQL(""))
        conn.execute(sql.SQL(
            "SELECT cep.create_pattern({}, {}, {}, {}::jsonb, within => {}::interval, "
            "contiguity => {}, after_match => {}{}{})").format(
                *map(sql.Literal, (
                    self.name, self.stream, self.pattern, define_json(self.define),
                    None if self.within is None else f"{self.within.total_seconds()} seconds",
                    self.contiguity, self.after_match)), cap, engine))

    def reference(self, events, late=()):
        return [(m.partition_key, m.first_time, m.last_time, list(m.event_ids),
                 list(m.classifiers))
                for m in find_matches(events, self.pattern, as_conditions(self.define),
                                      within=self.within, contiguity=self.contiguity,
                                      after_match=self.after_match, late_ids=late,
                                      key="k", time="ts")]

    def describe(self) -> str:
        return (f"pattern {self.pattern!r}, define {define_json(self.define)}, within "
                f"{self.within}, contiguity {self.contiguity}, after_match {self.after_match}, "
                f"engine {self.engine or 'default'}")


def _has_max_runs(conn) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'cep' AND p.proname = 'create_pattern'"
        " AND 'max_runs' = ANY (p.proargnames))").fetchone()[0]


def _order(rows):
    return sorted((tuple(r[:3]) + (list(r[3]), list(r[4])) for r in rows),
                  key=lambda r: (r[0], r[1], r[3][0] if r[3] else 0))


def live_matches(conn, p: Pat):
    return _order(conn.execute(
        "SELECT m.partition_key, m.first_time, m.last_time, m.event_ids, m.classifiers "
        "FROM cep.matches AS m WHERE m.pattern::text = %s OR m.pattern::text IN "
        "(SELECT x.pattern_id::text FROM cep.patterns AS x WHERE x.name = %s)",
        (p.name, p.name)).fetchall())


def batch_matches(conn, p: Pat):
    return _order(conn.execute(
        "SELECT partition_key, first_time, last_time, event_ids, classifiers "
        "FROM cep.find_matches(%s)", (p.name,)).fetchall())


def pattern_alerts(conn, p: Pat) -> int:
    return conn.execute("SELECT count(*) FROM cep.alerts WHERE source_kind = 'pattern' "
                        "AND source_name = %s", (p.name,)).fetchone()[0]


def late_ids(conn, stream="s"):
    return {r[0] for r in conn.execute(
        "SELECT l.event_id FROM cep.late_events AS l JOIN cep.streams AS s USING (stream_id) "
        "WHERE s.name = %s", (stream,))}


def all_events(conn, table="public.t"):
    return [dict(zip(COLS, r)) for r in conn.execute(
        f"SELECT {', '.join(COLS)} FROM {table} ORDER BY id")]


def _fmt_match(m):
    return (f"  key {m[0]} {m[1]:%H:%M:%S}..{m[2]:%H:%M:%S} ids {m[3]} "
            f"classifiers {m[4]}")


def explain_diff(p: Pat, events, late, label_a, a, label_b, b, limit=12) -> str:
    """A reproduction: the first key whose matches differ, its events and what differs."""
    keys = sorted({m[0] for m in a if m not in b} | {m[0] for m in b if m not in a}
                  | {m[0] for m in a if a.count(m) != b.count(m)})
    lines = [p.describe()]
    for key in keys[:1]:
        lines.append(f"key {key} events (id, t, sym, val) in (t, id) order, late excluded:")
        kev = sorted((e for e in events if str(e["k"]) == key and e["id"] not in late),
                     key=lambda e: (e["ts"], e["id"]))
        for e in kev[:80]:
            lines.append(f"  {e['id']:>4} {e['ts']:%H:%M:%S} {e['sym']} {e['val']}")
        ka, kb = [m for m in a if m[0] == key], [m for m in b if m[0] == key]
        lines.append(f"{label_a}: {len(ka)} matches of key {key}, {len(a)} in all; "
                     f"{label_b}: {len(kb)} of key {key}, {len(b)} in all")
        lines.append(f"only in {label_a}:")
        lines += [_fmt_match(m) for m in ka if m not in kb][:limit]
        lines.append(f"only in {label_b}:")
        lines += [_fmt_match(m) for m in kb if m not in ka][:limit]
        dup = [m for m in kb if kb.count(m) > 1]
        if dup:
            lines.append(f"written more than once in {label_b}:")
            lines += [_fmt_match(m) for m in dup][:limit]
    return "\n".join(lines)


def pattern_late_ids(conn, p: Pat) -> set:
    """Events the engine itself skipped for this pattern (cep.pattern_late_events, where the
    engine has that table), e.g. an event whose key a concurrent session had already advanced
    past it."""
    if not conn.execute("SELECT to_regclass('cep.pattern_late_events') IS NOT NULL").fetchone()[0]:
        return set()
    return {r[0] for r in conn.execute(
        "SELECT l.event_id FROM cep.pattern_late_events AS l JOIN cep.patterns AS x "
        "USING (pattern_id) WHERE x.name = %s", (p.name,))}


def check_pattern(conn, p: Pat, events, late):
    """After the end of the stream: live == find_matches == reference; one alert per match.
    Events the engine skipped as late for the pattern only are first taken out of the reference
    too, so that the comparison reports other differences, then reported themselves: an event
    that is not late for the stream must be matched (design.md: late events are those older
    than the watermark on arrival, excluded everywhere; results equal a serial order)."""
    plate = pattern_late_ids(conn, p) - set(late)
    want = _order(p.reference(events, set(late) | plate))
    batch = batch_matches(conn, p)
    live = live_matches(conn, p)
    assert batch == want, explain_diff(p, events, late, "reference", want, "find_matches",
                                       batch)
    assert live == want, explain_diff(p, events, late, "reference", want, "cep.matches", live)
    n_alerts = pattern_alerts(conn, p)
    assert n_alerts == len(live), (f"{p.describe()}: {n_alerts} pattern alerts for "
                                   f"{len(live)} matches")
    stats = conn.execute(
        "SELECT matches, drops, active_runs FROM cep.pattern_stats WHERE pattern = %s",
        (p.name,)).fetchone()
    # after the end of the input: every match counted, no run dropped at the cap, none open
    assert stats == (len(live), 0, 0), (p.describe(), "pattern_stats (matches, drops, "
                                        "active_runs)", stats)
    if plate:
        full = _order(p.reference(events, late))
        byid = {e["id"]: e for e in events}
        raise AssertionError(
            f"{p.describe()}\n{len(plate)} events not late for the stream (not in "
            "cep.late_events) were skipped by the pattern (cep.pattern_late_events): "
            + ", ".join(f"id {i} key {byid[i]['k']} t {byid[i]['ts']:%H:%M:%S}"
                        for i in sorted(plate)[:8])
            + "\n" + explain_diff(p, events, late, "reference", full, "engine", want))
    return want


# -- random workloads ------------------------------------------------------------------------

class Model:
    """design.md's watermark rules, independent of the SQL: an event is late when its time is
    older than the watermark its statement saw; after a statement the watermark is
    max(watermark, max(event time in it) - lateness)."""

    def __init__(self, lateness: dt.timedelta):
        self.lateness = lateness
        self.watermark = None
        self.events: list[dict] = []
        self.late: set[int] = set()

    def snapshot(self):
        return (self.watermark, len(self.events), set(self.late))

    def restore(self, snap):
        self.watermark, n, self.late = snap
        del self.events[n:]

    def statement(self, rows):
        wm = self.watermark
        for r in rows:
            if wm is not None and r["ts"] < wm:
                self.late.add(r["id"])
            self.events.append(r)
        cand = max(r["ts"] for r in rows) - self.lateness
        if wm is None or cand > wm:
            self.watermark = cand


def gen_events(rng, n, keys, lateness_s, late_share, alphabet, first_id=1, t0=None,
               disorder_s=None):
    """Roughly increasing times with ties, out-of-order arrivals by up to disorder_s (default:
    the lateness) and (with late_share) some beyond the lateness; symbols from the alphabet,
    values 0..9 with some NULLs."""
    rows = []
    t = t0 or BASE + sec(rng.randint(0, 59))
    disorder_s = lateness_s if disorder_s is None else disorder_s
    for i in range(first_id, first_id + n):
        t += sec(rng.choice([0, 0, 1, 1, 2, 3, 5, 8, 20, 61]))
        et = t
        if disorder_s and rng.random() < 0.3:
            et = t - sec(rng.randint(0, disorder_s))
        if late_share and rng.random() < late_share:
            et = t - sec(lateness_s + rng.randint(1, 90))
        rows.append({"id": i, "k": rng.choice(keys), "ts": et, "sym": rng.choice(alphabet),
                     "val": None if rng.random() < 0.15 else rng.randint(0, 9)})
    return rows


def gen_condition(rng, var, others, alphabet) -> Expr:
    def lit_sym():
        return rng.choice(alphabet)

    def vref(v):
        return v.upper() if rng.random() < 0.3 else v

    def prev():
        return Prev("val", rng.choice(["PREV", "prev", "Prev"]))

    simple = [
        (5, lambda: sym_is(lit_sym())),
        (2, lambda: sym_is(*sorted(rng.sample(alphabet, 2)))),
        (2, lambda: Cmp(rng.choice([">", "<", ">=", "<=", "<>"]), Col("val"),
                        Lit(rng.randint(1, 8)))),
        (2, lambda: Cmp(rng.choice([">", "<=", ">="]), Col("val"), prev())),
        (1, lambda: Cmp("=", Prev("sym"), Lit(lit_sym()))),
        (1, lambda: IsNull(prev(), negate=rng.random() < 0.5)),
        (1, lambda: IsNull(Col("val"))),
        (2, lambda: Cmp(rng.choice([">=", "<", ">"]), Col("val"),
                        VarCol(vref(rng.choice(others)), "val")) if others else sym_is(lit_sym())),
        (1, lambda: Or(IsNull(VarCol(vref(var), "val")),
                       Cmp(">", Col("val"), VarCol(vref(var), "val")))),
        (1, lambda: Cmp("=", Col("sym"), VarCol(vref(rng.choice(others)), "sym"))
            if others else sym_is(lit_sym())),
    ]

    def one():
        r = rng.random() * sum(w for w, _ in simple)
        for w, f in simple:
            r -= w
            if r < 0:
                return f()
        return simple[0][1]()

    r = rng.random()
    if r < 0.6:
        return one()
    if r < 0.75:
        return And(sym_is(lit_sym()), one())
    if r < 0.9:
        return Or(sym_is(lit_sym()), one())
    return Not(one())


def gen_pat(rng, name, alphabet, stream="s", names=None):
    names = names or rng.sample(["a", "b", "c", "d"], rng.randint(2, 4))
    pattern = PatternGen(rng, names).pattern()
    vs = variables(parse(pattern))
    contiguity = rng.choice(["strict", "relaxed", "relaxed"])
    p_undef = 0.1 if contiguity == "relaxed" else 0.25
    define = {}
    for v in vs:
        if rng.random() < p_undef:
            continue
        define[v.upper() if rng.random() < 0.1 else v] = gen_condition(
            rng, v, [o for o in vs if o != v], alphabet)
    within = rng.choice([None, None, sec(3), sec(10), sec(45), sec(180)])
    after = rng.choice(["skip_past_last_row", "skip_to_next_row"])
    return Pat(name, pattern, define, within, contiguity, after, stream)


def symbol_only(p: Pat) -> bool:
    return p.within is None and all(
        isinstance(x, (Cmp, In)) and isinstance(x.left, Col) and x.left.name == "sym"
        and (isinstance(x, In) or isinstance(x.right, Lit)) for x in p.define.values())


def regex_crosscheck(p: Pat, events, late):
    """For DEFINEs over the symbol only: the reference equals `re`/`regex` per key."""
    letters_all = sorted({e["sym"] for e in events})
    names = variables(parse(p.pattern))
    letters = {}
    for v in names:
        x = next((c for k, c in p.define.items() if k.lower() == v), None)
        letters[v] = "".join(s for s in letters_all
                             if x is None or x.ev({"sym": s}, None, {}) is True)
    got = p.reference(events, late)
    want = []
    for key in sorted({e["k"] for e in events}, key=str):
        kev = sorted((e for e in events if e["k"] == key and e["id"] not in late),
                     key=lambda e: (e["ts"], e["id"]))
        if p.contiguity == "relaxed":
            kev = [e for e in kev if any(e["sym"] in letters[v] for v in names)]
        syms = "".join(e["sym"] for e in kev)
        if regex_mod is not None:
            for a, b, cls in regex_matches(syms, p.pattern, letters, p.after_match, regex_mod):
                want.append((str(key), kev[a]["ts"], kev[b - 1]["ts"],
                             [e["id"] for e in kev[a:b]], list(cls)))
        else:
            for a, b in regex_matches(syms, p.pattern, letters, p.after_match, re):
                want.append((str(key), kev[a]["ts"], kev[b - 1]["ts"],
                             [e["id"] for e in kev[a:b]], None))
            got = [g[:4] + (None,) for g in got]
    assert got == want, p.describe()


def run_serial(conn, rng, rows, model, pats, check_every=True, mode="sync"):
    """Random statements (COPY or INSERT, 1..25 rows, any keys) in random transactions, some
    rolled back (their rows are retried), some statements undone by a savepoint. After each
    transaction the live matches must be final ones: a subset of the reference at the end.
    MODE 'async': the queue is processed in random pieces, inside transactions too."""
    i, force_commit = 0, False
    snapshots = []
    while i < len(rows):
        stmts, j = [], i
        for _ in range(rng.randint(1, 3)):
            size = rng.choice([1, 1, 2, 3, 5, 8, 25])
            if rows[j:j + size]:
                stmts.append(rows[j:j + size])
            j += size
        rollback = not force_commit and rng.random() < 0.15
        snap = model.snapshot()
        with conn.transaction(force_rollback=rollback), conn.cursor() as cur:
            for s in stmts:
                how = rng.choice(["copy", "insert"])
                if rng.random() < 0.1:
                    sp = model.snapshot()
                    with conn.transaction(force_rollback=True):
                        insert(cur, s, how)
                        model.statement(s)
                    model.restore(sp)
                else:
                    insert(cur, s, how)
                    model.statement(s)
                if mode == "async":
                    process(conn, rng)
        force_commit = rollback
        if rollback:
            model.restore(snap)
        else:
            i = j
            if check_every:
                if mode == "async":
                    process(conn)
                snapshots.append({p.name: live_matches(conn, p) for p in pats})
    return snapshots


def _assert_live_prefixes(snapshots, finals, pats):
    for snap in snapshots:
        for p in pats:
            extra = [m for m in snap[p.name] if m not in finals[p.name]]
            assert not extra, (f"{p.describe()}\nlive matches written before the end that are "
                               "not final matches:\n" + "\n".join(map(_fmt_match, extra[:5])))


def gen_workload(seed, concurrent=False):
    """(rng, lateness in seconds, keys, rows, patterns) of one random workload."""
    rng = random.Random(seed)
    late_share = 0.0 if concurrent or rng.random() < 0.6 else 0.08
    lateness_s = rng.choice([0, 5, 30]) if not concurrent else rng.choice([5, 7200])
    alphabet = rng.choice(["abc", "abcd", "ab"])
    n_keys = rng.randint(2, 4)
    keys = rng.sample(range(1, 40), n_keys)
    # concurrent: with 2 hours of lateness and 5 s of disorder nothing is late, whatever the
    # interleaving (the stream spans less than 100 minutes)
    rows = gen_events(rng, rng.randint(25, 90), keys, lateness_s, late_share, list(alphabet),
                      disorder_s=5 if concurrent else None)
    pats = [gen_pat(rng, f"p{seed}_{j}", list(alphabet)) for j in range(rng.randint(2, 4))]
    return rng, lateness_s, keys, rows, pats


def final_variables(prog) -> set:
    """The variables a match can end with: those of CHAR instructions from which MATCH is
    reached by SPLIT/JMP moves alone (over the reference's compiled program)."""
    def reaches_match(pc, seen):
        if pc in seen:
            return False
        seen.add(pc)
        op = prog[pc]
        if op[0] == "match":
            return True
        if op[0] == "split":
            return reaches_match(op[1], seen) or reaches_match(op[2], seen)
        if op[0] == "jmp":
            return reaches_match(op[1], seen)
        return False
    return {prog[pc][1].lower() for pc in range(len(prog))
            if prog[pc][0] == "char" and reaches_match(pc + 1, set())}


def lazy_possible(p: Pat) -> bool:
    """Whether the lazy engine can run P (an independent restatement of its condition): the
    pattern has within, and every variable a match can end with has a condition over the
    event alone (no PREV, no var.col)."""
    if p.within is None:
        return False
    define = {v.lower(): x for v, x in p.define.items()}
    prog = compile_program(parse(p.pattern))
    for var in final_variables(prog):
        x = define.get(var)
        if x is None or x.uses_vars or "prev(" in x.sql().lower():
            return False
    return True


def twins(rng, pats):
    """Each pattern twice, on the eager and on the lazy engine (which needs within: a pattern
    without one gets one for both twins), so that both engines meet the same events."""
    out = []
    for p in pats:
        within = p.within or rng.choice([sec(3), sec(10), sec(45), sec(180)])
        base = dict(define=p.define, within=within, contiguity=p.contiguity,
                    after_match=p.after_match, stream=p.stream)
        out.append(Pat(f"{p.name}_eager", p.pattern, engine="eager", **base))
        lazy = Pat(f"{p.name}_lazy", p.pattern, engine="lazy", **base)
        if lazy_possible(lazy):
            out.append(lazy)
    return out


def _workload(server, seed, concurrent=False, mode="sync", both_engines=False,
              maintenance=False):
    """BOTH_ENGINES: every pattern on the eager and on the lazy engine (see twins).
    MAINTENANCE: another session calls cep.run_maintenance() in a loop meanwhile."""
    rng, lateness_s, keys, rows, pats = gen_workload(seed, concurrent)
    if both_engines:
        pats = twins(rng, pats)
    n_keys = len(keys)
    db = server.new_database()
    done = threading.Event()
    errors = []

    def maintainer():
        try:
            with server.connect(db) as c:
                while not done.is_set():
                    c.execute("SELECT count(*) FROM cep.run_maintenance()")
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)

    helper = threading.Thread(target=maintainer) if maintenance else None
    try:
        with server.connect(db) as conn:
            setup_stream(conn, f"{lateness_s} seconds", mode=mode)
            for p in pats:
                try:
                    p.create(conn)
                except psycopg.Error as exc:
                    raise AssertionError(f"valid pattern rejected: {p.describe()}: {exc}")
            engines = dict(conn.execute("SELECT name, engine FROM cep.patterns").fetchall())
            for p in pats:
                # auto picks lazy exactly where the lazy engine can run the pattern
                want = p.engine or ("lazy" if lazy_possible(p) else "eager")
                assert engines[p.name] == want, (p.describe(), engines[p.name])
            if helper:
                helper.start()
            model = Model(sec(lateness_s))
            snapshots = []
            if not concurrent:
                snapshots = run_serial(conn, rng, rows, model, pats, mode=mode)
                if mode == "async":
                    process(conn)
                assert late_ids(conn) == model.late
                late = model.late
            else:
                half = set(rng.sample(keys, n_keys // 2))
                parts = [[r for r in rows if r["k"] in half],
                         [r for r in rows if r["k"] not in half]]
                errors = []

                done = threading.Event()

                def writer(part, wseed):
                    wrng = random.Random(wseed)
                    try:
                        with server.connect(db) as c:
                            run_serial(c, wrng, part, Model(sec(lateness_s)), pats,
                                       check_every=False)
                    except BaseException as exc:   # pragma: no cover - reported below
                        errors.append(exc)

                def processor():
                    # asynchronous: a third session applies the queue while the writers run
                    try:
                        with server.connect(db, autocommit=True) as c:
                            while not done.is_set():
                                c.execute("SELECT cep.process_stream('s', 20)")
                    except BaseException as exc:   # pragma: no cover - reported below
                        errors.append(exc)

                ts = [threading.Thread(target=writer, args=(part, seed * 10 + w))
                      for w, part in enumerate(parts)]
                pt = threading.Thread(target=processor)
                if mode == "async":
                    pt.start()
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                done.set()
                if mode == "async":
                    pt.join()
                    process(conn)
                assert not errors, errors
                late = late_ids(conn)
                if lateness_s >= 3600:
                    assert late == set()
            done.set()
            if helper:
                helper.join(30)
            assert not errors, errors
            conn.execute("SELECT cep.advance_watermark(%s)::text", ("s",))
            events = all_events(conn)
            if not concurrent:
                assert sorted(e["id"] for e in events) == sorted(e["id"] for e in model.events)
            finals = {}
            for p in pats:
                finals[p.name] = check_pattern(conn, p, events, late)
                if symbol_only(p):
                    regex_crosscheck(p, events, late)
            _assert_live_prefixes(snapshots, finals, pats)
            return pats, finals
    finally:
        done.set()
        if helper and helper.is_alive():
            helper.join(30)
        server.drop_database(db)


@pytest.mark.parametrize("seed", range(32))
def test_random_streams_live_equals_batch_equals_reference(server, have_engine, seed):
    _workload(server, seed)


@pytest.mark.parametrize("seed", range(200, 224))
def test_both_engines_on_random_streams(server, have_engine, seed):
    """Every random pattern on the eager and on the lazy engine over the same statements
    (ties, out-of-order and late events, rollbacks): each equals find_matches and the
    reference, and live matches are only ever final ones."""
    _workload(server, seed, both_engines=True)


@pytest.mark.parametrize("seed", range(300, 310))
def test_both_engines_with_maintenance_running(server, have_engine, seed):
    """The same with another session calling cep.run_maintenance() in a loop: it matches the
    keys of lazy patterns whose events that can end a match the watermark reached, rechecks
    matches not final yet and ends runs that time out, skipping keys a writer holds."""
    _workload(server, seed, both_engines=True, maintenance=True)


@pytest.mark.parametrize("seed", range(400, 406))
def test_both_engines_on_async_streams(server, have_engine, seed):
    _workload(server, seed, both_engines=True, mode="async")


@pytest.mark.parametrize("seed", range(500, 506))
def test_both_engines_with_concurrent_sessions_on_disjoint_keys(server, have_engine, seed):
    _workload(server, seed, concurrent=True, both_engines=True)


@pytest.mark.parametrize("seed", range(16))
def test_async_streams_live_equals_batch_equals_reference(server, have_engine, seed):
    """The same workloads on an asynchronous stream, its queue applied in random pieces."""
    _workload(server, seed, mode="async")


@pytest.mark.parametrize("seed", range(100, 108))
def test_async_concurrent_writers_and_a_processing_session(server, have_engine, seed):
    _workload(server, seed, concurrent=True, mode="async")


@pytest.mark.parametrize("seed", range(100, 116))
def test_concurrent_sessions_on_disjoint_keys(server, have_engine, seed):
    _workload(server, seed, concurrent=True)


# -- hand-picked engine cases ----------------------------------------------------------------

def _run_case(conn, p: Pat, events, lateness="0 seconds", per_statement=False):
    setup_stream(conn, lateness)
    p.create(conn)
    with conn.cursor() as cur:
        if per_statement:
            for e in events:
                insert(cur, [e], "insert")
        else:
            insert(cur, events, "copy")
    conn.execute("SELECT cep.advance_watermark('s')::text")
    late = late_ids(conn)
    return check_pattern(conn, p, all_events(conn), late)


HAND = [
    ("a+ b", {"a": sym_is("a"), "b": sym_is("b")}, "aaab", {}),
    ("a | a b", {"a": sym_is("a"), "b": sym_is("b")}, "abab", {}),
    ("(x | y)+", {"x": sym_is("a", "b"), "y": sym_is("b")}, "abba", {}),
    ("x? y", {"x": sym_is("a", "b"), "y": sym_is("a", "b")}, "abab", {}),
    ("x?? y", {"x": sym_is("a", "b"), "y": sym_is("a", "b")}, "abab", {}),
    ("x+? y??", {"x": sym_is("a", "b"), "y": sym_is("a", "b")}, "abab", {}),
    ("(x | x y) z", {"x": sym_is("a"), "y": sym_is("b"), "z": sym_is("b", "c")}, "abcabc", {}),
    ("PERMUTE(a, b, c)", {"a": sym_is("a"), "b": sym_is("b"), "c": sym_is("c")}, "cabbac", {}),
    ("PERMUTE(x, y)", {"x": sym_is("a", "b"), "y": sym_is("a", "b")}, "abab", {}),
    ("a{2,3}? b", {"a": sym_is("a"), "b": sym_is("b")}, "aaaab", {}),
    ("a{,2} b", {"a": sym_is("a"), "b": sym_is("b")}, "aaaab", {}),
    ("a b", {"a": sym_is("a"), "b": sym_is("b")}, "azbab", {"contiguity": "strict"}),
    ("a b", {"a": sym_is("a"), "b": sym_is("b")}, "azbab", {}),
    ("a b | c", {"a": sym_is("a"), "b": sym_is("b")}, "azb", {}),
    ("p q", {}, "abcde", {"after_match": "skip_to_next_row"}),
    ("a+ b", {"a": sym_is("a"), "b": sym_is("b")}, "aaab", {"after_match": "skip_to_next_row"}),
    ("a x* y", {"a": sym_is("a"), "y": sym_is("y")}, [("a", 1, 0), ("y", 1, 1), ("x", 1, 2),
                                                       ("y", 1, 30)], {"within": sec(10)}),
    ("a+ b", {"a": sym_is("a"), "b": sym_is("b")}, [("a", 1, 0), ("a", 1, 5), ("a", 1, 30),
                                                    ("b", 1, 31)], {"within": sec(10)}),
    ("a b+", {"a": sym_is("a"), "b": sym_is("b")}, [("a", 1, 0), ("b", 1, 5), ("b", 1, 8),
                                                    ("b", 1, 20)], {"within": sec(8)}),
    ("u+", {"u": Cmp(">", Col("val"), Prev("val"))},
     [("a", 3), ("a", 5), ("a", None), ("a", 7), ("a", 8), ("a", 1)], {}),
    ("f", {"f": IsNull(Prev("val"))}, [("a", 3), ("a", None), ("a", 7)], {}),
    ("r+", {"r": Or(IsNull(VarCol("r", "val")), Cmp(">", Col("val"), VarCol("r", "val")))},
     [("a", 1), ("a", 2), ("a", 3), ("a", 2), ("a", 5)], {}),
    ("a+ b", {"a": sym_is("a"), "b": And(sym_is("b"), Cmp(">=", Col("val"),
                                                           VarCol("a", "val")))},
     [("a", 1), ("a", 6), ("b", 4), ("a", 2), ("b", 4)], {}),
    ("a b", {"a": sym_is("a"), "b": And(sym_is("b"), Cmp(">", Col("val"), Prev("val")))},
     [("a", 1), ("z", 9), ("b", 5)], {}),
    ("a b", {"a": sym_is("a"), "b": Cmp(">", Col("val"), VarCol("a", "val"))},
     [("a", 1), ("z", 9), ("b", 5)], {}),
    ("A B", {"a": sym_is("a"), "B": sym_is("b")}, "abab", {}),
    ("(a+)+ b", {"a": sym_is("a"), "b": sym_is("b")}, "a" * 30 + "b", {}),
]


@pytest.mark.parametrize("case", range(len(HAND)),
                         ids=[f"{i}:{c[0]}:{c[3]}" for i, c in enumerate(HAND)])
def test_hand_picked_patterns(conn, have_engine, case):
    pattern, define, spec, opts = HAND[case]
    p = Pat("hp", pattern, define, **opts)
    per_statement = case % 2 == 1
    _run_case(conn, p, evs(spec), per_statement=per_statement)


def test_ties_and_out_of_order_within_lateness(conn, have_engine):
    """Events of equal time are ordered by id, and out-of-order arrivals within the lateness
    are matched in event-time order, live as in batch."""
    p = Pat("tie", "a b c", {"a": sym_is("a"), "b": sym_is("b"), "c": sym_is("c")},
            contiguity="strict")
    rows = [{"id": 4, "k": 1, "ts": at(10), "sym": "c", "val": 1},
            {"id": 2, "k": 1, "ts": at(5), "sym": "b", "val": 1},   # arrives after id 4
            {"id": 1, "k": 1, "ts": at(5), "sym": "a", "val": 1},   # tie with id 2, id first
            {"id": 3, "k": 1, "ts": at(12), "sym": "z", "val": 1}]
    setup_stream(conn, "30 seconds")
    p.create(conn)
    with conn.cursor() as cur:
        for r in rows:
            insert(cur, [r], "insert")
    conn.execute("SELECT cep.advance_watermark('s')::text")
    got = check_pattern(conn, p, all_events(conn), set())
    assert [m[3] for m in got] == [[1, 2, 4]]


def test_late_events_are_excluded(conn, have_engine):
    p = Pat("late", "a b", {"a": sym_is("a"), "b": And(sym_is("b"),
                                                        IsNull(Prev("val"), negate=True))},
            contiguity="strict")
    setup_stream(conn, "5 seconds")
    p.create(conn)
    with conn.cursor() as cur:
        insert(cur, [{"id": 1, "k": 1, "ts": at(0), "sym": "a", "val": 1},
                     {"id": 2, "k": 1, "ts": at(100), "sym": "b", "val": 2}], "insert")
        # late (watermark 12:01:35): would sit between a and b and break the strict match
        insert(cur, [{"id": 3, "k": 1, "ts": at(50), "sym": "z", "val": None}], "insert")
    assert late_ids(conn) == {3}
    conn.execute("SELECT cep.advance_watermark('s')::text")
    got = check_pattern(conn, p, all_events(conn), {3})
    assert [m[3] for m in got] == [[1, 2]]


INVALID = ["", "()", "a (", "a )", "(a?)*", "a{3,1}", "a?", "a* b?", "a b |", "a ** b",
           "PERMUTE(a?, b*)", "a b %"]


@pytest.mark.parametrize("bad", INVALID)
def test_invalid_patterns_rejected_like_the_reference(conn, have_engine, bad):
    with pytest.raises(PatternError):
        parse(bad)
    setup_stream(conn)
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT cep.create_pattern('bad', 's', %s, '{}'::jsonb)", (bad,))
    assert conn.execute("SELECT count(*) FROM cep.patterns").fetchone()[0] == 0


def test_unknown_define_variable_rejected(conn, have_engine):
    setup_stream(conn)
    with pytest.raises(psycopg.Error, match="(?i)\\bc\\b"):
        conn.execute("""SELECT cep.create_pattern('bad', 's', 'a b',
                        '{"a": "sym = ''a''", "c": "sym = ''c''"}'::jsonb)""")


# -- minimal reproductions of what the random workloads found --------------------------------

def test_two_conditions_reading_different_columns_of_one_variable(conn, have_engine):
    """y reads x.val and z reads x.sym: both columns of x's last event must be kept (x.val is
    5, so y's `x.val IS NULL` is false and nothing matches)."""
    p = Pat("cols", "x y z", {"y": IsNull(VarCol("x", "val")),
                              "z": Cmp("=", Col("sym"), VarCol("x", "sym"))},
            contiguity="strict")
    assert _run_case(conn, p, evs([("a", 5), ("a", 1), ("a", 2)])) == []


def test_self_reference_and_a_reference_from_another_variable(conn, have_engine):
    """b: (b.val IS NULL OR val > b.val) and d: sym = b.sym over b/7, b/0, b/1: the third
    event is not above b's last value (7), so `b d b` does not match."""
    b = Or(IsNull(VarCol("b", "val")), Cmp(">", Col("val"), VarCol("b", "val")))
    p = Pat("selfref", "b d b", {"b": b, "d": Cmp("=", Col("sym"), VarCol("b", "sym"))},
            contiguity="strict")
    assert _run_case(conn, p, evs([("b", 7), ("b", 0), ("b", 1)])) == []


def test_start_variable_reading_a_variable_with_its_own_reference(conn, have_engine):
    """a? d a with a: sym <> d.sym and d: d.val IS NULL over b/3, a/1: a cannot start (d is
    not bound), d takes the first event, a the second."""
    p = Pat("start", "a? d a", {"a": Cmp("<>", Col("sym"), VarCol("d", "sym")),
                                "d": IsNull(VarCol("d", "val"))}, contiguity="strict")
    got = _run_case(conn, p, evs([("b", 3), ("a", 1)]))
    assert [(m[3], m[4]) for m in got] == [([1, 2], ["d", "a"])]


def _ev(i, k, t, sym, val=1):
    return {"id": i, "k": k, "ts": at(t), "sym": sym, "val": val}


def test_event_committed_after_another_session_moved_the_watermark_past_it(server, dbname,
                                                                           have_engine):
    """Session 1 inserts (key 1, t=0) in an open transaction; session 2 commits (key 2,
    t=100), which moves the watermark to 95; session 1 commits. Its event was not late when
    inserted, so it must still be matched, live as in find_matches."""
    p = Pat("conc", "a", {"a": sym_is("a")}, contiguity="strict")
    with server.connect(dbname) as conn, \
            server.connect(dbname, autocommit=False) as s1, server.connect(dbname) as s2:
        setup_stream(conn, "5 seconds")
        p.create(conn)
        insert(s1.cursor(), [_ev(1, 1, 0, "a")], "insert")
        insert(s2.cursor(), [_ev(2, 2, 100, "a")], "insert")
        s1.commit()
        assert late_ids(conn) == set()
        conn.execute("SELECT cep.advance_watermark('s')::text")
        got = check_pattern(conn, p, all_events(conn), set())
        assert [m[3] for m in got] == [[1], [2]]


def test_sessions_on_disjoint_keys_neither_wait_nor_deadlock(server, dbname, have_engine):
    """design.md, principle 5: sessions writing different keys never wait for each other's
    commit. Two transactions of two statements each, one on key 1 and one on key 2, each
    statement moving the watermark past the other key's open run (within 100 s)."""
    p = Pat("dl", "a b", {"a": sym_is("a"), "b": sym_is("b")}, within=sec(100),
            contiguity="strict")
    opts = "-c lock_timeout=3s"
    with server.connect(dbname) as conn, \
            server.connect(dbname, autocommit=False, options=opts) as s1, \
            server.connect(dbname, autocommit=False, options=opts) as s2:
        setup_stream(conn, "0 seconds")
        p.create(conn)
        insert(conn.cursor(), [_ev(1, 1, 1, "a"), _ev(2, 2, 2, "a"), _ev(3, 3, 3, "z")],
               "insert")
        errors = {}
        insert(s1.cursor(), [_ev(4, 1, 4, "z")], "insert")
        try:
            insert(s2.cursor(), [_ev(5, 2, 5, "z")], "insert")
        except psycopg.Error as exc:
            errors["s2 first statement"] = exc
            s2.rollback()

        def second():
            try:
                insert(s1.cursor(), [_ev(6, 1, 200, "z")], "insert")
                s1.commit()
            except psycopg.Error as exc:
                errors["s1 second statement"] = exc
                s1.rollback()

        t = threading.Thread(target=second)
        t.start()
        if "s2 first statement" not in errors:
            try:
                insert(s2.cursor(), [_ev(7, 2, 300, "z")], "insert")
                s2.commit()
            except psycopg.Error as exc:
                errors["s2 second statement"] = exc
                s2.rollback()
        t.join()
        assert not errors, {k: str(v).splitlines()[0] for k, v in errors.items()}
        conn.execute("SELECT cep.advance_watermark('s')::text")
        check_pattern(conn, p, all_events(conn), late_ids(conn))


def test_a_writer_does_not_wait_for_a_session_that_advanced_its_key(server, dbname,
                                                                    have_engine):
    """Session 2 (key 2) keeps a transaction open after a statement that moved the watermark
    past session 1's committed event (key 1, t=58): session 1's next statement on key 1 must
    not wait for session 2's commit (design.md, principle 5), and nothing is lost."""
    p = Pat("wait", "c+ d", {"c": sym_is("c"), "d": sym_is("d")}, contiguity="strict")
    opts = "-c lock_timeout=3s"
    with server.connect(dbname) as conn, \
            server.connect(dbname, autocommit=False, options=opts) as s1, \
            server.connect(dbname, autocommit=False, options=opts) as s2:
        setup_stream(conn, "5 seconds")
        p.create(conn)
        insert(s2.cursor(), [_ev(1, 2, 50, "x")], "insert")
        insert(s1.cursor(), [_ev(2, 1, 58, "c")], "insert")
        s1.commit()
        insert(s2.cursor(), [_ev(3, 2, 70, "x")], "insert")     # watermark 65 (uncommitted)
        try:
            insert(s1.cursor(), [_ev(4, 1, 66, "c"), _ev(5, 1, 67, "c")], "insert")
            s1.commit()
        except psycopg.Error as exc:
            s1.rollback()
            s2.commit()
            pytest.fail(f"session 1 waited for session 2: {str(exc).splitlines()[0]}")
        s2.commit()
        insert(s1.cursor(), [_ev(6, 1, 94, "d")], "insert")
        s1.commit()
        conn.execute("SELECT cep.advance_watermark('s')::text")
        got = check_pattern(conn, p, all_events(conn), late_ids(conn))
        assert [m[3] for m in got] == [[2, 4, 5, 6]]
