"""Second part of `make bench`: alert delivery (imported by bench/run_bench.py).

1. Poll + ack throughput. A stream `ev` (table ev, empty) and one consumer; N alerts raised with
   the internal set-based cep._raise_alerts in statements of RAISE_CHUNK alerts (untimed); then
   the consumer drains them in batches of --alert-batch, one transaction per batch:
       SELECT alert_id FROM cep.poll_alerts(consumer, batch); SELECT cep.ack_alerts(consumer, ids);
       COMMIT
   timed from the first poll to the poll that finds nothing. Once with 1 worker (consumer
   'bench'), once with 2 worker threads sharing consumer 'bench2' (each its own connection).
   Verified: the alerts received equal N, none was received twice, cep.consumer_stats shows
   pending 0.

2. Cost of raising alerts on ingest. The insert part's 1000-row batch workload (same data,
   2 clients) into (b) the stream and (e) the same stream with a second AFTER INSERT ...
   REFERENCING NEW TABLE ... FOR EACH STATEMENT trigger that raises an alert for 1% of the
   events (id % 100 = 0) through cep._raise_alerts, with one consumer, so each alert is also
   queued. There are no rules yet: this trigger emulates the rule path through the same
   internal function. Reported: e/b and the alerts raised.

Timings are reported, never enforced; a failed verification (a correctness check, not a
timing) makes the run exit non-zero after the results are written.
"""

from __future__ import annotations

import statistics
import threading
import time

import psycopg

DRAIN_DB = "bench_alerts"
RAISE_CHUNK = 10_000             # alerts per cep._raise_alerts statement
DRAIN_RUNS = [(1, "bench"), (2, "bench2")]   # (worker threads, consumer name)
TARGET_ALERTS_PER_SECOND = 20_000            # poll + ack, from the issue
TARGET_E_OVER_B = 0.9                        # raising alerts costs ingest at most 10%
ALERT_CONSUMER = "ingest_bench"              # the one consumer of variant (e)

EMULATION_NOTE = (
    "(e) is an EMULATION of the rule path: there are no rules yet, so a second trigger on the "
    "table,\nAFTER INSERT ... REFERENCING NEW TABLE AS nr FOR EACH STATEMENT (it fires after "
    "pg_cep's\ncep_stream_ingest), calls the internal function rules will call, only when the "
    "array is not NULL:\n  cep._raise_alerts(stream_id, (SELECT array_agg(ROW('rule', "
    "'one_percent', 'transactions',\n      n.user_id::text, n.id, 'high', 0.5, 'sampled "
    "alert', NULL)::cep.alert_draft)\n    FROM nr AS n WHERE n.id % 100 = 0))\n"
    f"One consumer ('{ALERT_CONSUMER}') exists, so every alert is also queued for it.")

# -- part 1: poll + ack -----------------------------------------------------------------------

DRAIN_SETUP_SQL = """
CREATE EXTENSION pg_cep;
CREATE TABLE ev (id bigint PRIMARY KEY, k int, t timestamptz);
"""

RAISE_SQL = ("SELECT cep._raise_alerts(%s, (SELECT array_agg(ROW('rule', 'bench', 'ev', "
             "(g %% 1000)::text, g, 'high', 0.5, 'message', NULL)::cep.alert_draft) "
             "FROM generate_series(%s::bigint, %s::bigint) AS g))")
POLL_SQL = "SELECT alert_id FROM cep.poll_alerts(%s, %s)"
ACK_SQL = "SELECT cep.ack_alerts(%s, %s::bigint[])"
STATS_SQL = ("SELECT pending, in_flight, delivered, redelivered, acked "
             "FROM cep.consumer_stats WHERE consumer = %s")

# -- part 2: variant (e) ----------------------------------------------------------------------

