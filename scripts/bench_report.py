#!/usr/bin/env python
"""How long `mcp-tiered report` takes over a long history: builds a ledger of --calls calls and 1.3 hops per
call (30 % escalated) spread over a year, from a few clients, then times `mcp-tiered report` end to end in
every format (and `--by client`), best of --runs. The goal: ≤ 2 s for 1 M calls and 1.3 M hops.

    .venv/bin/python scripts/bench_report.py [--calls 1000000] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp_tiered.accounting.ledger import CALL_COLUMNS, HOP_COLUMNS, connect

YEAR_S = 365 * 86400.0
CLIENTS = ["claude-ai", "cursor", "vscode", "zed", None]


def build(path: Path, calls: int) -> int:
    rng = random.Random(0)
    conn = connect(path)
    start = time.time() - YEAR_S
    call_rows, hop_rows = [], []
    for i in range(1, calls + 1):
        when = start + i * YEAR_S / calls
        escalated = rng.random() < 0.3
        served = "large" if escalated else "small"
        cache = rng.random() < 0.05
        prompt, completion = rng.randint(50, 2000), rng.randint(5, 400)
        call_rows.append((when, "generate_small", "small", served, served, "cache_hit" if cache else "ok", prompt,
                          completion, 0.8, 0.0, 0.7, "low_confidence" if escalated else "", int(cache), 0.02, 0.000006,
                          0.0, rng.choice(CLIENTS)))
        hop_rows.append((i, when, 0, "small", "small", "escalated" if escalated else "answered",
                         "low_confidence" if escalated else None, prompt, completion, 0.0, 0.3, 0.01, 0.000003, 0.0,
                         None, 0.05))
        if escalated:
            hop_rows.append((i, when, 1, "large", "large", "answered", None, prompt, completion, 0.0, 0.6, 0.02,
                             0.000006, 0.0, None, 0.1))
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO calls (id, {CALL_COLUMNS}) VALUES ({', '.join('?' * 18)})",
                     [(i + 1, *row) for i, row in enumerate(call_rows)])
    conn.executemany(f"INSERT INTO hops ({HOP_COLUMNS}) VALUES ({', '.join('?' * 16)})", hop_rows)
    conn.execute("COMMIT")
    conn.close()
    return len(hop_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="build the ledger in this folder (and reuse it when it is there)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / "ledger.sqlite3"
    config = folder / "models.toml"
    config.write_text(f'[tiers.small]\nmodel = "s.gguf"\ndescription = "s"\nescalate_to = "large"\n'
                      f'[tiers.large]\nmodel = "l.gguf"\ndescription = "l"\n[ledger]\npath = "{ledger}"\n'
                      "[costs.tiers.small]\npower_watts = 300\nhardware_cost = 3000\n")
    if not ledger.exists():
        started = time.perf_counter()
        hops = build(ledger, args.calls)
        print(f"built {args.calls:,} calls and {hops:,} hops in {time.perf_counter() - started:.1f} s "
              f"({ledger.stat().st_size / 1e6:,.0f} MB)")
    command = [str(Path(sys.executable).with_name("mcp-tiered")), "report", "--config", str(config)]
    for label, extra in (("table", []), ("json", ["--format", "json"]), ("html", ["--format", "html"]),
                         ("table --by client", ["--by", "client"])):
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run(command + extra, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        print(f"report {label:<18} {min(times):.2f} s (best of {args.runs})")


if __name__ == "__main__":
    main()
