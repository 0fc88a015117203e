#!/usr/bin/env python
"""`mcp-tiered plan` for models.example.toml's local tiers on each of the seed's cards, without their
weights: the 13B tier (CodeLlama 13B, n_ctx 8192) and the 70B tier (llama-server, 4 slots of 16384), and
the 34B model its llama-server boxes run (8 slots of 8192), as sparse GGUFs with the published shapes at
Q4_K_M-like sizes (scripts/synth_shape.py).

    .venv/bin/python scripts/plan_example.py [--gpu rtx4090 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from synth_shape import write  # noqa: E402

TIERS = {
    "small": ("llama-13b", 'engine = "llama-cpp"\nn_ctx = 8192\n'),
    "medium": ("codellama-34b", 'engine = "llama-server"\nparallel = 8\nn_ctx = 8192\n'),
    "large": ("llama-70b", 'engine = "llama-server"\nparallel = 4\nn_ctx = 16384\n'),
}
CARDS = [["rtx4090"], ["a6000", "a6000"], ["a100-80"], ["h100"], ["h200"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="append", help="plan for these GPUs only (default: each seed card)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "models.toml"
        text = ""
        for tier, (shape, keys) in TIERS.items():
            write(shape, Path(folder) / f"{shape}.gguf")
            text += f'[tiers.{tier}]\nmodel = "{shape}.gguf"\ndescription = "{shape}"\nmax_tokens = 1024\n{keys}\n'
        config.write_text(text)
        for cards in [args.gpu] if args.gpu else CARDS:
            command = [str(Path(sys.executable).with_name("mcp-tiered")), "plan", "--config", str(config)]
            subprocess.run(command + [f"--gpu={card}" for card in cards], check=True)
            print()


if __name__ == "__main__":
    main()
