"""What every engine behind a tier provides: a local llama.cpp model today, a remote engine or the cloud later."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .pool import CallControl, InstancePool

FinishReason = Literal["stop", "length", "deadline", "tool_calls"]
SAMPLING = {"top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}
"""The sampling every local engine uses beside the call's temperature."""
LOOP_CHECK_EVERY = 64
"""Tokens between two looks at whether the answer is stuck in a loop (when the request asks)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of one of the request's tools, as the model wrote it."""

    id: str
    name: str
    arguments: str
    """The arguments as JSON text (OpenAI's form; a JSON object when the model wrote a valid call)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str
    description: str
    parameters: str
    """Its JSON Schema, as JSON text."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation after the system prompt."""

    role: Literal["user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls of tools."""
    tool_call_id: str = ""
    """A tool turn's answer: the call it answers."""


@dataclass(frozen=True, slots=True)
class Dialogue:
    """What a request carries beyond one user message (the OpenAI face): the whole conversation and tools."""

    turns: tuple[Turn, ...]
    """Every message after the system prompt, in order; it ends with a user or tool turn."""
    tools: tuple[Tool, ...] = ()
    tool_choice: Literal["auto", "none", "required"] = "auto"
    """required: the answer must call a tool (a named tool: `tools` holds that one alone)."""

    @property
    def needs_tools(self) -> bool:
        """Only an engine that does tools can serve it (`Capabilities.tools`)."""
        return bool(self.tools) or any(t.role == "tool" or t.tool_calls for t in self.turns)

    def text(self) -> str:
        """All of its text (for bounds on tokens): contents, calls' arguments, tools' descriptions and schemas."""
        parts = [t.content for t in self.turns] + [c.name + c.arguments for t in self.turns for c in t.tool_calls]
        parts += [t.name + t.description + t.parameters for t in self.tools]
        return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    """The user message; with a `dialogue`, the text of its last user turn (what routing reads)."""
    system: str
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()
    logprobs: bool = True
    """Record each generated token's log-probability (the confidence signal)."""
    stop_on_loop: bool = False
    """Stop generating once the answer's end is a loop (`confidence.is_repetitive`)."""
    dialogue: Dialogue | None = None
    """The whole conversation and its tools, in place of `prompt` alone."""

    def turns(self) -> tuple[Turn, ...]:
        return self.dialogue.turns if self.dialogue is not None else (Turn("user", self.prompt),)

    def text(self) -> str:
        """All of the request's text but the system prompt."""
        return self.dialogue.text() if self.dialogue is not None else self.prompt

    @property
    def needs_tools(self) -> bool:
        return self.dialogue is not None and self.dialogue.needs_tools


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: tuple[float, ...] = ()
    """Natural-log probability of each generated token under the model, when recorded."""
    cached_tokens: int = 0
    """Prompt tokens the engine took from its KV cache instead of evaluating them, when it says."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The answer's calls of the request's tools (finish_reason "tool_calls")."""


@dataclass(frozen=True, slots=True)
class ScoredAnswer:
    """A given answer as the engine's model reads it (`Backend.score`): one prefill over prompt + answer."""

    token_logprobs: tuple[float, ...]
    """Natural-log probability of each answer token after the prompt and the answer's earlier tokens."""
    top_logprobs: tuple[float, ...]
    """Natural-log probability of the model's own most probable token at each answer position."""
    prompt_tokens: int
    evaluated_tokens: int
    """Tokens the engine ran: the answer's and the prompt's less the prefix already in its KV cache."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a kind of engine does with a call, declared once per backend class; the dispatcher, the
    ledger and the MCP face ask these instead of which engine it is."""

    prompt_leaves_machine: bool = False
    """The prompt goes to another party: `local_only` calls never reach the tier, its tool is open-world."""
    billing: Literal["energy", "tokens"] = "energy"
    """energy: a hop costs the power drawn for its generation seconds ([costs.tiers.<name>]); tokens: it is
    billed per token at the cloud prices and counts against the cloud budget."""
    token_logprobs: bool = True
    """Completions carry each generated token's log-probability, so confidence and min_confidence apply."""
    scores_answers: bool = False
    """`score` reads a given answer in one prefill and returns its token log-probabilities: the tier can be
    another tier's verifier (`verify_with`)."""
    tools: bool = False
    """The engine passes tools to the model and returns its calls of them (a request's `needs_tools`)."""


LOCAL = Capabilities()


class Backend(ABC):
    """An engine that answers generation requests for one tier.

    The per-call contract of `generate(request, control)`:
    - return a `Completion` with the prompt and completion tokens the engine counted (the ledger and the
      cloud budget bill them) and, with `token_logprobs`, one log-probability per generated token;
    - set `control.queue_s` (waiting for a slot or instance) and `control.generation_s` (the engine at work,
      prompt included), and keep `control.phase` and `control.tokens` current for progress reports;
    - stop when `control.stop_reason()` says so: past the deadline, return the text so far with
      finish_reason "deadline"; cancelled, return or raise promptly (a cancelled caller waits for it);
    - raise `RequestError` for a request it cannot serve as given (`PromptTooLongError` when it does not
      fit), `BusyError` when no slot frees in time, `BackendError` for its own failures; each carries one
      sentence for the caller, and the dispatcher escalates on them.
    """

    capabilities: Capabilities = LOCAL
    """What the engine does with a call; a backend whose config decides it sets its own."""

    model_name: str
    """What the result's `model` field reports."""

    pool: InstancePool | None = None
    """The engine's slots and the queue in front of them, for engines that have them."""

    @abstractmethod
    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        """`control`, when given, carries the call's deadline and cancellation, and receives its phase."""

    async def score(self, request: GenerationRequest, answer: str, control: CallControl | None = None) -> ScoredAnswer:
        """`answer` (another model's) read by this one after `request`'s prompt; engines without
        `capabilities.scores_answers` cannot."""
        from ..errors import BackendError

        raise BackendError(f"engine {type(self).__name__} cannot score a given answer")

    async def run_background(self) -> None:
        """Work the engine does while the server runs (preloading, unloading idle models); returns
        when there is none. Cancelled at shutdown."""

    @property
    def loaded(self) -> bool:
        return True

    async def aclose(self) -> None:
        """Free what the engine holds (model memory, connections)."""


def refuse_if_too_long(tier: str, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """Raise PromptTooLongError when the prompt and the answer cannot fit the tier's context window."""
    from ..errors import PromptTooLongError

    if prompt_tokens + max_tokens > n_ctx:
        raise PromptTooLongError(
            f"prompt is too long for tier {tier}: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed "
            f"its context window of {n_ctx} tokens; shorten the prompt or lower max_tokens",
            prompt_tokens=prompt_tokens, max_tokens=max_tokens, n_ctx=n_ctx,
        )


def prefix_affinity(processed: str, request: str) -> int:
    """How much of `request` a slot that last processed `processed` still holds (its KV cache), less what
    of its cache the request would throw away: the pool gives a call the free slot that scores best."""
    import os

    shared = len(os.path.commonprefix([processed, request]))
    return 2 * shared - len(processed)
