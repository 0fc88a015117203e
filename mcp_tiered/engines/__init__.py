"""The engine table: one `Engine` per `engine = "..."` kind of models.toml. An engine module declares its
config type (a `config.TierFields` subclass), its backend factory, its capabilities and its hooks for
`check`, `plan` and the config's checks; `register` puts it in `ENGINES`, and the config's tagged union,
`check`, `plan` and who may verify are built from the table. A new engine is one module and one entry of
BUILT_IN (or a `register` call of its own)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import schema as config_module
from ..backends.base import Capabilities

if TYPE_CHECKING:
    from ..backends import Backend
    from ..config.schema import TierFields


@dataclass(frozen=True)
class Checked:
    """What `mcp-tiered check` prints for a tier: its lines, and whether it failed."""

    failed: bool
    lines: list[str]


@dataclass(frozen=True)
class PlanInput:
    """What the planner plans against: the GPUs, the RAM bandwidth, and whether it may read a hub header."""

    gpus: list
    cpu_bandwidth: float
    remote: bool = False


def _no_problems(name: str, tier: Any) -> list[str]:
    return []


def _always_available(name: str, tier: Any, environ: Mapping[str, str]) -> str | None:
    return None


@dataclass(frozen=True)
class Engine:
    kind: str
    """The value of `engine = "..."`."""
    config: type[TierFields]
    """The keys its tiers take."""
    backend: Callable[[str, Any, Mapping[str, str]], Backend]
    """(tier name, tier config, environment) → the backend serving the tier."""
    capabilities: Callable[[Any], Capabilities]
    """What the engine does with a call, for a tier config (None: its defaults); its backend reports the same."""
    check: Callable[[str, Any, dict], Checked]
    """`mcp-tiered check` for one tier, given its plan row (tier_plans)."""
    plan: Callable[[str, Any, PlanInput], dict] | None = None
    """The planner's row for the tier (memory, verdict), or None when the tier's model is not on this machine."""
    plan_note: str = "not planned here"
    """The plan row's text for an engine without `plan`."""
    problems: Callable[[str, Any], list[str]] = _no_problems
    """The config's checks of one tier beyond its types: one sentence each, naming its key path."""
    unavailable: Callable[[str, Any, Mapping[str, str]], str | None] = _always_available
    """Why the tier cannot be served in this environment (no API key), or None: the server then leaves it out,
    and the calls that would escalate to it keep their answer with this sentence."""
    no_logprobs_because: Callable[[Any], str] = field(default=lambda tier: "it returns none")
    """Why the tier's completions carry no token log-probabilities, when they do not."""


ENGINES: dict[str, Engine] = {}


def _contract_problem(engine: Engine) -> str | None:
    """Why `engine` cannot be registered, or None."""
    if engine.capabilities(None).billing == "tokens" and not issubclass(engine.config, config_module.TokenPrices):
        return (f'engine "{engine.kind}" is billed per token, so its config type must subclass '
                "mcp_tiered.config.schema.TokenPrices (the prices the ledger and the budget use)")
    return None


def register(engine: Engine) -> None:
    """Add `engine` to the table (replacing one of the same kind): its tiers load, serve, check and plan.
    Raises ValueError when it breaks the engine contract (_contract_problem)."""
    if problem := _contract_problem(engine):
        raise ValueError(problem)
    ENGINES[engine.kind] = engine
    config_module.use_engine_configs({kind: e.config for kind, e in ENGINES.items()})


def unregister(kind: str) -> None:
    """Take a registered engine out again (the built-in ones stay: the [cloud] shorthand needs anthropic)."""
    if kind in {engine.kind for engine in BUILT_IN}:
        raise ValueError(f'engine "{kind}" is built in and stays registered')
    ENGINES.pop(kind)
    config_module.use_engine_configs({k: e.config for k, e in ENGINES.items()})


def engine_of(tier: TierFields) -> Engine:
    return ENGINES[tier.engine]


def capabilities_of(tier: TierFields) -> Capabilities:
    return engine_of(tier).capabilities(tier)


def engine_backend(name: str, tier: TierFields, environ: Mapping[str, str] = os.environ) -> Backend:
    return engine_of(tier).backend(name, tier, environ)


def scoring(tier: TierFields) -> str:
    """Whether the tier can read other tiers' answers (verify_with), and who reads its own (for `check`)."""
    if capabilities_of(tier).scores_answers:
        text = "can verify other tiers' answers"
    else:
        text = f'cannot score a given answer, so it cannot verify others (engine "{tier.engine}")'
    return text + (f"; its answers are verified by {tier.verify_with}" if tier.verify_with else "")


PLUGINS_ENV = "MCP_TIERED_ENGINES"
ENTRY_POINTS = "mcp_tiered.engines"
_plugins_loaded = False


def load_plugins(environ: Mapping[str, str] = os.environ) -> None:
    """Register the engines of other packages, once: each entry point of the `mcp_tiered.engines` group (an
    `Engine`), and each module named in $MCP_TIERED_ENGINES (comma-separated) that declares `ENGINE`.
    Raises ConfigError naming the one that cannot be loaded."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    import importlib
    from importlib.metadata import entry_points

    from ..errors import ConfigError

    found: list[tuple[str, Callable[[], Any]]] = [
        (f"entry point {point.name} ({point.value})", point.load) for point in entry_points(group=ENTRY_POINTS)]
    found += [(f"${PLUGINS_ENV}: module {name}", lambda name=name: getattr(importlib.import_module(name), "ENGINE"))
              for name in (n.strip() for n in environ.get(PLUGINS_ENV, "").split(",")) if name]
    for where, load in found:
        try:
            engine = load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (a plugin's own failure, told in one sentence)
            raise ConfigError(f"{where}: cannot load the engine ({type(exc).__name__}: {exc})") from None
        if not isinstance(engine, Engine):
            raise ConfigError(f"{where}: is not an mcp_tiered.engines.Engine, got {type(engine).__name__}")
        if problem := _contract_problem(engine):
            raise ConfigError(f"{where}: {problem}")
        register(engine)
    _plugins_loaded = True


from . import anthropic, llama_cpp, llama_server, openai# noqa: E402  (they import Engine from here)

BUILT_IN = (llama_cpp.ENGINE, llama_server.ENGINE, openai.ENGINE, anthropic.ENGINE)
for _engine in BUILT_IN:
    register(_engine)
