"""The one place a generation call is dispatched: validate the arguments against the tier, answer from
the cache or run the tier's backend (escalating along the chain), measure, log one event, record the
call and its hops in the ledger, and shape the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import Completion, GenerationRequest
from .budget import BudgetExceeded, Reservation
from .cache import ResponseCache
from .config import CLOUD
from .costs import CostModel
from .ledger import CallRecord, HopRecord, Ledger
from .backends.pool import CallControl
from .errors import BackendError, BusyError, RequestError, TieredError
from .escalation import HANDED_ON, Reason, judge, reason_for_error
from .tiers import Tier, TierRegistry

if TYPE_CHECKING:
    from .metrics import Metrics
from .validation import explain

log = structlog.get_logger(__name__)

MAX_STOP_SEQUENCES = 4


class GenerateOptions(BaseModel):
    """The optional tool arguments, checked here so that each problem reads as one sentence. Strict: a
    client that sends "10" or true for a number has a bug worth hearing about, not a silent 10 or 1."""

    model_config = ConfigDict(extra="ignore", strict=True)

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stop: Annotated[
        list[str],
        Field(max_length=MAX_STOP_SEQUENCES,
              json_schema_extra={"expect": f"a list of at most {MAX_STOP_SEQUENCES} strings"}),
    ] | None = None
    escalate: Literal["auto", "never", "always"] | None = None
    local_only: bool | None = None
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    cache: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the formatted prompt (chat template included).")
    completion_tokens: int = Field(description="Tokens generated.")


class Escalation(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="The tier that handed the call on.")
    to: str = Field(description="The tier it was handed to.")
    reason: Reason = Field(description="context: did not fit; low_confidence / empty / repetitive / truncated: "
                           "the answer was not good enough; error: the tier failed; busy: no instance was free in time; "
                           "requested: escalate=always.")
    confidence: float | None = Field(description="The handing tier's confidence in its answer, if it answered.")


class GenerateResult(BaseModel):
    """Structured content of every generate_<tier> result."""

    text: str = Field(description="The answer; also the text content of the result.")
    tier: str = Field(description="The tier that was called.")
    served_by: str = Field(description="The tier whose answer this is (a later tier after escalation, or cloud).")
    model: str = Field(description="The model that produced the answer.")
    finish_reason: Literal["stop", "length", "deadline"] = Field(
        description="stop: the model finished; length: cut off at max_tokens; deadline: cut off at deadline_s "
        "(the text is what was generated until then)."
    )
    usage: Usage
    latency_ms: float = Field(description="Server-side time for the call, model load, waiting and escalation included.")
    confidence: float | None = Field(description="Confidence (0-1) of the local tier that answered; null for cloud.")
    escalations: list[Escalation] = Field(description="Each hand-over, in order, with its reason.")
    escalation_note: str | None = Field(
        description="Why an escalation that the policy wanted did not happen (privacy, budget, no API key, "
        "a failing tier), or null."
    )
    cache_hit: bool = Field(False, description="true: answered from the response cache, no model was run.")


def input_schema(tier: Tier, default_deadline_s: float) -> dict[str, Any]:
    """The JSON schema of generate_<tier>'s arguments, with this tier's limits."""
    return {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "description": "The user message to answer."},
            "system": {"type": "string", "default": "", "description": "Optional system prompt."},
            "max_tokens": {
                "type": "integer", "minimum": 1, "maximum": tier.max_tokens,
                "description": f"Upper bound on generated tokens (default and maximum {tier.max_tokens}).",
            },
            "temperature": {
                "type": "number", "minimum": 0, "maximum": 2,
                "description": f"Sampling temperature; 0 is deterministic (default {tier.temperature}).",
            },
            "stop": {
                "type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES,
                "description": "Strings that end the answer when generated (not included in it).",
            },
            "escalate": {
                "type": "string", "enum": ["auto", "never", "always"], "default": "auto",
                "description": "auto: hand the call to the next tier when the answer is not good enough, does not "
                "fit or fails; never: answer here or fail; always: let the next tier answer.",
            },
            "local_only": {
                "type": "boolean", "default": False,
                "description": "true: the prompt never leaves this machine (no cloud escalation).",
            },
            "cache": {
                "type": "boolean", "default": True,
                "description": "false: do not answer from (or store in) the response cache; it only ever holds "
                "temperature-0 answers.",
            },
            "deadline_s": {
                "type": "number", "exclusiveMinimum": 0,
                "description": f"Seconds after which generation stops and the partial answer is returned "
                f"(finish_reason \"deadline\"); default {default_deadline_s:g}.",
            },
        },
        "required": ["prompt"],
    }


@dataclass
class _Call:
    request: GenerationRequest
    escalate: str
    local_only: bool
    deadline_s: float | None
    use_cache: bool


def build_call(tier: Tier, prompt: str, system: str, options: dict[str, Any]) -> _Call:
    """Validate the arguments for `tier`; raises RequestError with one sentence."""
    try:
        opts = GenerateOptions.model_validate(options)
    except ValidationError as exc:
        raise RequestError(explain(exc, GenerateOptions)[0]) from None
    if not prompt.strip():
        raise RequestError("prompt: is required and must be a non-empty string")
    limit = tier.max_tokens
    max_tokens = opts.max_tokens if opts.max_tokens is not None else limit
    if max_tokens > limit:
        raise RequestError(
            f"max_tokens: must be an integer between 1 and {limit} (the limit of tier {tier.name}), got {max_tokens}"
        )
    local_only = bool(opts.local_only) or tier.policy.local_only
    if local_only and tier.capabilities.prompt_leaves_machine:
        raise RequestError(f"local_only: {tier.tool_name} sends the prompt to the cloud; call a local tier instead")
    temperature = opts.temperature if opts.temperature is not None else tier.temperature
    request = GenerationRequest(prompt, system, max_tokens, temperature, tuple(opts.stop or ()))
    return _Call(request, opts.escalate or "auto", local_only, opts.deadline_s,
                 opts.cache is not False and request.temperature == 0)


@dataclass
class _Trace:
    """What one call went through, for the ledger."""

    hops: list[HopRecord] = field(default_factory=list)
    answered_at: int | None = None


class Dispatcher:
    def __init__(self, tiers: TierRegistry, default_deadline_s: float = 50.0, metrics: Metrics | None = None,
                 cache: ResponseCache[GenerateResult] | None = None, ledger: Ledger | None = None,
                 costs: CostModel | None = None):
        self.tiers = tiers
        self.default_deadline_s = default_deadline_s
        self.metrics = metrics
        self.cache = cache
        self.ledger = ledger
        self.costs = costs or CostModel()

    async def generate(self, tier_name: str, prompt: str, system: str = "", control: CallControl | None = None,
                       **options: Any) -> GenerateResult:
        started = time.perf_counter()
        control = control or CallControl()
        tool = self.tiers.get(tier_name).tool_name
        event = log.bind(tool=tool, tier=tier_name)
        trace = _Trace()
        try:
            result = await self._serve(tier_name, prompt, system, options, started, control, trace)
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
                   escalation_note=result.escalation_note)
        outcome = "cache_hit" if result.cache_hit else "ok"
        await self._commit(self._account(tool, tier_name, outcome, started, trace, result))
        return result

    def _account(self, tool: str, tier: str, outcome: str, started: float, trace: _Trace,
                 result: GenerateResult | None = None) -> CallRecord | None:
        """Record the call in the metrics; its ledger row, or None without a ledger."""
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
        )

    async def _commit(self, row: CallRecord | None) -> None:
        """The answer (or error) goes out only after its row is committed: a server killed at any moment
        has recorded every call it answered. A ledger that cannot be written keeps the row and says so."""
        if row is not None and self.ledger is not None:
            await self.ledger.commit(row)

    def _hop(self, trace: _Trace, position: int, tier: Tier, control: CallControl, completion: Completion | None,
             reason: Reason | str | None, outcome: str) -> None:
        billed_per_token = tier.capabilities.billing == "tokens"
        prompt_tokens = completion.prompt_tokens if completion else 0
        completion_tokens = completion.completion_tokens if completion else 0 if billed_per_token else control.tokens
        energy = cost = cloud = 0.0
        if not billed_per_token:
            energy = self.costs.energy_wh(tier.name, control.generation_s)
            cost = self.costs.energy_cost(energy)
        elif completion is not None:
            cloud = self.costs.cloud_billed(prompt_tokens, completion_tokens)
        trace.hops.append(HopRecord(position, tier.name, tier.backend.model_name, outcome, reason, prompt_tokens,
                                    completion_tokens, control.queue_s, control.generation_s, energy, cost, cloud))

    async def _serve(self, tier_name: str, prompt: str, system: str, options: dict[str, Any],
                     started: float, control: CallControl, trace: _Trace) -> GenerateResult:
        first = self.tiers.get(tier_name)
        call = build_call(first, prompt, system, options)
        cache_key = None
        if self.cache is not None and call.use_cache:
            cache_key = (tier_name, first.backend.model_name, call.request, call.escalate, call.local_only)
            if (hit := self.cache.get(cache_key)) is not None:
                return hit.model_copy(update={"cache_hit": True, "latency_ms": _ms_since(started)})
        control.set_deadline(call.deadline_s or self.default_deadline_s)
        result = await self._escalating(first, call, started, control, trace)
        if cache_key is not None and result.finish_reason != "deadline":
            self.cache.put(cache_key, result)
        return result

    async def _escalating(self, first: Tier, call: _Call, started: float, control: CallControl,
                          trace: _Trace) -> GenerateResult:
        tier_name = first.name
        chain = self.tiers.chain(tier_name)
        hops: list[Escalation] = []
        answer: tuple[Tier, Completion, float | None] | None = None
        failure: TieredError | None = None
        failed_at = ""
        note: str | None = None
        reason: Reason | None = "requested" if call.escalate == "always" else None
        value: float | None = None
        position = 0 if reason is None else 1
        if reason is not None:
            if len(chain) == 1:
                raise RequestError(f"escalate: tier {tier_name} has no escalate_to, so 'always' has nowhere to go")
        while True:
            tier_here = chain[position]
            blocked = self._blocked(tier_here, call) if position > 0 else None
            reservation = None
            if blocked is None:
                try:
                    reservation = self._reserve(self.tiers.get(tier_here), call)
                except BudgetExceeded as exc:
                    if position == 0:
                        raise BackendError(f"cloud budget: {exc}") from None
                    blocked = f"cloud budget: {exc}"
            if blocked is not None:
                note = f"escalation from {chain[position - 1]} to {tier_here} ({reason}) was not made: {blocked}"
                break
            if position > 0:
                hops.append(Escalation(from_=chain[position - 1], to=tier_here, reason=reason, confidence=value))
            tier = self.tiers.get(tier_here)
            control.start_hop()
            completion = None
            try:
                completion = await self._run(tier, call, reservation, control)
            except HANDED_ON as exc:
                failure, failed_at, reason, value = exc, tier_here, reason_for_error(exc), None
            except BaseException as exc:
                why = "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "error"
                self._hop(trace, position, tier, control, None, why, "failed")
                raise
            else:
                failure = None
                reason, value = judge(tier, completion)
                answer = (tier, completion, value)
                trace.answered_at = len(trace.hops)
            self._hop(trace, position, tier, control, completion, reason,
                      "failed" if completion is None else "escalated")
            if reason is None or call.escalate == "never" or position + 1 >= len(chain):
                break
            if control.seconds_left() == 0:  # the next tier would only return an empty "deadline" answer
                note = (f"escalation from {tier_here} to {chain[position + 1]} ({reason}) was not made: "
                        "the call's deadline had passed")
                break
            position += 1
        if answer is not None:  # the hop whose answer is returned, whatever the policy thought of it
            trace.hops[trace.answered_at] = replace(trace.hops[trace.answered_at], outcome="answered",
                                                    escalation_reason=None)
        if failure is not None and answer is not None:
            failed = f"{failed_at} failed ({failure}); this is the answer of {answer[0].name}"
            note = f"{failed}; {note}" if note else failed
        if answer is None:
            if failure is None:  # escalate=always toward a blocked target
                raise RequestError(note or f"tier {tier_name} could not answer")
            if note is None:
                raise failure
            kind = next(k for k in (BusyError, RequestError, BackendError) if isinstance(failure, k) or k is BackendError)
            raise kind(f"{failure}; {note}") from failure
        tier, completion, value = answer
        return GenerateResult(
            text=completion.text, tier=first.name, served_by=tier.name, model=tier.backend.model_name,
            finish_reason=completion.finish_reason,
            usage=Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens),
            latency_ms=_ms_since(started), confidence=None if value is None else round(value, 4),
            escalations=hops, escalation_note=note,
        )

    def _blocked(self, target: str, call: _Call) -> str | None:
        """Why the call may not go to `target`, or None. (A configured cloud tier without its API key is
        not in the registry; its prompt would leave the machine all the same.)"""
        available = target in self.tiers
        if call.local_only and (self.tiers.get(target).capabilities.prompt_leaves_machine if available
                                else target == CLOUD):
            return "the call is local_only"
        if not available:
            return (self.tiers.cloud_disabled if target == CLOUD and self.tiers.cloud_disabled
                    else f"tier {target} is not available")
        return None

    def _reserve(self, tier: Tier, call: _Call) -> Reservation | None:
        """Hold the worst-case cost of a cloud call (raises BudgetExceeded); None for local tiers."""
        if tier.capabilities.billing != "tokens" or self.tiers.budget is None:
            return None
        request = _request_for(tier, call)
        return self.tiers.budget.reserve(request.prompt, request.system, request.max_tokens)

    async def _run(self, tier: Tier, call: _Call, reservation: Reservation | None, control: CallControl) -> Completion:
        request = _request_for(tier, call)
        budget = self.tiers.budget
        if reservation is None or budget is None:
            return await tier.backend.generate(request, control)
        try:
            completion = await tier.backend.generate(request, control)
        except BaseException:
            budget.release(reservation)
            raise
        budget.settle(reservation, completion.prompt_tokens, completion.completion_tokens)
        return completion


def _request_for(tier: Tier, call: _Call) -> GenerationRequest:
    """The call's request within the limits of `tier` (an escalation target may allow fewer tokens)."""
    return replace(call.request, max_tokens=min(call.request.max_tokens, tier.max_tokens),
                   stop_on_loop=tier.policy.escalate_on_repetition)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
