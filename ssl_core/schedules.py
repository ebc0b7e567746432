"""Per-step schedules, precomputed once and indexed by the global step."""

from __future__ import annotations

import math


def cosine_schedule(
    base_value: float, total_steps: int, warmup_steps: int = 0, final_value: float = 0.0
) -> list[float]:
    """Linear warm-up from 0 to ``base_value``, then cosine decay to ``final_value``.

    SGDR without restarts (Loshchilov & Hutter, https://arxiv.org/abs/1608.03983),
    the decay used by SimCLR and the lightly benchmarks.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    values = [base_value * (step + 1) / warmup_steps for step in range(warmup_steps)]
    decay_steps = total_steps - warmup_steps
    for step in range(decay_steps):
        progress = step / max(1, decay_steps)
        values.append(final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * progress)))
    return values
