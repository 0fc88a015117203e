#!/usr/bin/env python
"""The savings report from real traffic: sends a labelled dataset's prompts to `mcp-tiered serve` (stdio, the
MCP SDK's client) with this repository's models.toml (SmolLM2 -> Qwen2.5-Coder-1.5B, no cloud key), a fresh
ledger and an example cost model, then prints `mcp-tiered report` and how many answers were right.

    .venv/bin/python scripts/demo_report.py [--dataset ../shared/eval/dev.jsonl] [--limit 105] [--html FILE]

The cost model describes a small CPU server (65 W under load, 15 W idle, 1 500 bought over 36 months,
electricity 0.30 per kWh) and prices the same calls at Claude Sonnet's list price (3 / 15 per million tokens).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from mcp_tiered.offline.calibrate import is_correct as correct
from mcp_tiered.config.schema import default_models_dir

REPO = Path(__file__).resolve().parent.parent
COSTS = """
[ledger]
path = "{ledger}"

[costs]
electricity_per_kwh = 0.30

[costs.tiers.small]
power_watts = 65
idle_watts = 15
hardware_cost = 1500
amortization_months = 36
target_share = 0.70

[costs.tiers.large]
power_watts = 65
"""


async def run(config: Path, items: list[dict]) -> int:
    exe = str(Path(sys.executable).with_name("mcp-tiered"))
    params = StdioServerParameters(command=exe, args=["--log-level", "WARNING", "serve", "--config", str(config)])
    right = 0
    async with Client(stdio_client(params)) as client:
        for i, item in enumerate(items):
            result = await client.call_tool("generate_small", {"prompt": item["prompt"], "temperature": 0,
                                                               "max_tokens": 48})
            right += not result.is_error and correct(result.content[0].text, item["answers"])
            print(f"\r{i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "eval" / "dev.jsonl"))
    parser.add_argument("--limit", type=int, default=105)
    parser.add_argument("--html", help="also write the HTML report here")
    args = parser.parse_args()
    items = [json.loads(line) for line in Path(args.dataset).read_text().splitlines() if line.strip()][: args.limit]
    work = Path(tempfile.mkdtemp(prefix="mcp-tiered-demo-"))
    config = work / "models.toml"
    text = (REPO / "models.toml").read_text()
    text = text[: text.index("[costs]")] if "[costs]" in text else text
    config.write_text(text.replace("$MCP_TIERED_MODELS", str(default_models_dir()))
                      + COSTS.format(ledger=work / "ledger.sqlite3"))
    started = time.perf_counter()
    right = anyio.run(run, config, items)
    print(f"{len(items)} prompts in {time.perf_counter() - started:.0f} s, {right} answered correctly "
          f"({right / len(items):.0%})\n")
    exe = str(Path(sys.executable).with_name("mcp-tiered"))
    subprocess.run([exe, "report", "--config", str(config)], check=True)
    if args.html:
        subprocess.run([exe, "report", "--config", str(config), "--format", "html", "-o", args.html], check=True)


if __name__ == "__main__":
    main()
