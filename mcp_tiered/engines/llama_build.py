"""The one llama.cpp build both llama.cpp engines load: the shared libraries the in-process engine
(llama-cpp-python) opens and the llama-server it runs, compiled once from the sources vendored in the pinned
llama-cpp-python, with one set of flags. scripts/setup.sh builds it into a folder of its own and writes its
MANIFEST last; this module reads it (`mcp-tiered check`) and verifies it (setup, before a cached build is
used: a missing or changed file means the build is made anew, never loaded).

Standard library only: setup runs it as `python mcp_tiered/engines/llama_build.py state|write DIR ...` before
mcp-tiered is installed."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class Build:
    folder: Path
    version: str
    """llama-cpp-python's version, whose vendored llama.cpp this is."""
    sources: str
    """The sha256 of the llama.cpp sources it was compiled from (every file's path and bytes)."""
    flags: str
    files: dict[str, dict]
    """File name → {"size", "sha256"}: the shared libraries and, when built, llama-server."""

    def describe(self) -> str:
        return f"llama.cpp of llama-cpp-python {self.version} (sources {self.sources[:12]}, flags '{self.flags}')"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sources_sha256(src: Path) -> str:
    """Every file's path and bytes under `src`, in one digest: the identity of a source tree without git."""
    digest = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + _sha256(path).encode())
    return digest.hexdigest()


def write(folder: Path, version: str, sources: str, flags: str) -> Build:
    """Record every shared library and program in `folder` (the build's bin folder); written last, through a
    temporary file, so a build cut short has no manifest."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())
             if p.is_file() and not p.is_symlink() and (".so" in p.name or p.name == "llama-server"
                                                          or p.suffix == ".dylib")}
    build = Build(folder, version, sources, flags, files)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": version, "sources": sources, "flags": flags, "files": files}, indent=1))
    tmp.replace(folder / MANIFEST)
    return build


def read(folder: Path) -> Build | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return Build(folder, data["version"], data["sources"], data["flags"], data["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def state(folder: Path, needs: tuple[str, ...] = ()) -> tuple[str, str]:
    """What setup does with the build in `folder`: ("use", ""), ("build", why) — compile what is missing in
    its CMake tree (no build yet, or a program of `needs` not built) — or ("rebuild", why): a file is not the
    one its manifest records, so the tree is thrown away and built anew (make would take a truncated file
    for up to date)."""
    build = read(folder)
    if build is None:
        return "build", f"{folder}: no complete build (no {MANIFEST})"
    if why := problem(folder):
        return "rebuild", why
    for name in needs:
        if name not in build.files:
            return "build", f"{folder}: {name} is not built"
    return "use", ""


def problem(folder: Path) -> str | None:
    """Why the build in `folder` cannot be used as it is (no manifest, a file missing, cut short or changed),
    or None."""
    build = read(folder)
    if build is None:
        return f"{folder}: no complete build (no {MANIFEST})"
    for name, want in build.files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path}: missing"
        if size != want["size"] or _sha256(path) != want["sha256"]:
            return f"{path}: not the file that was built ({size} bytes, built {want['size']})"
    return None


def of_library(path: Path) -> Build | None:
    """The build a loaded library or program (any path to it, links followed) belongs to."""
    return read(path.resolve().parent)


def in_process_library() -> Path | None:
    """The libllama llama-cpp-python loads (found without loading it), or None without llama-cpp-python."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return next((p for p in (folder / "libllama.so", folder / "libllama.dylib") if p.exists()), None)


def build_of(path: Path | None) -> str:
    """`check`'s words for the build a library or program belongs to."""
    if path is None:
        return "llama.cpp not found"
    build = of_library(path)
    return f"setup's build: {build.describe()}" if build else f"{path.resolve()} is not setup's build"


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "state":
        print(" ".join(filter(None, state(Path(argv[1]), tuple(argv[2:])))))
        return 0
    if len(argv) == 5 and argv[0] == "write":
        write(Path(argv[1]), argv[2], sources_sha256(Path(argv[3])), argv[4])
        return 0
    print("usage: llama_build.py state DIR [PROGRAM...] | write DIR VERSION SOURCES_DIR FLAGS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
