"""What the benchmarks write about the machine they ran on."""

from __future__ import annotations

import os
import platform

import torch


def cpu_description() -> str:
    """Architecture and the cores this process may use, e.g. "x86_64, 2 cores"."""
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU and the threads torch uses on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