# The emulated rule: created once in the (e) database. TG_ARGV: stream id, stream name (a
# generated rule section would have both as constants).
ALERTING_FUNCTION_SQL = """
CREATE FUNCTION bench_one_percent_rule() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_drafts cep.alert_draft[];
BEGIN
    SELECT array_agg(ROW('rule', 'one_percent', TG_ARGV[1], n.user_id::text, n.id, 'high', 0.5,
                         'sampled alert', NULL)::cep.alert_draft)
    INTO v_drafts
    FROM nr AS n
    WHERE n.id % 100 = 0;
    IF v_drafts IS NOT NULL THEN
        PERFORM cep._raise_alerts(TG_ARGV[0]::integer, v_drafts);
    END IF;
    RETURN NULL;
END
$$;
"""


def alerting_setup_sql(allowed_lateness: str) -> str:
    """Variant (e), after the fresh table exists: the stream, then the emulated rule trigger
    (its name sorts after cep_stream_ingest, so it fires second, as a rule section would)."""
    return f"""
DO $setup$
DECLARE
    v_id integer := cep.create_stream('transactions', 'transactions', 'created_at',
        key_column => 'user_id', allowed_lateness => '{allowed_lateness}');
BEGIN
    EXECUTE format('CREATE TRIGGER zz_bench_one_percent_rule AFTER INSERT ON transactions '
                   'REFERENCING NEW TABLE AS nr FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bench_one_percent_rule(%s, %L)', v_id, 'transactions');
END
$setup$;
"""


ALERTING_TEARDOWN_SQL = """
SELECT cep.drop_stream(name) FROM cep.streams WHERE name = 'transactions';
TRUNCATE cep.alerts, cep.consumer_pending, cep.consumer_log;
"""


# -- setup ------------------------------------------------------------------------------------

def setup_databases(cluster, alerting_database: str) -> int:
    """Create the poll + ack database; create the (e) function and consumer. Returns the id of
    stream ev."""
    cluster.create_database(DRAIN_DB)
    with cluster.connect(DRAIN_DB) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute(DRAIN_SETUP_SQL)
        stream_id = conn.execute(
            "SELECT cep.create_stream('ev', 'ev', 't', 'k')").fetchone()[0]
    with cluster.connect(alerting_database) as conn:
        conn.execute(ALERTING_FUNCTION_SQL)
        conn.execute("SELECT cep.create_consumer(%s)", (ALERT_CONSUMER,))
    return stream_id


# -- part 1 -----------------------------------------------------------------------------------

def _drain_worker(dsn: str, consumer: str, batch: int, ready: threading.Barrier,
                  got: list, out: dict, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=False) as conn:
            conn.execute("SELECT 1")
            conn.commit()
            ready.wait()
            batches = 0
            while True:
                ids = [r[0] for r in conn.execute(POLL_SQL, (consumer, batch))]
                if not ids:
                    conn.commit()
                    break
                conn.execute(ACK_SQL, (consumer, ids))
                conn.commit()
                got.extend(ids)
                batches += 1
            out["done"] = time.perf_counter()
            out["batches"] = batches
            out["received"] = len(got)
    except BaseException as exc:
        errors.append(exc)
        ready.abort()


