"""models.toml's types: every section and key with its default and bounds (pydantic v2), the engines' tier
types among them, and the tagged union of the tier tables (`use_engine_configs`). The checks beyond types are
in checks.py, reading and validating a file in load.py; every problem is one sentence naming its key path
(explain.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationInfo,
                      create_model, field_validator, model_validator)
from pydantic.fields import FieldInfo

from ..calls.confidence import VerifyStatistic
from ..weights import hub
from .amounts import Amount
from .auth import AuthConfig
from .explain import describe_value, key_path

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

    if "\0" in raw:  # no system call takes it: every later open() would raise
        raise ValueError(f"a path cannot contain a NUL character, got {describe_value(raw)}")
    path = Path(_VAR.sub(substitute, raw)).expanduser()
    return path if path.is_absolute() else base_dir / path


def _optional_path(value: Any, info: ValidationInfo, expect: str) -> Path | None:
    """A path key's value expanded (expand_path, relative to the config file), or None when unset."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be {expect}, got {describe_value(value)}")
    return expand_path(value, (info.context or {}).get("base_dir", Path.cwd()))


ConfidenceStatistic = Literal["mean", "quantile", "min", "first"]
Probability = Annotated[float, Field(ge=0, le=1)]
Quantile = Annotated[float, Field(gt=0, lt=1, json_schema_extra={"expect": "a number between 0 and 1 (exclusive)"})]


class EscalationConfig(BaseModel):
    """`[escalation]`: the policy defaults. Each tier may set any of them for itself (the same keys, in its
    [tiers.<name>] table: `TierFields`); its effective policy is these updated with the keys it sets."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_confidence: Probability = 0.0
    confidence: ConfidenceStatistic = "mean"
    confidence_quantile: Quantile = 0.1
    escalate_on_truncated: bool = False
    escalate_on_repetition: bool = True
    verify_statistic: VerifyStatistic = "top_share"
    verify_quantile: Quantile = 0.1
    min_verification: Probability = 0.5
    verify_below: Probability | None = None
    """Answers this confident (or more) are kept unverified; None: every kept answer is verified."""

    def updated(self, tier: BaseModel) -> EscalationConfig:
        """These settings with those `tier` sets for itself."""
        own = {key: getattr(tier, key) for key in ESCALATION_KEYS & tier.model_fields_set}
        return self.model_copy(update=own) if own else self


ESCALATION_KEYS = frozenset(EscalationConfig.model_fields)
_EscalationOverrides = create_model(
    "_EscalationOverrides", __config__=ConfigDict(extra="forbid", strict=True, frozen=True),
    **{key: (Annotated[field.rebuild_annotation(), Field(json_schema_extra=field.json_schema_extra)] | None, None)
       for key, field in EscalationConfig.model_fields.items()},
)
"""The [escalation] keys, each optional, as a tier's own (EscalationConfig.updated reads the ones it sets)."""


