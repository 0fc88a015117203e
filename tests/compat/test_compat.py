"""The compat modules: one per pinned library, holding every private attribute of it that mcp-tiered uses.

Each function runs here against the installed library itself (the real llama-cpp-python with the SmolLM2
model, a real MCPServer): a release that moves one of those attributes fails here, by name."""

from __future__ import annotations

import ast
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

from conftest import REPO
from mcp_tiered.compat import llama_cpp as llama_compat
from mcp_tiered.compat import mcp_sdk, version_problems, version_sentence

MODULES = [llama_compat, mcp_sdk]
PACKAGE = REPO / "mcp_tiered"


def pyproject_pins() -> dict[str, str]:
    """`name: version` for each dependency pinned with `==` in pyproject.toml."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = {}
    for dependency in dependencies:
        name, pinned, version = dependency.partition("==")
        if pinned:
            pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.DISTRIBUTION)
def test_each_compat_module_is_written_against_the_pin_in_pyproject(module) -> None:
    assert pyproject_pins().get(module.DISTRIBUTION) == module.PINNED, (
        f'pyproject.toml must pin "{module.DISTRIBUTION}=={module.PINNED}", the version {module.__name__} '
        "was written against (or the module is updated for the new pin)")


def test_the_installed_versions_are_the_pins() -> None:
    assert version_problems() == []
    for module in MODULES:
        assert module.version_problem() is None


def test_another_version_is_one_sentence_naming_the_pin() -> None:
    assert llama_compat.version_problem("0.3.40") == (
        "llama-cpp-python 0.3.40 is installed but mcp-tiered is built against 0.3.36 (the pin in pyproject.toml), "
        "whose private APIs it reaches into: reinstall with scripts/setup.sh")
    assert mcp_sdk.version_problem("2.4.1") == (
        "mcp 2.4.1 is installed but mcp-tiered is built against 2.3.0 (the pin in pyproject.toml), "
        "whose private APIs it reaches into: reinstall with scripts/setup.sh")
    assert version_sentence("mcp", "2.3.0", None) == (
        "mcp is not installed but mcp-tiered is built against 2.3.0 (the pin in pyproject.toml): "
        "install it with scripts/setup.sh")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.DISTRIBUTION)
def test_the_pinned_version_is_no_problem_with_or_without_a_local_label(module) -> None:
    assert module.version_problem(module.PINNED) is None
    assert module.version_problem(module.PINNED + "+cpu") is None


def test_importing_the_compat_modules_imports_neither_library() -> None:
    import subprocess
    import sys

    code = ("import sys, mcp_tiered.compat as c, mcp_tiered.compat.llama_cpp, mcp_tiered.compat.mcp_sdk; "
            "c.version_problems(); print(sorted(m for m in ('llama_cpp', 'mcp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# --- no private attribute of either library outside the compat modules --------------------------------


def _private_names(*objects: object) -> set[str]:
    return {name for obj in objects for name in (*dir(obj), *vars(obj))
            if name.startswith("_") and not name.endswith("__")}


def _sources() -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "compat" not in path.relative_to(PACKAGE).parts:
            yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


@pytest.mark.model
def test_no_module_outside_compat_reaches_a_private_attribute_of_the_libraries(smollm2: Path) -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from mcp.server.mcpserver import MCPServer

    llama = Llama(str(smollm2), n_ctx=256, verbose=False)
    try:
        private = _private_names(llama, LlamaChatCompletionHandlerRegistry(), MCPServer(name="compat-test"))
    finally:
        llama.close()
    assert {"_ctx", "_batch", "_requires_eval", "_chat_handlers", "_lowlevel_server"} <= private
    found = [f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}"
             for path, tree in _sources() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr in private
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert found == [], "use (or add) a function of mcp_tiered/compat instead"


def test_no_module_outside_compat_imports_a_private_module_of_the_libraries() -> None:
    found = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] in ("llama_cpp", "mcp", "mcp_types") and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert found == []


# --- llama-cpp-python -------------------------------------------------------------------------------


def test_chat_formats_are_the_names_llama_cpp_python_accepts() -> None:
    from llama_cpp.llama_chat_format import get_chat_completion_handler

    formats = llama_compat.chat_formats()
    assert "chatml" in formats and "llama-2" in formats and formats == sorted(formats)
    for name in formats:
        assert callable(get_chat_completion_handler(name))


@pytest.fixture(scope="module")
def llama(smollm2: Path):  # noqa: ANN201
    from llama_cpp import Llama

    model = Llama(str(smollm2), n_ctx=512, verbose=False)
    yield model
    model.close()


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.model
def test_chat_prompt_is_the_model_template_text_and_its_stop(llama) -> None:
    before = llama.n_tokens
    chat = llama_compat.chat_prompt(llama, MESSAGES)
    assert chat.text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert chat.stop == ["<|im_end|>"]
    assert chat.add_bos is False
    assert llama.n_tokens == before  # nothing was evaluated


@pytest.mark.model
def test_chat_prompt_follows_a_configured_chat_format(smollm2: Path) -> None:
    from llama_cpp import Llama

    llama = Llama(str(smollm2), n_ctx=256, chat_format="chatml", verbose=False)
    try:
        chat = llama_compat.chat_prompt(llama, MESSAGES)
    finally:
        llama.close()
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in chat.text
    assert chat.text.endswith("<|im_start|>assistant\n")
    assert chat.stop == ["<|im_end|>"]


def _logits(llama, i: int = -1) -> np.ndarray:  # noqa: ANN001
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, i), shape=(llama.n_vocab(),)).copy()


def _prompt(llama) -> list[int]:  # noqa: ANN001
    return llama.tokenize(b"The capital of France is", add_bos=False)


@pytest.mark.model
def test_decode_and_kv_cache_keep_and_clear(llama) -> None:
    prompt = _prompt(llama)
    n = len(prompt)
    llama_compat.kv_cache_clear(llama)
    llama_compat.decode(llama, prompt, n_past=0, logits_all=True)  # a logits row per token
    rows = [_logits(llama, i) for i in range(n)]
    with pytest.raises(RuntimeError):  # those positions are in the cache already
        llama_compat.decode(llama, prompt[-1:], n_past=n - 1, logits_all=False)
    assert llama_compat.kv_cache_keep(llama, n - 1) is True
    llama_compat.decode(llama, prompt[-1:], n_past=n - 1, logits_all=False)
    assert np.allclose(_logits(llama), rows[-1], atol=1e-3)
    with pytest.raises(RuntimeError):
        llama_compat.decode(llama, prompt[:2], n_past=0, logits_all=True)
    llama_compat.kv_cache_clear(llama)
    llama_compat.decode(llama, prompt[:2], n_past=0, logits_all=True)
    assert np.allclose(_logits(llama, 0), rows[0], atol=1e-3) and np.allclose(_logits(llama, 1), rows[1], atol=1e-3)
    llama_compat.kv_cache_clear(llama)


@pytest.mark.model
def test_logits_stale_makes_generate_evaluate_again(llama) -> None:
    prompt = _prompt(llama)
    n = len(prompt)
    llama.reset()
    llama.eval(prompt)
    answer = int(_logits(llama).argmax())

    def first_token_after_another_decode(mark: bool) -> int:
        # Another position's logits in the buffer, the cache back to the prompt: as after scoring an answer.
        llama_compat.decode(llama, [answer], n_past=n, logits_all=False)
        llama_compat.kv_cache_keep(llama, n)
        if mark:
            llama_compat.logits_stale(llama)
        generator = llama.generate(prompt, temp=0.0)
        token = next(generator)
        generator.close()
        llama.n_tokens = n
        return token

    assert first_token_after_another_decode(mark=True) == answer
    # Unmarked, generate samples from the buffer as it is: the flag is what it reads.
    assert first_token_after_another_decode(mark=False) != answer
    llama.reset()


# --- mcp ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lowlevel_server_is_the_one_mcpserver_serves_through() -> None:
    import mcp_types as types
    from mcp.client.client import Client
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer
    from mcp.shared.exceptions import MCPDeprecationWarning

    mcp = MCPServer(name="compat-test")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    server = mcp_sdk.lowlevel_server(mcp)
    assert isinstance(server, Server) and server is mcp_sdk.lowlevel_server(mcp)
    levels = []

    async def set_level(ctx: object, params: types.SetLevelRequestParams) -> types.EmptyResult:
        levels.append(params.level)
        return types.EmptyResult()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
        with anyio.fail_after(10):
            async with Client(mcp, mode="legacy") as client:  # a handler added on it answers MCPServer's clients
                await client.set_logging_level("debug")
            async with Client(server) as client:  # and it serves the tools added on MCPServer
                assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
                assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"
    assert levels == ["debug"]


@pytest.mark.anyio
async def test_build_server_answers_logging_set_level_through_it() -> None:
    from mcp.client.client import Client
    from mcp.shared.exceptions import MCPDeprecationWarning
    from structlog.testing import capture_logs

    from conftest import ScriptedBackend
    from mcp_tiered.server.mcp_server import build_server
    from mcp_tiered.calls.tiers import Tier, TierRegistry

    tiers = TierRegistry([Tier("small", ScriptedBackend([]), "scripted tier", 64, 0.2)])
    with warnings.catch_warnings(), capture_logs() as events:
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        with anyio.fail_after(10):
            async with Client(build_server(tiers), mode="legacy") as client:
                await client.set_logging_level("warning")
    assert {"event": "client_log_level", "level": "warning", "log_level": "info"} in events
