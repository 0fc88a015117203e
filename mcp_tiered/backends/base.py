"""What every engine behind a tier provides: a local llama.cpp model today, a remote engine or the cloud later."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from .pool import CallControl

FinishReason = Literal["stop", "length", "deadline"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    system: str
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()
    logprobs: bool = True
    """Record each generated token's log-probability (the confidence signal)."""
    stop_on_loop: bool = False
    """Stop generating once the answer's end is a loop (`confidence.is_repetitive`)."""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: tuple[float, ...] = ()
    """Natural-log probability of each generated token under the model, when recorded."""


class Backend(ABC):
    """An engine that answers generation requests for one tier.

    Implementations raise `RequestError` for a request they cannot serve as given and
    `BackendError` for their own failures; both carry one sentence for the caller.
    """

    is_local: ClassVar[bool] = True
    """False for engines that send the prompt off this machine (the cloud)."""

    model_name: str
    """What the result's `model` field reports."""

    @abstractmethod
    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        """`control`, when given, carries the call's deadline and cancellation, and receives its phase."""

    async def run_background(self) -> None:
        """Work the engine does while the server runs (preloading, unloading idle models); returns
        when there is none. Cancelled at shutdown."""

    @property
    def loaded(self) -> bool:
        return True

    async def aclose(self) -> None:
        """Free what the engine holds (model memory, connections)."""
