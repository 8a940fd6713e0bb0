"""An independent reference for pg_cep patterns (design.md, "Patterns (CEP)"), in plain Python
and without the database: a backtracking matcher written from the definition below, not a port
of the extension's SQL.

Input: the events of one stream as dicts (id, key, time and column values), a pattern in
SQL:2016 MATCH_RECOGNIZE row-pattern syntax and DEFINE conditions given as Python predicates.

- Late events (a set of ids) are removed first. The rest is partitioned by key and ordered by
  (time, id) within a key.
- Pattern syntax: variables `[A-Za-z_][A-Za-z0-9_]*`, case-insensitive (lowercased);
  concatenation by whitespace; `|` (lowest precedence); `( )`; postfix quantifiers `*`, `+`, `?`,
  `{n}`, `{n,}`, `{n,m}`, `{,m}` (= {0,m}), each optionally followed by `?` (reluctant);
  `PERMUTE(p1, ..., pk)` (keyword case-insensitive) = the alternation of all permutations of the
  sub-patterns in lexicographic order of their positions. Rejected (PatternError): a pattern that
  can match the empty sequence, a quantifier on a sub-pattern that can match empty (`(a?)*`),
  `{3,1}`, empty groups or alternatives, a quantifier on a quantifier other than the reluctant
  `?`, unbalanced parentheses, stray characters, DEFINE variables that the pattern does not use.
- DEFINE: variable -> Condition(test(event, prev_event, bindings), uses_vars). `prev_event` is
  the previous event of the same key in the non-late, unfiltered order (None for the first);
  `bindings` maps each variable bound so far in the current match attempt to the LAST event bound
  to it (the event being tested is not bound yet). Only a result that `is True` matches (SQL:
  NULL is not true). A variable without a condition matches every event.
- contiguity 'strict': a match is a run of consecutive events of the key. 'relaxed': first drop
  the events that satisfy none of the pattern's variables, where a variable without a condition
  or whose condition uses another variable's columns (`uses_vars`) counts as satisfied; PREV still
  sees the unfiltered sequence. Then match strictly over what remains.
- Preference: at a start event the pattern is tried as a backtracking regex: greedy quantifiers
  try more iterations first, reluctant ones fewer, alternation the left branch first; the FIRST
  complete match in that order is the match (not the longest). `within`: a path is valid only if
  time(last event) - time(first event) <= within; violating paths are pruned during the search,
  so a less preferred path that respects `within` can win. Every iteration of a quantified
  sub-pattern consumes at least one event (guaranteed: nullable bodies are rejected).
- Search per key: start at the first event; on a match emit it and continue after its last event
  ('skip_past_last_row') or after its first event ('skip_to_next_row'); otherwise continue at the
  next event. Output rows, per key in start order:
  Match(partition_key as text, first_time, last_time, event_ids, classifiers).

The matcher compiles the pattern to a small backtracking program (CHAR var / SPLIT preferred,
other / JMP / MATCH; counted quantifiers are unrolled) and runs a depth-first search. A search
state is (pc, position, last event bound to each variable): the rest of the search depends on
nothing else, and a state reached a second time has already failed (every loop iteration
consumes an event, so a state cannot recur inside its own subtree), so revisits are cut; this
keeps patterns like `(a+)+ b` polynomial without changing which match is found first.

`to_python_regex` renders a pattern as a regular expression over one letter per event, for
cross-checks against Python's `re`/`regex` (same backtracking preference) on single-symbol
streams.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

Event = Mapping[str, Any]


class PatternError(ValueError):
    """A pattern (or DEFINE) that design.md says must be rejected at creation."""


# -- syntax ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Seq:
    items: tuple


@dataclass(frozen=True)
class Alt:
    branches: tuple


@dataclass(frozen=True)
class Rep:
    body: Any
    min: int
    max: Optional[int]      # None: unbounded
    greedy: bool


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<brace>\{\s*(?P<lo>\d*)\s*(?P<comma>,)?\s*(?P<hi>\d*)\s*\})
  | (?P<op>[()|,*+?])
""", re.VERBOSE)


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise PatternError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        if m.group("ident"):
            toks.append(("ident", m.group("ident"), pos))
        elif m.group("brace"):
            lo, comma, hi = m.group("lo"), m.group("comma"), m.group("hi")
            if not comma:
                if not lo:
                    raise PatternError(f"empty quantifier {{}} at position {pos + 1}")
                bounds = (int(lo), int(lo))
            else:
                if not lo and not hi:
                    raise PatternError(f"quantifier {{,}} without bounds at position {pos + 1}")
                bounds = (int(lo) if lo else 0, int(hi) if hi else None)
            if bounds[1] is not None and bounds[0] > bounds[1]:
                raise PatternError(f"quantifier {m.group('brace')} at position {pos + 1}: "
                                   "minimum above maximum")
            toks.append(("quant", bounds, pos, "{"))
        elif m.group("op"):
            op = m.group("op")
            if op in "*+?":
                toks.append(("quant", {"*": (0, None), "+": (1, None), "?": (0, 1)}[op], pos, op))
            else:
                toks.append((op, op, pos))
        pos = m.end()
    return toks


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def where(self) -> str:
        tok = self.peek()
        return f"position {tok[2] + 1}" if tok else "end of pattern"

    def parse(self):
        if not self.toks:
            raise PatternError("empty pattern")
        node = self.alt()
        if self.peek() is not None:
            tok = self.peek()
            if tok[0] == ")":
                raise PatternError(f"unbalanced ')' at {self.where()}")
            raise PatternError(f"unexpected {tok[1]!r} at {self.where()}")
        return node

    def alt(self):
        branches = [self.seq()]
        while self.peek() and self.peek()[0] == "|":
            self.take()
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def seq(self):
        items = []
        while self.peek() and self.peek()[0] in ("ident", "("):
            items.append(self.item())
        if not items:
            tok = self.peek()
            if tok is None:
                raise PatternError("empty alternative or group at end of pattern")
            if tok[0] == "quant":
                raise PatternError(f"quantifier without operand at {self.where()}")
            raise PatternError(f"empty alternative or group at {self.where()}")
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def item(self):
        node = self.primary()
        tok = self.peek()
        if tok and tok[0] == "quant":
            self.take()
            lo, hi = tok[1]
            greedy = True
            nxt = self.peek()
            if nxt and nxt[0] == "quant" and nxt[3] == "?":
                self.take()
                greedy = False
            if self.peek() and self.peek()[0] == "quant":
                raise PatternError(f"quantifier on a quantifier at {self.where()}")
            node = Rep(node, lo, hi, greedy)
        return node

    def primary(self):
        tok = self.take()
        if tok[0] == "ident":
            nxt = self.peek()
            if tok[1].lower() == "permute" and nxt and nxt[0] == "(":
                self.take()
                parts = [self.alt()]
                while self.peek() and self.peek()[0] == ",":
                    self.take()
                    parts.append(self.alt())
                self.close()
                return Alt(tuple(
                    Seq(tuple(parts[i] for i in perm)) if len(perm) > 1 else parts[perm[0]]
                    for perm in itertools.permutations(range(len(parts))))) \
                    if len(parts) > 1 else parts[0]
            return Var(tok[1].lower())
        # "("
        node = self.alt()
        self.close()
        return node

    def close(self):
        tok = self.take()
        if tok is None:
            raise PatternError("unbalanced '(': missing ')' at end of pattern")
        if tok[0] != ")":
            self.i -= 1
            raise PatternError(f"expected ')' at {self.where()}, found {tok[1]!r}")


