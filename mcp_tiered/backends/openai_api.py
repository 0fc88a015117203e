"""The OpenAI chat completions API, as vLLM, SGLang, TGI, llama-server, Ollama and LM Studio serve it:
one streamed `/chat/completions` with each token's log-probability and the token usage at the end.

The server renders its chat template and tokenizes the result, so a control token spelled inside the
caller's text would become a real one; `chat_text.neutralize` breaks those spellings first."""

from __future__ import annotations

from typing import Any

from .base import GenerationRequest
from .chat_text import chat_messages, neutralize
from .http_stream import StreamReader

PATH = "/chat/completions"


def chat_body(model: str, request: GenerationRequest, logprobs: bool) -> dict[str, Any]:
    messages = chat_messages(neutralize(request.system), neutralize(request.prompt))
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": request.max_tokens,
                            "temperature": request.temperature, "top_p": 0.95, "stream": True,
                            "stream_options": {"include_usage": True}}
    if request.stop:
        body["stop"] = list(request.stop)
    if logprobs and request.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = 1  # the least llama-server takes (logprobs alone sends 20 alternatives per token)
    return body


class ChatReader(StreamReader):
    """Chunks with `choices[0].delta.content` and `choices[0].logprobs.content[].logprob`; one with a
    `finish_reason`; then (include_usage) one with `usage` and no choices; then `[DONE]`."""

    def __init__(self) -> None:
        super().__init__()
        self._finished = False

    def feed(self, event: Any) -> None:
        if "error" in event:
            raise ValueError(f"error event: {event['error']}")
        for choice in event.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
            entries = (choice.get("logprobs") or {}).get("content") or ()
            for entry in entries:
                self.logprobs.append(float(entry["logprob"]))
            self.tokens += len(entries) if entries else 1 if content else 0
            if reason := choice.get("finish_reason"):
                self._finished = True
                self.finish = "length" if reason == "length" else "stop"
        if usage := event.get("usage"):
            self.prompt_tokens = int(usage["prompt_tokens"])
            self.tokens = int(usage.get("completion_tokens") or self.tokens)

    def feed_done(self) -> None:
        self.ended()

    def ended(self) -> None:
        self.done = self._finished
