"""`mcp-tiered whatif`: would this hardware pay off against the cloud, and from what volume on?

For each option (a box that runs the local tiers) and a traffic profile (tokens a month, the share of input
tokens, the share still sent to the cloud), with every input a low–high range:

    operating / month   = energy (watts × 730.5 h × duty × electricity price) + maintenance
                          + the cloud bill of the share that still escalates
    cloud / month       = the same tokens on the cloud (--cloud-per-month, or the cloud prices)
    saving / month      = cloud − operating
    break-even (months) = hardware ÷ saving                       (none when saving ≤ 0)
    ROI after 12 months = (12 × saving − hardware) ÷ hardware
    break-even volume   = tokens / month at which the cloud bill equals operating + hardware ÷ amortization
                          months: above it the option costs less than the cloud for the same tokens

Ranges propagate to a best case (cheapest hardware and operation, dearest cloud) and a worst case (the other
way round); every figure is given for both. Pure arithmetic: the CLI gathers the inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

HOURS_PER_MONTH = 730.5


@dataclass(frozen=True)
class Span:
    low: float
    high: float

    @classmethod
    def of(cls, value: float | tuple[float, float]) -> Span:
        return cls(*value) if isinstance(value, tuple) else cls(value, value)


@dataclass(frozen=True)
class Option:
    name: str
    hardware: Span
    watts: Span
    maintenance: Span
    """Per month, besides energy."""
    amortization_months: float = 36.0
    operating: Span | None = None
    """Given as a whole (energy and maintenance) by a scenario that states it; else computed."""


# The reference analysis the product was specified from (about 50 M tokens a month; EUR). Its "monthly
# totals" (energy and maintenance together) are each option's operating cost as given; its power draw is
# kept beside them (24/7 at 0.30 EUR/kWh it would be 77-99 of the 13B box's 200-300 a month).
REFERENCE_CURRENCY = "EUR"
REFERENCE = [
    Option("13B", Span(2500, 3000), Span(350, 450), Span(0, 0), operating=Span(200, 300)),
    Option("20B", Span(3500, 4500), Span(450, 600), Span(0, 0), operating=Span(300, 400)),
    Option("34B", Span(6000, 8000), Span(650, 850), Span(0, 0), operating=Span(400, 500)),
    Option("70B", Span(15000, 25000), Span(1000, 1500), Span(0, 0), operating=Span(600, 800)),
]
REFERENCE_CLAIMS = {  # what the reference says; whatif puts its own numbers beside them
    "13B": ("2–3", "400–500 %"), "20B": ("3–4", "300–400 %"), "34B": ("4–6", "200–300 %"), "70B": ("10–15", "50–100 %"),
}


@dataclass(frozen=True)
class Traffic:
    tokens_per_month: Span
    input_share: float = 0.75
    """Of all tokens, the share that is input (prompt); the rest is output."""
    cloud_share: float = 0.0
    """Of all tokens, the share that still goes to the cloud (escalations)."""
    duty: float = 1.0
    """Share of the hours the box draws its full power (the rest: nothing extra is counted)."""


@dataclass(frozen=True)
class Prices:
    electricity_per_kwh: float
    cloud_input_per_mtok: float
    cloud_output_per_mtok: float
    cloud_per_month: Span | None = None
    """The cloud bill for the whole volume, when given instead of prices."""

    def cloud_per_token(self, traffic: Traffic) -> float:
        """At the cloud prices, for the traffic's mix of input and output tokens."""
        return (traffic.input_share * self.cloud_input_per_mtok
                + (1 - traffic.input_share) * self.cloud_output_per_mtok) / 1e6


@dataclass(frozen=True)
class Case:
    hardware: float
    operating: float
    amortization: float
    cloud: float
    saving: float
    break_even_months: float | None
    roi_12_months_pct: float | None
    """None without a hardware cost: there is nothing to return on."""
    break_even_tokens_per_month: float | None


def _case(option: Option, traffic: Traffic, prices: Prices, best: bool) -> Case:
    pick = (lambda s: s.low) if best else (lambda s: s.high)
    other = (lambda s: s.high) if best else (lambda s: s.low)
    tokens = other(traffic.tokens_per_month)
    if prices.cloud_per_month is not None:  # a bill for the volume: what a token costs follows from it
        cloud = other(prices.cloud_per_month)
        per_token = cloud / tokens if tokens else 0.0
    else:
        per_token = prices.cloud_per_token(traffic)
        cloud = per_token * tokens
    if option.operating is not None:
        own = pick(option.operating)
    else:
        energy = pick(option.watts) / 1000 * HOURS_PER_MONTH * traffic.duty * prices.electricity_per_kwh
        own = energy + pick(option.maintenance)
    operating = own + traffic.cloud_share * cloud
    hardware = pick(option.hardware)
    amortization = hardware / option.amortization_months
    saving = cloud - operating
    # Volume at which the cloud bill equals the option's cost with its hardware amortized; the escalated
    # share's bill grows with the volume on both sides, so only the local share counts.
    local_per_token = per_token * (1 - traffic.cloud_share)
    volume = (own + amortization) / local_per_token if local_per_token > 0 else None
    return Case(hardware, operating, amortization, cloud, saving, hardware / saving if saving > 0 else None,
                (12 * saving - hardware) / hardware * 100 if hardware else None, volume)


def evaluate(options: list[Option], traffic: Traffic, prices: Prices) -> list[dict]:
    """Per option: its inputs and the best and worst case."""
    return [{"option": o.name, "amortization_months": o.amortization_months,
             "best": asdict(_case(o, traffic, prices, True)), "worst": asdict(_case(o, traffic, prices, False))}
            for o in options]


def chart_points(row: dict, months: int) -> list[tuple[int, float, float, float, float]]:
    """(month, option best, option worst, cloud best, cloud worst): cumulative cost by month."""
    best, worst = row["best"], row["worst"]
    return [(m, best["hardware"] + m * best["operating"], worst["hardware"] + m * worst["operating"],
             m * best["cloud"], m * worst["cloud"]) for m in range(months + 1)]
