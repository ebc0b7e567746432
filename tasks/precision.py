"""A section's ``precision`` setting resolved for the device it runs on (:mod:`ssl_core.precision`)."""

from __future__ import annotations

import torch

from ssl_core.precision import resolve_precision, unsupported_precision
from tasks.params import ParamsError


def check_precision(section: str, setting: str, device: torch.device) -> None:
    """Raises :class:`ParamsError` naming ``<section>.precision`` where ``device`` cannot run ``setting``:
    before any work, from the stages' and the chain's checks."""
    problem = unsupported_precision(setting, device)
    if problem is not None:
        raise ParamsError(f"{section}.precision = {setting!r}: {problem}")


def section_precision(section: str, setting: str, device: torch.device) -> str:
    """``setting`` resolved for ``device`` (``auto``: bf16-mixed where it is native, fp16-mixed on GPUs with
    fp16 tensor cores only, else fp32), after
    :func:`check_precision`."""
    check_precision(section, setting, device)
    return resolve_precision(setting, device)
