#!/usr/bin/env python
"""The GPU acceptance check of the real server: `mcp-tiered serve` with one tier fully offloaded
(`n_gpu_layers = -1`), driven by the MCP SDK's clients over stdio and over Streamable HTTP:

- calls that answer, one cut by its deadline (`finish_reason` "deadline"), one cancelled by the client
  (after which the next call must get the instance at once);
- GPU memory before, with the model loaded, and after `idle_unload_s` unloaded it;
- the server's stderr events, and its exit status (a crash is reported with the Python stacks that
  `mcp-tiered serve` prints on a fatal signal).

Prints one `CHECK <name> ok|FAILED ...` line per check and exits 1 if any failed. Runs on the CPU too
(VRAM is then "n/a"), which is how it is tried before a GPU machine is at hand.

    serve_check.py MODEL.gguf [--n-gpu-layers -1] [--work /tmp/serve_check]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

MCP_TIERED = str(Path(sys.executable).with_name("mcp-tiered"))
PROMPT = "Write a long story about a lighthouse keeper. " * 8
failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"CHECK {name} {'ok' if ok else 'FAILED'} {detail}".rstrip(), flush=True)
    if not ok:
        failures.append(name)


def vram_mib() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def write_config(work: Path, model: Path, n_gpu_layers: int) -> Path:
    config = work / "gpu.toml"
    config.write_text(f"""
[tiers.gpu]
model = "{model}"
description = "The model under test, offloaded to the GPU."
n_ctx = 4096
n_gpu_layers = {n_gpu_layers}
max_tokens = 512
idle_unload_s = 4

[ledger]
path = "ledger.sqlite3"
""")
    return config


async def exercise(client: Client, transport: str) -> None:
    """The calls every transport must carry: answered, deadline, cancelled, then answered again at once."""
    tools = [t.name for t in (await client.list_tools()).tools]
    check(f"{transport}.tools", tools == ["generate_gpu"], str(tools))
    for i in range(2):
        started = time.perf_counter()
        result = await client.call_tool("generate_gpu", {"prompt": PROMPT, "temperature": 0, "max_tokens": 256,
                                                         "cache": False})
        content = result.structured_content or {}
        check(f"{transport}.call{i}", not result.is_error,
              f"finish {content.get('finish_reason')} usage {content.get('usage')} "
              f"server {content.get('latency_ms')} ms client {(time.perf_counter() - started) * 1000:.0f} ms "
              f"VRAM {vram_mib()} MiB" + (f" error {result.content[0].text}" if result.is_error else ""))
    deadline = await client.call_tool("generate_gpu", {"prompt": PROMPT, "temperature": 0.8, "max_tokens": 512,
                                                       "deadline_s": 0.25, "cache": False})
    content = deadline.structured_content or {}
    check(f"{transport}.deadline", not deadline.is_error and content.get("finish_reason") == "deadline",
          f"finish {content.get('finish_reason')} tokens {content.get('usage')}")
    with anyio.move_on_after(0.3):  # cancelled mid-generation: the SDK sends notifications/cancelled
        await client.call_tool("generate_gpu", {"prompt": PROMPT, "temperature": 0.8, "max_tokens": 512,
                                                "cache": False})
    started = time.perf_counter()
    after = await client.call_tool("generate_gpu", {"prompt": "Say OK.", "temperature": 0, "max_tokens": 8,
                                                    "cache": False})
    check(f"{transport}.after_cancel", not after.is_error,
          f"answered {(time.perf_counter() - started) * 1000:.0f} ms after the cancel")


def server_events(stderr: Path) -> list[dict]:
    events = []
    for line in stderr.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            print("STDERR", line[:300])  # a crash: faulthandler's stacks
    return events


async def over_stdio(config: Path, work: Path) -> None:
    stderr = work / "stdio.stderr"
    # The whole environment: given none, the SDK passes only HOME, LOGNAME, PATH, SHELL, TERM and USER, so the
    # server ran without LD_LIBRARY_PATH and NVIDIA_* where CUDA needs them.
    params = StdioServerParameters(command=MCP_TIERED, args=["serve", "--config", str(config)], env=dict(os.environ))
    before = vram_mib()
    try:
        with stderr.open("w") as err:
            async with Client(stdio_client(params, errlog=err)) as client:
                await exercise(client, "stdio")
                loaded = vram_mib()
                await anyio.sleep(7)  # idle_unload_s = 4, checked every second
                unloaded = vram_mib()
    except Exception as exc:  # the server died: say how, then carry on with the other checks
        check("stdio.server_alive", False, f"{type(exc).__name__}: {exc}")
        loaded = unloaded = None
    events = server_events(stderr)
    names = [e.get("event") for e in events]
    check("stdio.load_and_unload", "model_loaded" in names and "model_unloaded" in names,
          f"VRAM before {before} MiB, loaded {loaded} MiB, after idle unload {unloaded} MiB")
    if before is not None and loaded is not None and unloaded is not None:
        check("stdio.vram_freed", unloaded < loaded, f"{loaded} -> {unloaded} MiB")


async def over_http(config: Path, work: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stderr = work / "http.stderr"
    with stderr.open("w") as err:
        server = subprocess.Popen([MCP_TIERED, "serve", "--config", str(config), "--transport", "http",
                                   "--port", str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx2.AsyncClient() as http:
                for _ in range(300):
                    try:
                        if (await http.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        await anyio.sleep(0.1)
            async with Client(streamable_http_client(f"{base}/mcp")) as client:
                await exercise(client, "http")
        except Exception as exc:
            check("http.server_alive", False, f"{type(exc).__name__}: {exc}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
    server_events(stderr)
    check("http.clean_exit", code == 0, f"exit {code}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve_check"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = write_config(args.work, args.model.resolve(), args.n_gpu_layers)
    await over_stdio(config, args.work)
    await over_http(config, args.work)
    print("RESULT serve_check", "passed" if not failures else f"FAILED: {', '.join(failures)}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    anyio.run(main)
