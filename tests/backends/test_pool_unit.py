"""InstancePool on plain items: FIFO hand-over, a full queue, timeouts, cancelled waiters."""

from __future__ import annotations

import anyio
import pytest

from mcp_tiered.backends.pool import CallControl, InstancePool
from mcp_tiered.errors import BusyError

pytestmark = pytest.mark.anyio


async def test_waiters_get_freed_instances_first_come_first_served() -> None:
    pool = InstancePool("t", ["only"], max_queue=5, queue_timeout_s=5)
    held = await pool.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        item = await pool.acquire()
        order.append(i)
        pool.release(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(wait, i)
                await anyio.wait_all_tasks_blocked()
            assert pool.queue_depth == 3
            pool.release(held)
    assert order == [0, 1, 2]


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool = InstancePool("t", ["only"], max_queue=5, queue_timeout_s=5)
    held = await pool.acquire()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.acquire)
            await anyio.wait_all_tasks_blocked()
            assert pool.queue_depth == 1
            tg.cancel_scope.cancel()
    assert pool.queue_depth == 0
    pool.release(held)
    assert await pool.acquire() == "only"


async def test_queue_wait_is_bounded_by_the_call_deadline() -> None:
    pool = InstancePool("t", ["only"], max_queue=5, queue_timeout_s=30)
    await pool.acquire()
    with anyio.fail_after(5), pytest.raises(BusyError, match=r"waited 0\.\d s in the queue"):
        await pool.acquire(CallControl(deadline_s=0.2))
    assert pool.queue_depth == 0


async def test_progress_description_follows_the_phase() -> None:
    control = CallControl()
    control.tier, control.phase, control.queue_position = "small", "queued", 3
    assert control.describe() == "small: waiting in the queue, position 3"
    control.phase = "loading"
    assert control.describe() == "small: loading the model"


async def test_affinity_picks_the_best_scoring_free_instance() -> None:
    pool = InstancePool("t", ["a", "bb", "ccc"], max_queue=1, queue_timeout_s=1)
    assert await pool.acquire(affinity=len) == "ccc"
    assert await pool.acquire() == "a"  # without affinity: the one free longest


async def test_prefix_affinity_prefers_the_instance_holding_the_prompt_and_spares_other_caches() -> None:
    from mcp_tiered.backends.llama import _Instance

    agent_a, agent_b = "You are agent A. " * 10, "You are agent B. " * 10
    loaded, empty_loaded, unloaded = (_Instance(worker=None, llama=object(), last_request=f"{agent_a}\x00q1"),
                                      _Instance(worker=None, llama=object()), _Instance(worker=None))
    same, other = f"{agent_a}\x00q2", f"{agent_b}\x00q1"
    assert max([unloaded, empty_loaded, loaded], key=lambda i: i.affinity(same)) is loaded
    assert max([unloaded, loaded, empty_loaded], key=lambda i: i.affinity(other)) is empty_loaded
    assert max([unloaded, loaded], key=lambda i: i.affinity(other)) is loaded  # rather than load another copy
