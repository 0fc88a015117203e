from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import MCP_TIERED
from mcp_tiered.auth.keys import (DEFAULT_KEY_NAME, KeyFile, add_key, default_key, key_hash, list_keys,
                                  revoke_key)
from mcp_tiered.auth.scopes import EVERY_SCOPE
from mcp_tiered.config.auth import PrincipalLimits
from mcp_tiered.errors import ConfigError

TIERS = ("small", "large")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def write_keys(path: Path, *entries: dict) -> None:
    path.write_text(json.dumps({"version": 1, "keys": list(entries)}), encoding="utf-8")


def entry(name: str, token: str = "", **fields) -> dict:
    return {"name": name, "sha256": key_hash(token or f"mcpt_{name}"), "scopes": ["tools"], **fields}


def test_an_added_key_is_found_with_its_scopes_and_limits(path: Path) -> None:
    key = add_key(path, "ci-bot", ["tools", "cloud"], PrincipalLimits(requests_per_minute=60), tiers=TIERS)
    found = KeyFile(path, TIERS).lookup(key)
    assert found is not None
    assert (found.name, found.scopes, found.limits) == ("ci-bot", ("tools", "cloud"),
                                                        PrincipalLimits(requests_per_minute=60))


def test_a_key_is_the_principal_key_colon_name(path: Path) -> None:
    key = add_key(path, "ci-bot", ["tools:small", "report"], tiers=TIERS)
    principal = KeyFile(path).lookup(key).principal()
    assert (principal.name, principal.kind) == ("key:ci-bot", "key")
    assert (principal.grants.may_call("small"), principal.grants.may_call("large"), principal.grants.cloud,
            principal.grants.report) == (True, False, False, True)


def test_a_token_that_is_no_key_is_not_found(path: Path) -> None:
    add_key(path, "ci-bot", ["tools"])
    assert KeyFile(path).lookup("mcpt_" + "A" * 43) is None


def test_a_new_key_is_mcpt_and_43_url_safe_characters(path: Path) -> None:
    assert re.fullmatch(r"mcpt_[A-Za-z0-9_-]{43}", add_key(path, "ci-bot", ["tools"]))


def test_the_file_holds_the_keys_hash_and_never_the_key(path: Path) -> None:
    key = add_key(path, "ci-bot", ["tools"])
    text = path.read_text(encoding="utf-8")
    assert text.count(key) == 0 and text.count(key[len("mcpt_"):]) == 0
    assert json.loads(text)["keys"][0]["sha256"] == key_hash(key)


def test_the_file_has_mode_0600(path: Path) -> None:
    add_key(path, "ci-bot", ["tools"])
    revoke_key(path, "ci-bot")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_revoked_key_is_refused_on_the_next_lookup_of_the_same_key_file(path: Path) -> None:
    kept, revoked = add_key(path, "kept", ["tools"]), add_key(path, "gone", ["tools"])
    keys = KeyFile(path)
    assert keys.lookup(revoked) is not None
    assert revoke_key(path, "gone") is True
    assert keys.lookup(revoked) is None
    assert keys.lookup(kept).name == "kept"


def test_revoking_an_unknown_name_changes_nothing(path: Path) -> None:
    add_key(path, "ci-bot", ["tools"])
    before = path.read_bytes()
    assert revoke_key(path, "nobody") is False
    assert path.read_bytes() == before


def test_a_key_added_by_another_process_is_found(path: Path) -> None:
    keys = KeyFile(path)  # no file yet
    added = subprocess.run([sys.executable, "-c", "import sys; from mcp_tiered.auth.keys import add_key; "
                            "print(add_key(sys.argv[1], 'other', ['tools']))", str(path)],
                           capture_output=True, text=True, check=True)
    assert keys.lookup(added.stdout.strip()).name == "other"


def test_an_unchanged_file_is_not_read_again(path: Path) -> None:
    key = add_key(path, "ci-bot", ["tools"])
    keys = KeyFile(path)
    for _ in range(5):
        assert keys.lookup(key) is not None
        assert keys.lookup("mcpt_wrong") is None
    assert keys.reads == 1


