"""The ledger in the store: the same rows as SQLite's, committed before the answer goes out, kept in memory
while the database cannot be reached and written when it is back; its schema created, migrated and guarded
like a SQLite ledger's; reports read it with the same numbers."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from helpers import query
from mcp_tiered.accounting.costs import CostModel
from mcp_tiered.accounting.ledger import CALLS, HOPS, SCHEMA_VERSION, CallRecord, HopRecord, Ledger
from mcp_tiered.config.schema import StoreConfig
from mcp_tiered.errors import ConfigError
from mcp_tiered.offline import report
from mcp_tiered.store.ledger import StoreLedger
from mcp_tiered.store.reading import reading
from mcp_tiered.store.runtime import Store

pytestmark = pytest.mark.anyio


def call(client: str = "cursor", cloud_cost: float = 0.0) -> CallRecord:
    hops = (HopRecord(0, "small", "m.gguf", "escalated", "confidence", 30, 6, 0.01, 0.2, 0.01, 0.000003),
            HopRecord(1, "cloud", "claude", "answered", None, 30, 7, 0.0, 0.9, cloud_cost=cloud_cost))
    return CallRecord(time.time(), "generate_small", "small", "cloud", "claude", "ok", 30, 7, 1.2, hops=hops,
                      client=client)


def store_ledger(url: str, **settings) -> StoreLedger:  # noqa: ANN003
    return StoreLedger(Store(StoreConfig(url=url, **settings)))


async def test_a_committed_call_has_its_row_and_hops_named_by_the_process(store_url: str) -> None:
    ledger = store_ledger(store_url, instance="replica-1")
    try:
        assert await ledger.commit(call())
        rows = query(store_url, "SELECT tool, served_by, client, instance, escalation_reasons FROM calls")
        hops = query(store_url, "SELECT call_id, position, tier, outcome FROM hops ORDER BY position")
    finally:
        ledger.close()
    assert rows == [("generate_small", "cloud", "cursor", "replica-1", "confidence")]
    call_id = query(store_url, "SELECT id FROM calls")[0][0]
    assert hops == [(call_id, 0, "small", "escalated"), (call_id, 1, "cloud", "answered")]


def test_the_store_tables_have_the_ledger_columns_in_order(store_url: str) -> None:
    store_ledger(store_url).close()
    for table in (CALLS, HOPS):
        names = [r[0] for r in query(store_url, "SELECT column_name FROM information_schema.columns WHERE "
                                                "table_name = %s ORDER BY ordinal_position", (table.name,))]
        assert names == [c.name for c in table.columns]


async def test_the_report_on_the_store_gives_the_numbers_of_the_same_rows_in_sqlite(store_url: str,
                                                                                   tmp_path: Path) -> None:
    rows = [call("cursor", 0.0002), call("claude-code"), call("cursor")]
    for ledger in (store_ledger(store_url, instance="one"), Ledger(tmp_path / "l.sqlite3", instance="one")):
        try:
            for row in rows:
                assert await ledger.commit(row)
        finally:
            ledger.close()
    costs = CostModel()
    with reading(StoreConfig(url=store_url)) as conn:
        shared = report.build_report(conn, costs)
    with reading(tmp_path / "l.sqlite3") as conn:
        local = report.build_report(conn, costs)
    assert shared == local
    assert shared["instances"][0]["instance"] == "one" and shared["instances"][0]["calls"] == 3


async def test_rows_answered_while_the_store_is_down_are_written_when_it_is_back(own_postgres) -> None:  # noqa: ANN001
    url = own_postgres.url(own_postgres.new_database())
    ledger = store_ledger(url)
    try:
        own_postgres.stop()
        with anyio.fail_after(10):
            for _ in range(5):
                assert not await ledger.commit(call())  # answered all the same, and quickly
        assert ledger.unwritten == 5
        own_postgres.start()
        with anyio.fail_after(20):
            while ledger.unwritten:
                ledger.record(call())
                await anyio.to_thread.run_sync(ledger.flush, 5.0)
    finally:
        ledger.close()
    assert query(url, "SELECT count(*) FROM calls")[0][0] >= 6


async def test_a_server_started_while_the_store_is_down_writes_its_rows_once_it_is_up(own_postgres) -> None:  # noqa: ANN001
    url = own_postgres.url(own_postgres.new_database())
    own_postgres.stop()
    ledger = store_ledger(url)
    try:
        assert not await ledger.commit(call())
        own_postgres.start()
        with anyio.fail_after(20):
            while ledger.unwritten:
                await anyio.sleep(0.2)
    finally:
        ledger.close()
    assert query(url, "SELECT count(*) FROM calls") == [(1,)]


def test_a_store_of_the_version_before_is_migrated_with_its_rows(store_url: str) -> None:
    ledger = store_ledger(store_url)
    ledger.record(call())
    ledger.close()
    latest = [c.name for c in CALLS.columns if c.since == SCHEMA_VERSION][0]
    query(store_url, f"ALTER TABLE calls DROP COLUMN {latest}; UPDATE mcp_tiered_schema SET version = {SCHEMA_VERSION - 1}")
    store_ledger(store_url).close()
    assert query(store_url, "SELECT version FROM mcp_tiered_schema") == [(SCHEMA_VERSION,)]
    assert query(store_url, f"SELECT count(*), count({latest}) FROM calls") == [(1, 0)]


def test_a_store_written_by_a_newer_version_is_refused_and_left_alone(store_url: str) -> None:
    store_ledger(store_url).close()
    query(store_url, f"UPDATE mcp_tiered_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match=rf"^store.url: the store .* was written by a newer mcp-tiered \(schema "
                                          rf"{SCHEMA_VERSION + 1}, this one knows up to {SCHEMA_VERSION}\)"):
        store_ledger(store_url)
    assert query(store_url, "SELECT version FROM mcp_tiered_schema") == [(SCHEMA_VERSION + 1,)]


def test_a_database_holding_another_programs_calls_table_is_refused(store_url: str) -> None:
    query(store_url, "CREATE TABLE calls (id int)")
    with pytest.raises(ConfigError, match="holds a calls table that mcp-tiered did not make"):
        store_ledger(store_url)


def test_reading_a_store_no_server_has_written_is_one_sentence(store_url: str) -> None:
    with pytest.raises(ConfigError, match=r"^store.url: the store .* holds no ledger yet"):
        with reading(StoreConfig(url=store_url)):
            pass


def test_the_password_comes_from_the_variable_the_config_names(postgres) -> None:  # noqa: ANN001
    from postgres import PASSWORD

    db = postgres.new_database()
    store = Store(StoreConfig(url=postgres.tcp_url(db), password_env="STORE_PW"), environ={"STORE_PW": PASSWORD})
    store.connect().close()
    wrong = Store(StoreConfig(url=postgres.tcp_url(db), password_env="STORE_PW"), environ={"STORE_PW": "wrong"})
    with pytest.raises(Exception, match="password authentication failed") as failed:
        wrong.connect()
    assert "wrong" not in str(failed.value) and PASSWORD not in str(failed.value)


async def test_metrics_say_whether_the_store_answers_and_how_many_rows_wait_for_it(own_postgres) -> None:  # noqa: ANN001
    from conftest import ScriptedBackend
    from helpers import running_store
    from mcp_tiered.calls.tiers import Tier, TierRegistry
    from mcp_tiered.server.metrics import Metrics
    from mcp_tiered.store.runtime import StoreDown

    url = own_postgres.url(own_postgres.new_database())
    async with running_store(url) as store:
        ledger = StoreLedger(store)
        try:
            metrics = Metrics(TierRegistry([Tier("small", ScriptedBackend([]), "s", 10, 0.2)]), store, ledger)
            up = metrics.exposition().decode()
            own_postgres.stop()
            with pytest.raises(StoreDown):
                await store.execute("SELECT 1")
            await ledger.commit(call())
            down = metrics.exposition().decode()
        finally:
            ledger.close()
    assert "mcp_tiered_store_up 1.0" in up and "mcp_tiered_ledger_unwritten 0.0" in up
    assert "mcp_tiered_store_up 0.0" in down and "mcp_tiered_ledger_unwritten 1.0" in down


def test_a_batch_sent_again_after_its_commit_answer_was_lost_is_written_once(store_url: str) -> None:
    ledger = store_ledger(store_url)
    try:
        batch = [call("a"), call("b")]
        ledger._ensure_open()
        ledger._insert_rows(batch)
        ledger._insert_rows(batch)  # what the writer does when COMMIT's reply never came
    finally:
        ledger.close()
    assert query(store_url, "SELECT count(*) FROM calls") == [(2,)]
    assert query(store_url, "SELECT count(*) FROM hops") == [(4,)]


async def test_rows_answered_while_the_store_is_read_only_are_kept_and_written_later(store_url: str) -> None:
    from helpers import read_only

    ledger = store_ledger(store_url)
    try:
        assert await ledger.commit(call("before"))
        read_only(store_url, True)
        for _ in range(3):
            assert not await ledger.commit(call("read-only"))
        assert ledger.unwritten == 3
        read_only(store_url, False)
        with anyio.fail_after(20):
            while ledger.unwritten:
                await anyio.sleep(0.2)
    finally:
        ledger.close()
    assert query(store_url, "SELECT client, count(*) FROM calls GROUP BY client ORDER BY client") == [
        ("before", 1), ("read-only", 3)]
