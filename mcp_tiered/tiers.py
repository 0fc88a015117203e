"""The tiers declared in models.toml, each with the backend that serves it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .backends import Backend
from .backends.llama import LlamaBackend
from .config import Config, TierConfig

TOOL_PREFIX = "generate_"

BackendFactory = Callable[[str, TierConfig], Backend]


@dataclass(frozen=True)
class Tier:
    name: str
    config: TierConfig
    backend: Backend

    @property
    def tool_name(self) -> str:
        return TOOL_PREFIX + self.name


class TierRegistry:
    """Tiers in the order models.toml declares them."""

    def __init__(self, tiers: list[Tier]):
        self._tiers = {tier.name: tier for tier in tiers}

    @classmethod
    def from_config(cls, config: Config, backend_factory: BackendFactory = LlamaBackend) -> TierRegistry:
        return cls([Tier(name, tier, backend_factory(name, tier)) for name, tier in config.tiers.items()])

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._tiers.values())

    def __len__(self) -> int:
        return len(self._tiers)

    def get(self, name: str) -> Tier:
        return self._tiers[name]

    async def aclose(self) -> None:
        for tier in self:
            await tier.backend.aclose()
