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

from ..accounting.costs import CostModel
from ..accounting.ledger import TABLES
from ..store.reading import reading

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


def _whole(tokens: float) -> int | float:
    """A sum of token counts as an int; one that is not finite stays a float (finite() makes it None)."""
    return int(tokens) if math.isfinite(tokens) else tokens


# Served calls by the tier that answered (cache hits apart) and per-tier hop sums: the report reads
# aggregates, never the rows, so its cost does not grow with the ledger's size in Python.
SERVED = """SELECT served_by, cache_hit, outcome, {client} AS client, COUNT(*) AS calls, TOTAL(prompt_tokens) AS prompt_tokens,
    TOTAL(completion_tokens) AS completion_tokens, TOTAL(local_cost) AS energy_cost, TOTAL(cloud_cost) AS cloud_cost,
    MAX(time) AS end FROM calls {where} GROUP BY served_by, cache_hit, outcome, client"""
"""One pass over the calls (in the order of the calls_by_server index) for the answers per tier, the period,
the errors and the clients."""
HOPS = """SELECT tier, COUNT(*) AS hops, TOTAL(prompt_tokens) AS prompt_tokens,
    TOTAL(completion_tokens) AS completion_tokens, TOTAL(generation_s) AS generation_s,
    TOTAL({prompt_s}) AS prompt_s, TOTAL(CASE WHEN {prompt_s} > 0 THEN prompt_tokens END) AS timed_prompt_tokens,
    TOTAL(CASE WHEN {prompt_s} > 0 THEN completion_tokens END) AS timed_completion_tokens,
    TOTAL(CASE WHEN {prompt_s} > 0 THEN generation_s END) AS timed_generation_s,
    TOTAL(energy_wh) AS energy_wh, TOTAL(local_cost) AS local_cost, TOTAL(cloud_cost) AS cloud_cost,
    TOTAL(outcome = 'escalated') AS escalated FROM hops {where} GROUP BY tier ORDER BY MIN(id)"""
BY_COLUMN = """SELECT {column} AS {name}, outcome, COUNT(*) AS calls, TOTAL(prompt_tokens) AS prompt_tokens,
    TOTAL(completion_tokens) AS completion_tokens, TOTAL(local_cost) AS energy_cost, TOTAL(cloud_cost) AS cloud_cost
    FROM calls {where} GROUP BY {name}, outcome"""
"""The calls per server process (a team's replicas and laptops on one store) or per principal (who called, as
authenticated), through calls_by_instance and calls_by_principal."""
START = """SELECT MIN(time - latency_s) AS start FROM calls
    WHERE time <= (SELECT MIN(time) FROM calls {where}) + 3600 {also}"""
"""When the period starts: the earliest call's start, among those that ended in its first hour (through the
time index; no call runs for an hour)."""
ADDED_COLUMNS = {column.name: (table.name, column.absent_as) for table in TABLES for column in table.columns
                 if column.since > 1}
"""Columns that later schemas added (ledger.MIGRATIONS), with what a ledger without them holds in their place:
a ledger no server has upgraded yet is read as it is (the reader never writes)."""


def _present(conn: Any, table: str) -> set[str]:
    if isinstance(conn, sqlite3.Connection):
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    return conn.columns(table)


def _columns(conn: Any) -> dict[str, str]:
    """Each of ADDED_COLUMNS as the report's queries read it: the column, or its default where it is absent."""
    present = {table: _present(conn, table) for table in ("calls", "hops")}
    return {name: name if name in present[table] else default for name, (table, default) in ADDED_COLUMNS.items()}


