"""Models named by reference: `model = "hf:<owner>/<repo>/<path/file>.gguf[@revision]"`, fetched ahead of time
by `mcp-tiered pull` with huggingface_hub (resumable downloads, the hub's auth from `HF_TOKEN`, its offline
mode) into the model cache, at a path that depends on the reference alone — so `serve` and `check` know
where the file belongs without the network, and never download.

A split GGUF (`…-00001-of-00003.gguf`) is named by its first part; `pull` fetches every part into the same
folder, where llama.cpp finds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

PREFIX = "hf:"
NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
"""An owner or repository name as the hub allows it (and without '--' or '..')."""
SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<parts>\d{5})\.gguf$")
MAX_PARTS = 1024
"""llama.cpp holds every part of a split GGUF open while it loads the model, so more parts than the usual
limit of 1024 open files cannot load (gguf-split's own split.count field would allow 65535)."""
EXPECT = 'hf:<owner>/<repo>/<file>.gguf with an optional @<revision>, such as "hf:bartowski/Qwen2.5-7B-Instruct-GGUF/Qwen2.5-7B-Instruct-Q4_K_M.gguf"'


@dataclass(frozen=True)
class HfRef:
    owner: str
    repo: str
    file: str
    """The file's path inside the repository (the first part of a split GGUF)."""
    revision: str = "main"

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}/{self.file}" + ("" if self.revision == "main" else f"@{self.revision}")

    def files(self) -> list[str]:
        """Every file to fetch: the named one, or each part of a split GGUF."""
        split = SPLIT.match(self.file)
        if split is None:
            return [self.file]
        parts = int(split["parts"])
        return [f"{split['stem']}-{i:05d}-of-{parts:05d}.gguf" for i in range(1, parts + 1)]

    def folder(self, models_dir: Path) -> Path:
        """Where `pull` puts the files: one folder per repository and revision."""
        return models_dir / "hf" / self.owner / self.repo / self.revision.replace("/", "--")

    def path(self, models_dir: Path) -> Path:
        return self.folder(models_dir) / self.file


def parse(text: str) -> HfRef:
    """Raises ValueError with what is expected. Every part becomes a path in the model cache, so none may leave
    it: owner and repository are hub names, the file and the revision relative paths without '.', '..' or
    empty segments."""
    shown = json.dumps(text)
    body, at, revision = text.removeprefix(PREFIX).partition("@")
    owner, _, rest = body.partition("/")
    repo, _, file = rest.partition("/")
    if not text.startswith(PREFIX) or not file.endswith(".gguf") or (at and not revision) or "@" in revision:
        raise ValueError(f"must be {EXPECT}, got {shown}")
    for role, name in (("owner", owner), ("repository", repo)):
        if not NAME.fullmatch(name) or ".." in name or "--" in name:
            raise ValueError(f"the {role} {json.dumps(name)} in {shown} is not a hub name (letters, digits, '-', '_' "
                             "and '.', not starting or ending with '-' or '.', no '--' or '..')")
    for role, path, expect in (("file", file, "a relative path inside the repository"),
                               ("revision", revision or "main", "a branch, tag or commit")):
        if problem := _path_problem(path):
            raise ValueError(f"the {role} {json.dumps(path)} in {shown} must be {expect}, without {problem}")
    split = SPLIT.match(Path(file).name)
    if split is not None and not 1 <= int(split["parts"]) <= MAX_PARTS:
        raise ValueError(f"{shown} names a GGUF split into {int(split['parts'])} parts; a split GGUF has 1 to "
                         f"{MAX_PARTS} parts (llama.cpp holds every part open while it loads)")
    if split is not None and int(split["part"]) != 1:
        first = f"{split['stem']}-00001-of-{split['parts']}.gguf"
        raise ValueError(f"names part {int(split['part'])} of a split GGUF; name its first part, {first}")
    return HfRef(owner, repo, file, revision or "main")


def _path_problem(path: str) -> str | None:
    """What makes `path` unfit to be joined to a folder, in words, or None."""
    if any(not c.isprintable() or c.isspace() for c in path):
        return "whitespace or control characters"
    if "\\" in path:
        return "backslashes"
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return "empty, '.' or '..' segments (or a leading '/')"
    return None


class PullError(Exception):
    """One sentence for the user."""


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.parent / ".cache" / "mcp-tiered" / (path.name + ".verified")


def verified(path: Path, sha256: str) -> bool:
    """Whether `path` was verified against `sha256` since it last changed (a marker beside it)."""
    try:
        stat = path.stat()
        return _marker(path).read_text() == f"{sha256} {stat.st_size} {stat.st_mtime_ns}"
    except OSError:
        return False


