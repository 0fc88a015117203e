"""What the engines that run a GGUF file on this machine share: its check and its plan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..weights import hub
from ..offline import plan
from ..config.schema import ModelFileFields, model_file_problem
from ..config.explain import key_path
from . import Checked, PlanInput, scoring


def check(name: str, tier: ModelFileFields, plan_row: dict, engine_words: Callable[[], str],
          own_problem: Callable[[], str | None] = lambda: None) -> Checked:
    """The tier's model file readable, of the configured sha256 and planned, then the engine's own problem."""
    problem = model_file_problem(name, tier) or sha256_problem(name, tier) or plan_row.get("problem") or own_problem()
    if problem:
        return Checked(True, [f"error  {problem}"])
    size_mb = tier.model.stat().st_size / 1e6
    return Checked(False, [f"ok     generate_{name}: {tier.model} ({size_mb:,.1f} MB GGUF, n_ctx {tier.n_ctx}, "
                           f"max_tokens {tier.max_tokens}, n_gpu_layers {tier.n_gpu_layers}; {engine_words()}; "
                           f"{scoring(tier)})"])


def sha256_problem(name: str, tier: ModelFileFields) -> str | None:
    """Whether the model file has the configured sha256 (hashed once per change of the file)."""
    if tier.sha256 is None or (actual := hub.verify(tier.model, tier.sha256)) is None:
        return None
    return (f"tiers.{name}.sha256: {tier.model} has sha256 {actual}, not {tier.sha256}; the file changed or the key "
            "is wrong" + ("; run `mcp-tiered pull` again" if tier.hf_ref else ""))


def plan_row(name: str, tier: ModelFileFields, given: PlanInput, slots: int, copies: int) -> dict:
    """The tier's shape, need and verdict (plan.py) for `copies` copies of the weights with `slots` contexts
    each, or why it has none. `given.remote`: read the header of an `hf:` model that is not downloaded from
    the hub (a few MB, not the weights)."""
    row: dict[str, Any] = {"tier": name, "engine": tier.engine}
    source = "file"
    try:
        if given.remote and tier.hf_ref is not None and not tier.model.exists():
            shape, source = plan.remote_shape(tier.hf_ref, key_path(["tiers", name, "model"])), "hub header"
        elif problem := model_file_problem(name, tier):
            return {**row, "problem": problem}
        else:
            shape = plan.read_shape(tier.model)
    except hub.PullError as exc:
        return {**row, "problem": str(exc)}
    except (ValueError, OSError) as exc:
        return {**row, "problem": f"tiers.{name}.model: cannot read the GGUF metadata ({exc})"}
    verdict = plan.fit(shape, tier.n_ctx * slots, copies, given.gpus, tier.n_gpu_layers, given.cpu_bandwidth,
                       flash_attention=bool(given.gpus))
    return {**row, "model": str(tier.hf_ref or tier.model), "metadata_from": source,
            "shape": plan.as_dict(shape), "n_ctx": tier.n_ctx,
            "slots": slots, "copies": copies, "context_cells": plan.context_cells(tier.n_ctx * slots),
            "need": {**vars(verdict.need), "gpu": verdict.need.gpu, "ram": verdict.need.ram},
            "fits": verdict.fits, "n_gpu_layers": verdict.gpu_layers, "available_bytes": verdict.available,
            "tokens_per_s": verdict.tokens_per_s, "all_gpu_tokens_per_s": verdict.full_tokens_per_s,
            "verdict": verdict.words}
