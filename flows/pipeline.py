"""The pipeline as a Prefect flow: one task per DVC stage, in dependency order.

    python -m flows.pipeline                 # run (or confirm cached) every stage
    python -m flows.pipeline --stages ingest teacher

Caching is owned by DVC, not Prefect: each task asks DVC to reproduce its single
stage. DVC reruns it only if its deps, params or outs changed (the same check as
``dvc repro``), and the task ends in a ``Cached`` state when DVC had nothing to do.
So the flow and ``dvc repro`` never drift apart and never recompute each other's
work. Prefect adds scheduling, retries, observability and work pools on top.

Stages that reach something that can fail and then work again (a data source, the
model registry, a download: ``Stage.may_fail_transiently``) are retried with
exponential backoff; a user's mistake (``sslpipe`` exits with
``USER_ERROR_EXIT_STATUS``: bad params, missing input) fails at once with its
message. Each run publishes a Markdown artifact (``ssl-pipeline-summary``): what ran
and what was cached, the evaluation, curation counts and the registry's decision,
with links to the MLflow run and model version when the tracking server is HTTP.

At most one run per project at a time: two would fight over DVC's lock and the
same outputs. A run holds the project's Prefect global concurrency limit (one slot,
created on first use); a second run waits for it up to ``--wait-for-other-run``
seconds, then is refused with a message that names the limit.

By default Prefect runs against a temporary local API server (no Prefect server
to install) with its state in ``.prefect/`` in the project; set
``PREFECT_API_URL`` to use a real Prefect server or Prefect Cloud instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
# Before prefect is imported: no telemetry over a network we may not have, and
# Prefect's database inside the project instead of the home folder.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(PROJECT_DIR / ".prefect"))
# The temporary API server needs ~10 s to start on 2 idle cores; the default 20 s
# limit fails on a loaded machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.concurrency.sync import concurrency  # noqa: E402
from prefect.states import Completed, State  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from flows.summary import mlflow_links, run_summary  # noqa: E402
from tasks.errors import USER_ERROR_EXIT_STATUS  # noqa: E402
from tasks.stages import STAGE_NAMES, stage  # noqa: E402

SUMMARY_ARTIFACT = "ssl-pipeline-summary"
# A stage that may fail transiently is tried 1 + TRANSIENT_RETRIES times, waiting 10, 20, 40 s in between
# (the flow's retry_backoff_seconds doubles after each try).
TRANSIENT_RETRIES = 3
RETRY_BACKOFF_SECONDS = 10.0
# How long a run waits for another run of the same project to finish before it is refused.
WAIT_FOR_OTHER_RUN_SECONDS = 3600.0


class PipelineBusyError(RuntimeError):
    """Another run of the same project's pipeline held its slot for longer than this run would wait."""


def pipeline_limit_name(project_dir: str | Path) -> str:
    """The project's concurrency limit: its folder name and a hash of its absolute path (two clones differ)."""
    resolved = Path(project_dir).resolve()
    return f"ssl-pipeline-{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


@contextmanager
def one_run_per_project(project_dir: str | Path, wait_seconds: float) -> Iterator[None]:
    """Holds the project's single pipeline slot (Prefect global concurrency limit) while the body runs.

    Raises:
        PipelineBusyError: if another run holds it for more than ``wait_seconds``.
    """
    name = pipeline_limit_name(project_dir)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with ExitStack() as slot:
        # Only acquiring the slot can mean "busy": a TimeoutError from a stage is the stage's own.
        try:
            slot.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True))
        except TimeoutError:
            raise PipelineBusyError(
                f"Another pipeline run of {Path(project_dir).resolve()} held the concurrency limit {name!r} for "
                f"more than {wait_seconds:g} s; this run was refused. See it with `prefect gcl inspect {name}`."
            ) from None
        yield


def is_user_error(error: BaseException | None) -> bool:
    """Whether a stage failed because ``sslpipe`` reported a user's mistake (its exit status says so).

    DVC raises its own error with the failed command's as the cause:
    ``failed to run: sslpipe ..., exited with 2``.
    """
    while error is not None:
        exited = re.search(r"exited with (-?\d+)$", str(error))
        if exited and int(exited.group(1)) == USER_ERROR_EXIT_STATUS:
            return True
        error = error.__cause__ or error.__context__
    return False


