"""The cloud spend cap ([budget]), one for every tier billed per token: a call reserves its worst-case cost
at its tier's prices before it is sent, and settles the real cost when it answers. In one process the check
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


@dataclass
class Reservation:
    cost: float
    day: str
    month: str
    prices: TokenPrices
    open: bool = True
    hold: int | None = None
    """Its row in the store (SharedBudget)."""


class BudgetExceeded(Exception):
    """The call's worst case does not fit what is left; the text says how much is left of which cap."""


class BudgetUnavailable(BudgetExceeded):
    """The budget cannot be checked (the store is unreachable): a cloud hop is refused, not spent blind."""


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month `now` falls in, as the budget keys them ("2026-12-01", "2026-12")."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def refusal(period: str, cap: float, left: float, worst: float, currency: str) -> str:
    return (f"the cloud call could cost up to {worst:.4f} {currency} and only {max(left, 0):.4f} {currency} "
            f"of the {period} budget ({cap:g} {currency}) is left")


def cost(prices: TokenPrices, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * prices.input_price_per_mtok + output_tokens * prices.output_price_per_mtok) / 1_000_000


class CloudBudget:
    def __init__(self, daily: float | None, monthly: float | None, currency: str,
                 clock: callable = time.time):  # type: ignore[valid-type]
        self.daily, self.monthly, self.currency = daily, monthly, currency
        self._clock = clock
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}

    @staticmethod
    def worst_case_cost(prices: TokenPrices, prompt: str, system: str, max_tokens: int) -> float:
        input_tokens = len(prompt.encode()) + len(system.encode()) + PROMPT_TOKEN_MARGIN
        return cost(prices, input_tokens, max_tokens)

    def _periods(self) -> tuple[str, str]:
        return periods(self._clock())

    def reserve(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int) -> Reservation:
        """Hold the call's worst-case cost, or raise BudgetExceeded with the sentence to show."""
        worst = self.worst_case_cost(prices, prompt, system, max_tokens)
        day, month = self._periods()
        currency = self.currency
        for period, key, cap in (("daily", day, self.daily), ("monthly", month, self.monthly)):
            if cap is None:
                continue
            left = cap - self._spent.get(key, 0.0) - self._reserved.get(key, 0.0)
            if worst > left:
                raise BudgetExceeded(refusal(period, cap, left, worst, currency))
        for key in (day, month):
            self._reserved[key] = self._reserved.get(key, 0.0) + worst
        return Reservation(worst, day, month, prices)

    @asynccontextmanager
    async def hold(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int,
                   lasts_s: float | None = None) -> AsyncIterator[Reservation]:
        """A reservation for the block (raises BudgetExceeded on entry): `settle` it with what the call
        was billed; left open, it is released when the block ends, however it ends. `lasts_s`: how long the
        call may run (a shared hold outlives it even if its process can no longer renew it)."""
        reservation = self.reserve(prices, prompt, system, max_tokens)
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
        for key in (reservation.day, reservation.month):
            self._reserved[key] -= reservation.cost
            self._spent[key] = self._spent.get(key, 0.0) + spent

    def period_starts(self) -> tuple[float, float]:
        """Unix times at which the current UTC day and month began."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp(), day.replace(day=1).timestamp()

    def restore(self, today: float, this_month: float) -> None:
        """Count spend recorded before this process started (from the ledger)."""
        day, month = self._periods()
        self._spent[day] = self._spent.get(day, 0.0) + today
        self._spent[month] = self._spent.get(month, 0.0) + this_month

    def spent(self) -> dict[str, float]:
        day, month = self._periods()
        return {"today": self._spent.get(day, 0.0), "this_month": self._spent.get(month, 0.0)}
