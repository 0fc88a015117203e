"""scripts/gpu/variants.py, the GPU crash hunt, tried on the CPU: every variant runs and says how it ended,
and a failing one is run again with the CUDA switches and under a debugger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

VARIANTS = REPO / "scripts" / "gpu" / "variants.py"


def variants(model: Path, *args: str, log: Path) -> int:
    return subprocess.run([sys.executable, str(VARIANTS), str(model), "--n-gpu-layers", "0", "--log", str(log),
                           "--timeout", "60", *args], capture_output=True, text=True, timeout=600).returncode


@pytest.mark.model
def test_every_variant_loads_and_generates_on_the_cpu(smollm2: Path, tmp_path: Path) -> None:
    assert variants(smollm2, log=tmp_path / "log.txt") == 0
    text = (tmp_path / "log.txt").read_text()
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("variant ")] == [
        f"variant {n} ({what})" for n, what in enumerate(
            ["the machine", "plain Llama in a thread", "plain, verbose=False",
             "the server's options, logits read per token", "LlamaBackend.generate under anyio",
             "the server's options, the stdio client's environment"])]
    assert text.count(": exit 0") == 6 and text.count("tokens 64") == 5 and text.endswith("no variant failed\n")


def test_a_failing_variant_is_run_again_with_each_switch(tmp_path: Path) -> None:
    assert variants(tmp_path / "missing.gguf", "--only", "1", log=tmp_path / "log.txt") == 1
    heads = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("variant ")]
    assert heads[0] == "variant 1 (plain Llama in a thread): exit 1"
    assert heads[1:4] == ["variant 6 (plain Llama in a thread, GGML_CUDA_DISABLE_GRAPHS=1): exit 1",
                          "variant 6 (plain Llama in a thread, GGML_CUDA_NO_PINNED=1): exit 1",
                          "variant 6 (plain Llama in a thread, n_gpu_layers=0): exit 1"]
    assert heads[4].startswith("variant 7")
