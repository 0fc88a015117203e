#!/usr/bin/env python
"""Where does a CUDA load die? The in-process engine's first call, taken apart: each variant runs in a child
process under a timeout, and its exit status (-11: SIGSEGV) and last lines go to one log.

  0  the machine: kernel, driver, LD_LIBRARY_PATH, which libcuda a load maps
  1  a plain Llama(MODEL, n_gpu_layers) and 64 tokens, in a thread (the control)
  2  the same with verbose=False (llama-cpp-python then redirects fd 1 and 2 around the load)
  3  the server's options: n_ctx 4096, every CPU as n_threads, n_batch 512, a log-probability per token
  4  LlamaBackend.generate under anyio.run, without MCP
  5  (3) in the environment the SDK's stdio client gives a server it starts without `env`
  6  the first variant that failed, again with GGML_CUDA_DISABLE_GRAPHS=1, with GGML_CUDA_NO_PINNED=1, with
     n_gpu_layers=0
  7  the first variant that failed under gdb (cuda-gdb where there is no gdb): every thread's backtrace

    variants.py MODEL.gguf [--n-gpu-layers -1] [--log FILE] [--only 1 3 ...] [--timeout 60]

Runs on the CPU too (--n-gpu-layers 0), which is how it is tried before a GPU machine is at hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STDIO_CLIENT_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
"""What mcp.client.stdio passes to a server it starts without `env` (its get_default_environment)."""

MACHINE = """
import os, platform, subprocess
print("kernel", platform.release())
print("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH"))
try:
    print("driver", subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip())
except OSError as exc:
    print("driver: no nvidia-smi", exc)
import llama_cpp
llama_cpp.llama_backend_init()
maps = open("/proc/self/maps").read().splitlines()
print("libcuda", sorted({l.split()[-1] for l in maps if "libcuda" in l}) or "not mapped")
"""

LOAD = """
import os, sys, threading, time, traceback
from llama_cpp import Llama
def run():
    try:
        started = time.perf_counter()
        llama = Llama({model!r}, n_gpu_layers={ngl}, {options})
        print("loaded", round(time.perf_counter() - started, 2), "s", flush=True)
        {body}
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)  # an exception in the thread is a failed variant, not a quiet exit 0
thread = threading.Thread(target=run)
thread.start()
thread.join()
"""
COMPLETION = 'print("tokens", llama.create_completion("Once upon a time", max_tokens=64, temperature=0)["usage"]["completion_tokens"], flush=True)'
PER_TOKEN = ("n = 0\n        for token in llama.generate(llama.tokenize(b'Once upon a time'), temp=0):\n"
             "            row = llama.scores[llama.n_tokens - 1]  # the logits the token came from, as the server reads them\n"
             "            n += 1\n            if n == 64: break\n        print('tokens', n, 'logits', len(row), flush=True)")

BACKEND = """
import anyio
from mcp_tiered.backends import GenerationRequest
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.config.schema import TierConfig
async def main():
    backend = LlamaBackend("gpu", TierConfig(model={model!r}, description="gpu", n_gpu_layers={ngl}, n_ctx=4096))
    try:
        done = await backend.generate(GenerationRequest("Once upon a time", "", 64, 0.0))
        print("tokens", done.completion_tokens, done.finish_reason, flush=True)
    finally:
        await backend.aclose()
anyio.run(main)
"""

SERVER_OPTIONS = "n_ctx=4096, n_threads=len(os.sched_getaffinity(0)), n_batch=512, verbose=False"


def variants(model: str, ngl: int) -> dict[int, tuple[str, str, dict[str, str] | None]]:
    """Number → (what it is, its Python code, its environment; None: this process's)."""
    load = lambda options, body=COMPLETION: LOAD.format(model=model, ngl=ngl, options=options, body=body)  # noqa: E731
    stripped = {k: os.environ[k] for k in STDIO_CLIENT_ENV if k in os.environ}
    return {
        0: ("the machine", MACHINE, None),
        1: ("plain Llama in a thread", load("n_ctx=512"), None),
        2: ("plain, verbose=False", load("n_ctx=512, verbose=False"), None),
        3: ("the server's options, logits read per token", load(SERVER_OPTIONS, PER_TOKEN), None),
        4: ("LlamaBackend.generate under anyio", BACKEND.format(model=model, ngl=ngl), None),
        5: ("the server's options, the stdio client's environment", load(SERVER_OPTIONS, PER_TOKEN), stripped),
    }


def run(number: int, what: str, code: str, env: dict[str, str] | None, timeout: float, log) -> int:  # noqa: ANN001
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)], env=environment,
                              capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stderr + done.stdout  # its own lines last, after llama.cpp's log
    except subprocess.TimeoutExpired as exc:
        status, output = "timeout", (exc.stderr or b"").decode(errors="replace") + (exc.stdout or b"").decode(errors="replace")
    tail = "\n".join(output.strip().splitlines()[-15:])
    print(f"variant {number} ({what}): exit {status}\n{textwrap.indent(tail, '    ')}", file=log, flush=True)
    return status if isinstance(status, int) else 124


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--only", type=int, nargs="+")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    log = args.log.open("a") if args.log else sys.stdout
    table = variants(str(Path(args.model).resolve()), args.n_gpu_layers)
    failed = None
    for number, (what, code, env) in table.items():
        if args.only and number not in args.only:
            continue
        if run(number, what, code, env, args.timeout, log) != 0 and failed is None and number:
            failed = number
    if failed is None:
        print("no variant failed", file=log)
        return 0
    what, code, env = table[failed]
    for name, change in (("GGML_CUDA_DISABLE_GRAPHS=1", {"GGML_CUDA_DISABLE_GRAPHS": "1"}),
                         ("GGML_CUDA_NO_PINNED=1", {"GGML_CUDA_NO_PINNED": "1"})):
        run(6, f"{what}, {name}", code, {**(env or os.environ), **change}, args.timeout, log)
    run(6, f"{what}, n_gpu_layers=0", code.replace(f"n_gpu_layers={args.n_gpu_layers}", "n_gpu_layers=0"), env,
        args.timeout, log)
    debugger = shutil.which("gdb") or shutil.which("cuda-gdb")
    if debugger:
        script = Path("/tmp/variant.py")
        script.write_text(textwrap.dedent(code))
        environment = {**(env or os.environ), "PYTHONPATH": str(REPO)}
        done = subprocess.run([debugger, "-batch", "-ex", "run", "-ex", "thread apply all bt",
                               "--args", sys.executable, str(script)], env=environment, capture_output=True,
                              text=True, timeout=args.timeout * 2)
        lines = (done.stdout + done.stderr).splitlines()
        print(f"variant 7 ({Path(debugger).name} on variant {failed}):", file=log)
        print(textwrap.indent("\n".join(lines[-120:]), "    "), file=log, flush=True)
    else:
        print("variant 7: no gdb and no cuda-gdb here", file=log)
    return 1


if __name__ == "__main__":
    sys.exit(main())
