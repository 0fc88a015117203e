#!/usr/bin/env bash
# The GPU acceptance run, on a fresh GPU machine without network, from the repository root with .gpu/ from
# scripts/gpu/prepare.sh beside it; sized for 15 minutes of device time in all (setup ~5 min):
#
#   1. scripts/setup.sh --cuda --no-models --llama-server, offline: llama.cpp compiled once with CUDA, as shared
#      libraries both engines load (ENGINES=0: without llama-server);
#   2. a synthetic 1.2B F16 model (scripts/gpu/synth_gguf.py; no model hub there);
#   2b. scripts/gpu/variants.py: where a CUDA load dies, each variant in a child under a timeout (variants.txt);
#   3. scripts/gpu/serve_check.py: the real server with full offload over stdio and Streamable HTTP
#      (answered, deadline and cancelled calls; VRAM loaded and after idle unload); if the server died, it
#      is run once more under gdb for a native backtrace;
#   4. scripts/bench_overhead.py: the same request through MCP and directly through llama_cpp.Llama, in one
#      run (tokens/s ratio; goal >= 0.95 at 256 generated tokens with full offload);
#   5. scripts/bench_engines.py at C = 1, 8, 32: the llama-server engine on the same build (unless ENGINES=0);
#   6. only with EXTRAS=1: CPU vs offload (bench_offload.py, GPU power sampled) and prefix reuse (bench_prefix.py).
#
# The log goes to $OUT/log.txt (else /tmp/log.txt), the servers' stderr and any backtrace beside it.
set -uo pipefail
export PYTHONUNBUFFERED=1
LOGDIR=${OUT:-/tmp}
exec > >(tee "$LOGDIR/log.txt") 2>&1
T0=$(date +%s); t() { echo "=== $(( $(date +%s) - T0 )) s: $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 --version; cmake --version | head -1; nvcc --version | tail -1; nproc; git log --oneline -1 2>/dev/null
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.gpu/whl $PWD/.gpu" XDG_CACHE_HOME=/tmp/cache
# llama-server links the same shared libraries (the CUDA kernels are compiled once): built unless ENGINES=0.
SERVER_FLAG=--llama-server; [ "${ENGINES:-1}" = 0 ] && SERVER_FLAG=
t "setup.sh --cuda --no-models $SERVER_FLAG"
bash scripts/setup.sh --cuda --no-models $SERVER_FLAG || { t "SETUP FAILED"; exit 1; }
t "setup done"
python3 -m pip install -q --no-index --no-deps --target /tmp/gguf .gpu/gguf/*.whl
MODEL=/tmp/synthetic.gguf
[ -f "$MODEL" ] || PYTHONPATH=/tmp/gguf python3 scripts/gpu/synth_gguf.py .gpu/vocab.gguf "$MODEL"
ls -la "$MODEL"

t "variants: the in-process engine's first load and call taken apart (scripts/gpu/variants.py)"
timeout 300 .venv/bin/python scripts/gpu/variants.py "$MODEL" --n-gpu-layers -1 --log "$LOGDIR/variants.txt"
cat "$LOGDIR/variants.txt"

t "serve_check (stdio and Streamable HTTP, full offload)"
WORK=/tmp/serve_check
timeout 240 .venv/bin/python scripts/gpu/serve_check.py "$MODEL" --work "$WORK"
SERVE=$?
cp "$WORK"/*.stderr "$LOGDIR"/ 2>/dev/null
if [ $SERVE -ne 0 ] && command -v gdb >/dev/null; then
  t "the server under gdb: one call over stdio, native backtrace of every thread"
  INIT='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"gdb","version":"1"}}}'
  CALL='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_gpu","arguments":{"prompt":"Say hi.","max_tokens":16}}}'
  { echo "$INIT"; echo '{"jsonrpc":"2.0","method":"notifications/initialized"}'; echo "$CALL"; sleep 60; } |
    timeout 120 gdb -q -batch -ex "set logging file $LOGDIR/gdb.txt" -ex "set logging redirect on" \
      -ex "set logging enabled on" -ex "handle SIGPIPE nostop" -ex run -ex "thread apply all bt" \
      --args .venv/bin/python -m mcp_tiered serve --config "$WORK/gpu.toml" > "$LOGDIR/gdb.stdout" 2> "$LOGDIR/gdb.stderr"
  grep -B2 -A25 "received signal" "$LOGDIR/gdb.txt" | head -120
fi

t "bench_overhead: MCP vs direct llama_cpp.Llama, full offload, 256 tokens"
timeout 240 .venv/bin/python scripts/bench_overhead.py --model "$MODEL" --n-gpu-layers -1 --n-ctx 4096 \
  --max-tokens 256 --runs 7 --settle 0.2

if [ "${ENGINES:-1}" = 1 ]; then
  t "bench_engines: llama-server engine vs direct, full offload, C = 1 / 8 / 32"
  timeout 300 .venv/bin/python scripts/bench_engines.py --model "$MODEL" --n-gpu-layers -1 --concurrency 1 8 32 \
    --tokens 128 --rounds 3 --n-ctx 2048
fi

if [ "${EXTRAS:-0}" = 1 ]; then
  t "bench_offload (GPU power sampled every 100 ms)"
  nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits -lms 100 > /tmp/power.csv &
  POWER=$!
  timeout 200 .venv/bin/python scripts/gpu/bench_offload.py "$MODEL" 2>&1 | grep -E "RESULT|supports|offloaded|model buffer"
  kill $POWER
  sort -n /tmp/power.csv | awk '{a[NR]=$1} END {print "GPU power draw W: samples", NR, "min", a[1], "median", a[int(NR/2)+1], "max", a[NR]}'
  t "bench_prefix on the GPU"
  timeout 120 .venv/bin/python scripts/bench_prefix.py --model-path "$MODEL" --rounds 3 2>&1 | tail -5
fi
t "end"
exit $SERVE
