"""Fraud-profile part of `make bench` (issue 8; imported by bench/run_bench.py, which runs it
after the recommendations part, or alone with --fraud-only; --skip-fraud skips it).

The full fraud profile on one stream, `transactions` (the insert part's table, indexes and
statements): two windows -- per user, 5 minutes sliding every minute, count(*) and
sum(amount); globally, 1-minute tumbling count(*) -- the seed's four rules and policy
(bench/rules_bench.py: scores summed, medium 0.4, high 0.7 alerting, block at 0.9), one
pattern (three transactions over 1000 of one user within 10 minutes, `a{3}`), alerting on (rule
and pattern alerts, NOTIFY doorbell, one durable consumer queueing every alert).

Variants, each in its own database, fresh table (and stream) per measurement:
  (a) plain table;
  (p) the full profile;
  (g) the seed's per-row design: the FOR EACH ROW trigger calling the seed's
      evaluate_risk_rules() of bench/rules_bench.py (rules only: the seed had no windows or
      patterns on the insert path);
and, for the breakdown ("which part of the ingest function takes the time"), on the 2-client
workloads, the stream with one feature alone: (b) nothing (stream bookkeeping and the alert
consumer), (w) the two windows, (r) the four rules and policy, (m) the pattern; plus one
untimed run of (p) per 2-client workload in a database with track_functions = 'all', whose
pg_stat_user_functions shows the time per event in the generated ingest function (bookkeeping,
windows and rules are inline SQL there) and in the functions it calls (the pattern matcher,
alerts).

Workloads: rules_bench's "realistic" transactions (demo/workload.py at 10 per user and day,
skewed activity, ~2% fraud events in bursts: the bursts' large amounts are what the pattern
finds), for 4,800 users, i.e. 2,000 transactions per hour of event time, as 1000-row INSERT
batches and as single-row INSERTs, each from 2 and from 8 concurrent client connections
(autocommit). Every statement's latency is recorded by its client.

The bench replays hours of event time in seconds, so the statements in flight at once arrive
out of order by up to clients x statement rows / 2,000 hours of event time (4 hours for eight
1000-row batches). Each workload's allowed lateness is 1.5 times that (at least 10 minutes), so
that events do not take the late path (late events are counted and reported), and its warm-up
is the rows just before the measured ones, spanning at least the allowed lateness, spread
round robin over the clients: the measured inserts find the windows closing and the pattern
processing events at the rate they arrive.

Correctness guard after every measurement with pg_cep (a failure ends the bench with exit
code 1 after the results are written): rows stored; for rules, rules_bench's checks
(large_amount and night_time assessed exactly on the rows an independent query finds, one
assessment per event, blocked rows = blocked assessments, rule alerts = high assessments); for
the pattern and the windows, after cep.advance_watermark (untimed): every row the pattern's
variable accepts was processed by the pattern or counted late (to the stream or the pattern),
the live matches equal cep.find_matches over the stored rows (when nothing was late), the
global window counts every on-time event once and the per-user hopping window five times, and
every alert is queued for the consumer.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import psycopg

import rules_bench
import workload

TARGET_P_A = 0.35                # full profile / plain table (issue 8)
CLIENT_COUNTS = (2, 8)
USERS = 4800                     # at rules_bench's 10 transactions per user and day:
RATE = USERS * rules_bench.REALISTIC_PER_USER_DAY / 24     # 2,000 per hour of event time
MIN_LATENESS_MIN = 10
MIN_WARM_SINGLE = 480            # warm-up single rows (at least), split over the clients
FEATURES = ("windows", "rules", "pattern")

WINDOWS_SQL = """
SELECT cep.create_window('tx_user_5m', 'transactions', 'hopping', '5 minutes', '1 minute',
    group_by => '{user_id}', aggregates => '{count(*), sum(amount)}');
