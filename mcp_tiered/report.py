"""The savings report: what the ledger says the tiers did and cost, against the same traffic on the cloud.

The period runs from `since` (or the start of the first recorded call) to the end of the last recorded
call, so the same ledger always gives the same numbers (the CLI and the `tiered://report` resource agree).

Per local tier: energy = generation seconds x power_watts (stored per hop) plus idle_watts for the rest of
the period; energy cost at electricity_per_kwh; fixed cost = months x (hardware_cost / amortization_months
+ maintenance_per_month). Cloud-only equivalent = every answered call's tokens at the cloud prices.
Break-even = hardware_cost / (cloud-only per month - operating cost per month), operating cost being
energy, maintenance and cloud spend; 12-month ROI = (12 x that monthly saving - hardware_cost) / hardware_cost.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import CLOUD
from .costs import CostModel
from .ledger import reading

MONTH_S = 30.4375 * 86400
MIN_HISTORY_S = 86400.0
"""Shorter histories give no monthly projection: a rate measured over minutes or hours says little about a
month (a morning's test calls are not a month's traffic)."""


def history_problem(span_s: float) -> str | None:
    """Why a history of `span_s` seconds is too short to project a month from, or None."""
    if span_s >= MIN_HISTORY_S:
        return None
    return (f"the ledger covers {span_s / 86400:.2f} days of calls; monthly figures need at least "
            f"{MIN_HISTORY_S / 86400:g} day of history")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


# Served calls by the tier that answered (cache hits apart) and per-tier hop sums: the report reads
# aggregates, never the rows, so its cost does not grow with the ledger's size in Python.
SERVED = """SELECT served_by, cache_hit, COUNT(*) AS calls, TOTAL(prompt_tokens) AS prompt_tokens,
    TOTAL(completion_tokens) AS completion_tokens FROM calls WHERE outcome IN ('ok', 'cache_hit') {since}
    GROUP BY served_by, cache_hit"""
HOPS = """SELECT tier, COUNT(*) AS hops, TOTAL(prompt_tokens) AS prompt_tokens,
    TOTAL(completion_tokens) AS completion_tokens, TOTAL(generation_s) AS generation_s, {prompt_s} AS prompt_s,
    TOTAL(energy_wh) AS energy_wh, TOTAL(local_cost) AS local_cost, TOTAL(cloud_cost) AS cloud_cost,
    TOTAL(outcome = 'escalated') AS escalated FROM hops {where} GROUP BY tier ORDER BY MIN(id)"""
PERIOD = """SELECT COUNT(*) AS calls, MIN(time - latency_s) AS start, MAX(time) AS end,
    TOTAL(outcome IN ('error', 'busy')) AS errors FROM calls {where}"""
CLIENTS = """SELECT client, COUNT(*) AS calls, TOTAL(outcome IN ('ok', 'cache_hit')) AS answered,
    TOTAL(CASE WHEN outcome IN ('ok', 'cache_hit') THEN prompt_tokens END) AS prompt_tokens,
    TOTAL(CASE WHEN outcome IN ('ok', 'cache_hit') THEN completion_tokens END) AS completion_tokens,
    TOTAL(local_cost) AS energy_cost, TOTAL(cloud_cost) AS cloud_cost FROM calls {where} GROUP BY client
    ORDER BY calls DESC"""


def build_report(conn: sqlite3.Connection, costs: CostModel, since: float | None = None) -> dict[str, Any]:
    args = () if since is None else (since,)
    where, also = ("", "") if since is None else ("WHERE time >= ?", "AND time >= ?")
    period = conn.execute(PERIOD.format(where=where), args).fetchone()
    served = conn.execute(SERVED.format(since=also), args).fetchall()
    columns = {row[1] for row in conn.execute("PRAGMA table_info(hops)")}
    prompt_s = "TOTAL(prompt_s)" if "prompt_s" in columns else "0.0"  # a ledger the server has not upgraded yet
    hops = {h["tier"]: h for h in conn.execute(HOPS.format(where=where, prompt_s=prompt_s), args)}
    start = since if since is not None else period["start"]
    end = period["end"] if period["end"] is not None else start
    duration_s = max((end or 0) - (start or 0), 0.0)
    months = duration_s / MONTH_S

    answered = sum(r["calls"] for r in served)
    names = list(costs.tiers)
    for name in [*hops, *[CLOUD] * bool(costs.cloud_billed_prices)]:
        if name not in names:
            names.append(name)
    tiers = [_tier_row(name, hops.get(name), [r for r in served if r["served_by"] == name and not r["cache_hit"]],
                       answered, costs, duration_s, months) for name in names]
    cached = [r for r in served if r["cache_hit"]]
    tiers.append({"tier": "cache", "kind": "cache", "served": sum(r["calls"] for r in cached),
                  "share": _ratio(sum(r["calls"] for r in cached), answered),
                  "cloud_equivalent": _equivalent(costs, cached)})

    local = [t for t in tiers if t["kind"] == "local"]
    energy_cost = sum(t["energy_cost"] for t in local)
    local_cost = sum(t["local_cost"] for t in local)
    cloud_cost = sum(h["cloud_cost"] for h in hops.values())
    cloud_only = _equivalent(costs, served)
    total = local_cost + cloud_cost
    totals = {
        "calls": period["calls"], "answered": answered, "cache_hits": sum(r["calls"] for r in cached),
        "errors": int(period["errors"]),
        "prompt_tokens": int(sum(r["prompt_tokens"] for r in served)),
        "completion_tokens": int(sum(r["completion_tokens"] for r in served)),
        "energy_wh": sum(t["energy_wh"] + t["idle_wh"] for t in local),
        "energy_cost": energy_cost, "fixed_cost": sum(t["fixed_cost"] for t in local),
        "local_cost": local_cost, "cloud_cost": cloud_cost, "total_cost": total,
        "cloud_only_cost": cloud_only, "savings": cloud_only - total,
        "savings_pct": None if not cloud_only else (cloud_only - total) / cloud_only * 100,
    }
    return {
        "currency": costs.currency,
        "period": {
            "since": _iso(start), "until": _iso(end), "days": duration_s / 86400, "months": months,
        },
        "prices": {
            "electricity_per_kwh": costs.electricity_per_kwh,
            "cloud_input_per_mtok": costs.cloud_input_per_mtok, "cloud_output_per_mtok": costs.cloud_output_per_mtok,
        },
        "tiers": tiers,
        "totals": totals,
        "projection": _projection(costs, totals, energy_cost, cloud_cost, months, duration_s, answered),
        "clients": _clients(conn, costs, where, args, totals),
        "projection_note": history_problem(duration_s) if answered else "no call has been answered yet",
    }


def _clients(conn: sqlite3.Connection, costs: CostModel, where: str, args: tuple,
             totals: dict[str, Any]) -> list[dict[str, Any]]:
    """Calls, tokens and cost per MCP client (its clientInfo name). Each call's energy and cloud bill are its
    own; the rest of the local cost (hardware, maintenance, idle power), which no call causes alone, is
    shared by tokens."""
    groups = conn.execute(CLIENTS.format(where=where), args).fetchall()
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    shared = max(totals["local_cost"] - sum(r["energy_cost"] for r in groups), 0.0)
    rows = []
    for r in groups:
        share = (r["prompt_tokens"] + r["completion_tokens"]) / tokens if tokens else 0.0
        cost = r["energy_cost"] + r["cloud_cost"] + share * shared
        equivalent = costs.cloud_equivalent(r["prompt_tokens"], r["completion_tokens"])
        rows.append({"client": r["client"], "calls": r["calls"], "answered": int(r["answered"]),
                     "prompt_tokens": int(r["prompt_tokens"]), "completion_tokens": int(r["completion_tokens"]),
                     "token_share": share, "energy_cost": r["energy_cost"], "cloud_cost": r["cloud_cost"],
                     "shared_cost": share * shared, "total_cost": cost, "cloud_equivalent": equivalent,
                     "savings": equivalent - cost})
    return rows


def _equivalent(costs: CostModel, served: list[sqlite3.Row]) -> float:
    return sum(costs.cloud_equivalent(r["prompt_tokens"], r["completion_tokens"]) for r in served)


def _tier_row(name: str, hops: sqlite3.Row | None, served: list[sqlite3.Row], answered: int, costs: CostModel,
              duration_s: float, months: float) -> dict[str, Any]:
    def total(key: str) -> float:
        return hops[key] if hops is not None else 0.0

    prompt, completion, generation_s = int(total("prompt_tokens")), int(total("completion_tokens")), total("generation_s")
    calls = sum(r["calls"] for r in served)
    row: dict[str, Any] = {
        "tier": name, "kind": "cloud" if name == CLOUD else "local",
        "hops": int(total("hops")), "served": calls, "share": _ratio(calls, answered),
        "target_share": costs.cloud_target_share if name == CLOUD else costs.tier(name).target_share,
        "escalated_away": int(total("escalated")),
        "prompt_tokens": prompt, "completion_tokens": completion, "generation_s": generation_s,
        "tokens_per_s": _ratio(completion, generation_s),
        "prompt_s": total("prompt_s"),
        "prompt_tokens_per_s": _ratio(prompt, total("prompt_s")),
        "generation_tokens_per_s": _ratio(completion, generation_s - total("prompt_s")),
        "cloud_equivalent": _equivalent(costs, served),
    }
    if name == CLOUD:
        row["cloud_cost"] = total("cloud_cost")
        return row
    tier = costs.tier(name)
    idle_wh = tier.idle_watts * max(duration_s - generation_s, 0.0) / 3600
    energy_cost = total("local_cost") + costs.energy_cost(idle_wh)
    fixed = months * costs.monthly_fixed(name)
    equivalent = row["cloud_equivalent"]
    row.update({
        "energy_wh": total("energy_wh"), "idle_wh": idle_wh, "energy_cost": energy_cost, "fixed_cost": fixed,
        "local_cost": energy_cost + fixed,
        "savings_pct": (equivalent - energy_cost - fixed) / equivalent * 100 if equivalent else None,
        "cost_per_mtok": None if not prompt + completion else (energy_cost + fixed) / (prompt + completion) * 1e6,
        "hardware_cost": tier.hardware_cost,
    })
    return row


def _projection(costs: CostModel, totals: dict[str, Any], energy_cost: float, cloud_cost: float, months: float,
                duration_s: float, answered: int) -> dict[str, Any] | None:
    if history_problem(duration_s) or not answered:
        return None
    hardware = sum(t.hardware_cost for t in costs.tiers.values())
    maintenance = sum(t.maintenance_per_month for t in costs.tiers.values())
    amortization = sum(t.hardware_cost / t.amortization_months for t in costs.tiers.values())
    cloud_only = totals["cloud_only_cost"] / months
    operating = (energy_cost + cloud_cost) / months + maintenance
    saving = cloud_only - operating
    break_even = hardware / saving if saving > 0 and hardware else None
    note = None
    if not hardware:
        note = ("no hardware cost is set, so there is nothing to break even on: set hardware_cost (and "
                "amortization_months) in [costs.tiers.<name>] for each tier's machine")
    elif saving <= 0:
        note = "the local tiers cost more to run each month than the cloud would charge for their calls"
    horizon = 12 if break_even is None else min(max(12, math.ceil(break_even * 1.5)), 120)
    return {
        "monthly_calls": answered / months,
        "monthly_cloud_only_cost": cloud_only,
        "monthly_operating_cost": operating,
        "monthly_amortization": amortization,
        "monthly_total_cost": operating + amortization,
        "monthly_savings": cloud_only - operating - amortization,
        "hardware_cost": hardware,
        "break_even_months": break_even,
        "break_even_note": note,
        "roi_12_months_pct": (12 * saving - hardware) / hardware * 100 if hardware else None,
        "chart": [{"month": m, "local": hardware + m * operating, "cloud_only": m * cloud_only}
                  for m in range(horizon + 1)],
    }


def ledger_traffic(path: Path) -> dict[str, Any]:
    """The ledger's volume and mix for `whatif`: tokens a month (None without enough history, and why),
    the input share and the share of tokens the cloud answered."""
    with reading(path) as conn:
        row = conn.execute(
            "SELECT MIN(time - latency_s) AS start, MAX(time) AS end, TOTAL(prompt_tokens) AS prompt, "
            "TOTAL(completion_tokens) AS completion, TOTAL(CASE WHEN served_by = ? THEN prompt_tokens + "
            "completion_tokens END) AS cloud FROM calls WHERE outcome IN ('ok', 'cache_hit')", (CLOUD,)).fetchone()
    tokens = row["prompt"] + row["completion"]
    span = max((row["end"] or 0) - (row["start"] or 0), 0.0)
    why = history_problem(span)
    return {"days": span / 86400, "tokens_per_month": None if why or not tokens else tokens / span * MONTH_S,
            "why_no_projection": why, "input_share": row["prompt"] / tokens if tokens else None,
            "cloud_share": row["cloud"] / tokens if tokens else None}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def report_json(path: Path, costs: CostModel, since: float | None) -> str:
    with reading(path) as conn:
        return json.dumps(build_report(conn, costs, since), indent=2)
