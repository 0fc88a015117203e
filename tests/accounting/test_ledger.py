"""The ledger: one row per call and per hop, committed off the event loop, surviving kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, ScriptedBackend, server_env, stdio_server
from mcp_tiered.backends import Completion
from mcp_tiered.accounting.budget import CloudBudget
from mcp_tiered.calls.cache import ResponseCache
from mcp_tiered.config.schema import TierCostConfig, TokenPrices
from mcp_tiered.accounting.costs import CostModel
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.errors import BusyError, ConfigError
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, Ledger, cloud_spend_since, connect, insert
from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry

pytestmark = pytest.mark.anyio

SURE = (-0.01,) * 3
UNSURE = (-3.0,) * 3
COSTS = CostModel(
    electricity_per_kwh=0.25, token_prices={"cloud": TokenPrices(input_price_per_mtok=3.0, output_price_per_mtok=15.0)},
    tiers={"small": TierCostConfig(power_watts=300), "large": TierCostConfig(power_watts=600)},
)


def rows(path: Path, table: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    finally:
        conn.close()


def chain_to_cloud(small: list, large: list, cloud: list) -> TierRegistry:
    return TierRegistry([
        Tier("small", ScriptedBackend(small, "smol", generation_s=36.0), "s", 100, 0.2, Policy(escalate_to="large", min_confidence=0.5)),
        Tier("large", ScriptedBackend(large, "big", generation_s=60.0), "l", 100, 0.2, Policy(escalate_to="cloud", min_confidence=0.5)),
        Tier("cloud", ScriptedBackend(cloud, "claude", is_local=False, generation_s=2.0), "c", 100, 1.0),
    ])


async def test_calls_produce_call_and_hop_rows_whose_tokens_match_the_results(tmp_path: Path) -> None:
    registry = chain_to_cloud(
        [Completion("a", "stop", 100, 20, SURE), Completion("b", "stop", 100, 10, UNSURE),
         Completion("c", "stop", 50, 5, UNSURE)],
        [Completion("B", "stop", 110, 21, SURE), Completion("C?", "stop", 55, 6, UNSURE)],
        [Completion("C", "stop", 60, 7)],
    )
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    dispatcher = Dispatcher(registry, cache=ResponseCache(), ledger=ledger, costs=COSTS)
    results = [await dispatcher.generate("small", p, temperature=0) for p in ("qa", "qb", "qc", "qa")]
    ledger.flush()
    calls, hops = rows(ledger.path, "calls"), rows(ledger.path, "hops")
    ledger.close()

    assert [c["served_by"] for c in calls] == [r.served_by for r in results] == ["small", "large", "cloud", "small"]
    assert [(c["prompt_tokens"], c["completion_tokens"]) for c in calls] == [
        (r.usage.prompt_tokens, r.usage.completion_tokens) for r in results]
    assert [c["outcome"] for c in calls] == ["ok", "ok", "ok", "cache_hit"]
    assert [c["escalation_reasons"] for c in calls] == ["", "low_confidence", "low_confidence,low_confidence", ""]
    assert [(h["call_id"], h["tier"], h["outcome"], h["prompt_tokens"], h["completion_tokens"]) for h in hops] == [
        (1, "small", "answered", 100, 20),
        (2, "small", "escalated", 100, 10), (2, "large", "answered", 110, 21),
        (3, "small", "escalated", 50, 5), (3, "large", "escalated", 55, 6), (3, "cloud", "answered", 60, 7),
    ]
    small = hops[0]
    assert small["generation_s"] == 36.0 and small["energy_wh"] == pytest.approx(36 * 300 / 3600)
    assert small["local_cost"] == pytest.approx(3.0 / 1000 * 0.25)
    assert hops[5]["cloud_cost"] == pytest.approx((60 * 3 + 7 * 15) / 1e6) and hops[5]["energy_wh"] == 0
    assert calls[2]["energy_wh"] == pytest.approx((36 * 300 + 60 * 600) / 3600)
    assert calls[2]["cloud_cost"] == pytest.approx((60 * 3 + 7 * 15) / 1e6)
    assert calls[3]["cache_hit"] == 1 and calls[3]["energy_wh"] == 0 and calls[3]["generation_s"] == 0


async def test_failed_and_busy_calls_are_recorded_with_their_outcome(tmp_path: Path) -> None:
    registry = TierRegistry([Tier("small", ScriptedBackend([BusyError("small is busy"), RuntimeError("boom")]),
                                  "s", 100, 0.2)])
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    dispatcher = Dispatcher(registry, ledger=ledger)
    for _ in range(2):
        with pytest.raises(Exception):
            await dispatcher.generate("small", "q")
    ledger.flush()
    calls, hops = rows(ledger.path, "calls"), rows(ledger.path, "hops")
    ledger.close()
    assert [(c["outcome"], c["served_by"]) for c in calls] == [("busy", None), ("error", None)]
    assert [(h["outcome"], h["escalation_reason"]) for h in hops] == [("failed", "busy"), ("failed", "error")]


def test_record_returns_at_once_and_the_writer_thread_commits() -> None:
    # The writer runs on its own thread: `record` only queues.
    import threading

    path = Path(__import__("tempfile").mkdtemp()) / "ledger.sqlite3"
    ledger = Ledger(path)
    writer = ledger._thread
    call = CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", 1, 1, 0.1)
    ledger.record(call)
    assert writer.is_alive() and writer is not threading.current_thread()
    assert ledger.flush(10)
    assert len(rows(path, "calls")) == 1
    ledger.close()


WRITER = """
import sys, time
from pathlib import Path
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, Ledger
ledger = Ledger(Path(sys.argv[1]))
for i in range(1_000_000):
    hop = HopRecord(0, "small", "m", "answered", None, i, i + 1, 0.0, 0.5, 0.1, 0.001, 0.0)
    ledger.record(CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", i, i + 1, 0.5, hops=(hop,)))
    if i % 10 == 9:
        ledger.flush()
        print(i + 1, flush=True)
"""


def test_a_writer_killed_with_sigkill_leaves_every_committed_row_readable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.monotonic() + 120
    while committed < 500 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, "the writer process died before it was killed"
        committed = int(line)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL and committed >= 500
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    calls = conn.execute("SELECT prompt_tokens, completion_tokens FROM calls ORDER BY id").fetchall()
    hops = conn.execute("SELECT COUNT(*) FROM hops").fetchone()[0]
    conn.close()
    assert len(calls) >= committed
    assert calls[:committed] == [(i, i + 1) for i in range(committed)]
    assert hops == len(calls)


def test_a_ledger_path_that_is_a_folder_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").mkdir()
    with pytest.raises(ConfigError) as caught:
        Ledger(tmp_path / "ledger.sqlite3")
    folder = tmp_path / "ledger.sqlite3"
    assert str(caught.value) == f"ledger.path: {folder} is a folder; name a file, such as {folder / 'ledger.sqlite3'}"


def test_cloud_budget_starts_from_the_spend_the_ledger_recorded_today(tmp_path: Path) -> None:
    now = time.time()
    conn = connect(tmp_path / "ledger.sqlite3")
    hop = HopRecord(0, "cloud", "claude", "answered", None, 10, 10, 0.0, 1.0, 0.0, 0.0, 1.25)
    yesterday = now - 86400 * 2
    insert(conn, [CallRecord(now - 5, "generate_cloud", "cloud", "cloud", "claude", "ok", 10, 10, 1.0, hops=(hop,)),
                  CallRecord(yesterday, "generate_cloud", "cloud", "cloud", "claude", "ok", 10, 10, 1.0, hops=(hop,))])
    budget = CloudBudget(2.0, None, "USD", clock=lambda: now)
    day, month = budget.period_starts()
    budget.restore(cloud_spend_since(conn, day), cloud_spend_since(conn, month))
    conn.close()
    assert budget.spent()["today"] == pytest.approx(1.25)
    assert budget.spent()["this_month"] == pytest.approx(2.5 if yesterday >= month else 1.25)


LEDGER_TOML = """
[ledger]
path = "ledger.sqlite3"

[costs]
electricity_per_kwh = 0.25

[costs.tiers.small]
power_watts = 200
hardware_cost = 1000
"""


@pytest.mark.model
async def test_server_records_each_call_and_tiered_report_matches_report_json(small_config: Path) -> None:
    config = small_config.with_name("ledger.toml")
    config.write_text(small_config.read_text() + LEDGER_TOML)
    args = {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 16}
    with anyio.fail_after(90):
        async with stdio_server(config) as client:
            results = [(await client.call_tool("generate_small", args)).structured_content for _ in range(2)]
            resources = (await client.list_resources()).resources
            read = await client.read_resource("tiered://report")
            served = json.loads(read.contents[0].text)
            cli = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--format", "json"],
                                 capture_output=True, text=True, env=server_env(), timeout=60)
    assert [r.uri for r in resources] == ["tiered://report"]
    assert json.loads(cli.stdout) == served
    calls = rows(config.with_name("ledger.sqlite3"), "calls")
    assert [(c["prompt_tokens"], c["completion_tokens"], bool(c["cache_hit"])) for c in calls] == [
        (r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"], r["cache_hit"]) for r in results]
    assert calls[0]["generation_s"] > 0 and calls[0]["energy_wh"] == pytest.approx(calls[0]["generation_s"] * 200 / 3600)
    small = next(t for t in served["tiers"] if t["tier"] == "small")
    assert small["served"] == 1 and served["totals"]["cache_hits"] == 1


@pytest.mark.model
async def test_a_restarted_server_counts_the_cloud_spend_already_in_the_ledger(write_config, smollm2: Path) -> None:
    # Worst case of this call: (17 + 16 margin) input x 3 + 16 output x 15 per million = 0.000339;
    # it is billed 20 x 3 + 8 x 15 = 0.00018. Of a 0.0005 budget, 0.00032 is left after one call.
    from fake_anthropic import FakeAnthropic

    args = {"prompt": "Say the number 1.", "cache": False}
    with FakeAnthropic(reply="1") as fake:
        config = write_config(
            f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "small"\nn_ctx = 1024\nmax_tokens = 16\n'
            f'escalate_to = "cloud"\nmin_confidence = 0.999\n[cloud]\nmodel = "claude-test"\nbase_url = "{fake.url}"\n'
            'daily_budget = 0.0005\n[ledger]\npath = "ledger.sqlite3"\n')
        with anyio.fail_after(120):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                first = (await client.call_tool("generate_small", args)).structured_content
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                second = (await client.call_tool("generate_small", args)).structured_content
    assert first["served_by"] == "cloud" and len(fake.requests) == 1
    assert second["served_by"] == "small"
    assert "only 0.0003 USD of the daily budget (0.0005 USD) is left" in second["escalation_note"]


def test_serve_with_a_ledger_path_that_cannot_be_opened_exits_with_one_sentence(write_config, smollm2: Path) -> None:
    config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\n[ledger]\npath = "models.toml/ledger.db"\n')
    done = subprocess.run([MCP_TIERED, "serve", "--config", str(config)], capture_output=True, text=True,
                          env=server_env(), timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: ledger.path: cannot create the ledger {config}/ledger.db: {config} is a file, not a folder"]


async def test_metrics_count_generation_seconds_energy_and_cost_per_tier() -> None:
    from mcp_tiered.server.metrics import Metrics

    registry = chain_to_cloud([Completion("b", "stop", 100, 10, UNSURE)], [Completion("C?", "stop", 55, 6, UNSURE)],
                              [Completion("C", "stop", 60, 7)])
    metrics = Metrics(registry)
    await Dispatcher(registry, metrics=metrics, costs=COSTS).generate("small", "q")
    text = metrics.exposition().decode()
    assert 'mcp_tiered_generation_seconds_total{tier="small"} 36.0' in text
    assert 'mcp_tiered_energy_wh_total{tier="large"} 10.0' in text  # 60 s at 600 W
    assert f'mcp_tiered_cost_total{{currency="USD",kind="cloud",tier="cloud"}} {(60 * 3 + 7 * 15) / 1e6}' in text


def test_rows_older_than_keep_days_are_deleted_when_the_ledger_opens(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    conn = connect(path)
    hop = HopRecord(0, "small", "m", "answered", None, 1, 1)
    insert(conn, [CallRecord(now - 40 * 86400, "generate_small", "small", "small", "m", "ok", 1, 1, 0.1, hops=(hop,)),
                  CallRecord(now - 5 * 86400, "generate_small", "small", "small", "m", "ok", 2, 2, 0.1, hops=(hop,))])
    conn.close()
    with capture_logs() as events:
        ledger = Ledger(path, keep_days=31)
        ledger.flush(10)
        ledger.close()
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [2]
    assert len(rows(path, "hops")) == 1
    assert {"event": "ledger_pruned", "calls": 1, "keep_days": 31, "log_level": "info"} in events


def test_a_write_that_fills_the_disk_raises_the_real_error(tmp_path: Path) -> None:
    # SQLite rolls a transaction back itself on a full disk; a second ROLLBACK used to hide why.
    conn = connect(tmp_path / "ledger.sqlite3")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    hop = HopRecord(0, "small", "m", "answered", None, 1, 1)
    with pytest.raises(sqlite3.OperationalError) as caught:
        for _ in range(1000):
            insert(conn, [CallRecord(time.time(), "generate_small" * 20, "small", "small", "m", "ok", 1, 1, 0.1,
                                     hops=(hop,) * 5)])
    conn.close()
    assert str(caught.value) == "database or disk is full"


def _call(n: int) -> CallRecord:
    return CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", n, n, 0.1)


async def test_rows_that_cannot_be_written_are_kept_and_written_once_the_ledger_can_be_again(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    with capture_logs() as events:
        assert await ledger.commit(_call(1))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.mkdir()  # the path can no longer hold a database
        with anyio.fail_after(10):
            assert [await ledger.commit(_call(n)) for n in (2, 3)] == [False, False]
        assert ledger.unwritten == 2
        path.rmdir()
        with anyio.fail_after(10):
            assert await ledger.commit(_call(4))
    ledger.close()
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [2, 3, 4]
    failures = [e for e in events if e["event"] == "ledger_write_failed"]
    assert len(failures) == 1 and "is a folder" in failures[0]["error"]
    assert {"event": "ledger_write_resumed", "path": str(path), "calls": 3, "log_level": "warning"} in events


async def test_a_deleted_ledger_is_created_anew_and_said_so(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    with capture_logs() as events, anyio.fail_after(10):
        assert await ledger.commit(_call(1))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        assert await ledger.commit(_call(2)) and await ledger.commit(_call(3))
    ledger.close()
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [2, 3]
    assert [e["reason"] for e in events if e["event"] == "ledger_file_gone"] == ["deleted"]


async def test_a_truncated_wal_index_is_grown_back_instead_of_killing_the_process(tmp_path: Path) -> None:
    # The writer runs in a child process: touching a shrunken mapping is SIGBUS, fatal to the test run.
    script = """
import anyio, os, sys, time
from pathlib import Path
from mcp_tiered.accounting.ledger import CallRecord, Ledger
from mcp_tiered.logs import configure
configure()
async def main():
    path = Path(sys.argv[1]); ledger = Ledger(path)
    row = lambda n: CallRecord(time.time(), "generate_small", "small", "small", "m", "ok", n, n, 0.1)
    assert await ledger.commit(row(1))
    os.truncate(str(path) + "-shm", 0)
    assert await ledger.commit(row(2))
    ledger.close()
anyio.run(main)
"""
    path = tmp_path / "ledger.sqlite3"
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [1, 2]
    assert '"event": "ledger_index_repaired"' in done.stderr


def test_report_reads_a_ledger_that_its_user_may_not_write(tmp_path: Path) -> None:
    import shutil
    import tempfile

    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the report as another user")
    if subprocess.run([*nobody, "test", "-x", MCP_TIERED]).returncode != 0:
        pytest.skip(f"another user cannot run {MCP_TIERED} (the checkout lies in a folder only its owner may enter)")
    folder = Path(tempfile.mkdtemp(prefix="mcp-tiered-ro-"))
    try:
        model = folder / "m.gguf"
        model.write_bytes(b"GGUF" + b"\0" * 64)
        config = folder / "models.toml"
        config.write_text(f'[tiers.small]\nmodel = "{model}"\ndescription = "s"\n[ledger]\npath = "ledger.sqlite3"\n')
        conn = connect(folder / "ledger.sqlite3")
        insert(conn, [_call(7)])
        conn.close()
        for item in (config, model, folder / "ledger.sqlite3"):
            item.chmod(0o444)
        folder.chmod(0o555)
        done = subprocess.run([*nobody, MCP_TIERED, "report",
                               "--config", str(config), "--format", "json"],
                              capture_output=True, text=True, timeout=60, env=server_env(HOME=str(folder)))
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["calls"] == 1


async def test_a_commit_the_writer_cannot_finish_in_time_does_not_hold_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    ledger.COMMIT_WAIT_S = 0.5
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another program holds the write lock (SQLite waits up to 10 s)
    try:
        with anyio.fail_after(5):
            assert await ledger.commit(_call(1)) is False
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ledger.flush(30)
    ledger.close()
    assert [c["prompt_tokens"] for c in rows(path, "calls")] == [1]


def test_the_report_connection_cannot_write(tmp_path: Path) -> None:
    from mcp_tiered.accounting.ledger import reading

    path = tmp_path / "ledger.sqlite3"
    conn = connect(path)
    insert(conn, [_call(1)])
    conn.close()
    with reading(path) as report, pytest.raises(sqlite3.OperationalError, match="readonly"):
        report.execute("DELETE FROM calls")
    assert len(rows(path, "calls")) == 1


def test_a_ledger_of_schema_1_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    from mcp_tiered.accounting import ledger as ledger_module

    path = tmp_path / "old.sqlite3"
    import re

    newer = ("verification REAL", "prompt_s REAL", "client TEXT", "instance TEXT", "principal TEXT")  # the columns schemas 2 to 6 added
    tables = ledger_module.SCHEMA.split("-- Covering indexes")[0]  # schema 1 had neither these indexes
    lines = [line for line in tables.splitlines() if not line.strip().startswith(newer)]
    old_schema = re.sub(r",(\s*--[^\n]*)?\n\)", r"\1\n)", "\n".join(lines))
    assert not any(column.split()[0] in old_schema for column in newer)
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO hops (call_id, time, position, tier, model, outcome, prompt_tokens, "
                     "completion_tokens, queue_s, generation_s, energy_wh, local_cost, cloud_cost) "
                     "VALUES (1, 1.0, 0, 'small', 'm', 'answered', 5, 2, 0, 0.1, 0, 0, 0)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    with closing(ledger_module.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_module.SCHEMA_VERSION
        assert [tuple(r) for r in conn.execute("SELECT tier, prompt_tokens, verification, prompt_s FROM hops")] == [
            ("small", 5, None, 0.0)]


@pytest.mark.model
@pytest.mark.anyio
async def test_a_hop_records_the_seconds_before_its_first_token(smollm2: Path, tmp_path: Path) -> None:
    from mcp_tiered.backends.llama import LlamaBackend
    from mcp_tiered.config.schema import TierConfig
    from mcp_tiered.calls.tiers import Tier, TierRegistry

    backend = LlamaBackend("small", TierConfig(description="s", model=smollm2, n_ctx=1024))
    tiers = TierRegistry([Tier("small", backend, "small", 32, 0.0)])
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        await Dispatcher(tiers, ledger=ledger).generate("small", "Write a haiku about the sea.", max_tokens=24)
    finally:
        ledger.close()
        await tiers.aclose()
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
        ((prompt_s, generation_s, completion),) = conn.execute("SELECT prompt_s, generation_s, completion_tokens FROM hops")
    assert completion > 1 and 0 < prompt_s < generation_s
