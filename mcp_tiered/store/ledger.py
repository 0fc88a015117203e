"""The ledger in the store: the same writer as SQLite's (accounting.ledger.Ledger: a queue, one thread that
commits what has queued up in one transaction, the answer held until its row is committed), writing to
PostgreSQL over a connection of its own. When the database cannot be reached the rows stay in memory (bounded)
and go out with the next call or every RETRY_S, and the server keeps answering; a server that starts while
the database is down starts all the same, and writes when it comes up.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from contextlib import nullcontext
from typing import Any

import psycopg
import structlog

from ..accounting.ledger import CALLS, HOPS, CallRecord, Ledger, _Values
from .schema import base_type
from ..errors import ConfigError
from .connect import FAILURES, reason
from .runtime import Store

log = structlog.get_logger(__name__)

_HOP_COLUMNS = [c for c in HOPS.columns if c.written and c.name != "call_id"]
_INSERT = (f"WITH c AS (INSERT INTO calls (id, {', '.join(CALLS.names)}) VALUES "
           f"({', '.join(['%s'] * (len(CALLS.names) + 1))}) ON CONFLICT (id) DO NOTHING RETURNING id) INSERT INTO hops (call_id, {', '.join(c.name for c in _HOP_COLUMNS)}) SELECT c.id, h.* "
           f"FROM c, unnest({', '.join(f'%s::{base_type(c)}[]' for c in _HOP_COLUMNS)}) AS h")
"""A call's row and its hops' in one statement (one round trip): the hops' values as one array per column. The
call's id is a digest of its row, so a batch sent again after its commit's answer was lost (the connection
died between COMMIT and its reply) adds nothing the second time."""
_CALL_VALUES = CALLS.values


def row_id(row: dict[str, Any], hops: list[list[Any]], record: int) -> int:
    """A positive 63-bit id from the call's values and its record's identity (`id()`, the same while the row
    waits to be written): the same row on every retry, two calls never, not even two alike in the same
    clock tick."""
    digest = hashlib.blake2b(repr((sorted(row.items()), hops, record)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class StoreLedger(Ledger):
    file_errors = (*FAILURES, ConfigError)
    """Every failure of the database (unreachable, read-only in a failover, a permission taken away) keeps the
    rows for a retry; only a row's own values (data_errors, tried first) drop it."""
    data_errors = (psycopg.DataError, psycopg.IntegrityError, OverflowError, ValueError, TypeError)
    RETRY_S = 2.0

    def __init__(self, store: Store, keep_days: float | None = None):
        self.store = store
        self.path = store.where  # type: ignore[assignment]  (how the log names the ledger)
        self.COMMIT_WAIT_S = store.timeout_s  # an answer waits no longer than a statement may take
        self._next_try = 0.0
        self._start(keep_days, store.instance)

    @property
    def source(self) -> Any:
        return self.store

    def _open(self) -> None:
        """At startup: a store that cannot be reached is said once and written when it is back; one that is
        no store of this version (ConfigError) stops the server."""
        try:
            self._conn = self._connect()
        except FAILURES as exc:
            log.error("store_unreachable", store=self.store.where, error=reason(exc),
                      action="serving; the ledger's rows are kept in memory until the store is reachable")
            self._conn = None

    def _ensure_open(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = None
            self._conn = self._connect()

    def _connect(self) -> Any:
        conn = self.store.connect()
        conn.autocommit = True
        return conn

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
        """One statement per call; a batch of several in one transaction (a call alone commits by itself)."""
        conn = self._conn
        replaced: Counter[str] = Counter()
        with conn.transaction() if len(batch) > 1 else nullcontext():
            for call in batch:
                values = _Values()
                row, hops = call.rows(values, self.instance)
                hop_values = [[hop[c.name] for hop in hops] for c in _HOP_COLUMNS]
                conn.execute(_INSERT, (row_id(row, hop_values, id(call)), *_CALL_VALUES(row), *hop_values))
                replaced.update(values.replaced)
        return replaced
