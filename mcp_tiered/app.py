"""The composition root: everything `serve` runs, built from the config in one place (tiers with their
engines and the cloud budget, the ledger, the response cache, metrics, the cost model, the MCP server)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from mcp.server.mcpserver import MCPServer

from .accounting.budget import CloudBudget
from .calls.cache import ResponseCache
from .config.schema import Config
from .accounting.costs import CostModel
from .calls.results import GenerateResult
from .accounting.ledger import Ledger, cloud_spend_since, reading
from .server.metrics import Metrics
from .server.mcp_server import build_server
from .calls.tiers import TierRegistry

log = structlog.get_logger(__name__)


@dataclass
class App:
    config: Config
    tiers: TierRegistry
    metrics: Metrics
    costs: CostModel
    cache: ResponseCache[GenerateResult] | None
    ledger: Ledger | None
    mcp: MCPServer

    def close(self) -> None:
        """What outlives the event loop (the ledger's writer); the tiers free their models when serving ends."""
        if self.ledger is not None:
            self.ledger.close()


def build_app(config: Config) -> App:
    """Raises ConfigError (one sentence naming the key) when a part cannot be set up, such as the ledger."""
    ledger = open_ledger(config) if config.ledger.enabled else None
    tiers = TierRegistry.from_config(config)
    if ledger is not None and tiers.budget is not None:
        restore_cloud_spend(ledger, tiers.budget)
    metrics = Metrics(tiers)
    costs = CostModel.from_config(config)
    cache = ResponseCache(config.cache.max_entries, config.cache.ttl_s) if config.cache.enabled else None
    mcp = build_server(tiers, config.server, metrics, cache, ledger, costs)
    return App(config, tiers, metrics, costs, cache, ledger, mcp)


def open_ledger(config: Config) -> Ledger:
    path = config.ledger.resolved_path
    ledger = Ledger(path, config.ledger.keep_days)
    log.info("ledger", path=str(path))
    return ledger


def restore_cloud_spend(ledger: Ledger, budget: CloudBudget) -> None:
    """The budget counts what earlier runs spent today and this month."""
    day, month = budget.period_starts()
    with reading(ledger.path) as conn:
        budget.restore(cloud_spend_since(conn, day), cloud_spend_since(conn, month))
    log.info("cloud_spend_restored", **{k: round(v, 6) for k, v in budget.spent().items()})