def nullable(node) -> bool:
    if isinstance(node, Var):
        return False
    if isinstance(node, Seq):
        return all(nullable(n) for n in node.items)
    if isinstance(node, Alt):
        return any(nullable(n) for n in node.branches)
    return node.min == 0 or nullable(node.body)


def variables(node) -> list[str]:
    """The pattern's variables in order of first appearance."""
    out: list[str] = []

    def walk(n):
        if isinstance(n, Var):
            if n.name not in out:
                out.append(n.name)
        elif isinstance(n, Seq):
            for x in n.items:
                walk(x)
        elif isinstance(n, Alt):
            for x in n.branches:
                walk(x)
        else:
            walk(n.body)
    walk(node)
    return out


def _check(node):
    if isinstance(node, Seq):
        for x in node.items:
            _check(x)
    elif isinstance(node, Alt):
        for x in node.branches:
            _check(x)
    elif isinstance(node, Rep):
        _check(node.body)
        if nullable(node.body):
            raise PatternError("a quantifier applies to a sub-pattern that can match nothing")


def parse(text: str):
    """The pattern's syntax tree (PERMUTE expanded), validated."""
    node = _Parser(text).parse()
    _check(node)
    if nullable(node):
        raise PatternError("the pattern can match an empty sequence")
    return node


# -- compilation to a backtracking program ----------------------------------------------------

CHAR, SPLIT, JMP, MATCH = "char", "split", "jmp", "match"


