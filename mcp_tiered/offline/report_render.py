"""The savings report as a terminal table or a self-contained HTML page (inline SVG chart, no scripts)."""

from __future__ import annotations

import html
from typing import Any

from ..accounting.ledger import visible
from .pages import page, table

COLUMNS = [
    ("tier", "tier", "{}"), ("served", "calls", "{:,}"), ("share", "share", "pct"),
    ("target_share", "target", "pct"), ("tokens", "tokens", "{:,}"),
    ("prompt_tokens_per_s", "prompt tok/s", "{:,.1f}"), ("generation_tokens_per_s", "gen tok/s", "{:,.1f}"),
    ("energy_wh", "energy Wh", "{:,.2f}"), ("local_cost", "local cost", "money"),
    ("cost_per_mtok", "per Mtok", "money"), ("cloud_cost", "cloud cost", "money"),
    ("cloud_equivalent", "on cloud", "money"), ("savings_pct", "saved", "pct100"),
]


def _cell(value: Any, fmt: str) -> str:
    """`value` in a table: "–" for none (not computed), caller text visible() (a client's name)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return visible(value)
    if fmt == "pct":
        return f"{value * 100:.1f} %"
    if fmt == "pct100":
        return f"{value:.1f} %"
    if fmt == "money":
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
    return fmt.format(value)


def _sum(*values: float | None) -> float | None:
    return None if None in values else sum(v or 0.0 for v in values)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for tier in report["tiers"]:
        values = {**tier, "tokens": _sum(tier["prompt_tokens"], tier["completion_tokens"])
                  if "prompt_tokens" in tier else None,
                  "energy_wh": _sum(tier.get("energy_wh"), tier.get("idle_wh"))}
        rows.append([_cell(values.get(key), fmt) for key, _, fmt in COLUMNS])
    return rows


def _summary(report: dict[str, Any]) -> list[tuple[str, str]]:
    cur, t, p = report["currency"], report["totals"], report["projection"]
    period = report["period"]
    lines = [
        ("period", f"{_cell(period['since'], '{}')} to {_cell(period['until'], '{}')} "
                   f"({_cell(period['days'], '{:.2f}')} days)"),
        ("calls", f"{t['calls']:,} ({t['answered']:,} answered, {t['cache_hits']:,} from the cache, "
                  f"{t['errors']:,} errors)"),
        ("cost", f"{_cell(t['total_cost'], 'money')} {cur} = local {_cell(t['local_cost'], 'money')} "
                 f"(energy {_cell(t['energy_cost'], 'money')}, hardware and maintenance "
                 f"{_cell(t['fixed_cost'], 'money')}) + cloud {_cell(t['cloud_cost'], 'money')}"),
        ("cloud only", f"{_cell(t['cloud_only_cost'], 'money')} {cur}"),
        ("savings", f"{_cell(t['savings'], 'money')} {cur}"
                    + ("" if t["savings_pct"] is None else f" ({t['savings_pct']:.1f} %)")),
    ]
    if p is None:
        lines.append(("projection", f"none: {report.get('projection_note') or 'not enough history'}"))
    else:
        be, roi = p["break_even_months"], p["roi_12_months_pct"]
        lines += [
            ("per month", f"{_cell(p['monthly_calls'], '{:,.0f}')} calls; local "
                          f"{_cell(p['monthly_total_cost'], 'money')} {cur} (operating "
                          f"{_cell(p['monthly_operating_cost'], 'money')}) vs cloud only "
                          f"{_cell(p['monthly_cloud_only_cost'], 'money')} {cur}"),
            ("break-even", (p.get("break_even_note") or "never at this rate") if be is None else f"{be:.1f} months "
                           f"(hardware {_cell(p['hardware_cost'], 'money')} {cur})"),
            ("12-month ROI", "–" if roi is None else f"{roi:.0f} %"),
        ]
    return [(key, visible(value)) for key, value in lines]


CLIENT_COLUMNS = [
    ("client", "client (self-reported)", "{}"), ("calls", "calls", "{:,}"), ("answered", "answered", "{:,}"),
    ("tokens", "tokens", "{:,}"), ("token_share", "token share", "pct"), ("energy_cost", "energy", "money"),
    ("cloud_cost", "cloud cost", "money"), ("shared_cost", "shared", "money"), ("total_cost", "cost", "money"),
    ("cloud_equivalent", "on cloud", "money"), ("savings", "saved", "money"),
]


INSTANCE_COLUMNS = [("instance", "server", "{}"), *CLIENT_COLUMNS[1:]]
PRINCIPAL_COLUMNS = [("principal", "principal", "{}"), *CLIENT_COLUMNS[1:]]
GROUPINGS = {"client": ("clients", CLIENT_COLUMNS, "(no clientInfo)"),
             "instance": ("instances", INSTANCE_COLUMNS, "(unnamed)"),
             "principal": ("principals", PRINCIPAL_COLUMNS, "(not recorded)")}
"""`report --by` → the report's key, the table's columns, and what a row without a name shows."""


def _client_rows(report: dict[str, Any], by: str = "client") -> list[list[str]]:
    key_of, columns, unnamed = GROUPINGS[by]
    return [[_cell({**c, by: c[by] or unnamed, "tokens": _sum(c["prompt_tokens"], c["completion_tokens"])}.get(key), fmt)
             for key, _, fmt in columns] for c in report.get(key_of, [])]


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [header, *rows]]


def render_clients_table(report: dict[str, Any], by: str = "client") -> str:
    """`report --by client` (each MCP client, by the name it gives itself), `--by instance` (each server process
    of a team's store) or `--by principal` (who called, as authenticated): calls, tokens and cost (shared costs
    split by tokens)."""
    columns = GROUPINGS[by][1]
    out = _aligned([label for _, label, _ in columns], _client_rows(report, by))
    out += ["", f"(amounts in {report['currency']}; \"shared\": hardware, maintenance and idle power, split by "
                "tokens)"]
    return "\n".join(out) + "\n"


def render_table(report: dict[str, Any]) -> str:
    header = [label for _, label, _ in COLUMNS]
    rows = _rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    out.append("")
    width = max(len(k) for k, _ in _summary(report))
    out += [f"{k.ljust(width)}  {v}" for k, v in _summary(report)]
    out.append(f"(amounts in {report['currency']})")
    return "\n".join(out) + "\n"


def _chart(report: dict[str, Any]) -> str:
    points = (report["projection"] or {}).get("chart") or []
    if any(p["local"] is None or p["cloud_only"] is None for p in points):
        points, why = [], "a monthly figure is not a finite number"
    else:
        why = report.get("projection_note") or "no projection"
    if not points:
        return f'<p class="empty">No break-even chart: {html.escape(why)}.</p>'
    w, h, pad, left = 640, 320, 48, 96
    top = max(max(p["local"], p["cloud_only"]) for p in points) or 1.0
    last = points[-1]["month"] or 1

    def x(month: float) -> float:
        return left + month / last * (w - left - pad)

    def y(value: float) -> float:
        return h - pad - value / top * (h - 2 * pad)

    def line(key: str) -> str:
        return " ".join(f"{x(p['month']):.1f},{y(p[key]):.1f}" for p in points)

    ticks = "".join(f'<text x="{x(m):.1f}" y="{h - pad + 18}" text-anchor="middle">{m}</text>'
                    for m in range(0, last + 1, max(1, last // 12)))
    cur = html.escape(report["currency"])
    be = report["projection"]["break_even_months"]
    marker = ""
    if be is not None and be <= last:
        marker = (f'<line class="break-even" x1="{x(be):.1f}" y1="{pad}" x2="{x(be):.1f}" y2="{h - pad}"/>'
                  f'<text x="{x(be) + 4:.1f}" y="{pad + 14}">break-even {be:.1f} months</text>')
    return f"""<svg id="break-even-chart" viewBox="0 0 {w} {h}" role="img" aria-label="Cumulative cost, local vs cloud only">