SELECT cep.create_window('tx_global_1m', 'transactions', 'tumbling', '1 minute');
"""
PATTERN_SQL = ("SELECT cep.create_pattern('burst3', 'transactions', 'a{3}', "
               "'{\"a\": \"amount > 1000\"}', within => '10 minutes')")
CONSUMER = "fraud_desk"
CLEAN_SQL = rules_bench.CEP_CLEAN_SQL + ", cep.matches"


@dataclass(frozen=True)
class FVariant:
    key: str
    name: str
    database: str
    kind: str                            # plain | cep | seed
    features: tuple = ()


PLAIN = FVariant("a", "(a) plain table", "fraud_plain", "plain")
FULL = FVariant("p", "(p) full fraud profile", "fraud_full", "cep", FEATURES)
SEED = FVariant("g", "(g) seed's per-row rule trigger", "fraud_seed", "seed")
MAIN_VARIANTS = [PLAIN, FULL, SEED]
# One extra, untimed run of the full profile with track_functions = 'all' (its own database):
# time per event in each function the ingest function calls (pg_stat_user_functions).
PROFILED = FVariant("p*", "(p) with track_functions", "fraud_profiled", "cep", FEATURES)
PARTS = [
    FVariant("b", "(b) stream + consumer only", "fraud_parts", "cep"),
    FVariant("w", "(w) + 2 windows only", "fraud_parts", "cep", ("windows",)),
    FVariant("r", "(r) + 4 rules only", "fraud_parts", "cep", ("rules",)),
    FVariant("m", "(m) + pattern only", "fraud_parts", "cep", ("pattern",)),
]


@dataclass
class FWorkload:
    key: str
    title: str
    sql: str
    items: list
    rows: int
    warmup: list
    clients: int
    batch: bool
    warm_rows: int
    lateness_min: int
    facts: dict | None = None


@dataclass
class FMeasurement:
    seconds: float
    events: int
    latencies: list
    extra: dict

    @property
    def eps(self) -> float:
        return self.events / self.seconds


# -- arguments --------------------------------------------------------------------------------

def add_arguments(p, exclusive_group) -> None:
    p.add_argument("--fraud-rows", type=int, default=40_000,
                   help="fraud part: rows of the batch workloads (default 40000)")
    p.add_argument("--fraud-single-rows", type=int, default=3_000,
                   help="fraud part: rows of the single-row workloads (default 3000)")
    p.add_argument("--fraud-repeat", type=int, default=2,
                   help="fraud part: measurements per variant and workload (default 2)")
    exclusive_group.add_argument("--fraud-only", action="store_true",
                                 help="run only the fraud profile part")
    p.add_argument("--skip-fraud", action="store_true", help="skip the fraud profile part")


def check_args(p, args) -> None:
    if args.fraud_only and args.skip_fraud:
        p.error("--fraud-only and --skip-fraud exclude each other")
    if (args.fraud_rows < 1000 * max(CLIENT_COUNTS) or args.fraud_single_rows < 500
            or args.fraud_repeat < 1):
        p.error(f"need --fraud-rows >= {1000 * max(CLIENT_COUNTS)}, --fraud-single-rows >= "
                "500, --fraud-repeat >= 1")


# -- data -------------------------------------------------------------------------------------

def _slice(ev: workload.EventBatch, lo: int, hi: int) -> workload.EventBatch:
    return workload.EventBatch(table=ev.table, columns=ev.columns,
                               data={k: v[lo:hi] for k, v in ev.data.items()},
                               created_at_us=ev.created_at_us[lo:hi], facts=ev.facts)


def transactions(n: int, seed: int, end_us: int) -> workload.EventBatch:
    """rules_bench's realistic transactions (demo/workload.py, 10 per user and day, ~2% fraud
    events in bursts), for a fixed USERS: RATE transactions per hour of event time."""
    return workload.transactions(n, seed, end_us, span_hours=n / RATE, n_users=USERS,
                                 late_fraction=0.0)


def lateness_minutes(clients: int, statement_rows: int) -> int:
    """The replay's reordering: the statements in flight span clients x statement_rows / RATE
    hours of event time; allowed lateness 1.5 times that, at least MIN_LATENESS_MIN."""
    return max(MIN_LATENESS_MIN, int(np.ceil(1.5 * clients * statement_rows / RATE * 60)))


def prepare_workloads(args, base) -> list[FWorkload]:
    """Per client count: the same measured rows, and a warm-up of the rows just before them
    that spans at least the allowed lateness (so the measured inserts find a stream in steady
    state: windows closing and the pattern processing events at the rate they arrive)."""
    end = int(time.time() * workload.US) - 5 * workload.US
    rows_per_batch = base.BATCH_ROWS
    out = []

    def warm_count(c: int, statement_rows: int, minimum: int) -> int:
        need = int(np.ceil(lateness_minutes(c, statement_rows) / 60 * RATE / statement_rows))
        return -(-max(need, minimum) // c) * c
    warm_b = {c: warm_count(c, rows_per_batch, c) for c in CLIENT_COUNTS}
    n_warm = max(warm_b.values()) * rows_per_batch
    ev = transactions(args.fraud_rows + n_warm, args.seed + 300, end)
    warm, meas = _slice(ev, 0, n_warm), _slice(ev, n_warm, len(ev))
    items, warm_items = (base.batch_items(meas, rows_per_batch),
                         base.batch_items(warm, rows_per_batch))
    facts = rules_bench.describe(meas)
    for c in CLIENT_COUNTS:
        w = warm_items[len(warm_items) - warm_b[c]:]
        out.append(FWorkload(f"batch_{c}", f"1000-row batches, {c} clients", base.BATCH_SQL,
                             items, len(meas), w, c, True, len(w) * rows_per_batch,
                             lateness_minutes(c, rows_per_batch), facts))
    warm_s = {c: warm_count(c, 1, MIN_WARM_SINGLE) for c in CLIENT_COUNTS}
    n_warm = max(warm_s.values())
    ev = transactions(args.fraud_single_rows + n_warm, args.seed + 301, end)
    warm, meas = _slice(ev, 0, n_warm), _slice(ev, n_warm, len(ev))
    rows, warm_rows = meas.value_rows(), warm.value_rows()
    facts = rules_bench.describe(meas)
    for c in CLIENT_COUNTS:
        w = warm_rows[len(warm_rows) - warm_s[c]:]
        out.append(FWorkload(f"single_{c}", f"single-row INSERTs, {c} clients",
                             base.SINGLE_SQL, rows, len(meas), w, c, False, len(w),
                             lateness_minutes(c, 1), facts))
    return out


# -- setup ------------------------------------------------------------------------------------

def setup_databases(cluster, base) -> None:
    everything = MAIN_VARIANTS + PARTS + [PROFILED]
    for db in dict.fromkeys(v.database for v in everything):
        cluster.create_database(db)
        kinds = {v.kind for v in everything if v.database == db}
        with cluster.connect(db) as conn:
            if db == PROFILED.database:
                conn.execute(f"ALTER DATABASE {db} SET track_functions = 'all'")
            conn.execute("SET client_min_messages = warning")
            if "cep" in kinds:
                conn.execute("CREATE EXTENSION pg_cep")
                conn.execute("SELECT cep.create_consumer(%s)", (CONSUMER,))
            if "seed" in kinds:
                conn.execute(base.TABLE_SQL)       # the seed's function refers to the table
                conn.execute(rules_bench.SEED_FUNCTIONS_SQL)


def _prepare(admin, v: FVariant, wl: FWorkload, base) -> None:
    admin.execute("SET client_min_messages = warning")
    if v.kind == "cep":
        admin.execute("SELECT cep.drop_stream(name) FROM cep.streams")
        admin.execute(CLEAN_SQL)
    admin.execute(base.TABLE_SQL)
    if v.kind == "cep":
        admin.execute("SELECT cep.create_stream('transactions', 'transactions', 'created_at', "
                      f"key_column => 'user_id', allowed_lateness => "
                      f"'{wl.lateness_min} minutes')")
        if "windows" in v.features:
            admin.execute(WINDOWS_SQL)
        if "rules" in v.features:
            admin.execute(rules_bench.SEED_RULES_SQL)
            admin.execute(rules_bench.POLICY_SQL)
        if "pattern" in v.features:
            admin.execute(PATTERN_SQL)
    if v.kind == "seed":
        admin.execute(rules_bench.SEED_SETUP_SQL)
    admin.execute("CHECKPOINT")


# -- measurement ------------------------------------------------------------------------------

def _client(dsn: str, wl: FWorkload, shared: dict, warmed, go, warm: list, done: list,
            latencies: list, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            for params in warm:
                cur.execute(wl.sql, params)
            warmed.wait()
            go.wait()
            lock, items = shared["lock"], shared["items"]
            clock = time.perf_counter
            mine = []
            while True:
                with lock:
                    i = shared["next"]
                    shared["next"] = i + 1
                if i >= len(items):
                    break
                t = clock()
                cur.execute(wl.sql, items[i])
                mine.append(clock() - t)
            done.append(clock())
            latencies.extend(mine)
    except BaseException as exc:
        errors.append(exc)
        warmed.abort()
        go.abort()


def measure(cluster, v: FVariant, wl: FWorkload, base, reset_stats: bool = False
            ) -> FMeasurement:
    dsn = cluster.dsn(v.database)
    with cluster.connect(v.database) as admin:
        _prepare(admin, v, wl, base)
        if reset_stats:
            admin.execute("SELECT pg_stat_reset()")
        shared = {"lock": threading.Lock(), "items": wl.items, "next": 0}
        warmed = threading.Barrier(wl.clients + 1)
        go = threading.Barrier(wl.clients + 1)
        done: list[float] = []
        latencies: list[float] = []
        errors: list[BaseException] = []
        # round robin: the warm-up statements in flight are neighbours in event time, as later
        threads = [threading.Thread(
            target=_client, daemon=True,
            args=(dsn, wl, shared, warmed, go, wl.warmup[i::wl.clients], done, latencies,
                  errors)) for i in range(wl.clients)]
        for th in threads:
            th.start()
        before = None
        warm_max = 0
        try:
            warmed.wait()
            warm_max = admin.execute(
                "SELECT coalesce(max(id), 0) FROM transactions").fetchone()[0]
            if v.kind == "cep":
                before = base.stream_counters(admin)
            go.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"{v.name}, {wl.title}: {errors[0]}") from errors[0]
        m = FMeasurement(max(done) - t0, wl.rows, latencies, {})
        stored = admin.execute("SELECT count(*) FROM transactions").fetchone()[0]
        if stored != wl.rows + wl.warm_rows:
            raise RuntimeError(f"{v.name}, {wl.title}: {stored} rows stored, expected "
                               f"{wl.rows + wl.warm_rows}")
        if v.kind == "cep":
            after = base.stream_counters(admin)
            m.extra["ingest_micros_per_event"] = ((after[1] - before[1])
                                                  / max(1, after[0] - before[0]))
            m.extra["late_events"] = after[2] - before[2]
            m.extra.update(check_cep(admin, v, warm_max, stored))
    return m


# -- correctness guard ------------------------------------------------------------------------

def _ok(checks: dict, name: str, ok: bool, detail: str) -> None:
    checks[name] = "ok" if ok else f"FAILED: {detail}"


def check_cep(conn, v: FVariant, warm_max: int, stored: int) -> dict:
    """Untimed, after the measured inserts (see the module docstring)."""
    out: dict = {"checks": {}}
    c = out["checks"]
    if "rules" in v.features:
        r = rules_bench.check_cep(conn, SimpleNamespace(kind="seed_rules"), {}, warm_max)
        c.update(r.pop("checks"))
        out.update({k: r[k] for k in ("assessments", "alerts", "blocked", "rule_hits")})
    late = conn.execute("SELECT count(*) FROM cep.late_events").fetchone()[0]
    conn.execute("SELECT cep.advance_watermark('transactions')")
    if "pattern" in v.features:
        # every event the pattern's variable accepts: processed, or counted late
        events, plate, a_rows, a_late = conn.execute(
            "SELECT p.events, p.late_events, (SELECT count(*) FROM transactions WHERE "
            "amount > 1000), (SELECT count(*) FROM cep.late_events AS l JOIN transactions AS t "
            "ON t.id = l.event_id WHERE t.amount > 1000) "
            "FROM cep.pattern_stats AS p WHERE p.pattern = 'burst3'").fetchone()
        out["pattern_late"] = plate
        _ok(c, "pattern: every event with amount > 1000 processed or counted late",
            events + plate + a_late == a_rows,
            f"{a_rows} such rows: {events} processed, {plate} late to the pattern, {a_late} "
            f"late to the stream, {a_rows - events - plate - a_late} unaccounted")
        live = conn.execute(
            "SELECT partition_key, event_ids FROM cep.matches WHERE pattern = 'burst3' "
            "ORDER BY 1, 2").fetchall()
        out["matches"] = len(live)
        if late == 0 and out["pattern_late"] == 0:
            batch = conn.execute(
                "SELECT partition_key, event_ids FROM cep.find_matches('burst3') "
                "ORDER BY 1, 2").fetchall()
            _ok(c, "pattern: live matches = find_matches", live == batch,
                f"{len(live)} live, {len(batch)} from find_matches")
        else:
            c["pattern: live matches = find_matches"] = (
                f"skipped ({late} late events, {out['pattern_late']} late to the pattern)")
    if "windows" in v.features:
        g, u = conn.execute(
            "SELECT (SELECT coalesce(sum(count), 0) FROM tx_global_1m), "
            "(SELECT coalesce(sum(count), 0) FROM tx_user_5m)").fetchone()
        _ok(c, "windows: global 1m counts each event once, per-user 5m/1m five times",
            g == stored - late and u == 5 * (stored - late),
            f"global {g}, per user {u}, {stored} stored, {late} late")
    alerts, queued = conn.execute(
        "SELECT (SELECT count(*) FROM cep.alerts), (SELECT count(*) FROM cep.consumer_pending)"
    ).fetchone()
    out["alerts_total"] = alerts
    _ok(c, "every alert queued for the consumer", alerts == queued,
        f"{alerts} alerts, {queued} queued")
    return out


# -- driver -----------------------------------------------------------------------------------

def _note(m: FMeasurement) -> str:
    note = ""
    if "ingest_micros_per_event" in m.extra:
        note += f"  pg_cep {m.extra['ingest_micros_per_event']:.2f} µs/event"
    if m.extra.get("late_events"):
        note += f"  {m.extra['late_events']} late"
    failed = [f"{k}: {x}" for k, x in m.extra.get("checks", {}).items()
              if x != "ok" and not x.startswith("skipped")]
    if failed:
        note += "  CHECK FAILED: " + "; ".join(failed)
    return note


def run(cluster, args, base) -> dict:
    """Set up, measure (variants interleaved, order rotated per repeat) and return raw
    results for summarize()."""
    t_start = time.perf_counter()
    workloads = prepare_workloads(args, base)
    setup_databases(cluster, base)
    # Breakdown on the 2-client workloads only (that is where the per-feature cost is least
    # blurred by waiting), the full profile and (a), (g) everywhere.
    plan = {wl.key: MAIN_VARIANTS + (PARTS if wl.clients == CLIENT_COUNTS[0] else [])
            for wl in workloads}
    results = {wl.key: {v.key: [] for v in plan[wl.key]} for wl in workloads}
    width = max(len(v.name) for v in MAIN_VARIANTS + PARTS)
    t = time.perf_counter()
    for v in MAIN_VARIANTS:                    # untimed: WAL segments, caches, plans
        measure(cluster, v, workloads[0], base)
    print(f"  warm-up round ({workloads[0].title}, (a), (p), (g), untimed): "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    for r in range(args.fraud_repeat):
        for wl in workloads:
            vs = plan[wl.key]
            for v in vs[r % len(vs):] + vs[:r % len(vs)]:
                m = measure(cluster, v, wl, base)
                results[wl.key][v.key].append(m)
                print(f"  run {r + 1}/{args.fraud_repeat}  {wl.title:<28} {v.name:<{width}} "
                      f"{m.eps:>9,.0f} events/s  ({m.seconds:5.2f} s){_note(m)}", flush=True)
    profiles = {}
    for wl in workloads:
        if wl.clients != CLIENT_COUNTS[0]:
            continue
        m = measure(cluster, PROFILED, wl, base, reset_stats=True)
        print(f"  profile run ({wl.title}, {PROFILED.name}, untimed): {m.eps:,.0f} events/s",
              flush=True)
        profiles[wl.key] = function_profile(cluster, m, wl)
    return {"workloads": workloads, "plan": plan, "results": results, "profiles": profiles,
            "seconds": time.perf_counter() - t_start}


def function_profile(cluster, m: FMeasurement, wl: FWorkload) -> dict:
    """Per function the profiled run called after the setup (statistics reset): calls and
    self/total µs per event, warm-up and measured events together (the guard's queries after
    the inserts are included: cep.advance_watermark and what it calls)."""
    time.sleep(1.0)                       # backends flush their statistics when they exit
    with cluster.connect(PROFILED.database) as conn:
        ingest, pattern = conn.execute(
            "SELECT 'cep.' || s.ingest_function, (SELECT 'cep._pattern_' || p.pattern_id "
            "FROM cep.patterns AS p) FROM cep.streams AS s").fetchone()
        rows = conn.execute(
            "SELECT f.schemaname || '.' || f.funcname, f.calls, f.self_time, f.total_time "
            "FROM pg_stat_user_functions AS f ORDER BY f.self_time DESC").fetchall()
    events = wl.rows + wl.warm_rows
    roles = {ingest: "generated ingest function (stream bookkeeping, windows, rules inline)",
             pattern: "generated matcher of pattern burst3",
             "cep._patterns_advance": "pattern section: calls the stream's matchers",
             "cep._raise_alerts": "alerts: rows, consumer queue",
             "cep._ring_doorbell": "alerts: NOTIFY"}
    out = []
    for name, calls, self_ms, total_ms in rows:
        out.append({"function": name, "role": roles.get(name, ""), "calls": calls,
                    "self_micros_per_event": round(1000 * self_ms / events, 3),
                    "total_micros_per_event": round(1000 * total_ms / events, 3)})
    return {"workload": wl.title, "events": events, "functions": out,
            "ingest_micros_per_event": round(m.extra["ingest_micros_per_event"], 3),
            "events_per_second": round(m.eps, 1)}


# -- summary ----------------------------------------------------------------------------------

def _med(xs):
    return statistics.median(xs) if xs else None


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def summarize(raw: dict, args) -> dict:
    out: dict = {"workloads": {}, "breakdown": {}}
    verified = True
    for wl in raw["workloads"]:
        res = raw["results"][wl.key]
        per = {}
        for v in raw["plan"][wl.key]:
            runs = res[v.key]
            lat = np.array([x for m in runs for x in m.latencies]) * 1000.0
            e = {
                "variant": v.name,
                "runs_events_per_second": [round(m.eps, 1) for m in runs],
                "median_events_per_second": round(_med([m.eps for m in runs]), 1),
                "median_wall_micros_per_event": round(_med([1e6 / m.eps for m in runs]), 3),
                "latency_ms_p50": _r(float(np.percentile(lat, 50)), 3),
                "latency_ms_p99": _r(float(np.percentile(lat, 99)), 3),
            }
            ing = [m.extra["ingest_micros_per_event"] for m in runs
                   if "ingest_micros_per_event" in m.extra]
            if ing:
                e["median_ingest_micros_per_event"] = round(_med(ing), 3)
                e["ingest_runs"] = [round(x, 3) for x in ing]
                e["late_events"] = max(m.extra.get("late_events", 0) for m in runs)
            for k in ("assessments", "alerts", "blocked", "matches", "alerts_total",
                      "pattern_late"):
                vals = [m.extra[k] for m in runs if k in m.extra]
                if vals:
                    e[k] = round(_med(vals))
            if any("rule_hits" in m.extra for m in runs):
                e["rule_hits_last_run"] = [m.extra["rule_hits"] for m in runs
                                           if "rule_hits" in m.extra][-1]
            checks = [m.extra["checks"] for m in runs if "checks" in m.extra]
            if checks:
                bad = sorted({f"{k}: {x}" for ch in checks for k, x in ch.items()
                              if x != "ok" and not x.startswith("skipped")})
                e["checks_last_run"] = checks[-1]
                e["failed_checks"] = bad
                verified = verified and not bad
            per[v.key] = e
        med = {k: per[k]["median_events_per_second"] for k in per}

        def paired(x, y):
            return round(_med([p.eps / q.eps for p, q in zip(res[x], res[y])]), 3)
        w = {"title": wl.title, "clients": wl.clients, "batch": wl.batch, "rows": wl.rows,
             "warm_rows": wl.warm_rows, "allowed_lateness_minutes": wl.lateness_min,
             "data": wl.facts, "variants": per,
             "ratio_p_a": round(med["p"] / med["a"], 3), "paired_ratio_p_a": paired("p", "a"),
             "ratio_p_g": round(med["p"] / med["g"], 3), "paired_ratio_p_g": paired("p", "g"),
             "ratio_g_a": round(med["g"] / med["a"], 3), "target_p_a": TARGET_P_A}
        w["target_p_a_met"] = w["ratio_p_a"] >= TARGET_P_A
        out["workloads"][wl.key] = w
        if "b" in per:
            # µs/event inside the ingest function, paired per repeat with (b) of that repeat
            def above(k):
                return _r(_med([x.extra["ingest_micros_per_event"]
                                - y.extra["ingest_micros_per_event"]
                                for x, y in zip(res[k], res["b"])]))
            parts = {k: above(k) for k in ("w", "r", "m", "p")}
            total = per["p"]["median_ingest_micros_per_event"]
            out["breakdown"][wl.key] = {
                "title": wl.title,
                "ingest_micros_per_event": {k: per[k]["median_ingest_micros_per_event"]
                                            for k in ("b", "w", "r", "m", "p")},
                "above_b": parts,
                "sum_of_parts_above_b": _r(sum(parts[k] for k in ("w", "r", "m"))),
                "share_of_full": {k: _r(parts[k] / total, 3) if total else None
                                  for k in ("w", "r", "m")},
                "base_share_of_full": _r(per["b"]["median_ingest_micros_per_event"] / total, 3)
                if total else None,
                "wall_micros_per_event": {k: per[k]["median_wall_micros_per_event"]
                                          for k in ("a", "b", "w", "r", "m", "p", "g")},
            }
    out["function_profiles"] = raw["profiles"]
    out["parameters"] = {"rows": args.fraud_rows, "single_rows": args.fraud_single_rows,
                         "repeat": args.fraud_repeat, "clients": list(CLIENT_COUNTS),
                         "allowed_lateness_minutes": {wl.key: wl.lateness_min
                                                      for wl in raw["workloads"]},
                         "rate_per_hour": RATE, "users": USERS,
                         "windows": WINDOWS_SQL.strip(), "pattern": PATTERN_SQL,
                         "rules": "bench/rules_bench.py SEED_RULES_SQL, POLICY_SQL"}
    out["target_p_over_a"] = TARGET_P_A
    out["verified"] = verified
    out["seconds"] = round(raw["seconds"], 1)
    return out


# -- report -----------------------------------------------------------------------------------

def print_report(s: dict, heading, subheading, print_table) -> None:
    p = s["parameters"]
    heading("Full fraud profile on the insert path")
    print(f"One stream: 2 windows (per user 5 min sliding 1 min: count, sum; global 1-min "
          f"count), the seed's\n4 rules and policy (alerts at high, block at 0.9), pattern "
          f"burst3 (a{{3}} within 10 minutes, a: amount\n> 1000), one consumer queueing every "
          f"alert. {p['rows']:,} rows per batch workload, {p['single_rows']:,} per single-row"
          f"\nworkload ({p['users']:,} users, {p['rate_per_hour']:,.0f} transactions per hour "
          f"of event time); median of {p['repeat']} run(s);\nvariants interleaved; fresh "
          f"table per run.")
    subheading("Throughput: (a) plain, (p) full profile, (g) seed's per-row rule trigger")
    rows = []
    for w in s["workloads"].values():
        v = w["variants"]
        rows.append((w["title"], round(v["a"]["median_events_per_second"]),
                     round(v["p"]["median_events_per_second"]),
                     round(v["g"]["median_events_per_second"]), w["ratio_p_a"],
                     w["paired_ratio_p_a"],
                     f">= {TARGET_P_A}: " + ("met" if w["target_p_a_met"] else "NOT met"),
                     w["ratio_p_g"], w["paired_ratio_p_g"],
                     v["p"].get("median_ingest_micros_per_event"),
                     w["allowed_lateness_minutes"], v["p"].get("late_events"),
                     v["p"].get("pattern_late")))
    print_table(["workload", "(a) ev/s", "(p) ev/s", "(g) ev/s", "p/a", "paired p/a", "target",
                 "p/g", "paired p/g", "(p) fn µs/event", "lateness min", "late",
                 "late to pattern"], rows)
    print("p/a, p/g: median events/s over median events/s; paired: median of the per-repeat "
          "ratios. fn µs/event:\ncep.stream_stats.ingest_micros_per_event over the timed "
          "inserts (time inside the ingest function,\nsummed over the clients, so it includes "
          "waiting for other clients' key locks). (g) runs the seed's\nrules only, per row; "
          "the seed computed its windows and statistics by batch queries. late: events\nlate to "
          "the stream (max over the runs); late to pattern: events behind their key's progress "
          "in the\npattern (median).")

    subheading("Single-row INSERT latency (ms per statement, all clients' statements)")
    rows = []
    for w in s["workloads"].values():
        if w["batch"]:
            continue
        for k, e in w["variants"].items():
            if k in ("a", "p", "g", "b"):
                rows.append((w["title"] if k == "a" else "", e["variant"], e["latency_ms_p50"],
                             e["latency_ms_p99"], round(e["median_events_per_second"])))
    print_table(["workload", "variant", "p50 ms", "p99 ms", "events/s"], rows)
    rows = []
    for w in s["workloads"].values():
        if w["batch"]:
            rows.append((w["title"], w["variants"]["a"]["latency_ms_p50"],
                         w["variants"]["a"]["latency_ms_p99"],
                         w["variants"]["p"]["latency_ms_p50"],
                         w["variants"]["p"]["latency_ms_p99"]))
    print("\n1000-row batches, ms per statement:")
    print_table(["workload", "(a) p50", "(a) p99", "(p) p50", "(p) p99"], rows)

    subheading("Where the time goes inside the ingest function (µs per event, 2 clients)")
    rows = []
    for b in s["breakdown"].values():
        i, a, sh = b["ingest_micros_per_event"], b["above_b"], b["share_of_full"]
        rows.append((b["title"], i["b"], a["w"], a["r"], a["m"], b["sum_of_parts_above_b"],
                     i["p"], f"{100 * (sh['w'] or 0):.0f}/{100 * (sh['r'] or 0):.0f}/"
                     f"{100 * (sh['m'] or 0):.0f}/{100 * (b['base_share_of_full'] or 0):.0f}%"))
    print_table(["workload", "stream (b)", "windows", "rules", "pattern", "sum", "all (p)",
                 "share w/r/m/b"], rows)
    print("(b): stream bookkeeping and the consumer; windows, rules, pattern: each feature "
          "alone, minus (b)\n(paired per repeat); sum: of the three; all: the full profile "
          "(p). Shares: of (p)'s time.")
    for prof in s["function_profiles"].values():
        print(f"\nFunctions of the full profile, {prof['workload']} (one run with "
              f"track_functions = 'all'; µs per event):")
        rows = [(f["function"], f["calls"], f["self_micros_per_event"],
                 f["total_micros_per_event"], f["role"])
                for f in prof["functions"][:6]]
        print_table(["function", "calls", "self µs/event", "total µs/event", "role"], rows)
    rows = []
    for b in s["breakdown"].values():
        wm = b["wall_micros_per_event"]
        rows.append((b["title"], *[wm[k] for k in ("a", "b", "w", "r", "m", "p", "g")]))
    print("\nWall time per event (µs, elapsed / events, all clients together):")
    print_table(["workload", "(a)", "(b)", "(w)", "(r)", "(m)", "(p)", "(g)"], rows)

    subheading("Output of the full profile (median per run; warm-up rows included)")
    rows = []
    for w in s["workloads"].values():
        e = w["variants"]["p"]
        rows.append((w["title"], e.get("assessments"), e.get("alerts"), e.get("blocked"),
                     e.get("matches"), e.get("alerts_total")))
    print_table(["workload", "assessments", "rule alerts", "blocked", "burst3 matches",
                 "alerts (all)"], rows)

    subheading("Correctness guard")
    rows = []
    for w in s["workloads"].values():
        for k, e in w["variants"].items():
            for name, res in (e.get("checks_last_run") or {}).items():
                failed = [f[len(name) + 2:] for f in e["failed_checks"]
                          if f.startswith(name + ":")]
                rows.append((w["title"], k, name, "; ".join(failed) if failed else
                             res if res.startswith("skipped") else "ok (every run)"))
    print_table(["workload", "variant", "check", "result"], rows)
    if not s["verified"]:
        print("\nFRAUD PROFILE CORRECTNESS GUARD FAILED (see above).")


def add_to_json(path, summary: dict) -> None:
    import json
    doc = json.loads(path.read_text())
    doc["fraud"] = summary
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main_only(args, base) -> int:
    """--fraud-only: this part alone, in its own throwaway cluster."""
    import platform
    t_start = time.perf_counter()
    base.heading("pg_cep benchmark: full fraud profile only")
    with base.throwaway_cluster(base.CLUSTER_SETTINGS, label="Bench cluster") as cluster:
        with cluster.connect() as conn:
            version = base.server_version(conn)
        meta = {"postgresql": version, "cpus": base.cpu_count(),
                "python": platform.python_version(), "psycopg": psycopg.__version__,
                "machine": platform.machine()}
        print(f"PostgreSQL {version} on {meta['cpus']} CPU(s).")
        base.subheading("Runs: fraud profile")
        raw = run(cluster, args, base)
    summary = summarize(raw, args)
    print_report(summary, base.heading, base.subheading, base.print_table)
    out = base.write_json(None, args, meta, None)
    add_to_json(out, summary)
    print(f"\nWrote {out.relative_to(base.HERE.parent)}. "
          f"Total bench time {time.perf_counter() - t_start:.0f} s.")
    print("Targets are reported, not enforced: timings never change the exit code.")
    if not summary["verified"]:
        print("Fraud profile correctness guard failed: exit code 1.", file=__import__("sys").stderr)
        return 1
    return 0
