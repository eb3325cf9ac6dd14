"""The `tandem` command: `tandem serve` runs the server; `tandem export` and `tandem import` go to the exporters."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from service.settings import Settings, service_link_settings, unknown_env_settings

ALIASES = {"models_dir": ["--models"]}
EXPORTER_COMMANDS = {"export": "exporters.cli", "import": "exporters.torchserve"}  # module with main(argv) -> int
log = logging.getLogger("tandem")


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting (--kebab-case), defaults left to the environment and Settings."""
    parser = argparse.ArgumentParser(prog="tandem serve", description="Serve the model repository.")
    for name, field in Settings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}", *ALIASES.get(name, [])]
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": field.description}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(*flags, **kwargs)
    return parser


def load_settings(argv: list[str]) -> Settings:
    """Settings from flags over TANDEM_* variables; an unknown or invalid one stops start-up naming it."""
    unknown = unknown_env_settings()
    if unknown:
        raise SystemExit(f"error: unknown setting(s) in the environment: {', '.join(unknown)}")
    args = vars(build_parser().parse_args(argv))
    try:
        return Settings(**args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: invalid setting: {problems}") from None


def check_startup(settings: Settings) -> None:
    """Refuse to start on a missing repository or a required GPU that is absent; log the devices seen."""
    from service.runtimes import describe_gpus

    if not settings.models_dir.is_dir():
        raise SystemExit(f"error: model repository '{settings.models_dir}' is not a directory (set --models)")
    gpus = describe_gpus()
    for line in gpus:
        log.info("GPU %s", line)
    if not gpus:
        log.info("no GPU visible: CPU only")
        if settings.device == "cuda" and not settings.allow_cpu_fallback:
            raise SystemExit(
                "error: device=cuda but no GPU is usable. On Docker, install the NVIDIA Container Toolkit and give "
                "the container a GPU (compose: deploy.resources.reservations.devices with driver nvidia; "
                "docker run --gpus all); check the driver with nvidia-smi; or set TANDEM_ALLOW_CPU_FALLBACK=true"
            )


def serve(argv: list[str]) -> int:
    """Listen, load the repository, serve until SIGTERM, then shut down in phases (service.server)."""
    # Until the server handles signals itself, SIGTERM has nothing to drain: make it a clean exit.
    signal.signal(signal.SIGTERM, _exit_before_serving)
    settings = load_settings(argv)
    from service.app import create_app
    from service.server import run

    configure_logging(settings)
    for name in service_link_settings():
        log.info("%s holds a Kubernetes service link (a Service named after it), not a setting: ignored", name)
    check_startup(settings)
    workers = worker_count(settings.workers)
    if workers > 1:
        from service import workers as supervisor

        return supervisor.run(settings, workers)
    run(create_app(settings, background_load=True, grpc=True), settings)
    return 0


def configure_logging(settings: Settings) -> None:
    """One format for every process of the server (service.logs), uvicorn's and the runtimes' loggers included."""
    from service import logs

    logs.setup(settings.log_level, settings.log_format)


def worker_count(workers: str) -> int:
    """The number of HTTP worker processes: a positive number, or `auto` for the CPUs this process may use."""
    from service.runtimes import available_cpus

    return available_cpus() if workers == "auto" else int(workers)


def _exit_before_serving(signum: int, frame: object) -> None:
    """SIGTERM while starting (imports, start-up checks): nothing was accepted yet, so exit at once."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tandem` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: tandem {serve,export,import} ...\n  serve   serve a model repository\n  export  export a model\n"
            "  import  import a model from another server's archive (import torchserve MODEL.mar)"
        )
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(rest)
    if command in EXPORTER_COMMANDS:
        # The exporters are an optional install (`pip install tandem[export]`); the server never needs them.
        try:
            exporters_cli = importlib.import_module(EXPORTER_COMMANDS[command])
        except ImportError as exc:
            print(f"error: the exporters are not installed ({exc.name}); pip install 'tandem[export]'", file=sys.stderr)
            return 2
        return int(exporters_cli.main(rest))
    print(f"error: unknown command '{command}'; expected serve, export or import", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
