"""What stalls and dies under the server's engines (issue 20, items 4, 15, 16): a managed llama-server that
stops answering, one that died a while ago or cannot be started, and a verifier cancelled in the middle of a
long reading. The real llama-server and models (SmolLM2, Qwen2.5-Coder 1.5B)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from mcp_tiered.backends import GenerationRequest
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.backends.pool import CallControl
from mcp_tiered.config.schema import TierConfig
from mcp_tiered.errors import BackendError
from test_llama_server import backend, request

pytestmark = [pytest.mark.anyio, pytest.mark.model]


async def test_a_stopped_llama_server_does_not_hold_a_call_past_its_deadline(smollm2: Path) -> None:
    engine = backend(smollm2)
    try:
        with anyio.fail_after(90):
            await engine.generate(request("Say hi.", 4))
        pid = engine._server.process.pid
        os.kill(pid, signal.SIGSTOP)  # alive, and silent: /apply-template is never answered
        try:
            control = CallControl()
            control.set_deadline(2.0)
            with anyio.fail_after(6):
                answer = await engine.generate(request("Say hi.", 4), control)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await engine.aclose()
    assert answer.finish_reason == "deadline" and answer.text == ""


async def dead(process) -> None:  # noqa: ANN001
    while process.poll() is None:
        await anyio.sleep(0.05)


async def test_a_server_that_died_longer_ago_than_the_backoff_is_started_again_at_once(smollm2: Path) -> None:
    engine = backend(smollm2)
    try:
        with anyio.fail_after(90):
            await engine.generate(request("Say hi.", 4))
            first = engine._server.process
            first.send_signal(signal.SIGKILL)
            await dead(first)
            await anyio.sleep(1.5)  # longer than the 1 s backoff after one failure, counted from the exit
            answer = await engine.generate(request("Say OK.", 4))
    finally:
        await engine.aclose()
    assert answer.text and first.returncode == -signal.SIGKILL


async def test_a_server_binary_that_cannot_run_is_named_on_every_call_not_said_to_have_exited(
        smollm2: Path, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("not a program\n")  # not executable
    engine = backend(smollm2, server_binary=str(binary))
    errors = []
    try:
        with anyio.fail_after(30):
            for _ in range(2):
                with pytest.raises(BackendError) as failed:
                    await engine.generate(request("Say hi.", 4))
                errors.append(str(failed.value))
    finally:
        await engine.aclose()
    assert all(f"{binary} is not an executable file" in error for error in errors)
    assert "exited" not in errors[1] and "it is started again in" in errors[1]


NOTES = "Summarise these notes. " + " ".join(f"Note {i}: the meeting moved to room {i}." for i in range(220))


async def seconds_to_free(qwen: Path, phase: str, job) -> float:  # noqa: ANN001
    """How long the instance takes to free after `job(engine, request, control)` is cancelled 0.3 s into
    `phase` of a 2 000-token prompt's prefill (one batch of n_batch 2048: a minute or more on this CPU)."""
    large = LlamaBackend("large", TierConfig(description="l", model=qwen, n_ctx=4096, n_batch=2048))
    control = CallControl()
    try:
        with anyio.fail_after(120):
            await large.generate(GenerationRequest("Hi.", "", 1, 0.0))  # loaded
            async with anyio.create_task_group() as tg:
                tg.start_soon(job, large, GenerationRequest(NOTES, "", 8, 0.0), control)
                while control.phase != phase:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.3)  # inside the prefill
                cancelled = time.monotonic()
                tg.cancel_scope.cancel()
            freed_after = time.monotonic() - cancelled
            assert (await large.generate(GenerationRequest("Say OK.", "", 2, 0.0), CallControl())).text
    finally:
        await large.aclose()
    return freed_after


async def test_a_reading_cancelled_in_its_prefill_frees_the_verifier_at_once(qwen: Path) -> None:
    """Cancelled, llama.cpp stops inside the batch (its abort callback), not after it."""
    async def read(engine: LlamaBackend, request: GenerationRequest, control: CallControl) -> None:
        await engine.score(request, "Room 5.", control)

    assert await seconds_to_free(qwen, "verifying", read) < 2.0


async def test_a_generation_cancelled_in_its_prompts_prefill_frees_the_instance_at_once(qwen: Path) -> None:
    async def generate(engine: LlamaBackend, request: GenerationRequest, control: CallControl) -> None:
        await engine.generate(request, control)

    assert await seconds_to_free(qwen, "prompt", generate) < 2.0
