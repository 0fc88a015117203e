#!/usr/bin/env python
"""`mcp-tiered plan`'s figures against the buffers llama.cpp reports when it loads a model (CPU here: every
layer in RAM, no flash attention), for the two default models and a synthetic 1.2B model (F16 weights,
SmolLM2's tokenizer; made by scripts/gpu/synth_gguf.py): weights, KV cache, compute buffer and their sum.

    .venv/bin/python scripts/plan_check.py [--n-ctx 2048 8192]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp_tiered.offline import plan
from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import QWEN_CODER_1_5B, SMOLLM2

REPO = Path(__file__).resolve().parent.parent
LOAD = ("import sys; from llama_cpp import Llama; "
        "Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=512, n_gpu_layers=0, verbose=True)")
MIB = 1 << 20


def reported(model: Path, n_ctx: int) -> dict[str, float]:
    """Bytes of each buffer llama.cpp allocates for `model` (from its load log)."""
    log = subprocess.run([sys.executable, "-c", LOAD, str(model), str(n_ctx)], capture_output=True, text=True,
                         check=True).stderr

    def mib(pattern: str) -> float:
        return sum(float(x) for x in re.findall(pattern, log)) * MIB

    return {"weights": mib(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB"),
            "kv": mib(r"llama_kv_cache: size =\s+([\d.]+) MiB"),
            "compute": mib(r"CPU compute buffer size =\s+([\d.]+) MiB")}


def planned(model: Path, n_ctx: int) -> dict[str, float]:
    need = plan.need(plan.read_shape(model), n_ctx, 0, flash_attention=False)
    return {"weights": need.weights_ram, "kv": need.kv_ram, "compute": need.compute_ram}


def compare(model: Path, n_ctx: int) -> dict[str, tuple[float, float]]:
    """Each figure as (planned, reported), with their sum as "total"."""
    mine, theirs = planned(model, n_ctx), reported(model, n_ctx)
    rows = {key: (mine[key], theirs[key]) for key in mine}
    rows["total"] = (sum(mine.values()), sum(theirs.values()))
    return rows


def synthetic(folder: Path) -> Path:
    out = folder / "synthetic-1.2b-f16.gguf"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "synth_gguf.py"),
                    str(default_models_dir() / SMOLLM2.filename), str(out)], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[2048, 8192])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        models = [default_models_dir() / SMOLLM2.filename, default_models_dir() / QWEN_CODER_1_5B.filename,
                  synthetic(Path(folder))]
        print(f"{'model':<40} {'n_ctx':>6} " + " ".join(f"{k + ' MiB plan/llama.cpp (error)':>36}"
                                                      for k in ("weights", "kv", "compute", "total")))
        for model in models:
            for n_ctx in args.n_ctx:
                rows = compare(model, n_ctx)
                cells = [f"{p / MIB:>9.1f}/{r / MIB:>9.1f} ({(p - r) / r:+6.1%})" for p, r in rows.values()]
                print(f"{model.name[:40]:<40} {n_ctx:>6} " + " ".join(f"{c:>36}" for c in cells))


if __name__ == "__main__":
    main()
