"""plpgsql_check over every PL/pgSQL function of the extension, including the generated
ingest functions of streams of every shape (checked with their trigger relation and transition
table): zero findings, extra and security warnings included."""

import pytest

pytestmark = pytest.mark.lint

SHAPES = """
CREATE TABLE public.plain (id bigint PRIMARY KEY, k text, ts timestamptz, amt numeric, f float8,
                           r real);
CREATE TABLE public.nokey (id integer, ts timestamp);
CREATE TABLE public.parted (id bigint NOT NULL, k integer, ts timestamptz NOT NULL)
    PARTITION BY RANGE (ts);
CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
SELECT cep.create_stream('plain', 'public.plain', 'ts', 'k', allowed_lateness => '1 minute');
SELECT cep.create_stream('nokey', 'public.nokey', 'ts', NULL, 'id');
SELECT cep.create_stream('parted', 'public.parted', 'ts', 'k', 'id');
SELECT cep.create_window('w_tumble', 'plain', 'tumbling', '1 minute', group_by => '{k}',
    aggregates => '{count(*), count(f), sum(amt), avg(r), min(f), max(amt), count(distinct amt)}');
SELECT cep.create_window('w_hop', 'nokey', 'hopping', '10 minutes', '3 minutes');
SELECT cep.partition_stream('parted', '1 day');
SELECT cep.create_window('w_session', 'parted', 'session', '5 minutes',
    aggregates => '{count(*), sum(id), avg(id), min(ts), max(ts)}');
ALTER TABLE public.plain ADD COLUMN status text;
INSERT INTO cep.rules (stream, name, condition, risk_score, mode) VALUES
    ('plain', 'r_count', '{"metric": "count", "window": "1 hour", "op": ">", "value": 3}', 0.5,
     'enforce'),
    ('plain', 'r_all', '{"all": [{"metric": "avg", "field": "amt", "window": "10 minutes",
       "op": ">=", "value": 2.5}, {"not": {"field": "k", "op": "in", "value": ["a", "b"]}},
       {"any": [{"metric": "count_distinct", "field": "k", "window": "1 day", "op": "<",
       "value": 2}, {"metric": "max", "field": "f", "window": "1 minute", "op": "!=",
       "value": 0}]}]}', 0.3, 'shadow'),
    ('plain', 'r_misc', '{"any": [{"changed": "amt", "window": "5 minutes"},
       {"anomaly": "zscore", "field": "r", "threshold": 3, "min_samples": 5},
       {"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "Europe/Berlin"}},
       {"field": "ts", "op": "<", "value": "2030-01-01 00:00:00+00"}]}', 1, 'enforce'),
    ('nokey', 'r_nokey', '{"metric": "sum", "field": "id", "window": "1 hour", "op": ">",
       "value": 10}', 0.2, 'enforce');
SELECT cep.set_risk_policy('plain', 'noisy_or', block_action => '{"set": {"status": "b"}}',
    alert_level => 'medium', log_all => true);
SELECT cep.set_risk_policy('nokey', 'max');
SELECT cep.create_pattern('p_plain', 'plain', 'a b+? PERMUTE(c, d) e{1,3}',
    '{"a": "amt > 10", "b": "amt > PREV(amt) AND f < a.f", "c": "k = ''x''",
      "d": "r IS NOT NULL"}', within => '10 minutes', contiguity => 'strict',
    after_match => 'skip_to_next_row');
SELECT cep.create_pattern('p_nokey', 'nokey', '(x | y)* z', '{"x": "id % 2 = 0", "z": "ts > x.ts"}');
SELECT cep.create_pattern('p_parted', 'parted', 'a+ b', '{"a": "k > 0", "b": "k > PREV(k)"}');
SELECT cep.create_absence('no_confirm', 'plain', 'amt > 100', 'status = ''ok''', '10 minutes');
SELECT cep.create_pattern('p_lazy', 'plain', 'a b+ c',
    '{"a": "amt > 10", "b": "amt > PREV(amt) AND f < a.f", "c": "k = ''x''"}',
    within => '10 minutes', engine => 'lazy');
SELECT cep.create_pattern('p_lazy_relaxed', 'plain', 'PERMUTE(a, b) c+',
    '{"a": "amt > 10", "b": "k = ''y''", "c": "r > 0"}', within => '1 hour',
    after_match => 'skip_to_next_row', engine => 'lazy');
SELECT cep.create_pattern('p_lazy_nokey', 'nokey', 'x y', '{"x": "id % 2 = 0", "y": "id % 3 = 0"}',
    within => '1 hour', contiguity => 'strict', engine => 'lazy');
INSERT INTO cep.rules (stream, name, condition, risk_score) VALUES
    ('plain', 'r_pattern', '{"pattern": "p_plain"}', 0.5);
SELECT cep.create_recommender('rec_plain', 'plain', 'k', 'amt', 'k', unknown_action => 'error');
SELECT cep.create_recommender('rec_nokey', 'nokey', 'id', 'ts', 'id', '{"1": 1, "2": 0.5}');
SELECT cep.set_stream_mode('plain', 'async');
SELECT cep.set_stream_mode('parted', 'async');
CREATE TABLE public.replica (id bigint PRIMARY KEY, k integer NOT NULL, ts timestamp NOT NULL,
                             amt numeric);
SELECT cep.attach_replica_stream('replica', 'public.replica', 'ts', 'k',
    allowed_lateness => '1 minute');
SELECT cep.create_window('w_replica', 'replica', 'hopping', '10 minutes', '5 minutes',
    group_by => '{k}', aggregates => '{count(*), sum(amt), count(distinct amt)}');
INSERT INTO cep.rules (stream, name, condition, risk_score) VALUES
    ('replica', 'r_replica', '{"metric": "count", "window": "1 hour", "op": ">", "value": 3}', 0.5);
SELECT cep.create_pattern('p_replica', 'replica', 'a b', '{"a": "amt > 1", "b": "amt < a.amt"}');
SELECT cep.create_pattern('p_lazy_replica', 'replica', 'a+ b', '{"a": "amt > 1", "b": "amt < 1"}',
    within => '5 minutes', engine => 'lazy');
"""

