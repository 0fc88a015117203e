"""The planner applied to a config (plan.py does the arithmetic): each tier's shape, need and verdict, and
the table `mcp-tiered plan` and `check` print."""

from __future__ import annotations


from ..config.schema import Config
from ..engines import PlanInput, engine_of


def tier_plans(config: Config, gpus: list, cpu_bandwidth: float, remote: bool = False) -> list[dict]:
    """Each tier's shape, need and verdict (plan.py), or why it has none. `remote`: read the header of an
    `hf:` model that is not downloaded from the hub (a few MB, not the weights)."""
    given = PlanInput(gpus, cpu_bandwidth, remote)
    rows = []
    for name, tier in config.tiers.items():
        engine = engine_of(tier)
        rows.append(engine.plan(name, tier, given) if engine.plan is not None
                    else {"tier": name, "engine": tier.engine, "problem": engine.plan_note})
    return rows


def gpu_line(gpus: list, source: str, why: str | None) -> str:
    if not gpus:
        return f"GPUs: none found ({why}); `mcp-tiered plan --gpu SPEC` plans for one"
    parts = [f"{g.name} ({g.memory / 1e9:.0f} GB" + (f", {g.bandwidth / 1e9:.0f} GB/s)" if g.bandwidth else ")")
             for g in gpus]
    return f"GPUs ({source}): " + " + ".join(parts)


def plan_table(rows: list[dict]) -> str:
    gib = lambda n: f"{n / (1 << 30):.2f}"  # noqa: E731
    header = (f"{'tier':<10} {'model':<34} {'params':>7} {'quant':<7} {'layers':>6} {'context':>11} "
              f"{'weights':>8} {'KV':>7} {'compute':>8} {'total GiB':>9} {'n_gpu_layers':>12} {'≤tok/s':>7}  verdict")
    lines = [header]
    for row in rows:
        if "problem" in row:
            lines.append(f"{row['tier']:<10} {row['problem']}")
            continue
        shape, need = row["shape"], row["need"]
        params = shape["parameters"]
        size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
        model = f"{shape['architecture']} {shape['name']}"[:34]
        context = f"{row['n_ctx']}×{row['slots']}" + (f" ×{row['copies']}" if row["copies"] > 1 else "")
        kv = need["kv_gpu"] + need["kv_ram"]
        compute = need["compute_gpu"] + need["compute_ram"]
        total = row["copies"] * (need["gpu"] + need["ram"])
        speed = f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] else "?"
        lines.append(f"{row['tier']:<10} {model:<34} {size:>7} {shape['quantization']:<7} {shape['layers']:>6} "
                     f"{context:>11} {gib(need['weights_gpu'] + need['weights_ram']):>8} {gib(kv):>7} "
                     f"{gib(compute):>8} {gib(total):>9} {row['n_gpu_layers']:>12} {speed:>7}  {row['verdict']}")
    return "\n".join(lines)