def build_report(conn: sqlite3.Connection, costs: CostModel, since: float | None = None) -> dict[str, Any]:
    args = () if since is None else (since,)
    where, also = ("", "") if since is None else ("WHERE time >= ?", "AND time >= ?")
    columns = _columns(conn)
    groups = conn.execute(SERVED.format(where=where, client=columns["client"]), args).fetchall()
    served = _merge([g for g in groups if g["outcome"] in ("ok", "cache_hit")], ("served_by", "cache_hit"))
    period = {"calls": sum(g["calls"] for g in groups),
              "errors": sum(g["calls"] for g in groups if g["outcome"] in ("error", "busy")),
              "start": conn.execute(START.format(where=where, also=also), args * 2).fetchone()["start"],
              "end": max((g["end"] for g in groups), default=None)}
    hops = {h["tier"]: h for h in conn.execute(HOPS.format(where=where, prompt_s=columns["prompt_s"]), args)}
    instances = conn.execute(BY_COLUMN.format(where=where, column=columns["instance"], name="instance"), args).fetchall()
    principals = conn.execute(BY_COLUMN.format(where=where, column=columns["principal"], name="principal"),
                              args).fetchall()
    start = since if since is not None else period["start"]
    end = period["end"] if period["end"] is not None else start
    duration_s = max((end or 0) - (start or 0), 0.0)
    months = duration_s / MONTH_S

    answered = sum(r["calls"] for r in served)
    names = list(costs.tiers)
    for name in [*hops, *costs.token_prices]:
        if name not in names:
            names.append(name)
    # Billed per token: the config's such tiers, and a tier the config no longer has whose hops the cloud billed.
    billed = {*costs.token_prices, *(n for n, h in hops.items() if n not in costs.tiers and h["cloud_cost"] > 0)}
    tiers = [_tier_row(name, name in billed, hops.get(name),
                       [r for r in served if r["served_by"] == name and not r["cache_hit"]],
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
        "prompt_tokens": _whole(sum(r["prompt_tokens"] for r in served)),
        "completion_tokens": _whole(sum(r["completion_tokens"] for r in served)),
        "energy_wh": sum(t["energy_wh"] + t["idle_wh"] for t in local),
        "energy_cost": energy_cost, "fixed_cost": sum(t["fixed_cost"] for t in local),
        "local_cost": local_cost, "cloud_cost": cloud_cost, "total_cost": total,
        "cloud_only_cost": cloud_only, "savings": cloud_only - total,
        "savings_pct": None if not cloud_only else (cloud_only - total) / cloud_only * 100,
    }
    return finite({
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
        "clients": _shares(groups, "client", costs, totals),
        "instances": _shares(instances, "instance", costs, totals),
        "principals": _shares(principals, "principal", costs, totals),
        "projection_note": history_problem(duration_s) if answered else "no call has been answered yet",
    })


def finite(value: Any) -> Any:
    """`value` (a report: dicts, lists, numbers, text) with every NaN or infinite number as None: such a
    figure was not computed (a ledger row an older server stored with an infinite cost), and JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def json_text(data: Any) -> str:
    """`data` as strict JSON (no NaN or Infinity: see finite), as report --format json, tiered://report and
    whatif --format json write it."""
    return json.dumps(finite(data), indent=2, allow_nan=False)


def _merge(groups: list[Any], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """`groups` summed by `keys` (the sums of SERVED)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        row = merged.setdefault(tuple(g[k] for k in keys), {**{k: g[k] for k in keys}, "calls": 0, "answered": 0,
                                "prompt_tokens": 0.0, "completion_tokens": 0.0, "energy_cost": 0.0, "cloud_cost": 0.0})
        answered = g["outcome"] in ("ok", "cache_hit")
        row["calls"] += g["calls"]
        row["answered"] += g["calls"] if answered else 0
        for key in ("prompt_tokens", "completion_tokens"):
            row[key] += g[key] if answered else 0.0
        row["energy_cost"] += g["energy_cost"]
        row["cloud_cost"] += g["cloud_cost"]
    return list(merged.values())


def _shares(groups: list[Any], by: str, costs: CostModel, totals: dict[str, Any]) -> list[dict[str, Any]]:
    """Calls, tokens and cost per `by`: the MCP client (its clientInfo name), the server process or the principal. Each call's
    energy and cloud bill are its own; the rest of the local cost (hardware, maintenance, idle power), which no
    call causes alone, is shared by tokens."""
    per_client = sorted(_merge(groups, (by,)), key=lambda r: -r["calls"])
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    shared = max(totals["local_cost"] - sum(r["energy_cost"] for r in per_client), 0.0)
    rows = []
    for r in per_client:
        share = (r["prompt_tokens"] + r["completion_tokens"]) / tokens if tokens else 0.0
        cost = r["energy_cost"] + r["cloud_cost"] + share * shared
        equivalent = costs.cloud_equivalent(r["prompt_tokens"], r["completion_tokens"])
        rows.append({by: r[by], "calls": r["calls"], "answered": r["answered"],
                     "prompt_tokens": _whole(r["prompt_tokens"]), "completion_tokens": _whole(r["completion_tokens"]),
                     "token_share": share, "energy_cost": r["energy_cost"], "cloud_cost": r["cloud_cost"],
                     "shared_cost": share * shared, "total_cost": cost, "cloud_equivalent": equivalent,
                     "savings": equivalent - cost})
    return rows


def _equivalent(costs: CostModel, served: list[sqlite3.Row]) -> float:
    return sum(costs.cloud_equivalent(r["prompt_tokens"], r["completion_tokens"]) for r in served)


def _tier_row(name: str, billed_per_token: bool, hops: sqlite3.Row | None, served: list[sqlite3.Row], answered: int,
              costs: CostModel, duration_s: float, months: float) -> dict[str, Any]:
    def total(key: str) -> float:
        return hops[key] if hops is not None else 0.0

    prompt, completion, generation_s = _whole(total("prompt_tokens")), _whole(total("completion_tokens")), total("generation_s")
    calls = sum(r["calls"] for r in served)
    row: dict[str, Any] = {
        "tier": name, "kind": "cloud" if billed_per_token else "local",
        "hops": int(total("hops")), "served": calls, "share": _ratio(calls, answered),
        "target_share": costs.target_share(name),
        "escalated_away": int(total("escalated")),
        "prompt_tokens": prompt, "completion_tokens": completion, "generation_s": generation_s,
        "tokens_per_s": _ratio(completion, generation_s),
        # Over the hops that timed their prompt (rows written before schema 3 did not).
        "prompt_s": total("prompt_s"),
        "prompt_tokens_per_s": _ratio(total("timed_prompt_tokens"), total("prompt_s")),
        "generation_tokens_per_s": _ratio(total("timed_completion_tokens"),
                                          total("timed_generation_s") - total("prompt_s")),
        "cloud_equivalent": _equivalent(costs, served),
    }
    if row["kind"] == "cloud":
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
    horizon = 12 if break_even is None else min(max(12, math.ceil(min(break_even, 120) * 1.5)), 120)
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


def ledger_traffic(path: Path | Any, costs: CostModel) -> dict[str, Any]:
    """The ledger's volume and mix for `whatif`: tokens a month (None without enough history, and why),
    the input share and the share of tokens the cloud answered."""
    with reading(path) as conn:
        row = conn.execute(
            "SELECT MIN(time - latency_s) AS start, MAX(time) AS end, TOTAL(prompt_tokens) AS prompt, "
            "TOTAL(completion_tokens) AS completion, TOTAL(CASE WHEN cloud_cost > 0 OR served_by IN "
            f"({', '.join('?' * len(costs.token_prices))}) THEN prompt_tokens + "
            f"completion_tokens END) AS cloud_tokens FROM calls WHERE outcome IN ('ok', 'cache_hit')",
            tuple(costs.token_prices)).fetchone()
    tokens = row["prompt"] + row["completion"]
    span = max((row["end"] or 0) - (row["start"] or 0), 0.0)
    why = history_problem(span)
    return {"days": span / 86400, "tokens_per_month": None if why or not tokens else tokens / span * MONTH_S,
            "why_no_projection": why, "input_share": row["prompt"] / tokens if tokens else None,
            "cloud_share": row["cloud_tokens"] / tokens if tokens else None}


def _iso(ts: float | None) -> str | None:
    """None for no time, or one no calendar holds (a ledger row written with a bad clock)."""
    try:
        return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def report_data(path: Path | Any, costs: CostModel, since: float | None) -> dict[str, Any]:
    """`path`: a SQLite ledger, or the store (a Store or its config)."""
    with reading(path) as conn:
        return build_report(conn, costs, since)


def report_json(path: Path | Any, costs: CostModel, since: float | None) -> str:
    return json_text(report_data(path, costs, since))