<rect x="{left}" y="{pad}" width="{w - left - pad}" height="{h - 2 * pad}" class="frame"/>
<polyline class="local" points="{line('local')}"/>
<polyline class="cloud-only" points="{line('cloud_only')}"/>
{marker}{ticks}
<text x="{(left + w - pad) / 2}" y="{h - 10}" text-anchor="middle">months</text>
<text x="{left - 6}" y="{pad + 4}" text-anchor="end">{top:,.0f} {cur}</text>
<text x="{left - 6}" y="{h - pad + 4}" text-anchor="end">0 {cur}</text>
<g class="legend"><line class="local" x1="{left}" y1="16" x2="{left + 24}" y2="16"/><text x="{left + 30}" y="20">local (hardware + operating)</text>
<line class="cloud-only" x1="{left + 250}" y1="16" x2="{left + 274}" y2="16"/><text x="{left + 280}" y="20">cloud only</text></g>
</svg>"""


STYLE = """polyline,.legend line{fill:none;stroke-width:2.5}.local{stroke:#2a7ab9}.cloud-only{stroke:#d9622b}
.break-even{stroke:#555;stroke-dasharray:4 3}dt{font-weight:600}"""


def render_html(report: dict[str, Any], refresh_s: int | None = None) -> str:
    """`refresh_s`: the page reloads itself that often (the live page at /report)."""
    summary = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _summary(report))
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return page("mcp-tiered savings report", f"""<h1>mcp-tiered savings report</h1>
<h2>Break-even: cumulative cost, local tiers vs the same traffic on the cloud</h2>
{_chart(report)}
<h2>Per tier</h2>
{table("tiers", (label for _, label, _ in COLUMNS), _rows(report))}
<h2>Per principal</h2>
{table("principals", (label for _, label, _ in PRINCIPAL_COLUMNS), _client_rows(report, "principal"))}
<h2>Per client (the name it gives itself)</h2>
{table("clients", (label for _, label, _ in CLIENT_COLUMNS), _client_rows(report))}
<h2>Per server</h2>
{table("instances", (label for _, label, _ in INSTANCE_COLUMNS), _client_rows(report, "instance"))}
<p>Amounts in {html.escape(report['currency'])}.</p>
<h2>Summary</h2><dl>{summary}</dl>
""", STYLE, refresh)
