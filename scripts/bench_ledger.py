#!/usr/bin/env python
"""What committing a call's ledger row before its answer goes out costs: per-call latency of
`Ledger.commit` (wait for the commit) against `Ledger.record` (queue only), one caller after another and
--concurrent callers at once (their rows share transactions), on a temporary ledger.

    .venv/bin/python scripts/bench_ledger.py [--calls 2000] [--concurrent 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_tiered import logs
from mcp_tiered.accounting.ledger import CallRecord, HopRecord, Ledger


def row() -> CallRecord:
    hops = (HopRecord(0, "small", "m", "escalated", "low_confidence", 30, 12, 0.0, 0.4),
            HopRecord(1, "large", "m", "answered", None, 30, 20, 0.0, 1.1))
    return CallRecord(time.time(), "generate_small", "small", "large", "m", "ok", 30, 20, 1.5, hops=hops)


def summary(name: str, seconds: list[float]) -> None:
    us = sorted(s * 1e6 for s in seconds)
    print(f"{name:<34} median {statistics.median(us):7.1f} us   p99 {us[int(len(us) * 0.99)]:7.1f} us")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    logs.configure("WARNING")
    ledger = Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite3")

    queued, committed = [], []
    for _ in range(args.calls):
        started = time.perf_counter()
        ledger.record(row())
        queued.append(time.perf_counter() - started)
    ledger.flush()
    for _ in range(args.calls):
        started = time.perf_counter()
        await ledger.commit(row())
        committed.append(time.perf_counter() - started)

    together: list[float] = []

    async def caller() -> None:
        for _ in range(args.calls // args.concurrent):
            started = time.perf_counter()
            await ledger.commit(row())
            together.append(time.perf_counter() - started)

    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrent):
            tg.start_soon(caller)
    ledger.close()
    summary("record (queue only)", queued)
    summary("commit, one caller", committed)
    summary(f"commit, {args.concurrent} concurrent callers", together)


if __name__ == "__main__":
    anyio.run(main)
