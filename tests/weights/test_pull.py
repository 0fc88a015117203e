"""`model = "hf:…"` and `mcp-tiered pull`: huggingface_hub against a local stand-in for the Hub (HF_ENDPOINT),
serving SmolLM2 and small files; the model cache in a temporary folder ($MCP_TIERED_MODELS)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, free_port, server_env, stdio_server
from fake_hub import Hub, Repo
from mcp_tiered.weights import hub
from mcp_tiered.config.load import load_config
from mcp_tiered.config.schema import model_file_problem
from small_gguf import write_smollm2_like

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN = "hf_test_token_that_must_not_be_logged"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The model cache and the hub's own cache in tmp_path; no token, no offline mode."""
    values = server_env(MCP_TIERED_MODELS=str(tmp_path / "models"), HF_HOME=str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        values.pop(name, None)
    return values


def pull(config: Path, env: dict[str, str], endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_TIERED, "pull", "--config", str(config)], env={**env, "HF_ENDPOINT": endpoint},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def tier(model: str, extra: str = "", name: str = "small") -> str:
    return f'[tiers.{name}]\nmodel = "{model}"\ndescription = "{name}"\nn_ctx = 1024\nmax_tokens = 64\n{extra}'


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    """8 MB that stand for a model file (pull does not read them)."""
    path = tmp_path / "blob.gguf"
    path.write_bytes(b"GGUF" + os.urandom(8 << 20))
    return path


@pytest.fixture
def big_blob(tmp_path: Path) -> Path:
    """48 MB: huggingface_hub writes what it received in 10 MB chunks, so a cut after 30 MB leaves 30 MB to keep."""
    path = tmp_path / "big.gguf"
    path.write_bytes(b"GGUF" + os.urandom(48 << 20))
    return path


def test_pull_downloads_smollm2_and_verifies_it(write_config, env, smollm2: Path, tmp_path: Path) -> None:
    config = write_config(tier(f"hf:{REPO}/{FILE}", f'sha256 = "{sha256(smollm2)}"\n'))
    with Hub({REPO: Repo({FILE: smollm2})}) as fake:
        done = pull(config, env, fake.url)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "models" / "hf" / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / "main" / FILE
    assert done.stdout == f"ok     generate_small: {path} (98.4 MB)\n"
    assert sha256(path) == sha256(smollm2)
    check = subprocess.run([MCP_TIERED, "check", "--config", str(config)], env=env, capture_output=True, text=True)
    assert check.returncode == 0 and str(path) in check.stdout


def test_an_interrupted_download_resumes_where_it_stopped(write_config, env, big_blob: Path) -> None:
    config = write_config(tier("hf:owner/repo/big.gguf", f'sha256 = "{sha256(big_blob)}"\n'))
    size = big_blob.stat().st_size
    with Hub({"owner/repo": Repo({"big.gguf": big_blob})}, cut_next_get_at=30 << 20) as fake:
        done = pull(config, env, fake.url)
        ranges = fake.gets("big.gguf")
        sent = fake.bytes_sent
    assert done.returncode == 0, done.stderr
    assert ranges == [None, f"bytes={30 << 20}-"]  # the second request asks for the rest only
    assert sent == size


def test_a_wrong_sha256_is_one_sentence_and_the_file_is_not_kept(write_config, env, blob: Path) -> None:
    config = write_config(tier("hf:owner/repo/blob.gguf", f'sha256 = "{"0" * 64}"\n'))
    with Hub({"owner/repo": Repo({"blob.gguf": blob})}) as fake:
        done = pull(config, env, fake.url)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"error: tiers.small.model: hf:owner/repo/blob.gguf: the downloaded file's sha256 is {sha256(blob)}, not the "
        f"configured {'0' * 64}; the file was deleted: check the sha256 key (or the revision) and pull again")
    assert not hub.parse("hf:owner/repo/blob.gguf").path(Path(env["MCP_TIERED_MODELS"])).exists()