def compile_program(node) -> list[tuple]:
    prog: list[list] = []

    def emit(*ins) -> int:
        prog.append(list(ins))
        return len(prog) - 1

    def comp(n):
        if isinstance(n, Var):
            emit(CHAR, n.name)
        elif isinstance(n, Seq):
            for x in n.items:
                comp(x)
        elif isinstance(n, Alt):
            jumps = []
            for k, b in enumerate(n.branches):
                if k < len(n.branches) - 1:
                    s = emit(SPLIT, None, None)
                    prog[s][1] = len(prog)
                    comp(b)
                    jumps.append(emit(JMP, None))
                    prog[s][2] = len(prog)
                else:
                    comp(b)
            for j in jumps:
                prog[j][1] = len(prog)
        else:
            for _ in range(n.min):
                comp(n.body)
            if n.max is None:
                s = emit(SPLIT, None, None)
                body = len(prog)
                comp(n.body)
                emit(JMP, s)
                out = len(prog)
                prog[s][1:] = [body, out] if n.greedy else [out, body]
            else:
                splits = []
                for _ in range(n.max - n.min):
                    s = emit(SPLIT, None, None)
                    splits.append((s, len(prog)))
                    comp(n.body)
                out = len(prog)
                for s, body in splits:
                    prog[s][1:] = [body, out] if n.greedy else [out, body]

    comp(node)
    emit(MATCH)
    return [tuple(i) for i in prog]


# -- definitions and matching ------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """A DEFINE condition: test(event, prev_event, bindings) -> True / False / None (NULL).
    uses_vars: the condition reads another variable's columns (`v.col`); the relaxed filter
    then keeps every event for it."""
    test: Callable[[Event, Optional[Event], Mapping[str, Event]], Any]
    uses_vars: bool = False
    text: str = ""


def conditions_from(cond: Callable[[str, Event, Optional[Event], Mapping[str, Event]], Any],
                    defined: Iterable[str], uses_vars: Iterable[str] = ()) -> dict:
    """DEFINE from one predicate cond(var, event, prev_event, bindings) for the variables in
    `defined` (the others match every event); `uses_vars`: those whose condition reads v.col."""
    uv = {v.lower() for v in uses_vars}
    return {v.lower(): Condition(lambda e, p, b, _v=v.lower(): cond(_v, e, p, b),
                                 v.lower() in uv)
            for v in defined}


@dataclass(frozen=True)
class Match:
    partition_key: str
    first_time: Any
    last_time: Any
    event_ids: tuple
    classifiers: tuple


@dataclass
class Compiled:
    text: str
    tree: Any
    program: list
    vars: list
    define: dict = field(default_factory=dict)


def compile_pattern(text: str, define: Mapping[str, Condition] | None = None) -> Compiled:
    tree = parse(text)
    vs = variables(tree)
    d = {k.lower(): v for k, v in (define or {}).items()}
    unknown = sorted(set(d) - set(vs))
    if unknown:
        raise PatternError(f"DEFINE names variables not in the pattern: {', '.join(unknown)}")
    return Compiled(text, tree, compile_program(tree), vs, d)


def _true(x) -> bool:
    return x is True


def match_at(pat: Compiled, seq: Sequence[Event], prevs: Sequence[Optional[Event]], start: int,
             within: Optional[dt.timedelta] = None, time: str = "t"):
    """The first match (in preference order) starting at seq[start], as a list of
    (position, variable), or None. prevs[i]: the PREV event of seq[i]."""
    prog, vs = pat.program, pat.vars
    vindex = {v: k for k, v in enumerate(vs)}
    n = len(seq)
    t0 = seq[start][time]
    limit = None if within is None else t0 + within
    none = (-1,) * len(vs)
    visited: set = set()
    stack = [(0, start, none, None)]
    while stack:
        pc, pos, last, path = stack.pop()
        while True:
            state = (pc, pos, last)
            if state in visited:
                break
            visited.add(state)
            ins = prog[pc]
            op = ins[0]
            if op is MATCH:
                out = []
                while path is not None:
                    out.append((path[0], path[1]))
                    path = path[2]
                return out[::-1]
            if op is JMP:
                pc = ins[1]
                continue
            if op is SPLIT:
                stack.append((ins[2], pos, last, path))
                pc = ins[1]
                continue
            # CHAR
            var = ins[1]
            if pos >= n:
                break
            ev = seq[pos]
            if limit is not None and ev[time] > limit:
                break
            c = pat.define.get(var)
            if c is not None:
                bindings = {v: seq[last[k]] for k, v in enumerate(vs) if last[k] >= 0}
                if not _true(c.test(ev, prevs[pos], bindings)):
                    break
            k = vindex[var]
            last = last[:k] + (pos,) + last[k + 1:]
            path = (pos, var, path)
            pos += 1
            pc += 1
    return None


def _keep_relaxed(pat: Compiled, ev: Event, prev: Optional[Event]) -> bool:
    for v in pat.vars:
        c = pat.define.get(v)
        if c is None or c.uses_vars or _true(c.test(ev, prev, {})):
            return True
    return False


def match_key(pat: Compiled, events: Sequence[Event], *, within=None, contiguity="relaxed",
              after_match="skip_past_last_row", time="t", id="id"):
    """Matches over the events of ONE key, already ordered by (time, id), late ones removed.
    Yields lists of events with their variables: [(event, var), ...]."""
    if contiguity not in ("strict", "relaxed"):
        raise PatternError(f"contiguity must be strict or relaxed, not {contiguity!r}")
    if after_match not in ("skip_past_last_row", "skip_to_next_row"):
        raise PatternError(f"after_match must be skip_past_last_row or skip_to_next_row, "
                           f"not {after_match!r}")
    prevs_all = [None] + list(events[:-1])
    if contiguity == "relaxed":
        keep = [i for i, e in enumerate(events) if _keep_relaxed(pat, e, prevs_all[i])]
    else:
        keep = list(range(len(events)))
    seq = [events[i] for i in keep]
    prevs = [prevs_all[i] for i in keep]
    i = 0
    while i < len(seq):
        m = match_at(pat, seq, prevs, i, within, time)
        if m is None:
            i += 1
            continue
        yield [(seq[p], v) for p, v in m]
        i = m[-1][0] + 1 if after_match == "skip_past_last_row" else i + 1


def find_matches(events: Iterable[Event], pattern: str | Compiled,
                 define: Mapping[str, Condition] | None = None, *,
                 within: Optional[dt.timedelta] = None, contiguity: str = "relaxed",
                 after_match: str = "skip_past_last_row", late_ids: Iterable[int] = (),
                 key: str = "key", time: str = "t", id: str = "id",
                 key_text: Callable[[Any], str] = str) -> list[Match]:
    """All matches of the pattern over the stream's events, ordered by key text and start."""
    pat = pattern if isinstance(pattern, Compiled) else compile_pattern(pattern, define)
    late = set(late_ids)
    by_key: dict = {}
    for e in events:
        if e[id] in late:
            continue
        by_key.setdefault(e[key], []).append(e)
    out = []
    for k in sorted(by_key, key=key_text):
        evs = sorted(by_key[k], key=lambda e: (e[time], e[id]))
        for m in match_key(pat, evs, within=within, contiguity=contiguity,
                           after_match=after_match, time=time, id=id):
            out.append(Match(key_text(k), m[0][0][time], m[-1][0][time],
                             tuple(e[id] for e, _ in m), tuple(v for _, v in m)))
    return out


