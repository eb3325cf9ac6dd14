"""Server-wide settings: environment variables with the TANDEM_ prefix, or the matching CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TANDEM_"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    """Every server-wide knob, validated at start-up; per-model values in model.json override the batching ones."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    models_dir: Path = Field(Path("models"), description="Model repository to serve (CLI: --models).")
    host: str = Field("127.0.0.1", description="Address to bind; use 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port for every dialect and /metrics.")
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
    drain_timeout_s: float = Field(
        20.0, ge=0, le=600, description="On SIGTERM, longest wait for queued and running requests (s)."
    )

    @model_validator(mode="after")
    def _control_needs_token(self) -> Settings:
        if self.enable_model_control and self.host not in LOOPBACK_HOSTS and self.admin_token is None:
            raise ValueError("enable_model_control on a non-loopback host requires admin_token (TANDEM_ADMIN_TOKEN)")
        return self


def unknown_env_settings(environ: dict[str, str] | None = None) -> list[str]:
    """Names of TANDEM_* variables that match no setting, so start-up can refuse them by name."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(key for key in env if key.upper().startswith(ENV_PREFIX) and key.upper() not in known)
