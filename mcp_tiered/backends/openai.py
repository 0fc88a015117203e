"""engine = "openai": a tier served by servers that already run (vLLM, SGLang, TGI, llama-server, Ollama,
LM Studio), on this machine or others, over the OpenAI API (or llama.cpp's own, `api = "llama-server"`).

Each endpoint takes up to its `max_concurrency` calls at once; together they are the tier's slots, with
the tier's queue (`max_queue`, `queue_timeout_s`) in front. A call goes to the least busy healthy endpoint
(on a tie, the one whose last call shared most of its prompt, for the server's prompt cache). An endpoint
that fails a call (unreachable, an HTTP error, a broken or malformed stream, silent past `read_timeout_s`)
gets no calls for `cooldown_s`, and the call starts again on the next endpoint; when none is left the call
fails with one sentence naming every endpoint's failure (and escalates, reason `error`). A prompt the
endpoint says does not fit its context escalates as `context`, on the same endpoint set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx2
import structlog

from ..config.schema import EndpointConfig, OpenAITierConfig
from ..errors import BackendError, PromptTooLongError, ToolsUnsupportedError
from ..config.explain import key_path
from .wire import llama_api, openai_api
from ..engines.openai import capabilities
from .base import Backend, Completion, GenerationRequest, prefix_affinity, refuse_if_too_long
from .wire.http_stream import (MAX_ERROR_BYTES, PLAIN, DeadlinePassed, EndpointError, context_refusal, read_bounded,
                               stream_answer)
from .pool import CallControl, InstancePool

if TYPE_CHECKING:
    from ..store.slots import SharedSlots

log = structlog.get_logger(__name__)

RESTORE_EVERY_S = 0.5


@dataclass(eq=False)
class _Endpoint:
    config: EndpointConfig
    headers: dict[str, str]
    unusable: str | None = None
    """Why the endpoint can never be called (its key's variable is not set)."""
    in_flight: int = 0
    team_in_flight: int = 0
    """Calls on it from every process of the store, as last read (SharedSlots)."""
    cooling_until: float = 0.0
    failure: str = ""
    last_request: str = ""
    held: list[_Slot] = field(default_factory=list)
    """Its slots, out of the pool while it cools down."""
    warned_no_logprobs: bool = False
    tokenizer: bool | None = None
    """Whether it serves llama.cpp's `/tokenize` (None: not asked yet), which finds every control-token
    spelling in the caller's text for its vocabulary."""

    @property
    def url(self) -> str:
        return self.config.base

    def cooling(self, now: float) -> bool:
        return self.unusable is not None or now < self.cooling_until


@dataclass(eq=False)
class _Slot:
    endpoint: _Endpoint


class OpenAIBackend(Backend):
    def __init__(self, tier: str, config: OpenAITierConfig, environ: Mapping[str, str] = os.environ):
        self.tier = tier
        self.config = config
        self.model_name = config.model
        self.capabilities = capabilities(config)
        self.endpoints = [self._endpoint(i, e, environ) for i, e in enumerate(config.endpoints)]
        slots = [_Slot(e) for e in self.endpoints if not e.unusable for _ in range(e.config.max_concurrency)]
        self.pool: InstancePool[_Slot] = InstancePool(tier, slots, config.max_queue, config.queue_timeout_s)
        # No keep-alive: a server may close an idle connection just as a call picks it up, which would read
        # as the endpoint failing; a new connection costs a round trip.
        self.shared_slots: SharedSlots | None = None
        """With a store: the endpoints' calls in flight counted for the team (share_load)."""
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx2.Limits(max_keepalive_connections=0))

    def _endpoint(self, i: int, config: EndpointConfig, environ: Mapping[str, str]) -> _Endpoint:
        if config.api_key_env is None:
            return _Endpoint(config, {})
        key = environ.get(config.api_key_env)
        if not key:
            path = key_path(["tiers", self.tier, "endpoints", i, "api_key_env"])
            reason = f"its key variable ${config.api_key_env} is not set ({path})"
            log.warning("endpoint_unusable", tier=self.tier, endpoint=config.base, variable=config.api_key_env)
            return _Endpoint(config, {}, unusable=reason, failure=reason)
        return _Endpoint(config, {"Authorization": f"Bearer {key}"})

    def share_load(self, slots: SharedSlots) -> None:
        """Count each endpoint's calls in flight for every process of the store: max_concurrency and the
        least-busy choice hold for the team."""
        self.shared_slots = slots

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        control = control or CallControl()
        text = f"{request.system}\x00{request.text()}"
        failures: dict[str, str] = {}
        queue_s = generation_s = 0.0
        try:
            for _ in range(len(self.endpoints)):
                self._restore_cooled()
                if all(e.cooling(time.monotonic()) for e in self.endpoints):
                    break
                await self._read_team_load()
                slot = await self.pool.acquire_for_call(control, lambda s: self._score(s, text))
                queue_s += control.queue_s
                endpoint = slot.endpoint
                endpoint.in_flight += 1
                started = time.perf_counter()
                try:
                    control.phase = "prompt"
                    completion = await self._attempt_shared(endpoint, request, control)
                    endpoint.last_request = text
                    self._check_logprobs(endpoint, request, completion)
                    return completion
                except EndpointError as exc:
                    if context_refusal(exc):
                        raise PromptTooLongError(
                            f"prompt is too long for tier {self.tier}: {endpoint.url} {exc}; shorten the prompt "
                            "or lower max_tokens", prompt_tokens=0, max_tokens=request.max_tokens,
                            n_ctx=self.config.n_ctx or 0) from None
                    if request.needs_tools and exc.status == 400:  # the request's tools, not the endpoint, failed
                        raise ToolsUnsupportedError(
                            f"tier {self.tier}: {endpoint.url} {exc} for a request with tools; a vLLM or SGLang "
                            "server takes tools when started with its tool-call parser") from None
                    failures[endpoint.url] = f"{endpoint.url} {exc}"
                    self._cool_down(endpoint, exc)
                    if control.on_text is not None and control.tokens:  # its text went out: no second answer
                        break
                    if control.seconds_left() == 0:
                        break
                finally:
                    generation_s += time.perf_counter() - started - control.queue_s
                    queue_s += control.queue_s
                    endpoint.in_flight -= 1
                    self._release(slot)
            raise BackendError(self._all_failed(failures))
        finally:
            control.queue_s, control.generation_s = queue_s, generation_s

    async def _read_team_load(self) -> None:
        if self.shared_slots is None or len(self.endpoints) < 2:
            return
        counts = await self.shared_slots.in_flight([e.url for e in self.endpoints])
        for endpoint in self.endpoints:
            endpoint.team_in_flight = counts.get(endpoint.url, 0)

    async def _attempt_shared(self, endpoint: _Endpoint, request: GenerationRequest,
                              control: CallControl) -> Completion:
        """`_attempt` within one of the endpoint's team-wide slots (waited for within the tier's queue time;
        that wait counts as queue time, not generation)."""
        queued_s, control.queue_s = control.queue_s, 0.0
        if self.shared_slots is None:
            return await self._attempt(endpoint, request, control)
        waited = time.perf_counter()
        left = control.seconds_left()
        wait_s = max(self.config.queue_timeout_s - queued_s, 0.0)  # one queue time for both waits
        wait_s = wait_s if left is None else min(wait_s, left)
        async with self.shared_slots.slot(self.tier, endpoint.url, endpoint.config.max_concurrency, wait_s):
            control.queue_s = time.perf_counter() - waited
            return await self._attempt(endpoint, request, control)

    async def _attempt(self, endpoint: _Endpoint, request: GenerationRequest, control: CallControl) -> Completion:
        if self.config.api == "llama-server" and not request.needs_tools:  # tools: its OpenAI API parses calls
            root = endpoint.url.removesuffix("/v1")
            try:
                tokens = await llama_api.prompt_tokens(self._http, root, endpoint.headers, request, control)
            except DeadlinePassed:
                return Completion("", "deadline", 0, 0)
            if self.config.n_ctx is not None:
                refuse_if_too_long(self.tier, len(tokens), request.max_tokens, self.config.n_ctx)
            return await stream_answer(self._http, root, "/completion", llama_api.completion_body(tokens, request),
                                       endpoint.headers, request, control, llama_api.NativeReader(), len(tokens))
        try:
            spellings = await self._control_spellings(endpoint, request, control)
        except DeadlinePassed:
            return Completion("", "deadline", 0, 0)
        body = openai_api.chat_body(self.config.model, request, self.config.logprobs, spellings)
        return await stream_answer(self._http, endpoint.url, openai_api.PATH, body, endpoint.headers, request,
                                   control, openai_api.ChatReader())

    async def _control_spellings(self, endpoint: _Endpoint, request: GenerationRequest,
                                 control: CallControl) -> set[str]:
        root = endpoint.url.removesuffix("/v1")
        if endpoint.tokenizer is None:
            endpoint.tokenizer = await llama_api.has_tokenizer(self._http, root, endpoint.headers)
            if not endpoint.tokenizer:
                log.warning("endpoint_without_tokenizer", tier=self.tier, endpoint=endpoint.url,
                            hint="only the known control-token families are broken in the caller's text; "
                                 f'tiers.{self.tier}.api = "llama-server" tokenizes it exactly')
        if not endpoint.tokenizer:
            return set()
        text = f"{request.system}\n{request.text()}"
        return await llama_api.control_spellings(self._http, root, endpoint.headers, text, control)

    def _score(self, slot: _Slot, text: str) -> tuple[float, int]:
        endpoint = slot.endpoint
        busy = max(endpoint.in_flight, endpoint.team_in_flight)
        return -busy / endpoint.config.max_concurrency, prefix_affinity(endpoint.last_request, text)

    def _cool_down(self, endpoint: _Endpoint, exc: EndpointError) -> None:
        endpoint.failure = str(exc)
        endpoint.cooling_until = time.monotonic() + self.config.cooldown_s
        endpoint.held += self.pool.take_free(lambda s: s.endpoint is endpoint)
        log.warning("endpoint_failed", tier=self.tier, endpoint=endpoint.url, status=exc.status,
                    cooldown_s=self.config.cooldown_s)

    def _release(self, slot: _Slot) -> None:
        if slot.endpoint.cooling(time.monotonic()):
            slot.endpoint.held.append(slot)
        else:
            self.pool.release(slot)

    def _restore_cooled(self) -> None:
        now = time.monotonic()
        for endpoint in self.endpoints:
            if endpoint.held and not endpoint.cooling(now):
                held, endpoint.held = endpoint.held, []
                for slot in held:
                    self.pool.release(slot)

    def _all_failed(self, failures: dict[str, str]) -> str:
        now = time.monotonic()
        others = [f"{e.url}: {e.unusable}" if e.unusable else
                  f"{e.url} is cooling down after it {e.failure} (tried again in {e.cooling_until - now:.0f} s)"
                  for e in self.endpoints if e.url not in failures and e.cooling(now)]
        what = "; ".join([*failures.values(), *others]) or "no endpoint was free"
        return f"tier {self.tier}: no endpoint could answer: {what}"

    def _check_logprobs(self, endpoint: _Endpoint, request: GenerationRequest, completion: Completion) -> None:
        if (self.config.logprobs and request.logprobs and completion.completion_tokens
                and not completion.token_logprobs and not endpoint.warned_no_logprobs):
            endpoint.warned_no_logprobs = True
            log.warning("endpoint_without_logprobs", tier=self.tier, endpoint=endpoint.url,
                        hint=f"set tiers.{self.tier}.logprobs = false or use a server that returns them")

    async def run_background(self) -> None:
        """Slots of endpoints whose cooldown has passed go back to the pool (queued calls get them)."""
        while True:
            self._restore_cooled()
            await anyio.sleep(RESTORE_EVERY_S)

    @property
    def loaded(self) -> bool:
        now = time.monotonic()
        return any(not e.cooling(now) for e in self.endpoints)

    async def aclose(self) -> None:
        await self._http.aclose()


