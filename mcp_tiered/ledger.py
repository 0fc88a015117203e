"""The ledger: one SQLite row per call and one per hop (each tier the call went through), with tokens,
seconds, energy and cost. `mcp-tiered report` and the cloud budget read it.

Writes never wait on the event loop: `record` puts the call on a queue, and one writer thread commits
what has queued up in a transaction. The database is in WAL mode, so a committed row survives the
process being killed (`synchronous=NORMAL` gives up only the last transactions on a power loss).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from .errors import ConfigError

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,                 -- Unix seconds when the call ended
    tool TEXT NOT NULL,
    tier TEXT NOT NULL,                 -- the tier that was called
    served_by TEXT,                     -- the tier whose answer was returned; NULL when none was
    model TEXT,
    outcome TEXT NOT NULL,              -- ok | cache_hit | error | busy | cancelled
    prompt_tokens INTEGER NOT NULL,     -- of the answer returned
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    queue_s REAL NOT NULL,              -- sums over the hops
    generation_s REAL NOT NULL,
    escalation_reasons TEXT NOT NULL,   -- comma-separated, in order; '' when none
    cache_hit INTEGER NOT NULL,
    energy_wh REAL NOT NULL,
    local_cost REAL NOT NULL,           -- energy of the hops, at the electricity price
    cloud_cost REAL NOT NULL            -- billed by the cloud
);
CREATE TABLE IF NOT EXISTS hops (
    id INTEGER PRIMARY KEY,
    call_id INTEGER NOT NULL REFERENCES calls(id),
    time REAL NOT NULL,
    position INTEGER NOT NULL,          -- 0: the tier called, 1: the first escalation, ...
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,              -- answered | escalated | failed
    escalation_reason TEXT,             -- why the call left this tier
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    queue_s REAL NOT NULL,
    generation_s REAL NOT NULL,
    energy_wh REAL NOT NULL,
    local_cost REAL NOT NULL,
    cloud_cost REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_time ON calls(time);
CREATE INDEX IF NOT EXISTS hops_time ON hops(time);
"""


@dataclass(frozen=True, slots=True)
class HopRecord:
    position: int
    tier: str
    model: str
    outcome: str
    escalation_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float = 0.0
    generation_s: float = 0.0
    energy_wh: float = 0.0
    local_cost: float = 0.0
    cloud_cost: float = 0.0


@dataclass(frozen=True, slots=True)
class CallRecord:
    time: float
    tool: str
    tier: str
    served_by: str | None
    model: str | None
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cache_hit: bool = False
    hops: tuple[HopRecord, ...] = ()

    def row(self) -> tuple:
        hops = self.hops
        reasons = ",".join(h.escalation_reason for h in hops if h.escalation_reason)
        return (self.time, self.tool, self.tier, self.served_by, self.model, self.outcome, self.prompt_tokens,
                self.completion_tokens, self.latency_s, sum(h.queue_s for h in hops),
                sum(h.generation_s for h in hops), reasons, int(self.cache_hit), sum(h.energy_wh for h in hops),
                sum(h.local_cost for h in hops), sum(h.cloud_cost for h in hops))


CALL_COLUMNS = ("time, tool, tier, served_by, model, outcome, prompt_tokens, completion_tokens, latency_s, queue_s, "
                "generation_s, escalation_reasons, cache_hit, energy_wh, local_cost, cloud_cost")
HOP_COLUMNS = ("call_id, time, position, tier, model, outcome, escalation_reason, prompt_tokens, completion_tokens, "
               "queue_s, generation_s, energy_wh, local_cost, cloud_cost")


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) the ledger; raises ConfigError naming the path when it cannot."""
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"ledger.path: cannot create the ledger {path}: {blocking} is a file, not a folder")
    if path.is_dir():
        raise ConfigError(f"ledger.path: {path} is a folder; name a file, such as {path / 'ledger.sqlite3'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=10, check_same_thread=check_same_thread, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise ConfigError(f"ledger.path: {path} was written by a newer mcp-tiered (schema {version}); "
                              "upgrade or point ledger.path elsewhere")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"ledger.path: cannot open the ledger {path} ({exc})") from exc
    conn.row_factory = sqlite3.Row
    return conn


def insert(conn: sqlite3.Connection, calls: list[CallRecord]) -> None:
    """Commit `calls` and their hops in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for call in calls:
            cursor = conn.execute(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * 16)})", call.row())
            conn.executemany(
                f"INSERT INTO hops ({HOP_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                [(cursor.lastrowid, call.time, h.position, h.tier, h.model, h.outcome, h.escalation_reason,
                  h.prompt_tokens, h.completion_tokens, h.queue_s, h.generation_s, h.energy_wh, h.local_cost,
                  h.cloud_cost) for h in call.hops],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete the calls (and their hops) that ended before `before`; returns how many calls."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM hops WHERE time < ?", (before,))
        deleted = conn.execute("DELETE FROM calls WHERE time < ?", (before,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted


class Ledger:
    """The server's writer: `record` is cheap and never blocks; a thread commits, and deletes rows older
    than `keep_days` when it starts and once a day."""

    RETRIES = 3
    PRUNE_EVERY_S = 86400.0

    def __init__(self, path: Path, keep_days: float | None = None):
        self.path = path
        self.keep_days = keep_days
        self._pruned_at = 0.0
        self._conn = connect(path, check_same_thread=False)
        self._queue: queue.SimpleQueue[CallRecord | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_forever, name="ledger-writer", daemon=True)
        self._thread.start()

    def record(self, call: CallRecord) -> None:
        self._queue.put(call)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is committed (or dropped after failing)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._conn.close()

    def _prune_if_due(self) -> None:
        now = time.time()
        if self.keep_days is None or now - self._pruned_at < self.PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            deleted = prune(self._conn, now - self.keep_days * 86400)
        except sqlite3.Error as exc:
            log.error("ledger_prune_failed", path=str(self.path), error=str(exc))
            return
        if deleted:
            log.info("ledger_pruned", calls=deleted, keep_days=self.keep_days)

    def _write_forever(self) -> None:
        stop = False
        while not stop:
            self._prune_if_due()
            items = [self._queue.get()]  # wait for work, then take what has queued up meanwhile
            while len(items) < 256 and not self._queue.empty():
                items.append(self._queue.get())
            stop = any(item is None for item in items)
            if calls := [item for item in items if isinstance(item, CallRecord)]:
                self._commit(calls)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _commit(self, batch: list[CallRecord]) -> None:
        for attempt in range(1, self.RETRIES + 1):
            try:
                insert(self._conn, batch)
                return
            except sqlite3.Error as exc:
                if attempt == self.RETRIES:
                    log.error("ledger_write_failed", path=str(self.path), calls=len(batch), error=str(exc))
                    return
                time.sleep(0.5 * attempt)


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection for reports; the ledger must exist."""
    if not path.exists():
        raise ConfigError(f"ledger.path: no ledger at {path} yet (the server creates it with its first call)")
    with closing(connect(path)) as conn:
        yield conn


def cloud_spend_since(conn: sqlite3.Connection, since: float) -> float:
    return conn.execute("SELECT COALESCE(SUM(cloud_cost), 0) FROM calls WHERE time >= ?", (since,)).fetchone()[0]
