"""Confidence of a local answer, from the log-probabilities of its generated tokens.

Every statistic maps to [0, 1] (a probability), higher = more likely right:
- `mean`: geometric mean of the token probabilities (exp of the mean log-probability);
- `quantile`: the `confidence_quantile` quantile of the token probabilities (a low quantile looks
  at the least certain tokens; Gupta et al., ICLR 2024, found quantiles beat the mean);
- `min`: the least probable token;
- `first`: the first token (where a short answer is decided).

A verifier's reading of an answer (`verification`) maps the same way: `top_share` is the share of the
answer's tokens that the verifier would have chosen itself; `ratio` the `verify_quantile` quantile of
p(token) / p(the verifier's own choice) over the answer's tokens (1 where it agrees: the acceptance test of
lossy speculative decoding and of speculative cascades, Narasimhan et al. 2024); `mean`, `quantile` and
`min` are as above, over the verifier's probabilities of the answer's tokens.

`is_repetitive` is the other signal a good-looking confidence can hide: an answer stuck in a loop.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Literal

Statistic = Literal["mean", "quantile", "min", "first"]
STATISTICS: tuple[Statistic, ...] = ("mean", "quantile", "min", "first")


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of `values` (q in [0, 1]), as numpy's default."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def confidence(logprobs: Sequence[float], statistic: Statistic = "mean", q: float = 0.1) -> float | None:
    """None when nothing was generated."""
    if not logprobs:
        return None
    match statistic:
        case "mean":
            return math.exp(sum(logprobs) / len(logprobs))
        case "quantile":
            return math.exp(quantile(logprobs, q))
        case "min":
            return math.exp(min(logprobs))
        case "first":
            return math.exp(logprobs[0])
    raise ValueError(f"unknown confidence statistic {statistic!r}")


VerifyStatistic = Literal["top_share", "ratio", "mean", "quantile", "min"]
VERIFY_STATISTICS: tuple[VerifyStatistic, ...] = ("top_share", "ratio", "mean", "quantile", "min")
TOP = 1e-6
"""A token within this log-probability of the most probable one is the verifier's own choice (ties)."""


def verification(logprobs: Sequence[float], top_logprobs: Sequence[float], statistic: VerifyStatistic = "top_share",
                 q: float = 0.1) -> float | None:
    """None when the answer has no tokens."""
    if not logprobs:
        return None
    if statistic == "top_share":
        return sum(lp >= top - TOP for lp, top in zip(logprobs, top_logprobs, strict=True)) / len(logprobs)
    if statistic == "ratio":
        return math.exp(quantile([lp - top for lp, top in zip(logprobs, top_logprobs, strict=True)], q))
    return confidence(logprobs, statistic, q)


# A small model at temperature 0 can fall into a loop ("la Femme, la Femme, ...") with high token
# probabilities, which the confidence signal misses. The last KB of such text compresses to under 0.1
# of its size (measured: 0.07), while prose, code, tables and counting stay above 0.4.
REPETITIVE_WINDOW_BYTES = 1024
REPETITIVE_MIN_BYTES = 400
REPETITIVE_RATIO = 0.15


def is_repetitive(text: str) -> bool:
    """Whether the end of `text` is a loop."""
    data = text.encode()[-REPETITIVE_WINDOW_BYTES:]
    return len(data) >= REPETITIVE_MIN_BYTES and len(zlib.compress(data)) < REPETITIVE_RATIO * len(data)
