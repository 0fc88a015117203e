#!/usr/bin/env python
"""The cascade measured as an agent meets it: `mcp-tiered serve` over stdio (the SDK's client), the config's
tiers, each prompt of a labelled set asked three ways at temperature 0 without the response cache —
`generate_<last>` (the last local tier alone: the baseline), `generate_<first>` (the cascade with its
escalation rule and verifier) and `generate` (the tier it picks, then the cascade) — interleaved so that
noise hits all three alike. Prints, per way: accuracy and its share of the baseline's, the share of calls
each tier answered, readings by the verifier, and the server-side latency.

    .venv/bin/python scripts/eval_cascade.py --dataset ../shared/eval/dev.jsonl --half odd [--config models.toml]

--half odd/even takes every other item (models.toml's thresholds are chosen on the even half).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from mcp_tiered.offline.calibrate import is_correct, load_dataset
from mcp_tiered.config.load import load_config
from mcp_tiered.engines import capabilities_of

REPO = Path(__file__).resolve().parent.parent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "models.toml"))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--half", choices=["odd", "even", "all"], default="odd")
    parser.add_argument("--max-tokens", type=int, default=48, help="as calibrate's default (48)")
    parser.add_argument("--out", help="write each call's result here (JSON lines)")
    args = parser.parse_args()
    config = load_config(Path(args.config))
    local = [name for name in config.chain(next(iter(config.tiers)))
             if capabilities_of(config.tiers[name]).billing != "tokens"]
    first, last = local[0], local[-1]
    items = load_dataset(Path(args.dataset))
    items = {"odd": items[1::2], "even": items[0::2], "all": items}[args.half]
    ways = {f"{last} alone": (f"generate_{last}", {"escalate": "never"}),
            f"cascade from {first}": (f"generate_{first}", {}), "generate (routed)": ("generate", {})}
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "MCP_TIERED_CONFIG")}
    env["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="eval-cascade-")  # a ledger of its own
    params = StdioServerParameters(command=str(Path(sys.executable).with_name("mcp-tiered")),
                                   args=["--log-level", "WARNING", "serve", "--config", args.config], env=env)
    rows: dict[str, list[dict]] = {way: [] for way in ways}
    with open(os.devnull, "w") as quiet:
        async with Client(stdio_client(params, errlog=quiet)) as client:
            for way, (tool, extra) in ways.items():  # load every model before timing anything
                await client.call_tool(tool, {"prompt": "Say OK.", "max_tokens": 4, "cache": False, **extra})
            for index, item in enumerate(items):
                for way, (tool, extra) in ways.items():
                    result = await client.call_tool(tool, {"prompt": item.prompt, "temperature": 0, "cache": False,
                                                           "max_tokens": args.max_tokens, **extra})
                    if result.is_error:
                        raise SystemExit(f"{tool} failed on item {index}: {result.content[0].text}")
                    content = result.structured_content
                    rows[way].append({**content, "correct": is_correct(content["text"], item.answers)})
                print(f"\r{index + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if args.out:
        Path(args.out).write_text("".join(json.dumps({"way": w, **r}) + "\n" for w, rs in rows.items() for r in rs))
    report(rows, f"{last} alone", first, last, len(items), args.half)


def report(rows: dict[str, list[dict]], baseline: str, first: str, last: str, n: int, half: str) -> None:
    base_accuracy = sum(r["correct"] for r in rows[baseline]) / n
    base_latency = statistics.mean(r["latency_ms"] for r in rows[baseline])
    print(f"{n} items ({half} half), through the MCP server; accuracy as a share of {baseline}'s "
          f"({base_accuracy:.1%}); latency: server-side mean")
    print(f"{'way':<22} {'accuracy':>9} {'of ' + last:>9} {'started on':>22} {'answered by':>24} "
          f"{'read':>5} {'latency':>16} {last + ' tokens':>12}")
    base_tokens = sum(r["usage"]["completion_tokens"] for r in rows[baseline]) or 1
    for way, results in rows.items():
        accuracy = sum(r["correct"] for r in results) / n
        started = Counter(r["tier"] for r in results)
        answered = Counter(r["served_by"] for r in results)
        read = sum(bool(r.get("verifications")) for r in results)
        latency = statistics.mean(r["latency_ms"] for r in results)
        tokens = sum(r["usage"]["completion_tokens"] for r in results if r["served_by"] == last)
        share = lambda c: ", ".join(f"{t} {k / n:.0%}" for t, k in c.most_common())  # noqa: E731
        print(f"{way:<22} {accuracy:>9.1%} {accuracy / base_accuracy:>9.1%} {share(started):>22} "
              f"{share(answered):>24} {read / n:>5.0%} {latency:>7.0f} ms ({latency / base_latency:.2f}×) "
              f"{tokens / base_tokens:>11.0%}")
    kept = sum(r["served_by"] == first for r in rows[f"cascade from {first}"]) / n
    accuracy = sum(r["correct"] for r in rows[f"cascade from {first}"]) / n
    goal = "meets" if kept >= 0.5 and accuracy >= 0.95 * base_accuracy else "misses"
    print(f"goal (≥ 50 % kept on {first} at ≥ 95 % of {baseline}'s accuracy): kept {kept:.0%} at "
          f"{accuracy / base_accuracy:.1%} — {goal}")


if __name__ == "__main__":
    anyio.run(main)
