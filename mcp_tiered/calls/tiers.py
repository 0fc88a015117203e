"""The tiers declared in models.toml, each with its backend and escalation policy."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from ..server import memory
from ..backends import Backend
from ..backends.base import Capabilities
from ..accounting.budget import CloudBudget
from ..config.schema import Config, EscalationConfig, TierFields
from ..engines import capabilities_of, engine_backend, engine_of

TOOL_PREFIX = "generate_"

BackendFactory = Callable[[str, TierFields], Backend]


class Policy(EscalationConfig):
    """A tier's escalation policy: the [escalation] settings updated with the tier's own, and where it hands on."""

    escalate_to: str | None = None
    local_only: bool = False
    verify_with: str | None = None

    @classmethod
    def for_tier(cls, config: Config, tier: TierFields) -> Policy:
        return cls(**config.escalation.updated(tier).model_dump(), escalate_to=tier.escalate_to,
                   local_only=tier.local_only, verify_with=tier.verify_with)


@dataclass(frozen=True)
class Tier:
    name: str
    backend: Backend
    description: str
    max_tokens: int
    temperature: float
    policy: Policy = Policy()
    n_ctx: int | None = None
    """The context window a call gets, where the config states it."""

    @property
    def tool_name(self) -> str:
        return TOOL_PREFIX + self.name

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities


@dataclass(frozen=True)
class Unavailable:
    """A configured tier the server leaves out (its engine's `unavailable`), and what its engine would do."""

    reason: str
    capabilities: Capabilities


class TierRegistry:
    """The tiers in the order models.toml declares them (the [cloud] shorthand's last), less those left out."""

    def __init__(self, tiers: list[Tier], *, unavailable: Mapping[str, Unavailable] | None = None,
                 budget: CloudBudget | None = None):
        self._tiers = {tier.name: tier for tier in tiers}
        self.unavailable = dict(unavailable or {})
        """The configured tiers left out, and why (an API key not set)."""
        self.budget = budget

    @classmethod
    def from_config(cls, config: Config, backend_factory: BackendFactory | None = None,
                    environ: Mapping[str, str] = os.environ) -> TierRegistry:
        def build(name: str, tc: TierFields) -> Backend:
            return backend_factory(name, tc) if backend_factory else engine_backend(name, tc, environ)

        tiers, unavailable = [], {}
        for name, tc in config.tiers.items():
            if why := engine_of(tc).unavailable(name, tc, environ):
                unavailable[name] = Unavailable(why, capabilities_of(tc))
                continue
            tiers.append(Tier(name, build(name, tc), tc.description, tc.max_tokens, tc.temperature,
                              Policy.for_tier(config, tc), tc.n_ctx))
        billed_per_token = any(tier.capabilities.billing == "tokens" for tier in tiers)
        budget = CloudBudget(config.budget.daily, config.budget.monthly, config.currency) if billed_per_token else None
        return cls(tiers, unavailable=unavailable, budget=budget)

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._tiers.values())

    def __len__(self) -> int:
        return len(self._tiers)

    def __contains__(self, name: object) -> bool:
        return name in self._tiers

    def get(self, name: str) -> Tier:
        return self._tiers[name]

    def chain(self, name: str) -> list[str]:
        """`name` and the tiers it escalates to, in order; the last may be one left out (`unavailable`)."""
        names = [name]
        while name in self._tiers and (name := self._tiers[name].policy.escalate_to) is not None:
            names.append(name)
        return names

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TierRegistry]:
        """While the server runs: each backend's background work (preloading, idle unloading) and the
        heap trimming; at the end, every model is freed. Wraps the whole transport, not an MCP session
        (an HTTP server has many sessions, and models outlive each)."""
        try:
            async with anyio.create_task_group() as background:
                for tier in self:
                    background.start_soon(tier.backend.run_background)
                background.start_soon(memory.trim_periodically)
                try:
                    yield self
                finally:
                    background.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        for tier in self:
            await tier.backend.aclose()
