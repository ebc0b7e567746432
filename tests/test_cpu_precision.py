"""benchmarks/cpu_precision.py: bf16 against fp32 on the CPU, under instruction-set ceilings."""

from __future__ import annotations

import json

from benchmarks import cpu_precision


def test_a_ceiling_runs_in_a_process_held_to_it(tmp_path) -> None:
    """Held to AVX2 (the other ceilings run the same way, each in a process of its own: left out for CI's time)."""
    options = ["--batch-size", "2", "--warmup", "0", "--timed", "1", "--ceilings", "AVX2"]
    cpu_precision.main(["--out", str(tmp_path), *options])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ["AVX2"]
    # ATen dispatched to the ceiling's kernels: AVX2 under it, whatever this CPU has.
    assert rows["AVX2"]["aten_capability"] == "AVX2"
    for row in rows.values():
        assert set(row["step_ms"]) == {"fp32", "bf16-mixed"} and min(row["step_ms"].values()) > 0
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
