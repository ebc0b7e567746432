"""What the curation benchmarks write about the machine they ran on."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """Architecture and the cores this process may use, e.g. "x86_64, 2 cores"."""
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
