"""Which tier the `generate` tool starts a call at, from what is known before any model runs: the prompt's
length and cues (code, arithmetic, several steps), the caller's max_tokens and deadline, and the tiers'
queues. Pure decision; the dispatcher runs the usual cascade from the tier it names.

Small models answer lookups, short rewrites and yes/no questions well, and code, arithmetic and multi-step
reasoning badly (on the dev set SmolLM2 gets 1 of 28 multiplications and 14 of 30 additions right, but 22 of
31 capitals and 14 of 16 chemical symbols): a call with those cues would mostly escalate after the small
tier's attempt, so it starts one tier up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Matched against the lower-cased prompt (case-sensitive patterns are 3-4 times faster than IGNORECASE),
# each linear in its length: no unbounded repeat may start at many places of one run (`^\s*` under
# MULTILINE did: 20 000 newlines took 34 s), and "first … then" is two searches, not `first.*then`.
CODE = re.compile(
    r"```|^[ \t]*(?:def|class|import|from[ \t]+\S+[ \t]+import|#include|public|fn|func|const|let|var)\b|=>"
    r"|\)[ \t]*\{|;[ \t]*$"
    r"|\b(?:code|function|program|script|regex|compile[sr]?|debug|refactor|implement|algorithm|sql|python|"
    r"javascript|typescript|rust|java|c\+\+|bash|stack trace|exception)\b",
    re.MULTILINE,
)
ARITHMETIC = re.compile(r"\d[ \t]*[-+*/×÷^x][ \t]*\d|\b(?:calculate|compute|sum of|product of|"
                        r"percent(?:age)?|average|solve|equation)\b|%")
MULTI_STEP = re.compile(r"\b(?:step by step|explain|why|prove|derive|compare|analy[sz]e|design|plan|"
                        r"pros and cons|trade-?offs?)\b")
FIRST, THEN = re.compile(r"\bfirst\b"), re.compile(r"\bthen\b")
SLICE_CHARS = 1 << 16
"""A long prompt is searched a slice at a time: one `re` search holds the GIL throughout, and between slices
the event loop, if the search runs on another thread, gets it back (a slice takes at most ~20 ms)."""
OVERLAP_CHARS = 256
"""Longer than any match of the patterns above, so that a match across two slices is found."""
LONG_PROMPT_CHARS = 2000
"""A prompt this long is a document to work on, not a lookup."""
LONG_ANSWER_TOKENS = 256
"""A caller asking for this many tokens or more wants more than a short answer."""
TIGHT_DEADLINE_S = 5.0
"""A deadline this short is met by the first tier or not at all: it gets the call."""
CHARS_PER_TOKEN = 3
"""A low estimate of characters per token (English averages ~4), so prompts are not sent where they do not fit."""


@dataclass(frozen=True)
class Features:
    chars: int
    code: bool
    arithmetic: bool
    multi_step: bool

    @property
    def cues(self) -> list[str]:
        return [name for name, present in (("code", self.code), ("arithmetic", self.arithmetic),
                                           ("several steps", self.multi_step)) if present]


def features(prompt: str, system: str = "") -> Features:
    """Linear in the prompt's length; run it off the event loop (it gives up the GIL between slices)."""
    text = prompt.lower()
    first = _match_end(FIRST, text)
    multi_step = _match_end(MULTI_STEP, text) is not None or (first is not None and
                                                             _match_end(THEN, text, first) is not None)
    return Features(len(prompt) + len(system), _match_end(CODE, text) is not None,
                    _match_end(ARITHMETIC, text) is not None, multi_step)


def _match_end(pattern: re.Pattern[str], text: str, start: int = 0) -> int | None:
    """Where the first match of `pattern` at or after `start` ends, or None."""
    for at in range(start, max(len(text), start + 1), SLICE_CHARS):
        match = pattern.search(text, at, at + SLICE_CHARS + OVERLAP_CHARS)
        if match is not None and match.start() < at + SLICE_CHARS:
            return match.end()
    return None


@dataclass(frozen=True)
class Candidate:
    """A local tier the call may start at, in chain order (smallest first)."""

    name: str
    max_tokens: int
    n_ctx: int | None
    waiting: int = 0
    max_queue: int | None = None

    @property
    def full(self) -> bool:
        return self.max_queue is not None and self.waiting >= self.max_queue


@dataclass(frozen=True)
class Route:
    tier: str
    why: str


def pick_entry(f: Features, candidates: Sequence[Candidate], max_tokens: int | None,
               deadline_s: float | None) -> Route | None:
    """The tier to start at and why; None when no candidate can take the call's max_tokens."""
    fits = [c for c in candidates if max_tokens is None or max_tokens <= c.max_tokens]
    if not fits:
        return None
    skipped = [c.name for c in candidates if c not in fits]
    prompt_tokens = f.chars // CHARS_PER_TOKEN
    roomy = [c for c in fits if c.n_ctx is None or prompt_tokens + (max_tokens or c.max_tokens) <= c.n_ctx]
    usable = roomy or fits[-1:]
    reasons = []
    if skipped:
        reasons.append(f"max_tokens {max_tokens} is over the limit of {', '.join(skipped)}")
    if len(roomy) < len(fits):
        reasons.append(f"a prompt of ~{prompt_tokens} tokens does not fit {', '.join(c.name for c in fits if c not in roomy)}")
    if deadline_s is not None and deadline_s < TIGHT_DEADLINE_S:
        choice = usable[0]
        reasons.append(f"a deadline of {deadline_s:g} s favours the fastest tier")
    else:
        hard = [*f.cues]
        if f.chars >= LONG_PROMPT_CHARS:
            hard.append(f"a {f.chars}-character prompt")
        if max_tokens is not None and max_tokens >= LONG_ANSWER_TOKENS:
            hard.append(f"max_tokens {max_tokens}")
        choice = usable[min(1, len(usable) - 1)] if hard else usable[0]
        reasons.append(f"the prompt shows {', '.join(hard)}" if hard else "a short prompt without code, arithmetic or "
                       "several steps")
    if choice.full:
        roomier = [c for c in usable if not c.full]
        if roomier:
            later = [c for c in roomier if usable.index(c) > usable.index(choice)]
            reasons.append(f"{choice.name}'s queue is full")
            choice = (later or roomier)[0]
    return Route(choice.name, "; ".join(reasons) + f" → {choice.name}")
