"""The structured content of a generation tool's result (its output schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from ..backends.base import ToolCall
from .escalation import Reason


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the formatted prompt (chat template included).")
    completion_tokens: int = Field(description="Tokens generated.")


class Escalation(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="The tier that handed the call on.")
    to: str = Field(description="The tier it was handed to.")
    reason: Reason = Field(description="context: did not fit; low_confidence / empty / repetitive / truncated: "
                           "the answer was not good enough; rejected: the verifying tier read the answer and found "
                           "it unlikely; error: the tier failed; busy: no instance was free in time; "
                           "requested: escalate=always; tools: the tier's engine cannot use the request's tools; tool_call: the "
                           "answer's tool call names no tool of the request or lacks required arguments.")
    confidence: float | None = Field(description="The handing tier's confidence in its answer, if it answered.")


class Verification(BaseModel):
    tier: str = Field(description="The tier whose answer was read.")
    by: str = Field(description="The tier that read it (its verify_with).")
    statistic: str = Field(description="top_share: share of the answer's tokens the verifier would have chosen "
                           "itself; mean / quantile / min: of the verifier's probabilities of those tokens.")
    value: float = Field(description="The statistic, 0-1; under the tier's min_verification the answer is rejected.")
    kept: bool = Field(description="true: the answer was kept; false: rejected (and handed on, if it could be).")
    answer_tokens: int = Field(description="Answer tokens the verifier read.")
    evaluated_tokens: int = Field(description="Tokens the verifier evaluated (the prompt less what it had cached).")
    ms: float = Field(description="Milliseconds the verification took.")


class GenerateResult(BaseModel):
    """Structured content of every generation tool's result."""

    text: str = Field(description="The answer; also the text content of the result.")
    tier: str = Field(description="The tier that was called (for `generate`, the tier it chose).")
    served_by: str = Field(description="The tier whose answer this is (a later tier after escalation, or cloud).")
    model: str = Field(description="The model that produced the answer.")
    finish_reason: Literal["stop", "length", "deadline", "tool_calls"] = Field(
        description="stop: the model finished; length: cut off at max_tokens; deadline: cut off at deadline_s "
        "(the text is what was generated until then); tool_calls: the answer calls tools (OpenAI face only)."
    )
    usage: Usage
    latency_ms: float = Field(description="Server-side time for the call, model load, waiting and escalation included.")
    confidence: float | None = Field(description="Confidence (0-1) of the local tier that answered; null for cloud.")
    escalations: list[Escalation] = Field(description="Each hand-over, in order, with its reason.")
    verifications: list[Verification] = Field(
        default_factory=list, description="Each reading of an answer by a verifying tier (verify_with), in order.")
    escalation_note: str | None = Field(
        description="Why an escalation that the policy wanted did not happen (privacy, budget, no API key, "
        "a failing tier), or null."
    )
    routing: str | None = Field(None, description="`generate` only: why it started at `tier`.")
    cache_hit: bool = Field(False, description="true: answered from the response cache, no model was run.")
    tool_calls: SkipJsonSchema[list[ToolCall]] = Field(default_factory=list, exclude=True)
    """The answer's calls of the request's tools: the OpenAI face's `tool_calls` (MCP tools take no tools)."""