def test_a_changed_file_is_read_once_more(path: Path) -> None:
    add_key(path, "ci-bot", ["tools"])
    keys = KeyFile(path)
    new = add_key(path, "new", ["tools"])
    assert keys.lookup(new) is not None and keys.lookup(new) is not None
    assert keys.reads == 2


def test_a_missing_file_at_start_holds_no_keys(path: Path) -> None:
    keys = KeyFile(path)
    assert (keys.lookup("mcpt_anything"), keys.entries, keys.reads) == (None, [], 0)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('["ci-bot"]', 'must be a JSON object with "version" and "keys"'),
    ('{"version": 2, "keys": []}', "version: is 2, written by another mcp-tiered; this one reads version 1"),
    ('{"version": 1, "keys": {}}', "keys: must be a list"),
    (json.dumps({"version": 1, "keys": [entry("a"), entry("b", scopes=["tools", "clod"])]}),
     "keys[1].scopes[1]: 'clod' is not a scope; valid scopes are tools, cloud, report and tools:<tier>"),
    (json.dumps({"version": 1, "keys": [entry("a", scopes=["tools:huge"])]}),
     "keys[0].scopes[0]: 'tools:huge' names no tier (valid tiers are small, large)"),
    (json.dumps({"version": 1, "keys": [entry("a"), entry("a", token="other")]}),
     "keys[1].name: 'a' is also keys[0]'s name"),
    (json.dumps({"version": 1, "keys": [entry("a"), entry("b", token="mcpt_a")]}),
     "keys[1].sha256: is the same key as keys[0]"),
    (json.dumps({"version": 1, "keys": [entry("a b")]}),
     "keys[0].name: must be 1 to 64 characters of A-Z, a-z, 0-9, _ . @ -, got 'a b'"),
    (json.dumps({"version": 1, "keys": [{"name": "a", "sha256": "mcpt_secret", "scopes": []}]}),
     "keys[0].sha256: must be 64 lowercase hex digits (the sha256 of the key)"),
    (json.dumps({"version": 1, "keys": [entry("a", limits={"requests_per_minute": 0})]}),
     "keys[0].limits.requests_per_minute: must be an integer ≥ 1, got 0"),
    (json.dumps({"version": 1, "keys": [entry("a", limits={"per_hour": 5})]}),
     "keys[0].limits.per_hour: unknown key; valid keys here are requests_per_minute, tokens_per_day, "
     "cloud_daily, cloud_monthly"),
    (json.dumps({"version": 1, "keys": [entry("a", key="mcpt_a")]}),
     "keys[0].key: unknown key; valid keys here are name, sha256, scopes, limits, created"),
])
def test_an_invalid_file_at_start_raises_one_sentence_naming_the_file_and_the_key(path: Path, text: str,
                                                                                 problem: str) -> None:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        KeyFile(path, TIERS)
    assert raised.value.problems == [f"{path}: {problem}"]


def test_without_tiers_a_tier_scope_is_not_checked(path: Path) -> None:
    write_keys(path, entry("a", scopes=["tools:anything"]))
    assert KeyFile(path).lookup("mcpt_a").scopes == ("tools:anything",)


def test_a_file_broken_after_a_good_load_refuses_every_key_with_one_warning(path: Path) -> None:
    write_keys(path, entry("a"), entry("b"))
    keys = KeyFile(path)
    assert keys.lookup("mcpt_a") is not None
    path.write_text('{"version": 1, "keys": [', encoding="utf-8")  # a revocation that went wrong
    with capture_logs() as events:
        assert [keys.lookup("mcpt_a"), keys.lookup("mcpt_b"), keys.lookup("mcpt_a")] == [None, None, None]
    assert [(e["event"], e["log_level"], e["path"]) for e in events] == [("keys_file_invalid", "warning", str(path))]
    assert events[0]["reason"].startswith("is not JSON")


