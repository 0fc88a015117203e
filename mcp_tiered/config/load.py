"""Reading models.toml: where it is (`--config`, `$MCP_TIERED_CONFIG`, `./models.toml`), its TOML, its types
(schema.py) and its checks (checks.py); a `ConfigError` lists every problem found."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import engines
from ..errors import ConfigError
from . import checks
from .explain import explain
from .schema import CONFIG_ENV, Config


def parse_config(raw: dict[str, Any], *, base_dir: Path) -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    engines.load_plugins()  # their config types (use_engine_configs)
    problems = checks.raw_problems(raw)
    if problems:
        raw = checks.without_api_keys(raw)
    try:
        config = Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(problems + explain(exc, Config)) from None
    problems += checks.problems(config)
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
