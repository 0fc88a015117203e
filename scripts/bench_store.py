#!/usr/bin/env python
"""What does the team store cost a call? Against the embedded default (SQLite, a budget in memory), on a
PostgreSQL cluster this script starts in a temporary folder (Unix socket, the tests' tests/postgres.py):

  1. the ledger commit a call waits for before its answer goes out (Ledger.commit vs StoreLedger.commit,
     one call with two hops, one at a time), median and p99;
  2. a cloud hop's reservation and settlement (CloudBudget vs SharedBudget: hold, settle, leave), median and p99;
  3. calls/s of 3 `serve --transport http` replicas under 50 concurrent MCP clients (SDK, Streamable HTTP),
     each replica with its own SQLite ledger, and all three on the store (runs in alternating order). The calls are temperature-0 repeats
     of a few prompts to a SmolLM2 tier, so after the first of each they are cache hits: no model time, every
     call still validated, dispatched, logged and committed to the ledger before it is answered.

1 and 2 take their samples in turns, one call of each at a time. Prints each figure for both and the
difference (1, 2) or the ratio (3). Run it alone: timing on this machine
is noisy, and a test suite beside it makes it meaningless.

    .venv/bin/python scripts/bench_store.py [--commits 2000] [--holds 1000] [--seconds 20] [--clients 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
from mcp.client.client import Client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from postgres import Postgres, binaries  # noqa: E402 (the tests' cluster helper)

from mcp_tiered import logs  # noqa: E402
from mcp_tiered.accounting.budget import CloudBudget  # noqa: E402
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, Ledger  # noqa: E402
from mcp_tiered.config.schema import StoreConfig, TokenPrices, default_models_dir  # noqa: E402
from mcp_tiered.store.budget import SharedBudget  # noqa: E402
from mcp_tiered.store.ledger import StoreLedger  # noqa: E402
from mcp_tiered.store.runtime import Store  # noqa: E402
from mcp_tiered.weights.default_models import SMOLLM2  # noqa: E402

PRICES = TokenPrices(input_price_per_mtok=3.0, output_price_per_mtok=15.0)
MCP_TIERED = str(Path(sys.executable).with_name("mcp-tiered"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--holds", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each calls/s run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="calls/s runs of each, in alternating order")
    parser.add_argument("--model", type=Path, default=default_models_dir() / SMOLLM2.filename)
    return parser.parse_args()


def row() -> CallRecord:
    hops = (HopRecord(0, "small", "m.gguf", "escalated", "confidence", 30, 6, 0.01, 0.2, 0.01, 0.000003),
            HopRecord(1, "large", "l.gguf", "answered", None, 30, 7, 0.0, 0.9, 0.02, 0.000006))
    return CallRecord(time.time(), "generate_small", "small", "large", "l.gguf", "ok", 30, 7, 1.2, hops=hops,
                      client="bench")


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def time_commits(ledgers: tuple[Ledger, Ledger], n: int) -> tuple[list[float], list[float]]:
    """Each ledger's commit times, taken in turns (one, the other, ...) so that the machine's noise falls on both."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(n + 20):  # the first 20 warm the connections, statements and pages
        for ledger, times in zip(ledgers, samples):
            started = time.perf_counter()
            assert await ledger.commit(row())
            if i >= 20:
                times.append(time.perf_counter() - started)
    return samples


async def time_holds(budgets: tuple[CloudBudget, CloudBudget], n: int) -> tuple[list[float], list[float]]:
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(n + 20):
        for budget, times in zip(budgets, samples):
            started = time.perf_counter()
            async with budget.hold(PRICES, "What is 2+2?", "", 64) as reservation:
                await budget.settle(reservation, 20, 8)
            if i >= 20:
                times.append(time.perf_counter() - started)
    return samples


