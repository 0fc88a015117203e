"""The ledger: one SQLite row per call and one per hop (each tier the call went through), with tokens,
seconds, energy and cost. `mcp-tiered report` and the cloud budget read it.

Writes never block the event loop: a call's row goes on a queue, one writer thread commits what has queued
up in a transaction, and the dispatcher awaits that commit before the answer goes out. The database is in
WAL mode, so a committed row survives the process being killed (`synchronous=NORMAL` gives up only the last
transactions on a power loss).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog

from .errors import ConfigError

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 4
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
    cloud_cost REAL NOT NULL,           -- billed by the cloud
    client TEXT                         -- the MCP client's clientInfo name, as it gave it; NULL when it gave none
);
CREATE TABLE IF NOT EXISTS hops (
    id INTEGER PRIMARY KEY,
    call_id INTEGER NOT NULL REFERENCES calls(id),
    time REAL NOT NULL,
    position INTEGER NOT NULL,          -- 0: the tier called, 1: the first escalation, ...
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,              -- answered | escalated | failed | verified | rejected (a verifier's reading)
    escalation_reason TEXT,             -- why the call left this tier
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    queue_s REAL NOT NULL,
    generation_s REAL NOT NULL,
    energy_wh REAL NOT NULL,
    local_cost REAL NOT NULL,
    cloud_cost REAL NOT NULL,
    verification REAL,                  -- a verifier's hop: its statistic (escalation.judge_verification)
    prompt_s REAL NOT NULL DEFAULT 0    -- of generation_s, the seconds before the first token
);
CREATE INDEX IF NOT EXISTS calls_time ON calls(time);
CREATE INDEX IF NOT EXISTS hops_time ON hops(time);
-- Covering indexes for the report's per-tier, per-answerer and per-client sums: read in index order, a
-- million calls aggregate without sorting them (2.9 s to 1.2 s; see scripts/bench_report.py).
CREATE INDEX IF NOT EXISTS hops_by_tier ON hops(tier, outcome, prompt_tokens, completion_tokens, generation_s,
    prompt_s, energy_wh, local_cost, cloud_cost, time);
CREATE INDEX IF NOT EXISTS calls_by_server ON calls(served_by, cache_hit, outcome, client, prompt_tokens,
    completion_tokens, local_cost, cloud_cost, time);
"""
MIGRATIONS = {
    2: "ALTER TABLE hops ADD COLUMN verification REAL",
    3: "ALTER TABLE hops ADD COLUMN prompt_s REAL NOT NULL DEFAULT 0",
    4: "ALTER TABLE calls ADD COLUMN client TEXT",
}
"""Schema version → the statement that brings a ledger of the version before it there."""


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
    verification: float | None = None
    prompt_s: float = 0.0


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
    client: str | None = None

    def row(self) -> tuple:
        hops = self.hops
        reasons = ",".join(h.escalation_reason for h in hops if h.escalation_reason)
        return (self.time, self.tool, self.tier, self.served_by, self.model, self.outcome, self.prompt_tokens,
                self.completion_tokens, self.latency_s, sum(h.queue_s for h in hops),
                sum(h.generation_s for h in hops), reasons, int(self.cache_hit), sum(h.energy_wh for h in hops),
                sum(h.local_cost for h in hops), sum(h.cloud_cost for h in hops), self.client)


CALL_COLUMNS = ("time, tool, tier, served_by, model, outcome, prompt_tokens, completion_tokens, latency_s, queue_s, "
                "generation_s, escalation_reasons, cache_hit, energy_wh, local_cost, cloud_cost, client")
HOP_COLUMNS = ("call_id, time, position, tier, model, outcome, escalation_reason, prompt_tokens, completion_tokens, "
               "queue_s, generation_s, energy_wh, local_cost, cloud_cost, verification, prompt_s")


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
        if version and version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"ledger.path: cannot open the ledger {path} ({exc})") from exc
    conn.row_factory = sqlite3.Row
    return conn


