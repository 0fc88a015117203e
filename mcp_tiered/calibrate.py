"""`mcp-tiered calibrate`: how well does each confidence statistic tell right answers from wrong ones,
and which threshold gives the escalation rate, accuracy or cascade share you want.

Thresholds are chosen on one half of the dataset (even lines) and reported on the other (odd
lines), so the reported numbers are not tuned to the items they are reported on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .backends import Backend, GenerationRequest
from .confidence import STATISTICS, confidence
from .errors import ConfigError

QUANTILES = (0.05, 0.1, 0.25)


@dataclass(frozen=True)
class Item:
    prompt: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    text: str
    correct: bool
    logprobs: tuple[float, ...]
    finish_reason: str


def is_correct(text: str, answers: Sequence[str]) -> bool:
    """An answer appears in the text as a whole word or number (case-insensitive)."""
    return any(re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", text, re.IGNORECASE) for a in answers)


def load_dataset(path: Path) -> list[Item]:
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the dataset ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, answers = row["prompt"], row["answers"]
            if not isinstance(prompt, str) or not isinstance(answers, list) or not answers:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{path}:{number}: each line must be a JSON object with a string 'prompt' and a non-empty list 'answers'"
            ) from None
        items.append(Item(prompt, tuple(str(a) for a in answers)))
    if not items:
        raise ConfigError(f"{path}: the dataset has no items")
    return items


async def run_tier(backend: Backend, items: Sequence[Item], max_tokens: int,
                   on_item: Callable[[int], None] = lambda _: None) -> list[Outcome]:
    outcomes = []
    for index, item in enumerate(items):
        completion = await backend.generate(GenerationRequest(item.prompt, "", max_tokens, 0.0))
        outcomes.append(Outcome(completion.text, is_correct(completion.text, item.answers),
                                completion.token_logprobs, completion.finish_reason))
        on_item(index)
    return outcomes


def save_outcomes(path: Path, outcomes: Sequence[Outcome]) -> None:
    path.write_text("".join(json.dumps(asdict(o)) + "\n" for o in outcomes), encoding="utf-8")


def load_outcomes(path: Path) -> list[Outcome]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Outcome(r["text"], r["correct"], tuple(r["logprobs"]), r["finish_reason"]) for r in rows]


def statistic_names() -> list[str]:
    return [s for s in STATISTICS if s != "quantile"] + [f"quantile:{q}" for q in QUANTILES]


def score(outcome: Outcome, name: str) -> float:
    statistic, _, q = name.partition(":")
    value = confidence(outcome.logprobs, statistic, float(q) if q else 0.1)  # type: ignore[arg-type]
    return 0.0 if value is None else value


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability that a right answer scores above a wrong one (ties count half)."""
    right = [s for s, ok in zip(scores, labels, strict=True) if ok]
    wrong = [s for s, ok in zip(scores, labels, strict=True) if not ok]
    if not right or not wrong:
        return float("nan")
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def threshold_for_escalation(scores: Sequence[float], rate: float) -> float:
    """The threshold below which `rate` of the calls fall (and would escalate)."""
    ordered = sorted(scores)
    index = min(int(round(rate * len(ordered))), len(ordered) - 1)
    return ordered[index] if rate > 0 else 0.0


def threshold_for_accuracy(scores: Sequence[float], labels: Sequence[bool], target: float) -> float | None:
    """The lowest threshold (most calls kept) whose kept calls are at least `target` accurate."""
    for t in sorted(set(scores)):
        kept = [ok for s, ok in zip(scores, labels, strict=True) if s >= t]
        if kept and sum(kept) / len(kept) >= target:
            return t
    return None


@dataclass(frozen=True)
class CascadePoint:
    threshold: float
    share_kept: float
    accuracy: float


def cascade_curve(scores: Sequence[float], first_ok: Sequence[bool], last_ok: Sequence[bool]) -> list[CascadePoint]:
    """Keep a call on the first tier when its score ≥ threshold, else take the last tier's answer."""
    n = len(scores)
    points = []
    for t in [*sorted(set(scores)), float("inf")]:
        kept = [s >= t for s in scores]
        correct = sum(f if k else last for k, f, last in zip(kept, first_ok, last_ok, strict=True))
        points.append(CascadePoint(t, sum(kept) / n, correct / n))
    return points


def best_threshold(curve: Sequence[CascadePoint], floor: float) -> CascadePoint | None:
    """The point keeping the most calls on the first tier with accuracy ≥ floor."""
    feasible = [p for p in curve if p.accuracy >= floor - 1e-12]
    return max(feasible, key=lambda p: (p.share_kept, p.accuracy)) if feasible else None


def apply_threshold(t: float, scores: Sequence[float], first_ok: Sequence[bool], last_ok: Sequence[bool]) -> CascadePoint:
    kept = [s >= t for s in scores]
    correct = sum(f if k else last for k, f, last in zip(kept, first_ok, last_ok, strict=True))
    return CascadePoint(t, sum(kept) / len(scores), correct / len(scores))


def halves(n: int) -> tuple[list[int], list[int]]:
    """Tuning half (even positions) and reporting half (odd positions)."""
    return list(range(0, n, 2)), list(range(1, n, 2))
