"""The pipeline on a schedule: this process serves a deployment of the flow and runs what the server schedules.

    prefect server start                                  # in another terminal: the API and its scheduler
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.schedule --cron "0 2 * * *"           # or: sslpipe schedule --cron "0 2 * * *"
    python -m flows.schedule --interval 3600 --stages ingest curate

The deployment is ``ssl-pipeline/<name>`` (default name: the project folder's), with
the schedule and the flow's parameters (project folder, stages) stored on the
server. The server's scheduler creates the runs; this process picks each one up and
runs it in a subprocess, so it must keep running. Stopping it (Ctrl-C) pauses the
schedule. ``prefect deployment run ssl-pipeline/<name>`` runs it now.

A schedule needs a Prefect server: the temporary one that ``python -m flows.pipeline``
starts has no scheduler and goes away with the process (Prefect would only log a
warning and never run anything), so without ``PREFECT_API_URL`` this refuses to
start. To run on a work pool instead of this process, see ``prefect.yaml``.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import sys
from pathlib import Path

# First: it sets Prefect's environment (home folder, no telemetry) before prefect is imported.
from flows.pipeline import ssl_pipeline

# isort: split
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.runner import Runner
from prefect.schedules import Cron, Interval, Schedule
from prefect.settings import PREFECT_API_URL
from prefect.types.entrypoint import EntrypointType
from pydantic import ValidationError

from flows.interrupt import serve_until_interrupted
from tasks.errors import UserError
from tasks.stages import STAGE_NAMES

DEFAULT_TIMEZONE = "UTC"
# After Ctrl-C the runner pauses the schedule and stops its loops; if that takes longer, the process exits anyway.
SHUTDOWN_GRACE_SECONDS = 20.0


class ScheduleError(UserError):
    """A schedule that cannot be served: a bad cron string, interval or timezone, or no Prefect server."""


def build_schedule(cron: str | None = None, interval: float | None = None, timezone: str | None = None) -> Schedule:
    """A cron or interval schedule, checked now rather than when the server first reads it.

    Args:
        cron: a cron expression, e.g. ``"0 2 * * *"`` (02:00 every day, in ``timezone``).
        interval: seconds between runs.
        timezone: IANA name, e.g. ``Europe/Berlin``: the clock the cron expression reads (None: UTC).

    Raises:
        ScheduleError: naming the bad value, or when not exactly one of ``cron`` and ``interval`` is given.
    """
    timezone = timezone or DEFAULT_TIMEZONE
    if (cron is None) == (interval is None):
        raise ScheduleError("give exactly one of --cron (e.g. '0 2 * * *') and --interval SECONDS")
    # Prefect's own schemas check the values; each error, reduced to a line, names its option and value.
    try:
        if cron is not None:
            CronSchedule(cron=cron, timezone=timezone)
            return Cron(cron, timezone=timezone)
        IntervalSchedule(interval=datetime.timedelta(seconds=interval), timezone=timezone)
        return Interval(interval, timezone=timezone)
    except ValidationError as error:
        given = {"cron": cron, "interval": interval, "timezone": timezone}
        reasons = {"cron": "not a cron expression (minute hour day-of-month month day-of-week, e.g. '0 2 * * *')"}
        problems = []
        for problem in error.errors():
            field = problem["loc"][0]
            reason = reasons.get(field, problem["msg"].removeprefix("Value error, "))
            problems.append(f"--{field} {given[field]!r}: {reason}")
        raise ScheduleError("; ".join(problems)) from None


def deployment_parameters(
    project_dir: str | Path, stages: list[str] | None = None, retry_backoff_seconds: float | None = None
) -> dict:
    """The flow's parameters for every scheduled run: the project as an absolute path, and only what was given.

    Raises:
        ScheduleError: for an unknown stage or a folder that is not a DVC project.
    """
    project = Path(project_dir).resolve()
    if not (project / "dvc.yaml").is_file():
        raise ScheduleError(f"--project-dir {str(project_dir)!r}: no dvc.yaml there; give the project's folder")
    unknown = sorted(set(stages or []) - set(STAGE_NAMES))
    if unknown:
        raise ScheduleError(f"--stages {unknown}: unknown; choose from {list(STAGE_NAMES)}")
    parameters: dict = {"project_dir": str(project)}
    if stages:
        parameters["stages"] = list(stages)
    if retry_backoff_seconds is not None:
        parameters["retry_backoff_seconds"] = retry_backoff_seconds
    return parameters


def require_prefect_server() -> str:
    """The API URL of the Prefect server that will hold the schedule; it must be set and answer.

    Raises:
        ScheduleError: if ``PREFECT_API_URL`` is unset, or nothing healthy answers there.
    """
    url = PREFECT_API_URL.value()
    if not url:
        raise ScheduleError(
            "PREFECT_API_URL is not set, and Prefect's temporary server runs no scheduler: start one with "
            "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    with get_client(sync_client=True) as client:
        unhealthy = client.api_healthcheck()
    if unhealthy is not None:
        raise ScheduleError(f"no Prefect server answers at PREFECT_API_URL={url} ({unhealthy}): is it started?")
    return url


def serve_on_schedule(schedule: Schedule, parameters: dict, name: str) -> None:
    """Creates (or updates) the deployment ``ssl-pipeline/<name>`` and runs its flow runs until interrupted."""
    url = require_prefect_server()
    when = f"cron {schedule.cron!r}" if schedule.cron else f"every {schedule.interval.total_seconds():g} s"
    print(
        f"Serving {ssl_pipeline.name}/{name} on {url}: {when} ({schedule.timezone}), "
        f"project {parameters['project_dir']}, stages {parameters.get('stages', 'all')}. "
        "Keep this process running; Ctrl-C stops it and pauses the schedule.",
        flush=True,
    )
    serve_flow(ssl_pipeline, name, schedule, parameters)


def serve_flow(flow: Flow, name: str, schedule: Schedule, parameters: dict) -> None:
    """``flow.serve(...)``: the schedule paused on exit, and a Ctrl-C that stops the runner through its own stop.

    :mod:`flows.interrupt` says why not ``Flow.serve`` itself.
    """
    runner = Runner(name=name, pause_on_shutdown=True)
    register = functools.partial(
        runner.aadd_flow,
        flow,
        name=name,
        schedule=schedule,
        parameters=parameters,
        # The flow by module, not by file: the run's subprocess imports it whatever its working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # Registering inside: a Ctrl-C as soon as the deployment exists still pauses it.
    asyncio.run(serve_until_interrupted(runner, SHUTDOWN_GRACE_SECONDS, register))


def schedule_pipeline(
    project_dir: str | Path,
    cron: str | None = None,
    interval: float | None = None,
    timezone: str | None = None,
    name: str | None = None,
    stages: list[str] | None = None,
    retry_backoff_seconds: float | None = None,
) -> None:
    """Checks every argument, then serves the scheduled deployment (default name: the project folder's)."""
    schedule = build_schedule(cron, interval, timezone)
    parameters = deployment_parameters(project_dir, stages, retry_backoff_seconds)
    serve_on_schedule(schedule, parameters, name or Path(parameters["project_dir"]).name)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.schedule ARGS`` is ``sslpipe schedule ARGS``: one parser, one set of checks."""
    from tasks.cli import main as sslpipe

    return sslpipe(["schedule", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
