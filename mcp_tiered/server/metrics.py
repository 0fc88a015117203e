"""Prometheus metrics (prometheus-client: the exposition format and histograms without hand-written code)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..accounting.ledger import HopRecord
from ..calls.tiers import TierRegistry

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class _LiveState(Collector):
    """Values read when scraped: queue depth per tier, models loaded, cloud spend; with a store, whether it
    answers and the ledger rows waiting in memory for it."""

    def __init__(self, tiers: TierRegistry, store: Any = None, ledger: Any = None):
        self.tiers, self.store, self.ledger = tiers, store, ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("mcp_tiered_queue_depth", "Calls waiting for a free instance", labels=["tier"])
        loaded = GaugeMetricFamily("mcp_tiered_model_loaded", "1 while the tier's model is in memory", labels=["tier"])
        for tier in self.tiers:
            pool = getattr(tier.backend, "pool", None)
            depth.add_metric([tier.name], pool.queue_depth if pool is not None else 0)
            loaded.add_metric([tier.name], 1 if tier.backend.loaded else 0)
        yield depth
        yield loaded
        if self.tiers.budget is not None:
            spend = GaugeMetricFamily("mcp_tiered_cloud_spend", "Cloud spend in the configured currency",
                                      labels=["period", "currency"])
            for period, value in self.tiers.budget.spent().items():
                spend.add_metric([period, self.tiers.budget.currency], value)
            yield spend
        if self.store is not None:
            up = GaugeMetricFamily("mcp_tiered_store_up", "1 while the team's store answers ([store] url)")
            up.add_metric([], 0 if self.store.down else 1)
            yield up
        if self.ledger is not None:
            yield GaugeMetricFamily("mcp_tiered_ledger_unwritten", "Ledger rows kept in memory because the ledger "
                                    "could not be written", value=self.ledger.unwritten)


class Metrics:
    def __init__(self, tiers: TierRegistry, store: Any = None, ledger: Any = None):
        self.registry = CollectorRegistry()
        self.calls = Counter("mcp_tiered_calls", "Tool calls by called tier and outcome", ["tier", "outcome"],
                             registry=self.registry)
        self.tokens = Counter("mcp_tiered_tokens", "Tokens by serving tier", ["tier", "kind"], registry=self.registry)
        self.latency = Histogram("mcp_tiered_call_latency_seconds", "Server-side call latency by called tier",
                                 ["tier"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.escalations = Counter("mcp_tiered_escalations", "Escalations by reason",
                                   ["from_tier", "to_tier", "reason"], registry=self.registry)
        self.verifications = Counter("mcp_tiered_verifications", "Readings of a tier's answers by its verifier",
                                     ["tier", "by", "verdict"], registry=self.registry)
        self.generation = Counter("mcp_tiered_generation_seconds", "Seconds the tier's engine worked on calls",
                                  ["tier"], registry=self.registry)
        self.energy = Counter("mcp_tiered_energy_wh", "Energy of generation by tier ([costs] power_watts)",
                              ["tier"], registry=self.registry)
        self.cost = Counter("mcp_tiered_cost", "Energy cost of local tiers and billed cost of the tiers billed per token",
                            ["tier", "kind", "currency"], registry=self.registry)
        self.registry.register(_LiveState(tiers, store, ledger))
        self._billed_per_token = {tier.name for tier in tiers if tier.capabilities.billing == "tokens"}

    def record(self, tier: str, outcome: str, latency_s: float, result: object | None = None) -> None:
        self.calls.labels(tier, outcome).inc()
        self.latency.labels(tier).observe(latency_s)
        if result is not None:
            served_by = result.served_by  # type: ignore[attr-defined]
            self.tokens.labels(served_by, "prompt").inc(result.usage.prompt_tokens)  # type: ignore[attr-defined]
            self.tokens.labels(served_by, "completion").inc(result.usage.completion_tokens)  # type: ignore[attr-defined]
            for hop in result.escalations:  # type: ignore[attr-defined]
                self.escalations.labels(hop.from_, hop.to, hop.reason).inc()
            for reading in result.verifications:  # type: ignore[attr-defined]
                self.verifications.labels(reading.tier, reading.by, "kept" if reading.kept else "rejected").inc()

    def record_hops(self, hops: Iterable[HopRecord], currency: str) -> None:
        for hop in hops:
            self.generation.labels(hop.tier).inc(hop.generation_s)
            if hop.tier in self._billed_per_token:
                self.cost.labels(hop.tier, "cloud", currency).inc(hop.cloud_cost)
            else:
                self.energy.labels(hop.tier).inc(hop.energy_wh)
                self.cost.labels(hop.tier, "energy", currency).inc(hop.local_cost)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
