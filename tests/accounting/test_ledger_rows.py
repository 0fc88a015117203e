"""What the ledger stores when a record holds values it cannot: numbers no count or amount can be (stored as 0,
and said so), a row SQLite refuses (dropped, and said so, while the rows around it are written), caller text
with control characters (stored escaped)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from mcp_tiered.accounting.ledger import CallRecord, HopRecord, Ledger, connect, insert


def call(tokens: int, **fields) -> CallRecord:
    return CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", tokens, tokens, 0.1, **fields)


def rows(path: Path, table: str) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


@pytest.mark.anyio
async def test_a_row_with_impossible_numbers_is_stored_with_zeros_and_the_rows_after_it_are_committed(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    nan, inf = float("nan"), float("inf")
    hop = HopRecord(0, "small", "m", "answered", None, 10**30, 7, inf, nan, verification=nan)
    impossible = CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", 10**30, -5, nan, hops=(hop,))
    with capture_logs() as events, anyio.fail_after(10):
        assert await ledger.commit(call(1))
        assert await ledger.commit(impossible)
        assert [await ledger.commit(call(n)) for n in (2, 3)] == [True, True]
    ledger.close()

    calls = rows(path, "calls")
    assert [c["prompt_tokens"] for c in calls] == [1, 0, 2, 3]
    assert [calls[1][k] for k in ("completion_tokens", "latency_s", "queue_s", "generation_s")] == [0, 0.0, 0.0, 0.0]
    (stored,) = rows(path, "hops")
    assert [stored[k] for k in ("prompt_tokens", "completion_tokens", "queue_s", "generation_s", "verification")] == [
        0, 7, 0.0, 0.0, None]
    (replaced,) = [e for e in events if e["event"] == "ledger_values_replaced"]
    assert replaced["values"] == {"calls.prompt_tokens": 1, "calls.completion_tokens": 1, "calls.latency_s": 1,
                                  "hops.prompt_tokens": 1, "hops.queue_s": 1, "hops.generation_s": 1,
                                  "hops.verification": 1}


def test_a_row_sqlite_refuses_is_dropped_and_logged_once_while_the_rows_around_it_are_written(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    unstorable = call(9, hops=(HopRecord(0, "small", None, "answered", None),))  # hops.model is NOT NULL
    with capture_logs() as events:
        for record in (call(1), unstorable, call(2)):
            ledger.record(record)
        assert ledger.flush(10)
        ledger.record(call(3))
        assert ledger.flush(10)
    assert ledger.unwritten == 0
    ledger.close()

    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [1, 2, 3]
    (dropped,) = [e for e in events if e["event"] == "ledger_rows_dropped"]
    assert dropped["calls"] == 1
    assert dropped["errors"] == {"IntegrityError: NOT NULL constraint failed: hops.model": 1}


@pytest.mark.parametrize(("name", "stored"), [
    ("\x1b]0;OWNED\x07\x1b[2J", "\\x1b]0;OWNED\\x07\\x1b[2J"),
    ("right\u202eleft", "right\\u202eleft"),
    ("half \ud800 a pair", "half \\ud800 a pair"),
])
def test_a_client_name_is_stored_with_its_invisible_characters_escaped(tmp_path: Path, name: str, stored: str) -> None:
    path = tmp_path / "ledger.sqlite3"
    with closing(connect(path)) as conn:
        insert(conn, [call(1, client=name)])
    assert [c["client"] for c in rows(path, "calls")] == [stored]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this value")


@pytest.mark.anyio
async def test_a_row_that_raises_something_unforeseen_is_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    broken = call(9, client=Unprintable())  # type: ignore[arg-type]
    with anyio.fail_after(10):
        assert await ledger.commit(call(1))
        assert not await ledger.commit(broken)
        assert [await ledger.commit(call(n)) for n in (2, 3)] == [True, True]
    ledger.close()
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [1, 2, 3] and ledger.unwritten == 0
