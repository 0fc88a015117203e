from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from mcp_tiered import cli
from mcp_tiered.config.load import load_config, resolve_config_path
from mcp_tiered.config.schema import ModelFileFields, model_file_problem
from mcp_tiered.errors import ConfigError

VALID_TIER = """
[tiers.small]
model = "{model}"
description = "a small model"
"""

OPENAI_TIER = '[tiers.big]\nengine = "openai"\nmodel = "qwen-72b-awq"\ndescription = "72B on vLLM"\n'
ENDPOINT = 'endpoints = [{ url = "http://gpu-1:8000/v1" }]\n'
COMMON_KEYS = ["description", "engine", "max_tokens", "temperature", "max_queue", "queue_timeout_s", "escalate_to",
               "local_only", "n_ctx", "verify_with", "min_confidence", "confidence", "confidence_quantile",
               "escalate_on_truncated", "escalate_on_repetition", "verify_statistic", "verify_quantile",
               "min_verification", "verify_below"]
MODEL_FILE_KEYS = ["model", "sha256", "n_gpu_layers", "main_gpu", "tensor_split", "n_threads", "n_batch", "preload",
                   "idle_unload_s"]
LLAMA_CPP_KEYS = [*COMMON_KEYS, *MODEL_FILE_KEYS, "chat_format", "instances", "prompt_cache_mb"]
LLAMA_SERVER_KEYS = [*COMMON_KEYS, *MODEL_FILE_KEYS, "parallel", "server_binary", "startup_timeout_s"]

