"""Claude as ordinary tiers (`engine = "anthropic"`): two of them after two local tiers, each billed at its own
prices, under one budget, shown on its own; the real anthropic SDK against a local Messages API server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, REPO, server_env, stdio_server
from fake_anthropic import FakeAnthropic
from mcp_tiered.accounting.budget import PROMPT_TOKEN_MARGIN
from mcp_tiered.config.load import load_config
from mcp_tiered.errors import ConfigError
from mcp_tiered.config.schema import AnthropicTierConfig
from mcp_tiered.accounting.costs import CostModel
from mcp_tiered.server.metrics import Metrics
from mcp_tiered.accounting.ledger import HopRecord
from mcp_tiered.calls.tiers import TierRegistry

pytestmark = pytest.mark.anyio

PROMPT = "What is the capital of France? Answer with the city name only."
PRICES = {"haiku": (1.0, 5.0), "sonnet": (3.0, 15.0)}
MAX_TOKENS = 16
USAGE = (20, 8)
"""The input and output tokens the local Messages API reports for every answer."""


def four_tiers(write_config, smollm2: Path, cloud_url: str, budget: str = "") -> Path:  # noqa: ANN001
    """small → large (both SmolLM2, never confident enough) → haiku (its truncated answers escalate) → sonnet."""
    local = "".join(f'[tiers.{name}]\nmodel = "{smollm2}"\ndescription = "{name}"\nn_ctx = 1024\n'
                    f'max_tokens = {MAX_TOKENS}\nescalate_to = "{to}"\nmin_confidence = 0.999\n'
                    for name, to in (("small", "large"), ("large", "haiku")))
    onward = {"haiku": 'escalate_to = "sonnet"\nescalate_on_truncated = true\n', "sonnet": ""}
    cloud = "".join(f'[tiers.{name}]\nengine = "anthropic"\ndescription = "{name}"\nmodel = "claude-{name}"\n'
                    f'base_url = "{cloud_url}"\nmax_retries = 0\nmax_tokens = {MAX_TOKENS}\n'
                    f'input_price_per_mtok = {PRICES[name][0]}\noutput_price_per_mtok = {PRICES[name][1]}\n{onward[name]}'
                    for name in PRICES)
    return write_config(local + cloud + '[ledger]\npath = "ledger.sqlite3"\n' + budget)


def billed(name: str, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICES[name][0] + output_tokens * PRICES[name][1]) / 1e6


def hops(ledger: Path) -> list[tuple]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute("SELECT tier, model, outcome, escalation_reason, prompt_tokens, completion_tokens, "
                            "cloud_cost FROM hops ORDER BY id").fetchall()


async def test_the_chain_escalates_through_two_cloud_tiers_each_billed_at_its_own_prices(write_config,  # noqa: ANN001
                                                                                        smollm2: Path) -> None:
    with FakeAnthropic(reply="Paris") as fake:
        fake.script.extend(["truncated", "ok"])
        config = four_tiers(write_config, smollm2, fake.url)
        with anyio.fail_after(120):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                result = await client.call_tool("generate_small", {"prompt": PROMPT, "temperature": 0})
    content = result.structured_content
    assert (content["served_by"], content["model"], content["text"]) == ("sonnet", "claude-sonnet", "Paris")
    assert [(h["from"], h["to"], h["reason"]) for h in content["escalations"]] == [
        ("small", "large", "low_confidence"), ("large", "haiku", "low_confidence"), ("haiku", "sonnet", "truncated")]
    assert [r["body"]["model"] for r in fake.requests] == ["claude-haiku", "claude-sonnet"]
    rows = hops(config.parent / "ledger.sqlite3")
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("small", "escalated", "low_confidence"), ("large", "escalated", "low_confidence"),
        ("haiku", "escalated", "truncated"), ("sonnet", "answered", None)]
    assert [row[1] for row in rows[2:]] == ["claude-haiku", "claude-sonnet"]
    assert [row[6] for row in rows[:2]] == [0.0, 0.0]
    assert rows[2][4:] == (*USAGE, pytest.approx(billed("haiku", *USAGE)))
    assert rows[3][4:] == (*USAGE, pytest.approx(billed("sonnet", *USAGE)))


async def test_one_budget_caps_the_cloud_tiers_together(write_config, smollm2: Path) -> None:  # noqa: ANN001
    """Sonnet's worst case fits the day's budget alone, not after what Haiku spent: the call keeps Haiku's answer."""
    worst = {name: billed(name, len(PROMPT.encode()) + PROMPT_TOKEN_MARGIN, MAX_TOKENS) for name in PRICES}
    daily = (worst["sonnet"] + billed("haiku", *USAGE) + worst["sonnet"]) / 2  # between the two
    assert worst["sonnet"] <= daily < worst["sonnet"] + billed("haiku", *USAGE) and worst["haiku"] <= daily
    with FakeAnthropic(reply="Paris") as fake:
        fake.script.extend(["truncated", "ok"])
        config = four_tiers(write_config, smollm2, fake.url, f"[budget]\ndaily = {daily!r}\n")
        with anyio.fail_after(120):
            async with stdio_server(config, ANTHROPIC_API_KEY="sk-test") as client:
                result = await client.call_tool("generate_small", {"prompt": PROMPT, "temperature": 0})
    content = result.structured_content
    assert (content["served_by"], content["text"]) == ("haiku", "Paris")
    assert content["escalation_note"].startswith("escalation from haiku to sonnet (truncated) was not made: "
                                                 "cloud budget: the cloud call could cost up to ")
    assert [r["body"]["model"] for r in fake.requests] == ["claude-haiku"]


