"""The engine table: an engine declared in this file alone serves, checks and plans like a built-in one."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import anyio
import pytest

from conftest import MCP_TIERED, REPO, server_env, stdio_server
from mcp_tiered.backends import Backend, Completion, GenerationRequest
from mcp_tiered.backends.base import Capabilities
from mcp_tiered.backends.pool import CallControl
from mcp_tiered.config.load import load_config
from mcp_tiered.config.schema import TierFields
from mcp_tiered.engines import ENGINES, Checked, Engine, capabilities_of, register, unregister
from mcp_tiered.errors import ConfigError

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent


class ToyTierConfig(TierFields):
    """`engine = "toy"`: answers with its `reply` and the prompt's word count."""

    engine: Literal["toy"]
    reply: str = "toy answer"


class ToyBackend(Backend):
    capabilities = Capabilities(token_logprobs=False)
    model_name = "toy-1"

    def __init__(self, tier: str, config: ToyTierConfig):
        self.tier, self.config = tier, config

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        control = control or CallControl()
        started = time.perf_counter()
        words = len(request.prompt.split())
        control.generation_s = time.perf_counter() - started
        return Completion(f"{self.config.reply} ({words} words)", "stop", words, 3)


def _check(name: str, tier: ToyTierConfig, row: dict) -> Checked:
    return Checked(False, [f"ok     generate_{name}: a toy replying {tier.reply!r}"])


def _backend(name: str, tier: ToyTierConfig, environ: Mapping[str, str]) -> ToyBackend:
    return ToyBackend(name, tier)


ENGINE = Engine(kind="toy", config=ToyTierConfig, backend=_backend, capabilities=lambda tier: ToyBackend.capabilities,
                check=_check, plan_note="a toy engine: nothing to plan")
"""What the server registers when $MCP_TIERED_ENGINES names this module."""

TOY_TOML = '[tiers.toy]\nengine = "toy"\ndescription = "a toy tier"\nreply = "hello from the toy"\n'


@pytest.fixture
def toy() -> Iterator[None]:
    """The toy engine registered in this process for the test."""
    register(ENGINE)
    try:
        yield
    finally:
        unregister(ENGINE.kind)


def plugin_env() -> dict[str, str]:
    """The server (a subprocess) imports this file as the module the engine is declared in."""
    path = [str(HERE), str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"MCP_TIERED_ENGINES": Path(__file__).stem, "PYTHONPATH": os.pathsep.join(path)}


@pytest.mark.usefixtures("toy")
def test_the_config_takes_a_registered_engines_tiers_with_its_own_keys(write_config) -> None:  # noqa: ANN001
    config = load_config(write_config(TOY_TOML))
    assert isinstance(config.tiers["toy"], ToyTierConfig) and config.tiers["toy"].reply == "hello from the toy"
    assert "toy" in ENGINES and not capabilities_of(config.tiers["toy"]).token_logprobs


@pytest.mark.usefixtures("toy")
def test_a_bad_key_of_the_registered_engine_names_its_key_path(write_config) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(TOY_TOML + "n_gpu_layers = 3\n"))
    assert str(caught.value) == ('tiers.toy.n_gpu_layers: a key of engine = "llama-cpp" or "llama-server", not of this '
                                 'tier\'s engine "toy"; set engine or remove the key')


@pytest.mark.usefixtures("toy")
def test_an_unknown_engine_lists_the_registered_ones(write_config) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(TOY_TOML.replace('"toy"\ndescription', '"toys"\ndescription')))
    assert str(caught.value) == ('tiers.toy.engine: must be one of "llama-cpp", "llama-server", "openai", "anthropic", '
                                 '"toy", got "toys"')


async def test_a_call_is_served_through_the_registered_engine_over_stdio(write_config) -> None:  # noqa: ANN001
    with anyio.fail_after(60):
        async with stdio_server(write_config(TOY_TOML), **plugin_env()) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("generate_toy", {"prompt": "one two three"})
    assert tools == ["generate_toy"]
    assert result.structured_content["text"] == "hello from the toy (3 words)"
    assert (result.structured_content["served_by"], result.structured_content["model"]) == ("toy", "toy-1")


def test_check_prints_the_registered_engines_line(write_config) -> None:  # noqa: ANN001
    out = subprocess.run([MCP_TIERED, "check", "--config", str(write_config(TOY_TOML))], capture_output=True,
                         text=True, env=server_env(**plugin_env()), cwd=str(REPO), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "ok     generate_toy: a toy replying 'hello from the toy'"


def test_plan_shows_the_registered_engine_with_its_note(write_config) -> None:  # noqa: ANN001
    out = subprocess.run([MCP_TIERED, "plan", "--config", str(write_config(TOY_TOML)), "--gpu", "24GB"],
                         capture_output=True, text=True, env=server_env(**plugin_env()), cwd=str(REPO), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "toy        a toy engine: nothing to plan" in out.stdout.splitlines()


def test_a_plugin_module_that_cannot_be_imported_is_one_sentence(write_config) -> None:  # noqa: ANN001
    out = subprocess.run([MCP_TIERED, "check", "--config", str(write_config(TOY_TOML))], capture_output=True,
                         text=True, env=server_env(MCP_TIERED_ENGINES="no_such_engine_module"), cwd=str(REPO),
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: $MCP_TIERED_ENGINES: module no_such_engine_module: cannot load the engine "
                                  "(ModuleNotFoundError: No module named 'no_such_engine_module')")


def test_without_the_engine_registered_its_tiers_are_refused(write_config) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=r'^tiers\.toy\.engine: must be one of "llama-cpp", "llama-server", "openai", '
                       r'"anthropic", got "toy"$'):
        load_config(write_config(TOY_TOML))


class PaidTierConfig(TierFields):
    engine: Literal["paid"]


PAID = Engine(kind="paid", config=PaidTierConfig, backend=_backend,
              capabilities=lambda tier: Capabilities(billing="tokens"), check=_check)


def test_an_engine_billed_per_token_without_prices_is_refused() -> None:
    with pytest.raises(ValueError, match=r'^engine "paid" is billed per token, so its config type must subclass '
                       r"mcp_tiered\.config\.schema\.TokenPrices"):
        register(PAID)
    assert "paid" not in ENGINES


def test_a_built_in_engine_stays_registered() -> None:
    with pytest.raises(ValueError, match=r'^engine "anthropic" is built in and stays registered$'):
        unregister("anthropic")


def test_a_plugin_that_exits_on_import_is_one_sentence(write_config, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "exiting_engine.py").write_text("import sys\nsys.exit(3)\n")
    env = server_env(MCP_TIERED_ENGINES="exiting_engine", PYTHONPATH=str(tmp_path))
    out = subprocess.run([MCP_TIERED, "check", "--config", str(write_config(TOY_TOML))], capture_output=True,
                         text=True, env=env, cwd=str(REPO), timeout=60)
    assert (out.returncode, out.stderr.strip()) == (
        1, "error: $MCP_TIERED_ENGINES: module exiting_engine: cannot load the engine (SystemExit: 3)")
