"""A method's wall time over every call that trained it, for a claim such as "200 epochs in 5 minutes".

The per-epoch clocks of :mod:`ssl_core.engine` stop before each epoch's checkpoint and
evaluation, and compilation hides in the first epoch. A wall-time target counts all of
it: building the method, compiling, training, the evaluation and checkpoint after every
epoch, saving the model. On a machine with a time limit per call a method may take
several calls (each resuming from the last checkpoint), so each call's seconds are kept
in a small JSON file beside the method's checkpoints and the total is their sum.

A call is written down when it finishes (trains, checkpoints if due, and evaluates) its first
epoch and again after every later one, so a call killed at its time limit still counts up to
its last finished epoch. What it did after that is missing from the total: at most one epoch,
which the next call retrains and times, or, when the kill came between a checkpoint and its
evaluation, only evaluates. The epochs it finished after its last checkpoint (at most
``checkpoint_interval_s`` of training) count twice: the next call resumes from that
checkpoint and trains them again, time really spent. A call that trains nothing (its method
was already finished) adds nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class CallClock:
    """This call's seconds since it started, next to the earlier calls' of the same run.

    Args:
        path: the JSON file of the calls (``{"fingerprint": ..., "calls": [seconds, ...]}``).
        fingerprint: what makes two calls parts of one run (the engine's checkpoint
            fingerprint); calls recorded under another fingerprint are dropped.
        resume: False starts the record afresh, as the run itself starts afresh.
    """

    def __init__(self, path: Path, fingerprint: str, resume: bool = True) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.started = time.perf_counter()
        self.earlier: list[float] = self._earlier_calls() if resume else []
        self.this_call: float | None = None  # None until this call has finished an epoch

    def _earlier_calls(self) -> list[float]:
        if not self.path.exists():
            return []
        record = json.loads(self.path.read_text())
        return [float(s) for s in record["calls"]] if record.get("fingerprint") == self.fingerprint else []

    def record(self) -> None:
        """Writes this call's seconds so far beside the earlier calls'."""
        self.this_call = time.perf_counter() - self.started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"fingerprint": self.fingerprint, "calls": self.calls()}, indent=2) + "\n")

    def calls(self) -> list[float]:
        """Seconds of every call that trained, this one last if it has recorded."""
        return self.earlier + ([] if self.this_call is None else [self.this_call])

    def total_seconds(self) -> float:
        return sum(self.calls())
