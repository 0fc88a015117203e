"""The cost model of `[costs]`: what a call's energy costs, what the cloud charges, what the hardware costs
per month. The ledger prices each hop with it; `mcp-tiered report` adds the fixed costs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config, TierCostConfig

# Claude Sonnet's list price per million tokens, for the cloud-equivalent when there is no [cloud] section.
DEFAULT_CLOUD_PRICES = (3.0, 15.0)
NO_COSTS = TierCostConfig()


@dataclass(frozen=True)
class CostModel:
    currency: str = "USD"
    electricity_per_kwh: float = 0.0
    cloud_input_per_mtok: float = DEFAULT_CLOUD_PRICES[0]
    cloud_output_per_mtok: float = DEFAULT_CLOUD_PRICES[1]
    """Prices for what the traffic would have cost on the cloud."""
    cloud_billed_prices: tuple[float, float] | None = None
    """Prices the [cloud] tier is billed at; None without a [cloud] section."""
    cloud_target_share: float | None = None
    tiers: dict[str, TierCostConfig] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> CostModel:
        costs, cloud = config.costs, config.cloud
        billed = None if cloud is None else (cloud.input_price_per_mtok, cloud.output_price_per_mtok)
        input_price, output_price = billed or DEFAULT_CLOUD_PRICES
        return cls(
            currency=costs.currency or (cloud.currency if cloud else "USD"),
            electricity_per_kwh=costs.electricity_per_kwh,
            cloud_input_per_mtok=input_price if costs.cloud_input_price_per_mtok is None
            else costs.cloud_input_price_per_mtok,
            cloud_output_per_mtok=output_price if costs.cloud_output_price_per_mtok is None
            else costs.cloud_output_price_per_mtok,
            cloud_billed_prices=billed,
            cloud_target_share=costs.cloud_target_share,
            tiers={name: costs.tiers.get(name, NO_COSTS) for name in config.tiers},
        )

    def tier(self, name: str) -> TierCostConfig:
        return self.tiers.get(name, NO_COSTS)

    def energy_wh(self, tier: str, generation_s: float) -> float:
        return generation_s * self.tier(tier).power_watts / 3600

    def energy_cost(self, wh: float) -> float:
        return wh / 1000 * self.electricity_per_kwh

    def cloud_equivalent(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.cloud_input_per_mtok + completion_tokens * self.cloud_output_per_mtok) / 1e6

    def cloud_billed(self, prompt_tokens: int, completion_tokens: int) -> float:
        input_price, output_price = self.cloud_billed_prices or DEFAULT_CLOUD_PRICES
        return (prompt_tokens * input_price + completion_tokens * output_price) / 1e6

    def monthly_fixed(self, tier: str) -> float:
        """Amortization and maintenance of the tier's hardware, per month."""
        costs = self.tier(tier)
        return costs.hardware_cost / costs.amortization_months + costs.maintenance_per_month
