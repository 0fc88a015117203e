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
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered.errors import ConfigError
from mcp_tiered.accounting.ledger import (CALLS, HOPS, MIGRATIONS, SCHEMA_VERSION, TABLES, CallRecord, HopRecord, _Values,
                                connect, insert, reading)

T0 = 1_780_000_000.0
_CALLS_1 = """
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
"""
_INDEXES_1 = """
CREATE INDEX IF NOT EXISTS calls_time ON calls(time);
CREATE INDEX IF NOT EXISTS hops_time ON hops(time);
"""
_HOP_COUNTS = """
    escalation_reason TEXT,             -- why the call left this tier
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    queue_s REAL NOT NULL,
    generation_s REAL NOT NULL,
    energy_wh REAL NOT NULL,
    local_cost REAL NOT NULL,
"""
HISTORY = {
    1: _CALLS_1 + """\
    outcome TEXT NOT NULL,              -- answered | escalated | failed""" + _HOP_COUNTS + """\
    cloud_cost REAL NOT NULL
);""" + _INDEXES_1,
    2: _CALLS_1 + """\
    outcome TEXT NOT NULL,              -- answered | escalated | failed | verified | rejected (a verifier's reading)\
""" + _HOP_COUNTS + """\
    cloud_cost REAL NOT NULL,
    verification REAL                   -- a verifier's hop: its statistic (escalation.judge_verification)
);""" + _INDEXES_1,
    3: _CALLS_1 + """\
    outcome TEXT NOT NULL,              -- answered | escalated | failed | verified | rejected (a verifier's reading)\
""" + _HOP_COUNTS + """\
    cloud_cost REAL NOT NULL,
    verification REAL,                  -- a verifier's hop: its statistic (escalation.judge_verification)
    prompt_s REAL NOT NULL DEFAULT 0    -- of generation_s, the seconds before the first token
);""" + _INDEXES_1,
    4: """
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
    client TEXT                         -- the MCP client's clientInfo name (visible()); NULL when it gave none
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
""",
    5: """CREATE TABLE IF NOT EXISTS calls (
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
    client TEXT,                        -- the MCP client's clientInfo name (visible()); NULL when it gave none
    instance TEXT                       -- the server process that answered ([store] instance, else <host>:<pid>)
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
CREATE INDEX IF NOT EXISTS calls_by_instance ON calls(instance, outcome, prompt_tokens, completion_tokens,
    local_cost, cloud_cost, time);
""",    6: """CREATE TABLE IF NOT EXISTS calls (
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
    client TEXT,                        -- the MCP client's clientInfo name (visible()); NULL when it gave none
    instance TEXT,                      -- the server process that answered ([store] instance, else <host>:<pid>)
    principal TEXT                      -- who called, as authenticated (key:<name>, the token's principal claim, the local user on stdio, anonymous); NULL before schema 6
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
CREATE INDEX IF NOT EXISTS calls_by_instance ON calls(instance, outcome, prompt_tokens, completion_tokens,
    local_cost, cloud_cost, time);
CREATE INDEX IF NOT EXISTS calls_by_principal ON calls(principal, outcome, prompt_tokens, completion_tokens,
    local_cost, cloud_cost, time);
""",
}
"""Schema version → the statements a server of that version created its ledger with, as they were (SQLite keeps
their text in the file). Frozen: a new schema adds its own entry and leaves these as they are."""
EARLIER = range(1, SCHEMA_VERSION)
ADDED = {version: re.search(r"ADD COLUMN (\w+)", sql)[1] for version, sql in MIGRATIONS.items()}
"""Schema version → the column it added."""
ABSENT = {"verification": None, "prompt_s": 0.0, "client": None, "instance": None, "principal": None}
"""What a row written before its column existed holds there once the ledger is migrated."""
CALL = {"time": T0 + 40, "tool": "generate_small", "tier": "small", "served_by": "small", "model": "m", "outcome": "ok",
        "prompt_tokens": 1000, "completion_tokens": 200, "latency_s": 40.0, "queue_s": 0.0, "generation_s": 36.0,
        "escalation_reasons": "", "cache_hit": 0, "energy_wh": 3.0, "local_cost": 0.00075, "cloud_cost": 0.0}
HOP = {"call_id": 1, "time": T0 + 40, "position": 0, "tier": "small", "model": "m", "outcome": "answered",
       "prompt_tokens": 1000, "completion_tokens": 200, "queue_s": 0.0, "generation_s": 36.0, "energy_wh": 3.0,
       "local_cost": 0.00075, "cloud_cost": 0.0}
LATER = {"verification": 0.75, "prompt_s": 4.0, "client": "cursor", "instance": "replica-1", "principal": "key:ci"}
"""A value for each added column, in the rows of a ledger of a version that has it."""


