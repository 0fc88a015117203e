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
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import anyio
import structlog

from ..config.amounts import MAX_AMOUNT
from ..errors import ConfigError

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 6


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a ledger table, as SQLite declares it: `sql_type` is the type with its constraints
    ("REAL NOT NULL DEFAULT 0"), `since` the schema version that added it (MIGRATIONS[since] adds it to a
    ledger of the version before), `note` the comment it carries in the CREATE TABLE statement (SQLite keeps
    that text in the file: changing a note changes the schema a new ledger is written with)."""

    name: str
    sql_type: str
    note: str = ""
    since: int = 1

    @property
    def written(self) -> bool:
        """Whether a row gives its value: not the primary key, which SQLite assigns."""
        return "PRIMARY KEY" not in self.sql_type

    @property
    def absent_as(self) -> str:
        """SQL for what a ledger written before `since` holds in its place: the column's DEFAULT, else NULL."""
        return self.sql_type.partition(" DEFAULT ")[2] or "NULL"


@dataclass(frozen=True, slots=True)
class Table:
    """A ledger table: its columns in their order on disk. The CREATE TABLE statement of the current schema,
    the INSERT statement and the order of its values (`values` takes them from a row, a dict by column name)
    are all derived from `columns`."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The columns a row gives (all but the primary key), in their order on disk."""
        return tuple(c.name for c in self.columns if c.written)

    @property
    def create(self) -> str:
        """CREATE TABLE IF NOT EXISTS, as a ledger of SCHEMA_VERSION holds it (notes aligned at column 41)."""
        lines = []
        for i, c in enumerate(self.columns):
            line = f"    {c.name} {c.sql_type}{',' if i < len(self.columns) - 1 else ''}"
            lines.append(f"{line:<40}-- {c.note}" if c.note else line)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n" + "\n".join(lines) + "\n);"

    @property
    def insert(self) -> str:
        """INSERT of the columns a row gives, in `names` order (the order of `values`)."""
        return f"INSERT INTO {self.name} ({', '.join(self.names)}) VALUES ({', '.join('?' * len(self.names))})"

    @property
    def values(self) -> itemgetter:
        """A row's values in `names` order. Positional rather than named placeholders: SQLite binding by name
        costs a name lookup per column, about 5 us more per two-hop call in insert()."""
        return itemgetter(*self.names)


