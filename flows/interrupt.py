"""A Ctrl-C that always stops a long-running server, such as ``sslpipe schedule``.

``Flow.serve`` leaves Ctrl-C to ``asyncio.run``, which (since Python 3.11) turns the first one
into a cancellation of its main task. Prefect's runner, built on anyio task groups, has been
seen to swallow that cancellation: ``sslpipe schedule`` then went on polling its server after
Ctrl-C (tests/flows/test_schedule.py: in some full CI runs on the 2-core machine, one of two
on 2026-11-27, never when run alone; the stack dump showed the runner still polling).
:func:`serve_until_interrupted` answers Ctrl-C with the runner's own stop instead (Prefect's
``Runner.astop``: it cancels the runner's loops from inside, and ``start`` returns after
pausing the schedule), ends the process if that shutdown takes longer than a grace period,
and at once on a second Ctrl-C.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

# 128 + SIGINT, what a shell reports for a process ended by Ctrl-C.
INTERRUPTED_EXIT_CODE = 130


class StoppableServer(Protocol):
    """What :func:`serve_until_interrupted` needs of a server; Prefect's ``Runner`` has it."""

    started: bool

    async def start(self) -> None: ...

    async def astop(self) -> None: ...


async def serve_until_interrupted(
    server: StoppableServer, grace_seconds: float, register: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Runs ``register()`` then ``server.start()``, until Ctrl-C stops it through ``server.astop()``.

    A Ctrl-C that comes before the server has started (while ``register`` creates the
    deployment, say) stops it as soon as it starts, so that its shutdown still runs (for
    Prefect's runner: pausing the schedule). After the first Ctrl-C the process ends at most
    ``grace_seconds`` later, with the stack of every thread on stderr if the shutdown hung;
    a second Ctrl-C ends it at once. Off the main thread (which alone receives signals) this
    only registers and runs the server.
    """
    if threading.current_thread() is not threading.main_thread():
        if register is not None:
            await register()
        await server.start()
        return
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    async def stop_once_started() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        await server.astop()

    def on_interrupt() -> None:
        if stopping:
            _exit_now("Ctrl-C again: exiting without waiting for the shutdown.", with_stacks=False)
        still_running = f"Still shutting down {grace_seconds:g} s after Ctrl-C: exiting now. Where each thread waited:"
        deadline = threading.Timer(grace_seconds, _exit_now, args=(still_running,))
        deadline.daemon = True  # a shutdown that ends in time exits without waiting for it
        deadline.start()
        stopping.append(loop.create_task(stop_once_started()))

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        if register is not None:
            await register()
        await server.start()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if stopping and not stopping[0].done():  # the server never started: nothing left to stop
            stopping[0].cancel()
    if stopping and not stopping[0].cancelled():
        await stopping[0]  # the stop's own errors, if any, surface here


def _exit_now(message: str, with_stacks: bool = True) -> None:
    print(message, file=sys.stderr, flush=True)
    if with_stacks:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(INTERRUPTED_EXIT_CODE)  # the main thread may be stuck: only an immediate exit ends the process
