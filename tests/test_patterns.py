"""Patterns: syntax and DEFINE errors, hand-picked semantics (preference order, PERMUTE,
within, contiguity, skip modes, PREV and var.col), event-time order with out-of-order
arrivals, absence detection (watermark and wall clock), the run cap, linear time for
(a|b)* c, rules referring to patterns, pattern_stats, drop_pattern and drop_stream.

Semantics over random streams and patterns are checked against the independent reference
matcher in tests/test_patterns_property.py; here each expectation is derived in the test
from the events it inserts (the symbols spell the stream, and Python's re computes the
expected matches where the pattern is a plain regular expression over them)."""

from __future__ import annotations

import datetime as dt
import re
import time

import psycopg
import pytest

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SYMS = {"a": "sym = 'a'", "b": "sym = 'b'", "c": "sym = 'c'", "d": "sym = 'd'"}


def setup(conn, lateness="0 seconds"):
    conn.execute("CREATE TABLE public.ev (id bigserial PRIMARY KEY, k int NOT NULL, sym text, "
                 "val int, ts timestamptz NOT NULL)")
    conn.execute("SELECT cep.create_stream('ev', 'public.ev', 'ts', 'k', "
                 "allowed_lateness => %s::interval)", (lateness,))


def pattern(conn, name, pat, define=None, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    conn.execute(
        f"SELECT cep.create_pattern(%(name)s, 'ev', %(pat)s, %(define)s::jsonb"
        + (", " + args if args else "") + ")",
        {"name": name, "pat": pat, "define": psycopg.types.json.Jsonb(
            define if define is not None else
            {v: c for v, c in SYMS.items() if re.search(rf"\b{v}\b", pat)}), **kw})


def put(conn, k, text, start=0, step=60, vals=None):
    """One statement: key k, one event per symbol of text, `step` seconds apart."""
    rows = [(k, s, (vals[i] if vals else None), BASE + dt.timedelta(seconds=start + i * step))
            for i, s in enumerate(text)]
    conn.execute("INSERT INTO public.ev (k, sym, val, ts) SELECT * FROM unnest("
                 "%s::int[], %s::text[], %s::int[], %s::timestamptz[])",
                 ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                  [r[3] for r in rows]))


def live(conn, name):
    return conn.execute(
        "SELECT partition_key, event_ids, classifiers FROM cep.matches WHERE pattern = %s "
        "ORDER BY partition_key, first_time, match_id", (name,)).fetchall()


def batch(conn, name):
    return conn.execute(
        "SELECT partition_key, event_ids, classifiers FROM cep.find_matches(%s) "
        "ORDER BY partition_key, first_time", (name,)).fetchall()


def ids_of(conn, k):
    return [r[0] for r in conn.execute("SELECT id FROM public.ev WHERE k = %s ORDER BY ts, id",
                                       (k,))]


def regex_matches(text, rx, skip_past=True):
    """Leftmost, preference-ordered matches of a Python regex over a symbol string."""
    out, i = [], 0
    comp = re.compile(rx)
    while i < len(text):
        m = comp.match(text, i)
        if m and m.end() > i:
            out.append((i, m.end()))
            i = m.end() if skip_past else i + 1
        else:
            i += 1
    return out


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pat,fragment", [
    ("", "the pattern is empty"),
    ("a (b", "( is not closed"),
    ("a b)", ") without ("),
    ("a{3,1}", "maximum below its minimum"),
    ("()", "empty group"),
    ("a |", "ends where a variable was expected"),
    ("a**", "two quantifiers in a row"),
    ("a?", "can match an empty sequence"),
    ("(a?)* b", "sub-pattern that can match an empty sequence"),
    ("a {0}", "matches nothing"),
    ("a ; b", "unexpected character"),
    ("PERMUTE(a, b, c, d, e, f)", "at most 5 items"),
])
def test_pattern_syntax_errors(conn, pat, fragment):
    setup(conn)
    with pytest.raises(psycopg.Error) as info:
        pattern(conn, "bad", pat, {})
    assert info.value.sqlstate == "42601", info.value
    assert fragment in info.value.diag.message_primary, info.value.diag.message_primary
    assert conn.execute("SELECT count(*) FROM cep.patterns").fetchone()[0] == 0


