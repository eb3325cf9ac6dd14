"""Exporters turn PyTorch and Keras models into verified artifacts in the model repository."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


class ExportError(Exception):
    """Why an export stopped; the CLI prints it as one `error:` line and exits non-zero."""


@contextlib.contextmanager
def quiet_converter(logger_name: str) -> Iterator[None]:
    """Hide a converter's chatter (INFO logs, its own deprecations) around its call; errors still surface."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
