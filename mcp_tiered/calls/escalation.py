"""Why and where a call goes next: the reasons, the judgement of an answer and of a verifier's reading of
it, the failure types that hand a call on, and `next_step`, which decides from where the call stands what
happens next. Pure decisions (no I/O, no logging); cascade.py carries them out and records them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..backends import Completion
from ..backends.base import ScoredAnswer
from .confidence import confidence, is_repetitive, verification
from ..errors import BackendError, BusyError, PromptTooLongError, TieredError
from .tiers import Policy, Tier

Reason = Literal["context", "low_confidence", "empty", "repetitive", "truncated", "rejected", "error", "busy",
                 "requested"]
Escalate = Literal["auto", "never", "always"]

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
