"""Third part of `make bench`: risk rules on the insert path (imported by bench/run_bench.py).

Same table definition, indexes, client harness (2 concurrent clients, autocommit, warm-up,
fresh table per measurement) and data rendering as the insert part; variants interleaved
(the order rotates every repeat), medians over the repeats, ratios from the same run:

  (a) plain table;
  (b) the table as a pg_cep stream, no rules;
  (f) the stream with the seed's four rules as rows of cep.rules and the seed's policy
      (sum; medium 0.4, high 0.7 alerts; block 0.9 with {"set": {"status": "blocked"}});
  (g) the seed's per-row design: a FOR EACH ROW PL/pgSQL trigger that calls the seed's
      evaluate_risk_rules() (a loop over the active rows of a risk_rules table, one count query
      for the last hour, one for a location change in 5 minutes), sums the scores, derives the
      level, inserts an assessment row for events that fired a rule, an alert row for high
      risk and blocks the row at >= 0.9 -- with event time (created_at) instead of now() in the
      windows, so that (f) and (g) compute the same thing;
  (f0) -- (f) with alert_level 'none' and no block action, on the batch workloads only: splits
      (f)'s cost into assessing and alerting/blocking;
  (fw), (fl), (fr), (fs) -- floors, on the batch workloads only: the bare stream (b) plus a
      statement trigger that evaluates nothing but writes exactly the rows (f) wrote for the
      same events in its previous run (looked up by user, time and amount in a table filled
      from that run: assessments, alerts with their message and details, the rule log row, the
      UPDATE of the blocked rows). (fw) only that; (fl) first locks the statement's keys in
      cep.rule_keys in key order, as (f) does and design.md's principle 5 requires of per-key
      state; (fr) = (fl) + one read of each key's stored rows of the trailing hour (what exact
      trailing metrics computed from the table need at least); (fs) = (fw) + one state row per
      key rewritten by every statement instead of the lock (what an incremental per-key state
      needs at least). No implementation of the contract can be faster than (fl), nor than
      the cheaper of (fr) and (fs) with the seed's trailing-window rules;
  (r10), (r100), (r1000) -- the stream with 10, 100, 1000 generated rules (mostly
      one-comparison threshold rules, which pg_cep indexes by sorted thresholds, plus a few
      combinators and trailing metrics), each set inserted with one INSERT statement.

Workloads: "realistic" (demo/workload.py's card transactions, 10 per user and day -- the demo
has 40, at which a fifth of all events are in someone's >10-an-hour streak -- over a full day,
~2% fraud events) and "dense" (every user makes 20-60 transactions an hour, so the
trailing-window queries have real work), each as 1000-row INSERT batches and as single-row
INSERTs. The rule-count series runs on the realistic 1000-row batches, interleaved with the
other variants of that workload.

Correctness guard, after every measurement with rules (a failure ends the bench with exit
code 1 after the results are written): every event with amount > 10000 has an assessment that
lists the large_amount rule and no other event does (likewise night_time against the event's
UTC hour), one assessment per event at most, blocked rows = blocked assessments, rule alerts =
high assessments; for the generated sets, the hits of every threshold rule on a numeric column
equal an independent count over the stored rows (done in Python).
"""

from __future__ import annotations

import bisect
import json
import statistics
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

import workload

US = workload.US
DENSE_RATE = (20, 60)            # transactions per user and hour, uniform per user
DENSE_HOURS = 4.0                # event-time span of a dense data set (ends at 00:00 UTC)
REALISTIC_PER_USER_DAY = 10      # the demo has 40; at 10 the seed's rules fire on ~15% of events
TARGET_F_A = 0.4                 # (f)/(a) on 1000-row batches
TARGET_F_G = 3.0                 # (f)/(g) on the dense workload
SEED_RULE_NAMES = ["high_frequency", "large_amount", "night_time", "location_change"]

SEED_RULES_SQL = """
INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES
  ('transactions', 'high_frequency', 'threshold',
   '{"metric": "count", "window": "1 hour", "op": ">", "value": 10}', 0.8),
  ('transactions', 'large_amount', 'threshold',
   '{"field": "amount", "op": ">", "value": 10000}', 0.6),
  ('transactions', 'night_time', 'pattern',
   '{"time_of_day": {"from": "22:00", "to": "06:00", "timezone": "UTC"}}', 0.4),
  ('transactions', 'location_change', 'pattern',
   '{"changed": "location", "window": "5 minutes"}', 0.7)
"""

POLICY_SQL = ("SELECT cep.set_risk_policy('transactions', 'sum', medium => 0.4, high => 0.7, "
              "block => 0.9, block_action => '{\"set\": {\"status\": \"blocked\"}}')")
# Variant (f0), for the breakdown only: the same rules and assessments, no alerts, no block.
QUIET_POLICY_SQL = ("SELECT cep.set_risk_policy('transactions', 'sum', medium => 0.4, "
                    "high => 0.7, block => 0.9, block_action => NULL, alert_level => 'none')")

CEP_CLEAN_SQL = ("TRUNCATE cep.risk_assessments, cep.alerts, cep.consumer_pending, "
                 "cep.consumer_log")

# -- variant (g): the seed's design -----------------------------------------------------------

# Created once per database: the seed's risk_rules table with the seed's four rows, and the
# seed's evaluate_risk_rules() with event time instead of now() (the seed's comments kept out).
SEED_FUNCTIONS_SQL = """
CREATE TABLE risk_rules (
    rule_id SERIAL PRIMARY KEY,
    rule_name VARCHAR(100) NOT NULL,
    rule_type VARCHAR(50) NOT NULL,
    rule_condition JSONB NOT NULL,
    risk_score FLOAT NOT NULL,
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMP DEFAULT NOW()
);
INSERT INTO risk_rules (rule_name, rule_type, rule_condition, risk_score) VALUES
('high_frequency', 'threshold',
 '{"metric": "transaction_count", "operator": ">", "value": 10, "window": "1_hour"}', 0.8),
('large_amount', 'threshold',
 '{"metric": "amount", "operator": ">", "value": 10000}', 0.6),
('night_time', 'pattern',
 '{"pattern": "night_transaction", "time_range": ["22:00", "06:00"]}', 0.4),
('location_change', 'pattern',
 '{"pattern": "location_change", "time_window": "5_minutes"}', 0.7);

CREATE FUNCTION evaluate_risk_rules(
    p_user_id INTEGER,
    p_amount DECIMAL,
    p_location TEXT,
    p_timestamp TIMESTAMPTZ
)
RETURNS TABLE(rule_id INTEGER, risk_score FLOAT, triggered BOOLEAN) AS $$
DECLARE
    rule_record RECORD;
    condition_met BOOLEAN;
    recent_count INTEGER;
BEGIN
    FOR rule_record IN
        SELECT * FROM risk_rules WHERE is_active = TRUE
    LOOP
        condition_met := FALSE;
        CASE rule_record.rule_type
            WHEN 'threshold' THEN
                IF rule_record.rule_condition->>'metric' = 'transaction_count' THEN
                    SELECT COUNT(*) INTO recent_count
                    FROM transactions
                    WHERE user_id = p_user_id
                    AND created_at > p_timestamp - INTERVAL '1 hour'
                    AND created_at <= p_timestamp;
                    condition_met := recent_count > (rule_record.rule_condition->>'value')::INTEGER;
                ELSIF rule_record.rule_condition->>'metric' = 'amount' THEN
                    condition_met := p_amount > (rule_record.rule_condition->>'value')::DECIMAL;
                END IF;
            WHEN 'pattern' THEN
                IF rule_record.rule_condition->>'pattern' = 'night_transaction' THEN
                    condition_met := EXTRACT(HOUR FROM p_timestamp AT TIME ZONE 'UTC') >= 22
                        OR EXTRACT(HOUR FROM p_timestamp AT TIME ZONE 'UTC') < 6;
                ELSIF rule_record.rule_condition->>'pattern' = 'location_change' THEN
                    SELECT COUNT(*) INTO recent_count
                    FROM transactions
                    WHERE user_id = p_user_id
                    AND location != p_location
                    AND created_at > p_timestamp - INTERVAL '5 minutes'
                    AND created_at <= p_timestamp;
                    condition_met := recent_count > 0;
                END IF;
        END CASE;
        rule_id := rule_record.rule_id;
        risk_score := rule_record.risk_score;
        triggered := condition_met;
        RETURN NEXT;
    END LOOP;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION seed_assess() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_total float8;
    v_rules integer[];
    v_level text;
BEGIN
    SELECT coalesce(sum(e.risk_score) FILTER (WHERE e.triggered), 0),
           array_agg(e.rule_id ORDER BY e.rule_id) FILTER (WHERE e.triggered)
    INTO v_total, v_rules
    FROM evaluate_risk_rules(NEW.user_id, NEW.amount, NEW.location, NEW.created_at) AS e;
    IF v_rules IS NOT NULL THEN
        v_level := CASE WHEN v_total >= 0.7 THEN 'high'
                        WHEN v_total >= 0.4 THEN 'medium' ELSE 'low' END;
        INSERT INTO seed_risk_assessments
            (transaction_id, user_id, risk_score, risk_level, triggered_rules, blocked)
        VALUES (NEW.id, NEW.user_id, v_total, v_level, v_rules, v_total >= 0.9);
        IF v_level = 'high' THEN
            INSERT INTO seed_alerts (transaction_id, user_id, level, risk_score, message)
            VALUES (NEW.id, NEW.user_id, v_level, v_total,
                    format('%s risk %s for user %s, transaction %s', v_level, v_total,
                           NEW.user_id, NEW.id));
        END IF;
        IF v_total >= 0.9 THEN
            UPDATE transactions SET status = 'blocked' WHERE id = NEW.id;
        END IF;
    END IF;
    RETURN NULL;
END
$$;
"""

