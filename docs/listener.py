"""A durable pg_cep alert listener with psycopg 3 (the README's recipe; tests/test_consumers.py
runs it). NOTIFY only says "poll now": the loop also polls on a timeout, so an alert raised
while it was disconnected, or whose notification was dropped, is still processed. Each batch
is handled and acknowledged in one transaction, so a crash re-delivers, never loses."""

from __future__ import annotations

from typing import Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row


def run_listener(dsn: str, consumer: str, handle: Callable[[psycopg.Connection, list[dict]], None],
                 channel: str = "cep_alerts", batch: int = 500, idle_wait: float = 5.0,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
    listen = psycopg.connect(dsn, autocommit=True)
    work = psycopg.connect(dsn, row_factory=dict_row)
    try:
        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        while not should_stop():
            while True:  # drain everything that is pending
                with work.transaction():
                    alerts = work.execute("SELECT * FROM cep.poll_alerts(%s, %s)",
                                          (consumer, batch)).fetchall()
                    if alerts:
                        handle(work, alerts)  # the application's own work, same transaction
                        work.execute("SELECT cep.ack_alerts(%s, %s)",
                                     (consumer, [a["alert_id"] for a in alerts]))
                if len(alerts) < batch:
                    break
            # Sleep until the doorbell rings or the timeout passes, then poll again.
            for _ in listen.notifies(timeout=idle_wait, stop_after=1):
                pass
    finally:
        listen.close()
        work.close()
