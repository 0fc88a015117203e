#!/usr/bin/env python
"""Load test: many concurrent tool calls against one `mcp-tiered serve` over stdio, then a long series of
sequential calls to watch the server's memory.

    .venv/bin/python scripts/load_test.py [--calls 100] [--instances 1] [--max-queue 8] [--sequential 1000]

Phase 1 sends --calls generate_small calls at once (SmolLM2, a 1-instance tier with a bounded queue) and
counts them: answered, busy (the queue was full or the wait too long: an isError result saying so), other
errors, and hung (no answer within --hang-s). Phase 2 makes --sequential calls one after another and
prints the server's RSS before and after.
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

from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import SMOLLM2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_pid(config: Path) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(config).encode() in cmdline and b"serve" in cmdline:
                return int(proc.name)
    raise SystemExit("cannot find the server process")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--queue-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--hang-s", type=float, default=120.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        config.write_text(
            f'[tiers.small]\nmodel = "{default_models_dir() / SMOLLM2.filename}"\ndescription = "load test"\n'
            f"n_ctx = 1024\nmax_tokens = {args.max_tokens}\ninstances = {args.instances}\n"
            f"max_queue = {args.max_queue}\nqueue_timeout_s = {args.queue_timeout_s}\n"
            # The server's own ledger, in the temporary folder rather than the user's.
            '[ledger]\npath = "ledger.sqlite3"\n'
        )
        server = StdioServerParameters(command=str(Path(sys.executable).with_name("mcp-tiered")),
                                       args=["--log-level", "WARNING", "serve", "--config", str(config)])
        errlog = (Path(tmp) / "server.log").open("w")  # the busy warnings, one per refused call
        async with Client(stdio_client(server, errlog=errlog)) as client:
            started = time.perf_counter()
            await client.list_tools()
            print(f"tools/list: {(time.perf_counter() - started) * 1000:.1f} ms")
            counts = {"answered": 0, "busy": 0, "errors": 0, "hung": 0}
            latencies: list[float] = []

            async def one(i: int) -> None:
                began = time.perf_counter()
                with anyio.move_on_after(args.hang_s) as scope:
                    result = await client.call_tool(
                        "generate_small", {"prompt": f"What is {i} + {i}? Answer with the number only.",
                                           "temperature": 0})
                if scope.cancelled_caught:
                    counts["hung"] += 1
                elif not result.is_error:
                    counts["answered"] += 1
                    latencies.append(time.perf_counter() - began)
                elif "is busy" in result.content[0].text:
                    counts["busy"] += 1
                else:
                    counts["errors"] += 1
                    print(f"error: {result.content[0].text}")

            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(args.calls):
                    tg.start_soon(one, i)
            wall = time.perf_counter() - began
            print(f"\n{args.calls} concurrent calls, {args.instances} instance(s), max_queue {args.max_queue}: "
                  f"{counts} in {wall:.1f} s")
            if latencies:
                p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
                print(f"answered latency: p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s")

            pid = server_pid(config)
            before = rss_mb(pid)
            began = time.perf_counter()
            checkpoints = []
            for i in range(args.sequential):
                result = await client.call_tool("generate_small", {"prompt": f"Say the number {i}.", "max_tokens": 8})
                if result.is_error:
                    print(f"sequential call {i} failed: {result.content[0].text}")
                if (i + 1) % max(args.sequential // 5, 1) == 0:
                    checkpoints.append(f"{i + 1}: {rss_mb(pid):.1f}")
            print("RSS (MB) after N sequential calls:", ", ".join(checkpoints))
            after = rss_mb(pid)
            print(f"\n{args.sequential} sequential calls in {time.perf_counter() - began:.1f} s; server RSS "
                  f"{before:.1f} MB → {after:.1f} MB ({(after - before) / before:+.1%})")
            ok = counts["hung"] == 0 and counts["errors"] == 0
            print("\nresult:", "OK (0 hung, 0 errors: every call answered or busy)" if ok else "FAILED")


if __name__ == "__main__":
    anyio.run(main)