# -- Python regular expressions, for cross-checks ----------------------------------------------

def to_python_regex(pattern: str | Any, letters: Mapping[str, str], capture: bool = False) -> str:
    """The pattern as a Python regular expression over one letter per event: variable v becomes
    the character class of letters[v] (the letters its condition accepts; a never-matching
    `(?!)` if none). capture=True wraps every variable occurrence in a group named after it
    (`regex` keeps repeated captures, which gives the classifiers)."""
    tree = parse(pattern) if isinstance(pattern, str) else pattern

    def r(n) -> str:
        if isinstance(n, Var):
            cls = "".join(sorted(set(letters.get(n.name, ""))))
            body = f"[{re.escape(cls)}]" if cls else "(?!)"
            return f"(?P<{n.name}>{body})" if capture else body
        if isinstance(n, Seq):
            return "".join(r(x) for x in n.items)
        if isinstance(n, Alt):
            return "(?:" + "|".join(r(x) for x in n.branches) + ")"
        q = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((n.min, n.max))
        if q is None:
            q = f"{{{n.min},}}" if n.max is None else f"{{{n.min},{n.max}}}"
        return f"(?:{r(n.body)}){q}" + ("" if n.greedy else "?")

    return r(tree)


def regex_matches(symbols: str, pattern: str, letters: Mapping[str, str],
                  after_match: str = "skip_past_last_row", engine=re):
    """Matches of the pattern over a string of one letter per event (strict contiguity, no
    within) found with a Python regex engine (re or the `regex` module): a list of
    (start, end) spans, or with `regex` of (start, end, classifiers)."""
    capture = engine is not re
    rx = engine.compile(to_python_regex(pattern, letters, capture=capture))
    out, i = [], 0
    names = sorted(set(variables(parse(pattern))))
    while i < len(symbols):
        m = rx.match(symbols, i)
        if not m:
            i += 1
            continue
        if capture:
            cls = [None] * (m.end() - m.start())
            for v in names:
                for a, _b in m.spans(v):
                    cls[a - m.start()] = v
            out.append((m.start(), m.end(), tuple(cls)))
        else:
            out.append((m.start(), m.end()))
        i = m.end() if after_match == "skip_past_last_row" else i + 1
    return out