# After the fresh table exists, per measurement.
SEED_SETUP_SQL = """
DROP TABLE IF EXISTS seed_risk_assessments, seed_alerts;
CREATE TABLE seed_risk_assessments (
    id bigserial PRIMARY KEY,
    transaction_id bigint NOT NULL,
    user_id int NOT NULL,
    risk_score float8 NOT NULL,
    risk_level text NOT NULL,
    triggered_rules int[] NOT NULL,
    blocked boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seed_risk_assessments_tx_idx ON seed_risk_assessments (transaction_id);
CREATE TABLE seed_alerts (
    id bigserial PRIMARY KEY,
    transaction_id bigint NOT NULL,
    user_id int NOT NULL,
    level text NOT NULL,
    risk_score float8 NOT NULL,
    message text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER seed_assess AFTER INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION seed_assess();
"""


# Variants (fl) and (fw): the rows (f) wrote, by event, and a trigger that writes them again.
FLOOR_SETUP_SQL = """
DROP TABLE IF EXISTS floor_decisions;
CREATE TABLE floor_decisions (
    user_id int NOT NULL,
    created_at timestamptz NOT NULL,
    amount numeric(12,2) NOT NULL,
    total_score float8 NOT NULL,
    level text NOT NULL,
    triggered_rules bigint[] NOT NULL,
    rule_versions int[] NOT NULL,
    shadow_score float8,
    blocked boolean NOT NULL,
    rule_set_id bigint,
    severity text,
    alert_score float8,
    mpre text,
    msuf text,
    details jsonb
);
CREATE INDEX floor_decisions_idx ON floor_decisions (user_id, created_at);
"""

FLOOR_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION floor_rules() RETURNS trigger LANGUAGE plpgsql
-- each event's rows found through the index (a hash of the whole table per statement would
-- cost more than the writes)
SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    v_blocked bigint[];
BEGIN
    IF TG_ARGV[0] IN ('locks', 'reads') THEN
        INSERT INTO cep.rule_keys AS kk (stream_id, k, last_seen)
        SELECT {sid}, e.k, max(e.t)
        FROM (SELECT n.user_id::text AS k, n.created_at AS t FROM floor_new AS n) AS e
        GROUP BY e.k
        ORDER BY e.k
        ON CONFLICT (stream_id, k) DO UPDATE SET last_seen = EXCLUDED.last_seen
        WHERE kk.last_seen < EXCLUDED.last_seen - interval '1 hour';
    ELSIF TG_ARGV[0] = 'state' THEN
        -- the cheapest incremental state: one row per key, rewritten by every statement
        INSERT INTO cep.rule_keys AS kk (stream_id, k, last_seen)
        SELECT {sid}, e.k, max(e.t)
        FROM (SELECT n.user_id::text AS k, n.created_at AS t FROM floor_new AS n) AS e
        GROUP BY e.k
        ORDER BY e.k
        ON CONFLICT (stream_id, k) DO UPDATE SET last_seen = EXCLUDED.last_seen;
    END IF;
    IF TG_ARGV[0] = 'reads' THEN
        -- the stored rows of each key's trailing hour (the longest rule window), read once
        PERFORM count(*), max(t.location)
        FROM (SELECT n.user_id, min(n.created_at) - interval '1 hour' AS lo,
                  max(n.created_at) AS hi
              FROM floor_new AS n GROUP BY n.user_id) AS k
        CROSS JOIN LATERAL (
            SELECT t.location FROM transactions AS t
            WHERE t.user_id = k.user_id AND t.created_at > k.lo AND t.created_at <= k.hi
        ) AS t;
    END IF;
    WITH d AS (
        SELECT n.id, n.user_id::text AS k, n.created_at AS t, x.*
        FROM floor_new AS n
        JOIN floor_decisions AS x
            ON x.user_id = n.user_id AND x.created_at = n.created_at AND x.amount = n.amount
    ), ins AS (
        INSERT INTO cep.risk_assessments (
            event_id, stream, partition_key, event_time, total_score, level, triggered_rules,
            rule_versions, shadow_rules, shadow_versions, shadow_score, blocked, rule_set_id)
        SELECT d.id, 'transactions', d.k, d.t, d.total_score, d.level, d.triggered_rules,
            d.rule_versions, '{{}}', '{{}}', d.shadow_score, d.blocked, d.rule_set_id
        FROM d
        ORDER BY d.t, d.id
    ), al AS (
        INSERT INTO cep.alerts (source_kind, source_name, stream, partition_key, event_id,
            severity, score, message, details)
        SELECT 'rule', 'risk_policy:transactions', 'transactions', d.k, d.id, d.severity,
            d.alert_score, d.mpre || ', event ' || d.id || d.msuf, d.details
        FROM d
        WHERE d.severity IS NOT NULL
        ORDER BY d.t, d.id
        RETURNING alert_id
    ), delivery AS (
        INSERT INTO cep.consumer_pending (consumer_id, alert_id)
        SELECT cs.consumer_id, al.alert_id FROM al CROSS JOIN cep.consumers AS cs
    ), lg AS (
        INSERT INTO cep.rule_log (stream_id, rule_set_id, events, hit_rules, hit_counts)
        SELECT {sid}, {rsid}, (SELECT count(*) FROM floor_new), '{{}}', '{{}}'
    )
    SELECT array_agg(d.id) FILTER (WHERE d.blocked) INTO v_blocked FROM d;
    IF v_blocked IS NOT NULL THEN
        UPDATE transactions AS n SET status = 'blocked' WHERE n.id = ANY (v_blocked);
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER floor_rules AFTER INSERT ON transactions REFERENCING NEW TABLE AS floor_new
    FOR EACH STATEMENT EXECUTE FUNCTION floor_rules('{mode}');
