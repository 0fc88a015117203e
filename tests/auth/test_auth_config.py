"""`[auth]` in models.toml: the example loads, and each mistake is one sentence naming its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO
from mcp_tiered.config.load import load_config
from mcp_tiered.errors import ConfigError


def uncommented_auth_section() -> str:
    lines, inside = [], False
    for line in (REPO / "models.example.toml").read_text().splitlines():
        inside = inside or line == "# [auth]"
        if inside and not line.strip():
            inside = False
        keep = inside and (re.fullmatch(r"# \[auth[^\]]*\]", line) or re.match(r"# \w+ = ", line))
        lines.append(line[2:] if keep else line)
    return "\n".join(lines)


def test_the_example_configs_auth_section_loads_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(uncommented_auth_section())
    auth = load_config(path).auth
    assert auth.oauth.issuer == "https://login.example.com/realms/engineering"
    assert auth.oauth.grants["ml-team"] == ["tools", "cloud"] and auth.oauth.principal_claim == "email"
    assert auth.keys_file == tmp_path / "keys.json"
    assert auth.limits.requests_per_minute == 120 and auth.principals["alice@example.com"].cloud_daily == 20.0
    assert auth.principals["alice@example.com"].over(auth.limits).cloud_monthly == 50.0


def problem(tmp_path: Path, smollm2: Path, auth: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(f'[tiers.small]\nmodel = "{smollm2}"\ndescription = "s"\n{auth}')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return str(refused.value)


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_a_symmetric_or_no_algorithm_is_refused(tmp_path: Path, smollm2: Path, algorithm: str) -> None:
    text = problem(tmp_path, smollm2, '[auth.oauth]\nissuer = "https://idp.example.com"\n'
                   f'resource = "https://mcp.example.com/mcp"\nalgorithms = ["{algorithm}"]\n')
    assert "auth.oauth.algorithms[0]" in text and "RS256" in text


def test_a_grant_of_an_unknown_scope_names_its_key(tmp_path: Path, smollm2: Path) -> None:
    text = problem(tmp_path, smollm2, '[auth.oauth]\nissuer = "https://idp.example.com"\n'
                   'resource = "https://mcp.example.com/mcp"\ngrants = { "ml" = ["tools", "tools:large"] }\n')
    assert "auth.oauth.grants.ml[1]: 'tools:large' names no tier (valid tiers are small)" in text


def test_an_issuer_that_is_no_url_is_refused(tmp_path: Path, smollm2: Path) -> None:
    text = problem(tmp_path, smollm2, '[auth.oauth]\nissuer = "idp.example.com"\nresource = "https://m/mcp"\n')
    assert "auth.oauth.issuer: must be an http(s) URL" in text


def test_an_issuer_over_plain_http_beyond_loopback_is_refused(tmp_path: Path, smollm2: Path) -> None:
    text = problem(tmp_path, smollm2, '[auth.oauth]\nissuer = "http://idp.example.com"\nresource = "https://m/mcp"\n')
    assert "auth.oauth.issuer: must be an https URL (the issuer's identifier; http only on loopback)" in text


def test_groups_without_grants_are_refused(tmp_path: Path, smollm2: Path) -> None:
    text = problem(tmp_path, smollm2, '[auth.oauth]\nissuer = "https://idp.example.com"\nresource = "https://m/mcp"\n'
                   'groups_claim = "groups"\n')
    assert "auth.oauth: groups_claim needs grants" in text
