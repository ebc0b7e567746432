"""What the benchmarks write about the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_description() -> str:
    """Architecture and the cores this process may use, e.g. "x86_64, 2 cores"."""
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU and the threads torch uses on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def reset_peak_host_memory() -> None:
    """Restarts the process's peak-RSS counter (Linux: ``/proc/self/clear_refs``), so each method gets its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_host_memory_gb() -> float | None:
    """Peak resident memory since the last reset (``VmHWM``), or None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kilobytes is None else kilobytes / 2**20