"""

DECISIONS_SQL = """
SELECT DISTINCT ON (t.user_id, t.created_at, t.amount)
    t.user_id, t.created_at, t.amount, a.total_score, a.level, a.triggered_rules,
    a.rule_versions, a.shadow_score, a.blocked, a.rule_set_id, al.severity, al.score,
    al.message, al.details
FROM cep.risk_assessments AS a
JOIN transactions AS t ON t.id = a.event_id
LEFT JOIN cep.alerts AS al ON al.event_id = a.event_id AND al.source_kind = 'rule'
ORDER BY t.user_id, t.created_at, t.amount, a.event_id
"""


def install_floor(conn, decisions: list, mode: str) -> None:
    """The floor trigger on the fresh transactions stream, with (f)'s rows to write again."""
    conn.execute(FLOOR_SETUP_SQL)
    with conn.cursor().copy("COPY floor_decisions FROM STDIN") as cp:
        for row in decisions:
            cp.write_row(row)
    conn.execute("ANALYZE floor_decisions")
    sid = conn.execute("SELECT stream_id FROM cep.streams "
                       "WHERE name = 'transactions'").fetchone()[0]
    rsid = max((d[9] for d in decisions), default=0)       # the rule set (f) assessed with
    conn.execute(FLOOR_FUNCTION_SQL.format(sid=sid, rsid=rsid, mode=mode))


def floor_expected(decisions: list) -> tuple[int, int, int]:
    """(assessments, blocked rows, rule alerts) that (f) wrote."""
    return (len(decisions), sum(1 for d in decisions if d[8]),
            sum(1 for d in decisions if d[10] is not None))


def capture_decisions(conn) -> list[tuple]:
    """The rows (f) wrote in its run, by event, for the floors: the alert's message without
    the event id (the floor puts the new id in)."""
    out = []
    for row in conn.execute(DECISIONS_SQL):
        *head, msg, details = row
        mpre = msuf = None
        if msg is not None:
            mpre, rest = msg.split(", event ", 1)
            msuf = rest[rest.index(":"):] if ":" in rest else ""
        out.append((*head, mpre, msuf, None if details is None else json.dumps(details)))
    return out


# -- generated rule sets ----------------------------------------------------------------------

def generate_rules(n: int, seed: int) -> list[tuple[str, str, dict, float]]:
    """n rules (name, kind, condition, score): ~94% one-comparison thresholds on numeric
    columns (amount, a few user_id = X), ~4% combinators, ~2% trailing metrics over a few
    shared (metric, field, window) combinations. Thresholds are chosen so that each rule fires
    on a small fraction of ordinary traffic."""
    rng = np.random.default_rng(seed * 1000 + n)
    n_metric = max(1, round(0.02 * n))
    n_comb = max(1, round(0.04 * n))
    n_thr = n - n_metric - n_comb
    rules = []
    cities = workload.CITIES
    for i in range(n_thr):
        u = rng.random()
        if u < 0.03:
            cond = {"field": "user_id", "op": "=", "value": int(rng.integers(1, 20_000))}
        else:
            op = [">", ">=", "<", "<=", "="][int(rng.integers(0, 5))]
            if op in (">", ">="):
                cents = int(np.exp(rng.uniform(np.log(1000), np.log(50_000))) * 100)
            elif op in ("<", "<="):
                cents = int(rng.uniform(50, 200))
            else:
                cents = int(rng.lognormal(np.log(42.0), 0.95) * 100)
            cond = {"field": "amount", "op": op, "value": cents / 100}
        rules.append((f"gen_thr_{i}", "threshold", cond, round(float(rng.uniform(0.05, 0.5)), 2)))
    for i in range(n_comb):
        x = int(np.exp(rng.uniform(np.log(500), np.log(20_000))))
        picks = [cities[j] for j in rng.choice(len(cities), size=3, replace=False)]
        cond = [
            {"all": [{"field": "amount", "op": ">", "value": x},
                     {"field": "location", "op": "in", "value": picks}]},
            {"any": [{"field": "amount", "op": ">", "value": x * 3},
                     {"all": [{"field": "status", "op": "=", "value": "declined"},
                              {"field": "amount", "op": ">", "value": x}]}]},
            {"all": [{"time_of_day": {"from": "01:00", "to": "04:00", "timezone": "UTC"}},
                     {"not": {"field": "amount", "op": "<", "value": x}}]},
        ][i % 3]
        rules.append((f"gen_comb_{i}", "pattern", cond, round(float(rng.uniform(0.1, 0.5)), 2)))
    for i in range(n_metric):
        cond = [
            {"metric": "count", "window": "1 hour", "op": ">", "value": int(rng.integers(20, 60))},
            {"metric": "sum", "field": "amount", "window": "1 hour", "op": ">",
             "value": int(rng.integers(20_000, 100_000))},
            {"metric": "count_distinct", "field": "location", "window": "1 hour", "op": ">",
             "value": int(rng.integers(3, 7))},
            {"metric": "max", "field": "amount", "window": "10 minutes", "op": ">",
             "value": int(rng.integers(5_000, 30_000))},
        ][i % 4]
        rules.append((f"gen_metric_{i}", "threshold", cond, round(float(rng.uniform(0.1, 0.5)), 2)))
    return rules


def rules_insert_sql(rules) -> tuple[str, list]:
    """One INSERT statement for a whole rule set (the stream recompiles once)."""
    values = ", ".join(["('transactions', %s, %s, %s::jsonb, %s)"] * len(rules))
    params = []
    for name, kind, cond, score in rules:
        params += [name, kind, json.dumps(cond), score]
    return ("INSERT INTO cep.rules (stream, name, kind, condition, risk_score) VALUES "
            + values), params


def simple_thresholds(rules) -> list[tuple[str, str, str, Decimal]]:
    """(name, field, op, value) of the one-comparison rules on numeric columns."""
    out = []
    for name, _, cond, _ in rules:
        if set(cond) == {"field", "op", "value"} and cond["field"] in ("amount", "user_id") \
                and cond["op"] in ("<", "<=", ">", ">=", "="):
            out.append((name, cond["field"], cond["op"], Decimal(str(cond["value"]))))
    return out


# -- variants ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RVariant:
    key: str
    name: str
    database: str
    # plain | stream | seed_rules | quiet_rules | seed_trigger | generated
    kind: str
    n_rules: int = 0


VARIANTS = [
    RVariant("a", "(a) plain table", "bench_rules_plain", "plain"),
    RVariant("b", "(b) stream, no rules", "bench_rules_stream", "stream"),
    RVariant("f", "(f) stream + the seed's 4 rules", "bench_rules_f", "seed_rules"),
    RVariant("g", "(g) seed's per-row rule trigger", "bench_rules_g", "seed_trigger"),
]
# Batch workloads only: where (f)'s time goes between assessing and alerting/blocking.
QUIET = RVariant("f0", "(f0) = (f) without alerts and block", "bench_rules_f", "quiet_rules")
# Batch workloads only: what (f) cannot go below (see the module's docstring).
FLOORS = [RVariant("fw", "(fw) floor: (f)'s rows only", "bench_rules_floor", "floor_writes"),
          RVariant("fl", "(fl) floor: key locks + (f)'s rows", "bench_rules_floor", "floor_locks"),
          RVariant("fr", "(fr) floor: (fl) + window reads", "bench_rules_floor", "floor_reads"),
          RVariant("fs", "(fs) floor: key state rows + (f)'s rows", "bench_rules_floor",
                   "floor_state")]
FLOOR_KINDS = ("floor_writes", "floor_locks", "floor_reads", "floor_state")
FLOOR_MODES = {"floor_writes": "writes", "floor_locks": "locks", "floor_reads": "reads",
               "floor_state": "state"}
