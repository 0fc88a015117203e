"""`engine = "openai"`: servers that speak the OpenAI API (vLLM, SGLang, TGI, llama-server, Ollama …)."""

from __future__ import annotations

from collections.abc import Mapping

from ..backends.base import Capabilities
from ..config.schema import OpenAITierConfig
from ..config.explain import key_path
from . import Checked, Engine, scoring


def capabilities(tier: OpenAITierConfig | None) -> Capabilities:
    if tier is None:
        return Capabilities()
    return Capabilities(prompt_leaves_machine=not tier.private, token_logprobs=tier.logprobs, tools=True)


def _backend(name: str, tier: OpenAITierConfig, environ: Mapping[str, str]):  # noqa: ANN202
    from ..backends.openai import OpenAIBackend

    return OpenAIBackend(name, tier, environ)


def _problems(name: str, tier: OpenAITierConfig) -> list[str]:
    problems = []
    seen: set[str] = set()
    for i, endpoint in enumerate(tier.endpoints):
        if endpoint.base in seen:
            path = key_path(["tiers", name, "endpoints", i, "url"])
            problems.append(f"{path}: {endpoint.url} is listed twice; list each endpoint once and give it the "
                            "max_concurrency it takes")
        seen.add(endpoint.base)
    return problems


def _check(name: str, tier: OpenAITierConfig, row: dict) -> Checked:
    """Calls each endpoint once (a 2-token answer): a line for the tier, then one per endpoint."""
    import anyio

    from ..backends.openai import probe

    problems = anyio.run(probe, name, tier)
    working = sum(problem is None for problem in problems)
    logprobs = "with token log-probabilities" if tier.logprobs else "without log-probabilities (logprobs = false)"
    state = "ok   " if working == len(problems) else "error"
    lines = [f"{state}  generate_{name}: model {tier.model!r} on {working} of {len(problems)} endpoints "
             f"({tier.api} API, {logprobs}; {scoring(tier)})"]
    lines += [f"ok       {endpoint.url}" if problem is None else f"error    {problem}"
              for endpoint, problem in zip(tier.endpoints, problems)]
    return Checked(working < len(problems), lines)


ENGINE = Engine(
    kind="openai", config=OpenAITierConfig, backend=_backend, capabilities=capabilities, check=_check,
    plan_note="served by its endpoints (engine openai): plan it on their machines", problems=_problems,
    no_logprobs_because=lambda tier: "its endpoints do not return them: logprobs = false",
)
