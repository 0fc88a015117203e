"""`engine = "anthropic"` tiers: Claude through the official anthropic SDK (its retries, backoff and retry-after)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import anthropic
import anyio
import httpx2

from ..config.schema import AnthropicTierConfig
from ..engines.anthropic import CAPABILITIES
from ..errors import BackendError, RequestError
from .base import Backend, Completion, GenerationRequest, ToolCall
from .pool import CallControl


MALFORMED = "{tier}: the Anthropic API sent a response that is not a valid Messages API answer"
TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}
INCOMPLETE = "{tier}: the Anthropic API's answer stream ended before the answer was complete (no message_stop)"


class AnthropicBackend(Backend):
    capabilities = CAPABILITIES

    def __init__(self, tier: str, config: AnthropicTierConfig, api_key: str):
        self.tier, self.config = tier, config
        self.model_name = config.model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        control = control or CallControl()
        control.tier, control.phase, control.tokens = self.tier, "waiting for the cloud", 0
        started = time.perf_counter()
        try:
            return await self._stream(request, control)
        finally:
            control.generation_s = time.perf_counter() - started

    async def _stream(self, request: GenerationRequest, control: CallControl) -> Completion:
        """Streamed, so that the call's deadline can return the text received so far, as local tiers do."""
        kwargs: dict[str, Any] = {"system": request.system} if request.system else {}
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        if request.dialogue is not None and request.dialogue.tools:
            kwargs["tools"] = [{"name": tool.name, "description": tool.description,
                                "input_schema": json.loads(tool.parameters)} for tool in request.dialogue.tools]
            kwargs["tool_choice"] = {"type": TOOL_CHOICE[request.dialogue.tool_choice]}
        parts: list[str] = []
        input_tokens = 0
        started_message = stopped = False
        left = control.seconds_left()
        try:
            with anyio.move_on_after(math.inf if left is None else left) as deadline:
                async with self._client.messages.stream(
                    model=self.config.model,
                    max_tokens=request.max_tokens,
                    messages=messages_of(request),
                    **kwargs,
                ) as stream:
                    async for event in stream:
                        if event.type == "message_start":
                            input_tokens, started_message = event.message.usage.input_tokens, True
                        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                            if not parts:
                                control.generating_since, control.phase = time.monotonic(), "generating"
                            parts.append(event.delta.text)
                            control.tokens += 1
                            if control.on_text is not None:
                                control.on_text(event.delta.text)
                        elif event.type == "message_stop":
                            stopped = True
                    if not started_message:
                        raise BackendError(MALFORMED.format(tier=self.tier))
                    if not stopped:
                        raise BackendError(INCOMPLETE.format(tier=self.tier))
                    message = await stream.get_final_message()
            if deadline.cancelled_caught:
                if not parts:
                    raise BackendError(f"{self.tier}: no answer from the Anthropic API before the call's deadline "
                                       f"({time.monotonic() - control.accepted:.1f} s after it was accepted)")
                # The API bills what it generated, which may be more than arrived before the cut:
                # count the most it could have been.
                return Completion("".join(parts).strip(), "deadline", input_tokens, request.max_tokens)
            text = "".join(block.text for block in message.content if block.type == "text")
            calls = tuple(ToolCall(block.id, block.name, json.dumps(block.input)) for block in message.content
                          if block.type == "tool_use")
            usage = message.usage
            finish = "length" if message.stop_reason == "max_tokens" else "tool_calls" if calls else "stop"
            return Completion(text.strip(), finish, usage.input_tokens, usage.output_tokens, tool_calls=calls)
        except anthropic.AuthenticationError as exc:
            raise BackendError(
                f"{self.tier}: the Anthropic API rejected the API key (HTTP 401); check ${self.config.api_key_env}"
            ) from exc
        except anthropic.PermissionDeniedError as exc:
            raise BackendError(f"{self.tier}: the API key may not use model {self.config.model} (HTTP 403)") from exc
        except anthropic.RateLimitError as exc:
            raise BackendError(f"{self.tier}: rate limited by the Anthropic API (HTTP 429) after "
                               f"{self.config.max_retries} retries; try again later") from exc
        except anthropic.APITimeoutError as exc:
            raise BackendError(f"{self.tier}: no answer from the Anthropic API within {self.config.timeout_s:g} s "
                               f"({self.config.key(self.tier, 'timeout_s')}), {self.config.max_retries} retries "
                               "included") from exc
        except anthropic.APIConnectionError as exc:
            if started_message:  # the SDK (2.17) wraps a connection broken mid-stream as this too
                raise BackendError(f"{self.tier}: the connection to the Anthropic API broke during the answer "
                                   f"(APIConnectionError: {exc})") from exc
            raise BackendError(f"{self.tier}: cannot reach the Anthropic API ({exc})") from exc
        except anthropic.APIStatusError as exc:
            raise BackendError(f"{self.tier}: the Anthropic API answered HTTP {exc.status_code} "
                               f"after {self.config.max_retries} retries ({_error_message(exc)})") from exc
        except (anthropic.APIResponseValidationError, ValueError) as exc:
            raise BackendError(MALFORMED.format(tier=self.tier)) from exc
        except httpx2.HTTPError as exc:  # the SDK wraps transport errors of the request, not of the stream's body
            raise BackendError(f"{self.tier}: the connection to the Anthropic API broke during the answer "
                               f"({type(exc).__name__}: {exc or 'no detail'})") from exc

    async def aclose(self) -> None:
        await self._client.close()


def messages_of(request: GenerationRequest) -> list[dict[str, Any]]:
    """The conversation as Messages API turns: an assistant's tool calls become `tool_use` blocks, and tool
    answers `tool_result` blocks of one user turn (with the user text that follows them)."""
    messages: list[dict[str, Any]] = []
    for turn in request.turns():
        role = "assistant" if turn.role == "assistant" else "user"
        if turn.role == "tool":
            blocks: list[dict[str, Any]] = [{"type": "tool_result", "tool_use_id": turn.tool_call_id,
                                             "content": turn.content}]
        else:
            blocks = [{"type": "text", "text": turn.content}] if turn.content else []
            blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call)}
                       for call in turn.tool_calls]
        if not blocks:  # the API takes no empty turn
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    for message in messages:  # text alone as a plain string, the API's simplest form
        if [block["type"] for block in message["content"]] == ["text"]:
            message["content"] = message["content"][0]["text"]
    return messages


def _arguments(call: ToolCall) -> Any:
    try:
        value = json.loads(call.arguments)
    except (ValueError, RecursionError):
        raise RequestError(f"messages: the arguments of tool call {call.id} are not JSON") from None
    if not isinstance(value, dict):
        raise RequestError(f"messages: the arguments of tool call {call.id} are not a JSON object")
    return value


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", exc.message))
    return exc.message
