"""Exporters turn PyTorch and Keras models into verified artifacts in the model repository."""

from __future__ import annotations


class ExportError(Exception):
    """Why an export stopped; the CLI prints it as one `error:` line and exits non-zero."""
