"""The real server on a CUDA build: stdio MCP client -> generate_gpu with n_gpu_layers = -1; VRAM before,
with the model loaded, and after idle unload.

    serve_check.py MODEL.gguf
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

model = sys.argv[1]
cfg = Path("/tmp/gpu.toml")
cfg.write_text(f'''
[tiers.gpu]
model = "{model}"
description = "Synthetic 1.3B F16 model, fully offloaded."
n_ctx = 4096
n_gpu_layers = -1
max_tokens = 256
idle_unload_s = 3
''')

def vram():
    if not shutil.which("nvidia-smi"):
        return "n/a"
    return subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()

async def main():
    print("VRAM before", vram())
    params = StdioServerParameters(command=".venv/bin/mcp-tiered", args=["serve", "--config", str(cfg)])
    with open("/tmp/serve.stderr", "w") as err:
        async with Client(stdio_client(params, errlog=err)) as client:
            tools = (await client.list_tools()).tools
            print("tools", [t.name for t in tools])
            for i in range(3):
                t0 = time.perf_counter()
                r = await client.call_tool("generate_gpu", {"prompt": "Say something. " * 50, "temperature": 0, "max_tokens": 200, "cache": False})
                sc = r.structured_content or {}
                print("call", i, "is_error", r.is_error, "finish", sc.get("finish_reason"), "usage", sc.get("usage"),
                      "latency_ms", sc.get("latency_ms"), f"client {time.perf_counter()-t0:.3f} s", "VRAM", vram())
                if r.is_error:
                    print(r.content[0].text)
            await anyio.sleep(6)
            print("VRAM after idle unload", vram())
    for line in open("/tmp/serve.stderr"):
        if any(k in line for k in ("model_loaded", "model_unloaded", "tool_call", "error")):
            print("LOG", line.strip()[:400])

anyio.run(main)
