"""Ledgers of every earlier schema (read by the report as they are, migrated by the server with their rows),
and files at ledger.path that are no ledger this version may write (a newer schema, another program's database):
refused in one sentence and left byte for byte as they were."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered.ledger import MIGRATIONS, SCHEMA, SCHEMA_VERSION, CallRecord, HopRecord, connect, insert

T0 = 1_780_000_000.0
ADDED = {version: re.search(r"ADD COLUMN (\w+)", sql)[1] for version, sql in MIGRATIONS.items()}
"""Schema version → the column it added."""
EARLIER = range(1, SCHEMA_VERSION)
CALL = {"time": T0 + 40, "tool": "generate_small", "tier": "small", "served_by": "small", "model": "m", "outcome": "ok",
        "prompt_tokens": 1000, "completion_tokens": 200, "latency_s": 40.0, "queue_s": 0.0, "generation_s": 36.0,
        "escalation_reasons": "", "cache_hit": 0, "energy_wh": 3.0, "local_cost": 0.00075, "cloud_cost": 0.0}
HOP = {"call_id": 1, "time": T0 + 40, "position": 0, "tier": "small", "model": "m", "outcome": "answered",
       "prompt_tokens": 1000, "completion_tokens": 200, "queue_s": 0.0, "generation_s": 36.0, "energy_wh": 3.0,
       "local_cost": 0.00075, "cloud_cost": 0.0}


def schema_of(version: int) -> str:
    """SCHEMA without the columns later versions added (and without the covering indexes of version 4)."""
    later = tuple(f"{column} " for v, column in ADDED.items() if v > version)
    tables = SCHEMA.split("-- Covering indexes")[0]
    lines = [line for line in tables.splitlines() if not line.strip().startswith(later)]
    return re.sub(r",(\s*--[^\n]*)?\n\)", r"\1\n)", "\n".join(lines))


def earlier_ledger(path: Path, version: int) -> Path:
    """A ledger as a server of `version` left it: two calls three days apart, each with its hop."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(schema_of(version))
        for day in (0, 3):
            call = {**CALL, "time": CALL["time"] + day * 86400}
            cursor = conn.execute(f"INSERT INTO calls ({', '.join(call)}) VALUES ({', '.join('?' * len(call))})",
                                  tuple(call.values()))
            hop = {**HOP, "call_id": cursor.lastrowid, "time": call["time"]}
            conn.execute(f"INSERT INTO hops ({', '.join(hop)}) VALUES ({', '.join('?' * len(hop))})", tuple(hop.values()))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    return path


def config_for(tmp_path: Path, ledger: Path) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    config = tmp_path / "models.toml"
    config.write_text(f'[tiers.small]\nmodel = "{model}"\ndescription = "s"\n[ledger]\npath = "{ledger}"\n')
    return config


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mcp_tiered(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, *args], capture_output=True, text=True, env=server_env(), timeout=60,
                          stdin=subprocess.DEVNULL)


def errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("version", EARLIER)
@pytest.mark.parametrize(("output", "shows"), [
    (["--format", "table"], "small      2  100.0 %"), (["--by", "client"], "(no clientInfo)      2"),
    (["--format", "html"], "<td>(no clientInfo)</td><td>2</td>"),
], ids=["table", "by-client", "html"])
def test_report_reads_a_ledger_of_an_earlier_schema_as_it_is(tmp_path: Path, version: int, output: list[str],
                                                             shows: str) -> None:
    ledger = earlier_ledger(tmp_path / "ledger.sqlite3", version)
    before = digest(ledger)
    done = mcp_tiered("report", "--config", str(config_for(tmp_path, ledger)), *output)
    assert done.returncode == 0, done.stderr
    assert shows in done.stdout
    assert digest(ledger) == before


@pytest.mark.parametrize("version", EARLIER)
def test_report_json_of_a_ledger_of_an_earlier_schema_reads_its_missing_columns_as_their_defaults(
        tmp_path: Path, version: int) -> None:
    ledger = earlier_ledger(tmp_path / "ledger.sqlite3", version)
    before = digest(ledger)
    done = mcp_tiered("report", "--config", str(config_for(tmp_path, ledger)), "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["totals"]["calls"] == 2 and report["totals"]["prompt_tokens"] == 2000
    assert [(c["client"], c["calls"]) for c in report["clients"]] == [(None, 2)]
    assert digest(ledger) == before


@pytest.mark.parametrize("version", EARLIER)
def test_the_server_migrates_a_ledger_of_an_earlier_schema_with_its_rows(tmp_path: Path, version: int) -> None:
    ledger = earlier_ledger(tmp_path / "ledger.sqlite3", version)
    with closing(connect(ledger)) as conn:
        insert(conn, [CallRecord(T0 + 7 * 86400, "generate_small", "small", "small", "m", "ok", 10, 2, 1.0,
                                 hops=(HopRecord(0, "small", "m", "answered", None, 10, 2, prompt_s=0.5),),
                                 client="claude-code")])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        calls = [tuple(r) for r in conn.execute("SELECT prompt_tokens, client FROM calls ORDER BY id")]
        hops = [tuple(r) for r in conn.execute("SELECT prompt_tokens, verification, prompt_s FROM hops ORDER BY id")]
    assert calls == [(1000, None), (1000, None), (10, "claude-code")]
    assert hops == [(1000, None, 0.0), (1000, None, 0.0), (10, None, 0.5)]


def newer_ledger(path: Path) -> Path:
    """A ledger of the next schema, in the rollback-journal mode another tool may have left it in."""
    with closing(connect(path)) as conn:
        insert(conn, [CallRecord(T0, "generate_small", "small", "small", "m", "ok", 1, 1, 0.1)])
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    return path


def foreign_database(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE foo (x)")
        conn.execute("INSERT INTO foo VALUES (1)")
        conn.commit()
    return path


@pytest.mark.parametrize("command", ["serve", "report"])
def test_a_ledger_of_a_newer_schema_is_refused_and_left_as_it_was(tmp_path: Path, command: str) -> None:
    ledger = newer_ledger(tmp_path / "ledger.sqlite3")
    before = digest(ledger)
    done = mcp_tiered(command, "--config", str(config_for(tmp_path, ledger)))
    assert digest(ledger) == before
    assert sorted(p.name for p in tmp_path.glob("ledger.sqlite3*")) == ["ledger.sqlite3"]
    assert done.returncode == 1
    assert errors(done) == [f"error: ledger.path: {ledger} was written by a newer mcp-tiered (schema "
                            f"{SCHEMA_VERSION + 1}, this one knows up to {SCHEMA_VERSION}); upgrade mcp-tiered or "
                            "point ledger.path elsewhere"]


@pytest.mark.parametrize("command", ["serve", "report"])
def test_another_programs_database_at_the_ledger_path_is_refused_and_left_as_it_was(tmp_path: Path,
                                                                                    command: str) -> None:
    database = foreign_database(tmp_path / "app.sqlite3")
    before = digest(database)
    done = mcp_tiered(command, "--config", str(config_for(tmp_path, database)))
    assert digest(database) == before
    assert done.returncode == 1
    assert errors(done) == [f"error: ledger.path: {database} is not an mcp-tiered ledger (it holds other tables, not "
                            "calls and hops); point ledger.path at a new file"]
