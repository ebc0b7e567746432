"""The pipeline on a schedule: bad schedules refused at once, and a served deployment run by a real Prefect server.

The unit tests need no server. The end-to-end test starts ``prefect server start``,
serves the deployment with ``sslpipe schedule`` on a tiny project and runs it
through the server, as its scheduler would: a stage that fails once is retried,
the run publishes its summary, and the next run finds the stage Cached. The same
server then takes the work-pool deployment of ``prefect.yaml``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
import yaml
from PIL import Image

# First: it sets Prefect's environment (home folder, no telemetry) before prefect is imported.
from flows.interrupt import INTERRUPTED_EXIT_CODE
from flows.pipeline import SUMMARY_ARTIFACT
from flows.schedule import ScheduleError, build_schedule, deployment_parameters

# isort: split
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.cli import main
from tests.datasets import REPO_ROOT
from tests.project import environment, make_project, sh
from tests.servers import prefect_server

SSLPIPE = str(Path(sys.executable).parent / "sslpipe")


def test_cron_and_interval_schedules_keep_their_timezone() -> None:
    nightly = build_schedule(cron="0 2 * * *")
    assert (nightly.cron, nightly.interval, nightly.timezone) == ("0 2 * * *", None, "UTC")
    hourly = build_schedule(interval=3600, timezone="Europe/Berlin")
    assert (hourly.cron, hourly.interval, hourly.timezone) == (None, datetime.timedelta(hours=1), "Europe/Berlin")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"cron": "0 25 * * *"}, "--cron '0 25 * * *': not a cron expression (minute hour day-of-month"),
        ({"cron": "every night"}, "--cron 'every night': not a cron expression"),
        ({"cron": "0 2 * * *", "timezone": "Europe/Paaris"}, "--timezone 'Europe/Paaris': Invalid timezone"),
        ({"interval": 0}, "--interval 0: Input should be greater than 0 seconds"),
        ({}, "give exactly one of --cron"),
        ({"cron": "0 2 * * *", "interval": 60}, "give exactly one of --cron"),
    ],
)
def test_a_bad_schedule_is_refused_naming_its_value(given: dict, message: str) -> None:
    with pytest.raises(ScheduleError) as refused:
        build_schedule(**given)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_deployment_parameters_name_the_project_by_absolute_path_and_only_what_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dvc.yaml").touch()
    monkeypatch.chdir(tmp_path.parent)
    assert deployment_parameters(tmp_path.name) == {"project_dir": str(tmp_path)}
    assert deployment_parameters(tmp_path, ["ingest"], 0.5) == {
        "project_dir": str(tmp_path),
        "stages": ["ingest"],
        "retry_backoff_seconds": 0.5,
    }
    with pytest.raises(ScheduleError, match=r"--stages \['curation'\]: unknown; choose from \['ingest', 'curate'"):
        deployment_parameters(tmp_path, ["curation"])
    with pytest.raises(ScheduleError, match="--project-dir .*: no dvc.yaml there"):
        deployment_parameters(tmp_path / "elsewhere")


def test_sslpipe_schedule_fails_in_one_line_without_a_prefect_server(capsys: pytest.CaptureFixture) -> None:
    """A bad cron string, no PREFECT_API_URL (the temporary server has no scheduler), a server that does not answer."""
    schedule = ["schedule", "--project-dir", str(REPO_ROOT)]
    assert main([*schedule, "--cron", "0 2 * *"]) == 2
    assert capsys.readouterr().err == (
        "sslpipe schedule: error: --cron '0 2 * *': not a cron expression "
        "(minute hour day-of-month month day-of-week, e.g. '0 2 * * *')\n"
    )
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main([*schedule, "--cron", "0 2 * * *"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sslpipe schedule: error: PREFECT_API_URL is not set") and error.count("\n") == 1
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # the discard port: nothing listens
        assert main([*schedule, "--interval", "60"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sslpipe schedule: error: no Prefect server answers at PREFECT_API_URL=http://127.0.0.1:9")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on a free port, its database in a temporary folder, for this module only."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_cifar_archive: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), tiny_cifar_archive)


@pytest.fixture()
def client(prefect_api: str) -> Iterator[SyncPrefectClient]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        yield client


def wait_for(what: str, answer, seconds: float, log: Path | None = None):
    """Calls ``answer`` every half second until it returns something truthy; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (found := answer()):
        tail = log.read_text()[-3000:] if log else ""
        assert time.monotonic() < deadline, f"no {what} within {seconds:g} s\n{tail}"
        time.sleep(0.5)
    return found


