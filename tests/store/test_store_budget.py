"""The cloud budget shared through the store: reservations decided in the database against every process's
spend and holds, idempotent settling, holds that lapse with their lease, refusal when it cannot be checked."""

from __future__ import annotations

import time

import anyio
import pytest

from helpers import query, running_store
from mcp_tiered.accounting.budget import BudgetExceeded, BudgetUnavailable, periods
from mcp_tiered.config.schema import StoreConfig, TokenPrices
from mcp_tiered.store.budget import SharedBudget
from mcp_tiered.store.runtime import Store

pytestmark = pytest.mark.anyio

PRICES = TokenPrices(input_price_per_mtok=3.0, output_price_per_mtok=15.0)
PROMPT, MAX_TOKENS = "2+2?", 8
WORST = SharedBudget.worst_case_cost(PRICES, PROMPT, "", MAX_TOKENS)
CAP = 10.5 * WORST
"""Worth ten calls at their worst case, not eleven."""
BILLED_ONE = (20 * 3.0 + 8 * 15.0) / 1e6
"""A call billed 20 tokens in and 8 out."""


async def spend_worst(budget: SharedBudget) -> bool:
    """One cloud call billed at its worst case; False when the budget refused it."""
    try:
        async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS) as reservation:
            await anyio.sleep(0.01)
            await budget.settle(reservation, len(PROMPT) + 16, MAX_TOKENS)
            return True
    except BudgetExceeded:
        return False


async def test_two_processes_together_never_spend_past_the_cap(store_url: str) -> None:
    async with running_store(store_url) as a, running_store(store_url) as b:
        budgets = [SharedBudget(s, CAP, None, "USD") for s in (a, b)]
        spent: list[bool] = []

        async def call(i: int) -> None:
            spent.append(await spend_worst(budgets[i % 2]))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(call, i)
    assert spent.count(True) == 10
    day, month = periods(time.time())
    stored = dict(query(store_url, "SELECT period, spent FROM budget_spend"))
    assert stored[day] == pytest.approx(10 * WORST) and stored[month] == pytest.approx(10 * WORST)
    assert query(store_url, "SELECT count(*) FROM budget_holds") == [(0,)]


async def test_the_refusal_says_how_much_of_which_cap_is_left(store_url: str) -> None:
    async with running_store(store_url) as store:
        budget = SharedBudget(store, None, 1.5 * WORST, "EUR")
        assert await spend_worst(budget)
        with pytest.raises(BudgetExceeded) as refused:
            async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS):
                pass
    assert str(refused.value) == (f"the cloud call could cost up to {WORST:.4f} EUR and only {0.5 * WORST:.4f} EUR of "
                                  f"the monthly budget ({1.5 * WORST:g} EUR) is left")


async def test_a_hold_settled_twice_counts_once(store_url: str) -> None:
    async with running_store(store_url) as store:
        budget = SharedBudget(store, CAP, None, "USD")
        async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS) as reservation:
            hold = reservation.hold
            await budget.settle(reservation, 20, 8)
        again = query(store_url, "SELECT mcp_tiered_settle(%s, %s)", (hold, 1.0))
    assert again == [(False,)]
    assert query(store_url, "SELECT max(spent) FROM budget_spend") == [(pytest.approx((20 * 3 + 8 * 15) / 1e6),)]


async def test_a_hold_left_open_is_released_when_the_block_ends(store_url: str) -> None:
    async with running_store(store_url) as store:
        budget = SharedBudget(store, CAP, None, "USD")
        with pytest.raises(RuntimeError):
            async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS):
                raise RuntimeError("the cloud call failed")
    assert query(store_url, "SELECT count(*) FROM budget_holds") == [(0,)]
    assert query(store_url, "SELECT count(*) FROM budget_spend") == [(0,)]


async def test_the_holds_of_a_process_that_stopped_renewing_lapse_with_their_lease(store_url: str) -> None:
    day, month = periods(time.time())
    async with running_store(store_url) as store:
        # A process that reserved the whole cap and died: its hold is never renewed, with a one-second lease.
        query(store_url, "SELECT held FROM mcp_tiered_reserve(1, 'dead', %s, %s, %s, %s, NULL, 1.0)",
              (day, month, 10 * WORST, CAP))
        budget = SharedBudget(store, CAP, None, "USD")
        assert not await spend_worst(budget)
        with anyio.fail_after(10):
            while not await spend_worst(budget):
                await anyio.sleep(0.2)
    assert query(store_url, "SELECT spent FROM budget_spend WHERE period = %s", (day,)) == [(pytest.approx(WORST),)]


async def test_a_renewing_process_keeps_its_hold_past_one_lease(store_url: str) -> None:
    async with running_store(store_url, lease_s=1.0) as holder, running_store(store_url, lease_s=1.0) as other:
        big = SharedBudget(holder, CAP, None, "USD")
        async with big.hold(PRICES, PROMPT * 9, "", MAX_TOKENS * 14):  # all but 0.3 calls of the cap, for three leases
            await anyio.sleep(3.0)
            assert not await spend_worst(SharedBudget(other, CAP, None, "USD"))


