"""Checks for recipe dataclasses, called from their ``__post_init__``, and shared choices.

Configs fail when they are built (from params.yaml, before any work), with the
field, the value and what is allowed, instead of deep inside a training step.
Free of torch, like the recipes, so that params.yaml validates without it.
"""

from __future__ import annotations

from typing import Any

# Numeric precisions of training and embedding (ssl_core.precision.autocast), and what a setting may
# also say: "auto", bf16-mixed where the device computes bf16 natively, fp16-mixed (with loss scaling) on
# GPUs whose tensor cores compute fp16 but not bf16, else fp32 (resolve_precision).
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
PRECISION_SETTINGS = ("auto", *PRECISIONS)


def require_positive(config: Any, *names: str) -> None:
    """Each named field must be > 0 (dims, temperatures, sizes)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} = {value!r}: must be > 0")


def require_unit_interval(config: Any, *names: str) -> None:
    """Each named field must lie in [0, 1] (momentums, probabilities, fractions)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} = {value!r}: must be in [0, 1]")
