"""A tier served in-process by llama.cpp (llama-cpp-python), with CUDA offload where built for it."""

from __future__ import annotations

import codecs
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import structlog

from ..calls.confidence import is_repetitive
from ..config.schema import TierConfig, model_file_problem
from ..engines.llama_cpp import CAPABILITIES
from ..errors import BackendError, BusyError, RequestError
from .base import (LOOP_CHECK_EVERY, SAMPLING, Backend, Completion, GenerationRequest, ScoredAnswer,
                   prefix_affinity, refuse_if_too_long)
from ..compat import llama_cpp as compat
from .abort import AbortFlag
from .wire.chat_text import chat_messages, mark
from .pool import CallControl, InstancePool
from .prompt_states import PromptStates, shared_prefix
from .worker import WorkerThread

if TYPE_CHECKING:
    from llama_cpp import Llama

log = structlog.get_logger(__name__)

_Result = TypeVar("_Result")
SCORE_CHUNK = 64
"""Answer tokens per decode when scoring: each needs its logits row (n_vocab floats) in llama.cpp's
output buffer, so a long answer goes in slices instead of one 300 MB buffer for a 150k vocabulary."""


@dataclass(frozen=True, slots=True)
class FormattedPrompt:
    tokens: list[int]
    stop: list[str]


def _file_identity(path: os.PathLike[str]) -> tuple[int, ...] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def format_chat(llama: Llama, messages: list[dict[str, Any]]) -> FormattedPrompt:
    """Apply the model's chat template (or the configured chat_format) and tokenize once, the caller's
    text as plain text (chat_text)."""
    marked = mark(messages)
    chat = compat.chat_prompt(llama, marked.messages)
    tokens: list[int] = []
    for i, (piece, callers) in enumerate(marked.pieces(chat.text)):
        tokens += llama.tokenize(piece.encode(), add_bos=chat.add_bos and i == 0, special=not callers)
    return FormattedPrompt(tokens, chat.stop)


class _Load:
    """A model load running on an instance's thread; any number of calls may wait for it, and none has to."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._then: list[Callable[[], None]] = []

    def then(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop when the load ends (at once if it has)."""
        if self.done.is_set():
            callback()
        else:
            self._then.append(callback)

    def finish(self) -> None:
        self.done.set()
        for callback in self._then:
            callback()


@dataclass(eq=False)
class _Instance:
    worker: WorkerThread
    llama: Llama | None = None
    last_used: float = 0.0
    last_request: str = ""
    """System prompt and prompt of the last call: its tokens are still in the KV cache."""
    loading: _Load | None = None
    model_file: tuple[int, ...] | None = None
    """Identity of the model file when it was loaded (device, inode, size, modification time)."""

    def affinity(self, request: str) -> tuple[bool, int]:
        """How well this instance suits `request`: loaded ones first, then the characters of the request
        it has already processed, less those of its cached prompt the request would throw away."""
        return self.llama is not None, prefix_affinity(self.last_request, request)


