"""The config's checks beyond its types, each problem one sentence naming its key path: chains and verifiers,
the costs, each engine's own (`Engine.problems`), API keys written into the file."""

from __future__ import annotations

import json
from typing import Any

from ..engines import ENGINES, capabilities_of, engine_of
from .explain import key_path
from .schema import CLOUD, RESERVED_TIER_NAMES, TIER_NAME, Config


def problems(config: Config) -> list[str]:
    """Every problem of a config whose types are valid."""
    return _semantic_problems(config) + _chain_problems(config) + _verifier_problems(config) + _auth_problems(config)


def _semantic_problems(config: Config) -> list[str]:
    problems = []
    for name, tier in config.tiers.items():
        if tier.n_ctx is not None and tier.max_tokens >= tier.n_ctx:
            path = key_path(["tiers", name, "max_tokens"])
            problems.append(f"{path}: must be less than n_ctx ({tier.n_ctx}), got {tier.max_tokens}")
        if "min_confidence" in tier.model_fields_set and tier.min_confidence and \
                not capabilities_of(tier).token_logprobs:
            problems.append(f"{key_path(['tiers', name, 'min_confidence'])}: needs token log-probabilities, which "
                            f"this tier's engine does not return ({engine_of(tier).no_logprobs_because(tier)}); "
                            "remove min_confidence or use an engine that returns log-probabilities")
        if tier.local_only and capabilities_of(tier).prompt_leaves_machine:
            problems.append(f"{key_path(['tiers', name, 'local_only'])}: this tier's prompts leave the machine "
                            f'(engine "{tier.engine}"), so no call to it could be local; remove local_only')
        problems += engine_of(tier).problems(name, tier)
    problems += _cost_problems(config)
    if config.cloud is not None and "budget" in config.model_fields_set:
        for key in ("daily_budget", "monthly_budget"):
            if getattr(config.cloud, key) is not None:
                problems.append(f"cloud.{key}: the cloud budget is set in [budget]; keep it there only (as "
                                f"{key.removesuffix('_budget')} = ...) and remove this key")
    return problems


def _auth_problems(config: Config) -> list[str]:
    """The mcp-tiered scopes [auth.oauth] grants must exist (a tools:<tier> must name a tier)."""
    from ..auth.scopes import scope_problem

    oauth = config.auth.oauth
    if oauth is None:
        return []
    return [f"{key_path(['auth', 'oauth', 'grants', given])}[{i}]: {problem}"
            for given, scopes in oauth.grants.items() for i, scope in enumerate(scopes)
            if (problem := scope_problem(scope, config.tiers)) is not None]


def _cost_problems(config: Config) -> list[str]:
    problems = []
    valid = ", ".join(json.dumps(n) for n in config.tiers)
    for name, costs in config.costs.tiers.items():
        if name not in config.tiers:
            problems.append(f'{key_path(["costs", "tiers", name])}: unknown tier "{name}"; valid tiers are {valid}')
        elif capabilities_of(config.tiers[name]).billing == "tokens":
            for key in sorted(costs.model_fields_set - {"target_share"}):
                problems.append(f"{key_path(['costs', 'tiers', name, key])}: tier {name} is billed per token at its "
                                "own prices, so only target_share applies to it; remove this key")
    billed = [name for name, tier in config.tiers.items() if capabilities_of(tier).billing == "tokens"]
    if config.costs.cloud_target_share is not None and len(billed) > 1:
        problems.append(f"costs.cloud_target_share: applies when one tier is billed per token, and "
                        f"{', '.join(billed)} are; set [costs.tiers.<name>] target_share for each instead")
    cloud, currency = config.cloud, config.costs.currency
    if cloud is not None and currency is not None and currency != cloud.currency:
        problems.append(f'costs.currency: must be the currency of the cloud prices (cloud.currency = '
                        f'"{cloud.currency}"), got "{currency}"; set both to the same currency and the prices in it')
    return problems


