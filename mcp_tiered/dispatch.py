"""The one place a generation call is dispatched: validate the arguments against the tier,
run the tier's backend, measure, log one event, and shape the result.

Escalation, queues, the ledger and caches plug in here as later layers.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import GenerationRequest
from .errors import BackendError, RequestError, TieredError
from .tiers import Tier, TierRegistry
from .validation import explain

log = structlog.get_logger(__name__)

MAX_STOP_SEQUENCES = 4


class GenerateOptions(BaseModel):
    """The optional tool arguments, checked here so that each problem reads as one sentence."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stop: Annotated[
        list[str],
        Field(max_length=MAX_STOP_SEQUENCES,
              json_schema_extra={"expect": f"a list of at most {MAX_STOP_SEQUENCES} strings"}),
    ] | None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the formatted prompt (chat template included).")
    completion_tokens: int = Field(description="Tokens generated.")


class GenerateResult(BaseModel):
    """Structured content of every generate_<tier> result."""

    text: str = Field(description="The answer; also the text content of the result.")
    tier: str = Field(description="The tier that produced the answer.")
    model: str = Field(description="The model file that produced the answer.")
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: the model finished; length: cut off at max_tokens."
    )
    usage: Usage
    latency_ms: float = Field(description="Server-side time for the call, model load and waiting included.")


def input_schema(tier: Tier) -> dict[str, Any]:
    """The JSON schema of generate_<tier>'s arguments, with this tier's limits."""
    cfg = tier.config
    return {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "The user message to answer."},
            "system": {"type": "string", "default": "", "description": "Optional system prompt."},
            "max_tokens": {
                "type": "integer", "minimum": 1, "maximum": cfg.max_tokens,
                "description": f"Upper bound on generated tokens (default and maximum {cfg.max_tokens}).",
            },
            "temperature": {
                "type": "number", "minimum": 0, "maximum": 2,
                "description": f"Sampling temperature; 0 is deterministic (default {cfg.temperature}).",
            },
            "stop": {
                "type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES,
                "description": "Strings that end the answer when generated (not included in it).",
            },
        },
        "required": ["prompt"],
    }


def build_request(tier: Tier, prompt: str, system: str, options: dict[str, Any]) -> GenerationRequest:
    """Validate the arguments for `tier`; raises RequestError with one sentence."""
    try:
        opts = GenerateOptions.model_validate(options)
    except ValidationError as exc:
        raise RequestError(explain(exc, GenerateOptions)[0]) from None
    if not prompt.strip():
        raise RequestError("prompt: is required and must be a non-empty string")
    limit = tier.config.max_tokens
    max_tokens = opts.max_tokens if opts.max_tokens is not None else limit
    if max_tokens > limit:
        raise RequestError(
            f"max_tokens: must be an integer between 1 and {limit} (the limit of tier {tier.name}), got {max_tokens}"
        )
    temperature = opts.temperature if opts.temperature is not None else tier.config.temperature
    return GenerationRequest(prompt, system, max_tokens, temperature, tuple(opts.stop or ()))


class Dispatcher:
    def __init__(self, tiers: TierRegistry):
        self.tiers = tiers

    async def generate(self, tier_name: str, prompt: str, system: str = "", **options: Any) -> GenerateResult:
        tier = self.tiers.get(tier_name)
        started = time.perf_counter()
        event = log.bind(tool=tier.tool_name, tier=tier.name)
        try:
            request = build_request(tier, prompt, system, options)
            completion = await tier.backend.generate(request)
        except TieredError as exc:
            event.warning("tool_call", outcome="error", error=type(exc).__name__, reason=str(exc),
                          latency_ms=_ms_since(started))
            raise
        except Exception as exc:
            event.exception("tool_call", outcome="error", error=type(exc).__name__, latency_ms=_ms_since(started))
            raise BackendError(f"tier {tier.name}: unexpected {type(exc).__name__} in the backend; see the server log") from exc
        latency_ms = _ms_since(started)
        event.info("tool_call", outcome="ok", prompt_tokens=completion.prompt_tokens,
                   completion_tokens=completion.completion_tokens, latency_ms=latency_ms,
                   finish_reason=completion.finish_reason)
        return GenerateResult(
            text=completion.text,
            tier=tier.name,
            model=tier.backend.model_name,
            finish_reason=completion.finish_reason,
            usage=Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
            latency_ms=latency_ms,
        )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
