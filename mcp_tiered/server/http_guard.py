"""What the HTTP transports need against idle, slow and hostile clients, beyond what uvicorn and the SDK do:

- connections: at most `max_connections` open (fewer when the open-file limit would not hold them); a
  new one beyond that closes the oldest connection that has no request in progress, or is itself closed;
- a request head must arrive within `header_timeout_s` of the connection opening (or of the previous
  answer), its body within `body_timeout_s` of the head: idle, slow-header and slow-body connections end;
- Host and Origin must match an allowed value exactly (the SDK's check accepts any value that merely
  starts with one);
- the access log never shows a query string (a token may travel there), and the event loop's
  "socket.accept() out of system resource" is logged at most every `ACCEPT_ERROR_LOG_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)

FD_RESERVE = 256
"""Open files kept for everything but HTTP connections (models, ledger, logs, the cloud client)."""
ACCEPT_ERROR_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the open-file limit (raised to its hard maximum first) cannot hold them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted
    cap = max(soft - FD_RESERVE, 16)
    log.warning("http_connection_limit_lowered", max_connections=wanted, to=cap, open_file_limit=soft)
    return cap


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `limits` (uvicorn's `http=` setting takes the class)."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._opened = time.monotonic()
            self._phase: object = None
            self._timer: asyncio.TimerHandle | None = None
            if len(self.connections) >= limits.max_connections and not _evict_one(self.connections):
                transport.close()
                return
            super().connection_made(transport)
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            if self.transport is not None:  # else refused in connection_made
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def waiting_for_request(self) -> bool:
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

        def _watch(self) -> None:
            """(Re)arm the deadline of what the client owes now: a request head or its body."""
            state = self.conn.their_state
            if state is self._phase:
                return
            self._phase = state
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            timeout = {h11.IDLE: limits.header_timeout_s, h11.SEND_BODY: limits.body_timeout_s}.get(state)
            if timeout is not None and not self.transport.is_closing():
                self._timer = self.loop.call_later(timeout, self._too_slow)

        def _too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def _evict_one(connections: Iterable[object]) -> bool:
    """Close the oldest connection that is not in the middle of a request; False when all are busy."""
    idle = [c for c in connections if getattr(c, "waiting_for_request", lambda: False)()
            and not c.transport.is_closing()]  # type: ignore[attr-defined]
    if not idle:
        return False
    oldest = min(idle, key=lambda c: c._opened)  # type: ignore[attr-defined]
    oldest.transport.close()  # type: ignore[attr-defined]
    oldest.connections.discard(oldest)  # type: ignore[attr-defined]
    return True


_PORT = re.compile(r"[0-9]{1,5}")


def header_allowed(value: str, allowed: Iterable[str]) -> bool:
    """Exact match, case-insensitively; `"base:*"` matches `base:` followed by a port number and nothing else."""
    value = value.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.endswith(":*"):
            base = pattern[:-1]
            if value.startswith(base) and _PORT.fullmatch(value[len(base):]):
                return True
        elif value == pattern:
            return True
    return False


class HostOriginGuard:
    """421 for a Host, 403 for an Origin that is not allowed exactly (DNS rebinding), before anything else."""

    def __init__(self, app: ASGIApp, hosts: list[str], origins: list[str]):
        self.app = app
        self.hosts = hosts
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin", b"").decode("latin-1")
            refusal = None
            if not header_allowed(host, self.hosts):
                refusal = (421, b"Invalid Host header")
            elif origin and not header_allowed(origin, self.origins):
                refusal = (403, b"Invalid Origin header")
            if refusal is not None:
                status, body = refusal
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _WithoutQuery(logging.Filter):
    """uvicorn's access log line with the path alone: no query string (a token may travel there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
            client, method, path, version, status = record.args
            record.args = (client, method, path.split("?", 1)[0], version, status)
        return True


class _AcceptErrorsNowAndThen(logging.Filter):
    """asyncio logs "socket.accept() out of system resource" up to `backlog` times per attempt when the
    process runs out of file descriptors, and each accept it then retried fails again once the listening socket
    is closed at shutdown; let one through every `ACCEPT_ERROR_LOG_EVERY_S`, with a count."""

    PREFIXES = ("socket.accept() out of system resource", "Exception in callback BaseSelectorEventLoop._start_serving")

    def __init__(self) -> None:
        super().__init__()
        self._last = -ACCEPT_ERROR_LOG_EVERY_S
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIXES):
            return True
        now = time.monotonic()
        if now - self._last < ACCEPT_ERROR_LOG_EVERY_S:
            self._held += 1
            return False
        self._last = now
        record.msg = f"{record.msg} ({self._held} more since the last report)"
        record.exc_info = None
        self._held = 0
        return True


def install_log_filters() -> None:
    logging.getLogger("uvicorn.access").addFilter(_WithoutQuery())
    logging.getLogger("asyncio").addFilter(_AcceptErrorsNowAndThen())