def test_the_report_shows_each_cloud_tier_on_its_own(write_config, smollm2: Path, tmp_path: Path) -> None:  # noqa: ANN001
    config = four_tiers(write_config, smollm2, "http://127.0.0.1:9")
    from mcp_tiered.accounting.ledger import CallRecord, connect, insert

    conn = connect(config.parent / "ledger.sqlite3")
    hop_rows = tuple(HopRecord(i, name, f"claude-{name}", outcome, reason, *USAGE, 0.0, 1.0, 0.0, 0.0,
                               billed(name, *USAGE))
                     for i, (name, outcome, reason) in enumerate((("haiku", "escalated", "truncated"),
                                                                  ("sonnet", "answered", None))))
    insert(conn, [CallRecord(1_700_000_000.0, "generate_haiku", "haiku", "sonnet", "claude-sonnet", "ok", *USAGE, 2.0,
                             hops=hop_rows)])
    conn.close()
    out = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--format", "json"], capture_output=True,
                         text=True, env=server_env(), cwd=str(REPO), timeout=60, check=True)
    tiers = {row["tier"]: row for row in json.loads(out.stdout)["tiers"]}
    assert {name: (tiers[name]["kind"], tiers[name]["cloud_cost"]) for name in PRICES} == {
        name: ("cloud", pytest.approx(billed(name, *USAGE))) for name in PRICES}
    assert (tiers["small"]["kind"], tiers["sonnet"]["served"], tiers["haiku"]["served"]) == ("local", 1, 0)


def test_metrics_count_each_cloud_tiers_billed_cost_under_its_name(write_config, smollm2: Path) -> None:  # noqa: ANN001
    config = load_config(four_tiers(write_config, smollm2, "http://127.0.0.1:9"))
    tiers = TierRegistry.from_config(config, environ={"ANTHROPIC_API_KEY": "sk-test"})
    metrics = Metrics(tiers)
    metrics.record_hops([HopRecord(0, name, f"claude-{name}", "answered", None, *USAGE, 0.0, 1.0, 0.0, 0.0,
                                   billed(name, *USAGE)) for name in PRICES], CostModel.from_config(config).currency)
    text = metrics.exposition().decode()
    for name in PRICES:
        assert f'mcp_tiered_cost_total{{currency="USD",kind="cloud",tier="{name}"}} {billed(name, *USAGE)!r}' in text


def test_the_cloud_shorthand_is_one_anthropic_tier_named_cloud_with_the_budget_beside_it(write_config) -> None:  # noqa: ANN001
    config = load_config(write_config('[tiers.small]\nmodel = "m.gguf"\ndescription = "s"\nescalate_to = "cloud"\n'
                                      '[cloud]\nmodel = "claude-x"\ninput_price_per_mtok = 2.0\ndaily_budget = 4.0\n'
                                      'currency = "EUR"\ntimeout_s = 7\n'))
    cloud = config.tiers["cloud"]
    assert isinstance(cloud, AnthropicTierConfig) and list(config.tiers) == ["small", "cloud"]
    assert (cloud.model, cloud.input_price_per_mtok, cloud.output_price_per_mtok, cloud.timeout_s) == ("claude-x", 2.0, 15.0, 7.0)
    assert (config.budget.daily, config.budget.monthly, config.currency) == (4.0, None, "EUR")
    assert cloud.key("cloud", "timeout_s") == "cloud.timeout_s"


