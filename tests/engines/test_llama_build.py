"""The one llama.cpp build: both engines load the same library files, `check` says which build each runs,
and a cached build whose files are not those it recorded is built anew, never used."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from conftest import MCP_TIERED, REPO, server_env
from mcp_tiered.engines import llama_build

BUILD_SCRIPT = REPO / "mcp_tiered" / "engines" / "llama_build.py"


def fake_build(folder: Path) -> Path:
    folder.mkdir()
    for name, size in (("libllama.so.0.5.0", 4096), ("libggml.so.0.25.3", 2048), ("llama-server", 1024)):
        (folder / name).write_bytes(bytes(range(256)) * (size // 256))
    (folder / "libllama.so").symlink_to("libllama.so.0.5.0")
    llama_build.write(folder, "0.3.36", "ab" * 32, "-DGGML_NATIVE=OFF")
    return folder


def state(folder: Path, *needs: str) -> str:
    """What setup.sh does with the cached build, as it asks."""
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), "state", str(folder), *needs], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_complete_build_is_used(tmp_path: Path) -> None:
    assert state(fake_build(tmp_path / "bin"), "llama-server") == "use"


def test_a_truncated_library_makes_setup_build_anew(tmp_path: Path) -> None:
    folder = fake_build(tmp_path / "bin")
    with (folder / "libllama.so.0.5.0").open("r+b") as f:
        f.truncate(100)
    assert state(folder) == f"rebuild {folder / 'libllama.so.0.5.0'}: not the file that was built (100 bytes, built 4096)"


def test_a_library_changed_in_place_makes_setup_build_anew(tmp_path: Path) -> None:
    folder = fake_build(tmp_path / "bin")
    data = bytearray((folder / "libggml.so.0.25.3").read_bytes())
    data[10] ^= 0xFF
    (folder / "libggml.so.0.25.3").write_bytes(bytes(data))
    assert state(folder).startswith(f"rebuild {folder / 'libggml.so.0.25.3'}: not the file that was built")


def test_a_build_cut_short_before_its_manifest_is_built_on(tmp_path: Path) -> None:
    folder = fake_build(tmp_path / "bin")
    (folder / llama_build.MANIFEST).unlink()
    assert state(folder) == f"build {folder}: no complete build (no MANIFEST.json)"


def test_a_program_not_built_yet_is_built_in_the_same_tree(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "libllama.so.0.5.0").write_bytes(b"\x7fELF" + b"\0" * 60)
    llama_build.write(folder, "0.3.36", "ab" * 32, "")
    assert state(folder) == "use"
    assert state(folder, "llama-server") == f"build {folder}: llama-server is not built"


def mapped_llama_files(pid: int | str) -> set[str]:
    """The llama.cpp and ggml libraries the process has mapped, by their real paths."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split(maxsplit=5)[5] for line in maps.splitlines()
            if len(line.split(maxsplit=5)) == 6 and Path(line.split(maxsplit=5)[5]).name.startswith(("libllama", "libggml"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.model
@pytest.mark.anyio
async def test_the_in_process_engine_and_llama_server_load_the_same_library_files(smollm2: Path) -> None:
    importlib.import_module("llama_cpp")  # loads libllama and the ggml libraries

    in_process = mapped_llama_files("self")
    server = Path(sys.executable).with_name("llama-server")
    process = subprocess.Popen([str(server), "-m", str(smollm2), "--port", str(free_port()), "-c", "512"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with anyio.fail_after(30):
            while not (served := mapped_llama_files(process.pid)) >= in_process:
                await anyio.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert in_process and served >= in_process
    assert {Path(p).parent for p in served} == {Path(p).parent for p in in_process} == {
        llama_build.of_library(server).folder}


@pytest.mark.model
def test_check_reports_the_same_build_for_both_engines(write_config, smollm2: Path) -> None:  # noqa: ANN001
    config = write_config(f'[tiers.a]\nmodel = "{smollm2}"\ndescription = "a"\n'
                          f'[tiers.b]\nengine = "llama-server"\nmodel = "{smollm2}"\ndescription = "b"\n')
    out = subprocess.run([MCP_TIERED, "check", "--config", str(config)], capture_output=True, text=True,
                         env=server_env(), cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    builds = [line.split("setup's build: ", 1)[1].split(";", 1)[0] for line in out.stdout.splitlines()
              if line.startswith("ok     generate_")]
    assert len(builds) == 2 and builds[0] == builds[1] and builds[0].startswith("llama.cpp ")
