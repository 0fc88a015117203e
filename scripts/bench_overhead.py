#!/usr/bin/env python
"""What does serving through MCP cost? Tokens/s of one request made

  (a) directly with llama_cpp.Llama.create_chat_completion, in this process, and
  (b) as a `generate_<tier>` tool call to `mcp-tiered serve` over stdio (MCP SDK client),
      timed by the client, so transport, JSON-RPC, validation and logging are all included,

on the same model, settings and prompt, runs interleaved. Prints the medians and the ratio b/a.

Between runs the script pauses (--settle): llama.cpp's OpenMP threads keep spinning for a moment after
a call, and without the pause that spin in one process slows the call that starts at once in the other.

    .venv/bin/python scripts/bench_overhead.py [--model PATH] [--runs 7] [--max-tokens 128] [--n-gpu-layers -1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from mcp_tiered.backends.llama import available_cpus
from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import SMOLLM2

PROMPT = "Count from 1 to 300, separated by commas."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_models_dir() / SMOLLM2.filename)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="-1: offload every layer (CUDA build)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause between runs")
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    from llama_cpp import Llama

    threads = available_cpus()
    llama = Llama(model_path=str(args.model), n_ctx=args.n_ctx, n_threads=threads, n_gpu_layers=args.n_gpu_layers,
                  verbose=False)
    messages = [{"role": "user", "content": PROMPT}]

    def direct() -> tuple[float, int]:
        started = time.perf_counter()
        out = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=args.max_tokens)
        return time.perf_counter() - started, out["usage"]["completion_tokens"]

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        config.write_text(
            f'[tiers.bench]\nmodel = "{args.model}"\ndescription = "benchmark"\n'
            f"n_ctx = {args.n_ctx}\nn_threads = {threads}\nmax_tokens = {args.max_tokens}\n"
            f"n_gpu_layers = {args.n_gpu_layers}\n"
            # The server's own ledger, in the temporary folder rather than the user's.
            '[ledger]\npath = "ledger.sqlite3"\n'
        )
        server = StdioServerParameters(
            command=str(Path(sys.executable).with_name("mcp-tiered")),
            args=["--log-level", "WARNING", "serve", "--config", str(config)],
        )
        async with Client(stdio_client(server)) as client:

            transport_ms: list[float] = []

            async def via_mcp() -> tuple[float, int]:
                started = time.perf_counter()
                result = await client.call_tool(
                    "generate_bench", {"prompt": PROMPT, "temperature": 0, "max_tokens": args.max_tokens, "cache": False}
                )
                seconds = time.perf_counter() - started
                if result.is_error:
                    raise SystemExit(f"tool call failed: {result.content[0].text}")
                # What the client waited beyond the server's own time for the call: stdio and JSON-RPC.
                transport_ms.append(seconds * 1000 - result.structured_content["latency_ms"])
                return seconds, result.structured_content["usage"]["completion_tokens"]

            direct()  # warm-up: load pages, fill caches
            await via_mcp()
            rates_a, rates_b = [], []
            for run in range(args.runs):
                await anyio.sleep(args.settle)
                seconds_a, tokens_a = direct()
                await anyio.sleep(args.settle)
                seconds_b, tokens_b = await via_mcp()
                rates_a.append(tokens_a / seconds_a)
                rates_b.append(tokens_b / seconds_b)
                print(f"run {run + 1}: direct {tokens_a} tok in {seconds_a:.3f} s = {rates_a[-1]:.1f} tok/s | "
                      f"mcp {tokens_b} tok in {seconds_b:.3f} s = {rates_b[-1]:.1f} tok/s")

    a, b = statistics.median(rates_a), statistics.median(rates_b)
    print(f"\nmodel {args.model.name}, {threads} threads, n_gpu_layers {args.n_gpu_layers}, {args.max_tokens} tokens, "
          f"median of {args.runs} runs")
    print(f"(a) direct create_chat_completion: {a:.1f} tok/s")
    print(f"(b) MCP stdio tool call:           {b:.1f} tok/s")
    print(f"MCP transport per call (client time - server time): {statistics.median(transport_ms):.1f} ms")
    pairs = statistics.median(rb / ra for ra, rb in zip(rates_a, rates_b, strict=True))
    print(f"RESULT ratio b/a: {b / a:.3f}  (goal >= 0.98 on the CPU, >= 0.95 with full offload); median of the "
          f"per-run ratios: {pairs:.3f}")


if __name__ == "__main__":
    anyio.run(main)
