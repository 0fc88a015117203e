"""One call's walk along its tier chain: run a tier, judge its answer, have a verifier read it, hand the call
on. Each turn asks `escalation.next_step` what follows; this module carries it out (backends, the cloud
budget) and records every hop for the ledger."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import anyio
import structlog

from ..backends import Completion, GenerationRequest, reported
from ..backends.pool import CallControl
from ..accounting.budget import BudgetExceeded
from ..accounting.costs import CostModel
from ..errors import BackendError, BusyError, RequestError, TieredError, ToolsUnsupportedError
from .escalation import (HANDED_ON, Escalate, HandOn, Reason, Standing, Stop, Verify, judge, judge_verification,
                         next_step, reason_for_error, verifier_for)
from ..accounting.ledger import HopRecord
from .tiers import Tier, TierRegistry
from ..auth.principal import Principal
from ..auth.scopes import CLOUD
from ..accounting.budget import spender_of

log = structlog.get_logger(__name__)

@dataclass(frozen=True)
class Call:
    """A validated call (arguments.build_call)."""

    request: GenerationRequest
    escalate: Escalate
    local_only: bool
    deadline_s: float | None
    use_cache: bool


@dataclass(frozen=True)
class Handover:
    from_: str
    to: str
    reason: Reason
    confidence: float | None


@dataclass(frozen=True)
class Reading:
    """A verifier's reading of an answer."""

    tier: str
    by: str
    statistic: str
    value: float
    answer_tokens: int
    evaluated_tokens: int
    seconds: float
    kept: bool


@dataclass
class Trace:
    """What one call went through, for the ledger."""

    hops: list[HopRecord] = field(default_factory=list)
    answered_at: int | None = None
    client: str | None = None
    principal: Principal | None = None
    """Who the call is from: its scopes decide whether it may reach tiers billed per token, its limits what
    it may spend there."""
    tokens_held: tuple[str, str, int] | None = None
    """The call's worst case held against the principal's tokens_per_day (TokenQuota.hold), until counted."""


@dataclass(frozen=True)
class Walked:
    tier: Tier
    completion: Completion
    confidence: float | None
    handovers: list[Handover]
    readings: list[Reading]
    note: str | None


