"""What an engine reports about a completion is checked before anything counts it: token counts finite,
whole, non-negative and within what the call allows, log-probabilities finite and at most 0. A remote
engine is another party, so a count of 1e30, -5 or Infinity, or a NaN log-probability, must not reach the
ledger, the metrics, the cloud budget or `min_confidence` as it came. Pure: the caller logs the problems."""

from __future__ import annotations

import math
from dataclasses import replace

from .base import Completion, GenerationRequest

TEMPLATE_TOKENS = 1024
"""Tokens a chat template may add around the caller's text (role markers, a default system prompt)."""
LOGPROB_FLOOR = -1000.0
"""What an invalid log-probability becomes: a probability of 0, so the answer counts as unsure."""
LOGPROB_SLACK = 1e-3
"""Rounding above 0 that an engine's log-softmax may show; beyond it a log-probability is invalid."""


def prompt_bound(request: GenerationRequest) -> int:
    """The most prompt tokens the request can be: a tokenizer makes at most one token per byte of text."""
    return len(request.text().encode()) + len(request.system.encode()) + TEMPLATE_TOKENS


def _count(value: object, bound: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Compared as they are: an int of 400 digits (JSON allows it) is too large for a float.
    return 0 <= value <= bound and (isinstance(value, int) or value == int(value))


def checked(completion: Completion, request: GenerationRequest) -> tuple[Completion, list[str]]:
    """`completion` with every figure made valid, and a phrase for each one that was not. An invalid count
    becomes its bound (never fewer tokens billed than the call could have used); an invalid log-probability
    becomes `LOGPROB_FLOOR`."""
    problems: list[str] = []
    counts = {}
    for name, bound in (("prompt_tokens", prompt_bound(request)), ("completion_tokens", request.max_tokens),
                        ("cached_tokens", prompt_bound(request))):
        value = getattr(completion, name)
        if _count(value, bound):
            counts[name] = int(value)
        else:
            problems.append(f"{name} {value!r} is not a token count between 0 and {bound}")
            counts[name] = bound if name != "cached_tokens" else 0
    bad = [lp for lp in completion.token_logprobs if not _valid_logprob(lp)]
    if bad:
        problems.append(f"{len(bad)} of {len(completion.token_logprobs)} token log-probabilities are not numbers "
                        f"≤ 0 (such as {bad[0]!r})")
    logprobs = tuple(_logprob(lp) for lp in completion.token_logprobs)
    if not problems and logprobs == completion.token_logprobs:
        return completion, problems
    return replace(completion, token_logprobs=logprobs, **counts), problems


def _valid_logprob(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and value <= LOGPROB_SLACK
            and (isinstance(value, int) or not math.isnan(value)))


def _logprob(value: float) -> float:
    if not _valid_logprob(value):
        return LOGPROB_FLOOR
    return float(min(0.0, max(LOGPROB_FLOOR, value)))