async def probe(tier: str, config: OpenAITierConfig, environ: Mapping[str, str] = os.environ) -> list[str | None]:
    """For `mcp-tiered check`: per endpoint, None when it answers, serves the model and (with `logprobs`)
    returns token log-probabilities; else one sentence naming its key path."""
    backend = OpenAIBackend(tier, config, environ)
    problems: list[str | None] = []
    try:
        for i, endpoint in enumerate(backend.endpoints):
            path = key_path(["tiers", tier, "endpoints", i, "url"])
            if endpoint.unusable:
                problems.append(f"{path}: {endpoint.url} cannot be called: {endpoint.unusable}")
                continue
            try:
                await _probe_one(backend, endpoint, config)
                problems.append(None)
            except EndpointError as exc:
                problems.append(f"{path}: {endpoint.url} {exc}")
    finally:
        await backend.aclose()
    return problems


async def _probe_one(backend: OpenAIBackend, endpoint: _Endpoint, config: OpenAITierConfig) -> None:
    request = GenerationRequest("Say OK.", "", 2, 0.0)
    try:
        with anyio.fail_after(config.read_timeout_s + config.connect_timeout_s):
            completion = await backend._attempt(endpoint, request, CallControl())
    except TimeoutError:
        raise EndpointError(f"did not answer within {config.read_timeout_s + config.connect_timeout_s:g} s") from None
    except EndpointError as exc:
        if exc.status == 404 and config.api == "openai":
            raise EndpointError(f"{exc}; it serves {await _served_models(backend, endpoint)}") from None
        raise
    if config.logprobs and completion.completion_tokens and not completion.token_logprobs:
        raise EndpointError(f"returns no token log-probabilities; set tiers.{backend.tier}.logprobs = false "
                            "(confidence and min_confidence then do not apply) or use a server that returns them")


async def _served_models(backend: OpenAIBackend, endpoint: _Endpoint) -> str:
    try:
        async with backend._http.stream("GET", endpoint.url + "/models", headers={**endpoint.headers, **PLAIN}) as answer:
            models = json.loads(await read_bounded(answer, MAX_ERROR_BYTES, "/models"))
        names = [str(m["id"]) for m in models["data"]]
    except (httpx2.HTTPError, EndpointError, ValueError, KeyError, TypeError, RecursionError):
        return "models it does not list (/models failed)"
    return ", ".join(names[:5]) or "no models"
