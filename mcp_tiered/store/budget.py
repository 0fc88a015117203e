"""The cloud budget of a whole team: every process configured with the store reserves against the same spend.

A reservation is one statement (mcp_tiered_reserve_for): the worst case is held only if the UTC day's and month's
spend, plus every hold whose lease runs, plus it, fits each cap. Settling is one statement too, idempotent: the
hold is replaced by the billed cost once. A process renews its holds' leases while it runs (Store.renew), so
the holds of a process that died stop counting when their lease ends. There is no periodic sync: the database
decides every reservation against what every process has spent and holds at that moment.

When the store cannot be reached the cloud hop is refused (BudgetUnavailable): nobody can tell what the team
has left. A settlement that cannot be sent waits in the process, its hold still renewed, and goes out when the
store is back: the answer it was for is never held back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from ..accounting.budget import BudgetExceeded, BudgetUnavailable, CloudBudget, Reservation, Spender, cost, refusal
from ..config.schema import TokenPrices
from .runtime import Store, StoreDown

log = structlog.get_logger(__name__)

CALL_SLACK_S = 5.0
"""A hold's first lease is the call's own time left plus this (the API's last bytes, the settle's trip)."""


class SharedBudget(CloudBudget):
    def __init__(self, store: Store, daily: float | None, monthly: float | None, currency: str,
                 clock: Callable[[], float] = time.time):
        super().__init__(daily, monthly, currency, clock)
        self.store = store

    @asynccontextmanager
    async def hold(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int,
                   lasts_s: float | None = None, spender: Spender | None = None) -> AsyncIterator[Reservation]:
        reservation = await self._reserve(prices, prompt, system, max_tokens, lasts_s, spender)
        try:
            yield reservation
        finally:
            if reservation.open:
                await self._close_shared(reservation, 0.0)

    async def _reserve(self, prices: TokenPrices, prompt: str, system: str, max_tokens: int,
                       lasts_s: float | None, spender: Spender | None) -> Reservation:
        worst = self.worst_case_cost(prices, prompt, system, max_tokens)
        # The first lease covers the whole call: a process cut off from the store while its call runs could
        # not renew, and the money it may still be billed must not go to another process meanwhile.
        lease_s = max(self.store.lease_s, (lasts_s or 0.0) + CALL_SLACK_S)
        day, month = self._periods()
        hold = self.store.new_id()
        try:
            rows = await self.store.execute_shielded(
                "SELECT held, day_used, month_used, own_day_used, own_month_used FROM mcp_tiered_reserve_for("
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (hold, self.store.instance, day, month, worst, self.daily, self.monthly, lease_s,
                 *((spender.name, spender.daily, spender.monthly) if spender else (None, None, None))))
        except StoreDown as exc:
            self.store.unsettled[hold] = 0.0  # it may have been held before the answer was lost: release it
            raise BudgetUnavailable(f"the store {self.store.where} cannot be reached ({exc}), so the budget cannot "
                                    "be checked and no cloud call is made") from None
        held, day_used, month_used, *own = rows[0]
        if not held:
            caps = [("daily", day_used, self.daily, None), ("monthly", month_used, self.monthly, None)]
            if spender is not None:
                caps += [("daily", own[0], spender.daily, spender.name), ("monthly", own[1], spender.monthly, spender.name)]
            for period, used, cap, whose in caps:
                if cap is not None and worst > cap - used:
                    raise BudgetExceeded(refusal(period, cap, cap - used, worst, self.currency, whose))
            raise BudgetExceeded(refusal("daily" if self.daily is not None else "monthly", 0, 0, worst, self.currency))
        self.store.holds.add(hold)
        return Reservation(worst, day, month, prices, hold=hold, spender=spender.name if spender else None)

    async def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> float:
        real = cost(reservation.prices, input_tokens, output_tokens)
        await self._close_shared(reservation, real)
        return real

    def release(self, reservation: Reservation) -> None:
        raise TypeError("a shared reservation is released by leaving SharedBudget.hold")

    async def _close_shared(self, reservation: Reservation, spent: float) -> None:
        if not reservation.open or reservation.hold is None:
            return
        reservation.open = False
        hold = reservation.hold
        try:
            await self.store.execute_shielded("SELECT mcp_tiered_settle(%s, %s)", (hold, spent))
        except Exception:  # StoreDown, or anything else: the settlement waits, it is never lost
            self.store.unsettled[hold] = spent
            log.warning("budget_settle_deferred", store=self.store.where, cost=round(spent, 6),
                        action="sent when the store answers again; the hold stays counted at its worst case "
                               "until then (renewed while this process runs)")
            return
        self.store.holds.discard(hold)

    def spent(self) -> dict[str, float]:
        return dict(self.store.spent)
