"""Deterministic synthetic workloads for the demo and the benchmark.

Two event streams, generated with numpy from a fixed seed (only the absolute time base moves
with the wall clock, because stream event times must lie in the recent past):

* transactions(user_id, amount, location, status, created_at) -- the card-fraud use case: a
  few thousand users with skewed (log-normal) activity, a diurnal profile, home cities with
  occasional travel, and a few fraudsters whose compromised accounts show bursts of many
  transactions at night, large amounts and a different city on nearly every transaction.
* clickstream(user_id, item_id, action, created_at) -- browsing sessions over a catalogue of
  items grouped in clusters of related items (users mostly browse their favourite clusters).

Events come in *arrival order*; `created_at` (event time) is the arrival time minus a small
transport delay, so event times are slightly out of order, and a few deliberately late events
carry a delay of tens of minutes to hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

US = 1_000_000  # microseconds per second

CITIES = [
    "Berlin", "London", "Paris", "Madrid", "Rome", "Amsterdam", "Vienna", "Prague", "Warsaw",
    "Stockholm", "Oslo", "Copenhagen", "Helsinki", "Dublin", "Lisbon", "Brussels", "Zurich",
    "Munich", "Hamburg", "Milan", "Barcelona", "Athens", "Budapest", "Bucharest", "Sofia",
    "Istanbul", "New York", "Chicago", "Toronto", "Sao Paulo", "Mexico City", "Lagos",
    "Cairo", "Dubai", "Mumbai", "Singapore", "Hong Kong", "Tokyo", "Seoul", "Sydney",
]
ACTIONS = ["view", "like", "share", "purchase"]
ACTION_P = [0.72, 0.14, 0.05, 0.09]


@dataclass
class EventBatch:
    """One stream's events in arrival order, as column arrays, plus facts for the report."""
    table: str
    columns: list[str]
    data: dict[str, np.ndarray]
    created_at_us: np.ndarray          # event time, microseconds since the Unix epoch (UTC)
    facts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.created_at_us)

    # -- rendering (done before any timing) --------------------------------------------------
    def timestamps(self) -> list[str]:
        iso = np.datetime_as_string(self.created_at_us.astype("datetime64[us]"), unit="us")
        return [s + "+00" for s in iso.tolist()]

    def text_columns(self) -> list[list[str]]:
        """Every column as a list of PostgreSQL text literals, in self.columns order."""
        out = []
        for c in self.columns:
            if c == "created_at":
                out.append(self.timestamps())
            elif c == "amount":
                out.append([f"{a:.2f}" for a in self.data[c].tolist()])
            else:
                out.append([str(v) for v in self.data[c].tolist()])
        return out

    def copy_lines(self) -> list[str]:
        """One COPY text-format line per event (no escaping needed: values have no tabs)."""
        return ["\t".join(r) for r in zip(*self.text_columns())]

    def value_rows(self) -> list[tuple]:
        """One parameter tuple per event: ints as int, everything else as text literals."""
        cols = self.text_columns()
        for i, c in enumerate(self.columns):
            if self.data.get(c) is not None and self.data[c].dtype.kind in "iu":
                cols[i] = self.data[c].tolist()
        return list(zip(*cols))


