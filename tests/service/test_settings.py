"""service.settings: TANDEM_* environment variables, validated with the field named in every error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, service_link_settings, unknown_env_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("TANDEM_"):
            monkeypatch.delenv(key)


def test_defaults_are_safe_for_a_laptop() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.models_dir == Path("models")
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.enable_model_control is False
    assert settings.admin_token is None
    assert settings.device == "auto"


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_PORT", "9001")
    monkeypatch.setenv("TANDEM_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("TANDEM_WARMUP", "false")
    monkeypatch.setenv("TANDEM_MAX_BATCH_DELAY_MS", "0.5")
    monkeypatch.setenv("tandem_device", "cpu")
    settings = Settings()
    assert settings.port == 9001
    assert settings.models_dir == Path("/srv/models")
    assert settings.warmup is False
    assert settings.max_batch_delay_ms == 0.5
    assert settings.device == "cpu"


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_PORT", "9001")
    assert Settings(port=9002).port == 9002


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("TANDEM_PORT", "http", "port"),
        ("TANDEM_PORT", "70000", "port"),
        ("TANDEM_DEVICE", "tpu", "device"),
        ("TANDEM_MAX_BODY_BYTES", "10", "max_body_bytes"),
        ("TANDEM_REQUEST_TIMEOUT_MS", "0", "request_timeout_ms"),
        ("TANDEM_MAX_CONCURRENT_BATCHES", "0", "max_concurrent_batches"),
        ("TANDEM_WARMUP", "perhaps", "warmup"),
        ("TANDEM_LOG_LEVEL", "verbose", "log_level"),
    ],
)
def test_an_invalid_value_fails_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [error["loc"] for error in info.value.errors()] == [(field,)]


def test_unknown_keyword_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"max_batch_sise"):
        Settings(max_batch_sise=4)  # type: ignore[call-arg]


def test_unknown_tandem_variables_are_named() -> None:
    environ = {"TANDEM_PORT": "1", "TANDEM_MAX_BATCH_SISE": "4", "tandem_x": "1", "PATH": "/bin", "XTANDEM_Y": "1"}
    assert unknown_env_settings(environ) == ["TANDEM_MAX_BATCH_SISE", "tandem_x"]
    assert unknown_env_settings({"TANDEM_PORT": "1", "tandem_warmup": "1"}) == []


def test_unknown_tandem_variables_default_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert unknown_env_settings() == []
    monkeypatch.setenv("TANDEM_X", "1")
    assert unknown_env_settings() == ["TANDEM_X"]


def test_model_control_on_a_public_address_needs_a_token() -> None:
    with pytest.raises(ValidationError, match=r"admin_token"):
        Settings(host="0.0.0.0", enable_model_control=True)
    assert Settings(host="0.0.0.0", enable_model_control=True, admin_token="s3cret").admin_token is not None
    for loopback in ("127.0.0.1", "localhost", "::1"):
        assert Settings(host=loopback, enable_model_control=True).enable_model_control


def test_the_admin_token_never_shows_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_ADMIN_TOKEN", "s3cret-value")
    settings = Settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings.model_dump())


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


KUBERNETES_SERVICE_LINKS = {  # a Service `tandem` (port http 8000) and a Service `tandem-grpc` on IPv6
    "TANDEM_SERVICE_HOST": "10.96.12.34",
    "TANDEM_SERVICE_PORT": "8000",
    "TANDEM_SERVICE_PORT_HTTP": "8000",
    "TANDEM_PORT": "tcp://10.96.12.34:8000",
    "TANDEM_PORT_8000_TCP": "tcp://10.96.12.34:8000",
    "TANDEM_PORT_8000_TCP_PROTO": "tcp",
    "TANDEM_PORT_8000_TCP_PORT": "8000",
    "TANDEM_PORT_8000_TCP_ADDR": "10.96.12.34",
    "TANDEM_GRPC_SERVICE_HOST": "fd00::1234",
    "TANDEM_GRPC_SERVICE_PORT_GRPC_WEB": "9000",
    "TANDEM_GRPC_PORT": "tcp://[fd00::1234]:9000",
    "TANDEM_GRPC_PORT_9000_UDP": "udp://[fd00::1234]:9000",
    "TANDEM_GRPC_PORT_9000_UDP_ADDR": "fd00::1234",
}


def test_kubernetes_service_links_are_not_unknown_settings() -> None:
    assert unknown_env_settings(KUBERNETES_SERVICE_LINKS) == []
    assert service_link_settings(KUBERNETES_SERVICE_LINKS) == ["TANDEM_GRPC_PORT", "TANDEM_PORT"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TANDEM_MAX_BATCH_SIZ", "4"),
        ("TANDEM_SERVICE_HOST", "not-an-address"),  # the name of a link, but not a value Kubernetes writes
        ("TANDEM_SERVICE_PORT", "http"),
        ("TANDEM_MODELS_PORT", "8000"),  # <S>_PORT always holds a URL
        ("TANDEM_PORT_8000_TCP", "10.0.0.1"),
        ("TANDEM_SERVICE_HOST_X", "10.0.0.1"),
    ],
)
def test_a_misspelt_setting_is_still_refused_beside_service_links(variable: str, value: str) -> None:
    assert unknown_env_settings({**KUBERNETES_SERVICE_LINKS, variable: value}) == [variable]


def test_a_service_link_in_tandem_port_leaves_the_port_to_the_flag_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in KUBERNETES_SERVICE_LINKS.items():
        monkeypatch.setenv(key, value)
    assert Settings().port == 8000
    assert Settings(port=9001).port == 9001
    monkeypatch.setenv("TANDEM_PORT", "8080")  # a port the pod spec sets itself wins over the link, as in Kubernetes
    assert Settings().port == 8080
    monkeypatch.setenv("TANDEM_PORT", "tcp://10.0.0.1")  # not a link's shape: still a bad port, named
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [error["loc"] for error in info.value.errors()] == [("port",)]


def test_lifecycle_defaults_suit_kubernetes() -> None:
    settings = Settings()
    assert settings.strict_readiness is True
    assert settings.shutdown_grace_s == 5.0
    assert settings.drain_timeout_s == 20.0
    assert 8 * 1024 <= settings.max_request_line_bytes <= 16 * 1024
    assert 8 * 1024 <= settings.max_header_line_bytes <= 16 * 1024
    assert settings.max_header_bytes >= settings.max_header_line_bytes
