"""The pure parts of auth: what scopes grant, the per-minute window, the daily tokens, a principal's cloud
budget inside the team's."""

from __future__ import annotations

import pytest

from mcp_tiered.accounting.budget import BudgetExceeded, CloudBudget, Spender
from mcp_tiered.auth.limits import RequestRate, TokenQuota, retry_after
from mcp_tiered.auth.scopes import Grants
from mcp_tiered.auth.verifier import Verifier
from mcp_tiered.config.auth import AuthConfig, OAuthConfig
from mcp_tiered.config.schema import TokenPrices

PRICES = TokenPrices(input_price_per_mtok=1_000_000.0, output_price_per_mtok=0.0)
"""1 per input token: a prompt of n bytes has a worst case of n + 16."""


class Clock:
    def __init__(self, now: float = 1_764_547_200.0):  # 2025-12-01 00:00 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_named_tier_scopes_allow_those_tiers_only() -> None:
    grants = Grants.of(["tools:small", "report"])
    assert grants.may_call("small") and not grants.may_call("large")
    assert not grants.cloud and grants.report and grants.scopes == ("tools:small", "report")


def oauth(**changes: object) -> AuthConfig:
    return AuthConfig(oauth=OAuthConfig(issuer="https://idp.example.com", resource="https://mcp.example.com/mcp",
                                        **changes))


def test_without_grants_the_tokens_scopes_are_read_as_mcp_tiered_scopes_and_others_ignored() -> None:
    grants = Verifier(oauth(), ["small"]).grants(frozenset({"openid", "tools", "cloud", "tools:nope"}))
    assert grants.scopes == ("tools", "cloud")


def test_grants_map_provider_scopes_and_groups_to_mcp_tiered_scopes() -> None:
    verifier = Verifier(oauth(grants={"api://mcp/Use": ["tools:small"], "ml-team": ["tools", "cloud"]}), ["small"])
    assert verifier.grants(frozenset({"api://mcp/Use"})).scopes == ("tools:small",)
    assert verifier.grants(frozenset({"api://mcp/Use", "ml-team"})).scopes == ("tools", "tools:small", "cloud")
    assert verifier.grants(frozenset({"tools", "report"})).scopes == ()  # with grants, names alone grant nothing


def test_the_request_window_slides_over_the_last_minute() -> None:
    clock = Clock(0.0)
    rate = RequestRate(clock)
    assert [rate.admit("a", 2) for _ in range(2)] == [None, None]
    clock.now = 20.0
    assert rate.admit("a", 2) == pytest.approx(40.0)
    assert rate.admit("b", 2) is None  # another principal's window is its own
    clock.now = 60.0
    assert rate.admit("a", 2) is None
    assert retry_after(0.2) == "1" and retry_after(40.0) == "40"


def test_daily_tokens_start_again_on_the_next_utc_day() -> None:
    clock = Clock()
    quota = TokenQuota(clock)
    quota.count("a", 90)
    assert quota.left("a", 100) == 10 and quota.left("a", None) is None
    clock.now += 86400
    assert quota.left("a", 100) == 100


def test_a_spender_is_capped_at_its_own_budget_while_the_team_has_room() -> None:
    budget = CloudBudget(daily=1000.0, monthly=None, currency="USD", clock=Clock())
    alice = Spender("alice", daily=50.0, monthly=None)
    held = budget.reserve(PRICES, "x" * 24, "", 0, alice)  # worst case 40
    with pytest.raises(BudgetExceeded, match="only 10.0000 USD of alice's daily cloud budget"):
        budget.reserve(PRICES, "x" * 24, "", 0, alice)
    budget.reserve(PRICES, "x" * 24, "", 0, Spender("bob", daily=50.0, monthly=None))
    budget.release(held)
    budget.reserve(PRICES, "x" * 24, "", 0, alice)


def test_the_team_cap_holds_over_every_spender() -> None:
    budget = CloudBudget(daily=100.0, monthly=None, currency="USD", clock=Clock())
    budget.reserve(PRICES, "x" * 24, "", 0, Spender("alice", daily=80.0, monthly=None))
    budget.reserve(PRICES, "x" * 24, "", 0, Spender("bob", daily=80.0, monthly=None))
    with pytest.raises(BudgetExceeded, match="of the daily budget"):
        budget.reserve(PRICES, "x" * 24, "", 0, Spender("carol", daily=80.0, monthly=None))


def test_restored_spend_counts_against_the_spenders_own_budget() -> None:
    budget = CloudBudget(daily=None, monthly=None, currency="USD", clock=Clock())
    budget.restore(0.0, 0.0, {"alice": (45.0, 45.0)})
    with pytest.raises(BudgetExceeded, match="alice's daily cloud budget"):
        budget.reserve(PRICES, "x" * 24, "", 0, Spender("alice", daily=50.0, monthly=None))
