"""`mcp-tiered whatif` as a table and as a self-contained HTML page (inline SVG, no scripts)."""

from __future__ import annotations

import html
import math
from typing import Any

from .pages import page, table
from .whatif import REFERENCE_CLAIMS, chart_points

COLORS = ["#2a7ab9", "#3a9d5d", "#8e5bb5", "#c0392b", "#b8860b", "#16a085"]


def _span(best: float | None, worst: float | None, fmt: str, suffix: str = "", none: str = "never") -> str:
    """The best–worst range; `none` for a figure neither case has (a break-even never reached)."""
    if best is None and worst is None:
        return none
    if best is None or worst is None:
        known = best if best is not None else worst
        return f"{format(known, fmt)}{suffix} (worst case: never)" if worst is None else f"never–{format(known, fmt)}"
    low, high = sorted((best, worst))
    if format(low, fmt) == format(high, fmt):
        return f"{format(low, fmt)}{suffix}"
    return f"{format(low, fmt)}–{format(high, fmt)}{suffix}"


def _mtok(value: float | None) -> float | None:
    return None if value is None else value / 1e6


COLUMNS = [  # key, label, format, suffix, the text for a figure that is not computed
    ("hardware", "hardware", ",.0f", "", "–"),
    ("operating", "operating / month", ",.0f", "", "–"),
    ("amortization", "amortization / month", ",.0f", "", "–"),
    ("cloud", "cloud / month", ",.0f", "", "–"),
    ("saving", "saving / month", ",.0f", "", "–"),
    ("break_even_months", "break-even (months)", ".1f", "", "never"),
    ("roi_12_months_pct", "ROI after 12 months", ",.0f", " %", "– (no hardware cost)"),
    ("break_even_tokens_per_month", "break-even volume (M tokens / month)", ",.1f", "", "never"),
]


def rows(data: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in data["options"]:
        cells = [row["option"]]
        for key, _, fmt, suffix, none in COLUMNS:
            best, worst = row["best"][key], row["worst"][key]
            if key == "break_even_tokens_per_month":
                best, worst = _mtok(best), _mtok(worst)
            cells.append(_span(best, worst, fmt, suffix, none))
        if data["scenario"] == "reference":
            months, roi = REFERENCE_CLAIMS.get(row["option"], ("", ""))
            cells.append(f"{months} months, {roi}" if months else "")
        out.append(cells)
    return out


def headers(data: dict[str, Any]) -> list[str]:
    return ["option", *(label for _, label, *_ in COLUMNS)] + (["the reference says"] if data["scenario"] == "reference" else [])


def describe(data: dict[str, Any]) -> str:
    t, p, cur = data["traffic"], data["prices"], data["currency"]
    tokens = _span(t["tokens_per_month"]["low"] / 1e6, t["tokens_per_month"]["high"] / 1e6, ",.1f")
    cloud = (f"cloud {_span(p['cloud_per_month']['low'], p['cloud_per_month']['high'], ',.0f')} {cur} / month for "
             "that volume" if p["cloud_per_month"] else
             f"cloud at {p['cloud_input_per_mtok']:g} / {p['cloud_output_per_mtok']:g} {cur} per M input / output tokens")
    return (f"{data['scenario']} scenario, amounts in {cur}: {tokens} M tokens / month ({t['input_share']:.0%} input, "
            f"{t['cloud_share']:.0%} still sent to the cloud), {cloud}, electricity {p['electricity_per_kwh']:g} {cur}/kWh "
            f"at {t['duty']:.0%} duty. Ranges: best–worst case.")


def render_table(data: dict[str, Any]) -> str:
    table = [headers(data), *rows(data)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [describe(data), ""]
    for r in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for note in data["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def _chart(data: dict[str, Any]) -> str:
    worst = [r["worst"]["break_even_months"] for r in data["options"]]
    months = min(max(12, math.ceil(min(max((m for m in worst if m), default=12), 60) * 1.5)), 60)
    series = [(r["option"], chart_points(r, months)) for r in data["options"]]
    top = max(max(max(p[1:]) for p in points) for _, points in series) or 1.0
    w, h, pad, left = 720, 360, 48, 96

    def x(m: float) -> float:
        return left + m / months * (w - left - pad)

    def y(v: float) -> float:
        return h - pad - v / top * (h - 2 * pad)

    def band(points: list, lo: int, hi: int) -> str:
        upper = [f"{x(p[0]):.1f},{y(p[hi]):.1f}" for p in points]
        lower = [f"{x(p[0]):.1f},{y(p[lo]):.1f}" for p in reversed(points)]
        return " ".join(upper + lower)

    shapes, legend = [], []
    cloud_points = series[0][1]
    shapes.append(f'<polygon class="cloud" points="{band(cloud_points, 3, 4)}"/>')
    legend.append('<tspan class="cloud-label">■ cloud for the same tokens</tspan>')
    for i, (name, points) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        shapes.append(f'<polygon class="option" data-option="{html.escape(name)}" fill="{color}" stroke="{color}" '
                      f'points="{band(points, 1, 2)}"/>')
        legend.append(f'<tspan fill="{color}">■ {html.escape(name)}</tspan>')
    ticks = "".join(f'<text x="{x(m):.1f}" y="{h - pad + 18}" text-anchor="middle">{m}</text>'
                    for m in range(0, months + 1, max(1, months // 12)))
    cur = html.escape(data["currency"])
    return f"""<svg id="whatif-chart" viewBox="0 0 {w} {h}" role="img" aria-label="Cumulative cost by month, each option against the cloud">
<rect x="{left}" y="{pad}" width="{w - left - pad}" height="{h - 2 * pad}" class="frame"/>
{''.join(shapes)}{ticks}
<text x="{(left + w - pad) / 2}" y="{h - 10}" text-anchor="middle">months</text>
<text x="{left - 6}" y="{pad + 4}" text-anchor="end">{top:,.0f} {cur}</text>
<text x="{left - 6}" y="{h - pad + 4}" text-anchor="end">0 {cur}</text>
<text x="{left}" y="20">{' '.join(legend)}</text>
</svg>"""


STYLE = """polygon.option{fill-opacity:.25;stroke-width:1.5}
polygon.cloud{fill:#d9622b;fill-opacity:.25;stroke:#d9622b}.cloud-label{fill:#d9622b}"""


def render_html(data: dict[str, Any]) -> str:
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data["notes"])
    return page("mcp-tiered whatif", f"""<h1>Does the hardware pay off?</h1>
<p>{html.escape(describe(data))}</p>
<h2>Cumulative cost by month: each option (hardware, then operating) against the cloud</h2>
{_chart(data)}
{table("options", headers(data), rows(data))}
<ul>{notes}</ul>
""", STYLE)