class Cascade:
    def __init__(self, tiers: TierRegistry, costs: CostModel, call: Call, control: CallControl, trace: Trace):
        self.tiers, self.costs, self.call, self.control, self.trace = tiers, costs, call, control, trace
        self.handovers: list[Handover] = []
        self.readings: list[Reading] = []
        self.answer: tuple[Tier, Completion, float | None] | None = None
        self.failure: tuple[str, TieredError] | None = None

    async def walk(self, first: Tier) -> Walked:
        chain = tuple(self.tiers.chain(first.name))
        if self.call.escalate == "always" and len(chain) == 1:
            raise RequestError(f"escalate: tier {first.name} has no escalate_to, so 'always' has nowhere to go")
        at, value = 0, None
        reason: Reason | None = "requested" if self.call.escalate == "always" else None
        verifier = None
        if reason is None:
            try:
                reason, value, verifier = await self._hop(0, first)
            except BudgetExceeded as exc:  # only a cloud tier called directly holds a reservation
                raise BackendError(f"cloud budget: {exc}") from None
        while True:
            step = next_step(Standing(
                chain, at, reason, self.call.escalate, verifier,
                self._blocked(chain[at + 1]) if at + 1 < len(chain) else None, self.control.seconds_left(),
            ))
            if isinstance(step, Stop):
                return self._result(first, step.note)
            if isinstance(step, Verify):
                verifier = None
                reason, note = await self._verify(chain[at], step.verifier)
                if note is not None:
                    return self._result(first, note)
                if reason is not None:
                    self._mark_answer(self.trace.answered_at, "escalated", reason)
                continue
            assert isinstance(step, HandOn)
            target = self.tiers.get(step.to)
            self.handovers.append(Handover(chain[at], step.to, step.reason, value))
            at += 1
            try:
                reason, value, verifier = await self._hop(at, target)
            except BudgetExceeded as exc:
                self.handovers.pop()
                return self._result(first, f"escalation from {chain[at - 1]} to {step.to} ({step.reason}) was not "
                                    f"made: cloud budget: {exc}")

    async def _hop(self, position: int, tier: Tier) -> tuple[Reason | None, float | None, str | None]:
        """Run `tier`; the reason to leave it (None: keep its answer so far), its confidence, its verifier."""
        control = self.control
        control.start_hop()
        request = request_for(tier, self.call)
        try:
            if request.needs_tools and not tier.capabilities.tools:
                raise ToolsUnsupportedError(f"tier {tier.name} cannot use tools: its engine does not pass them to "
                                            "the model; call a tier whose engine does (llama-server, openai, anthropic)")
            async with self._cloud_spend(tier, request) as settle:
                completion, problems = reported.checked(await tier.backend.generate(request, control), request)
                if problems:
                    log.warning("engine_report_invalid", tier=tier.name, model=tier.backend.model_name,
                                problems=problems, action="counted at the bounds instead")
                await settle(completion)
        except HANDED_ON as exc:
            self.failure = (tier.name, exc)
            reason = reason_for_error(exc)
            self._record(position, tier, None, reason, "failed")
            return reason, None, None
        except BudgetExceeded:
            raise
        except BaseException as exc:
            why = "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "error"
            self._record(position, tier, None, why, "failed")
            raise
        self.failure = None
        reason, value = judge(tier, completion, request)
        self.answer = (tier, completion, value)
        self.trace.answered_at = len(self.trace.hops)
        self._record(position, tier, completion, reason, "escalated")
        # A verifier reads text after a plain prompt: a conversation with tools is not for it to read.
        verify = reason is None and not request.needs_tools
        return reason, value, verifier_for(tier.policy, value) if verify else None

    async def _verify(self, tier_name: str, verifier_name: str) -> tuple[Reason | None, str | None]:
        """Have `verifier_name` read the answer in hand: ("rejected" or None, None), or (None, the note saying
        why the answer is kept unread) when the verifier cannot read it."""
        assert self.answer is not None
        tier, completion, _ = self.answer
        verifier = self.tiers.get(verifier_name)
        control = self.control
        control.start_hop()
        started = time.perf_counter()
        position = self.trace.hops[self.trace.answered_at].position
        try:
            scored = await verifier.backend.score(request_for(tier, self.call), completion.text, control)
        except HANDED_ON as exc:
            self._record_reading(position, verifier, None, None, 0, "failed")
            return None, f"verification by {verifier_name} failed ({exc}); the answer of {tier_name} is kept unverified"
        except BaseException:
            self._record_reading(position, verifier, None, None, 0, "failed")
            raise
        reason, value = judge_verification(tier.policy, scored)
        seconds = time.perf_counter() - started
        self.readings.append(Reading(tier_name, verifier_name, tier.policy.verify_statistic, value,
                                     len(scored.token_logprobs), scored.evaluated_tokens, seconds, reason is None))
        self._record_reading(position, verifier, value, reason, scored.evaluated_tokens,
                             "verified" if reason is None else "rejected")
        return reason, None

    @asynccontextmanager
    async def _cloud_spend(self, tier: Tier, request: GenerationRequest
                           ) -> AsyncIterator[Callable[[Completion], Awaitable[object]]]:
        """For a tier billed per token: its worst case held against the cloud budget (BudgetExceeded when it
        does not fit or cannot be checked), settled at the billed cost; released if no answer comes."""
        budget = self.tiers.budget
        if tier.capabilities.billing != "tokens" or budget is None:
            yield _nothing_to_settle
            return
        prices = self.costs.prices(tier.name)
        async with budget.hold(prices, request.text(), request.system, request.max_tokens,
                               self.control.seconds_left(), spender_of(self.trace.principal)) as reservation:
            yield lambda completion: budget.settle(reservation, completion.prompt_tokens, completion.completion_tokens)

    def _blocked(self, target: str) -> str | None:
        """Why the call may not go to `target`, or None. (A tier left out for want of its API key is not in
        the registry; its prompt would leave the machine all the same.)"""
        left_out = self.tiers.unavailable.get(target)
        capabilities = left_out.capabilities if left_out else self.tiers.get(target).capabilities \
            if target in self.tiers else None
        if self.call.local_only and capabilities is not None and capabilities.prompt_leaves_machine:
            return "the call is local_only"
        principal = self.trace.principal
        if principal is not None and not principal.grants.cloud and capabilities is not None \
                and capabilities.billing == "tokens":
            return f"{principal.name} has no {CLOUD} scope, so its calls never reach a tier billed per token"
        if principal is not None and self.call.escalate == "always" and not principal.grants.may_call(target):
            # the policy may hand a call on to a tier the principal cannot call; the caller may not ask for it
            return f"{principal.name} may not call tier {target} itself, so escalate=always cannot hand the call there"
        if left_out is not None:
            return left_out.reason
        return None if target in self.tiers else f"tier {target} is not available"

    def _result(self, first: Tier, note: str | None) -> Walked:
        if self.answer is not None:  # the hop whose answer is returned, whatever the policy thought of it
            self._mark_answer(self.trace.answered_at, "answered", None)
        if self.failure is not None and self.answer is not None:
            failed = f"{self.failure[0]} failed ({self.failure[1]}); this is the answer of {self.answer[0].name}"
            note = f"{failed}; {note}" if note else failed
        if self.answer is None:
            if self.failure is None:  # escalate=always toward a blocked target
                raise RequestError(note or f"tier {first.name} could not answer")
            failure = self.failure[1]
            if note is None:
                raise failure
            kind = next(k for k in (BusyError, RequestError, BackendError) if isinstance(failure, k) or k is BackendError)
            raise kind(f"{failure}; {note}") from failure
        tier, completion, value = self.answer
        return Walked(tier, completion, value, self.handovers, self.readings, note)

    def _mark_answer(self, index: int | None, outcome: str, reason: Reason | None) -> None:
        if index is not None:
            self.trace.hops[index] = replace(self.trace.hops[index], outcome=outcome, escalation_reason=reason)

    def _record(self, position: int, tier: Tier, completion: Completion | None, reason: Reason | str | None,
                outcome: str) -> None:
        control = self.control
        billed_per_token = tier.capabilities.billing == "tokens"
        prompt_tokens = completion.prompt_tokens if completion else 0
        completion_tokens = completion.completion_tokens if completion else 0 if billed_per_token else control.tokens
        energy = cost = cloud = 0.0
        if not billed_per_token:
            energy = self.costs.energy_wh(tier.name, control.generation_s)
            cost = self.costs.energy_cost(energy)
        elif completion is not None:
            cloud = self.costs.cloud_billed(tier.name, prompt_tokens, completion_tokens)
        self.trace.hops.append(HopRecord(position, tier.name, tier.backend.model_name, outcome, reason, prompt_tokens,
                                         completion_tokens, control.queue_s, control.generation_s, energy, cost, cloud,
                                         prompt_s=control.prompt_s))

    def _record_reading(self, position: int, verifier: Tier, value: float | None, reason: Reason | None,
                        evaluated: int, outcome: str) -> None:
        """The verifier's hop: the tokens it evaluated count as its prompt tokens; its energy is its own."""
        energy = self.costs.energy_wh(verifier.name, self.control.generation_s)
        self.trace.hops.append(HopRecord(position, verifier.name, verifier.backend.model_name, outcome, None,
                                         evaluated, 0, self.control.queue_s, self.control.generation_s, energy,
                                         self.costs.energy_cost(energy), 0.0, verification=value,
                                         prompt_s=self.control.generation_s))


async def _nothing_to_settle(completion: Completion) -> None:
    return None


def request_for(tier: Tier, call: Call) -> GenerationRequest:
    """The call's request within the limits of `tier` (an escalation target may allow fewer tokens)."""
    return replace(call.request, max_tokens=min(call.request.max_tokens, tier.max_tokens),
                   stop_on_loop=tier.policy.escalate_on_repetition)
