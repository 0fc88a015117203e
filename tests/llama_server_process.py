"""The real llama-server built by scripts/setup.sh, started by tests as the endpoint a team already runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx2

from mcp_tiered.config.load import parse_config

KEY = "endpoint-key-for-tests"


def llama_server_binary() -> Path:
    from mcp_tiered.backends.llama_server import find_server_binary

    config = parse_config({"tiers": {"s": {"model": "m.gguf", "description": "d", "engine": "llama-server"}}},
                          base_dir=Path("."))
    binary = find_server_binary(config.tiers["s"])
    assert binary is not None, "scripts/setup.sh builds llama-server"
    return binary


def start_llama_server(model: Path, port: int, parallel: int = 2, key: str | None = KEY,
                       jinja: bool = True) -> subprocess.Popen[bytes]:
    """llama-server on 127.0.0.1:`port` (the endpoint a team already runs), healthy; `key`: its API key;
    `jinja`: its chat templates can render tools."""
    process = subprocess.Popen(
        [str(llama_server_binary()), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--parallel", str(parallel), "--ctx-size", str(1024 * parallel), "--no-kv-unified", "--threads", "2",
         *(["--jinja"] if jinja else []), "--no-webui"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **({"LLAMA_API_KEY": key} if key else {})})
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "llama-server exited while starting"
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx2.HTTPError:
            pass
        assert time.monotonic() < deadline, "llama-server did not start within 60 s"
        time.sleep(0.1)
