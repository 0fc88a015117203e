"""The engines a tier can run on: one entry per `engine = "..."` kind in models.toml, naming the backend
class that serves it. A new engine is a module with a `Backend` subclass and one entry here (and its
config type in config.py)."""

from __future__ import annotations

from collections.abc import Callable

from .backends import Backend
from .config import TierConfig


def _llama_cpp(name: str, config: TierConfig) -> Backend:
    from .backends.llama import LlamaBackend

    return LlamaBackend(name, config)


ENGINES: dict[str, Callable[[str, TierConfig], Backend]] = {
    "llama-cpp": _llama_cpp,
}
"""engine kind → the backend that serves a tier of that kind."""


def engine_backend(name: str, config: TierConfig) -> Backend:
    return ENGINES[config.engine](name, config)