def line(what: str, base: list[float], store: list[float]) -> str:
    (bm, bp), (sm, sp) = quantiles(base), quantiles(store)
    return (f"{what:<28} SQLite/memory median {bm:6.3f} ms p99 {bp:6.3f} ms | store median {sm:6.3f} ms "
            f"p99 {sp:6.3f} ms | the store adds {sm - bm:+.3f} ms at the median")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_config(folder: Path, model: Path, store_url: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (f'[tiers.small]\nmodel = "{model}"\ndescription = "small"\nn_ctx = 512\nmax_tokens = 4\n'
            f'max_queue = 256\npreload = true\n[ledger]\npath = "{folder / "ledger.sqlite3"}"\n'
            f'[cache]\nmax_entries = 64\n')
    if store_url:
        text += f'[store]\nurl = "{store_url}"\ninstance = "{folder.name}"\n'
    path = folder / "models.toml"
    path.write_text(text)
    return path


async def calls_per_second(configs: list[Path], clients: int, seconds: float) -> float:
    processes, bases = [], []
    env = {k: v for k, v in os.environ.items() if k != "MCP_TIERED_CONFIG"}
    try:
        for config in configs:
            port = free_port()
            log = (config.parent / "serve.stderr").open("w")
            processes.append(subprocess.Popen([MCP_TIERED, "serve", "--config", str(config), "--transport", "http",
                                               "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=log))
            bases.append(f"http://127.0.0.1:{port}")
        async with httpx2.AsyncClient() as http:
            for base in bases:
                with anyio.fail_after(60):
                    while True:
                        try:
                            if (await http.get(f"{base}/healthz")).status_code == 200:
                                break
                        except httpx2.TransportError:
                            await anyio.sleep(0.2)
        done = 0
        async with AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(Client(f"{bases[i % len(bases)]}/mcp"))
                        for i in range(clients)]
            for session in sessions[:len(bases) * 4]:  # the first answers of each prompt, not timed
                for p in range(4):
                    await session.call_tool("generate_small", {"prompt": f"Say {p}.", "temperature": 0})
            stop_at = time.perf_counter() + seconds

            async def client(i: int) -> None:
                nonlocal done
                session = sessions[i]
                while time.perf_counter() < stop_at:
                    result = await session.call_tool("generate_small", {"prompt": f"Say {i % 4}.", "temperature": 0})
                    assert not result.is_error, result.content[0].text
                    done += 1

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    tg.start_soon(client, i)
            elapsed = time.perf_counter() - started
        return done / elapsed
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


async def main() -> None:
    args = parse_args()
    logs.configure("WARNING")
    folder = binaries()
    if folder is None:
        sys.exit("bench_store: PostgreSQL's initdb and postgres are needed (scripts/install_postgres.sh)")
    cluster = Postgres(folder)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = cluster.url(cluster.new_database())
            store = Store(StoreConfig(url=url))
            sqlite, shared = Ledger(Path(tmp) / "ledger.sqlite3"), StoreLedger(store)
            try:
                commits = await time_commits((sqlite, shared), args.commits)
            finally:
                sqlite.close()
                shared.close()
            async with store.running():
                with anyio.fail_after(15):
                    await store.connected()
                holds = await time_holds((CloudBudget(1e9, None, "USD"), SharedBudget(store, 1e9, None, "USD")),
                                         args.holds)
            print(line("ledger commit (2 hops)", *commits))
            print(line("cloud reservation + settle", *holds))
            store_url = cluster.url(cluster.new_database())
            rates: dict[str | None, list[float]] = {None: [], store_url: []}
            for turn in range(args.rounds):  # SQLite, store, store, SQLite, ...: neither always goes first
                for shared_store in (None, store_url) if turn % 2 == 0 else (store_url, None):
                    folder = Path(tmp) / f"{'store' if shared_store else 'sqlite'}-{turn}"
                    configs = [replica_config(folder / f"r{i}", args.model, shared_store) for i in range(args.replicas)]
                    rates[shared_store].append(await calls_per_second(configs, args.clients, args.seconds))
            base, shared_rate = statistics.median(rates[None]), statistics.median(rates[store_url])
            print(f"calls/s, {args.clients} clients on {args.replicas} replicas (median of {args.rounds}): SQLite each "
                  f"{base:.1f}, one store {shared_rate:.1f} (store/SQLite {shared_rate / base:.3f})")
    finally:
        cluster.close()


if __name__ == "__main__":
    anyio.run(main)
