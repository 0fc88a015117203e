"""A dedicated OS thread per model instance, so blocking llama.cpp calls never run on the event loop.

Why not `anyio.to_thread`: its pool hands successive calls to different threads, and llama.cpp's
OpenMP build keeps one spinning thread team per calling thread. Alternating callers left idle teams
spinning against the busy one and cost ~5 % tokens/s on 2 cores (measured with bench_overhead.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")

_STOP = object()


class WorkerThread:
    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job` to run on this thread after the jobs already queued; nobody waits for it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    async def run(self, fn: Callable[..., T], *args: Any, on_cancel: Callable[[], None] | None = None) -> T:
        """Run `fn(*args)` on this thread. Like `anyio.to_thread.run_sync`, a cancelled caller
        still waits for `fn` to return, so whatever `fn` uses stays consistent; `on_cancel` is
        called first, to ask `fn` to return early."""
        token = anyio.lowlevel.current_token()
        done = anyio.Event()
        outcome: dict[str, Any] = {}

        def job() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc
            try:
                anyio.from_thread.run_sync(done.set, token=token)
            except RuntimeError:  # the event loop is gone: nobody is waiting any more
                pass

        self.submit(job)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            if on_cancel is not None:
                on_cancel()
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            job()

    def stop(self) -> None:
        """Let the thread end after the jobs already queued."""
        if self._thread is not None:
            self._jobs.put(_STOP)
            self._thread = None
