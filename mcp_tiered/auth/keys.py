"""Named API keys: the JSON key file that `mcp-tiered keys` manages (`add_key`, `revoke_key`, `list_keys`) and
the HTTP transport reads (`KeyFile`), re-read whenever it changes. The file holds each key's sha256, never the key:

    {"version": 1, "keys": [{"name": "ci-bot", "sha256": "<64 hex>", "scopes": ["tools", "cloud"],
                             "limits": {"requests_per_minute": 60}, "created": "2026-12-02T14:00:00Z"}]}
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from ..config.auth import PrincipalLimits
from ..config.explain import explain, key_path
from ..errors import ConfigError
from .principal import KEY_PREFIX, Principal
from .scopes import EVERY_SCOPE, TIER_PREFIX, TOOLS, Grants, scope_problem

log = structlog.get_logger(__name__)

FILE_VERSION = 1
TOKEN_PREFIX = "mcpt_"
DEFAULT_KEY_NAME = "default"
"""The key of the legacy [server] auth_token_env."""
DEFAULT_SCOPES = (TOOLS,)
NAME_RULE = "1 to 64 characters of A-Z, a-z, 0-9, _ . @ -"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = ("name", "sha256", "scopes", "limits", "created")


def new_token() -> str:
    """A fresh key: `mcpt_` and 43 characters holding 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def key_hash(token: str) -> str:
    # A bare sha256 suffices: keys are 256 random bits, so there is no dictionary to guess from and a salt or a
    # slow KDF would add nothing but cost per request.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    limits: PrincipalLimits = PrincipalLimits()
    created: str = ""
    """When `keys add` made it, ISO 8601 UTC ("" when the file does not say)."""

    def principal(self) -> Principal:
        """Its principal, `key:<name>`, with its own limits (None where it sets none: apply [auth.limits] over)."""
        return Principal(KEY_PREFIX + self.name, "key", Grants.of(self.scopes), self.limits)

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "scopes": list(self.scopes)}
        if limits := self.limits.model_dump(exclude_none=True):
            entry["limits"] = limits
        if self.created:
            entry["created"] = self.created
        return entry


def default_key(token: str) -> KeyEntry:
    """[server] auth_token_env's token as a key named `default` with every scope."""
    return KeyEntry(DEFAULT_KEY_NAME, key_hash(token), EVERY_SCOPE)


class KeyFile:
    """The key file as the HTTP transport reads it: `lookup` stats the file and re-reads it only when it changed,
    so keys added or revoked take effect on the next request.

    A file that turns invalid or unreadable after a good load refuses every key until it is fixed (one warning
    per change): keeping the last good keys would bring back a key whose revocation broke the file. A file that
    is gone holds no keys."""

    def __init__(self, path: Path, tiers: Iterable[str] | None = None):
        self.path = Path(path)
        self.tiers = None if tiers is None else tuple(tiers)
        self.reads = 0
        """How many times the file's content was read (the tests' witness that an unchanged file is not)."""
        self._warned: tuple[int, ...] | None = None
        try:
            self._stamp, data = self._read()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        self._by_hash = _by_hash(_parse(data, self.path, self.tiers)) if self._stamp is not None else {}

    def lookup(self, token: str) -> KeyEntry | None:
        """The key `token` is, or None. A dict lookup by sha256: comparing hashes leaks nothing of the key."""
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._reload(stamp)
        return self._by_hash.get(key_hash(token))

    @property
    def entries(self) -> list[KeyEntry]:
        return list(self._by_hash.values())

    def _read(self) -> tuple[tuple[int, ...] | None, bytes]:
        """The file's stamp (None: there is no file) and text, both from the one open file, so a write in
        between cannot pair the new stamp with the old text."""
        try:
            with open(self.path, "rb") as file:
                stamp = _stamp_of(os.fstat(file.fileno()))
                self.reads += 1
                return stamp, file.read()
        except FileNotFoundError:
            return None, b""

    def _reload(self, stat_stamp: tuple[int, ...] | None) -> None:
        try:
            stamp, data = self._read()
        except OSError as exc:
            # The stamp stays unknown, so the next lookup tries again: EACCES or EMFILE may pass.
            return self._refuse(None, stat_stamp, f"cannot be read ({exc.strerror or exc})")
        if stamp is None:
            if self._by_hash:
                log.warning("keys_file_invalid", path=str(self.path), reason="it no longer exists",
                            refusing="every key")
            self._stamp, self._by_hash = None, {}
            return
        try:
            entries = _parse(data, self.path, self.tiers)
        except ConfigError as exc:
            return self._refuse(stamp, stamp, str(exc).removeprefix(f"{self.path}: "))
        self._stamp, self._warned, self._by_hash = stamp, None, _by_hash(entries)
        log.info("keys_file_read", path=str(self.path), keys=len(entries))

    def _refuse(self, stamp: tuple[int, ...] | None, seen: tuple[int, ...] | None, reason: str) -> None:
        """No key is valid until the file changes (`stamp`); one warning per version of the file (`seen`)."""
        self._stamp, self._by_hash = stamp, {}
        if seen != self._warned:
            self._warned = seen
            log.warning("keys_file_invalid", path=str(self.path), reason=reason,
                        refusing="every key until the file is fixed")


