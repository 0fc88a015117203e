"""`engine = "anthropic"`: Claude through the official anthropic SDK, billed per token at the tier's prices."""

from __future__ import annotations

from collections.abc import Mapping

from ..backends.base import Capabilities
from ..config.schema import AnthropicTierConfig
from . import Checked, Engine

CAPABILITIES = Capabilities(prompt_leaves_machine=True, billing="tokens", token_logprobs=False, tools=True)


def _backend(name: str, tier: AnthropicTierConfig, environ: Mapping[str, str]):  # noqa: ANN202
    from ..backends.anthropic import AnthropicBackend

    return AnthropicBackend(name, tier, environ[tier.api_key_env])


def _unavailable(name: str, tier: AnthropicTierConfig, environ: Mapping[str, str]) -> str | None:
    if environ.get(tier.api_key_env):
        return None
    return f"the {name} tier is disabled because ${tier.api_key_env} is not set"


def _check(name: str, tier: AnthropicTierConfig, row: dict) -> Checked:
    import os

    state = (f"key from ${tier.api_key_env}" if os.environ.get(tier.api_key_env)
             else f"disabled until ${tier.api_key_env} is set")
    return Checked(False, [f"ok     generate_{name}: {tier.model} at {tier.input_price_per_mtok:g} / "
                           f"{tier.output_price_per_mtok:g} per million input / output tokens ({state})"])


def _problems(name: str, tier: AnthropicTierConfig) -> list[str]:
    if "temperature" not in tier.model_fields_set:
        return []
    return [f"{tier.key(name, 'temperature')}: the Messages API takes no temperature (the model samples as it "
            "does); remove this key"]


ENGINE = Engine(
    kind="anthropic", config=AnthropicTierConfig, backend=_backend, capabilities=lambda tier: CAPABILITIES,
    check=_check, plan_note="served by the Anthropic API: nothing to plan on this machine", unavailable=_unavailable,
    problems=_problems, no_logprobs_because=lambda tier: "the Anthropic API returns none",
)