def measure_drain(cluster, stream_id: int, n: int, batch: int, workers: int,
                  consumer: str) -> dict:
    """Raise n alerts for a fresh consumer, then time `workers` threads draining them."""
    with cluster.connect(DRAIN_DB) as admin:
        admin.execute("SET client_min_messages = warning")
        # Fresh state for every run: no consumer, no alerts, then only this run's consumer.
        admin.execute("SELECT cep.drop_consumer(name) FROM cep.consumers")
        admin.execute("TRUNCATE cep.alerts, cep.consumer_pending, cep.consumer_log")
        admin.execute("SELECT cep.create_consumer(%s)", (consumer,))
        t = time.perf_counter()
        raised = 0
        for lo in range(1, n + 1, RAISE_CHUNK):
            hi = min(n, lo + RAISE_CHUNK - 1)
            raised += admin.execute(RAISE_SQL, (stream_id, lo, hi)).fetchone()[0]
        raise_seconds = time.perf_counter() - t
        if raised != n:
            raise RuntimeError(f"cep._raise_alerts raised {raised} alerts, expected {n}")
        admin.execute("VACUUM ANALYZE cep.alerts, cep.consumer_pending, cep.consumer_log")
        admin.execute("CHECKPOINT")

        dsn = cluster.dsn(DRAIN_DB)
        ready = threading.Barrier(workers + 1)
        received: list[list[int]] = [[] for _ in range(workers)]
        outs: list[dict] = [{} for _ in range(workers)]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_drain_worker, daemon=True,
                                    args=(dsn, consumer, batch, ready, received[i], outs[i],
                                          errors)) for i in range(workers)]
        for th in threads:
            th.start()
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"draining consumer {consumer}: {errors[0]}") from errors[0]
        seconds = max(o["done"] for o in outs) - t0

        all_ids = [i for ids in received for i in ids]
        pending, in_flight, delivered, redelivered, acked = admin.execute(
            STATS_SQL, (consumer,)).fetchone()
        checks = {
            "drained_equals_n": len(all_ids) == n,
            "none_received_twice": len(set(all_ids)) == len(all_ids),
            "consumer_stats_pending_0": pending == 0,
        }
    return {
        "workers": workers,
        "consumer": consumer,
        "alerts": n,
        "seconds": seconds,
        "alerts_per_second": n / seconds,
        "received": len(all_ids),
        "distinct_received": len(set(all_ids)),
        "received_per_worker": [len(ids) for ids in received],
        "batches": sum(o["batches"] for o in outs),
        "consumer_stats": {"pending": pending, "in_flight": in_flight, "delivered": delivered,
                           "redelivered": redelivered, "acked": acked},
        "raise_seconds": raise_seconds,
        "checks": checks,
    }


def run_drain(cluster, stream_id: int, n: int, batch: int, repeat: int) -> dict:
    runs: dict[int, list[dict]] = {w: [] for w, _ in DRAIN_RUNS}
    for r in range(repeat):
        order = DRAIN_RUNS if r % 2 == 0 else DRAIN_RUNS[::-1]
        for workers, consumer in order:
            m = measure_drain(cluster, stream_id, n, batch, workers, consumer)
            runs[workers].append(m)
            ok = "ok" if all(m["checks"].values()) else "CHECK FAILED"
            print(f"  run {r + 1}/{repeat}  poll + ack, {workers} worker(s), consumer "
                  f"{consumer:<7} {m['alerts_per_second']:>10,.0f} alerts/s  "
                  f"({m['seconds']:5.2f} s, {m['batches']} batches; raised at "
                  f"{n / m['raise_seconds']:,.0f} alerts/s)  {ok}", flush=True)
    # Leave nothing for autovacuum to chew on while the ingest-cost runs are timed.
    with cluster.connect(DRAIN_DB) as admin:
        admin.execute("TRUNCATE cep.alerts, cep.consumer_pending, cep.consumer_log")
    return runs


# -- part 2 -----------------------------------------------------------------------------------