# (config text, the one sentence expected). {model} is a real GGUF file, {dir} the config's folder.
MALFORMED = {
    "invalid_toml": ("[tiers.small\nmodel = 1", '{dir}/models.toml: invalid TOML: Expected \']\' at the end of a table declaration (at line 1, column 13)'),
    "no_tiers_table": ("", "tiers: is required (a table with at least one [tiers.<name>] entry)"),
    "empty_tiers": ("[tiers]", "tiers: must be a table with at least one [tiers.<name>] entry, got an empty table"),
    "unknown_top_level_key": (VALID_TIER + "\n[servers]\nport = 1", "servers: unknown key; valid keys here are tiers, escalation, server, cache, ledger, store, auth, costs, budget, cloud"),
    "unknown_tier_key": (
        VALID_TIER + "n_ctxx = 4096",
        "tiers.small.n_ctxx: unknown key; valid keys here are " + ", ".join(LLAMA_CPP_KEYS),
    ),
    "unknown_engine": (VALID_TIER + 'engine = "vllm"',
                       'tiers.small.engine: must be one of "llama-cpp", "llama-server", "openai", "anthropic", got "vllm"'),
    "engine_not_a_string": (VALID_TIER + "engine = 3", 'tiers.small.engine: must be one of "llama-cpp", "llama-server", "openai", "anthropic", got 3'),
    "server_key_on_llama_cpp": (VALID_TIER + "parallel = 4", 'tiers.small.parallel: a key of engine = "llama-server", '
                                "not of this tier's engine \"llama-cpp\"; set engine or remove the key"),
    "llama_cpp_key_on_server": (VALID_TIER + 'engine = "llama-server"\ninstances = 2',
                                'tiers.small.instances: a key of engine = "llama-cpp", not of this tier\'s engine '
                                '"llama-server"; set engine or remove the key'),
    "server_parallel_zero": (VALID_TIER + 'engine = "llama-server"\nparallel = 0',
                             "tiers.small.parallel: must be an integer between 1 and 256, got 0"),
    "server_parallel_not_a_number": (VALID_TIER + 'engine = "llama-server"\nparallel = "four"',
                                     'tiers.small.parallel: must be an integer between 1 and 256, got "four"'),
    "server_binary_not_a_string": (VALID_TIER + 'engine = "llama-server"\nserver_binary = 1',
                                   "tiers.small.server_binary: must be a path to a llama-server program, got 1"),
    "server_startup_timeout_negative": (VALID_TIER + 'engine = "llama-server"\nstartup_timeout_s = -1',
                                        "tiers.small.startup_timeout_s: must be a number > 0, got -1"),
    "server_without_model": ('[tiers.small]\nengine = "llama-server"\ndescription = "d"',
                             "tiers.small.model: is required (a path to a .gguf file or hf:<owner>/<repo>/<file>.gguf)"),
    "server_unknown_key": (VALID_TIER + 'engine = "llama-server"\nslots = 2',
                           "tiers.small.slots: unknown key; valid keys here are " + ", ".join(LLAMA_SERVER_KEYS)),
    "tier_not_a_table": ('[tiers]\nsmall = "model.gguf"', 'tiers.small: must be a table, got "model.gguf"'),
    "wrong_type_n_ctx": (VALID_TIER + 'n_ctx = "big"', 'tiers.small.n_ctx: must be an integer ≥ 256, got "big"'),
    "n_ctx_too_small": (VALID_TIER + "n_ctx = 128", "tiers.small.n_ctx: must be an integer ≥ 256, got 128"),
    "missing_model": ('[tiers.small]\ndescription = "x"', "tiers.small.model: is required (a path to a .gguf file or hf:<owner>/<repo>/<file>.gguf)"),
    "missing_description": ('[tiers.small]\nmodel = "{model}"', "tiers.small.description: is required (a non-empty string)"),
    "negative_max_tokens": (VALID_TIER + "max_tokens = -5", "tiers.small.max_tokens: must be an integer ≥ 1, got -5"),
    "max_tokens_not_below_n_ctx": (
        VALID_TIER + "n_ctx = 1024\nmax_tokens = 1024",
        "tiers.small.max_tokens: must be less than n_ctx (1024), got 1024",
    ),
    "temperature_out_of_range": (VALID_TIER + "temperature = 3.5", "tiers.small.temperature: must be a number between 0 and 2, got 3.5"),
    "tensor_split_negative": (VALID_TIER + "tensor_split = [1, -1]", "tiers.small.tensor_split[1]: must be a number ≥ 0, got -1"),
    "unknown_chat_format": (
        VALID_TIER + 'chat_format = "llama-9"',
        'tiers.small.chat_format: unknown chat format "llama-9"; valid formats are alpaca, baichuan, baichuan-2, '
        "chatglm3, chatml, chatml-function-calling, functionary, functionary-v1, functionary-v2, gemma, intel, "
        "llama-2, llama-3, mistral-instruct, mistrallite, oasst_llama, open-orca, openbuddy, openchat, phind, "
        "pygmalion, qwen, redpajama-incite, saiga, snoozy, vicuna, zephyr",
    ),
    "n_gpu_layers_below_minus_one": (VALID_TIER + "n_gpu_layers = -2", "tiers.small.n_gpu_layers: must be an integer ≥ -1, got -2"),
    "bad_tier_name": (
        '[tiers."my tier"]\nmodel = "{model}"\ndescription = "x"',
        'tiers."my tier": tier names become tool names (generate_<name>) and may use only letters, digits, '
        "'_', '-' and '.' (1–64 characters)",
    ),
    "reserved_tier_name": ('[tiers.cloud]\nmodel = "{model}"\ndescription = "x"', 'tiers.cloud: the tier name "cloud" is reserved; choose another name'),
    "unset_env_var_in_path": (
        '[tiers.small]\nmodel = "$NO_SUCH_VAR_FOR_TESTS/m.gguf"\ndescription = "x"',
        "tiers.small.model: environment variable $NO_SUCH_VAR_FOR_TESTS is not set",
    ),
    "api_key_in_file": (
        VALID_TIER + '[cloud]\nmodel = "claude-sonnet-4-5"\napi_key = "sk-ant-secret"',
        "cloud.api_key: API keys do not belong in models.toml; put the key in the environment variable named by "
        "cloud.api_key_env (default ANTHROPIC_API_KEY) and remove this line",
    ),
    "escalate_to_unknown_tier": (VALID_TIER + 'escalate_to = "huge"', 'tiers.small.escalate_to: unknown tier "huge"; there is no other tier to escalate to; add one (a [tiers.<name>] or a [cloud] section) or remove escalate_to'),
    "escalate_to_cloud_without_cloud_section": (
        VALID_TIER + 'escalate_to = "cloud"',
        'tiers.small.escalate_to: "cloud" needs a [cloud] section; add one',
    ),
    "escalation_loop": (
        VALID_TIER + 'escalate_to = "large"\n[tiers.large]\nmodel = "{model}"\ndescription = "x"\nescalate_to = "small"',
        "tiers.small.escalate_to: escalation loops (small → large → small); a chain must end at a tier without "
        "escalate_to",
    ),
    "unknown_confidence_statistic": (
        '[escalation]\nconfidence = "median"\n' + VALID_TIER,
        'escalation.confidence: must be one of "mean", "quantile", "min", "first", got "median"',
    ),
    "min_confidence_above_one": (VALID_TIER + "min_confidence = 1.5", "tiers.small.min_confidence: must be a number between 0 and 1, got 1.5"),
    "cloud_without_model": ('[cloud]\ndaily_budget = 5.0\n' + VALID_TIER, "cloud.model: is required (a model name such as \"claude-sonnet-4-5\")"),
    "model_file_missing": (
        '[tiers.small]\nmodel = "missing.gguf"\ndescription = "x"',
        "tiers.small.model: model file not found: {dir}/missing.gguf (run scripts/setup.sh to fetch the default models)",
    ),
    "model_not_gguf": (
        '[tiers.small]\nmodel = "models.toml"\ndescription = "x"',
        "tiers.small.model: {dir}/models.toml is not a GGUF file (it does not start with the GGUF magic bytes)",
    ),
    "model_is_directory": ('[tiers.small]\nmodel = "."\ndescription = "x"', "tiers.small.model: {dir} is a directory, not a GGUF model file"),
    "costs_for_unknown_tier": (VALID_TIER + "\n[costs.tiers.smal]\npower_watts = 300",
                               'costs.tiers.smal: unknown tier "smal"; valid tiers are "small"'),
    "costs_negative_watts": (VALID_TIER + "\n[costs.tiers.small]\npower_watts = -5",
                             "costs.tiers.small.power_watts: must be a number from 0 to 1e15, got -5"),
    "costs_currency_differs_from_cloud": (
        VALID_TIER + '\n[cloud]\nmodel = "claude-sonnet-4-5"\n[costs]\ncurrency = "EUR"',
        'costs.currency: must be the currency of the cloud prices (cloud.currency = "USD"), got "EUR"; '
        "set both to the same currency and the prices in it",
    ),
    "openai_without_endpoints": (OPENAI_TIER, "tiers.big.endpoints: is required (a list of at least one { url = ... } table)"),
    "openai_empty_endpoints": (OPENAI_TIER + "endpoints = []", "tiers.big.endpoints: must be a list of at least one "
                               "{ url = ... } table, got an empty list"),
    "openai_url_without_scheme": (OPENAI_TIER + 'endpoints = [{ url = "gpu-1:8000/v1" }]',
                                  "tiers.big.endpoints[0].url: must be an http(s) base URL such as "
                                  'http://gpu-1:8000/v1, got "gpu-1:8000/v1"'),
    "openai_url_with_query": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1?key=x" }]',
                              "tiers.big.endpoints[0].url: must be an http(s) base URL such as "
                              'http://gpu-1:8000/v1, got "http://gpu-1:8000/v1?key=x"'),
    "openai_model_not_a_string": (OPENAI_TIER.replace('model = "qwen-72b-awq"', "model = 7") + ENDPOINT,
                                  "tiers.big.model: must be the model name the endpoints serve (as in their /v1/models), "
                                  "got 7"),
    "openai_max_concurrency_zero": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1", max_concurrency = 0 }]',
                                    "tiers.big.endpoints[0].max_concurrency: must be an integer between 1 and 1024, got 0"),
    "openai_unknown_endpoint_key": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1", weight = 2 }]',
                                    "tiers.big.endpoints[0].weight: unknown key; valid keys here are url, api_key_env, "
                                    "max_concurrency"),
    "openai_api_key_in_file": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1", api_key = "sk-secret" }]',
                               "tiers.big.endpoints[0].api_key: API keys do not belong in models.toml; put the key in an "
                               "environment variable, name it with api_key_env and remove this key"),
    "openai_bad_api_key_env": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1", api_key_env = "MY-KEY" }]',
                               'tiers.big.endpoints[0].api_key_env: must be an environment variable name, got "MY-KEY"'),
    "openai_unknown_api": (OPENAI_TIER + ENDPOINT + 'api = "vllm"',
                           'tiers.big.api: must be one of "openai", "llama-server", got "vllm"'),
    "openai_model_file_key": (OPENAI_TIER + ENDPOINT + "n_gpu_layers = 20",
                              'tiers.big.n_gpu_layers: a key of engine = "llama-cpp" or "llama-server", not of this '
                              "tier's engine \"openai\"; set engine or remove the key"),
    "endpoints_on_llama_cpp": (VALID_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1" }]',
                               'tiers.small.endpoints: a key of engine = "openai", not of this tier\'s engine '
                               '"llama-cpp"; set engine or remove the key'),
    "openai_endpoint_twice": (OPENAI_TIER + 'endpoints = [{ url = "http://gpu-1:8000/v1" }, { url = "http://gpu-1:8000/v1/" }]',
                              "tiers.big.endpoints[1].url: http://gpu-1:8000/v1/ is listed twice; list each endpoint "
                              "once and give it the max_concurrency it takes"),
    "openai_min_confidence_without_logprobs": (
        OPENAI_TIER + ENDPOINT + "logprobs = false\nmin_confidence = 0.5",
        "tiers.big.min_confidence: needs token log-probabilities, which this tier's engine does not return (its "
        "endpoints do not return them: logprobs = false); remove min_confidence or use an engine that returns "
        "log-probabilities"),
    "openai_max_tokens_not_below_n_ctx": (OPENAI_TIER + ENDPOINT + "n_ctx = 1024\nmax_tokens = 2048",
                                          "tiers.big.max_tokens: must be less than n_ctx (1024), got 2048"),
    "ledger_path_not_a_string": (VALID_TIER + "\n[ledger]\npath = 5", "ledger.path: must be a file path, got 5"),
    "verify_with_unknown_tier": (VALID_TIER + 'verify_with = "big"', 'tiers.small.verify_with: unknown tier "big"; add a '
                                 'tier with engine = "llama-cpp" to verify with'),
    "verify_with_itself": (VALID_TIER + 'verify_with = "small"\n[tiers.large]\nmodel = "{model}"\ndescription = "l"',
                           'tiers.small.verify_with: a tier cannot verify its own answers; valid verifiers are "large"'),
    "verify_with_an_engine_that_cannot_score": (
        VALID_TIER + 'verify_with = "big"\n' + OPENAI_TIER + ENDPOINT,
        'tiers.small.verify_with: tier "big" runs engine "openai", which cannot score a given answer (only engine = '
        '"llama-cpp" can); add a tier with engine = "llama-cpp" to verify with'),
    "verify_statistic_unknown": (VALID_TIER + 'verify_statistic = "median"', 'tiers.small.verify_statistic: must be one '
                                 'of "top_share", "ratio", "mean", "quantile", "min", got "median"'),
    "min_verification_above_one": (VALID_TIER + "min_verification = 2", "tiers.small.min_verification: must be a "
                                   "number between 0 and 1, got 2"),
}


