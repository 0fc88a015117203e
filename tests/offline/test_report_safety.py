"""The report's numbers and text against hostile inputs: non-finite costs in the config are refused, figures a
ledger row makes infinite are null in strict JSON, and a client's name cannot drive the terminal."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered.config.load import load_config
from mcp_tiered.accounting.costs import CostModel
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, connect, insert
from mcp_tiered.offline.report import report_json

T0 = 1_780_000_000.0
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL, except the newline between lines."""


def write_config(tmp_path: Path, costs: str = "") -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    config = tmp_path / "models.toml"
    config.write_text(f'[tiers.small]\nmodel = "{model}"\ndescription = "s"\n[ledger]\npath = "ledger.sqlite3"\n'
                      f"[costs]\nelectricity_per_kwh = 0.25\n{costs}")
    return config


def two_calls(path: Path) -> Path:
    hop = HopRecord(0, "small", "m", "answered", None, 1000, 200, 0.0, 36.0, 3.0, 0.00075)
    with closing(connect(path)) as conn:
        insert(conn, [CallRecord(T0 + day * 86400, "generate_small", "small", "small", "m", "ok", 1000, 200, 40.0,
                                 hops=(hop,), client="claude-code") for day in (0, 3)])
    return path


def run_report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, "report", "--config", str(config), *args], capture_output=True, text=True,
                          env=server_env(), timeout=60)


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("toml", "sentence"), [
    ("[costs.tiers.small]\nhardware_cost = inf\n",
     "costs.tiers.small.hardware_cost: must be a number from 0 to 1e15, got Infinity"),
    ("[costs.tiers.small]\nhardware_cost = 1e300\n",
     "costs.tiers.small.hardware_cost: must be a number from 0 to 1e15, got 1e+300"),
    ("[costs.tiers.small]\npower_watts = inf\n",
     "costs.tiers.small.power_watts: must be a number from 0 to 1e15, got Infinity"),
    ("[costs.tiers.small]\namortization_months = 1e-300\n",
     "costs.tiers.small.amortization_months: must be a number of months from 1 to 1200, got 1e-300"),
    ("cloud_input_price_per_mtok = inf\n",
     "costs.cloud_input_price_per_mtok: must be a number from 0 to 1e15, got Infinity"),
], ids=["hardware-inf", "hardware-huge", "watts-inf", "amortization-tiny", "price-inf"])
def test_a_cost_that_is_not_a_finite_number_in_range_is_refused_in_one_sentence(tmp_path: Path, toml: str,
                                                                                 sentence: str) -> None:
    config = write_config(tmp_path, toml)
    two_calls(tmp_path / "ledger.sqlite3")
    done = run_report(config)
    assert (done.returncode, done.stderr) == (1, f"error: {sentence}\n")


def with_an_infinite_cost(ledger: Path) -> Path:
    """A row as a server before the ledger's checks stored an engine's infinite bill."""
    with closing(sqlite3.connect(ledger)) as conn:
        conn.execute("UPDATE calls SET cloud_cost = 9e999, prompt_tokens = 9e999 WHERE id = 1")
        conn.execute("UPDATE hops SET cloud_cost = 9e999 WHERE id = 1")
        conn.commit()
    return ledger


def test_report_json_from_a_ledger_row_with_an_infinite_figure_is_strict_json_with_null(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with_an_infinite_cost(two_calls(tmp_path / "ledger.sqlite3"))
    done = run_report(config, "--format", "json")
    assert done.returncode == 0, done.stderr
    report = strict_json(done.stdout)
    assert report["totals"]["cloud_cost"] is None and report["totals"]["prompt_tokens"] is None
    assert report["totals"]["calls"] == 2


def test_the_report_resource_from_a_ledger_row_with_an_infinite_figure_is_strict_json(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    ledger = with_an_infinite_cost(two_calls(tmp_path / "ledger.sqlite3"))
    report = strict_json(report_json(ledger, CostModel.from_config(config), None))  # what tiered://report returns
    assert report["totals"]["cloud_cost"] is None


@pytest.mark.parametrize("output", [[], ["--by", "client"]], ids=["by-tier", "by-client"])
def test_a_ledger_row_with_an_infinite_figure_is_shown_as_not_computed(tmp_path: Path, output: list[str]) -> None:
    config = write_config(tmp_path)
    with_an_infinite_cost(two_calls(tmp_path / "ledger.sqlite3"))
    done = run_report(config, *output)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"(?i)\b(inf|nan)\b", done.stdout)


HOSTILE = "\x1b]0;OWNED\x07\x1b[2J\x1b[31mred\x9b1m\u202eevil\r\x08"


def test_report_by_client_shows_a_clients_control_characters_escaped(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ledger = two_calls(tmp_path / "ledger.sqlite3")
    with closing(sqlite3.connect(ledger)) as conn:  # as a server before the ledger escaped names stored it
        conn.execute("UPDATE calls SET client = ?", (HOSTILE,))
        conn.commit()
    done = run_report(config, "--by", "client")
    assert done.returncode == 0, done.stderr
    assert not CONTROL.findall(done.stdout) and "\u202e" not in done.stdout
    assert "\\x1b]0;OWNED\\x07\\x1b[2J\\x1b[31mred\\x9b1m\\u202eevil\\r\\x08" in done.stdout
