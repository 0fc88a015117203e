"""llama.cpp's native server API, spoken to a `llama-server` that mcp-tiered runs (engine "llama-server")
or that runs elsewhere (engine "openai" with api = "llama-server"): the prompt is formatted with the
model's own template (`/apply-template`), the template's text tokenized with control tokens and the
caller's text without (`/tokenize`, see chat_text), and `/completion` streamed from those tokens with
each token's log-probability."""

from __future__ import annotations

from typing import Any

import httpx2

from .base import SAMPLING, GenerationRequest
from .chat_text import chat_messages, mark
from .http_stream import EndpointError, StreamReader, post_json


async def prompt_tokens(http: httpx2.AsyncClient, url: str, headers: dict[str, str],
                        request: GenerationRequest) -> list[int]:
    marked = mark(chat_messages(request.system, request.prompt))
    rendered = (await post_json(http, url, "/apply-template", {"messages": marked.messages}, headers)).get("prompt")
    if not isinstance(rendered, str):
        raise EndpointError("returned no prompt from /apply-template")
    tokens: list[int] = []
    for piece, callers in marked.pieces(rendered):
        if piece:
            answer = await post_json(http, url, "/tokenize",
                                     {"content": piece, "add_special": False, "parse_special": not callers}, headers)
            if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
                raise EndpointError("returned no tokens from /tokenize")
            tokens += answer["tokens"]
    return tokens


def completion_body(tokens: list[int], request: GenerationRequest, **extra: Any) -> dict[str, Any]:
    return {"prompt": tokens, "n_predict": request.max_tokens, "temperature": request.temperature, **SAMPLING,
            "stop": list(request.stop), "stream": True, "cache_prompt": True,
            "n_probs": 1 if request.logprobs else 0, "post_sampling_probs": False, **extra}


class NativeReader(StreamReader):
    """`/completion` events: {"content", "completion_probabilities", "tokens_predicted"}, the last with
    "stop": true, "stop_type" and "tokens_evaluated"."""

    def feed(self, event: Any) -> None:
        self.parts.append(event.get("content", ""))
        for prob in event.get("completion_probabilities") or ():
            self.logprobs.append(float(prob["logprob"]))
        if event.get("stop"):
            self.done = True
            self.finish = "length" if event.get("stop_type") == "limit" else "stop"
            self.prompt_tokens = int(event.get("tokens_evaluated") or 0) or None
            self.tokens = int(event.get("tokens_predicted") or self.tokens)
        else:
            self.tokens = int(event.get("tokens_predicted") or self.tokens + 1)