def insert(conn: sqlite3.Connection, calls: list[CallRecord]) -> None:
    """Commit `calls` and their hops in one transaction; a failure raises the error that caused it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for call in calls:
            cursor = conn.execute(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * 17)})", call.row())
            conn.executemany(
                f"INSERT INTO hops ({HOP_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                [(cursor.lastrowid, call.time, h.position, h.tier, h.model, h.outcome, h.escalation_reason,
                  h.prompt_tokens, h.completion_tokens, h.queue_s, h.generation_s, h.energy_wh, h.local_cost,
                  h.cloud_cost, h.verification, h.prompt_s) for h in call.hops],
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo an open transaction; SQLite has already rolled back after some errors (disk full, I/O), and a
    second ROLLBACK would replace the real error with "cannot rollback - no transaction is active"."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete the calls (and their hops) that ended before `before`; returns how many calls."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM hops WHERE time < ?", (before,))
        deleted = conn.execute("DELETE FROM calls WHERE time < ?", (before,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return deleted


@dataclass(eq=False, slots=True)
class _Entry:
    call: CallRecord
    waiter: _Waiter | None = None


@dataclass(eq=False, slots=True)
class _Waiter:
    """A coroutine awaiting its row's commit; woken from the writer thread without blocking it."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    committed: bool = False

    def wake(self, committed: bool) -> None:
        self.committed = committed
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the event loop has closed: nobody waits any more
            pass


