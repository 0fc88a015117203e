"""`mcp-tiered whatif`: the reference scenario's break-even table computed (with one row's arithmetic written
out by hand), the config's tiers, the ledger's volume, and the formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered import cli

MONTH_H = 730.5


@pytest.fixture
def config(write_config, tmp_path: Path) -> Path:
    return write_config(f"""
[tiers.small]
model = "s.gguf"
description = "s"
[tiers.large]
model = "l.gguf"
description = "l"
[ledger]
path = "{tmp_path / 'ledger.sqlite3'}"
[costs]
electricity_per_kwh = 0.25
[costs.tiers.small]
power_watts = 400
hardware_cost = 3600
maintenance_per_month = 20
amortization_months = 24
""")


def whatif(config: Path, capsys, *args: str) -> dict:
    assert cli.main(["whatif", "--config", str(config), "--format", "json", *args]) == 0
    return {row["option"]: row for row in json.loads(capsys.readouterr().out)["options"]}


def test_the_reference_at_50m_tokens_and_2500_a_month(config: Path, capsys) -> None:
    rows = whatif(config, capsys, "--scenario", "reference", "--tokens-per-month", "50000000",
                  "--cloud-per-month", "2500")
    assert 1.0 <= rows["13B"]["best"]["break_even_months"] <= rows["13B"]["worst"]["break_even_months"] <= 2.0
    assert rows["70B"]["worst"]["roi_12_months_pct"] < 0 < rows["70B"]["best"]["roi_12_months_pct"]


def test_one_row_by_hand(config: Path, capsys) -> None:
    worst = whatif(config, capsys, "--tokens-per-month", "50M", "--cloud-per-month", "2500")["13B"]["worst"]
    # 13B at its worst: 3 000 of hardware, 300 a month to run, against 2 500 a month of cloud.
    saving = 2500 - 300
    assert worst["saving"] == saving
    assert worst["break_even_months"] == pytest.approx(3000 / saving)  # 1.36 months
    assert worst["roi_12_months_pct"] == pytest.approx((12 * saving - 3000) / 3000 * 100)  # 780 %
    cloud_per_token = 2500 / 50e6
    assert worst["break_even_tokens_per_month"] == pytest.approx((300 + 3000 / 36) / cloud_per_token)  # 7.7 M


def test_the_config_scenario_prices_energy_from_watts_and_the_cloud_from_its_prices(config: Path, capsys) -> None:
    rows = whatif(config, capsys, "--scenario", "config", "--tokens-per-month", "100M", "--input-share", "0.8",
                  "--cloud-share", "0.05", "--duty", "0.5")
    small = rows["small"]["best"]
    cloud = 100e6 * (0.8 * 3.0 + 0.2 * 15.0) / 1e6  # the default Claude prices: 540 a month
    own = 0.4 * MONTH_H * 0.5 * 0.25 + 20  # 400 W half the time at 0.25/kWh, and maintenance
    assert small["cloud"] == pytest.approx(cloud)
    assert small["operating"] == pytest.approx(own + 0.05 * cloud)  # 5 % of the tokens still go to the cloud
    assert small["amortization"] == pytest.approx(3600 / 24)
    assert small["break_even_months"] == pytest.approx(3600 / (cloud - own - 0.05 * cloud))
    assert rows["large"]["best"]["hardware"] == 0


def test_without_a_volume_or_enough_history_it_asks_for_one(config: Path, capsys) -> None:
    assert cli.main(["whatif", "--config", str(config)]) == 1
    assert capsys.readouterr().err == "error: --tokens-per-month: is needed, since there is no ledger yet\n"


def test_a_bad_range_is_one_sentence(config: Path, capsys) -> None:
    assert cli.main(["whatif", "--config", str(config), "--tokens-per-month", "60M-40M"]) == 1
    assert capsys.readouterr().err == "error: --tokens-per-month: a range goes from low to high, got '60M-40M'\n"


def test_the_html_page_has_one_chart_and_no_scripts(config: Path, capsys, tmp_path: Path) -> None:
    out = tmp_path / "whatif.html"
    assert cli.main(["whatif", "--config", str(config), "--tokens-per-month", "50M", "--cloud-per-month",
                     "2000-3000", "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count("<svg") == 1 and "<script" not in page and page.count('class="option"') == 4
    assert "<td>13B</td>" in page and "the reference says" in page


def test_the_table_puts_the_reference_beside_the_computed_figures(config: Path, capsys) -> None:
    assert cli.main(["whatif", "--config", str(config), "--tokens-per-month", "50M", "--cloud-per-month", "2500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("13B"))
    assert "1.1–1.4" in row and "780–1,004 %" in row and row.endswith("2–3 months, 400–500 %")


def run_whatif(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, "whatif", "--config", str(config), *args], capture_output=True, text=True,
                          env=server_env(), timeout=60)


@pytest.mark.parametrize(("option", "value", "sentence"), [
    ("--input-share", "5", "--input-share: must be a number from 0 to 1, got 5"),
    ("--input-share", "nan", "--input-share: must be a number from 0 to 1, got nan"),
    ("--cloud-share", "1.5", "--cloud-share: must be a number from 0 to 1, got 1.5"),
    ("--duty", "-1", "--duty: must be a number from 0 to 1, got -1"),
    ("--electricity", "inf", "--electricity: must be a number from 0 to 1e15, got inf"),
    ("--tokens-per-month", "2000000000000000", "--tokens-per-month: must be at most 1e15, got '2000000000000000'"),
], ids=["input-share-5", "input-share-nan", "cloud-share-1.5", "duty-negative", "electricity-inf", "tokens-huge"])
def test_an_option_out_of_its_range_is_one_sentence_naming_it(config: Path, option: str, value: str,
                                                             sentence: str) -> None:
    args = [] if option == "--tokens-per-month" else ["--tokens-per-month", "50M"]
    done = run_whatif(config, *args, f"{option}={value}")
    assert (done.returncode, done.stderr) == (1, f"error: {sentence}\n")


def test_whatif_json_has_null_not_infinity_for_the_roi_of_an_option_without_hardware(config: Path) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    done = run_whatif(config, "--scenario", "config", "--tokens-per-month", "100M", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout, parse_constant=refuse)
    large = next(row for row in data["options"] if row["option"] == "large")
    assert large["best"]["roi_12_months_pct"] is None and large["worst"]["roi_12_months_pct"] is None
    assert "large: no hardware_cost, so there is no return on it to compute (ROI null)" in data["notes"]