@pytest.mark.parametrize("define,sqlstate,fragment", [
    ({"z": "true"}, "42703", "DEFINE z: unknown variable"),
    ({"a": "sym = "}, "42601", "DEFINE a: not a valid boolean condition"),
    ({"a": "val + 1"}, "42804", "DEFINE a"),
    ({"a": "nope > 1"}, "42703", "DEFINE a"),
    ({"a": "true); DROP TABLE public.ev; SELECT (true"}, "42601", "DEFINE a"),
    ({"a": "true -- comment"}, "42601", "DEFINE a: comments are not allowed"),
    ({"a": "sym = $$a$$"}, "42601", "DEFINE a"),
    ({"a": "sym = E'a'"}, "42601", "DEFINE a: prefixed strings"),
    ({"a": "PREV(nope) > 1"}, "42703", "DEFINE a: PREV() takes one column"),
    ({"b": "val > a.nope"}, "42703", "DEFINE b: a.nope is not a column"),
    ({"a": "(val > 1"}, "42601", "DEFINE a: unbalanced parentheses"),
    ({"a": 5}, "22023", "DEFINE a: the condition must be a JSON string"),
])
def test_define_errors_name_the_variable(conn, define, sqlstate, fragment):
    setup(conn)
    with pytest.raises(psycopg.Error) as info:
        pattern(conn, "bad", "a b", define)
    assert info.value.sqlstate == sqlstate, info.value
    assert fragment in info.value.diag.message_primary, info.value.diag.message_primary
    assert conn.execute("SELECT count(*) FROM public.ev").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cep.patterns").fetchone()[0] == 0


def test_argument_errors(conn):
    setup(conn)
    for kw, sqlstate in [({"within": "-1 minute"}, "22023"), ({"contiguity": "loose"}, "22023"),
                         ({"after_match": "skip_to_last"}, "22023"), ({"max_runs": 0}, "22023")]:
        with pytest.raises(psycopg.Error) as info:
            pattern(conn, "p", "a b", None, **kw)
        assert info.value.sqlstate == sqlstate, (kw, info.value)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT cep.create_pattern('p', 'nope', 'a', '{}')")
    assert info.value.sqlstate == "42704"
    pattern(conn, "p", "a b")
    with pytest.raises(psycopg.Error) as info:
        pattern(conn, "p", "a b")
    assert info.value.sqlstate == "42710"
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM cep.find_matches('nope')")
    assert info.value.sqlstate == "42704"


# -- semantics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pat,rx", [
    ("a b+ c", "ab+c"),
    ("a b+? c", "ab+?c"),
    ("a (b | c)* d", "a(?:b|c)*d"),
    ("a (b c | b) c", "a(?:bc|b)c"),
    ("(a | a b) c", "(?:a|ab)c"),
    ("a{2,3} b?", "a{2,3}b?"),
    ("a{2,3}? b", "a{2,3}?b"),
    ("a{,2} b", "a{0,2}b"),
    ("b{2,} c", "b{2,}c"),
    ("PERMUTE(a, b) c", "(?:ab|ba)c"),
])
@pytest.mark.parametrize("after_match", ["skip_past_last_row", "skip_to_next_row"])
@pytest.mark.parametrize("engine", ["eager", "lazy"])
def test_strict_patterns_equal_regex_preference(conn, pat, rx, after_match, engine):
    """Both engines (the lazy one needs within: a day, longer than the stream)."""
    setup(conn)
    pattern(conn, "p", pat, contiguity="strict", after_match=after_match, engine=engine,
            **({"within": "1 day"} if engine == "lazy" else {}))
    text = "aabcbcdabbbcaabcbaccdbabcaaabbbbcd"
    put(conn, 1, text[:11])
    put(conn, 1, text[11:], start=11 * 60)
    ids = ids_of(conn, 1)
    want = [("1", ids[i:j], list(text[i:j]))
            for i, j in regex_matches(text, rx, after_match == "skip_past_last_row")]
    # classifiers of a single-symbol stream are the symbols themselves
    assert batch(conn, "p") == want
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert live(conn, "p") == want


