"""docker-compose.yml and its CPU override follow the compose spec and wire tandem, Prometheus and Grafana."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scripts.docker_smoke.compose import Override, Reset, load
from service.settings import Settings, unknown_env_settings
from tests.deploy.conftest import ROOT

SCHEMA = Path(__file__).with_name("compose-spec.json")
BASE = ROOT / "docker-compose.yml"
CPU = ROOT / "docker-compose.cpu.yml"
DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


def plain(value: Any) -> Any:
    """The data with merge markers replaced by their values, as the schema sees the file."""
    if isinstance(value, Reset | Override):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file into a base file (mappings merge, sequences append)."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return plain(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            result = merge(base.get(key), value)
            if result is None and isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = result
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return copy.deepcopy(override)


def validate(data: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def seconds(duration: str | int | float) -> float:
    """A compose duration ("30s", "1m30s", "1500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    match = DURATION.fullmatch(duration.strip())
    assert match, f"not a compose duration: {duration!r}"
    assert any(match.groups()), f"empty compose duration: {duration!r}"
    h, m, s, ms = (int(g) if g else 0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load(BASE)


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return merge(load(BASE), load(CPU))  # type: ignore[no-any-return]


def test_schema_is_the_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]


@pytest.mark.parametrize("path", [BASE, CPU], ids=["docker-compose.yml", "docker-compose.cpu.yml"])
def test_file_validates_against_compose_spec(path: Path) -> None:
    validate(plain(load(path)))


def test_merged_cpu_variant_validates(cpu: dict[str, Any]) -> None:
    validate(cpu)


def test_schema_rejects_a_broken_file(base: dict[str, Any]) -> None:
    broken = copy.deepcopy(plain(base))
    broken["services"]["tandem"]["deploy"]["resources"]["reservations"]["devices"][0]["capability"] = ["gpu"]
    with pytest.raises(AssertionError):
        validate(broken)


def test_gpu_reservation(base: dict[str, Any]) -> None:
    devices = base["services"]["tandem"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert device.get("count") == "all" or (isinstance(device.get("count"), int) and device["count"] >= 1)
    assert "gpu" in device["capabilities"]


def test_cpu_variant_drops_the_gpu_and_pins_cpu(cpu: dict[str, Any]) -> None:
    tandem = cpu["services"]["tandem"]
    devices = tandem.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert not devices, f"the CPU variant still reserves {devices}"
    assert tandem["environment"]["TANDEM_DEVICE"] == "cpu"


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `${VAR:?message}` substitution."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        unset = value is None or (value == "" and operator in (":-", ":?"))
        if operator in ("-", ":-") and unset:
            return word
        if operator in ("?", ":?") and unset:
            raise ValueError(f"{name}: {word}")
        return value or ""

    return VARIABLE.sub(substitute, text)


def short_volume(entry: str, env: dict[str, str]) -> tuple[str, str, str]:
    """A short-syntax volume (`SOURCE:TARGET[:MODE]`) after interpolation, as (source, target, mode)."""
    parts = interpolate(entry, env).split(":")
    assert len(parts) in (2, 3), f"not SOURCE:TARGET[:MODE]: {entry!r}"
    return parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"


def models_mount(base: dict[str, Any], env: dict[str, str]) -> tuple[str, str, bool]:
    """What is mounted at the server's model repository: (type, source, read_only), for this environment."""
    tandem = base["services"]["tandem"]
    target = tandem["environment"].get("TANDEM_MODELS_DIR", "/models")
    found = []
    for volume in tandem["volumes"]:
        if isinstance(volume, dict) and volume.get("target") == target:
            source = interpolate(str(volume.get("source", "")), env)
            found.append((volume["type"], source, volume.get("read_only") is True))
        elif isinstance(volume, str):
            source, mounted_at, mode = short_volume(volume, env)
            if mounted_at == target:
                kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
                found.append((kind, source, "ro" in mode.split(",")))
    assert len(found) == 1, f"expected one mount at {target}, found {found}"
    return found[0]


def test_interpolate_follows_compose() -> None:
    assert interpolate("${A:-x}", {}) == "x"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("${A:-x}/m", {"A": "/srv"}) == "/srv/m"
    with pytest.raises(ValueError, match="set it"):
        interpolate("${A:?set it}", {})


@pytest.mark.parametrize("env", [{}, {"MODELS_DIR": "/srv/models"}, {"MODELS_DIR": "./models"}], ids=str)
def test_models_volume_is_read_only(base: dict[str, Any], env: dict[str, str]) -> None:
    _, _, read_only = models_mount(base, env)
    assert read_only, "the server must not be able to write its model repository"


def test_default_models_mount_cannot_hide_the_examples(base: dict[str, Any]) -> None:
    """Unset MODELS_DIR: a named volume Docker seeds from the image's /models, never an (empty) bind mount."""
    kind, source, _ = models_mount(base, {})
    assert kind == "volume", f"by default /models is a bind mount of {source!r}, which hides the image's examples"
    assert source in (base.get("volumes") or {}), f"named volume {source!r} is not declared"
    tandem = base["services"]["tandem"]
    for volume in tandem["volumes"]:
        assert not (isinstance(volume, dict) and volume.get("volume", {}).get("nocopy")), "nocopy leaves it empty"
        assert not (isinstance(volume, str) and "nocopy" in volume), "nocopy leaves the volume empty"
    # Docker copies what the image holds at the mount point; the image must hold the examples there.
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "COPY --from=build /models /models" in final_stage, "the image no longer bakes the examples into /models"
    assert "TANDEM_MODELS_DIR=/models" in final_stage


@pytest.mark.parametrize("path", ["/srv/models", "./models", "../repo"])
def test_models_dir_path_serves_your_own_repository(base: dict[str, Any], path: str) -> None:
    kind, source, _ = models_mount(base, {"MODELS_DIR": path})
    assert (kind, source) == ("bind", path)


def test_root_filesystem_is_read_only_with_tmpfs(base: dict[str, Any]) -> None:
    tandem = base["services"]["tandem"]
    assert tandem["read_only"] is True
    tmpfs = tandem["tmpfs"] if isinstance(tandem["tmpfs"], list) else [tandem["tmpfs"]]
    assert any(entry.split(":")[0] == "/tmp" for entry in tmpfs)


def test_ports_published_on_loopback_only(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_stop_grace_period_exceeds_grace_and_drain(base: dict[str, Any]) -> None:
    tandem = base["services"]["tandem"]
    environment = tandem["environment"]
    grace = float(environment.get("TANDEM_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    drain = float(environment.get("TANDEM_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
    assert seconds(tandem["stop_grace_period"]) > grace + drain, "docker would SIGKILL the server mid-drain"


@pytest.mark.parametrize("path", [BASE, CPU], ids=["docker-compose.yml", "docker-compose.cpu.yml"])
def test_environment_names_only_known_settings(path: Path) -> None:
    env = plain(load(path))["services"]["tandem"].get("environment", {})
    assert isinstance(env, dict)
    # The server refuses to start on an unknown TANDEM_* variable.
    assert unknown_env_settings({k: str(v) for k, v in env.items()}) == []


def test_healthcheck_probes_readiness(base: dict[str, Any]) -> None:
    check = base["services"]["tandem"]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert any("/v2/health/ready" in part for part in check["test"])


def test_images_are_pinned(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name} uses untagged image {image}"
        assert tag != "latest", f"{name} uses {image}"
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", base["services"]["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", base["services"]["grafana"]["image"])


def _bind_source(service: dict[str, Any], target: str) -> Path:
    for volume in service["volumes"]:
        if isinstance(volume, dict) and volume.get("target") == target:
            return ROOT / volume["source"]
    raise AssertionError(f"nothing is mounted at {target}")


def test_prometheus_scrapes_tandem_metrics(base: dict[str, Any]) -> None:
    prometheus = base["services"]["prometheus"]
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = _bind_source(prometheus, flag.split("=", 1)[1])
    assert config_path == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["tandem"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["tandem:8000"], "the target must be the compose service name and the server's port"


def test_grafana_provisioning_matches_the_stack(base: dict[str, Any]) -> None:
    grafana = base["services"]["grafana"]
    provisioning = _bind_source(grafana, "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    providers = yaml.safe_load((provisioning / "dashboards" / "tandem.yml").read_text())["providers"]
    dashboards = _bind_source(grafana, providers[0]["options"]["path"])
    assert (dashboards / "tandem.json").is_file()
    dashboard = json.loads((dashboards / "tandem.json").read_text())
    uids = {d["uid"] for d in datasources}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, f"panel {panel['title']!r} uses an unprovisioned datasource"
