"""benchmarks/cpu_precision.py: bf16 against fp32 on the CPU, under instruction-set ceilings."""

from __future__ import annotations

import json

from benchmarks import cpu_precision


def test_each_ceiling_runs_in_a_process_held_to_it(tmp_path) -> None:
    cpu_precision.main(["--out", str(tmp_path), "--batch-size", "2", "--warmup", "0", "--timed", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == [name for name, _ in cpu_precision.CEILINGS]
    # ATen dispatched to the ceiling's kernels (this CPU has AVX-512; a CPU with less never exceeds it).
    assert rows["AVX2"]["aten_capability"] == "AVX2"
    assert rows["AVX-512 without BF16"]["aten_capability"] in {"AVX512", "AVX2"}
    for row in rows.values():
        assert set(row["step_ms"]) == {"fp32", "bf16-mixed"} and min(row["step_ms"].values()) > 0
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
