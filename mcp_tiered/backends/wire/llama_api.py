"""llama.cpp's native server API, spoken to a `llama-server` that mcp-tiered runs (engine "llama-server")
or that runs elsewhere (engine "openai" with api = "llama-server"): the prompt is formatted with the
model's own template (`/apply-template`), the template's text tokenized with control tokens and the
caller's text without (`/tokenize`, see chat_text), and `/completion` streamed from those tokens with
each token's log-probability."""

from __future__ import annotations

from typing import Any

import httpx2

from ..base import SAMPLING, GenerationRequest
from .chat_text import chat_messages, mark
from .http_stream import DeadlinePassed, EndpointError, StreamReader, post_json, reported
from ..pool import CallControl


async def prompt_tokens(http: httpx2.AsyncClient, url: str, headers: dict[str, str],
                        request: GenerationRequest, control: CallControl) -> list[int]:
    """The request's prompt as tokens; `http_stream.DeadlinePassed` when the call's deadline passes first."""
    marked = mark(chat_messages(request))
    answer = await post_json(http, url, "/apply-template", {"messages": marked.messages}, headers,
                             control.seconds_left())
    rendered = answer.get("prompt") if isinstance(answer, dict) else None
    if not isinstance(rendered, str):
        raise EndpointError("returned no prompt from /apply-template")
    tokens: list[int] = []
    for piece, callers in marked.pieces(rendered):
        if piece:
            answer = await post_json(http, url, "/tokenize",
                                     {"content": piece, "add_special": False, "parse_special": not callers}, headers,
                                     control.seconds_left())
            if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
                raise EndpointError("returned no tokens from /tokenize")
            tokens += answer["tokens"]
    return tokens


async def tokenize(http: httpx2.AsyncClient, url: str, headers: dict[str, str], text: str, *, special: bool,
                   seconds_left: float | None) -> list[Any]:
    """`/tokenize` of plain `text` (no BOS); with `special`, control-token spellings read as control tokens
    and each token comes with its piece ({"id", "piece"})."""
    answer = await post_json(http, url, "/tokenize", {"content": text, "add_special": False, "parse_special": special,
                                                     "with_pieces": special}, headers, seconds_left)
    if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
        raise EndpointError("returned no tokens from /tokenize")
    return answer["tokens"]


async def has_tokenizer(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> bool:
    """Whether the server at `url` (without /v1) serves llama.cpp's `/tokenize`."""
    try:
        return bool(await tokenize(http, url, headers, "a", special=False, seconds_left=10.0))
    except (EndpointError, DeadlinePassed):
        return False


async def control_spellings(http: httpx2.AsyncClient, url: str, headers: dict[str, str], text: str,
                            control: CallControl) -> set[str]:
    """The spellings in `text` that the server's own vocabulary reads as control tokens, whatever the model:
    tokens that tokenizing with control tokens gives and tokenizing without does not, each confirmed alone
    (a control token is one token with control tokens parsed and several without)."""
    parsed = await tokenize(http, url, headers, text, special=True, seconds_left=control.seconds_left())
    plain = set(await tokenize(http, url, headers, text, special=False, seconds_left=control.seconds_left()))
    try:
        candidates = {(t["id"], t["piece"]) for t in parsed if t["id"] not in plain and isinstance(t["piece"], str)}
    except (KeyError, TypeError) as exc:
        raise EndpointError(f"sent tokens without ids and pieces from /tokenize ({type(exc).__name__})") from None
    found: set[str] = set()
    for token_id, piece in candidates:
        if len(piece) < 2 or piece in found:
            continue
        alone = await tokenize(http, url, headers, piece, special=True, seconds_left=control.seconds_left())
        if [t.get("id") if isinstance(t, dict) else t for t in alone] == [token_id] and await tokenize(
                http, url, headers, piece, special=False, seconds_left=control.seconds_left()) != [token_id]:
            found.add(piece)
    return found


def completion_body(tokens: list[int], request: GenerationRequest, **extra: Any) -> dict[str, Any]:
    return {"prompt": tokens, "n_predict": request.max_tokens, "temperature": request.temperature, **SAMPLING,
            "stop": list(request.stop), "stream": True, "cache_prompt": True,
            "n_probs": 1 if request.logprobs else 0, "post_sampling_probs": False, **extra}


class NativeReader(StreamReader):
    """`/completion` events: {"content", "completion_probabilities", "tokens_predicted"}, the last with
    "stop": true, "stop_type" and "tokens_evaluated"."""

    def feed(self, event: Any) -> None:
        if not isinstance(content := event.get("content", ""), str):
            raise ValueError(f"content is {type(content).__name__}, not text")
        self.parts.append(content)
        for prob in event.get("completion_probabilities") or ():
            self.logprobs.append(reported(prob["logprob"]))
        if event.get("stop"):
            self.done = True
            self.finish = "length" if event.get("stop_type") == "limit" else "stop"
            if evaluated := event.get("tokens_evaluated"):
                self.prompt_tokens = reported(evaluated)
            if (predicted := event.get("tokens_predicted")) is not None:
                self.usage_tokens = reported(predicted)
        else:
            self.tokens += 1