CHECK = """
SELECT p.oid::regprocedure::text AS fn, c.line
FROM pg_catalog.pg_proc AS p
LEFT JOIN cep.streams AS s ON s.ingest_function = p.proname
LEFT JOIN cep.streams AS r ON format('_replica_%s', r.stream_id) = p.proname
CROSS JOIN LATERAL public.plpgsql_check_function(
    p.oid::regprocedure,
    coalesce(s.source, r.source, CASE p.proname
        WHEN '_refuse_default_partition' THEN 'public.parted_cep_default'::regclass
        WHEN '_rules_before' THEN 'cep.rules'::regclass
        WHEN '_rules_after' THEN 'cep.rules'::regclass END, 0),
    newtable => CASE WHEN s.source IS NOT NULL THEN 'cep_new_rows'
        WHEN p.proname = '_rules_after' THEN 'cep_new' END,
    oldtable => CASE WHEN p.proname = '_rules_after' THEN 'cep_old' END,
    fatal_errors => false,
    extra_warnings => true,
    performance_warnings => false,
    security_warnings => true
) AS c(line)
WHERE p.pronamespace = 'cep'::regnamespace
  AND p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'plpgsql')
"""


def test_plpgsql_check_finds_nothing(conn):
    conn.execute("CREATE EXTENSION plpgsql_check")
    conn.execute(SHAPES)
    checked = conn.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace "
        "AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')").fetchone()[0]
    generated = conn.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'cep'::regnamespace "
        "AND proname ~ '^_ingest_[0-9]+$'").fetchone()[0]
    assert generated == 4 and checked > generated
    # asynchronous streams: the writer-side trigger body and the processing function
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ '^_process_[0-9]+$'"
                        ).fetchone()[0] == 3
    # a replica stream: also its row trigger function (checked with its relation, no
    # transition table)
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ '^_replica_[0-9]+$'"
                        ).fetchone()[0] == 1
    # pattern matchers: four eager, four lazy
    assert conn.execute("SELECT engine, count(*) FROM cep.patterns WHERE kind = 'pattern' "
                        "GROUP BY 1 ORDER BY 1").fetchall() == [("eager", 4), ("lazy", 4)]
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname ~ '^_pattern_[0-9]+$'").fetchone()[0] == 8
    findings = conn.execute(CHECK).fetchall()
    assert findings == [], "\n".join(f"{fn}: {line}" for fn, line in findings)