def _by_hash(entries: list[KeyEntry]) -> dict[str, KeyEntry]:
    return {entry.sha256: entry for entry in entries}


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        return _stamp_of(os.stat(path))
    except FileNotFoundError:
        return None
    except OSError:
        return (-1,)  # unstattable: differs from every real stamp, so the next lookup tries again


def _stamp_of(st: os.stat_result) -> tuple[int, ...]:
    return st.st_mtime_ns, st.st_size, st.st_ino


def _parse(data: bytes, path: Path, tiers: tuple[str, ...] | None) -> list[KeyEntry]:
    """The keys in the file's text; ConfigError with the first problem, naming the file and its place."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: is not JSON ({exc})") from None
    problem = _document_problem(document)
    if problem is None:
        entries, problem = _entries(document["keys"], tiers)
        if problem is None:
            return entries
    raise ConfigError(f"{path}: {problem}")


def _document_problem(document: Any) -> str | None:
    if not isinstance(document, dict):
        return 'must be a JSON object with "version" and "keys"'
    if unknown := sorted(set(document) - {"version", "keys"}):
        return f"{key_path([unknown[0]])}: unknown key; valid keys here are version, keys"
    version = document.get("version")
    if type(version) is not int:
        return f"version: must be {FILE_VERSION}"
    if version != FILE_VERSION:
        return f"version: is {version}, written by another mcp-tiered; this one reads version {FILE_VERSION}"
    if not isinstance(document.get("keys"), list):
        return "keys: must be a list"
    return None


def _entries(items: list[Any], tiers: tuple[str, ...] | None) -> tuple[list[KeyEntry], str | None]:
    entries: list[KeyEntry] = []
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, item in enumerate(items):
        entry = _entry(item, ["keys", i], tiers)
        if isinstance(entry, str):
            return [], entry
        if entry.name in names:
            return [], f"{key_path(['keys', i, 'name'])}: {entry.name!r} is also keys[{names[entry.name]}]'s name"
        if entry.sha256 in hashes:
            return [], f"{key_path(['keys', i, 'sha256'])}: is the same key as keys[{hashes[entry.sha256]}]"
        names[entry.name], hashes[entry.sha256] = i, i
        entries.append(entry)
    return entries, None


def _entry(item: Any, at: list[str | int], tiers: tuple[str, ...] | None) -> KeyEntry | str:
    """The entry at `at`, or the sentence saying what is wrong with it. Never quotes the sha256 field: a key
    pasted there by mistake must not reach a log line."""
    if not isinstance(item, dict):
        return f"{key_path(at)}: must be an object with name, sha256 and scopes"
    if unknown := sorted(set(item) - set(_ENTRY_FIELDS)):
        return f"{key_path([*at, unknown[0]])}: unknown key; valid keys here are {', '.join(_ENTRY_FIELDS)}"
    for field in ("name", "sha256", "scopes"):
        if field not in item:
            return f"{key_path([*at, field])}: is required"
    name, sha256, scopes = item["name"], item["sha256"], item["scopes"]
    if problem := name_problem(name):
        return f"{key_path([*at, 'name'])}: {problem}"
    if name == DEFAULT_KEY_NAME:
        return f"{key_path([*at, 'name'])}: 'default' is the name of [server] auth_token_env's token; rename this key"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"{key_path([*at, 'sha256'])}: must be 64 lowercase hex digits (the sha256 of the key)"
    if not isinstance(scopes, list):
        return f"{key_path([*at, 'scopes'])}: must be a list of scopes"
    for j, scope in enumerate(scopes):
        if problem := _scope_problem(scope, tiers):
            return f"{key_path([*at, 'scopes', j])}: {problem}"
    limits = item.get("limits", {})
    if not isinstance(limits, dict):
        return f"{key_path([*at, 'limits'])}: must be an object"
    try:
        checked = PrincipalLimits.model_validate(limits)
    except ValidationError as exc:
        return explain(exc, PrincipalLimits, [*at, "limits"])[0]
    created = item.get("created", "")
    if not isinstance(created, str) or (created and not _is_time(created)):
        return f"{key_path([*at, 'created'])}: must be an ISO 8601 time such as 2026-12-02T14:00:00Z"
    return KeyEntry(name, sha256, tuple(scopes), checked, created)


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a key, or None."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return None
    shown = repr(name) if isinstance(name, str) else type(name).__name__
    return f"must be {NAME_RULE}, got {shown}"


def _scope_problem(scope: Any, tiers: tuple[str, ...] | None) -> str | None:
    if not isinstance(scope, str):
        return f"must be a scope name (a string), got {type(scope).__name__}"
    if tiers is None and scope.startswith(TIER_PREFIX):
        return None if scope[len(TIER_PREFIX):] else f"{scope!r} names no tier; write tools:<tier>"
    return scope_problem(scope, tiers or ())


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def list_keys(path: Path) -> list[KeyEntry]:
    """The keys in the file (none when it does not exist); ConfigError when it is invalid."""
    return KeyFile(path).entries


def add_key(path: Path, name: str, scopes: Iterable[str], limits: PrincipalLimits = PrincipalLimits(),
            tiers: Iterable[str] | None = None) -> str:
    """Adds a key named `name` to the file (creating it) and returns the key: shown once, stored nowhere."""
    path = Path(path).resolve()  # a symlinked file stays a symlink: its target is what changes
    scopes = tuple(dict.fromkeys(scopes))
    tier_names = None if tiers is None else tuple(tiers)
    if problem := name_problem(name):
        raise ConfigError(f"key name: {problem}")
    if name == DEFAULT_KEY_NAME:
        raise ConfigError(f"key name: {DEFAULT_KEY_NAME!r} is the name of [server] auth_token_env's token (its "
                          f"principal is key:{DEFAULT_KEY_NAME}); choose another name")
    if not scopes:
        raise ConfigError(f"a key needs at least one scope; valid scopes are {', '.join(EVERY_SCOPE)} and tools:<tier>")
    for scope in scopes:
        if problem := _scope_problem(scope, tier_names):
            raise ConfigError(problem)
    token = new_token()
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    with _locked(path):
        entries = list_keys(path)
        if any(entry.name == name for entry in entries):
            raise ConfigError(f"{path}: there is already a key named {name!r}; revoke it first or choose another name")
        _write(path, [*entries, KeyEntry(name, key_hash(token), scopes, limits, created)])
    return token


def revoke_key(path: Path, name: str) -> bool:
    """Removes the key named `name`; False when there is none."""
    path = Path(path).resolve()
    with _locked(path):
        entries = list_keys(path)
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            return False
        _write(path, kept)
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive flock on `<file>.lock` beside the key file: writers read, change and replace it one at
    a time (the file itself cannot be locked, since os.replace swaps in another inode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, entries: list[KeyEntry]) -> None:
    """The file replaced atomically by one with `entries`, mode 0600."""
    text = json.dumps({"version": FILE_VERSION, "keys": [entry.as_json() for entry in entries]}, indent=2) + "\n"
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
