#!/usr/bin/env python
"""Response cache: server-side latency of a temperature-0 call answered by SmolLM2 (miss) and of the
same call again (hit), through the dispatcher as a tool call runs it (the ledger recording both, in a
temporary file), and of the hit until the call returns (its ledger row committed); medians of --runs
distinct prompts.

    .venv/bin/python scripts/bench_cache.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_tiered import logs
from mcp_tiered.calls.cache import ResponseCache
from mcp_tiered.config.schema import TierConfig, default_models_dir
from mcp_tiered.weights.default_models import SMOLLM2
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.accounting.ledger import Ledger
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.calls.tiers import Tier, TierRegistry


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    logs.configure("WARNING")
    config = TierConfig(model=default_models_dir() / SMOLLM2.filename, description="bench", n_ctx=1024, max_tokens=32)
    registry = TierRegistry([Tier("small", LlamaBackend("small", config), "bench", 32, 0.0)])
    ledger = Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite3")
    dispatcher = Dispatcher(registry, cache=ResponseCache(), ledger=ledger)
    misses, hits, returned = [], [], []
    await dispatcher.generate("small", "warm up", temperature=0)
    for i in range(args.runs):
        prompt = f"What is {i} + {i}? Answer with the number only."
        miss = await dispatcher.generate("small", prompt, temperature=0)
        started = time.perf_counter()
        hit = await dispatcher.generate("small", prompt, temperature=0)
        returned.append((time.perf_counter() - started) * 1000)
        assert hit.cache_hit and not miss.cache_hit
        misses.append(miss.latency_ms)
        hits.append(hit.latency_ms)
    await registry.aclose()
    ledger.close()
    print(f"{args.runs} prompts, server-side latency_ms, median (max):")
    print(f"  miss (SmolLM2 answers): {statistics.median(misses):.1f} ms ({max(misses):.1f})")
    print(f"  hit (from the cache):   {statistics.median(hits):.3f} ms ({max(hits):.3f})  (goal <= 2 ms)")
    print(f"  hit, until the call returns with its ledger row committed: {statistics.median(returned):.3f} ms "
          f"({max(returned):.3f})")


if __name__ == "__main__":
    anyio.run(main)
