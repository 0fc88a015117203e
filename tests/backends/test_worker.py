from __future__ import annotations

import threading
import time

import anyio
import pytest

from mcp_tiered.backends.worker import WorkerThread

pytestmark = pytest.mark.anyio


async def test_every_call_runs_on_the_same_thread_off_the_event_loop() -> None:
    worker = WorkerThread("test")
    with anyio.fail_after(5):
        idents = {await worker.run(threading.get_ident) for _ in range(5)}
    worker.stop()
    assert len(idents) == 1 and idents != {threading.get_ident()}


async def test_exception_reaches_the_caller() -> None:
    worker = WorkerThread("test")
    with anyio.fail_after(5), pytest.raises(ZeroDivisionError):
        await worker.run(lambda: 1 / 0)
    worker.stop()


async def test_cancelled_caller_still_waits_for_the_job_to_finish() -> None:
    worker = WorkerThread("test")
    finished = threading.Event()

    def job() -> None:
        time.sleep(0.3)
        finished.set()

    with anyio.fail_after(5):
        with anyio.move_on_after(0.05):
            await worker.run(job)
    assert finished.is_set()  # the caller could not leave while the job held its resources
    worker.stop()
