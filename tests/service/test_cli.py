"""service.cli: `tandem serve` flags mirror Settings; bad input stops start-up naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser, load_settings, main
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("TANDEM_"):
            monkeypatch.delenv(key)


def test_every_setting_has_a_kebab_case_flag() -> None:
    help_text = build_parser().format_help()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text
    assert "--models" in help_text


def test_flags_set_settings_and_leave_the_rest_to_defaults() -> None:
    settings = load_settings(["--models", "repo", "--port", "9100", "--no-warmup", "--max-batch-delay-ms", "1.5"])
    assert settings.models_dir == Path("repo")
    assert settings.port == 9100
    assert settings.warmup is False
    assert settings.max_batch_delay_ms == 1.5
    assert settings.host == "127.0.0.1"
    assert load_settings(["--models-dir", "other", "--enable-model-control"]).enable_model_control is True


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_PORT", "9001")
    monkeypatch.setenv("TANDEM_LOG_LEVEL", "debug")
    settings = load_settings(["--port", "9002"])
    assert settings.port == 9002
    assert settings.log_level == "debug"


def test_an_unknown_tandem_variable_stops_start_up_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_MAX_BATCH_SISE", "8")
    with pytest.raises(SystemExit, match=r"TANDEM_MAX_BATCH_SISE"):
        load_settings([])


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["--port", "http"], "port"), (["--device", "tpu"], "device"), (["--max-queue-size", "0"], "max_queue_size")],
)
def test_an_invalid_flag_value_stops_start_up_naming_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(SystemExit, match=f"invalid setting: {field}:"):
        load_settings(argv)


def test_an_invalid_environment_value_stops_start_up_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_DRAIN_TIMEOUT_S", "-1")
    with pytest.raises(SystemExit, match=r"drain_timeout_s"):
        load_settings([])


def test_model_control_on_a_public_address_without_a_token_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"admin_token"):
        load_settings(["--host", "0.0.0.0", "--enable-model-control"])
    settings = load_settings(["--host", "0.0.0.0", "--enable-model-control", "--admin-token", "t"])
    assert settings.enable_model_control


def test_an_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_settings(["--max-batch-sise", "4"])
    assert info.value.code == 2
    assert "--max-batch-sise" in capsys.readouterr().err


def test_main_without_a_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out


def test_main_refuses_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch"]) == 2
    assert "'launch'" in capsys.readouterr().err


def run_serve(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """`python -m service serve FLAGS` as a real process, bounded in time."""
    command = [sys.executable, "-m", "service", "serve", *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_python_dash_m_service_refuses_bad_settings_before_serving(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TANDEM_")}
    env["TANDEM_BOGUS"] = "1"
    result = run_serve(env, "--models", str(tmp_path))
    assert result.returncode != 0
    assert "TANDEM_BOGUS" in result.stderr
    del env["TANDEM_BOGUS"]
    result = run_serve(env, "--models", str(tmp_path), "--port", "0")
    assert result.returncode != 0
    assert "port" in result.stderr


def test_kubernetes_service_links_do_not_stop_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {
        "TANDEM_SERVICE_HOST": "10.0.0.1",
        "TANDEM_SERVICE_PORT": "8000",
        "TANDEM_PORT": "tcp://10.0.0.1:8000",
        "TANDEM_PORT_8000_TCP": "tcp://10.0.0.1:8000",
    }
    for key, value in links.items():
        monkeypatch.setenv(key, value)
    assert load_settings(["--models", "models"]).port == 8000
    monkeypatch.setenv("TANDEM_MAX_BATCH_SIZ", "4")
    with pytest.raises(SystemExit, match=r"unknown setting\(s\) in the environment: TANDEM_MAX_BATCH_SIZ$"):
        load_settings([])
