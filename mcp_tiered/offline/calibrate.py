"""`mcp-tiered calibrate`: how well does each confidence statistic tell right answers from wrong ones,
and which threshold gives the escalation rate, accuracy or cascade share you want.

Thresholds are chosen on one half of the dataset (even lines) and reported on the other (odd
lines), so the reported numbers are not tuned to the items they are reported on.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..backends import Backend, GenerationRequest
from ..calls.confidence import STATISTICS, confidence
from ..errors import ConfigError

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
    seconds: float = 0.0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Reading:
    """A verifier's reading of one first-tier answer (Backend.score)."""

    logprobs: tuple[float, ...]
    top_logprobs: tuple[float, ...]
    seconds: float


def is_correct(text: str, answers: Sequence[str]) -> bool:
    """An answer appears in the text as a whole word or number (case-insensitive): "22" is not in
    "220" nor in "2.22", but is in "The answer is 22."."""
    return any(re.search(rf"(?<!\w)(?<!\d\.){re.escape(a)}(?!\w)(?!\.\d)", text, re.IGNORECASE) for a in answers)


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
    if len(items) < 2:
        raise ConfigError(f"{path}: the dataset has 1 item; calibration needs at least 2 (thresholds are chosen on "
                          "half of them and reported on the other half)")
    return items


async def run_tier(backend: Backend, items: Sequence[Item], max_tokens: int,
                   on_item: Callable[[int], None] = lambda _: None) -> list[Outcome]:
    outcomes = []
    for index, item in enumerate(items):
        started = time.perf_counter()
        completion = await backend.generate(GenerationRequest(item.prompt, "", max_tokens, 0.0))
        outcomes.append(Outcome(completion.text, is_correct(completion.text, item.answers),
                                completion.token_logprobs, completion.finish_reason,
                                time.perf_counter() - started, completion.completion_tokens))
        on_item(index)
    return outcomes


async def run_verifier(verifier: Backend, items: Sequence[Item], answers: Sequence[Outcome], max_tokens: int,
                       on_item: Callable[[int], None] = lambda _: None) -> list[Reading]:
    """The verifier's reading of each first-tier answer, as the server's verification makes it."""
    readings = []
    for index, (item, answer) in enumerate(zip(items, answers, strict=True)):
        started = time.perf_counter()
        scored = await verifier.score(GenerationRequest(item.prompt, "", max_tokens, 0.0), answer.text)
        readings.append(Reading(scored.token_logprobs, scored.top_logprobs, time.perf_counter() - started))
        on_item(index)
    return readings


def save_outcomes(path: Path, outcomes: Sequence[Outcome | Reading]) -> None:
    path.write_text("".join(json.dumps(asdict(o)) + "\n" for o in outcomes), encoding="utf-8")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_outcomes(path: Path) -> list[Outcome]:
    return [Outcome(r["text"], r["correct"], tuple(r["logprobs"]), r["finish_reason"], r.get("seconds", 0.0),
                    r.get("completion_tokens", len(r["logprobs"]))) for r in _rows(path)]


def load_readings(path: Path) -> list[Reading]:
    return [Reading(tuple(r["logprobs"]), tuple(r["top_logprobs"]), r["seconds"]) for r in _rows(path)]


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


def _fold(scores: Sequence[float], first_ok: Sequence[bool], last_ok: Sequence[bool], tune: list[int],
          report: list[int], share_of_last: float) -> tuple[CascadePoint | None, CascadePoint | None]:
    """Choose the threshold on `tune`, apply it to `report`."""
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    floor = share_of_last * sum(pick(last_ok, tune)) / len(tune)
    chosen = best_threshold(cascade_curve(pick(scores, tune), pick(first_ok, tune), pick(last_ok, tune)), floor)
    if chosen is None:
        return None, None
    return chosen, apply_threshold(chosen.threshold, pick(scores, report), pick(first_ok, report), pick(last_ok, report))


