#!/usr/bin/env bash
# The CUDA check, run on a GPU machine without network from the repository root, with .gpu/ from
# scripts/gpu/prepare.sh beside it: `scripts/setup.sh --cuda` offline, a synthetic 1.2B F16 model, CPU vs full
# offload (scripts/gpu/bench_offload.py), and the real server over stdio with n_gpu_layers = -1 and idle unload
# (scripts/gpu/serve_check.py). Writes its log to $OUT/log.txt when OUT is set.
set -uo pipefail
export PYTHONUNBUFFERED=1
exec > >(tee "${OUT:-/tmp}/log.txt") 2>&1
T0=$(date +%s); t() { echo "=== $(( $(date +%s) - T0 )) s: $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 --version; cmake --version | head -1; nvcc --version | tail -1; nproc
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.gpu/whl $PWD/.gpu" XDG_CACHE_HOME=/tmp/cache
t "setup.sh --cuda --no-models"
bash scripts/setup.sh --cuda --no-models || { t "SETUP FAILED"; exit 1; }
t "setup done"
python3 -m pip install -q --no-index --no-deps --target /tmp/gguf .gpu/gguf/*.whl
t "synthesizing the model"
PYTHONPATH=/tmp/gguf python3 scripts/gpu/synth_gguf.py .gpu/vocab.gguf /tmp/synthetic.gguf && ls -la /tmp/synthetic.gguf
t "bench_offload (GPU power sampled every 100 ms)"
nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits -lms 100 > /tmp/power.csv &
POWER=$!
timeout 200 .venv/bin/python scripts/gpu/bench_offload.py /tmp/synthetic.gguf 2>&1 | grep -E "RESULT|supports|offloaded|model buffer"
kill $POWER
sort -n /tmp/power.csv | awk '{a[NR]=$1} END {print "GPU power draw W: samples", NR, "min", a[1], "median", a[int(NR/2)+1], "max", a[NR]}'
t "bench_prefix on the GPU"
timeout 120 .venv/bin/python scripts/bench_prefix.py --model-path /tmp/synthetic.gguf --rounds 3 2>&1 | tail -5
timeout 120 .venv/bin/python scripts/bench_prefix.py --model-path /tmp/synthetic.gguf --rounds 3 --instances 2 2>&1 | tail -3
if [ "${SERVE_CHECK:-1}" = 1 ]; then
  t "serve_check"
  timeout 90 .venv/bin/python scripts/gpu/serve_check.py /tmp/synthetic.gguf
fi
t "end"