def _chain_problems(config: Config) -> list[str]:
    problems = []
    loops: set[frozenset[str]] = set()
    for name, tier in config.tiers.items():
        target = tier.escalate_to
        if target is None:
            continue
        path = key_path(["tiers", name, "escalate_to"])
        valid = ", ".join(json.dumps(n) for n in config.tiers if n != name)
        if target not in config.tiers:
            if target == CLOUD:
                problems.append(f'{path}: "cloud" needs a [cloud] section; add one'
                                + (f" or escalate to one of {valid}" if valid else ""))
            else:
                problems.append(f'{path}: unknown tier "{target}"; ' + (
                    f"valid targets are {valid}" if valid else "there is no other tier to escalate to; add one "
                    "(a [tiers.<name>] or a [cloud] section) or remove escalate_to"))
            continue
        seen = [name]
        while target is not None and target in config.tiers:
            if target in seen:
                if frozenset(seen) not in loops:
                    loops.add(frozenset(seen))
                    problems.append(f"{path}: escalation loops ({' → '.join([*seen, target])}); "
                                    "a chain must end at a tier without escalate_to")
                break
            seen.append(target)
            target = config.tiers[target].escalate_to
    return problems


def _verifier_problems(config: Config) -> list[str]:
    problems = []
    scorers = " or ".join(f'engine = "{kind}"' for kind, e in ENGINES.items() if e.capabilities(None).scores_answers)
    for name, tier in config.tiers.items():
        verifier = tier.verify_with
        if verifier is None:
            continue
        path = key_path(["tiers", name, "verify_with"])
        valid = [n for n, t in config.tiers.items() if n != name and capabilities_of(t).scores_answers]
        choose = (f'; valid verifiers are {", ".join(json.dumps(n) for n in valid)}' if valid
                  else f"; add a tier with {scorers} to verify with")
        if verifier == name:
            problems.append(f"{path}: a tier cannot verify its own answers{choose}")
        elif verifier not in config.tiers:
            problems.append(f'{path}: unknown tier "{verifier}"{choose}')
        elif not capabilities_of(config.tiers[verifier]).scores_answers:
            problems.append(f'{path}: tier "{verifier}" runs engine "{config.tiers[verifier].engine}", which cannot '
                            f'score a given answer (only {scorers} can){choose}')
    return problems


def raw_problems(raw: dict[str, Any]) -> list[str]:
    problems = []
    cloud = raw.get("cloud")
    if isinstance(cloud, dict) and "api_key" in cloud:
        problems.append("cloud.api_key: API keys do not belong in models.toml; put the key in the environment "
                        "variable named by cloud.api_key_env (default ANTHROPIC_API_KEY) and remove this line")
    tiers = raw.get("tiers")
    if not isinstance(tiers, dict):
        return problems
    for name, tier in tiers.items():
        if isinstance(tier, dict) and "api_key" in tier:
            problems.append(f"{key_path(['tiers', name, 'api_key'])}: API keys do not belong in models.toml; put the "
                            "key in the environment variable named by api_key_env and remove this key")
        endpoints = tier.get("endpoints") if isinstance(tier, dict) else None
        for i, endpoint in enumerate(endpoints if isinstance(endpoints, list) else []):
            if isinstance(endpoint, dict) and "api_key" in endpoint:
                problems.append(f"{key_path(['tiers', name, 'endpoints', i, 'api_key'])}: API keys do not belong in "
                                "models.toml; put the key in an environment variable, name it with api_key_env and "
                                "remove this key")
        path = key_path(["tiers", name])
        if name in RESERVED_TIER_NAMES:
            problems.append(f'{path}: the tier name "{name}" is reserved; choose another name')
        elif not TIER_NAME.match(name):
            problems.append(
                f"{path}: tier names become tool names (generate_<name>) and may use only letters, "
                "digits, '_', '-' and '.' (1–64 characters)"
            )
    return problems


def without_api_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` less the `api_key` keys raw_problems has reported (so they are not reported twice)."""
    raw = dict(raw)
    if isinstance(raw.get("cloud"), dict):
        raw["cloud"] = {k: v for k, v in raw["cloud"].items() if k != "api_key"}
    if isinstance(raw.get("tiers"), dict):
        raw["tiers"] = {name: {k: v for k, v in tier.items() if k != "api_key"} if isinstance(tier, dict) else tier
                        for name, tier in raw["tiers"].items()}
        raw["tiers"] = {name: {**tier, "endpoints": [
            {k: v for k, v in e.items() if k != "api_key"} if isinstance(e, dict) else e for e in tier["endpoints"]]}
            if isinstance(tier, dict) and isinstance(tier.get("endpoints"), list) else tier
            for name, tier in raw["tiers"].items()}
    return raw
