"""A local stand-in for the Hugging Face Hub: the part of its file API that `huggingface_hub.hf_hub_download`
uses (HEAD and GET on /<repo>/resolve/<revision>/<file>, ranged GETs, the X-Repo-Commit / ETag headers and
the X-Error-Code answers for a missing repository, revision or file and a gated repository), on a free port
in a thread. Point HF_ENDPOINT at `url`. Hostile modes: a repository that answers every file name, ranges
ignored, every request answered by an error page."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


@dataclass
class Repo:
    files: dict[str, Path]
    revisions: tuple[str, ...] = ("main",)
    gated_token: str | None = None
    """Set: the repository is gated; only this bearer token may read it."""
    commit: str = "a" * 40
    any_file: Path | None = None
    """Set: every file name the repository does not list is answered with this file (a hostile hub)."""


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    """(method, path, Range header, Authorization header) of each request."""
    cut_next_get_at: int | None = None
    """Set: the next full GET sends its headers and this many bytes, then closes the connection."""
    bytes_sent: int = 0
    ignore_range: bool = False
    """Set: ranged GETs get the whole file (200), as from a server that does not do ranges."""
    fail_with: int | None = None
    """Set: every request is answered with this status and an HTML page, as from a proxy in front of the hub."""

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self, file: str) -> list[str | None]:
        """The Range header of each GET of `file`."""
        return [r for method, path, r, _ in self.requests if method == "GET" and path.endswith("/" + file)]

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(handler.path.split("?")[0])
        self.requests.append((handler.command, path, handler.headers.get("Range"),
                              handler.headers.get("Authorization")))
        if self.fail_with is not None:
            return self._html_error(handler, self.fail_with, body)
        match = RESOLVE.match(path)
        repo = self.repos.get(match["repo"]) if match else None
        if match is None or repo is None:
            return self._error(handler, 401, "RepoNotFound", "Repository not found")
        if repo.gated_token is not None and handler.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return self._error(handler, 401, "GatedRepo", "Access to this repository is restricted")
        if match["revision"] not in (*repo.revisions, repo.commit):
            return self._error(handler, 404, "RevisionNotFound", "Invalid rev id")
        source = repo.files.get(match["file"], repo.any_file)
        if source is None:
            return self._error(handler, 404, "EntryNotFound", "Entry not found")
        size = source.stat().st_size
        start, end, status = 0, size - 1, 200
        if body and (wanted := handler.headers.get("Range")) and not self.ignore_range:
            first, last = re.match(r"bytes=(\d+)-(\d*)", wanted).groups()
            start, end, status = int(first), min(int(last), size - 1) if last else size - 1, 206
        handler.send_response(status)
        handler.send_header("X-Repo-Commit", repo.commit)
        handler.send_header("ETag", f'"{_sha256(source)}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(end + 1 - start))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        handler.end_headers()
        if not body:
            return
        limit, cut = end + 1 - start, False
        if self.cut_next_get_at is not None and start == 0:
            limit, cut, self.cut_next_get_at = self.cut_next_get_at, True, None
        with source.open("rb") as f:
            f.seek(start)
            while limit > 0 and (chunk := f.read(min(1 << 20, limit))):
                try:
                    handler.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                    handler.close_connection = True
                    return
                self.bytes_sent += len(chunk)
                limit -= len(chunk)
        handler.wfile.flush()
        handler.close_connection = cut  # the rest of the promised body never comes

    def _html_error(self, handler: BaseHTTPRequestHandler, status: int, body: bool) -> None:
        page = f"<html><body><h1>{status} Bad Gateway</h1><p>nginx</p></body></html>".encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Retry-After", "0")  # huggingface_hub's retries then wait 1 s each, not up to 8
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        if body:
            handler.wfile.write(page)


_hashes: dict[Path, str] = {}


def _sha256(path: Path) -> str:
    if path not in _hashes:
        _hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _hashes[path]