def test_a_broken_file_serves_again_once_fixed(path: Path) -> None:
    write_keys(path, entry("a"))
    keys = KeyFile(path)
    path.write_text("{}", encoding="utf-8")
    assert keys.lookup("mcpt_a") is None
    write_keys(path, entry("a"), entry("b"))
    assert keys.lookup("mcpt_b").name == "b"


def test_a_file_deleted_after_a_good_load_refuses_every_key_with_a_warning(path: Path) -> None:
    write_keys(path, entry("a"))
    keys = KeyFile(path)
    path.unlink()
    with capture_logs() as events:
        assert keys.lookup("mcpt_a") is None
    assert [(e["event"], e["reason"]) for e in events] == [("keys_file_invalid", "it no longer exists")]


def test_no_log_line_holds_a_key_or_its_hash(path: Path) -> None:
    key = add_key(path, "ci-bot", ["tools"])
    keys = KeyFile(path)
    text = path.read_text(encoding="utf-8")
    with capture_logs() as events:
        path.write_text(text.replace('"tools"', '"tool"'), encoding="utf-8")
        assert keys.lookup(key) is None
        path.write_text(text, encoding="utf-8")
        assert keys.lookup(key) is not None
    assert [e["event"] for e in events] == ["keys_file_invalid", "keys_file_read"]
    assert key not in repr(events) and key_hash(key) not in repr(events) and key_hash(key)[:8] not in repr(events)


def test_a_duplicate_name_is_refused(path: Path) -> None:
    add_key(path, "ci-bot", ["tools"])
    with pytest.raises(ConfigError, match=r"there is already a key named 'ci-bot'; revoke it first"):
        add_key(path, "ci-bot", ["cloud"])
    assert [e.scopes for e in list_keys(path)] == [("tools",)]


@pytest.mark.parametrize("scope, problem", [
    ("clod", "'clod' is not a scope; valid scopes are tools, cloud, report and tools:<tier>"),
    ("tools:huge", "'tools:huge' names no tier (valid tiers are small, large)"),
])
def test_a_bad_scope_is_refused_and_nothing_is_written(path: Path, scope: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        add_key(path, "ci-bot", ["tools", scope], tiers=TIERS)
    assert raised.value.problems == [problem]
    assert not path.exists()


def test_a_bad_name_is_refused(path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^key name: must be 1 to 64 characters"):
        add_key(path, "x" * 65, ["tools"])


ADDER = """
import sys, time
from pathlib import Path
from mcp_tiered.auth.keys import add_key
path, who, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(path.parent / f"ready-{who}").touch()
while not (path.parent / "go").exists():
    time.sleep(0.001)
for i in range(count):
    add_key(path, f"{who}-{i}", ["tools"])
"""


def test_concurrent_adds_from_two_processes_keep_every_key(path: Path) -> None:
    import time

    adders = [subprocess.Popen([sys.executable, "-c", ADDER, str(path), who, "60"]) for who in ("left", "right")]
    deadline = time.monotonic() + 30
    while not all((path.parent / f"ready-{who}").exists() for who in ("left", "right")):
        assert time.monotonic() < deadline, "the adders did not start"
        time.sleep(0.01)
    (path.parent / "go").touch()  # both start at once: without the lock, about half the keys are lost
    assert [adder.wait(timeout=60) for adder in adders] == [0, 0]
    assert sorted(e.name for e in list_keys(path)) == sorted(f"{who}-{i}" for who in ("left", "right")
                                                            for i in range(60))


def test_the_default_key_is_named_default_with_every_scope() -> None:
    key = default_key("s3cret")
    assert (key.name, key.scopes, key.sha256) == (DEFAULT_KEY_NAME, EVERY_SCOPE, key_hash("s3cret"))
    assert key.principal().name == "key:default"


CONFIG = '[tiers.small]\nmodel = "m.gguf"\ndescription = "x"\n\n[auth]\nkeys_file = "keys.json"\n'


def keys_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MCP_TIERED, "keys", *args[:1], "--config", str(config), *args[1:]], capture_output=True,
                          text=True, timeout=60)


