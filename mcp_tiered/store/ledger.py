"""The ledger in the store: the same writer as SQLite's (accounting.ledger.Ledger: a queue, one thread that
commits what has queued up in one transaction, the answer held until its row is committed), writing to
PostgreSQL over a connection of its own. When the database cannot be reached the rows stay in memory (bounded)
and go out with the next call or every RETRY_S, and the server keeps answering; a server that starts while
the database is down starts all the same, and writes when it comes up.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psycopg
import structlog

from ..accounting.ledger import CALLS, HOPS, CallRecord, Ledger, _Values
from ..errors import ConfigError
from .connect import UNREACHABLE, reason
from .runtime import Store

log = structlog.get_logger(__name__)

_INSERT_CALL = (f"INSERT INTO calls ({', '.join(CALLS.names)}) VALUES ({', '.join(['%s'] * len(CALLS.names))}) "
                "RETURNING id")
_INSERT_HOP = f"INSERT INTO hops ({', '.join(HOPS.names)}) VALUES ({', '.join(['%s'] * len(HOPS.names))})"
_CALL_VALUES, _HOP_VALUES = CALLS.values, HOPS.values


class StoreLedger(Ledger):
    file_errors = (*UNREACHABLE, ConfigError)
    data_errors = (psycopg.DataError, psycopg.IntegrityError, OverflowError, ValueError, TypeError)
    RETRY_S = 2.0

    def __init__(self, store: Store, keep_days: float | None = None):
        self.store = store
        self.path = store.where  # type: ignore[assignment]  (how the log names the ledger)
        self._next_try = 0.0
        self._start(keep_days, store.instance)

    @property
    def source(self) -> Any:
        return self.store

    def _open(self) -> None:
        """At startup: a store that cannot be reached is said once and written when it is back; one that is
        no store of this version (ConfigError) stops the server."""
        try:
            self._conn = self.store.connect()
        except UNREACHABLE as exc:
            log.error("store_unreachable", store=self.store.where, error=reason(exc),
                      action="serving; the ledger's rows are kept in memory until the store is reachable")
            self._conn = None

    def _ensure_open(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = None
            self._conn = self.store.connect()

    def _note_shm_size(self) -> None:
        pass

    def _write(self, batch: list[CallRecord]) -> tuple[list[CallRecord], list[CallRecord]]:
        """While the store is down, rows are kept without another try until RETRY_S has passed: a database cut
        off behind a firewall would otherwise hold every answer for a connect timeout."""
        if self._failure is not None and time.monotonic() < self._next_try:
            return batch, []
        return super()._write(batch)

    def _failed(self, exc: Exception, kept: int) -> None:
        self._next_try = time.monotonic() + self.RETRY_S
        super()._failed(exc, kept)

    def _prune(self, before: float) -> int:
        with self._conn.transaction():
            self._conn.execute("DELETE FROM hops WHERE time < %s", (before,))
            return self._conn.execute("DELETE FROM calls WHERE time < %s", (before,)).rowcount

    def _insert_rows(self, batch: list[CallRecord]) -> Counter[str]:
        conn = self._conn
        replaced: Counter[str] = Counter()
        with conn.transaction():
            for call in batch:
                values = _Values()
                row, hops = call.rows(values, self.instance)
                call_id = conn.execute(_INSERT_CALL, _CALL_VALUES(row)).fetchone()[0]
                for hop in hops:
                    hop["call_id"] = call_id
                if hops:
                    conn.cursor().executemany(_INSERT_HOP, [_HOP_VALUES(hop) for hop in hops])
                replaced.update(values.replaced)
        return replaced
