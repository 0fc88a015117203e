"""A local HTTP server on 127.0.0.1 that speaks the Anthropic Messages API, for tests.

Each request takes the next mode from `script` (then `default`): "ok", "401", "429" (with retry-after),
"529", "slow" (answers after `slow_s`), "malformed" (200 with a body that is not JSON), "drip" (streams
one word every `drip_s`), "truncated" (streams the reply and stops with stop_reason "max_tokens"). A request with `"stream": true` is answered with server-sent events, word by word;
two modes break such a stream after `message_start` and two deltas: "reset" (the connection is reset, TCP RST)
and "cut" (the connection closes cleanly, without `message_stop`). "tool" streams a `tool_use` block that calls the
request's first tool with `tool_input` (its JSON in two `input_json_delta` pieces), stop_reason "tool_use".
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERRORS = {
    "401": (401, "authentication_error", "invalid x-api-key"),
    "429": (429, "rate_limit_error", "Number of requests has exceeded your rate limit"),
    "529": (529, "overloaded_error", "Overloaded"),
}


class FakeAnthropic:
    def __init__(self, reply: str = "Cloud answer: Paris.", default: str = "ok", slow_s: float = 3.0,
                 drip_s: float = 0.5, tool_input: dict[str, Any] | None = None):
        self.reply = reply
        self.tool_input = tool_input or {}
        self.default = default
        self.slow_s = slow_s
        self.drip_s = drip_s
        self.script: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.streamed = 0
        """Streams sent to their end (message_stop)."""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_mode(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        with self._lock:
            self.requests.append({"body": body, "headers": headers})
            return self.script.popleft() if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                mode = fake._next_mode(body, {k.lower(): v for k, v in self.headers.items()})
                if mode in ERRORS:
                    status, kind, message = ERRORS[mode]
                    payload = {"type": "error", "error": {"type": kind, "message": message}}
                    extra = {"retry-after": "1"} if mode == "429" else {}
                    self._send(status, json.dumps(payload).encode(), extra)
                    return
                if mode == "malformed":
                    self._send(200, b'{"id": "msg_1", "content": [ not json')
                    return
                if mode == "slow":
                    time.sleep(fake.slow_s)
                if body.get("stream"):
                    try:
                        if mode == "tool":
                            self._tool_use(body)
                            return
                        self._stream(body, fake.drip_s if mode == "drip" else 0.0,
                                     break_after=2 if mode in ("reset", "cut") else None,
                                     stop_reason="max_tokens" if mode == "truncated" else "end_turn")
                        if mode == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            self.connection.close()
                    except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (deadline)
                        pass
                    return
                text = fake.reply
                message = {
                    "id": "msg_01", "type": "message", "role": "assistant", "model": body.get("model", "claude"),
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 20, "output_tokens": 8},
                }
                try:
                    self._send(200, json.dumps(message).encode())
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def _event(self, kind: str, data: dict[str, Any]) -> None:
                self.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
                self.wfile.flush()

            def _tool_use(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                arguments = json.dumps(fake.tool_input)
                self._event("message_start", {"message": {
                    "id": "msg_02", "type": "message", "role": "assistant", "model": body.get("model", "claude"),
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 30, "output_tokens": 1}}})
                self._event("content_block_start", {"index": 0, "content_block": {
                    "type": "tool_use", "id": "toolu_01", "name": body["tools"][0]["name"], "input": {}}})
                for piece in (arguments[:len(arguments) // 2], arguments[len(arguments) // 2:]):
                    self._event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                              "partial_json": piece}})
                self._event("content_block_stop", {"index": 0})
                self._event("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                              "usage": {"output_tokens": 12}})
                self._event("message_stop", {})

            def _stream(self, body: dict[str, Any], drip_s: float, break_after: int | None = None,
                        stop_reason: str = "end_turn") -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()

                def event(kind: str, data: dict[str, Any]) -> None:
                    self.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
                    self.wfile.flush()

                words = fake.reply.split(" ")
                event("message_start", {"message": {
                    "id": "msg_01", "type": "message", "role": "assistant", "model": body.get("model", "claude"),
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 20, "output_tokens": 1}}})
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(words):
                    if i == break_after:
                        self.close_connection = True
                        return
                    if i and drip_s:
                        time.sleep(drip_s)
                    text = word if i == len(words) - 1 else word + " "
                    event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
                event("content_block_stop", {"index": 0})
                event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                        "usage": {"output_tokens": 8}})
                event("message_stop", {})
                fake.streamed += 1

        return Handler