def may_pass_on_retry(task, task_run, state: State) -> bool:
    """Prefect's retry condition: retry unless the failure is a user's mistake."""
    return not is_user_error(state.result(raise_on_failure=False))


@task(name="dvc-stage", task_run_name="{stage}")
def reproduce_stage(stage: str, project_dir: str) -> State:
    """Runs one DVC stage if it is stale; returns a Cached state if it was not."""
    from dvc.repo import Repo

    logger = get_run_logger()
    # The stage command is `sslpipe ...`: make the interpreter running this flow provide it.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # DVC resolves some stage paths against the working directory, not the repo root: a
    # flow started elsewhere (a scheduled deployment, `--project-dir`) runs from the project.
    started_in = os.getcwd()
    os.chdir(project_dir)
    try:
        with Repo(project_dir) as repo:
            reproduced = repo.reproduce(stage, single_item=True)
    finally:
        os.chdir(started_in)
    if not reproduced:
        logger.info("%s: unchanged, DVC has its outputs", stage)
        return Completed(name="Cached", message=f"{stage}: DVC cache hit", data=stage)
    logger.info("%s: reproduced", stage)
    return Completed(message=f"{stage}: ran", data=stage)


@flow(name="ssl-pipeline", log_prints=True)
def ssl_pipeline(
    stages: list[str] | None = None,
    project_dir: str = str(PROJECT_DIR),
    retry_backoff_seconds: float = RETRY_BACKOFF_SECONDS,
    wait_for_other_run_seconds: float = WAIT_FOR_OTHER_RUN_SECONDS,
) -> dict[str, str]:
    """Reproduces ``stages`` (default: all) in pipeline order; returns each stage's state name.

    Args:
        retry_backoff_seconds: the first wait before retrying a stage that may fail transiently.
        wait_for_other_run_seconds: how long to wait while another run of this project holds its slot.
    """
    selected = [s for s in STAGE_NAMES if stages is None or s in stages]
    unknown = set(stages or []) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"Unknown stages {sorted(unknown)}; choose from {STAGE_NAMES}.")
    states = {}
    with one_run_per_project(project_dir, wait_for_other_run_seconds):
        for name in selected:
            run_stage = reproduce_stage
            if stage(name).may_fail_transiently:
                run_stage = reproduce_stage.with_options(
                    retries=TRANSIENT_RETRIES,
                    retry_delay_seconds=exponential_backoff(backoff_factor=retry_backoff_seconds),
                    retry_condition_fn=may_pass_on_retry,
                )
            state = run_stage(name, project_dir, return_state=True)
            if state.is_failed():
                raise RuntimeError(f"Stage {name} failed: {state.message}")
            states[name] = state.name
    publish_summary(states, Path(project_dir))
    return states


def publish_summary(states: dict[str, str], project_dir: Path) -> None:
    """The run's Markdown summary and, for an HTTP tracking server, links to the MLflow run and version."""
    create_markdown_artifact(
        run_summary(states, project_dir), key=SUMMARY_ARTIFACT, description="What this pipeline run did"
    )
    for key, link in mlflow_links(project_dir).items():
        create_link_artifact(link, link_text=key, key=key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the SSL pipeline as a Prefect flow over the DVC stages.")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="subset of stages (default: all, in order)")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR), help="the DVC project (default: this repository)")
    parser.add_argument(
        "--retry-backoff",
        type=float,
        default=RETRY_BACKOFF_SECONDS,
        help="seconds before the first retry of a stage that may fail transiently; doubles after each",
    )
    parser.add_argument(
        "--wait-for-other-run",
        type=float,
        default=WAIT_FOR_OTHER_RUN_SECONDS,
        help="seconds to wait while another run of this project is in progress before giving up",
    )
    args = parser.parse_args(argv)
    states = ssl_pipeline(
        stages=args.stages,
        project_dir=args.project_dir,
        retry_backoff_seconds=args.retry_backoff,
        wait_for_other_run_seconds=args.wait_for_other_run,
    )
    for name, state in states.items():
        print(f"{name:10s} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