def report(first: str, first_outcomes: Sequence[Outcome], last: str | None, last_outcomes: Sequence[Outcome] | None,
           target_escalation: float | None, target_accuracy: float | None, keep_share_of_last: float = 0.95) -> str:
    """The calibration report as text."""
    lines: list[str] = []
    out = lines.append
    ok = [o.correct for o in first_outcomes]
    n = len(ok)
    tune, held_out = halves(n)
    out(f"{n} items; thresholds are chosen on the even items ({len(tune)}) and reported on the odd ones ({len(held_out)})")
    out(f"{first}: accuracy {sum(ok) / n:.1%}")
    if last_outcomes is not None:
        last_ok = [o.correct for o in last_outcomes]
        out(f"{last}: accuracy {sum(last_ok) / n:.1%}")
        oracle = sum(f or not la for f, la in zip(ok, last_ok, strict=True)) / n
        out(f"oracle: keeps {oracle:.1%} of calls on {first} with no loss of accuracy")
    out("")
    out(f"{'statistic':<15} {'AUROC':>6}  " + (f"{'escalation target':>22}  " if target_escalation is not None else "")
        + (f"{'accuracy target':>22}  " if target_accuracy is not None else "")
        + (f"cascade {first}→{last}: kept on {first} (held-out accuracy)" if last_outcomes is not None else ""))
    best_stat: tuple[float, str, float] | None = None
    for name in statistic_names():
        scores = [score(o, name) for o in first_outcomes]
        row = f"{name:<15} {auroc(scores, ok):>6.3f}  "
        tune_scores, report_scores = [scores[i] for i in tune], [scores[i] for i in held_out]
        if target_escalation is not None:
            t = threshold_for_escalation(tune_scores, target_escalation)
            rate = sum(s < t for s in report_scores) / len(report_scores)
            row += f"{'t=' + format(t, '.3f') + ' → ' + format(rate, '.0%') + ' escalate':>22}  "
        if target_accuracy is not None:
            t = threshold_for_accuracy(tune_scores, [ok[i] for i in tune], target_accuracy)
            if t is None:
                row += f"{'unreachable':>22}  "
            else:
                kept = [ok[i] for i in held_out if scores[i] >= t]
                acc = sum(kept) / len(kept) if kept else float("nan")
                row += f"{'t=' + format(t, '.3f') + ' → ' + format(acc, '.0%') + ' right':>22}  "
        if last_outcomes is not None:
            shares = []
            for tune_idx, report_idx in ((tune, held_out), (held_out, tune)):
                chosen, result = _fold(scores, ok, last_ok, tune_idx, report_idx, keep_share_of_last)
                shares.append((chosen, result))
            (chosen, result), (_, other) = shares
            if chosen is None or result is None or other is None:
                row += "no threshold keeps the accuracy"
            else:
                mean_share = (result.share_kept + other.share_kept) / 2
                goal_odd = keep_share_of_last * sum(last_ok[i] for i in held_out) / len(held_out)
                goal_even = keep_share_of_last * sum(last_ok[i] for i in tune) / len(tune)
                row += (f"t={chosen.threshold:.3f}: {result.share_kept:.0%} ({result.accuracy:.1%}, goal {goal_odd:.1%}); "
                        f"folds swapped: {other.share_kept:.0%} ({other.accuracy:.1%}, goal {goal_even:.1%})")
                if best_stat is None or mean_share > best_stat[0]:
                    best_stat = (mean_share, name, chosen.threshold)
        out(row)
    if last_outcomes is not None:
        curve_statistic = best_stat[1] if best_stat is not None else "mean"
        scores = [score(o, curve_statistic) for o in first_outcomes]
        out("")
        out(f"cascade curve ({first} kept when {curve_statistic} confidence ≥ t, else {last}; all items):")
        out(f"{'kept on ' + first:>16} {'accuracy':>9} {'t':>7}")
        curve = cascade_curve(scores, ok, last_ok)
        for step in range(0, 101, 10):
            point = min(curve, key=lambda p: abs(p.share_kept - step / 100))
            out(f"{point.share_kept:>16.0%} {point.accuracy:>9.1%} {point.threshold:>7.3f}")
        floor = keep_share_of_last * sum(last_ok) / n
        out(f"goal: accuracy ≥ {keep_share_of_last:.0%} of {last}'s = {floor:.1%}")
        if best_stat is not None:
            statistic, _, q = best_stat[1].partition(":")
            setting = f'confidence = "{statistic}"' + (f", confidence_quantile = {q}" if q else "")
            out(f"recommended for [tiers.{first}]: {setting}, min_confidence = {best_stat[2]:.3f} "
                f"(held-out: keeps {best_stat[0]:.0%} of calls on {first})")
    return "\n".join(lines)