@contextlib.contextmanager
def served_until_ctrl_c(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``command`` serving a schedule, its output in ``log``, until Ctrl-C at the end of the block.

    After the block it must have exited within 60 s of Ctrl-C through Prefect's own shutdown,
    not flows.interrupt's deadline (which dumps every thread's stack to the log).
    """
    env = {**env, "PYTHONFAULTHANDLER": "1"}  # SIGABRT writes every thread's stack to the log: where a shutdown waits
    with log.open("w") as output:
        served = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the flow runs it starts stop with it
        )
    try:
        yield served
    finally:
        os.killpg(served.pid, signal.SIGINT)  # Ctrl-C
        try:
            served.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # flows.interrupt ends it SHUTDOWN_GRACE_SECONDS after Ctrl-C at the latest; if not, record where it waits.
            os.killpg(served.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                served.wait(timeout=10)
            pytest.fail(f"{command[0]} ignored Ctrl-C for 60 s; its log ends:\n{log.read_text()[-8000:]}")
        finally:
            if served.poll() is None:
                os.killpg(served.pid, signal.SIGKILL)
    assert served.returncode != INTERRUPTED_EXIT_CODE, log.read_text()[-8000:]


def served_deployment(client: SyncPrefectClient, served: subprocess.Popen, name: str, log: Path) -> DeploymentResponse:
    """The deployment ``name`` once the serving process has created it; fails if that process exits first."""

    def deployment() -> DeploymentResponse | None:
        assert served.poll() is None, f"{served.args[0]} exited with {served.returncode}:\n{log.read_text()}"
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None

    return wait_for(f"deployment {name}", deployment, 120, log)


def run_to_the_end(client: SyncPrefectClient, deployment_id: UUID, log: Path) -> FlowRun:
    """A run of the deployment, created now through the server as the scheduler would, followed until it ends."""
    flow_run = client.create_flow_run_from_deployment(deployment_id)

    def ended() -> FlowRun | None:
        current = client.read_flow_run(flow_run.id)
        return current if current.state and current.state.is_final() else None

    return wait_for(f"end of flow run {flow_run.name}", ended, 240, log)


def summary_of(client: SyncPrefectClient, flow_run: FlowRun) -> str:
    (artifact,) = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])
        )
    )
    return artifact.data


@pytest.mark.slow  # a real Prefect server and a project: ~30 s
def test_a_served_schedule_runs_on_the_server_retries_a_failing_stage_then_is_cached(
    prefect_api: str, client: SyncPrefectClient, project: Path, tmp_path: Path
) -> None:
    """`sslpipe schedule` of ingest: the deployment, its next run, two runs through the server, then Ctrl-C."""
    # The first `sslpipe ingest` fails as a flaky network mount would (status 1: not a user's mistake), later ones run.
    flaky = tmp_path / "flaky-bin"
    flaky.mkdir()
    (flaky / "sslpipe").write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {tmp_path / 'failed-once'} ]; then touch {tmp_path / 'failed-once'}; "
        "echo 'source unreachable' >&2; exit 1; fi\n"
        f'exec {SSLPIPE} "$@"\n'
    )
    (flaky / "sslpipe").chmod(0o755)
    env = environment(project)
    env.update(
        PATH=f"{flaky}:{env['PATH']}",
        PREFECT_API_URL=prefect_api,
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # picks a run up within a second, not Prefect's default ten
    )
    log = tmp_path / "schedule.log"
    command = [SSLPIPE, "schedule", "--cron", "0 2 * * *", "--timezone", "Europe/Berlin"]
    with served_until_ctrl_c([*command, "--stages", "ingest", "--retry-backoff", "0.5"], project, env, log) as served:
        nightly = served_deployment(client, served, f"ssl-pipeline/{project.name}", log)  # named after the folder
        (schedule,) = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
            "0 2 * * *",
            "Europe/Berlin",
            True,
        )
        assert nightly.parameters == {
            "project_dir": str(project.resolve()),
            "stages": ["ingest"],
            "retry_backoff_seconds": 0.5,
        }
        assert nightly.entrypoint == "flows.pipeline.ssl_pipeline"

        def next_scheduled_run() -> FlowRun | None:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[nightly.id]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=1,
            )
            return runs[0] if runs else None

        # The server's scheduler, not this test, turned the cron expression into the next run: 02:00 in Berlin.
        scheduled = wait_for("run scheduled by the server", next_scheduled_run, 90, log)
        at = scheduled.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
        assert (at.hour, at.minute) == (2, 0) and at - datetime.datetime.now(at.tzinfo) < datetime.timedelta(days=1)

        first = run_to_the_end(client, nightly.id, log)
        assert first.state.is_completed(), f"{first.state}\n{log.read_text()[-5000:]}"

        def ingest_task_run() -> TaskRun | None:
            # The server records task runs from the events the flow run sends: they may arrive after it ended.
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first.id])))
            return next((r for r in runs if r.name == "ingest" and r.state and r.state.is_completed()), None)

        ingest = wait_for("completed ingest task run", ingest_task_run, 30, log)
        history = [state.name for state in client.read_task_run_states(ingest.id)]
        assert ingest.run_count == 2 and "AwaitingRetry" in history, history  # failed once, retried, then ran
        assert (project / "data/ingested/manifest.csv").is_file()
        assert "| ingest | Completed |" in summary_of(client, first)

        again = run_to_the_end(client, nightly.id, log)
        assert again.state.is_completed() and "| ingest | Cached |" in summary_of(client, again)
        print(f"cached run: {(again.end_time - again.start_time).total_seconds():.1f} s")
    # Stopping `sslpipe schedule` paused the deployment: no run is scheduled while nobody serves it.
    assert client.read_deployment(nightly.id).paused


@pytest.mark.slow  # a real Prefect server and a project: ~30 s
def test_prefect_yaml_deploys_the_pipeline_to_a_process_work_pool(
    client: SyncPrefectClient, project: Path, tmp_path: Path
) -> None:
    """`prefect deploy --all` from the project; a worker started elsewhere runs the flow in the project's folder."""
    api = f"PREFECT_API_URL={client.api_url}"
    sh(project, "env", api, "prefect", "work-pool", "create", "ssl-pipeline", "--type", "process")
    sh(project, "env", api, "prefect", "--no-prompt", "deploy", "--all")
    deployment = client.read_deployment_by_name("ssl-pipeline/nightly")
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"][0]
    assert deployment.work_pool_name == config["work_pool"]["name"] == "ssl-pipeline"
    assert deployment.entrypoint == "flows/pipeline.py:ssl_pipeline"
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}
    ]
    flow_run = client.create_flow_run_from_deployment(deployment.id, parameters={"stages": ["ingest"]})
    sh(tmp_path, "timeout", "180", "env", api, "prefect", "worker", "start", "--pool", "ssl-pipeline", "--run-once")
    ran = client.read_flow_run(flow_run.id)
    assert ran.state.is_completed(), ran.state
    # No project_dir given: the flow's default, the folder its code came from, where the pull step went.
    assert ran.parameters == {"stages": ["ingest"]}
    assert "| ingest |" in summary_of(client, ran) and (project / "data/ingested/manifest.csv").is_file()


@pytest.mark.slow  # the module's Prefect server; the flow is served, never run (its first night is hours away)
def test_the_embed_flow_served_on_a_schedule_stops_on_ctrl_c_and_pauses(
    prefect_api: str, client: SyncPrefectClient, project: Path, tmp_path: Path
) -> None:
    """`python -m flows.embed --cron` serves through the same serve_flow: Ctrl-C stops it and pauses its schedule."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(photos / "red.jpg")
    env = environment(project)
    env["PREFECT_API_URL"] = prefect_api
    log = tmp_path / "embed.log"
    command = [sys.executable, "-m", "flows.embed", "--data", str(photos), "--out", str(tmp_path / "photos.parquet")]
    with served_until_ctrl_c([*command, "--cron", "0 3 * * *"], REPO_ROOT, env, log) as served:
        nightly = served_deployment(client, served, "embed-folder/photos", log)  # named after the data folder
        assert not nightly.paused and nightly.parameters["data"] == str(photos)
    assert client.read_deployment(nightly.id).paused
