#!/usr/bin/env python
"""What does the confidence signal cost? Tokens/s of the same generation with per-token
log-probabilities recorded (on) and not (off), same model instance, runs interleaved.

    .venv/bin/python scripts/bench_confidence.py [--model small|large|PATH] [--runs 11] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anyio

from mcp_tiered.backends import GenerationRequest
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.config.schema import TierConfig, default_models_dir
from mcp_tiered.weights.default_models import QWEN_CODER_1_5B, SMOLLM2

MODELS = {"small": SMOLLM2.filename, "large": QWEN_CODER_1_5B.filename}
PROMPT = "Count from 1 to 300, separated by commas."


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--settle", type=float, default=0.3)
    args = parser.parse_args()
    model = default_models_dir() / MODELS[args.model] if args.model in MODELS else Path(args.model)
    engine = LlamaBackend("bench", TierConfig(model=model, description="bench", n_ctx=2048, max_tokens=args.max_tokens))

    async def rate(logprobs: bool) -> float:
        request = GenerationRequest(PROMPT, "", args.max_tokens, 0.0, (), logprobs)
        await anyio.sleep(args.settle)
        started = time.perf_counter()
        completion = await engine.generate(request)
        return completion.completion_tokens / (time.perf_counter() - started)

    await rate(True)  # load and warm up
    on, off = [], []
    for _ in range(args.runs):
        off.append(await rate(False))
        on.append(await rate(True))
    await engine.aclose()
    print(f"model {model.name}, {args.max_tokens} tokens, median of {args.runs} interleaved runs")
    print(f"confidence off: {statistics.median(off):.1f} tok/s")
    print(f"confidence on:  {statistics.median(on):.1f} tok/s")
    print(f"ratio on/off: {statistics.median(on) / statistics.median(off):.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    anyio.run(main)
