"""Caller text is data, on every engine: the chat template is rendered with a per-call random marker in
place of each message's content, and the rendered text is cut where the markers landed, so that the
template's own text can be tokenized with its control tokens (`<|im_start|>` ...) and the caller's text
as plain text. A prompt that spells a control token cannot open a turn of its own."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..base import GenerationRequest


@dataclass(frozen=True, slots=True)
class MarkedMessages:
    messages: list[dict[str, Any]]
    """The messages with a marker in place of each content: what the template renders."""
    contents: dict[str, str]
    """Marker → the caller's text it stands for."""
    pattern: re.Pattern[str]

    def pieces(self, rendered: str) -> list[tuple[str, bool]]:
        """`rendered` cut into (text, is the caller's) pieces, in order; template pieces may be empty."""
        out: list[tuple[str, bool]] = []
        start = 0
        for mark in self.pattern.finditer(rendered):
            out.append((rendered[start:mark.start()], False))
            out.append((self.contents[mark.group()], True))
            start = mark.end()
        out.append((rendered[start:], False))
        return out


def mark(messages: list[dict[str, Any]]) -> MarkedMessages:
    nonce = secrets.token_hex(8)
    contents = {f"\ue000{nonce}.{i}\ue001": message["content"] for i, message in enumerate(messages)}
    marked = [{**message, "content": marker} for message, marker in zip(messages, contents)]
    return MarkedMessages(marked, contents, re.compile(f"\ue000{nonce}\\.\\d+\ue001"))


def chat_messages(request: GenerationRequest, caller: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """The request's messages in the OpenAI chat form that chat templates render, each piece of the caller's
    text passed through `caller` (`neutralize`, for engines that tokenize the rendered text themselves)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": caller(request.system)}] if request.system else []
    for turn in request.turns():
        message: dict[str, Any] = {"role": turn.role, "content": caller(turn.content)}
        if turn.tool_calls:
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": caller(call.name), "arguments": caller(call.arguments)}} for call in turn.tool_calls]
        if turn.role == "tool":
            message["tool_call_id"] = turn.tool_call_id
        messages.append(message)
    return messages


WORD_JOINER = "\u2060"
CONTROL_SPELLINGS = re.compile(
    r"<\|[^<>|\n]{0,64}\|>"                    # <|im_start|>, <|eot_id|>, <|start_header_id|> …
    r"|<\uff5c[^<>\n]{0,64}\uff5c>"            # <｜begin▁of▁sentence｜> (DeepSeek)
    r"|</?(?:s|unk|pad|bos|eos)>"              # <s>, </s>, <bos> …
    r"|<(?:start|end)_of_[a-z]{1,16}>"         # <start_of_turn>, <end_of_turn> (Gemma)
    r"|<</?SYS>>"                              # Llama 2
    r"|\[/?[A-Z][A-Z_]{1,31}\]"                # [INST], [/INST], [TOOL_CALLS] (Mistral)
)


def neutralize(text: str, spellings: Collection[str] = ()) -> str:
    """`text` with the spellings of known control-token families, and the given `spellings` (those the
    engine's own vocabulary reads as control tokens, `llama_api.control_spellings`), broken by an invisible
    WORD JOINER after their first character, for engines that tokenize rendered text themselves (the
    OpenAI chat API): `<|im_start|>` stays visible to the model but can no longer be read as the token."""
    text = CONTROL_SPELLINGS.sub(lambda m: _broken(m.group()), text)
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, _broken(spelling))
    return text


def _broken(spelling: str) -> str:
    return spelling[0] + WORD_JOINER + spelling[1:]
