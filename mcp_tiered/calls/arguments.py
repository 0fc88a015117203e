"""The arguments of every generation tool (`generate_<tier>` and `generate`), declared once: the model
validates a call's arguments (one sentence per problem) and its JSON schema, with the bounds of the tier
or tiers the tool serves filled in, is the tool's input schema."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..backends import GenerationRequest
from ..backends.base import Dialogue
from .cascade import Call
from ..errors import RequestError
from .tiers import Tier
from ..config.explain import explain

MAX_STOP_SEQUENCES = 4


class GenerateArguments(BaseModel):
    """Strict: a client that sends "10" or true for a number has a bug worth hearing about, not a silent
    10 or 1. `{placeholders}` in descriptions are filled per tool (`Bounds`)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(description="The user message to answer.")
    system: str = Field("", description="Optional system prompt.")
    max_tokens: Annotated[int, Field(ge=1, description=(
        "Upper bound on generated tokens (default and maximum {max_tokens}).")), ] | None = None
    temperature: Annotated[float, Field(ge=0, le=2, description=(
        "Sampling temperature; 0 is deterministic (default {temperature})."))] | None = None
    stop: Annotated[list[str], Field(
        max_length=MAX_STOP_SEQUENCES, description="Strings that end the answer when generated (not included in it).",
        json_schema_extra={"expect": f"a list of at most {MAX_STOP_SEQUENCES} strings"})] | None = None
    escalate: Annotated[Literal["auto", "never", "always"], Field(description=(
        "auto: hand the call to the next tier when the answer is not good enough, does not fit or fails; "
        "never: answer here or fail; always: let the next tier answer."), json_schema_extra={"default": "auto"})
    ] | None = None
    local_only: Annotated[bool, Field(description="true: the prompt never leaves this machine (no cloud escalation).",
                                      json_schema_extra={"default": False})] | None = None
    cache: Annotated[bool, Field(description=(
        "false: do not answer from (or store in) the response cache; it only ever holds temperature-0 answers."),
        json_schema_extra={"default": True})] | None = None
    deadline_s: Annotated[float, Field(gt=0, description=(
        'Seconds after which generation stops and the partial answer is returned (finish_reason "deadline"); '
        "default {deadline_s:g}."))] | None = None


@dataclass(frozen=True)
class Bounds:
    """What a tool's schema states: its largest max_tokens and its defaults."""

    max_tokens: int
    temperature: float | str
    deadline_s: float


def _schema_template() -> dict[str, Any]:
    schema = GenerateArguments.model_json_schema()
    properties = {}
    for name, prop in schema["properties"].items():
        prop.pop("title", None)
        prop.pop("expect", None)  # validation.explain's wording, not JSON Schema
        # `None` means "not sent": the schema clients see states the type alone.
        branches = [b for b in prop.pop("anyOf", [prop]) if b.get("type") != "null"]
        if prop.get("default") is None:
            prop.pop("default", None)
        properties[name] = {**branches[0], **prop}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


_TEMPLATE = _schema_template()


def input_schema(bounds: Bounds) -> dict[str, Any]:
    schema = copy.deepcopy(_TEMPLATE)
    for prop in schema["properties"].values():
        if "description" in prop:
            prop["description"] = prop["description"].format(**vars(bounds))
    schema["properties"]["max_tokens"]["maximum"] = bounds.max_tokens
    return schema


def tier_bounds(tier: Tier, default_deadline_s: float) -> Bounds:
    return Bounds(tier.max_tokens, tier.temperature, default_deadline_s)


def parse_arguments(arguments: dict[str, Any]) -> GenerateArguments:
    """Raises RequestError with one sentence."""
    try:
        args = GenerateArguments.model_validate(arguments)
    except ValidationError as exc:
        raise RequestError(explain(exc, GenerateArguments)[0]) from None
    if not args.prompt.strip():
        raise RequestError("prompt: is required and must be a non-empty string")
    return args


def build_call(tier: Tier, args: GenerateArguments, dialogue: Dialogue | None = None) -> Call:
    """The call on `tier`, within its limits; raises RequestError with one sentence. `dialogue`: the whole
    conversation and its tools (the OpenAI face), whose last user turn is `args.prompt`."""
    limit = tier.max_tokens
    max_tokens = args.max_tokens if args.max_tokens is not None else limit
    if max_tokens > limit:
        raise RequestError(
            f"max_tokens: must be an integer between 1 and {limit} (the limit of tier {tier.name}), got {max_tokens}"
        )
    local_only = bool(args.local_only) or tier.policy.local_only
    if local_only and tier.capabilities.prompt_leaves_machine:
        raise RequestError(f"local_only: {tier.tool_name} sends the prompt to the cloud; call a local tier instead")
    temperature = args.temperature if args.temperature is not None else tier.temperature
    request = GenerationRequest(args.prompt, args.system, max_tokens, temperature, tuple(args.stop or ()),
                                dialogue=dialogue)
    # Answers that call tools are not cached: the same request comes again with its tools' answers.
    return Call(request, args.escalate or "auto", local_only, args.deadline_s,
                args.cache is not False and request.temperature == 0 and not request.needs_tools)
