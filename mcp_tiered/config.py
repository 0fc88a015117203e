"""models.toml: the types, their defaults and validation, and where the file is found.

Every problem is reported as one sentence naming its TOML key path (see validation.py).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError
from .validation import describe_value, explain, key_path

CONFIG_ENV = "MCP_TIERED_CONFIG"
MODELS_DIR_ENV = "MCP_TIERED_MODELS"
# A tier's tool is `generate_<tier>`; MCP tool names allow [A-Za-z0-9_.-], 1–128 characters.
TIER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
RESERVED_TIER_NAMES = frozenset({"cloud"})
GGUF_MAGIC = b"GGUF"


def default_models_dir() -> Path:
    """Where scripts/setup.sh puts the default models; `$MCP_TIERED_MODELS` in models.toml."""
    from platformdirs import user_cache_path

    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else user_cache_path("mcp-tiered") / "models"


_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_path(raw: str, base_dir: Path) -> Path:
    """Expand `~` and `$VARS` (`$MCP_TIERED_MODELS` defaults to the model cache); relative to `base_dir`."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in os.environ:
            return os.environ[name]
        if name == MODELS_DIR_ENV:
            return str(default_models_dir())
        raise ValueError(f"environment variable ${name} is not set")

    path = Path(_VAR.sub(substitute, raw)).expanduser()
    return path if path.is_absolute() else base_dir / path


class TierConfig(BaseModel):
    """One `[tiers.<name>]` table: a local GGUF model served as the tool `generate_<name>`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: Annotated[Path, Field(json_schema_extra={"expect": "a path to a .gguf file"})]
    description: Annotated[str, Field(min_length=1, json_schema_extra={"expect": "a non-empty string"})]
    n_ctx: Annotated[int, Field(ge=256)] = 4096
    n_gpu_layers: Annotated[int, Field(ge=-1)] = -1
    main_gpu: Annotated[int, Field(ge=0)] = 0
    tensor_split: Annotated[
        list[Annotated[float, Field(ge=0)]],
        Field(min_length=1, json_schema_extra={"expect": "a list of non-negative numbers, one per GPU"}),
    ] | None = None
    n_threads: Annotated[int, Field(ge=1)] | None = None
    """None: every CPU this process may run on."""
    n_batch: Annotated[int, Field(ge=1)] = 512
    max_tokens: Annotated[int, Field(ge=1)] = 512
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.2
    chat_format: Annotated[str, Field(min_length=1, json_schema_extra={"expect": "a chat format name"})] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _expand_model_path(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"must be a path to a .gguf file, got {describe_value(value)}")
        base_dir = (info.context or {}).get("base_dir", Path.cwd())
        return expand_path(str(value), base_dir)


class Config(BaseModel):
    """The whole models.toml."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tiers: Annotated[
        dict[str, TierConfig],
        Field(min_length=1, json_schema_extra={"expect": "a table with at least one [tiers.<name>] entry"}),
    ]


def known_chat_formats() -> list[str]:
    """The chat formats llama-cpp-python registers (it has no public listing)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    return sorted(LlamaChatCompletionHandlerRegistry()._chat_handlers)


def _semantic_problems(config: Config) -> list[str]:
    problems = []
    for name, tier in config.tiers.items():
        if tier.max_tokens >= tier.n_ctx:
            path = key_path(["tiers", name, "max_tokens"])
            problems.append(f"{path}: must be less than n_ctx ({tier.n_ctx}), got {tier.max_tokens}")
        if tier.chat_format is not None and tier.chat_format not in (formats := known_chat_formats()):
            path = key_path(["tiers", name, "chat_format"])
            problems.append(f'{path}: unknown chat format "{tier.chat_format}"; valid formats are {", ".join(formats)}')
    return problems


def _tier_name_problems(raw: dict[str, Any]) -> list[str]:
    tiers = raw.get("tiers")
    if not isinstance(tiers, dict):
        return []
    problems = []
    for name in tiers:
        path = key_path(["tiers", name])
        if name in RESERVED_TIER_NAMES:
            problems.append(f'{path}: the tier name "{name}" is reserved; choose another name')
        elif not TIER_NAME.match(name):
            problems.append(
                f"{path}: tier names become tool names (generate_<name>) and may use only letters, "
                "digits, '_', '-' and '.' (1–64 characters)"
            )
    return problems


def parse_config(raw: dict[str, Any], *, base_dir: Path) -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    problems = _tier_name_problems(raw)
    try:
        config = Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(problems + explain(exc, Config)) from None
    problems += _semantic_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path) -> Config:
    """Read and validate a models.toml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(raw, base_dir=path.resolve().parent)


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config PATH`, else `$MCP_TIERED_CONFIG`, else `./models.toml`."""
    if cli_path:
        return Path(cli_path).expanduser()
    if env := os.environ.get(CONFIG_ENV):
        return Path(env).expanduser()
    return Path("models.toml")


def model_file_problem(name: str, tier: TierConfig) -> str | None:
    """Why the tier's model file cannot be loaded, or None. Cheap: reads 4 bytes."""
    path = key_path(["tiers", name, "model"])
    try:
        with tier.model.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        return f"{path}: model file not found: {tier.model} (run scripts/setup.sh to fetch the default models)"
    except IsADirectoryError:
        return f"{path}: {tier.model} is a directory, not a GGUF model file"
    except OSError as exc:
        return f"{path}: cannot read {tier.model} ({exc.strerror})"
    if magic != GGUF_MAGIC:
        return f"{path}: {tier.model} is not a GGUF file (it does not start with the GGUF magic bytes)"
    return None
