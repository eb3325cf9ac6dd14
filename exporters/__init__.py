"""Exporters turn PyTorch and Keras models into verified artifacts in the model repository."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator


class ExportError(Exception):
    """Why an export stopped; the CLI prints it as one `error:` line and exits non-zero."""


@contextlib.contextmanager
def quiet_converter(logger_name: str, *more: str) -> Iterator[None]:
    """Hide a converter's chatter (INFO logs, its own deprecations) around its call; errors still surface."""
    loggers = [logging.getLogger(name) for name in (logger_name, *more)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """A progress line on stderr before a phase that may take seconds, and its duration after."""
    print(f"{message}...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