def earlier_ledger(path: Path, version: int) -> Path:
    """A ledger as a server of `version` left it: two calls three days apart, each with its hop, every column
    that version had holding a value."""
    later = {ADDED[v]: LATER[ADDED[v]] for v in ADDED if v <= version}
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(HISTORY[version])
        for day in (0, 3):
            call = {**CALL, "time": CALL["time"] + day * 86400, **{k: v for k, v in later.items() if k in CALLS.names}}
            cursor = conn.execute(f"INSERT INTO calls ({', '.join(call)}) VALUES ({', '.join('?' * len(call))})",
                                  tuple(call.values()))
            hop = {**HOP, "call_id": cursor.lastrowid, "time": call["time"],
                   **{k: v for k, v in later.items() if k in HOPS.names}}
            conn.execute(f"INSERT INTO hops ({', '.join(hop)}) VALUES ({', '.join('?' * len(hop))})", tuple(hop.values()))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    return path


def table_rows(conn: sqlite3.Connection, table: str) -> list[dict[str, object]]:
    cursor = conn.execute(f"SELECT * FROM {table} ORDER BY id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


def shape(conn: sqlite3.Connection) -> dict[str, object]:
    """The tables' columns (name, type, NOT NULL, default, key) and their indexes' columns, in order."""
    return {table: ([tuple(c) for c in conn.execute(f"PRAGMA table_info({table})")],
                    sorted((i[1], [c[2] for c in conn.execute(f"PRAGMA index_info({i[1]})")])
                           for i in conn.execute(f"PRAGMA index_list({table})")))
            for table in ("calls", "hops")}


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
    (["--format", "table"], "small      2  100.0 %"), (["--by", "client"], "(no clientInfo) 2"),
    (["--format", "html"], "<td>(no clientInfo)</td><td>2</td>"),
], ids=["table", "by-client", "html"])
def test_report_reads_a_ledger_of_an_earlier_schema_as_it_is(tmp_path: Path, version: int, output: list[str],
                                                             shows: str) -> None:
    ledger = earlier_ledger(tmp_path / "ledger.sqlite3", version)
    before = digest(ledger)
    done = mcp_tiered("report", "--config", str(config_for(tmp_path, ledger)), *output)
    assert done.returncode == 0, done.stderr
    if version >= 4:  # its calls name their client
        shows = shows.replace("(no clientInfo)", LATER["client"])
    assert re.sub(" +", " ", shows) in re.sub(" +", " ", done.stdout)  # the columns' alignment aside
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
    assert [(c["client"], c["calls"]) for c in report["clients"]] == [(LATER["client"] if version >= 4 else None, 2)]
    assert [(c["instance"], c["calls"]) for c in report["instances"]] == [(LATER["instance"] if version >= 5 else None, 2)]
    assert [(c["principal"], c["calls"]) for c in report["principals"]] == [(None, 2)]
    assert digest(ledger) == before


def test_every_schema_version_is_frozen_in_history() -> None:
    assert sorted(HISTORY) == list(range(1, SCHEMA_VERSION + 1))
    assert sorted(MIGRATIONS) == list(range(2, SCHEMA_VERSION + 1)) and set(ADDED.values()) == set(ABSENT)


def test_a_new_ledger_has_byte_for_byte_the_schema_of_its_version(tmp_path: Path) -> None:
    """The statements derived from the declaration (CALLS, HOPS) write the very text SQLite keeps in the file."""
    with closing(connect(tmp_path / "new.sqlite3")) as conn:
        written = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    with closing(sqlite3.connect(tmp_path / "frozen.sqlite3")) as conn:
        conn.executescript(HISTORY[SCHEMA_VERSION])
        frozen = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert [tuple(row) for row in written] == frozen


@pytest.mark.parametrize("version", EARLIER)
def test_the_server_migrates_a_ledger_of_every_earlier_schema_with_its_rows(tmp_path: Path, version: int) -> None:
    ledger = earlier_ledger(tmp_path / "ledger.sqlite3", version)
    with closing(sqlite3.connect(ledger)) as conn:
        before = {table: table_rows(conn, table) for table in ("calls", "hops")}
    with closing(connect(ledger)) as conn:
        insert(conn, [CallRecord(T0 + 7 * 86400, "generate_small", "small", "small", "m", "ok", 10, 2, 1.0,
                                 hops=(HopRecord(0, "small", "m", "answered", None, 10, 2, prompt_s=0.5,
                                                 verification=0.25),),
                                 client="claude-code")])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        after = {table: table_rows(conn, table) for table in ("calls", "hops")}
    with closing(connect(tmp_path / "new.sqlite3")) as new, closing(sqlite3.connect(ledger)) as migrated:
        assert shape(migrated) == shape(new)

    absent = {column: ABSENT[column] for v, column in ADDED.items() if v > version}
    for table in TABLES:
        declared = {c.name for c in table.columns}
        assert len(before[table.name]) == 2 and set(after[table.name][0]) == declared
        assert after[table.name][:2] == [{**row, **{k: v for k, v in absent.items() if k in declared}}
                                         for row in before[table.name]]
    assert [after["calls"][2][k] for k in ("prompt_tokens", "client")] == [10, "claude-code"]
    assert [after["hops"][2][k] for k in ("call_id", "prompt_tokens", "verification", "prompt_s")] == [3, 10, 0.25, 0.5]


