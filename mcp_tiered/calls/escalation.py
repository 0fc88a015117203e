"""Why and where a call goes next: the reasons, the judgement of an answer and of a verifier's reading of
it, the failure types that hand a call on, and `next_step`, which decides from where the call stands what
happens next. Pure decisions (no I/O, no logging); cascade.py carries them out and records them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from ..backends import Completion, GenerationRequest
from ..backends.base import ScoredAnswer
from .confidence import confidence, is_repetitive, verification
from ..errors import BackendError, BusyError, PromptTooLongError, TieredError, ToolsUnsupportedError
from .tiers import Policy, Tier

Reason = Literal["context", "low_confidence", "empty", "repetitive", "truncated", "rejected", "error", "busy",
                 "requested", "tools", "tool_call"]
Escalate = Literal["auto", "never", "always"]

ERROR_REASONS: dict[type[TieredError], Reason] = {
    PromptTooLongError: "context",
    ToolsUnsupportedError: "tools",
    BusyError: "busy",
    BackendError: "error",
}
"""A tier's failure → the reason its call goes on to the next tier; other errors end the call."""
HANDED_ON = tuple(ERROR_REASONS)


def reason_for_error(exc: TieredError) -> Reason:
    return next(reason for kind, reason in ERROR_REASONS.items() if isinstance(exc, kind))


def judge(tier: Tier, completion: Completion, request: GenerationRequest) -> tuple[Reason | None, float | None]:
    """Is a local answer good enough? The reason to escalate (or None) and the confidence. An answer that calls
    tools is judged by its calls alone (`tool_call_problem`), not by token confidence."""
    if completion.tool_calls or completion.finish_reason == "tool_calls":
        return ("tool_call" if tool_call_problem(completion, request) else None), None
    if request.dialogue is not None and request.dialogue.tool_choice == "required":
        return "tool_call", None
    policy = tier.policy
    value = (confidence(completion.token_logprobs, policy.confidence, policy.confidence_quantile)
             if tier.capabilities.token_logprobs else None)
    if not completion.text.strip():
        return "empty", value
    if policy.escalate_on_repetition and is_repetitive(completion.text):
        return "repetitive", value
    if completion.finish_reason == "length" and policy.escalate_on_truncated:
        return "truncated", value
    if value is not None and value < policy.min_confidence:
        return "low_confidence", value
    return None, value


def tool_call_problem(completion: Completion, request: GenerationRequest) -> str | None:
    """Why the answer's tool calls cannot be carried out as they stand, or None: each names one of the request's
    tools and its arguments are a JSON object with every property that tool's schema requires."""
    dialogue = request.dialogue
    tools = {tool.name: tool for tool in dialogue.tools} if dialogue is not None else {}
    if not completion.tool_calls:
        return "it ends in a tool call but names none"
    if dialogue is not None and dialogue.tool_choice == "none":
        return "it calls a tool although tool_choice is none"
    for call in completion.tool_calls:
        if call.name not in tools:
            return f"it calls {call.name!r}, which is not one of the request's tools"
        try:
            arguments = json.loads(call.arguments)
        except (ValueError, RecursionError):
            return f"the arguments of its call of {call.name} are not JSON"
        if not isinstance(arguments, dict):
            return f"the arguments of its call of {call.name} are not a JSON object"
        required = json.loads(tools[call.name].parameters).get("required")  # a list of names (chat.tools_of)
        if missing := [name for name in required or () if isinstance(name, str) and name not in arguments]:
            return f"its call of {call.name} lacks the required argument {missing[0]}"
    return None


def verifier_for(policy: Policy, value: float | None) -> str | None:
    """The tier that reads an answer the policy would keep, or None when it is kept as it is: no verifier,
    or the answer is at least `verify_below` confident."""
    if policy.verify_with is None:
        return None
    if policy.verify_below is not None and value is not None and value >= policy.verify_below:
        return None
    return policy.verify_with


def judge_verification(policy: Policy, scored: ScoredAnswer) -> tuple[Reason | None, float]:
    """The verifier's verdict: "rejected" when its statistic is under `min_verification`; and the statistic."""
    value = verification(scored.token_logprobs, scored.top_logprobs, policy.verify_statistic, policy.verify_quantile)
    value = 0.0 if value is None else value
    return ("rejected" if value < policy.min_verification else None), value


@dataclass(frozen=True)
class Standing:
    """Where a call stands after a step: the decision's whole input."""

    chain: tuple[str, ...]
    at: int
    """The position in `chain` of the tier that just answered or failed (or that the call starts at)."""
    reason: Reason | None
    """Why the call should leave chain[at]; None: the answer there is good enough so far."""
    escalate: Escalate
    verifier: str | None = None
    """The tier the policy wants to read chain[at]'s answer before it is kept (not yet done)."""
    next_blocked: str | None = None
    """Why chain[at + 1] may not take the call (local_only, not available), if it may not."""
    seconds_left: float | None = None


@dataclass(frozen=True)
class Stop:
    """End the walk: the answer in hand is the result (or the failure, with no answer)."""

    note: str | None = None
    """Why an escalation the policy wanted was not made."""


@dataclass(frozen=True)
class Verify:
    verifier: str


@dataclass(frozen=True)
class HandOn:
    to: str
    reason: Reason


Step = Stop | Verify | HandOn


def next_step(standing: Standing) -> Step:
    s = standing
    here = s.chain[s.at]
    if s.reason is None:
        if s.verifier is None or s.escalate == "never":
            return Stop()
        if s.seconds_left == 0:
            return Stop(f"verification of the answer of {here} by {s.verifier} was not made: "
                        "the call's deadline had passed")
        return Verify(s.verifier)
    if s.escalate == "never" or s.at + 1 >= len(s.chain):
        return Stop()
    target = s.chain[s.at + 1]
    if s.next_blocked is not None:
        return Stop(f"escalation from {here} to {target} ({s.reason}) was not made: {s.next_blocked}")
    if s.seconds_left == 0:  # the next tier would only return an empty "deadline" answer
        return Stop(f"escalation from {here} to {target} ({s.reason}) was not made: the call's deadline had passed")
    return HandOn(target, s.reason)
