from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from postgres import Postgres, binaries as postgres_binaries
from mcp_tiered.backends import Backend, Completion, GenerationRequest
from mcp_tiered.backends.base import LOCAL
from mcp_tiered.engines.anthropic import CAPABILITIES as CLOUD_API
from mcp_tiered.config.schema import default_models_dir
from mcp_tiered.weights.default_models import QWEN_CODER_1_5B, SMOLLM2, ModelSpec

REPO = Path(__file__).resolve().parent.parent
MCP_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""What the MCP SDK gives its own HTTP clients: a tool call that loads a model and generates on a busy 2-core
machine can take longer than httpx's 5 s default before its first byte."""
# Servers started by the tests keep their default ledger (in the user data dir) out of the real one.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="mcp-tiered-test-data-")
MCP_TIERED = str(Path(sys.executable).with_name("mcp-tiered"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _model(spec: ModelSpec) -> Path:
    path = default_models_dir() / spec.filename
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/setup.sh (it fetches the default models)")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return _model(SMOLLM2)


@pytest.fixture(scope="session")
def qwen() -> Path:
    return _model(QWEN_CODER_1_5B)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "models.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def smollm2_tier(smollm2: Path, max_tokens: int) -> str:
    return f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "SmolLM2 135M for tests"\nn_ctx = 1024\nmax_tokens = {max_tokens}\n'


@pytest.fixture
def small_config(write_config: Callable[[str], Path], smollm2: Path) -> Path:
    """A one-tier config on the real SmolLM2 model."""
    return write_config(smollm2_tier(smollm2, 256))


class ScriptedBackend(Backend):
    """A fake engine for unit tests of dispatch code: answers from a script, records requests."""

    def __init__(self, replies: list[Completion | Exception], model_name: str = "scripted", is_local: bool = True,
                 generation_s: float = 0.0, delay_s: float = 0.0):
        self.capabilities = LOCAL if is_local else CLOUD_API
        self.replies = list(replies)
        self.requests: list[GenerationRequest] = []
        self.model_name = model_name
        self.generation_s = generation_s
        """Reported to the call's control as the seconds the engine worked (for ledger tests)."""
        self.delay_s = delay_s
        """How long each reply takes."""

    async def generate(self, request: GenerationRequest, control=None) -> Completion:  # noqa: ANN001
        self.requests.append(request)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        if control is not None:
            control.generation_s = self.generation_s
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_TIERED_CONFIG", "ANTHROPIC_API_KEY")}
    env.update(extra)
    return env


def serve_args(config: Path) -> list[str]:
    return ["serve", "--config", str(config)]


@asynccontextmanager
async def stdio_server(config: Path, errlog_path: Path | None = None, **env: str) -> AsyncIterator[Client]:
    """`mcp-tiered serve --config CONFIG` as a subprocess, with the SDK's stdio client; stderr to a file."""
    params = StdioServerParameters(command=MCP_TIERED, args=serve_args(config), env=server_env(**env), cwd=str(REPO))
    errlog_path = errlog_path or config.with_suffix(".stderr.log")
    with errlog_path.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


@pytest.fixture
def small_tier_config(write_config: Callable[[str], Path], smollm2: Path) -> Path:
    """One SmolLM2 instance with room for long answers (progress, deadline, cancellation tests)."""
    return write_config(smollm2_tier(smollm2, 600))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def http_server(config: Path, transport: str = "http", started: list | None = None, prefix: tuple[str, ...] = (),
                      exit_code: int = 0, port: int | None = None, **env: str) -> AsyncIterator[str]:
    """`mcp-tiered serve --transport http|sse` on `port` (default: a free one); stopped with SIGTERM (unless a
    test stopped it already), then checked for a clean exit and a released port. `started` receives the
    process; `prefix` is a command that runs it (such as prlimit with its options)."""
    port = port or free_port()
    errlog = (config.parent / f"{transport}.stderr").open("w")
    process = await anyio.open_process(
        [*prefix, MCP_TIERED, "serve", "--config", str(config), "--transport", transport, "--port", str(port)],
        env=server_env(**env), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog)
    base = f"http://127.0.0.1:{port}"
    if started is not None:
        started.append(process)
    try:
        async with httpx2.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx2.TransportError:
                    if process.returncode is not None:
                        raise AssertionError(f"the server exited with {process.returncode}; see {errlog.name}")
                    await anyio.sleep(0.1)
        yield base
    finally:
        if started is None:  # else the test stopped the server itself
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            code = await process.wait()
        errlog.close()
    assert code == exit_code  # a clean shutdown, unless the test killed it
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server would
        s.bind(("127.0.0.1", port))  # the port was released


async def generating_spans(engine, prompts: list[str], max_tokens: int = 48) -> list[tuple[float, float]]:
    """Calls `engine` with each prompt at once (temperature 0.8); each call's (first token, end) times, sorted."""
    from mcp_tiered.backends import GenerationRequest
    from mcp_tiered.backends.pool import CallControl

    spans: list[tuple[float, float]] = []

    async def call(prompt: str) -> None:
        control = CallControl()
        await engine.generate(GenerationRequest(prompt, "", max_tokens, 0.8), control)
        spans.append((control.generating_since, time.monotonic()))

    async with anyio.create_task_group() as tg:
        for prompt in prompts:
            tg.start_soon(call, prompt)
    return sorted(spans)


def _postgres_cluster() -> Postgres:
    folder = postgres_binaries()
    if folder is None:
        why = REPO / ".tools" / "POSTGRES_UNAVAILABLE"
        pytest.skip(f"PostgreSQL's initdb and postgres are not installed: "
                    f"{why.read_text().strip() if why.exists() else 'run scripts/setup.sh --test'}")
    try:
        cluster = Postgres(folder)
        cluster.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"a PostgreSQL cluster could not be started here: {exc}")
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL (tests/postgres.py) for the session's store tests."""
    cluster = _postgres_cluster()
    yield cluster
    cluster.close()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own, which it may stop and start."""
    cluster = _postgres_cluster()
    yield cluster
    cluster.close()


@pytest.fixture
def store_url(postgres: Postgres) -> str:
    """A new, empty database on the session's cluster, over its Unix socket."""
    return postgres.url(postgres.new_database())


SECRETS: set[str] = set()
"""Every token and key a test handed to a server: none may appear in any log of the whole run."""


def secret(value: str) -> str:
    """`value`, remembered for the end-of-run search of every log (no_secret_in_any_log)."""
    SECRETS.add(value)
    return value


LOG_SUFFIXES = (".stderr", ".log")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: every server's, provider's and tool's log under the run's temporary folder is
    searched for every remembered token and key (an error at the end of the run if one is found)."""
    yield
    if not SECRETS:
        return
    logs = [p for p in tmp_path_factory.getbasetemp().rglob("*") if p.is_file() and p.name.endswith(LOG_SUFFIXES)]
    found = [(str(p), s[:8] + "…") for p in logs for s in SECRETS if s in p.read_text(errors="replace")]
    assert not found, f"secrets in logs: {found}"
