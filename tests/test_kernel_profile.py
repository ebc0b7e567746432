"""benchmarks/kernel_profile.py: a profile of the engine's real steps, on the CPU's clock."""

from __future__ import annotations

import json

import pytest

from benchmarks import kernel_profile
from benchmarks.kernel_profile import operator_group, union_length
from ssl_core.engine import STEP_PHASES


def test_union_length_counts_overlaps_once() -> None:
    assert union_length([]) == 0
    assert union_length([(0, 2), (5, 6)]) == 3  # disjoint
    assert union_length([(0, 4), (1, 2), (3, 6)]) == 6  # nested and overlapping, given out of order
    assert union_length([(3, 6), (0, 4)]) == 6


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("aten::cudnn_convolution", "convolution"),
        ("aten::convolution_backward", "convolution"),
        ("aten::cudnn_batch_norm_backward", "batch_norm"),
        ("aten::native_batch_norm", "batch_norm"),
        ("aten::addmm", "matrix_product"),
        ("aten::mm", "matrix_product"),
        ("aten::_to_copy", "copy_cast"),
        ("aten::threshold_backward", "other"),
        ("aten::_foreach_mul_", "other"),
        ("aten::summary", "other"),  # "mm" inside a name is not a matrix product
    ],
)
def test_operator_groups(name: str, group: str) -> None:
    assert operator_group(name) == group


def test_profiles_every_phase_of_the_engines_step(tmp_path) -> None:
    """SimCLR forwards both views at once, BYOL each view through its online and its target network."""
    kernel_profile.main(
        [
            "--methods",
            "byol,simclr",
            "--batch-size",
            "8",
            "--warmup",
            "1",
            "--timed",
            "1",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    by_method = {r["method"]: r for r in results["results"]}
    assert list(by_method) == ["byol", "simclr"]  # in the order asked
    for result in by_method.values():
        assert set(result["phase_ms"]) == set(STEP_PHASES)
        assert result["step_ms"] > 0 and result["profiled_step_ms"] > 0
        assert result["conv_forward_tflops"] > 0
        assert result["operator_ms"]["convolution"] > 0 and result["operator_ms"]["batch_norm"] > 0
    # BYOL's four forwards (two online, two of the target) and two backward graphs dispatch more than SimCLR's one each.
    assert by_method["byol"]["host_ops_per_step"] > 1.5 * by_method["simclr"]["host_ops_per_step"]
    # Every range of the engine was recorded: a renamed one would read 0 here.
    assert all(ms > 0 for ms in by_method["byol"]["phase_ms"].values()), by_method["byol"]["phase_ms"]
    # Every operator counted once, in the phase that ran it; BYOL's two backward graphs against SimCLR's one.
    for result in by_method.values():
        by_phase = result["host_ops_by_phase"]
        assert sum(by_phase.values()) == pytest.approx(result["host_ops_per_step"])
        assert all(by_phase[phase] > 0 for phase in ("views", "forward", "backward", "optimizer")), by_phase
    byol_backward, simclr_backward = (by_method[m]["host_ops_by_phase"]["backward"] for m in ("byol", "simclr"))
    assert byol_backward > 1.5 * simclr_backward

    def calls(method: str, operator: str) -> int:
        table = (tmp_path / f"{method}-operators.md").read_text()
        row = next(line for line in table.splitlines() if line.startswith(f"| `{operator}` |"))
        return int(row.split("|")[3])

    # 20 convolutions in the CIFAR ResNet-18: one backward per convolution per trained forward.
    assert calls("simclr", "aten::convolution_backward") == 20
    assert calls("byol", "aten::convolution_backward") == 40  # two online forwards; the target's take no gradient
    table = (tmp_path / "results.md").read_text()
    assert "| byol |" in table and "| simclr |" in table


def test_refuses_unknown_methods_and_empty_windows(tmp_path) -> None:
    with pytest.raises(SystemExit):
        kernel_profile.main(["--methods", "distillation", "--out", str(tmp_path)])  # needs a teacher
    with pytest.raises(SystemExit):
        kernel_profile.main(["--methods", "simclr", "--steps", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()
