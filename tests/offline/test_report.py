"""`mcp-tiered report`: the arithmetic against a hand-computed example, and the table, JSON and HTML outputs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered.config.load import load_config
from mcp_tiered.accounting.costs import CostModel
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, connect, insert
from mcp_tiered.offline.report import MONTH_S, build_report

T0 = 1_780_000_000.0  # 2026-05-28

COSTS_TOML = """
[tiers.small]
model = "{model}"
description = "small"

[tiers.large]
model = "{model}"
description = "large"

[cloud]
model = "claude-sonnet-4-5"
input_price_per_mtok = 3.0
output_price_per_mtok = 15.0

[ledger]
path = "ledger.sqlite3"

[costs]
electricity_per_kwh = 0.25
# The cloud-only equivalent at 10 000 x the billed prices, so that the small example breaks even.
cloud_input_price_per_mtok = 30000.0
cloud_output_price_per_mtok = 150000.0

[costs.tiers.small]
power_watts = 300
idle_watts = 50
hardware_cost = 3600
amortization_months = 36
maintenance_per_month = 20
target_share = 0.7

[costs.tiers.large]
power_watts = 600
"""


def hop(position: int, tier: str, outcome: str, prompt: int, completion: int, seconds: float, watts: float) -> HopRecord:
    wh = seconds * watts / 3600
    cloud = (prompt * 3 + completion * 15) / 1e6 if tier == "cloud" else 0.0
    return HopRecord(position, tier, tier, outcome, None if outcome == "answered" else "low_confidence",
                     prompt, completion, 0.0, seconds, wh, wh / 1000 * 0.25, cloud)


def example_calls() -> list[CallRecord]:
    """One month of traffic: A answered by small, B escalated to large, C to the cloud, D a cache hit."""
    return [
        CallRecord(T0 + 40, "generate_small", "small", "small", "small", "ok", 1000, 200, 40.0,
                   hops=(hop(0, "small", "answered", 1000, 200, 36, 300),)),
        CallRecord(T0 + 1000, "generate_small", "small", "large", "large", "ok", 1000, 200, 80.0,
                   hops=(hop(0, "small", "escalated", 1000, 100, 18, 300), hop(1, "large", "answered", 1000, 200, 60, 600))),
        CallRecord(T0 + 2000, "generate_small", "small", "cloud", "cloud", "ok", 500, 100, 15.0,
                   hops=(hop(0, "small", "escalated", 500, 50, 12, 300), hop(1, "cloud", "answered", 500, 100, 2, 0))),
        CallRecord(T0 + 3000, "generate_small", "small", "small", "small", "error", 0, 0, 1.0,
                   hops=(hop(0, "small", "failed", 0, 0, 0, 300),)),
        CallRecord(T0 + MONTH_S, "generate_small", "small", "small", "small", "cache_hit", 1000, 200, 0.0,
                   cache_hit=True),
    ]


@pytest.fixture
def costs_config(write_config: Callable[..., Path], smollm2: Path) -> Path:
    path = write_config(COSTS_TOML.replace("{model}", str(smollm2)))
    conn = connect(path.parent / "ledger.sqlite3")
    insert(conn, example_calls())
    conn.close()
    return path


def report_for(config: Path) -> dict:
    loaded = load_config(config)
    conn = connect(loaded.ledger.resolved_path)
    try:
        return build_report(conn, CostModel.from_config(loaded))
    finally:
        conn.close()


def run_report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, "report", "--config", str(config), *args], capture_output=True, text=True,
                          env=server_env(), timeout=60)


def test_report_arithmetic_matches_the_hand_computed_example(costs_config: Path) -> None:
    report = report_for(costs_config)
    tiers = {t["tier"]: t for t in report["tiers"]}
    small, large, cloud, cache = tiers["small"], tiers["large"], tiers["cloud"], tiers["cache"]

    # The period: the first call started at T0 (ended T0 + 40 after 40 s), the last ended at T0 + one month.
    assert report["period"]["months"] == pytest.approx(1.0)
    # small generated 36 + 18 + 12 = 66 s at 300 W = 5.5 Wh, and idled 50 W for the other 2 629 734 s.
    assert small["generation_s"] == 66
    assert small["energy_wh"] == pytest.approx(5.5)
    assert small["idle_wh"] == pytest.approx(50 * 2_629_734 / 3600)  # 36 524.08 Wh
    small_energy_cost = (5.5 + 36_524.0833) / 1000 * 0.25  # 9.1324 at 0.25 per kWh
    assert small["energy_cost"] == pytest.approx(small_energy_cost, rel=1e-6)
    # Amortization 3600 / 36 = 100 per month, plus 20 maintenance, for one month.
    assert small["fixed_cost"] == pytest.approx(120.0)
    assert small["local_cost"] == pytest.approx(small_energy_cost + 120, rel=1e-6)
    # Tokens through small: 1000+200 + 1000+100 + 500+50 = 2850; completion 350 in 66 s.
    assert small["cost_per_mtok"] == pytest.approx((small_energy_cost + 120) / 2850 * 1e6, rel=1e-6)
    assert small["tokens_per_s"] == pytest.approx(350 / 66)
    # small's own answer (A) would have cost 60.0 on the cloud; small cost 129.13 in all.
    assert small["savings_pct"] == pytest.approx((60 - small_energy_cost - 120) / 60 * 100, rel=1e-6)
    # large: 60 s at 600 W = 10 Wh = 0.0025; no idle draw, no hardware.
    assert large["energy_wh"] == pytest.approx(10) and large["local_cost"] == pytest.approx(0.0025)
    # The cloud billed 500 x 3 + 100 x 15 per million = 0.003.
    assert cloud["cloud_cost"] == pytest.approx(0.003)
    # Shares of the 4 answered calls (the error is not answered): small A, large B, cloud C, cache D.
    assert [small["share"], large["share"], cloud["share"], cache["share"]] == [0.25] * 4
    assert small["target_share"] == 0.7
    # Cloud-only: A, B and D are 1000 in + 200 out = 0.03 + 0.03 = 60.0 each at the equivalent prices;
    # C is 500 x 30000 + 100 x 150000 per million = 30.0. Sum 210.0.
    totals = report["totals"]
    assert totals["cloud_only_cost"] == pytest.approx(210.0)
    total = small_energy_cost + 120 + 0.0025 + 0.003
    assert totals["total_cost"] == pytest.approx(total, rel=1e-6)
    assert totals["savings_pct"] == pytest.approx((210 - total) / 210 * 100, rel=1e-6)  # 38.5 %
    # Per month: operating = energy 9.1324 + 0.0025 + cloud 0.003 + maintenance 20 = 29.1379;
    # saving 210 - 29.1379 = 180.862 a month pays the 3600 of hardware back in 19.9 months.
    projection = report["projection"]
    operating = small_energy_cost + 0.0025 + 0.003 + 20
    assert projection["monthly_operating_cost"] == pytest.approx(operating, rel=1e-6)
    assert projection["break_even_months"] == pytest.approx(3600 / (210 - operating), rel=1e-6)  # 19.90
    assert projection["roi_12_months_pct"] == pytest.approx((12 * (210 - operating) - 3600) / 3600 * 100, rel=1e-6)
    assert projection["break_even_months"] == pytest.approx(19.905, abs=0.001)


def test_break_even_chart_lines_cross_at_the_break_even_month(costs_config: Path) -> None:
    projection = report_for(costs_config)["projection"]
    chart = projection["chart"]
    crossing = next(p["month"] for p in chart if p["cloud_only"] >= p["local"])
    assert crossing == 20 and chart[0] == {"month": 0, "local": 3600.0, "cloud_only": 0.0}


def test_report_json_is_the_report_as_json(costs_config: Path) -> None:
    done = run_report(costs_config, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(report_for(costs_config)))


def test_report_since_leaves_out_earlier_calls(costs_config: Path) -> None:
    done = run_report(costs_config, "--format", "json", "--since", "2026-06-01")
    assert json.loads(done.stdout)["totals"]["answered"] == 1  # only the cache hit, a month after T0


def test_report_table_lists_each_tier_and_the_break_even(costs_config: Path) -> None:
    done = run_report(costs_config)
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["small", "large", "cloud", "cache"]
    assert "break-even    19.9 months" in done.stdout


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_is_a_self_contained_page_with_the_chart_and_the_table(costs_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = run_report(costs_config, "--format", "html", "--output", str(out))
    assert done.returncode == 0, done.stderr
    page = _Collect()
    page.feed(out.read_text())
    tags = page.tags
    assert ("svg", {"id": "break-even-chart"}) in [(t, {"id": a.get("id")}) for t, a in tags if t == "svg"]
    lines = [a["class"] for t, a in tags if t == "polyline"]
    assert lines == ["local", "cloud-only"]
    assert all(len(a["points"].split()) == 31 for t, a in tags if t == "polyline")  # months 0..30
    assert sum(t == "tr" for t, _ in tags) == 1 + 4 + 1 + 1 + 1 + 1 + 1 + 1  # header + small, large, cloud, cache; header + one principal; header + one client; header + one server
    assert "break-even 19.9 months" in "".join(page.text)
    assert not [t for t, a in tags if t == "script" or (t == "link" and a.get("rel") == "stylesheet")]


def test_report_without_a_ledger_is_one_sentence(write_config: Callable[..., Path], smollm2: Path) -> None:
    config = write_config(COSTS_TOML.replace("{model}", str(smollm2)))
    done = run_report(config)
    assert done.returncode == 1
    assert done.stderr == f"error: ledger.path: no ledger at {config.parent / 'ledger.sqlite3'} yet (the server creates it with its first call)\n"


def test_bad_since_is_one_sentence(costs_config: Path) -> None:
    done = run_report(costs_config, "--since", "last tuesday")
    assert done.returncode == 1
    assert done.stderr == "error: --since: expected a date such as 2026-11-01 or 2026-11-01T08:00, got 'last tuesday'\n"


def test_report_of_an_empty_ledger_has_no_calls_and_no_projection(write_config: Callable[..., Path], smollm2: Path) -> None:
    config = write_config(COSTS_TOML.replace("{model}", str(smollm2)))
    connect(config.parent / "ledger.sqlite3").close()
    report = report_for(config)
    assert report["totals"]["calls"] == 0 and report["totals"]["savings_pct"] is None
    assert report["projection"] is None and report["period"]["since"] is None
    assert "projection  none: no call has been answered yet" in run_report(config).stdout


def test_report_with_the_ledger_disabled_says_so(write_config: Callable[..., Path], smollm2: Path) -> None:
    config = write_config(COSTS_TOML.replace("{model}", str(smollm2)).replace("[ledger]\n", "[ledger]\nenabled = false\n"))
    done = run_report(config)
    assert (done.returncode, done.stderr) == (
        1, "error: ledger.enabled: is false, so the server keeps no ledger and there is nothing to report\n")


def write_ledger(config: Path, calls: list[CallRecord]) -> Path:
    conn = connect(config.parent / "ledger.sqlite3")
    insert(conn, calls)
    conn.close()
    return config


def minutes_of_calls() -> list[CallRecord]:
    return [CallRecord(T0 + 60 * i, "generate_small", "small", "small", "small", "ok", 1000, 200, 2.0,
                       hops=(hop(0, "small", "answered", 1000, 200, 2, 300),)) for i in range(1, 5)]


def test_a_ledger_of_minutes_is_too_short_to_project_and_says_so(write_config, smollm2: Path) -> None:
    config = write_ledger(write_config(COSTS_TOML.replace("{model}", str(smollm2))), minutes_of_calls())
    report = report_for(config)
    assert report["projection"] is None
    assert report["projection_note"] == "the ledger covers 0.00 days of calls; monthly figures need at least 1 day of history"
    table = run_report(config).stdout
    assert "projection  none: the ledger covers 0.00 days of calls; monthly figures need at least 1 day" in table
    assert "monthly" not in json.dumps(report["projection"])


def test_without_a_hardware_cost_the_break_even_names_the_key_to_set(write_config, smollm2: Path) -> None:
    text = COSTS_TOML.replace("{model}", str(smollm2)).replace("hardware_cost = 3600\n", "")
    config = write_ledger(write_config(text), example_calls())
    projection = report_for(config)["projection"]
    assert projection["break_even_months"] is None and projection["roi_12_months_pct"] is None
    assert projection["break_even_note"].startswith("no hardware cost is set, so there is nothing to break even on: "
                                                    "set hardware_cost (and amortization_months) in [costs.tiers.<name>]")
    assert "break-even    no hardware cost is set" in run_report(config).stdout


def test_tokens_per_second_are_split_into_prompt_and_generation(write_config, smollm2: Path) -> None:
    timed = HopRecord(0, "small", "small", "answered", None, 1000, 200, 0.0, 10.0, prompt_s=2.0)
    config = write_ledger(write_config(COSTS_TOML.replace("{model}", str(smollm2))), [
        CallRecord(T0, "generate_small", "small", "small", "small", "ok", 1000, 200, 10.0, hops=(timed,))])
    small = next(t for t in report_for(config)["tiers"] if t["tier"] == "small")
    assert small["prompt_tokens_per_s"] == 500 and small["generation_tokens_per_s"] == 25
    header = run_report(config).stdout.splitlines()[0]
    assert "prompt tok/s" in header and "gen tok/s" in header
