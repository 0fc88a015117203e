"""scripts/setup.sh tells a machine that lacks what it needs what to install, in one sentence, before it
changes anything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SETUP = REPO / "scripts" / "setup.sh"
BASH = shutil.which("bash")


def run_setup(path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SETUP)], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": "/nonexistent", **env})


def tools(folder: Path, *names: str) -> str:
    """A PATH holding only `names` (and Python as python3)."""
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(shutil.which(name))
    (folder / "python3").symlink_to(sys.executable)
    return str(folder)


def test_no_python_311_is_one_sentence_naming_the_packages(tmp_path: Path) -> None:
    done = run_setup(tools(tmp_path / "bin", "dirname"), PYTHON=str(tmp_path / "no-python"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "setup.sh: Python 3.11 or newer (as $PYTHON, default python3) is needed and not found; install it "
        "(Debian/Ubuntu: sudo apt install python3 python3-venv; macOS: brew install python@3.12) and run again")


def test_no_compiler_is_one_sentence_naming_the_packages(tmp_path: Path) -> None:
    done = run_setup(tools(tmp_path / "bin", "dirname"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "setup.sh: a C/C++ compiler is needed and not found; install it (Debian/Ubuntu: sudo apt install "
        "build-essential; macOS: xcode-select --install) and run again")
