"""[store] in models.toml: a PostgreSQL URL without a password in it, the password's variable by name; `check`
says whether the store is reachable; `report --store` on a bad URL is one sentence."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import MCP_TIERED, server_env
from mcp_tiered.config.load import parse_config
from mcp_tiered.errors import ConfigError

TIER = {"small": {"model": "m.gguf", "description": "d"}}


def problems(store: dict) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config({"tiers": TIER, "store": store}, base_dir=Path("."))
    return refused.value.problems


def test_a_password_in_the_url_is_refused_naming_the_key() -> None:
    assert problems({"url": "postgresql://mcp:hunter2@db/mcp"}) == [
        "store.url: must not hold a password; put it in an environment variable and name that variable in "
        "store.password_env"]


def test_a_password_in_the_query_is_refused_too() -> None:
    assert problems({"url": "postgresql://mcp@db/mcp?password=hunter2"})[0].startswith(
        "store.url: must not hold a password (password= in the query)")


def test_a_url_that_is_not_postgresql_is_one_sentence() -> None:
    assert problems({"url": "mysql://db/mcp"}) == [
        "store.url: must start with postgresql:// (a PostgreSQL URL), got 'mysql'"]


def test_the_password_never_reaches_the_error_of_a_refused_url() -> None:
    assert not any("hunter2" in p for p in problems({"url": "postgresql://mcp:hunter2@db/mcp"}))


def test_an_unknown_store_key_names_the_valid_ones() -> None:
    assert problems({"url": "postgresql://db/mcp", "pasword_env": "X"})[0].startswith("store.pasword_env: unknown key")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, *args], capture_output=True, text=True, env=server_env(), timeout=60,
                          stdin=subprocess.DEVNULL)


def config_with_store(tmp_path: Path, url: str) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    path = tmp_path / "models.toml"
    path.write_text(f'[tiers.small]\nmodel = "{model}"\ndescription = "s"\n[store]\nurl = "{url}"\ninstance = "t"\n')
    return path


def test_check_says_the_store_is_reachable_and_empty(tmp_path: Path, store_url: str) -> None:
    done = run("check", "--config", str(config_with_store(tmp_path, store_url)))
    assert "ok     store: postgresql://mcp@" in done.stdout
    assert "(empty; the first server creates the schema), this process as t" in done.stdout


def test_check_fails_on_a_store_it_cannot_reach(tmp_path: Path) -> None:
    done = run("check", "--config", str(config_with_store(tmp_path, "postgresql://mcp@127.0.0.1:1/nowhere")))
    assert done.returncode == 1
    assert "error  store: cannot reach postgresql://mcp@127.0.0.1:1/nowhere (" in done.stdout


def test_report_on_a_bad_store_url_is_one_sentence(tmp_path: Path) -> None:
    done = run("report", "--config", str(config_with_store(tmp_path, "postgresql://db/x")), "--store", "mysql://x")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --store: must start with postgresql:// (a PostgreSQL URL), got 'mysql'"


def test_report_on_a_store_it_cannot_reach_is_one_sentence(tmp_path: Path) -> None:
    done = run("report", "--config", str(config_with_store(tmp_path, "postgresql://mcp@127.0.0.1:1/nowhere")))
    assert done.returncode == 1
    assert done.stderr.startswith("error: store.url: cannot reach the store postgresql://mcp@127.0.0.1:1/nowhere (")
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_example_configs_store_section_loads_uncommented(tmp_path: Path) -> None:
    from conftest import REPO
    from mcp_tiered.config.load import load_config

    lines, inside = [], False
    for line in (REPO / "models.example.toml").read_text().splitlines():
        inside = inside or line == "# [store]"
        if inside and not line.strip():
            inside = False
        lines.append(line[2:] if inside and (line == "# [store]" or re.match(r"# \w+ = ", line)) else line)
    text = "\n".join(lines)
    assert "\n[store]\n" in text and "\nurl = " in text
    config_path = tmp_path / "models.toml"
    config_path.write_text(text)
    store = load_config(config_path).store
    assert (store.url, store.password_env, store.lease_s, store.instance) == (
        "postgresql://mcp@db.internal:5432/mcp_tiered", "MCP_TIERED_DB_PASSWORD", 30, "replica-a")