def verify(path: Path, sha256: str) -> str | None:
    """None when `path` has that sha256 (remembered until the file changes), else the hash it has."""
    if verified(path, sha256):
        return None
    actual = sha256_of(path)
    if actual != sha256:
        return actual
    stat = path.stat()
    marker = _marker(path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{sha256} {stat.st_size} {stat.st_mtime_ns}")
    return None


def pull(ref: HfRef, models_dir: Path, key: str, sha256: str | None = None,
         progress: Callable[[str], None] = lambda _: None, bars: bool = False) -> Path:
    """Fetch every file of `ref` (a no-op for files already there and current; offline, the files there
    are kept) and check `sha256`; returns the path llama.cpp loads. `key` (the TOML key path) starts each
    PullError's sentence."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if bars else disable_progress_bars)()
    folder = ref.folder(models_dir)
    for name in ref.files():
        progress(f"{ref.repo_id}/{name}@{ref.revision}")
        try:
            hf_hub_download(ref.repo_id, name, revision=ref.revision, local_dir=folder)
        except Exception as exc:  # every failure becomes the sentence naming the key
            raise PullError(f"{key}: {ref}: {explain(exc, ref, name)}") from exc
    path = ref.path(models_dir)
    if sha256 is not None and (actual := verify(path, sha256)) is not None:
        path.unlink()
        raise PullError(f"{key}: {ref}: the downloaded file's sha256 is {actual}, not the configured {sha256}; "
                        "the file was deleted: check the sha256 key (or the revision) and pull again")
    return path


def fetch_head(ref: HfRef, name: str, folder: Path, nbytes: int, key: str) -> tuple[Path, int]:
    """The first `nbytes` of the remote file `name` of `ref`, in a sparse local file of the remote file's full
    size (the rest reads as zeros): enough for the GGUF header and tensor table without the weights. Returns
    the file and how many bytes of it came from the hub (fewer than `nbytes` for a shorter file). The answer
    is streamed and read no further than `nbytes`, whatever the hub sends."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if constants.is_offline_mode():
        raise PullError(f"{key}: {ref} is not downloaded, and HF_HUB_OFFLINE is set, so its header is not read "
                        "from the hub; run `mcp-tiered pull` where the hub is reachable")
    url = hf_hub_url(ref.repo_id, name, revision=ref.revision)
    path = folder / Path(name).name
    got = 0
    try:
        size = get_hf_file_metadata(url).size or 0
        with get_session().stream("GET", url, headers={**build_hf_headers(), "Range": f"bytes=0-{nbytes - 1}"},
                                  follow_redirects=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            if response.status_code >= 400:
                hf_raise_for_status(_bounded(response))
            with path.open("wb") as f:
                for chunk in response.iter_bytes(1 << 16):
                    chunk = chunk[:nbytes - got]
                    f.write(chunk)
                    got += len(chunk)
                    if got >= nbytes:
                        break
    except Exception as exc:
        if _unreachable(exc):
            raise PullError(f"{key}: {ref}: cannot reach the hub ({_endpoint()}) to read the header of {name}; "
                            "plan it with the hub reachable, or after `mcp-tiered pull`") from exc
        if isinstance(exc, OSError) and getattr(exc, "response", None) is None:
            raise PullError(f"{key}: {ref}: cannot write the header of {name} into {folder} ({exc})") from exc
        raise PullError(f"{key}: {ref}: {explain(exc, ref, name)}") from exc
    try:
        with path.open("r+b") as f:
            f.truncate(max(size, got))
    except (OSError, OverflowError) as exc:
        raise PullError(f"{key}: {ref}: the hub gives {name} a size of {size} bytes, which no file here can have "
                        f"({exc})") from exc
    return path, got


def _bounded(response: Any, limit: int = 1 << 16) -> Any:
    """A copy of a streamed error answer with at most `limit` bytes of its body, for hf_raise_for_status (which
    reads the whole body for the hub's message)."""
    import httpx2

    body = b""
    for chunk in response.iter_bytes(1 << 14):
        body += chunk
        if len(body) >= limit:
            break
    headers = [(k, v) for k, v in response.headers.items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx2.Response(response.status_code, headers=headers, content=body[:limit], request=response.request)


def explain(exc: Exception, ref: HfRef, name: str) -> str:
    """A download failure in words (the hub's own message without its URL noise)."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
    if isinstance(exc, GatedRepoError):
        return (f"the repository {ref.repo_id} is gated or private and refused access ({token}); accept its terms "
                "on the hub and set HF_TOKEN to a token that may read it")
    if isinstance(exc, RepositoryNotFoundError):
        return f"no repository {ref.repo_id} on the hub (or it is private and {token})"
    if isinstance(exc, RevisionNotFoundError):
        return f"the repository {ref.repo_id} has no revision {ref.revision!r}"
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return f"the repository {ref.repo_id} has no file {name} at revision {ref.revision!r}"
    if (status := _http_status(exc)) is not None:
        return (f"the hub ({_endpoint()}) answered HTTP {status}{_phrase(status)} to the request for {name}"
                + ("; try again later" if status >= 500 else ""))
    if isinstance(exc, LocalEntryNotFoundError) or _unreachable(exc):
        return (f"cannot reach the hub to fetch {name} ({_endpoint()}), and it is not downloaded yet; check the "
                "network (or HF_ENDPOINT) and pull again")
    if isinstance(exc, OSError) and getattr(exc, "response", None) is None:
        return f"cannot write {name} into the model cache ({exc})"
    return f"the download of {name} failed ({type(exc).__name__}: {_first_line(exc)})"


def _phrase(status: int) -> str:
    try:
        return f" ({HTTPStatus(status).phrase})"
    except ValueError:
        return ""


def _http_status(exc: BaseException | None) -> int | None:
    """The HTTP status of the hub's answer behind `exc` (huggingface_hub wraps it in other errors), if any."""
    for _ in range(8):  # a chain of causes is short (and may loop)
        if exc is None:
            return None
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        exc = exc.__cause__ or exc.__context__
    return None


def _unreachable(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.ConnectError | httpx2.TimeoutException)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
