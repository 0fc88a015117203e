"""Why a call escalates: the reasons, the judgement of an answer, and the failure types that hand a call on.
Pure decisions (no I/O, no logging); the dispatcher walks the chain and records what they decide."""

from __future__ import annotations

from typing import Literal

from .backends import Completion
from .confidence import confidence, is_repetitive
from .errors import BackendError, BusyError, PromptTooLongError, TieredError
from .tiers import Tier

Reason = Literal["context", "low_confidence", "empty", "repetitive", "truncated", "error", "busy", "requested"]

ERROR_REASONS: dict[type[TieredError], Reason] = {
    PromptTooLongError: "context",
    BusyError: "busy",
    BackendError: "error",
}
"""A tier's failure → the reason its call goes on to the next tier; other errors end the call."""
HANDED_ON = tuple(ERROR_REASONS)


def reason_for_error(exc: TieredError) -> Reason:
    return next(reason for kind, reason in ERROR_REASONS.items() if isinstance(exc, kind))


def judge(tier: Tier, completion: Completion) -> tuple[Reason | None, float | None]:
    """Is a local answer good enough? The reason to escalate (or None) and the confidence."""
    policy = tier.policy
    value = (confidence(completion.token_logprobs, policy.statistic, policy.quantile)
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
