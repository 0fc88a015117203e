#!/usr/bin/env bash
# Set up mcp-tiered in ./.venv, idempotently: a second run changes nothing and takes seconds.
#
#   scripts/setup.sh [--cuda] [--test] [--llama-server] [--no-models]
#
#   --cuda          build llama.cpp with CUDA offload (-DGGML_CUDA=on) for the GPUs of this machine
#                   (CMAKE_CUDA_ARCHITECTURES=native); same as MCP_TIERED_GPU=cuda. Needs the CUDA toolkit
#                   (nvcc) and a visible GPU; to build elsewhere, set CMAKE_ARGS with explicit architectures.
#   --test          also install the test dependencies and build all the tests use (llama-server, and into
#                   .tools/ the MCP conformance suite and Inspector with Node 22: scripts/install_node_tools.sh).
#   --llama-server  also build llama-server (engine = "llama-server"); scripts/serve.sh asks for it when the
#                   config it serves has such a tier.
#   --no-models     do not fetch the embedded default models.
#
# Environment: PYTHON (interpreter for the venv, default python3, needs >= 3.11), CMAKE_ARGS (replaces
# the llama.cpp build flags entirely), MCP_TIERED_MODELS (where the default models go).
#
# llama.cpp is compiled once (~5 min on 2 cores), from the sources vendored in the pinned llama-cpp-python,
# as shared libraries: llama-cpp-python is installed without compiling anything and loads them, and
# llama-server (~2 min more, when asked for) is linked against the same files. The build is kept in
# ~/.cache/mcp-tiered/llama.cpp/<hash of version and flags>, so later setups (and CI runs on the same machine)
# reuse it; a change of flags builds anew, and a build whose files are not those its MANIFEST.json records
# (cut short, truncated, changed) is built anew, never used (mcp_tiered/engines/llama_build.py).
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
WITH_SERVER=0
for arg in "$@"; do
  case "$arg" in
    --cuda) GPU=cuda ;;
    --test) WITH_TEST=1; WITH_SERVER=1 ;;
    --llama-server|--with-llama-server) WITH_SERVER=1 ;;
    --no-llama-server) WITH_SERVER=0 ;;
    --no-models) WITH_MODELS=0 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see --help)"; exit 2 ;;
  esac
done

STARTED=$SECONDS
say() { printf '[setup %d:%02d] %s\n' $(((SECONDS - STARTED) / 60)) $(((SECONDS - STARTED) % 60)) "$*"; }
missing() {  # what to install, in one sentence, then stop
  echo "setup.sh: $1 is needed and not found; install it (Debian/Ubuntu: sudo apt install $2; macOS: $3) and run again"
  exit 1
}
run_logged() {  # run_logged LOG what COMMAND...: the command's output to LOG; on failure its last lines and LOG
  local log=$1 what=$2; shift 2
  if ! "$@" > "$log" 2>&1; then
    tail -30 "$log"
    echo "setup.sh: $what failed; the whole output is in $log"
    exit 1
  fi
}

# The default native build emits every instruction the build CPU advertises, AMX included, which some
# VMs advertise but trap ("Illegal instruction"): build for a portable AVX2 baseline instead, with AVX-512
# only where the CPU has it (many do not: AMD EPYC before Zen 4, where such a build dies loading a model).
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  CPU_FLAGS="$CPU_FLAGS -DGGML_AVX512=ON"
fi
case "$GPU" in
  cpu) DEFAULT_FLAGS="$CPU_FLAGS" ;;
  # CPU code for an AVX2 baseline (most work runs on the GPU); CUDA code only for the GPUs present,
  # which also keeps the build to minutes instead of compiling every architecture.
  cuda) DEFAULT_FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;;
  *) echo "setup.sh: MCP_TIERED_GPU must be cpu or cuda, got '$GPU'"; exit 2 ;;
esac
FLAGS=${CMAKE_ARGS:-$DEFAULT_FLAGS}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  missing "Python 3.11 or newer (as \$PYTHON, default python3)" "python3 python3-venv" "brew install python@3.12"
fi
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
  || missing "a C/C++ compiler" "build-essential" "xcode-select --install"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV" || missing "Python's venv module" "python3-venv" "brew install python@3.12"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mcp-tiered"
JOBS=$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

# CMake ≥ 3.21 (llama-cpp-python's minimum): the machine's, else the cmake wheel in the venv.
CMAKE_VERSION=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
if [ -z "$CMAKE_VERSION" ] || [ "$(printf '%s\n' 3.21 "$CMAKE_VERSION" | sort -V | head -1)" != 3.21 ]; then
  if [ ! -x "$VENV/bin/cmake" ]; then
    say "installing CMake into $VENV (none ≥ 3.21 on PATH)"
    "${PIP[@]}" install --quiet "cmake>=3.21,<5"
  fi
  PATH="$PWD/$VENV/bin:$PATH"
fi

# llama-cpp-python's source archive, kept: llama.cpp's sources come out of it, and the package is made from it.
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz"
fetch_sdist() {
  if [ -f "$SDIST" ] && ! gzip -t "$SDIST" 2>/dev/null; then
    say "the kept $SDIST is damaged: fetching it again"
    rm -f "$SDIST"
  fi
  if [ ! -f "$SDIST" ]; then
    local fetch
    fetch=$(mktemp -d)
    # --no-binary for it alone: its build requirements (CMake, scikit-build-core) come as wheels, not compiled.
    "${PIP[@]}" download --quiet --no-deps --no-binary llama-cpp-python --dest "$fetch" "llama-cpp-python==$LLAMA_VERSION"
    mkdir -p "$(dirname "$SDIST")"
    mv "$fetch/llama_cpp_python-$LLAMA_VERSION.tar.gz" "$SDIST"
    rm -rf "$fetch"
  fi
}

