"""`/v1/chat/completions` driven, unchanged, by a third-party client: LiteLLM's `completion` and `acompletion` with
`model="openai/<model>"` and the server as `api_base`. LiteLLM is kept off the network: its bundled model cost map
and offline mode are set before it is imported, and every name it resolves, at import and in each test, must be
the server's loopback address."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from conftest import http_server
from openai_face.test_chat_completions import config_for, ledger

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
reached: list[str] = []
"""Every host other than the loopback that LiteLLM tried to resolve (and was refused)."""


@contextmanager
def loopback_only() -> Iterator[None]:
    """Refuses, and records, every name resolution of a host other than the loopback while it is open."""
    resolve = socket.getaddrinfo

    def guarded(host, *args, **kwargs):  # noqa: ANN001, ANN202
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK:
            reached.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: this test reaches only the loopback")
        return resolve(host, *args, **kwargs)

    socket.getaddrinfo = guarded
    try:
        yield
    finally:
        socket.getaddrinfo = resolve


# The bundled cost map instead of fetching it at import; offline mode for every other catalog, header list or
# tokenizer LiteLLM would fetch on its own.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
with loopback_only():
    import litellm  # noqa: E402
    from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info  # noqa: E402

pytestmark = [
    pytest.mark.anyio, pytest.mark.model,
    # LiteLLM's own models, built lazily at the first call: pydantic's notes on them, nothing about the server.
    pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211:"
                               "litellm.litellm_core_utils.model_response_utils"),
]

KEY = "unused"
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(autouse=True)
def no_network() -> Iterator[None]:
    """Each test's calls reach the server and nothing else."""
    with loopback_only():
        yield
    assert reached == []


def test_litellm_was_imported_without_the_network() -> None:
    source = get_model_cost_map_source_info()
    assert (source["source"], source["url"]) == ("local", None)
    assert reached == []


async def test_acompletion_with_auto_answers_through_the_dispatcher(tmp_path: Path, smollm2: Path) -> None:
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2)) as base:
            response = await litellm.acompletion(model="openai/auto", messages=messages, temperature=0,
                                                 api_base=f"{base}/v1", api_key=KEY, timeout=60)
    assert response.choices[0].message.content
    assert response.model == "small/SmolLM2-135M-Instruct.Q4_1"
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert ledger(tmp_path) == [("/v1/chat/completions auto", "small", "small", "anonymous", "ok")]


async def test_a_litellm_stream_yields_the_text_and_the_usage(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2)) as base:
            stream = await litellm.acompletion(model="openai/small", messages=HI, temperature=0, stream=True,
                                               stream_options={"include_usage": True}, api_base=f"{base}/v1",
                                               api_key=KEY, timeout=60)
            chunks = [chunk async for chunk in stream]
            whole = await litellm.acompletion(model="openai/small", messages=HI, temperature=0,
                                              api_base=f"{base}/v1", api_key=KEY, timeout=60)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == whole.choices[0].message.content
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].total_tokens == whole.usage.total_tokens
    assert usage[-1].completion_tokens == whole.usage.completion_tokens


async def test_completion_with_a_pinned_tier_answers_from_that_tier_alone(tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(90):
        async with http_server(config_for(tmp_path, smollm2)) as base:
            response = await anyio.to_thread.run_sync(lambda: litellm.completion(
                model="openai/small:never", messages=HI, max_tokens=4, temperature=0, api_base=f"{base}/v1",
                api_key=KEY, timeout=60))
    assert response.choices[0].message.content is not None
    assert 0 < response.usage.completion_tokens <= 4
    assert ledger(tmp_path) == [("/v1/chat/completions small:never", "small", "small", "anonymous", "ok")]


async def test_an_unknown_model_is_litellms_not_found_error_with_the_servers_sentence(
        tmp_path: Path, smollm2: Path) -> None:
    with anyio.fail_after(60):
        async with http_server(config_for(tmp_path, smollm2)) as base:
            with pytest.raises(litellm.NotFoundError) as unknown:
                await litellm.acompletion(model="openai/gpt-4o", messages=HI, api_base=f"{base}/v1", api_key=KEY,
                                          timeout=60)
    assert unknown.value.status_code == 404
    assert "model: 'gpt-4o' is not a model here; valid models are auto, small, small:never" in unknown.value.message
