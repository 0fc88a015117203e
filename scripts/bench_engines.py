#!/usr/bin/env python
"""Aggregate tokens/s of C concurrent calls (distinct prompts, --tokens each, temperature 0.8), same model,
same run:

  (a) llama-server called directly with --parallel C, over its OpenAI API (/v1/chat/completions);
  (b) mcp-tiered, engine = "llama-server" with parallel = C, as C concurrent tool calls over stdio (MCP SDK);
  (c) mcp-tiered, engine = "llama-cpp" (one in-process instance), the same calls;
  (d) mcp-tiered, engine = "openai" pointed at (a)'s server (max_concurrency C), over its chat API;
  (e) the same with api = "llama-server" (llama.cpp's native API).

All run at once and are measured in turn, round after round; each figure is the median of --rounds
rounds. Prints each against (a) for every C.

    .venv/bin/python scripts/bench_engines.py [--model PATH] [--concurrency 1 4] [--tokens 64] [--rounds 3]
        [--n-gpu-layers -1]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from mcp_tiered.backends.llama import available_cpus
from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import SMOLLM2

TOPICS = ["the sea", "mountains", "a lighthouse", "autumn", "a city at night", "a library", "rain", "the desert",
          "a train journey", "a garden", "winter", "the moon", "a market", "a river", "bees", "a storm"]
BIN = Path(sys.executable).with_name
ENGINES = ["llama-server", "llama-cpp", "openai", "openai-native"]
Call = Callable[[str], Awaitable[int]]


def prompts(c: int, round_: int, target: int) -> list[str]:
    """Distinct for every call of the run: no target finds its prompts in a server's prompt cache."""
    return [f"Poem {round_}.{target}.{i}: write a short poem about {TOPICS[(round_ * c + i) % len(TOPICS)]}."
            for i in range(c)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def direct(model: Path, c: int, tokens: int, n_ctx: int, n_gpu_layers: int,
                 endpoint: dict[str, str]) -> AsyncIterator[Call]:
    """llama-server --parallel C, called over its OpenAI API."""
    port, key = free_port(), secrets.token_urlsafe(16)
    process = subprocess.Popen(
        [str(BIN("llama-server")), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--parallel", str(c), "--ctx-size", str(n_ctx * c), "--no-kv-unified", "--threads", str(available_cpus()),
         "--n-gpu-layers", "all" if n_gpu_layers == -1 else str(n_gpu_layers), "--no-webui", "--jinja"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "LLAMA_API_KEY": key})
    headers = {"Authorization": f"Bearer {key}"}
    endpoint.update(url=f"http://127.0.0.1:{port}/v1", key=key)
    try:
        async with httpx2.AsyncClient(timeout=None, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health", headers=headers)).status_code == 200:
                        break
                except httpx2.TransportError:
                    await anyio.sleep(0.1)

            async def one(prompt: str) -> int:
                response = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=headers, json={
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0.8})
                return response.json()["usage"]["completion_tokens"]

            await one("Say hi.")
            yield one
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@asynccontextmanager
async def through_mcp(model: Path, c: int, tokens: int, n_ctx: int, n_gpu_layers: int, endpoint: dict[str, str],
                      engine: str) -> AsyncIterator[Call]:
    """mcp-tiered serve over stdio with one tier on `engine`, called with the MCP SDK's client."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        model_keys = (f'model = "{model}"\nn_ctx = {n_ctx}\nn_threads = {available_cpus()}\n'
                      f"n_gpu_layers = {n_gpu_layers}\n")
        engine_keys = {
            "llama-cpp": model_keys,
            "llama-server": model_keys + f'engine = "llama-server"\nparallel = {c}\n',
            "openai": 'engine = "openai"\nmodel = "bench"\napi = "openai"\n',
            "openai-native": 'engine = "openai"\nmodel = "bench"\napi = "llama-server"\n',
        }[engine]
        if engine.startswith("openai"):
            engine_keys += (f'endpoints = [{{ url = "{endpoint["url"]}", api_key_env = "BENCH_ENDPOINT_KEY", '
                            f"max_concurrency = {c} }}]\n")
        config.write_text(f'[tiers.bench]\ndescription = "benchmark"\nmax_tokens = {tokens}\nmax_queue = 64\n'
                          f'{engine_keys}[ledger]\npath = "ledger.sqlite3"\n[cache]\nenabled = false\n')
        params = StdioServerParameters(command=str(BIN("mcp-tiered")),
                                       args=["--log-level", "WARNING", "serve", "--config", str(config)],
                                       env={**os.environ, "BENCH_ENDPOINT_KEY": endpoint["key"]})
        async with Client(stdio_client(params)) as client:

            async def one(prompt: str) -> int:
                result = await client.call_tool("generate_bench", {"prompt": prompt, "max_tokens": tokens,
                                                                   "temperature": 0.8, "escalate": "never"})
                if result.is_error:
                    raise SystemExit(f"tool call failed: {result.content[0].text}")
                return result.structured_content["usage"]["completion_tokens"]

            await one("Say hi.")  # started and loaded
            yield one


async def aggregate(c: int, round_: int, target: int, one: Call) -> float:
    """Tokens/s of C distinct calls made at once."""
    done: list[int] = []

    async def call(prompt: str) -> None:
        done.append(await one(prompt))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for prompt in prompts(c, round_, target):
            tg.start_soon(call, prompt)
    return sum(done) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_models_dir() / SMOLLM2.filename)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="-1: offload every layer (CUDA build)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause between two measurements")
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    args = parser.parse_args()
    rows = []
    for c in args.concurrency:
        async with AsyncExitStack() as stack:
            endpoint: dict[str, str] = {}
            shape = (args.model, c, args.tokens, args.n_ctx, args.n_gpu_layers, endpoint)
            targets = [await stack.enter_async_context(direct(*shape))]
            for engine in args.engines:
                targets.append(await stack.enter_async_context(through_mcp(*shape, engine)))
            rates: list[list[float]] = [[] for _ in targets]
            for round_ in range(args.rounds):  # interleaved, so that the machine's drift hits all alike
                for i, one in enumerate(targets):
                    await anyio.sleep(args.settle)
                    rates[i].append(await aggregate(c, round_, i, one))
        a, *others = (statistics.median(r) for r in rates)
        rows.append((c, a, others))
        print(f"C={c}: direct llama-server {a:.1f} tok/s | " + " | ".join(
            f"engine {e} {b:.1f} ({b / a:.2f}x)" for e, b in zip(args.engines, others)), flush=True)
    print(f"\nmodel {args.model.name}, {args.tokens} tokens per call, temperature 0.8, median of {args.rounds} rounds")
    print("| C | llama-server direct | " + " | ".join(f"engine {e} | ratio" for e in args.engines) + " |")
    print("| --- " * (2 + 2 * len(args.engines)) + "|")
    for c, a, others in rows:
        print(f"| {c} | {a:.1f} tok/s | " + " | ".join(f"{b:.1f} tok/s | {b / a:.2f}" for b in others) + " |")

if __name__ == "__main__":
    anyio.run(main)
