"""The step profile runs on a CPU at a toy size and writes every figure it promises."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import step_profile


def test_eager_profile_writes_its_figures(tmp_path: Path) -> None:
    step_profile.main(["--device", "cpu", "--no-compile", "--batch-size", "8", "--calls", "1", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "augment_ms",
        "step_ms",
        "step_cudnn_autotuning_ms",
        "step_lars_ms",
        "draw_ms",
        "ema_per_tensor_ms",
        "ema_foreach_ms",
    ):
        assert results[key] > 0, key
    assert 0 < results["augment_share"] < 1
    table = (tmp_path / "results.md").read_text()
    assert "| the same with LARS instead of SGD |" in table and "| compiled step" not in table
    assert "| the same in multi-tensor kernels (ema_update) |" in table