CEP_KINDS = ("stream", "seed_rules", "quiet_rules", "generated") + FLOOR_KINDS
RULE_KINDS = ("seed_rules", "quiet_rules", "generated")


def scale_variants(counts: list[int]) -> list[RVariant]:
    return [RVariant(f"r{n}", f"(r{n}) stream + {n} generated rules", "bench_rules_scale",
                     "generated", n) for n in counts]


# -- data -------------------------------------------------------------------------------------

def dense_transactions(n: int, seed: int, end_us: int) -> workload.EventBatch:
    """n transactions of users who each make 20-60 an hour, over DENSE_HOURS ending at end_us:
    home city with 3% travel, demo-like amounts (0.3% large), 1.5% declined."""
    rng = np.random.default_rng(seed)
    mean_rate = sum(DENSE_RATE) / 2
    n_users = max(2, round(n / (mean_rate * DENSE_HOURS)))
    rates = rng.uniform(*DENSE_RATE, size=n_users)
    counts = rng.multinomial(n, rates / rates.sum())
    user = np.repeat(np.arange(1, n_users + 1), counts).astype(np.int64)
    span = int(DENSE_HOURS * 3600 * US)
    t = end_us - span + rng.integers(0, span, size=n)
    n_cities = len(workload.CITIES)
    home = rng.integers(0, n_cities, size=n_users)
    loc = np.where(rng.random(n) < 0.03, rng.integers(0, n_cities, size=n), home[user - 1])
    amount = np.maximum(0.5, rng.lognormal(np.log(42.0), 0.95, size=n))
    big = rng.random(n) < 0.003
    amount = np.round(np.where(big, amount * rng.uniform(30, 400, size=n), amount), 2)
    status = np.where(rng.random(n) < 0.015, "declined", "ok")
    order = np.argsort(t, kind="stable")
    t, user, amount, loc, status = (x[order] for x in (t, user, amount, loc, status))
    per_user_hour = np.bincount(user)[1:] / DENSE_HOURS
    facts = {"users": n_users, "transactions per user and hour (min-max)":
             f"{per_user_hour.min():.0f}-{per_user_hour.max():.0f}"}
    return workload.EventBatch(
        table="transactions", columns=["user_id", "amount", "location", "status", "created_at"],
        data={"user_id": user, "amount": amount,
              "location": np.array(workload.CITIES, dtype=object)[loc], "status": status},
        created_at_us=t, facts=facts)