def test_relaxed_skips_unrelated_events_and_within_prunes(conn):
    setup(conn)
    pattern(conn, "p", "a b+ c", within="5 minutes")
    put(conn, 1, "axbxbyc")                 # a, b, b, c within 6 minutes: too slow
    put(conn, 2, "axbbc", start=600)        # within 4 minutes
    put(conn, 3, "abzzzzzzzc", start=1200)  # relaxed skips z, but c is 9 minutes after a
    conn.execute("SELECT cep.advance_watermark('ev')")
    ids2 = ids_of(conn, 2)
    assert live(conn, "p") == [("2", [ids2[0], ids2[2], ids2[3], ids2[4]], ["a", "b", "b", "c"])]
    assert batch(conn, "p") == live(conn, "p")


def test_prev_and_bound_variable_columns(conn):
    setup(conn)
    pattern(conn, "rise", "a b+", {"a": "val IS NOT NULL", "b": "val > PREV(val) AND val > a.val"},
            contiguity="strict")
    put(conn, 1, "xxxxxxxx", vals=[5, 3, 4, 6, 2, 7, 8, 1])
    conn.execute("SELECT cep.advance_watermark('ev')")
    ids = ids_of(conn, 1)
    # 5: next 3 < 5 fails; 3 4 6 rises; then 2 7 8 rises; 1 alone fails
    assert live(conn, "rise") == [("1", ids[1:4], ["a", "b", "b"]),
                                  ("1", ids[4:7], ["a", "b", "b"])]
    assert batch(conn, "rise") == live(conn, "rise")


def test_out_of_order_arrivals_are_matched_in_event_time_order(conn):
    setup(conn, lateness="10 minutes")
    pattern(conn, "p", "a b c", contiguity="strict")
    # event time order a b c, arrival order c a b (within the lateness)
    put(conn, 1, "c", start=120)
    put(conn, 1, "a", start=0)
    put(conn, 1, "b", start=60)
    assert live(conn, "p") == []           # not final before the watermark reaches them
    put(conn, 2, "x", start=3600)          # any key moves the watermark ...
    assert live(conn, "p") == []           # ... but a writer advances only its own keys
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["advance_patterns"] == 1
    ids = ids_of(conn, 1)
    assert live(conn, "p") == [("1", ids, ["a", "b", "c"])]
    put(conn, 1, "a", start=30)            # late now: counted, never matched
    assert conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0] == 1
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert live(conn, "p") == batch(conn, "p") == [("1", ids, ["a", "b", "c"])]


def test_greedy_match_waits_for_the_next_event(conn):
    setup(conn)
    pattern(conn, "p", "a b*", contiguity="strict")
    put(conn, 1, "abb")
    assert live(conn, "p") == []            # another b could still extend it
    put(conn, 1, "c", start=180)
    ids = ids_of(conn, 1)
    assert live(conn, "p") == [("1", ids[:3], ["a", "b", "b"])]
    alert = conn.execute("SELECT source_kind, source_name, partition_key, event_id, details "
                         "FROM cep.alerts").fetchone()
    assert alert[:4] == ("pattern", "p", "1", ids[2])
    assert alert[4]["event_ids"] == ids[:3] and alert[4]["classifiers"] == ["a", "b", "b"]


def test_run_cap_drops_are_counted_and_state_is_bounded(conn):
    setup(conn)
    pattern(conn, "p", "a+ c", {"a": "sym = 'a'", "c": "sym = 'c'"},
            after_match="skip_to_next_row", max_runs=3)
    put(conn, 1, "aaaaaac")
    stats = conn.execute("SELECT active_runs, matches, drops FROM cep.pattern_stats").fetchone()
    assert stats == (0, 3, 3)
    ids = ids_of(conn, 1)
    assert [m[1] for m in live(conn, "p")] == [ids[0:7], ids[1:7], ids[2:7]]


def test_long_key_stays_bounded_and_linear(conn):
    """(a|b)* c with skip_to_next_row over one key: runs stay within the cap and the cost per
    event does not grow with the stream (two halves take about the same time)."""
    setup(conn)
    pattern(conn, "p", "(a | b)* c", after_match="skip_to_next_row", max_runs=20)
    text = ("ab" * 40 + "c") * 50                      # 4050 events
    half = len(text) // 2
    t0 = time.perf_counter()
    for i in range(0, half, 500):
        put(conn, 1, text[i:min(i + 500, half)], start=i)
    t1 = time.perf_counter()
    for i in range(half, len(text), 500):
        put(conn, 1, text[i:min(i + 500, len(text))], start=i)
    t2 = time.perf_counter()
    runs = conn.execute("SELECT max(cardinality(r_no)) FROM cep.pattern_state").fetchone()[0]
    assert runs <= 20
    stats = conn.execute("SELECT matches, drops FROM cep.pattern_stats").fetchone()
    assert stats[0] > 0 and stats[1] > 0
    # a generous bound: quadratic behaviour would make the second half several times slower
    assert (t2 - t1) < 3 * (t1 - t0) + 1.0, (t1 - t0, t2 - t1)


