"""A tier served by llama.cpp's own `llama-server`, which mcp-tiered starts and supervises: its `parallel`
slots generate at once on one copy of the weights (continuous batching).

The server is private to the tier: bound to 127.0.0.1 on a free port, with a per-process API key (passed
in its environment, not on its command line), started on the first call (or with `preload`), checked
healthy before that call, stopped after `idle_unload_s` without calls and at shutdown, and killed by the
kernel if mcp-tiered dies (PR_SET_PDEATHSIG). A server that exits is started again on the next call, after
a backoff that doubles with each failure in a row (1 s up to 30 s); the calls it was serving fail with one
sentence (and escalate, reason `error`).

Each call takes a slot from the tier's pool (the free one that last processed most of its prompt, for
llama-server's prompt cache), formats with the model's own template (`/apply-template`), tokenizes the
template's text with control tokens and the caller's text without (`/tokenize`, see chat_text), and
streams `/completion` from those tokens, with each token's log-probability. The deadline returns the
text so far; cancellation closes the stream, which stops the slot.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import structlog

from ..config.schema import LlamaServerTierConfig, model_file_problem
from ..engines.llama_server import CAPABILITIES
from ..config.explain import key_path
from ..errors import BackendError, BusyError, PromptTooLongError
from .wire import llama_api, openai_api
from .base import SAMPLING, Backend, Completion, GenerationRequest, prefix_affinity, refuse_if_too_long
from .wire.http_stream import DeadlinePassed, EndpointError, context_refusal, stream_answer
from .llama import available_cpus
from .pool import CallControl, InstancePool

log = structlog.get_logger(__name__)

BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 10.0


def find_server_binary(config: LlamaServerTierConfig) -> Path | None:
    """`server_binary`, else the llama-server beside this Python (scripts/setup.sh puts it there), else PATH."""
    if config.server_binary is not None:
        return config.server_binary
    beside = Path(sys.executable).with_name("llama-server")
    if beside.exists():
        return beside
    found = shutil.which("llama-server")
    return Path(found) if found else None


def server_binary_problem(name: str, config: LlamaServerTierConfig, run: bool = False) -> str | None:
    """Why the tier's llama-server cannot be run, or None. `run` (for `check`): also run it with `--version`
    to see that it is llama.cpp's server."""
    binary = find_server_binary(config)
    path = key_path(["tiers", name, "server_binary"])
    if binary is None:
        return (f"{path}: no llama-server found (not beside {sys.executable}, not on PATH); run "
                "`scripts/setup.sh --llama-server`, which builds it against the in-process engine's llama.cpp, or "
                "name one with server_binary")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return f"{path}: {binary} is not an executable file"
    if run and (problem := _version_problem(binary)):
        return f"{path}: {binary} {problem}"
    return None