CALLS = Table("calls", (
    Column("id", "INTEGER PRIMARY KEY"),
    Column("time", "REAL NOT NULL", "Unix seconds when the call ended"),
    Column("tool", "TEXT NOT NULL"),
    Column("tier", "TEXT NOT NULL", "the tier that was called"),
    Column("served_by", "TEXT", "the tier whose answer was returned; NULL when none was"),
    Column("model", "TEXT"),
    Column("outcome", "TEXT NOT NULL", "ok | cache_hit | error | busy | cancelled"),
    Column("prompt_tokens", "INTEGER NOT NULL", "of the answer returned"),
    Column("completion_tokens", "INTEGER NOT NULL"),
    Column("latency_s", "REAL NOT NULL"),
    Column("queue_s", "REAL NOT NULL", "sums over the hops"),
    Column("generation_s", "REAL NOT NULL"),
    Column("escalation_reasons", "TEXT NOT NULL", "comma-separated, in order; '' when none"),
    Column("cache_hit", "INTEGER NOT NULL"),
    Column("energy_wh", "REAL NOT NULL"),
    Column("local_cost", "REAL NOT NULL", "energy of the hops, at the electricity price"),
    Column("cloud_cost", "REAL NOT NULL", "billed by the cloud"),
    Column("client", "TEXT", "the MCP client's clientInfo name (visible()); NULL when it gave none", since=4),
    Column("instance", "TEXT", "the server process that answered ([store] instance, else <host>:<pid>)", since=5),
    Column("principal", "TEXT", "who called, as authenticated (key:<name>, the token's principal claim, the local "
           "user on stdio, anonymous); NULL before schema 6", since=6),
))
HOPS = Table("hops", (
    Column("id", "INTEGER PRIMARY KEY"),
    Column("call_id", "INTEGER NOT NULL REFERENCES calls(id)"),
    Column("time", "REAL NOT NULL"),
    Column("position", "INTEGER NOT NULL", "0: the tier called, 1: the first escalation, ..."),
    Column("tier", "TEXT NOT NULL"),
    Column("model", "TEXT NOT NULL"),
    Column("outcome", "TEXT NOT NULL", "answered | escalated | failed | verified | rejected (a verifier's reading)"),
    Column("escalation_reason", "TEXT", "why the call left this tier"),
    Column("prompt_tokens", "INTEGER NOT NULL"),
    Column("completion_tokens", "INTEGER NOT NULL"),
    Column("queue_s", "REAL NOT NULL"),
    Column("generation_s", "REAL NOT NULL"),
    Column("energy_wh", "REAL NOT NULL"),
    Column("local_cost", "REAL NOT NULL"),
    Column("cloud_cost", "REAL NOT NULL"),
    Column("verification", "REAL", "a verifier's hop: its statistic (escalation.judge_verification)", since=2),
    Column("prompt_s", "REAL NOT NULL DEFAULT 0", "of generation_s, the seconds before the first token", since=3),
))
TABLES = (CALLS, HOPS)
"""The ledger's tables: the one declaration of their columns (a store on another database derives its own
statements from it)."""
INDEXES = """
CREATE INDEX IF NOT EXISTS calls_time ON calls(time);
CREATE INDEX IF NOT EXISTS hops_time ON hops(time);
-- Covering indexes for the report's per-tier, per-answerer and per-client sums: read in index order, a
-- million calls aggregate without sorting them (2.9 s to 1.2 s; see scripts/bench_report.py).
CREATE INDEX IF NOT EXISTS hops_by_tier ON hops(tier, outcome, prompt_tokens, completion_tokens, generation_s,
    prompt_s, energy_wh, local_cost, cloud_cost, time);
CREATE INDEX IF NOT EXISTS calls_by_server ON calls(served_by, cache_hit, outcome, client, prompt_tokens,
    completion_tokens, local_cost, cloud_cost, time);
CREATE INDEX IF NOT EXISTS calls_by_instance ON calls(instance, outcome, prompt_tokens, completion_tokens,
    local_cost, cloud_cost, time);
CREATE INDEX IF NOT EXISTS calls_by_principal ON calls(principal, outcome, prompt_tokens, completion_tokens,
    local_cost, cloud_cost, time);
"""
"""The ledger's indexes, the same statements on SQLite and PostgreSQL."""
SCHEMA = f"""
{CALLS.create}
{HOPS.create}
{INDEXES}"""
MIGRATIONS = {
    2: "ALTER TABLE hops ADD COLUMN verification REAL",
    3: "ALTER TABLE hops ADD COLUMN prompt_s REAL NOT NULL DEFAULT 0",
    4: "ALTER TABLE calls ADD COLUMN client TEXT",
    5: "ALTER TABLE calls ADD COLUMN instance TEXT",
    6: "ALTER TABLE calls ADD COLUMN principal TEXT",
}
"""Schema version → the statement that brings a ledger of the version before it there: it adds the column
declared with that `since` (tests/test_ledger_schemas.py holds them to it)."""
DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               OverflowError, ValueError, TypeError)
"""Failures of a write caused by a row's values rather than by the file."""
FILE_ERRORS = (sqlite3.Error, OSError, ConfigError)


INT64_MAX = 2**63 - 1
TEXT_CHARS = 4096
"""Of a text column: more than any tier, model path or client name needs."""


