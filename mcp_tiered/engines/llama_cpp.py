"""`engine = "llama-cpp"` (the default): the model runs in this process through llama-cpp-python."""

from __future__ import annotations

from collections.abc import Mapping

from ..backends.base import Capabilities
from ..config.schema import TierConfig
from ..config.explain import key_path
from . import Engine, model_file
from .llama_build import build_of, in_process_library

CAPABILITIES = Capabilities(scores_answers=True)


def _backend(name: str, tier: TierConfig, environ: Mapping[str, str]):  # noqa: ANN202
    from ..backends.llama import LlamaBackend

    return LlamaBackend(name, tier)


def _problems(name: str, tier: TierConfig) -> list[str]:
    from ..compat.llama_cpp import chat_formats

    if tier.chat_format is None or tier.chat_format in (formats := chat_formats()):
        return []
    return [f'{key_path(["tiers", name, "chat_format"])}: unknown chat format "{tier.chat_format}"; valid formats '
            f'are {", ".join(formats)}']


ENGINE = Engine(
    kind="llama-cpp", config=TierConfig, backend=_backend, capabilities=lambda tier: CAPABILITIES,
    check=lambda name, tier, row: model_file.check(
        name, tier, row, lambda: f"in-process llama.cpp; {build_of(in_process_library())}"),
    plan=lambda name, tier, given: model_file.plan_row(name, tier, given, 1, tier.instances),
    problems=_problems,
)
