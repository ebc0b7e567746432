"""benchmarks/gpu_session.sh keeps to its budget: a call given little time skips what would not fit.

A lent GPU machine's session outlasts one 600-s call by a few minutes, which a second, short call
spends (benchmarks/README.md); each stage's timeout must then end within ``BUDGET_S`` so that the
stages before it come back, not run on until the call itself is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs the script; a run past 90 s (a stage left to its own 150-s timeout) fails, with all it started killed."""
    script = subprocess.Popen(
        ["bash", "benchmarks/gpu_session.sh"],
        cwd=REPO_ROOT,
        env={**os.environ, "OUT": str(tmp_path / "out"), "DATASETS": str(tmp_path), "PYTHON": sys.executable, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = script.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        # Its whole session: `timeout` runs each stage in a process group of its own.
        subprocess.run(["pkill", "-KILL", "--session", str(script.pid)], check=False)
        script.communicate()
        raise AssertionError("gpu_session.sh ran past 90 s on a 15-s budget") from None
    return subprocess.CompletedProcess(script.args, script.returncode, stdout, stderr)


def test_a_call_with_too_little_budget_skips_every_stage_of_its_plan(tmp_path: Path) -> None:
    result = session(tmp_path, PLAN="compile", BUDGET_S="15")
    assert result.returncode == 0, result.stderr
    stages = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert stages[0].startswith("== gpu-cifar10-device-compile-step-2epoch skipped:"), stages
    assert stages[1].startswith("== gpu-cifar10-device-compile-step-cudagraphs-2epoch skipped:"), stages
    assert all("skipped" in line for line in stages), stages
    assert "torch" in result.stdout  # the machine's description still comes first


def test_an_unknown_plan_is_refused_with_the_plans_there_are_before_any_work(tmp_path: Path) -> None:
    result = session(tmp_path, PLAN="fastest", BUDGET_S="15")
    assert result.returncode == 2
    assert result.stdout == "" and not (tmp_path / "out").exists()  # not even the machine's description
    assert "PLAN must be auto, accuracy, accuracy-long, compile, distillation, table or speed, not fastest" in (
        result.stderr
    )