async def test_a_store_that_cannot_be_reached_refuses_the_cloud_call_in_one_sentence(own_postgres) -> None:  # noqa: ANN001
    url = own_postgres.url(own_postgres.new_database())
    async with running_store(url) as store:
        budget = SharedBudget(store, CAP, None, "USD")
        own_postgres.stop()
        with pytest.raises(BudgetUnavailable) as refused:
            async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS):
                pass
    assert str(refused.value).startswith(f"the store {store.where} cannot be reached (")
    assert str(refused.value).endswith("), so the budget cannot be checked and no cloud call is made")


async def test_a_settlement_the_store_missed_is_sent_when_it_is_back(own_postgres) -> None:  # noqa: ANN001
    url = own_postgres.url(own_postgres.new_database())
    async with running_store(url) as store:
        budget = SharedBudget(store, CAP, None, "USD")
        async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS) as reservation:
            own_postgres.stop()
            assert await budget.settle(reservation, 20, 8) > 0  # the answer is not held back
        own_postgres.start()
        with anyio.fail_after(15):
            while store.unsettled or store.down:
                await anyio.sleep(0.1)
    assert query(url, "SELECT count(*) FROM budget_spend WHERE spent > 0") == [(2,)]
    assert query(url, "SELECT count(*) FROM budget_holds") == [(0,)]


def test_a_password_variable_that_is_not_set_is_one_sentence() -> None:
    from mcp_tiered.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^store.password_env: the environment variable \$NO_SUCH_PASSWORD_VAR "
                                          "is not set or empty$"):
        Store(StoreConfig(url="postgresql://mcp@db/x", password_env="NO_SUCH_PASSWORD_VAR"), environ={})


async def test_an_escalation_to_the_cloud_while_the_store_is_down_keeps_the_local_answer(own_postgres) -> None:  # noqa: ANN001
    from conftest import ScriptedBackend
    from mcp_tiered.backends import Completion
    from mcp_tiered.calls.dispatch import Dispatcher
    from mcp_tiered.calls.tiers import Policy, Tier, TierRegistry

    unsure = Completion("maybe 5", "stop", 10, 2, (-3.0, -3.0))
    url = own_postgres.url(own_postgres.new_database())
    async with running_store(url) as store:
        cloud = ScriptedBackend([Completion("4", "stop", 10, 1)], is_local=False)
        registry = TierRegistry([Tier("small", ScriptedBackend([unsure]), "s", 100, 0.2,
                                      Policy(min_confidence=0.9, escalate_to="claude")),
                                 Tier("claude", cloud, "c", 100, 0.2)],
                                budget=SharedBudget(store, CAP, None, "USD"))
        own_postgres.stop()
        result = await Dispatcher(registry).generate("small", "2+2?")
    assert (result.served_by, result.text) == ("small", "maybe 5")
    assert result.escalation_note.startswith("escalation from small to claude (low_confidence) was not made: cloud "
                                             f"budget: the store {store.where} cannot be reached (")
    assert cloud.requests == []


async def test_a_settlement_refused_by_a_read_only_store_is_sent_when_it_is_writable(store_url: str) -> None:
    from helpers import read_only

    async with running_store(store_url, lease_s=3) as store:
        budget = SharedBudget(store, CAP, None, "USD")
        async with budget.hold(PRICES, PROMPT, "", MAX_TOKENS) as reservation:
            read_only(store_url, True)
            assert await budget.settle(reservation, 20, 8) > 0
        assert not await spend_worst(budget)  # cannot be checked while the store refuses writes
        read_only(store_url, False)
        with anyio.fail_after(15):
            while store.unsettled or store.down:
                await anyio.sleep(0.1)
        assert await spend_worst(budget)
    assert query(store_url, "SELECT count(*) FROM budget_holds") == [(0,)]
    day, _ = periods(time.time())
    assert query(store_url, "SELECT spent FROM budget_spend WHERE period = %s", (day,)) == [
        (pytest.approx(BILLED_ONE + WORST),)]


async def test_a_hold_outlives_its_call_even_when_its_process_cannot_renew_it(store_url: str) -> None:
    async with running_store(store_url, lease_s=1.0) as cut_off, running_store(store_url, lease_s=1.0) as other:
        big = SharedBudget(cut_off, CAP, None, "USD")
        async with big.hold(PRICES, PROMPT * 9, "", MAX_TOKENS * 14, lasts_s=4.0):
            cut_off.holds.clear()  # as if its renewals could not reach the store
            await anyio.sleep(2.5)  # past two leases, within the call's own time
            assert not await spend_worst(SharedBudget(other, CAP, None, "USD"))