class LlamaBackend(Backend):
    """`instances` Llama objects per tier, each on its own thread and used by one call at a time,
    behind a bounded FIFO queue; loaded on first use (or at start with `preload`), unloaded after
    `idle_unload_s` unused."""

    capabilities = CAPABILITIES

    def __init__(self, tier: str, config: TierConfig):
        self.tier = tier
        self.config = config
        self.model_name = config.model.stem
        self._instances = [_Instance(WorkerThread(f"llama-{tier}-{i}")) for i in range(config.instances)]
        self._scratch: dict[int, Any] = {}
        self._states: dict[int, PromptStates] = {}
        self._aborts: dict[int, AbortFlag] = {}
        self.pool: InstancePool[_Instance] = InstancePool(tier, list(self._instances), config.max_queue,
                                                          config.queue_timeout_s)

    @property
    def loaded(self) -> bool:
        return any(instance.llama is not None for instance in self._instances)

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        return await self._on_instance(request, control or CallControl(), self._generate)

    async def score(self, request: GenerationRequest, answer: str, control: CallControl | None = None) -> ScoredAnswer:
        return await self._on_instance(request, control or CallControl(), self._score, answer)

    async def _on_instance(self, request: GenerationRequest, control: CallControl,
                           job: Callable[..., _Result], *args: Any) -> _Result:
        """Run `job(llama, request, *args, control)` on a free instance's thread, loading its model first."""
        # llama.cpp reuses the KV cache for the prompt's prefix that the instance processed last
        # (agents resend the same long system prompt), so prefer the free instance that shares most.
        text = f"{request.system}\x00{request.text()}"
        instance = await self.pool.acquire_for_call(control, lambda candidate: candidate.affinity(text))
        release = True
        try:
            if instance.llama is not None and _file_identity(self.config.model) != instance.model_file:
                # llama.cpp maps the file: pages of a file rewritten in place read other bytes, and past a
                # shrunken end they kill the process (SIGBUS). Let go of it before anything touches them.
                log.warning("model_file_changed", tier=self.tier, model=str(self.config.model),
                            action="reloading; replace model files by renaming a new file over the old one")
                await self._unload(instance, reason="model file changed")
            if instance.llama is None:
                control.phase = "loading"
                load = self._start_load(instance)
                left = control.seconds_left()
                try:
                    with anyio.move_on_after(math.inf if left is None else left):
                        await load.done.wait()
                finally:
                    if not load.done.is_set():  # cancelled, or past the deadline: the load cannot be
                        release = False         # interrupted; the instance returns to the pool when it ends
                        load.then(lambda: self._release(instance))
                if not load.done.is_set():
                    raise BusyError(f"tier {self.tier} is still loading its model "
                                    f"({time.monotonic() - load.started:.1f} s so far) and the call's deadline "
                                    "has passed; the load goes on for the next call")
                if load.error is not None:
                    raise load.error
            control.phase = "prompt"
            started = time.perf_counter()
            abort = self._aborts[id(instance.llama)]
            abort.clear()

            def stop() -> None:  # cancelled: the token loop sees the first, a decode in progress the second
                control.cancelled.set()
                abort.set()

            try:
                return await instance.worker.run(job, instance.llama, request, *args, control, on_cancel=stop)
            finally:
                control.generation_s = time.perf_counter() - started
                instance.last_request = text
        finally:
            if release:
                self._release(instance)

    def _release(self, instance: _Instance) -> None:
        instance.last_used = time.monotonic()
        self.pool.release(instance)

    def _start_load(self, instance: _Instance) -> _Load:
        """The instance's load in progress, or a new one on its thread."""
        if instance.loading is not None:
            return instance.loading
        load = instance.loading = _Load()
        token = anyio.lowlevel.current_token()

        def finished() -> None:
            instance.loading = None
            load.finish()

        def job() -> None:
            try:
                instance.model_file = _file_identity(self.config.model)
                llama = self._load()
                if self.config.prompt_cache_mb:
                    self._states[id(llama)] = PromptStates(self.config.prompt_cache_mb << 20)
                self._aborts[id(llama)] = AbortFlag(llama)
                instance.llama = llama
            except BaseException as exc:  # handed to the waiting calls
                load.error = exc
            try:
                anyio.from_thread.run_sync(finished, token=token)
            except RuntimeError:  # the event loop has ended
                pass

        instance.worker.submit(job)
        return load

    async def run_background(self) -> None:
        if self.config.preload:
            for instance in self._instances:
                if instance.llama is None:
                    load = self._start_load(instance)
                    await load.done.wait()
                    instance.last_used = time.monotonic()
        idle_s = self.config.idle_unload_s
        if idle_s is None:
            return
        while True:
            await anyio.sleep(min(idle_s / 4, 5.0))
            now = time.monotonic()
            for instance in self.pool.take_free(lambda i: i.llama is not None and now - i.last_used >= idle_s):
                await self._unload(instance, idle_s=round(now - instance.last_used, 1))
                self.pool.release(instance)

    async def _unload(self, instance: _Instance, **why: Any) -> None:
        llama, instance.llama = instance.llama, None
        if llama is not None:
            self._scratch.pop(id(llama), None)
            self._states.pop(id(llama), None)
            await instance.worker.run(llama.close)
            self._aborts.pop(id(llama), None)  # after close: llama.cpp holds its address until then
            log.info("model_unloaded", tier=self.tier, model=self.model_name, **why)

    async def aclose(self) -> None:
        for instance in self._instances:
            if instance.loading is not None:  # free what it is loading, not leave it behind
                await instance.loading.done.wait()
            await self._unload(instance, reason="shutdown")
            instance.worker.stop()

    def _load(self) -> Llama:
        if problem := model_file_problem(self.tier, self.config):
            raise BackendError(problem)
        from llama_cpp import Llama

        started = time.perf_counter()
        try:
            llama = Llama(
                model_path=str(self.config.model),
                n_ctx=self.config.n_ctx,
                n_batch=self.config.n_batch,
                n_gpu_layers=self.config.n_gpu_layers,
                main_gpu=self.config.main_gpu,
                tensor_split=self.config.tensor_split,
                n_threads=self.config.n_threads or available_cpus(),
                chat_format=self.config.chat_format,
                verbose=False,
            )
        except Exception as exc:
            raise BackendError(f"tier {self.tier}: llama.cpp could not load {self.config.model} ({exc})") from exc
        log.info("model_loaded", tier=self.tier, model=self.model_name,
                 load_s=round(time.perf_counter() - started, 3))
        return llama

    def _generate(self, llama: Llama, request: GenerationRequest, control: CallControl) -> Completion:
        try:
            prompt = format_chat(llama, chat_messages(request))
        except BackendError:
            raise
        except Exception as exc:
            raise RequestError(f"tier {self.tier}: the model's chat template cannot format this request ({exc})") from exc
        refuse_if_too_long(self.tier, len(prompt.tokens), request.max_tokens, self.config.n_ctx)
        try:
            return self._sample(llama, prompt, request, control)
        except Exception as exc:
            raise BackendError(f"tier {self.tier}: llama.cpp failed during generation ({exc})") from exc

    def _sample(self, llama: Llama, prompt: FormattedPrompt, request: GenerationRequest,
                control: CallControl) -> Completion:
        """The token loop. Each yielded token's distribution is still in llama.cpp's logits buffer
        (the next eval has not run), so its log-probability costs one log-sum-exp, not logits_all."""
        import llama_cpp
        import numpy as np

        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        n_vocab = llama.n_vocab()
        stops = [s.encode() for s in (*request.stop, *prompt.stop) if s]
        window = max((len(s) for s in stops), default=0) + 32
        tokens: list[int] = []
        logprobs: list[float] = []
        tail = bytearray()
        scratch = self._scratch.get(id(llama))
        if scratch is None or len(scratch) != n_vocab:
            # One buffer per model for its whole life: a fresh 0.2-0.6 MB array per call left glibc's
            # heap fragmented and the server's RSS creeping up a few KB per call.
            scratch = self._scratch[id(llama)] = np.empty(n_vocab, dtype=np.float32)
        finish: str = "length"
        on_text = control.on_text
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore") if on_text is not None else None
        # What could be the start of a stop string waits: the answer is cut before it.
        hold = max((len(s.decode(errors="ignore")) for s in stops), default=1) - 1
        unsent = ""
        states = self._states.get(id(llama))
        if states is not None:
            states.restore_best(llama, prompt.tokens)
        cached = _reusable_prefix(llama, prompt.tokens)
        generator = llama.generate(
            prompt.tokens, temp=request.temperature, reset=True, **SAMPLING
        )
        for token in generator:
            if not tokens:
                control.generating_since, control.phase = time.monotonic(), "generating"
            if (stopped := control.stop_reason()) is not None:
                finish = stopped
                break
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            tokens.append(token)
            control.tokens = len(tokens)
            if request.logprobs:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,))
                peak = logits.max()
                np.exp(np.subtract(logits, peak, out=scratch), out=scratch)
                logprobs.append(float(logits[token] - peak - np.log(scratch.sum())))
            if stops:
                tail += llama.detokenize([token])
                del tail[:-window]
                if any(stop in tail for stop in stops):
                    finish = "stop"
                    break
            if decoder is not None and len(unsent := unsent + decoder.decode(llama.detokenize([token]))) > hold:
                on_text(unsent[:len(unsent) - hold])
                unsent = unsent[len(unsent) - hold:]
            if len(tokens) >= request.max_tokens:
                break
            if request.stop_on_loop and len(tokens) % LOOP_CHECK_EVERY == 0 and len(tokens) >= 2 * LOOP_CHECK_EVERY:
                if is_repetitive(llama.detokenize(tokens[-4 * LOOP_CHECK_EVERY:]).decode("utf-8", errors="ignore")):
                    break  # cut like max_tokens: the rest would be more of the same
        generator.close()
        if states is not None:
            states.save(llama, len(prompt.tokens))
        text = llama.detokenize(tokens, prev_tokens=prompt.tokens).decode("utf-8", errors="ignore")
        if finish == "stop" and stops:
            cut = min((i for s in stops if (i := text.find(s.decode(errors="ignore"))) >= 0), default=len(text))
            text = text[:cut]
        return Completion(
            text=text.strip(),
            finish_reason=finish if finish in ("stop", "deadline") else "length",
            prompt_tokens=len(prompt.tokens),
            completion_tokens=len(tokens),
            token_logprobs=tuple(logprobs),
            cached_tokens=cached,
        )

    def _score(self, llama: Llama, request: GenerationRequest, answer: str, control: CallControl) -> ScoredAnswer:
        """One prefill over the prompt (as `_generate` formats it) and `answer` (plain text), reading the
        log-probability of each answer token off the logits of the position before it. The prompt's prefix
        already in the KV cache is not evaluated again, and what this leaves in the cache (the prompt and
        the answer) lets a generation for the same prompt that follows skip the prompt."""
        import llama_cpp
        import numpy as np

        try:
            prompt = format_chat(llama, chat_messages(request)).tokens
        except BackendError:
            raise
        except Exception as exc:
            raise RequestError(f"tier {self.tier}: the model's chat template cannot format this request ({exc})") from exc
        answer_tokens = llama.tokenize(answer.encode(), add_bos=False, special=False)
        tokens = prompt + answer_tokens
        refuse_if_too_long(self.tier, len(prompt), len(answer_tokens), self.config.n_ctx)
        n_vocab = llama.n_vocab()
        start = min(_reusable_prefix(llama, tokens), len(prompt) - 1)
        logprobs: list[float] = []
        top: list[float] = []
        control.phase = "verifying"
        try:
            compat.kv_cache_keep(llama, start)
            llama.n_tokens = start
            # The last answer token predicts nothing that is read, so it is not evaluated.
            end = len(tokens) - 1
            position = start
            while position < end:
                if (stopped := control.stop_reason()) is not None:
                    raise BackendError(f"tier {self.tier}: verification stopped ({stopped})")
                reading = position >= len(prompt) - 1
                size = min(SCORE_CHUNK, self.config.n_batch) if reading else min(self.config.n_batch, len(prompt) - 1 - position)
                batch = tokens[position:min(position + size, end)]
                compat.decode(llama, batch, n_past=position, logits_all=reading)
                llama.input_ids[position:position + len(batch)] = batch
                llama.n_tokens = position + len(batch)
                if reading:
                    for i in range(len(batch)):
                        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, i), shape=(n_vocab,))
                        target = tokens[position + i + 1]
                        peak = float(row.max())
                        norm = float(np.log(np.exp(row - peak).sum()))
                        logprobs.append(float(row[target]) - peak - norm)
                        top.append(-norm)
                position += len(batch)
        except (BackendError, RequestError):
            raise
        except Exception as exc:
            if (stopped := control.stop_reason()) is not None:  # the decode was aborted
                raise BackendError(f"tier {self.tier}: verification stopped ({stopped})") from None
            raise BackendError(f"tier {self.tier}: llama.cpp failed while scoring an answer ({exc})") from exc
        finally:
            compat.logits_stale(llama)
        return ScoredAnswer(tuple(logprobs), tuple(top), len(prompt), end - start)


def _reusable_prefix(llama: Llama, tokens: list[int]) -> int:
    """Leading `tokens` already in the KV cache of `llama` (llama-cpp-python replays the last one when the
    whole prompt is cached, so at most len(tokens) - 1 count as reused)."""
    import numpy as np

    shared = shared_prefix(llama.input_ids[: llama.n_tokens], np.asarray(tokens, dtype=np.intc))
    return min(shared, len(tokens) - 1) if tokens else 0