def realistic_transactions(n: int, seed: int, end_us: int) -> workload.EventBatch:
    """demo/workload.py's transactions over one day, REALISTIC_PER_USER_DAY per user."""
    return workload.transactions(n, seed, end_us, span_hours=24.0,
                                 n_users=max(50, n // REALISTIC_PER_USER_DAY),
                                 late_fraction=0.0)


def prepare_workloads(args, base) -> list:
    now_us = int(time.time() * US)
    day = 86400 * US
    midnight = now_us // day * day           # the dense sets end at the last 00:00 UTC
    warm_gap = 2 * day                       # warm-up data ends two days before measured data
    out = []
    for family, gen, end in (("realistic", realistic_transactions, now_us - 5 * US),
                             ("dense", dense_transactions, midnight - 5 * US)):
        seed = args.seed + (100 if family == "dense" else 200)
        batch_ev = gen(args.rules_rows, seed, end)
        single_ev = gen(args.rules_single_rows, seed + 1, end)
        warm_ev = gen(4 * base.BATCH_ROWS, seed + 2, end - warm_gap)
        warm_batches = base.batch_items(warm_ev, base.BATCH_ROWS)[:base.CLIENTS * 2]
        warm_single = warm_ev.value_rows()[:base.CLIENTS * 250]
        for ev, key, title, sql, items, warm in (
                (batch_ev, f"{family}_batch", f"{family}, {base.BATCH_ROWS}-row batches",
                 base.BATCH_SQL, base.batch_items(batch_ev, base.BATCH_ROWS), warm_batches),
                (single_ev, f"{family}_single", f"{family}, single-row INSERTs",
                 base.SINGLE_SQL, single_ev.value_rows(), warm_single)):
            wl = base.Workload(key, title, sql, items, len(ev), warm)
            wl.family = family
            wl.batch = key.endswith("batch")
            wl.facts = describe(ev)
            out.append(wl)
    return out


def describe(ev: workload.EventBatch) -> dict:
    users = ev.data["user_id"]
    t = ev.created_at_us
    hour = (t // (3600 * US)) % 24
    per_user = np.bincount(users)
    per_user = per_user[per_user > 0]
    return {
        "events": len(ev),
        "users": int(len(per_user)),
        "span_hours": round((int(t.max()) - int(t.min())) / 3600 / US, 1),
        "events_per_user_hour_median": round(float(np.median(per_user))
                                             / max(1e-9, (t.max() - t.min()) / 3600 / US), 1),
        "amount_gt_10000": int((ev.data["amount"] > 10000).sum()),
        "night_share": round(float(((hour >= 22) | (hour < 6)).mean()), 3),
    }


# -- measurement ------------------------------------------------------------------------------

def setup_databases(cluster, variants: list[RVariant], base) -> None:
    for db in dict.fromkeys(v.database for v in variants):
        cluster.create_database(db)
        kinds = {v.kind for v in variants if v.database == db}
        with cluster.connect(db) as conn:
            conn.execute("SET client_min_messages = warning")
            if kinds & set(CEP_KINDS):
                conn.execute("CREATE EXTENSION pg_cep")
            if "seed_trigger" in kinds:
                conn.execute("DROP TABLE IF EXISTS transactions")
                conn.execute(base.TABLE_SQL)      # the seed's function refers to the table
                conn.execute(SEED_FUNCTIONS_SQL)


def _prepare(admin, v: RVariant, base, rule_sets: dict, wl_key: str = "") -> None:
    admin.execute("SET client_min_messages = warning")
    if v.kind in CEP_KINDS:
        admin.execute("SELECT cep.drop_stream(name) FROM cep.streams "
                      "WHERE name = 'transactions'")
        admin.execute(CEP_CLEAN_SQL)
    admin.execute(base.TABLE_SQL)
    if v.kind in CEP_KINDS:
        admin.execute("SELECT cep.create_stream('transactions', 'transactions', 'created_at', "
                      f"key_column => 'user_id', allowed_lateness => '{base.ALLOWED_LATENESS}')")
    if v.kind in ("seed_rules", "quiet_rules"):
        admin.execute(SEED_RULES_SQL)
        admin.execute(POLICY_SQL if v.kind == "seed_rules" else QUIET_POLICY_SQL)
    if v.kind == "generated":
        sql, params = rules_insert_sql(rule_sets["rules"][v.n_rules])
        t = time.perf_counter()
        admin.execute(sql, params)            # one statement: one recompilation
        rule_sets["compile_seconds"][v.n_rules].append(time.perf_counter() - t)
        admin.execute(POLICY_SQL)
    if v.kind == "seed_trigger":
        admin.execute(SEED_SETUP_SQL)
    if v.kind in FLOOR_KINDS:
        admin.execute("DELETE FROM cep.rule_keys")
        install_floor(admin, rule_sets["decisions"][wl_key], FLOOR_MODES[v.kind])
    admin.execute("CHECKPOINT")


def measure(cluster, v: RVariant, wl, base, rule_sets: dict):
    if v.kind in FLOOR_KINDS and wl.key not in rule_sets.setdefault("decisions", {}):
        measure(cluster, VARIANTS[2], wl, base, rule_sets)     # (f), untimed: its rows
    dsn = cluster.dsn(v.database)
    with cluster.connect(v.database) as admin:
        _prepare(admin, v, base, rule_sets, wl.key)
        shared = {"lock": threading.Lock(), "items": wl.items, "next": 0}
        warmed = threading.Barrier(base.CLIENTS + 1)
        go = threading.Barrier(base.CLIENTS + 1)
        done: list[float] = []
        errors: list[BaseException] = []
        per_client = len(wl.warmup) // base.CLIENTS
        threads = [threading.Thread(
            target=base._client, daemon=True,
            args=(dsn, wl, shared, warmed, go, wl.warmup[i * per_client:(i + 1) * per_client],
                  done, errors)) for i in range(base.CLIENTS)]
        for th in threads:
            th.start()
        streamed = v.kind in CEP_KINDS
        before = None
        warm_max = 0
        try:
            warmed.wait()
            warm_max = admin.execute(
                "SELECT coalesce(max(id), 0) FROM transactions").fetchone()[0]
            if streamed:
                before = base.stream_counters(admin)
            go.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"{v.name}, {wl.title}: {errors[0]}") from errors[0]
        m = base.Measurement(max(done) - t0, wl.rows)

        warm_rows = per_client * base.CLIENTS * (base.BATCH_ROWS if wl.batch else 1)
        stored = admin.execute("SELECT count(*) FROM transactions").fetchone()[0]
        if stored != wl.rows + warm_rows:
            raise RuntimeError(f"{v.name}: {stored} rows stored, expected "
                               f"{wl.rows + warm_rows}")
        if streamed:
            after = base.stream_counters(admin)
            m.extra["ingest_micros_per_event"] = ((after[1] - before[1])
                                                  / max(1, after[0] - before[0]))
        if v.kind in RULE_KINDS:
            m.extra.update(check_cep(admin, v, rule_sets, warm_max))
        if v.kind == "seed_rules":
            rule_sets.setdefault("decisions", {})[wl.key] = capture_decisions(admin)
        if v.kind in FLOOR_KINDS:
            m.extra.update(check_floor(admin, rule_sets["decisions"][wl.key]))
        if v.kind == "seed_trigger":
            m.extra.update(check_seed(admin, warm_max))
    return m


# -- correctness guard ------------------------------------------------------------------------

def _fail_unless(checks: dict, name: str, ok: bool, detail: str) -> None:
    checks[name] = "ok" if ok else f"FAILED: {detail}"


def check_cep(conn, v: RVariant, rule_sets: dict, warm_max: int) -> dict:
    out: dict = {"checks": {}}
    c = out["checks"]
    total, distinct, blocked_a, high, stored, not_events = conn.execute("""
        SELECT count(*), count(DISTINCT a.event_id), count(*) FILTER (WHERE a.blocked),
               count(*) FILTER (WHERE a.level = 'high'),
               (SELECT count(*) FROM transactions),
               count(*) FILTER (WHERE NOT EXISTS (
                   SELECT 1 FROM transactions AS t WHERE t.id = a.event_id))
        FROM cep.risk_assessments AS a WHERE a.stream = 'transactions'""").fetchone()
    blocked_t = conn.execute(
        "SELECT count(*) FROM transactions WHERE status = 'blocked'").fetchone()[0]
    alerts = conn.execute(
        "SELECT count(*) FROM cep.alerts WHERE source_kind = 'rule'").fetchone()[0]
    out.update(assessments=total, assessed_fraction=round(total / stored, 4), alerts=alerts,
               blocked=blocked_t)
    _fail_unless(c, "one assessment per event", total == distinct and not_events == 0,
                 f"{total} assessments, {distinct} events, {not_events} unknown ids")
    _fail_unless(c, "blocked rows = blocked assessments", blocked_t == blocked_a,
                 f"{blocked_t} rows blocked, {blocked_a} assessments blocked")
    if v.kind == "quiet_rules":
        high = 0                              # alert_level 'none'
    _fail_unless(c, "rule alerts = high assessments", alerts == high,
                 f"{alerts} alerts, {high} high assessments")
    hits = dict(conn.execute("""
        SELECT r.name, count(a.event_id)
        FROM cep.rules AS r
        LEFT JOIN cep.risk_assessments AS a
            ON a.stream = 'transactions' AND r.rule_id = ANY (a.triggered_rules)
        WHERE r.stream = 'transactions' GROUP BY r.name""").fetchall())
    if v.kind in ("seed_rules", "quiet_rules"):
        measured = dict(conn.execute("""
            SELECT r.name, count(a.event_id)
            FROM cep.rules AS r
            LEFT JOIN cep.risk_assessments AS a ON a.stream = 'transactions'
                AND r.rule_id = ANY (a.triggered_rules) AND a.event_id > %s
            GROUP BY r.name""", (warm_max,)).fetchall())
        out["rule_hits"] = {n: measured.get(n, 0) for n in SEED_RULE_NAMES}
        for rule, pred in (("large_amount", "t.amount > 10000"),
                           ("night_time", "(extract(hour FROM t.created_at AT TIME ZONE 'UTC') "
                                          ">= 22 OR extract(hour FROM t.created_at AT TIME "
                                          "ZONE 'UTC') < 6)")):
            expected, missing, extra = conn.execute(f"""
                WITH r AS (SELECT rule_id FROM cep.rules WHERE name = %s),
                assessed AS (
                    SELECT a.event_id FROM cep.risk_assessments AS a, r
                    WHERE a.stream = 'transactions' AND r.rule_id = ANY (a.triggered_rules))
                SELECT (SELECT count(*) FROM transactions AS t WHERE {pred}),
                       (SELECT count(*) FROM transactions AS t WHERE {pred}
                            AND t.id NOT IN (SELECT event_id FROM assessed)),
                       (SELECT count(*) FROM assessed AS x JOIN transactions AS t
                            ON t.id = x.event_id WHERE NOT ({pred}))""", (rule,)).fetchone()
            _fail_unless(c, f"{rule}: assessed = independent count ({expected})",
                         hits.get(rule, 0) == expected and missing == 0 and extra == 0,
                         f"{hits.get(rule, 0)} assessed, {expected} expected, "
                         f"{missing} missing, {extra} wrongly assessed")
    else:
        rules = rule_sets["rules"][v.n_rules]
        simple = simple_thresholds(rules)
        amounts = sorted(int(round(x * 100)) for (x,) in conn.execute(
            "SELECT amount FROM transactions"))
        users = sorted(u for (u,) in conn.execute("SELECT user_id FROM transactions"))
        bad = []
        for name, field, op, value in simple:
            col, val = (amounts, int(value * 100)) if field == "amount" else (users, int(value))
            lo, hi = bisect.bisect_left(col, val), bisect.bisect_right(col, val)
            expected = {">": len(col) - hi, ">=": len(col) - lo, "<": lo, "<=": hi,
                        "=": hi - lo}[op]
            if hits.get(name, 0) != expected:
                bad.append(f"{name} ({field} {op} {value}): {hits.get(name, 0)} vs {expected}")
        fired_simple = sum(1 for name, *_ in simple if hits.get(name, 0))
        _fail_unless(c, f"{len(simple)} threshold rules: hits = independent counts "
                        f"({fired_simple} of them fired)", not bad,
                     "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
        out["rules_that_fired"] = sum(1 for n in hits.values() if n)
        out["rules_per_assessment"] = round(conn.execute(
            "SELECT coalesce(avg(cardinality(triggered_rules)), 0)::float8 "
            "FROM cep.risk_assessments").fetchone()[0], 2)
    return out


def check_floor(conn, decisions: list) -> dict:
    """A floor wrote what (f) wrote: one assessment per decision, its alerts, its blocks."""
    out: dict = {"checks": {}}
    c = out["checks"]
    total, blocked_a = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE blocked) FROM cep.risk_assessments").fetchone()
    alerts = conn.execute("SELECT count(*) FROM cep.alerts").fetchone()[0]
    blocked_t = conn.execute(
        "SELECT count(*) FROM transactions WHERE status = 'blocked'").fetchone()[0]
    stored = conn.execute("SELECT count(*) FROM transactions").fetchone()[0]
    want = floor_expected(decisions)
    out.update(assessments=total, assessed_fraction=round(total / stored, 4), alerts=alerts,
               blocked=blocked_t)
    _fail_unless(c, "(f)'s assessments, alerts and blocks written again",
                 (total, blocked_t, alerts) == want and blocked_a == blocked_t,
                 f"{total} assessments, {blocked_t} blocked, {alerts} alerts; (f) wrote {want}")
    return out


def check_seed(conn, warm_max: int) -> dict:
    out: dict = {"checks": {}}
    c = out["checks"]
    total, distinct, blocked_a, high, stored = conn.execute("""
        SELECT count(*), count(DISTINCT transaction_id), count(*) FILTER (WHERE blocked),
               count(*) FILTER (WHERE risk_level = 'high'), (SELECT count(*) FROM transactions)
        FROM seed_risk_assessments""").fetchone()
    blocked_t = conn.execute(
        "SELECT count(*) FROM transactions WHERE status = 'blocked'").fetchone()[0]
    alerts = conn.execute("SELECT count(*) FROM seed_alerts").fetchone()[0]
    hits, measured = {}, {}
    for name, n_all, n_measured in conn.execute("""
            SELECT r.rule_name, count(a.id), count(a.id) FILTER (WHERE a.transaction_id > %s)
            FROM risk_rules AS r
            LEFT JOIN seed_risk_assessments AS a ON r.rule_id = ANY (a.triggered_rules)
            GROUP BY r.rule_name""", (warm_max,)):
        hits[name], measured[name] = n_all, n_measured
    out.update(assessments=total, assessed_fraction=round(total / stored, 4), alerts=alerts,
               blocked=blocked_t, rule_hits={n: measured.get(n, 0) for n in SEED_RULE_NAMES})
    _fail_unless(c, "one assessment per event", total == distinct,
                 f"{total} assessments, {distinct} events")
    _fail_unless(c, "blocked rows = blocked assessments", blocked_t == blocked_a,
                 f"{blocked_t} vs {blocked_a}")
    _fail_unless(c, "alerts = high assessments", alerts == high, f"{alerts} vs {high}")
    expected = conn.execute(
        "SELECT count(*) FROM transactions WHERE amount > 10000").fetchone()[0]
    _fail_unless(c, f"large_amount: assessed = independent count ({expected})",
                 hits.get("large_amount", 0) == expected,
                 f"{hits.get('large_amount', 0)} vs {expected}")
    return out


# -- driver -----------------------------------------------------------------------------------

def run(cluster, args, base) -> dict:
    """Set up, measure, and return the raw results (see summarize)."""
    counts = [int(x) for x in args.rule_counts.split(",") if x.strip()]
    t_start = time.perf_counter()
    workloads = prepare_workloads(args, base)
    scale = scale_variants(counts)
    setup_databases(cluster, VARIANTS + FLOORS + scale, base)
    rule_sets = {"rules": {n: generate_rules(n, args.seed) for n in counts},
                 "compile_seconds": {n: [] for n in counts}}
    plan = {wl.key: VARIANTS + ([QUIET] + FLOORS if wl.batch else [])
            + (scale if wl.key == "realistic_batch" else []) for wl in workloads}
    results = {wl.key: {v.key: [] for v in plan[wl.key]} for wl in workloads}
    width = max(len(v.name) for v in VARIANTS + [QUIET] + FLOORS + scale)
    # One untimed round: WAL segments, caches, plans.
    t = time.perf_counter()
    for v in plan[workloads[0].key]:
        measure(cluster, v, workloads[0], base, rule_sets)
    print(f"  warm-up round ({workloads[0].title}, every variant, untimed): "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    for r in range(args.rules_repeat):
        for wl in workloads:
            vs = plan[wl.key]
            order = vs[r % len(vs):] + vs[:r % len(vs)]
            for v in order:
                m = measure(cluster, v, wl, base, rule_sets)
                results[wl.key][v.key].append(m)
                note = ""
                if "ingest_micros_per_event" in m.extra:
                    note += f"  pg_cep {m.extra['ingest_micros_per_event']:.2f} µs/event"
                if "assessments" in m.extra:
                    note += (f"  {m.extra['assessments']:,} assessed, "
                             f"{m.extra['alerts']:,} alerts")
                failed = [k for k, x in m.extra.get("checks", {}).items() if x != "ok"]
                if failed:
                    note += "  CHECK FAILED: " + "; ".join(
                        f"{k}: {m.extra['checks'][k]}" for k in failed)
                print(f"  run {r + 1}/{args.rules_repeat}  {wl.title:<31} {v.name:<{width}} "
                      f"{m.eps:>9,.0f} events/s  ({m.seconds:5.2f} s){note}", flush=True)
    return {"workloads": workloads, "plan": plan, "results": results, "counts": counts,
            "rule_sets": rule_sets, "seconds": time.perf_counter() - t_start}


def _med(xs):
    return statistics.median(xs) if xs else None


def _r(x, nd=3):
    return round(x, nd) if isinstance(x, float) else x


def summarize(raw: dict, args) -> dict:
    out: dict = {"workloads": {}, "scale": {}}
    verified = True
    for wl in raw["workloads"]:
        res = raw["results"][wl.key]
        per = {}
        for v in raw["plan"][wl.key]:
            runs = res[v.key]
            entry = {
                "variant": v.name,
                "runs": [{"events_per_second": round(m.eps, 1), "seconds": round(m.seconds, 3),
                          **{k: ({kk: _r(vv) for kk, vv in x.items()} if isinstance(x, dict)
                                 else _r(x)) for k, x in m.extra.items()}} for m in runs],
                "runs_events_per_second": [round(m.eps, 1) for m in runs],
                "median_events_per_second": round(_med([m.eps for m in runs]), 1),
                "median_wall_micros_per_event": round(_med([1e6 / m.eps for m in runs]), 3),
            }
            ing = [m.extra["ingest_micros_per_event"] for m in runs
                   if "ingest_micros_per_event" in m.extra]
            if ing:
                entry["median_ingest_micros_per_event"] = round(_med(ing), 3)
            for k in ("assessments", "assessed_fraction", "alerts", "blocked",
                      "rules_that_fired", "rules_per_assessment"):
                vals = [m.extra[k] for m in runs if k in m.extra]
                if vals:
                    entry[k] = _r(_med(vals), 4)
            if any("rule_hits" in m.extra for m in runs):
                last = [m.extra["rule_hits"] for m in runs if "rule_hits" in m.extra][-1]
                entry["rule_hits_last_run"] = last
            checks = [m.extra["checks"] for m in runs if "checks" in m.extra]
            if checks:
                entry["verified"] = all(x == "ok" for ch in checks for x in ch.values())
                entry["checks_last_run"] = checks[-1]
                entry["failed_checks"] = sorted({f"{k}: {x}" for ch in checks
                                                 for k, x in ch.items() if x != "ok"})
                verified = verified and entry["verified"]
            per[v.key] = entry
        med = {k: per[k]["median_events_per_second"] for k in per}

        def paired(x, y):
            return round(_med([p.eps / q.eps for p, q in zip(res[x], res[y])]), 3)
        w = {"title": wl.title, "family": wl.family, "rows": wl.rows, "data": wl.facts,
             "variants": per,
             "ratio_b_a": round(med["b"] / med["a"], 3), "paired_ratio_b_a": paired("b", "a"),
             "ratio_f_a": round(med["f"] / med["a"], 3), "paired_ratio_f_a": paired("f", "a"),
             "ratio_g_a": round(med["g"] / med["a"], 3), "paired_ratio_g_a": paired("g", "a"),
             "ratio_f_b": round(med["f"] / med["b"], 3), "paired_ratio_f_b": paired("f", "b"),
             "ratio_f_g": round(med["f"] / med["g"], 3), "paired_ratio_f_g": paired("f", "g")}
        if wl.batch:
            w["target_f_a"] = TARGET_F_A
            w["target_f_a_met"] = w["ratio_f_a"] >= TARGET_F_A
        if wl.family == "dense":
            w["target_f_g"] = TARGET_F_G
            w["target_f_g_met"] = w["ratio_f_g"] >= TARGET_F_G
        if "f0" in per:
            w["ratio_f0_a"] = round(med["f0"] / med["a"], 3)
            w["paired_ratio_f0_a"] = paired("f0", "a")
        for k in ("fw", "fl", "fr", "fs"):
            if k in per:
                w[f"ratio_{k}_a"] = round(med[k] / med["a"], 3)
                w[f"paired_ratio_{k}_a"] = paired(k, "a")
                w[f"ratio_{k}_g"] = round(med[k] / med["g"], 3)
                w[f"paired_ratio_{k}_g"] = paired(k, "g")
        ing = {k: per[k].get("median_ingest_micros_per_event") for k in ("b", "f", "f0")
               if k in per}
        w["rules_ingest_micros_per_event"] = round(ing["f"] - ing["b"], 3)
        if "f0" in ing:
            w["assess_ingest_micros_per_event"] = round(ing["f0"] - ing["b"], 3)
            w["alert_block_ingest_micros_per_event"] = round(ing["f"] - ing["f0"], 3)
        out["workloads"][wl.key] = w

    # Rule-count series on the realistic batches: µs/event above (b), paired per repeat.
    res = raw["results"]["realistic_batch"]
    series = []
    for n in raw["counts"]:
        k = f"r{n}"
        wall = [1e6 / p.eps - 1e6 / q.eps for p, q in zip(res[k], res["b"])]
        trig = [p.extra["ingest_micros_per_event"] - q.extra["ingest_micros_per_event"]
                for p, q in zip(res[k], res["b"])]
        rules = raw["rule_sets"]["rules"][n]
        series.append({
            "rules": n,
            "threshold_rules": len(simple_thresholds(rules)),
            "combinators": sum(1 for r in rules if r[0].startswith("gen_comb")),
            "metrics": sum(1 for r in rules if r[0].startswith("gen_metric")),
            "median_events_per_second": out["workloads"]["realistic_batch"]["variants"][k][
                "median_events_per_second"],
            "ratio_to_b": out["workloads"]["realistic_batch"]["variants"][k][
                "median_events_per_second"] / out["workloads"]["realistic_batch"]["variants"][
                "b"]["median_events_per_second"],
            "wall_micros_per_event_above_b": round(_med(wall), 3),
            "wall_runs": [round(x, 3) for x in wall],
            "ingest_micros_per_event_above_b": round(_med(trig), 3),
            "ingest_runs": [round(x, 3) for x in trig],
            "median_compile_seconds": round(_med(raw["rule_sets"]["compile_seconds"][n]), 3),
            **{x: out["workloads"]["realistic_batch"]["variants"][k].get(x)
               for x in ("assessed_fraction", "alerts", "rules_per_assessment",
                         "rules_that_fired")},
        })
    for x in series:
        x["ratio_to_b"] = round(x["ratio_to_b"], 3)
        x["rule_hits_per_event"] = round((x["assessed_fraction"] or 0)
                                         * (x["rules_per_assessment"] or 0), 3)
    growth = []
    for lo, hi in zip(series, series[1:]):
        growth.append({
            "from": lo["rules"], "to": hi["rules"], "rules_factor": hi["rules"] / lo["rules"],
            "wall_factor": round(hi["wall_micros_per_event_above_b"]
                                 / max(1e-9, lo["wall_micros_per_event_above_b"]), 2),
            "ingest_factor": round(hi["ingest_micros_per_event_above_b"]
                                   / max(1e-9, lo["ingest_micros_per_event_above_b"]), 2),
        })
    sub_linear = all(g["ingest_factor"] < g["rules_factor"] for g in growth)
    out["scale"] = {"workload": "realistic_batch", "series": series, "growth": growth,
                    "sub_linear": sub_linear}
    out["parameters"] = {"rows": args.rules_rows, "single_rows": args.rules_single_rows,
                         "repeat": args.rules_repeat, "rule_counts": raw["counts"],
                         "dense_rate_per_user_hour": list(DENSE_RATE),
                         "dense_hours": DENSE_HOURS,
                         "realistic_per_user_day": REALISTIC_PER_USER_DAY}
    out["targets"] = {"f_over_a_batches": TARGET_F_A, "f_over_g_dense": TARGET_F_G}
    out["verified"] = verified
    out["seconds"] = round(raw["seconds"], 1)
    return out


# -- report -----------------------------------------------------------------------------------

NOTE_G = (
    "(g) is the seed's design run as a FOR EACH ROW trigger: per row, evaluate_risk_rules() "
    "loops over the\nactive rows of risk_rules (the seed's four rows and JSON), running the "
    "seed's count query for the user's\nlast hour and its location-change count for 5 "
    "minutes, with event time: created_at in (t - w, t] instead\nof >= now() - w; night = UTC "
    "hour >= 22 or < 6 (the rule's 06:00 is exclusive in pg_cep; the seed's\n'<= 6' would "
    "include 06:xx). Scores summed; level high >= 0.7, medium >= 0.4; one row in\n"
    "seed_risk_assessments (PK + index on transaction_id) per event that fired a rule, one row "
    "in\nseed_alerts for high risk, status = 'blocked' at >= 0.9 -- what (f) does with "
    "cep.risk_assessments,\ncep.alerts and the block action.")

NOTE_FLOORS = (
    "(fl) and (fw) (batch workloads) evaluate nothing: a statement trigger beside the bare "
    "stream writes the\nrows (f) wrote for the same events in its previous run -- "
    "cep.risk_assessments, cep.alerts (message,\ndetails), the rule log row, the UPDATE of "
    "the blocked rows -- found by (user, time, amount) in a\ntable filled from that run; "
    "(fw) only that; (fl) first locks the statement's keys in cep.rule_keys in key\norder, as "
    "(f) does (design.md principle 5); (fr) = (fl) + one read of each key's stored rows of "
    "the\ntrailing hour; (fs) = (fw) + one state row per key rewritten by every statement "
    "(the least an\nincremental per-key state needs). No rule engine that writes the "
    "contract's rows under the\ncontract's locks can be faster than (fl), nor, with "
    "trailing-window rules, than the cheaper of\n(fr) and (fs). pg_cep µs/event of a floor "
    "is the bare stream's function only.")


def print_report(s: dict, heading, subheading, print_table) -> None:
    p = s["parameters"]
    heading("Risk rules on the insert path")
    print(f"{p['rows']:,} rows per batch workload, {p['single_rows']:,} per single-row "
          f"workload; 2 clients; median of {p['repeat']} run(s);\nvariants interleaved "
          "(order rotated per repeat), fresh table (and stream, rules, policy) per run.")
    rows = []
    for w in s["workloads"].values():
        d = w["data"]
        rows.append((w["title"], d["users"], d["span_hours"], d["events_per_user_hour_median"],
                     d["amount_gt_10000"], f"{100 * d['night_share']:.0f}%"))
    print("\nData (measured rows; warm-up rows lie two days earlier):")
    print_table(["workload", "users", "hours", "events/user/hour (median user)",
                 "amount > 10000", "night (22-06 UTC)"], rows)
    print("realistic: demo/workload.py's transactions (skewed activity, ~2% fraud events in "
          "night bursts) at 10\nper user and day (the demo has 40), over one day. dense: "
          "every user 20-60 an hour (20:00-24:00 UTC).")

    subheading("The seed's four rules: (a) plain, (b) stream, (f) stream + rules, (g) seed's "
               "per-row trigger")
    rows = []
    for w in s["workloads"].values():
        for k, e in w["variants"].items():
            if k.startswith("r"):
                continue
            ratio = None if k == "a" else w[f"ratio_{k}_a"]
            paired = None if k == "a" else w[f"paired_ratio_{k}_a"]
            fg = w.get(f"ratio_{k}_g") if k in ("f", "fw", "fl", "fr", "fs") else None
            assessed = e.get("assessed_fraction")
            rows.append((w["title"] if k == "a" else "", e["variant"],
                         round(e["median_events_per_second"]), ratio, paired, fg,
                         e.get("median_ingest_micros_per_event"),
                         None if assessed is None else f"{100 * assessed:.1f}%",
                         e.get("alerts"),
                         " ".join(f"{x:,.0f}" for x in e["runs_events_per_second"])))
    print_table(["workload", "variant", "events/s", "x/a", "paired x/a", "f/g",
                 "pg_cep µs/event", "assessed", "alerts", "all runs (events/s)"], rows)
    print("x/a: median events/s over the median of (a); paired: median of the per-repeat "
          "ratios. pg_cep µs/event:\ncep.stream_stats.ingest_micros_per_event over the timed "
          "inserts (time inside the ingest function,\nrules section included, summed over "
          "both clients). assessed: share of stored events (warm-up\nincluded) with an "
          "assessment; alerts: alert rows (medians).")
    print(NOTE_G)
    print(NOTE_FLOORS)

    subheading("Targets")
    rows = []
    for w in s["workloads"].values():
        if "target_f_a" in w:
            rows.append((w["title"], f"f/a >= {w['target_f_a']}", w["ratio_f_a"],
                         w["paired_ratio_f_a"], "met" if w["target_f_a_met"] else "NOT met"))
    for w in s["workloads"].values():
        if "target_f_g" in w:
            rows.append((w["title"], f"f/g >= {w['target_f_g']:g}", w["ratio_f_g"],
                         w["paired_ratio_f_g"], "met" if w["target_f_g_met"] else "NOT met"))
    print_table(["workload", "target", "measured", "paired", ""], rows)
    rows = []
    for w in s["workloads"].values():
        for k in ("fw", "fl", "fr", "fs"):
            if f"ratio_{k}_a" in w:
                rows.append((w["title"], k, w[f"ratio_{k}_a"], w[f"paired_ratio_{k}_a"],
                             w[f"ratio_{k}_g"], w[f"paired_ratio_{k}_g"]))
    if rows:
        print("\nThe floors against the same targets (what (f) cannot exceed):")
        print_table(["workload", "floor", "x/a", "paired x/a", "x/g", "paired x/g"], rows)

    subheading("Where the time goes (µs per event)")
    rows = []
    for w in s["workloads"].values():
        v = w["variants"]
        rows.append((w["title"], v["a"]["median_wall_micros_per_event"],
                     v["b"]["median_wall_micros_per_event"],
                     v["f"]["median_wall_micros_per_event"],
                     v["g"]["median_wall_micros_per_event"],
                     v["b"].get("median_ingest_micros_per_event"),
                     v["f"].get("median_ingest_micros_per_event"),
                     w.get("rules_ingest_micros_per_event"),
                     w.get("assess_ingest_micros_per_event"),
                     w.get("alert_block_ingest_micros_per_event")))
    print_table(["workload", "wall (a)", "wall (b)", "wall (f)", "wall (g)", "fn (b)",
                 "fn (f)", "rules = f - b", "assess = f0 - b", "alert+block = f - f0"], rows)
    print("wall: elapsed time of both clients / events. fn: pg_cep's own clock inside the "
          "generated trigger\nfunction per event, summed over both clients (so it includes "
          "waits for the other client's key\nlocks in cep.rule_keys: statements with common "
          "keys serialize their rules sections). (f0) is (f)\nwith alert_level 'none' and no "
          "block action (batch workloads only): assess = key locks, trailing\nwindow "
          "aggregate per event, rule evaluation, cep.risk_assessments rows and counters; "
          "alert+block\n= cep.alerts rows (message, details jsonb, NOTIFY) and the UPDATE of "
          "blocked rows.")

    subheading("Rule hits on the measured events, last run: (f) pg_cep / (g) seed's trigger")
    rows = []
    for w in s["workloads"].values():
        fh = w["variants"]["f"].get("rule_hits_last_run", {})
        gh = w["variants"]["g"].get("rule_hits_last_run", {})
        rows.append((w["title"], *[f"{fh.get(n, 0):,} / {gh.get(n, 0):,}"
                                   for n in SEED_RULE_NAMES]))
    print_table(["workload", *SEED_RULE_NAMES], rows)
    print("Stateless rules agree exactly. Trailing-window rules differ with the interleaving "
          "of the 2 clients:\n(g) does not see rows of the other client's statement still "
          "in progress (with 1000-row batches,\npart of the window), while (f) locks the "
          "statement's keys (cep.rule_keys) and reads after the lock.")

    sc = s["scale"]
    subheading("Cost per event as active rules grow (realistic, 1000-row batches, 2 clients)")
    rows = []
    for x in sc["series"]:
        rows.append((x["rules"], f"{x['threshold_rules']}/{x['combinators']}/{x['metrics']}",
                     round(x["median_events_per_second"]), x["ratio_to_b"],
                     x["wall_micros_per_event_above_b"], x["ingest_micros_per_event_above_b"],
                     f"{100 * (x['assessed_fraction'] or 0):.1f}%",
                     x["rules_per_assessment"], x["rule_hits_per_event"], x["alerts"],
                     round(1000 * x["median_compile_seconds"])))
    print_table(["rules", "thr/comb/metric", "events/s", "x/b", "wall µs/event above (b)",
                 "fn µs/event above (b)", "assessed", "rules/assessment", "hits/event",
                 "alerts",
                 "INSERT ms"], rows)
    rows = [(f"{g['from']} -> {g['to']}", f"x{g['rules_factor']:g}", f"x{g['wall_factor']}",
             f"x{g['ingest_factor']}") for g in sc["growth"]]
    print_table(["rules", "rule factor", "wall cost factor", "fn cost factor"], rows)
    print("Generated rules: one-comparison thresholds on amount (> >= < <= =) and user_id (=), "
          "which pg_cep\nindexes per (field, op) as sorted thresholds (width_bucket); "
          "combinators (all/any/not), compiled one\nby one; trailing metrics over four "
          "shared (metric, window) pairs. Same policy as (f). Costs paired per\nrepeat with "
          "(b) of the same repeat. rules/assessment: mean rules fired per assessed event; "
          "hits/event:\nrule hits per stored event. With random thresholds, the more rules, "
          "the more fire on one large\namount, and each hit is listed in the assessment and "
          "its alert: that output, and the combinators\n(evaluated one by one), grow; the "
          "evaluation of the sorted thresholds hardly does. INSERT ms: the\none INSERT of "
          "the rule set (validation + recompilation). "
          f"Growth sub-linear: {'yes' if sc['sub_linear'] else 'NO'}.")

    subheading("Correctness guard")
    rows = []
    for w in s["workloads"].values():
        for k, e in w["variants"].items():
            if "checks_last_run" not in e:
                continue
            for name in e["checks_last_run"]:
                failed = [f for f in e["failed_checks"] if f.startswith(name + ":")]
                rows.append((w["title"], k, name, "ok (every run)" if not failed
                             else "; ".join(failed)))
    print_table(["workload", "variant", "check", "result"], rows)
    if not s["verified"]:
        print("\nRULES CORRECTNESS GUARD FAILED (see above).")
