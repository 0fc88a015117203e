"""Instances of a tier's model, handed out one call at a time, with a bounded FIFO queue in front."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from ..errors import BusyError

T = TypeVar("T")


class CallControl:
    """What the server and a running generation share about one call (read and written from both
    the event loop and the model's thread): its phase for progress reports, and when to stop."""

    def __init__(self, deadline_s: float | None = None):
        self.accepted = time.monotonic()
        self.deadline: float | None = None
        self.set_deadline(deadline_s)
        self.cancelled = threading.Event()
        self.tier = ""
        self.prompt_since = 0.0
        self._phase = "accepted"
        self.queue_position = 0
        self.tokens = 0
        self.generating_since = 0.0
        self.queue_s = 0.0
        """Seconds the current hop waited for a free instance (set by the backend)."""
        self.generation_s = 0.0
        """Seconds the current hop's engine worked on it: prompt and generation, model load excluded."""
        self.on_text: Callable[[str], None] | None = None
        """Receives the answer's text as the engine generates it, piece by piece (from the engine's thread for
        in-process engines): set only where nothing will judge that answer (the OpenAI face's pinned tier)."""

    PROMPT_PHASES = frozenset({"prompt", "waiting for the cloud"})

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        """Entering a prompt phase starts the clock of `prompt_s`."""
        self._phase = value
        if value in self.PROMPT_PHASES:
            self.prompt_since = time.monotonic()

    @property
    def prompt_s(self) -> float:
        """Seconds of the current hop's engine time spent before the first token (the prompt): all of it
        when no token came (a refusal, a verifier's reading)."""
        if self.prompt_since and self.generating_since >= self.prompt_since:
            return min(self.generating_since - self.prompt_since, self.generation_s)
        return self.generation_s

    def start_hop(self) -> None:
        self.queue_s = self.generation_s = 0.0
        self.prompt_since = self.generating_since = 0.0

    def set_deadline(self, deadline_s: float | None) -> None:
        """Seconds from when the call was accepted."""
        self.deadline = None if deadline_s is None else self.accepted + deadline_s

    def stop_reason(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def describe(self) -> str:
        """One line for a progress notification."""
        if self.phase == "queued":
            return f"{self.tier}: waiting in the queue, position {self.queue_position}"
        if self.phase == "generating":
            elapsed = max(time.monotonic() - self.generating_since, 1e-6)
            return f"{self.tier}: generating, {self.tokens} tokens, {self.tokens / elapsed:.1f} tokens/s"
        labels = {"loading": "loading the model", "prompt": "processing the prompt", "accepted": "accepted"}
        return f"{self.tier}: {labels.get(self.phase, self.phase)}" if self.tier else labels.get(self.phase, self.phase)


@dataclass(eq=False)
class _Waiter(Generic[T]):
    ready: anyio.Event = field(default_factory=anyio.Event)
    item: T | None = None


class InstancePool(Generic[T]):
    """`acquire` hands out a free instance, or queues the caller (FIFO) while fewer than
    `max_queue` wait; a full queue or a wait past `queue_timeout_s` raises BusyError."""

    def __init__(self, tier: str, items: list[T], max_queue: int, queue_timeout_s: float):
        self.tier = tier
        self._free: deque[T] = deque(items)
        self._waiters: deque[_Waiter[T]] = deque()
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    async def acquire(self, control: CallControl | None = None,
                      on_position: Callable[[int], None] = lambda _: None,
                      affinity: Callable[[T], Any] | None = None) -> T:
        """`affinity` scores the free instances when several are free; the best one is taken."""
        if self._free and not self._waiters:
            if affinity is None or len(self._free) == 1:
                return self._free.popleft()
            best = max(self._free, key=affinity)
            self._free.remove(best)
            return best
        if len(self._waiters) >= self.max_queue:
            raise BusyError(f"tier {self.tier} is busy: all its instances are in use and {len(self._waiters)} "
                            f"calls are already waiting (max_queue {self.max_queue})")
        waiter: _Waiter[T] = _Waiter()
        self._waiters.append(waiter)
        started = time.monotonic()
        timeout = self.queue_timeout_s
        if control is not None and (left := control.seconds_left()) is not None:
            timeout = min(timeout, left)
        try:
            with anyio.move_on_after(timeout):
                while not waiter.ready.is_set():
                    on_position(self._waiters.index(waiter) + 1)
                    with anyio.move_on_after(0.5):
                        await waiter.ready.wait()
        except BaseException:
            self._abandon(waiter)
            raise
        if waiter.item is None:
            self._abandon(waiter)
            raise BusyError(f"tier {self.tier} is busy: waited {time.monotonic() - started:.1f} s in the queue "
                            f"without a free instance (queue_timeout_s {self.queue_timeout_s:g})")
        return waiter.item

    async def acquire_for_call(self, control: CallControl, affinity: Callable[[T], Any]) -> T:
        """`acquire` for a call: its phase is "queued" meanwhile, with its queue position and queue seconds."""
        control.tier, control.phase, control.tokens = self.tier, "queued", 0
        queued = time.perf_counter()
        try:
            return await self.acquire(control, lambda position: setattr(control, "queue_position", position),
                                      affinity=affinity)
        finally:
            control.queue_s = time.perf_counter() - queued

    def _abandon(self, waiter: _Waiter[T]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.item is not None:  # handed an instance just as it gave up: pass it on
            self.release(waiter.item)

    def take_free(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take the free instances that match out of the pool (to unload them); `release` returns them."""
        taken = [item for item in self._free if predicate(item)]
        for item in taken:
            self._free.remove(item)
        return taken

    def release(self, item: T) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.item = item
            waiter.ready.set()
        else:
            self._free.append(item)
