#!/usr/bin/env python
"""What does the OpenAI face cost against the MCP tool and the engine? Aggregate completion tokens/s of C
identical calls made at once (--max-tokens each, temperature 0), one tier (engine = "llama-server",
parallel = 8), the same prompt, three ways in one run:

  (a) engine: a llama-server of its own, started with the flags mcp-tiered gives the tier's server,
      called over its OpenAI API (/v1/chat/completions, httpx2);
  (b) mcp tool: `generate_<tier>` (cache: false, escalate: never) on `mcp-tiered serve --transport http`,
      over Streamable HTTP (MCP SDK client);
  (c) openai face: POST /v1/chat/completions on that same server with the official openai SDK, model
      "<tier>:never" (the response cache is off in the server's config).

Each round measures the three in turn, in a rotating order, so that the machine's drift hits all alike;
each figure is the median of --rounds rounds. Tokens/s = the batch's completion tokens / its wall time.
Prints, per C, the three medians and the ratios openai face / mcp tool (goal >= 0.95), openai face / engine
and mcp tool / engine; then, streamed at C = 1, the time to the first text of the tier (the whole call is
judged before its text goes out) and of `<tier>:never` (its text goes out as it is generated). The config, both servers' logs and the ledger are kept in a temporary folder.

    .venv/bin/python scripts/bench_openai_face.py [--model PATH] [--concurrency 1 8] [--rounds 5]
        [--max-tokens 128] [--n-gpu-layers -1] [--server-binary PATH]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx2
from mcp.client.client import Client
from openai import AsyncOpenAI

from mcp_tiered.backends.llama import available_cpus
from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import SMOLLM2

PROMPT = "Count from 1 to 300, separated by commas."
TIER = "bench"
PARALLEL = 8
N_BATCH = 512  # the tier's default n_batch, which mcp-tiered passes as --batch-size
BIN = Path(sys.executable).with_name
WAYS = ["engine", "mcp tool", "openai face"]
Call = Callable[[], Awaitable[int]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(stack: ExitStack, command: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Runs `command` with its output in `log`; `stack` stops it (SIGTERM, then SIGKILL after 30 s)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env})

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    return process


async def wait_healthy(http: httpx2.AsyncClient, url: str, process: subprocess.Popen[bytes],
                       headers: dict[str, str] | None = None) -> None:
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}; its log is in the folder above")
        try:
            if (await http.get(url, headers=headers)).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        await anyio.sleep(0.1)


async def batch(c: int, one: Call) -> float:
    """Tokens/s of C calls made at once."""
    done: list[int] = []

    async def call() -> None:
        done.append(await one())

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(c):
            tg.start_soon(call)
    return sum(done) / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, engine: subprocess.Popen[bytes], engine_url: str, key: str,
                  server: subprocess.Popen[bytes], base: str) -> tuple[list[tuple[int, list[float]]], dict[str, float]]:
    headers = {"Authorization": f"Bearer {key}"}
    # No keep-alive to llama-server, as mcp-tiered's own client (it may close an idle connection as it is reused).
    async with httpx2.AsyncClient(timeout=None, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
        await wait_healthy(http, f"{engine_url}/health", engine, headers)
        await wait_healthy(http, f"{base}/healthz", server)

        async def via_engine() -> int:
            response = await http.post(f"{engine_url}/v1/chat/completions", headers=headers, json={
                "messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens, "temperature": 0})
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        async with Client(f"{base}/mcp") as client, AsyncOpenAI(base_url=f"{base}/v1", api_key="unused",
                                                                max_retries=0) as openai:

            async def via_mcp() -> int:
                result = await client.call_tool(f"generate_{TIER}", {
                    "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0, "escalate": "never",
                    "cache": False})
                if result.is_error:
                    raise SystemExit(f"tool call failed: {result.content[0].text}")
                return result.structured_content["usage"]["completion_tokens"]

            async def via_openai() -> int:
                response = await openai.chat.completions.create(
                    model=f"{TIER}:never", messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=args.max_tokens, temperature=0)
                return response.usage.completion_tokens

            ways = [via_engine, via_mcp, via_openai]
            for way in ways:  # warm-up: mcp-tiered starts its llama-server on the first call
                await way()
            rows = []
            for c in args.concurrency:
                rates: list[list[float]] = [[] for _ in ways]
                for round_ in range(args.rounds):
                    for i in [(round_ + k) % len(ways) for k in range(len(ways))]:
                        await anyio.sleep(args.settle)
                        rates[i].append(await batch(c, ways[i]))
                    print(f"C={c} round {round_ + 1}: " + " | ".join(
                        f"{name} {r[-1]:.1f} tok/s" for name, r in zip(WAYS, rates, strict=True)), flush=True)
                rows.append((c, [statistics.median(r) for r in rates]))

            async def first_text_s(model: str) -> float:
                """Seconds to the first streamed text of one call."""
                started = time.perf_counter()
                stream = await openai.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=args.max_tokens,
                    temperature=0, stream=True)
                first = None
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
                return first if first is not None else float("nan")

            waits: dict[str, list[float]] = {TIER: [], f"{TIER}:never": []}
            for _ in range(args.rounds):
                for model in waits:
                    await anyio.sleep(args.settle)
                    waits[model].append(await first_text_s(model))
            firsts = {model: statistics.median(w) for model, w in waits.items()}
    return rows, firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_models_dir() / SMOLLM2.filename)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, PARALLEL])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=1024, help="per slot")
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="-1: offload every layer (CUDA build)")
    parser.add_argument("--server-binary", type=Path, default=BIN("llama-server"),
                        help="the llama-server both (a) and the tier run (default: the one beside this Python)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause between two measurements")
    args = parser.parse_args()
    if max(args.concurrency) > PARALLEL:
        parser.error(f"--concurrency above the tier's {PARALLEL} slots would measure its queue")
    threads = available_cpus()
    folder = Path(tempfile.mkdtemp(prefix="bench-openai-face-"))
    print(f"config, server logs and ledger in {folder}", flush=True)
    config = folder / "models.toml"
    config.write_text(
        f'[tiers.{TIER}]\nengine = "llama-server"\nmodel = "{args.model}"\ndescription = "benchmark"\n'
        f"parallel = {PARALLEL}\nn_ctx = {args.n_ctx}\nn_threads = {threads}\nn_batch = {N_BATCH}\n"
        f'n_gpu_layers = {args.n_gpu_layers}\nmax_tokens = {args.max_tokens}\nserver_binary = "{args.server_binary}"\n'
        f'[ledger]\npath = "ledger.sqlite3"\n[cache]\nenabled = false\n')
    engine_port, server_port, key = free_port(), free_port(), secrets.token_urlsafe(16)
    with ExitStack() as stack:  # stops both servers however the run ends, Ctrl-C included
        # The flags of mcp_tiered/backends/llama_server.py for this tier.
        engine = start(stack, [
            str(args.server_binary), "--model", str(args.model), "--host", "127.0.0.1", "--port", str(engine_port),
            "--parallel", str(PARALLEL), "--ctx-size", str(args.n_ctx * PARALLEL), "--no-kv-unified",
            "--n-gpu-layers", "all" if args.n_gpu_layers == -1 else str(args.n_gpu_layers), "--main-gpu", "0",
            "--threads", str(threads), "--batch-size", str(N_BATCH), "--no-webui", "--jinja"],
            folder / "llama-server.log", LLAMA_API_KEY=key)
        server = start(stack, [str(BIN("mcp-tiered")), "--log-level", "WARNING", "serve", "--config", str(config),
                               "--transport", "http", "--port", str(server_port)], folder / "serve.stderr")
        rows, firsts = anyio.run(measure, args, engine, f"http://127.0.0.1:{engine_port}", key,
                         server, f"http://127.0.0.1:{server_port}")
    print(f"\nmodel {args.model.name}, {threads} threads, n_gpu_layers {args.n_gpu_layers}, parallel {PARALLEL}, "
          f"{args.max_tokens} tokens per call, temperature 0, median of {args.rounds} rounds")
    print("| C | engine | mcp tool | openai face | openai face / mcp tool | openai face / engine | mcp tool / engine |")
    print("| --- " * 7 + "|")
    for c, (engine_rate, mcp_rate, openai_rate) in rows:
        print(f"| {c} | {engine_rate:.1f} tok/s | {mcp_rate:.1f} tok/s | {openai_rate:.1f} tok/s | "
              f"{openai_rate / mcp_rate:.3f} | {openai_rate / engine_rate:.3f} | {mcp_rate / engine_rate:.3f} |")
    print("goal: openai face / mcp tool >= 0.95")
    print(f"\nstream: time to the first text, C = 1: {TIER} (judged, then sent whole) {firsts[TIER]:.3f} s, "
          f"{TIER}:never (as generated) {firsts[f'{TIER}:never']:.3f} s")


if __name__ == "__main__":
    main()
