"""The project's error types: each carries one sentence a person can act on."""

from __future__ import annotations


class TieredError(Exception):
    """Base of every expected failure; its text is safe to show to a caller."""


class ConfigError(TieredError):
    """models.toml is unusable. Holds one sentence per problem, each naming its key path."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RequestError(TieredError):
    """A call's arguments cannot be served as given (bad value, prompt too long)."""


class ScopeError(RequestError):
    """The principal's scopes do not allow the call (HTTP 403 where HTTP says it)."""


class QuotaError(RequestError):
    """The principal's limit for the day is used up (HTTP 429 where HTTP says it)."""


class ToolsUnsupportedError(RequestError):
    """The request has tools (or tool turns) and the tier's engine does not do tools."""


class PromptTooLongError(RequestError):
    """The prompt plus the requested completion does not fit the tier's context window."""

    def __init__(self, message: str, *, prompt_tokens: int, max_tokens: int, n_ctx: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx


class BackendError(TieredError):
    """The engine behind a tier failed (model missing, load failure, decode error)."""


class BusyError(TieredError):
    """Every instance of the tier is in use and the call could not wait (full queue, or waited too long)."""
