#!/usr/bin/env python
"""Prompt (KV) reuse: time to first token of a call whose long system prompt the model has just processed
for an earlier call (an agent resending its instructions), against the first call with that system prompt.

Each round uses a new system prompt of about --prefix-tokens tokens (different from its first words on,
so nothing carries over between rounds) and two different questions. Time to first token is measured
server-side, from the call's start to its first generated token, through the dispatcher as a tool call
runs it; the model is loaded before the first round.

    .venv/bin/python scripts/bench_prefix.py [--rounds 5] [--prefix-tokens 1200] [--instances 1] [--model qwen]
                                             [--model-path FILE.gguf --n-gpu-layers -1]
                                             [--interleave [--prompt-cache-mb 256]]

--interleave: two agents take turns on the tier (A, B, A, B), so the second call of agent A comes after
agent B's call has replaced the instance's KV cache; --prompt-cache-mb keeps the earlier prompts' states.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anyio

from mcp_tiered import logs
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.backends.pool import CallControl
from mcp_tiered.config.schema import TierConfig, default_models_dir
from mcp_tiered.weights.default_models import QWEN_CODER_1_5B, SMOLLM2
from mcp_tiered.calls.dispatch import Dispatcher
from mcp_tiered.calls.tiers import Tier, TierRegistry

RULES = [
    "Answer in plain English and keep every answer short unless the user asks for detail.",
    "When a question is about code, name the file and the function you would change first.",
    "Never invent an API: if you are unsure that a function exists, say so and suggest how to check.",
    "Prefer the standard library over new dependencies, and explain the trade-off when you do not.",
    "Quote error messages exactly, and explain their cause before proposing a fix.",
    "When you list steps, number them, and make each one something the user can run or check.",
    "Keep secrets out of logs, examples and commit messages; use placeholders such as <API_KEY>.",
    "If a request is ambiguous, state the interpretation you chose in one sentence, then answer it.",
]


def system_prompt(round_no: int, approx_tokens: int) -> str:
    lines = [f"You are agent number {round_no} of the platform team, codename {round_no * 7919 % 10007}."]
    i = 0
    while len(" ".join(lines)) < approx_tokens * 4.2:  # ~4 characters per token for English text
        lines.append(f"Rule {i + 1}: {RULES[i % len(RULES)]}")
        i += 1
    return "\n".join(lines)


async def ttft(dispatcher: Dispatcher, system: str, prompt: str) -> tuple[float, int]:
    control = CallControl()
    started = time.monotonic()
    result = await dispatcher.generate("t", prompt, system, control, temperature=0, max_tokens=8, cache=False)
    return control.generating_since - started, result.usage.prompt_tokens


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix-tokens", type=int, default=1200)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--model", choices=["smollm2", "qwen"], default="smollm2")
    parser.add_argument("--model-path", help="any other GGUF file instead of --model")
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--interleave", action="store_true")
    parser.add_argument("--prompt-cache-mb", type=int, default=0)
    args = parser.parse_args()
    logs.configure("WARNING")
    spec = SMOLLM2 if args.model == "smollm2" else QWEN_CODER_1_5B
    path = Path(args.model_path) if args.model_path else default_models_dir() / spec.filename
    config = TierConfig(model=path, description="bench", n_ctx=4096, max_tokens=8, instances=args.instances,
                        preload=True, n_gpu_layers=args.n_gpu_layers, prompt_cache_mb=args.prompt_cache_mb)
    backend = LlamaBackend("t", config)
    registry = TierRegistry([Tier("t", backend, "bench", 8, 0.0)])
    dispatcher = Dispatcher(registry)
    async with registry.running():
        for _ in range(args.instances):
            await ttft(dispatcher, "warm up", "Say hi.")
        firsts, seconds, ratios = [], [], []
        tokens = 0
        for r in range(args.rounds):
            system = system_prompt(r, args.prefix_tokens)
            other = system_prompt(r + 1000, args.prefix_tokens)
            first, tokens = await ttft(dispatcher, system, "What is the capital of France?")
            if args.interleave:
                await ttft(dispatcher, other, "What is the capital of France?")
            second, _ = await ttft(dispatcher, system, "Which planet is the largest in the solar system?")
            firsts.append(first)
            seconds.append(second)
            ratios.append(second / first)
            print(f"round {r + 1}: {tokens} prompt tokens, first call {first * 1000:.0f} ms, "
                  f"second call {second * 1000:.0f} ms, ratio {second / first:.3f}")
    mode = (f", agents interleaved, prompt_cache_mb {args.prompt_cache_mb}" if args.interleave else "")
    print(f"{path.name}, {args.instances} instance(s){mode}, prompts of ~{tokens} tokens sharing a system prompt:")
    print(f"  time to first token, median: first {statistics.median(firsts) * 1000:.0f} ms, "
          f"second {statistics.median(seconds) * 1000:.0f} ms")
    print(f"  ratio second/first: median {statistics.median(ratios):.3f}, worst {max(ratios):.3f} (goal <= 0.3)")


if __name__ == "__main__":
    anyio.run(main)
