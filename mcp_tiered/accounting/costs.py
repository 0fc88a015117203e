"""The cost model of `[costs]`: what a call's energy costs, what the cloud charges, what the hardware costs
per month. The ledger prices each hop with it; `mcp-tiered report` adds the fixed costs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .budget import cost
from ..config.schema import Config, TierCostConfig, TokenPrices

# Claude Sonnet's list price per million tokens, for the cloud-equivalent when no tier is billed per token.
DEFAULT_CLOUD_PRICES = TokenPrices()
NO_COSTS = TierCostConfig()


@dataclass(frozen=True)
class CostModel:
    currency: str = "USD"
    electricity_per_kwh: float = 0.0
    cloud_input_per_mtok: float = DEFAULT_CLOUD_PRICES.input_price_per_mtok
    cloud_output_per_mtok: float = DEFAULT_CLOUD_PRICES.output_price_per_mtok
    """Prices for what the traffic would have cost on the cloud."""
    token_prices: dict[str, TokenPrices] = field(default_factory=dict)
    """The tiers billed per token (Capabilities.billing), each at its own prices."""
    cloud_target_share: float | None = None
    tiers: dict[str, TierCostConfig] = field(default_factory=dict)
    """The local tiers' [costs.tiers.<name>] (or none)."""
    target_shares: dict[str, float] = field(default_factory=dict)
    """Tiers billed per token with a [costs.tiers.<name>] target_share."""

    @classmethod
    def from_config(cls, config: Config) -> CostModel:
        from ..engines import capabilities_of

        costs = config.costs
        billed = {name: TokenPrices(input_price_per_mtok=tier.input_price_per_mtok,
                                    output_price_per_mtok=tier.output_price_per_mtok)
                  for name, tier in config.tiers.items() if capabilities_of(tier).billing == "tokens"}
        # "The cloud" of the comparison is the strongest cloud tier: the one of the highest output price.
        strongest = max(billed.values(), key=lambda p: p.output_price_per_mtok, default=DEFAULT_CLOUD_PRICES)
        return cls(
            currency=config.currency,
            electricity_per_kwh=costs.electricity_per_kwh,
            cloud_input_per_mtok=strongest.input_price_per_mtok if costs.cloud_input_price_per_mtok is None
            else costs.cloud_input_price_per_mtok,
            cloud_output_per_mtok=strongest.output_price_per_mtok if costs.cloud_output_price_per_mtok is None
            else costs.cloud_output_price_per_mtok,
            token_prices=billed,
            cloud_target_share=costs.cloud_target_share,
            tiers={name: costs.tiers.get(name, NO_COSTS) for name in config.tiers if name not in billed},
            target_shares={name: share for name in billed
                           if (share := costs.tiers.get(name, NO_COSTS).target_share) is not None},
        )

    def prices(self, tier: str) -> TokenPrices:
        """The prices of `tier`, billed per token (those of the default cloud for a tier the config lacks)."""
        return self.token_prices.get(tier, DEFAULT_CLOUD_PRICES)

    def target_share(self, tier: str) -> float | None:
        """The share of calls `tier` is meant to answer: [costs.tiers.<name>], else, for the only tier billed
        per token, [costs] cloud_target_share."""
        if tier not in self.token_prices:
            return self.tier(tier).target_share
        if tier in self.target_shares:
            return self.target_shares[tier]
        return self.cloud_target_share if len(self.token_prices) == 1 else None

    def tier(self, name: str) -> TierCostConfig:
        return self.tiers.get(name, NO_COSTS)

    def energy_wh(self, tier: str, generation_s: float) -> float:
        return generation_s * self.tier(tier).power_watts / 3600

    def energy_cost(self, wh: float) -> float:
        return wh / 1000 * self.electricity_per_kwh

    def cloud_equivalent(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.cloud_input_per_mtok + completion_tokens * self.cloud_output_per_mtok) / 1e6

    def cloud_billed(self, tier: str, prompt_tokens: int, completion_tokens: int) -> float:
        """What `tier`, billed per token, charges for a hop."""
        return cost(self.prices(tier), prompt_tokens, completion_tokens)

    def monthly_fixed(self, tier: str) -> float:
        """Amortization and maintenance of the tier's hardware, per month."""
        costs = self.tier(tier)
        return costs.hardware_cost / costs.amortization_months + costs.maintenance_per_month