def visible(text: str) -> str:
    """`text` with every character that is not printable data (C0 and C1 controls such as ESC and BEL,
    format characters such as bidirectional overrides, surrogates, line separators) written as its escape,
    such as \\x1b or \\u202e: caller text shown in a terminal cannot drive it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class _Values:
    """A record's values as the ledger stores them. A number SQLite cannot hold or a sum cannot use (not a
    finite number, negative, a count beyond int64, seconds, watt-hours or money beyond MAX_AMOUNT, so that
    sums stay finite) is no measurement: it is stored as 0 (a statistic as NULL), and its column named in
    `replaced` for the log. Text is stored visible() and bounded."""

    def __init__(self) -> None:
        self.replaced: list[str] = []

    # Comparisons, not isinstance: this runs for every column of every row, before each answer goes out.
    def count(self, column: str, value: object) -> int:
        return int(value) if self._within(value, 0, INT64_MAX) else self._replace(column, 0)

    def amount(self, column: str, value: object) -> float:
        return float(value) if self._within(value, 0, MAX_AMOUNT) else self._replace(column, 0.0)

    def statistic(self, column: str, value: object) -> float | None:
        if value is None or self._within(value, -MAX_AMOUNT, MAX_AMOUNT):
            return None if value is None else float(value)
        return self._replace(column, None)

    @staticmethod
    def _within(value: object, low: float, high: float) -> bool:
        try:
            return low <= value <= high  # False for NaN; TypeError for what is no number
        except TypeError:
            return False

    def _replace(self, column: str, stored: object) -> Any:
        self.replaced.append(column)
        return stored

    @staticmethod
    def text(value: object) -> str | None:
        return None if value is None else visible(str(value))[:TEXT_CHARS]


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

    def row(self, v: _Values, time: float) -> dict[str, Any]:
        """The hops row by column name (HOPS); `call_id` is filled in when its call's row is inserted."""
        return {"call_id": None, "time": time, "position": v.count("hops.position", self.position),
                "tier": v.text(self.tier), "model": v.text(self.model), "outcome": v.text(self.outcome),
                "escalation_reason": v.text(self.escalation_reason),
                "prompt_tokens": v.count("hops.prompt_tokens", self.prompt_tokens),
                "completion_tokens": v.count("hops.completion_tokens", self.completion_tokens),
                "queue_s": v.amount("hops.queue_s", self.queue_s),
                "generation_s": v.amount("hops.generation_s", self.generation_s),
                "energy_wh": v.amount("hops.energy_wh", self.energy_wh),
                "local_cost": v.amount("hops.local_cost", self.local_cost),
                "cloud_cost": v.amount("hops.cloud_cost", self.cloud_cost),
                "verification": v.statistic("hops.verification", self.verification),
                "prompt_s": v.amount("hops.prompt_s", self.prompt_s)}


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
    principal: str | None = None

    def rows(self, v: _Values, instance: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The calls row and its hops' rows, by column name (CALLS, HOPS)."""
        time = v.amount("calls.time", self.time)
        hops = [hop.row(v, time) for hop in self.hops]
        return {"time": time, "tool": v.text(self.tool), "tier": v.text(self.tier),
                "served_by": v.text(self.served_by), "model": v.text(self.model), "outcome": v.text(self.outcome),
                "prompt_tokens": v.count("calls.prompt_tokens", self.prompt_tokens),
                "completion_tokens": v.count("calls.completion_tokens", self.completion_tokens),
                "latency_s": v.amount("calls.latency_s", self.latency_s),
                "queue_s": sum(h["queue_s"] for h in hops), "generation_s": sum(h["generation_s"] for h in hops),
                "escalation_reasons": ",".join(h["escalation_reason"] for h in hops if h["escalation_reason"]),
                "cache_hit": int(bool(self.cache_hit)), "energy_wh": sum(h["energy_wh"] for h in hops),
                "local_cost": sum(h["local_cost"] for h in hops), "cloud_cost": sum(h["cloud_cost"] for h in hops),
                "client": v.text(self.client), "instance": v.text(instance), "principal": v.text(self.principal)}, hops


CALL_COLUMNS = ", ".join(CALLS.names)
HOP_COLUMNS = ", ".join(HOPS.names)
"""The columns a row gives, in their order on disk (scripts/bench_report.py writes rows in this order)."""
_INSERT_CALL, _CALL_VALUES = CALLS.insert, CALLS.values
_INSERT_HOP, _HOP_VALUES = HOPS.insert, HOPS.values


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) the ledger; raises ConfigError naming the path when it cannot, or when the
    file is not a ledger this version may write: then it is left exactly as it was."""
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"ledger.path: cannot create the ledger {path}: {blocking} is a file, not a folder")
    if path.is_dir():
        raise ConfigError(f"ledger.path: {path} is a folder; name a file, such as {path / 'ledger.sqlite3'}")
    if problem := _newer_by_header(path):
        raise ConfigError(problem)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=10, check_same_thread=check_same_thread, isolation_level=None)
        try:  # only reads until the file is known to be a ledger of this version or an empty database
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            problem = _not_a_ledger(conn, path, version, empty_ok=True)
        except BaseException:
            conn.close()
            raise
        if problem:
            conn.close()
            raise ConfigError(problem)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
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


def _newer(path: Path, version: int) -> str:
    return (f"ledger.path: {path} was written by a newer mcp-tiered (schema {version}, this one knows up to "
            f"{SCHEMA_VERSION}); upgrade mcp-tiered or point ledger.path elsewhere")


def _newer_by_header(path: Path) -> str | None:
    """_newer when the file's header already holds a newer schema version, read before SQLite opens the file:
    opening a ledger in WAL mode, even read-only, creates its -wal and -shm files beside it. (A version only
    in the -wal file is found once SQLite has opened it, by _not_a_ledger.)"""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    version = int.from_bytes(header[60:64], "big", signed=True)  # PRAGMA user_version
    return _newer(path, version) if version > SCHEMA_VERSION else None


def _not_a_ledger(conn: sqlite3.Connection, path: Path, version: int, *, empty_ok: bool) -> str | None:
    """Why the database at `path` is not an mcp-tiered ledger of this version or older (one sentence), or
    None. An empty database is one where `empty_ok` (the server creates the tables)."""
    if version > SCHEMA_VERSION:
        return _newer(path, version)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if {"calls", "hops"} <= tables or (empty_ok and not tables):
        return None
    held = "no tables" if not tables else "other tables"
    return (f"ledger.path: {path} is not an mcp-tiered ledger (it holds {held}, not calls and hops); point "
            "ledger.path at a new file")


def insert(conn: sqlite3.Connection, calls: list[CallRecord], instance: str | None = None) -> Counter[str]:
    """Commit `calls` and their hops in one transaction, each row marked with the `instance` that answered;
    returns how many values of each column had to be stored as 0 (_Values). A failure raises the error that
    caused it."""
    replaced: Counter[str] = Counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for call in calls:
            values = _Values()
            row, hops = call.rows(values, instance)
            call_id = conn.execute(_INSERT_CALL, _CALL_VALUES(row)).lastrowid
            for hop in hops:
                hop["call_id"] = call_id
            conn.executemany(_INSERT_HOP, map(_HOP_VALUES, hops))
            replaced.update(values.replaced)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return replaced


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
    A row that cannot be stored at all (DATA_ERRORS) is dropped and logged, and the rows around it written.
    """

    PRUNE_EVERY_S = 86400.0
    RETRY_S = 5.0
    COMMIT_WAIT_S = 15.0
    """Longer than SQLite's busy timeout (10 s), so a commit that fails says why before the wait gives up."""
    MAX_UNWRITTEN = 100_000
    """About 25 MB of rows; beyond that, the oldest are dropped (and counted in the log)."""

    file_errors: tuple[type[BaseException], ...] = FILE_ERRORS
    """Failures of the database as a whole: the rows are kept for a retry."""
    data_errors: tuple[type[BaseException], ...] = DATA_ERRORS
    """Failures caused by a row's values: that row is dropped."""

    def __init__(self, path: Path, keep_days: float | None = None, instance: str | None = None):
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._shm = path.with_name(path.name + "-shm")
        self._shm_size = 0
        self._start(keep_days, instance)

    def _start(self, keep_days: float | None, instance: str | None) -> None:
        """Open the ledger (raises ConfigError when it cannot be) and start the writer."""
        self.keep_days = keep_days
        self.instance = instance
        self._pruned_at = 0.0
        self._conn: Any = None
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

    @property
    def source(self) -> Any:
        """What a report reads this ledger from (store.reading)."""
        return self.path

    def _ensure_open(self) -> None:
        """Before each write: a connection to the ledger the report reads."""
        self._ensure_file()
        self._guard_shm()

    def _prune(self, before: float) -> int:
        return prune(self._conn, before)

    def _prune_if_due(self) -> None:
        now = time.time()
        if self.keep_days is None or now - self._pruned_at < self.PRUNE_EVERY_S or self._conn is None:
            return
        self._pruned_at = now
        try:
            deleted = self._prune(now - self.keep_days * 86400)
        except self.file_errors as exc:
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
                    kept, dropped = self._write(batch)
                except Exception:  # a bug here must not stop the writer, nor hold the answers waiting on it
                    log.exception("ledger_writer_error", path=str(self.path), kept_in_memory=len(batch))
                    kept, dropped = batch, []
                self._unwritten = self._keep(kept)
                unwritten = {id(call) for call in (*kept, *dropped)}
                for entry in entries:
                    if entry.waiter is not None:
                        entry.waiter.wake(id(entry.call) not in unwritten)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _write(self, batch: list[CallRecord]) -> tuple[list[CallRecord], list[CallRecord]]:
        """Write `batch`; returns the rows kept for a retry (the ledger cannot be written now) and the rows
        dropped (they cannot be stored at all: _write_each)."""
        try:
            self._ensure_open()
            try:
                self._insert(batch)
            except Exception as exc:
                if isinstance(exc, self.file_errors) and not isinstance(exc, self.data_errors):
                    raise
                return self._write_each(batch)  # a row's values, or a bug with one row: never the whole batch
        except self.file_errors as exc:
            self._failed(exc, len(batch))
            return batch, []
        self._resumed(len(batch))
        return [], []

    def _write_each(self, batch: list[CallRecord]) -> tuple[list[CallRecord], list[CallRecord]]:
        """The rows of a batch that failed on its data, one transaction each: a row that cannot be stored is
        dropped and counted in the log, instead of holding back every row after it."""
        kept: list[CallRecord] = []
        dropped: list[CallRecord] = []
        errors: Counter[str] = Counter()
        for i, call in enumerate(batch):
            try:
                self._insert([call])
            except self.data_errors as exc:
                dropped.append(call)
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
            except self.file_errors as exc:
                self._failed(exc, len(batch) - i)
                kept = batch[i:]
                break
            except Exception as exc:  # whatever else this one row raises: it alone is dropped
                dropped.append(call)
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        if dropped:
            log.error("ledger_rows_dropped", path=str(self.path), calls=len(dropped), errors=dict(errors),
                      reason="these rows cannot be stored; the rows around them are")
        if not kept:
            self._resumed(len(batch) - len(dropped))
        return kept, dropped

    def _insert(self, batch: list[CallRecord]) -> None:
        assert self._conn is not None
        replaced = self._insert_rows(batch)
        self._note_shm_size()
        if replaced:
            log.warning("ledger_values_replaced", path=str(self.path), values=dict(replaced),
                        action="stored as 0: not a finite, non-negative number the ledger can hold")

    def _insert_rows(self, batch: list[CallRecord]) -> Counter[str]:
        return insert(self._conn, batch, self.instance)

    def _failed(self, exc: Exception, kept: int) -> None:
        error = str(exc)
        if self._failure is None:
            log.error("ledger_write_failed", path=str(self.path), error=error, kept_in_memory=kept, retry_s=self.RETRY_S)
        self._failure = error
        if self._conn is not None:  # start over with a fresh connection at the next try
            try:
                self._conn.close()
            except Exception:  # a connection already broken may fail to close; it is dropped all the same
                pass
            self._conn = None

    def _resumed(self, calls: int) -> None:
        if self._failure is not None:
            log.warning("ledger_write_resumed", path=str(self.path), calls=calls)
            self._failure = None

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
    if problem := _newer_by_header(path):
        raise ConfigError(problem)
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
        if problem := _not_a_ledger(conn, path, version, empty_ok=False):
            conn.close()
            raise ConfigError(problem)
    except sqlite3.Error as exc:
        raise ConfigError(f"ledger.path: cannot read the ledger {path} ({exc})") from exc
    conn.row_factory = sqlite3.Row
    return conn


def cloud_spend_since(conn: sqlite3.Connection, since: float) -> float:
    return conn.execute("SELECT COALESCE(SUM(cloud_cost), 0) FROM calls WHERE time >= ?", (since,)).fetchone()[0]


def principal_use_since(conn: sqlite3.Connection, since: float) -> dict[str, tuple[float, int]]:
    """Each principal's cloud spend and tokens (every hop's) since `since`."""
    rows = conn.execute("SELECT c.principal AS principal, TOTAL(h.cloud_cost) AS cloud, "
                        "TOTAL(h.prompt_tokens + h.completion_tokens) AS tokens FROM hops h JOIN calls c ON c.id = h.call_id "
                        "WHERE h.time >= ? AND c.principal IS NOT NULL GROUP BY c.principal", (since,))
    named = (row if isinstance(row, dict) else dict(zip(("principal", "cloud", "tokens"), row)) for row in rows)
    return {row["principal"]: (row["cloud"], int(row["tokens"])) for row in named}
