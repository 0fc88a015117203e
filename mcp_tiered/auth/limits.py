"""Per-principal limits kept in this process: HTTP requests per minute and tokens per UTC day. Pure
bookkeeping with an injected clock; the cloud budget per principal is the budget's (accounting.budget)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from ..accounting.budget import periods

WINDOW_S = 60.0


class RequestRate:
    """A sliding window of each principal's last minute of requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def admit(self, principal: str, per_minute: int | None) -> float | None:
        """None if the request may go ahead (and it is counted); else the seconds until one may."""
        if per_minute is None:
            return None
        now = self._clock()
        seen = self._seen.setdefault(principal, deque())
        while seen and seen[0] <= now - WINDOW_S:
            seen.popleft()
        if len(seen) >= per_minute:
            return max(seen[0] + WINDOW_S - now, 0.001)
        seen.append(now)
        return None


def retry_after(seconds: float) -> str:
    """The Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class TokenQuota:
    """Tokens each principal's calls used today (UTC), counted as each call ends, and the worst case of its
    calls in flight, held while they run (so that concurrent calls cannot all start on the same tokens left);
    `restore` adds what the ledger recorded before this process started."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._used: dict[tuple[str, str], int] = {}
        self._held: dict[tuple[str, str], int] = {}

    def _today(self) -> str:
        return periods(self._clock())[0]

    def left(self, principal: str, per_day: int | None) -> int | None:
        """Tokens left today once the calls in flight use their worst case, or None without a limit."""
        if per_day is None:
            return None
        key = (principal, self._today())
        return per_day - self._used.get(key, 0) - self._held.get(key, 0)

    def hold(self, principal: str, tokens: int) -> tuple[str, str, int]:
        """Hold a starting call's worst case; `release` what this returns when the call has been counted."""
        key = (principal, self._today())
        self._held[key] = self._held.get(key, 0) + tokens
        return (*key, tokens)

    def release(self, held: tuple[str, str, int]) -> None:
        principal, day, tokens = held
        self._held[(principal, day)] -= tokens

    def held(self, principal: str) -> int:
        return self._held.get((principal, self._today()), 0)

    def count(self, principal: str, tokens: int) -> None:
        if tokens > 0:
            key = (principal, self._today())
            self._used[key] = self._used.get(key, 0) + tokens

    def restore(self, used_today: dict[str, int]) -> None:
        for principal, tokens in used_today.items():
            self.count(principal, tokens)

    def used(self, principal: str) -> int:
        return self._used.get((principal, self._today()), 0)
