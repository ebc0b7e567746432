"""A method's wall time adds up over the calls that trained it, and only over those of one run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.wall_clock import CallClock


def test_calls_of_one_run_add_up_and_a_killed_call_counts_to_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "simclr" / "wall_seconds.json"
    first = CallClock(path, "simclr-200")
    time.sleep(0.05)
    first.record()  # after its first epoch
    time.sleep(0.05)
    first.record()  # after its second; then the call is killed before it records again
    assert first.this_call == pytest.approx(0.10, abs=0.05)
    assert json.loads(path.read_text()) == {"fingerprint": "simclr-200", "calls": [first.this_call]}

    second = CallClock(path, "simclr-200")  # the next call resumes the run
    assert second.calls() == [first.this_call]  # nothing of its own until it finishes an epoch
    time.sleep(0.02)
    second.record()
    assert second.calls() == [first.this_call, second.this_call]
    assert second.total_seconds() == pytest.approx(first.this_call + second.this_call)
    assert CallClock(path, "simclr-200").calls() == second.calls()  # as a third call would read them


def test_calls_of_another_run_or_a_fresh_start_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "wall_seconds.json"
    CallClock(path, "simclr-200").record()
    assert CallClock(path, "simclr-100").calls() == []  # other epochs: another schedule, another run
    assert CallClock(path, "simclr-200", resume=False).calls() == []  # --no-resume trains from scratch
    fresh = CallClock(path, "simclr-200", resume=False)
    fresh.record()
    assert json.loads(path.read_text())["calls"] == [fresh.this_call]
