"""The composition root: everything `serve` runs, built from the config in one place (tiers with their
engines and the cloud budget, the ledger, the response cache, metrics, the cost model, the MCP server, and
with [store] url the team's store behind the ledger, the budget, the endpoint slots and the cache)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from mcp.server.mcpserver import MCPServer

from .accounting.budget import CloudBudget
from .calls.cache import ResponseCache
from .config.schema import Config
from .accounting.costs import CostModel
from .accounting.ledger import Ledger, cloud_spend_since, principal_use_since
from .auth.limits import TokenQuota
from .errors import ConfigError
from .store.connect import FAILURES as STORE_FAILURES, describe
from .store.reading import reading
from .server.metrics import Metrics
from .server.mcp_server import build_server
from .server.transports import Transport, serve
from .calls.tiers import TierRegistry

log = structlog.get_logger(__name__)


@dataclass
class App:
    config: Config
    tiers: TierRegistry
    metrics: Metrics
    costs: CostModel
    cache: Any
    ledger: Ledger | None
    mcp: MCPServer
    store: Any = None
    """The team's store (store.runtime.Store), or None."""
    quota: TokenQuota | None = None

    async def run(self, transport: Transport, host: str = "127.0.0.1", port: int = 8765) -> None:
        """Serve until the transport ends, with the store open while it does."""
        async with AsyncExitStack() as stack:
            if self.store is not None:
                await stack.enter_async_context(self.store.running())
                if self.ledger is not None and self.quota is not None:
                    await anyio.to_thread.run_sync(restore_store_use, self.config, self.quota)
            await serve(self.mcp, self.tiers, self.metrics, self.config.server, transport, host, port, self.config.auth)

    def close(self) -> None:
        """What outlives the event loop (the ledger's writer); the tiers free their models when serving ends."""
        if self.ledger is not None:
            self.ledger.close()


def build_app(config: Config) -> App:
    """Raises ConfigError (one sentence naming the key) when a part cannot be set up, such as the ledger."""
    if config.store.shared:
        return _build_shared(config)
    ledger = open_ledger(config) if config.ledger.enabled else None
    tiers = TierRegistry.from_config(config)
    quota = TokenQuota()
    if ledger is not None:
        restore_use(ledger.path, tiers.budget, quota)
    metrics = Metrics(tiers, ledger=ledger)
    costs = CostModel.from_config(config)
    cache = ResponseCache(config.cache.max_entries, config.cache.ttl_s) if config.cache.enabled else None
    mcp = build_server(tiers, config.server, metrics, cache, ledger, costs, quota)
    return App(config, tiers, metrics, costs, cache, ledger, mcp, quota=quota)


def _build_shared(config: Config) -> App:
    """The same parts on the team's store: its ledger, its budget, its endpoint slots and (shared_cache) its
    cache. The store's spend needs no restoring: every process reads it from the database."""
    from .store.budget import SharedBudget
    from .store.cache import SharedCache
    from .store.ledger import StoreLedger
    from .store.runtime import Store
    from .store.slots import SharedSlots

    store = Store(config.store)
    ledger = StoreLedger(store, config.ledger.keep_days) if config.ledger.enabled else None
    log.info("store", store=store.where, instance=store.instance, shared_cache=config.store.shared_cache)
    tiers = TierRegistry.from_config(config)
    if tiers.budget is not None:
        tiers.budget = SharedBudget(store, config.budget.daily, config.budget.monthly, config.currency)
    slots = SharedSlots(store)
    for tier in tiers:
        if (share_load := getattr(tier.backend, "share_load", None)) is not None:
            share_load(slots)
    metrics = Metrics(tiers, store, ledger)
    costs = CostModel.from_config(config)
    cache = None
    if config.cache.enabled:
        cache = (SharedCache(store, config.cache.max_entries, config.cache.ttl_s) if config.store.shared_cache
                 else ResponseCache(config.cache.max_entries, config.cache.ttl_s))
    quota = TokenQuota()
    mcp = build_server(tiers, config.server, metrics, cache, ledger, costs, quota)
    return App(config, tiers, metrics, costs, cache, ledger, mcp, store, quota)


def open_ledger(config: Config) -> Ledger:
    path = config.ledger.resolved_path
    ledger = Ledger(path, config.ledger.keep_days)
    log.info("ledger", path=str(path))
    return ledger


def restore_store_use(config: Config, quota: TokenQuota) -> None:
    """Each principal's tokens today, from the team's ledger (the budget's spend is the store's own): once the
    store is up; when it is not, the day's count starts from this process's calls."""
    try:
        restore_use(config.store, None, quota)
    except (ConfigError, *STORE_FAILURES) as exc:
        log.warning("token_use_not_restored", store=describe(config.store), error=type(exc).__name__,
                    action="tokens_per_day counts this process's calls from now on")


def restore_use(source: Any, budget: CloudBudget | None, quota: TokenQuota) -> None:
    """What earlier runs used today and this month, from the ledger (`source`: its path, or the store's
    config): the cloud budget's spend, the team's and each principal's (None: the store keeps it), and each
    principal's tokens today."""
    day, month = CloudBudget(None, None, "").period_starts()
    with reading(source) as conn:
        today, this_month = principal_use_since(conn, day), principal_use_since(conn, month)
        quota.restore({name: tokens for name, (_, tokens) in today.items()})
        if budget is not None:
            by_principal = {name: (today.get(name, (0.0, 0))[0], cloud) for name, (cloud, _) in this_month.items()}
            budget.restore(cloud_spend_since(conn, day), cloud_spend_since(conn, month), by_principal)
            log.info("cloud_spend_restored", **{k: round(v, 6) for k, v in budget.spent().items()})
