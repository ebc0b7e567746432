"""Ctrl-C stops a served runner through its own stop, and ends the process even when that hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flows.interrupt import INTERRUPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]

# A stand-in for Prefect's Runner: start() polls until astop() asks it to end (if it obeys), and swallows
# cancellation, as the runner has been seen to. It prints "serving" once started.
SERVER = """
import asyncio, sys
from flows.interrupt import serve_until_interrupted

class Server:
    started = False
    stop_requested = False

    def __init__(self, obeys_stop: bool) -> None:
        self.obeys_stop = obeys_stop

    async def start(self) -> None:
        self.started = True
        print("started" if how == "guarded-late" else "serving", flush=True)
        while not (self.stop_requested and self.obeys_stop):
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass
        print("paused the schedule", flush=True)

    async def astop(self) -> None:
        self.stop_requested = True

async def register() -> None:  # as Prefect creates the deployment: Ctrl-C may come before start()
    print("serving", flush=True)
    await asyncio.sleep(0.5)

behaviour, how, grace = sys.argv[1:]
server = Server(obeys_stop=behaviour == "obeys-stop")
if how == "guarded":
    asyncio.run(serve_until_interrupted(server, float(grace)))
elif how == "guarded-late":
    asyncio.run(serve_until_interrupted(server, float(grace), register))
else:
    asyncio.run(server.start())
"""


def interrupted(
    tmp_path: Path, behaviour: str, how: str, grace: float = 1.0, interrupts: int = 1, wait: float = 10.0
) -> tuple[int | None, str, float]:
    """(exit code, or None if still running ``wait`` s after Ctrl-C; output; seconds from Ctrl-C to exit)."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER))
    server = subprocess.Popen(
        [sys.executable, str(script), behaviour, how, str(grace)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "serving"
        sent = time.monotonic()
        for _ in range(interrupts):
            server.send_signal(signal.SIGINT)
            time.sleep(0.2)
        try:
            code = server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None, "", wait
        return code, server.stdout.read(), time.monotonic() - sent
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_without_the_guard_a_runner_that_swallows_the_cancellation_outlives_ctrl_c(tmp_path: Path) -> None:
    """The failure the guard exists for: asyncio.run turns Ctrl-C into a cancellation that the runner swallows."""
    code, _, _ = interrupted(tmp_path, "obeys-stop", "plain", wait=2.0)
    assert code is None


def test_ctrl_c_stops_the_runner_through_its_own_stop(tmp_path: Path) -> None:
    code, output, _ = interrupted(tmp_path, "obeys-stop", "guarded")
    assert (code, output.strip()) == (0, "paused the schedule")  # start() returned: its shutdown ran


def test_ctrl_c_before_the_runner_has_started_stops_it_once_started(tmp_path: Path) -> None:
    """Ctrl-C while the deployment is being created: the runner still starts, then stops (and pauses) at once."""
    code, output, _ = interrupted(tmp_path, "obeys-stop", "guarded-late")
    assert (code, output.split()) == (0, ["started", "paused", "the", "schedule"])


def test_a_shutdown_that_hangs_ends_after_the_grace_period_with_every_threads_stack(tmp_path: Path) -> None:
    code, output, seconds = interrupted(tmp_path, "ignores-stop", "guarded", grace=1.0)
    assert code == INTERRUPTED_EXIT_CODE and seconds >= 1.0  # not before the grace period
    assert "Still shutting down 1 s after Ctrl-C: exiting now." in output
    assert "in run_until_complete" in output  # where the main thread waited: the event loop, still serving


def test_a_second_ctrl_c_ends_the_process_without_waiting_for_the_grace_period(tmp_path: Path) -> None:
    code, output, seconds = interrupted(tmp_path, "ignores-stop", "guarded", grace=60.0, interrupts=2)
    assert code == INTERRUPTED_EXIT_CODE and seconds < 30.0
    assert output.strip() == "Ctrl-C again: exiting without waiting for the shutdown."