@pytest.mark.parametrize("name", ["models.toml", "models.example.toml"])
def test_the_shipped_configs_cloud_section_loads_as_before(name: str) -> None:
    config = load_config(REPO / name)
    cloud = config.tiers["cloud"]
    assert list(config.tiers)[-1] == "cloud" and isinstance(cloud, AnthropicTierConfig)
    assert config.cloud is not None and (cloud.model, cloud.input_price_per_mtok, cloud.output_price_per_mtok) == (
        config.cloud.model, config.cloud.input_price_per_mtok, config.cloud.output_price_per_mtok)
    assert (config.budget.daily, config.budget.monthly) == (config.cloud.daily_budget, config.cloud.monthly_budget)


def config_error(write_config, text: str) -> str:  # noqa: ANN001
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    return str(caught.value)


CLAUDE = '[tiers.{name}]\nengine = "anthropic"\ndescription = "{name}"\nmodel = "claude-{name}"\n'


def test_local_only_on_a_claude_tier_is_refused_at_load(write_config) -> None:  # noqa: ANN001
    assert config_error(write_config, CLAUDE.format(name="haiku") + "local_only = true\n") == (
        'tiers.haiku.local_only: this tier\'s prompts leave the machine (engine "anthropic"), so no call to it could '
        "be local; remove local_only")


def test_a_temperature_on_a_claude_tier_is_refused_since_the_api_takes_none(write_config) -> None:  # noqa: ANN001
    assert config_error(write_config, CLAUDE.format(name="haiku") + "temperature = 0\n") == (
        "tiers.haiku.temperature: the Messages API takes no temperature (the model samples as it does); remove "
        "this key")


def test_one_cloud_target_share_for_two_cloud_tiers_is_refused(write_config) -> None:  # noqa: ANN001
    text = CLAUDE.format(name="haiku") + CLAUDE.format(name="sonnet") + "[costs]\ncloud_target_share = 0.05\n"
    assert config_error(write_config, text) == (
        "costs.cloud_target_share: applies when one tier is billed per token, and haiku, sonnet are; set "
        "[costs.tiers.<name>] target_share for each instead")


def test_a_claude_tier_declared_first_leaves_generate_to_the_local_chain(write_config, smollm2: Path) -> None:  # noqa: ANN001
    from mcp_tiered.calls.dispatch import Dispatcher

    text = (CLAUDE.format(name="claude") + "".join(
        f'[tiers.{n}]\nmodel = "{smollm2}"\ndescription = "{n}"\nescalate_to = "{to}"\n'
        for n, to in (("small", "large"), ("large", "claude"))))
    tiers = TierRegistry.from_config(load_config(write_config(text)), environ={"ANTHROPIC_API_KEY": "sk-test"})
    assert [t.name for t in Dispatcher(tiers).entry_tiers()] == ["small", "large"]


def test_the_report_counts_a_cloud_tier_the_config_no_longer_has_as_cloud(write_config, smollm2: Path) -> None:  # noqa: ANN001
    """History of the [cloud] tier, read with a config that names its Claude tiers instead."""
    from mcp_tiered.accounting.ledger import CallRecord, connect, insert

    config = four_tiers(write_config, smollm2, "http://127.0.0.1:9")
    conn = connect(config.parent / "ledger.sqlite3")
    hop = HopRecord(0, "cloud", "claude-old", "answered", None, *USAGE, 0.0, 1.0, 0.0, 0.0, 0.25)
    insert(conn, [CallRecord(1_700_000_000.0 + i, "generate_cloud", "cloud", "cloud", "claude-old", "ok", *USAGE, 1.0,
                             hops=(hop,)) for i in range(2)])
    conn.close()
    out = subprocess.run([MCP_TIERED, "report", "--config", str(config), "--format", "json"], capture_output=True,
                         text=True, env=server_env(), cwd=str(REPO), timeout=60, check=True)
    row = next(r for r in json.loads(out.stdout)["tiers"] if r["tier"] == "cloud")
    assert (row["kind"], row["cloud_cost"], row["served"]) == ("cloud", 0.5, 2)