def _version_problem(binary: Path, timeout_s: float = 10.0, limit: int = 1 << 16) -> str | None:
    """Why `binary --version` is not llama.cpp's answer ("version: …" then "built with … for …", on stderr),
    or None. Reads at most `limit` bytes for at most `timeout_s`, then kills what it started."""
    import re
    import selectors

    try:
        process = subprocess.Popen([str(binary), "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return f"cannot be run ({exc.strerror or exc})"
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while len(out) < limit and (left := deadline - time.monotonic()) > 0:
                if selector.select(min(left, 0.1)):
                    if not (chunk := os.read(process.stdout.fileno(), limit - len(out))):
                        break
                    out += chunk
                elif process.poll() is not None:  # exited, and what it left running holds the pipe
                    break
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # it and anything it started
        except OSError:  # gone already
            pass
        process.wait()
        process.stdout.close()
    if re.search(rb"^version: \S.*\nbuilt with .+ for ", out, re.MULTILINE):
        return None
    if time.monotonic() >= deadline:
        return f"did not answer --version within {timeout_s:.0f} s, so it is not llama.cpp's llama-server"
    return ("is not llama.cpp's llama-server: `--version` did not print llama.cpp's version banner (\"version: …\" "
            "and \"built with … for …\")")


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when mcp-tiered dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(eq=False)
class _Slot:
    index: int
    last_request: str = ""


class _Server:
    """One running llama-server process."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, key: str, log_path: Path):
        self.process = process
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.log_path = log_path
        self.exited_at: float | None = None
        """When the process ended (monotonic), noted by a thread that waits for it: the restart backoff
        counts from the exit, not from when a call noticed it."""
        threading.Thread(target=self._wait, name=f"llama-server-{process.pid}", daemon=True).start()

    def _wait(self) -> None:
        self.process.wait()
        self.exited_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


class LlamaServerBackend(Backend):
    capabilities = CAPABILITIES

    def __init__(self, tier: str, config: LlamaServerTierConfig):
        self.tier = tier
        self.config = config
        self.model_name = config.model.stem
        self.pool: InstancePool[_Slot] = InstancePool(tier, [_Slot(i) for i in range(config.parallel)],
                                                      config.max_queue, config.queue_timeout_s)
        self._server: _Server | None = None
        self._starting: anyio.Event | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._start_error: BaseException | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure = ""
        """What went wrong last, for the calls refused until `_retry_at`."""
        self._busy = 0
        self._last_used = time.monotonic()
        # No keep-alive: llama-server may close an idle connection just as a call picks it from the pool
        # ("Server disconnected without sending a response"); a new local connection costs well under 1 ms.
        self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(None, connect=10.0),
                                        limits=httpx2.Limits(max_keepalive_connections=0))
        self._logs: Path | None = None
        """A folder for the server's own log, made at its first start, removed at aclose."""

    @property
    def loaded(self) -> bool:
        return self._server is not None and self._server.alive

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        control = control or CallControl()
        text = f"{request.system}\x00{request.text()}"
        slot = await self.pool.acquire_for_call(control, lambda candidate: prefix_affinity(candidate.last_request, text))
        self._busy += 1
        started = time.perf_counter()
        try:
            server = await self._running(control)
            started = time.perf_counter()  # generation seconds, as on the in-process engine, exclude the start
            control.phase = "prompt"
            try:
                if request.needs_tools:
                    completion = await self._chat(server, slot, request, control)
                else:
                    tokens = await self._tokens(server, request, control)
                    refuse_if_too_long(self.tier, len(tokens), request.max_tokens, self.config.n_ctx)
                    completion = await self._complete(server, slot, tokens, request, control)
            except DeadlinePassed:
                return Completion("", "deadline", 0, 0)
            slot.last_request = text
            return completion
        finally:
            control.generation_s = time.perf_counter() - started
            self._busy -= 1
            self._last_used = time.monotonic()
            self.pool.release(slot)

    # The process

    async def _running(self, control: CallControl) -> _Server:
        """The tier's server, started if it is not running. The start runs on its own: a call that is
        cancelled, or whose deadline passes, stops waiting for it, and the start goes on for the next call."""
        if self._server is not None and self._server.alive:
            return self._server
        if self._server is not None:  # it died since the last call
            dead, self._server = self._server, None
            log.error("llama_server_exited", tier=self.tier, code=dead.process.returncode, log=dead.log_tail())
            self._note_failure(f"llama-server exited with {dead.process.returncode}", dead.exited_at)
        if self._starting is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise BackendError(f"tier {self.tier}: {self._last_failure}; it is started again in {wait:.1f} s")
            self._starting = anyio.Event()
            self._start_error = None
            self._start_task = asyncio.get_running_loop().create_task(self._start_on_its_own(self._starting))
        control.phase = "loading"
        starting = self._starting
        left = control.seconds_left()
        with anyio.move_on_after(math.inf if left is None else left):
            await starting.wait()
        if not starting.is_set():
            raise BusyError(f"tier {self.tier} is still starting llama-server and the call's deadline has passed; "
                            "the start goes on for the next call")
        if self._server is None or not self._server.alive:
            if isinstance(self._start_error, BackendError):
                raise self._start_error
            raise BackendError(f"tier {self.tier}: llama-server did not start ({self._start_error!r})")
        return self._server

    async def _start_on_its_own(self, done: anyio.Event) -> None:
        try:
            self._server = await self._start()
            self._failures = 0
        except Exception as exc:
            self._start_error = exc
            self._note_failure(f"llama-server could not be started ({str(exc).removeprefix(f'tier {self.tier}: ')})")
        finally:
            self._starting = None
            done.set()

    def _note_failure(self, what: str, at: float | None = None) -> None:
        self._failures += 1
        self._last_failure = what
        self._retry_at = (time.monotonic() if at is None else at) + min(2.0 ** (self._failures - 1), BACKOFF_MAX_S)

    async def _start(self) -> _Server:
        if problem := model_file_problem(self.tier, self.config) or server_binary_problem(self.tier, self.config):
            raise BackendError(problem)
        binary = find_server_binary(self.config)
        assert binary is not None
        c = self.config
        port, key = _free_port(), secrets.token_urlsafe(24)
        args = [str(binary), "--model", str(c.model), "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(c.parallel), "--ctx-size", str(c.n_ctx * c.parallel), "--no-kv-unified",
                "--n-gpu-layers", "all" if c.n_gpu_layers == -1 else str(c.n_gpu_layers),
                "--main-gpu", str(c.main_gpu), "--threads", str(c.n_threads or available_cpus()),
                "--batch-size", str(c.n_batch), "--no-webui", "--jinja"]
        if c.tensor_split is not None:
            args += ["--tensor-split", ",".join(f"{share:g}" for share in c.tensor_split)]
        if self._logs is None:
            self._logs = Path(tempfile.mkdtemp(prefix=f"mcp-tiered-{self.tier}-"))
        log_path = self._logs / "llama-server.log"
        started = time.perf_counter()
        with log_path.open("wb") as out:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, "LLAMA_API_KEY": key}, preexec_fn=_die_with_parent)
        server = _Server(process, f"http://127.0.0.1:{port}", key, log_path)
        try:
            with anyio.fail_after(c.startup_timeout_s):
                while True:
                    if not server.alive:
                        raise BackendError(f"tier {self.tier}: llama-server exited with {process.returncode} while "
                                           f"starting ({server.log_tail()})")
                    try:
                        if (await self._http.get(f"{server.url}/health", headers=server.headers)).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.1)
        except TimeoutError:
            await self._stop(server)
            raise BackendError(f"tier {self.tier}: llama-server was not ready within {c.startup_timeout_s:g} s "
                               f"({key_path(['tiers', self.tier, 'startup_timeout_s'])})") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop(server)
            raise
        log.info("model_loaded", tier=self.tier, model=self.model_name, engine="llama-server", pid=process.pid,
                 slots=c.parallel, load_s=round(time.perf_counter() - started, 3))
        return server

    async def _stop(self, server: _Server) -> None:
        if server.alive:
            server.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_GRACE_S):
                while server.alive:
                    await anyio.sleep(0.05)
            if server.alive:
                server.process.kill()
        await anyio.to_thread.run_sync(server.process.wait)

    async def run_background(self) -> None:
        if self.config.preload:
            try:
                await self._running(CallControl())
            except (BackendError, BusyError) as exc:
                log.error("preload_failed", tier=self.tier, reason=str(exc))
        idle_s = self.config.idle_unload_s
        if idle_s is None:
            return
        while True:
            await anyio.sleep(min(idle_s / 4, 5.0))
            server = self._server
            if (server is not None and self._busy == 0 and self._starting is None
                    and time.monotonic() - self._last_used >= idle_s):
                self._server = None
                await self._stop(server)
                log.info("model_unloaded", tier=self.tier, model=self.model_name, engine="llama-server",
                         idle_s=round(time.monotonic() - self._last_used, 1))

    async def aclose(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()  # _start stops a server it had begun
            with anyio.CancelScope(shield=True):
                await asyncio.wait([self._start_task])
        server, self._server = self._server, None
        if server is not None:
            await self._stop(server)
            log.info("model_unloaded", tier=self.tier, model=self.model_name, engine="llama-server",
                     reason="shutdown")
        await self._http.aclose()
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)

    # One call

    async def _failure(self, server: _Server, exc: EndpointError) -> BackendError:
        """One sentence for a failed request, saying whether the server is still running."""
        with anyio.move_on_after(0.5):  # a server that closed its socket is often a process exiting
            while server.alive:
                await anyio.sleep(0.02)
        state = "it exited" if not server.alive else "it is still running"
        return BackendError(f"tier {self.tier}: llama-server {exc} ({state})")

    async def _tokens(self, server: _Server, request: GenerationRequest, control: CallControl) -> list[int]:
        try:
            return await llama_api.prompt_tokens(self._http, server.url, server.headers, request, control)
        except EndpointError as exc:
            raise await self._failure(server, exc) from exc

    async def _chat(self, server: _Server, slot: _Slot, request: GenerationRequest, control: CallControl) -> Completion:
        """A request with tools, through the server's OpenAI API, whose template (--jinja) renders the tools and
        whose parser returns the model's calls; the caller's text with its control-token spellings broken first
        (the API tokenizes the rendered text with control tokens). llama-server streams no log-probabilities
        with tools, so a text answer here is judged without token confidence."""
        try:
            spellings = await llama_api.control_spellings(self._http, server.url, server.headers,
                                                          f"{request.system}\n{request.text()}", control)
            body = {**openai_api.chat_body(self.model_name, request, False, spellings), "id_slot": slot.index,
                    "cache_prompt": True, **{k: v for k, v in SAMPLING.items() if k != "top_p"}}
            return await stream_answer(self._http, server.url, "/v1" + openai_api.PATH, body, server.headers, request,
                                       control, openai_api.ChatReader())
        except EndpointError as exc:
            if context_refusal(exc):
                raise PromptTooLongError(f"prompt is too long for tier {self.tier}: llama-server {exc}; shorten the "
                                         "prompt or lower max_tokens", prompt_tokens=0, max_tokens=request.max_tokens,
                                         n_ctx=self.config.n_ctx) from None
            raise await self._failure(server, exc) from exc

    async def _complete(self, server: _Server, slot: _Slot, tokens: list[int], request: GenerationRequest,
                        control: CallControl) -> Completion:
        body = llama_api.completion_body(tokens, request, id_slot=slot.index)
        try:
            return await stream_answer(self._http, server.url, "/completion", body, server.headers, request, control,
                                       llama_api.NativeReader(), len(tokens))
        except EndpointError as exc:
            raise await self._failure(server, exc) from exc