def test_absence_by_watermark_and_wall_clock(conn):
    setup(conn)
    conn.execute("SELECT cep.create_absence('no_conf', 'ev', 'sym = ''pay''', "
                 "'sym = ''conf''', '10 minutes')")
    conn.execute("INSERT INTO public.ev (k, sym, ts) VALUES (1, 'pay', %s), (1, 'conf', %s), "
                 "(2, 'pay', %s), (3, 'pay', %s)",
                 (BASE, BASE + dt.timedelta(minutes=5), BASE, BASE))
    assert live(conn, "no_conf") == []          # deadlines not passed yet
    conn.execute("INSERT INTO public.ev (k, sym, ts) VALUES (3, 'conf', %s)",
                 (BASE + dt.timedelta(minutes=11),))   # watermark to 12:11
    got = [(r[0], r[2]) for r in live(conn, "no_conf")]
    assert got == [("2", ["start"]), ("3", ["start"])]   # key 1 confirmed in time, 3 too late
    assert batch(conn, "no_conf") == live(conn, "no_conf")
    kinds = conn.execute("SELECT DISTINCT source_kind FROM cep.alerts").fetchall()
    assert kinds == [("absence",)]
    # wall clock: a stream stamped with now() fires without further events
    conn.execute("CREATE TABLE public.pay (id bigserial PRIMARY KEY, k int NOT NULL, "
                 "what text, ts timestamptz NOT NULL DEFAULT clock_timestamp())")
    conn.execute("SELECT cep.create_stream('pay', 'public.pay', 'ts', 'k')")
    conn.execute("SELECT cep.set_wall_clock('pay')")
    conn.execute("SELECT cep.create_absence('pay_conf', 'pay', 'what = ''pay''', "
                 "'what = ''conf''', '1 second')")
    conn.execute("INSERT INTO public.pay (k, what) VALUES (1, 'pay')")
    time.sleep(1.3)
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["wall_clock_watermarks"] == 1
    assert len(live_any(conn, "pay_conf")) == 1


def live_any(conn, name):
    return conn.execute("SELECT event_ids FROM cep.matches WHERE pattern = %s", (name,)).fetchall()


def test_rules_can_refer_to_a_pattern_completing_at_the_event(conn):
    setup(conn)
    pattern(conn, "abc", "a b c", contiguity="strict")
    conn.execute("INSERT INTO cep.rules (stream, name, condition, risk_score) VALUES "
                 "('ev', 'abc_done', '{\"pattern\": \"abc\"}', 0.9)")
    put(conn, 1, "abcab")
    ids = ids_of(conn, 1)
    assert conn.execute("SELECT event_id FROM cep.risk_assessments").fetchall() == [(ids[2],)]
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT cep.drop_pattern('abc')")
    assert info.value.sqlstate == "2BP01"
    conn.execute("DELETE FROM cep.rules")
    conn.execute("SELECT cep.drop_pattern('abc')")
    assert conn.execute("SELECT count(*) FROM cep.patterns").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ '^_pattern_[0-9]+$'"
                        ).fetchone()[0] == 0


