"""Typed gateway settings: every default lives here, once.

`GatewaySettings.from_env()` reads `TRITONFORM_*` environment variables (the Kubernetes Deployment sets
them); tests and `tritonform serve` build the object directly. API keys come from `api_keys`,
a file (`api_keys_file`, one key per line, `#` comments) and/or `TRITONFORM_API_KEYS` (comma-separated);
they are `SecretStr`, so a settings dump or a log line never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from model_repo.manifest import engine_dir
from model_repo.runtime.contract import TOKENIZER_FILE

API_KEYS_ENV = "TRITONFORM_API_KEYS"
ENV_PREFIX = "TRITONFORM_GATEWAY_"


class SettingsError(ValueError):
    """The gateway cannot start with these settings; the message names the setting."""


class GatewaySettings(BaseModel):
    """How the gateway reaches Triton, who may call it, and the limits it enforces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    triton_grpc_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC address, host:port")
    triton_replica_urls: tuple[str, ...] = Field(
        default=(),
        description="several Triton replicas' gRPC addresses: requests are routed among them by prompt "
        "prefix (serving/gateway/routing.py) instead of going to triton_grpc_url",
    )
    triton_discovery: str | None = Field(
        default=None,
        description="host:port of a headless Service whose DNS name lists every ready Triton pod: requests "
        "are routed among them by prompt prefix, looked up again as pods come and go (a cluster)",
    )
    routing: Literal["prefix", "round-robin"] = Field(
        default="prefix", description="how requests are spread over triton_replica_urls"
    )
    model_name: str = Field(default="llm", description="the generation model's name in Triton")
    served_model_name: str | None = Field(
        default=None, description="the name clients use; default: model_name"
    )
    model_repository: Path | None = Field(
        default=None, description="local model repository (for the tokenizer)"
    )
    tokenizer_dir: Path | None = Field(
        default=None, description="folder with tokenizer.json and generation.json"
    )
    api_keys: tuple[SecretStr, ...] = ()
    api_keys_file: Path | None = None
    requests_per_minute: int = Field(default=600, ge=1, description="per API key")
    tokens_per_minute: int = Field(
        default=500_000, ge=1, description="per API key; prompt + completion tokens"
    )
    rate_limit_redis_url: str | None = Field(
        default=None,
        description="redis:// or rediss:// URL of a Redis (or Valkey) that every replica shares, so the "
        "per-key limits hold across replicas; unset: each replica keeps its own (the local stack)",
    )
    max_prompt_tokens: int = Field(
        default=4096, ge=1, description="also bounded by the served model's own context (generation.json)"
    )
    max_prompt_chars: int | None = Field(
        default=None,
        ge=1,
        description="checked before any tokenising; default 32 x max_prompt_tokens (no ordinary text "
        "that long fits max_prompt_tokens)",
    )
    max_tokens_cap: int = Field(default=2048, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    generation_timeout_s: float = Field(default=300.0, gt=0)
    triton_check_timeout_s: float = Field(default=2.0, gt=0)
    max_concurrent_requests: int = Field(default=256, ge=1, description="beyond this, 429 at once")
    stream_first_token_wait_s: float = Field(
        default=1.0,
        ge=0,
        description="a stream waits this long for Triton's first answer (so that errors still get their "
        "status code), then sends its headers and keep-alive comments until the first token",
    )
    stream_keepalive_s: float = Field(
        default=15.0, gt=0, description="SSE comment interval while a stream waits (idle timeouts)"
    )
    keep_alive_s: int = Field(
        default=620,
        ge=1,
        description="how long an idle client connection stays open; it must outlast the load balancer's own "
        "keep-alive to the gateway (GCP's external Application Load Balancer keeps backend connections "
        "600 s, fixed), or the balancer reuses a connection the gateway is closing and answers 502",
    )
    cold_start_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="while no Triton replica is ready (scale from zero, a restart), hold requests up to this "
        "long, then answer 503 with Retry-After; 0: answer 503 at once (see serving/gateway/holding.py)",
    )
    max_held_requests: int = Field(
        default=256, ge=1, description="requests held at once while Triton is cold; beyond, 503 at once"
    )
    canary_triton_grpc_url: str | None = Field(
        default=None,
        description="the canary version's Triton gRPC address: a share canary_weight of conversations goes "
        "there (serving/gateway/canary.py); unset with canary_triton_discovery: no canary",
    )
    canary_triton_discovery: str | None = Field(
        default=None, description="host:port of a headless Service listing the canary's Triton pods"
    )
    canary_tokenizer_dir: Path | None = Field(
        default=None, description="the canary version's tokenizer.json / generation.json folder"
    )
    canary_weight: float = Field(
        default=10.0, ge=0, le=100, description="percent of conversations sent to the canary (sticky)"
    )
    stable_version: str = Field(default="stable", description="the stable version's name in metrics")
    canary_version: str = Field(default="canary", description="the canary version's name in metrics")
    canary_window_s: float = Field(default=300.0, gt=0, description="rollback window, seconds")
    canary_min_requests: int = Field(
        default=20, ge=1, description="canary generations in the window before it is judged"
    )
    canary_max_error_ratio_increase: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="roll back when the canary's error ratio exceeds stable's by more than this",
    )
    canary_max_ttft_p95_ratio: float = Field(
        default=1.5, ge=1, description="roll back when the canary's TTFT p95 exceeds this x stable's"
    )
    canary_decision_configmap: str | None = Field(
        default=None,
        description="ConfigMap (in canary_decision_namespace) where a rollback is recorded and read by every "
        "gateway replica; unset: this gateway's memory only (the local stack)",
    )
    canary_decision_namespace: str = Field(default="default", description="namespace of that ConfigMap")
    log_prompts: bool = False
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens={self.default_max_tokens} exceeds max_tokens_cap={self.max_tokens_cap}"
            )
        if self.canary_triton_grpc_url and self.canary_triton_discovery:
            raise ValueError("set one of canary_triton_grpc_url and canary_triton_discovery, not both")
        return self

    @property
    def has_canary(self) -> bool:
        return bool(self.canary_triton_grpc_url or self.canary_triton_discovery)

    @property
    def public_model_name(self) -> str:
        return self.served_model_name or self.model_name

    @property
    def prompt_chars_limit(self) -> int:
        """The longest prompt (characters) tokenised at all."""
        return self.max_prompt_chars or 32 * self.max_prompt_tokens

    def resolved_api_keys(self) -> tuple[str, ...]:
        """Every configured key (settings, file, env var), deduplicated; `SettingsError` if none."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"api_keys_file {self.api_keys_file}: {exc.strerror}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        keys += [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        unique = tuple(dict.fromkeys(keys))
        if not unique:
            raise SettingsError(
                f"no API keys configured: set {API_KEYS_ENV}, api_keys_file or api_keys "
                "(the gateway never runs without authentication)"
            )
        return unique

    def resolved_tokenizer_dir(self) -> Path:
        """The folder holding tokenizer.json / generation.json: given, or found in the repository."""
        if self.tokenizer_dir is not None:
            folder = self.tokenizer_dir
        elif self.model_repository is not None:
            folder = engine_dir(self.model_repository, self.model_name)
        else:
            raise SettingsError(
                "set tokenizer_dir or model_repository: the gateway needs the model's tokenizer"
            )
        if not (folder / TOKENIZER_FILE).is_file():
            raise SettingsError(f"tokenizer_dir {folder} has no {TOKENIZER_FILE}")
        return folder

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings from `TRITONFORM_GATEWAY_<FIELD>` variables (upper case), then `overrides`."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and name != "api_keys":
                values[name] = raw
        values.update(overrides)
        return cls.model_validate(values)
