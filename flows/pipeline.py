"""The pipeline as a Prefect flow: one task per DVC stage, in dependency order.

    python -m flows.pipeline                 # run (or confirm cached) every stage
    python -m flows.pipeline --stages ingest teacher

Caching is owned by DVC, not Prefect: each task asks DVC to reproduce its single
stage. DVC reruns it only if its deps, params or outs changed (the same check as
``dvc repro``), and the task ends in a ``Cached`` state when DVC had nothing to do.
So the flow and ``dvc repro`` never drift apart and never recompute each other's
work. Prefect adds scheduling, retries, observability and work pools on top.

By default Prefect runs against a temporary local API server (no Prefect server
to install) with its state in ``.prefect/`` in the project; set
``PREFECT_API_URL`` to use a real Prefect server or Prefect Cloud instead.
"""

from __future__ import annotations

import argparse
import os
import sys
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
from prefect.states import Completed, State  # noqa: E402

from tasks.stages import STAGE_NAMES  # noqa: E402


@task(name="dvc-stage", task_run_name="{stage}")
def reproduce_stage(stage: str, project_dir: str) -> State:
    """Runs one DVC stage if it is stale; returns a Cached state if it was not."""
    from dvc.repo import Repo

    logger = get_run_logger()
    # The stage command is `sslpipe ...`: make the interpreter running this flow provide it.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with Repo(project_dir) as repo:
        reproduced = repo.reproduce(stage, single_item=True)
    if not reproduced:
        logger.info("%s: unchanged, DVC has its outputs", stage)
        return Completed(name="Cached", message=f"{stage}: DVC cache hit", data=stage)
    logger.info("%s: reproduced", stage)
    return Completed(message=f"{stage}: ran", data=stage)


@flow(name="ssl-pipeline", log_prints=True)
def ssl_pipeline(stages: list[str] | None = None, project_dir: str = str(PROJECT_DIR)) -> dict[str, str]:
    """Reproduces ``stages`` (default: all) in pipeline order; returns each stage's state name."""
    selected = [s for s in STAGE_NAMES if stages is None or s in stages]
    unknown = set(stages or []) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"Unknown stages {sorted(unknown)}; choose from {STAGE_NAMES}.")
    states = {}
    for stage in selected:
        state = reproduce_stage(stage, project_dir, return_state=True)
        if state.is_failed():
            raise RuntimeError(f"Stage {stage} failed: {state.message}")
        states[stage] = state.name
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the SSL pipeline as a Prefect flow over the DVC stages.")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="subset of stages (default: all, in order)")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR), help="the DVC project (default: this repository)")
    args = parser.parse_args(argv)
    states = ssl_pipeline(stages=args.stages, project_dir=args.project_dir)
    for stage, name in states.items():
        print(f"{stage:10s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
