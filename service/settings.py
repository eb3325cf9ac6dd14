"""Server-wide settings: environment variables with the TANDEM_ prefix, or the matching CLI flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "TANDEM_"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Kubernetes gives every container, for each Service in its namespace (unless the pod sets
# enableServiceLinks: false), variables named after the Service, upper-cased with '-' as '_'. A Service
# named `tandem` or `tandem-<x>` therefore lands under our prefix. Their shapes, with the values Kubernetes
# writes, are: <S>_SERVICE_HOST=<ip>, <S>_SERVICE_PORT[_<PORTNAME>]=<n>, <S>_PORT=tcp://<ip>:<n>,
# <S>_PORT_<n>_<PROTO>=tcp://<ip>:<n>, ..._PROTO=tcp, ..._PORT=<n>, ..._ADDR=<ip>. A variable is taken for
# one only when both its name and its value have that shape, so a misspelt setting is still refused.
_IP = r"(?:[0-9.]+|[0-9A-Fa-f:]+)"
_URL = r"(?:tcp|udp|sctp)://(?:[0-9.]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}"
_NAME = r"(?:[A-Z0-9_]+_)?"
SERVICE_LINKS: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = tuple(
    (re.compile(name), re.compile(value))
    for name, value in (
        (rf"{_NAME}SERVICE_HOST", _IP),
        (rf"{_NAME}SERVICE_PORT(?:_[A-Z0-9_]+)?", r"[0-9]{1,5}"),
        (rf"{_NAME}PORT", _URL),
        (rf"{_NAME}PORT_[0-9]{{1,5}}_(?:TCP|UDP|SCTP)", _URL),
        (rf"{_NAME}PORT_[0-9]{{1,5}}_(?:TCP|UDP|SCTP)_PROTO", r"(?:tcp|udp|sctp)"),
        (rf"{_NAME}PORT_[0-9]{{1,5}}_(?:TCP|UDP|SCTP)_PORT", r"[0-9]{1,5}"),
        (rf"{_NAME}PORT_[0-9]{{1,5}}_(?:TCP|UDP|SCTP)_ADDR", _IP),
    )
)


def is_service_link(name: str, value: str) -> bool:
    """Whether a TANDEM_* variable is one Kubernetes injected for a Service (by name and value), not a setting."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX):
        return False
    rest = upper[len(ENV_PREFIX) :]
    return any(n.fullmatch(rest) and v.fullmatch(value.strip()) for n, v in SERVICE_LINKS)


class _EnvWithoutServiceLinks(EnvSettingsSource):
    """The TANDEM_* environment, less Kubernetes service links: TANDEM_PORT=tcp://10.0.0.1:8000 is not a port."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The variable's value, or None when it is a service link (the flag or the default applies instead)."""
        value, key, is_complex = super().get_field_value(field, field_name)
        if isinstance(value, str) and is_service_link(ENV_PREFIX + field_name, value):
            return None, key, is_complex
        return value, key, is_complex


class Settings(BaseSettings):
    """Every server-wide knob, validated at start-up; per-model values in model.json override the batching ones."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    models_dir: Path = Field(Path("models"), description="Model repository to serve (CLI: --models).")
    host: str = Field("127.0.0.1", description="Address to bind; use 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port for every HTTP dialect and /metrics.")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="TCP port for gRPC (KServe V2, TF Serving) on the same host; 0 = off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON or text; auto: text on a terminal, JSON otherwise."
    )
    access_log: bool = Field(
        False, description="One log line per request (method, path, model, status, bytes, times, request id)."
    )
    otel: bool = Field(
        False,
        description="OpenTelemetry traces of inference requests, exported over OTLP as the OTEL_* variables say "
        "(needs tandem[otel]).",
    )
    openapi: bool = Field(True, description="Serve the OpenAPI description at /openapi.json and a page at /docs.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when usable, else CPU; cuda: require a GPU; cpu: never use one."
    )
    gpu_device_id: int = Field(0, ge=0, description="CUDA device index models load onto.")
    allow_cpu_fallback: bool = Field(
        True, description="With device=cuda, load on CPU (marked degraded) instead of failing when no GPU works."
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads per runtime session; 0 sizes it to the CPUs this container may use."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body, raw or decoded (bytes).")
    max_batch_size: int = Field(64, ge=0, description="Default rows per runtime call; <= 1 turns batching off.")
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="Default longest wait of the oldest queued request under concurrent load (ms).",
    )
    max_queue_size: int = Field(1024, ge=1, description="Default requests waiting per model version; full -> 503.")
    queue_timeout_ms: float = Field(0, ge=0, description="Default longest wait before a batch starts (ms); 0 = none.")
    request_timeout_ms: float = Field(
        30_000, gt=0, description="End-to-end deadline (ms) -> 504; a request may only shorten it."
    )
    max_concurrent_batches: int = Field(1, ge=1, le=64, description="Default batches of one version running at once.")
    warmup: bool = Field(True, description="Run synthetic inputs through each model before it counts as ready.")
    enable_model_control: bool = Field(
        False, description="Turn on load/unload/register/scale endpoints (403 when off)."
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token the control endpoints require.")
    poll_interval_s: float = Field(
        0, ge=0, description="Rescan the repository for new or removed versions every N seconds; 0 = off."
    )
    workers: str = Field(
        "1",
        pattern=r"^(auto|[1-9][0-9]{0,2})$",
        description="HTTP worker processes feeding one engine process (auto: one per CPU); 1 = one process.",
    )
    strict_readiness: bool = Field(
        True,
        description="Ready only when every repository model has a READY version; false: when at least one has.",
    )
    shutdown_grace_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="On SIGTERM, keep accepting and serving this long (s) with ready at 503, so load balancers "
        "drop the server before it stops accepting.",
    )
    drain_timeout_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="After the grace, longest wait (s) for requests already accepted, queued or running.",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, le=3600, description="Close a keep-alive connection idle this long between requests (s)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="A connection must deliver a complete request head this soon (s), else 408."
    )
    max_request_line_bytes: int = Field(
        8192, ge=256, le=1024 * 1024, description="Longest request target (path and query), bytes; longer -> 414."
    )
    max_header_line_bytes: int = Field(
        16384, ge=256, le=1024 * 1024, description="Longest single header (name and value), bytes; longer -> 431."
    )
    max_header_bytes: int = Field(
        32768, ge=1024, le=16 * 1024 * 1024, description="Largest request head in all, bytes; larger -> 431."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments (the CLI flags) over the environment, which skips Kubernetes service links."""
        return init_settings, _EnvWithoutServiceLinks(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _control_needs_token(self) -> Settings:
        if self.enable_model_control and self.host not in LOOPBACK_HOSTS and self.admin_token is None:
            raise ValueError("enable_model_control on a non-loopback host requires admin_token (TANDEM_ADMIN_TOKEN)")
        return self


def unknown_env_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of TANDEM_* variables that match no setting (service links aside), so start-up can refuse them."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        key
        for key, value in env.items()
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known and not is_service_link(key, value)
    )


def service_link_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """TANDEM_* variables that name a setting but hold a Kubernetes service link, and are therefore ignored."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(key for key, value in env.items() if key.upper() in known and is_service_link(key, value))
