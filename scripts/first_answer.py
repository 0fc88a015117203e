#!/usr/bin/env python
"""How long a newcomer waits: `bash scripts/serve.sh` in a checkout, driven as an MCP stdio server by the
SDK's client, timed until it answers `initialize` and then a first `generate_small` call. On a fresh machine
(no .venv, no ~/.cache/mcp-tiered) that includes the whole setup; a second run shows the start from caches.

    python scripts/first_answer.py CHECKOUT [--log FILE]   (any Python with the mcp package)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout", type=Path)
    parser.add_argument("--log", type=Path, default=Path("first_answer.stderr.log"), help="the server's stderr")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_TIERED_CONFIG", "ANTHROPIC_API_KEY", "VIRTUAL_ENV")}
    params = StdioServerParameters(command="bash", args=["scripts/serve.sh"], cwd=str(args.checkout.resolve()),
                                   env=env)
    started = time.monotonic()
    with args.log.open("w") as errlog, anyio.fail_after(3600):
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=3600) as client:
            initialized = time.monotonic() - started
            result = await client.call_tool("generate_small", {"prompt": "What is the capital of France?",
                                                                "max_tokens": 16, "temperature": 0})
            answered = time.monotonic() - started
    text = result.structured_content["text"] if result.structured_content else result.content
    print(f"initialize answered after {initialized:.1f} s; first generate_small answer after {answered:.1f} s: {text!r}")


if __name__ == "__main__":
    anyio.run(main)
