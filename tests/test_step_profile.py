"""The step profile runs on a CPU at a toy size and writes every figure it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import step_profile


def test_eager_profile_writes_its_figures(tmp_path: Path) -> None:
    options = ["--device", "cpu", "--no-compile", "--batch-size", "2", "--calls", "1", "--bank-size", "1000"]
    step_profile.main([*options, "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "augment_ms",
        "step_ms",
        "step_cudnn_autotuning_ms",
        "step_lars_ms",
        "draw_ms",
        "ema_per_tensor_ms",
        "ema_foreach_ms",
        "checkpoint_ms",
        "rankme_ms",
        "byol_target_forward_ms",
        "simclr_per_view_step_ms",
    ):
        assert results[key] > 0, key
    assert 0 < results["augment_share"] < 1
    table = (tmp_path / "results.md").read_text()
    assert "| the same with LARS instead of SGD |" in table and "| compiled step" not in table
    assert "| the same in multi-tensor kernels (ema_update) |" in table
    assert "| SimCLR's checkpoint (model and optimizer state) to a local file |" in table
    assert "| RankMe of a 1,000 x 512 kNN bank, once an epoch |" in table
    assert "| BYOL's target network alone: both views forward, no gradient, 2 images |" in table
    assert "| SimCLR step, each view through the network on its own, 2 images |" in table


def test_a_profile_cut_short_keeps_the_figures_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_session.sh gives the eager profile 40 s: a run stopped there keeps every figure taken before."""

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt  # stands in for the timeout's signal

    monkeypatch.setattr(step_profile, "ema_seconds", stopped)
    with pytest.raises(KeyboardInterrupt):
        step_profile.main(
            ["--device", "cpu", "--no-compile", "--batch-size", "2", "--calls", "1", "--out", str(tmp_path)]
        )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["byol_step_ms"] > 0 and results["draw_ms"] > 0 and "ema_foreach_ms" not in results
    assert "| BYOL step (with its target's forward and EMA), 2 images |" in (tmp_path / "results.md").read_text()


def test_a_failed_measurement_is_recorded_with_its_error(tmp_path: Path) -> None:
    profile = step_profile.Profile(tmp_path, 8, torch.device("cpu"))
    profile.record("compiled_step_ms", None, RuntimeError("no C compiler"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["compiled_step_ms"] is None and "no C compiler" in results["errors"]["compiled_step_ms"]
    assert "| compiled step, 8 images | failed | |" in (tmp_path / "results.md").read_text()
