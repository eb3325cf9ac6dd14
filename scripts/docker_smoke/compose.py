"""Turn docker-compose.yml + docker-compose.cpu.yml into one file that Compose 1.29 reads.

Compose v2 merges the two files itself and understands the override's `!reset` tag. Compose 1.29,
the generation Debian packages, rejects both `!reset` and the top-level `name:` key, so the smoke
run performs Compose v2's merge here and writes the result as a single file. The generated file
also drops services whose images this machine cannot have (Grafana), makes relative paths
absolute, and moves published ports that are already taken on this host to free ones.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import yaml


class Reset:
    """A value tagged `!reset`: the merge removes what the base file set there."""

    def __init__(self, value: object) -> None:
        self.value = value


class Override:
    """A value tagged `!override`: the merge replaces the base value instead of merging into it."""

    def __init__(self, value: object) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that keeps compose's merge tags as markers."""


def _construct(cls: type[Reset] | type[Override]) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Reset | Override:
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        return cls(loader.construct_scalar(node))

    return construct


ComposeLoader.add_constructor("!reset", _construct(Reset))
ComposeLoader.add_constructor("!override", _construct(Override))


def load(path: Path) -> dict[str, Any]:
    """A compose file as data, with `!reset` and `!override` kept as markers."""
    data = yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a compose mapping")
    return data


def merge(base: Any, override: Any) -> Any:
    """Compose v2's merge of an override into a base: mappings merge, sequences append, tags apply."""
    if isinstance(override, Override):
        return copy.deepcopy(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return copy.deepcopy(override)


def _prune_empty(value: Any) -> Any:
    """Mappings emptied by a `!reset` removed, bottom-up (`resources: {reservations: {}}`)."""
    if not isinstance(value, dict):
        return value
    pruned = {key: _prune_empty(item) for key, item in value.items()}
    return {key: item for key, item in pruned.items() if item != {}}


def split_short(entry: str) -> list[str]:
    """A short-syntax volume or port split at its colons, leaving `${VAR:-default}` whole."""
    parts, current, depth = [], "", 0
    for char in entry:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def volume_source(volume: str | dict[str, Any]) -> str:
    """The source of a service volume in either syntax: a volume name, a path or a `${VAR}` form."""
    return str(volume.get("source", "")) if isinstance(volume, dict) else split_short(volume)[0]


def _drop_services(stack: dict[str, Any], names: set[str]) -> None:
    services = stack["services"]
    dropped = [services.pop(name) for name in names if name in services]
    used = {volume_source(v) for service in services.values() for v in service.get("volumes", [])}
    for service in dropped:
        for volume in service.get("volumes", []):
            source = volume_source(volume)
            if source in stack.get("volumes", {}) and source not in used:
                del stack["volumes"][source]
    for service in services.values():
        depends = service.get("depends_on")
        if isinstance(depends, list):
            service["depends_on"] = [d for d in depends if d not in names]
        elif isinstance(depends, dict):
            service["depends_on"] = {d: c for d, c in depends.items() if d not in names}
        if "depends_on" in service and not service["depends_on"]:
            del service["depends_on"]


def _absolute(root: Path, path: str) -> str:
    return str((root / path).resolve()) if path.startswith(".") else path


def _absolutize(stack: dict[str, Any], root: Path) -> None:
    for service in stack["services"].values():
        build = service.get("build")
        if isinstance(build, dict) and "context" in build:
            build["context"] = _absolute(root, build["context"])
        elif isinstance(build, str):
            service["build"] = _absolute(root, build)
        for index, volume in enumerate(service.get("volumes", [])):
            if isinstance(volume, dict) and volume.get("type") == "bind":
                volume["source"] = _absolute(root, volume["source"])
            elif isinstance(volume, str) and volume.startswith("."):
                parts = split_short(volume)
                service["volumes"][index] = ":".join([_absolute(root, parts[0]), *parts[1:]])


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port, so docker can publish there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port the kernel hands out as free on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def publish_free_ports(stack: dict[str, Any]) -> dict[str, int]:
    """Move taken host ports to free ones; returns each service's host port for its first published port."""
    published: dict[str, int] = {}
    for name, service in stack["services"].items():
        for index, entry in enumerate(service.get("ports", [])):
            host_ip, host_port, container_port = str(entry).split(":")
            port = int(host_port)
            if not port_is_free(host_ip, port):
                port = free_port(host_ip)
                service["ports"][index] = f"{host_ip}:{port}:{container_port}"
            published.setdefault(name, port)
    return published


def legacy_stack(root: Path, files: list[Path], unavailable: set[str]) -> dict[str, Any]:
    """The merged stack as one Compose-1.29 file's data: no `name:`, no tags, `unavailable` services dropped."""
    stack: dict[str, Any] = {}
    for path in files:
        stack = merge(stack, load(path))
    stack.pop("name", None)
    for service in stack["services"].values():
        if "deploy" in service:
            service["deploy"] = _prune_empty(service["deploy"])
            if not service["deploy"]:
                del service["deploy"]
    _drop_services(stack, unavailable)
    _absolutize(stack, root)
    return stack


def write(stack: dict[str, Any], path: Path) -> None:
    """Write the stack as YAML."""
    header = "# Generated by scripts/docker-smoke from docker-compose.yml + docker-compose.cpu.yml for Compose 1.29.\n"
    path.write_text(header + yaml.safe_dump(stack, sort_keys=False))