class _TierKeys(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    description: Annotated[str, Field(min_length=1, json_schema_extra={"expect": "a non-empty string"})]
    engine: str = "llama-cpp"
    max_tokens: Annotated[int, Field(ge=1)] = 512
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.2
    max_queue: Annotated[int, Field(ge=0)] = 8
    queue_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    escalate_to: Annotated[str, Field(min_length=1, json_schema_extra={"expect": "a tier name"})] | None = None
    local_only: bool = False
    n_ctx: Annotated[int, Field(ge=256)] | None = None
    """The context window per call, when known; None: the engine refuses a prompt that does not fit."""
    verify_with: Annotated[str, Field(min_length=1, json_schema_extra={
        "expect": "the name of a tier whose engine can score a given answer"})] | None = None
    """A tier that reads this tier's answers before they are kept (escalation.py, "verification")."""


class TierFields(_EscalationOverrides, _TierKeys):
    """The keys every engine's tiers share (those of [escalation] last). An engine's config type subclasses it
    with `engine: Literal["<kind>"]` and its own keys (engines/ registers it)."""

    @classmethod
    def key_of_another_kind(cls, key: Any) -> str | None:
        """The sentence for a key that belongs to another engine (validation.explain asks)."""
        owners = [kind for kind, config in _ENGINE_CONFIGS.items() if key in config.model_fields and config is not cls]
        if not owners:
            return None
        (this,) = get_args(cls.model_fields["engine"].annotation)
        return (f'a key of engine = {" or ".join(json.dumps(o) for o in owners)}, not of this tier\'s engine '
                f'"{this}"; set engine or remove the key')


class ModelFileFields(TierFields):
    """The keys of the engines that run a GGUF file on this machine."""

    model: Annotated[Path, Field(json_schema_extra={"expect": "a path to a .gguf file or hf:<owner>/<repo>/<file>.gguf"})]
    """A file, or a hub reference (`hf:…`): then the path in the model cache where `mcp-tiered pull` puts it."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$",
                                 json_schema_extra={"expect": "the file's sha256, 64 lowercase hex digits"})] | None = None
    """Checked by `pull` after a download and by `check`."""
    _hf: hub.HfRef | None = PrivateAttr(None)
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
    preload: bool = False
    idle_unload_s: Annotated[float, Field(gt=0)] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _expand_model_path(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"must be a path to a .gguf file or hf:<owner>/<repo>/<file>.gguf, got "
                             f"{describe_value(value)}")
        if isinstance(value, str) and value.startswith(hub.PREFIX):
            return hub.parse(value).path(default_models_dir())
        base_dir = (info.context or {}).get("base_dir", Path.cwd())
        return expand_path(str(value), base_dir)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_hub_reference(cls, data: Any, handler: Any) -> Any:
        tier = handler(data)
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, str) and model.startswith(hub.PREFIX):
            tier._hf = hub.parse(model)
        return tier

    @property
    def hf_ref(self) -> hub.HfRef | None:
        """The hub reference the model was named by, if it was."""
        return self._hf


class TierConfig(ModelFileFields):
    """`engine = "llama-cpp"` (the default): the model runs in this process through llama-cpp-python, one
    generation at a time per instance."""

    engine: Literal["llama-cpp"] = "llama-cpp"
    chat_format: Annotated[str, Field(min_length=1, json_schema_extra={"expect": "a chat format name"})] | None = None
    instances: Annotated[int, Field(ge=1)] = 1
    prompt_cache_mb: Annotated[int, Field(ge=0)] = 0
    """Memory per instance for the KV states of earlier long prompts (0: only the last prompt is reused)."""


class LlamaServerTierConfig(ModelFileFields):
    """`engine = "llama-server"`: mcp-tiered runs llama.cpp's own server for the tier, whose `parallel` slots
    generate at once on one copy of the weights (continuous batching); `n_ctx` is each slot's."""

    engine: Literal["llama-server"]
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    server_binary: Annotated[Path, Field(json_schema_extra={"expect": "a path to a llama-server program"})] | None = None
    """None: the llama-server that scripts/setup.sh builds (.venv/bin/llama-server), else the one on PATH."""
    startup_timeout_s: Annotated[float, Field(gt=0)] = 300.0

    @field_validator("server_binary", mode="before")
    @classmethod
    def _expand_binary_path(cls, value: Any, info: ValidationInfo) -> Any:
        return _optional_path(value, info, "a path to a llama-server program")


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_BASE_URL = re.compile(r"https?://[^/\s?#@]+(/[^\s?#]*)?")


def _base_url(value: str) -> str:
    """An http(s) base URL without credentials: a password in it would be in every error and log line that
    names the endpoint, and the HTTP client would send it as Basic auth instead of the tier's key. The
    refusal does not repeat the URL."""
    if "@" in value.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError("must not hold a user name or password; put the key in an environment variable and "
                         "name it in api_key_env")
    if not _BASE_URL.fullmatch(value):
        raise ValueError(f"must be an http(s) base URL such as http://gpu-1:8000/v1, got {describe_value(value)}")
    return value


BaseUrl = Annotated[str, AfterValidator(_base_url)]


class EndpointConfig(BaseModel):
    """One entry of `endpoints`: a server that serves the tier's model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: BaseUrl
    """The base URL an OpenAI client takes, such as http://gpu-1:8000/v1."""
    api_key_env: Annotated[str, Field(pattern=ENV_NAME,
                                      json_schema_extra={"expect": "an environment variable name"})] | None = None
    """None: the endpoint takes no key."""
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    """Calls this tier sends it at once (its slots, or its share of a shared server)."""

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


class OpenAITierConfig(TierFields):
    """`engine = "openai"`: the tier is served by running servers that speak the OpenAI API (vLLM, SGLang,
    TGI, llama-server, Ollama, LM Studio), on this machine or others; each call goes to the least busy
    healthy endpoint and fails over to the next."""

    engine: Literal["openai"]
    model: Annotated[str, Field(min_length=1, json_schema_extra={
        "expect": "the model name the endpoints serve (as in their /v1/models)"})]
    endpoints: Annotated[list[EndpointConfig], Field(min_length=1, json_schema_extra={
        "expect": "a list of at least one { url = ... } table"})]
    api: Literal["openai", "llama-server"] = "openai"
    """openai: /chat/completions with the server's chat template; llama-server: llama.cpp's native API,
    where the caller's text is tokenized as plain text (see backends/chat_text.py)."""
    logprobs: bool = True
    """The endpoints return token log-probabilities (confidence and min_confidence need them)."""
    private: bool = True
    """The endpoints are machines you control: local_only calls may use them. false: a third party."""
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    """Longest silence in an endpoint's answer before it counts as failed."""
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    """How long a failed endpoint gets no calls."""


class TokenPrices(BaseModel):
    """The prices of a tier billed per token (`Capabilities.billing == "tokens"`), in [costs].currency."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input_price_per_mtok: Amount = 3.0
    output_price_per_mtok: Amount = 15.0


class AnthropicKeys(BaseModel):
    """The keys of a Claude model behind the Messages API (an anthropic tier's and [cloud]'s)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: Annotated[str, Field(min_length=1, json_schema_extra={"expect": 'a model name such as "claude-sonnet-4-5"'})]
    api_key_env: Annotated[str, Field(pattern=ENV_NAME,
                                      json_schema_extra={"expect": "an environment variable name"})] = "ANTHROPIC_API_KEY"
    base_url: BaseUrl | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_tokens: Annotated[int, Field(ge=1)] = 1024


class AnthropicTierConfig(TokenPrices, AnthropicKeys, TierFields):
    """`engine = "anthropic"`: Claude through the official anthropic SDK. The prompt leaves this machine and
    each token is billed at the tier's prices, against the one cloud budget ([budget])."""

    engine: Literal["anthropic"]
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    """Not a key of this engine (checks refuse it): the Messages API samples as it does, so its answers are
    never taken as deterministic (the response cache keeps only temperature-0 calls)."""
    _declared_at: str | None = PrivateAttr(None)

    def key(self, name: str, key: str) -> str:
        """The key path of one of this tier's keys (`cloud.<key>` for the [cloud] shorthand)."""
        return f"{self._declared_at}.{key}" if self._declared_at else key_path(["tiers", name, key])


_ENGINE_CONFIGS: dict[str, type[TierFields]] = {}
"""engine kind → the keys its tiers take: `engines.ENGINES` keeps it (use_engine_configs)."""


def _engine_kind(value: Any) -> str:
    if isinstance(value, dict):
        engine = value.get("engine", "llama-cpp")
        return engine if isinstance(engine, str) else "?"
    return getattr(value, "engine", "llama-cpp")


def _tier_union(configs: dict[str, type[TierFields]]) -> Any:
    """A tier table as one of `configs`, chosen by its `engine` key (a tagged union config/explain.py reads)."""
    if len(configs) == 1:  # a union of one is no union: the engine key's Literal says what is valid
        return next(iter(configs.values()))
    members = [Annotated[config, Tag(kind)] for kind, config in configs.items()]
    return Annotated[Union[tuple(members)], Discriminator(  # noqa: UP007
        _engine_kind, custom_error_type="engine",
        custom_error_message=f"must be one of {', '.join(json.dumps(k) for k in configs)}")]


class ServerConfig(BaseModel):
    """`[server]`: how calls are served."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    default_deadline_s: Annotated[float, Field(gt=0)] = 50.0
    progress_interval_s: Annotated[float, Field(ge=0.1, le=2)] = 1.0
    auth_token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                         json_schema_extra={"expect": "an environment variable name"})] | None = None
    allowed_hosts: list[str] = []
    allowed_origins: list[str] = []
    max_request_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_connections: Annotated[int, Field(ge=1)] = 1000
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    stateless: bool = False
    """Serve Streamable HTTP without sessions (no Mcp-Session-Id), so replicas can sit behind any load
    balancer; refused with SSE, which needs every request of a session to reach the same process."""


class CacheConfig(BaseModel):
    """`[cache]`: the response cache for deterministic (temperature 0) calls."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enabled: bool = True
    max_entries: Annotated[int, Field(ge=1)] = 1024
    ttl_s: Annotated[float, Field(gt=0)] | None = None


def default_ledger_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path("mcp-tiered") / "ledger.sqlite3"


class LedgerConfig(BaseModel):
    """`[ledger]`: the SQLite record of every call and hop (tokens, time, energy, cost)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enabled: bool = True
    path: Annotated[Path, Field(json_schema_extra={"expect": "a file path"})] | None = None
    """None: ledger.sqlite3 in the user's data directory (~/.local/share/mcp-tiered on Linux)."""
    keep_days: Annotated[float, Field(ge=31, json_schema_extra={
        "expect": "a number of days ≥ 31 (the monthly cloud budget counts the current month's rows)"})] | None = None
    """None: keep every row. Older rows are deleted at startup and once a day."""

    @field_validator("path", mode="before")
    @classmethod
    def _expand_path(cls, value: Any, info: ValidationInfo) -> Any:
        return _optional_path(value, info, "a file path")

    @property
    def resolved_path(self) -> Path:
        return self.path or default_ledger_path()


STORE_SCHEMES = ("postgresql://", "postgres://")


class StoreConfig(BaseModel):
    """`[store]`: a PostgreSQL database shared by every process configured with the same URL (each laptop's
    stdio server, HTTP replicas): the ledger, the cloud budget, the calls in flight on `openai` endpoints and,
    with `shared_cache`, the response cache. Without `url` each process keeps its own SQLite ledger."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: Annotated[str, Field(json_schema_extra={
        "expect": "a URL such as postgresql://mcp@db.internal:5432/mcp_tiered"})] | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                       json_schema_extra={"expect": "an environment variable name"})] | None = None
    """The variable holding the database password; never the password itself in the file."""
    shared_cache: bool = False
    """Keep the temperature-0 response cache in the store, so one process's answer serves the others."""
    lease_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    """How long a process that stops renewing (killed, cut off) keeps its reservations and endpoint slots."""
    instance: Annotated[str, Field(min_length=1, max_length=200,
                                   json_schema_extra={"expect": "a name for this process"})] | None = None
    """How this process is named in the ledger and the report; None: <hostname>:<pid>."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """How long a connection attempt or a statement may take before the store counts as unreachable."""

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        if not value.startswith(STORE_SCHEMES):
            raise ValueError(f"must start with postgresql:// (a PostgreSQL URL), got {value.split(':', 1)[0]!r}")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises on a port that is no number)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.password is not None:
            raise ValueError("must not hold a password; put it in an environment variable and name that "
                             "variable in store.password_env")
        if "password=" in parts.query:
            raise ValueError("must not hold a password (password= in the query); name an environment variable "
                             "in store.password_env instead")
        return value

    @property
    def shared(self) -> bool:
        return self.url is not None


class TierCostConfig(BaseModel):
    """`[costs.tiers.<name>]`: what a local tier's hardware draws and costs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    power_watts: Amount = 0.0
    """Draw while generating (GPU and the rest of the box under load)."""
    idle_watts: Amount = 0.0
    """Draw while the tier waits for calls; counted for the hours it is not generating."""
    hardware_cost: Amount = 0.0
    amortization_months: Annotated[float, Field(ge=1, le=1200, allow_inf_nan=False,
                                                json_schema_extra={"expect": "a number of months from 1 to 1200"})] = 36.0
    maintenance_per_month: Amount = 0.0
    target_share: Probability | None = None
    """The share of calls this tier is meant to answer (the design's 70/25/5), shown beside the measured one."""


class CostsConfig(BaseModel):
    """`[costs]`: the cost model behind the ledger and `mcp-tiered report`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    currency: Annotated[str, Field(min_length=1)] | None = None
    """None: the [cloud] currency (USD without a [cloud] section)."""
    electricity_per_kwh: Amount = 0.30
    cloud_input_price_per_mtok: Amount | None = None
    cloud_output_price_per_mtok: Amount | None = None
    """The cloud prices for "what the same traffic would have cost"; None: those of [cloud]."""
    cloud_target_share: Probability | None = None
    tiers: dict[str, TierCostConfig] = {}


class BudgetConfig(BaseModel):
    """`[budget]`: the cloud budget, one for every tier billed per token (in [costs].currency)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    daily: Amount | None = None
    monthly: Amount | None = None


CLOUD = "cloud"
"""The name of the tier the [cloud] shorthand declares."""


class CloudConfig(TokenPrices, AnthropicKeys):
    """`[cloud]`: shorthand for one `engine = "anthropic"` tier named "cloud" (the last of the chains that
    escalate to it), with its budget ([budget]) and currency ([costs].currency) beside it."""

    provider: Literal["anthropic"] = "anthropic"
    description: Annotated[str, Field(min_length=1)] = (
        "Claude in the cloud: the most capable tier, for the hardest tasks. Sends the prompt off this machine "
        "and costs money per token."
    )
    currency: Annotated[str, Field(min_length=1)] = "USD"
    daily_budget: Amount | None = None
    monthly_budget: Amount | None = None

    def as_tier(self) -> AnthropicTierConfig:
        """The tier this section declares: its answers are final (no escalate_to), and Claude does not loop
        as a small model does."""
        keys = {*AnthropicKeys.model_fields, *TokenPrices.model_fields, "description"}
        tier = AnthropicTierConfig(engine="anthropic", escalate_on_repetition=False,
                                   **{key: getattr(self, key) for key in keys})
        tier._declared_at = CLOUD
        return tier


class Config(BaseModel):
    """The whole models.toml. `tiers` holds every tier, the [cloud] shorthand's among them (last)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tiers: Annotated[
        dict[str, TierFields],  # the engines' tagged union: use_engine_configs
        Field(min_length=1, json_schema_extra={"expect": "a table with at least one [tiers.<name>] entry"}),
    ]
    escalation: EscalationConfig = EscalationConfig()
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    ledger: LedgerConfig = LedgerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    costs: CostsConfig = CostsConfig()
    budget: BudgetConfig = BudgetConfig()
    cloud: CloudConfig | None = None

    @model_validator(mode="after")
    def _expand_cloud_shorthand(self) -> Config:
        cloud = self.cloud
        if cloud is None or CLOUD in self.tiers:
            return self
        object.__setattr__(self, "tiers", {**self.tiers, CLOUD: cloud.as_tier()})
        if "budget" not in self.model_fields_set:
            object.__setattr__(self, "budget", BudgetConfig(daily=cloud.daily_budget, monthly=cloud.monthly_budget))
        return self

    @property
    def currency(self) -> str:
        """The currency of every price, cost and budget."""
        return self.costs.currency or (self.cloud.currency if self.cloud else "USD")

    def chain(self, tier: str) -> list[str]:
        """`tier` and the tiers it escalates to, in order (validated acyclic at load)."""
        names = [tier]
        while (tier := self.tiers[tier].escalate_to) is not None:
            names.append(tier)
        return names


def use_engine_configs(configs: dict[str, type[TierFields]]) -> None:
    """Make `configs` (engine kind → config type) the kinds a [tiers.<name>] table may have."""
    _ENGINE_CONFIGS.clear()
    _ENGINE_CONFIGS.update(configs)
    field = Config.model_fields["tiers"]
    Config.model_fields["tiers"] = FieldInfo.from_annotation(
        Annotated[dict[str, _tier_union(configs)], Field(min_length=1, json_schema_extra=field.json_schema_extra)])
    Config.model_rebuild(force=True)


def model_file_problem(name: str, tier: ModelFileFields) -> str | None:
    """Why the tier's model file cannot be loaded, or None. Cheap: reads 4 bytes."""
    path = key_path(["tiers", name, "model"])
    try:
        with tier.model.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        if tier.hf_ref is not None:
            return (f"{path}: {tier.hf_ref} is not downloaded yet; run `mcp-tiered pull` (it fetches every tier's "
                    f"model into {tier.hf_ref.folder(default_models_dir())})")
        return f"{path}: model file not found: {tier.model} (run scripts/setup.sh to fetch the default models)"
    except IsADirectoryError:
        return f"{path}: {tier.model} is a directory, not a GGUF model file"
    except OSError as exc:
        return f"{path}: cannot read {tier.model} ({exc.strerror})"
    if magic != GGUF_MAGIC:
        return f"{path}: {tier.model} is not a GGUF file (it does not start with the GGUF magic bytes)"
    return None