@pytest.mark.parametrize(("model", "sentence"), [
    ("hf:nobody/nothing/x.gguf", "no repository nobody/nothing on the hub (or it is private and HF_TOKEN is not set)"),
    ("hf:owner/repo/other.gguf", "the repository owner/repo has no file other.gguf at revision 'main'"),
    ("hf:owner/repo/blob.gguf@v9", "the repository owner/repo has no revision 'v9'"),
    ("hf:owner/gated/blob.gguf", "the repository owner/gated is gated or private and refused access (HF_TOKEN is not "
                                 "set); accept its terms on the hub and set HF_TOKEN to a token that may read it"),
])
def test_a_failed_pull_names_the_key_and_the_cause(model: str, sentence: str, write_config, env, blob: Path) -> None:
    config = write_config(tier(model))
    repos = {"owner/repo": Repo({"blob.gguf": blob}), "owner/gated": Repo({"blob.gguf": blob}, gated_token=TOKEN)}
    with Hub(repos) as fake:
        done = pull(config, env, fake.url)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"error: tiers.small.model: {model}: {sentence}"


def test_a_gated_repository_opens_with_hf_token_and_the_token_is_never_printed(write_config, env, blob: Path) -> None:
    config = write_config(tier("hf:owner/gated/blob.gguf"))
    with Hub({"owner/gated": Repo({"blob.gguf": blob}, gated_token=TOKEN)}) as fake:
        done = pull(config, {**env, "HF_TOKEN": TOKEN}, fake.url)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_an_unreachable_hub_is_one_sentence(write_config, env) -> None:
    config = write_config(tier("hf:owner/repo/blob.gguf"))
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = pull(config, env, endpoint)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"error: tiers.small.model: hf:owner/repo/blob.gguf: cannot reach the hub to fetch blob.gguf ({endpoint}), "
        "and it is not downloaded yet; check the network (or HF_ENDPOINT) and pull again")


def test_a_second_pull_without_the_hub_keeps_what_is_there_and_succeeds(write_config, env, blob: Path) -> None:
    config = write_config(tier("hf:owner/repo/blob.gguf", f'sha256 = "{sha256(blob)}"\n'))
    with Hub({"owner/repo": Repo({"blob.gguf": blob})}) as fake:
        assert pull(config, env, fake.url).returncode == 0
    path = hub.parse("hf:owner/repo/blob.gguf").path(Path(env["MCP_TIERED_MODELS"]))
    before = path.stat().st_mtime_ns
    again = pull(config, {**env, "HF_HUB_OFFLINE": "1"}, f"http://127.0.0.1:{free_port()}")
    assert again.returncode == 0, again.stderr
    assert path.stat().st_mtime_ns == before


def test_split_gguf_parts_are_all_fetched(write_config, env, blob: Path, tmp_path: Path) -> None:
    second = tmp_path / "part2.gguf"
    second.write_bytes(b"more")
    files = {"m-00001-of-00002.gguf": blob, "m-00002-of-00002.gguf": second}
    config = write_config(tier("hf:owner/repo/m-00001-of-00002.gguf"))
    with Hub({"owner/repo": Repo(files)}) as fake:
        assert pull(config, env, fake.url).returncode == 0
    folder = hub.parse("hf:owner/repo/m-00001-of-00002.gguf").folder(Path(env["MCP_TIERED_MODELS"]))
    assert sorted(p.name for p in folder.glob("*.gguf")) == sorted(files)


def test_check_and_serve_never_download_and_name_pull(write_config, env, monkeypatch) -> None:
    monkeypatch.setenv("MCP_TIERED_MODELS", env["MCP_TIERED_MODELS"])
    config = write_config(tier("hf:owner/repo/blob.gguf"))
    problem = model_file_problem("small", load_config(config).tiers["small"])
    folder = Path(env["MCP_TIERED_MODELS"]) / "hf" / "owner" / "repo" / "main"
    assert problem == (f"tiers.small.model: hf:owner/repo/blob.gguf is not downloaded yet; run `mcp-tiered pull` "
                       f"(it fetches every tier's model into {folder})")
    check = subprocess.run([MCP_TIERED, "check", "--config", str(config)], env=env, capture_output=True, text=True)
    assert check.returncode == 1 and f"error  {problem}" in check.stdout


@pytest.mark.model
@pytest.mark.anyio
async def test_serve_answers_the_missing_tier_with_the_pull_sentence_and_serves_the_others(
        write_config, env, smollm2: Path) -> None:
    config = write_config(tier("hf:owner/repo/blob.gguf", name="remote") + "\n" + tier(str(smollm2)))
    with Hub({}) as fake, anyio.fail_after(60):
        async with stdio_server(config, **{**env, "HF_ENDPOINT": fake.url}) as client:
            missing = await client.call_tool("generate_remote", {"prompt": "Hi"})
            local = await client.call_tool("generate_small", {"prompt": "Say OK.", "max_tokens": 4})
        assert fake.requests == []
    assert missing.is_error and "hf:owner/repo/blob.gguf is not downloaded yet; run `mcp-tiered pull`" in \
        missing.content[0].text
    assert not local.is_error