def problems_of(path: Path) -> list[str]:
    """What `mcp-tiered check` reports: config errors, else each tier's model file problem."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return exc.problems
    return [p for name, tier in config.tiers.items()
            if isinstance(tier, ModelFileFields) and (p := model_file_problem(name, tier))]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_config_gives_one_sentence_naming_the_key(case: str, write_config, smollm2: Path) -> None:
    text, expected = MALFORMED[case]
    path = write_config(text.replace("{model}", str(smollm2)))
    assert problems_of(path) == [expected.replace("{dir}", str(path.parent))]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_check_exits_nonzero_on_malformed_config(case: str, write_config, smollm2: Path, capsys) -> None:
    text, expected = MALFORMED[case]
    path = write_config(text.replace("{model}", str(smollm2)))
    assert cli.main(["check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert expected.replace("{dir}", str(path.parent)) in out + err


def test_check_passes_on_valid_config(small_config: Path, capsys) -> None:
    assert cli.main(["check", "--config", str(small_config)]) == 0
    assert "ok     generate_small:" in capsys.readouterr().out


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found$"):
        load_config(tmp_path / "nope.toml")


def test_every_problem_is_reported(write_config) -> None:
    path = write_config('[tiers.small]\nmodel = "m.gguf"\ndescription = "x"\nn_ctx = "big"\nmax_tokens = 0')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == [
        "tiers.small.max_tokens: must be an integer ≥ 1, got 0",
        'tiers.small.n_ctx: must be an integer ≥ 256, got "big"',
    ]


def test_model_path_expands_home_and_variables(write_config, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELS", "/srv/models")
    path = write_config('[tiers.a]\nmodel = "~/a.gguf"\ndescription = "x"\n[tiers.b]\nmodel = "$MODELS/b.gguf"\ndescription = "x"')
    config = load_config(path)
    assert config.tiers["a"].model == tmp_path / "home" / "a.gguf"
    assert config.tiers["b"].model == Path("/srv/models/b.gguf")


def test_relative_model_path_is_relative_to_the_config_file(write_config) -> None:
    path = write_config('[tiers.a]\nmodel = "weights/a.gguf"\ndescription = "x"')
    assert load_config(path).tiers["a"].model == path.parent / "weights" / "a.gguf"


def test_config_path_prefers_cli_then_env_then_cwd(monkeypatch) -> None:
    monkeypatch.setenv("MCP_TIERED_CONFIG", "/etc/env.toml")
    assert resolve_config_path("/etc/cli.toml") == Path("/etc/cli.toml")
    assert resolve_config_path(None) == Path("/etc/env.toml")
    monkeypatch.delenv("MCP_TIERED_CONFIG")
    assert resolve_config_path(None) == Path("models.toml")


@pytest.mark.parametrize("name", ["models.toml", "models.example.toml"])
def test_shipped_config_files_load(name: str) -> None:
    config = load_config(REPO / name)
    assert config.tiers


def test_check_says_where_the_llama_server_is_or_that_it_is_missing(write_config, smollm2: Path, capsys) -> None:
    found = write_config(VALID_TIER.replace("{model}", str(smollm2)) + 'engine = "llama-server"\nparallel = 2\n')
    missing = write_config(VALID_TIER.replace("{model}", str(smollm2)) + 'engine = "llama-server"\n'
                           'server_binary = "bin/llama-server"\n', name="missing.toml")
    assert cli.main(["check", "--config", str(found)]) == 0
    out, _ = capsys.readouterr()
    assert "; llama-server " in out and ", 2 slots; setup's build: llama.cpp of llama-cpp-python " in out
    assert out.splitlines()[0].endswith('; cannot score a given answer, so it cannot verify others (engine "llama-server"))')
    assert cli.main(["check", "--config", str(missing)]) == 1
    out, _ = capsys.readouterr()
    assert f"error  tiers.small.server_binary: {missing.parent}/bin/llama-server is not an executable file" in out


def test_check_says_which_tiers_verify_and_are_verified(write_config, smollm2: Path, capsys) -> None:
    config = write_config(VALID_TIER.replace("{model}", str(smollm2)) + 'verify_with = "large"\n'
                          + VALID_TIER.replace("small", "large").replace("{model}", str(smollm2)))
    assert cli.main(["check", "--config", str(config)]) == 0
    small, large, *_ = capsys.readouterr()[0].splitlines()
    assert small.endswith("; can verify other tiers' answers; its answers are verified by large)")
    assert large.endswith("; can verify other tiers' answers)") and "; in-process llama.cpp; setup's build: " in large


def test_the_readmes_minimal_config_loads_with_its_claude_tier_last_in_the_chain(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    text = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "models.toml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "models.toml")
    assert config.chain("small") == ["small", "large", "haiku"]
    assert config.tiers["haiku"].engine == "anthropic" and (config.budget.daily, config.budget.monthly) == (5.0, 100.0)