class Ledger:
    """The server's writer. `commit` returns once the call's row is committed (the dispatcher awaits it
    before the answer goes out); `record` only queues. One thread writes whatever has queued up in one
    transaction, and deletes rows older than `keep_days` when it starts and once a day.

    The ledger file is checked before each write: deleted or replaced, it is created anew (and said so).
    Rows that cannot be written (disk full, no permission) stay in memory, up to `MAX_UNWRITTEN`, and are
    written with the next call or every `RETRY_S`; the error is logged once, and again when writing resumes.
    """

    PRUNE_EVERY_S = 86400.0
    RETRY_S = 5.0
    COMMIT_WAIT_S = 15.0
    """Longer than SQLite's busy timeout (10 s), so a commit that fails says why before the wait gives up."""
    MAX_UNWRITTEN = 100_000
    """About 25 MB of rows; beyond that, the oldest are dropped (and counted in the log)."""

    def __init__(self, path: Path, keep_days: float | None = None):
        self.path = path
        self.keep_days = keep_days
        self._pruned_at = 0.0
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._shm = path.with_name(path.name + "-shm")
        self._shm_size = 0
        self._open()
        self._unwritten: list[CallRecord] = []
        self._failure: str | None = None
        self._queue: queue.SimpleQueue[_Entry | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_forever, name="ledger-writer", daemon=True)
        self._thread.start()

    @property
    def unwritten(self) -> int:
        """Rows kept in memory because the ledger could not be written."""
        return len(self._unwritten)

    def record(self, call: CallRecord) -> None:
        """Queue `call`'s row; returns at once."""
        self._queue.put(_Entry(call))

    async def commit(self, call: CallRecord) -> bool:
        """Queue `call`'s row and wait until it is committed: True; False when it could not be written (it
        is kept in memory for a retry) or the writer took longer than `COMMIT_WAIT_S` (a ledger locked by
        another program): the answer is not held longer than that. A cancelled wait leaves the row queued."""
        waiter = _Waiter(asyncio.get_running_loop())
        self._queue.put(_Entry(call, waiter))
        with anyio.move_on_after(self.COMMIT_WAIT_S):
            await waiter.event.wait()
            return waiter.committed
        log.warning("ledger_commit_slow", path=str(self.path), waited_s=self.COMMIT_WAIT_S,
                    action="answering before the row is committed; it stays queued")
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is committed (or kept in memory after failing)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
        if self._unwritten:
            log.error("ledger_rows_lost", path=str(self.path), calls=len(self._unwritten), error=self._failure)

    def _open(self) -> None:
        self._conn = connect(self.path, check_same_thread=False)
        stat = self.path.stat()
        self._identity = (stat.st_dev, stat.st_ino)
        self._shm_size = 0
        self._note_shm_size()

    def _note_shm_size(self) -> None:
        try:
            self._shm_size = max(self._shm_size, self._shm.stat().st_size)
        except OSError:
            pass

    def _guard_shm(self) -> None:
        """SQLite maps the -shm file (the WAL index) into memory: if something shrank it (truncated,
        emptied), touching the mapping would kill the process with SIGBUS. Grow it back to its size; the
        zeros read as a damaged index, which SQLite rebuilds from the WAL."""
        try:
            size = self._shm.stat().st_size
        except FileNotFoundError:
            return
        if size < self._shm_size:
            log.warning("ledger_index_repaired", path=str(self._shm), size=size, expected=self._shm_size)
            os.truncate(self._shm, self._shm_size)

    def _ensure_file(self) -> None:
        """Reconnect when the file is not the one the connection writes to (deleted, replaced) or after
        a failed write, so the rows land in a file that a report can read."""
        try:
            stat = self.path.stat()
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            identity = None
        if self._conn is not None and identity == self._identity:
            return
        if self._conn is not None:
            log.warning("ledger_file_gone", path=str(self.path),
                        reason="deleted" if identity is None else "replaced by another file",
                        action="writing the next calls to a new ledger at the same path")
            self._conn.close()
            self._conn = None
        self._open()

    def _prune_if_due(self) -> None:
        now = time.time()
        if self.keep_days is None or now - self._pruned_at < self.PRUNE_EVERY_S or self._conn is None:
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
            try:  # wait for work (or, with rows to retry, for the next retry), then take what has queued up
                items = [self._queue.get(timeout=self.RETRY_S if self._unwritten else None)]
            except queue.Empty:
                items = []
            while len(items) < 256 and not self._queue.empty():
                items.append(self._queue.get())
            stop = any(item is None for item in items)
            entries = [item for item in items if isinstance(item, _Entry)]
            if batch := [*self._unwritten, *(entry.call for entry in entries)]:
                try:
                    committed = self._write(batch)
                except Exception:  # a bug here must not stop the writer, nor hold the answers waiting on it
                    log.exception("ledger_writer_error", path=str(self.path), kept_in_memory=len(batch))
                    committed = False
                self._unwritten = [] if committed else self._keep(batch)
                for entry in entries:
                    if entry.waiter is not None:
                        entry.waiter.wake(committed)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _write(self, batch: list[CallRecord]) -> bool:
        try:
            self._ensure_file()
            assert self._conn is not None
            self._guard_shm()
            insert(self._conn, batch)
            self._note_shm_size()
        except (sqlite3.Error, OSError, ConfigError) as exc:
            error = str(exc)
            if self._failure is None:
                log.error("ledger_write_failed", path=str(self.path), error=error, kept_in_memory=len(batch),
                          retry_s=self.RETRY_S)
            self._failure = error
            if self._conn is not None:  # start over with a fresh connection at the next try
                self._conn.close()
                self._conn = None
            return False
        if self._failure is not None:
            log.warning("ledger_write_resumed", path=str(self.path), calls=len(batch))
            self._failure = None
        return True

    def _keep(self, batch: list[CallRecord]) -> list[CallRecord]:
        if len(batch) <= self.MAX_UNWRITTEN:
            return batch
        log.error("ledger_rows_dropped", path=str(self.path), calls=len(batch) - self.MAX_UNWRITTEN,
                  reason=f"more than {self.MAX_UNWRITTEN} rows could not be written")
        return batch[-self.MAX_UNWRITTEN:]


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection for reports: it never writes, so reading needs no write access to the
    ledger or its folder. The ledger must exist."""
    if not path.exists():
        raise ConfigError(f"ledger.path: no ledger at {path} yet (the server creates it with its first call)")
    if path.is_dir():
        raise ConfigError(f"ledger.path: {path} is a folder; name a file, such as {path / 'ledger.sqlite3'}")
    with closing(_connect_read_only(path)) as conn:
        yield conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    try:
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
                raise
            # A WAL database whose -wal/-shm files are absent and cannot be created here (a folder we may
            # not write to): with no writer running, the file alone is the whole ledger.
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=10)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise ConfigError(f"ledger.path: {path} was written by a newer mcp-tiered (schema {version}); upgrade")
        if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('calls', 'hops')").fetchone()[0] != 2:
            conn.close()
            raise ConfigError(f"ledger.path: {path} is not an mcp-tiered ledger (no calls and hops tables)")
    except sqlite3.Error as exc:
        raise ConfigError(f"ledger.path: cannot read the ledger {path} ({exc})") from exc
    conn.row_factory = sqlite3.Row
    return conn


def cloud_spend_since(conn: sqlite3.Connection, since: float) -> float:
    return conn.execute("SELECT COALESCE(SUM(cloud_cost), 0) FROM calls WHERE time >= ?", (since,)).fetchone()[0]