def test_plan_reads_the_header_of_a_model_not_downloaded_and_nothing_more(write_config, env, qwen: Path) -> None:
    config = write_config(tier("hf:Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen.gguf"))
    with Hub({"Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF": Repo({"qwen.gguf": qwen})}) as fake:
        done = subprocess.run([MCP_TIERED, "plan", "--config", str(config), "--gpu", "rtx4090", "--format", "json"],
                              env={**env, "HF_ENDPOINT": fake.url}, capture_output=True, text=True, timeout=120)
        ranges = fake.gets("qwen.gguf")
        sent = fake.bytes_sent
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["tiers"]
    assert row["metadata_from"] == "hub header" and row["shape"]["architecture"] == "qwen2"
    assert row["shape"]["layers"] == 28 and row["fits"]
    assert ranges == [f"bytes=0-{(4 << 20) - 1}", f"bytes=0-{(8 << 20) - 1}"]  # the header is 5.7 MB
    assert sent == 12 << 20 and not any(Path(env["MCP_TIERED_MODELS"]).rglob("qwen.gguf"))


def test_a_terminal_gets_progress_bars_and_a_pipe_plain_lines(write_config, env, blob: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    config = write_config(tier("hf:owner/repo/blob.gguf"))
    with Hub({"owner/repo": Repo({"blob.gguf": blob})}) as fake:
        piped = pull(config, env, fake.url)
        for path in Path(env["MCP_TIERED_MODELS"]).rglob("blob.gguf"):
            path.unlink()
        terminal, side = pty.openpty()
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        process = subprocess.Popen([MCP_TIERED, "pull", "--config", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=side, env={**env, "HF_ENDPOINT": fake.url})
        assert process.wait(timeout=60) == 0
        os.close(side)
        shown = b""
        while True:
            try:
                chunk = os.read(terminal, 1 << 16)
            except OSError:  # the other side is closed and everything is read
                break
            if not chunk:
                break
            shown += chunk
        os.close(terminal)
    assert piped.stderr.splitlines()[:2] == ["pulling tiers.small.model: hf:owner/repo/blob.gguf",
                                             "  owner/repo/blob.gguf@main"]
    assert "%|" not in piped.stderr
    assert "100%|" in shown.decode(errors="replace")


def test_check_names_a_model_file_whose_sha256_differs(write_config, env, tmp_path: Path) -> None:
    blob = tmp_path / "model.gguf"
    write_smollm2_like(blob)
    config = write_config(tier(str(blob), f'sha256 = "{"1" * 64}"\n'))
    check = subprocess.run([MCP_TIERED, "check", "--config", str(config)], env=env, capture_output=True, text=True)
    assert check.returncode == 1
    assert f"error  tiers.small.sha256: {blob} has sha256 {sha256(blob)}, not {'1' * 64}; the file changed or the " \
           "key is wrong" in check.stdout
    good = write_config(tier(str(blob), f'sha256 = "{sha256(blob)}"\n'), name="good.toml")
    assert subprocess.run([MCP_TIERED, "check", "--config", str(good)], env=env, capture_output=True).returncode == 0


@pytest.mark.parametrize(("model", "problem"), [
    ("hf:../../x.gguf", 'the owner ".." in "hf:../../x.gguf" is not a hub name'),
    ("hf:owner/../x.gguf", 'the repository ".." in "hf:owner/../x.gguf" is not a hub name'),
    ("hf:./repo/x.gguf", 'the owner "." in "hf:./repo/x.gguf" is not a hub name'),
    ("hf:owner/repo/a//x.gguf", 'the file "a//x.gguf" in "hf:owner/repo/a//x.gguf" must be a relative path inside'),
    ("hf:owner/repo/./x.gguf", 'the file "./x.gguf" in "hf:owner/repo/./x.gguf" must be a relative path inside'),
    ("hf:owner/repo/x.gguf@.", 'the revision "." in "hf:owner/repo/x.gguf@." must be a branch, tag or commit'),
])
def test_an_hf_name_that_would_leave_the_model_cache_is_one_sentence_and_nothing_is_fetched(
        model: str, problem: str, write_config, env, blob: Path) -> None:
    config = write_config(tier(model))
    with Hub({"owner/repo": Repo({"x.gguf": blob}, any_file=blob)}) as fake:
        done = pull(config, env, fake.url)
        check = subprocess.run([MCP_TIERED, "check", "--config", str(config)], env=env, capture_output=True, text=True)
        assert fake.requests == []
    for out in (done, check):
        assert out.returncode == 1 and out.stdout == ""
        (line,) = out.stderr.splitlines()
        assert line.startswith(f"error: tiers.small.model: {problem}")
    assert not any(Path(env["MCP_TIERED_MODELS"]).parent.rglob("x.gguf"))


def test_an_hf_name_with_a_nul_byte_is_one_sentence(write_config, env) -> None:
    config = write_config(tier("hf:owner/repo/x\\u0000.gguf"))
    check = subprocess.run([MCP_TIERED, "check", "--config", str(config)], env=env, capture_output=True, text=True)
    assert check.returncode == 1
    assert check.stderr == ('error: tiers.small.model: the file "x\\u0000.gguf" in "hf:owner/repo/x\\u0000.gguf" must '
                            "be a relative path inside the repository, without whitespace or control characters\n")


def test_a_split_gguf_of_more_parts_than_llama_cpp_can_open_is_refused_before_any_download(
        write_config, env, tmp_path: Path) -> None:
    config = write_config(tier("hf:owner/repo/m-00001-of-99999.gguf"))
    part = tmp_path / "part.gguf"
    part.write_bytes(b"GGUF")
    with Hub({"owner/repo": Repo({}, any_file=part)}) as fake:  # it answers every part's name
        done = subprocess.run([MCP_TIERED, "pull", "--config", str(config)], env={**env, "HF_ENDPOINT": fake.url},
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert fake.requests == []
    assert done.returncode == 1
    assert done.stderr == ('error: tiers.small.model: "hf:owner/repo/m-00001-of-99999.gguf" names a GGUF split into '
                           "99999 parts; a split GGUF has 1 to 1024 parts (llama.cpp holds every part open while it "
                           "loads)\n")
    assert len(hub.parse("hf:owner/repo/m-00001-of-01024.gguf").files()) == 1024
    with pytest.raises(ValueError, match="split into 1025 parts"):
        hub.parse("hf:owner/repo/m-00001-of-01025.gguf")


@pytest.fixture
def sparse_300mb(tmp_path: Path) -> Path:
    """A GGUF with SmolLM2's shape (a 30 kB header) and 300 MB of zeros that take no disk."""
    path = tmp_path / "big.gguf"
    write_smollm2_like(path)
    with path.open("r+b") as f:
        f.truncate(300 << 20)
    return path


def test_plan_reads_no_more_than_it_asked_of_a_hub_that_ignores_range(write_config, env, sparse_300mb: Path) -> None:
    config = write_config(tier("hf:owner/repo/big.gguf"))
    measure = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "  # its peak RSS, in kB
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(done.returncode)")
    with Hub({"owner/repo": Repo({"big.gguf": sparse_300mb})}, ignore_range=True) as fake:
        done = subprocess.run([sys.executable, "-c", measure, MCP_TIERED, "plan", "--config", str(config), "--gpu",
                               "24GB", "--format", "json"], env={**env, "HF_ENDPOINT": fake.url}, capture_output=True,
                              text=True, timeout=120)
        sent = fake.bytes_sent
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["tiers"]
    assert row["metadata_from"] == "hub header" and row["shape"]["layers"] == 30
    peak_mb = int(done.stderr.splitlines()[-1]) / 1024
    assert sent < 32 << 20, f"{sent >> 20} MB sent"  # 4 MB asked; the rest is what the sockets buffered
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("command", ["pull", "plan"])
def test_a_hub_answering_502_is_named_with_its_status_not_as_unreachable(command: str, write_config, env) -> None:
    config = write_config(tier("hf:owner/repo/blob.gguf"))
    with Hub(fail_with=502) as fake:
        done = subprocess.run([MCP_TIERED, command, "--config", str(config)], env={**env, "HF_ENDPOINT": fake.url},
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    sentence = (f"tiers.small.model: hf:owner/repo/blob.gguf: the hub ({fake.url}) answered HTTP 502 (Bad Gateway) to "
                "the request for blob.gguf; try again later")
    if command == "pull":
        assert done.returncode == 1 and done.stderr.splitlines()[-1] == f"error: {sentence}"
    else:
        assert done.stdout.splitlines()[-1] == f"small      {sentence}"
