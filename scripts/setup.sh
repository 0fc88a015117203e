#!/usr/bin/env bash
# Set up mcp-tiered in ./.venv, idempotently: a second run changes nothing and takes seconds.
#
#   scripts/setup.sh [--cuda] [--test] [--no-models] [--no-llama-server]
#
#   --cuda       build llama.cpp with CUDA offload (-DGGML_CUDA=on) for the GPUs of this machine
#                (CMAKE_CUDA_ARCHITECTURES=native); same as MCP_TIERED_GPU=cuda. Needs the CUDA toolkit
#                (nvcc) and a visible GPU; to build elsewhere, set CMAKE_ARGS with explicit architectures.
#   --test       also install the test dependencies (and, into .tools/, the MCP conformance suite and
#                Inspector with Node 22: scripts/install_node_tools.sh).
#   --no-models  do not fetch the embedded default models.
#   --no-llama-server  do not build llama-server (engine = "llama-server" then needs server_binary or one on PATH).
#
# Environment: PYTHON (interpreter for the venv, default python3, needs >= 3.11), CMAKE_ARGS (replaces
# the llama.cpp build flags entirely), MCP_TIERED_MODELS (where the default models go).
#
# llama-cpp-python has no binary wheel: it is compiled here (~5 min on 2 cores). The wheel is kept in
# ~/.cache/mcp-tiered/wheels/<hash of version and flags>, so later setups (and CI runs on the same
# machine) reuse it; a change of flags builds a new one instead of reusing a wheel with the wrong ones.
# llama-server is built from the same sources and flags (~7 min on 2 cores) and kept the same way.
#
# Everything this script prints goes to stderr: `scripts/serve.sh` runs it in front of a stdio server.
set -euo pipefail
exec 1>&2

cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
PYTHON=${PYTHON:-python3}
VENV=.venv
GPU=${MCP_TIERED_GPU:-cpu}
WITH_TEST=0
WITH_MODELS=1
WITH_SERVER=1
for arg in "$@"; do
  case "$arg" in
    --cuda) GPU=cuda ;;
    --test) WITH_TEST=1 ;;
    --no-models) WITH_MODELS=0 ;;
    --no-llama-server) WITH_SERVER=0 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see --help)"; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

# The default native build emits every instruction the build CPU advertises, AMX included, which some
# VMs advertise but trap ("Illegal instruction"): build for a portable AVX2/AVX-512 baseline instead.
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON"
case "$GPU" in
  cpu) DEFAULT_FLAGS="$CPU_FLAGS" ;;
  # CPU code for an AVX2 baseline (most work runs on the GPU); CUDA code only for the GPUs present,
  # which also keeps the build to minutes instead of compiling every architecture.
  cuda) DEFAULT_FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;;
  *) echo "setup.sh: MCP_TIERED_GPU must be cpu or cuda, got '$GPU'"; exit 2 ;;
esac
FLAGS=${CMAKE_ARGS:-$DEFAULT_FLAGS}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: $PYTHON is missing or older than Python 3.11; set PYTHON=/path/to/python3.11+"
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# llama-cpp-python, built with $FLAGS unless this venv already has exactly that build.
MARKER="$VENV/.llama-cpp-build"
WANT="$LLAMA_VERSION $FLAGS"
if [ "$(cat "$MARKER" 2>/dev/null)" != "$WANT" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  KEY=$(printf '%s|%s' "$LLAMA_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
  WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/mcp-tiered/wheels/$KEY"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $LLAMA_VERSION with CMAKE_ARGS='$FLAGS' (takes minutes)"
    mkdir -p "$WHEELS"
    BUILD=$(mktemp -d)
    # --no-cache-dir: pip's own wheel cache is keyed by the source archive, not the flags.
    CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
      "${PIP[@]}" wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
      --wheel-dir "$BUILD" "llama-cpp-python==$LLAMA_VERSION"
    mv "$BUILD"/llama_cpp_python-*.whl "$WHEELS"/
    rm -rf "$BUILD"
  else
    say "reusing the llama-cpp-python wheel built with CMAKE_ARGS='$FLAGS'"
  fi
  "${PIP[@]}" install --quiet --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  echo "$WANT" > "$MARKER"
fi

# llama-server, llama.cpp's own HTTP server (engine = "llama-server"), from the same pinned sources with the
# same flags, linked statically; kept like the wheel, under the hash of version and flags.
SERVER_KEY=$(printf '%s|%s|server' "$LLAMA_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
SERVER_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/mcp-tiered/llama-server/$SERVER_KEY"
if [ "$WITH_SERVER" = 0 ]; then
  say "not building llama-server (--no-llama-server)"
elif [ ! -x "$SERVER_DIR/llama-server" ]; then
  say "building llama-server from llama-cpp-python $LLAMA_VERSION's llama.cpp with '$FLAGS' (takes minutes)"
  BUILD=$(mktemp -d)
  "${PIP[@]}" download --quiet --no-deps --no-binary :all: --dest "$BUILD" "llama-cpp-python==$LLAMA_VERSION"
  tar xzf "$BUILD"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$BUILD"
  # shellcheck disable=SC2086  # $FLAGS is a list of -D options
  cmake -S "$BUILD"/llama_cpp_python-"$LLAMA_VERSION"/vendor/llama.cpp -B "$BUILD/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $FLAGS > "$BUILD/cmake.log" 2>&1 \
    || { tail -20 "$BUILD/cmake.log"; exit 1; }
  cmake --build "$BUILD/build" --target llama-server -j "$(nproc 2>/dev/null || echo 2)" > "$BUILD/build.log" 2>&1 \
    || { tail -30 "$BUILD/build.log"; exit 1; }
  mkdir -p "$SERVER_DIR"
  cp "$BUILD/build/bin/llama-server" "$SERVER_DIR/llama-server.tmp" && mv "$SERVER_DIR/llama-server.tmp" "$SERVER_DIR/llama-server"
  rm -rf "$BUILD"
else
  say "reusing llama-server built with '$FLAGS'"
fi
if [ "$WITH_SERVER" = 1 ]; then ln -sf "$SERVER_DIR/llama-server" "$VENV/bin/llama-server"; fi

say "installing mcp-tiered and its dependencies"
if [ "$WITH_TEST" = 1 ]; then TARGET=".[test]"; else TARGET="."; fi
"${PIP[@]}" install --quiet --editable "$TARGET"

if [ "$WITH_TEST" = 1 ]; then
  scripts/install_node_tools.sh
  scripts/install_browser.sh
fi

if [ "$WITH_MODELS" = 1 ]; then
  say "fetching the default models (verified by size and sha256)"
  "$VENV/bin/mcp-tiered" --log-level WARNING fetch-models
fi
say "ready: $VENV/bin/mcp-tiered"
