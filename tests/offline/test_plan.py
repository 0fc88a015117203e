"""`mcp-tiered plan`: its figures against the buffers llama.cpp reports for the default models and a synthetic
one, the verdicts for 13B / 34B / 70B shapes on the seed's cards (sparse GGUFs with their metadata), the
JSON format, and `check`'s line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import MCP_TIERED, REPO, server_env
from mcp_tiered.offline import plan
from small_gguf import write_smollm2_like


def _script(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def within(rows: dict[str, tuple[float, float]], share: float) -> dict[str, float]:
    errors = {key: abs(p - r) / r for key, (p, r) in rows.items()}
    assert all(error <= share for error in errors.values()), errors
    return errors


@pytest.mark.model
@pytest.mark.parametrize("n_ctx", [2048, 8192])
def test_the_plan_of_the_default_models_is_within_10_percent_of_llama_cpp(smollm2: Path, qwen: Path,
                                                                           n_ctx: int) -> None:
    check = _script("plan_check")
    for model in (smollm2, qwen):
        within(check.compare(model, n_ctx), 0.10)


@pytest.mark.model
def test_the_plan_of_a_synthetic_model_is_within_10_percent_of_llama_cpp(smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "synthetic.gguf"  # 8 layers, grouped-query attention (16 heads, 4 KV heads), F16
    subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "synth_gguf.py"), str(smollm2), str(out),
                    "1024", "8", "2816", "16", "4"], check=True, capture_output=True)
    within(_script("plan_check").compare(out, 4096), 0.10)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.toml with 13B / 34B / 70B tiers (sparse GGUFs, Q4_K_M-like) at n_ctx 4096."""
    folder = tmp_path_factory.mktemp("shapes")
    synth = _script("synth_shape")
    text = ""
    for tier, shape in (("t13b", "llama-13b"), ("t34b", "codellama-34b"), ("t70b", "llama-70b")):
        synth.write(shape, folder / f"{shape}.gguf")
        text += f'[tiers.{tier}]\nmodel = "{shape}.gguf"\ndescription = "{shape}"\nn_ctx = 4096\n'
    (folder / "models.toml").write_text(text)
    return folder / "models.toml"


def plan_json(config: Path, *gpus: str) -> dict:
    args = [MCP_TIERED, "plan", "--config", str(config), "--format", "json", *(f"--gpu={g}" for g in gpus)]
    done = subprocess.run(args, capture_output=True, text=True, env=server_env(), check=True)
    data = json.loads(done.stdout)
    jsonschema.validate(data, PLAN_SCHEMA)
    return {row["tier"]: row for row in data["tiers"]}


NUMBER = {"type": "number"}
PLAN_SCHEMA = {
    "type": "object",
    "required": ["gpus", "gpus_from", "no_gpu_because", "cpu_bandwidth_bytes_per_s", "tiers"],
    "properties": {
        "gpus": {"type": "array", "items": {"type": "object", "required": ["name", "memory", "bandwidth"]}},
        "gpus_from": {"enum": ["given", "found"]},
        "tiers": {"type": "array", "items": {"type": "object", "required": ["tier", "engine"], "oneOf": [
            {"required": ["problem"]},
            {"required": ["model", "shape", "n_ctx", "slots", "copies", "context_cells", "need", "fits",
                          "n_gpu_layers", "available_bytes", "tokens_per_s", "verdict"],
             "properties": {
                 "shape": {"type": "object", "required": ["architecture", "parameters", "quantization", "layers",
                                                          "heads", "kv_heads", "trained_context", "weight_bytes"]},
                 "need": {"type": "object", "required": ["weights_gpu", "weights_ram", "kv_gpu", "kv_ram",
                                                         "compute_gpu", "compute_ram", "gpu", "ram"],
                          "additionalProperties": {"type": "integer", "minimum": 0}},
                 "fits": {"type": "boolean"}, "n_gpu_layers": {"type": "integer", "minimum": 0},
                 "tokens_per_s": {"anyOf": [NUMBER, {"type": "null"}]}}},
        ]}},
    },
}


def test_13b_fits_an_rtx_4090_and_70b_does_not(shapes: Path) -> None:
    rows = plan_json(shapes, "rtx4090")
    assert rows["t13b"]["fits"] and rows["t13b"]["n_gpu_layers"] == 41
    big = rows["t70b"]
    assert not big["fits"] and 0 < big["n_gpu_layers"] < 80
    assert big["need"]["gpu"] <= big["available_bytes"] < big["need"]["gpu"] + big["need"]["weights_ram"]
    assert big["verdict"].startswith("does not fit (") and f"n_gpu_layers = {big['n_gpu_layers']} fits" in big["verdict"]
    assert big["tokens_per_s"] < big["all_gpu_tokens_per_s"]


def test_70b_fits_one_h100_or_a6000_but_not_an_a100_40_unless_there_are_two(shapes: Path) -> None:
    assert plan_json(shapes, "h100")["t70b"]["fits"] and plan_json(shapes, "a6000")["t70b"]["fits"]
    assert not plan_json(shapes, "a100-40")["t70b"]["fits"]
    assert plan_json(shapes, "a100-40", "a100-40")["t70b"]["fits"]