def test_backfill_and_drop_stream(conn):
    """Backfill on both engines (p eager, l lazy), drops of a lazy pattern and of the stream."""
    setup(conn)
    put(conn, 1, "abcabc")
    pattern(conn, "p", "a b c", contiguity="strict")
    pattern(conn, "q", "a b c", contiguity="strict", backfill=False)
    pattern(conn, "l", "a b c", contiguity="strict", within="1 hour")
    pattern(conn, "l2", "a b", contiguity="strict", within="1 hour")
    assert engines(conn) == {"p": "eager", "q": "eager", "l": "lazy", "l2": "lazy"}
    put(conn, 1, "abc", start=600)
    ids = ids_of(conn, 1)
    assert [m[1] for m in live(conn, "p")] == [ids[0:3], ids[3:6], ids[6:9]]
    assert [m[1] for m in live(conn, "l")] == [ids[0:3], ids[3:6], ids[6:9]]
    assert [m[1] for m in live(conn, "q")] == [ids[6:9]]
    assert conn.execute("SELECT count(*) FROM cep.pattern_keys").fetchone()[0] == 1
    conn.execute("SELECT cep.drop_pattern('l2')")   # the key rows stay for l
    assert conn.execute("SELECT count(*) FROM cep.pattern_keys").fetchone()[0] == 1
    conn.execute("SELECT cep.drop_stream('ev')")
    for t in ("patterns", "pattern_state", "pattern_keys", "pattern_log", "absence_pending"):
        assert conn.execute(f"SELECT count(*) FROM cep.{t}").fetchone()[0] == 0, t
    assert conn.execute("SELECT count(*) FROM cep.matches").fetchone()[0] == 10


def test_lazy_backfill_notes_events_beyond_the_watermark(conn):
    """A lazy pattern created over stored events matches them up to the watermark and notes
    the final events beyond it, which the watermark reaches later."""
    setup(conn, lateness="10 minutes")
    put(conn, 1, "abcab")
    put(conn, 1, "c", start=1200)          # beyond the watermark (10 minutes behind)
    pattern(conn, "l", "a b c", contiguity="strict", within="1 hour")
    ids = ids_of(conn, 1)
    assert live(conn, "l") == [("1", ids[0:3], ["a", "b", "c"])]
    put(conn, 2, "x", start=3600)
    conn.execute("SELECT * FROM cep.run_maintenance()")
    want = [("1", ids[0:3], ["a", "b", "c"]), ("1", ids[3:6], ["a", "b", "c"])]
    assert live(conn, "l") == want
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert live(conn, "l") == batch(conn, "l") == want


def test_concurrent_sessions_on_one_key_serialize(conn, connect):
    """Two sessions insert events of one key in turn, each statement with a later time; the
    key's runs advance in that order and equal the single-session result."""
    setup(conn)
    pattern(conn, "p", "a b", contiguity="strict")
    import threading
    w1, w2 = connect(autocommit=False), connect(autocommit=False)
    w1.execute("INSERT INTO public.ev (k, sym, ts) VALUES (1, 'a', %s)", (BASE,))
    w1.commit()
    w2.execute("INSERT INTO public.ev (k, sym, ts) VALUES (1, 'b', %s)",
               (BASE + dt.timedelta(seconds=1),))
    # w1's next statement needs key 1, which w2 holds until it commits: it waits
    t = threading.Thread(target=lambda: (w1.execute(
        "INSERT INTO public.ev (k, sym, ts) VALUES (1, 'a', %s), (1, 'b', %s)",
        (BASE + dt.timedelta(seconds=2), BASE + dt.timedelta(seconds=3))), w1.commit()))
    t.start()
    t.join(1.0)
    assert t.is_alive()
    w2.commit()
    t.join(10)
    assert not t.is_alive()
    conn.execute("SELECT cep.advance_watermark('ev')")
    ids = ids_of(conn, 1)
    assert live(conn, "p") == batch(conn, "p") == [
        ("1", ids[0:2], ["a", "b"]), ("1", ids[2:4], ["a", "b"])]


# -- the lazy engine ------------------------------------------------------------------------------

def engines(conn):
    return dict(conn.execute("SELECT pattern, engine FROM cep.pattern_stats").fetchall())


