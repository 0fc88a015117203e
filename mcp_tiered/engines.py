"""The engines a tier can run on: one entry per `engine = "..."` kind in models.toml, naming the backend
class that serves it. A new engine is a module with a `Backend` subclass and one entry here (and its
config type in config.py)."""

from __future__ import annotations

from collections.abc import Callable

from typing import Any

from .backends import Backend
from .config import AnyTier


def _llama_cpp(name: str, config: Any) -> Backend:
    from .backends.llama import LlamaBackend

    return LlamaBackend(name, config)


def _llama_server(name: str, config: Any) -> Backend:
    from .backends.llama_server import LlamaServerBackend

    return LlamaServerBackend(name, config)


def _openai(name: str, config: Any) -> Backend:
    from .backends.openai import OpenAIBackend

    return OpenAIBackend(name, config)


ENGINES: dict[str, Callable[[str, Any], Backend]] = {
    "llama-cpp": _llama_cpp,
    "llama-server": _llama_server,
    "openai": _openai,
}
"""engine kind → the backend that serves a tier of that kind (config.ENGINE_CONFIGS has its keys)."""


def engine_backend(name: str, config: AnyTier) -> Backend:
    return ENGINES[config.engine](name, config)