def test_the_table_names_every_tier_and_the_gpus(shapes: Path) -> None:
    done = subprocess.run([MCP_TIERED, "plan", "--config", str(shapes), "--gpu", "a100-80"], capture_output=True,
                          text=True, env=server_env(), check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "GPUs (given): A100 80GB (80 GB, 2039 GB/s)"
    assert [line.split()[0] for line in lines[2:]] == ["t13b", "t34b", "t70b"]
    assert "Q4_K_M" in lines[4] and "69.0B" in lines[4] and "fits:" in lines[4]


def test_the_example_config_plans_what_it_can_and_says_why_not_for_the_rest(tmp_path: Path) -> None:
    env = server_env(HF_HUB_OFFLINE="1", MCP_TIERED_MODELS=str(tmp_path))
    done = subprocess.run([MCP_TIERED, "plan", "--config", str(REPO / "models.example.toml"), "--gpu", "24GB"],
                          capture_output=True, text=True, env=env, check=True)
    rows = done.stdout.splitlines()[2:]
    assert [row.split()[0] for row in rows] == ["small", "medium", "large", "long", "cloud"]
    assert rows[1].endswith("served by its endpoints (engine openai): plan it on their machines")
    assert rows[4].endswith("served by the Anthropic API: nothing to plan on this machine")
    assert rows[0].endswith("codellama-13b-instruct.Q5_K_M.gguf is not downloaded, and HF_HUB_OFFLINE is set, so "
                            "its header is not read from the hub; run `mcp-tiered pull` where the hub is reachable")


def test_a_gpu_that_is_neither_a_size_nor_a_preset_is_one_sentence(shapes: Path) -> None:
    done = subprocess.run([MCP_TIERED, "plan", "--config", str(shapes), "--gpu", "rtx9999"], capture_output=True,
                          text=True, env=server_env())
    assert done.returncode == 1
    assert done.stderr == ("error: --gpu: 'rtx9999' is not a GPU; give a size such as 24GB or 24GiB, or one of rtx4090, "
                           "a6000, a100-40, a100-80, h100, h200\n")


def test_sizes_and_presets_parse() -> None:
    assert plan.parse_gpu("24GiB").memory == 24 << 30 and plan.parse_gpu("24 GB").memory == 24 * 10**9
    assert plan.parse_gpu("H100") == plan.PRESETS["h100"]


def test_kv_cache_counts_every_slot_of_a_llama_server_tier(shapes: Path, tmp_path: Path) -> None:
    text = shapes.read_text().replace('n_ctx = 4096\n', 'n_ctx = 4096\nengine = "llama-server"\nparallel = 4\n', 1)
    config = tmp_path / "models.toml"
    config.write_text(text.replace('model = "', f'model = "{shapes.parent}/'))
    one, four = plan_json(shapes, "h200")["t13b"], plan_json(config, "h200")["t13b"]
    assert four["context_cells"] == 4 * one["context_cells"] and four["need"]["kv_gpu"] == 4 * one["need"]["kv_gpu"]


def hostile_tier(model: Path, extra: str = "") -> str:
    return f'[tiers.t]\nmodel = "{model}"\ndescription = "hostile"\nn_ctx = 1024\nmax_tokens = 64\n{extra}'


def test_plan_says_in_one_sentence_that_a_model_has_no_attention_heads(write_config, tmp_path: Path) -> None:
    model = tmp_path / "heads.gguf"
    write_smollm2_like(model, head_count=0)
    done = subprocess.run([MCP_TIERED, "plan", "--config", str(write_config(hostile_tier(model))), "--gpu", "24GB"],
                          capture_output=True, text=True, env=server_env(), timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[-1] == (f"t          tiers.t.model: cannot read the GGUF metadata ({model}: "
                                            "llama.attention.head_count is 0; it must be at least 1)")


def test_check_exits_nonzero_naming_a_header_llama_cpp_would_refuse(write_config, tmp_path: Path) -> None:
    model = tmp_path / "cut.gguf"
    write_smollm2_like(model)
    with model.open("r+b") as f:  # the tensor table cut short: llama.cpp's "failed to read tensor info"
        f.truncate(20_000)
    done = subprocess.run([MCP_TIERED, "check", "--config", str(write_config(hostile_tier(model)))],
                          capture_output=True, text=True, env=server_env(), timeout=60)
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"error  tiers.t.model: cannot read the GGUF metadata ({model}: the file ends inside ")


@pytest.mark.parametrize("script", [None, "#!/bin/sh\necho 'llama-server, honest'\nsleep 30 &\n"],
                         ids=["bin-true", "a-script-that-leaves-a-child"])
def test_check_says_that_a_server_binary_is_not_llama_server(script: str | None, write_config, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    write_smollm2_like(model)
    binary = Path("/bin/true")
    if script is not None:  # one that answers something else, and leaves a child holding its output open
        binary = tmp_path / "server.sh"
        binary.write_text(script)
        binary.chmod(0o755)
    config = write_config(hostile_tier(model, f'engine = "llama-server"\nserver_binary = "{binary}"\n'))
    started = time.monotonic()
    done = subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True,
                          env=server_env(), timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert done.stdout.splitlines()[0] == (
        f"error  tiers.t.server_binary: {binary} is not llama.cpp's llama-server: `--version` did not print "
        "llama.cpp's version banner (\"version: …\" and \"built with … for …\")")