def test_engine_is_lazy_where_the_event_alone_tells_that_it_can_end_a_match(conn):
    """auto: lazy for a pattern with within whose variables a match can end with have
    conditions over the event alone; eager otherwise. engine => 'lazy' says why it cannot."""
    setup(conn)
    hour = {"within": "1 hour"}
    pattern(conn, "ends_with_c", "a b+ c", **hour)
    pattern(conn, "ends_with_a_or_b", "a{2,3} b?", **hour)
    pattern(conn, "prev_before_the_end", "a b",
            {"a": "val > PREV(val)", "b": "sym = 'b'"}, **hour)
    pattern(conn, "no_within", "a b+ c")
    pattern(conn, "end_undefined", "a x", {"a": "sym = 'a'"}, **hour)
    pattern(conn, "end_reads_prev", "a b", {"a": "sym = 'a'", "b": "val > PREV(val)"}, **hour)
    pattern(conn, "end_reads_a", "a b", {"a": "sym = 'a'", "b": "val > a.val"}, **hour)
    pattern(conn, "forced_eager", "a b+ c", engine="eager", **hour)
    assert engines(conn) == {
        "ends_with_c": "lazy", "ends_with_a_or_b": "lazy", "prev_before_the_end": "lazy",
        "no_within": "eager", "end_undefined": "eager", "end_reads_prev": "eager",
        "end_reads_a": "eager", "forced_eager": "eager"}
    for pat, define, kw, var in [("a b+ c", None, {}, "c"),
                                 ("a b", {"a": "sym = 'a'", "b": "val > a.val"}, hour, "b")]:
        with pytest.raises(psycopg.Error) as info:
            pattern(conn, "bad", pat, define, engine="lazy", **kw)
        assert info.value.sqlstate == "22023"
        assert f"({var})" in info.value.diag.message_primary, info.value.diag.message_primary
    with pytest.raises(psycopg.Error) as info:
        pattern(conn, "bad", "a b", engine="fast")
    assert info.value.sqlstate == "22023"
    assert "bad" not in engines(conn)


def test_rule_fires_at_the_event_that_ends_a_lazy_match(conn):
    """allowed_lateness 0: the statement whose event ends a match matches its key, so the
    match is in cep.matches before the rules of that statement run."""
    setup(conn)
    pattern(conn, "abc", "a b c", contiguity="strict", within="1 hour")
    assert engines(conn) == {"abc": "lazy"}
    conn.execute("INSERT INTO cep.rules (stream, name, condition, risk_score) VALUES "
                 "('ev', 'abc_done', '{\"pattern\": \"abc\"}', 0.9)")
    put(conn, 1, "abcab")
    ids = ids_of(conn, 1)
    assert conn.execute("SELECT event_id FROM cep.risk_assessments").fetchall() == [(ids[2],)]
    assert live(conn, "abc") == [("1", ids[0:3], ["a", "b", "c"])]


def test_lazy_key_is_matched_once_the_watermark_reaches_its_event(conn):
    """An event that can end a match but waits for the watermark is noted on its key; the
    key's events are matched when cep.run_maintenance (or the key's next such event, or
    cep.advance_watermark) finds the watermark past it."""
    setup(conn, lateness="10 minutes")
    pattern(conn, "p", "a b c", contiguity="strict", within="1 hour")
    put(conn, 1, "c", start=120)
    put(conn, 1, "a", start=0)
    put(conn, 1, "b", start=60)
    put(conn, 2, "x", start=3600)          # the watermark passes key 1's events
    assert live(conn, "p") == []           # a writer matches only its own keys
    tasks = dict(conn.execute("SELECT * FROM cep.run_maintenance()").fetchall())
    assert tasks["advance_patterns"] == 1
    ids = ids_of(conn, 1)
    assert live(conn, "p") == [("1", ids, ["a", "b", "c"])]
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert live(conn, "p") == batch(conn, "p") == [("1", ids, ["a", "b", "c"])]


def test_lazy_match_not_final_yet_is_looked_at_again_by_maintenance(conn):
    """a b+ ends at every b, but another b could still extend it: the match found at the
    last b is not final. An event that cannot end a match (an a) decides it, yet its
    statement does not match the key; cep.run_maintenance looks at such keys again."""
    setup(conn)
    pattern(conn, "ab", "a b+", within="1 hour")
    assert engines(conn) == {"ab": "lazy"}
    put(conn, 1, "abb")
    assert live(conn, "ab") == []          # another b could extend it
    put(conn, 1, "a", start=180)
    assert live(conn, "ab") == []
    conn.execute("SELECT * FROM cep.run_maintenance()")
    ids = ids_of(conn, 1)
    assert live(conn, "ab") == [("1", ids[0:3], ["a", "b", "b"])]
    conn.execute("SELECT cep.advance_watermark('ev')")
    assert live(conn, "ab") == batch(conn, "ab") == [("1", ids[0:3], ["a", "b", "b"])]
