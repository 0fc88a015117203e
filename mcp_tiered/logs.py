"""structlog set up as JSON lines on stderr; stdout belongs to the stdio transport.

Records from the standard `logging` module (the MCP SDK, uvicorn) go through the same renderer.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import sys
from typing import Any, TextIO

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(level: str = "INFO") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _finite_numbers,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # The HTTP clients (the cloud, llama-server) log every request at INFO: one call would be several lines.
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # lets structlog.testing.capture_logs() see every event
    )


def _finite_numbers(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities as strings: bare `NaN` or `Infinity` would make the line invalid JSON."""
    return {key: _finite(value) for key, value in event.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


_crash_stream: TextIO | None = None


def enable_crash_traces() -> None:
    """On a fatal signal (SIGSEGV, SIGBUS, SIGABRT, ...) print every thread's Python stack to stderr, even
    while llama-cpp-python points fd 2 at /dev/null (it does while a model loads): faulthandler writes to a
    duplicate of stderr taken now, which that redirection does not touch."""
    global _crash_stream
    if _crash_stream is None:
        _crash_stream = os.fdopen(os.dup(2), "w")
    faulthandler.enable(file=_crash_stream, all_threads=True)
