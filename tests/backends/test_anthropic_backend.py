"""The cloud backend: the real anthropic SDK against a local Messages API server."""

from __future__ import annotations

import anyio
import pytest

from fake_anthropic import FakeAnthropic
from mcp_tiered.backends import GenerationRequest
from mcp_tiered.backends.anthropic import AnthropicBackend
from mcp_tiered.backends.pool import CallControl
from mcp_tiered.config.schema import CloudConfig
from mcp_tiered.errors import BackendError

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest("What is the capital of France?", "Be brief.", 64, 0.0, ("\n\n",))


def cloud(fake: FakeAnthropic, **overrides) -> AnthropicBackend:
    """The tier the [cloud] shorthand declares, as models.toml would."""
    config = CloudConfig(model="claude-test", base_url=fake.url, **({"max_retries": 2, "timeout_s": 10} | overrides))
    return AnthropicBackend("cloud", config.as_tier(), api_key="sk-test-key")


async def test_success_returns_text_and_usage_and_sends_the_request() -> None:
    with FakeAnthropic() as fake:
        with anyio.fail_after(10):
            completion = await cloud(fake).generate(REQUEST)
    assert (completion.text, completion.finish_reason) == ("Cloud answer: Paris.", "stop")
    assert (completion.prompt_tokens, completion.completion_tokens) == (20, 8)
    (request,) = fake.requests
    assert request["headers"]["authorization"] == "Bearer sk-test-key"
    assert request["body"]["model"] == "claude-test" and request["body"]["system"] == "Be brief."
    assert request["body"]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert request["body"]["stop_sequences"] == ["\n\n"] and request["body"]["max_tokens"] == 64


async def test_401_is_one_clear_error_without_retry() -> None:
    with FakeAnthropic(default="401") as fake:
        with anyio.fail_after(10), pytest.raises(BackendError) as failed:
            await cloud(fake).generate(REQUEST)
    assert str(failed.value) == "cloud: the Anthropic API rejected the API key (HTTP 401); check $ANTHROPIC_API_KEY"
    assert len(fake.requests) == 1


async def test_429_with_retry_after_is_retried_then_succeeds() -> None:
    with FakeAnthropic() as fake:
        fake.script.extend(["429", "429"])
        with anyio.fail_after(20):
            completion = await cloud(fake).generate(REQUEST)
    assert completion.text == "Cloud answer: Paris."
    assert len(fake.requests) == 3


async def test_529_overloaded_is_retried_then_succeeds() -> None:
    with FakeAnthropic() as fake:
        fake.script.append("529")
        with anyio.fail_after(20):
            completion = await cloud(fake).generate(REQUEST)
    assert completion.text == "Cloud answer: Paris."
    assert len(fake.requests) == 2


async def test_persistent_529_gives_up_after_the_configured_retries() -> None:
    with FakeAnthropic(default="529") as fake:
        with anyio.fail_after(30), pytest.raises(BackendError, match=r"^cloud: the Anthropic API answered HTTP 529 after 1 retries \(Overloaded\)$"):
            await cloud(fake, max_retries=1).generate(REQUEST)
    assert len(fake.requests) == 2


async def test_slow_answer_is_a_clear_timeout_error() -> None:
    with FakeAnthropic(default="slow", slow_s=3) as fake:
        with anyio.fail_after(20), pytest.raises(BackendError) as failed:
            await cloud(fake, timeout_s=0.5, max_retries=0).generate(REQUEST)
    assert str(failed.value) == "cloud: no answer from the Anthropic API within 0.5 s (cloud.timeout_s), 0 retries included"


async def test_malformed_json_is_a_clear_error() -> None:
    with FakeAnthropic(default="malformed") as fake:
        with anyio.fail_after(10), pytest.raises(BackendError) as failed:
            await cloud(fake, max_retries=0).generate(REQUEST)
    assert str(failed.value) == "cloud: the Anthropic API sent a response that is not a valid Messages API answer"


async def test_deadline_returns_the_text_streamed_so_far_counted_at_its_worst_case() -> None:
    reply = "one two three four five six seven eight"
    with FakeAnthropic(reply=reply, default="drip", drip_s=0.5) as fake:
        control = CallControl(deadline_s=1.2)
        with anyio.fail_after(3):
            completion = await cloud(fake).generate(REQUEST, control)
    assert completion.finish_reason == "deadline"
    assert completion.text and reply.startswith(completion.text) and completion.text != reply
    assert control.tokens == len(completion.text.split())
    assert (completion.prompt_tokens, completion.completion_tokens) == (20, REQUEST.max_tokens)


async def test_deadline_before_any_text_is_one_clear_error() -> None:
    with FakeAnthropic(default="slow", slow_s=3) as fake:
        with anyio.fail_after(3), pytest.raises(BackendError) as failed:
            await cloud(fake).generate(REQUEST, CallControl(deadline_s=0.5))
    assert str(failed.value).startswith("cloud: no answer from the Anthropic API before the call's deadline (0.")


async def test_a_stream_reset_mid_answer_is_one_clear_backend_error() -> None:
    with FakeAnthropic(default="reset") as fake:
        with anyio.fail_after(10), pytest.raises(BackendError) as failed:
            await cloud(fake, max_retries=0).generate(REQUEST)
    assert str(failed.value).startswith("cloud: the connection to the Anthropic API broke during the answer (")


async def test_a_stream_that_ends_without_message_stop_is_not_taken_as_complete() -> None:
    with FakeAnthropic(default="cut") as fake:
        with anyio.fail_after(10), pytest.raises(BackendError) as failed:
            await cloud(fake, max_retries=0).generate(REQUEST)
    assert str(failed.value) == ("cloud: the Anthropic API's answer stream ended before the answer was complete "
                                 "(no message_stop)")
