"""`mcp-tiered calibrate --verify-with TIER`: how well a verifier's reading of the first tier's answers tells
right from wrong, alone and with the first tier's own confidence, and which rule keeps the most calls on the
first tier at the accuracy goal. Each rule's thresholds are chosen on one half and reported on the other.

A rule, as the server applies it (escalation.py): own confidence < `low` → escalate unread; ≥ `high` → keep
unread; otherwise the verifier reads the answer and it is kept when the verifier's statistic ≥ `threshold`.
Latency and large-tier tokens are estimated from the measured seconds of each part: the first tier's answer,
the verifier's reading when made, the last tier's answer when escalated.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .calibrate import Outcome, Reading, auroc, halves, score
from ..calls.confidence import VERIFY_STATISTICS, quantile, verification

OWN_GRID = [i / 20 for i in range(21)]
"""Quantiles of the own confidence tried as `low` and `high`."""


def verifier_score(reading: Reading, name: str) -> float:
    statistic, _, q = name.partition(":")
    value = verification(reading.logprobs, reading.top_logprobs, statistic, float(q) if q else 0.1)  # type: ignore[arg-type]
    return 0.0 if value is None else value


def verifier_statistic_names() -> list[str]:
    return [f"{s}:0.1" if s in ("quantile", "ratio") else s for s in VERIFY_STATISTICS]


@dataclass(frozen=True)
class Rule:
    own: str | None
    low: float
    high: float | None
    verifier: str | None
    threshold: float

    def describe(self) -> str:
        parts = []
        if self.own is not None and (self.low > 0 or self.verifier is None):
            parts.append(f"{self.own} < {self.low:.4g} → escalate")
        if self.verifier is not None:
            if self.high is not None:
                parts.append(f"{self.own} ≥ {self.high:.4g} → keep")
            parts.append(f"else keep if verifier {self.verifier} ≥ {self.threshold:.4g}")
        return "; ".join(parts) if parts else "keep all"


@dataclass(frozen=True)
class Signals:
    """Per item: own confidence, verifier statistic, and whether each tier was right, with their costs."""

    own: list[float]
    verified: dict[str, list[float]]
    """Verifier statistic name → its value per item."""
    first_ok: list[bool]
    last_ok: list[bool]
    first_s: list[float]
    verify_s: list[float]
    last_s: list[float]
    last_tokens: list[int]


@dataclass(frozen=True)
class Result:
    kept: float
    accuracy: float
    of_last: float
    """Accuracy as a share of last-tier-only accuracy."""
    verified: float
    latency_s: float
    last_only_latency_s: float
    last_tokens: float
    """Last-tier tokens generated, as a share of last-tier-only."""


def apply(rule: Rule, s: Signals, idx: Sequence[int]) -> Result:
    kept = verified = right = 0
    latency = last_tokens = 0.0
    for i in idx:
        own = s.own[i]
        keep: bool
        read = False
        if rule.own is not None and own < rule.low:
            keep = False
        elif rule.verifier is None or (rule.high is not None and own >= rule.high):
            keep = True
        else:
            read, keep = True, s.verified[rule.verifier][i] >= rule.threshold
        kept += keep
        verified += read
        right += s.first_ok[i] if keep else s.last_ok[i]
        latency += s.first_s[i] + (s.verify_s[i] if read else 0.0) + (0.0 if keep else s.last_s[i])
        last_tokens += 0 if keep else s.last_tokens[i]
    n = len(idx)
    last_right = sum(s.last_ok[i] for i in idx)
    total_last_tokens = sum(s.last_tokens[i] for i in idx) or 1
    return Result(kept / n, right / n, right / last_right if last_right else float("nan"), verified / n,
                  latency / n, sum(s.last_s[i] for i in idx) / n, last_tokens / total_last_tokens)


def between(values: Sequence[float]) -> list[float]:
    """Thresholds that split `values` every way: 0, the midpoints of neighbours, and infinity. A threshold
    at an observed value would decide that item by how its printed (rounded) copy compares."""
    ordered = sorted(set(values))
    return [0.0, *((a + b) / 2 for a, b in zip(ordered, ordered[1:])), float("inf")]


def candidates(s: Signals, idx: Sequence[int], own: str, kind: str) -> list[Rule]:
    """kind: "own" (own confidence alone), "verify" (every answer read), "unsure" (read between two own cuts)."""
    owns = sorted(s.own[i] for i in idx)
    if kind == "own":
        return [Rule(own, t, None, None, 0.0) for t in between(owns)]
    cuts = sorted({quantile(owns, q) for q in OWN_GRID} | {0.0})
    rules = []
    for verifier, values in s.verified.items():
        thresholds = between([values[i] for i in idx])
        if kind == "verify":
            rules += [Rule(own, 0.0, None, verifier, t) for t in thresholds]
            continue
        rules += [Rule(own, low, high, verifier, t)
                  for low, high, t in itertools.product(cuts, [None, *cuts[1:]], thresholds)
                  if high is None or high > low]
    return rules


def choose(rules: Sequence[Rule], s: Signals, idx: Sequence[int], goal: float) -> tuple[Rule, Result] | None:
    """The rule keeping most calls on the first tier with accuracy ≥ goal × last-only; then the fastest."""
    best: tuple[Rule, Result] | None = None
    for rule in rules:
        result = apply(rule, s, idx)
        if result.of_last < goal - 1e-12:
            continue
        if best is None or (result.kept, -result.latency_s) > (best[1].kept, -best[1].latency_s):
            best = (rule, result)
    return best


def report(first: str, last: str, verifier: str, outcomes: Sequence[Outcome], last_outcomes: Sequence[Outcome],
           readings: Sequence[Reading], own_statistic: str, goal: float = 0.95, margin: float = 0.02) -> str:
    lines: list[str] = []
    out = lines.append
    n = len(outcomes)
    ok = [o.correct for o in outcomes]
    out("")
    out(f"verification of {first}'s answers by {verifier} (AUROC for \"{first} is right\", all {n} items):")
    own_scores = [score(o, own_statistic) for o in outcomes]
    out(f"  {first} {own_statistic:<14} {auroc(own_scores, ok):.3f}")
    for name in verifier_statistic_names():
        values = [verifier_score(r, name) for r in readings]
        combined = [a * b for a, b in zip(own_scores, values, strict=True)]
        out(f"  {verifier} {name:<14} {auroc(values, ok):.3f}    × {first}'s {own_statistic}: {auroc(combined, ok):.3f}")
    tune, held_out = halves(n)
    out("")
    out(f"rules (thresholds chosen on the even items, reported on the odd ones; then the folds swapped); goal: "
        f"accuracy ≥ {goal:.0%} of {last}-only, tuned for {goal + margin:.0%} (a threshold at the goal's very edge "
        f"falls short on new items about half the time); latency and {last} tokens estimated from the measured parts")
    out(f"{'rule':<34} {'kept on ' + first:>14} {'vs ' + last + '-only':>14} {'verified':>9} {'latency':>14} "
        f"{last + ' tokens':>12}")
    picked: list[tuple[str, Rule, Result, Result]] = []
    signals = _signals(outcomes, last_outcomes, readings, own_statistic)
    for label, kind in ((f"{first} confidence alone", "own"), (f"{verifier} verifies every answer", "verify"),
                        (f"{first} unsure → {verifier} verifies", "unsure")):
        rows = []
        for tune_idx, report_idx in ((tune, held_out), (held_out, tune)):
            chosen = choose(candidates(signals, tune_idx, own_statistic, kind), signals, tune_idx, goal + margin)
            rows.append(None if chosen is None else (*chosen, apply(chosen[0], signals, report_idx)))
        for fold, row in enumerate(rows):
            name = label if fold == 0 else "  (folds swapped)"
            if row is None:
                out(f"{name:<34} no rule reaches the goal on the tuning half")
                continue
            rule, tuned, result = row
            out(f"{name:<34} {result.kept:>14.0%} {result.of_last:>14.1%} {result.verified:>9.0%} "
                f"{result.latency_s * 1000:>6.0f} ms ({_ratio(result.latency_s, result.last_only_latency_s)}) "
                f"{result.last_tokens:>11.0%}")
            half = "even" if fold == 0 else "odd"
            out(f"    {rule.describe()} ({half} half: {tuned.kept:.0%} kept at {tuned.of_last:.1%})")
            if fold == 0:
                picked.append((label, rule, tuned, result))
    if picked:  # chosen on the even half alone, like the thresholds
        label, rule, tuned, result = max(picked, key=lambda p: (p[2].kept, -p[2].latency_s))
        out("")
        out(f"best on the even half: {label} (keeps {tuned.kept:.0%} there at {tuned.of_last:.1%}; on the odd half "
            f"{result.kept:.0%} at {result.of_last:.1%} of {last}-only, {'meets' if result.of_last >= goal else 'misses'} "
            "the goal)")
        out(f"recommended for [tiers.{first}]: {settings(rule, verifier)}")
    return "\n".join(lines)


def settings(rule: Rule, verifier: str) -> str:
    statistic, _, q = (rule.own or "mean").partition(":")
    parts = [f'confidence = "{statistic}"'] + ([f"confidence_quantile = {q}"] if q else [])
    parts.append(f"min_confidence = {rule.low:.4g}")
    if rule.verifier is not None:
        vstat, _, vq = rule.verifier.partition(":")
        parts += [f'verify_with = "{verifier}"', f'verify_statistic = "{vstat}"'] + \
            ([f"verify_quantile = {vq}"] if vq else []) + [f"min_verification = {rule.threshold:.4g}"]
        if rule.high is not None:
            parts.append(f"verify_below = {rule.high:.4g}")
    return ", ".join(parts)


def _signals(outcomes: Sequence[Outcome], last: Sequence[Outcome], readings: Sequence[Reading], own: str) -> Signals:
    return Signals(
        own=[score(o, own) for o in outcomes],
        verified={name: [verifier_score(r, name) for r in readings] for name in verifier_statistic_names()},
        first_ok=[o.correct for o in outcomes], last_ok=[o.correct for o in last],
        first_s=[o.seconds for o in outcomes], verify_s=[r.seconds for r in readings],
        last_s=[o.seconds for o in last], last_tokens=[o.completion_tokens for o in last],
    )


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline > 0 else "  n/a"
