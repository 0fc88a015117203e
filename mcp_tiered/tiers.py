"""The tiers declared in models.toml (and the cloud tier), each with its backend and escalation policy."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from . import memory
from .backends import Backend
from .backends.base import Capabilities
from .engines import engine_backend
from .budget import CloudBudget
from .confidence import VerifyStatistic
from .config import CLOUD, AnyTier, ConfidenceStatistic, Config

TOOL_PREFIX = "generate_"

BackendFactory = Callable[[str, AnyTier], Backend]


@dataclass(frozen=True)
class Policy:
    """A tier's escalation policy: the [escalation] defaults with the tier's own overrides."""

    escalate_to: str | None = None
    local_only: bool = False
    min_confidence: float = 0.0
    statistic: ConfidenceStatistic = "mean"
    quantile: float = 0.1
    escalate_on_truncated: bool = False
    escalate_on_repetition: bool = True
    verify_with: str | None = None
    verify_statistic: VerifyStatistic = "top_share"
    verify_quantile: float = 0.1
    min_verification: float = 0.5
    verify_below: float | None = None

    @classmethod
    def for_tier(cls, config: Config, tier: AnyTier) -> Policy:
        defaults = config.escalation

        def pick(own, default):  # noqa: ANN001, ANN202
            return default if own is None else own

        return cls(
            escalate_to=tier.escalate_to,
            local_only=tier.local_only,
            min_confidence=pick(tier.min_confidence, defaults.min_confidence),
            statistic=pick(tier.confidence, defaults.confidence),
            quantile=pick(tier.confidence_quantile, defaults.confidence_quantile),
            escalate_on_truncated=pick(tier.escalate_on_truncated, defaults.escalate_on_truncated),
            escalate_on_repetition=pick(tier.escalate_on_repetition, defaults.escalate_on_repetition),
            verify_with=tier.verify_with,
            verify_statistic=pick(tier.verify_statistic, defaults.verify_statistic),
            verify_quantile=pick(tier.verify_quantile, defaults.verify_quantile),
            min_verification=pick(tier.min_verification, defaults.min_verification),
            verify_below=pick(tier.verify_below, defaults.verify_below),
        )


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


class TierRegistry:
    """Local tiers in the order models.toml declares them, then the cloud tier when enabled."""

    def __init__(self, tiers: list[Tier], *, cloud_disabled: str | None = None, budget: CloudBudget | None = None):
        self._tiers = {tier.name: tier for tier in tiers}
        self.cloud_disabled = cloud_disabled
        """Why a configured cloud tier is not available (no API key), or None."""
        self.budget = budget

    @classmethod
    def from_config(cls, config: Config, backend_factory: BackendFactory = engine_backend,
                    environ: Mapping[str, str] = os.environ) -> TierRegistry:
        tiers = [
            Tier(name, backend_factory(name, tc), tc.description, tc.max_tokens, tc.temperature,
                 Policy.for_tier(config, tc), tc.n_ctx)
            for name, tc in config.tiers.items()
        ]
        cloud_disabled = budget = None
        if config.cloud is not None:
            if key := environ.get(config.cloud.api_key_env):
                from .backends.cloud import CloudBackend

                # The last tier: its answers are final, and Claude does not loop like a small model.
                tiers.append(Tier(CLOUD, CloudBackend(config.cloud, key), config.cloud.description,
                                  config.cloud.max_tokens, 1.0, Policy(escalate_on_repetition=False)))
                budget = CloudBudget(config.cloud)
            else:
                cloud_disabled = f"the cloud tier is disabled because ${config.cloud.api_key_env} is not set"
        return cls(tiers, cloud_disabled=cloud_disabled, budget=budget)

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._tiers.values())

    def __len__(self) -> int:
        return len(self._tiers)

    def __contains__(self, name: object) -> bool:
        return name in self._tiers

    def get(self, name: str) -> Tier:
        return self._tiers[name]

    def chain(self, name: str) -> list[str]:
        """`name` and the tiers it escalates to, in order; "cloud" may be named while disabled."""
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
