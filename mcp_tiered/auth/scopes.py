"""mcp-tiered's scopes and what they grant. Pure: no I/O, no logging.

- `tools`: call every tool; `tools:<tier>`: call generate_<tier> (escalations from it go on as usual);
- `cloud`: let calls reach tiers billed per token (without it they never do, as if local_only for the cloud);
- `report`: read /report, /metrics and the tiered://report resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TOOLS = "tools"
TIER_PREFIX = "tools:"
CLOUD = "cloud"
REPORT = "report"
EVERY_SCOPE = (TOOLS, CLOUD, REPORT)


def scope_problem(scope: str, tiers: Iterable[str]) -> str | None:
    """Why `scope` is not an mcp-tiered scope, or None."""
    if scope in EVERY_SCOPE:
        return None
    if scope.startswith(TIER_PREFIX):
        tier = scope[len(TIER_PREFIX):]
        names = list(tiers)
        if tier in names:
            return None
        return f"{scope!r} names no tier (valid tiers are {', '.join(names)})"
    return f"{scope!r} is not a scope; valid scopes are {', '.join(EVERY_SCOPE)} and tools:<tier>"


@dataclass(frozen=True, slots=True)
class Grants:
    """What a principal may do, from its scopes."""

    all_tools: bool
    tiers: frozenset[str]
    cloud: bool
    report: bool

    @classmethod
    def of(cls, scopes: Iterable[str]) -> Grants:
        scopes = frozenset(scopes)
        return cls(TOOLS in scopes, frozenset(s[len(TIER_PREFIX):] for s in scopes if s.startswith(TIER_PREFIX)),
                   CLOUD in scopes, REPORT in scopes)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scope names these grants come from, in a fixed order."""
        return (*((TOOLS,) if self.all_tools else ()), *(TIER_PREFIX + t for t in sorted(self.tiers)),
                *((CLOUD,) if self.cloud else ()), *((REPORT,) if self.report else ()))

    def may_call(self, tier: str) -> bool:
        return self.all_tools or tier in self.tiers

    @property
    def any_tool(self) -> bool:
        return self.all_tools or bool(self.tiers)


EVERYTHING = Grants(True, frozenset(), True, True)