def run_ingest_cost(cluster, measure, variants: list, wl, repeat: int) -> dict:
    """variants: [(b), (e)]; measure(cluster, variant, workload) -> Measurement."""
    results = {v.key: [] for v in variants}
    t = time.perf_counter()
    for v in variants:
        measure(cluster, v, wl)
    print(f"  warm-up round ({wl.title}, (b) and (e), untimed): "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    width = max(len(v.name) for v in variants)
    for r in range(repeat):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            m = measure(cluster, v, wl)
            results[v.key].append(m)
            note = ""
            if "alerts_raised" in m.extra:
                note = (f"  {m.extra['alerts_raised']:,} alerts raised "
                        f"({100 * m.extra['alerts_raised'] / wl.rows:.2f}% of rows)")
            print(f"  run {r + 1}/{repeat}  {wl.title:<23} {v.name:<{width}} "
                  f"{m.eps:>10,.0f} events/s  ({m.seconds:5.2f} s){note}", flush=True)
    return results


# -- report -----------------------------------------------------------------------------------

def _r(x, nd=3):
    return round(x, nd) if isinstance(x, float) else x


def summarize(drain: dict, ingest: dict, variants: list, wl, args) -> dict:
    poll_ack = {}
    for workers, consumer in DRAIN_RUNS:
        runs = drain[workers]
        med = statistics.median(m["alerts_per_second"] for m in runs)
        poll_ack[str(workers)] = {
            "workers": workers,
            "consumer": consumer,
            "runs": [{k: ({kk: _r(vv) for kk, vv in v.items()} if isinstance(v, dict) else _r(v))
                      for k, v in m.items()} for m in runs],
            "runs_alerts_per_second": [round(m["alerts_per_second"], 1) for m in runs],
            "median_alerts_per_second": round(med, 1),
            "median_seconds": round(statistics.median(m["seconds"] for m in runs), 3),
            "median_raise_alerts_per_second": round(statistics.median(
                args.alerts / m["raise_seconds"] for m in runs), 1),
            "verified": all(all(m["checks"].values()) for m in runs),
            "target_alerts_per_second": TARGET_ALERTS_PER_SECOND,
            "target_met": med >= TARGET_ALERTS_PER_SECOND,
        }

    per = {}
    for v in variants:
        runs = ingest[v.key]
        entry = {
            "variant": v.name,
            "runs": [{"events_per_second": round(m.eps, 1), "seconds": round(m.seconds, 3),
                      **{k: _r(x) for k, x in m.extra.items()}} for m in runs],
            "runs_events_per_second": [round(m.eps, 1) for m in runs],
            "median_events_per_second": round(statistics.median(m.eps for m in runs), 1),
            "median_seconds": round(statistics.median(m.seconds for m in runs), 3),
        }
        per[v.key] = entry
    b, e = variants[0].key, variants[1].key
    ratio = per[e]["median_events_per_second"] / per[b]["median_events_per_second"]
    paired = statistics.median(x.eps / y.eps for x, y in zip(ingest[e], ingest[b]))
    e_runs = ingest[e]
    raised = [m.extra["alerts_raised"] for m in e_runs]
    ingest_cost = {
        "title": wl.title,
        "rows": wl.rows,
        "clients": 2,
        "variants": per,
        "ratio_e_b": round(ratio, 3),
        "paired_ratio_e_b": round(paired, 3),
        "target_e_b": TARGET_E_OVER_B,
        "target_met": ratio >= TARGET_E_OVER_B,
        "median_alerts_raised": round(statistics.median(raised)),
        "alerts_raised_fraction_of_rows": round(statistics.median(raised) / wl.rows, 5),
        "verified": all(m.extra["alerts_check"] for m in e_runs),
        "emulation": ("no rules exist yet: (e) raises alerts for 1% of events (id % 100 = 0) "
                      "from a second AFTER INSERT ... REFERENCING NEW TABLE FOR EACH STATEMENT "
                      "trigger calling cep._raise_alerts, the internal function rules will "
                      "call; one consumer, so each alert is also queued"),
    }
    return {
        "parameters": {"alerts": args.alerts, "poll_batch": args.alert_batch,
                       "raise_statement_alerts": RAISE_CHUNK, "repeat": args.repeat,
                       "ingest_rows": wl.rows},
        "targets": {"poll_ack_alerts_per_second": TARGET_ALERTS_PER_SECOND,
                    "ingest_e_over_b": TARGET_E_OVER_B},
        "poll_ack": poll_ack,
        "ingest_cost": ingest_cost,
        "verified": (all(p["verified"] for p in poll_ack.values())
                     and ingest_cost["verified"]),
    }


def print_report(s: dict, heading, subheading, print_table) -> None:
    p = s["parameters"]
    heading("Alert delivery")

    subheading(f"Poll + ack throughput: {p['alerts']:,} alerts, batches of {p['poll_batch']}, "
               "one transaction per batch")
    print(f"Alerts raised (untimed) with cep._raise_alerts, {p['raise_statement_alerts']:,} per "
          "statement, then VACUUM ANALYZE\nand CHECKPOINT. Each batch, one transaction: SELECT "
          "alert_id FROM cep.poll_alerts(consumer, batch);\nSELECT cep.ack_alerts(consumer, "
          "ids); COMMIT. Timed from the first poll to the poll that returns\nnothing; fresh "
          f"consumer and alerts per run; median of {p['repeat']} run(s).")
    rows = []
    for x in s["poll_ack"].values():
        target = f">= {x['target_alerts_per_second']:,} alerts/s"
        rows.append((x["workers"], x["consumer"], round(x["median_alerts_per_second"]),
                     x["median_seconds"], target, "met" if x["target_met"] else "NOT met",
                     " ".join(f"{r:,.0f}" for r in x["runs_alerts_per_second"])))
    print_table(["workers", "consumer", "alerts/s", "seconds", "target", "",
                 "all runs (alerts/s)"], rows)
    rows = []
    for x in s["poll_ack"].values():
        last = x["runs"][-1]
        st = last["consumer_stats"]
        rows.append((x["workers"], f"{last['received']:,} of {p['alerts']:,}",
                     last["received"] - last["distinct_received"], st["pending"],
                     st["delivered"], st["redelivered"], st["acked"],
                     " + ".join(f"{k:,}" for k in last["received_per_worker"]),
                     "ok" if x["verified"] else "FAILED"))
    print("\nVerification (last run shown; 'checks' covers every run): all alerts drained, "
          "none received\ntwice, cep.consumer_stats pending 0.")
    print_table(["workers", "received", "received twice", "pending", "delivered",
                 "redelivered", "acked", "per worker", "checks"], rows)

    c = s["ingest_cost"]
    subheading(f"Cost of raising alerts on ingest: {c['title']}, {c['clients']} clients, "
               f"{c['rows']:,} rows")
    rows = []
    for k, e in c["variants"].items():
        if k == "e":
            ratio, paired = c["ratio_e_b"], c["paired_ratio_e_b"]
            target = f"e/b >= {c['target_e_b']:.2f}"
            verdict = "met" if c["target_met"] else "NOT met"
        else:
            ratio, paired, target, verdict = None, None, "", ""
        rows.append((e["variant"], round(e["median_events_per_second"]), ratio, paired, target,
                     verdict, " ".join(f"{x:,.0f}" for x in e["runs_events_per_second"])))
    print_table(["variant", "events/s", "ratio to (b)", "paired", "target", "",
                 "all runs (events/s)"], rows)
    print("ratio to (b): median events/s of (e) / median of (b); the target verdict uses it."
          "\npaired: median over the repeats of the ratio between runs of the same repeat.")
    print(EMULATION_NOTE)
    e_runs = c["variants"]["e"]["runs"]
    print(f"\nAlerts raised by (e) during the timed inserts: median "
          f"{c['median_alerts_raised']:,} = {100 * c['alerts_raised_fraction_of_rows']:.2f}% "
          f"of {c['rows']:,} rows (expected ~1%).")
    print_table(["run", "alerts raised (timed)", "% of rows", "alerts incl. warm-up",
                 "queued for consumer", "rows with id % 100 = 0", "checks"],
                [(i + 1, r["alerts_raised"], round(100 * r["alerts_raised"] / c["rows"], 2),
                  r["alerts_total"], r["alerts_queued"], r["rows_id_mod_100"],
                  "ok" if r["alerts_check"] else "FAILED") for i, r in enumerate(e_runs)])
    print("checks: alerts stored = rows with id % 100 = 0 = alerts queued for the consumer.")
    if not s["verified"]:
        print("\nALERT DELIVERY VERIFICATION FAILED (see the checks above).")
