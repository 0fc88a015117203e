#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored via .git/info/exclude) for scripts/gpu/check.sh on a machine with an NVIDIA GPU
# but no network: cp312 wheels of every dependency, a trimmed llama-cpp-python sdist (docs, vocab models and
# unused backends removed: 10 MB instead of 77 MB), the gguf package and SmolLM2's tokenizer (~2 MB).
# Needs network here, .venv from scripts/setup.sh and the SmolLM2 model (mcp-tiered fetch-models).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/gguf
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64)
python3 -m pip download -q --dest .gpu/whl --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  "mcp==2.3.0" "anthropic>=2.14,<3" "pydantic>=2.7,<3" "anyio>=4.4" "structlog>=24.1" "platformdirs>=4" \
  "prometheus-client>=0.20" numpy diskcache jinja2 typing-extensions setuptools scikit-build-core ninja pip
python3 -m pip download -q --dest .gpu/gguf --no-deps gguf
SRC=$(mktemp -d)
python3 -m pip download -q --dest "$SRC" --no-deps --no-binary :all: llama-cpp-python==0.3.36
tar xzf "$SRC"/llama_cpp_python-0.3.36.tar.gz -C "$SRC"
( cd "$SRC"/llama_cpp_python-0.3.36 && rm -rf .git vendor/llama.cpp/{models,docs,benches} vendor/llama.cpp/tools/ui \
    vendor/llama.cpp/ggml/src/ggml-{et,metal,hexagon,sycl,vulkan,opencl,cann,musa,rpc,zdnn,webgpu,openvino,virtgpu} )
tar czf .gpu/llama_cpp_python-0.3.36.tar.gz -C "$SRC" llama_cpp_python-0.3.36
rm -rf "$SRC"
python3 -m venv .gpu/venv-gguf && .gpu/venv-gguf/bin/pip install -q gguf
.gpu/venv-gguf/bin/python scripts/gpu/synth_gguf.py --tokenizer-only \
  "${MCP_TIERED_MODELS:-$HOME/.cache/mcp-tiered/models}/SmolLM2-135M-Instruct.Q4_1.gguf" .gpu/vocab.gguf
rm -rf .gpu/venv-gguf
du -sh .gpu