def test_cli_add_list_revoke_round_trip(write_config) -> None:
    config = write_config(CONFIG)
    added = keys_cli(config, "add", "ci-bot", "--scope", "tools:small", "--scope", "cloud",
                     "--requests-per-minute", "60", "--cloud-daily", "2.5")
    assert added.returncode == 0, added.stderr
    key = added.stdout.removesuffix("\n")
    assert re.fullmatch(r"mcpt_[A-Za-z0-9_-]{43}", key) and "shown once" in added.stderr
    assert KeyFile(config.parent / "keys.json").lookup(key).name == "ci-bot"

    listed = keys_cli(config, "list", "--format", "json")
    assert json.loads(listed.stdout)["keys"] == [{
        "name": "ci-bot", "sha256_prefix": key_hash(key)[:8], "scopes": ["tools:small", "cloud"],
        "limits": {"requests_per_minute": 60, "cloud_daily": 2.5}, "created": list_keys(config.parent / "keys.json")[0].created}]
    table = keys_cli(config, "list").stdout
    assert "ci-bot" in table and "tools:small cloud" in table and "requests_per_minute=60" in table
    assert key_hash(key) not in table + listed.stdout

    revoked = keys_cli(config, "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert list_keys(config.parent / "keys.json") == []


def test_cli_add_without_a_scope_grants_tools_only(write_config) -> None:
    config = write_config(CONFIG)
    assert keys_cli(config, "add", "ci").returncode == 0
    assert list_keys(config.parent / "keys.json")[0].scopes == ("tools",)


def test_cli_revoke_of_an_unknown_name_exits_1_with_one_sentence(write_config) -> None:
    config = write_config(CONFIG)
    out = keys_cli(config, "revoke", "nobody")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (f"error: there is no key named 'nobody' in {config.parent / 'keys.json'}; "
                          "`mcp-tiered keys list` shows them\n")


def test_cli_add_of_a_bad_scope_exits_1_with_one_sentence(write_config) -> None:
    out = keys_cli(write_config(CONFIG), "add", "ci", "--scope", "clod")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == "error: 'clod' is not a scope; valid scopes are tools, cloud, report and tools:<tier>\n"


def test_cli_add_of_a_bad_limit_names_the_option(write_config) -> None:
    out = keys_cli(write_config(CONFIG), "add", "ci", "--tokens-per-day", "0")
    assert (out.returncode, out.stderr) == (1, "error: --tokens-per-day: must be an integer ≥ 1, got 0\n")


def test_cli_without_a_keys_file_says_so_naming_auth_keys_file(write_config) -> None:
    out = keys_cli(write_config('[tiers.small]\nmodel = "m.gguf"\ndescription = "x"\n'), "list")
    assert out.returncode == 1
    assert out.stderr.startswith("error: auth.keys_file: is not set in the config") and out.stderr.count("\n") == 1


def test_the_name_of_the_legacy_token_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'default' is the name of \\[server\\] auth_token_env's token"):
        add_key(tmp_path / "keys.json", DEFAULT_KEY_NAME, ["tools"])
    assert not (tmp_path / "keys.json").exists()


def test_a_symlinked_keys_file_stays_a_symlink_and_its_target_changes(tmp_path: Path) -> None:
    target = tmp_path / "managed" / "keys.json"
    add_key(target, "a", ["tools"])
    link = tmp_path / "keys.json"
    link.symlink_to(target)
    token = add_key(link, "b", ["tools"])
    assert link.is_symlink()
    assert KeyFile(target).lookup(token).name == "b"


def test_a_file_entry_named_default_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"version": 1, "keys": [{"name": "default", "sha256": "0" * 64, "scopes": ["tools"]}]}))
    with pytest.raises(ConfigError, match=r"keys\[0\]\.name: 'default' is the name of \[server\] auth_token_env"):
        KeyFile(path)