def newer_ledger(path: Path, journal: str = "delete") -> Path:
    """A ledger of the next schema, with a column this version does not know, in the journal mode a server of
    that version (wal) or another tool (delete, rollback journal) left it in."""
    with closing(connect(path)) as conn:
        insert(conn, [CallRecord(T0, "generate_small", "small", "small", "m", "ok", 1, 1, 0.1)])
        conn.execute("ALTER TABLE calls ADD COLUMN later TEXT")
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert sorted(p.name for p in path.parent.glob(path.name + "*")) == [path.name]
    return path


def refusal(ledger: Path) -> str:
    return (f"ledger.path: {ledger} was written by a newer mcp-tiered (schema {SCHEMA_VERSION + 1}, this one knows "
            f"up to {SCHEMA_VERSION}); upgrade mcp-tiered or point ledger.path elsewhere")


@pytest.mark.parametrize("journal", ["wal", "delete"])
@pytest.mark.parametrize("opener", ["connect", "reading"])
def test_a_ledger_of_a_newer_schema_is_refused_in_one_sentence_and_left_byte_for_byte(
        tmp_path: Path, journal: str, opener: str) -> None:
    ledger = newer_ledger(tmp_path / "ledger.sqlite3", journal)
    before = digest(ledger)
    with pytest.raises(ConfigError) as refused:
        if opener == "connect":
            connect(ledger).close()
        else:
            with reading(ledger):
                pass
    assert str(refused.value) == refusal(ledger)
    assert digest(ledger) == before
    assert sorted(p.name for p in tmp_path.glob("ledger.sqlite3*")) == ["ledger.sqlite3"]


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
    assert errors(done) == [f"error: {refusal(ledger)}"]


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


def test_each_migration_adds_the_column_declared_with_its_version() -> None:
    declared = {c.since: f"ALTER TABLE {table.name} ADD COLUMN {c.name} {c.sql_type}"
                for table in TABLES for c in table.columns if c.since > 1}
    assert MIGRATIONS == declared
    assert all(1 <= c.since <= SCHEMA_VERSION for table in TABLES for c in table.columns)


SUMMED = {"queue_s", "generation_s", "escalation_reasons", "energy_wh", "local_cost", "cloud_cost"}
"""The calls columns that sum (or join) its hops' rather than hold a CallRecord field."""


def test_a_record_gives_exactly_the_declared_columns_each_from_its_field() -> None:
    """A field added to a record without its column in the declaration, a column declared that the record does
    not give, or a row key taken from the wrong field fails here (named placeholders would silently ignore a key
    that no column has, and drop every row for one they lack)."""
    hop = HopRecord(position=1, tier="large", model="big", outcome="escalated", escalation_reason="low_confidence",
                    prompt_tokens=11, completion_tokens=12, queue_s=0.13, generation_s=0.14, energy_wh=0.15,
                    local_cost=0.16, cloud_cost=0.17, verification=-0.18, prompt_s=0.019)
    call = CallRecord(time=T0, tool="generate_large", tier="small", served_by="large", model="big",
                      outcome="cache_hit", prompt_tokens=21, completion_tokens=22, latency_s=2.3, cache_hit=True,
                      hops=(hop, hop), client="zed")
    values = _Values()
    call_row, hop_rows = call.rows(values)
    assert values.replaced == []

    hop_fields = {f.name for f in fields(HopRecord)}
    assert sorted(hop_fields) == sorted(set(HOPS.names) - {"call_id", "time"})
    for row in hop_rows:
        assert sorted(row) == sorted(HOPS.names)
        assert {k: row[k] for k in hop_fields} == {k: getattr(hop, k) for k in hop_fields}
        assert row["time"] == T0 and row["call_id"] is None  # insert() gives it the call's id

    call_fields = {f.name for f in fields(CallRecord)} - {"hops"}
    assert sorted(call_row) == sorted(CALLS.names)
    assert sorted(call_fields) == sorted(set(CALLS.names) - SUMMED - {"instance"})  # the writer's: Ledger.instance
    assert call_row["instance"] is None and call.rows(_Values(), "replica-1")[0]["instance"] == "replica-1"
    assert {k: call_row[k] for k in call_fields} == {**{k: getattr(call, k) for k in call_fields}, "cache_hit": 1}
    assert {k: call_row[k] for k in SUMMED} == {
        "queue_s": 0.26, "generation_s": 0.28, "escalation_reasons": "low_confidence,low_confidence",
        "energy_wh": 0.30, "local_cost": 0.32, "cloud_cost": 0.34}