# The one llama.cpp build: shared libraries (and llama-server when asked for) from one CMake tree.
LLAMA_KEY=$(printf '%s|%s|shared' "$LLAMA_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
LLAMA_HOME="$CACHE/llama.cpp/$LLAMA_KEY"
LIBS="$LLAMA_HOME/build/bin"
NEEDS=()
if [ "$WITH_SERVER" = 1 ]; then NEEDS=(llama-server); fi
read -r ACTION WHY <<< "$("$PYTHON" mcp_tiered/engines/llama_build.py state "$LIBS" ${NEEDS[@]+"${NEEDS[@]}"})"
if [ "$ACTION" != use ]; then
  if [ "$ACTION" = rebuild ]; then
    say "the cached llama.cpp build cannot be used ($WHY): building it anew"
    rm -rf "$LLAMA_HOME/build"
  fi
  if [ ! -f "$LLAMA_HOME/src/CMakeLists.txt" ]; then
    say "fetching llama.cpp's sources (those vendored in llama-cpp-python $LLAMA_VERSION)"
    fetch_sdist
    # Unpacked beside src/ and renamed into place: a setup cut short leaves no half tree behind as src/.
    rm -rf "$LLAMA_HOME/src" "$LLAMA_HOME/src.unpacking"
    mkdir -p "$LLAMA_HOME/src.unpacking"
    tar xzf "$SDIST" -C "$LLAMA_HOME/src.unpacking"
    mv "$LLAMA_HOME/src.unpacking/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp" "$LLAMA_HOME/src"
    rm -rf "$LLAMA_HOME/src.unpacking"
  fi
  mkdir -p "$LLAMA_HOME/build"
  # RPATH $ORIGIN: every library and llama-server finds the others beside itself, wherever it is linked from.
  # GIT_CEILING_DIRECTORIES: the sources have no git history; a repository around the cache is not theirs.
  # shellcheck disable=SC2086  # $FLAGS is a list of -D options
  GIT_CEILING_DIRECTORIES="$LLAMA_HOME" run_logged "$LLAMA_HOME/cmake.log" "configuring llama.cpp" cmake -S "$LLAMA_HOME/src" -B "$LLAMA_HOME/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF $FLAGS
  TARGETS=(llama ggml ${NEEDS[@]+"${NEEDS[@]}"})
  say "compiling llama.cpp (${TARGETS[*]}) with '$FLAGS' on $JOBS cores (minutes; output in $LLAMA_HOME/build.log)"
  run_logged "$LLAMA_HOME/build.log" "compiling llama.cpp" cmake --build "$LLAMA_HOME/build" --target "${TARGETS[@]}" -j "$JOBS"
  "$PYTHON" mcp_tiered/engines/llama_build.py write "$LIBS" "$LLAMA_VERSION" "$LLAMA_HOME/src" "$FLAGS"
  say "llama.cpp built: $LIBS"
else
  say "reusing the llama.cpp build in $LIBS"
fi

# llama-cpp-python without a llama.cpp of its own (LLAMA_BUILD=OFF: nothing compiled), loading the build above.
MARKER="$VENV/.llama-cpp-build"
WANT="$LLAMA_VERSION shared $LIBS"
if [ "$(cat "$MARKER" 2>/dev/null)" != "$WANT" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  WHEELS="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-without-llama.cpp"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    say "packaging llama-cpp-python $LLAMA_VERSION without its own llama.cpp"
    fetch_sdist
    mkdir -p "$WHEELS"
    BUILD=$(mktemp -d)
    # --no-cache-dir: pip's own wheel cache is keyed by the source archive alone, which also makes the package
    # with a llama.cpp inside.
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" run_logged "$CACHE/llama-cpp-python-wheel.log" \
      "packaging llama-cpp-python" "${PIP[@]}" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      --wheel-dir "$BUILD" "$SDIST"
    mv "$BUILD"/llama_cpp_python-*.whl "$WHEELS"/
    rm -rf "$BUILD"
  fi
  "${PIP[@]}" install --quiet --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  PACKAGE_LIBS="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/llama_cpp/lib"
  rm -rf "$PACKAGE_LIBS"
  mkdir -p "$PACKAGE_LIBS"
  for lib in "$LIBS"/lib*; do ln -s "$lib" "$PACKAGE_LIBS/"; done
  LINKED=1
fi
if [ -x "$LIBS/llama-server" ]; then
  ln -sf "$LIBS/llama-server" "$VENV/bin/llama-server"
elif [ -L "$VENV/bin/llama-server" ]; then
  rm -f "$VENV/bin/llama-server"  # another build's: `check` then says how to build this one's
fi

say "installing mcp-tiered and its dependencies"
if [ "$WITH_TEST" = 1 ]; then TARGET=".[test]"; else TARGET="."; fi
"${PIP[@]}" install --quiet --editable "$TARGET"
if [ "${LINKED:-0}" = 1 ]; then  # now that its dependencies are installed too
  "$VENV/bin/python" -c 'import llama_cpp' || { echo "setup.sh: llama-cpp-python cannot load $LIBS"; exit 1; }
  echo "$WANT" > "$MARKER"
fi

if [ "$WITH_TEST" = 1 ]; then
  scripts/install_node_tools.sh
  scripts/install_browser.sh
  scripts/install_postgres.sh
fi

if [ "$WITH_MODELS" = 1 ]; then
  say "fetching the default models (verified by size and sha256)"
  "$VENV/bin/mcp-tiered" --log-level WARNING fetch-models
fi
say "ready: $VENV/bin/mcp-tiered"
