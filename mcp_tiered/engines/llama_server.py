"""`engine = "llama-server"`: mcp-tiered runs llama.cpp's own server for the tier (continuous batching)."""

from __future__ import annotations

from collections.abc import Mapping

from ..backends.base import Capabilities
from ..config.schema import LlamaServerTierConfig
from . import Checked, Engine, model_file
from .llama_build import build_of

CAPABILITIES = Capabilities(tools=True)  # through its OpenAI API with --jinja (backends.llama_server)


def _backend(name: str, tier: LlamaServerTierConfig, environ: Mapping[str, str]):  # noqa: ANN202
    from ..backends.llama_server import LlamaServerBackend

    return LlamaServerBackend(name, tier)


def _check(name: str, tier: LlamaServerTierConfig, row: dict) -> Checked:
    from ..backends.llama_server import find_server_binary, server_binary_problem

    def words() -> str:
        binary = find_server_binary(tier)
        return f"llama-server {binary}, {tier.parallel} slots; {build_of(binary)}"

    return model_file.check(name, tier, row, words, lambda: server_binary_problem(name, tier, run=True))


ENGINE = Engine(
    kind="llama-server", config=LlamaServerTierConfig, backend=_backend, capabilities=lambda tier: CAPABILITIES,
    check=_check, plan=lambda name, tier, given: model_file.plan_row(name, tier, given, tier.parallel, 1),
)