def _diurnal_times(rng: np.random.Generator, n: int, start_us: int, end_us: int,
                   night: bool = False) -> np.ndarray:
    """n event times in [start_us, end_us) following a daily activity profile (UTC hours).

    Daytime traffic peaks in the afternoon; with night=True the times fall (mostly) between
    22:00 and 06:00 UTC instead.
    """
    minute = 60 * US
    n_bins = max(1, (end_us - start_us) // minute)
    bin_start = start_us + np.arange(n_bins, dtype=np.int64) * minute
    hour = (bin_start // (3600 * US)) % 24
    if night:
        w = np.where((hour >= 22) | (hour < 6), 1.0, 0.03)
    else:
        w = (0.12 + np.exp(-((hour - 14.0) / 4.5) ** 2)
             + 0.4 * np.exp(-((hour - 20.5) / 1.5) ** 2))
    bins = rng.choice(n_bins, size=n, p=w / w.sum())
    t = bin_start[bins] + rng.integers(0, minute, size=n)
    return np.minimum(t, end_us - 1)


def _zipf_p(k: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** s
    return p / p.sum()


def _arrival_order(rng, arrival_us, late_fraction, min_late_us, max_late_us, jitter_us):
    """Event times from arrival times: transport jitter, plus a few deliberately late events."""
    n = len(arrival_us)
    delay = rng.exponential(jitter_us, size=n).astype(np.int64)
    n_late = int(round(n * late_fraction))
    late_idx = np.array([], dtype=np.int64)
    if n_late:
        # Late events only in the second half, so there is a watermark for them to be behind.
        late_idx = rng.choice(np.arange(n // 2, n), size=n_late, replace=False)
        delay[late_idx] = rng.integers(min_late_us, max_late_us, size=n_late)
    return arrival_us - delay, n_late


def transactions(n: int, seed: int, now_us: int, span_hours: float = 24.0,
                 n_users: int = 5000, n_fraudsters: int = 25, late_fraction: float = 0.0005,
                 table: str = "transactions") -> EventBatch:
    """n card transactions over the last span_hours, arrival-ordered."""
    rng = np.random.default_rng(seed)
    end = now_us - 5 * US
    start = end - int(span_hours * 3600 * US)
    n_cities = len(CITIES)

    # Fraudsters: compromised accounts with night-time bursts (about 2% of all events).
    n_fraudsters = min(n_fraudsters, max(1, n_users // 50))
    fr_users = rng.choice(np.arange(1, n_users + 1), size=n_fraudsters, replace=False)
    bursts = rng.integers(2, 5, size=n_fraudsters)
    burst_user = np.repeat(fr_users, bursts)
    n_bursts = len(burst_user)
    burst_len = rng.integers(12, 40, size=n_bursts)
    budget = max(n_bursts, int(n * 0.02))
    if burst_len.sum() > budget:
        burst_len = np.maximum(1, (burst_len * budget // burst_len.sum()))
    burst_start = _diurnal_times(rng, n_bursts, start, end - 20 * 60 * US, night=True)
    burst_dur = rng.integers(3 * 60 * US, 15 * 60 * US, size=n_bursts)
    ev_burst = np.repeat(np.arange(n_bursts), burst_len)
    n_fraud = len(ev_burst)
    f_time = burst_start[ev_burst] + (rng.random(n_fraud) * burst_dur[ev_burst]).astype(np.int64)
    f_user = burst_user[ev_burst]
    kind = rng.choice(3, size=n_fraud, p=[0.3, 0.4, 0.3])  # card test / medium / large
    f_amount = np.select(
        [kind == 0, kind == 1],
        [rng.uniform(0.5, 5.0, n_fraud), rng.uniform(200.0, 2000.0, n_fraud)],
        rng.uniform(8000.0, 25000.0, n_fraud))
    f_loc = rng.integers(0, n_cities, size=n_fraud)        # a new city nearly every time
    f_status = np.where(rng.random(n_fraud) < 0.25, "declined", "ok")

    # Everyone else: skewed activity, daily rhythm, home city with some travel.
    n_norm = n - n_fraud
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    n_user = rng.choice(n_users, size=n_norm, p=activity / activity.sum()) + 1
    n_time = _diurnal_times(rng, n_norm, start, end)
    home = rng.choice(n_cities, size=n_users, p=_zipf_p(n_cities, 0.9))
    travel = rng.random(n_norm) < 0.04
    n_loc = np.where(travel, rng.integers(0, n_cities, size=n_norm), home[n_user - 1])
    n_amount = np.maximum(0.5, rng.lognormal(np.log(42.0), 0.95, size=n_norm))
    big = rng.random(n_norm) < 0.002
    n_amount = np.where(big, n_amount * rng.uniform(30, 150, size=n_norm), n_amount)
    n_status = np.where(rng.random(n_norm) < 0.015, "declined", "ok")

    arrival = np.concatenate([n_time, f_time])
    user = np.concatenate([n_user, f_user]).astype(np.int64)
    amount = np.round(np.concatenate([n_amount, f_amount]), 2)
    loc = np.concatenate([n_loc, f_loc])
    status = np.concatenate([n_status, f_status])
    is_fraud = np.concatenate([np.zeros(n_norm, bool), np.ones(n_fraud, bool)])

    order = np.argsort(arrival, kind="stable")
    arrival, user, amount, loc, status, is_fraud = (
        a[order] for a in (arrival, user, amount, loc, status, is_fraud))
    created, n_late = _arrival_order(rng, arrival, late_fraction,
                                     20 * 60 * US, 3 * 3600 * US, 1.5 * US)
    hour = (created // (3600 * US)) % 24
    night = (hour >= 22) | (hour < 6)
    facts = {
        "events": n,
        "users": n_users,
        "active users": int(len(np.unique(user))),
        "busiest user's events": int(np.bincount(user).max()),
        "fraudster accounts": n_fraudsters,
        "fraud bursts": n_bursts,
        "fraud events": n_fraud,
        "amounts > 10,000": int((amount > 10000).sum()),
        "night-time events (22-06 UTC)": int(night.sum()),
        "night-time share of fraud events": f"{night[is_fraud].mean():.0%}",
        "deliberately delayed events": n_late,
    }
    return EventBatch(
        table=table,
        columns=["user_id", "amount", "location", "status", "created_at"],
        data={"user_id": user, "amount": amount,
              "location": np.array(CITIES, dtype=object)[loc], "status": status},
        created_at_us=created, facts=facts)


def clickstream(n: int, seed: int, now_us: int, span_hours: float = 24.0,
                n_users: int = 3000, n_items: int = 400, cluster_size: int = 20,
                late_fraction: float = 0.0003, table: str = "clickstream") -> EventBatch:
    """n clickstream events in browsing sessions over the last span_hours, arrival-ordered."""
    rng = np.random.default_rng(seed + 1)
    end = now_us - 5 * US
    start = end - int(span_hours * 3600 * US)
    n_clusters = max(1, n_items // cluster_size)

    mean_len = 8
    n_sessions = int(n / mean_len * 1.2) + 10
    s_len = rng.geometric(1.0 / mean_len, size=n_sessions)
    while s_len.sum() < n:  # pragma: no cover - only for tiny n
        s_len = np.concatenate([s_len, rng.geometric(1.0 / mean_len, size=n_sessions)])
    cum = np.cumsum(s_len)
    n_sessions = int(np.searchsorted(cum, n)) + 1
    s_len = s_len[:n_sessions]
    s_len[-1] -= int(s_len.sum() - n)

    activity = rng.lognormal(0.0, 1.1, size=n_users)
    s_user = rng.choice(n_users, size=n_sessions, p=activity / activity.sum()) + 1
    favourite = rng.integers(0, n_clusters, size=(n_users, 2))
    s_cluster = np.where(rng.random(n_sessions) < 0.85,
                         favourite[s_user - 1, rng.integers(0, 2, size=n_sessions)],
                         rng.integers(0, n_clusters, size=n_sessions))
    s_start = _diurnal_times(rng, n_sessions, start, end - 5 * 60 * US)

    ev_sess = np.repeat(np.arange(n_sessions), s_len)
    gap = rng.exponential(25 * US, size=n).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(s_len)[:-1]])
    csum = np.cumsum(gap)
    offset = csum - csum[first][ev_sess]
    arrival = np.minimum(s_start[ev_sess] + offset, end - 1)
    item = (s_cluster[ev_sess] * cluster_size
            + rng.choice(cluster_size, size=n, p=_zipf_p(cluster_size, 1.1)))
    item_id = 1000 + (item % n_items)
    action = np.array(ACTIONS, dtype=object)[rng.choice(4, size=n, p=ACTION_P)]
    user = s_user[ev_sess].astype(np.int64)

    order = np.argsort(arrival, kind="stable")
    arrival, user, item_id, action = (a[order] for a in (arrival, user, item_id, action))
    created, n_late = _arrival_order(rng, arrival, late_fraction,
                                     20 * 60 * US, 3 * 3600 * US, 1.5 * US)
    facts = {
        "events": n,
        "users": n_users,
        "active users": int(len(np.unique(user))),
        "sessions": n_sessions,
        "items": n_items,
        "item clusters": n_clusters,
        "purchases": int((action == "purchase").sum()),
        "deliberately delayed events": n_late,
    }
    return EventBatch(
        table=table,
        columns=["user_id", "item_id", "action", "created_at"],
        data={"user_id": user, "item_id": item_id.astype(np.int64), "action": action},
        created_at_us=created, facts=facts)


def expected_late(created_at_us: np.ndarray, plan: list[tuple[str, int, int]],
                  lateness_us: int) -> int:
    """How many events a stream should count as late when the batches of plan arrive in order:
    an event is late when older than max(event time of earlier statements) - lateness."""
    late = 0
    top = None
    for _, lo, hi in plan:
        chunk = created_at_us[lo:hi]
        if top is not None:
            late += int((chunk < top - lateness_us).sum())
        m = int(chunk.max())
        top = m if top is None else max(top, m)
    return late
