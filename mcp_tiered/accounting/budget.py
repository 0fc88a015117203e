"""The cloud spend cap ([budget]), one for every tier billed per token: a call reserves its worst-case cost
at its tier's prices before it is sent, and settles the real cost when it answers. A principal with a cloud
budget of its own ([auth] limits cloud_daily/cloud_monthly, a `Spender`) reserves against it and the team's
caps in the same step. In one process the check
and the hold happen with no await between them, so concurrent calls can never overrun the cap together; a
team's processes share one budget in the store (store.budget.SharedBudget), decided in the database.

Spend is kept per UTC day and month; the server starts from what the ledger recorded (`restore`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from ..config.schema import TokenPrices

# A token is at least one byte of text, so the prompt's UTF-8 length bounds its token count;
# the margin covers the role markers the API adds around the messages.
PROMPT_TOKEN_MARGIN = 16


@dataclass(frozen=True, slots=True)
class Spender:
    """A principal with a cloud budget of its own, within the team's."""

    name: str
    daily: float | None
    monthly: float | None


def spender_of(principal: object) -> Spender | None:
    """The principal's own cloud budget, or None when it has none (the team's caps alone apply)."""
    limits = getattr(principal, "limits", None)
    if limits is None or (limits.cloud_daily is None and limits.cloud_monthly is None):
        return None
    return Spender(principal.name, limits.cloud_daily, limits.cloud_monthly)  # type: ignore[attr-defined]


@dataclass
class Reservation:
    cost: float
    day: str
    month: str
    prices: TokenPrices
    open: bool = True
    hold: int | None = None
    """Its row in the store (SharedBudget)."""
    spender: str | None = None


class BudgetExceeded(Exception):
    """The call's worst case does not fit what is left; the text says how much is left of which cap."""


class BudgetUnavailable(BudgetExceeded):
    """The budget cannot be checked (the store is unreachable): a cloud hop is refused, not spent blind."""


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month `now` falls in, as the budget keys them ("2026-12-01", "2026-12")."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def refusal(period: str, cap: float, left: float, worst: float, currency: str, whose: str | None = None) -> str:
    budget = f"{whose}'s {period} cloud budget" if whose else f"the {period} budget"
    return (f"the cloud call could cost up to {worst:.4f} {currency} and only {max(left, 0):.4f} {currency} "
            f"of {budget} ({cap:g} {currency}) is left")


def cost(prices: TokenPrices, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * prices.input_price_per_mtok + output_tokens * prices.output_price_per_mtok) / 1_000_000


class CloudBudget:
    def __init__(self, daily: float | None, monthly: float | None, currency: str,
                 clock: callable = time.time):  # type: ignore[valid-type]
        self.daily, self.monthly, self.currency = daily, monthly, currency
        self._clock = clock
        self._spent: dict[object, float] = {}
        self._reserved: dict[object, float] = {}
        """By period (the team's) and by (principal, period) (a Spender's)."""

    @staticmethod
    def worst_case_cost(prices: TokenPrices, prompt: str, system: str, max_tokens: int) -> float:
        input_tokens = len(prompt.encode()) + len(system.encode()) + PROMPT_TOKEN_MARGIN
        return cost(prices, input_tokens, max_tokens)

    def _periods(self) -> tuple[str, str]:
        return periods(self._clock())

    def reserve(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int,
                spender: Spender | None = None) -> Reservation:
        """Hold the call's worst-case cost against the team's caps and the spender's, or raise BudgetExceeded
        with the sentence to show."""
        worst = self.worst_case_cost(prices, prompt, system, max_tokens)
        day, month = self._periods()
        caps: list[tuple[str, object, float | None, str | None]] = [("daily", day, self.daily, None),
                                                                   ("monthly", month, self.monthly, None)]
        if spender is not None:
            caps += [("daily", (spender.name, day), spender.daily, spender.name),
                     ("monthly", (spender.name, month), spender.monthly, spender.name)]
        for period, key, cap, whose in caps:
            if cap is None:
                continue
            left = cap - self._spent.get(key, 0.0) - self._reserved.get(key, 0.0)
            if worst > left:
                raise BudgetExceeded(refusal(period, cap, left, worst, self.currency, whose))
        for _, key, _, _ in caps:
            self._reserved[key] = self._reserved.get(key, 0.0) + worst
        return Reservation(worst, day, month, prices, spender=spender.name if spender else None)

    @asynccontextmanager
    async def hold(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int,
                   lasts_s: float | None = None, spender: Spender | None = None) -> AsyncIterator[Reservation]:
        """A reservation for the block (raises BudgetExceeded on entry): `settle` it with what the call
        was billed; left open, it is released when the block ends, however it ends. `lasts_s`: how long the
        call may run (a shared hold outlives it even if its process can no longer renew it); `spender`: the
        principal whose own budget it also counts against."""
        reservation = self.reserve(prices, prompt, system, max_tokens, spender)
        try:
            yield reservation
        finally:
            self.release(reservation)

    async def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> float:
        """Replace the reservation by the real cost; returns that cost."""
        real = cost(reservation.prices, input_tokens, output_tokens)
        self._close(reservation, real)
        return real

    def release(self, reservation: Reservation) -> None:
        """The call failed before the cloud answered: it costs nothing."""
        self._close(reservation, 0.0)

    def _close(self, reservation: Reservation, spent: float) -> None:
        if not reservation.open:
            return
        reservation.open = False
        keys: list[object] = [reservation.day, reservation.month]
        if reservation.spender is not None:
            keys += [(reservation.spender, reservation.day), (reservation.spender, reservation.month)]
        for key in keys:
            self._reserved[key] -= reservation.cost
            self._spent[key] = self._spent.get(key, 0.0) + spent

    def period_starts(self) -> tuple[float, float]:
        """Unix times at which the current UTC day and month began."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp(), day.replace(day=1).timestamp()

    def restore(self, today: float, this_month: float, by_principal: dict[str, tuple[float, float]] | None = None) -> None:
        """Count spend recorded before this process started (from the ledger): the team's, and each
        principal's (today, this month)."""
        day, month = self._periods()
        additions: list[tuple[object, float]] = [(day, today), (month, this_month)]
        for name, (principal_today, principal_month) in (by_principal or {}).items():
            additions += [((name, day), principal_today), ((name, month), principal_month)]
        for key, amount in additions:
            self._spent[key] = self._spent.get(key, 0.0) + amount

    def spent(self) -> dict[str, float]:
        """The team's spend today and this month."""
        day, month = self._periods()
        return {"today": self._spent.get(day, 0.0), "this_month": self._spent.get(month, 0.0)}
