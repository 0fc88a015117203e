"""The OpenAI chat completions API, as vLLM, SGLang, TGI, llama-server, Ollama and LM Studio serve it:
one streamed `/chat/completions` with each token's log-probability and the token usage at the end.

The server renders its chat template and tokenizes the result, so a control token spelled inside the
caller's text would become a real one; `chat_text.neutralize` breaks those spellings first: the ones the
server's vocabulary has, where it exposes llama.cpp's tokenizer (`llama_api.control_spellings`), and
those of the known families everywhere."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from ..base import GenerationRequest
from .chat_text import chat_messages, neutralize
from .http_stream import StreamReader, reported

PATH = "/chat/completions"


def chat_body(model: str, request: GenerationRequest, logprobs: bool, spellings: Collection[str] = ()) -> dict[str, Any]:
    """`spellings`: what else in the caller's text the endpoint would read as control tokens."""
    def caller(text: str) -> str:
        return neutralize(text, spellings)

    body: dict[str, Any] = {"model": model, "messages": chat_messages(request, caller),
                            "max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": 0.95,
                            "stream": True, "stream_options": {"include_usage": True}}
    if request.stop:
        body["stop"] = list(request.stop)
    if request.dialogue is not None and request.dialogue.tools:
        # The schema is JSON text: a control-token spelling can only sit inside one of its strings, where the
        # word joiner keeps it valid JSON.
        body["tools"] = [{"type": "function", "function": {
            "name": tool.name, "description": caller(tool.description),
            "parameters": json.loads(caller(tool.parameters))}} for tool in request.dialogue.tools]
        body["tool_choice"] = request.dialogue.tool_choice
    if logprobs and request.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = 1  # the least llama-server takes (logprobs alone sends 20 alternatives per token)
    return body


class ChatReader(StreamReader):
    """Chunks with `choices[0].delta.content` (or pieces of `delta.tool_calls`) and
    `choices[0].logprobs.content[].logprob`; one with a `finish_reason`; then (include_usage) one with `usage`
    and no choices; then `[DONE]`."""

    def __init__(self) -> None:
        super().__init__()
        self._finished = False

    def feed(self, event: Any) -> None:
        if "error" in event:
            raise ValueError(f"error event: {event['error']}")
        for choice in event.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content is not None and not isinstance(content, str):
                raise ValueError(f"content is {type(content).__name__}, not text")
            if content:
                self.parts.append(content)
            calls = (choice.get("delta") or {}).get("tool_calls") or ()
            for piece in calls:
                self.add_call_piece(piece)
            entries = (choice.get("logprobs") or {}).get("content") or ()
            for entry in entries:
                self.logprobs.append(reported(entry["logprob"]))
            self.tokens += len(entries) if entries else 1 if content or calls else 0
            if reason := choice.get("finish_reason"):
                self._finished = True
                self.finish = "length" if reason == "length" else "tool_calls" if reason == "tool_calls" else "stop"
        if usage := event.get("usage"):
            self.prompt_tokens = reported(usage["prompt_tokens"])
            if (completion := usage.get("completion_tokens")) is not None:
                self.usage_tokens = reported(completion)

    def feed_done(self) -> None:
        self.ended()

    def ended(self) -> None:
        self.done = self._finished
