"""Instance pools, queues, progress, deadlines, cancellation and model lifecycle, on real SmolLM2."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest
from mcp.client.client import Client
from structlog.testing import capture_logs

from conftest import stdio_server
from mcp_tiered.backends import GenerationRequest
from mcp_tiered.backends.llama import LlamaBackend
from mcp_tiered.backends.pool import CallControl
from mcp_tiered.config.load import load_config
from mcp_tiered.config.schema import TierConfig
from mcp_tiered.errors import BusyError
from mcp_tiered.server.mcp_server import build_server
from mcp_tiered.calls.tiers import TierRegistry

pytestmark = [pytest.mark.anyio, pytest.mark.model]

LONG = "Write the numbers from 1 to 1000, one after another, separated by commas, without stopping."


def backend(model: Path, **overrides) -> LlamaBackend:
    fields = {"model": model, "description": "t", "n_ctx": 1024, "max_tokens": 600, "n_threads": 1} | overrides
    return LlamaBackend("small", TierConfig(**fields))


def request(max_tokens: int, prompt: str = LONG) -> GenerationRequest:
    return GenerationRequest(prompt, "", max_tokens, 0.0)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_two_instances_generate_at_once_a_third_waits_and_a_fourth_is_busy(smollm2: Path) -> None:
    engine = backend(smollm2, instances=2, max_queue=1)
    spans: dict[int, tuple[float, float]] = {}
    outcomes: dict[int, str] = {}

    async def call(index: int) -> None:
        control = CallControl()
        try:
            await engine.generate(request(96), control)
            spans[index] = (control.generating_since, time.monotonic())
            outcomes[index] = "answered"
        except BusyError as exc:
            outcomes[index] = str(exc)

    with anyio.fail_after(120):
        await engine.generate(request(1, "hi"))  # load both instances' first one; the second loads on demand
        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(call, index)
                await anyio.sleep(0.05)  # a fixed arrival order
    await engine.aclose()
    assert outcomes[3] == ("tier small is busy: all its instances are in use and 1 calls are already waiting "
                           "(max_queue 1)")
    (a_start, a_end), (b_start, b_end), (c_start, _) = spans[0], spans[1], spans[2]
    assert a_start < b_end and b_start < a_end  # the first two overlap
    assert c_start >= min(a_end, b_end)  # the third started only when an instance came free


async def test_queue_timeout_is_busy_with_the_time_waited(smollm2: Path) -> None:
    engine = backend(smollm2, queue_timeout_s=0.5)
    failures = []

    async def second() -> None:
        await anyio.sleep(0.2)
        try:
            await engine.generate(request(8))
        except BusyError as exc:
            failures.append(str(exc))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.generate, request(300))
            tg.start_soon(second)
    await engine.aclose()
    assert len(failures) == 1
    assert failures[0].startswith("tier small is busy: waited 0.5 s in the queue without a free instance")


async def test_deadline_returns_the_partial_answer(small_tier_config) -> None:
    with anyio.fail_after(60):
        async with stdio_server(small_tier_config) as client:
            result = await client.call_tool("generate_small", {"prompt": LONG, "max_tokens": 600, "deadline_s": 2, "temperature": 0})
    content = result.structured_content
    assert content["finish_reason"] == "deadline"
    assert 0 < content["usage"]["completion_tokens"] < 600 and content["text"].startswith("1")
    assert 2000 <= content["latency_ms"] < 4000


async def test_progress_notifications_while_queued_and_generating(small_tier_config) -> None:
    reports: list[tuple[float, float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((time.monotonic(), progress, message or ""))

    with anyio.fail_after(120):
        async with stdio_server(small_tier_config) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "generate_small", {"prompt": LONG, "max_tokens": 450, "temperature": 0})
                await anyio.sleep(0.3)
                started = time.monotonic()
                await client.call_tool("generate_small", {"prompt": LONG, "max_tokens": 450, "temperature": 0, "cache": False},
                                       progress_callback=on_progress)
                finished = time.monotonic()
    assert finished - started > 6
    values = [p for _, p, _ in reports]
    assert values == sorted(set(values))  # strictly increasing
    times = [started] + [t for t, _, _ in reports] + [finished]
    assert max(b - a for a, b in zip(times, times[1:])) <= 2.0
    messages = " | ".join(m for _, _, m in reports)
    assert "small: waiting in the queue, position 1" in messages and "small: generating" in messages


async def test_cancelled_call_frees_the_instance_for_the_next_one_at_once(small_tier_config) -> None:
    with anyio.fail_after(120):
        async with stdio_server(small_tier_config) as client:
            async with anyio.create_task_group() as tg:
                long_call = anyio.CancelScope()

                async def first() -> None:
                    with long_call:
                        await client.call_tool("generate_small", {"prompt": LONG, "max_tokens": 600, "temperature": 0})

                tg.start_soon(first)
                await anyio.sleep(1.5)  # the first call is generating by now (~6 s in all)
                queued = None

                async def second() -> None:
                    nonlocal queued
                    queued = await client.call_tool("generate_small", {"prompt": "Say hi.", "max_tokens": 8})

                tg.start_soon(second)
                await anyio.sleep(0.2)
                cancelled_at = time.monotonic()
                long_call.cancel()
            second_done = time.monotonic()
    assert not queued.is_error
    # Without cancellation the second call would wait ~4 s more for the first to finish.
    assert second_done - cancelled_at < 1.5


async def test_idle_model_is_unloaded_and_transparently_reloaded(smollm2: Path) -> None:
    engine = backend(smollm2, idle_unload_s=1)
    with capture_logs() as events, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run_background)
            before = rss_mb()
            await engine.generate(request(4, "hi"))
            loaded = rss_mb()
            # `loaded` turns false as the unload starts; its log event comes once the memory is freed
            while not any(e["event"] == "model_unloaded" for e in events):
                await anyio.sleep(0.1)
            unloaded = rss_mb()
            again = await engine.generate(request(4, "hi"))
            tg.cancel_scope.cancel()
    await engine.aclose()
    names = [e["event"] for e in events]
    assert names.count("model_loaded") == 2 and "model_unloaded" in names
    assert loaded - before > 50 and loaded - unloaded > 50  # the model's memory came and went (MB)
    assert again.completion_tokens > 0


async def test_preload_loads_in_the_background_and_tools_list_does_not_wait(write_config, smollm2: Path) -> None:
    config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\npreload = true\n')
    tiers = TierRegistry.from_config(load_config(config))
    with anyio.fail_after(30):
        async with tiers.running(), Client(build_server(tiers)) as client:
            await client.list_tools()
            while not tiers.get("small").backend.loaded:
                await anyio.sleep(0.05)
    assert not tiers.get("small").backend.loaded  # freed when the server stopped


async def test_busy_tier_answers_with_an_error_result_through_mcp(write_config, smollm2: Path) -> None:
    config = write_config(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\nn_ctx = 1024\nmax_tokens = 600\n'
                          "max_queue = 0\n")
    results = {}
    with anyio.fail_after(60):
        async with Client(build_server(TierRegistry.from_config(load_config(config)))) as client:
            async def call(name: str, max_tokens: int) -> None:
                results[name] = await client.call_tool("generate_small", {"prompt": LONG, "max_tokens": max_tokens,
                                                                          "temperature": 0})

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "first", 200)
                await anyio.sleep(0.3)
                tg.start_soon(call, "second", 8)
    assert not results["first"].is_error
    assert results["second"].is_error and results["second"].content[0].text.endswith(
        "tier small is busy: all its instances are in use and 0 calls are already waiting (max_queue 0)")


async def test_a_call_goes_to_the_free_instance_that_already_processed_its_system_prompt(smollm2: Path) -> None:
    tier = backend(smollm2, instances=2, max_tokens=4)
    for instance in tier._instances:
        instance.llama = tier._load()
    agent_a, agent_b = "You are agent A. " * 20, "You are agent B. " * 20
    try:
        with anyio.fail_after(60):
            await tier.generate(GenerationRequest("Say yes.", agent_a, 4, 0.0))
            await tier.generate(GenerationRequest("Say no.", agent_b, 4, 0.0))
            # Without affinity the pool would hand out the instance that has been free longest: agent A's.
            held = {instance.last_request.split("\x00")[0]: instance for instance in tier._instances}
            await tier.generate(GenerationRequest("Say maybe.", agent_b, 4, 0.0))
            await tier.generate(GenerationRequest("Say perhaps.", agent_a, 4, 0.0))
    finally:
        await tier.aclose()
    assert held[agent_b].last_request == f"{agent_b}\x00Say maybe."
    assert held[agent_a].last_request == f"{agent_a}\x00Say perhaps."


async def test_a_deadline_during_the_model_load_is_busy_and_the_load_goes_on_for_the_next_call(qwen: Path) -> None:
    tier = backend(qwen, max_tokens=4)
    try:
        with capture_logs() as events, anyio.fail_after(120):
            with pytest.raises(BusyError) as busy:
                await tier.generate(request(4, "Say yes."), CallControl(deadline_s=0.05))
            still_loading = tier._instances[0].loading is not None
            answer = await tier.generate(request(4, "Say yes."))  # waits in the queue for the same load
    finally:
        await tier.aclose()
    assert re.fullmatch(r"tier small is still loading its model \(\d+\.\d s so far\) and the call's deadline has "
                        r"passed; the load goes on for the next call", str(busy.value))
    assert still_loading and answer.completion_tokens > 0
    assert [e["event"] for e in events].count("model_loaded") == 1


async def test_a_call_cancelled_during_the_model_load_returns_at_once(qwen: Path) -> None:
    tier = backend(qwen, max_tokens=4)
    try:
        with capture_logs() as events, anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tier.generate, request(4, "Say yes."))
                while tier._instances[0].loading is None:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            still_loading = tier._instances[0].loading is not None
            answer = await tier.generate(request(4, "Say yes."))
    finally:
        await tier.aclose()
    assert still_loading and answer.completion_tokens > 0
    assert [e["event"] for e in events].count("model_loaded") == 1


async def test_a_call_during_the_preload_waits_for_it_instead_of_loading_again(smollm2: Path) -> None:
    tier = backend(smollm2, max_tokens=4, preload=True)
    try:
        with capture_logs() as events, anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tier.run_background)
                await anyio.wait_all_tasks_blocked()
                answer = await tier.generate(request(4, "Say yes."))
    finally:
        await tier.aclose()
    assert answer.completion_tokens > 0
    assert [e["event"] for e in events].count("model_loaded") == 1


async def test_prompt_cache_restores_an_agents_prompt_after_another_agent_used_the_instance(smollm2: Path) -> None:
    tier = backend(smollm2, max_tokens=16, prompt_cache_mb=256)
    agent_a = "You are agent A. Answer briefly and politely. " * 30
    agent_b = "You are agent B. Answer in French if you can. " * 30
    question = "What is the capital of France?"
    try:
        with anyio.fail_after(120):
            first = await tier.generate(GenerationRequest(question, agent_a, 16, 0.0))
            await tier.generate(GenerationRequest(question, agent_b, 16, 0.0))
            again = await tier.generate(GenerationRequest(question, agent_a, 16, 0.0))
        states = tier._states[id(tier._instances[0].llama)]
    finally:
        await tier.aclose()
    assert (states.saves, states.restores) == (2, 1)
    # The restored prompt's last token is evaluated alone, the first time in a batch with the rest: llama.cpp's
    # kernels round the two apart (up to 0.016 seen on an AVX2 build, under 0.001 with AVX-512).
    assert again.text == first.text and again.token_logprobs == pytest.approx(first.token_logprobs, abs=0.05)
