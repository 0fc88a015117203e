"""The one place a generation call is dispatched: validate the arguments against the tier, answer from
the cache or walk the tier chain (cascade.py), measure, log one event, record the call and its hops in the
ledger, and shape the result.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from .arguments import build_call, parse_arguments
from ..backends.base import Dialogue
from ..backends.pool import CallControl
from .cache import ResponseCache
from .cascade import Cascade, Trace, Walked
from ..accounting.costs import CostModel
from . import routing
from ..errors import BackendError, BusyError, QuotaError, RequestError, ScopeError, TieredError
from ..accounting.ledger import CallRecord, Ledger
from .results import Escalation, GenerateResult, Usage, Verification
from .routing import Route
from .tiers import Tier, TierRegistry
from ..accounting.budget import PROMPT_TOKEN_MARGIN
from ..auth import scopes
from ..auth.limits import TokenQuota
from ..auth.principal import Principal

if TYPE_CHECKING:
    from ..server.metrics import Metrics

log = structlog.get_logger(__name__)

ROUTER_TOOL = "generate"


class Dispatcher:
    def __init__(self, tiers: TierRegistry, default_deadline_s: float = 50.0, metrics: Metrics | None = None,
                 cache: ResponseCache[GenerateResult] | None = None, ledger: Ledger | None = None,
                 costs: CostModel | None = None, quota: TokenQuota | None = None):
        self.tiers = tiers
        self.default_deadline_s = default_deadline_s
        self.metrics = metrics
        self.cache = cache
        self.ledger = ledger
        self.costs = costs or CostModel()
        self.quota = quota or TokenQuota()

    async def route(self, prompt: str, system: str, options: dict[str, Any]) -> Route:
        """The tier the `generate` tool starts this call at (routing.pick_entry on the tiers' state now); the
        prompt's features are read on a worker thread, so a long prompt does not hold up other calls."""
        args = parse_arguments({"prompt": prompt, "system": system, **options})
        prompt_features = await anyio.to_thread.run_sync(routing.features, args.prompt, args.system)
        candidates = [routing.Candidate(t.name, t.max_tokens, t.n_ctx,
                                        *((t.backend.pool.queue_depth, t.backend.pool.max_queue) if t.backend.pool
                                          else (0, None)))
                      for t in self.entry_tiers()]
        if not candidates:
            first = next(iter(self.tiers)).name
            return Route(first, f"no local tier to choose from → {first}")
        route = routing.pick_entry(prompt_features, candidates, args.max_tokens, args.deadline_s)
        if route is None:
            raise RequestError(f"max_tokens: must be an integer between 1 and {max(c.max_tokens for c in candidates)} "
                               f"(the largest limit of the tiers generate may use), got {args.max_tokens}")
        return route

    def entry_tiers(self) -> list[Tier]:
        """The local tiers `generate` may start at: the chain of the first local tier, smallest first."""
        first = next((t for t in self.tiers if not t.capabilities.prompt_leaves_machine), None)
        if first is None:
            return []
        return [self.tiers.get(n) for n in self.tiers.chain(first.name)
                if n in self.tiers and not self.tiers.get(n).capabilities.prompt_leaves_machine]

    async def generate_routed(self, prompt: str, system: str = "", control: CallControl | None = None,
                              *, client: str | None = None, principal: Principal | None = None,
                              tool: str = ROUTER_TOOL, **options: Any) -> GenerateResult:
        """The `generate` tool (or `tool`, such as the OpenAI face's `auto` model): pick the entry tier, then
        the usual cascade from it."""
        started = time.perf_counter()
        try:
            self._check_router_scope(principal)
            route = await self.route(prompt, system, options)
        except RequestError as exc:
            first = next(iter(self.tiers)).name
            log.warning("tool_call", tool=tool, outcome="error", error=type(exc).__name__, reason=str(exc))
            await self._commit(self._account(tool, first, "error", started, Trace(client=client, principal=principal)))
            raise
        result = await self.generate(route.tier, prompt, system, control, via=tool, route_note=route.why,
                                     client=client, principal=principal, routed=True, **options)
        return result

    async def generate(self, tier_name: str, prompt: str, system: str = "", control: CallControl | None = None,
                       *, via: str | None = None, route_note: str | None = None, client: str | None = None,
                       principal: Principal | None = None, routed: bool = False, dialogue: Dialogue | None = None,
                       **options: Any) -> GenerateResult:
        """`via`: the tool that was called, when not the tier's own; `route_note`: why `generate` chose the tier;
        `client`: the MCP client's name (what it says it is), `principal`: who the call is from (authenticated;
        None: the local user), for the ledger, the limits and the scopes; `routed`: generate_routed chose the
        tier (its scopes were checked there); `dialogue`: the whole conversation and its tools, whose last user
        turn is `prompt` (the OpenAI face)."""
        started = time.perf_counter()
        control = control or CallControl()
        tool = via or self.tiers.get(tier_name).tool_name
        event = log.bind(tool=tool, tier=tier_name)
        trace = Trace(client=client, principal=principal)
        try:
            if not routed:
                self._check_tier_scope(tier_name, principal)
            text = prompt if dialogue is None else dialogue.text()
            trace.tokens_held = self._hold_tokens(principal, tier_name, text, system, options)
            result = await self._serve(tier_name, prompt, system, options, started, control, trace, dialogue)
            if route_note is not None:
                result = result.model_copy(update={"routing": route_note})
        except TieredError as exc:
            event.warning("tool_call", outcome="error", error=type(exc).__name__, reason=str(exc),
                          latency_ms=_ms_since(started))
            outcome = "busy" if isinstance(exc, BusyError) else "error"
            await self._commit(self._account(tool, tier_name, outcome, started, trace))
            raise
        except anyio.get_cancelled_exc_class():
            event.info("tool_call", outcome="cancelled", completion_tokens=control.tokens, latency_ms=_ms_since(started))
            if (row := self._account(tool, tier_name, "cancelled", started, trace)) is not None:
                self.ledger.record(row)  # nothing is answered, so nothing waits for the commit
            raise
        except Exception as exc:
            event.exception("tool_call", outcome="error", error=type(exc).__name__, latency_ms=_ms_since(started))
            await self._commit(self._account(tool, tier_name, "error", started, trace))
            raise BackendError(f"tier {tier_name}: unexpected {type(exc).__name__} in the backend; "
                               "see the server log") from exc
        event.info("tool_call", outcome="ok", cache_hit=result.cache_hit, served_by=result.served_by,
                   prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                   latency_ms=result.latency_ms, finish_reason=result.finish_reason, confidence=result.confidence,
                   escalations=[f"{e.from_}->{e.to}:{e.reason}" for e in result.escalations],
                   verifications=[f"{v.by}:{v.value}:{'kept' if v.kept else 'rejected'}" for v in result.verifications],
                   escalation_note=result.escalation_note)
        outcome = "cache_hit" if result.cache_hit else "ok"
        await self._commit(self._account(tool, tier_name, outcome, started, trace, result))
        return result

    def _check_tier_scope(self, tier_name: str, principal: Principal | None) -> None:
        """RequestError when the principal may not call the tier's tool (its scopes), in one sentence."""
        if principal is None:
            return
        tier = self.tiers.get(tier_name)
        if not principal.grants.may_call(tier.name):
            raise ScopeError(f"{principal.name} may not call {tier.tool_name}: it needs the scope {scopes.TOOLS} "
                               f"or {scopes.TIER_PREFIX}{tier.name}")
        if tier.capabilities.billing == "tokens" and not principal.grants.cloud:
            raise ScopeError(f"{principal.name} may not call {tier.tool_name}: tier {tier.name} is billed per "
                               f"token, which needs the scope {scopes.CLOUD}")

    def _check_router_scope(self, principal: Principal | None) -> None:
        """`generate` may start at any entry tier: the principal must be allowed every one of them."""
        entries = [t.name for t in self.entry_tiers()]
        if principal is None or all(principal.grants.may_call(t) for t in entries):
            return
        allowed = [self.tiers.get(t).tool_name for t in sorted(principal.grants.tiers) if t in self.tiers]
        raise ScopeError(f"{principal.name} may not call {ROUTER_TOOL}, which may start at any of the tiers "
                           f"{', '.join(entries)}: it needs the scope {scopes.TOOLS}"
                           + (f"; call {', '.join(allowed)} instead" if allowed else ""))

    def _hold_tokens(self, principal: Principal | None, tier_name: str, prompt: str, system: str,
                     options: dict[str, Any]) -> tuple[str, str, int] | None:
        """With tokens_per_day: the call's worst case held (RequestError when nothing is left), else None."""
        if principal is None or (limit := principal.limits.tokens_per_day) is None:
            return None
        name = principal.name
        left = self.quota.left(name, limit)
        if left is not None and left <= 0:
            used, held = self.quota.used(name), self.quota.held(name)
            raise QuotaError(f"tokens_per_day: {name} has used {used} of its {limit} tokens today (UTC)"
                               + (f" and its calls in flight may use the other {held}; try again when they have "
                                  "finished" if held else "; calls are refused until midnight UTC"))
        max_tokens = options.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            max_tokens = self.tiers.get(tier_name).max_tokens
        worst = len(prompt.encode()) + len(system.encode()) + PROMPT_TOKEN_MARGIN + max(max_tokens, 0)
        return self.quota.hold(name, worst)

    def _account(self, tool: str, tier: str, outcome: str, started: float, trace: Trace,
                 result: GenerateResult | None = None) -> CallRecord | None:
        """Record the call in the metrics and the principal's tokens; its ledger row, or None without a ledger."""
        if trace.principal is not None:
            self.quota.count(trace.principal.name, sum(h.prompt_tokens + h.completion_tokens for h in trace.hops))
        if trace.tokens_held is not None:
            self.quota.release(trace.tokens_held)
            trace.tokens_held = None
        if self.metrics is not None:
            answered = None if result is None or result.cache_hit else result
            self.metrics.record(tier, outcome, time.perf_counter() - started, answered)
            self.metrics.record_hops(trace.hops, self.costs.currency)
        if self.ledger is None:
            return None
        return CallRecord(
            time=time.time(), tool=tool, tier=tier, served_by=result.served_by if result else None,
            model=result.model if result else None, outcome=outcome,
            prompt_tokens=result.usage.prompt_tokens if result else 0,
            completion_tokens=result.usage.completion_tokens if result else 0,
            latency_s=time.perf_counter() - started, cache_hit=outcome == "cache_hit", hops=tuple(trace.hops),
            client=trace.client, principal=trace.principal.name if trace.principal else None,
        )

    async def _commit(self, row: CallRecord | None) -> None:
        """The answer (or error) goes out only after its row is committed: a server killed at any moment
        has recorded every call it answered. A ledger that cannot be written keeps the row and says so."""
        if row is not None and self.ledger is not None:
            await self.ledger.commit(row)

    async def _serve(self, tier_name: str, prompt: str, system: str, options: dict[str, Any],
                     started: float, control: CallControl, trace: Trace, dialogue: Dialogue | None) -> GenerateResult:
        first = self.tiers.get(tier_name)
        call = build_call(first, parse_arguments({"prompt": prompt, "system": system, **options}), dialogue)
        cache_key = None
        if self.cache is not None and call.use_cache:
            # Whether the call may reach the cloud is part of the key: an answer that came from there is no
            # answer for a principal whose calls may not.
            cloud = trace.principal is None or trace.principal.grants.cloud
            cache_key = (tier_name, first.backend.model_name, call.request, call.escalate, call.local_only, cloud)
            if (hit := await self.cache.lookup(cache_key)) is not None:
                return hit.model_copy(update={"cache_hit": True, "latency_ms": _ms_since(started)})
        control.set_deadline(call.deadline_s or self.default_deadline_s)
        walked = await Cascade(self.tiers, self.costs, call, control, trace).walk(first)
        result = _result(first, walked, started)
        if cache_key is not None and result.finish_reason != "deadline":
            await self.cache.keep(cache_key, result)
        return result


def _result(first: Tier, walked: Walked, started: float) -> GenerateResult:
    completion, value = walked.completion, walked.confidence
    return GenerateResult(
        text=completion.text, tier=first.name, served_by=walked.tier.name, model=walked.tier.backend.model_name,
        finish_reason=completion.finish_reason,
        usage=Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
        latency_ms=_ms_since(started), confidence=None if value is None else round(value, 4),
        escalations=[Escalation(from_=h.from_, to=h.to, reason=h.reason, confidence=h.confidence)
                     for h in walked.handovers],
        verifications=[Verification(tier=r.tier, by=r.by, statistic=r.statistic, value=round(r.value, 4),
                                    kept=r.kept, answer_tokens=r.answer_tokens, evaluated_tokens=r.evaluated_tokens,
                                    ms=round(r.seconds * 1000, 1)) for r in walked.readings],
        escalation_note=walked.note, tool_calls=list(completion.tool_calls),
    )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
