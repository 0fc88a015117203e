"""Every private part of llama-cpp-python that mcp-tiered uses, each behind a function named for what it does.

llama-cpp-python's public `Llama` API generates and evaluates whole prompts; the tier backend also scores
an answer in slices (reading logits rows as it goes), restores saved KV states, formats a chat without
generating, and lists the chat formats. Those need attributes the library does not publish (`Llama._ctx`,
`Llama._batch`, `Llama._requires_eval`, the chat-handler registry's `_chat_handlers`), which can change in
any release: they live here only, written against `PINNED`, and `version_problem()` says when the
installed version is another. The C API bindings (`llama_cpp.llama_*`) and the public attributes of
`Llama` (`ctx`, `model`, `input_ids`, `n_tokens`) are used directly where they are needed.

Like everything that touches a `Llama` object, these run on the instance's own thread. Importing this
module does not import llama_cpp; each function does when first called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from . import installed_version, version_sentence

if TYPE_CHECKING:
    from llama_cpp import Llama

DISTRIBUTION = "llama-cpp-python"
PINNED = "0.3.36"
"""The version these functions were written against: the `==` pin in pyproject.toml (a test checks it)."""


def version_problem(installed: str | None = None) -> str | None:
    """One sentence naming the pin when the installed llama-cpp-python (or `installed`, for a test) is not
    `PINNED`; None when it is."""
    return version_sentence(DISTRIBUTION, PINNED, installed or installed_version(DISTRIBUTION))


def chat_formats() -> list[str]:
    """The names of the chat formats llama-cpp-python registers (`chat_format` values it accepts), sorted.

    Reaches into `LlamaChatCompletionHandlerRegistry()._chat_handlers`: the library has no public
    listing, and `check` names the valid formats when models.toml gives an unknown one."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    return sorted(LlamaChatCompletionHandlerRegistry()._chat_handlers)


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A chat as the model's chat handler formats it, not yet tokenized."""

    text: str
    add_bos: bool
    """Whether the handler tokenizes `text` with the model's beginning-of-sequence token first."""
    stop: list[str]
    """The stop strings the handler would generate with (the template's end of turn, where it names one)."""


class _Formatted(Exception):
    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs


class _FormatOnly:
    """Stands in for a `Llama` so that its chat handler formats the messages exactly as
    create_chat_completion would, then hands the text over instead of tokenizing and generating."""

    def __init__(self, llama: Llama):
        self._llama = llama
        self.text: str | None = None
        self.add_bos = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.text, self.add_bos = text.decode("utf-8"), add_bos
        return []

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Formatted(kwargs)


def chat_prompt(llama: Llama, messages: list[dict[str, str]]) -> ChatPrompt:
    """Format `messages` with `llama`'s chat template (or its configured chat_format), as
    `Llama.create_chat_completion` would, without tokenizing or generating.

    Reaches into how create_chat_completion and its chat handlers work inside: it is called unbound on a
    stand-in for `llama` whose `tokenize` keeps the formatted text (the handlers tokenize it once, through
    the `llama` they are given) and whose `create_completion` raises with the arguments it was given (the
    stop strings); every other attribute, the private `_chat_handlers` of the model's own templates among
    them, is `llama`'s. The library formats chats only on the way to generating, and the caller tokenizes
    the template's text and the caller's text differently (chat_text). Raises BackendError when the
    handler does not go that way."""
    from llama_cpp import Llama

    formatter = _FormatOnly(llama)
    try:
        Llama.create_chat_completion(formatter, messages=messages)  # type: ignore[arg-type]
    except _Formatted as handed_over:
        if formatter.text is None:
            raise BackendError("the chat handler handed over no text to tokenize") from None
        return ChatPrompt(formatter.text, formatter.add_bos, list(handed_over.kwargs.get("stop") or []))
    raise BackendError("the chat handler returned without formatting a prompt")


def kv_cache_keep(llama: Llama, n: int) -> bool:
    """Drop every position from `n` on out of `llama`'s KV cache, in all sequences (`llama.n_tokens` is the
    caller's to set); False where the cache cannot drop a part (a recurrent model's).

    Reaches into `Llama._ctx` (the library's context wrapper) for `kv_cache_seq_rm`, as `Llama.eval` does:
    scoring decodes an answer after the prompt's cached prefix, which `eval` cannot do in slices that
    keep every answer token's logits row."""
    return bool(llama._ctx.kv_cache_seq_rm(-1, n, -1))


def kv_cache_clear(llama: Llama) -> None:
    """Empty `llama`'s KV cache (`llama.n_tokens` is the caller's to set).

    Reaches into `Llama._ctx` for `kv_cache_clear`: restoring a saved sequence state needs an empty cache,
    and `Llama.reset` only forgets the token count."""
    llama._ctx.kv_cache_clear()


def decode(llama: Llama, tokens: Sequence[int], n_past: int, logits_all: bool) -> None:
    """Decode `tokens` at positions `n_past`, `n_past + 1`, ... of `llama`'s KV cache, keeping the logits of
    every one of them (`logits_all`) or of the last only; read them with `llama_get_logits_ith(llama.ctx, i)`.
    `llama.input_ids` and `llama.n_tokens` are the caller's to update. Raises RuntimeError when the decode
    fails or is aborted (abort.py).

    Reaches into `Llama._batch` and `Llama._ctx`, as `Llama.eval` does: `eval` keeps every logits row only
    for a model loaded with `logits_all` (n_ctx rows of n_vocab floats, for every call), and copies them;
    scoring reads them in place, a slice at a time."""
    llama._batch.set_batch(batch=tokens, n_past=n_past, logits_all=logits_all)
    llama._ctx.decode(llama._batch)


def logits_stale(llama: Llama) -> None:
    """Tell `llama` that its logits buffer is not the last cached token's (a decode of other positions, or
    a restored state, which holds no logits), so that `Llama.generate` evaluates at least one token
    instead of sampling from it.

    Sets `Llama._requires_eval`, the flag `Llama.generate` reads for that (`Llama.load_state` sets it)."""
    llama._requires_eval = True
